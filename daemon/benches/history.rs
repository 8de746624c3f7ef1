//! The link history's cost: memory of 16 links with a full week (counted by the allocator),
//! the time a probe's record takes, and the size and time of the file it is kept in.
//! Run with `cargo bench -p uplinkd --bench history`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use uplinkd::history::{History, DOWN, UP};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: every call is passed on to the system allocator unchanged; only the count is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const LINKS: usize = 16;
const T0: f64 = 1_796_000_000.0;
/// A probe per link every 2.5 s (3 targets at the calm 400 ms interval are 7.5 a second; the
/// history's size does not depend on the rate).
const EVERY: f64 = 2.5;

fn main() {
    let names: Vec<String> = (0..LINKS).map(|i| format!("wan{i}")).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut h = History::new(&names);
    let empty = LIVE.load(Ordering::Relaxed) - before;
    let week = 7.0 * 86400.0;
    let start = Instant::now();
    let mut n = 0u64;
    let mut t = T0;
    while t < T0 + week {
        for l in 0..LINKS {
            let lost = (n % 97) == 0;
            h.probe(l, t, (!lost).then_some(8.0 + (n % 13) as f64), UP);
            n += 1;
        }
        if (n / LINKS as u64) % 20_000 == 0 {
            h.transition(n as usize % LINKS, t, "down", "bench");
            h.transition(n as usize % LINKS, t + 30.0, "up", "bench");
        }
        t += EVERY;
    }
    let per_probe = start.elapsed().as_secs_f64() / n as f64;
    h.transition(0, t, "down", "bench");
    let full = LIVE.load(Ordering::Relaxed) - before;
    let dir = std::env::temp_dir().join(format!("uplinkd-bench-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("history.json");
    let s = Instant::now();
    h.save(&path).expect("save");
    let save_ms = s.elapsed().as_secs_f64() * 1000.0;
    let size = std::fs::metadata(&path).expect("saved").len();
    let s = Instant::now();
    let back = History::load(&path, &names).expect("load");
    let load_ms = s.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(back.outages(0.0), h.outages(0.0));
    assert!(back.outages(0.0).iter().any(|o| o.end.is_none()));
    let _ = DOWN;
    std::fs::remove_dir_all(&dir).expect("clean up");
    println!(
        "history of {LINKS} links, a week of probes ({n} records, one per link every {EVERY} s):"
    );
    println!("  heap, empty rings:             {:>9} bytes", empty);
    println!(
        "  heap, full week and outages:   {:>9} bytes ({:.0} KB)",
        full,
        full as f64 / 1024.0
    );
    println!(
        "  per probe recorded:            {:>9.0} ns",
        per_probe * 1e9
    );
    println!("  file:                          {:>9} bytes, written in {save_ms:.1} ms, read in {load_ms:.1} ms", size);
}
