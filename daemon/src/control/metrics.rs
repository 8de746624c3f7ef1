//! Prometheus text exposition (version 0.0.4) of the status, for `uplinkctl metrics` and the
//! optional HTTP listener.

use std::fmt::Write;

use super::Status;

/// Every metric, one family after the other, labels escaped.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(
            out,
            "# HELP uplinkd_{name} {help}\n# TYPE uplinkd_{name} {kind}"
        );
        for (labels, v) in rows {
            let _ = writeln!(out, "uplinkd_{name}{labels} {v}");
        }
    };
    let per_link = |f: &dyn Fn(&super::LinkStatus) -> Option<f64>| -> Vec<(String, f64)> {
        s.links
            .iter()
            .filter_map(|l| f(l).map(|v| (format!("{{link=\"{}\"}}", escape(&l.name)), v)))
            .collect()
    };
    let states = ["unknown", "up", "degraded", "down"];
    let state_rows = s
        .links
        .iter()
        .flat_map(|l| {
            states.iter().map(move |st| {
                (
                    format!("{{link=\"{}\",state=\"{st}\"}}", escape(&l.name)),
                    f64::from(u8::from(l.state == *st)),
                )
            })
        })
        .collect();
    family(
        "link_state",
        "gauge",
        "1 for the state each link is in.",
        state_rows,
    );
    family(
        "link_drained",
        "gauge",
        "1 when the link was drained for maintenance.",
        per_link(&|l| Some(f64::from(u8::from(l.drained)))),
    );
    family(
        "link_rtt_seconds",
        "gauge",
        "Smoothed probe round-trip time.",
        per_link(&|l| l.srtt_ms.map(|v| v / 1000.0)),
    );
    family(
        "link_jitter_seconds",
        "gauge",
        "Mean deviation of the probe round-trip time.",
        per_link(&|l| l.jitter_ms.map(|v| v / 1000.0)),
    );
    family(
        "link_loss_ratio",
        "gauge",
        "Share of recent probes to answering targets that were lost.",
        per_link(&|l| l.loss_pct.map(|v| v / 100.0)),
    );
    family(
        "link_silent_targets",
        "gauge",
        "Targets that stopped answering.",
        per_link(&|l| Some(l.silent_targets as f64)),
    );
    family(
        "probes_sent_total",
        "counter",
        "Probes sent.",
        per_link(&|l| Some(l.probes_sent as f64)),
    );
    family(
        "probes_lost_total",
        "counter",
        "Probes unanswered, failed or answered with an error.",
        per_link(&|l| Some(l.probes_lost as f64)),
    );
    family(
        "transitions_total",
        "counter",
        "State changes of the link.",
        per_link(&|l| Some(l.transitions as f64)),
    );
    family(
        "flows_purged_total",
        "counter",
        "Conntrack entries purged when the link died or was drained.",
        per_link(&|l| Some(l.flows_purged_total as f64)),
    );
    family(
        "tcp_resets_total",
        "counter",
        "TCP clients reset when the link died or was drained.",
        per_link(&|l| Some(l.tcp_reset_total as f64)),
    );
    family(
        "sockets_aborted_total",
        "counter",
        "Router-local sockets aborted when the link died or was drained.",
        per_link(&|l| Some(l.sockets_aborted_total as f64)),
    );
    let steer = s
        .links
        .iter()
        .map(|l| {
            (
                format!("{{link=\"{}\"}}", escape(&l.name)),
                ratio(&s.share, &l.name),
            )
        })
        .collect();
    family(
        "steering_share",
        "gauge",
        "Share of new flows each link gets (0 to 1).",
        steer,
    );
    let policy = s
        .policies
        .iter()
        .flat_map(|p| {
            s.links.iter().map(move |l| {
                (
                    format!(
                        "{{policy=\"{}\",link=\"{}\"}}",
                        escape(&p.name),
                        escape(&l.name)
                    ),
                    ratio(&p.share, &l.name),
                )
            })
        })
        .collect();
    family(
        "policy_share",
        "gauge",
        "Share of each policy's new flows each link gets (0 to 1; all 0: none usable).",
        policy,
    );
    family(
        "apply_seconds",
        "gauge",
        "Duration of the newest dataplane apply.",
        s.last_apply_ms
            .map(|v| (String::new(), v / 1000.0))
            .into_iter()
            .collect(),
    );
    family(
        "applies_total",
        "counter",
        "Dataplane applies.",
        vec![(String::new(), s.applies as f64)],
    );
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Scrapes served at once. Each holds a file descriptor, which the daemon needs for its
/// probes, netlink and the control socket too; a connection beyond this is closed at once.
const MAX_SCRAPES: usize = 16;
/// A scraper must send its request head, and take the answer, within this time.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Serve over HTTP until the task is dropped: `/` the status page (each link's last hour and
/// the outages, see [`crate::history::report::page`]), any other path the metrics.
pub async fn listen(
    listener: tokio::net::TcpListener,
    status: tokio::sync::watch::Receiver<Status>,
    history: std::sync::Arc<std::sync::Mutex<crate::history::History>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of file descriptors, typically: accepting again at once would fail again.
                tracing::debug!("metrics listener: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (status, history) = (status.clone(), history.clone());
        tokio::spawn(async move {
            // The request head's first line names the path; the rest is ignored.
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(SCRAPE_TIMEOUT, conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => 0,
            };
            let page = buf[..n].starts_with(b"GET / ") || buf[..n].starts_with(b"GET /index.html ");
            let (kind, body) = if page {
                (
                    "text/html; charset=utf-8",
                    status_page(&status.borrow(), &history),
                )
            } else {
                ("text/plain; version=0.0.4", render(&status.borrow()))
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let answer = async {
                conn.write_all(head.as_bytes()).await?;
                conn.write_all(body.as_bytes()).await
            };
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer).await;
            drop(slot);
        });
    }
}

