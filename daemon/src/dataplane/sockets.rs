//! Router-local TCP sockets of a dead link's flows: found with sock_diag and aborted with
//! SOCK_DESTROY (linux/inet_diag.h), so programs on the router (a VPN client, a resolver over
//! TCP) see ECONNABORTED at once instead of hanging on a path that leads nowhere. A socket is
//! picked by its connection (addresses and ports), not by its address: a router connection from
//! one WAN's address may be NATed out another link, and lives on if that link does.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::sys::protocols::NETLINK_SOCK_DIAG;

use super::netlink::Netlink;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// TCP states worth aborting: every state but LISTEN (10), TIME_WAIT (6) and CLOSE (7).
const STATES: u32 = !((1 << 10) | (1 << 6) | (1 << 7));
/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID_LEN: usize = 48;

/// A TCP connection: local address and port, remote address and port.
pub type Tuple = (IpAddr, u16, IpAddr, u16);

/// One socket as sock_diag identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockId {
    pub family: u8,
    pub tuple: Tuple,
    /// The raw `inet_diag_sockid`, echoed back verbatim to destroy exactly this socket.
    raw: [u8; SOCKID_LEN],
}

/// `struct inet_diag_req_v2` for TCP of `family`, states `STATES`, with `id`.
fn req(family: u8, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let mut r = vec![family, libc::IPPROTO_TCP as u8, 0, 0];
    r.extend_from_slice(&STATES.to_ne_bytes());
    r.extend_from_slice(id);
    r
}

/// Parse `struct inet_diag_msg` (family, state, timer, retrans, id, ...).
fn parse(payload: &[u8]) -> Option<SockId> {
    let family = *payload.first()?;
    let raw: [u8; SOCKID_LEN] = payload.get(4..4 + SOCKID_LEN)?.try_into().ok()?;
    let addr = |at: usize| -> Option<IpAddr> {
        Some(if i32::from(family) == libc::AF_INET {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&raw[at..at + 4]).ok()?))
        } else {
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&raw[at..at + 16]).ok()?,
            ))
        })
    };
    let port = |at: usize| u16::from_be_bytes([raw[at], raw[at + 1]]);
    let tuple = (addr(4)?, port(0), addr(20)?, port(2));
    Some(SockId { family, tuple, raw })
}

/// TCP sockets of this host with one of these connections.
pub fn list(tuples: &[Tuple]) -> io::Result<Vec<SockId>> {
    let mut socket = Netlink::open(NETLINK_SOCK_DIAG, 1 << 15)?;
    let mut found = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        socket.dump(SOCK_DIAG_BY_FAMILY, &req(family, &[0; SOCKID_LEN]), |p| {
            found.extend(parse(p).filter(|s| tuples.contains(&s.tuple)));
        })?;
    }
    Ok(found)
}

/// Abort each socket; its owner sees ECONNABORTED. Returns how many were destroyed (a socket
/// that closed in the meantime is not an error).
pub fn destroy(sockets: &[SockId]) -> io::Result<usize> {
    let mut socket = Netlink::open(NETLINK_SOCK_DIAG, 4096)?;
    let mut destroyed = 0;
    for s in sockets {
        match socket.request(SOCK_DESTROY, &req(s.family, &s.raw)) {
            Ok(()) => destroyed += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_a_socket_and_echoes_its_id() {
        let mut msg = vec![libc::AF_INET as u8, 1, 0, 0];
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&40000u16.to_be_bytes());
        id[2..4].copy_from_slice(&8080u16.to_be_bytes());
        id[4..8].copy_from_slice(&[100, 64, 1, 2]);
        id[20..24].copy_from_slice(&[198, 51, 100, 10]);
        id[40..44].copy_from_slice(&7u32.to_ne_bytes());
        msg.extend_from_slice(&id);
        msg.extend_from_slice(&[0; 20]);
        let s = parse(&msg).unwrap();
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        assert_eq!(
            s.tuple,
            (ip("100.64.1.2"), 40000, ip("198.51.100.10"), 8080)
        );
        let r = req(s.family, &s.raw);
        assert_eq!(r.len(), 56);
        assert_eq!(&r[8..], &id[..]);
        assert_eq!(parse(&msg[..10]), None);
    }
}
