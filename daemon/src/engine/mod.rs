//! The pure decision core: probe outcomes and link events in, link states and a complete
//! [`DesiredState`] out. It never reads a clock, sleeps or touches a socket; `now` is always an
//! argument, so days of virtual time can be tested in milliseconds.

mod failover;
mod health;
mod memory;
pub mod sim;
mod state;

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::control::{Event, TransitionStatus};
pub use failover::{
    ms, share_name, Action, Applied, Counters, HookCall, PurgeOrder, Purged, Why, APPLY_RETRY,
};
use health::LinkLayer;
pub use health::{LinkHealth, LinkState, TargetHealth};
pub use memory::LinkMemory;
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
    /// The target is one of the router's own addresses: the probe never left the router, so
    /// its answer says nothing about the link.
    OwnAddress,
    /// The target answered, but not as the probe expects (TCP refused, HTTP status, DNS error):
    /// the path may work, the check does not.
    Rejected,
    /// An HTTPS server's certificate did not verify: the path works, but what answered is not
    /// the server the probe is for (an ISP's captive portal, an interception proxy).
    Certificate,
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
pub enum Input {
    Probe(ProbeOutcome),
    /// The administrative state of a link's interface changed (`ip link set down`).
    Admin {
        link: LinkId,
        up: bool,
    },
    /// Carrier of a link's interface changed.
    Carrier {
        link: LinkId,
        up: bool,
    },
    /// The IPv4 addresses of the link's interface now (primary first); none: it cannot carry
    /// IPv4.
    Addresses {
        link: LinkId,
        v4: Vec<Ipv4Addr>,
    },
    /// Every address of the router now, on any interface.
    Local(Vec<std::net::IpAddr>),
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
    /// An instant and the wall-clock time at it (seconds since the Unix epoch), to date events.
    clock: (Instant, f64),
    /// Transitions not yet turned into actions.
    fresh: Vec<Transition>,
    actions: VecDeque<Action>,
    /// The state last handed out to be applied, and the one the kernel last confirmed.
    target: Option<DesiredState>,
    applied: Option<DesiredState>,
    /// The next apply re-reads the kernel even if the state did not change.
    verify: bool,
    /// Drains or the configuration changed since the last settle.
    dirty: bool,
    /// Purges waiting for `target` to be live.
    waiting: Vec<(LinkId, Why)>,
    /// Dead links whose flows were kept because no other link was usable.
    kept: Vec<LinkId>,
    /// A failed apply is retried then.
    retry_at: Option<Instant>,
    apply_error: Option<String>,
    missing: Vec<String>,
    /// Per link: what is wrong with it that uplinkd cannot repair (see [`Applied::problems`]).
    problems: Vec<Option<String>>,
    /// The problems the last apply found, by link name, and the router's own addresses (a
    /// target among them is a problem too).
    dp_problems: Vec<(String, String)>,
    local: Vec<std::net::IpAddr>,
    /// Per link: its IPv4 addresses, and those it lost while it kept another (a renumber):
    /// the flows translated to them are reset.
    addrs: Vec<Vec<Ipv4Addr>>,
    gone: Vec<Vec<Ipv4Addr>>,
    /// For status: each link's newest transition, links whose transition's steering is not
    /// live yet, counters by link name, and the applies.
    last: Vec<Option<TransitionStatus>>,
    unsteered: Vec<(LinkId, Instant)>,
    counters: BTreeMap<String, Counters>,
    applies: u64,
    last_apply_ms: Option<f64>,
    /// With `[ha]`: whether this router is the master (it holds the LAN virtual address).
    master: Option<bool>,
    /// Dead links whose flows a master purges at that time, unless the peer took over.
    handover: Vec<(Instant, LinkId)>,
}

impl Engine {
    pub fn new(config: Config, now: Instant) -> Self {
        let links: Vec<LinkHealth> = config
            .links
            .iter()
            .map(|l| LinkHealth::new(now, l.targets.len(), l.quorum, config.detection.misses))
            .collect();
        let n = links.len();
        let master = config.ha.as_ref().map(|_| false);
        Engine {
            config,
            links,
            drained: vec![false; n],
            clock: (now, 0.0),
            fresh: Vec::new(),
            actions: VecDeque::new(),
            target: None,
            applied: None,
            verify: false,
            dirty: false,
            waiting: Vec::new(),
            kept: Vec::new(),
            retry_at: None,
            apply_error: None,
            missing: Vec::new(),
            problems: vec![None; n],
            dp_problems: Vec::new(),
            local: Vec::new(),
            addrs: vec![Vec::new(); n],
            gone: vec![Vec::new(); n],
            last: vec![None; n],
            unsteered: Vec::new(),
            counters: BTreeMap::new(),
            applies: 0,
            last_apply_ms: None,
            master,
            handover: Vec::new(),
        }
    }

    /// Date events by the wall clock: `epoch_secs` is the wall-clock time at `at`.
    pub fn set_wall_clock(&mut self, at: Instant, epoch_secs: f64) {
        self.clock = (at, epoch_secs);
    }

    pub fn epoch_secs(&self, at: Instant) -> f64 {
        let (t0, e0) = self.clock;
        if at >= t0 {
            e0 + (at - t0).as_secs_f64()
        } else {
            e0 - (t0 - at).as_secs_f64()
        }
    }

