//! The table as nft(8)-like text, for the snapshot tests and debug logs, printed from the
//! lowered expressions (see `encode.rs`): what is printed is what is sent.
//!
//! A rule's expressions are read left to right; at each point the longest sequence nft(8)
//! prints as one phrase wins (`meta nfproto ipv4` + `@nh,96,32 == 100.64.1.2` is `ip saddr
//! 100.64.1.2/32`), and an expression no phrase explains prints raw in brackets.

use std::ffi::CStr;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nftnl::{ChainType, Hook};

use super::encode::{addr_offset, lower, CmpKind, CtKey, Expr, MetaKey, Reg, TCP_FLAGS_OFFSET};
use super::plan::{DynOp, MatchKind, MatchSet, Op, Ruleset, LINK_MARKS};
use super::{IPPROTO_TCP, NFPROTO_IPV4, NFPROTO_IPV6, STALE4, STALE6, STALE_TIMEOUT_MS, TABLE};
use crate::dataplane::nft_ext::Base;

const IPPROTO_UDP: u8 = libc::IPPROTO_UDP as u8;

/// A rule's text: its expressions, lowered from all its ops at once, as phrases.
pub fn rule(ops: &[Op]) -> String {
    let mut exprs = Vec::new();
    for op in ops {
        match lower(op) {
            Ok(e) => exprs.extend(e),
            Err(e) => return format!("[invalid rule: {e}]"),
        }
    }
    print(&exprs)
}

/// Expressions as nft text.
pub fn print(exprs: &[Expr]) -> String {
    let mut words = Vec::new();
    let mut rest = exprs;
    while !rest.is_empty() {
        let (n, text) = phrase(rest).unwrap_or_else(|| (1, raw(&rest[0])));
        words.push(text);
        rest = &rest[n..];
    }
    words.join(" ")
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&rule(std::slice::from_ref(self)))
    }
}

/// How many expressions a phrase covers, and its text.
type Phrase = Option<(usize, String)>;

/// The phrase `e` starts with: how many expressions it covers and its text.
fn phrase(e: &[Expr]) -> Phrase {
    let phrases: [fn(&[Expr]) -> Phrase; 7] =
        [meta, mark, ct_state, transport, network, concat, statement];
    phrases.iter().find_map(|p| p(e))
}

/// `meta nfproto`, `meta l4proto`, `iifname`, `oifname`, and addresses after `meta nfproto`.
fn meta(e: &[Expr]) -> Phrase {
    let [Expr::Meta(key), Expr::Cmp {
        op: CmpKind::Eq,
        data,
    }, rest @ ..] = e
    else {
        return None;
    };
    let text = match (key, &data[..]) {
        (MetaKey::NfProto, [family]) => {
            if let Some((n, text)) = address(*family, rest) {
                return Some((2 + n, text));
            }
            match *family {
                NFPROTO_IPV4 => "meta nfproto ipv4".into(),
                NFPROTO_IPV6 => "meta nfproto ipv6".into(),
                p => format!("meta nfproto {p}"),
            }
        }
        (MetaKey::L4Proto, [IPPROTO_TCP]) => "meta l4proto tcp".into(),
        (MetaKey::L4Proto, [IPPROTO_UDP]) => "meta l4proto udp".into(),
        (MetaKey::L4Proto, [p]) => format!("meta l4proto {p}"),
        (MetaKey::PktType, [0]) => "meta pkttype host".into(),
        (MetaKey::PktType, [t]) => format!("meta pkttype {t}"),
        (MetaKey::IifName | MetaKey::OifName, _) => {
            let name = CStr::from_bytes_with_nul(data).ok()?.to_str().ok()?;
            let key = if *key == MetaKey::IifName {
                "iifname"
            } else {
                "oifname"
            };
            format!("{key} {name:?}")
        }
        _ => return None,
    };
    Some((2, text))
}

