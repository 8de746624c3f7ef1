//! uplinkd's nftables table, `inet uplinkd`, replaced as a whole in one atomic batch.
//!
//! The table is first rendered into a small plan ([`Ruleset`]) that prints as nft-like text (for
//! tests and debug logs) and converts into nftnl expressions; the two cannot drift apart because
//! both come from the same [`Op`] values.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::net::IpAddr;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Immediate, InterfaceName, Lookup, Masquerade, Meta, Register,
    RejectionType, States, Verdict,
};
use nftnl::set::Set;
use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table,
};

use super::nft_ext::{
    set_buffers, set_dynamic, set_timeout, Base, Dynset, Hton32, Notrack, NumgenRandom, RawLoad,
    SnatPrefix6,
};
pub use super::reset::{add_stale, StaleKey4, StaleKey6, STALE4, STALE6, STALE_TIMEOUT_MS};
use crate::config::Prefix;
use crate::engine::{DesiredState, Steer};

/// The one table uplinkd owns (DESIGN.md §3).
pub const TABLE: &CStr = c"uplinkd";

/// Mangle priority: after conntrack (-200) so `ct mark` is known, before routing decides.
const PRIO_MANGLE: i32 = libc::NF_IP_PRI_MANGLE;
/// Source NAT priority, where masquerade belongs.
const PRIO_SRCNAT: i32 = libc::NF_IP_PRI_NAT_SRC;
/// Filter priority for the forward chain.
const PRIO_FILTER: i32 = libc::NF_IP_PRI_FILTER;
/// Before conntrack (-200): where `notrack` works.
const PRIO_RAW: i32 = libc::NF_IP_PRI_RAW;

const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;
const TCP_FLAG_SYN: u8 = 0x02;
const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `ct mark & mask == value`
    CtMarkIs {
        mask: u32,
        value: u32,
    },
    IifName(String),
    OifName(String),
    CtStateNew,
    /// `meta mark set meta mark & ~mask | value`: our bits replaced, others kept.
    SetMetaMark {
        mask: u32,
        value: u32,
    },
    /// `ct mark set ct mark & ~mask | value`
    SetCtMark {
        mask: u32,
        value: u32,
    },
    Masquerade,
    /// `meta nfproto ipv4|ipv6`
    NfProto(u8),
    /// `meta l4proto N`
    L4Proto(u8),
    /// `ip saddr PREFIX` (or daddr, or ip6): the family check included.
    Addr {
        dst: bool,
        prefix: Prefix,
    },
    /// `th dport LO-HI` (or sport); the rule checks the protocol before.
    Port {
        dst: bool,
        lo: u16,
        hi: u16,
    },
    /// `ip saddr @SET` (or ip6): the source address is in a sticky set.
    SourceIn {
        set: String,
        v6: bool,
    },
    /// `add|update|delete @SET { ip saddr timeout T }` from the packet path.
    SetSource {
        op: DynOp,
        set: String,
        v6: bool,
        timeout_ms: u64,
    },
    Jump(String),
    Goto(String),
    /// `snat ip6 prefix to PREFIX`: the source prefix replaced, the interface identifier kept.
    SnatPrefix(Prefix),
    /// `tcp flags & syn == 0`: not a connection attempt.
    TcpNotSyn,
    /// The packet's flow key is in a stale set (`@nh,OFFSET,LEN @set`).
    StaleFlow {
        v6: bool,
    },
    RejectTcpReset,
    CtStateInvalid,
    Drop,
    /// `numgen random mod MODULUS < BELOW`
    RandomBelow {
        modulus: u32,
        below: u32,
    },
    /// `meta mark & mask == value`
    MetaMarkIs {
        mask: u32,
        value: u32,
    },
    Notrack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPlan {
    pub name: String,
    /// Hook, type and priority of a base chain; `None` for a regular chain (a jump target).
    pub base: Option<(Hook, ChainType, i32)>,
    pub rules: Vec<Vec<Op>>,
}

/// A sticky set: source addresses (4 or 16 bytes) remembered for one link of one policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StickySet {
    pub name: String,
    pub v6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<ChainPlan>,
    pub sticky: Vec<StickySet>,
}

/// Dynamic set operations (`NFT_DYNSET_OP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynOp {
    Add,
    Update,
    Delete,
}

