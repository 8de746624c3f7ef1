//! Conntrack purge by mark over ctnetlink.
//!
//! A single IPCTNL_MSG_CT_DELETE that carries only CTA_MARK and CTA_MARK_MASK makes the kernel
//! flush every entry whose `ct mark & mask == mark` (net/netfilter/nf_conntrack_netlink.c,
//! `ctnetlink_del_conntrack` → `ctnetlink_flush_conntrack`). With nfgenmsg version 0 no family
//! filter applies, so IPv4 and IPv6 entries go together. Nothing outside the mark is touched.
//! The call blocks for the whole walk (≈0.3 s for 100,000 entries): run it off the event loop.

use std::io;

use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;

/// The request bytes: nlmsghdr, nfgenmsg, two u32 attributes (network byte order).
fn flush_request(mark: u32, mask: u32, seq: u32) -> Vec<u8> {
    let attr = |buf: &mut Vec<u8>, kind: u16, value: u32| {
        buf.extend_from_slice(&8u16.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&value.to_be_bytes());
    };
    let mut b = Vec::with_capacity(36);
    b.extend_from_slice(&36u32.to_ne_bytes());
    b.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, res_id 0.
    b.extend_from_slice(&[0, 0, 0, 0]);
    attr(&mut b, CTA_MARK, mark);
    attr(&mut b, CTA_MARK_MASK, mask);
    b
}

/// Delete every conntrack entry with `ct mark & mask == mark`.
pub fn flush_mark(mark: u32, mask: u32) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let seq = 1;
    socket.send(&flush_request(mark, mask, seq), 0)?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off + 16 <= n {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            let msg_seq =
                u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
            if len < 16 || off + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink reply",
                ));
            }
            if kind == NLMSG_ERROR && msg_seq == seq && len >= 20 {
                let code = i32::from_ne_bytes([
                    buf[off + 16],
                    buf[off + 17],
                    buf[off + 18],
                    buf[off + 19],
                ]);
                // ENOENT: nothing carried that mark.
                return match code {
                    0 => Ok(()),
                    c if -c == libc::ENOENT => Ok(()),
                    c => Err(io::Error::from_raw_os_error(-c)),
                };
            }
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let b = flush_request(0x100, 0xff00, 7);
        assert_eq!(b.len(), 36);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x102);
        assert_eq!(&b[16..20], &[0, 0, 0, 0]);
        assert_eq!(u16::from_ne_bytes([b[22], b[23]]), CTA_MARK);
        assert_eq!(&b[24..28], &0x100u32.to_be_bytes());
        assert_eq!(u16::from_ne_bytes([b[30], b[31]]), CTA_MARK_MASK);
        assert_eq!(&b[32..36], &0xff00u32.to_be_bytes());
    }
}