/// The status page now: the links as the status says, the last hour of their history and the
/// last week's outages.
fn status_page(s: &Status, history: &std::sync::Mutex<crate::history::History>) -> String {
    let now = super::epoch_now();
    let links: Vec<(String, String, String)> = s
        .links
        .iter()
        .map(|l| (l.name.clone(), l.state.clone(), l.reason.clone()))
        .collect();
    let (series, outages) = {
        let h = super::lock(history);
        (
            h.series(None, 3600.0, now).unwrap_or_default(),
            h.outages(now - 7.0 * 86400.0),
        )
    };
    crate::history::report::page(&links, &series, &outages, now)
}

/// The fraction (0 to 1) of new flows a share gives `link`.
fn ratio(share: &[super::Share], link: &str) -> f64 {
    share
        .iter()
        .find(|x| x.link == link)
        .map_or(0.0, |x| x.pct / 100.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::LinkStatus;
    use std::time::Duration;

    #[test]
    fn renders_every_family_with_labels() {
        let s = Status {
            steer_to: Some("fiber".into()),
            share: vec![crate::control::Share {
                link: "fiber".into(),
                weight: 1,
                pct: 100.0,
            }],
            links: vec![LinkStatus {
                name: "fiber".into(),
                state: "up".into(),
                srtt_ms: Some(12.0),
                probes_sent: 10,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&s);
        assert!(
            text.contains("uplinkd_link_state{link=\"fiber\",state=\"up\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("uplinkd_link_state{link=\"fiber\",state=\"down\"} 0\n"));
        assert!(text.contains("uplinkd_link_rtt_seconds{link=\"fiber\"} 0.012\n"));
        assert!(text.contains("uplinkd_probes_sent_total{link=\"fiber\"} 10\n"));
        assert!(
            text.contains("uplinkd_steering_share{link=\"fiber\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE uplinkd_transitions_total counter\n"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }

    /// Idle connections hold at most `MAX_SCRAPES` of the daemon's file descriptors (which the
    /// control socket needs too): one more is closed at once, and a scrape after the idle ones
    /// have timed out is answered.
    #[tokio::test]
    async fn idle_connections_cannot_take_every_file_descriptor() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, status) = tokio::sync::watch::channel(Status::default());
        let server = tokio::spawn(listen(listener, status, Default::default()));
        let mut idle = Vec::new();
        for _ in 0..MAX_SCRAPES {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut got)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "over the limit and not closed at once: {read:?}"
        );
        drop(idle);
        // The idle ones' slots come back as the server notices they closed.
        let scrape = async {
            loop {
                let mut c = TcpStream::connect(addr).await.unwrap();
                let mut got = String::new();
                if c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.is_ok()
                    && c.read_to_string(&mut got).await.is_ok()
                    && got.starts_with("HTTP/1.1 200 OK")
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), scrape)
            .await
            .expect("no scrape answered after the idle connections left");
        server.abort();
    }
}
