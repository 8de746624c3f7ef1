//! `[probe]` and `[detection]`: how links are probed and judged.

use std::time::Duration;

use super::super::raw::{RawDetection, RawProbe};
use super::super::{Detection, Probe};
use super::{range, Checker};

pub(super) fn probe(c: &mut Checker, rp: &RawProbe) -> Probe {
    let (ms, secs) = (Duration::from_millis, Duration::from_secs);
    let probe = Probe {
        interval: c.duration(
            &rp.interval,
            "probe.interval",
            ms(400),
            range(ms(10), secs(60)),
        ),
        fast_interval: c.duration(
            &rp.fast_interval,
            "probe.fast_interval",
            ms(50),
            range(ms(10), secs(60)),
        ),
        timeout: c.duration(
            &rp.timeout,
            "probe.timeout",
            ms(200),
            range(ms(10), secs(30)),
        ),
    };
    if probe.fast_interval > probe.interval {
        let span = rp.fast_interval.as_ref().map_or(0..0, |v| v.span());
        c.err(
            span,
            "probe.fast_interval",
            "must not be longer than probe.interval",
        );
    }
    probe
}

pub(super) fn detection(c: &mut Checker, rd: &RawDetection) -> Detection {
    let (ms, secs) = (Duration::from_millis, Duration::from_secs);
    let detection = Detection {
        misses: c.int(&rd.misses, "detection.misses", 4, 1..=100),
        quorum: rd.quorum.as_ref().map(|q| *q.get_ref()),
        up_after: c.int(&rd.up_after, "detection.up_after", 3, 1..=1000),
        stable_time: c.duration(
            &rd.stable_time,
            "detection.stable_time",
            secs(1),
            range(ms(0), secs(3600)),
        ),
        flap_half_life: c.duration(
            &rd.flap_half_life,
            "detection.flap_half_life",
            secs(60),
            range(secs(1), secs(86400)),
        ),
        max_hold: c.duration(
            &rd.max_hold,
            "detection.max_hold",
            secs(300),
            range(ms(0), secs(86400)),
        ),
        degraded_loss_pct: c.int(
            &rd.degraded_loss_pct,
            "detection.degraded_loss_pct",
            25,
            1..=100,
        ),
        degraded_rtt: c.duration(
            &rd.degraded_rtt,
            "detection.degraded_rtt",
            ms(500),
            range(ms(1), secs(60)),
        ),
    };
    if let Some(q) = rd.quorum.as_ref().filter(|q| *q.get_ref() == 0) {
        c.err(q.span(), "detection.quorum", "must be at least 1");
    }
    detection
}
