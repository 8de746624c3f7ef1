//! The loop itself, against the fake dataplane and scripted probes, in paused tokio time: what
//! the kernel is told to do, and in which order.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::dataplane::fake::Fake;
use crate::engine::ProbeRequest;

const CONFIG: &str = r#"
[[link]]
name = "fiber"
interface = "wan1"
targets = ["192.0.2.1", "192.0.2.2"]

[[link]]
name = "lte"
interface = "wan2"
priority = 2
failback = "drain"
targets = ["192.0.2.1", "192.0.2.2"]

[lan]
interfaces = ["lan0"]
"#;

/// Probes answered after 5 ms, except through the links in `dead`, which lose them all.
#[derive(Clone, Default)]
struct Scripted {
    dead: Arc<Mutex<Vec<usize>>>,
}

impl Scripted {
    fn kill(&self, link: usize) {
        self.dead.lock().unwrap().push(link);
    }

    fn heal(&self, link: usize) {
        self.dead.lock().unwrap().retain(|&l| l != link);
    }
}

impl Probes for Scripted {
    fn send(&mut self, req: ProbeRequest, tx: &mpsc::UnboundedSender<ProbeOutcome>) {
        let lost = self.dead.lock().unwrap().contains(&req.link);
        let tx = tx.clone();
        tokio::spawn(async move {
            // The default probe timeout is 300 ms.
            let wait = if lost { 300 } else { 5 };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let result = if lost {
                Err(crate::engine::ProbeFailure::Timeout)
            } else {
                Ok(Duration::from_millis(wait))
            };
            let _ = tx.send(ProbeOutcome {
                link: req.link,
                target: req.target,
                sent_at: req.sent_at,
                result,
            });
        });
    }

    fn reconfigure(&mut self, _config: &Config) {}
}

struct Harness {
    fake: Fake,
    probes: Scripted,
    sup: Supervisor<Fake, Scripted>,
    inputs: Inputs,
    commands: mpsc::Sender<(Command, oneshot::Sender<CommandReply>)>,
    stop: mpsc::Sender<Signal>,
    status: watch::Receiver<Status>,
    _kernel: mpsc::Sender<KernelEvent>,
    dir: PathBuf,
}