/// The table for a desired state, given each link's current addresses.
pub fn render(d: &DesiredState, addrs: &[Vec<IpAddr>]) -> Ruleset {
    let mask = d.mark_mask;
    let unmarked = Op::MetaMarkIs { mask, value: 0 };
    // Every packet of a flow that already has a link keeps it: restore our mark bits from the
    // flow's ct mark. Replies to the LAN then match `lookup main suppress_prefixlength 0` first
    // (see routes.rs), so restoring does not send them back out a WAN.
    let mut pre = restore_marks(d);
    // Connections that arrive on a link (port forwards, services on the router) belong to it:
    // the ct mark then routes their answers back out the same link, whatever new flows do.
    for l in &d.links {
        pre.push(vec![
            Op::IifName(l.interface.clone()),
            Op::CtStateNew,
            Op::SetCtMark {
                mask,
                value: l.mark,
            },
        ]);
    }
    // New LAN flows get the mark of the link their policy chooses, which routes them to its
    // table (chain `steer`).
    for lan in &d.lan_interfaces {
        pre.push(vec![
            Op::IifName(lan.clone()),
            Op::CtStateNew,
            unmarked.clone(),
            Op::Jump(STEER.into()),
        ]);
    }
    // Stranded TCP flows: after a failover their LAN packets are answered with a reset. Only
    // flows uplinkd killed are in the sets; a SYN is never rejected, so a new connection that
    // happens to reuse a killed flow's ports goes through. Invalid LAN packets (e.g. the FIN of a
    // flow whose entry was deleted) are dropped rather than forwarded un-NATed.
    let mut forward = Vec::new();
    for lan in &d.lan_interfaces {
        for (v6, proto) in [(false, NFPROTO_IPV4), (true, NFPROTO_IPV6)] {
            forward.push(vec![
                Op::IifName(lan.clone()),
                Op::NfProto(proto),
                Op::L4Proto(IPPROTO_TCP),
                Op::TcpNotSyn,
                Op::StaleFlow { v6 },
                Op::RejectTcpReset,
            ]);
        }
    }
    for lan in &d.lan_interfaces {
        forward.push(vec![Op::IifName(lan.clone()), Op::CtStateInvalid, Op::Drop]);
    }
    // The tickles uplinkd sends to reset idle clients must not create conntrack entries: the
    // client's answer has to meet the reject rule above, not a fresh entry.
    let output = vec![vec![
        Op::MetaMarkIs {
            mask,
            value: d.tickle_mark,
        },
        Op::Notrack,
    ]];
    // The router's own packets of a flow that has a link (answers of its services to
    // connections that came in on a link, its own connections out a link) keep that link; its
    // new flows follow the policies like the LAN's (probes and tickles carry a mark already).
    // The route chain re-routes when the mark changes.
    let mut route_out = restore_marks(d);
    if d.steer_router {
        // A new flow from a link's own address (a socket bound to it) belongs to that link;
        // the default policy's link is left out, as its address is what unbound sockets get.
        for (i, l) in d.links.iter().enumerate() {
            if d.router_link == Some(i) {
                continue;
            }
            for &a in addrs.get(i).into_iter().flatten() {
                route_out.push(vec![
                    Op::CtStateNew,
                    unmarked.clone(),
                    Op::Addr {
                        dst: false,
                        prefix: Prefix::host(a),
                    },
                    Op::SetMetaMark {
                        mask,
                        value: l.mark,
                    },
                ]);
            }
        }
        route_out.push(vec![
            Op::CtStateNew,
            unmarked.clone(),
            Op::Jump(STEER.into()),
        ]);
    }
    let mut post = Vec::new();
    for l in &d.links {
        let ct = Op::SetCtMark {
            mask,
            value: l.mark,
        };
        if let Some(p) = l.nptv6 {
            post.push(vec![
                Op::OifName(l.interface.clone()),
                Op::NfProto(NFPROTO_IPV6),
                ct.clone(),
                Op::SnatPrefix(p),
            ]);
        }
        post.push(vec![Op::OifName(l.interface.clone()), ct, Op::Masquerade]);
    }
    let base = |name: &str, hook, kind, prio, rules| ChainPlan {
        name: name.into(),
        base: Some((hook, kind, prio)),
        rules,
    };
    let mut chains = vec![
        base(
            "prerouting",
            Hook::PreRouting,
            ChainType::Filter,
            PRIO_MANGLE,
            pre,
        ),
        base(
            "forward",
            Hook::Forward,
            ChainType::Filter,
            PRIO_FILTER,
            forward,
        ),
        base("output", Hook::Out, ChainType::Filter, PRIO_RAW, output),
        base(
            "output_route",
            Hook::Out,
            ChainType::Route,
            PRIO_MANGLE,
            route_out,
        ),
        base(
            "postrouting",
            Hook::PostRouting,
            ChainType::Nat,
            PRIO_SRCNAT,
            post,
        ),
    ];
    let mut sticky = Vec::new();
    chains.extend(steering(d, &mut sticky));
    Ruleset { chains, sticky }
}

/// The regular chain new flows (LAN and the router's own) jump to, unmarked.
const STEER: &str = "steer";

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

