//! Making the dead link's flows fail fast, and only those (DESIGN.md §1 "Why resets, and how").
//!
//! After the new steering is live: list the link's flows (by ct mark), put its TCP flows in the
//! stale sets (their LAN packets are then answered with a reset), delete every entry of the link
//! (UDP and the rest re-NAT out a live link with their next packet), then send each LAN client of
//! an open TCP flow a "tickle": an ACK that appears to come from the remote end with an
//! out-of-window sequence. The client answers with a challenge ACK carrying its exact sequence
//! numbers, which meets the reject rule and earns it a reset it accepts, even while it sits idle
//! in recv(). Order matters: tickling before the delete would send the client's answer out the
//! dead link, after which it ignores tickles for 500 ms (tcp_invalid_ratelimit).

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use nftnl::{Batch, MsgType};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::conntrack::{self, Flow, IPPROTO_TCP};
use super::nft;
use super::nft_ext::{
    concat_type, ConcatKey, Elem, Elems, ELEMS_PER_MSG, TYPE_INET_SERVICE, TYPE_IP6ADDR,
    TYPE_IPADDR,
};
use super::sockets;

/// Tickle rounds after the first, this far apart: more than tcp_invalid_ratelimit (500 ms), so
/// a client that missed one answers the next.
pub const TICKLE_GAP: Duration = Duration::from_millis(700);
/// Longest a tickle round waits for room in its socket's buffer (filled by tickles to absent
/// hosts), well within the gap between rounds.
pub const TICKLE_BUDGET: Duration = Duration::from_millis(300);
/// Rounds in all (the first right after the delete).
pub const TICKLE_ROUNDS: u32 = 3;

/// What a purge did, and how long each step took.
#[derive(Debug, Clone, Default)]
pub struct PurgeReport {
    /// Entries of the link (both directions counted once), IPv4 and IPv6.
    pub flows: usize,
    /// Open TCP flows of LAN clients: put in the stale sets and tickled.
    pub tcp_reset: usize,
    /// Router-local TCP sockets of the link's flows, aborted.
    pub sockets: usize,
    /// Tickles the first round sent (the rest wait for the next round).
    pub tickled: usize,
    pub dump: Duration,
    /// How long the stale-set inserts went on after the dump ended (they run while it goes).
    pub stale: Duration,
    pub flush: Duration,
    pub tickle: Duration,
    pub destroy: Duration,
    /// The TCP flows to tickle again in later rounds.
    pub tickle_flows: Vec<Flow>,
    /// Keys added to the stale sets (to re-add if the table is replaced while they matter).
    pub stale4: Vec<StaleKey4>,
    pub stale6: Vec<StaleKey6>,
}

/// The key of a flow in the stale sets: `saddr . daddr . sport . dport` of the client's packets,
/// each port in a 32-bit register of its own (two bytes, two of padding).
pub fn stale_key(f: &Flow) -> Option<Result<StaleKey4, StaleKey6>> {
    let mut ports = [0u8; 8];
    ports[..2].copy_from_slice(&f.sport.to_be_bytes());
    ports[4..6].copy_from_slice(&f.dport.to_be_bytes());
    match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&s.octets());
            k[4..8].copy_from_slice(&d.octets());
            k[8..].copy_from_slice(&ports);
            Some(Ok(ConcatKey(k)))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut k = [0u8; 40];
            k[..16].copy_from_slice(&s.octets());
            k[16..32].copy_from_slice(&d.octets());
            k[32..].copy_from_slice(&ports);
            Some(Err(ConcatKey(k)))
        }
        _ => None,
    }
}

/// Killed IPv4 TCP flows, keyed by the client's `ip saddr . ip daddr . tcp sport . tcp dport`.
pub const STALE4: &CStr = c"stale4";
/// Killed IPv6 TCP flows, keyed the same way.
pub const STALE6: &CStr = c"stale6";
pub type StaleKey4 = ConcatKey<16, STALE4_TYPE>;
pub type StaleKey6 = ConcatKey<40, STALE6_TYPE>;
/// `ipv4_addr . ipv4_addr . inet_service . inet_service`
const STALE4_TYPE: u32 = concat_type(&[
    TYPE_IPADDR,
    TYPE_IPADDR,
    TYPE_INET_SERVICE,
    TYPE_INET_SERVICE,
]);
/// `ipv6_addr . ipv6_addr . inet_service . inet_service`
const STALE6_TYPE: u32 = concat_type(&[
    TYPE_IP6ADDR,
    TYPE_IP6ADDR,
    TYPE_INET_SERVICE,
    TYPE_INET_SERVICE,
]);
/// Killed flows stay rejectable this long; their clients are reset within seconds, this only
/// covers clients that come back late from sleep.
pub const STALE_TIMEOUT_MS: u64 = 20 * 60 * 1000;
/// Add killed flows to the stale sets of our table. Adding is cheap for the kernel (no RCU grace
/// period, unlike deletes); an element already present only has its timeout renewed. Each
/// message of at most ELEMS_PER_MSG elements goes in a batch of its own.
pub fn add_stale(v4: &[StaleKey4], v6: &[StaleKey6]) -> io::Result<()> {
    add_keys(STALE4, v4.iter().map(|k| k.0.to_vec()))?;
    add_keys(STALE6, v6.iter().map(|k| k.0.to_vec()))
}

