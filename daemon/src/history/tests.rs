//! The history's rings, outages and file.

#![allow(clippy::unwrap_used)]

use super::*;

const T0: f64 = 1_796_000_000.0;

fn names() -> Vec<String> {
    vec!["wan1".into(), "wan2".into()]
}

#[test]
fn buckets_average_rtt_and_loss_and_keep_the_worst_state() {
    let mut h = History::new(&names());
    for (i, rtt) in [Some(10.0), Some(20.0), None, Some(30.0)]
        .into_iter()
        .enumerate()
    {
        h.probe(0, T0 + i as f64, rtt, UP);
    }
    h.transition(0, T0 + 5.0, "degraded", "loss");
    let s = h.series(Some("wan1"), 3600.0, T0 + 9.0).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].step_s, 10);
    let p = s[0].points.last().unwrap();
    assert_eq!(p.rtt_ms, Some(20.0));
    assert_eq!(p.loss_pct, Some(25.0));
    assert!((p.jitter_ms.unwrap() - 8.165).abs() < 0.01, "{p:?}");
    assert_eq!(p.state, DEGRADED);
    // wan2 has nothing yet; an unknown link is None.
    assert!(h.series(Some("wan2"), 3600.0, T0).unwrap()[0]
        .points
        .is_empty());
    assert_eq!(h.series(Some("lte"), 3600.0, T0), None);
}

#[test]
fn merged_buckets_are_the_buckets_of_all_their_probes() {
    let rtts = [3.0, 9.0, 4.0, 12.0, 7.0];
    let mut all = Bucket::default();
    let (mut a, mut b) = (Bucket::default(), Bucket::default());
    for (i, r) in rtts.iter().enumerate() {
        all.add(Some(*r));
        if i < 2 {
            a.add(Some(*r))
        } else {
            b.add(Some(*r))
        }
    }
    b.add(None);
    all.add(None);
    a.merge(&b);
    assert_eq!((a.sent, a.lost), (all.sent, all.lost));
    assert!((a.rtt_ms().unwrap() - all.rtt_ms().unwrap()).abs() < 1e-4);
    assert!((a.jitter_ms().unwrap() - all.jitter_ms().unwrap()).abs() < 1e-4);
}

#[test]
fn each_resolution_reaches_back_its_own_time_and_a_gap_is_empty() {
    let mut h = History::new(&names());
    // Two days of one probe a minute, then nothing for 20 minutes, then one probe.
    let mut t = T0;
    while t < T0 + 2.0 * 86400.0 {
        h.probe(0, t, Some(5.0), UP);
        t += 60.0;
    }
    let now = t + 1200.0;
    h.probe(0, now, None, DOWN);
    let hour = &h.series(Some("wan1"), 3600.0, now).unwrap()[0];
    // A probe a minute: the hour starts at its first bucket with one.
    assert_eq!(hour.step_s, 10);
    assert!(
        (355..=360).contains(&hour.points.len()),
        "{}",
        hour.points.len()
    );
    assert_ne!(hour.points[0].state, NO_DATA);
    // The last 20 minutes: empty buckets, then the lost probe.
    let gap = &hour.points[hour.points.len() - 121..hour.points.len() - 1];
    assert!(gap
        .iter()
        .all(|p| p.state == NO_DATA && p.loss_pct.is_none()));
    assert_eq!(hour.points.last().unwrap().loss_pct, Some(100.0));
    let day = &h.series(Some("wan1"), 86400.0, now).unwrap()[0];
    assert_eq!((day.step_s, day.points.len()), (60, 1440));
    let week = &h.series(Some("wan1"), 7.0 * 86400.0, now).unwrap()[0];
    assert_eq!(week.step_s, 900);
    // From the first bucket with data: two days and the gap.
    let first = (T0 / 900.0).floor();
    assert_eq!(
        week.points.len(),
        ((now / 900.0).floor() - first) as usize + 1
    );
    assert_eq!(week.start, first * 900.0);
    // A probe older than the finest ring still counts in the coarser ones.
    let before = h.clone();
    h.probe(0, now - 7200.0, Some(1.0), UP);
    let hour_of = |h: &History| h.series(Some("wan1"), 3600.0, now).unwrap();
    assert_eq!(hour_of(&h), hour_of(&before));
    let at = |h: &History| {
        let d = &h.series(Some("wan1"), 86400.0, now).unwrap()[0];
        let i = ((now - 7200.0 - d.start) / 60.0) as usize;
        d.points[i].rtt_ms
    };
    assert_eq!((at(&before), at(&h)), (Some(5.0), Some(3.0)));
}

#[test]
fn outages_open_on_down_close_on_up_and_count_their_flows() {
    let mut h = History::new(&names());
    h.transition(0, T0, "up", "probes answered");
    h.transition(0, T0 + 10.0, "down", "3/3 targets silent");
    h.purged("wan1", 12, 3);
    h.transition(0, T0 + 11.0, "down", "carrier lost");
    h.transition(0, T0 + 70.5, "up", "good again");
    h.transition(1, T0 + 80.0, "down", "carrier lost");
    let o = h.outages(T0);
    assert_eq!(o.len(), 2);
    assert_eq!(
        o[0],
        Outage {
            link: "wan1".into(),
            start: T0 + 10.0,
            end: Some(T0 + 70.5),
            reason: "3/3 targets silent".into(),
            flows: 12,
            tcp_resets: 3,
        }
    );
    assert_eq!((o[1].link.as_str(), o[1].end), ("wan2", None));
    assert_eq!(h.outages(T0 + 75.0).len(), 1, "the first ended before");
}

