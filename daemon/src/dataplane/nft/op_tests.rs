//! The rule IR's ops: the nft(8) text each prints as, and that each, and every expression they
//! lower to, encodes into a batch.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::mem::discriminant;

use super::encode::{lower, Expr};
use super::plan::{AddrSet, ChainPlan, DynOp, MatchKind, MatchSet, Op};
use super::*;
use crate::config::Prefix;
/// Every op with the text nft(8) would print for it.
fn every_op() -> Vec<(Op, &'static str)> {
    let prefix = |s: &str| s.parse::<Prefix>().unwrap();
    let set = |name: &str, v6| Op::SourceIn {
        set: name.into(),
        v6,
    };
    let dynset = |op, v6, timeout_ms| Op::SetSource {
        op,
        set: if v6 { "s6" } else { "s4" }.into(),
        v6,
        timeout_ms,
    };
    vec![
        (
            Op::CtMarkVmap {
                mask: 0xff00,
                map: plan::LINK_MARKS.into(),
            },
            "ct mark & 0xff00 vmap @link_marks",
        ),
        (
            Op::MetaMarkIs {
                mask: 0xff00,
                value: 0,
            },
            "meta mark & 0xff00 == 0x0",
        ),
        (
            Op::SetMetaMark {
                mask: 0xff00,
                value: 0x200,
            },
            "meta mark set meta mark & 0xffff00ff | 0x200",
        ),
        (
            Op::SetCtMark {
                mask: 0xff00,
                value: 0x200,
            },
            "ct mark set ct mark & 0xffff00ff | 0x200",
        ),
        (Op::IifName("lan0".into()), "iifname \"lan0\""),
        (Op::OifName("wan 1".into()), "oifname \"wan 1\""),
        (Op::CtStateNew, "ct state new"),
        (Op::CtStateInvalid, "ct state invalid"),
        (Op::NfProto(NFPROTO_IPV4), "meta nfproto ipv4"),
        (Op::NfProto(NFPROTO_IPV6), "meta nfproto ipv6"),
        (Op::L4Proto(IPPROTO_TCP), "meta l4proto tcp"),
        (Op::L4Proto(17), "meta l4proto udp"),
        (Op::L4Proto(132), "meta l4proto 132"),
        (
            Op::Addr {
                dst: false,
                prefix: prefix("10.0.0.0/8"),
            },
            "ip saddr 10.0.0.0/8",
        ),
        (
            Op::Addr {
                dst: true,
                prefix: prefix("192.0.2.1"),
            },
            "ip daddr 192.0.2.1/32",
        ),
        (
            Op::Addr {
                dst: false,
                prefix: prefix("fd00::/64"),
            },
            "ip6 saddr fd00::/64",
        ),
        (
            Op::Addr {
                dst: true,
                prefix: prefix("2001:db8::/29"),
            },
            "ip6 daddr 2001:db8::/29",
        ),
        (
            Op::Addr {
                dst: true,
                prefix: prefix("0.0.0.0/0"),
            },
            "ip daddr 0.0.0.0/0",
        ),
        (
            Op::PortIn {
                dst: true,
                set: "p".into(),
            },
            "th dport @p",
        ),
        (
            Op::AddrIn {
                dst: true,
                v6: true,
                set: "a6".into(),
            },
            "ip6 daddr @a6",
        ),
        (set("s4", false), "ip saddr @s4"),
        (set("s6", true), "ip6 saddr @s6"),
        (
            dynset(DynOp::Add, false, 600_000),
            "add @s4 { ip saddr timeout 600s }",
        ),
        (
            dynset(DynOp::Update, true, 1500),
            "update @s6 { ip6 saddr timeout 1500ms }",
        ),
        (
            dynset(DynOp::Delete, false, 600_000),
            "delete @s4 { ip saddr }",
        ),
        (Op::Jump("steer".into()), "jump steer"),
        (Op::Goto("policy_default".into()), "goto policy_default"),
        (
            Op::SnatPrefix(prefix("2001:db8:1::/48")),
            "snat ip6 prefix to 2001:db8:1::/48",
        ),
        (
            Op::Snat4("100.64.1.2".parse().unwrap()),
            "snat ip to 100.64.1.2",
        ),
        (
            Op::NatNot("100.64.1.2".parse().unwrap()),
            "ct reply ip daddr != 100.64.1.2",
        ),
        (
            Op::RecordNat {
                set: "s4".into(),
                timeout_ms: 600_000,
            },
            "add @s4 { ct reply ip daddr timeout 600s }",
        ),
        (Op::TcpNotSyn, "tcp flags & syn == 0"),
        (Op::TcpSyn, "tcp flags & syn != 0"),
        (
            Op::ForgetStale { v6: false },
            "delete @stale4 { ip saddr . ip daddr . tcp sport . tcp dport }",
        ),
        (
            Op::StaleFlow { v6: false },
            "ip saddr . ip daddr . tcp sport . tcp dport @stale4",
        ),
        (
            Op::StaleFlow { v6: true },
            "ip6 saddr . ip6 daddr . tcp sport . tcp dport @stale6",
        ),
        (Op::RejectTcpReset, "reject with tcp reset"),
        (Op::Drop, "drop"),
        (Op::Masquerade, "masquerade"),
        (Op::Notrack, "notrack"),
        (
            Op::RandomBelow {
                modulus: 4,
                below: 3,
            },
            "numgen random mod 4 < 3",
        ),
    ]
}

