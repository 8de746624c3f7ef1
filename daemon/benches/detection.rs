//! Detection quality of the default configuration, simulated with a virtual clock and seeded
//! loss: blackhole detection time over every phase of the probe schedule, false `down`
//! transitions under random loss over 24 simulated hours, probe traffic, and flapping.
//! Run with `cargo bench -p uplinkd --bench detection`.

use std::time::{Duration, Instant};

use uplinkd::config;
use uplinkd::engine::sim::{Rng, Sim};
use uplinkd::engine::{LinkState, Transition};

const CONFIG: &str = r#"
[[link]]
name = "fiber"
interface = "wan1"
targets = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]

[[link]]
name = "lte"
interface = "wan2"
priority = 2
targets = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]

[lan]
interfaces = ["lan0"]
"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn link0(t: Vec<Transition>) -> Vec<Transition> {
    t.into_iter().filter(|t| t.link == 0).collect()
}

fn main() {
    let cfg = config::parse(CONFIG).expect("bench config");
    println!(
        "default config: interval {:?}, fast_interval {:?}, timeout {:?}, misses {}, quorum all 3 targets",
        cfg.probe.interval, cfg.probe.fast_interval, cfg.probe.timeout, cfg.detection.misses
    );
    println!(
        "worst case from the settings: {:?}\n",
        cfg.worst_case_detection()
    );

    // Blackhole at every millisecond of the calm interval; RTT 10 ms.
    let mut times = Vec::new();
    for phase in 0..cfg.probe.interval.as_millis() as u64 {
        let t0 = Instant::now();
        let mut sim = Sim::new(cfg.clone(), t0);
        let hole = t0 + Duration::from_secs(10) + ms(phase);
        let tr = link0(sim.run(hole + Duration::from_secs(3), |l, _, sent| {
            (l != 0 || sent + ms(10) < hole).then_some(ms(10))
        }));
        let down = tr
            .iter()
            .find(|t| t.to == LinkState::Down)
            .expect("detected");
        times.push(down.at - hole);
    }
    times.sort();
    let pct = |p: usize| times[(times.len() - 1) * p / 100].as_millis();
    println!(
        "silent blackhole -> down over {} phases: min {} ms, median {} ms, p99 {} ms, worst {} ms",
        times.len(),
        pct(0),
        pct(50),
        pct(99),
        pct(100)
    );

    // False downs: 24 simulated hours per loss level, independent random loss on every probe.
    println!(
        "\n{:>6} {:>10} {:>12} {:>10} {:>14}",
        "loss", "downs/24h", "degraded/24h", "probes/s", "sim time (s)"
    );
    for pct in [0, 10, 20, 30] {
        let wall = Instant::now();
        let t0 = Instant::now();
        let mut sim = Sim::new(cfg.clone(), t0);
        let mut rng = Rng::new(pct + 1);
        let day = Duration::from_secs(86_400);
        let tr = link0(sim.run(t0 + day, |l, _, _| {
            (l != 0 || rng.percent() >= pct).then_some(ms(15))
        }));
        let downs = tr.iter().filter(|t| t.to == LinkState::Down).count();
        let degraded = tr.iter().filter(|t| t.to == LinkState::Degraded).count();
        // Link 1 is healthy and probed calmly: subtract its share to get link 0's rate.
        let calm = 3.0 / cfg.probe.interval.as_secs_f64();
        let rate = sim.sent as f64 / day.as_secs_f64() - calm;
        println!(
            "{:>5}% {:>10} {:>12} {:>10.1} {:>14.1}",
            pct,
            downs,
            degraded,
            rate,
            wall.elapsed().as_secs_f64()
        );
    }

    // Flapping: 1 Hz (500 ms dead / 500 ms alive) and 0.1 Hz (5 s / 5 s), 10 minutes each.
    println!();
    for period in [1_000u64, 10_000] {
        let t0 = Instant::now();
        let mut sim = Sim::new(cfg.clone(), t0);
        sim.run(t0 + Duration::from_secs(5), |_, _, _| Some(ms(5)));
        let start = sim.now;
        let tr = link0(sim.run(start + Duration::from_secs(600), |l, _, sent| {
            let dead = (sent - start).as_millis() as u64 % period < period / 2;
            (l != 0 || !dead).then_some(ms(5))
        }));
        let count = |s: LinkState| tr.iter().filter(|t| t.to == s).count();
        let (ups, downs, degraded) = (
            count(LinkState::Up),
            count(LinkState::Down),
            count(LinkState::Degraded),
        );
        println!(
            "flapping every {:>5} ms for 10 min ({} dead spells): {downs} down, {degraded} degraded, {ups} back up",
            period,
            600_000 / period
        );
    }
}
