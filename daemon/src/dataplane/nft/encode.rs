//! The rule IR as nftnl expressions and as nft text.

use std::ffi::CString;
use std::fmt;
use std::io;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Immediate, InterfaceName, Lookup, Masquerade, Meta, Register,
    RejectionType, States, Verdict,
};
use nftnl::{ChainType, Hook, Rule};

use super::batch::{cstring, Refs};
use super::plan::{DynOp, Op, Ruleset};
use super::TCP_FLAG_SYN;
use super::{IPPROTO_TCP, NFPROTO_IPV4, NFPROTO_IPV6, STALE4, STALE6, STALE_TIMEOUT_MS, TABLE};
use crate::dataplane::nft_ext::{
    Base, Dynset, Hton32, Notrack, NumgenRandom, RawLoad, SnatPrefix6,
};

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

pub(super) fn add_op(rule: &mut Rule<'_>, op: &Op, refs: &Refs<'_, '_>) -> io::Result<()> {
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
