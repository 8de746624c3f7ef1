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

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Type};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};
use tokio::time::Sleep;

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
    /// or [`Self::take`]n.
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

    /// Whether the probe `id` with `token` is still waiting for its answer.
    pub fn is_outstanding(&self, id: &EchoId, token: u64) -> bool {
        self.probes.get(id).is_some_and(|p| p.token == token)
    }

    /// The waiter of the probe `id` with `token`, which is then no longer outstanding (it
    /// timed out, or its send failed); `None` if it is not outstanding.
    pub fn take(&mut self, id: &EchoId, token: u64) -> Option<W> {
        if !self.is_outstanding(id, token) {
            return None;
        }
        self.probes.remove(id).map(|p| p.waiter)
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

/// A probe waiting for its answer: when it was sent, and the caller's tag for it.
struct Waiting<T> {
    sent: Instant,
    tag: T,
}

/// What the socket and its receive task share.
struct State<T> {
    outstanding: Outstanding<Waiting<T>>,
    /// Probes in the order they were sent, with their deadlines and tokens. One timeout per
    /// socket makes that the order of the deadlines too; answered ones are dropped from the
    /// front as it comes to them.
    deadlines: VecDeque<(Instant, EchoId, u64)>,
}

impl<T> State<T> {
    /// The earliest deadline of a probe still outstanding.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(at, id, token)) = self.deadlines.front() {
            if self.outstanding.is_outstanding(&id, token) {
                return Some(at);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// The probes whose deadline is `now` or earlier, no longer outstanding.
    fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        while let Some(&(at, id, token)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(w) = self.outstanding.take(&id, token) {
                out.push(w.tag);
            }
        }
    }
}

/// The end of a probe: its round-trip time, or why it failed.
pub type Outcome = Result<Duration, ProbeError>;

/// One raw ICMP (or ICMPv6) socket of a link and its receive task. A probe is sent without a
/// task of its own: the receive task matches each answer to its probe, times out the ones
/// unanswered after `timeout`, and hands every probe's outcome, with the tag it was sent with,
/// to `deliver` (exactly once per probe sent).
pub struct IcmpSocket<T> {
    /// The same socket as the receive task's, sent on directly: tokio's `try_send_to` would
    /// refuse until its reactor has seen the new socket writable.
    socket: std::net::UdpSocket,
    v6: bool,
    timeout: Duration,
    state: Arc<Mutex<State<T>>>,
    /// Wakes the receive task to arm its timer when a probe is sent while none was outstanding.
    wake: Arc<Notify>,
    /// Dropped with the socket: the receive task then finishes the probes still outstanding
    /// (answered or timed out) and ends.
    _open: oneshot::Sender<()>,
}

impl<T: Send + 'static> IcmpSocket<T> {
    /// Must be called inside a tokio runtime.
    pub fn new(
        binding: &Binding,
        v6: bool,
        timeout: Duration,
        deliver: impl FnMut(T, Outcome) + Send + 'static,
    ) -> io::Result<Self> {
        let (domain, proto) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        // std's and tokio's UdpSocket only need a datagram-like descriptor: send_to and
        // recv_from.
        let socket = bound_socket(domain, Type::RAW, proto, binding)?;
        if !v6 {
            dont_fragment(&socket)?;
        }
        let socket = std::net::UdpSocket::from(socket);
        let receiving = UdpSocket::from_std(socket.try_clone()?)?;
        let state = Arc::new(Mutex::new(State {
            outstanding: Outstanding::new(RandomState::new()),
            deadlines: VecDeque::new(),
        }));
        let wake = Arc::new(Notify::new());
        let (open, closed) = oneshot::channel();
        let receiver = Receiver {
            socket: receiving,
            v6,
            timeout,
            state: state.clone(),
            wake: wake.clone(),
        };
        tokio::spawn(receiver.run(closed, deliver));
        Ok(IcmpSocket {
            socket,
            v6,
            timeout,
            state,
            wake,
            _open: open,
        })
    }

    /// Send one echo request to `dest`. Its outcome goes to `deliver`, unless the send fails
    /// at once: then the tag comes back with the error. A full send buffer is no such failure:
    /// the request is lost, as on a congested link, and times out.
    pub fn send(&self, dest: IpAddr, tag: T) -> Result<(), (T, ProbeError)> {
        if dest.is_ipv6() != self.v6 {
            let e = ProbeError::Other("address family does not match the socket".into());
            return Err((tag, e));
        }
        let sent = Instant::now();
        let (id, token, first) = {
            let mut s = lock(&self.state);
            let first = s.next_deadline().is_none();
            let (id, token) = s.outstanding.start(dest, Waiting { sent, tag });
            s.deadlines.push_back((sent + self.timeout, id, token));
            (id, token, first)
        };
        let packet = echo_request(self.v6, id.ident, id.seq, token);
        match self.socket.send_to(&packet, SocketAddr::new(id.dest, 0)) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                let w = lock(&self.state).outstanding.take(&id, token);
                // The receive task cannot have taken it: no deadline passed, nothing answered
                // a request never sent.
                match w {
                    Some(w) => Err((w.tag, ProbeError::Send(e))),
                    None => Ok(()),
                }
            }
            _ => {
                if first {
                    self.wake.notify_one();
                }
                Ok(())
            }
        }
    }
}

