//! Policy to rules: the [`DesiredState`] rendered as a [`Ruleset`], chains of rules made of
//! [`Op`]s, each a match or a statement of nft(8) syntax.

use std::net::{IpAddr, Ipv4Addr};

use nftnl::{ChainType, Hook};

use super::steer::{steering, STEER};
use super::{IPPROTO_TCP, NFPROTO_IPV4, NFPROTO_IPV6};
use crate::config::Prefix;
use crate::engine::DesiredState;

/// Mangle priority: after conntrack (-200) so `ct mark` is known, before routing decides.
const PRIO_MANGLE: i32 = libc::NF_IP_PRI_MANGLE;
/// Source NAT priority, where masquerade belongs.
const PRIO_SRCNAT: i32 = libc::NF_IP_PRI_NAT_SRC;
/// After source NAT, wherever a firewall puts it (nft's `srcnat`, iptables' POSTROUTING: 100):
/// conntrack helpers' priority, before the entry is confirmed.
const PRIO_AFTER_NAT: i32 = libc::NF_IP_PRI_CONNTRACK_HELPER;
/// Filter priority for the forward chain.
const PRIO_FILTER: i32 = libc::NF_IP_PRI_FILTER;
/// Before conntrack (-200): where `notrack` works.
const PRIO_RAW: i32 = libc::NF_IP_PRI_RAW;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `ct mark & mask vmap @MAP`: the chain the map gives for the flow's link bits runs.
    CtMarkVmap {
        mask: u32,
        map: String,
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
    /// `ip saddr @SET` (or daddr, or ip6), the family check included: the address is in one of
    /// a rule's [`MatchSet`]s.
    AddrIn {
        dst: bool,
        v6: bool,
        set: String,
    },
    /// `th dport @SET` (or sport); the rule checks the protocol before.
    PortIn {
        dst: bool,
        set: String,
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
    /// `snat ip to ADDR`; the rule checks the family before.
    Snat4(Ipv4Addr),
    /// `ct reply ip daddr != ADDR`: the flow was not translated to ADDR (IPv4 only).
    NatNot(Ipv4Addr),
    /// `add @SET { ct reply ip daddr timeout T }`: remember the address it was translated to.
    RecordNat {
        set: String,
        timeout_ms: u64,
    },
    /// `tcp flags & syn == 0`: not a connection attempt.
    TcpNotSyn,
    /// `tcp flags & syn != 0`: a connection attempt.
    TcpSyn,
    /// `delete @staleN { <the packet's flow key> }`: a new connection reuses a killed flow's
    /// addresses and ports.
    ForgetStale {
        v6: bool,
    },
    /// The packet's flow key is in a stale set (`@nh,OFFSET,LEN @set`).
    StaleFlow {
        v6: bool,
    },
    RejectTcpReset,
    CtStateInvalid,
    /// `meta pkttype host`: addressed to this host's link-layer address (not multicast or
    /// broadcast).
    PktTypeHost,
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

/// A dynamic set of addresses (4 or 16 bytes) that rules add to, each element with its own
/// timeout: the sources a sticky policy remembers for one of its links, the foreign NAT
/// addresses seen on a link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddrSet {
    pub name: String,
    pub v6: bool,
}

/// What a [`MatchSet`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    V4,
    V6,
    Port,
}

impl MatchKind {
    /// Key length in bytes (network byte order).
    pub fn len(self) -> usize {
        match self {
            MatchKind::V4 => 4,
            MatchKind::V6 => 16,
            MatchKind::Port => 2,
        }
    }

    /// The highest key.
    pub fn max(self) -> u128 {
        u128::MAX >> (128 - 8 * self.len())
    }
}

/// Disjoint, non-adjacent key ranges in ascending order, each from its first key to the key
/// after its last (`None`: it runs to the highest key): a rule's list as an interval set, so a
/// packet is matched by one lookup however long the list.
pub type Intervals = Vec<(u128, Option<u128>)>;

