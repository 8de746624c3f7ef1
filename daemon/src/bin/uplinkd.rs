//! `uplinkd`: the multi-WAN failover daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Multi-WAN failover: probes every WAN through that WAN only, steers new connections to the
/// best working uplink and flushes the dead uplink's connection-tracking state.
#[derive(Parser)]
#[command(
    version,
    after_help = "Environment: UPLINKD_LOG sets the log filter (`debug`, or TARGET=LEVEL pairs).\n\
                  Signals: SIGTERM or SIGINT stop the daemon and remove its nft table, rules and \
                  routes (unless cleanup_on_exit = false)."
)]
struct Args {
    /// Run with this configuration file (foreground, logs to stderr).
    #[arg(long, value_name = "FILE", required_unless_present = "check_config")]
    config: Option<PathBuf>,
    /// Validate FILE, print every problem with its line, exit 0 (valid: also prints each link's
    /// mark and routing table) or 1.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Log line format: `text`, or `json` (one object per line, for log shippers).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// "1 policy", "2 policies".
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = args.check_config {
        return match uplinkd::config::load(&path) {
            Ok(c) => {
                println!(
                    "{}: ok ({}, {}, {}; worst-case blackhole detection {} ms)",
                    path.display(),
                    count(c.links.len(), "link", "links"),
                    count(c.policies.len(), "policy", "policies"),
                    count(c.rules.len(), "rule", "rules"),
                    c.worst_case_detection().as_millis()
                );
                for l in &c.links {
                    let vip = l
                        .public_vip
                        .map_or(String::new(), |v| format!(", SNAT to {v}"));
                    println!(
                        "  link {}: interface {}, mark {:#x}, table {}{vip}",
                        l.name, l.interface, l.mark, l.table
                    );
                }
                if let Some(ha) = &c.ha {
                    println!(
                        "  ha: master while {} is local; track files {} and {}; marks {}",
                        ha.lan_vip,
                        ha.weight_file.display(),
                        ha.fault_file.display(),
                        uplinkd::config::fence::fingerprint(c.dataplane.mark_mask, &c.links)
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = args.config else {
        return ExitCode::FAILURE;
    };
    init_logging(args.log_format == "json");
    let config = match uplinkd::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("uplinkd: refusing to start with an invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("uplinkd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(uplinkd::supervisor::run(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr. `UPLINKD_LOG` sets the filter (`LEVEL` or `TARGET=LEVEL`, comma-separated,
/// as in RUST_LOG); the netlink crates are quiet by default. Under journald (JOURNAL_STREAM set)
/// timestamps are left to the journal; colours only when stderr is a terminal.
fn init_logging(json: bool) {
    let filter: Targets = std::env::var("UPLINKD_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            Targets::new().with_default(LevelFilter::INFO).with_targets(
                ["netlink_proto", "netlink_sys", "rtnetlink"].map(|t| (t, LevelFilter::WARN)),
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false);
    // Colours only for a person at a terminal: files, pipes and other supervisors get plain
    // text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if json {
        builder.json().finish().with(filter).init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder
            .without_time()
            .with_ansi(false)
            .finish()
            .with(filter)
            .init();
    } else {
        builder.with_ansi(ansi).finish().with(filter).init();
    }
}
