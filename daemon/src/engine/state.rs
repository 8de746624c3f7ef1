//! The desired state: everything the dataplane must make true, complete and declarative, with
//! every policy already resolved into where its new flows go. The dataplane renders it and never
//! interprets a policy's last resort or which link is "the default" itself.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::{Engine, LinkId, LinkState};
use crate::config::{LastResort, Member, Prefix, Rule};

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
    /// One router of a pair (`[ha]`): LAN steering marks only packets addressed to the router
    /// (not the peer's VRRP adverts), and a WAN guard drops mid-stream TCP without state.
    pub ha: bool,
    /// The link whose table the router's own unmarked route lookups use (its sockets pick their
    /// source address there): the default policy's first link; `None` when the router's own
    /// traffic is not steered (`steer_router = false`) or there is no link.
    pub router_link: Option<LinkId>,
    /// Every policy, the default one first, with where its new flows go now.
    pub policies: Vec<PolicyPlan>,
    pub rules: std::sync::Arc<Vec<Rule>>,
}

impl DesiredState {
    /// The default policy's share.
    pub fn share(&self) -> &[(LinkId, u32)] {
        self.policies.first().map_or(&[], |p| p.steer.share())
    }

    /// The default policy's first link (the first of its share); `None` when it has none.
    pub fn steer_to(&self) -> Option<LinkId> {
        self.share().first().map(|&(l, _)| l)
    }

    /// Where policy `i`'s new flows end up: its own share, or the default policy's when it
    /// falls back; empty when they are refused.
    pub fn destinations(&self, i: usize) -> &[(LinkId, u32)] {
        match self.policies.get(i).map(|p| &p.steer) {
            Some(Steer::Share(s)) => s,
            Some(Steer::Fallback) => self.share(),
            Some(Steer::Refuse) | None => &[],
        }
    }

    /// Whether some policy sends new flows to `link`.
    pub fn in_a_share(&self, link: LinkId) -> bool {
        self.policies
            .iter()
            .any(|p| p.steer.share().iter().any(|&(l, _)| l == link))
    }
}

/// Where a policy's new flows go, decided by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steer {
    /// These links share them, with their weights. The default policy with nothing usable
    /// (and `last_resort = "default"`) keeps its preferred link here, usable or not: new flows
    /// then fail as they would without uplinkd.
    Share(Vec<(LinkId, u32)>),
    /// Nothing usable: the default policy takes them.
    Fallback,
    /// Nothing usable: they are refused at once (the unreachable mark).
    Refuse,
}

impl Steer {
    /// The links of a share; empty when falling back or refusing.
    pub fn share(&self) -> &[(LinkId, u32)] {
        match self {
            Steer::Share(s) => s,
            Steer::Fallback | Steer::Refuse => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPlan {
    pub name: String,
    /// Every link of the policy, usable or not.
    pub members: Vec<LinkId>,
    pub steer: Steer,
    pub last_resort: LastResort,
    pub sticky: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    pub name: String,
    pub interface: String,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<std::net::Ipv6Addr>,
    pub mark: u32,
    pub table: u32,
    pub usable: bool,
    /// Taken out of service: no new flows, though it may work.
    pub drained: bool,
    /// IPv6 source prefix translation instead of masquerade.
    pub nptv6: Option<Prefix>,
    /// With `[ha]`: the shared address IPv4 leaving the link is translated to.
    pub public_vip: Option<Ipv4Addr>,
}

impl Engine {
    /// Where a policy's new flows go: its usable members (not drained) of the best rank, where
    /// a degraded link ranks below every up one and then the lower priority wins. With none
    /// usable, its last resort; for the default policy "default" means its preferred member
    /// anyway, so new flows fail as they would without uplinkd and nothing is steered onto a
    /// link we know less about.
    pub fn policy_steer(&self, policy: usize) -> Steer {
        let Some(p) = self.config.policies.get(policy) else {
            return Steer::Refuse;
        };
        let ok = |m: &&Member| self.links[m.link].state.usable() && !self.drained[m.link];
        let rank = |m: &Member| (self.links[m.link].state == LinkState::Degraded, m.priority);
        match (p.members.iter().filter(ok).map(rank).min(), p.last_resort) {
            (Some(best), _) => Steer::Share(
                p.members
                    .iter()
                    .filter(ok)
                    .filter(|m| rank(m) == best)
                    .map(|m| (m.link, m.weight))
                    .collect(),
            ),
            (None, LastResort::Default) if policy == 0 => p
                .members
                .iter()
                .min_by_key(|m| m.priority)
                .map_or(Steer::Refuse, |m| Steer::Share(vec![(m.link, m.weight)])),
            (None, LastResort::Default) => Steer::Fallback,
            (None, LastResort::Unreachable) => Steer::Refuse,
        }
    }

    /// The complete desired state now.
    pub fn desired(&self) -> DesiredState {
        let dp = &self.config.dataplane;
        let policies: Vec<PolicyPlan> = self
            .config
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| PolicyPlan {
                name: p.name.clone(),
                members: p.members.iter().map(|m| m.link).collect(),
                steer: self.policy_steer(i),
                last_resort: p.last_resort,
                sticky: p.sticky,
            })
            .collect();
        let router_link = policies
            .first()
            .and_then(|p| p.steer.share().first())
            .map(|&(l, _)| l)
            .filter(|_| dp.steer_router);
        DesiredState {
            unreachable_mark: dp.unreachable_mark(),
            steer_router: dp.steer_router,
            ha: self.config.ha.is_some(),
            mark_mask: dp.mark_mask,
            tickle_mark: dp.tickle_mark(),
            rule_priority: dp.rule_priority,
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
                    gateway6: l.gateway6,
                    mark: l.mark,
                    table: l.table,
                    usable: h.state.usable(),
                    drained: self.drained[i],
                    nptv6: l.nptv6,
                    public_vip: l.public_vip,
                })
                .collect(),
            router_link,
            policies,
            rules: self.config.rules.clone(),
        }
    }
}
