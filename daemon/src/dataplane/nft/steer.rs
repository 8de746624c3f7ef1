//! The steering chains: chain `steer` (the rules, in order, then the default policy), the step
//! chains of rules that match on several lists, and one chain per policy giving new flows the
//! mark of a link of its share (weighted, sticky), falling back or refusing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use super::plan::{
    intervals, unmarked, AddrSet, ChainPlan, DynOp, Intervals, MatchKind, MatchSet, Op,
};
use super::{NFPROTO_IPV4, NFPROTO_IPV6};
use crate::config::{Prefix, Rule};
use crate::engine::{DesiredState, Steer};

/// The regular chain new flows (LAN and the router's own) jump to, unmarked.
pub(super) const STEER: &str = "steer";

fn policy_chain(d: &DesiredState, policy: usize) -> String {
    format!("policy_{}", d.policies[policy].name)
}

/// `sticky_<policy>_<link number>_<4|6>`, the link numbered from 1 in configuration order: the
/// last two parts have no `_`, so names cannot collide.
fn sticky_set(d: &DesiredState, policy: usize, link: usize, v6: bool) -> String {
    format!(
        "sticky_{}_{}_{}",
        d.policies[policy].name,
        link + 1,
        if v6 { 6 } else { 4 }
    )
}

fn regular(name: String, rules: Vec<Vec<Op>>) -> ChainPlan {
    ChainPlan {
        name,
        base: None,
        rules,
    }
}

/// Chain `steer` (the rules, in order, then the default policy) with the sets its rules look
/// up, and one chain per policy.
pub(super) fn steering(
    d: &DesiredState,
    sticky: &mut Vec<AddrSet>,
    match_sets: &mut Vec<MatchSet>,
) -> Vec<ChainPlan> {
    let mut chains = vec![regular(STEER.into(), steer_rules(d, match_sets))];
    for (i, p) in d.policies.iter().enumerate() {
        // A sticky policy's sets exist while it does, whatever its links do, so hosts are
        // remembered through an outage.
        if p.sticky.is_some() {
            for &link in &p.members {
                for v6 in [false, true] {
                    sticky.push(AddrSet {
                        name: sticky_set(d, i, link, v6),
                        v6,
                    });
                }
            }
        }
        chains.push(regular(policy_chain(d, i), policy_rules(d, i)));
    }
    chains
}

/// The rules of chain `steer`: each configured rule, then the default policy.
///
/// Each of a rule's address and port lists is an interval set, looked up once whatever its
/// length (`ip daddr @rule0_dst4`). Address lists are per family: a rule becomes one nft rule
/// per family its lists allow (per LAN interface when it names some).
fn steer_rules(d: &DesiredState, match_sets: &mut Vec<MatchSet>) -> Vec<Vec<Op>> {
    let known = LISTS.with(|m| {
        let m = m.borrow();
        let same = m.0.upgrade().is_some_and(|r| Arc::ptr_eq(&r, &d.rules));
        if same {
            m.1.clone()
        } else {
            BTreeMap::new()
        }
    });
    let mut steer = Vec::new();
    for (k, r) in d.rules.iter().enumerate() {
        let mut set = |list: &str, kind: MatchKind, ranges: &dyn Fn() -> Vec<(u128, u128)>| {
            let name = format!("rule{k}_{list}");
            let intervals = known
                .get(&name)
                .cloned()
                .unwrap_or_else(|| Arc::new(intervals(kind, ranges())));
            match_sets.push(MatchSet {
                name: name.clone(),
                kind,
                intervals,
            });
            name
        };
        let mut ports = Vec::new();
        for (dst, list, tag) in [(false, &r.sport, "sport"), (true, &r.dport, "dport")] {
            if !list.is_empty() {
                let ranges = || {
                    list.iter()
                        .map(|&(lo, hi)| (lo.into(), hi.into()))
                        .collect()
                };
                let set = set(tag, MatchKind::Port, &ranges);
                ports.push(Op::PortIn { dst, set });
            }
        }
        let addressed = !r.src.is_empty() || !r.dst.is_empty();
        let mut families: Vec<Vec<Op>> = Vec::new();
        for v6 in [false, true] {
            let mut ops = Vec::new();
            for (dst, list, tag) in [(false, &r.src, "src"), (true, &r.dst, "dst")] {
                if list.is_empty() {
                    continue;
                }
                if !list.iter().any(|p| p.is_ipv6() == v6) {
                    // This list has no address of the family: no packet of it matches.
                    ops.clear();
                    break;
                }
                let ranges = || {
                    list.iter()
                        .filter(|p| p.is_ipv6() == v6)
                        .map(Prefix::range)
                        .collect()
                };
                let kind = if v6 { MatchKind::V6 } else { MatchKind::V4 };
                let set = set(&format!("{tag}{}", if v6 { 6 } else { 4 }), kind, &ranges);
                ops.push(Op::AddrIn { dst, v6, set });
            }
            if !ops.is_empty() {
                families.push(ops);
            }
        }
        if !addressed {
            families.push(Vec::new());
        }
        let iifs: Vec<Option<&String>> = if r.iif.is_empty() {
            vec![None]
        } else {
            r.iif.iter().map(Some).collect()
        };
        for iif in iifs {
            for addr in &families {
                let mut rule = vec![unmarked(d)];
                rule.extend(iif.map(|i| Op::IifName(i.clone())));
                rule.extend(r.proto.map(Op::L4Proto));
                rule.extend(addr.iter().cloned());
                rule.extend(ports.iter().cloned());
                rule.push(Op::Jump(policy_chain(d, r.policy)));
                steer.push(rule);
            }
        }
    }
    steer.push(vec![unmarked(d), Op::Jump(policy_chain(d, 0))]);
    let lists = match_sets
        .iter()
        .map(|m| (m.name.clone(), m.intervals.clone()))
        .collect();
    LISTS.with(|m| *m.borrow_mut() = (Arc::downgrade(&d.rules), lists));
    steer
}

