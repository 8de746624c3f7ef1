//! What `uplinkctl history` and `uplinkctl outages` print: sparklines of RTT and loss with the
//! down and degraded spells marked, and the outage report an operator sends to an ISP.

use std::fmt::Write as _;

use super::{Bucket, Outage, Series, DEGRADED, DOWN, NO_DATA, UP};

const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
const ASCII_LEVELS: [char; 8] = ['_', '.', '-', '=', '+', '*', '#', '@'];

/// Space the labels before a chart row take.
const LABEL: usize = 8;

/// `series` as three rows (RTT, loss, state) at most `width` columns wide (buckets merged to
/// fit), with a heading and the figures each row's scale needs.
pub fn chart(s: &Series, width: usize, ascii: bool) -> String {
    let mut out = String::new();
    let cols = width.saturating_sub(LABEL).max(4);
    let per = s.points.len().div_ceil(cols).max(1);
    let merged: Vec<Bucket> = s
        .points
        .chunks(per)
        .map(|c| {
            let mut b = Bucket::default();
            for p in c {
                b.merge(&Bucket::from(p));
            }
            b
        })
        .collect();
    let end = s.start + (s.points.len() * s.step_s as usize) as f64;
    let _ = writeln!(
        out,
        "{}: {} to {} UTC, {} per column",
        s.link,
        utc(s.start),
        utc(end),
        span(f64::from(s.step_s) * per as f64)
    );
    if merged.is_empty() {
        out.push_str("  no probes yet\n");
        return out;
    }
    let levels = if ascii { &ASCII_LEVELS } else { &BLOCKS };
    let rtts: Vec<Option<f64>> = merged.iter().map(Bucket::rtt_ms).collect();
    let max_rtt = rtts.iter().flatten().fold(0.0f64, |a, &b| a.max(b));
    let row = |vals: &[Option<f64>], max: f64| -> String {
        vals.iter()
            .map(|v| match v {
                None => ' ',
                Some(v) if max <= 0.0 => levels[0],
                Some(v) => levels[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize],
            })
            .collect()
    };
    let mut all = Bucket::default();
    for b in &merged {
        all.merge(b);
    }
    let _ = writeln!(
        out,
        "  {:<6}{}  max {:.1} ms, mean {}, jitter {}",
        "rtt",
        row(&rtts, max_rtt),
        max_rtt,
        all.rtt_ms().map_or("-".into(), |v| format!("{v:.1} ms")),
        all.jitter_ms().map_or("-".into(), |v| format!("{v:.1} ms")),
    );
    let loss: Vec<Option<f64>> = merged.iter().map(Bucket::loss_pct).collect();
    let _ = writeln!(
        out,
        "  {:<6}{}  scale 0-100 %, mean {}",
        "loss",
        row(&loss, 100.0),
        all.loss_pct().map_or("-".into(), |v| format!("{v:.1} %")),
    );
    let (up, degraded, down) = if ascii {
        ('-', '~', 'X')
    } else {
        ('─', '≈', '█')
    };
    let states: String = merged
        .iter()
        .map(|b| match b.state {
            UP => up,
            DEGRADED => degraded,
            DOWN => down,
            _ => ' ',
        })
        .collect();
    let _ = writeln!(
        out,
        "  {:<6}{states}  {up} up, {degraded} degraded, {down} down, blank: no data",
        "state"
    );
    out
}

/// One line per outage that ended within the last `since_s` seconds before `now` (or has not
/// ended), then each link's count, downtime and availability over that time.
pub fn outages(list: &[Outage], links: &[String], since_s: f64, now: f64) -> String {
    let mut out = String::new();
    let from = now - since_s;
    if list.is_empty() {
        let _ = writeln!(out, "no outage in the last {}", span(since_s));
    } else {
        let _ = writeln!(
            out,
            "{:<12} {:<20} {:>10}  {:<8}  reason",
            "link", "start (UTC)", "duration", "flows"
        );
    }
    for o in list {
        let duration = match o.end {
            Some(e) => span(e - o.start),
            None => format!("{} so far", span(now - o.start)),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<20} {:>10}  {:<8}  {}",
            o.link,
            utc(o.start),
            duration,
            if o.tcp_resets > 0 {
                format!("{} ({} TCP reset)", o.flows, o.tcp_resets)
            } else {
                o.flows.to_string()
            },
            o.reason
        );
    }
    let _ = writeln!(out, "\nover the last {}:", span(since_s));
    for l in links {
        let mine: Vec<&Outage> = list.iter().filter(|o| o.link == *l).collect();
        let down: f64 = mine
            .iter()
            .map(|o| o.end.unwrap_or(now).min(now) - o.start.max(from))
            .map(|d| d.max(0.0))
            .sum();
        let _ = writeln!(
            out,
            "{l:<12} {} outage{}, down {}, available {:.3} %",
            mine.len(),
            if mine.len() == 1 { "" } else { "s" },
            span(down),
            100.0 * (1.0 - down / since_s).clamp(0.0, 1.0)
        );
    }
    out
}

