//! The rule IR lowered to nftables expressions: the one form both the kernel and the text see.
//!
//! Each [`Op`] is lowered once, by [`lower`], into [`Expr`]s: values that mirror the kernel's
//! expressions one to one (registers, bytes in the order the kernel compares them). From there:
//! - [`add_exprs`] maps each `Expr` onto exactly one nftnl expression, with no decision of its
//!   own beyond resolving set names to the batch's set objects;
//! - the text form (`text.rs`) is printed from the same `Expr`s, recognising the sequences nft(8)
//!   would print as one phrase (`ct mark & 0xff00 == 0x100`) and printing anything else raw
//!   (`[cmp neq 0x0100]`).
//!
//! So a change to the encoding changes the text, and the snapshot tests catch it; there is no
//! second description of an `Op` that could drift from what is sent.

use std::ffi::{CStr, CString};
use std::io;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Immediate, Lookup, Masquerade, Meta, Nat, NatType, Register,
    RejectionType, States, Verdict,
};
use nftnl::{ProtoFamily, Rule};

use super::plan::{DynOp, Op};
use super::{NFPROTO_IPV4, NFPROTO_IPV6, TCP_FLAG_SYN};
use super::{STALE4, STALE6};
use crate::config::Prefix;
use crate::dataplane::nft_ext::{
    Base, CtReplyDaddr4, Dynset, Hton32, MetaPktType, Notrack, NumgenRandom, RawLoad, SnatPrefix6,
    VerdictLookup,
};

