//! ICMP and ICMPv6 echo over a raw socket bound to one WAN.
//!
//! Every request carries the socket's random identifier, a sequence number and a random 64-bit
//! token in its payload; a reply counts only when all three match an outstanding request to the
//! address it came from, so stray or spoofed replies cannot keep a dead link up. ICMP errors
//! quoting one of our requests (destination unreachable, time exceeded, ...) fail that probe at
//! once.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Type};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{bound_socket, Binding, ProbeError};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// ICMPv4 errors that quote the datagram that caused them (RFC 792).
const ERRORS_V4: [u8; 4] = [3, 4, 11, 12];
/// ICMPv6 errors (RFC 4443: types below 128).
const ERROR_V6_MAX: u8 = 127;
/// Payload: the token, then a marker that makes our probes easy to spot in a capture.
const MARKER: &[u8] = b"uplinkd";

#[derive(Debug)]
enum Answer {
    Reply(Instant),
    Error {
        icmp_type: u8,
        code: u8,
        from: IpAddr,
    },
}

struct Pending {
    dest: IpAddr,
    token: u64,
    tx: oneshot::Sender<Answer>,
}

type PendingMap = Arc<Mutex<HashMap<u16, Pending>>>;

/// One raw ICMP (or ICMPv6) socket of a link and its receive task.
pub struct IcmpSocket {
    socket: Arc<UdpSocket>,
    v6: bool,
    ident: u16,
    seq: AtomicU64,
    keys: std::hash::RandomState,
    pending: PendingMap,
    receiver: JoinHandle<()>,
}

impl Drop for IcmpSocket {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

impl IcmpSocket {
    /// Must be called inside a tokio runtime.
    pub fn new(binding: &Binding, v6: bool) -> io::Result<Self> {
        let (domain, proto) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        let socket = bound_socket(domain, Type::RAW, proto, binding)?;
        // tokio's UdpSocket only needs a datagram-like descriptor: send_to and recv_from.
        let socket = Arc::new(UdpSocket::from_std(std::net::UdpSocket::from(socket))?);
        let keys = std::hash::RandomState::new();
        let ident = keys.hash_one(std::process::id()) as u16;
        let pending: PendingMap = Arc::default();
        let receiver = tokio::spawn(receive(socket.clone(), v6, ident, pending.clone()));
        Ok(IcmpSocket {
            socket,
            v6,
            ident,
            seq: AtomicU64::new(0),
            keys,
            pending,
            receiver,
        })
    }

    pub async fn probe(&self, dest: IpAddr, timeout: Duration) -> Result<Duration, ProbeError> {
        if dest.is_ipv6() != self.v6 {
            return Err(ProbeError::Other(
                "address family does not match the socket".into(),
            ));
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let seq = n as u16;
        let mut h = self.keys.build_hasher();
        h.write_u64(n);
        let token = h.finish();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(seq, Pending { dest, token, tx });
        let result = self.exchange(dest, seq, token, timeout, rx).await;
        lock(&self.pending).remove(&seq);
        result
    }

    async fn exchange(
        &self,
        dest: IpAddr,
        seq: u16,
        token: u64,
        timeout: Duration,
        rx: oneshot::Receiver<Answer>,
    ) -> Result<Duration, ProbeError> {
        let packet = echo_request(self.v6, self.ident, seq, token);
        let sent = Instant::now();
        self.socket
            .send_to(&packet, SocketAddr::new(dest, 0))
            .await
            .map_err(ProbeError::Send)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Answer::Reply(at))) => Ok(at.saturating_duration_since(sent)),
            Ok(Ok(Answer::Error {
                icmp_type,
                code,
                from,
            })) => Err(ProbeError::IcmpError {
                icmp_type,
                code,
                from,
            }),
            Ok(Err(_)) => Err(ProbeError::Other("receiver stopped".into())),
            Err(_) => Err(ProbeError::Timeout(timeout)),
        }
    }
}

fn lock(m: &Mutex<HashMap<u16, Pending>>) -> std::sync::MutexGuard<'_, HashMap<u16, Pending>> {
    // A panic while holding the lock cannot leave the map inconsistent: take it anyway.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An echo request. For ICMPv6 the kernel fills in the checksum (RFC 3542 §3.1).
pub fn echo_request(v6: bool, ident: u16, seq: u16, token: u64) -> Vec<u8> {
    let mut p = vec![if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 }, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&token.to_be_bytes());
    p.extend_from_slice(MARKER);
    if !v6 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a received packet means for us: (sequence, answer, token if the packet carried one).
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Reply { seq: u16, token: u64 },
    Error { seq: u16, icmp_type: u8, code: u8 },
}

