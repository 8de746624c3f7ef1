//! The pure decision core: probe outcomes and link events in, link states and a complete
//! [`DesiredState`] out. It never reads a clock, sleeps or touches a socket; `now` is always an
//! argument, so days of virtual time can be tested in milliseconds.

mod health;
pub mod sim;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config::{Config, LastResort, Member, Prefix, Rule};
pub use health::{LinkHealth, LinkState, TargetHealth};

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

/// Everything the dataplane must make true, complete and declarative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub mark_mask: u32,
    /// Mark of the packets uplinkd sends to reset stranded clients (never a link's mark).
    pub tickle_mark: u32,
    pub rule_priority: u32,
    pub lan_interfaces: Vec<String>,
    pub links: Vec<LinkPlan>,
    /// Mark of new flows refused because their policy has no usable link.
    pub unreachable_mark: u32,
    /// The router's own new flows are steered too.
    pub steer_router: bool,
    /// Every policy, the default one first, with the links sharing its new flows now.
    pub policies: Vec<PolicyPlan>,
    pub rules: Vec<Rule>,
}

impl DesiredState {
    /// The default policy's share (see [`Engine::policy_share`]).
    pub fn share(&self) -> &[(LinkId, u32)] {
        self.policies.first().map_or(&[], |p| &p.share)
    }

    /// The default policy's first link (the first of its share); `None` when it has none.
    pub fn steer_to(&self) -> Option<LinkId> {
        self.share().first().map(|&(l, _)| l)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPlan {
    pub name: String,
    /// Every link of the policy, usable or not.
    pub members: Vec<LinkId>,
    /// The links sharing its new flows now, with their weights; empty: none is usable.
    pub share: Vec<(LinkId, u32)>,
    pub last_resort: LastResort,
    pub sticky: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    pub name: String,
    pub interface: String,
    pub gateway: Option<Ipv4Addr>,
    pub mark: u32,
    pub table: u32,
    pub usable: bool,
    /// Taken out of service: no new flows, though it may work.
    pub drained: bool,
    /// IPv6 source prefix translation instead of masquerade.
    pub nptv6: Option<Prefix>,
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

    /// The links that share a policy's new flows, with their weights: its usable members (not
    /// drained) of the best rank, where a degraded link ranks below every up one and then the
    /// lower priority wins. Empty when none is usable, except for the default policy with
    /// `last_resort = "default"`: its preferred member anyway, so new flows fail as they would
    /// without uplinkd and nothing is steered onto a link we know less about.
    pub fn policy_share(&self, policy: usize) -> Vec<(LinkId, u32)> {
        let Some(p) = self.config.policies.get(policy) else {
            return Vec::new();
        };
        let ok = |m: &&Member| self.links[m.link].state.usable() && !self.drained[m.link];
        let rank = |m: &Member| (self.links[m.link].state == LinkState::Degraded, m.priority);
        match p.members.iter().filter(ok).map(rank).min() {
            Some(best) => p
                .members
                .iter()
                .filter(ok)
                .filter(|m| rank(m) == best)
                .map(|m| (m.link, m.weight))
                .collect(),
            None if policy == 0 && p.last_resort == LastResort::Default => p
                .members
                .iter()
                .min_by_key(|m| m.priority)
                .map(|m| vec![(m.link, m.weight)])
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    pub fn desired(&self) -> DesiredState {
        DesiredState {
            unreachable_mark: self.config.dataplane.unreachable_mark(),
            steer_router: self.config.dataplane.steer_router,
            mark_mask: self.config.dataplane.mark_mask,
            tickle_mark: self.config.dataplane.tickle_mark(),
            rule_priority: self.config.dataplane.rule_priority,
            lan_interfaces: self.config.lan_interfaces.clone(),
            links: self
                .config
                .links
                .iter()
                .zip(&self.links)
                .enumerate()
                .map(|(i, (l, h))| LinkPlan {
                    name: l.name.clone(),
                    interface: l.interface.clone(),
                    gateway: l.gateway,
                    mark: l.mark,
                    table: l.table,
                    usable: h.state.usable(),
                    drained: self.drained[i],
                    nptv6: l.nptv6,
                })
                .collect(),
            policies: self
                .config
                .policies
                .iter()
                .enumerate()
                .map(|(i, p)| PolicyPlan {
                    name: p.name.clone(),
                    members: p.members.iter().map(|m| m.link).collect(),
                    share: self.policy_share(i),
                    last_resort: p.last_resort,
                    sticky: p.sticky,
                })
                .collect(),
            rules: self.config.rules.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