#[test]
fn every_op_prints_as_nft_syntax() {
    for (op, want) in every_op() {
        assert_eq!(op.to_string(), want, "{op:?} lowers to {:?}", lower(&op));
    }
}

#[test]
fn every_op_and_expression_encodes_into_a_batch() {
    let ops = every_op();
    let exprs: HashSet<_> = ops
        .iter()
        .flat_map(|(op, _)| lower(op).unwrap())
        .map(|e| discriminant(&e))
        .collect();
    // Every variant of Expr (all 24) is used by some op, so all of add_expr runs.
    assert_eq!(exprs.len(), 24);
    let rules = Ruleset {
        chains: vec![
            ChainPlan {
                name: "all".into(),
                base: None,
                rules: ops.into_iter().map(|(op, _)| vec![op]).collect(),
            },
            ChainPlan {
                name: "steer".into(),
                base: None,
                rules: vec![],
            },
            ChainPlan {
                name: "policy_default".into(),
                base: None,
                rules: vec![],
            },
        ],
        addr_sets: vec![
            AddrSet {
                name: "s4".into(),
                v6: false,
            },
            AddrSet {
                name: "s6".into(),
                v6: true,
            },
        ],
        match_sets: vec![
            MatchSet {
                name: "p".into(),
                kind: MatchKind::Port,
                intervals: std::sync::Arc::new(vec![(53, Some(54))]),
            },
            MatchSet {
                name: "a6".into(),
                kind: MatchKind::V6,
                intervals: std::sync::Arc::new(vec![(1, None)]),
            },
        ],
        link_marks: vec![(0x100, "steer".into())],
    };
    let batch = batch::build(&rules, None).unwrap();
    assert!(batch.iter().flatten().count() > 0);
    // A set that does not exist is an error, not a panic.
    let mut bad = rules.clone();
    bad.addr_sets.pop();
    assert!(batch::build(&bad, None).is_err());
}

/// The text is printed from the lowered expressions: an encoding that changes is printed
/// differently, so the snapshots catch it.
#[test]
fn text_follows_the_encoding() {
    let mut e = lower(&Op::CtStateNew).unwrap();
    assert_eq!(text::print(&e), "ct state new");
    e[2] = Expr::Cmp {
        op: encode::CmpKind::Eq,
        data: vec![0; 4],
    };
    // The state bits are in host byte order.
    let new: String = 8u32
        .to_ne_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        text::print(&e),
        format!("[ct load state] [bitwise & 0x{new} ^ 0x00000000] [cmp eq 0x00000000]")
    );
    let mut e = lower(&Op::Addr {
        dst: false,
        prefix: "10.1.0.0/16".parse().unwrap(),
    })
    .unwrap();
    assert_eq!(text::print(&e), "ip saddr 10.1.0.0/16");
    e.remove(0);
    e.remove(0);
    assert_eq!(
        text::print(&e),
        "[payload @nh,96,32] [bitwise & 0xffff0000 ^ 0x00000000] [cmp eq 0x0a010000]"
    );
}
