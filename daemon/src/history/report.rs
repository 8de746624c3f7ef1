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

/// The read-only status page (`/` on the metrics listener): each link's state, an SVG chart of
/// `series` (RTT line, loss bars, a band of its states) and the outages. One document: no
/// script, no style sheet or font from elsewhere.
pub fn page(
    links: &[(String, String, String)],
    series: &[Series],
    list: &[Outage],
    now: f64,
) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>uplinkd</title>\
         <style>body{font-family:sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left}\
         .up{color:#1a7f37}.degraded{color:#b35900}.down{color:#c62828}</style></head><body>\n",
    );
    let _ = writeln!(out, "<h1>uplinkd</h1><p>{} UTC</p>", utc(now));
    for (name, state, reason) in links {
        let _ = writeln!(
            out,
            "<h2 id=\"link-{n}\">{n} <span class=\"{s}\">{s}</span></h2><p>{r}</p>",
            n = html(name),
            s = html(state),
            r = html(reason)
        );
        match series.iter().find(|s| s.link == *name) {
            Some(s) if !s.points.is_empty() => out.push_str(&svg(s)),
            _ => out.push_str("<p>no probes yet</p>\n"),
        }
    }
    out.push_str("<h2>Outages</h2>\n");
    if list.is_empty() {
        out.push_str("<p>none in the last week</p>\n");
    } else {
        out.push_str("<table id=\"outages\"><tr><th>link</th><th>start (UTC)</th><th>duration</th><th>flows</th><th>reason</th></tr>\n");
        for o in list.iter().rev() {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html(&o.link),
                utc(o.start),
                o.end
                    .map_or(format!("{} so far", span(now - o.start)), |e| span(
                        e - o.start
                    )),
                o.flows,
                html(&o.reason)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</body></html>\n");
    out
}

/// One link's chart: 720 x 160, RTT as a line scaled to its maximum, loss as bars from the
/// bottom (0-100 %), and a band of the states below.
fn svg(s: &Series) -> String {
    const W: f64 = 720.0;
    const H: f64 = 120.0;
    let n = s.points.len() as f64;
    let x = |i: usize| i as f64 * W / n;
    let max = s
        .points
        .iter()
        .filter_map(|p| p.rtt_ms)
        .fold(0.0f32, f32::max)
        .max(0.001);
    // The RTT line breaks where no probe was answered.
    let mut lines: Vec<String> = vec![String::new()];
    let mut bars = String::new();
    let mut band = String::new();
    for (i, p) in s.points.iter().enumerate() {
        match p.rtt_ms {
            Some(r) => {
                let y = H - f64::from(r / max) * (H - 10.0);
                if let Some(l) = lines.last_mut() {
                    let _ = write!(l, "{:.1},{y:.1} ", x(i) + W / n / 2.0);
                }
            }
            None if lines.last().is_some_and(|l| !l.is_empty()) => lines.push(String::new()),
            None => {}
        }
        if let Some(l) = p.loss_pct.filter(|&l| l > 0.0) {
            let h = f64::from(l) / 100.0 * H;
            let _ = write!(
                bars,
                "<rect class=\"loss\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#e57373\"/>",
                x(i),
                H - h,
                W / n
            );
        }
        let color = match p.state {
            UP => "#66bb6a",
            DEGRADED => "#ffa726",
            DOWN => "#c62828",
            _ => continue,
        };
        let _ = write!(
            band,
            "<rect class=\"state-{}\" x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"12\" fill=\"{color}\"/>",
            state_name(p.state),
            x(i),
            H + 8.0,
            W / n + 0.5
        );
    }
    let end = s.start + n * f64::from(s.step_s);
    format!(
        "<svg class=\"chart\" data-link=\"{link}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"160\" viewBox=\"0 0 {W} 160\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#f7f7f7\"/>{bars}\
         {line}{band}\
         <text x=\"4\" y=\"12\" font-size=\"11\">RTT max {max:.1} ms; loss bars 0-100 %</text>\
         <text x=\"4\" y=\"154\" font-size=\"11\">{from} UTC</text>\
         <text x=\"{W}\" y=\"154\" font-size=\"11\" text-anchor=\"end\">{to} UTC, {step} per step</text></svg>\n",
        link = html(&s.link),
        line = lines
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| format!(
                "<polyline class=\"rtt\" points=\"{}\" fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\"/>",
                l.trim_end()
            ))
            .collect::<String>(),
        from = utc(s.start),
        to = utc(end),
        step = span(f64::from(s.step_s)),
    )
}

/// Text for HTML (element content and quoted attributes).
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
    fn the_page_charts_each_link_and_escapes_what_it_did_not_write() {
        let s = Series {
            link: "wan1".into(),
            step_s: 10,
            start: 1_796_000_000.0,
            points: vec![
                point(Some(10.0), 10, 0, UP),
                point(None, 10, 10, DOWN),
                point(Some(20.0), 10, 5, DEGRADED),
            ],
        };
        let links = vec![
            (
                "wan1".to_string(),
                "down".to_string(),
                "<script>alert(1)</script> & co".to_string(),
            ),
            ("wan2".to_string(), "up".to_string(), String::new()),
        ];
        let list = vec![Outage {
            link: "wan1".into(),
            start: 1_796_000_010.0,
            end: None,
            reason: "a \"quoted\" <reason>".into(),
            flows: 4,
            tcp_resets: 1,
        }];
        let p = page(&links, &[s], &list, 1_796_000_040.0);
        assert!(p.starts_with("<!DOCTYPE html>"));
        assert_eq!(
            p.matches("<svg class=\"chart\"").count(),
            1,
            "wan2 has no probes: {p}"
        );
        // Broken where no probe was answered.
        assert_eq!(p.matches("<polyline class=\"rtt\"").count(), 2, "{p}");
        assert!(p.contains("points=\"120.0,65.0\""), "{p}");
        assert!(p.contains("points=\"600.0,10.0\""), "{p}");
        assert_eq!(p.matches("class=\"loss\"").count(), 2);
        assert!(p.contains("class=\"state-down\""));
        assert!(p.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"));
        assert!(!p.contains("<script"));
        assert!(p.contains("a &quot;quoted&quot; &lt;reason&gt;"));
        assert!(p.contains("30 s so far"));
        assert!(
            !p.contains("http://") || p.matches("http://").count() == 1,
            "only the SVG namespace"
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