/// One nftables expression. Loads write register 1 (a payload longer than 16 bytes continues
/// into the registers after it); comparisons, bitwise operations, lookups and sets read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta KEY` into register 1.
    Meta(MetaKey),
    /// `meta mark set` register 1.
    SetMetaMark,
    /// `ct KEY` into register 1.
    Ct(CtKey),
    /// `ct mark set` register 1.
    SetCtMark,
    /// Register 1 = register 1 & `mask` ^ `xor` (both as long as the value).
    Bitwise {
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Register 1 against `data`, byte by byte (so big-endian data orders as numbers).
    Cmp {
        op: CmpKind,
        data: Vec<u8>,
    },
    /// `len` bytes at `offset` of the network or transport header.
    Payload {
        base: Base,
        offset: u32,
        len: u32,
    },
    /// `len` bytes at `offset` of the network or transport header into the 32-bit register
    /// `reg32` (0 ..= 15) and the ones after it: one part of a concatenation.
    PayloadTo {
        base: Base,
        offset: u32,
        len: u32,
        reg32: u32,
    },
    /// Register 1 (and the ones after it, for a long key) is in the set called `set`.
    Lookup {
        set: String,
    },
    /// Register 1 looked up in the verdict map called `set`: the verdict of its element, if it
    /// has one, is taken.
    VerdictLookup {
        set: String,
    },
    /// Add register 1 to the set, refresh it, or delete it (`timeout_ms` for add and update).
    Dynset {
        op: DynOp,
        set: String,
        timeout_ms: Option<u64>,
    },
    /// 16 bytes into register 1 or 2.
    Immediate {
        reg: Reg,
        data: [u8; 16],
    },
    /// `numgen random mod MODULUS` into register 1, host byte order.
    NumgenRandom {
        modulus: u32,
    },
    /// Register 1's 32-bit value to network byte order.
    Hton32,
    Jump(String),
    Goto(String),
    Drop,
    RejectTcpReset,
    Masquerade,
    /// IPv6 source NAT to the prefix from register 1 (first address) to register 2 (last).
    SnatPrefix6,
    /// 4 bytes (an IPv4 address) into register 1.
    Immediate4([u8; 4]),
    /// The IPv4 destination of the flow's reply direction (where it was translated to) into
    /// register 1.
    CtReplyDaddr4,
    /// IPv4 source NAT to the address in register 1.
    Snat4,
    Notrack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Mark,
    NfProto,
    L4Proto,
    IifName,
    OifName,
    PktType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    Mark,
    State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpKind {
    Eq,
    Neq,
    Lt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    R1,
    R2,
}

/// The expressions of one `Op`, in order.
pub fn lower(op: &Op) -> io::Result<Vec<Expr>> {
    use Expr as E;
    Ok(match op {
        Op::CtMarkVmap { mask, map } => vec![
            E::Ct(CtKey::Mark),
            E::Bitwise {
                mask: mask.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            E::VerdictLookup { set: map.clone() },
        ],
        Op::MetaMarkIs { mask, value } => mark_is(E::Meta(MetaKey::Mark), *mask, *value),
        Op::SetCtMark { mask, value } => set_mark(E::Ct(CtKey::Mark), E::SetCtMark, *mask, *value),
        Op::SetMetaMark { mask, value } => {
            set_mark(E::Meta(MetaKey::Mark), E::SetMetaMark, *mask, *value)
        }
        Op::IifName(n) => name_is(MetaKey::IifName, n)?,
        Op::OifName(n) => name_is(MetaKey::OifName, n)?,
        Op::CtStateNew => ct_state(States::NEW),
        Op::CtStateInvalid => ct_state(States::INVALID),
        Op::PktTypeHost => vec![E::Meta(MetaKey::PktType), eq(vec![libc::PACKET_HOST])],
        Op::NfProto(p) => vec![E::Meta(MetaKey::NfProto), eq(vec![*p])],
        Op::L4Proto(p) => vec![E::Meta(MetaKey::L4Proto), eq(vec![*p])],
        Op::Addr { dst, prefix } => addr_is(*dst, prefix),
        Op::AddrIn { dst, v6, set } => {
            let mut e = family(*v6);
            e.push(addr_load(*v6, *dst));
            e.push(E::Lookup { set: set.clone() });
            e
        }
        Op::PortIn { dst, set } => vec![
            payload(Base::Transport, if *dst { 2 } else { 0 }, 2),
            E::Lookup { set: set.clone() },
        ],
        Op::SourceIn { set, v6 } => {
            let mut e = family(*v6);
            e.push(addr_load(*v6, false));
            e.push(E::Lookup { set: set.clone() });
            e
        }
        Op::SetSource {
            op,
            set,
            v6,
            timeout_ms,
        } => vec![
            addr_load(*v6, false),
            E::Dynset {
                op: *op,
                set: set.clone(),
                timeout_ms: (*op != DynOp::Delete).then_some(*timeout_ms),
            },
        ],
        Op::Jump(c) => vec![E::Jump(c.clone())],
        Op::Goto(c) => vec![E::Goto(c.clone())],
        Op::SnatPrefix(p) => snat_prefix(p)?,
        Op::Snat4(a) => vec![Expr::Immediate4(a.octets()), Expr::Snat4],
        Op::NatNot(a) => vec![E::CtReplyDaddr4, cmp(CmpKind::Neq, a.octets().to_vec())],
        Op::RecordNat { set, timeout_ms } => vec![
            E::CtReplyDaddr4,
            E::Dynset {
                op: DynOp::Add,
                set: set.clone(),
                timeout_ms: Some(*timeout_ms),
            },
        ],
        Op::TcpNotSyn => vec![
            payload(Base::Transport, TCP_FLAGS_OFFSET, 1),
            E::Bitwise {
                mask: vec![TCP_FLAG_SYN],
                xor: vec![0],
            },
            eq(vec![0]),
        ],
        Op::TcpSyn => vec![
            payload(Base::Transport, TCP_FLAGS_OFFSET, 1),
            E::Bitwise {
                mask: vec![TCP_FLAG_SYN],
                xor: vec![0],
            },
            cmp(CmpKind::Neq, vec![0]),
        ],
        Op::StaleFlow { v6 } => {
            let mut e = stale_key_load(*v6);
            e.push(Expr::Lookup {
                set: stale_set(*v6),
            });
            e
        }
        Op::ForgetStale { v6 } => {
            let mut e = stale_key_load(*v6);
            e.push(Expr::Dynset {
                op: DynOp::Delete,
                set: stale_set(*v6),
                timeout_ms: None,
            });
            e
        }
        Op::RejectTcpReset => vec![E::RejectTcpReset],
        Op::Drop => vec![E::Drop],
        Op::Masquerade => vec![E::Masquerade],
        Op::Notrack => vec![E::Notrack],
        Op::RandomBelow { modulus, below } => vec![
            E::NumgenRandom { modulus: *modulus },
            E::Hton32,
            cmp(CmpKind::Lt, below.to_be_bytes().to_vec()),
        ],
    })
}

/// `ip saddr PREFIX` (or daddr, or ip6), the family check first.
fn addr_is(dst: bool, prefix: &Prefix) -> Vec<Expr> {
    let v6 = prefix.is_ipv6();
    let (addr, mask) = prefix.bytes();
    let mut e = family(v6);
    e.push(addr_load(v6, dst));
    if mask.iter().any(|&b| b != 0xff) {
        let xor = vec![0; mask.len()];
        e.push(Expr::Bitwise { mask, xor });
    }
    e.push(eq(addr));
    e
}

/// `snat ip6 prefix to PREFIX`: the range from the prefix's first to its last address.
fn snat_prefix(p: &Prefix) -> io::Result<Vec<Expr>> {
    let (addr, mask) = p.bytes();
    let first: [u8; 16] = addr
        .try_into()
        .map_err(|_| invalid("NPTv6 prefix must be IPv6"))?;
    let mut last = first;
    for (b, m) in last.iter_mut().zip(&mask) {
        *b |= !m;
    }
    Ok(vec![
        Expr::Immediate {
            reg: Reg::R1,
            data: first,
        },
        Expr::Immediate {
            reg: Reg::R2,
            data: last,
        },
        Expr::SnatPrefix6,
    ])
}

/// The packet's flow key, from the source address to the TCP destination port (see
/// reset::STALE4/6), is in a stale set.
/// The stale set of a family.
fn stale_set(v6: bool) -> String {
    if v6 { STALE6 } else { STALE4 }
        .to_string_lossy()
        .into_owned()
}

/// A packet's key in the stale sets, `ip saddr . ip daddr . tcp sport . tcp dport` (or ip6),
/// into consecutive 32-bit registers from register 1 on, each part starting at a register of
/// its own (a port is padded to four bytes), as [`stale_key`](crate::dataplane::reset::stale_key)
/// builds it.
fn stale_key_load(v6: bool) -> Vec<Expr> {
    let (src, dst) = (addr_offset(v6, false), addr_offset(v6, true));
    let addr_regs = src.1 / 4;
    let parts = [
        (Base::Network, src, 0),
        (Base::Network, dst, addr_regs),
        (Base::Transport, (0, 2), 2 * addr_regs),
        (Base::Transport, (2, 2), 2 * addr_regs + 1),
    ];
    parts
        .into_iter()
        .map(|(base, (offset, len), reg32)| Expr::PayloadTo {
            base,
            offset,
            len,
            reg32,
        })
        .collect()
}

/// The TCP flags byte in the TCP header.
pub(super) const TCP_FLAGS_OFFSET: u32 = 13;

/// Network-header offsets of the IPv4 and IPv6 source and destination addresses.
pub(super) fn addr_offset(v6: bool, dst: bool) -> (u32, u32) {
    match (v6, dst) {
        (false, false) => (12, 4),
        (false, true) => (16, 4),
        (true, false) => (8, 16),
        (true, true) => (24, 16),
    }
}

fn addr_load(v6: bool, dst: bool) -> Expr {
    let (offset, len) = addr_offset(v6, dst);
    payload(Base::Network, offset, len)
}

fn payload(base: Base, offset: u32, len: u32) -> Expr {
    Expr::Payload { base, offset, len }
}

fn cmp(op: CmpKind, data: Vec<u8>) -> Expr {
    Expr::Cmp { op, data }
}

fn eq(data: Vec<u8>) -> Expr {
    cmp(CmpKind::Eq, data)
}

/// `meta nfproto ipv4|ipv6`: the network-header offsets after it depend on it.
fn family(v6: bool) -> Vec<Expr> {
    let p = if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
    vec![Expr::Meta(MetaKey::NfProto), eq(vec![p])]
}

/// `KEY & mask == value` on a 32-bit mark (host byte order, as the kernel keeps marks).
fn mark_is(load: Expr, mask: u32, value: u32) -> Vec<Expr> {
    vec![
        load,
        Expr::Bitwise {
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        eq(value.to_ne_bytes().to_vec()),
    ]
}

/// `KEY set KEY & ~mask | value`: our bits replaced, the others kept. `value` is within `mask`,
/// so the xor sets exactly its bits.
fn set_mark(load: Expr, store: Expr, mask: u32, value: u32) -> Vec<Expr> {
    vec![
        load,
        Expr::Bitwise {
            mask: (!mask).to_ne_bytes().to_vec(),
            xor: value.to_ne_bytes().to_vec(),
        },
        store,
    ]
}

/// `iifname "NAME"`: the kernel compares the name with its terminating NUL (an exact match).
fn name_is(key: MetaKey, name: &str) -> io::Result<Vec<Expr>> {
    let data = cstring(name)?.into_bytes_with_nul();
    Ok(vec![Expr::Meta(key), eq(data)])
}

/// `ct state STATE`: a bit of the state, set.
fn ct_state(state: States) -> Vec<Expr> {
    vec![
        Expr::Ct(CtKey::State),
        Expr::Bitwise {
            mask: state.bits().to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        cmp(CmpKind::Neq, vec![0; 4]),
    ]
}

pub(super) fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// The sets a rule refers to, by name: they may be created by the same batch, which knows them
/// by their batch id.
pub trait Sets {
    fn lookup(&self, set: &str) -> io::Result<Lookup>;
    /// The set's name and batch id.
    fn id(&self, set: &str) -> io::Result<(&CStr, u32)>;
}

/// Add the expressions to `rule`, each as exactly one nftnl expression.
pub fn add_exprs(rule: &mut Rule<'_>, exprs: &[Expr], sets: &impl Sets) -> io::Result<()> {
    for e in exprs {
        add_expr(rule, e, sets)?;
    }
    Ok(())
}

fn add_expr(rule: &mut Rule<'_>, e: &Expr, sets: &impl Sets) -> io::Result<()> {
    match e {
        Expr::Meta(k) => rule.add_expr(&match k {
            MetaKey::Mark => Meta::Mark { set: false },
            MetaKey::NfProto => Meta::NfProto,
            MetaKey::L4Proto => Meta::L4Proto,
            MetaKey::IifName => Meta::IifName,
            MetaKey::OifName => Meta::OifName,
            MetaKey::PktType => {
                rule.add_expr(&MetaPktType);
                return Ok(());
            }
        }),
        Expr::SetMetaMark => rule.add_expr(&Meta::Mark { set: true }),
        Expr::Ct(CtKey::Mark) => rule.add_expr(&Conntrack::Mark { set: false }),
        Expr::Ct(CtKey::State) => rule.add_expr(&Conntrack::State),
        Expr::SetCtMark => rule.add_expr(&Conntrack::Mark { set: true }),
        Expr::Bitwise { mask, xor } => {
            // nftnl asserts this; an error is kinder than a panic.
            if mask.len() != xor.len() {
                return Err(invalid("bitwise mask and xor differ in length"));
            }
            rule.add_expr(&Bitwise::new(&mask[..], &xor[..]));
        }
        Expr::Cmp { op, data } => rule.add_expr(&Cmp::new(cmp_op(*op), &data[..])),
        Expr::Payload { base, offset, len } => rule.add_expr(&RawLoad {
            base: *base,
            offset: *offset,
            len: *len,
            dreg: libc::NFT_REG_1 as u32,
        }),
        Expr::PayloadTo {
            base,
            offset,
            len,
            reg32,
        } => {
            if *reg32 > 15 {
                return Err(invalid("no such 32-bit register"));
            }
            rule.add_expr(&RawLoad {
                base: *base,
                offset: *offset,
                len: *len,
                dreg: libc::NFT_REG32_00 as u32 + reg32,
            })
        }
        Expr::Lookup { set } => rule.add_expr(&sets.lookup(set)?),
        Expr::VerdictLookup { set } => {
            let (set, set_id) = sets.id(set)?;
            rule.add_expr(&VerdictLookup { set, set_id });
        }
        Expr::Dynset {
            op,
            set,
            timeout_ms,
        } => {
            let (set, set_id) = sets.id(set)?;
            rule.add_expr(&Dynset {
                op: match op {
                    DynOp::Add => libc::NFT_DYNSET_OP_ADD,
                    DynOp::Update => libc::NFT_DYNSET_OP_UPDATE,
                    DynOp::Delete => 2, // NFT_DYNSET_OP_DELETE (Linux 5.18)
                } as u32,
                set,
                set_id,
                timeout_ms: *timeout_ms,
            });
        }
        Expr::Immediate { reg, data } => {
            let reg = match reg {
                Reg::R1 => Register::Reg1,
                Reg::R2 => Register::Reg2,
            };
            rule.add_expr(&Immediate::new(*data, reg));
        }
        Expr::NumgenRandom { modulus } => rule.add_expr(&NumgenRandom { modulus: *modulus }),
        Expr::Hton32 => rule.add_expr(&Hton32),
        Expr::Jump(c) => rule.add_expr(&Verdict::Jump { chain: cstring(c)? }),
        Expr::Goto(c) => rule.add_expr(&Verdict::Goto { chain: cstring(c)? }),
        Expr::Drop => rule.add_expr(&Verdict::Drop),
        Expr::RejectTcpReset => rule.add_expr(&Verdict::Reject(RejectionType::TcpRst)),
        Expr::Masquerade => rule.add_expr(&Masquerade),
        Expr::SnatPrefix6 => rule.add_expr(&SnatPrefix6),
        Expr::Immediate4(a) => rule.add_expr(&Immediate::new(*a, Register::Reg1)),
        Expr::CtReplyDaddr4 => rule.add_expr(&CtReplyDaddr4),
        Expr::Snat4 => rule.add_expr(&Nat {
            nat_type: NatType::SNat,
            family: ProtoFamily::Ipv4,
            ip_register: Register::Reg1,
            port_register: None,
        }),
        Expr::Notrack => rule.add_expr(&Notrack),
    }
    Ok(())
}

fn cmp_op(op: CmpKind) -> CmpOp {
    match op {
        CmpKind::Eq => CmpOp::Eq,
        CmpKind::Neq => CmpOp::Neq,
        CmpKind::Lt => CmpOp::Lt,
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned())
}