/// The receive task's half of a socket.
struct Receiver<T> {
    socket: UdpSocket,
    v6: bool,
    timeout: Duration,
    state: Arc<Mutex<State<T>>>,
    wake: Arc<Notify>,
}

impl<T> Receiver<T> {
    async fn run(
        self,
        mut closed: oneshot::Receiver<()>,
        mut deliver: impl FnMut(T, Outcome) + Send + 'static,
    ) {
        let mut buf = vec![0u8; 2048];
        let mut expired = Vec::new();
        // The first outstanding probe's deadline; none while nothing is outstanding. Dropped
        // then, not moved far out: tokio moves a timer to a later deadline lazily, and the slot
        // of its old one still wakes the thread, once per round per socket.
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        let mut open = true;
        loop {
            match lock(&self.state).next_deadline() {
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    match &mut timer {
                        Some(t) if t.deadline() == at => {}
                        Some(t) => t.as_mut().reset(at),
                        None => timer = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                None if !open => return,
                None => timer = None,
            }
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    if let Some((tag, outcome)) = self.answer(&buf[..n], from.ip()) {
                        deliver(tag, outcome);
                    }
                }
                () = expiry(&mut timer) => {
                    lock(&self.state).expire(Instant::now(), &mut expired);
                    for tag in expired.drain(..) {
                        deliver(tag, Err(ProbeError::Timeout(self.timeout)));
                    }
                }
                () = self.wake.notified() => {}
                _ = &mut closed, if open => open = false,
            }
        }
    }

    /// The probe that the packet `buf` from `from` answers, and its outcome.
    fn answer(&self, buf: &[u8], from: IpAddr) -> Option<(T, Outcome)> {
        let at = Instant::now();
        let parsed = parse(buf, self.v6, from)?;
        let w = lock(&self.state).outstanding.answer(&parsed)?;
        let outcome = match parsed {
            Parsed::Reply { .. } => Ok(at.saturating_duration_since(w.sent)),
            // Any router on the path may report the error: `from` is its address.
            Parsed::Error {
                icmp_type, code, ..
            } => Err(ProbeError::IcmpError {
                icmp_type,
                code,
                from,
            }),
        };
        Some((w.tag, outcome))
    }
}

/// When `timer` expires; never without one.
async fn expiry(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Send with DF set (IP_PMTUDISC_PROBE: DF, whatever the path MTU cache says). An echo
/// request is 44 bytes and is never fragmented anyway; without DF the kernel draws an IP ID
/// for each one from its shared, hashed counters, which at 64 links was 1 to 2 % of the
/// daemon's CPU. (socket2 has no setter for IP_MTU_DISCOVER.)
#[allow(unsafe_code)]
fn dont_fragment(socket: &socket2::Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: `value` outlives the call, and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

#[cfg(test)]
mod tests;
