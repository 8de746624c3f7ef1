//! The consequences of a change, decided here and nowhere else: when the dataplane must be
//! converged, whose flows are purged (a dead link's, a drained one's, a metered backup's on
//! failback) and only once the steering that makes it safe is live, what is told to whom.
//!
//! The supervisor executes the [`Action`]s in order and reports back what the kernel did
//! ([`Engine::applied`], [`Engine::purged`]); the engine never waits for anything itself.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{DesiredState, Engine, LinkId, LinkState, Transition};
use crate::config::{Config, Failback, DEFAULT_POLICY};
use crate::control::{Event, TransitionStatus};

/// A failed apply is retried this long after the failure.
pub const APPLY_RETRY: Duration = Duration::from_secs(1);

/// Something the supervisor must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Converge the kernel to this state; `verify` re-reads what the kernel has even when the
    /// state did not change (someone else may have changed it). Report with
    /// [`Engine::applied`].
    Apply { state: DesiredState, verify: bool },
    /// Purge a link's flows and reset their clients; report with [`Engine::purged`].
    Purge(PurgeOrder),
    /// Run the transition hook with these details.
    RunHook(HookCall),
    /// Tell: log, `watch`, and (for the default policy's steering) systemd's status line.
    Emit(Event),
}

/// Why a link's flows are purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It went down while another link can take its flows.
    Down,
    /// New flows moved back to a link its policy prefers (`failback = "drain"`).
    Failback,
    /// An operator drained it and asked for its flows to be reset.
    Drained,
    /// It lost addresses while keeping another (renumbered): the flows translated to the lost
    /// ones ([`PurgeOrder::nat_to`]) are dead.
    Renumbered,
    /// With `[ha]`: this router just became the master and the link is down here: the flows it
    /// inherited on it are dead (no handover wait: the peer just gave the LAN up).
    Inherited,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeOrder {
    pub link: LinkId,
    pub name: String,
    pub why: Why,
    pub mark: u32,
    pub mark_mask: u32,
    pub tickle_mark: u32,
    /// Resets go only to clients on these interfaces' subnets.
    pub lan_interfaces: Vec<String>,
    /// Only the flows translated to these addresses; empty: all the link's flows.
    pub nat_to: Vec<std::net::IpAddr>,
}

/// The environment of a transition hook (see [`crate::config::Hooks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCall {
    pub link: String,
    pub interface: String,
    pub from: &'static str,
    pub to: &'static str,
    pub reason: String,
    /// Where the default policy's new flows go after the transition.
    pub steer_to: String,
}

/// What an apply did, as the dataplane reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// Our nft table was written afresh (it was missing or the in-place update was refused).
    pub nft_replaced: bool,
    pub nft: Duration,
    pub routes: Duration,
    /// Interfaces of configured links that do not exist; their routes wait for them.
    pub missing_interfaces: Vec<String>,
    /// Rules and routes added or removed to converge.
    pub route_changes: usize,
    /// What is wrong with links (by name) that uplinkd cannot repair: a route the kernel refuses
    /// (the rest is applied), a sysctl it cannot set, another table's NAT pre-empting its own.
    pub problems: Vec<(String, String)>,
}

/// What a purge did, as the dataplane reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Purged {
    pub flows: usize,
    pub tcp_reset: usize,
    pub sockets: usize,
    /// Time spent listing the flows, filling the stale set, flushing, tickling and aborting
    /// router sockets.
    pub phases: [Duration; 5],
}

/// Counters per link name (they survive reloads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub transitions: u64,
    pub flows: u64,
    pub tcp: u64,
    pub sockets: u64,
}

impl Engine {
    /// The next thing to do. Changes since the last call are settled first: they become one
    /// apply (with the purges it makes safe queued behind it), in order after their events.
    pub fn poll_action(&mut self) -> Option<super::Action> {
        self.settle();
        self.actions.pop_front()
    }

    /// Re-check the kernel at the next apply even if nothing changed (periodic reconcile, an
    /// interface that came up, a route someone else changed).
    pub fn reconcile(&mut self) {
        self.verify = true;
    }

