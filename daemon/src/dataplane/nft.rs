//! uplinkd's nftables table, `inet uplinkd`, replaced as a whole in one atomic batch.
//!
//! The table is first rendered into a small plan ([`Ruleset`]) that prints as nft-like text (for
//! tests and debug logs) and converts into nftnl expressions; the two cannot drift apart because
//! both come from the same [`Op`] values.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fmt;
use std::io;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, InterfaceName, Lookup, Masquerade, Meta, RejectionType, States,
    Verdict,
};
use nftnl::set::Set;
use nftnl::{
    Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table,
};

use super::nft_ext::{
    set_timeout, Base, ElemsReplace, FlowKey, Hton32, Notrack, NumgenRandom, RawLoad,
};
use crate::engine::DesiredState;

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

/// Killed IPv4 TCP flows: key = the 12 packet bytes from the IPv4 source address to the TCP
/// destination port (`@nh,96,96` when the header has no options).
pub const STALE4: &CStr = c"stale4";
/// Killed IPv6 TCP flows: 36 bytes from the source address to the TCP destination port
/// (`@nh,64,288` when TCP follows the fixed header directly).
pub const STALE6: &CStr = c"stale6";
pub type StaleKey4 = FlowKey<12>;
pub type StaleKey6 = FlowKey<36>;
/// Killed flows stay rejectable this long; their clients are reset within seconds, this only
/// covers clients that come back late from sleep.
pub const STALE_TIMEOUT_MS: u64 = 20 * 60 * 1000;
/// Elements per message when adding to a stale set; a message must fit libnftnl's 64 KiB.
const ELEMS_PER_MSG: usize = 1000;
const NFPROTO_IPV4: u8 = libc::NFPROTO_IPV4 as u8;
const NFPROTO_IPV6: u8 = libc::NFPROTO_IPV6 as u8;
const TCP_FLAG_SYN: u8 = 0x02;

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
    /// `meta l4proto tcp`
    L4ProtoTcp,
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
    pub name: &'static CStr,
    pub hook: Hook,
    pub kind: ChainType,
    pub priority: i32,
    pub rules: Vec<Vec<Op>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<ChainPlan>,
}

/// The table for a desired state.
pub fn render(d: &DesiredState) -> Ruleset {
    let mask = d.mark_mask;
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
    // New LAN flows get the mark of the link chosen for them, which routes them to its table.
    // Links sharing a tier split new flows by weight: link i of n takes a flow with probability
    // w_i / (w_i + ... + w_n) among those the links before it left unmarked, which gives each
    // exactly w_i / total.
    for lan in &d.lan_interfaces {
        let mut remaining: u32 = d.share.iter().map(|(_, w)| w).sum();
        for (n, &(link, w)) in d.share.iter().enumerate() {
            let Some(l) = d.links.get(link) else { continue };
            let mut rule = vec![
                Op::IifName(lan.clone()),
                Op::CtStateNew,
                Op::MetaMarkIs { mask, value: 0 },
            ];
            if n + 1 < d.share.len() {
                rule.push(Op::RandomBelow {
                    modulus: remaining,
                    below: w,
                });
            }
            rule.push(Op::SetMetaMark {
                mask,
                value: l.mark,
            });
            pre.push(rule);
            remaining -= w;
        }
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
                Op::L4ProtoTcp,
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
    // connections that came in on a link, its own connections out a link) keep that link: the
    // route chain re-routes when the mark changes.
    let route_out = restore_marks(d);
    let post = d
        .links
        .iter()
        .map(|l| {
            vec![
                Op::OifName(l.interface.clone()),
                Op::SetCtMark {
                    mask,
                    value: l.mark,
                },
                Op::Masquerade,
            ]
        })
        .collect();
    Ruleset {
        chains: vec![
            ChainPlan {
                name: c"prerouting",
                hook: Hook::PreRouting,
                kind: ChainType::Filter,
                priority: PRIO_MANGLE,
                rules: pre,
            },
            ChainPlan {
                name: c"forward",
                hook: Hook::Forward,
                kind: ChainType::Filter,
                priority: PRIO_FILTER,
                rules: forward,
            },
            ChainPlan {
                name: c"output",
                hook: Hook::Out,
                kind: ChainType::Filter,
                priority: PRIO_RAW,
                rules: output,
            },
            ChainPlan {
                name: c"output_route",
                hook: Hook::Out,
                kind: ChainType::Route,
                priority: PRIO_MANGLE,
                rules: route_out,
            },
            ChainPlan {
                name: c"postrouting",
                hook: Hook::PostRouting,
                kind: ChainType::Nat,
                priority: PRIO_SRCNAT,
                rules: post,
            },
        ],
    }
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
            Op::L4ProtoTcp => write!(f, "meta l4proto tcp"),
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
        for c in &self.chains {
            let kind = match c.kind {
                ChainType::Nat => "nat",
                ChainType::Route => "route",
                ChainType::Filter => "filter",
            };
            let hook = match c.hook {
                Hook::PreRouting => "prerouting",
                Hook::In => "input",
                Hook::Forward => "forward",
                Hook::Out => "output",
                Hook::PostRouting => "postrouting",
                Hook::Ingress => "ingress",
            };
            writeln!(
                f,
                "  chain {} {{ type {kind} hook {hook} priority {}; policy accept;",
                c.name.to_string_lossy(),
                c.priority
            )?;
            for r in &c.rules {
                let ops: Vec<String> = r.iter().map(Op::to_string).collect();
                writeln!(f, "    {}", ops.join(" "))?;
            }
            writeln!(f, "  }}")?;
        }
        write!(f, "}}")
    }
}

