//! `uplinkctl`: query a running uplinkd over its status socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use uplinkd::control::{epoch_now, Connection, Event, Status};
use uplinkd::history::report;

/// Query and steer a running uplinkd over its control socket.
///
/// Exit codes: 0 ok, 1 the daemon answered with an error, 2 cannot connect or no answer within
/// the timeout.
#[derive(Parser)]
#[command(version, long_about)]
struct Args {
    /// Control socket of the daemon.
    #[arg(long, value_name = "PATH", default_value = uplinkd::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Give up (exit 2) when the daemon has not answered within this many seconds; for watch,
    /// this bounds the first reply, not the stream of events after it.
    #[arg(long, global = true, value_name = "SECONDS", default_value = "5", value_parser = seconds)]
    timeout: Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show every link: state, for how long and why, RTT, jitter, loss, silent targets, and where
    /// new flows go.
    Status {
        /// Print the daemon's JSON status object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow transitions and actions (purges, steering changes, drains, reloads) as they
    /// happen, one line each, until interrupted.
    Watch {
        /// Print each event as the daemon's JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Each link's quality over time: RTT and loss sparklines with the down and degraded spells
    /// marked, sized to the terminal (10 s per bucket for the last hour, 1 min for a day, 15 min
    /// for a week).
    History {
        /// Only this link.
        link: Option<String>,
        /// How far back: 1h, 24h, 7d (or a number with s, m, h or d).
        #[arg(long, default_value = "1h", value_parser = since)]
        since: u64,
        /// Plain ASCII instead of Unicode blocks.
        #[arg(long)]
        ascii: bool,
        /// Print the daemon's JSON buckets instead.
        #[arg(long)]
        json: bool,
    },
    /// Every outage: link, start, duration, reason and the flows it cost; then each link's
    /// count, downtime and availability.
    Outages {
        /// How far back: 1h, 24h, 7d (or a number with s, m, h or d).
        #[arg(long, default_value = "7d", value_parser = since)]
        since: u64,
        /// Print the daemon's JSON list instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the metrics in Prometheus text format.
    Metrics,
    /// Re-read the configuration file; on any error the running configuration stays (root only).
    Reload,
    /// Take a link out of service for maintenance: it gets no new flows (root only).
    Drain {
        /// The link's name.
        link: String,
        /// Also reset its flows now, so their clients reconnect through another link.
        #[arg(long)]
        reset: bool,
    },
    /// Put a drained link back in service (root only).
    Undrain {
        /// The link's name.
        link: String,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let req = match &args.command {
        Cmd::Completions { shell } => {
            let mut cmd = <Args as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "uplinkctl", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Cmd::Status { .. } => serde_json::json!({"v": 1, "cmd": "status"}),
        Cmd::Watch { .. } => serde_json::json!({"v": 1, "cmd": "watch"}),
        Cmd::Metrics => serde_json::json!({"v": 1, "cmd": "metrics"}),
        Cmd::History { link, since, .. } => {
            serde_json::json!({"v": 1, "cmd": "history", "link": link, "since_s": since})
        }
        Cmd::Outages { since, .. } => {
            serde_json::json!({"v": 1, "cmd": "outages", "since_s": since})
        }
        Cmd::Reload => serde_json::json!({"v": 1, "cmd": "reload"}),
        Cmd::Drain { link, reset } => {
            serde_json::json!({"v": 1, "cmd": "drain", "link": link, "reset": reset})
        }
        Cmd::Undrain { link } => serde_json::json!({"v": 1, "cmd": "undrain", "link": link}),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("uplinkctl: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        // Connecting can wait too: in the listen backlog of a daemon that does not accept.
        let exchange = async {
            let mut conn = Connection::open(&args.socket)
                .await
                .map_err(|e| format!("cannot talk to uplinkd at {}: {e}", args.socket.display()))?;
            let reply = conn
                .request(&req)
                .await
                .map_err(|e| format!("no answer from uplinkd at {}: {e}", args.socket.display()))?;
            Ok::<_, String>((conn, reply))
        };
        let (mut conn, reply) = match tokio::time::timeout(args.timeout, exchange).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => {
                eprintln!("uplinkctl: {e}");
                return ExitCode::from(2);
            }
            Err(_) => {
                eprintln!(
                    "uplinkctl: daemon not answering (no reply from {} within {:?})",
                    args.socket.display(),
                    args.timeout
                );
                return ExitCode::from(2);
            }
        };
        if !reply.ok {
            eprintln!(
                "uplinkctl: {}",
                reply
                    .error
                    .unwrap_or_else(|| "error without a message".into())
            );
            return ExitCode::from(1);
        }
        match args.command {
            Cmd::Status { json } => match reply.status {
                Some(s) if json => print_json(&s),
                Some(s) => print!("{}", table(&s)),
                None => return ExitCode::from(1),
            },
            Cmd::Metrics => print!("{}", reply.metrics.unwrap_or_default()),
            Cmd::History { json, ascii, .. } => {
                let series = reply.history.unwrap_or_default();
                if json {
                    print_json(&series);
                } else {
                    let width = terminal_width();
                    let charts: Vec<String> = series
                        .iter()
                        .map(|s| report::chart(s, width, ascii))
                        .collect();
                    print!("{}", charts.join("\n"));
                }
            }
            Cmd::Outages { json, since } => {
                let list = reply.outages.unwrap_or_default();
                if json {
                    print_json(&list);
                } else {
                    // The links to sum up: those of the status, then any other with an outage.
                    let mut links: Vec<String> = match conn
                        .request(&serde_json::json!({"v": 1, "cmd": "status"}))
                        .await
                    {
                        Ok(r) => r
                            .status
                            .map(|s| s.links.into_iter().map(|l| l.name).collect())
                            .unwrap_or_default(),
                        Err(_) => Vec::new(),
                    };
                    for o in &list {
                        if !links.contains(&o.link) {
                            links.push(o.link.clone());
                        }
                    }
                    print!(
                        "{}",
                        report::outages(&list, &links, since as f64, epoch_now())
                    );
                }
            }
            Cmd::Watch { json } => {
                while let Ok(Some(line)) = conn.line().await {
                    if json {
                        print!("{line}");
                    } else {
                        println!("{}", event_line(&line));
                    }
                }
                eprintln!("uplinkctl: the daemon closed the connection");
                return ExitCode::from(2);
            }
            _ => println!("{}", reply.message.unwrap_or_default()),
        }
        ExitCode::SUCCESS
    })
}

/// What the daemon answered, as indented JSON.
fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `--since`: 1h, 24h, 7d...
fn since(s: &str) -> Result<u64, String> {
    report::parse_since(s)
}

/// Columns of the terminal on standard output; 80 when it is not one.
#[allow(unsafe_code)]
fn terminal_width() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into the buffer it is given, which lives
    // for the call; on any error it writes nothing and ws_col stays 0.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// A positive number of seconds.
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 => Duration::try_from_secs_f64(x).map_err(|e| e.to_string()),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// One readable line for a watched event: the daemon's own log line for it.
fn event_line(line: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Watched {
        event: Event,
    }
    match serde_json::from_str::<Watched>(line) {
        Ok(w) => w.event.to_string(),
        Err(_) => line.trim_end().to_owned(),
    }
}

fn table(s: &Status) -> String {
    let now = epoch_now();
    let mut rows = vec![[
        "LINK",
        "INTERFACE",
        "STATE",
        "FOR",
        "RTT",
        "JITTER",
        "LOSS",
        "SILENT",
        "REASON",
    ]
    .map(String::from)
    .to_vec()];
    for l in &s.links {
        rows.push(vec![
            l.name.clone(),
            l.interface.clone(),
            if l.drained {
                format!("{} (drained)", l.state)
            } else {
                l.state.clone()
            },
            format!("{:.1}s", (now - l.since).max(0.0)),
            l.srtt_ms.map_or("-".into(), |r| format!("{r:.1}ms")),
            l.jitter_ms.map_or("-".into(), |r| format!("{r:.1}ms")),
            l.loss_pct.map_or("-".into(), |p| format!("{p:.0}%")),
            format!("{}/{}", l.silent_targets, l.targets),
            l.reason.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "new flows via: {}   worst-case blackhole detection: {} ms\n",
        if s.share.len() > 1 {
            s.share
                .iter()
                .map(|x| format!("{} {:.0}%", x.link, x.pct))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            s.steer_to.clone().unwrap_or_else(|| "(none)".into())
        },
        s.worst_case_detection_ms
    ));
    if s.policies.len() > 1 || s.policies.iter().any(|p| p.sticky_s.is_some()) {
        for p in &s.policies {
            let to = match p.share.as_slice() {
                [] if p.last_resort == "unreachable" => "refused (no link usable)".into(),
                [] => "default policy (no link usable)".into(),
                share => share
                    .iter()
                    .map(|x| format!("{} {:.0}%", x.link, x.pct))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let sticky = p
                .sticky_s
                .map_or(String::new(), |t| format!(", sticky {t}s"));
            out.push_str(&format!(
                "policy {} [{}{sticky}]: {to}\n",
                p.name,
                p.links.join(" > ")
            ));
        }
    }
    for l in &s.links {
        if let Some(p) = &l.problem {
            out.push_str(&format!("problem on {}: {p}\n", l.name));
        }
    }
    if let Some(ha) = &s.ha {
        let track = match (ha.weight, ha.fault) {
            (Some(w), Some(f)) => format!(
                "tells keepalived {w} usable{}",
                if f { ", fault" } else { "" }
            ),
            _ => "no verdict yet (keepalived keeps its initial state)".into(),
        };
        let peer = match ha.peer.as_ref().map(|p| &p.marks) {
            None => String::new(),
            Some(None) => " (the peer's uplinkd not heard)".into(),
            Some(Some(m)) if *m == ha.marks => " (the peer's: the same)".into(),
            Some(Some(m)) => {
                format!(" (the peer's DIFFER: {m}; replicated flows would take the wrong link)")
            }
        };
        out.push_str(&format!(
            "ha: {} (LAN {}), {track}; marks {}{peer}\n",
            ha.role, ha.lan_vip, ha.marks
        ));
    }
    if let Some(e) = &s.apply_error {
        out.push_str(&format!(
            "dataplane: the kernel refused the last apply, retrying: {e}\n"
        ));
    }
    out
}