    /// The supervisor applied `state`: the kernel now has it, or refused it.
    pub fn applied(&mut self, now: Instant, state: DesiredState, result: Result<Applied, String>) {
        let r = match result {
            Ok(r) => r,
            Err(error) => {
                // Retried until it works; said again only when the error changes.
                self.retry_at = Some(now + APPLY_RETRY);
                if self.apply_error.as_ref() != Some(&error) {
                    self.apply_error = Some(error.clone());
                    self.emit(Event::ApplyFailed {
                        error,
                        retry_ms: APPLY_RETRY.as_millis() as u64,
                    });
                }
                return;
            }
        };
        self.retry_at = None;
        self.apply_error = None;
        self.applies += 1;
        self.last_apply_ms = Some(ms(r.nft + r.routes));
        if r.missing_interfaces != self.missing {
            self.missing = r.missing_interfaces.clone();
            if !self.missing.is_empty() {
                let interfaces = self.missing.clone();
                self.emit(Event::MissingInterfaces { interfaces });
            }
        }
        self.tell_problems(&r.problems);
        let previous = self.applied.replace(state.clone());
        self.tell_steering(previous.as_ref(), &state, &r);
        for (l, at) in std::mem::take(&mut self.unsteered) {
            if let Some(t) = self.last.get_mut(l).and_then(Option::as_mut) {
                t.steer_ms = Some(ms(now.saturating_duration_since(at)));
            }
        }
        if self.target.as_ref() == Some(&state) {
            for (link, why) in std::mem::take(&mut self.waiting) {
                self.release(now, &state, link, why);
            }
        }
    }

    /// A purge ordered earlier finished.
    pub fn purged(&mut self, link: &str, result: Result<Purged, String>) {
        let r = match result {
            Ok(r) => r,
            Err(error) => {
                let link = link.to_owned();
                return self.emit(Event::PurgeFailed { link, error });
            }
        };
        let total: Duration = r.phases.iter().sum();
        if let Some(t) = self
            .link_id(link)
            .and_then(|i| self.last.get_mut(i))
            .and_then(Option::as_mut)
        {
            t.purge_ms = Some(ms(total));
            t.flows_purged = Some(r.flows);
            t.tcp_reset = Some(r.tcp_reset);
            t.sockets_aborted = Some(r.sockets);
        }
        let c = self.counters.entry(link.to_owned()).or_default();
        c.flows += r.flows as u64;
        c.tcp += r.tcp_reset as u64;
        c.sockets += r.sockets as u64;
        self.emit(Event::Purge {
            link: link.to_owned(),
            flows: r.flows,
            tcp_reset: r.tcp_reset,
            sockets_aborted: r.sockets,
            ms: ms(total),
            phases_ms: r.phases.map(ms),
        });
    }

    /// Turn what changed into actions: the transitions' events and hooks, then one apply of the
    /// new state, with the purges it makes safe waiting for it to be live.
    fn settle(&mut self) {
        // The desired state follows only from link states, drains and the configuration: when
        // none changed (most probe results) there is nothing to compare.
        if self.fresh.is_empty() && !self.verify && !self.dirty && self.target.is_some() {
            return;
        }
        self.dirty = false;
        let fresh = std::mem::take(&mut self.fresh);
        let next = self.desired();
        let steer_to = share_name(&next, next.share());
        for t in &fresh {
            self.record(t);
            if !self.config.hooks.on_transition.is_empty() {
                let l = &self.config.links[t.link];
                self.actions.push_back(Action::RunHook(HookCall {
                    link: l.name.clone(),
                    interface: l.interface.clone(),
                    from: t.from.as_str(),
                    to: t.to.as_str(),
                    reason: t.reason.clone(),
                    steer_to: steer_to.clone(),
                }));
            }
        }
        if self.target.as_ref() == Some(&next) && !self.verify {
            return;
        }
        if let Some(prev) = self.target.take() {
            for t in fresh
                .iter()
                .filter(|t| t.to == LinkState::Down && t.from.usable())
            {
                if elsewhere(t.link, &next) {
                    self.waiting.push((t.link, Why::Down));
                } else if !self.kept.contains(&t.link) {
                    // Nowhere better to go now: kept until somewhere is.
                    self.kept.push(t.link);
                    let link = self.config.links[t.link].name.clone();
                    self.emit(Event::FlowsKept { link });
                }
            }
            // Flows kept while nothing was usable: back on their own link, they are fine; with
            // another link usable now, they go.
            let kept = std::mem::take(&mut self.kept);
            for l in kept {
                match next.links.get(l) {
                    Some(p) if p.usable => {}
                    Some(_) if elsewhere(l, &next) => self.waiting.push((l, Why::Down)),
                    Some(_) => self.kept.push(l),
                    None => {}
                }
            }
            if prev.policies != next.policies {
                for l in (0..next.links.len()).filter(|&l| draining(&self.config, l, &prev, &next))
                {
                    self.waiting.push((l, Why::Failback));
                }
            }
        }
        self.actions.push_back(Action::Apply {
            state: next.clone(),
            verify: std::mem::take(&mut self.verify),
        });
        self.target = Some(next);
    }

