//! ICMP and ICMPv6 echo over a raw socket bound to one WAN.
//!
//! Each target has its own identifier and sequence space, both derived from secret random keys,
//! and every request carries a random 64-bit token in its payload: seeing the probes to one
//! target tells nothing about those to another. An answer counts only for the probe it names:
//! an echo reply must come from the probe's target and echo its identifier, sequence number and
//! token; an ICMP error (destination unreachable, time exceeded, ...) must quote an echo request
//! to that target with its identifier and sequence number (and its token, if the quote reaches
//! it). Anything else is ignored, so a forger who sees the probes to one target can fail only
//! that target's probes, never the others' that the quorum relies on.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
/// IP protocol / IPv6 next-header numbers of ICMP and ICMPv6.
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// Length of an IPv6 header; our requests carry no extension headers.
const IPV6_HEADER: usize = 40;
/// Payload: the token, then a marker that makes our probes easy to spot in a capture.
const MARKER: &[u8] = b"uplinkd";

/// One probe as it appears on the wire: its target and its echo identifier and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EchoId {
    pub dest: IpAddr,
    pub ident: u16,
    pub seq: u16,
}

/// What a received packet claims to answer.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// An echo reply from `id.dest`, with the token its payload carries.
    Reply { id: EchoId, token: u64 },
    /// An ICMP error quoting an echo request to `id.dest`; `token` when the quote reaches it.
    Error {
        id: EchoId,
        token: Option<u64>,
        icmp_type: u8,
        code: u8,
    },
}

/// The identifier and sequence space of every target, and the probes waiting for an answer,
/// each with what waits for it (`W`). No I/O: the socket feeds it what it sends and receives.
pub struct Outstanding<W> {
    /// Secret keys of the derivations below. std seeds `RandomState`'s SipHash keys from the
    /// OS random source (getrandom(2), once per thread, then counts one key up per instance),
    /// so an observer cannot compute one target's identifier, sequence start or tokens from
    /// another's.
    keys: RandomState,
    flows: HashMap<IpAddr, Flow>,
    probes: HashMap<EchoId, Probe<W>>,
}

struct Flow {
    ident: u16,
    next_seq: u16,
    /// Probes sent to this target so far: the input of its tokens.
    sent: u64,
}

struct Probe<W> {
    token: u64,
    waiter: W,
}

impl<W> Outstanding<W> {
    pub fn new(keys: RandomState) -> Self {
        Outstanding {
            keys,
            flows: HashMap::new(),
            probes: HashMap::new(),
        }
    }

    /// A new probe to `dest`: what to put on the wire. It is outstanding until it is answered
    /// or [`Self::cancel`]led.
    pub fn start(&mut self, dest: IpAddr, waiter: W) -> (EchoId, u64) {
        let keys = &self.keys;
        let flow = self.flows.entry(dest).or_insert_with(|| Flow {
            ident: keys.hash_one(("ident", dest)) as u16,
            next_seq: keys.hash_one(("seq", dest)) as u16,
            sent: 0,
        });
        // A sequence number still outstanding (after 65,536 probes to one target within one
        // timeout, which the intervals allow only in theory) is skipped, not overwritten.
        let mut id = EchoId {
            dest,
            ident: flow.ident,
            seq: flow.next_seq,
        };
        for _ in 0..u16::MAX {
            if !self.probes.contains_key(&id) {
                break;
            }
            id.seq = id.seq.wrapping_add(1);
        }
        flow.next_seq = id.seq.wrapping_add(1);
        let token = keys.hash_one(("token", dest, flow.sent));
        flow.sent += 1;
        self.probes.insert(id, Probe { token, waiter });
        (id, token)
    }

    /// The probe `id` is no longer waited for (it timed out, or its send failed).
    pub fn cancel(&mut self, id: &EchoId) {
        self.probes.remove(id);
    }

    /// The waiter of the outstanding probe that `p` answers, which is then no longer
    /// outstanding; `None` when `p` answers none.
    pub fn answer(&mut self, p: &Parsed) -> Option<W> {
        let (id, token) = match p {
            Parsed::Reply { id, token } => (id, Some(*token)),
            Parsed::Error { id, token, .. } => (id, *token),
        };
        let probe = self.probes.get(id)?;
        if token.is_some_and(|t| t != probe.token) {
            return None;
        }
        self.probes.remove(id).map(|p| p.waiter)
    }
}

#[derive(Debug)]
enum Answer {
    Reply(Instant),
    Error {
        icmp_type: u8,
        code: u8,
        from: IpAddr,
    },
}

type Shared = Arc<Mutex<Outstanding<oneshot::Sender<Answer>>>>;