/// `meta|ct mark & MASK == VALUE` and `meta|ct mark set meta|ct mark & MASK | VALUE`.
fn mark(e: &[Expr]) -> Phrase {
    let [load, Expr::Bitwise { mask, xor }, next, ..] = e else {
        return None;
    };
    let key = match load {
        Expr::Meta(MetaKey::Mark) => "meta mark",
        Expr::Ct(CtKey::Mark) => "ct mark",
        _ => return None,
    };
    let (mask, xor) = (u32_ne(mask)?, u32_ne(xor)?);
    let text = match (load, next) {
        (
            _,
            Expr::Cmp {
                op: CmpKind::Eq,
                data,
            },
        ) if xor == 0 => format!("{key} & {mask:#x} == {:#x}", u32_ne(data)?),
        (_, Expr::VerdictLookup { set }) if xor == 0 => format!("{key} & {mask:#x} vmap @{set}"),
        (Expr::Meta(_), Expr::SetMetaMark) | (Expr::Ct(_), Expr::SetCtMark) => {
            format!("{key} set {key} & {mask:#x} | {xor:#x}")
        }
        _ => return None,
    };
    Some((3, text))
}

/// `ct state STATE[,STATE]`: any of the state bits set.
fn ct_state(e: &[Expr]) -> Phrase {
    let [Expr::Ct(CtKey::State), Expr::Bitwise { mask, xor }, Expr::Cmp {
        op: CmpKind::Neq,
        data,
    }, ..] = e
    else {
        return None;
    };
    if u32_ne(xor)? != 0 || u32_ne(data)? != 0 {
        return None;
    }
    Some((3, format!("ct state {}", ct_states(u32_ne(mask)?)?)))
}

/// `th dport|sport PORT[-PORT]` and `tcp flags & FLAGS == 0`.
fn transport(e: &[Expr]) -> Phrase {
    use CmpKind::Eq;
    let [Expr::Payload {
        base: Base::Transport,
        offset,
        len,
    }, rest @ ..] = e
    else {
        return None;
    };
    if (*offset, *len) == (TCP_FLAGS_OFFSET, 1) {
        let [Expr::Bitwise { mask, xor }, Expr::Cmp { op, data }, ..] = rest else {
            return None;
        };
        if xor[..] != [0] || data[..] != [0] {
            return None;
        }
        let op = match op {
            Eq => "==",
            CmpKind::Neq => "!=",
            _ => return None,
        };
        return Some((
            3,
            format!("tcp flags & {} {op} 0", tcp_flags(*mask.first()?)?),
        ));
    }
    let dir = match (offset, len) {
        (0, 2) => "sport",
        (2, 2) => "dport",
        _ => return None,
    };
    match rest {
        [Expr::Lookup { set }, ..] => Some((2, format!("th {dir} @{set}"))),
        [Expr::Cmp { op: Eq, data }, ..] => Some((2, format!("th {dir} {}", u16_be(data)?))),
        _ => None,
    }
}

/// `add|update|delete @SET { ip saddr [timeout T] }` and `@nh,OFFSET,LEN @SET`.
fn network(e: &[Expr]) -> Phrase {
    match e {
        [Expr::Payload {
            base: Base::Network,
            offset,
            len,
        }, Expr::Dynset {
            op,
            set,
            timeout_ms,
        }, ..] => {
            let v6 = [false, true]
                .into_iter()
                .find(|&v6| addr_offset(v6, false) == (*offset, *len))?;
            let ip = if v6 { "ip6" } else { "ip" };
            let op = match op {
                DynOp::Add => "add",
                DynOp::Update => "update",
                DynOp::Delete => "delete",
            };
            let timeout = timeout_ms.map(duration).unwrap_or_default();
            Some((2, format!("{op} @{set} {{ {ip} saddr{timeout} }}")))
        }
        [Expr::Payload { base, offset, len }, Expr::Lookup { set }, ..] => {
            Some((2, format!("{} @{set}", payload(*base, *offset, *len))))
        }
        _ => None,
    }
}

