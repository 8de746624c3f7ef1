//! Probes that leave through one WAN only.
//!
//! A probe socket is bound to the WAN's device (SO_BINDTODEVICE) *and* carries the WAN's mark
//! (SO_MARK). The device binding alone is not enough: with no route for that device in the main
//! table the kernel would ARP for the target on-link; the mark sends the lookup to the WAN's own
//! routing table, whose default route points at the WAN's gateway.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use surge_ping::{Client, IcmpPacket, PingIdentifier, PingSequence, SurgeError, ICMP};

/// ICMP type of an echo reply (RFC 792).
const ICMP_ECHO_REPLY: u8 = 0;

/// Why a probe got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("ICMP error type {icmp_type} code {code} from {from}")]
    IcmpError {
        icmp_type: u8,
        code: u8,
        from: IpAddr,
    },
    #[error("cannot send: {0}")]
    Send(#[source] io::Error),
    #[error("{0}")]
    Other(String),
}

/// ICMP echo prober for one WAN: one socket, any number of concurrent probes.
pub struct IcmpProber {
    client: Client,
    ident: PingIdentifier,
    seq: AtomicU16,
    raw: bool,
}

impl IcmpProber {
    /// A prober whose echo requests leave through `interface` with packet mark `mark`.
    /// Needs CAP_NET_RAW (raw ICMP socket) and CAP_NET_ADMIN or CAP_NET_RAW (SO_MARK).
    pub fn new(interface: &str, mark: u32) -> io::Result<Self> {
        let config = surge_ping::Config::builder()
            .kind(ICMP::V4)
            .interface(interface)
            .sock_type_hint(socket2::Type::RAW)
            .build();
        let client = Client::new(&config)?;
        let socket = client.get_socket();
        set_mark(socket.get_native_sock(), mark)?;
        // Identifiers are per socket; a random one keeps replies to other pingers on the same
        // device (another uplinkd, an operator's ping) from being taken for ours.
        let ident = PingIdentifier(random_u16());
        Ok(IcmpProber {
            client,
            ident,
            seq: AtomicU16::new(random_u16()),
            raw: socket.get_type() == socket2::Type::RAW,
        })
    }

    /// True when the kernel gave a raw socket; a datagram ICMP socket ignores our identifier.
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// Send one echo request to `target` and wait up to `timeout` for the matching reply.
    pub async fn probe(&self, target: Ipv4Addr, timeout: Duration) -> Result<Duration, ProbeError> {
        let seq = PingSequence(self.seq.fetch_add(1, Ordering::Relaxed));
        let mut pinger = self.client.pinger(IpAddr::V4(target), self.ident).await;
        pinger.timeout(timeout);
        match pinger.ping(seq, b"uplinkd-probe").await {
            Ok((IcmpPacket::V4(reply), rtt)) => {
                let t = reply.get_icmp_type().0;
                if t == ICMP_ECHO_REPLY {
                    Ok(rtt)
                } else {
                    Err(ProbeError::IcmpError {
                        icmp_type: t,
                        code: reply.get_icmp_code().0,
                        from: IpAddr::V4(reply.get_source()),
                    })
                }
            }
            Ok((IcmpPacket::V6(_), _)) => Err(ProbeError::Other("unexpected ICMPv6 reply".into())),
            Err(SurgeError::Timeout { .. }) => Err(ProbeError::Timeout(timeout)),
            Err(SurgeError::IOError(e)) => Err(ProbeError::Send(e)),
            Err(e) => Err(ProbeError::Other(e.to_string())),
        }
    }
}

fn random_u16() -> u16 {
    std::hash::RandomState::new().build_hasher().finish() as u16
}

/// SO_MARK is not in surge-ping's config; set it before the first send.
#[allow(unsafe_code)]
fn set_mark(fd: RawFd, mark: u32) -> io::Result<()> {
    // SAFETY: `fd` is the open socket owned by the surge-ping client we hold; the borrow ends
    // before this function returns, so it cannot outlive the descriptor.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).set_mark(mark)
}
