//! What the `nftnl` crate lacks, built on its public `Expression` trait and `nftnl_sys`:
//! a payload load of any length (a whole flow key in consecutive registers), `notrack`, and
//! named sets whose elements expire, sets changed from the packet path, prefix NAT, and
//! socket buffers large enough for big batches.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::set::{Set, SetKey};
use nftnl::{MsgType, NlMsg, Rule};

/// Where a payload offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Network,
    Transport,
}

/// Load `len` bytes at `offset` of the network or transport header into register 1 and the
/// registers after it (`@nh,OFFSET*8,LEN*8` in nft syntax). The kernel checks that the load fits
/// the register file (64 bytes from register 1).
pub struct RawLoad {
    pub base: Base,
    pub offset: u32,
    pub len: u32,
    /// Destination register (`NFT_REG_*` or `NFT_REG32_*`).
    pub dreg: u32,
}

impl Expression for RawLoad {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let base = match self.base {
            Base::Network => libc::NFT_PAYLOAD_NETWORK_HEADER,
            Base::Transport => libc::NFT_PAYLOAD_TRANSPORT_HEADER,
        } as u32;
        // SAFETY: nftnl_expr_alloc returns a fresh expression or NULL (checked); the setters
        // only copy the integers into it. Ownership passes to the caller (the rule).
        unsafe {
            let expr = alloc(c"payload");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, base);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, self.offset);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, self.len);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, self.dreg);
            expr
        }
    }
}

/// `ct reply ip daddr` into register 1: where the flow's replies go, i.e. the address its
/// source was translated to.
pub struct CtReplyDaddr4;

/// `IP_CT_DIR_REPLY` (linux/netfilter/nf_conntrack_tuple_common.h).
const IP_CT_DIR_REPLY: u8 = 1;

impl Expression for CtReplyDaddr4 {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: as for RawLoad.
        unsafe {
            let expr = alloc(c"ct");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_KEY as u16, libc::NFT_CT_DST_IP as u32);
            sys::nftnl_expr_set_u8(e, sys::NFTNL_EXPR_CT_DIR as u16, IP_CT_DIR_REPLY);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_DREG as u16, libc::NFT_REG_1 as u32);
            expr
        }
    }
}

/// `meta pkttype` into register 1 (one byte: PACKET_HOST, PACKET_BROADCAST, ...); the nftnl
/// crate has no such key.
pub struct MetaPktType;

impl Expression for MetaPktType {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: as for RawLoad.
        unsafe {
            let expr = alloc(c"meta");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_META_KEY as u16,
                libc::NFT_META_PKTTYPE as u32,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_DREG as u16, libc::NFT_REG_1 as u32);
            expr
        }
    }
}

/// `numgen random mod MODULUS` into register 1 (host byte order).
pub struct NumgenRandom {
    pub modulus: u32,
}

impl Expression for NumgenRandom {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: as for RawLoad.
        unsafe {
            let expr = alloc(c"numgen");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_DREG as u16, libc::NFT_REG_1 as u32);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_MODULUS as u16, self.modulus);
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_NG_TYPE as u16,
                libc::NFT_NG_RANDOM as u32,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_OFFSET as u16, 0);
            expr
        }
    }
}

/// Register 1's 32-bit value to network byte order, so `cmp lt` (a byte-wise comparison in
/// the kernel) orders it as a number.
pub struct Hton32;

impl Expression for Hton32 {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: as for RawLoad.
        unsafe {
            let expr = alloc(c"byteorder");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_BYTEORDER_SREG as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_BYTEORDER_DREG as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_BYTEORDER_OP as u16,
                libc::NFT_BYTEORDER_HTON as u32,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BYTEORDER_LEN as u16, 4);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BYTEORDER_SIZE as u16, 4);
            expr
        }
    }
}

/// `notrack`: conntrack skips the packet (only before conntrack, at priority raw).
pub struct Notrack;

impl Expression for Notrack {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: as above; notrack has no attributes.
        unsafe { alloc(c"notrack") }
    }
}

/// # Safety
/// `name` must be an expression type libnftnl knows.
unsafe fn alloc(name: &CStr) -> NonNull<sys::nftnl_expr> {
    // SAFETY: the caller passes a known name; a NULL result (out of memory) aborts, as the
    // nftnl crate does for its own expressions.
    match NonNull::new(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) }) {
        Some(e) => e,
        None => std::process::abort(),
    }
}

/// A set key of `N` bytes whose nft type is the concatenation `T` (nft's `concat_type_alloc`:
/// each part's datatype id shifted in by 6 bits), so `nft list` prints the set with a type it
/// can read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConcatKey<const N: usize, const T: u32>(pub [u8; N]);

impl<const N: usize, const T: u32> SetKey for ConcatKey<N, T> {
    const TYPE: u32 = T;
    const LEN: u32 = N as u32;

    fn data(&self) -> Box<[u8]> {
        Box::new(self.0)
    }
}