/// A constant interval set (`flags interval`) of one of a rule's lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchSet {
    pub name: String,
    pub kind: MatchKind,
    pub intervals: std::sync::Arc<Intervals>,
}

/// The intervals covering inclusive ranges `ranges` of keys of `kind`: sorted, and overlapping
/// or adjacent ones merged (the kernel refuses overlapping intervals).
pub fn intervals(kind: MatchKind, mut ranges: Vec<(u128, u128)>) -> Intervals {
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
        .into_iter()
        .map(|(lo, hi)| (lo, (hi < kind.max()).then(|| hi + 1)))
        .collect()
}

/// The verdict map from a flow's link bits (`ct mark & mask`) to the chain that restores them
/// (`restore_<link>`): restoring costs one lookup however many links there are.
pub const LINK_MARKS: &str = "link_marks";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<ChainPlan>,
    pub addr_sets: Vec<AddrSet>,
    pub match_sets: Vec<MatchSet>,
    /// The elements of [`LINK_MARKS`]: each link's mark and the chain it jumps to.
    pub link_marks: Vec<(u32, String)>,
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
    let base = |name: &str, hook, kind, prio, rules| ChainPlan {
        name: name.into(),
        base: Some((hook, kind, prio)),
        rules,
    };
    // Rules for new flows only sit in chains of their own (`*_new`).
    let mut new_flows = Vec::new();
    let mut chains = vec![
        base(
            "prerouting",
            Hook::PreRouting,
            ChainType::Filter,
            PRIO_MANGLE,
            prerouting(d, &mut new_flows),
        ),
        base(
            "forward",
            Hook::Forward,
            ChainType::Filter,
            PRIO_FILTER,
            forward(d),
        ),
        base("output", Hook::Out, ChainType::Filter, PRIO_RAW, output(d)),
        base(
            "output_route",
            Hook::Out,
            ChainType::Route,
            PRIO_MANGLE,
            output_route(d, addrs, &mut new_flows),
        ),
        base(
            "record_link",
            Hook::PostRouting,
            ChainType::Filter,
            PRIO_MANGLE,
            record_link(d, &mut new_flows),
        ),
        base(
            "postrouting",
            Hook::PostRouting,
            ChainType::Nat,
            PRIO_SRCNAT,
            postrouting(d, addrs),
        ),
        base(
            "check_nat",
            Hook::PostRouting,
            ChainType::Filter,
            PRIO_AFTER_NAT,
            check_nat(d, addrs, &mut new_flows),
        ),
    ];
    if d.ha {
        chains.push(base(
            "input",
            Hook::In,
            ChainType::Filter,
            PRIO_FILTER,
            enter_wan_guard(),
        ));
        chains.push(ChainPlan {
            name: WAN_GUARD.into(),
            base: None,
            rules: wan_guard(d),
        });
    }
    chains.append(&mut new_flows);
    let (link_marks, restore) = restore_chains(d);
    chains.extend(restore);
    let mut addr_sets = Vec::new();
    let mut match_sets = Vec::new();
    chains.extend(steering(d, &mut addr_sets, &mut match_sets));
    addr_sets.extend(foreign_nat_sets(d, addrs));
    Ruleset {
        chains,
        addr_sets,
        match_sets,
        link_marks,
    }
}

/// `meta mark & mask == 0`: the packet has no link yet.
pub(super) fn unmarked(d: &DesiredState) -> Op {
    Op::MetaMarkIs {
        mask: d.mark_mask,
        value: 0,
    }
}

