//! Sending the probes the engine asks for, each through its own link.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};
use uplinkd_probes::{Binding, IcmpSocket, Outcome, ProbeError, Prober, Target};

use crate::config::Config;
use crate::engine::{ProbeFailure, ProbeOutcome, ProbeRequest};

/// Where probes go. The real one sends them through the links; tests script the answers.
pub trait Probes {
    /// Send one probe; its outcome arrives on `tx` (exactly one per probe).
    fn send(&mut self, req: ProbeRequest, tx: &mpsc::UnboundedSender<ProbeOutcome>);
    /// The configuration changed (a reload): links are probed as it says from now on.
    fn reconfigure(&mut self, config: &Config);
}

/// Real probes, one [`LinkProber`] per link.
pub struct LinkProbes {
    links: Vec<LinkProber>,
    timeout: Duration,
}

impl LinkProbes {
    pub fn new(config: &Config) -> Self {
        LinkProbes {
            links: config.links.iter().map(LinkProber::new).collect(),
            timeout: config.probe.timeout,
        }
    }
}

impl Probes for LinkProbes {
    fn send(&mut self, req: ProbeRequest, tx: &mpsc::UnboundedSender<ProbeOutcome>) {
        if let Some(p) = self.links.get_mut(req.link) {
            p.send(req, self.timeout, tx);
        }
    }

    fn reconfigure(&mut self, config: &Config) {
        *self = LinkProbes::new(config);
    }
}

/// The probes of one link. ICMP echo goes through one socket per address family, opened on
/// first use and re-opened after a send error (the interface it is bound to may have been
/// deleted and re-created); probes in flight on a closed one still end there. Every other
/// probe is a transaction on a socket of its own, in a task of its own.
struct LinkProber {
    binding: Binding,
    targets: Arc<Vec<Target>>,
    transactions: Arc<Prober>,
    icmp: [Option<IcmpSocket<ProbeRequest>>; 2],
    /// Whether the last failure to open an ICMP socket was logged (once until one opens).
    warned: bool,
    /// The certificate error last logged per target (logged again only when it changes, or
    /// after the target verified again).
    cert_errors: Arc<Mutex<HashMap<usize, String>>>,
}

impl LinkProber {
    fn new(l: &crate::config::Link) -> Self {
        let binding = Binding {
            interface: l.interface.as_str().into(),
            mark: l.mark,
        };
        LinkProber {
            transactions: Arc::new(Prober::new(binding.clone(), &l.targets)),
            binding,
            targets: Arc::new(l.targets.clone()),
            icmp: [None, None],
            warned: false,
            cert_errors: Arc::default(),
        }
    }

    fn send(
        &mut self,
        req: ProbeRequest,
        timeout: Duration,
        tx: &mpsc::UnboundedSender<ProbeOutcome>,
    ) {
        let Some(target) = self.targets.get(req.target) else {
            return;
        };
        match target {
            Target::Icmp(dest) => self.echo(req, *dest, timeout, tx),
            _ => self.transaction(req, timeout, tx.clone()),
        }
    }

    /// An echo request to `dest` through the link's ICMP socket of its family. A socket
    /// delivers to the `tx` it was opened with: the supervisor's, the same for every send.
    fn echo(
        &mut self,
        req: ProbeRequest,
        dest: IpAddr,
        timeout: Duration,
        tx: &mpsc::UnboundedSender<ProbeOutcome>,
    ) {
        let slot = &mut self.icmp[usize::from(dest.is_ipv6())];
        if slot.is_none() {
            let (out, targets) = (tx.clone(), self.targets.clone());
            let deliver = move |req: ProbeRequest, r| {
                let _ = out.send(outcome(req, &targets, r));
            };
            match IcmpSocket::new(&self.binding, dest.is_ipv6(), timeout, deliver) {
                Ok(s) => {
                    *slot = Some(s);
                    self.warned = false;
                }
                Err(e) => {
                    if !self.warned {
                        warn!(
                            "cannot open probe sockets on {}: {e}",
                            self.binding.interface
                        );
                        self.warned = true;
                    }
                    let e = ProbeError::Send(e);
                    let _ = tx.send(outcome(req, &self.targets, Err(e)));
                    return;
                }
            }
        }
        if let Some(Err((req, e))) = slot.as_ref().map(|s| s.send(dest, req)) {
            if matches!(e, ProbeError::Send(_)) {
                *slot = None;
            }
            let _ = tx.send(outcome(req, &self.targets, Err(e)));
        }
    }

    /// A transaction (TCP, HTTP(S), DNS) in a task of its own.
    fn transaction(
        &mut self,
        req: ProbeRequest,
        timeout: Duration,
        tx: mpsc::UnboundedSender<ProbeOutcome>,
    ) {
        let (prober, targets, cert_errors, interface) = (
            self.transactions.clone(),
            self.targets.clone(),
            self.cert_errors.clone(),
            self.binding.interface.clone(),
        );
        tokio::spawn(async move {
            let target = &targets[req.target];
            let result = prober.probe(target, timeout).await;
            {
                let mut seen = cert_errors.lock().unwrap_or_else(|e| e.into_inner());
                match &result {
                    Err(ProbeError::Certificate(m)) => {
                        if seen.get(&req.target) != Some(m) {
                            warn!("probe {target} via {interface}: certificate not accepted: {m}");
                            seen.insert(req.target, m.clone());
                        }
                    }
                    Ok(_) => {
                        seen.remove(&req.target);
                    }
                    Err(_) => {}
                }
            }
            let _ = tx.send(outcome(req, &targets, result));
        });
    }
}

/// What the engine hears of a probe.
fn outcome(req: ProbeRequest, targets: &[Target], result: Outcome) -> ProbeOutcome {
    let result = result.map_err(|e| {
        if let Some(target) = targets.get(req.target) {
            debug!("probe {target} via link {}: {e}", req.link);
        }
        match e {
            ProbeError::Timeout(_) => ProbeFailure::Timeout,
            ProbeError::IcmpError { .. } => ProbeFailure::IcmpError,
            ProbeError::Rejected(_) => ProbeFailure::Rejected,
            ProbeError::Certificate(_) => ProbeFailure::Certificate,
            ProbeError::Send(_) | ProbeError::Other(_) => ProbeFailure::SendError,
        }
    });
    ProbeOutcome {
        link: req.link,
        target: req.target,
        sent_at: req.sent_at,
        result,
    }
}