    /// A waiting purge, now that `live` is in the kernel. A backup leaves flows alone: the
    /// master carries them, on the same LAN, and the replicated entries are what the next
    /// takeover needs.
    fn release(&mut self, now: Instant, live: &DesiredState, link: LinkId, why: Why) {
        let Some(l) = live.links.get(link) else {
            return;
        };
        if self.master == Some(false) {
            self.gone[link].clear();
            return self.emit(Event::LeftToMaster {
                link: l.name.clone(),
            });
        }
        let mut nat_to = Vec::new();
        match why {
            Why::Inherited => {}
            Why::Down => {
                // A master gives keepalived time to hand the LAN to the peer, whose link may
                // work: then the flows live on there.
                let wait = self
                    .config
                    .ha
                    .as_ref()
                    .map_or(Duration::ZERO, |h| h.handover);
                if self.master == Some(true) && !wait.is_zero() {
                    if !self.handover.iter().any(|&(_, l)| l == link) {
                        self.handover.push((now + wait, link));
                        self.emit(Event::HandingOver {
                            link: l.name.clone(),
                            ms: wait.as_millis() as u64,
                        });
                    }
                    return;
                }
            }
            Why::Renumbered => {
                let gone = std::mem::take(&mut self.gone[link]);
                if gone.is_empty() {
                    return;
                }
                self.emit(Event::AddressGone {
                    link: l.name.clone(),
                    addresses: gone.iter().map(ToString::to_string).collect(),
                });
                nat_to = gone.into_iter().map(std::net::IpAddr::V4).collect();
            }
            Why::Failback => self.emit(Event::Draining {
                link: l.name.clone(),
                to: share_name(live, live.share()),
            }),
            // Only when new flows have somewhere else to go.
            Why::Drained => {
                let elsewhere = live
                    .steer_to()
                    .is_some_and(|s| s != link && live.links[s].usable);
                if !elsewhere {
                    return;
                }
            }
        }
        self.emit_purge(live, link, why, nat_to);
    }

    /// Order the purge of `link`'s flows (those translated to `nat_to`, if any).
    fn emit_purge(&mut self, live: &DesiredState, link: LinkId, why: Why, nat_to: Vec<IpAddr>) {
        let Some(l) = live.links.get(link) else {
            return;
        };
        self.actions.push_back(Action::Purge(PurgeOrder {
            link,
            name: l.name.clone(),
            why,
            mark: l.mark,
            mark_mask: live.mark_mask,
            tickle_mark: live.tickle_mark,
            lan_interfaces: live.lan_interfaces.clone(),
            nat_to,
        }));
    }

    /// Handover waits that ended by `now`: a router still the master purges the flows of the
    /// link if it is still dead.
    pub(super) fn handovers_due(&mut self, now: Instant) {
        // Called on every wake-up: nothing to do (and nothing copied) in the steady state.
        if !self.handover.iter().any(|&(t, _)| t <= now) {
            return;
        }
        let (due, rest) = std::mem::take(&mut self.handover)
            .into_iter()
            .partition(|&(t, _)| t <= now);
        self.handover = rest;
        let Some(live) = self.applied.clone() else {
            return;
        };
        for (_, link) in due {
            let Some(l) = live.links.get(link).filter(|l| !l.usable) else {
                continue;
            };
            if self.master == Some(true) {
                self.emit_purge(&live, link, Why::Down, Vec::new());
            } else {
                let link = l.name.clone();
                self.emit(Event::LeftToMaster { link });
            }
        }
    }

