//! Conntrack over ctnetlink: list and purge the flows of one link, selected by ct mark.
//!
//! A dump that carries CTA_MARK and CTA_MARK_MASK is filtered in the kernel; a single
//! IPCTNL_MSG_CT_DELETE carrying only those two attributes makes the kernel flush every entry
//! whose `ct mark & mask == mark` (net/netfilter/nf_conntrack_netlink.c,
//! `ctnetlink_del_conntrack` → `ctnetlink_flush_conntrack`). With nfgenmsg family AF_UNSPEC and
//! version 0 no family filter applies, so IPv4 and IPv6 entries go together. Nothing outside the
//! mark is touched. Both calls block for a walk of the whole table (≈0.3 s for 100,000 entries):
//! run them off the event loop.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::sys::protocols::NETLINK_NETFILTER;

use super::netlink::{self, find, Netlink};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

// Attribute numbers from linux/netfilter/nfnetlink_conntrack.h.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

pub const IPPROTO_TCP: u8 = 6;
/// TCP conntrack states (enum tcp_conntrack) in which both ends may still send.
const TCP_SYN_SENT: u8 = 1;
const TCP_SYN_RECV: u8 = 2;
const TCP_ESTABLISHED: u8 = 3;

/// A flow in its original direction (as the client sent it, before NAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// TCP only: the conntrack TCP state.
    pub tcp_state: Option<u8>,
    /// Where replies are addressed: the address the flow was translated to, for a NATed one.
    pub reply_dst: Option<IpAddr>,
}

impl Flow {
    /// A TCP flow whose client may still be waiting for data: worth a reset.
    pub fn tcp_open(&self) -> bool {
        self.proto == IPPROTO_TCP
            && matches!(
                self.tcp_state,
                Some(TCP_SYN_SENT | TCP_SYN_RECV | TCP_ESTABLISHED)
            )
    }
}

