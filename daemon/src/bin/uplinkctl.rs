//! `uplinkctl`: query a running uplinkd over its status socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use uplinkd::control::{self, Status};

/// Query a running uplinkd.
///
/// Exit codes: 0 ok, 1 the daemon answered with an error, 2 cannot connect.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Control socket of the daemon.
    #[arg(long, value_name = "PATH", default_value = uplinkd::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show every link: state, since when and why, RTT, loss, and where new flows go.
    Status {
        /// Print the daemon's JSON status object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Command::Status { json } = args.command;
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
    let reply = match runtime.block_on(control::request(&args.socket, "status")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "uplinkctl: cannot talk to uplinkd at {}: {e}",
                args.socket.display()
            );
            return ExitCode::from(2);
        }
    };
    match (reply.ok, reply.status) {
        (true, Some(s)) => {
            if json {
                match serde_json::to_string_pretty(&s) {
                    Ok(t) => println!("{t}"),
                    Err(e) => {
                        eprintln!("uplinkctl: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{}", table(&s));
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "uplinkctl: {}",
                reply.error.unwrap_or_else(|| "empty reply".into())
            );
            ExitCode::from(1)
        }
    }
}

fn table(s: &Status) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
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
            l.state.clone(),
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
        s.steer_to.as_deref().unwrap_or("(none)"),
        s.worst_case_detection_ms
    ));
    out
}
