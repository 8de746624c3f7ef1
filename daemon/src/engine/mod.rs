//! The pure decision core: probe outcomes and link events in, link states and a complete
//! [`DesiredState`] out. It never reads a clock, sleeps or touches a socket; `now` is always an
//! argument, so days of virtual time can be tested in milliseconds.

mod health;
pub mod sim;
mod state;

use std::time::{Duration, Instant};

use crate::config::Config;
pub use health::{LinkHealth, LinkState, TargetHealth};
pub use state::{DesiredState, LinkPlan, PolicyPlan, Steer};

/// Index of a link in [`Config::links`].
pub type LinkId = usize;

/// Why a probe got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFailure {
    /// No reply within the timeout.
    Timeout,
    /// An ICMP error came back instead of an echo reply (e.g. destination unreachable).
    IcmpError,
    /// The send itself failed (e.g. ENETUNREACH when the interface is down).
    SendError,
    /// The target answered, but not as the probe expects (TCP refused, HTTP status, DNS error):
    /// the path may work, the check does not.
    Rejected,
}

/// A probe the engine wants sent now: target `target` (index into the link's targets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeRequest {
    pub link: LinkId,
    pub target: usize,
    pub sent_at: Instant,
}

/// The result of one probe, as a plain value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeOutcome {
    pub link: LinkId,
    /// Index into the link's targets.
    pub target: usize,
    /// As in the [`ProbeRequest`]: identifies the round.
    pub sent_at: Instant,
    pub result: Result<Duration, ProbeFailure>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Probe(ProbeOutcome),
    /// Carrier (or admin state) of a link's interface changed.
    Carrier {
        link: LinkId,
        up: bool,
    },
    /// The link's interface gained its first or lost its last IPv4 address.
    Address {
        link: LinkId,
        present: bool,
    },
}

/// A change of a link's state, with the reason in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub link: LinkId,
    pub from: LinkState,
    pub to: LinkState,
    pub at: Instant,
    pub reason: String,
}

pub struct Engine {
    config: Config,
    links: Vec<LinkHealth>,
    /// Links taken out of service by the operator: probed, but given no new flows.
    drained: Vec<bool>,
}

impl Engine {
    pub fn new(config: Config, now: Instant) -> Self {
        let links: Vec<LinkHealth> = config
            .links
            .iter()
            .map(|l| LinkHealth::new(now, l.targets.len(), l.quorum, config.detection.misses))
            .collect();
        let drained = vec![false; links.len()];
        Engine {
            config,
            links,
            drained,
        }
    }

    /// The engine for a new configuration: links that kept their name, interface, targets and
    /// quorum keep their health (and drain), so a reload changes nothing for them; others start
    /// afresh.
    pub fn reconfigure(self, config: Config, now: Instant) -> Engine {
        let mut next = Engine::new(config, now);
        for (i, l) in next.config.links.iter().enumerate() {
            let same = |o: &crate::config::Link| {
                o.name == l.name
                    && o.interface == l.interface
                    && o.targets == l.targets
                    && o.quorum == l.quorum
            };
            if let Some(j) = self.config.links.iter().position(same) {
                next.links[i] = self.links[j].clone();
                next.drained[i] = self.drained[j];
            }
        }
        next
    }

    pub fn link_id(&self, name: &str) -> Option<LinkId> {
        self.config.links.iter().position(|l| l.name == name)
    }

    pub fn drained(&self, id: LinkId) -> bool {
        self.drained.get(id).copied().unwrap_or(false)
    }

    /// Take a link out of service (no new flows) or put it back.
    pub fn set_drained(&mut self, id: LinkId, drained: bool) {
        if let Some(d) = self.drained.get_mut(id) {
            *d = drained;
        }
    }

    /// When the engine next wants to be asked for probes, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.links
            .iter()
            .filter_map(LinkHealth::next_round)
            .min()
            .map(|t| (t, "probe round due"))
    }

    /// The probes due at `now`: one round (every target) of each link whose round is due.
    pub fn poll_probes(&mut self, now: Instant) -> Vec<ProbeRequest> {
        let mut out = Vec::new();
        for (link, h) in self.links.iter_mut().enumerate() {
            if h.start_round(now, &self.config) {
                for target in 0..self.config.links[link].targets.len() {
                    out.push(ProbeRequest {
                        link,
                        target,
                        sent_at: now,
                    });
                }
            }
        }
        out
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn link(&self, id: LinkId) -> &LinkHealth {
        &self.links[id]
    }

    /// Feed one event; returns the state changes it caused.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Transition> {
        let (link, change) = match event {
            Event::Probe(p) if p.link < self.links.len() => {
                (p.link, self.links[p.link].on_probe(now, &p, &self.config))
            }
            Event::Carrier { link, up } if link < self.links.len() => (
                link,
                self.links[link].on_link_layer(now, Some(up), None, &self.config),
            ),
            Event::Address { link, present } if link < self.links.len() => (
                link,
                self.links[link].on_link_layer(now, None, Some(present), &self.config),
            ),
            _ => return Vec::new(),
        };
        change
            .map(|(from, to, reason)| Transition {
                link,
                from,
                to,
                at: now,
                reason,
            })
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests;