/// The ctnetlink message type of `msg`.
const fn ct(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

/// The payload selecting `ct mark & mask == mark`: nfgenmsg (family AF_UNSPEC, version
/// NFNETLINK_V0, res_id 0), CTA_MARK, CTA_MARK_MASK.
fn by_mark(mark: u32, mask: u32) -> Vec<u8> {
    let mut b = vec![0; 4];
    netlink::put_attr(&mut b, CTA_MARK, &mark.to_be_bytes());
    netlink::put_attr(&mut b, CTA_MARK_MASK, &mask.to_be_bytes());
    b
}

fn open(recv_len: usize) -> io::Result<Netlink> {
    Netlink::open(NETLINK_NETFILTER, recv_len)
}

fn ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

fn port(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

/// Parse one conntrack message payload (after the netlink header).
pub fn parse_flow(payload: &[u8]) -> Option<Flow> {
    let body = payload.get(4..)?; // nfgenmsg
    let orig = find(body, CTA_TUPLE_ORIG)?;
    let ips = find(orig, CTA_TUPLE_IP)?;
    let src = find(ips, CTA_IP_V4_SRC)
        .or_else(|| find(ips, CTA_IP_V6_SRC))
        .and_then(ip)?;
    let dst = find(ips, CTA_IP_V4_DST)
        .or_else(|| find(ips, CTA_IP_V6_DST))
        .and_then(ip)?;
    let proto = find(orig, CTA_TUPLE_PROTO)?;
    let num = *find(proto, CTA_PROTO_NUM)?.first()?;
    let reply_dst = find(body, CTA_TUPLE_REPLY)
        .and_then(|r| find(r, CTA_TUPLE_IP))
        .and_then(|ips| find(ips, CTA_IP_V4_DST).or_else(|| find(ips, CTA_IP_V6_DST)))
        .and_then(ip);
    let tcp_state = find(body, CTA_PROTOINFO)
        .and_then(|p| find(p, CTA_PROTOINFO_TCP))
        .and_then(|t| find(t, CTA_PROTOINFO_TCP_STATE))
        .and_then(|s| s.first().copied());
    Some(Flow {
        proto: num,
        src,
        dst,
        sport: find(proto, CTA_PROTO_SRC_PORT).and_then(port).unwrap_or(0),
        dport: find(proto, CTA_PROTO_DST_PORT).and_then(port).unwrap_or(0),
        tcp_state,
        reply_dst,
    })
}

/// Every flow with `ct mark & mask == mark`, IPv4 and IPv6.
pub fn dump_mark(mark: u32, mask: u32) -> io::Result<Vec<Flow>> {
    let mut flows = Vec::new();
    dump_mark_batched(mark, mask, 4096, |b| {
        flows.extend(b);
        true
    })?;
    Ok(flows)
}

/// Every flow with `ct mark & mask == mark`, handed to `each` in batches of `batch` as the
/// dump goes (the last one may be shorter). When `each` returns false the rest of the dump is
/// read and dropped.
pub fn dump_mark_batched(
    mark: u32,
    mask: u32,
    batch: usize,
    mut each: impl FnMut(Vec<Flow>) -> bool,
) -> io::Result<()> {
    let mut flows = Vec::new();
    let mut wanted = true;
    open(1 << 16)?.dump(ct(IPCTNL_MSG_CT_GET), &by_mark(mark, mask), |p| {
        if !wanted {
            return;
        }
        flows.extend(parse_flow(p));
        if flows.len() >= batch {
            wanted = each(std::mem::take(&mut flows));
        }
    })?;
    if wanted && !flows.is_empty() {
        each(flows);
    }
    Ok(())
}

/// Create conntrack entries (for benchmarks and tests in a throwaway namespace): TCP flows in
/// state ESTABLISHED with `mark`, expiring after `timeout_secs`. Sent in batches; only errors
/// are acknowledged.
#[cfg(feature = "bench")]
pub fn create(flows: &[Flow], mark: u32, timeout_secs: u32) -> io::Result<()> {
    const IPCTNL_MSG_CT_NEW: u16 = 0;
    const CTA_TIMEOUT: u16 = 7;
    use crate::dataplane::netlink::{message, put_attr as nla, Reply, NLA_F_NESTED as NESTED};
    use crate::dataplane::netlink::{NLM_F_CREATE, NLM_F_REQUEST};
    let mut socket = open(8192)?;
    let mut batch = Vec::with_capacity(1 << 16);
    for (i, f) in flows.iter().enumerate() {
        let mut body = family(f);
        nla(
            &mut body,
            CTA_TUPLE_ORIG | NESTED,
            &tuple(f.src, f.dst, f.proto, f.sport, f.dport),
        );
        nla(
            &mut body,
            CTA_TUPLE_REPLY | NESTED,
            &tuple(f.dst, f.src, f.proto, f.dport, f.sport),
        );
        let mut tcp = Vec::new();
        nla(&mut tcp, CTA_PROTOINFO_TCP_STATE, &[TCP_ESTABLISHED]);
        let mut info = Vec::new();
        nla(&mut info, CTA_PROTOINFO_TCP | NESTED, &tcp);
        nla(&mut body, CTA_PROTOINFO | NESTED, &info);
        nla(&mut body, CTA_TIMEOUT, &timeout_secs.to_be_bytes());
        nla(&mut body, CTA_MARK, &mark.to_be_bytes());
        batch.extend_from_slice(&message(
            ct(IPCTNL_MSG_CT_NEW),
            NLM_F_REQUEST | NLM_F_CREATE,
            i as u32 + 1,
            &body,
        ));
        if batch.len() > 60_000 || i + 1 == flows.len() {
            socket.send(&batch)?;
            batch.clear();
            // Errors (if any) are waiting; without NLM_F_ACK success is silent.
            while let Ok(buf) = socket.recv(libc::MSG_DONTWAIT) {
                for m in netlink::messages(buf) {
                    // Only an error matters here; its sequence number is the entry's, from 1.
                    let m = m?;
                    let _: Reply = m.reply().map_err(|e| match e.raw_os_error() {
                        Some(libc::ENOMEM) => table_full(m.seq as usize, flows.len()),
                        _ => e,
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// The kernel refuses a new entry with ENOMEM once the namespace holds
/// `net.netfilter.nf_conntrack_max` entries (`__nf_conntrack_alloc`); a bare "out of memory"
/// hides that, so say which limit it is and where it is set.
#[cfg(feature = "bench")]
fn table_full(entry: usize, of: usize) -> io::Error {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!(
            "conntrack table full: entry {entry} of {of} refused (ENOMEM), with {} entries \
             tracked in this namespace and net.netfilter.nf_conntrack_max = {} (host-wide, set \
             in the initial namespace only): raise it (testbed/bench-purge does for its run)",
            read("nf_conntrack_count"),
            read("nf_conntrack_max"),
        ),
    )
}

/// A tuple as ctnetlink takes it (CTA_TUPLE_IP and CTA_TUPLE_PROTO, nested).
fn tuple(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut ips = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            netlink::put_attr(&mut ips, CTA_IP_V4_SRC, &s.octets());
            netlink::put_attr(&mut ips, CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            netlink::put_attr(&mut ips, CTA_IP_V6_SRC, &v6(s));
            netlink::put_attr(&mut ips, CTA_IP_V6_DST, &v6(d));
        }
    }
    let mut p = Vec::new();
    netlink::put_attr(&mut p, CTA_PROTO_NUM, &[proto]);
    netlink::put_attr(&mut p, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
    netlink::put_attr(&mut p, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
    let mut t = Vec::new();
    netlink::put_attr(&mut t, CTA_TUPLE_IP | netlink::NLA_F_NESTED, &ips);
    netlink::put_attr(&mut t, CTA_TUPLE_PROTO | netlink::NLA_F_NESTED, &p);
    t
}

/// TCP, UDP, DCCP, SCTP and UDP-Lite: a tuple of addresses and ports.
fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 33 | 132 | 136)
}

/// The nfgenmsg of a request about one flow: its address family.
fn family(f: &Flow) -> Vec<u8> {
    let family = if f.src.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    vec![family as u8, 0, 0, 0]
}

/// Delete these flows' entries, one request each (by the original tuple). Entries already gone
/// are skipped, and so are flows of protocols without ports (ICMP: its tuple is an id, type and
/// code, which [`Flow`] does not keep; such entries expire within seconds anyway). Returns how
/// many were deleted.
pub fn delete(flows: &[Flow]) -> io::Result<usize> {
    let mut socket = open(8192)?;
    let mut deleted = 0;
    for f in flows.iter().filter(|f| has_ports(f.proto)) {
        let mut body = family(f);
        netlink::put_attr(
            &mut body,
            CTA_TUPLE_ORIG | netlink::NLA_F_NESTED,
            &tuple(f.src, f.dst, f.proto, f.sport, f.dport),
        );
        match socket.request(ct(IPCTNL_MSG_CT_DELETE), &body) {
            Ok(()) => deleted += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Delete every conntrack entry with `ct mark & mask == mark`.
pub fn flush_mark(mark: u32, mask: u32) -> io::Result<()> {
    match open(8192)?.request(ct(IPCTNL_MSG_CT_DELETE), &by_mark(mark, mask)) {
        // ENOENT: nothing carried that mark.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::dataplane::netlink::NLA_F_NESTED;

    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        netlink::put_attr(&mut b, kind, payload);
        b
    }

    #[test]
    fn request_layout() {
        let b = netlink::message(ct(IPCTNL_MSG_CT_DELETE), 0, 7, &by_mark(0x100, 0xff00));
        assert_eq!(b.len(), 36);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x102);
        assert_eq!(&b[16..20], &[0, 0, 0, 0]);
        assert_eq!(u16::from_ne_bytes([b[20], b[21]]), 8);
        assert_eq!(u16::from_ne_bytes([b[22], b[23]]), CTA_MARK);
        assert_eq!(&b[24..28], &0x100u32.to_be_bytes());
        assert_eq!(u16::from_ne_bytes([b[30], b[31]]), CTA_MARK_MASK);
        assert_eq!(&b[32..36], &0xff00u32.to_be_bytes());
    }

    #[test]
    fn parses_a_tcp_flow() {
        let ips = [
            nla(CTA_IP_V4_SRC, &[10, 99, 0, 2]),
            nla(CTA_IP_V4_DST, &[198, 51, 100, 10]),
        ]
        .concat();
        let proto = [
            nla(CTA_PROTO_NUM, &[6]),
            nla(CTA_PROTO_SRC_PORT, &40000u16.to_be_bytes()),
            nla(CTA_PROTO_DST_PORT, &8080u16.to_be_bytes()),
        ]
        .concat();
        let orig = [
            nla(CTA_TUPLE_IP | NLA_F_NESTED, &ips),
            nla(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
        ]
        .concat();
        let tcp = nla(
            CTA_PROTOINFO_TCP | NLA_F_NESTED,
            &nla(CTA_PROTOINFO_TCP_STATE, &[3]),
        );
        let payload = [
            vec![2, 0, 0, 0],
            nla(CTA_TUPLE_ORIG | NLA_F_NESTED, &orig),
            nla(CTA_PROTOINFO | NLA_F_NESTED, &tcp),
        ]
        .concat();
        let f = parse_flow(&payload).unwrap();
        assert_eq!(
            f,
            Flow {
                proto: 6,
                src: "10.99.0.2".parse().unwrap(),
                dst: "198.51.100.10".parse().unwrap(),
                sport: 40000,
                dport: 8080,
                tcp_state: Some(3),
                reply_dst: None,
            }
        );
        assert!(f.tcp_open());
        assert_eq!(parse_flow(&payload[..10]), None);
        assert_eq!(parse_flow(&[]), None);
    }

    fn any_ip(v6: bool, bits: u128) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(bits))
        } else {
            IpAddr::V4(Ipv4Addr::from(bits as u32))
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// A dumped entry as the kernel lays it out reads back as the flow it describes.
        #[test]
        fn a_dumped_entry_reads_back(
            v6: bool, s: u128, d: u128, r: u128, proto in proptest::sample::select(vec![6u8, 17, 132]),
            sport: u16, dport: u16, tcp_state in proptest::option::of(0u8..10),
        ) {
            let (src, dst, reply_dst) = (any_ip(v6, s), any_ip(v6, d), any_ip(v6, r));
            let mut body = vec![if v6 { 10 } else { 2 }, 0, 0, 0];
            netlink::put_attr(&mut body, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple(src, dst, proto, sport, dport));
            netlink::put_attr(&mut body, CTA_TUPLE_REPLY | NLA_F_NESTED, &tuple(dst, reply_dst, proto, dport, sport));
            if let Some(st) = tcp_state {
                let info = nla(CTA_PROTOINFO_TCP | NLA_F_NESTED, &nla(CTA_PROTOINFO_TCP_STATE, &[st]));
                netlink::put_attr(&mut body, CTA_PROTOINFO | NLA_F_NESTED, &info);
            }
            let want = Flow { proto, src, dst, sport, dport, tcp_state, reply_dst: Some(reply_dst) };
            proptest::prop_assert_eq!(parse_flow(&body), Some(want));
        }

        /// Cut short anywhere, an entry never yields a value that was not in it: the addresses
        /// and protocol are the real ones or there is no flow; a port cut off reads as 0.
        #[test]
        fn a_cut_entry_never_invents_values(cut in 0usize..120, s: u128, d: u128, sport in 1u16.., dport in 1u16..) {
            let (src, dst) = (any_ip(false, s), any_ip(false, d));
            let mut body = vec![2, 0, 0, 0];
            netlink::put_attr(&mut body, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple(src, dst, 6, sport, dport));
            let whole = body.len();
            body.truncate(cut);
            match parse_flow(&body) {
                Some(f) => {
                    proptest::prop_assert_eq!((f.src, f.dst, f.proto), (src, dst, 6));
                    proptest::prop_assert!(f.sport == sport || f.sport == 0);
                    proptest::prop_assert!(f.dport == dport || f.dport == 0);
                    proptest::prop_assert_eq!((f.sport, f.dport) == (sport, dport), cut >= whole);
                }
                None => proptest::prop_assert!(cut < whole),
            }
        }

        /// Any bytes at all: read without a panic, and a flow only from a buffer long enough
        /// to hold the attributes it needs.
        #[test]
        fn any_bytes_are_read_safely(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
            if parse_flow(&body).is_some() {
                proptest::prop_assert!(body.len() >= 4 + 4 + 4 + 2 * 8 + 4 + 5);
            }
        }
    }
}