    /// With `[ha]`: whether this router is the master now (the LAN virtual address is one of
    /// its own). A new master purges at once the inherited flows of links it considers down.
    pub(super) fn update_role(&mut self) {
        let now = self
            .config
            .ha
            .as_ref()
            .map(|h| self.local.contains(&h.lan_vip.to_canonical()));
        if now == self.master {
            return;
        }
        self.master = now;
        let Some(master) = now else {
            return;
        };
        self.emit(Event::Role {
            role: if master { "master" } else { "backup" }.into(),
        });
        if master {
            let d = self.desired();
            for l in (0..d.links.len()).filter(|&l| !d.links[l].usable && elsewhere(l, &d)) {
                if !self.waiting.contains(&(l, Why::Inherited)) {
                    self.waiting.push((l, Why::Inherited));
                }
            }
            // An apply follows, and the purges once it is live.
            self.verify = true;
        }
    }

    /// With `[ha]`, what keepalived's track files say: how many links are usable (up or
    /// degraded, not drained), and whether none is. Nothing while every link is still without
    /// a verdict: a router that just started stays in fault until it knows.
    pub fn ha_track(&self) -> Option<(u32, bool)> {
        self.config.ha.as_ref()?;
        if self.links.iter().all(|h| h.state == LinkState::Unknown) {
            return None;
        }
        let n = (0..self.links.len())
            .filter(|&l| {
                matches!(self.links[l].state, LinkState::Up | LinkState::Degraded)
                    && !self.drained[l]
            })
            .count() as u32;
        Some((n, n == 0))
    }

    /// With `[ha]`: whether this router is the master.
    pub fn is_master(&self) -> Option<bool> {
        self.master
    }

    /// The steering events of an apply: the first one, the default policy's share when it
    /// changed, every other policy's steer when it changed; repairs when nothing changed.
    fn tell_steering(&mut self, prev: Option<&DesiredState>, now: &DesiredState, r: &Applied) {
        let Some(prev) = prev else {
            return self.emit(Event::Ready {
                to: share_name(now, now.share()),
                nft_ms: ms(r.nft),
                routes_ms: ms(r.routes),
            });
        };
        if prev.share() != now.share() {
            self.emit(Event::Steer {
                policy: DEFAULT_POLICY.into(),
                to: share_name(now, now.share()),
                nft_ms: Some(ms(r.nft)),
                routes_ms: Some(ms(r.routes)),
            });
        }
        for p in now.policies.iter().skip(1) {
            if prev
                .policies
                .iter()
                .find(|o| o.name == p.name)
                .map(|o| &o.steer)
                == Some(&p.steer)
            {
                continue;
            }
            let to = match &p.steer {
                super::Steer::Share(s) => share_name(now, s),
                super::Steer::Fallback => "the default policy (no link usable)".into(),
                super::Steer::Refuse => "nothing: refused (no link usable)".into(),
            };
            self.emit(Event::Steer {
                policy: p.name.clone(),
                to,
                nft_ms: None,
                routes_ms: None,
            });
        }
        if r.nft_replaced {
            self.emit(Event::Repaired {
                what: "nft table inet uplinkd was missing or changed".into(),
            });
        }
        if prev == now && r.route_changes > 0 {
            self.emit(Event::Repaired {
                what: format!(
                    "{} of uplinkd's routing rules or routes were missing or changed",
                    r.route_changes
                ),
            });
        }
    }

    fn tell_problems(&mut self, problems: &[(String, String)]) {
        if self.dp_problems != problems {
            self.dp_problems = problems.to_vec();
        }
        self.report_problems();
    }

    /// Say what is wrong with a link once, when it starts or changes, and when it stops: what
    /// the last apply found, and targets that are the router's own addresses.
    pub(super) fn report_problems(&mut self) {
        let names = self.config.link_names();
        for (i, link) in names.into_iter().enumerate() {
            let own = self.config.links[i]
                .targets
                .iter()
                .filter(|t| self.local.contains(&t.addr().to_canonical()))
                .map(|t| {
                    format!("target {t} is this router's own address: its probes never leave it")
                });
            let now = self
                .dp_problems
                .iter()
                .filter(|(l, _)| *l == link)
                .map(|(_, e)| e.clone())
                .chain(own)
                .collect::<Vec<_>>()
                .join("; ");
            let now = (!now.is_empty()).then_some(now);
            if self.problems.get(i) != Some(&now) {
                if let Some(slot) = self.problems.get_mut(i) {
                    *slot = now.clone();
                }
                self.emit(Event::LinkProblem { link, problem: now });
            }
        }
    }