/// nft datatype ids (`enum datatypes` in nftables' datatype.h) and how they concatenate.
pub const TYPE_IPADDR: u32 = 7;
pub const TYPE_IP6ADDR: u32 = 8;
pub const TYPE_INET_SERVICE: u32 = 13;
pub const TYPE_MARK: u32 = 19;
const TYPE_BITS: u32 = 6;

/// The type id of a concatenation of `parts`, in order.
pub const fn concat_type(parts: &[u32]) -> u32 {
    let mut t = 0;
    let mut i = 0;
    while i < parts.len() {
        t = (t << TYPE_BITS) | parts[i];
        i += 1;
    }
    t
}

/// Make `set` one whose elements expire after `timeout_ms` (flag NFT_SET_TIMEOUT and a default
/// timeout for every element).
pub fn set_timeout<K>(set: &Set<'_, K>, timeout_ms: u64) {
    let s = set.as_ptr().as_ptr();
    // SAFETY: `s` is the live nftnl_set owned by `set`, which outlives this call; the setters
    // copy the integers.
    unsafe {
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, libc::NFT_SET_TIMEOUT as u32);
        sys::nftnl_set_set_u64(s, sys::NFTNL_SET_TIMEOUT as u16, timeout_ms);
    }
}

/// Make `set` one that rules add elements to (`flags dynamic,timeout`); each element's timeout
/// comes from the rule that adds it.
pub fn set_dynamic<K>(set: &Set<'_, K>) {
    let s = set.as_ptr().as_ptr();
    // SAFETY: as in set_timeout.
    unsafe {
        sys::nftnl_set_set_u32(
            s,
            sys::NFTNL_SET_FLAGS as u16,
            (libc::NFT_SET_TIMEOUT | libc::NFT_SET_EVAL) as u32,
        );
    }
}

/// Let `set` hold up to `elements` elements. Without a size a set that rules add to holds at
/// most 65,535 (the kernel's default), and a purge of more TCP flows than that failed with
/// ENFILE before its flush.
pub fn set_size<K>(set: &Set<'_, K>, elements: u32) {
    let s = set.as_ptr().as_ptr();
    // SAFETY: as in set_timeout.
    unsafe {
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DESC_SIZE as u16, elements);
    }
}

/// Make `set` an interval set (`flags interval`): its elements are ranges, each a start
/// element and an end element flagged NFT_SET_ELEM_INTERVAL_END.
pub fn set_interval<K>(set: &Set<'_, K>) {
    let s = set.as_ptr().as_ptr();
    // SAFETY: as in set_timeout.
    unsafe {
        sys::nftnl_set_set_u32(
            s,
            sys::NFTNL_SET_FLAGS as u16,
            libc::NFT_SET_INTERVAL as u32,
        );
    }
}

/// Make `set` a verdict map (`type KEY : verdict`) keyed in host byte order (a mark): each
/// element's data is a verdict. The key's byte order goes in the set's user data, where nft(8)
/// reads it (NFTNL_UDATA_SET_KEYBYTEORDER = BYTEORDER_HOST_ENDIAN); without it `nft list` prints
/// a mark's bytes reversed, and `nft delete element` with the mark finds nothing.
pub fn set_verdict_map<K>(set: &Set<'_, K>) {
    let s = set.as_ptr().as_ptr();
    let host_order = 1u32.to_ne_bytes();
    let udata = [
        0,
        4,
        host_order[0],
        host_order[1],
        host_order[2],
        host_order[3],
    ];
    // SAFETY: as in set_timeout; nftnl_set_set_data copies `udata`.
    unsafe {
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, libc::NFT_SET_MAP as u32);
        sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, libc::NFT_DATA_VERDICT);
        sys::nftnl_set_set_data(
            s,
            sys::NFTNL_SET_USERDATA as u16,
            udata.as_ptr().cast(),
            udata.len() as u32,
        );
    }
}

/// One element of a set: its key (in the byte order the rules load it), whether it ends an
/// interval, and in a verdict map the chain it jumps to.
pub struct Elem {
    pub key: Vec<u8>,
    pub end: bool,
    pub jump: Option<CString>,
}

impl Elem {
    /// An element of a plain set (no data).
    pub fn key(key: Vec<u8>, end: bool) -> Self {
        Elem {
            key,
            end,
            jump: None,
        }
    }
}

/// Elements of the set named `set` (created by the same batch as `set_id`, or before), added
/// (NEWSETELEM, without NLM_F_EXCL) or deleted (DELSETELEM; no elements at all flushes the set)
/// in one message.
pub struct Elems<'a> {
    pub table: &'a CStr,
    pub set: &'a CStr,
    pub set_id: u32,
    pub elems: &'a [Elem],
    pub delete: bool,
}

/// Elements per [`Elems`] message: each message must fit one of libnftnl's 64 KiB batch pages
/// (an interval element of an IPv6 key takes about 44 bytes).
pub const ELEMS_PER_MSG: usize = 1000;

