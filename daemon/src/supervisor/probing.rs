//! Sending the probes the engine asks for, each through its own link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};
use uplinkd_probes::{Binding, ProbeError, Prober, Target};

use crate::config::Config;
use crate::engine::{ProbeFailure, ProbeOutcome, ProbeRequest};

/// Where probes go. The real one sends them through the links; tests script the answers.
pub trait Probes {
    /// Send one probe; its outcome arrives on `tx`.
    fn send(&mut self, req: ProbeRequest, tx: &mpsc::Sender<ProbeOutcome>);
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
    fn send(&mut self, req: ProbeRequest, tx: &mpsc::Sender<ProbeOutcome>) {
        if let Some(p) = self.links.get_mut(req.link) {
            p.send(req, self.timeout, tx.clone());
        }
    }

    fn reconfigure(&mut self, config: &Config) {
        *self = LinkProbes::new(config);
    }
}

/// The probes of one link, opened lazily and re-opened after a send error (the interface they
/// are bound to may have been deleted and re-created).
struct LinkProber {
    binding: Binding,
    inner: Arc<Prober>,
    targets: Arc<Vec<Target>>,
    open: bool,
    reopen: Arc<AtomicBool>,
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
            inner: Arc::new(Prober::new(binding.clone())),
            binding,
            targets: Arc::new(l.targets.clone()),
            open: false,
            reopen: Arc::new(AtomicBool::new(false)),
            warned: false,
            cert_errors: Arc::default(),
        }
    }

    /// Send one probe in its own task; the outcome arrives on `tx`.
    fn send(&mut self, req: ProbeRequest, timeout: Duration, tx: mpsc::Sender<ProbeOutcome>) {
        if self.reopen.swap(false, Ordering::Relaxed) || !self.open {
            // Fresh sockets on a fresh prober; probes in flight finish on the old one.
            let mut fresh = Prober::new(self.binding.clone());
            match fresh.open(&self.targets) {
                Ok(()) => {
                    self.open = true;
                    self.warned = false;
                }
                Err(e) => {
                    self.open = false;
                    if !self.warned {
                        warn!(
                            "cannot open probe sockets on {}: {e}",
                            self.binding.interface
                        );
                        self.warned = true;
                    }
                }
            }
            self.inner = Arc::new(fresh);
        }
        let (prober, targets, reopen, cert_errors, interface) = (
            self.inner.clone(),
            self.targets.clone(),
            self.reopen.clone(),
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
            let result = result.map_err(|e| {
                debug!("probe {target} via link {}: {e}", req.link);
                match e {
                    ProbeError::Timeout(_) => ProbeFailure::Timeout,
                    ProbeError::IcmpError { .. } => ProbeFailure::IcmpError,
                    ProbeError::Rejected(_) => ProbeFailure::Rejected,
                    ProbeError::Certificate(_) => ProbeFailure::Certificate,
                    ProbeError::Send(_) | ProbeError::Other(_) => {
                        reopen.store(true, Ordering::Relaxed);
                        ProbeFailure::SendError
                    }
                }
            });
            let outcome = ProbeOutcome {
                link: req.link,
                target: req.target,
                sent_at: req.sent_at,
                result,
            };
            let _ = tx.send(outcome).await;
        });
    }
}