/// Replace our table with `rules` in one transaction: add (so the delete cannot fail), delete,
/// re-create. The kernel applies all of it or nothing.
pub fn replace(rules: &Ruleset) -> io::Result<()> {
    let table = Table::new(TABLE, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    let sets = StaleSets::new(&table);
    batch.add(&sets.v4, MsgType::Add);
    batch.add(&sets.v6, MsgType::Add);
    for c in &rules.chains {
        let mut chain = Chain::new(c.name, &table);
        chain.set_hook(c.hook, c.priority);
        chain.set_type(c.kind);
        chain.set_policy(Policy::Accept);
        batch.add(&chain, MsgType::Add);
        for ops in &c.rules {
            let mut rule = Rule::new(&chain);
            for op in ops {
                add_op(&mut rule, op, &sets)?;
            }
            batch.add(&rule, MsgType::Add);
        }
    }
    send(&batch.finalize())
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

/// Add killed flows to the stale sets. Adding is cheap for the kernel (no RCU grace period, unlike
/// deletes); an element already present only has its timeout renewed. Each message of at most
/// ELEMS_PER_MSG elements goes in a batch of its own: one batch must fit one 128 KiB send.
pub fn add_stale(v4: &[StaleKey4], v6: &[StaleKey6]) -> io::Result<()> {
    let table = Table::new(TABLE, ProtoFamily::Inet);
    for chunk in v4.chunks(ELEMS_PER_MSG) {
        let mut set = Set::<StaleKey4>::new_named(STALE4, 1, &table, ProtoFamily::Inet);
        chunk.iter().for_each(|k| set.add(k));
        let mut batch = Batch::new();
        batch.add(&ElemsReplace(&set), MsgType::Add);
        send(&batch.finalize())?;
    }
    for chunk in v6.chunks(ELEMS_PER_MSG) {
        let mut set = Set::<StaleKey6>::new_named(STALE6, 2, &table, ProtoFamily::Inet);
        chunk.iter().for_each(|k| set.add(k));
        let mut batch = Batch::new();
        batch.add(&ElemsReplace(&set), MsgType::Add);
        send(&batch.finalize())?;
    }
    Ok(())
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

fn add_op(rule: &mut Rule<'_>, op: &Op, sets: &StaleSets<'_>) -> io::Result<()> {
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
        Op::L4ProtoTcp => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, libc::IPPROTO_TCP as u8));
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

/// Send a finalized batch as one buffer and read every acknowledgement. The batch is small (a
/// few dozen rules), far below the 128 KiB where `mnl` would split it.
fn send(batch: &FinalizedBatch) -> io::Result<()> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let portid = socket.portid();
    socket.send_all(batch)?;
    let mut buf = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    let mut expected = batch.sequence_numbers();
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
    use crate::engine::LinkPlan;

    fn state(steer_to: Option<usize>) -> DesiredState {
        let link = |i: u32, usable| LinkPlan {
            name: format!("l{i}"),
            interface: format!("wan{i}"),
            gateway: None,
            mark: i << 8,
            table: 99 + i,
            usable,
            drained: false,
        };
        DesiredState {
            mark_mask: 0xff00,
            tickle_mark: 0xff00,
            rule_priority: 1000,
            lan_interfaces: vec!["lan0".into(), "lan1".into()],
            links: vec![link(1, false), link(2, true)],
            steer_to,
            share: steer_to.map(|s| vec![(s, 1)]).unwrap_or_default(),
        }
    }

    #[test]
    fn renders_restore_steer_resets_and_masquerade() {
        let text = render(&state(Some(1))).to_string();
        let want = r#"table inet uplinkd {
  set stale4 { type integer (12 bytes); flags timeout; timeout 1200s; }
  set stale6 { type integer (36 bytes); flags timeout; timeout 1200s; }
  chain prerouting { type filter hook prerouting priority -150; policy accept;
    ct mark & 0xff00 == 0x100 meta mark set meta mark & 0xffff00ff | 0x100
    ct mark & 0xff00 == 0x200 meta mark set meta mark & 0xffff00ff | 0x200
    iifname "wan1" ct state new ct mark set ct mark & 0xffff00ff | 0x100
    iifname "wan2" ct state new ct mark set ct mark & 0xffff00ff | 0x200
    iifname "lan0" ct state new meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0x200
    iifname "lan1" ct state new meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0x200
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
  }
  chain postrouting { type nat hook postrouting priority 100; policy accept;
    oifname "wan1" ct mark set ct mark & 0xffff00ff | 0x100 masquerade
    oifname "wan2" ct mark set ct mark & 0xffff00ff | 0x200 masquerade
  }
}"#;
        assert_eq!(text, want);
    }

    #[test]
    fn links_of_a_tier_share_new_flows_by_weight() {
        let mut d = state(Some(0));
        d.share = vec![(0, 3), (1, 1)];
        d.lan_interfaces = vec!["lan0".into()];
        let text = render(&d).to_string();
        assert!(text.contains("iifname \"lan0\" ct state new meta mark & 0xff00 == 0x0 numgen random mod 4 < 3 meta mark set meta mark & 0xffff00ff | 0x100\n"), "{text}");
        assert!(text.contains("iifname \"lan0\" ct state new meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | 0x200\n"), "{text}");
    }

    #[test]
    fn nothing_to_steer_to_means_no_steering_rules() {
        let r = render(&state(None));
        // Restore and inbound rules only, two of each for the two links.
        assert_eq!(r.chains[0].rules.len(), 4);
        assert!(r.chains[0]
            .rules
            .iter()
            .all(|ops| !ops.contains(&Op::IifName("lan0".into()))));
    }
}