/// "2026-12-02 14:05:09" from seconds since the Unix epoch (UTC; proleptic Gregorian).
pub fn utc(epoch: f64) -> String {
    let secs = epoch.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A duration for people: "45 s", "3m 05s", "2h 10m", "6d 4h".
pub fn span(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// `1h`, `24h`, `7d`, `30m`, `90s` or plain seconds, as seconds.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and s, m, h or d, like 24h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    let v = n.saturating_mul(mult);
    if (1..=7 * 86400).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?}: between 1s and 7d (what the history keeps)"))
    }
}

/// The state code's name.
pub fn state_name(code: u8) -> &'static str {
    match code {
        UP => "up",
        DEGRADED => "degraded",
        DOWN => "down",
        NO_DATA => "no data",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::history::Point;

    fn point(rtt: Option<f32>, sent: u32, lost: u32, state: u8) -> Point {
        Point {
            sent,
            lost,
            rtt_ms: rtt,
            jitter_ms: rtt.map(|_| 0.0),
            loss_pct: (sent > 0).then(|| 100.0 * lost as f32 / sent as f32),
            state,
        }
    }

    #[test]
    fn a_chart_marks_rtt_loss_and_the_down_spell() {
        let mut points = vec![point(Some(10.0), 10, 0, UP); 6];
        points.push(point(None, 10, 10, DOWN));
        points.push(point(None, 10, 10, DOWN));
        points.push(Point::default());
        points.push(point(Some(40.0), 10, 5, DEGRADED));
        let s = Series {
            link: "wan1".into(),
            step_s: 10,
            start: 1_796_000_000.0,
            points,
        };
        let c = chart(&s, 80, false);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(
            lines[0],
            "wan1: 2026-11-30 00:53:20 to 2026-11-30 00:55:00 UTC, 10 s per column"
        );
        assert!(
            lines[1].starts_with("  rtt   ▃▃▃▃▃▃   █  max 40.0 ms"),
            "{c}"
        );
        assert!(
            lines[2].starts_with("  loss  ▁▁▁▁▁▁██ ▅  scale 0-100 %, mean 27.8 %"),
            "{c}"
        );
        assert!(lines[3].starts_with("  state ──────██ ≈  "), "{c}");
        // Narrower than the buckets: merged two by two, the worst state kept.
        let c = chart(&s, LABEL + 5, true);
        assert!(
            c.lines().nth(1).unwrap().starts_with("  rtt   --- @"),
            "{c}"
        );
        assert!(
            c.lines().nth(3).unwrap().starts_with("  state ---X~"),
            "{c}"
        );
        assert!(
            c.lines().next().unwrap().ends_with("20 s per column"),
            "{c}"
        );
    }

    #[test]
    fn the_outage_report_sums_downtime_per_link() {
        let now = 1_796_000_000.0;
        let list = vec![
            Outage {
                link: "wan1".into(),
                start: now - 3000.0,
                end: Some(now - 2938.0),
                reason: "3/3 targets silent".into(),
                flows: 12,
                tcp_resets: 3,
            },
            Outage {
                link: "wan2".into(),
                start: now - 100.0,
                end: None,
                reason: "carrier lost".into(),
                flows: 0,
                tcp_resets: 0,
            },
        ];
        let r = outages(&list, &["wan1".into(), "wan2".into()], 3600.0, now);
        assert!(
            r.contains(
                "wan1         2026-11-30 00:03:20      1m 02s  12 (3 TCP reset)  3/3 targets silent"
            ),
            "{r}"
        );
        assert!(r.contains("1m 40s so far"), "{r}");
        assert!(
            r.contains("wan1         1 outage, down 1m 02s, available 98.278 %"),
            "{r}"
        );
        assert!(
            r.contains("wan2         1 outage, down 1m 40s, available 97.222 %"),
            "{r}"
        );
        assert!(
            outages(&[], &["wan1".into()], 86400.0, now).starts_with("no outage in the last 1d 0h")
        );
    }

    #[test]
    fn times_and_spans_read_as_people_write_them() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400.0), "2000-02-29 00:00:00");
        // (a keepalived notify timestamp of this machine, `date` said 19:59:03 UTC)
        assert_eq!(utc(1_796_241_543.9), "2026-12-02 19:59:03");
        assert_eq!(span(45.2), "45 s");
        assert_eq!(span(185.0), "3m 05s");
        assert_eq!(span(7800.0), "2h 10m");
        assert_eq!(span(6.0 * 86400.0 + 4.0 * 3600.0), "6d 4h");
        assert_eq!(parse_since("24h"), Ok(86400));
        assert_eq!(parse_since("7d"), Ok(604_800));
        assert_eq!(parse_since("90"), Ok(90));
        for bad in ["", "8d", "1w", "h", "0s", "-1h"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
        assert_eq!(state_name(DOWN), "down");
    }
}