    /// A new configuration: links that kept their name, interface, targets and quorum keep
    /// their health, drain and history, so a reload changes nothing for them; others start
    /// afresh. The next apply re-checks the kernel.
    pub fn reconfigure(&mut self, config: Config, now: Instant, message: String) {
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
            if let Some(j) = self.config.links.iter().position(|o| o.name == l.name) {
                next.last[i] = self.last[j].clone();
            }
        }
        self.config = next.config;
        self.problems = next.problems;
        self.addrs = next.addrs;
        self.gone = next.gone;
        self.links = next.links;
        self.drained = next.drained;
        self.last = next.last;
        // Link ids may have changed: what waited for the old ones is dropped.
        self.waiting.clear();
        self.kept.clear();
        self.handover.clear();
        self.unsteered.clear();
        self.fresh.clear();
        self.verify = true;
        self.update_role();
        self.emit(Event::Reload {
            ok: true,
            message: Some(message),
            error: None,
        });
    }

    /// A reload failed: the running configuration stays.
    pub fn reload_failed(&mut self, error: String) {
        self.emit(Event::Reload {
            ok: false,
            message: None,
            error: Some(error),
        });
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
            self.dirty = true;
        }
    }

    /// An operator drains a link: no new flows; with `reset`, its flows are reset once new
    /// flows go elsewhere.
    pub fn drain(&mut self, name: &str, reset: bool) -> Result<String, String> {
        let id = self
            .link_id(name)
            .ok_or_else(|| format!("no link named {name:?}"))?;
        self.set_drained(id, true);
        if reset {
            self.waiting.push((id, Why::Drained));
            // Even when nothing else changes, the reset waits for an apply.
            self.verify = true;
        }
        let link = name.to_owned();
        self.emit(Event::Drain { link, reset });
        Ok(format!("drained {name}"))
    }

    pub fn undrain(&mut self, name: &str) -> Result<String, String> {
        let id = self
            .link_id(name)
            .ok_or_else(|| format!("no link named {name:?}"))?;
        self.set_drained(id, false);
        let link = name.to_owned();
        self.emit(Event::Undrain { link });
        Ok(format!("undrained {name}"))
    }

    /// The state the kernel last confirmed.
    pub fn applied_state(&self) -> Option<&DesiredState> {
        self.applied.as_ref()
    }

    /// The newest transition of a link, with what followed from it.
    pub fn last_transition(&self, id: LinkId) -> Option<&TransitionStatus> {
        self.last.get(id).and_then(Option::as_ref)
    }

    /// What is wrong with a link now that uplinkd cannot repair.
    pub fn problem(&self, id: LinkId) -> Option<&str> {
        self.problems.get(id).and_then(Option::as_deref)
    }

    pub fn counters(&self, name: &str) -> Counters {
        self.counters.get(name).copied().unwrap_or_default()
    }

    /// How many applies succeeded, how long the newest took, and the error of the newest
    /// failed one while it is not retried successfully.
    pub fn applies(&self) -> (u64, Option<f64>, Option<&str>) {
        (
            self.applies,
            self.last_apply_ms,
            self.apply_error.as_deref(),
        )
    }

    /// When the engine next wants to be polled, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let probe = self
            .links
            .iter()
            .filter_map(LinkHealth::next_round)
            .min()
            .map(|t| (t, "probe round due"));
        let retry = self.retry_at.map(|t| (t, "apply retry due"));
        let handover = self
            .handover
            .iter()
            .map(|&(t, _)| (t, "a handover wait ends"))
            .min();
        probe
            .into_iter()
            .chain(retry)
            .chain(handover)
            .min_by_key(|(t, _)| *t)
    }

    /// The probes due at `now`: one round (every target) of each link whose round is due. A
    /// failed apply due for its retry is queued too.
    pub fn poll_probes(&mut self, now: Instant) -> Vec<ProbeRequest> {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.verify = true;
        }
        self.handovers_due(now);
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
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Transition> {
        let (link, change) = match input {
            Input::Probe(mut p) if p.link < self.links.len() => {
                let own = self.config.links[p.link]
                    .targets
                    .get(p.target)
                    .is_some_and(|t| self.local.contains(&t.addr().to_canonical()));
                if own {
                    p.result = Err(ProbeFailure::OwnAddress);
                }
                (p.link, self.links[p.link].on_probe(now, &p, &self.config))
            }
            Input::Local(addrs) => {
                self.local = addrs.iter().map(std::net::IpAddr::to_canonical).collect();
                self.report_problems();
                self.update_role();
                return Vec::new();
            }
            Input::Admin { link, up } if link < self.links.len() => {
                let c = LinkLayer {
                    admin: Some(up),
                    ..LinkLayer::default()
                };
                (link, self.links[link].on_link_layer(now, c, &self.config))
            }
            Input::Carrier { link, up } if link < self.links.len() => {
                let c = LinkLayer {
                    carrier: Some(up),
                    ..LinkLayer::default()
                };
                (link, self.links[link].on_link_layer(now, c, &self.config))
            }
            Input::Addresses { link, v4 } if link < self.links.len() => {
                let c = LinkLayer {
                    address: Some(!v4.is_empty()),
                    ..LinkLayer::default()
                };
                self.addresses_now(link, v4);
                (link, self.links[link].on_link_layer(now, c, &self.config))
            }
            _ => return Vec::new(),
        };
        let out: Vec<Transition> = change
            .map(|(from, to, reason)| Transition {
                link,
                from,
                to,
                at: now,
                reason,
            })
            .into_iter()
            .collect();
        self.fresh.extend(out.iter().cloned());
        out
    }
}

#[cfg(test)]
mod tests;
