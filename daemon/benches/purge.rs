//! Purge and reset with a large conntrack table: 100,000 ESTABLISHED TCP entries (change with
//! UPLINKD_BENCH_FLOWS), half on the dead link. Prints each step's time and checks that the
//! other half is intact. It changes the kernel state of the namespace it runs in, so it runs only
//! when `testbed/bench-purge` has put it in a throwaway one (UPLINKD_BENCH_NETNS=1).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use uplinkd::config;
use uplinkd::dataplane::conntrack::{self, Flow, IPPROTO_TCP};
use uplinkd::dataplane::{nft, reset};
use uplinkd::engine::Engine;

const CONFIG: &str = r#"
[[link]]
name = "wan1"
interface = "wan1"
targets = ["203.0.113.10"]

[[link]]
name = "wan2"
interface = "wan2"
targets = ["203.0.113.10"]

[lan]
interfaces = ["lan0"]
"#;

/// Distinct flows: clients 10.99.x.y:port to servers 198.51.100.0/24:443.
fn flows(n: usize, offset: usize) -> Vec<Flow> {
    (offset..offset + n)
        .map(|i| Flow {
            proto: IPPROTO_TCP,
            src: IpAddr::V4(Ipv4Addr::new(
                10,
                99,
                (i / 60_000) as u8,
                ((i / 250) % 240) as u8 + 2,
            )),
            dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1)),
            sport: 1024 + (i % 60_000) as u16,
            dport: 443,
            tcp_state: Some(3),
            reply_dst: None,
        })
        .collect()
}

fn main() -> std::io::Result<()> {
    if std::env::var_os("UPLINKD_BENCH_NETNS").is_none() {
        println!("purge bench skipped: run it with testbed/bench-purge (root, throwaway network namespace)");
        return Ok(());
    }
    let total: usize = std::env::var("UPLINKD_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cfg = config::parse(CONFIG).expect("bench config");
    let engine = Engine::new(cfg.clone(), Instant::now());
    let d = engine.desired();
    nft::replace(&nft::render(&d, &[]), None, false)?;

    let half = total / 2;
    let t = Instant::now();
    let filled = conntrack::create(&flows(half, 0), d.links[0].mark, 600)
        .and_then(|()| conntrack::create(&flows(total - half, half), d.links[1].mark, 600));
    if let Err(e) = filled {
        // Most likely the table is full (nf_conntrack_max): the error says so.
        eprintln!("FAILED: cannot create {total} conntrack entries: {e}");
        let _ = nft::delete();
        std::process::exit(1);
    }
    println!(
        "created {total} entries in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let before1 = conntrack::dump_mark(d.links[1].mark, d.mark_mask)?.len();

    let t = Instant::now();
    let scope = reset::Scope {
        lan: vec![(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 0)), 16)],
        ..Default::default()
    };
    let r = match reset::purge(d.links[0].mark, d.mark_mask, d.tickle_mark, &scope, &[]) {
        Ok(r) => r,
        Err(e) => {
            // ENFILE is nf_tables' "set full": a set that rules update from the packet path
            // (our stale sets) holds 65,535 elements unless it was given a size.
            let why = if e.raw_os_error() == Some(libc::ENFILE) {
                format!("{e}: an nft set is full (the stale set takes {half} elements; a dynamic set without a size holds 65,535)")
            } else {
                e.to_string()
            };
            eprintln!("FAILED: purge of {half} flows out of {total}: {why}");
            let _ = nft::delete();
            std::process::exit(1);
        }
    };
    let all = t.elapsed();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!("\npurge of the dead link's flows out of {total} tracked:");
    println!(
        "  dump by mark         {:8.1} ms  ({} flows)",
        ms(r.dump),
        r.flows
    );
    println!(
        "  stale set, after dump {:7.1} ms  ({} TCP flows, inserted as the dump goes)",
        ms(r.stale),
        r.tcp_reset
    );
    println!("  flush by mark        {:8.1} ms", ms(r.flush));
    println!(
        "  purge (dump+set+flush) {:6.1} ms",
        ms(r.dump + r.stale + r.flush)
    );
    println!(
        "  tickle (1st round)   {:8.1} ms  ({} sent)",
        ms(r.tickle),
        r.tickled
    );
    println!("  total                {:8.1} ms", ms(all));

    let left0 = conntrack::dump_mark(d.links[0].mark, d.mark_mask)?.len();
    let left1 = conntrack::dump_mark(d.links[1].mark, d.mark_mask)?.len();
    println!(
        "\nafter: dead link {left0} entries (want 0); other link {left1} of {before1} (want all)"
    );
    nft::delete()?;
    if left0 != 0 || left1 != before1 || r.flows != half || r.tickled != r.tcp_reset {
        eprintln!("FAILED: collateral damage, incomplete purge or tickles not sent");
        std::process::exit(1);
    }
    Ok(())
}
