//! The steering chains: chain `steer` (the rules, in order, then the default policy), the step
//! chains of rules that match on several lists, and one chain per policy giving new flows the
//! mark of a link of its share (weighted, sticky), falling back or refusing.

use super::plan::{unmarked, AddrSet, ChainPlan, DynOp, Op};
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

/// Chain `steer` (the rules, in order, then the default policy), the chains of rules that match
/// on more than one list, and one chain per policy.
pub(super) fn steering(d: &DesiredState, sticky: &mut Vec<AddrSet>) -> Vec<ChainPlan> {
    let mut chains = rule_chains(d);
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

/// Chain `steer` first, then the step chains of the rules.
///
/// A rule's lists are alternatives each, all of which must match: the first list is tested in
/// `steer`, which jumps to a chain for the next list, and so on; the last goes to the policy.
/// The size is the sum of the lists' lengths, not their product.
fn rule_chains(d: &DesiredState) -> Vec<ChainPlan> {
    let mut chains = Vec::new();
    let mut steer = Vec::new();
    for (k, r) in d.rules.iter().enumerate() {
        let levels = rule_levels(r);
        let target = policy_chain(d, r.policy);
        let step = |j: usize| {
            if j + 1 == levels.len() {
                target.clone()
            } else {
                format!("rule{k}_{}", j + 1)
            }
        };
        let mut head = vec![unmarked(d)];
        head.extend(r.proto.map(Op::L4Proto));
        if levels.is_empty() {
            steer.push([head, vec![Op::Jump(target.clone())]].concat());
            continue;
        }
        for alt in &levels[0] {
            steer.push([head.clone(), alt.clone(), vec![Op::Jump(step(0))]].concat());
        }
        for (j, level) in levels.iter().enumerate().skip(1) {
            let rules = level
                .iter()
                .map(|alt| [alt.clone(), vec![Op::Goto(step(j))]].concat())
                .collect();
            chains.push(regular(format!("rule{k}_{j}"), rules));
        }
    }
    steer.push(vec![unmarked(d), Op::Jump(policy_chain(d, 0))]);
    chains.insert(0, regular(STEER.into(), steer));
    chains
}

/// A rule's non-empty lists, in matching order, each as its alternatives.
fn rule_levels(r: &Rule) -> Vec<Vec<Vec<Op>>> {
    let addr = |dst, list: &[Prefix]| -> Vec<Vec<Op>> {
        list.iter()
            .map(|&prefix| vec![Op::Addr { dst, prefix }])
            .collect()
    };
    let port = |dst, list: &[(u16, u16)]| -> Vec<Vec<Op>> {
        list.iter()
            .map(|&(lo, hi)| vec![Op::Port { dst, lo, hi }])
            .collect()
    };
    [
        r.iif.iter().map(|i| vec![Op::IifName(i.clone())]).collect(),
        addr(false, &r.src),
        addr(true, &r.dst),
        port(false, &r.sport),
        port(true, &r.dport),
    ]
    .into_iter()
    .filter(|l: &Vec<Vec<Op>>| !l.is_empty())
    .collect()
}

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