// SAFETY: `write` builds one message into `buf`, which the batch guarantees has room for
// nft_nlmsg_maxsize() bytes; callers keep the elements below ELEMS_PER_MSG.
unsafe impl NlMsg for Elems<'_> {
    unsafe fn write(&self, buf: *mut std::ffi::c_void, seq: u32, _msg_type: MsgType) {
        let (kind, flags) = if self.delete {
            (libc::NFT_MSG_DELSETELEM, libc::NLM_F_ACK)
        } else {
            (
                libc::NFT_MSG_NEWSETELEM,
                libc::NLM_F_CREATE | libc::NLM_F_ACK,
            )
        };
        // SAFETY: every object is allocated and freed here; the setters copy strings and keys.
        unsafe {
            let s = sys::nftnl_set_alloc();
            if s.is_null() {
                return;
            }
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, self.set.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, self.set_id);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, libc::NFPROTO_INET as u32);
            for elem in self.elems {
                let e = sys::nftnl_set_elem_alloc();
                if e.is_null() {
                    break;
                }
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    elem.key.as_ptr().cast(),
                    elem.key.len() as u32,
                );
                if elem.end {
                    sys::nftnl_set_elem_set_u32(
                        e,
                        sys::NFTNL_SET_ELEM_FLAGS as u16,
                        libc::NFT_SET_ELEM_INTERVAL_END as u32,
                    );
                }
                if let Some(chain) = &elem.jump {
                    sys::nftnl_set_elem_set_u32(
                        e,
                        sys::NFTNL_SET_ELEM_VERDICT as u16,
                        libc::NFT_JUMP as u32,
                    );
                    sys::nftnl_set_elem_set_str(
                        e,
                        sys::NFTNL_SET_ELEM_CHAIN as u16,
                        chain.as_ptr(),
                    );
                }
                sys::nftnl_set_elem_add(s, e);
            }
            let header = sys::nftnl_nlmsg_build_hdr(
                buf.cast(),
                kind as u16,
                nftnl::ProtoFamily::Inet as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_set_elems_nlmsg_build_payload(header, s);
            sys::nftnl_set_free(s);
        }
    }
}

/// `vmap @SET`: register 1 looked up in a verdict map; the verdict of its element, if any, is
/// taken.
pub struct VerdictLookup<'a> {
    pub set: &'a CStr,
    /// The map's id in the batch (it may be created by the same batch).
    pub set_id: u32,
}

impl Expression for VerdictLookup<'_> {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: as for RawLoad; nftnl_expr_set_str copies the name.
        unsafe {
            let expr = alloc(c"lookup");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_LOOKUP_SREG as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_LOOKUP_DREG as u16,
                libc::NFT_REG_VERDICT as u32,
            );
            sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, self.set.as_ptr());
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, self.set_id);
            expr
        }
    }
}

/// `add|update|delete @SET { <register 1> [timeout T] }`: a set changed from the packet path,
/// keyed by what the rule loaded into register 1.
pub struct Dynset<'a> {
    /// NFT_DYNSET_OP_ADD, _UPDATE or _DELETE.
    pub op: u32,
    pub set: &'a CStr,
    /// The set's id in the batch (it may be created by the same batch).
    pub set_id: u32,
    pub timeout_ms: Option<u64>,
}

impl Expression for Dynset<'_> {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: as for RawLoad; nftnl_expr_set_str copies the name.
        unsafe {
            let expr = alloc(c"dynset");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_DYNSET_SREG_KEY as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_DYNSET_OP as u16, self.op);
            sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_DYNSET_SET_NAME as u16, self.set.as_ptr());
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_DYNSET_SET_ID as u16, self.set_id);
            if let Some(t) = self.timeout_ms {
                sys::nftnl_expr_set_u64(e, sys::NFTNL_EXPR_DYNSET_TIMEOUT as u16, t);
            }
            expr
        }
    }
}

/// `snat ip6 prefix to ...`: IPv6 source NAT to the range in registers 1 (first address) and 2
/// (last), mapping addresses one to one (NF_NAT_RANGE_NETMAP) so the interface identifier is
/// kept.
pub struct SnatPrefix6;

/// NF_NAT_RANGE_NETMAP (Linux 5.8), not in the libc crate.
const NF_NAT_RANGE_NETMAP: u32 = 1 << 6;

impl Expression for SnatPrefix6 {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: as for RawLoad.
        unsafe {
            let expr = alloc(c"nat");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_NAT_TYPE as u16,
                libc::NFT_NAT_SNAT as u32,
            );
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_NAT_FAMILY as u16,
                libc::NFPROTO_IPV6 as u32,
            );
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_NAT_REG_ADDR_MIN as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_NAT_REG_ADDR_MAX as u16,
                libc::NFT_REG_2 as u32,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_FLAGS as u16, NF_NAT_RANGE_NETMAP);
            expr
        }
    }
}

/// Give a netlink socket send and receive buffers of at least these sizes (SO_SNDBUFFORCE and
/// SO_RCVBUFFORCE: root may exceed the sysctl limits, as nft(8) does for large batches).
pub fn set_buffers(
    socket: &impl std::os::fd::AsRawFd,
    send: usize,
    recv: usize,
) -> std::io::Result<()> {
    for (opt, size) in [(libc::SO_SNDBUFFORCE, send), (libc::SO_RCVBUFFORCE, recv)] {
        let v = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local; the descriptor
        // is borrowed from a live socket.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