#[test]
fn an_outage_is_dated_by_what_the_probes_saw() {
    let mut h = History::new(&names());
    // Answers, then losses from T0 + 4 (detected at T0 + 5), answers again from T0 + 9
    // (the link is trusted again at T0 + 11), with one loss in between.
    for (t, rtt) in [
        (1.0, Some(5.0)),
        (2.0, Some(5.0)),
        (4.0, None),
        (4.4, None),
        (5.0, None),
        (7.0, Some(5.0)),
        (7.4, None),
        (9.0, Some(5.0)),
        (9.4, Some(5.0)),
        (10.0, Some(5.0)),
    ] {
        h.probe(0, T0 + t, rtt, UP);
        if t == 5.0 {
            h.transition(0, T0 + 5.0, "down", "3/3 targets silent");
        }
    }
    h.transition(0, T0 + 11.0, "up", "good again");
    let o = &h.outages(T0)[0];
    assert_eq!((o.start - T0, o.end.map(|e| e - T0)), (4.0, Some(9.0)));
    // A carrier lost while probes still answered, and no probe sent until it is back:
    // the decisions' times.
    h.probe(1, T0 + 19.0, Some(5.0), UP);
    h.transition(1, T0 + 20.0, "down", "carrier lost");
    h.transition(1, T0 + 30.0, "up", "carrier back");
    let o = &h.outages(T0)[1];
    assert_eq!((o.start - T0, o.end.map(|e| e - T0)), (20.0, Some(30.0)));
}

#[test]
fn the_history_survives_a_save_and_load_and_a_bad_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("uplinkd-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("history.json");
    let mut h = History::new(&names());
    for i in 0..100 {
        h.probe(
            i % 2,
            T0 + f64::from(i as u32) * 7.0,
            (i % 5 != 0).then_some(4.0 + i as f64),
            UP,
        );
    }
    h.transition(1, T0 + 500.0, "down", "blackhole");
    h.save(&path).unwrap();
    let back = History::load(&path, &names()).unwrap();
    for since in [3600.0, 86400.0, 604_800.0] {
        assert_eq!(
            back.series(None, since, T0 + 700.0),
            h.series(None, since, T0 + 700.0)
        );
    }
    assert_eq!(back.outages(0.0), h.outages(0.0));
    // Reconfigured: a renamed link starts empty, the kept one keeps its history.
    let other = History::load(&path, &["wan2".into(), "lte".into()]).unwrap();
    assert_eq!(
        other.series(Some("wan2"), 3600.0, T0 + 700.0),
        h.series(Some("wan2"), 3600.0, T0 + 700.0)
    );
    assert!(other.series(Some("lte"), 3600.0, T0).unwrap()[0]
        .points
        .is_empty());
    for bad in ["", "{\"version\":1}", "{\"version\":2,\"links\":[],\"outages\":[]}",
        "{\"version\":1,\"links\":[{\"name\":\"wan1\",\"tiers\":[{\"step\":10,\"newest\":5,\"buckets\":[[999,1,0,1.0,0.0,1]]}]}],\"outages\":[]}",
        "{\"version\":1,\"links\":[{\"name\":\"wan1\",\"tiers\":[{\"step\":10,\"newest\":5,\"buckets\":[[1,1,2,1.0,0.0,1]]}]}],\"outages\":[]}"] {
        std::fs::write(&path, bad).unwrap();
        assert!(History::load(&path, &names()).is_err(), "{bad}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sixteen_full_links_take_under_a_megabyte() {
    let per_link: usize =
        TIERS.iter().map(|&(_, n)| n).sum::<usize>() * std::mem::size_of::<Bucket>();
    assert!(16 * per_link < 1 << 20, "{per_link} bytes per link");
}

#[test]
fn a_ring_holds_only_the_buckets_it_has_seen_and_wraps_at_its_length() {
    let mut t = Tier::new(10, 6);
    let b = |t: &mut Tier, j: u64| t.slot(j).map(|b| b.add(Some(j as f64)));
    b(&mut t, 100);
    assert_eq!(t.ring.len(), 1, "a young ring holds one bucket");
    b(&mut t, 102);
    assert_eq!(t.ring.len(), 3);
    // An older bucket within the ring's length is added in front of it; one beyond is not.
    assert!(b(&mut t, 98).is_some());
    assert_eq!(t.ring.len(), 5);
    assert!(b(&mut t, 96).is_none());
    b(&mut t, 110);
    assert_eq!(t.ring.len(), 6, "full: at most its length");
    let numbered: Vec<(u64, u32)> = t.numbered().map(|(j, b)| (j, b.sent)).collect();
    assert_eq!(
        numbered,
        [(105, 0), (106, 0), (107, 0), (108, 0), (109, 0), (110, 1)]
    );
    // After a wrap, the file places each bucket where it was.
    let dir = std::env::temp_dir().join(format!("uplinkd-ring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("history.json");
    let mut h = History::new(&names());
    for i in 0..1000u32 {
        h.probe(0, T0 + f64::from(i) * 7.0, Some(f64::from(i % 17)), UP);
    }
    h.save(&path).unwrap();
    let back = History::load(&path, &names()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(back.links[0].tiers, h.links[0].tiers);
    let full = &h.links[0].tiers[0].ring;
    assert_eq!((full.len(), full.capacity()), (TIERS[0].1, TIERS[0].1));
}