fn add_keys(set: &CStr, keys: impl Iterator<Item = Vec<u8>>) -> io::Result<()> {
    let elems: Vec<Elem> = keys.map(|key| Elem::key(key, false)).collect();
    for elems in elems.chunks(ELEMS_PER_MSG) {
        let message = Elems {
            table: nft::TABLE,
            set,
            set_id: 0,
            elems,
            delete: false,
        };
        let mut batch = Batch::new();
        batch.add(&message, MsgType::Add);
        nft::send(&batch.finalize())?;
    }
    Ok(())
}

/// Flows a purge's dump hands over at a time, and batches that may wait.
const DUMP_BATCH: usize = 4096;
const DUMP_QUEUE: usize = 16;

/// An open TCP flow of a LAN client (not the router's own): put in the stale sets and tickled.
fn resettable(f: &Flow, scope: &Scope) -> bool {
    f.tcp_open() && !scope.local.contains(&f.src) && scope.lan.iter().any(|n| in_net(f.src, *n))
}

/// Where a purge's resets may go.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The router's own addresses: flows it originated are purged but not tickled.
    pub local: Vec<IpAddr>,
    /// The LAN subnets: only flows whose client is there are reset (a flow that came in on the
    /// dead link, like a port forward, has its client on the far side).
    pub lan: Vec<(IpAddr, u8)>,
}

/// Whether `ip` is in `net/len`.
pub fn in_net(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// Purge the flows with `ct mark & mask == mark` (only those translated to an address of
/// `nat_to`, when it is not empty) and reset their LAN TCP clients (first tickle round
/// included), then abort the router's own TCP sockets of those flows.
/// Blocking: run off the event loop.
pub fn purge(
    mark: u32,
    mask: u32,
    tickle_mark: u32,
    scope: &Scope,
    nat_to: &[IpAddr],
) -> io::Result<PurgeReport> {
    let mut r = PurgeReport::default();
    let t = Instant::now();
    // The dump runs in a thread of its own and hands its flows over in batches; their clients
    // go into the stale sets meanwhile, so the inserts (a second core's work) end about when
    // the dump does instead of adding their time after it.
    let mut flows: Vec<Flow> = Vec::new();
    let dumped = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Flow>>(DUMP_QUEUE);
        let dump = s.spawn(move || {
            conntrack::dump_mark_batched(mark, mask, DUMP_BATCH, |b| tx.send(b).is_ok())
                .map(|()| t.elapsed())
        });
        let mut inserted = Ok(());
        for mut batch in rx {
            if !nat_to.is_empty() {
                batch.retain(|f| f.reply_dst.is_some_and(|a| nat_to.contains(&a)));
            }
            let start = r.tickle_flows.len();
            r.tickle_flows
                .extend(batch.iter().filter(|f| resettable(f, scope)).cloned());
            if inserted.is_ok() {
                let (mut v4, mut v6) = (Vec::new(), Vec::new());
                for k in r.tickle_flows[start..].iter().filter_map(stale_key) {
                    match k {
                        Ok(k) => v4.push(k),
                        Err(k) => v6.push(k),
                    }
                }
                inserted = add_stale(&v4, &v6);
                r.stale4.extend(v4);
                r.stale6.extend(v6);
            }
            flows.extend(batch);
        }
        let dumped = dump
            .join()
            .map_err(|_| io::Error::other("the conntrack dump panicked"))??;
        inserted.map(|()| dumped)
    })?;
    r.dump = dumped;
    r.stale = t.elapsed().saturating_sub(dumped);
    r.flows = flows.len();
    let own: Vec<sockets::Tuple> = flows
        .iter()
        .filter(|f| f.tcp_open() && scope.local.contains(&f.src))
        .map(|f| (f.src, f.sport, f.dst, f.dport))
        .collect();
    // Deleted one by one when only some of the link's flows go (kept only then).
    let doomed = if nat_to.is_empty() { Vec::new() } else { flows };
    r.tickle_flows.sort();
    r.tickle_flows.dedup();
    r.tcp_reset = r.tickle_flows.len();
    let t = Instant::now();
    if nat_to.is_empty() {
        conntrack::flush_mark(mark, mask)?;
    } else {
        conntrack::delete(&doomed)?;
    }
    r.flush = t.elapsed();
    let t = Instant::now();
    r.tickled = tickle(&r.tickle_flows, tickle_mark, TICKLE_BUDGET)?;
    r.tickle = t.elapsed();
    let t = Instant::now();
    if !own.is_empty() {
        r.sockets = sockets::destroy(&sockets::list(&own)?)?;
    }
    r.destroy = t.elapsed();
    Ok(r)
}