/// One raw ICMP (or ICMPv6) socket of a link and its receive task.
pub struct IcmpSocket {
    socket: Arc<UdpSocket>,
    v6: bool,
    outstanding: Shared,
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
        let outstanding: Shared = Arc::new(Mutex::new(Outstanding::new(RandomState::new())));
        let receiver = tokio::spawn(receive(socket.clone(), v6, outstanding.clone()));
        Ok(IcmpSocket {
            socket,
            v6,
            outstanding,
            receiver,
        })
    }

    pub async fn probe(&self, dest: IpAddr, timeout: Duration) -> Result<Duration, ProbeError> {
        if dest.is_ipv6() != self.v6 {
            return Err(ProbeError::Other(
                "address family does not match the socket".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let (id, token) = lock(&self.outstanding).start(dest, tx);
        let result = self.exchange(id, token, timeout, rx).await;
        lock(&self.outstanding).cancel(&id);
        result
    }

    async fn exchange(
        &self,
        id: EchoId,
        token: u64,
        timeout: Duration,
        rx: oneshot::Receiver<Answer>,
    ) -> Result<Duration, ProbeError> {
        let packet = echo_request(self.v6, id.ident, id.seq, token);
        let sent = Instant::now();
        self.socket
            .send_to(&packet, SocketAddr::new(id.dest, 0))
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the maps inconsistent: take it anyway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An echo request's length: header, token, marker.
const ECHO_LEN: usize = 16 + MARKER.len();

/// An echo request, built on the stack (one per probe). For ICMPv6 the kernel fills in the
/// checksum (RFC 3542 §3.1).
pub fn echo_request(v6: bool, ident: u16, seq: u16, token: u64) -> [u8; ECHO_LEN] {
    let mut p = [0; ECHO_LEN];
    p[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&token.to_be_bytes());
    p[16..].copy_from_slice(MARKER);
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

/// Parse a packet as read from the raw socket, sent by `from`: IPv4 sockets deliver the IP
/// header, ICMPv6 sockets only the ICMPv6 message (whose checksum the kernel has verified).
/// `None` for anything that is no echo reply carrying our marker and no error quoting an echo
/// request; whether it answers one of *our* probes is for [`Outstanding::answer`] to say.
pub fn parse(buf: &[u8], v6: bool, from: IpAddr) -> Option<Parsed> {
    let icmp = if v6 {
        buf
    } else {
        let icmp = buf.get(ipv4_header_len(buf)?..)?;
        // Raw sockets see ICMP before icmp_rcv() checks its checksum.
        if icmp.len() < 8 || checksum(icmp) != 0 {
            return None;
        }
        icmp
    };
    let (t, code) = (*icmp.first()?, *icmp.get(1)?);
    let (request, reply) = if v6 {
        (ECHO_REQUEST_V6, ECHO_REPLY_V6)
    } else {
        (ECHO_REQUEST_V4, ECHO_REPLY_V4)
    };
    if t == reply {
        let (ident, seq) = echo_header(icmp, reply)?;
        let token = u64::from_be_bytes(icmp.get(8..16)?.try_into().ok()?);
        if !icmp.get(16..)?.starts_with(MARKER) {
            return None;
        }
        let id = EchoId {
            dest: from,
            ident,
            seq,
        };
        return Some(Parsed::Reply { id, token });
    }
    let is_error = if v6 {
        t <= ERROR_V6_MAX
    } else {
        ERRORS_V4.contains(&t)
    };
    if !is_error {
        return None;
    }
    // The error quotes the offending datagram after its own 8-byte header: as much of it as
    // fits (RFC 1812 §4.3.2.3, RFC 4443 §3), at least its IP header and 8 bytes (RFC 792).
    let quoted = icmp.get(8..)?;
    let (dest, echo) = if v6 {
        quoted_ipv6(quoted)?
    } else {
        quoted_ipv4(quoted)?
    };
    let (ident, seq) = echo_header(echo, request)?;
    let token = echo
        .get(8..16)
        .and_then(|b| Some(u64::from_be_bytes(b.try_into().ok()?)));
    Some(Parsed::Error {
        id: EchoId { dest, ident, seq },
        token,
        icmp_type: t,
        code,
    })
}

/// The length of the IPv4 header `p` starts with.
fn ipv4_header_len(p: &[u8]) -> Option<usize> {
    let b = *p.first()?;
    let len = usize::from(b & 0x0f) * 4;
    (b >> 4 == 4 && len >= 20 && p.len() >= len).then_some(len)
}

/// The destination of a quoted IPv4 datagram and its ICMP message, if it carries one from
/// its start (not a later fragment).
fn quoted_ipv4(q: &[u8]) -> Option<(IpAddr, &[u8])> {
    let len = ipv4_header_len(q)?;
    let fragment_offset = u16::from_be_bytes([q[6], q[7]]) & 0x1fff;
    if q[9] != PROTO_ICMP || fragment_offset != 0 {
        return None;
    }
    let dest: [u8; 4] = q[16..20].try_into().ok()?;
    Some((Ipv4Addr::from(dest).into(), &q[len..]))
}

/// The destination of a quoted IPv6 datagram and its ICMPv6 message, if the header is
/// followed by one directly (ours never carry extension headers).
fn quoted_ipv6(q: &[u8]) -> Option<(IpAddr, &[u8])> {
    let header = q.get(..IPV6_HEADER)?;
    if header[0] >> 4 != 6 || header[6] != PROTO_ICMPV6 {
        return None;
    }
    let dest: [u8; 16] = header[24..40].try_into().ok()?;
    Some((Ipv6Addr::from(dest).into(), &q[IPV6_HEADER..]))
}

/// Identifier and sequence number of an echo message of type `t` (code 0, as ours are).
fn echo_header(m: &[u8], t: u8) -> Option<(u16, u16)> {
    let h = m.get(..8)?;
    (h[0] == t && h[1] == 0).then(|| {
        (
            u16::from_be_bytes([h[4], h[5]]),
            u16::from_be_bytes([h[6], h[7]]),
        )
    })
}

async fn receive(socket: Arc<UdpSocket>, v6: bool, outstanding: Shared) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let at = Instant::now();
        let from = from.ip();
        let Some(parsed) = parse(&buf[..n], v6, from) else {
            continue;
        };
        let Some(waiter) = lock(&outstanding).answer(&parsed) else {
            continue;
        };
        let answer = match parsed {
            Parsed::Reply { .. } => Answer::Reply(at),
            // Any router on the path may report the error: `from` is its address.
            Parsed::Error {
                icmp_type, code, ..
            } => Answer::Error {
                icmp_type,
                code,
                from,
            },
        };
        let _ = waiter.send(answer);
    }
}

#[cfg(test)]
mod tests;