/// `ip saddr . ip daddr . tcp sport . tcp dport @SET` (or ip6), or `delete @SET { … }`: loads
/// into consecutive 32-bit registers from 0, then a lookup or a delete.
fn concat(e: &[Expr]) -> Phrase {
    let mut parts = Vec::new();
    let mut reg = 0;
    for x in e {
        match x {
            Expr::PayloadTo {
                base,
                offset,
                len,
                reg32,
            } if *reg32 == reg => {
                parts.push(field(*base, *offset, *len)?);
                reg += len.div_ceil(4);
            }
            Expr::Lookup { set } if !parts.is_empty() => {
                return Some((parts.len() + 1, format!("{} @{set}", parts.join(" . "))));
            }
            Expr::Dynset {
                op: DynOp::Delete,
                set,
                ..
            } if !parts.is_empty() => {
                let text = format!("delete @{set} {{ {} }}", parts.join(" . "));
                return Some((parts.len() + 1, text));
            }
            _ => return None,
        }
    }
    None
}

/// The header field at `offset` (the TCP ports, the IP addresses).
fn field(base: Base, offset: u32, len: u32) -> Option<&'static str> {
    Some(match (base, offset, len) {
        (Base::Transport, 0, 2) => "tcp sport",
        (Base::Transport, 2, 2) => "tcp dport",
        (Base::Network, o, l) if (o, l) == addr_offset(false, false) => "ip saddr",
        (Base::Network, o, l) if (o, l) == addr_offset(false, true) => "ip daddr",
        (Base::Network, o, l) if (o, l) == addr_offset(true, false) => "ip6 saddr",
        (Base::Network, o, l) if (o, l) == addr_offset(true, true) => "ip6 daddr",
        _ => return None,
    })
}

/// NAT, numgen and verdicts.
fn statement(e: &[Expr]) -> Phrase {
    Some(match e {
        [Expr::Immediate {
            reg: Reg::R1,
            data: first,
        }, Expr::Immediate {
            reg: Reg::R2,
            data: last,
        }, Expr::SnatPrefix6, ..] => {
            let len = range_prefix(first, last)?;
            let text = format!("snat ip6 prefix to {}/{len}", Ipv6Addr::from(*first));
            (3, text)
        }
        [Expr::CtReplyDaddr4, Expr::Cmp {
            op: CmpKind::Neq,
            data,
        }, ..] => {
            let a: [u8; 4] = data[..].try_into().ok()?;
            (
                2,
                format!("ct reply ip daddr != {}", std::net::Ipv4Addr::from(a)),
            )
        }
        [Expr::CtReplyDaddr4, Expr::Dynset {
            op: DynOp::Add,
            set,
            timeout_ms,
        }, ..] => {
            let timeout = timeout_ms.map(duration).unwrap_or_default();
            (2, format!("add @{set} {{ ct reply ip daddr{timeout} }}"))
        }
        [Expr::Immediate4(a), Expr::Snat4, ..] => {
            (2, format!("snat ip to {}", std::net::Ipv4Addr::from(*a)))
        }
        [Expr::NumgenRandom { modulus }, Expr::Hton32, Expr::Cmp {
            op: CmpKind::Lt,
            data,
        }, ..] => {
            let below = u32::from_be_bytes(data[..].try_into().ok()?);
            (3, format!("numgen random mod {modulus} < {below}"))
        }
        [Expr::Jump(c), ..] => (1, format!("jump {c}")),
        [Expr::Goto(c), ..] => (1, format!("goto {c}")),
        [Expr::Drop, ..] => (1, "drop".into()),
        [Expr::RejectTcpReset, ..] => (1, "reject with tcp reset".into()),
        [Expr::Masquerade, ..] => (1, "masquerade".into()),
        [Expr::Notrack, ..] => (1, "notrack".into()),
        _ => return None,
    })
}