/// Send one tickle to the client of each flow, within `budget`. Returns how many went out.
///
/// The socket never blocks: a tickle to a LAN host that does not answer ARP waits in the
/// kernel's neighbour queue, charged to our socket, until resolution fails (seconds later), so
/// thousands of them fill its buffer. When it is full the round waits for room until its budget
/// is spent and leaves the rest to the next round. Clients are served in turn (each one's first
/// flow, then each one's second, ...), so a present client is never stuck behind the flows of
/// absent ones. A large round is shared by one thread per core.
pub fn tickle(flows: &[Flow], mark: u32, budget: Duration) -> io::Result<usize> {
    let deadline = Instant::now() + budget;
    let order = by_client_in_turn(flows);
    let lanes = if order.len() < PARALLEL_TICKLES {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_TICKLE_LANES))
    };
    if lanes == 1 {
        return tickle_lane(order.iter().copied(), mark, deadline);
    }
    // Lane i sends the tickles at positions i, i + lanes, ...: the clients keep their turns.
    std::thread::scope(|s| {
        let order = &order;
        let lanes: Vec<_> = (0..lanes)
            .map(|i| {
                s.spawn(move || {
                    tickle_lane(order.iter().skip(i).step_by(lanes).copied(), mark, deadline)
                })
            })
            .collect();
        lanes.into_iter().try_fold(0, |sent, lane| {
            let n = lane
                .join()
                .map_err(|_| io::Error::other("a tickle thread panicked"))??;
            Ok(sent + n)
        })
    })
}

/// Rounds of at least this many tickles are sent from one thread per core (at most
/// MAX_TICKLE_LANES): sending is the kernel's work, per packet.
const PARALLEL_TICKLES: usize = 4096;
const MAX_TICKLE_LANES: usize = 4;

/// Send the tickles of `flows` in order from sockets of their own until `deadline`.
fn tickle_lane<'a>(
    flows: impl Iterator<Item = &'a Flow>,
    mark: u32,
    deadline: Instant,
) -> io::Result<usize> {
    let (mut v4, mut v6) = (None, None);
    let mut sent = 0;
    for f in flows {
        let slot = if f.src.is_ipv6() { &mut v6 } else { &mut v4 };
        if slot.is_none() {
            *slot = Some(raw_socket(f.src.is_ipv6(), mark)?);
        }
        let Some(socket) = slot.as_ref() else {
            continue;
        };
        let Some(packet) = tickle_packet(f) else {
            continue;
        };
        // The port of a raw socket's address must be 0 (for IPv6 it would be the protocol).
        let to = SockAddr::from(SocketAddr::new(f.src, 0));
        loop {
            match socket.send_to(&packet, &to) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Ok(sent);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => tracing::debug!("tickle to {}:{}: {e}", f.src, f.sport),
            }
            break;
        }
    }
    Ok(sent)
}

/// The TCP flows in the order their clients take turns: every client's first flow, then every
/// client's second, and so on.
fn by_client_in_turn(flows: &[Flow]) -> Vec<&Flow> {
    let mut per_client: std::collections::BTreeMap<IpAddr, Vec<&Flow>> = Default::default();
    for f in flows.iter().filter(|f| f.proto == IPPROTO_TCP) {
        per_client.entry(f.src).or_default().push(f);
    }
    let longest = per_client.values().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| per_client.values().filter_map(move |v| v.get(i).copied()))
        .collect()
}

