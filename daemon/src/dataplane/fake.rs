//! A dataplane without a kernel, for tests: it renders what it is asked to make true as the
//! canonical text the kernel would hold (the nft table, `ip rule` lines, per-link routes) and
//! records every call in order, so a test can assert what was done and in which order.
//! Clones share one state: the test keeps one, the supervisor owns the other.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{nft, rules, Dataplane, Error, LinkEvent};
use crate::engine::{share_name, Applied, DesiredState, PurgeOrder, Purged};

#[derive(Debug, Default)]
pub struct State {
    /// Every call, in order: `apply via LINK` (`… failed`), `purge LINK`, `remove_all`.
    pub calls: Vec<String>,
    /// What the kernel would hold after the last successful apply.
    pub kernel: String,
    /// The state of the last successful apply.
    pub applied: Option<DesiredState>,
    /// The next this many applies fail.
    pub fail_applies: usize,
    /// Interfaces and their state, as `interfaces()` reports them.
    pub interfaces: Vec<LinkEvent>,
    /// IPv4 addresses with their interfaces.
    pub ipv4: Vec<(String, Ipv4Addr)>,
    /// Flows each purge reports.
    pub flows_per_purge: usize,
    /// Someone edited the ruleset: the next generation check says so (once).
    pub ruleset_edited: bool,
    /// Applies that re-read the kernel (`verify`), and generation checks.
    pub verified: usize,
    pub generation_checks: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Fake(Arc<Mutex<State>>);

impl Fake {
    /// A fake kernel whose interfaces `names` are up and have an IPv4 address.
    pub fn with_interfaces(names: &[&str]) -> Self {
        let f = Fake::default();
        {
            let mut s = f.state();
            s.interfaces = names
                .iter()
                .map(|n| LinkEvent {
                    name: (*n).to_owned(),
                    admin_up: true,
                    up: true,
                })
                .collect();
            s.ipv4 = names
                .iter()
                .zip(1..)
                .map(|(n, i)| ((*n).to_owned(), Ipv4Addr::new(100, 64, i, 2)))
                .collect();
        }
        f
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }
}

/// The canonical text of a desired state: the nft table (without addresses), then the rule band
/// as `ip rule` lines, then each link's route.
pub fn render(d: &DesiredState) -> String {
    let mut out = nft::render(d, &[]).to_string();
    out.push('\n');
    for r in rules::desired_rules(d) {
        out.push_str(&format!("{r}\n"));
    }
    for l in &d.links {
        let via = l.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        out.push_str(&format!(
            "ip route replace table {} default{via} dev {}\n",
            l.table, l.interface
        ));
        if let Some(g) = l.gateway6 {
            out.push_str(&format!(
                "ip -6 route replace table {} default via {g} dev {}\n",
                l.table, l.interface
            ));
        }
    }
    out
}

impl Dataplane for Fake {
    async fn apply(&mut self, d: &DesiredState, verify: bool) -> Result<Applied, Error> {
        let mut s = self.state();
        s.verified += usize::from(verify);
        let call = format!("apply via {}", share_name(d, d.share()));
        if s.fail_applies > 0 {
            s.fail_applies -= 1;
            s.calls.push(format!("{call} failed"));
            return Err(Error::Fake("the fake kernel refused the apply".into()));
        }
        s.calls.push(call);
        s.kernel = render(d);
        s.applied = Some(d.clone());
        Ok(Applied::default())
    }

    fn purge(
        &mut self,
        order: PurgeOrder,
    ) -> impl Future<Output = Result<Purged, Error>> + Send + 'static {
        let flows = {
            let mut s = self.state();
            s.calls.push(format!("purge {}", order.name));
            s.flows_per_purge
        };
        async move {
            Ok(Purged {
                flows,
                ..Purged::default()
            })
        }
    }

    async fn ruleset_changed(&mut self) -> bool {
        let mut s = self.state();
        s.generation_checks += 1;
        std::mem::take(&mut s.ruleset_edited)
    }

    async fn remove_all(&mut self, _d: &DesiredState) -> Result<(), Error> {
        let mut s = self.state();
        s.calls.push("remove_all".into());
        s.kernel.clear();
        s.applied = None;
        Ok(())
    }

    async fn interfaces(&self) -> Result<Vec<LinkEvent>, Error> {
        Ok(self.state().interfaces.clone())
    }

    async fn ipv4_addresses(&self) -> Result<Vec<(String, Ipv4Addr)>, Error> {
        Ok(self.state().ipv4.clone())
    }
}