/// After `meta nfproto` == `family`: an address match (`ip saddr PREFIX`, `ip6 daddr @SET`) and
/// how many expressions from the payload load on it covers.
fn address(family: u8, e: &[Expr]) -> Phrase {
    use Expr as E;
    let v6 = match family {
        NFPROTO_IPV4 => false,
        NFPROTO_IPV6 => true,
        _ => return None,
    };
    let [E::Payload {
        base: Base::Network,
        offset,
        len,
    }, rest @ ..] = e
    else {
        return None;
    };
    let dst = [false, true]
        .into_iter()
        .find(|&dst| addr_offset(v6, dst) == (*offset, *len))?;
    let key = format!(
        "{} {}",
        if v6 { "ip6" } else { "ip" },
        if dst { "daddr" } else { "saddr" }
    );
    match rest {
        [E::Lookup { set }, ..] => Some((2, format!("{key} @{set}"))),
        [E::Bitwise { mask, xor }, E::Cmp {
            op: CmpKind::Eq,
            data,
        }, ..]
            if xor.iter().all(|&b| b == 0) =>
        {
            Some((3, format!("{key} {}/{}", ip(data)?, prefix_len(mask)?)))
        }
        [E::Cmp {
            op: CmpKind::Eq,
            data,
        }, ..] => Some((2, format!("{key} {}/{}", ip(data)?, data.len() * 8))),
        _ => None,
    }
}

/// Conntrack state bits (`NF_CT_STATE_*_BIT`, in nft's order), joined as nft does.
fn ct_states(bits: u32) -> Option<String> {
    let names = [
        (1, "invalid"),
        (2, "established"),
        (4, "related"),
        (8, "new"),
        (64, "untracked"),
    ];
    flag_names(bits, &names, ",")
}

fn tcp_flags(bits: u8) -> Option<String> {
    let names = [
        (1, "fin"),
        (2, "syn"),
        (4, "rst"),
        (8, "psh"),
        (16, "ack"),
        (32, "urg"),
        (64, "ecn"),
        (128, "cwr"),
    ];
    flag_names(u32::from(bits), &names, "|")
}

/// `bits` as names, or `None` when some bit has no name.
fn flag_names(bits: u32, names: &[(u32, &str)], sep: &str) -> Option<String> {
    let known: u32 = names.iter().map(|(b, _)| b).sum();
    if bits == 0 || bits & !known != 0 {
        return None;
    }
    let set: Vec<&str> = names
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    Some(set.join(sep))
}

fn u32_ne(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

fn u16_be(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.try_into().ok()?))
}

fn ip(b: &[u8]) -> Option<IpAddr> {
    if let Ok(a) = <[u8; 4]>::try_from(b) {
        return Some(Ipv4Addr::from(a).into());
    }
    Some(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).into())
}

/// The length of a contiguous network mask.
fn prefix_len(mask: &[u8]) -> Option<usize> {
    let ones: usize = mask.iter().map(|b| b.count_ones() as usize).sum();
    let contiguous = mask
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (0xffu16 << (8 - ones.saturating_sub(i * 8).min(8))) as u8);
    contiguous.then_some(ones)
}

/// The prefix length of the range first..=last, if it is exactly one prefix.
fn range_prefix(first: &[u8; 16], last: &[u8; 16]) -> Option<usize> {
    let (a, b) = (u128::from_be_bytes(*first), u128::from_be_bytes(*last));
    let host = a ^ b;
    let len = host.leading_zeros() as usize;
    (host.checked_add(1)?.is_power_of_two() && a & host == 0 && b & host == host).then_some(len)
}

fn duration(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!(" timeout {}s", ms / 1000)
    } else {
        format!(" timeout {ms}ms")
    }
}

/// `@nh,OFFSET,LEN` in bits, as nft writes a raw payload.
fn payload(base: Base, offset: u32, len: u32) -> String {
    let base = match base {
        Base::Network => "nh",
        Base::Transport => "th",
    };
    format!("@{base},{},{}", offset * 8, len * 8)
}