/// A raw socket whose packets carry their own IP header (IPPROTO_RAW implies IP_HDRINCL, and
/// its IPv6 equivalent) and uplinkd's tickle mark, so our table does not track them.
fn raw_socket(v6: bool, mark: u32) -> io::Result<Socket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    socket.set_mark(mark)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The tickle for a flow: from the remote end (`dst:dport`) to the client (`src:sport`), ACK
/// with sequence and acknowledgement 0 — out of window for any live connection.
pub fn tickle_packet(f: &Flow) -> Option<Vec<u8>> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&f.dport.to_be_bytes());
    tcp[2..4].copy_from_slice(&f.sport.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(40);
    let mut p = match (f.dst, f.src) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            pseudo.extend_from_slice(&from.octets());
            pseudo.extend_from_slice(&to.octets());
            pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, 20]);
            // The kernel fills in the total length, identification and checksum (raw(7)).
            let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0];
            ip.extend_from_slice(&from.octets());
            ip.extend_from_slice(&to.octets());
            ip
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            pseudo.extend_from_slice(&from.octets());
            pseudo.extend_from_slice(&to.octets());
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, IPPROTO_TCP]);
            let mut ip = vec![0x60, 0, 0, 0, 0, 20, IPPROTO_TCP, 64];
            ip.extend_from_slice(&from.octets());
            ip.extend_from_slice(&to.octets());
            ip
        }
        _ => return None,
    };
    pseudo.extend_from_slice(&tcp);
    let sum = uplinkd_probes::checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&tcp);
    Some(p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn flow(src: &str, dst: &str) -> Flow {
        Flow {
            proto: IPPROTO_TCP,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40000,
            dport: 443,
            tcp_state: Some(3),
            reply_dst: None,
        }
    }

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_net(ip("10.99.0.2"), (ip("10.99.0.1"), 24)));
        assert!(!in_net(ip("10.98.0.2"), (ip("10.99.0.1"), 24)));
        assert!(in_net(ip("1.2.3.4"), (ip("9.9.9.9"), 0)));
        assert!(in_net(ip("fd00:99::2"), (ip("fd00:99::1"), 64)));
        assert!(!in_net(ip("fd00:98::2"), (ip("fd00:99::1"), 64)));
        assert!(!in_net(ip("10.99.0.2"), (ip("fd00:99::1"), 64)));
    }

    #[test]
    fn stale_keys_are_the_client_packet_fields_each_port_in_its_own_register() {
        let Some(Ok(k)) = stale_key(&flow("10.99.0.2", "198.51.100.10")) else {
            panic!()
        };
        assert_eq!(
            k.0,
            [10, 99, 0, 2, 198, 51, 100, 10, 0x9c, 0x40, 0, 0, 0x01, 0xbb, 0, 0]
        );
        let Some(Err(k)) = stale_key(&flow("2001:db8::2", "2001:db8:ff::10")) else {
            panic!()
        };
        assert_eq!(&k.0[32..], &[0x9c, 0x40, 0, 0, 0x01, 0xbb, 0, 0]);
        // As nft names the key type: ipv4_addr . ipv4_addr . inet_service . inet_service.
        assert_eq!(
            <StaleKey4 as nftnl::set::SetKey>::TYPE,
            ((7 << 6 | 7) << 6 | 13) << 6 | 13
        );
    }

    #[test]
    fn clients_take_turns_so_none_waits_behind_another_ones_flows() {
        let mut flows: Vec<Flow> = (0..3)
            .map(|i| Flow {
                sport: 40000 + i,
                ..flow("10.99.0.100", "198.51.100.10")
            })
            .collect();
        flows.push(flow("10.99.0.200", "198.51.100.10"));
        flows.push(Flow {
            proto: 17,
            ..flow("10.99.0.3", "198.51.100.10")
        });
        let order: Vec<(String, u16)> = by_client_in_turn(&flows)
            .iter()
            .map(|f| (f.src.to_string(), f.sport))
            .collect();
        assert_eq!(
            order,
            [
                ("10.99.0.100".into(), 40000),
                ("10.99.0.200".into(), 40000),
                ("10.99.0.100".into(), 40001),
                ("10.99.0.100".into(), 40002),
            ],
            "the other client comes second, not fourth; UDP is not tickled"
        );
    }

    #[test]
    fn tickles_come_from_the_remote_end_with_a_valid_checksum() {
        let f = flow("10.99.0.2", "198.51.100.10");
        let p = tickle_packet(&f).unwrap();
        assert_eq!(p.len(), 40);
        assert_eq!(&p[12..16], &[198, 51, 100, 10], "source is the remote end");
        assert_eq!(&p[16..20], &[10, 99, 0, 2]);
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 443);
        assert_eq!(u16::from_be_bytes([p[22], p[23]]), 40000);
        assert_eq!(p[33], 0x10, "ACK only");
        let mut pseudo = [&p[12..20], &[0, 6, 0, 20][..], &p[20..]].concat();
        assert_eq!(uplinkd_probes::checksum(&pseudo), 0);
        pseudo.clear();
        let p6 = tickle_packet(&flow("2001:db8::2", "2001:db8:ff::10")).unwrap();
        assert_eq!(p6.len(), 60);
        let pseudo6 = [&p6[8..40], &[0, 0, 0, 20, 0, 0, 0, 6][..], &p6[40..]].concat();
        assert_eq!(uplinkd_probes::checksum(&pseudo6), 0);
    }
}
