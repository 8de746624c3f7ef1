#![allow(clippy::unwrap_used)]
use super::*;
use proptest::prelude::*;

const WAN: [u8; 4] = [100, 64, 1, 2];
const GATEWAY: [u8; 4] = [100, 64, 1, 1];
const WAN6: &str = "2001:db8:1::2";

fn a() -> IpAddr {
    "203.0.113.10".parse().unwrap()
}
fn b() -> IpAddr {
    "203.0.113.11".parse().unwrap()
}
fn octets4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => panic!("not IPv4"),
    }
}
fn octets6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(_) => panic!("not IPv6"),
    }
}

/// An IPv4 datagram carrying ICMP (DF set, as Linux sends pings).
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, PROTO_ICMP, 0, 0];
    ip[2..4].copy_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

/// An IPv6 header for an ICMPv6 payload, followed by it.
fn ipv6(dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0, 0, payload.len() as u8, PROTO_ICMPV6, 64];
    ip.extend_from_slice(&octets6(WAN6.parse().unwrap()));
    ip.extend_from_slice(&octets6(dst));
    ip.extend_from_slice(payload);
    ip
}

/// Set the ICMPv4 checksum of `m` (the message, without IP header).
fn fix_checksum(m: &mut [u8]) {
    m[2..4].fill(0);
    let sum = checksum(m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
}

/// What the raw IPv4 socket reads for an ICMP error that `GATEWAY` sends about `quoted`.
fn error_v4(icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(quoted);
    fix_checksum(&mut m);
    ipv4(GATEWAY, WAN, &m)
}

/// What the raw ICMPv6 socket reads for an ICMPv6 error about `quoted`.
fn error_v6(icmp_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![icmp_type, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(quoted);
    m
}

/// Our echo request to `id.dest` as the error's sender saw it, cut after `keep` bytes of
/// ICMP (8: RFC 792's minimum).
fn quote(id: EchoId, token: u64, keep: usize) -> Vec<u8> {
    let v6 = id.dest.is_ipv6();
    let req = echo_request(v6, id.ident, id.seq, token);
    let req = &req[..keep.min(req.len())];
    if v6 {
        ipv6(id.dest, req)
    } else {
        ipv4(WAN, octets4(id.dest), req)
    }
}

/// The reply `id.dest` sends to our request, as the raw socket reads it.
fn reply(id: EchoId, token: u64) -> Vec<u8> {
    let v6 = id.dest.is_ipv6();
    let mut m = echo_request(v6, id.ident, id.seq, token);
    if v6 {
        m[0] = ECHO_REPLY_V6;
        m.to_vec()
    } else {
        m[0] = ECHO_REPLY_V4;
        fix_checksum(&mut m);
        ipv4(octets4(id.dest), WAN, &m)
    }
}

/// Parse what `from` sent and look it up: the waiter it answers, if any.
fn deliver(o: &mut Outstanding<&'static str>, packet: &[u8], from: IpAddr) -> Option<&'static str> {
    o.answer(&parse(packet, from.is_ipv6(), from)?)
}

#[test]
fn request_checksum_verifies() {
    let p = echo_request(false, 0x1234, 7, 0xdead_beef);
    assert_eq!(checksum(&p), 0);
    assert_eq!(&p[16..], MARKER);
}

#[test]
fn replies_must_come_from_the_target_and_echo_the_probe() {
    let mut o = Outstanding::new(RandomState::new());
    let (ia, ta) = o.start(a(), "a");
    let (ib, tb) = o.start(b(), "b");
    let gw = IpAddr::from(GATEWAY);
    // Another target's address, or the right address with a wrong field: ignored.
    let from_b = EchoId { dest: b(), ..ia };
    assert_eq!(deliver(&mut o, &reply(ia, ta), b()), None, "sent by B");
    assert_eq!(
        deliver(&mut o, &reply(from_b, ta), b()),
        None,
        "A's probe, B's address"
    );
    assert_eq!(
        deliver(&mut o, &reply(ia, ta ^ 1), a()),
        None,
        "wrong token"
    );
    let wrong_id = EchoId {
        ident: ia.ident ^ 1,
        ..ia
    };
    assert_eq!(deliver(&mut o, &reply(wrong_id, ta), a()), None, "wrong id");
    let wrong_seq = EchoId {
        seq: ia.seq ^ 1,
        ..ia
    };
    assert_eq!(
        deliver(&mut o, &reply(wrong_seq, ta), a()),
        None,
        "wrong seq"
    );
    // Our own request looped back, a reply without our marker, a corrupt one: not answers.
    let req = ipv4(
        WAN,
        octets4(a()),
        &echo_request(false, ia.ident, ia.seq, ta),
    );
    assert_eq!(deliver(&mut o, &req, a()), None, "our request");
    let mut short = reply(ia, ta);
    short.truncate(20 + 16);
    fix_checksum(&mut short[20..]);
    assert_eq!(deliver(&mut o, &short, a()), None, "no marker");
    let mut corrupt = reply(ia, ta);
    corrupt[40] ^= 0xff;
    assert_eq!(deliver(&mut o, &corrupt, a()), None, "bad checksum");
    assert_eq!(
        deliver(&mut o, &reply(ia, ta), gw),
        None,
        "sent by the gateway"
    );
    // The genuine replies, once each.
    assert_eq!(deliver(&mut o, &reply(ia, ta), a()), Some("a"));
    assert_eq!(deliver(&mut o, &reply(ia, ta), a()), None, "a duplicate");
    assert_eq!(deliver(&mut o, &reply(ib, tb), b()), Some("b"));
}

#[test]
fn an_error_counts_only_when_it_quotes_an_outstanding_probe_to_that_target() {
    let mut o = Outstanding::new(RandomState::new());
    let (ia, ta) = o.start(a(), "a");
    let (ib, tb) = o.start(b(), "b");
    let gw = IpAddr::from(GATEWAY);
    let err = |q: &[u8]| error_v4(3, 1, q);
    let mut udp = ipv4(
        WAN,
        octets4(a()),
        &echo_request(false, ia.ident, ia.seq, ta),
    );
    udp[9] = 17;
    let mut later_fragment = quote(ia, ta, 8);
    later_fragment[7] = 1;
    let ignored: [(&str, Vec<u8>); 11] = [
        (
            "A's probe quoted as if sent to B",
            err(&quote(EchoId { dest: b(), ..ia }, ta, 8)),
        ),
        (
            "B's id and seq with A's address",
            err(&quote(EchoId { dest: a(), ..ib }, tb, 8)),
        ),
        (
            "wrong id",
            err(&quote(
                EchoId {
                    ident: ia.ident ^ 0x100,
                    ..ia
                },
                ta,
                8,
            )),
        ),
        (
            "wrong seq",
            err(&quote(
                EchoId {
                    seq: ia.seq.wrapping_add(1),
                    ..ia
                },
                ta,
                8,
            )),
        ),
        ("wrong token", err(&quote(ia, ta ^ 1, 64))),
        ("truncated quote", err(&quote(ia, ta, 7))),
        ("no echo header", err(&quote(ia, ta, 0))),
        ("no quote", err(&[])),
        ("a UDP datagram", err(&udp)),
        ("a later fragment", err(&later_fragment)),
        ("not an error type", error_v4(5, 1, &quote(ia, ta, 8))),
    ];
    for (what, packet) in ignored {
        assert_eq!(deliver(&mut o, &packet, gw), None, "{what}");
    }
    // The genuine errors: RFC 792's short quote, or a quote with the token.
    assert_eq!(deliver(&mut o, &err(&quote(ia, ta, 8)), gw), Some("a"));
    assert_eq!(deliver(&mut o, &err(&quote(ib, tb, 64)), gw), Some("b"));
    assert_eq!(
        parse(&err(&quote(ia, ta, 64)), false, gw),
        Some(Parsed::Error {
            id: ia,
            token: Some(ta),
            icmp_type: 3,
            code: 1
        })
    );
}

#[test]
fn an_icmpv6_error_counts_only_when_it_quotes_an_outstanding_probe_to_that_target() {
    let (a6, b6): (IpAddr, IpAddr) = (
        "2001:db8:ff::10".parse().unwrap(),
        "2001:db8:ff::11".parse().unwrap(),
    );
    let router: IpAddr = "2001:db8:1::1".parse().unwrap();
    let mut o = Outstanding::new(RandomState::new());
    let (ia, ta) = o.start(a6, "a");
    let (ib, _) = o.start(b6, "b");
    let mut hop_by_hop = quote(ia, ta, 8);
    hop_by_hop[6] = 0;
    let ignored: [(&str, Vec<u8>); 7] = [
        (
            "A's probe quoted as if sent to B",
            error_v6(1, 3, &quote(EchoId { dest: b6, ..ia }, ta, 8)),
        ),
        (
            "B's id and seq with A's address",
            error_v6(1, 3, &quote(EchoId { dest: a6, ..ib }, ta, 8)),
        ),
        (
            "wrong seq",
            error_v6(
                1,
                3,
                &quote(
                    EchoId {
                        seq: ia.seq ^ 1,
                        ..ia
                    },
                    ta,
                    8,
                ),
            ),
        ),
        ("wrong token", error_v6(1, 3, &quote(ia, !ta, 24))),
        ("truncated quote", error_v6(1, 3, &quote(ia, ta, 6)[..])),
        ("an extension header", error_v6(1, 3, &hop_by_hop)),
        ("an informational type", error_v6(130, 0, &quote(ia, ta, 8))),
    ];
    for (what, packet) in ignored {
        assert_eq!(deliver(&mut o, &packet, router), None, "{what}");
    }
    assert_eq!(
        deliver(&mut o, &error_v6(3, 0, &quote(ia, ta, 24)), router),
        Some("a")
    );
    assert_eq!(
        o.answer(&Parsed::Error {
            id: ib,
            token: None,
            icmp_type: 1,
            code: 0
        }),
        Some("b")
    );
}

#[test]
fn each_target_has_its_own_unpredictable_identifier_and_sequence_space() {
    let keys = RandomState::new();
    // Probes to A do not move B's sequence: B's numbers are the same with or without them.
    let mut alone = Outstanding::new(keys.clone());
    let mut mixed = Outstanding::new(keys);
    let mut first = None;
    for i in 0..5u16 {
        let (solo, token) = alone.start(b(), ());
        mixed.start(a(), ());
        let (ib, token_mixed) = mixed.start(b(), ());
        assert_eq!((solo, token), (ib, token_mixed));
        let first = *first.get_or_insert(ib.seq);
        assert_eq!(ib.seq, first.wrapping_add(i), "consecutive per target");
    }
    // Identifiers and first sequence numbers differ between targets and between sockets.
    let (mut s1, mut s2) = (
        Outstanding::new(RandomState::new()),
        Outstanding::new(RandomState::new()),
    );
    let mut starts = std::collections::BTreeSet::new();
    let mut idents = std::collections::BTreeSet::new();
    let mut same_across_sockets = 0;
    for n in 0..64u8 {
        let dest = IpAddr::from([198, 51, 100, n]);
        let (x, _) = s1.start(dest, ());
        let (y, _) = s2.start(dest, ());
        starts.insert(x.seq);
        idents.insert(x.ident);
        same_across_sockets += usize::from(x.ident == y.ident && x.seq == y.seq);
    }
    // 64 values drawn from 65,536: a handful of collisions at most.
    assert!(
        starts.len() > 56 && idents.len() > 56,
        "{starts:?} {idents:?}"
    );
    assert!(same_across_sockets < 4);
}

#[test]
fn a_sequence_number_still_outstanding_is_skipped() {
    let mut o = Outstanding::new(RandomState::new());
    let (first, _) = o.start(a(), 0u32);
    let mut last = first;
    for n in 1..=u32::from(u16::MAX) {
        let token;
        (last, token) = o.start(a(), n);
        assert_eq!(o.take(&last, token), Some(n));
    }
    assert_eq!(last.seq, first.seq.wrapping_sub(1));
    let (wrapped, _) = o.start(a(), 0);
    assert_eq!(
        wrapped.seq,
        first.seq.wrapping_add(1),
        "the first is still outstanding"
    );
}

#[test]
fn garbage_is_ignored() {
    for junk in [&[][..], &[0x45], &[0x4f, 0, 0], &[0x40; 20], &[0xff; 64]] {
        assert_eq!(parse(junk, false, a()), None);
        assert_eq!(parse(junk, true, a()), None);
    }
}

/// For a one-byte change at `i` to `v` in `error_v4(3, 1, quote(.., 64))` (with its ICMP
/// checksum fixed afterwards): must the error still count?
fn v4_still_counts(i: usize, v: u8) -> bool {
    match i {
        0 => false,                   // outer version / header length
        1..=19 => true,               // rest of the outer header
        20 => ERRORS_V4.contains(&v), // another error type still counts
        21..=27 => true,              // code, checksum (fixed), unused
        28 => false,                  // quoted version / header length
        34 => v & 0x1f == 0,          // flags count nothing, the offset must be 0
        35 | 37 | 44..=47 => false,   // offset, protocol, destination
        29..=43 => true,              // tos, length, id, ttl, checksum, source
        48 | 49 | 52..=63 => false,   // echo type, code, id, seq, token
        _ => true,                    // echo checksum, marker
    }
}

/// The same for `error_v6(1, 3, quote(.., 64))`.
fn v6_still_counts(i: usize, v: u8) -> bool {
    match i {
        0 => v <= ERROR_V6_MAX,
        1..=7 => true,
        8 => v >> 4 == 6,
        14 | 32..=47 => false, // next header, destination
        9..=31 => true,        // class, flow, length, hop limit, source
        48 | 49 | 52..=63 => false,
        _ => true,
    }
}

fn error_and_probe(
    v6: bool,
    ident: u16,
    seq: u16,
    token: u64,
) -> (Outstanding<()>, EchoId, IpAddr) {
    let mut o = Outstanding::new(RandomState::new());
    let dest = if v6 {
        "2001:db8:ff::10".parse().unwrap()
    } else {
        a()
    };
    // A probe with the generated fields, so that they vary too.
    let id = EchoId { dest, ident, seq };
    o.probes.insert(id, Probe { token, waiter: () });
    let from = if v6 {
        "2001:db8:1::1".parse().unwrap()
    } else {
        IpAddr::from(GATEWAY)
    };
    (o, id, from)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_answer(bytes in proptest::collection::vec(any::<u8>(), 0..160), v6: bool) {
        let (mut o, _, from) = error_and_probe(v6, 1, 1, 1);
        if let Some(p) = parse(&bytes, v6, from) {
            prop_assert_eq!(o.answer(&p), None);
        }
    }

    #[test]
    fn a_mutated_error_counts_iff_the_quoted_probe_still_matches(
        v6: bool, ident: u16, seq: u16, token: u64, i in 0usize..72, v: u8,
    ) {
        let (mut o, id, from) = error_and_probe(v6, ident, seq, token);
        let mut packet = if v6 { error_v6(1, 3, &quote(id, token, 64)) } else { error_v4(3, 1, &quote(id, token, 64)) };
        let i = i % packet.len();
        prop_assume!(packet[i] != v);
        packet[i] = v;
        if !v6 {
            fix_checksum(&mut packet[20..]);
        }
        let expected = if v6 { v6_still_counts(i, v) } else { v4_still_counts(i, v) };
        let counted = parse(&packet, v6, from).and_then(|p| o.answer(&p)).is_some();
        prop_assert_eq!(counted, expected, "byte {} set to {:#04x}", i, v);
    }

    #[test]
    fn an_error_counts_iff_it_quotes_the_target_id_seq_and_token(
        v6: bool, ident: u16, seq: u16, token: u64,
        other_dest: bool, q_ident: Option<u16>, q_seq: Option<u16>, q_token: Option<u64>, keep in 0usize..24,
    ) {
        let (mut o, id, from) = error_and_probe(v6, ident, seq, token);
        let dest = if other_dest {
            if v6 { "2001:db8:ff::11".parse().unwrap() } else { b() }
        } else {
            id.dest
        };
        let quoted = EchoId { dest, ident: q_ident.unwrap_or(ident), seq: q_seq.unwrap_or(seq) };
        let q_token = q_token.unwrap_or(token);
        let packet = if v6 { error_v6(1, 4, &quote(quoted, q_token, keep)) } else { error_v4(3, 3, &quote(quoted, q_token, keep)) };
        let expected = quoted == id && keep >= 8 && (keep < 16 || q_token == token);
        let counted = parse(&packet, v6, from).and_then(|p| o.answer(&p)).is_some();
        prop_assert_eq!(counted, expected);
    }

    #[test]
    fn what_the_prober_builds_round_trips(v6: bool, host: u8, keep in 8usize..24) {
        let dest: IpAddr = if v6 { format!("2001:db8:ff::{host:x}").parse().unwrap() } else { IpAddr::from([203, 0, 113, host]) };
        let from = if v6 { "2001:db8:1::1".parse().unwrap() } else { IpAddr::from(GATEWAY) };
        let mut o = Outstanding::new(RandomState::new());
        let (id, token) = o.start(dest, "r");
        let (id2, token2) = o.start(dest, "e");
        prop_assert_eq!(parse(&reply(id, token), v6, dest), Some(Parsed::Reply { id, token }));
        prop_assert_eq!(deliver(&mut o, &reply(id, token), dest), Some("r"));
        let err = if v6 { error_v6(3, 0, &quote(id2, token2, keep)) } else { error_v4(11, 0, &quote(id2, token2, keep)) };
        let quoted_token = (keep >= 16).then_some(token2);
        prop_assert_eq!(
            parse(&err, v6, from),
            Some(Parsed::Error { id: id2, token: quoted_token, icmp_type: if v6 { 3 } else { 11 }, code: 0 })
        );
        prop_assert_eq!(deliver(&mut o, &err, from), Some("e"));
    }
}

fn state() -> State<u32> {
    State {
        outstanding: Outstanding::new(RandomState::new()),
        deadlines: VecDeque::new(),
    }
}

/// Send `tag` to `dest` at `at` with a 300 ms timeout, as [`IcmpSocket::send`] does.
fn sent(s: &mut State<u32>, dest: IpAddr, tag: u32, at: Instant) -> (EchoId, u64) {
    let (id, token) = s.outstanding.start(dest, Waiting { sent: at, tag });
    s.deadlines
        .push_back((at + Duration::from_millis(300), id, token));
    (id, token)
}

#[test]
fn only_unanswered_probes_time_out_each_once_in_order() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut s = state();
    assert_eq!(s.next_deadline(), None, "nothing outstanding: no timer");
    let (id0, token0) = sent(&mut s, a(), 0, t0);
    sent(&mut s, b(), 1, t0);
    sent(&mut s, a(), 2, t0 + ms(100));
    assert_eq!(s.next_deadline(), Some(t0 + ms(300)));

    // Probe 0 is answered: the timer moves on to the next one still waiting.
    let w = s.outstanding.answer(&Parsed::Reply {
        id: id0,
        token: token0,
    });
    assert_eq!(w.map(|w| w.tag), Some(0));
    assert_eq!(s.next_deadline(), Some(t0 + ms(300)), "probe 1's");
    let mut out = Vec::new();
    s.expire(t0 + ms(299), &mut out);
    assert!(out.is_empty(), "none due yet");
    s.expire(t0 + ms(300), &mut out);
    assert_eq!(out, [1], "the answered one does not time out");
    assert_eq!(s.next_deadline(), Some(t0 + ms(400)));
    s.expire(t0 + ms(1000), &mut out);
    assert_eq!(out, [1, 2]);
    assert_eq!(s.next_deadline(), None);
    s.expire(t0 + ms(2000), &mut out);
    assert_eq!(out, [1, 2], "each times out once");
}

#[test]
fn a_stale_deadline_does_not_time_out_a_later_probe_with_the_same_id() {
    let t0 = Instant::now();
    let mut s = state();
    let (id, token) = sent(&mut s, a(), 0, t0);
    assert_eq!(s.outstanding.take(&id, token).map(|w| w.tag), Some(0));
    // A later probe that happens to get the same identifier and sequence number (after the
    // sequence space wrapped), with its own token.
    let token2 = 0x5eed;
    s.outstanding.probes.insert(
        id,
        Probe {
            token: token2,
            waiter: Waiting { sent: t0, tag: 7 },
        },
    );
    let mut out = Vec::new();
    s.expire(t0 + Duration::from_millis(300), &mut out);
    assert!(
        out.is_empty(),
        "the first probe's deadline is not the second's"
    );
    assert!(s.outstanding.is_outstanding(&id, token2));
    assert!(s.outstanding.take(&id, token).is_none(), "wrong token");
}

/// Through `lo`, which answers every echo request to 127.0.0.1 (needs CAP_NET_RAW, as the
/// daemon does; skipped without it).
#[tokio::test]
async fn every_probe_is_delivered_once_even_after_its_socket_is_dropped() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let lo = Binding {
        interface: "lo".into(),
        mark: 0,
    };
    let socket = match IcmpSocket::new(&lo, false, Duration::from_secs(2), move |tag, r| {
        let _ = tx.send((tag, r));
    }) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: no CAP_NET_RAW ({e})");
            return;
        }
        r => r.unwrap(),
    };
    let home: IpAddr = Ipv4Addr::LOCALHOST.into();
    for tag in 0..20u32 {
        socket.send(home, tag).map_err(|(_, e)| e).unwrap();
    }
    let (tag, e) = socket.send("::1".parse().unwrap(), 99).unwrap_err();
    assert_eq!(tag, 99, "a probe that cannot be sent comes back at once");
    assert!(matches!(e, ProbeError::Other(_)), "{e}");
    // Dropped with all 20 in flight (or answered already): each still ends, once.
    drop(socket);
    let mut seen = Vec::new();
    while let Some((tag, r)) = rx.recv().await {
        let rtt = r.unwrap();
        assert!(rtt < Duration::from_secs(2), "{rtt:?}");
        seen.push(tag);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
}