    /// A link's IPv4 addresses now. Addresses lost while another stays (a renumber, the link
    /// possibly up all along) strand the flows translated to them: they are reset after the next
    /// apply. A link left without any goes down instead, and all its flows go.
    pub(super) fn addresses_now(&mut self, link: LinkId, v4: Vec<std::net::Ipv4Addr>) {
        let old = std::mem::replace(&mut self.addrs[link], v4);
        let now = &self.addrs[link];
        let lost: Vec<_> = old.into_iter().filter(|a| !now.contains(a)).collect();
        if lost.is_empty() || now.is_empty() {
            return;
        }
        self.gone[link].extend(lost);
        if !self.waiting.contains(&(link, Why::Renumbered)) {
            self.waiting.push((link, Why::Renumbered));
        }
        self.verify = true;
    }

    /// A transition for status, counters and `watch`.
    fn record(&mut self, t: &Transition) {
        let name = self.config.links[t.link].name.clone();
        self.counters.entry(name.clone()).or_default().transitions += 1;
        let at = self.epoch_secs(t.at);
        self.last[t.link] = Some(TransitionStatus {
            from: t.from.to_string(),
            to: t.to.to_string(),
            at,
            reason: t.reason.clone(),
            ..TransitionStatus::default()
        });
        self.unsteered.retain(|(l, _)| *l != t.link);
        self.unsteered.push((t.link, t.at));
        self.emit(Event::Transition {
            link: name,
            from: t.from.to_string(),
            to: t.to.to_string(),
            reason: t.reason.clone(),
            at,
        });
    }

    pub(super) fn emit(&mut self, e: Event) {
        self.actions.push_back(Action::Emit(e));
    }
}

/// After the steering moved away from a dead link, its flows are purged and their clients
/// reset, so applications reconnect through a live link at once: only when a policy that uses
/// the link now sends its new flows to another usable link (itself, or by falling back to the
/// default policy). Otherwise there is nowhere better to go, and killing the flows would only
/// hurt: they are kept until there is.
fn elsewhere(link: LinkId, d: &DesiredState) -> bool {
    d.policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.members.contains(&link))
        .flat_map(|(i, _)| d.destinations(i))
        .any(|&(s, _)| s != link && d.links[s].usable)
}

/// New flows just moved from the usable link `from` to a link its policy prefers: with
/// `failback = "drain"` its flows are reset too, so their clients reconnect through the
/// preferred link (which the steering, already live, sends them to). Not when it merely left a
/// share for another reason (degraded, drained).
fn draining(config: &Config, from: LinkId, prev: &DesiredState, next: &DesiredState) -> bool {
    let preferred_now = config.policies.iter().enumerate().any(|(i, p)| {
        let prio = |l: LinkId| p.members.iter().find(|m| m.link == l).map(|m| m.priority);
        let (Some(was), Some(now)) = (prev.policies.get(i), next.policies.get(i)) else {
            return false;
        };
        was.steer.share().iter().any(|&(l, _)| l == from)
            && now
                .steer
                .share()
                .first()
                .is_some_and(|&(to, _)| prio(to) < prio(from))
    });
    config.links[from].failback == Failback::Drain
        && next.links[from].usable
        && !next.in_a_share(from)
        && preferred_now
}

/// A link's name, or the links of a tier with their shares.
pub fn share_name(d: &DesiredState, share: &[(LinkId, u32)]) -> String {
    let total: u32 = share.iter().map(|(_, w)| w).sum();
    match share {
        [] => "(no link)".into(),
        [(l, _)] => d.links[*l].name.clone(),
        many => many
            .iter()
            .map(|&(l, w)| {
                format!(
                    "{} {:.0}%",
                    d.links[l].name,
                    100.0 * f64::from(w) / f64::from(total)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests;