/// Chain `steer` (the rules, in order, then the default policy), one chain per policy, and the
/// chains of rules that match on more than one list.
fn steering(d: &DesiredState, sticky: &mut Vec<StickySet>) -> Vec<ChainPlan> {
    let mask = d.mark_mask;
    let unmarked = Op::MetaMarkIs { mask, value: 0 };
    let regular = |name: String, rules| ChainPlan {
        name,
        base: None,
        rules,
    };
    let mut chains = Vec::new();
    // A rule's lists are alternatives each, all of which must match: the first list is tested
    // in `steer`, which jumps to a chain for the next list, and so on; the last goes to the
    // policy. The size is the sum of the lists' lengths, not their product.
    let mut steer = Vec::new();
    for (k, r) in d.rules.iter().enumerate() {
        let addr = |dst, list: &[crate::config::Prefix]| -> Vec<Vec<Op>> {
            list.iter()
                .map(|&prefix| vec![Op::Addr { dst, prefix }])
                .collect()
        };
        let port = |dst, list: &[(u16, u16)]| -> Vec<Vec<Op>> {
            list.iter()
                .map(|&(lo, hi)| vec![Op::Port { dst, lo, hi }])
                .collect()
        };
        let levels: Vec<Vec<Vec<Op>>> = [
            r.iif.iter().map(|i| vec![Op::IifName(i.clone())]).collect(),
            addr(false, &r.src),
            addr(true, &r.dst),
            port(false, &r.sport),
            port(true, &r.dport),
        ]
        .into_iter()
        .filter(|l: &Vec<Vec<Op>>| !l.is_empty())
        .collect();
        let target = policy_chain(d, r.policy);
        let step = |j: usize| {
            if j + 1 == levels.len() {
                target.clone()
            } else {
                format!("rule{k}_{}", j + 1)
            }
        };
        let mut head = vec![unmarked.clone()];
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
    steer.push(vec![unmarked.clone(), Op::Jump(policy_chain(d, 0))]);
    chains.insert(0, regular(STEER.into(), steer));

    for (i, p) in d.policies.iter().enumerate() {
        let mut rules = Vec::new();
        let set_mark = |link: usize| Op::SetMetaMark {
            mask,
            value: d.links[link].mark,
        };
        // A sticky policy's sets exist while it does, whatever its links do, so hosts are
        // remembered through an outage.
        if p.sticky.is_some() {
            for &link in &p.members {
                for v6 in [false, true] {
                    sticky.push(StickySet {
                        name: sticky_set(d, i, link, v6),
                        v6,
                    });
                }
            }
        }
        // Hosts are placed and remembered only on links that work (the default policy with
        // nothing usable still uses its preferred link, without remembering anyone there).
        let share = match &p.steer {
            Steer::Share(s) => s,
            Steer::Fallback => {
                chains.push(regular(
                    policy_chain(d, i),
                    vec![vec![Op::Goto(policy_chain(d, 0))]],
                ));
                continue;
            }
            Steer::Refuse => {
                let refuse = vec![
                    unmarked.clone(),
                    Op::SetMetaMark {
                        mask,
                        value: d.unreachable_mark,
                    },
                ];
                chains.push(regular(policy_chain(d, i), vec![refuse]));
                continue;
            }
        };
        let live = share.iter().any(|&(l, _)| d.links[l].usable);
        if let Some(timeout) = p.sticky.filter(|_| live) {
            let timeout_ms = timeout.as_millis() as u64;
            // A source seen recently keeps its link while that link takes new flows here; each
            // new flow renews its timeout.
            for v6 in [false, true] {
                for &(link, _) in share {
                    let set = sticky_set(d, i, link, v6);
                    rules.push(vec![
                        unmarked.clone(),
                        Op::SourceIn {
                            set: set.clone(),
                            v6,
                        },
                        set_mark(link),
                        Op::SetSource {
                            op: DynOp::Update,
                            set,
                            v6,
                            timeout_ms,
                        },
                    ]);
                }
            }
            // Others are placed by weight and remembered there, and forgotten on every other
            // link of the policy, so a recovered link does not take them back.
            for (v6, proto) in [(false, NFPROTO_IPV4), (true, NFPROTO_IPV6)] {
                for (pick, &(link, w), remaining) in weighted(share) {
                    let mut rule = vec![unmarked.clone(), Op::NfProto(proto)];
                    rule.extend(pick.then_some(Op::RandomBelow {
                        modulus: remaining,
                        below: w,
                    }));
                    rule.push(set_mark(link));
                    rule.push(Op::SetSource {
                        op: DynOp::Add,
                        set: sticky_set(d, i, link, v6),
                        v6,
                        timeout_ms,
                    });
                    for &other in p.members.iter().filter(|&&o| o != link) {
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
        } else {
            // Links sharing a tier split new flows by weight: link i of n takes a flow with
            // probability w_i / (w_i + ... + w_n) among those the links before it left
            // unmarked, which gives each exactly w_i / total.
            for (pick, &(link, w), remaining) in weighted(share) {
                let mut rule = vec![unmarked.clone()];
                rule.extend(pick.then_some(Op::RandomBelow {
                    modulus: remaining,
                    below: w,
                }));
                rule.push(set_mark(link));
                rules.push(rule);
            }
        }
        chains.push(regular(policy_chain(d, i), rules));
    }
    chains
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

/// For each link: `ct mark & mask == mark → meta mark set ... | mark`.
fn restore_marks(d: &DesiredState) -> Vec<Vec<Op>> {
    let mask = d.mark_mask;
    d.links
        .iter()
        .map(|l| {
            vec![
                Op::CtMarkIs {
                    mask,
                    value: l.mark,
                },
                Op::SetMetaMark {
                    mask,
                    value: l.mark,
                },
            ]
        })
        .collect()
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CtMarkIs { mask, value } => write!(f, "ct mark & {mask:#x} == {value:#x}"),
            Op::IifName(n) => write!(f, "iifname {n:?}"),
            Op::OifName(n) => write!(f, "oifname {n:?}"),
            Op::CtStateNew => write!(f, "ct state new"),
            Op::SetMetaMark { mask, value } => {
                write!(f, "meta mark set meta mark & {:#x} | {value:#x}", !mask)
            }
            Op::SetCtMark { mask, value } => {
                write!(f, "ct mark set ct mark & {:#x} | {value:#x}", !mask)
            }
            Op::Masquerade => write!(f, "masquerade"),
            Op::NfProto(p) => write!(
                f,
                "meta nfproto {}",
                if *p == NFPROTO_IPV6 { "ipv6" } else { "ipv4" }
            ),
            Op::L4Proto(p) => match *p {
                IPPROTO_TCP => write!(f, "meta l4proto tcp"),
                17 => write!(f, "meta l4proto udp"),
                p => write!(f, "meta l4proto {p}"),
            },
            Op::Addr { dst, prefix } => write!(
                f,
                "{} {} {prefix}",
                if prefix.is_ipv6() { "ip6" } else { "ip" },
                if *dst { "daddr" } else { "saddr" }
            ),
            Op::Port { dst, lo, hi } => {
                write!(f, "th {} {lo}", if *dst { "dport" } else { "sport" })?;
                if hi != lo {
                    write!(f, "-{hi}")?;
                }
                Ok(())
            }
            Op::SourceIn { set, v6 } => {
                write!(f, "{} saddr @{set}", if *v6 { "ip6" } else { "ip" })
            }
            Op::SetSource {
                op,
                set,
                v6,
                timeout_ms,
            } => {
                let op = match op {
                    DynOp::Add => "add",
                    DynOp::Update => "update",
                    DynOp::Delete => "delete",
                };
                let ip = if *v6 { "ip6" } else { "ip" };
                match op {
                    "delete" => write!(f, "{op} @{set} {{ {ip} saddr }}"),
                    _ => write!(
                        f,
                        "{op} @{set} {{ {ip} saddr timeout {}s }}",
                        timeout_ms / 1000
                    ),
                }
            }
            Op::Jump(c) => write!(f, "jump {c}"),
            Op::Goto(c) => write!(f, "goto {c}"),
            Op::SnatPrefix(p) => write!(f, "snat ip6 prefix to {p}"),
            Op::TcpNotSyn => write!(f, "tcp flags & syn == 0"),
            Op::StaleFlow { v6: false } => write!(f, "@nh,96,96 @stale4"),
            Op::StaleFlow { v6: true } => write!(f, "@nh,64,288 @stale6"),
            Op::RejectTcpReset => write!(f, "reject with tcp reset"),
            Op::CtStateInvalid => write!(f, "ct state invalid"),
            Op::Drop => write!(f, "drop"),
            Op::MetaMarkIs { mask, value } => write!(f, "meta mark & {mask:#x} == {value:#x}"),
            Op::RandomBelow { modulus, below } => {
                write!(f, "numgen random mod {modulus} < {below}")
            }
            Op::Notrack => write!(f, "notrack"),
        }
    }
}

impl fmt::Display for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table inet {} {{", TABLE.to_string_lossy())?;
        for (name, len) in [(STALE4, 12), (STALE6, 36)] {
            writeln!(
                f,
                "  set {} {{ type integer ({len} bytes); flags timeout; timeout {}s; }}",
                name.to_string_lossy(),
                STALE_TIMEOUT_MS / 1000
            )?;
        }
        for set in &self.sticky {
            writeln!(
                f,
                "  set {} {{ type {}; flags dynamic,timeout; }}",
                set.name,
                if set.v6 { "ipv6_addr" } else { "ipv4_addr" }
            )?;
        }
        for c in &self.chains {
            write!(f, "  chain {} {{", c.name)?;
            if let Some((hook, kind, priority)) = c.base {
                let kind = match kind {
                    ChainType::Nat => "nat",
                    ChainType::Route => "route",
                    ChainType::Filter => "filter",
                };
                let hook = match hook {
                    Hook::PreRouting => "prerouting",
                    Hook::In => "input",
                    Hook::Forward => "forward",
                    Hook::Out => "output",
                    Hook::PostRouting => "postrouting",
                    Hook::Ingress => "ingress",
                };
                write!(
                    f,
                    " type {kind} hook {hook} priority {priority}; policy accept;"
                )?;
            }
            writeln!(f)?;
            for r in &c.rules {
                let ops: Vec<String> = r.iter().map(Op::to_string).collect();
                writeln!(f, "    {}", ops.join(" "))?;
            }
            writeln!(f, "  }}")?;
        }
        write!(f, "}}")
    }
}

/// Write our table as `rules` in one transaction; the kernel applies all of it or nothing.
///
/// With the ruleset written last (`previous`), the table is updated in place: every chain is
/// flushed and refilled, chains and sets no longer wanted are deleted, and the sets that stay
/// (stale flows, sticky sources) keep their elements. Without it, or when the kernel refuses the
/// update (someone changed our table), the table is replaced as a whole: add (so the delete
/// cannot fail), delete, re-create. Returns whether it was replaced, emptying its sets.
pub fn replace(rules: &Ruleset, previous: Option<&Ruleset>) -> io::Result<bool> {
    if let Some(previous) = previous {
        if write(rules, Some(previous)).is_ok() {
            return Ok(false);
        }
    }
    write(rules, None)?;
    Ok(true)
}

fn write(rules: &Ruleset, previous: Option<&Ruleset>) -> io::Result<()> {
    let table = Table::new(TABLE, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    let names = |r: &Ruleset| -> io::Result<Vec<CString>> {
        r.chains.iter().map(|c| cstring(&c.name)).collect()
    };
    let sticky_sets = |r: &Ruleset, first_id: u32| -> io::Result<Vec<StickySetObj<'_>>> {
        r.sticky
            .iter()
            .zip(first_id..)
            .map(|(s, id)| StickySetObj::new(s, id, &table))
            .collect()
    };
    // Objects of the previous ruleset; they must outlive the batch that refers to them.
    let old_names = previous.map(names).transpose()?.unwrap_or_default();
    let old_chains: Vec<Chain<'_>> = old_names.iter().map(|n| Chain::new(n, &table)).collect();
    let old_sets = previous
        .map(|p| sticky_sets(p, 1000))
        .transpose()?
        .unwrap_or_default();
    match previous {
        Some(p) => {
            for chain in &old_chains {
                batch.add(&Rule::new(chain), MsgType::Del);
            }
            for (c, chain) in p.chains.iter().zip(&old_chains) {
                if !rules.chains.iter().any(|n| n.name == c.name) {
                    batch.add(chain, MsgType::Del);
                }
            }
            for (s, obj) in p.sticky.iter().zip(&old_sets) {
                if !rules.sticky.contains(s) {
                    obj.del(&mut batch);
                }
            }
        }
        None => {
            batch.add(&table, MsgType::Del);
            batch.add(&table, MsgType::Add);
        }
    }
    let sets = StaleSets::new(&table);
    batch.add(&sets.v4, MsgType::Add);
    batch.add(&sets.v6, MsgType::Add);
    let sticky = sticky_sets(rules, 3)?;
    for s in &sticky {
        s.add(&mut batch);
    }
    let new_names = names(rules)?;
    let mut chains = Vec::new();
    for (c, name) in rules.chains.iter().zip(&new_names) {
        let mut chain = Chain::new(name, &table);
        if let Some((hook, kind, priority)) = c.base {
            chain.set_hook(hook, priority);
            chain.set_type(kind);
            chain.set_policy(Policy::Accept);
        }
        batch.add(&chain, MsgType::Add);
        chains.push(chain);
    }
    let refs = Refs {
        stale: &sets,
        sticky: &sticky,
    };
    for (c, chain) in rules.chains.iter().zip(&chains) {
        for ops in &c.rules {
            let mut rule = Rule::new(chain);
            for op in ops {
                add_op(&mut rule, op, &refs)?;
            }
            batch.add(&rule, MsgType::Add);
        }
    }
    send(&batch.finalize())
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// The sets rules refer to, for lookups and dynamic updates by name and batch id.
struct Refs<'r, 'a> {
    stale: &'r StaleSets<'a>,
    sticky: &'r [StickySetObj<'a>],
}

impl Refs<'_, '_> {
    fn sticky(&self, name: &str) -> io::Result<&StickySetObj<'_>> {
        self.sticky
            .iter()
            .find(|s| s.name().to_bytes() == name.as_bytes())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no set {name}")))
    }
}

/// A sticky set as nftnl objects: flags dynamic and timeout, the timeout given per element by
/// the rules that add them.
enum StickySetObj<'a> {
    V4(Set<'a, std::net::Ipv4Addr>, CString),
    V6(Set<'a, std::net::Ipv6Addr>, CString),
}

impl<'a> StickySetObj<'a> {
    fn new(s: &StickySet, id: u32, table: &'a Table) -> io::Result<Self> {
        let name = cstring(&s.name)?;
        Ok(if s.v6 {
            let set = Set::new_named(&name, id, table, ProtoFamily::Inet);
            set_dynamic(&set);
            StickySetObj::V6(set, name)
        } else {
            let set = Set::new_named(&name, id, table, ProtoFamily::Inet);
            set_dynamic(&set);
            StickySetObj::V4(set, name)
        })
    }

    fn name(&self) -> &CStr {
        match self {
            StickySetObj::V4(_, n) | StickySetObj::V6(_, n) => n,
        }
    }

    fn add(&self, batch: &mut Batch) {
        match self {
            StickySetObj::V4(s, _) => batch.add(s, MsgType::Add),
            StickySetObj::V6(s, _) => batch.add(s, MsgType::Add),
        }
    }

    fn del(&self, batch: &mut Batch) {
        match self {
            StickySetObj::V4(s, _) => batch.add(s, MsgType::Del),
            StickySetObj::V6(s, _) => batch.add(s, MsgType::Del),
        }
    }

    fn lookup(&self) -> Lookup {
        match self {
            StickySetObj::V4(s, _) => Lookup::new(s),
            StickySetObj::V6(s, _) => Lookup::new(s),
        }
    }

    fn id(&self) -> u32 {
        match self {
            StickySetObj::V4(s, _) => s.get_id(),
            StickySetObj::V6(s, _) => s.get_id(),
        }
    }
}

struct StaleSets<'a> {
    v4: Set<'a, StaleKey4>,
    v6: Set<'a, StaleKey6>,
}

impl<'a> StaleSets<'a> {
    fn new(table: &'a Table) -> Self {
        let v4 = Set::new_named(STALE4, 1, table, ProtoFamily::Inet);
        let v6 = Set::new_named(STALE6, 2, table, ProtoFamily::Inet);
        set_timeout(&v4, STALE_TIMEOUT_MS);
        set_timeout(&v6, STALE_TIMEOUT_MS);
        StaleSets { v4, v6 }
    }
}

/// Remove our table, if it exists.
pub fn delete() -> io::Result<()> {
    let table = Table::new(TABLE, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(&batch.finalize())
}

/// Whether our table exists (someone may have run `nft flush ruleset`).
pub fn exists() -> io::Result<bool> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let seq = 0;
    let portid = socket.portid();
    socket.send(&nftnl::table::get_tables_nlmsg(seq))?;
    let mut tables: HashSet<CString> = HashSet::new();
    let mut buf = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    loop {
        let n = socket.recv_raw(&mut buf[..])?;
        if n == 0 {
            break;
        }
        match mnl::cb_run2(
            &buf[..n],
            seq,
            portid,
            nftnl::table::get_tables_cb,
            &mut tables,
        )? {
            mnl::CbResult::Stop => break,
            mnl::CbResult::Ok => {}
        }
    }
    Ok(tables.contains(TABLE))
}

fn add_op(rule: &mut Rule<'_>, op: &Op, refs: &Refs<'_, '_>) -> io::Result<()> {
    let sets = refs.stale;
    match op {
        Op::CtMarkIs { mask, value } => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Bitwise::new(*mask, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Eq, *value));
        }
        Op::IifName(n) | Op::OifName(n) => {
            let name = CString::new(n.as_str())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            rule.add_expr(&if matches!(op, Op::IifName(_)) {
                Meta::IifName
            } else {
                Meta::OifName
            });
            rule.add_expr(&Cmp::new(CmpOp::Eq, InterfaceName::Exact(name)));
        }
        Op::CtStateNew => {
            rule.add_expr(&Conntrack::State);
            rule.add_expr(&Bitwise::new(States::NEW.bits(), 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Op::SetMetaMark { mask, value } => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Bitwise::new(!mask, *value));
            rule.add_expr(&Meta::Mark { set: true });
        }
        Op::SetCtMark { mask, value } => {
            rule.add_expr(&Conntrack::Mark { set: false });
            rule.add_expr(&Bitwise::new(!mask, *value));
            rule.add_expr(&Conntrack::Mark { set: true });
        }
        Op::Masquerade => rule.add_expr(&Masquerade),
        Op::NfProto(p) => {
            rule.add_expr(&Meta::NfProto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, *p));
        }
        Op::L4Proto(p) => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, *p));
        }
        Op::Addr { dst, prefix } => {
            let v6 = prefix.is_ipv6();
            family(rule, v6);
            let (addr, mask) = prefix.bytes();
            let offset = match (v6, dst) {
                (false, false) => 12,
                (false, true) => 16,
                (true, false) => 8,
                (true, true) => 24,
            };
            rule.add_expr(&RawLoad {
                base: Base::Network,
                offset,
                len: addr.len() as u32,
            });
            if mask.iter().any(|&b| b != 0xff) {
                let zero = vec![0u8; mask.len()];
                rule.add_expr(&Bitwise::new(&mask[..], &zero[..]));
            }
            rule.add_expr(&Cmp::new(CmpOp::Eq, &addr[..]));
        }
        Op::Port { dst, lo, hi } => {
            rule.add_expr(&RawLoad {
                base: Base::Transport,
                offset: if *dst { 2 } else { 0 },
                len: 2,
            });
            if lo == hi {
                rule.add_expr(&Cmp::new(CmpOp::Eq, &lo.to_be_bytes()[..]));
            } else {
                rule.add_expr(&Cmp::new(CmpOp::Gte, &lo.to_be_bytes()[..]));
                rule.add_expr(&Cmp::new(CmpOp::Lte, &hi.to_be_bytes()[..]));
            }
        }
        Op::SourceIn { set, v6 } => {
            family(rule, *v6);
            load_saddr(rule, *v6);
            rule.add_expr(&refs.sticky(set)?.lookup());
        }
        Op::SetSource {
            op,
            set,
            v6,
            timeout_ms,
        } => {
            load_saddr(rule, *v6);
            let s = refs.sticky(set)?;
            rule.add_expr(&Dynset {
                op: match op {
                    DynOp::Add => libc::NFT_DYNSET_OP_ADD,
                    DynOp::Update => libc::NFT_DYNSET_OP_UPDATE,
                    DynOp::Delete => 2, // NFT_DYNSET_OP_DELETE (Linux 5.18)
                } as u32,
                set: s.name(),
                set_id: s.id(),
                timeout_ms: (*op != DynOp::Delete).then_some(*timeout_ms),
            });
        }
        Op::Jump(c) | Op::Goto(c) => {
            let chain = cstring(c)?;
            rule.add_expr(&if matches!(op, Op::Jump(_)) {
                Verdict::Jump { chain }
            } else {
                Verdict::Goto { chain }
            });
        }
        Op::SnatPrefix(p) => {
            let (addr, mask) = p.bytes();
            let first: [u8; 16] = addr.try_into().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NPTv6 prefix must be IPv6")
            })?;
            let mut last = first;
            for (b, m) in last.iter_mut().zip(&mask) {
                *b |= !m;
            }
            rule.add_expr(&Immediate::new(first, Register::Reg1));
            rule.add_expr(&Immediate::new(last, Register::Reg2));
            rule.add_expr(&SnatPrefix6);
        }
        Op::TcpNotSyn => {
            rule.add_expr(&RawLoad {
                base: Base::Transport,
                offset: 13,
                len: 1,
            });
            rule.add_expr(&Bitwise::new(TCP_FLAG_SYN, 0u8));
            rule.add_expr(&Cmp::new(CmpOp::Eq, 0u8));
        }
        Op::StaleFlow { v6 } => {
            let (offset, len) = if *v6 { (8, 36) } else { (12, 12) };
            rule.add_expr(&RawLoad {
                base: Base::Network,
                offset,
                len,
            });
            if *v6 {
                rule.add_expr(&Lookup::new(&sets.v6));
            } else {
                rule.add_expr(&Lookup::new(&sets.v4));
            }
        }
        Op::RejectTcpReset => rule.add_expr(&Verdict::Reject(RejectionType::TcpRst)),
        Op::CtStateInvalid => {
            rule.add_expr(&Conntrack::State);
            rule.add_expr(&Bitwise::new(States::INVALID.bits(), 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Op::Drop => rule.add_expr(&Verdict::Drop),
        Op::MetaMarkIs { mask, value } => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Bitwise::new(*mask, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Eq, *value));
        }
        Op::Notrack => rule.add_expr(&Notrack),
        Op::RandomBelow { modulus, below } => {
            rule.add_expr(&NumgenRandom { modulus: *modulus });
            rule.add_expr(&Hton32);
            rule.add_expr(&Cmp::new(CmpOp::Lt, &below.to_be_bytes()[..]));
        }
    }
    Ok(())
}