fn hex(b: &[u8]) -> String {
    b.iter().fold("0x".to_owned(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An expression on its own, in brackets (register 1 implied).
fn raw(e: &Expr) -> String {
    let text = match e {
        Expr::Meta(k) => format!("meta load {}", format!("{k:?}").to_lowercase()),
        Expr::SetMetaMark => "meta set mark".into(),
        Expr::Ct(k) => format!("ct load {}", format!("{k:?}").to_lowercase()),
        Expr::SetCtMark => "ct set mark".into(),
        Expr::Bitwise { mask, xor } => format!("bitwise & {} ^ {}", hex(mask), hex(xor)),
        Expr::Cmp { op, data } => {
            format!("cmp {} {}", format!("{op:?}").to_lowercase(), hex(data))
        }
        Expr::Payload { base, offset, len } => format!("payload {}", payload(*base, *offset, *len)),
        Expr::PayloadTo {
            base,
            offset,
            len,
            reg32,
        } => format!("payload {} => reg32 {reg32}", payload(*base, *offset, *len)),
        Expr::Lookup { set } => format!("lookup @{set}"),
        Expr::VerdictLookup { set } => format!("lookup @{set} => verdict"),
        Expr::Dynset {
            op,
            set,
            timeout_ms,
        } => format!("dynset {op:?} @{set} timeout {timeout_ms:?}").to_lowercase(),
        Expr::Immediate { reg, data } => format!("immediate {reg:?} {}", hex(data)),
        Expr::NumgenRandom { modulus } => format!("numgen random mod {modulus}"),
        Expr::Hton32 => "byteorder hton 4".into(),
        Expr::SnatPrefix6 => "snat ip6 prefix r1-r2".into(),
        Expr::Immediate4(a) => format!("immediate r1 {}", hex(a)),
        Expr::Snat4 => "snat ip r1".into(),
        Expr::CtReplyDaddr4 => "ct load reply ip daddr".into(),
        // Verdicts and the like always form a phrase.
        e => format!("{e:?}"),
    };
    format!("[{text}]")
}

impl fmt::Display for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table inet {} {{", TABLE.to_string_lossy())?;
        for (name, ip) in [(STALE4, "ipv4_addr"), (STALE6, "ipv6_addr")] {
            writeln!(
                f,
                "  set {} {{ type {ip} . {ip} . inet_service . inet_service; size {}; flags dynamic,timeout; timeout {}s; }}",
                name.to_string_lossy(),
                super::batch::STALE_MAX,
                STALE_TIMEOUT_MS / 1000
            )?;
        }
        for set in &self.addr_sets {
            writeln!(
                f,
                "  set {} {{ type {}; flags dynamic,timeout; }}",
                set.name,
                if set.v6 { "ipv6_addr" } else { "ipv4_addr" }
            )?;
        }
        for set in &self.match_sets {
            let (kind, elements) = match set.kind {
                MatchKind::V4 => (
                    "ipv4_addr",
                    elements(set, |k| Ipv4Addr::from(k as u32).to_string()),
                ),
                MatchKind::V6 => (
                    "ipv6_addr",
                    elements(set, |k| Ipv6Addr::from(k).to_string()),
                ),
                MatchKind::Port => ("inet_service", elements(set, |k| k.to_string())),
            };
            writeln!(
                f,
                "  set {} {{ type {kind}; flags interval; elements = {{ {elements} }}; }}",
                set.name
            )?;
        }
        let jumps: Vec<String> = (self.link_marks.iter())
            .map(|(mark, chain)| format!("{mark:#x} : jump {chain}"))
            .collect();
        write!(f, "  map {LINK_MARKS} {{ type mark : verdict;")?;
        if !jumps.is_empty() {
            write!(f, " elements = {{ {} }};", jumps.join(", "))?;
        }
        writeln!(f, " }}")?;
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
                writeln!(f, "    {}", rule(r))?;
            }
            writeln!(f, "  }}")?;
        }
        write!(f, "}}")
    }
}

/// A match set's elements as nft writes ranges: `LO-HI`, or `KEY` for a single key.
fn elements(set: &MatchSet, key: impl Fn(u128) -> String) -> String {
    set.intervals
        .iter()
        .map(|&(lo, end)| {
            let hi = end.map_or(set.kind.max(), |e| e - 1);
            if lo == hi {
                key(lo)
            } else {
                format!("{}-{}", key(lo), key(hi))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