/// `rules` as chain `<hook chain>_new`, entered by one rule `ct state new [test...] jump` that
/// ends `hook_rules`: the packets of established flows, nearly all of them, then cost one test
/// in the hook whatever the number of links, instead of one test per link. Nothing without
/// rules.
fn for_new_flows(
    hook_rules: &mut Vec<Vec<Op>>,
    hook_chain: &str,
    test: impl IntoIterator<Item = Op>,
    rules: Vec<Vec<Op>>,
    chains: &mut Vec<ChainPlan>,
) {
    if rules.is_empty() {
        return;
    }
    let name = format!("{hook_chain}_new");
    let mut jump = vec![Op::CtStateNew];
    jump.extend(test);
    jump.push(Op::Jump(name.clone()));
    hook_rules.push(jump);
    chains.push(ChainPlan {
        name,
        base: None,
        rules,
    });
}

fn prerouting(d: &DesiredState, chains: &mut Vec<ChainPlan>) -> Vec<Vec<Op>> {
    // Every packet of a flow that already has a link keeps it: restore our mark bits from the
    // flow's ct mark. Replies to the LAN then match `lookup main suppress_prefixlength 0` first
    // (see routes.rs), so restoring does not send them back out a WAN.
    let mut pre = restore_marks(d);
    // Connections that arrive on a link (port forwards, services on the router) belong to it:
    // the ct mark then routes their answers back out the same link, whatever new flows do.
    let mut new = Vec::new();
    for l in &d.links {
        new.push(vec![
            Op::IifName(l.interface.clone()),
            Op::SetCtMark {
                mask: d.mark_mask,
                value: l.mark,
            },
        ]);
    }
    // New LAN flows get the mark of the link their policy chooses, which routes them to its
    // table (chain `steer`).
    // In a pair, the peer's VRRP adverts arrive on the LAN too: only packets sent to this
    // router are steered.
    for lan in &d.lan_interfaces {
        let mut rule = vec![Op::IifName(lan.clone())];
        rule.extend(d.ha.then_some(Op::PktTypeHost));
        rule.extend([unmarked(d), Op::Jump(STEER.into())]);
        new.push(rule);
    }
    for_new_flows(&mut pre, "prerouting", [], new, chains);
    pre
}

/// In a pair, the WAN guard: TCP arriving from a WAN that is neither a connection attempt nor
/// part of a known flow is dropped, never answered. Right after a takeover the new master may
/// not have a flow's state yet, and a reset from its own stack (the public address just became
/// local) would kill the flow; a drop makes the sender retransmit instead.
fn wan_guard(d: &DesiredState) -> Vec<Vec<Op>> {
    let mut guard = Vec::new();
    for l in &d.links {
        guard.push(vec![
            Op::IifName(l.interface.clone()),
            Op::CtStateInvalid,
            Op::Drop,
        ]);
        guard.push(vec![
            Op::IifName(l.interface.clone()),
            Op::L4Proto(IPPROTO_TCP),
            Op::TcpNotSyn,
            Op::CtStateNew,
            Op::Drop,
        ]);
    }
    guard
}

/// The chain of the WAN guard's per-link rules.
const WAN_GUARD: &str = "wan_guard";

/// Only invalid and new packets can meet the WAN guard: packets of established flows pass with
/// two tests whatever the number of links.
fn enter_wan_guard() -> Vec<Vec<Op>> {
    let jump = || Op::Jump(WAN_GUARD.into());
    vec![
        vec![Op::CtStateInvalid, jump()],
        vec![Op::CtStateNew, jump()],
    ]
}

