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
    /// With --config: write keepalived.conf, conntrackd.conf and keepalived's notify script
    /// into DIR, derived from the configuration's [ha], its links and this router's addresses
    /// (run it on each router), then exit.
    #[arg(long, value_name = "DIR", requires = "config")]
    render_ha: Option<PathBuf>,
    /// With --config: write 1 into [ha] fault_file and exit (for the unit's ExecStopPost, so
    /// keepalived hands the LAN to the peer however uplinkd ended). Without [ha]: nothing.
    #[arg(long, requires = "config", conflicts_with = "render_ha")]
    ha_fault: bool,
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
                    let gw6 = l
                        .gateway6
                        .map_or(String::new(), |g| format!(", IPv6 via {g}"));
                    println!(
                        "  link {}: interface {}, mark {:#x}, table {}{vip}{gw6}",
                        l.name, l.interface, l.mark, l.table
                    );
                }
                if let Some(ha) = &c.ha {
                    println!(
                        "  ha: master while {} is local; track files {} and {}; handover {} ms; \
                         marks {}",
                        ha.lan_vip,
                        ha.weight_file.display(),
                        ha.fault_file.display(),
                        ha.handover.as_millis(),
                        uplinkd::config::fence::fingerprint(&c)
                    );
                    println!(
                        "  ha (--render-ha): VRRP id {}, priority {}, advert {} ms, preempt_delay \
                         {} ms, {}",
                        ha.vrid,
                        ha.priority,
                        ha.advert.as_millis(),
                        ha.preempt_delay.as_millis(),
                        ha.sync
                            .as_ref()
                            .map_or("no sync link".into(), |(i, p)| format!(
                                "conntrackd syncs over {i} with {p}"
                            ))
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
    if let Some(dir) = args.render_ha {
        return render_ha(&path, &dir);
    }
    if args.ha_fault {
        return match uplinkd::config::load(&path).map(|c| c.ha) {
            Ok(Some(ha)) => match uplinkd::supervisor::ha::fault(&ha) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("uplinkd: {e}");
                    ExitCode::FAILURE
                }
            },
            Ok(None) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
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

/// `--render-ha DIR`: the files, each written beside its place and renamed over it.
fn render_ha(path: &std::path::Path, dir: &std::path::Path) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("uplinkd: cannot render the pair's configuration: {e}");
        ExitCode::FAILURE
    };
    let config = match uplinkd::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let own = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(conn);
                Ok(uplinkd::dataplane::monitor::local_addrs(&handle).await?)
            })
        });
    let own = match own {
        Ok(o) => o,
        Err(e) => return fail(&format!("cannot read this router's addresses: {e}")),
    };
    // Not loaded yet (no flow ever tracked): the kernel's default on this size of machine.
    let conntrack_max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(262_144);
    let files = match uplinkd::config::render::ha(&config, &own, conntrack_max, dir, path) {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return fail(&format!("{}: {e}", dir.display()));
    }
    for f in &files {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let to = dir.join(f.name);
        let tmp = dir.join(format!(".{}.tmp", f.name));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if f.executable { 0o755 } else { 0o644 })
            .open(&tmp)
            .and_then(|mut w| w.write_all(f.text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &to));
        if let Err(e) = written {
            return fail(&format!("{}: {e}", to.display()));
        }
        println!("wrote {}", to.display());
    }
    println!(
        "start, in this order: conntrackd -C {d}/conntrackd.conf; uplinkd --config {c}; \
         keepalived -f {d}/keepalived.conf",
        d = dir.display(),
        c = path.display()
    );
    ExitCode::SUCCESS
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