async fn harness(config: &str, name: &str) -> Harness {
    let dir = std::env::temp_dir().join(format!("uplinkd-sup-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("uplinkd.toml");
    std::fs::write(&path, config).unwrap();
    let cfg = crate::config::load(&path).unwrap();
    let fake = Fake::with_interfaces(&["wan1", "wan2", "lan0"]);
    let probes = Scripted::default();
    let (events, _) = broadcast::channel(64);
    let memory = dir.join("links.state");
    let sup = Supervisor::start(
        cfg,
        path,
        Some(memory),
        fake.clone(),
        probes.clone(),
        events,
    )
    .await
    .unwrap();
    let (kernel_tx, kernel) = mpsc::channel(4);
    let (commands, cmd_rx) = mpsc::channel(4);
    let (stop, signals) = mpsc::channel(4);
    let status = sup.status.subscribe();
    Harness {
        fake,
        probes,
        sup,
        inputs: Inputs {
            kernel,
            commands: cmd_rx,
            signals,
        },
        commands,
        stop,
        status,
        _kernel: kernel_tx,
        dir,
    }
}

impl Harness {
    /// Run the loop while `script` runs, then stop it.
    async fn run(mut self, script: impl std::future::Future<Output = ()>) -> Fake {
        let stop = self.stop.clone();
        let script = async {
            script.await;
            stop.send(Signal::Stop).await.unwrap();
        };
        let (r, ()) = tokio::join!(self.sup.run(self.inputs), script);
        r.unwrap();
        std::fs::remove_dir_all(&self.dir).unwrap();
        self.fake
    }
}

/// Wait (in virtual time, at most a minute) until `f` holds for the status.
async fn until(status: &mut watch::Receiver<Status>, what: &str, f: impl Fn(&Status) -> bool) {
    let wait = status.wait_for(|s| f(s));
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
}

fn state(s: &Status, link: usize) -> &str {
    &s.links[link].state
}

fn position(calls: &[String], call: &str) -> usize {
    calls
        .iter()
        .position(|c| c == call)
        .unwrap_or_else(|| panic!("no {call:?} in {calls:#?}"))
}

#[tokio::test(start_paused = true)]
async fn a_blackhole_is_steered_around_before_the_dead_links_flows_are_purged() {
    let h = harness(CONFIG, "blackhole").await;
    let (probes, mut status, fake) = (h.probes.clone(), h.status.clone(), h.fake.clone());
    let fake = h
        .run(async {
            until(&mut status, "both up", |s| {
                state(s, 0) == "up" && state(s, 1) == "up"
            })
            .await;
            let policy = |mark: &str| {
                format!("chain policy_default {{\n    meta mark & 0xff00 == 0x0 meta mark set meta mark & 0xffff00ff | {mark}\n")
            };
            assert!(fake.state().kernel.contains(&policy("0x200")), "new flows marked for fiber");
            probes.kill(0);
            until(&mut status, "fiber purged", |s| {
                s.links[0].flows_purged_total > 0 || {
                    s.links[0]
                        .last_transition
                        .as_ref()
                        .is_some_and(|t| t.purge_ms.is_some())
                }
            })
            .await;
            let s = status.borrow().clone();
            assert_eq!(s.steer_to.as_deref(), Some("lte"));
            assert!(s.links[0]
                .last_transition
                .as_ref()
                .unwrap()
                .steer_ms
                .is_some());
            let kernel = fake.state().kernel.clone();
            assert!(kernel.contains(&policy("0x1900")), "{kernel}");
            assert!(kernel.contains("ip rule add pref 1004 iif lo lookup 124"), "{kernel}");
        })
        .await;
    let calls = fake.calls();
    assert!(
        position(&calls, "apply via lte") < position(&calls, "purge fiber"),
        "{calls:#?}"
    );
    assert_eq!(calls.last().map(String::as_str), Some("remove_all"));
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_a_link_it_knew_was_down_and_steers_around_it_from_the_first_apply() {
    let h = harness(CONFIG, "restart-before").await;
    let (probes, mut status) = (h.probes.clone(), h.status.clone());
    let saved = h.dir.join("links.state");
    let kept = std::env::temp_dir().join(format!("uplinkd-sup-memory-{}", std::process::id()));
    let copy = kept.clone();
    h.run(async move {
        until(&mut status, "both up", |s| {
            state(s, 0) == "up" && state(s, 1) == "up"
        })
        .await;
        probes.kill(0);
        until(&mut status, "fiber down", |s| state(s, 0) == "down").await;
        // What a SIGKILL now leaves behind.
        std::fs::copy(&saved, &copy).unwrap();
    })
    .await;
    let dir =
        std::env::temp_dir().join(format!("uplinkd-sup-restart-after-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::rename(&kept, dir.join("links.state")).unwrap();
    let h = harness(CONFIG, "restart-after").await;
    let calls = h.fake.calls();
    let first = calls.iter().find(|c| c.starts_with("apply")).unwrap();
    assert_eq!(first, "apply via lte", "{calls:#?}");
    let s = h.status.borrow().clone();
    assert_eq!(state(&s, 0), "down");
    assert!(
        s.links[0].reason.contains("before the restart"),
        "{}",
        s.links[0].reason
    );
    h.run(async {}).await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_purged_when_every_link_is_down() {
    let h = harness(CONFIG, "alldown").await;
    let (probes, mut status) = (h.probes.clone(), h.status.clone());
    let fake = h.fake.clone();
    let fake_in = fake.clone();
    h.run(async move {
        until(&mut status, "both up", |s| {
            state(s, 0) == "up" && state(s, 1) == "up"
        })
        .await;
        // lte first (its flows move to fiber), then fiber: nowhere left to go.
        probes.kill(1);
        until(&mut status, "lte down", |s| state(s, 1) == "down").await;
        let before = fake_in
            .calls()
            .iter()
            .filter(|c| c.starts_with("purge"))
            .count();
        assert_eq!(before, 1, "lte's flows moved to fiber");
        probes.kill(0);
        until(&mut status, "fiber down", |s| state(s, 0) == "down").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = fake_in
            .calls()
            .iter()
            .filter(|c| c.starts_with("purge"))
            .count();
        assert_eq!(after, 1, "{:#?}", fake_in.calls());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn failback_drains_the_backup_only_after_new_flows_are_back_on_the_preferred_link() {
    let h = harness(CONFIG, "failback").await;
    let (probes, mut status) = (h.probes.clone(), h.status.clone());
    let fake = h
        .run(async {
            until(&mut status, "both up", |s| {
                state(s, 0) == "up" && state(s, 1) == "up"
            })
            .await;
            probes.kill(0);
            until(&mut status, "fiber down", |s| state(s, 0) == "down").await;
            probes.heal(0);
            until(&mut status, "fiber back", |s| {
                s.steer_to.as_deref() == Some("fiber")
            })
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        })
        .await;
    let calls = fake.calls();
    let drain = position(&calls, "purge lte");
    assert!(
        calls[position(&calls, "purge fiber")..drain].contains(&"apply via fiber".to_owned()),
        "the steering back to fiber is live before lte's flows are reset: {calls:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_the_health_of_unchanged_links() {
    let h = harness(CONFIG, "reload").await;
    let (probes, mut status, commands) = (h.probes.clone(), h.status.clone(), h.commands.clone());
    let path = h.dir.join("uplinkd.toml");
    h.run(async {
        until(&mut status, "both up", |s| {
            state(s, 0) == "up" && state(s, 1) == "up"
        })
        .await;
        probes.kill(1);
        until(&mut status, "lte down", |s| state(s, 1) == "down").await;
        let since = status.borrow().links[1].since;
        // A third link, and the first two swapped.
        let (fiber, rest) = CONFIG.split_at(CONFIG.find("[[link]]\nname = \"lte\"").unwrap());
        let (lte, lan) = rest.split_at(rest.find("[lan]").unwrap());
        let third = "[[link]]\nname = \"dsl\"\ninterface = \"wan3\"\ntargets = [\"192.0.2.1\"]\n";
        std::fs::write(&path, format!("{lte}{fiber}{third}{lan}")).unwrap();
        let (tx, rx) = oneshot::channel();
        commands.send((Command::Reload, tx)).await.unwrap();
        let reply = rx.await.unwrap();
        assert!(
            reply.as_ref().is_ok_and(|m| m.contains("3 links")),
            "{reply:?}"
        );
        let s = status.borrow().clone();
        let lte = s.links.iter().find(|l| l.name == "lte").unwrap();
        assert_eq!((lte.state.as_str(), lte.since), ("down", since));
        let fiber = s.links.iter().find(|l| l.name == "fiber").unwrap();
        assert_eq!(fiber.state, "up");
        // A broken file leaves the running configuration in place.
        std::fs::write(&path, "[[link]]\nname = 1\n").unwrap();
        let (tx, rx) = oneshot::channel();
        commands.send((Command::Reload, tx)).await.unwrap();
        assert!(rx.await.unwrap().is_err());
        assert_eq!(status.borrow().links.len(), 3);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_apply_is_reported_and_retried_and_the_purge_waits_for_it() {
    let h = harness(CONFIG, "retry").await;
    let (probes, mut status, fake) = (h.probes.clone(), h.status.clone(), h.fake.clone());
    let fake_in = fake.clone();
    let mut events = h.sup.events.subscribe();
    let fake = h
        .run(async move {
            until(&mut status, "both up", |s| {
                state(s, 0) == "up" && state(s, 1) == "up"
            })
            .await;
            fake_in.state().fail_applies = 3;
            probes.kill(0);
            until(&mut status, "the failure shows", |s| {
                s.apply_error.is_some()
            })
            .await;
            assert_eq!(
                status.borrow().steer_to.as_deref(),
                Some("fiber"),
                "not live yet"
            );
            assert!(!fake_in.calls().iter().any(|c| c.starts_with("purge")));
            until(&mut status, "applied at last", |s| {
                s.apply_error.is_none() && s.steer_to.as_deref() == Some("lte")
            })
            .await;
        })
        .await;
    let calls = fake.calls();
    let failed: Vec<Event> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, Event::ApplyFailed { .. }))
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "said once while it keeps failing: {failed:?}"
    );
    assert!(position(&calls, "apply via lte") < position(&calls, "purge fiber"));
}

#[tokio::test(start_paused = true)]
async fn the_kernel_is_reread_when_the_ruleset_moved_and_otherwise_every_30_s() {
    let h = harness(CONFIG, "reconcile").await;
    let (mut status, fake) = (h.status.clone(), h.fake.clone());
    let counts = |f: &Fake| {
        let s = f.state();
        (s.verified, s.generation_checks)
    };
    h.run(async {
        until(&mut status, "both up", |s| {
            state(s, 0) == "up" && state(s, 1) == "up"
        })
        .await;
        // Quiet: the generation is read every 2 s, the kernel re-read once in 30 s at most.
        let (v0, g0) = counts(&fake);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (v1, g1) = counts(&fake);
        assert!(v1 - v0 <= 1, "{} re-reads in 20 quiet seconds", v1 - v0);
        assert!(g1 - g0 >= 9, "{} generation checks in 20 s", g1 - g0);
        // An edit moves the generation: re-read (and repaired) at the next check.
        fake.state().ruleset_edited = true;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let (v2, _) = counts(&fake);
        assert!(v2 > v1, "the edit was not re-read within 2 s");
        // The safety net: without any sign of change, still re-read within 30 s.
        tokio::time::sleep(Duration::from_secs(31)).await;
        let (v3, _) = counts(&fake);
        assert!((1..=2).contains(&(v3 - v2)), "{} re-reads in 31 s", v3 - v2);
    })
    .await;
}