fn forward(d: &DesiredState) -> Vec<Vec<Op>> {
    // Stranded TCP flows: after a failover their LAN packets are answered with a reset. Only
    // flows uplinkd killed are in the sets. A SYN is never rejected: a new connection that
    // reuses a killed flow's addresses and ports goes through, and takes the flow out of the set
    // so the rest of its handshake does too. Invalid LAN packets (e.g. the FIN of a flow whose
    // entry was deleted) are dropped rather than forwarded un-NATed.
    let mut forward = Vec::new();
    for lan in &d.lan_interfaces {
        for (v6, proto) in [(false, NFPROTO_IPV4), (true, NFPROTO_IPV6)] {
            forward.push(vec![
                Op::IifName(lan.clone()),
                Op::NfProto(proto),
                Op::L4Proto(IPPROTO_TCP),
                Op::TcpSyn,
                Op::StaleFlow { v6 },
                Op::ForgetStale { v6 },
            ]);
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
    if d.ha {
        forward.extend(enter_wan_guard());
    }
    forward
}

fn output(d: &DesiredState) -> Vec<Vec<Op>> {
    // The tickles uplinkd sends to reset idle clients must not create conntrack entries: the
    // client's answer has to meet the reject rule in `forward`, not a fresh entry.
    vec![vec![
        Op::MetaMarkIs {
            mask: d.mark_mask,
            value: d.tickle_mark,
        },
        Op::Notrack,
    ]]
}

fn output_route(
    d: &DesiredState,
    addrs: &[Vec<IpAddr>],
    chains: &mut Vec<ChainPlan>,
) -> Vec<Vec<Op>> {
    // The router's own packets of a flow that has a link (answers of its services to
    // connections that came in on a link, its own connections out a link) keep that link; its
    // new flows follow the policies like the LAN's (probes and tickles carry a mark already).
    // The route chain re-routes when the mark changes.
    let mut route_out = restore_marks(d);
    if !d.steer_router {
        return route_out;
    }
    // A new flow from a link's own address (a socket bound to it) belongs to that link; the
    // default policy's link is left out, as its address is what unbound sockets get.
    let mut new = Vec::new();
    for (i, l) in d.links.iter().enumerate() {
        if d.router_link == Some(i) {
            continue;
        }
        for &a in addrs.get(i).into_iter().flatten() {
            new.push(vec![
                Op::Addr {
                    dst: false,
                    prefix: Prefix::host(a),
                },
                Op::SetMetaMark {
                    mask: d.mark_mask,
                    value: l.mark,
                },
            ]);
        }
    }
    new.push(vec![Op::Jump(STEER.into())]);
    for_new_flows(&mut route_out, "output_route", [unmarked(d)], new, chains);
    route_out
}

/// A new flow that leaves through a link belongs to it: its ct mark records the link, which
/// keeps its later packets there and selects it for a purge. In a filter chain, which sees every
/// packet whatever other tables do: of NAT chains only the first that translates a flow runs,
/// so a foreign masquerade registered after ours (a firewall reloaded, Docker starting) would
/// otherwise leave the flow without a link.
fn record_link(d: &DesiredState, chains: &mut Vec<ChainPlan>) -> Vec<Vec<Op>> {
    let new = d
        .links
        .iter()
        .map(|l| {
            vec![
                Op::OifName(l.interface.clone()),
                Op::SetCtMark {
                    mask: d.mark_mask,
                    value: l.mark,
                },
            ]
        })
        .collect();
    let mut rules = Vec::new();
    for_new_flows(&mut rules, "record_link", [], new, chains);
    rules
}

/// The first IPv4 address of link `i` (its primary one), if it has one.
fn first_v4(addrs: &[Vec<IpAddr>], i: usize) -> Option<Ipv4Addr> {
    addrs.get(i).into_iter().flatten().find_map(|a| match a {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    })
}

/// `foreign_nat_<link number>`: where another table's NAT translated new flows leaving the link.
pub fn foreign_nat_set(link: usize) -> String {
    format!("foreign_nat_{}", link + 1)
}

/// How long a foreign NAT address seen once is reported.
pub const FOREIGN_NAT_TIMEOUT_MS: u64 = 10 * 60 * 1000;

fn foreign_nat_sets(d: &DesiredState, addrs: &[Vec<IpAddr>]) -> Vec<AddrSet> {
    (0..d.links.len())
        .filter(|&i| first_v4(addrs, i).is_some())
        .map(|i| AddrSet {
            name: foreign_nat_set(i),
            v6: false,
        })
        .collect()
}

/// After every NAT chain: a new IPv4 flow leaving a link translated to anything but the link's
/// address means another table's NAT ran first (of NAT chains only the first that translates a
/// flow runs). Its address is remembered in `foreign_nat_<n>`, which uplinkd reads and reports:
/// replies to another address may come back another way, or not at all.
fn check_nat(d: &DesiredState, addrs: &[Vec<IpAddr>], chains: &mut Vec<ChainPlan>) -> Vec<Vec<Op>> {
    let mut new = Vec::new();
    for (i, l) in d.links.iter().enumerate() {
        let Some(a) = first_v4(addrs, i) else {
            continue;
        };
        let mut rule = vec![Op::OifName(l.interface.clone()), Op::NatNot(a)];
        // In a pair, LAN flows are translated to the shared address: ours too.
        rule.extend(l.public_vip.map(Op::NatNot));
        rule.push(Op::RecordNat {
            set: foreign_nat_set(i),
            timeout_ms: FOREIGN_NAT_TIMEOUT_MS,
        });
        new.push(rule);
    }
    let mut rules = Vec::new();
    let ipv4 = Op::NfProto(NFPROTO_IPV4);
    for_new_flows(&mut rules, "check_nat", [ipv4], new, chains);
    rules
}

/// Traffic leaving a link takes its address (or, for IPv6 with `nptv6`, its prefix). IPv4 is
/// translated to the link's first (primary) address by SNAT rather than masquerade: when that
/// address goes away (a DHCP lease lost, a renumber), the kernel deletes masqueraded flows'
/// entries itself, and their clients could no longer be found to reset; SNATed ones stay until
/// uplinkd purges them. Masquerade covers the rest (IPv6, a link without an IPv4 address).
/// With `[ha]`, LAN traffic is translated to the link's `public_vip` instead: the peer router
/// can carry a flow after a takeover only if it was translated to an address that moves with
/// mastership. The router's own traffic (its probes) keeps its own address, which the backup
/// has too.
fn postrouting(d: &DesiredState, addrs: &[Vec<IpAddr>]) -> Vec<Vec<Op>> {
    let mut post = Vec::new();
    for (i, l) in d.links.iter().enumerate() {
        for (lan, vip) in d
            .lan_interfaces
            .iter()
            .flat_map(|n| l.public_vip.map(|v| (n, v)))
        {
            post.push(vec![
                Op::IifName(lan.clone()),
                Op::OifName(l.interface.clone()),
                Op::NfProto(NFPROTO_IPV4),
                Op::Snat4(vip),
            ]);
        }
        if let Some(a) = first_v4(addrs, i) {
            post.push(vec![
                Op::OifName(l.interface.clone()),
                Op::NfProto(NFPROTO_IPV4),
                Op::Snat4(a),
            ]);
        }
        if let Some(p) = l.nptv6 {
            post.push(vec![
                Op::OifName(l.interface.clone()),
                Op::NfProto(NFPROTO_IPV6),
                Op::SnatPrefix(p),
            ]);
        }
        post.push(vec![Op::OifName(l.interface.clone()), Op::Masquerade]);
    }
    post
}

/// The flow's link bits back on the packet: one rule, `ct mark & mask vmap @link_marks`, which
/// runs the link's `restore_<link>` chain.
fn restore_marks(d: &DesiredState) -> Vec<Vec<Op>> {
    vec![vec![Op::CtMarkVmap {
        mask: d.mark_mask,
        map: LINK_MARKS.into(),
    }]]
}

/// Per link, chain `restore_<link>`: `meta mark set meta mark & ~mask | mark`; and the map from
/// each link's mark to it.
fn restore_chains(d: &DesiredState) -> (Vec<(u32, String)>, Vec<ChainPlan>) {
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for l in &d.links {
        let name = format!("restore_{}", l.name);
        jumps.push((l.mark, name.clone()));
        chains.push(ChainPlan {
            name,
            base: None,
            rules: vec![vec![Op::SetMetaMark {
                mask: d.mark_mask,
                value: l.mark,
            }]],
        });
    }
    (jumps, chains)
}