/// `meta nfproto ipv4|ipv6`: network-header offsets below depend on it.
fn family(rule: &mut Rule<'_>, v6: bool) {
    rule.add_expr(&Meta::NfProto);
    rule.add_expr(&Cmp::new(
        CmpOp::Eq,
        if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 },
    ));
}

/// The source address into register 1.
fn load_saddr(rule: &mut Rule<'_>, v6: bool) {
    let (offset, len) = if v6 { (8, 16) } else { (12, 4) };
    rule.add_expr(&RawLoad {
        base: Base::Network,
        offset,
        len,
    });
}

/// Send a finalized batch in one `sendto` (the kernel applies a batch only when it arrives in one
/// message; nftnl splits it into 128 KiB pages) and read every acknowledgement. The socket's
/// buffers are sized for the batch and for one acknowledgement per message, all of which the
/// kernel queues before we read the first, as nft(8) does.
pub(super) fn send(batch: &FinalizedBatch) -> io::Result<()> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let portid = socket.portid();
    let data: Vec<u8> = batch.iter().flatten().copied().collect();
    let mut expected = batch.sequence_numbers();
    let acks = expected.len();
    set_buffers(
        &socket,
        data.len() + (64 << 10),
        acks.saturating_mul(1024) + (256 << 10),
    )?;
    if socket.send(&data)? < data.len() {
        return Err(io::Error::other("sendto did not send the whole batch"));
    }
    let mut buf = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    while !expected.is_empty() {
        for message in socket.recv(&mut buf[..])? {
            let message = message?;
            let Some(seq) = expected.next() else { break };
            mnl::cb_run(message, seq, portid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::engine::Engine;

    use crate::config::TEST_LINKS as LINKS;

    /// The desired state of a configuration (links as `LINKS`, then `extra`), with the
    /// default policy's share set to `share`.
    fn state(lan: &str, extra: &str, share: &[(usize, u32)]) -> DesiredState {
        let text = format!("{LINKS}\n[lan]\ninterfaces = [{lan}]\n{extra}");
        let config = crate::config::parse(&text).unwrap();
        let mut d = Engine::new(config, std::time::Instant::now()).desired();
        d.policies[0].steer = Steer::Share(share.to_vec());
        d.router_link = share.first().map(|&(l, _)| l);
        for l in &mut d.links {
            l.usable = true;
        }
        d
    }

    fn chain(r: &Ruleset, name: &str) -> Vec<String> {
        let c = r.chains.iter().find(|c| c.name == name).unwrap();
        c.rules
            .iter()
            .map(|ops| ops.iter().map(Op::to_string).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[test]
    fn renders_restore_steer_resets_and_masquerade() {
        let addrs = [
            vec!["100.64.1.2".parse().unwrap()],
            vec!["100.64.2.2".parse().unwrap()],
        ];
        let text = render(&state(r#""lan0", "lan1""#, "", &[(1, 1)]), &addrs).to_string();
        let want = r#"table inet uplinkd {
  set stale4 { type integer (12 bytes); flags timeout; timeout 1200s; }
  set stale6 { type integer (36 bytes); flags timeout; timeout 1200s; }
  chain prerouting { type filter hook prerouting priority -150; policy accept;
    ct mark & 0xff00 == 0x100 meta mark set meta mark & 0xffff00ff | 0x100
    ct mark & 0xff00 == 0x200 meta mark set meta mark & 0xffff00ff | 0x200
    iifname "wan1" ct state new ct mark set ct mark & 0xffff00ff | 0x100
    iifname "wan2" ct state new ct mark set ct mark & 0xffff00ff | 0x200
    iifname "lan0" ct state new meta mark & 0xff00 == 0x0 jump steer
    iifname "lan1" ct state new meta mark & 0xff00 == 0x0 jump steer
  }
  chain forward { type filter hook forward priority 0; policy accept;
    iifname "lan0" meta nfproto ipv4 meta l4proto tcp tcp flags & syn == 0 @nh,96,96 @stale4 reject with tcp reset
    iifname "lan0" meta nfproto ipv6 meta l4proto tcp tcp flags & syn == 0 @nh,64,288 @stale6 reject with tcp reset
    iifname "lan1" meta nfproto ipv4 meta l4proto tcp tcp flags & syn == 0 @nh,96,96 @stale4 reject with tcp reset
    iifname "lan1" meta nfproto ipv6 meta l4proto tcp tcp flags & syn == 0 @nh,64,288 @stale6 reject with tcp reset
    iifname "lan0" ct state invalid drop
    iifname "lan1" ct state invalid drop
  }
  chain output { type filter hook output priority -300; policy accept;
    meta mark & 0xff00 == 0xff00 notrack
  }
  chain output_route { type route hook output priority -150; policy accept;
    ct mark & 0xff00 == 0x100 meta mark set meta mark & 0xffff00ff | 0x100
    ct mark & 0xff00 == 0x200 meta mark set meta mark & 0xffff00ff | 0x200
    ct state new meta mark & 0xff00 == 0x0 ip saddr 100.64.1.2/32 meta mark set meta mark & 0xffff00ff | 0x100
    ct state new meta mark & 0xff00 == 0x0 jump steer
  }
  chain postrouting { type nat hook postrouting priority 100; policy accept;
    oifname "wan1" ct mark set ct mark & 0xffff00ff | 0x100 masquerade
    oifname "wan2" ct mark set ct mark & 0xffff00ff | 0x200 masquerade
  }
  chain steer {
    meta mark & 0xff00 == 0x0 jump policy_default
  }
  chain policy_default {
    meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0x200
  }
}"#;
        assert_eq!(text, want);
    }

    #[test]
    fn links_of_a_tier_share_new_flows_by_weight() {
        let d = state(r#""lan0""#, "", &[(0, 3), (1, 1)]);
        assert_eq!(
            chain(&render(&d, &[]), "policy_default"),
            vec![
                "meta mark & 0xff00 == 0x0 numgen random mod 4 < 3 meta mark set meta mark & 0xffff00ff | 0x100",
                "meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0x200",
            ]
        );
    }

    #[test]
    fn rules_match_each_list_in_a_chained_step_then_go_to_their_policy() {
        let extra = r#"
[sets]
phones = ["192.168.1.20", "192.168.1.21"]

[[policy]]
name = "lte-first"
links = ["l2", "l1"]

[[rule]]
src = ["192.168.1.50/32"]
policy = "lte-first"

[[rule]]
iif = ["lan1"]
src = ["@phones", "fd00::/64"]
proto = "udp"
dport = [5060, "10000-20000"]
policy = "lte-first"
"#;
        let mut d = state(r#""lan0", "lan1""#, extra, &[(0, 1)]);
        d.policies[1].steer = Steer::Share(vec![(1, 1)]);
        let r = render(&d, &[]);
        assert_eq!(
            chain(&r, "steer"),
            vec![
                "meta mark & 0xff00 == 0x0 ip saddr 192.168.1.50/32 jump policy_lte-first",
                "meta mark & 0xff00 == 0x0 meta l4proto udp iifname \"lan1\" jump rule1_1",
                "meta mark & 0xff00 == 0x0 jump policy_default",
            ]
        );
        assert_eq!(
            chain(&r, "rule1_1"),
            vec![
                "ip saddr 192.168.1.20/32 goto rule1_2",
                "ip saddr 192.168.1.21/32 goto rule1_2",
                "ip6 saddr fd00::/64 goto rule1_2",
            ]
        );
        assert_eq!(
            chain(&r, "rule1_2"),
            vec![
                "th dport 5060 goto policy_lte-first",
                "th dport 10000-20000 goto policy_lte-first",
            ]
        );
        assert_eq!(
            chain(&r, "policy_lte-first"),
            vec!["meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0x200"]
        );
    }

    #[test]
    fn a_policy_without_usable_links_falls_back_or_refuses() {
        let extra = r#"
[[policy]]
name = "fallback"
links = ["l2"]

[[policy]]
name = "strict"
links = ["l2"]
last_resort = "unreachable"
"#;
        let mut d = state(r#""lan0""#, extra, &[(0, 1)]);
        d.policies[1].steer = Steer::Fallback;
        d.policies[2].steer = Steer::Refuse;
        let r = render(&d, &[]);
        assert_eq!(chain(&r, "policy_fallback"), vec!["goto policy_default"]);
        assert_eq!(
            chain(&r, "policy_strict"),
            vec!["meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0xfe00"]
        );
        // The default policy itself refuses when it has nothing (last_resort = "unreachable").
        d.policies[0].steer = Steer::Refuse;
        assert_eq!(
            chain(&render(&d, &[]), "policy_default"),
            vec!["meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0xfe00"]
        );
    }

    #[test]
    fn sticky_policies_remember_sources_per_link() {
        let extra = r#"
[[policy]]
name = "default"
links = [{ link = "l1", priority = 1 }, { link = "l2", priority = 1 }]
sticky = "10m"
"#;
        let d = state(r#""lan0""#, extra, &[(0, 1), (1, 1)]);
        let r = render(&d, &[]);
        let names: Vec<&str> = r.sticky.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "sticky_default_1_4",
                "sticky_default_1_6",
                "sticky_default_2_4",
                "sticky_default_2_6"
            ]
        );
        let rules = chain(&r, "policy_default");
        assert_eq!(rules.len(), 8, "{rules:#?}");
        assert_eq!(rules[0], "meta mark & 0xff00 == 0x0 ip saddr @sticky_default_1_4 meta mark set meta mark & 0xffff00ff | 0x100 update @sticky_default_1_4 { ip saddr timeout 600s }");
        assert_eq!(rules[3], "meta mark & 0xff00 == 0x0 ip6 saddr @sticky_default_2_6 meta mark set meta mark & 0xffff00ff | 0x200 update @sticky_default_2_6 { ip6 saddr timeout 600s }");
        assert_eq!(rules[4], "meta mark & 0xff00 == 0x0 meta nfproto ipv4 numgen random mod 2 < 1 meta mark set meta mark & 0xffff00ff | 0x100 add @sticky_default_1_4 { ip saddr timeout 600s } delete @sticky_default_2_4 { ip saddr }");
        assert_eq!(rules[7], "meta mark & 0xff00 == 0x0 meta nfproto ipv6 meta mark set meta mark & 0xffff00ff | 0x200 add @sticky_default_2_6 { ip6 saddr timeout 600s } delete @sticky_default_1_6 { ip6 saddr }");
        // With no usable link the sets stay (hosts are remembered through the outage), and
        // nobody is re-placed.
        let mut down = d.clone();
        down.links.iter_mut().for_each(|l| l.usable = false);
        let r = render(&down, &[]);
        assert_eq!(r.sticky.len(), 4);
        assert!(chain(&r, "policy_default").iter().all(|r| !r.contains('@')));
    }

    #[test]
    fn nptv6_links_translate_the_prefix_and_masquerade_ipv4() {
        let text = format!("{LINKS}\n[lan]\ninterfaces = [\"lan0\"]\n").replacen(
            "interface = \"wan1\"",
            "interface = \"wan1\"\nnptv6 = \"2001:db8:1::/48\"",
            1,
        );
        let config = crate::config::parse(&text).unwrap();
        let d = Engine::new(config, std::time::Instant::now()).desired();
        assert_eq!(
            chain(&render(&d, &[]), "postrouting"),
            vec![
                "oifname \"wan1\" meta nfproto ipv6 ct mark set ct mark & 0xffff00ff | 0x100 snat ip6 prefix to 2001:db8:1::/48",
                "oifname \"wan1\" ct mark set ct mark & 0xffff00ff | 0x100 masquerade",
                "oifname \"wan2\" ct mark set ct mark & 0xffff00ff | 0x200 masquerade",
            ]
        );
    }
}