thread_local! {
    /// The lists' intervals of the rules rendered last, by set name. Every apply renders the
    /// same rules again (a failover changes only where policies send flows), and sorting and
    /// merging 30,000 prefixes each time was on the failover's path; a reload brings new rules.
    static LISTS: RefCell<Lists> = const { RefCell::new((Weak::new(), BTreeMap::new())) };
}

/// The rules the lists were rendered from, and each list's intervals by set name.
type Lists = (Weak<Vec<Rule>>, BTreeMap<String, Arc<Intervals>>);

/// The rules of policy `i`'s chain.
fn policy_rules(d: &DesiredState, i: usize) -> Vec<Vec<Op>> {
    let p = &d.policies[i];
    // Hosts are placed and remembered only on links that work (the default policy with
    // nothing usable still uses its preferred link, without remembering anyone there).
    let share = match &p.steer {
        Steer::Share(s) => s,
        Steer::Fallback => return vec![vec![Op::Goto(policy_chain(d, 0))]],
        Steer::Refuse => {
            return vec![vec![
                unmarked(d),
                Op::SetMetaMark {
                    mask: d.mark_mask,
                    value: d.unreachable_mark,
                },
            ]]
        }
    };
    let live = share.iter().any(|&(l, _)| d.links[l].usable);
    if let Some(timeout) = p.sticky.filter(|_| live) {
        return sticky_rules(d, i, share, timeout.as_millis() as u64);
    }
    // Links sharing a tier split new flows by weight: link i of n takes a flow with
    // probability w_i / (w_i + ... + w_n) among those the links before it left unmarked,
    // which gives each exactly w_i / total.
    let mut rules = Vec::new();
    for (pick, &(link, w), remaining) in weighted(share) {
        let mut rule = vec![unmarked(d)];
        rule.extend(pick.then_some(Op::RandomBelow {
            modulus: remaining,
            below: w,
        }));
        rule.push(set_mark(d, link));
        rules.push(rule);
    }
    rules
}

/// `meta mark set` the link's mark.
fn set_mark(d: &DesiredState, link: usize) -> Op {
    Op::SetMetaMark {
        mask: d.mark_mask,
        value: d.links[link].mark,
    }
}

/// The rules of a sticky policy `i` with a live link in `share`.
fn sticky_rules(
    d: &DesiredState,
    i: usize,
    share: &[(usize, u32)],
    timeout_ms: u64,
) -> Vec<Vec<Op>> {
    let mut rules = Vec::new();
    // A source seen recently keeps its link while that link takes new flows here; each new
    // flow renews its timeout.
    for v6 in [false, true] {
        for &(link, _) in share {
            let set = sticky_set(d, i, link, v6);
            rules.push(vec![
                unmarked(d),
                Op::SourceIn {
                    set: set.clone(),
                    v6,
                },
                set_mark(d, link),
                Op::SetSource {
                    op: DynOp::Update,
                    set,
                    v6,
                    timeout_ms,
                },
            ]);
        }
    }
    // Others are placed by weight and remembered there, and forgotten on every other link of
    // the policy, so a recovered link does not take them back.
    for (v6, proto) in [(false, NFPROTO_IPV4), (true, NFPROTO_IPV6)] {
        for (pick, &(link, w), remaining) in weighted(share) {
            let mut rule = vec![unmarked(d), Op::NfProto(proto)];
            rule.extend(pick.then_some(Op::RandomBelow {
                modulus: remaining,
                below: w,
            }));
            rule.push(set_mark(d, link));
            rule.push(Op::SetSource {
                op: DynOp::Add,
                set: sticky_set(d, i, link, v6),
                v6,
                timeout_ms,
            });
            for &other in d.policies[i].members.iter().filter(|&&o| o != link) {
                rule.push(Op::SetSource {
                    op: DynOp::Delete,
                    set: sticky_set(d, i, other, v6),
                    v6,
                    timeout_ms,
                });
            }
            rules.push(rule);
        }
    }
    rules
}

/// For each link of a share: whether it must draw (all but the last), the link and its
/// weight, and the weight of it and the links after it.
fn weighted(share: &[(usize, u32)]) -> Vec<(bool, &(usize, u32), u32)> {
    let mut remaining: u32 = share.iter().map(|(_, w)| w).sum();
    share
        .iter()
        .enumerate()
        .map(|(n, lw)| {
            let r = remaining;
            remaining -= lw.1;
            (n + 1 < share.len(), lw, r)
        })
        .collect()
}