/// Parse a packet as read from the raw socket: IPv4 sockets deliver the IP header, ICMPv6
/// sockets only the ICMPv6 message. `None` for anything that is not ours.
pub fn parse(buf: &[u8], v6: bool, ident: u16) -> Option<Parsed> {
    let icmp = if v6 {
        buf
    } else {
        buf.get(usize::from(buf.first()? & 0x0f) * 4..)?
    };
    let (t, code) = (*icmp.first()?, *icmp.get(1)?);
    let echo_ours = |m: &[u8], request: u8| -> Option<u16> {
        let id = u16::from_be_bytes([*m.get(4)?, *m.get(5)?]);
        (m.first() == Some(&request) && id == ident).then(|| u16::from_be_bytes([m[6], m[7]]))
    };
    if t == if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 } {
        let id = u16::from_be_bytes([*icmp.get(4)?, *icmp.get(5)?]);
        let seq = u16::from_be_bytes([*icmp.get(6)?, *icmp.get(7)?]);
        let token = u64::from_be_bytes(icmp.get(8..16)?.try_into().ok()?);
        return (id == ident && icmp.get(16..16 + MARKER.len()) == Some(MARKER))
            .then_some(Parsed::Reply { seq, token });
    }
    let is_error = if v6 {
        t <= ERROR_V6_MAX
    } else {
        ERRORS_V4.contains(&t)
    };
    if !is_error {
        return None;
    }
    // The error quotes the offending datagram after its own 8-byte header.
    let quoted = icmp.get(8..)?;
    let inner = if v6 {
        // IPv6 header (40 bytes) with next header ICMPv6 (58).
        (quoted.get(6) == Some(&58)).then(|| quoted.get(40..))??
    } else {
        (quoted.get(9) == Some(&1))
            .then(|| quoted.get(usize::from(quoted.first()? & 0x0f) * 4..))??
    };
    let seq = echo_ours(inner, if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 })?;
    Some(Parsed::Error {
        seq,
        icmp_type: t,
        code,
    })
}

async fn receive(socket: Arc<UdpSocket>, v6: bool, ident: u16, pending: PendingMap) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let at = Instant::now();
        let from = from.ip();
        let (seq, answer, token) = match parse(&buf[..n], v6, ident) {
            Some(Parsed::Reply { seq, token }) => (seq, Answer::Reply(at), Some(token)),
            Some(Parsed::Error {
                seq,
                icmp_type,
                code,
            }) => (
                seq,
                Answer::Error {
                    icmp_type,
                    code,
                    from,
                },
                None,
            ),
            None => continue,
        };
        let mut map = lock(&pending);
        let Some(p) = map.get(&seq) else { continue };
        // A reply must come from the address we asked and echo our token; an error may come
        // from any router on the path (and can only make the link look worse).
        let genuine = match token {
            Some(t) => t == p.token && from == p.dest,
            None => true,
        };
        if genuine {
            if let Some(p) = map.remove(&seq) {
                let _ = p.tx.send(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ipv4_wrap(icmp: &[u8]) -> Vec<u8> {
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 203, 0, 113, 10, 100, 64, 1, 2,
        ];
        ip.extend_from_slice(icmp);
        ip
    }

    fn as_reply(mut req: Vec<u8>, v6: bool) -> Vec<u8> {
        req[0] = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
        req
    }

    #[test]
    fn request_checksum_verifies() {
        let p = echo_request(false, 0x1234, 7, 0xdead_beef);
        assert_eq!(checksum(&p), 0);
        assert_eq!(&p[16..], MARKER);
    }

    #[test]
    fn replies_are_matched_by_identifier_and_carry_the_token() {
        let reply = as_reply(echo_request(false, 0x1234, 7, 42), false);
        assert_eq!(
            parse(&ipv4_wrap(&reply), false, 0x1234),
            Some(Parsed::Reply { seq: 7, token: 42 })
        );
        assert_eq!(
            parse(&ipv4_wrap(&reply), false, 0x4321),
            None,
            "another pinger's reply"
        );
        let v6 = as_reply(echo_request(true, 9, 1, 5), true);
        assert_eq!(
            parse(&v6, true, 9),
            Some(Parsed::Reply { seq: 1, token: 5 })
        );
        // Our own request looped back, or a reply without our marker, is not an answer.
        assert_eq!(
            parse(
                &ipv4_wrap(&echo_request(false, 0x1234, 7, 42)),
                false,
                0x1234
            ),
            None
        );
        let mut foreign = reply.clone();
        foreign.truncate(16);
        assert_eq!(parse(&ipv4_wrap(&foreign), false, 0x1234), None);
    }

    #[test]
    fn errors_quoting_our_request_fail_that_probe() {
        let req = echo_request(false, 0x1234, 7, 42);
        let mut err = vec![3, 1, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&ipv4_wrap(&req)[..28]);
        assert_eq!(
            parse(&ipv4_wrap(&err), false, 0x1234),
            Some(Parsed::Error {
                seq: 7,
                icmp_type: 3,
                code: 1
            })
        );
        let mut v6err = vec![1, 4, 0, 0, 0, 0, 0, 0];
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 24, 58, 64];
        ip6.extend_from_slice(&[0; 32]);
        v6err.extend_from_slice(&ip6);
        v6err.extend_from_slice(&echo_request(true, 9, 3, 1));
        assert_eq!(
            parse(&v6err, true, 9),
            Some(Parsed::Error {
                seq: 3,
                icmp_type: 1,
                code: 4
            })
        );
    }

    #[test]
    fn garbage_is_ignored() {
        for junk in [&[][..], &[0x45], &[0x4f, 0, 0], &[0xff; 64]] {
            assert_eq!(parse(junk, false, 1), None);
            assert_eq!(parse(junk, true, 1), None);
        }
    }
}
