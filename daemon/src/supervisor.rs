//! The one event loop: owns the engine, reads the clock, drives probes, the dataplane and the
//! status socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};
use uplinkd_probes::{Binding, ProbeError, Prober, Target};

use crate::config::{Config, Failback, LastResort};
use crate::control::{self, Command, LinkStatus, Status, TransitionStatus};
use crate::dataplane::monitor::{self, KernelEvent};
use crate::dataplane::reset::{self, PurgeReport};
use crate::dataplane::Dataplane;
use crate::engine::{
    DesiredState, Engine, Event, LinkId, LinkState, ProbeFailure, ProbeOutcome, ProbeRequest,
    Steer, Transition,
};

/// How often the kernel state is re-read and repaired even when nothing happened (three cheap
/// netlink dumps; someone deleting our rules is repaired within this time).
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// Maps the monotonic clock to wall-clock time for status output.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    wall: SystemTime,
}

impl Clock {
    fn epoch_secs(&self, at: std::time::Instant) -> f64 {
        let t = self.wall + at.saturating_duration_since(self.start.into_std());
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

struct PurgeDone {
    link: LinkId,
    name: String,
    result: Result<PurgeReport, crate::dataplane::Error>,
}

/// Counters per link name (they survive reloads).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    transitions: u64,
    flows: u64,
    tcp: u64,
    sockets: u64,
}

/// Tell systemd (when it started us with Type=notify); harmless otherwise.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!("sd_notify: {e}");
    }
}

/// Read `path` again for a reload. Changes to the kernel footprint or the control socket would
/// orphan objects or clients, so they need a restart.
fn reload_config(path: &Path, running: &Config) -> Result<Config, String> {
    let new = crate::config::load(path).map_err(|e| e.to_string())?;
    if new.dataplane != running.dataplane
        || new.control != running.control
        || new.metrics != running.metrics
    {
        return Err("changes to [dataplane], [control] or [metrics] need a restart; the running configuration stays".into());
    }
    Ok(new)
}

/// Run until SIGTERM or SIGINT, then remove what we created (unless configured not to). `path`
/// is where the configuration came from, for reloads (SIGHUP or `uplinkctl reload`).
pub async fn run(mut config: Config, path: PathBuf) -> anyhow::Result<()> {
    let clock = Clock {
        start: Instant::now(),
        wall: SystemTime::now(),
    };
    let mut engine = Engine::new(config.clone(), clock.start.into_std());
    let mut dp = Dataplane::new(config.dataplane.table_base)?;

    // Interfaces that are down, without carrier or without an address right now start as down.
    let mut carriers = BTreeMap::new();
    for ev in monitor::snapshot(dp.handle())
        .await
        .context("cannot list interfaces")?
    {
        carriers.insert(ev.name.clone(), ev.up);
        carrier(&mut engine, &ev, Instant::now().into_std());
    }
    addresses(&mut engine, dp.handle(), Instant::now().into_std()).await;
    let mut desired = engine.desired();
    let report = dp
        .apply(&desired, true)
        .await
        .context("initial apply failed")?;
    if !report.missing_interfaces.is_empty() {
        warn!(
            "interfaces not present yet: {}",
            report.missing_interfaces.join(", ")
        );
    }
    info!(
        "dataplane ready: new flows via {} (nft {:.1} ms, routes {:.1} ms)",
        steer_name(&desired),
        ms(report.nft),
        ms(report.routes)
    );

    let (kernel_tx, mut kernel_rx) = mpsc::channel(64);
    monitor::spawn(kernel_tx).context("cannot subscribe to kernel events")?;
    let (probe_tx, mut probe_rx) = mpsc::channel(1024);
    let mut probers: Vec<LinkProber> = config.links.iter().map(LinkProber::new).collect();
    let (purge_tx, mut purge_rx) = mpsc::channel::<PurgeDone>(16);

    let mut last: Vec<Option<TransitionStatus>> = vec![None; config.links.len()];
    let mut counters: BTreeMap<String, Counters> = BTreeMap::new();
    let mut applies = (1u64, Some(ms(report.nft + report.routes)));
    let (status_tx, status_rx) =
        watch::channel(status(&engine, &desired, &last, &counters, applies, clock));
    let listener = control::bind(&config.control.socket, config.control.gid)
        .with_context(|| format!("cannot listen on {}", config.control.socket.display()))?;
    let (events, _) = broadcast::channel::<serde_json::Value>(256);
    let (cmd_tx, mut cmd_rx) = mpsc::channel(8);
    let shared = control::Shared {
        status: status_rx.clone(),
        events: events.clone(),
        commands: cmd_tx,
    };
    let control = tokio::spawn(control::serve(listener, shared));
    let metrics = match config.metrics.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            info!("metrics on http://{addr}/metrics");
            Some(tokio::spawn(control::metrics::listen(l, status_rx)))
        }
        None => None,
    };
    // READY only now: the first apply succeeded and the status socket answers.
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("new flows via {}", steer_name(&desired))),
    ]);
    let mut watchdog = sd_notify::watchdog_enabled().map(|t| {
        let mut i = tokio::time::interval(t / 2);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
    reconcile.tick().await;

    // Links whose flows an operator asked to reset (drain --reset), handled after the apply.
    let mut drains: Vec<LinkId> = Vec::new();
    loop {
        let mut reapply = false;
        let next_probe = engine.poll_timeout().map(|(t, _)| Instant::from_std(t));
        let transitions = tokio::select! {
            () = sleep_until(next_probe) => {
                for req in engine.poll_probes(Instant::now().into_std()) {
                    probers[req.link].send(req, config.probe.timeout, probe_tx.clone());
                }
                Vec::new()
            }
            Some(p) = probe_rx.recv() => engine.handle(Instant::now().into_std(), Event::Probe(p)),
            Some(ev) = kernel_rx.recv() => match ev {
                KernelEvent::Link(ev) => {
                    // Admin down deletes the routes in our tables and admin up does not restore
                    // them: re-apply whenever an interface comes up.
                    reapply = ev.up && carriers.insert(ev.name.clone(), ev.up) != Some(true);
                    carrier(&mut engine, &ev, Instant::now().into_std())
                }
                // Renumbered: the learned gateway and routes must follow.
                KernelEvent::Addresses => {
                    reapply = true;
                    addresses(&mut engine, dp.handle(), Instant::now().into_std()).await
                }
                KernelEvent::Routing => {
                    reapply = true;
                    Vec::new()
                }
            },
            Some(done) = purge_rx.recv() => {
                match done.result {
                    Ok(r) => {
                        let total = r.dump + r.stale + r.flush + r.tickle + r.destroy;
                        info!(
                            "link {}: purged {} flows, reset {} TCP clients, aborted {} router sockets in {:.1} ms (dump {:.1}, stale set {:.1}, flush {:.1}, tickle {:.1}, sockets {:.1})",
                            done.name, r.flows, r.tcp_reset, r.sockets, ms(total), ms(r.dump), ms(r.stale), ms(r.flush), ms(r.tickle), ms(r.destroy)
                        );
                        if let Some(t) = last.get_mut(done.link).and_then(Option::as_mut) {
                            t.purge_ms = Some(ms(total));
                            t.flows_purged = Some(r.flows);
                            t.tcp_reset = Some(r.tcp_reset);
                            t.sockets_aborted = Some(r.sockets);
                        }
                        let c = counters.entry(done.name.clone()).or_default();
                        c.flows += r.flows as u64;
                        c.tcp += r.tcp_reset as u64;
                        c.sockets += r.sockets as u64;
                        let _ = events.send(serde_json::json!({
                            "type": "purge", "link": done.name, "flows": r.flows, "tcp_reset": r.tcp_reset,
                            "sockets_aborted": r.sockets, "ms": ms(total),
                        }));
                        dp.remember_stale(r.stale4, r.stale6);
                    }
                    Err(e) => error!("link {}: {:#}", done.name, anyhow::Error::new(e)),
                }
                Vec::new()
            }
            _ = reconcile.tick() => { reapply = true; Vec::new() }
            () = tick(&mut watchdog) => {
                notify(&[sd_notify::NotifyState::Watchdog]);
                Vec::new()
            }
            Some((cmd, reply)) = cmd_rx.recv() => {
                let answer = match cmd {
                    Command::Reload => {
                        // Pending drains name links by their old ids.
                        drains.clear();
                        let r = reload(&path, &mut config, &mut engine, &mut probers, &mut last, dp.handle()).await;
                        let _ = events.send(reload_event(&r));
                        reapply = r.is_ok();
                        r
                    }
                    Command::Drain { link, reset } => match engine.link_id(&link) {
                        None => Err(format!("no link named {link:?}")),
                        Some(id) => {
                            engine.set_drained(id, true);
                            if reset {
                                drains.push(id);
                            }
                            let _ = events.send(serde_json::json!({"type": "drain", "link": link, "reset": reset}));
                            info!("link {link}: drained by request{}", if reset { ", its flows will be reset" } else { "" });
                            Ok(format!("drained {link}"))
                        }
                    },
                    Command::Undrain { link } => match engine.link_id(&link) {
                        None => Err(format!("no link named {link:?}")),
                        Some(id) => {
                            engine.set_drained(id, false);
                            let _ = events.send(serde_json::json!({"type": "undrain", "link": link}));
                            info!("link {link}: back in service by request");
                            Ok(format!("undrained {link}"))
                        }
                    },
                };
                let _ = reply.send(answer);
                Vec::new()
            }
            _ = sighup.recv() => {
                let r = reload(&path, &mut config, &mut engine, &mut probers, &mut last, dp.handle()).await;
                let _ = events.send(reload_event(&r));
                reapply = r.is_ok();
                Vec::new()
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        };

        for t in &transitions {
            let name = &config.links[t.link].name;
            info!("link {name}: {} -> {} ({})", t.from, t.to, t.reason);
            run_hook(&config, t, &steer_name(&engine.desired()));
            counters.entry(name.clone()).or_default().transitions += 1;
            let _ = events.send(serde_json::json!({
                "type": "transition", "link": name, "from": t.from.as_str(), "to": t.to.as_str(),
                "reason": t.reason, "at": clock.epoch_secs(t.at),
            }));
            last[t.link] = Some(TransitionStatus {
                from: t.from.to_string(),
                to: t.to.to_string(),
                at: clock.epoch_secs(t.at),
                reason: t.reason.clone(),
                steer_ms: None,
                purge_ms: None,
                flows_purged: None,
                tcp_reset: None,
                sockets_aborted: None,
            });
        }
        let next = engine.desired();
        let mut drain: Vec<LinkId> = Vec::new();
        if next != desired || reapply {
            match dp.apply(&next, reapply).await {
                Ok(r) => {
                    applies = (applies.0 + 1, Some(ms(r.nft + r.routes)));
                    if next.share() != desired.share() {
                        let _ = events
                            .send(serde_json::json!({"type": "steer", "to": steer_name(&next)}));
                        notify(&[sd_notify::NotifyState::Status(&format!(
                            "new flows via {}",
                            steer_name(&next)
                        ))]);
                        info!(
                            "new flows now via {} (nft {:.1} ms, routes {:.1} ms)",
                            steer_name(&next),
                            ms(r.nft),
                            ms(r.routes)
                        );
                    }
                    for p in next.policies.iter().skip(1) {
                        let old = desired.policies.iter().find(|o| o.name == p.name);
                        if old.is_none_or(|o| o.steer != p.steer) {
                            let to = match &p.steer {
                                Steer::Share(s) => share_name(&next, s),
                                Steer::Fallback => "the default policy (no link usable)".into(),
                                Steer::Refuse => "nothing: refused (no link usable)".into(),
                            };
                            info!("policy {}: new flows via {to}", p.name);
                            let _ = events.send(
                                serde_json::json!({"type": "steer", "policy": p.name, "to": to}),
                            );
                        }
                    }
                    if next.policies != desired.policies {
                        drain = (0..next.links.len())
                            .filter(|&l| draining(&config, l, &desired, &next))
                            .collect();
                    } else if next == desired && r.nft_replaced {
                        warn!("nft table inet uplinkd was missing or changed; restored");
                    }
                    if next == desired && r.route_changes > 0 {
                        warn!("{} of uplinkd's routing rules or routes were missing or changed; restored", r.route_changes);
                    }
                    for t in &transitions {
                        if let Some(s) = last[t.link].as_mut() {
                            s.steer_ms = Some(ms(t.at.elapsed()));
                        }
                    }
                    desired = next;
                }
                Err(e) => error!("{:#}", anyhow::Error::new(e)),
            }
        }
        // Operator drains with reset wait until the steering away from the link is live.
        let requested: Vec<LinkId> = if desired == engine.desired() {
            std::mem::take(&mut drains)
        } else {
            Vec::new()
        };
        let purge: Vec<LinkId> = transitions
            .iter()
            .filter(|t| stranded(t, &desired))
            .map(|t| t.link)
            .chain(drain.iter().copied())
            .chain(requested.into_iter().filter(|&l| {
                // (A reload may have removed the link meanwhile.)
                l < desired.links.len()
                    && desired
                        .steer_to()
                        .is_some_and(|s| s != l && desired.links[s].usable)
            }))
            .collect();
        for link in purge {
            if drain.contains(&link) {
                info!(
                    "link {}: new flows moved to {}; draining its flows (failback = \"drain\")",
                    config.links[link].name,
                    steer_name(&desired)
                );
            }
            let addrs = monitor::local_addrs(dp.handle()).await.unwrap_or_default();
            spawn_purge(link, &desired, addrs, purge_tx.clone());
        }
        status_tx.send_replace(status(&engine, &desired, &last, &counters, applies, clock));
    }

    notify(&[sd_notify::NotifyState::Stopping]);
    control.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&config.control.socket);
    if config.dataplane.cleanup_on_exit {
        info!("stopping: removing nft table, rules and routes");
        dp.remove_all(&desired)
            .await
            .context("cleanup incomplete")?;
    } else {
        info!("stopping: leaving the dataplane in place (cleanup_on_exit = false)");
    }
    Ok(())
}

/// After the steering moved away from a dead link, its flows are purged and their clients
/// reset, so applications reconnect through a live link at once. Only when a policy that uses
/// the link now sends its new flows to another usable link (itself, or by falling back to the
/// default policy): otherwise there is nowhere better to go, and killing the flows would only
/// hurt.
fn stranded(t: &Transition, d: &DesiredState) -> bool {
    let elsewhere = d
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.members.contains(&t.link))
        .flat_map(|(i, _)| d.destinations(i))
        .any(|&(s, _)| s != t.link && d.links[s].usable);
    t.to == LinkState::Down && t.from.usable() && elsewhere
}

/// New flows just moved from the usable link `from` to a link its policy prefers: with
/// `failback = "drain"` its flows are reset too, so their clients reconnect through the
/// preferred link (which the steering, already live, sends them to). Not when it merely left a
/// share for another reason (degraded, drained).
fn draining(config: &Config, from: LinkId, prev: &DesiredState, next: &DesiredState) -> bool {
    let preferred_now = config.policies.iter().enumerate().any(|(i, p)| {
        let prio = |l: LinkId| p.members.iter().find(|m| m.link == l).map(|m| m.priority);
        let (Some(was), Some(now)) = (prev.policies.get(i), next.policies.get(i)) else {
            return false;
        };
        was.steer.share().iter().any(|&(l, _)| l == from)
            && now
                .steer
                .share()
                .first()
                .is_some_and(|&(to, _)| prio(to) < prio(from))
    });
    config.links[from].failback == Failback::Drain
        && next.links[from].usable
        && !next.in_a_share(from)
        && preferred_now
}

/// Purge and reset off the event loop; later tickle rounds follow in the same task.
fn spawn_purge(
    link: LinkId,
    d: &DesiredState,
    addrs: Vec<(String, std::net::IpAddr, u8)>,
    tx: mpsc::Sender<PurgeDone>,
) {
    let (mark, mask, tickle_mark) = (d.links[link].mark, d.mark_mask, d.tickle_mark);
    let name = d.links[link].name.clone();
    let scope = reset::Scope {
        local: addrs.iter().map(|(_, a, _)| *a).collect(),
        lan: addrs
            .iter()
            .filter(|(i, _, _)| d.lan_interfaces.contains(i))
            .map(|(_, a, len)| (*a, *len))
            .collect(),
    };
    tokio::spawn(async move {
        let result =
            tokio::task::spawn_blocking(move || reset::purge(mark, mask, tickle_mark, &scope))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|source| crate::dataplane::Error::Purge { mark, source });
        let flows = result
            .as_ref()
            .map(|r| r.tickle_flows.clone())
            .unwrap_or_default();
        let _ = tx.send(PurgeDone { link, name, result }).await;
        for _ in 1..reset::TICKLE_ROUNDS {
            if flows.is_empty() {
                break;
            }
            tokio::time::sleep(reset::TICKLE_GAP).await;
            let f = flows.clone();
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || reset::tickle(&f, tickle_mark)).await
            {
                warn!("tickle round failed: {e}");
            }
        }
    });
}

fn carrier(
    engine: &mut Engine,
    ev: &monitor::LinkEvent,
    now: std::time::Instant,
) -> Vec<Transition> {
    let ids: Vec<LinkId> = (0..engine.config().links.len())
        .filter(|&i| engine.config().links[i].interface == ev.name)
        .collect();
    ids.into_iter()
        .flat_map(|link| engine.handle(now, Event::Carrier { link, up: ev.up }))
        .collect()
}

/// Tell the engine which links have an IPv4 address. A failed dump changes nothing.
async fn addresses(
    engine: &mut Engine,
    h: &rtnetlink::Handle,
    now: std::time::Instant,
) -> Vec<Transition> {
    let with = match monitor::with_ipv4(h).await {
        Ok(w) => w,
        Err(e) => {
            warn!("cannot list addresses: {e}");
            return Vec::new();
        }
    };
    let present: Vec<bool> = engine
        .config()
        .links
        .iter()
        .map(|l| with.contains(&l.interface))
        .collect();
    present
        .into_iter()
        .enumerate()
        .flat_map(|(link, present)| engine.handle(now, Event::Address { link, present }))
        .collect()
}

/// Reload the configuration; on any error the running one stays and the error is reported.
async fn reload(
    path: &Path,
    config: &mut Config,
    engine: &mut Engine,
    probers: &mut Vec<LinkProber>,
    last: &mut Vec<Option<TransitionStatus>>,
    h: &rtnetlink::Handle,
) -> Result<String, String> {
    notify(&[sd_notify::NotifyState::Reloading]);
    let result = match reload_config(path, config) {
        Err(e) => {
            error!(
                "reload of {} failed, the running configuration stays:\n{e}",
                path.display()
            );
            Err(e)
        }
        Ok(new) => {
            let now = Instant::now().into_std();
            let old = std::mem::replace(engine, Engine::new(new.clone(), now));
            *engine = old.reconfigure(new.clone(), now);
            // Links kept their health; new ones learn carrier and addresses like at start.
            if let Ok(links) = monitor::snapshot(h).await {
                for ev in links {
                    carrier(engine, &ev, now);
                }
            }
            addresses(engine, h, now).await;
            let names: Vec<String> = config.links.iter().map(|l| l.name.clone()).collect();
            *last = new
                .links
                .iter()
                .map(|l| {
                    names
                        .iter()
                        .position(|n| *n == l.name)
                        .and_then(|i| last[i].clone())
                })
                .collect();
            *probers = new.links.iter().map(LinkProber::new).collect();
            *config = new;
            info!(
                "configuration reloaded from {}: {} links",
                path.display(),
                config.links.len()
            );
            Ok(format!(
                "reloaded {} ({} links)",
                path.display(),
                config.links.len()
            ))
        }
    };
    notify(&[sd_notify::NotifyState::Ready]);
    result
}

/// Run the transition hook, if any, in its own task: it can neither block nor outlive its
/// timeout.
fn run_hook(config: &Config, t: &Transition, steer_to: &str) {
    let Some((program, args)) = config.hooks.on_transition.split_first() else {
        return;
    };
    let l = &config.links[t.link];
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("UPLINKD_EVENT", "transition")
        .env("UPLINKD_LINK", &l.name)
        .env("UPLINKD_INTERFACE", &l.interface)
        .env("UPLINKD_FROM", t.from.as_str())
        .env("UPLINKD_TO", t.to.as_str())
        .env("UPLINKD_REASON", &t.reason)
        .env("UPLINKD_STEER_TO", steer_to)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let (timeout, program) = (config.hooks.timeout, program.clone());
    tokio::spawn(async move {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return warn!("hook {program}: cannot start: {e}"),
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(s)) if s.success() => debug!("hook {program}: done"),
            Ok(Ok(s)) => warn!("hook {program}: {s}"),
            Ok(Err(e)) => warn!("hook {program}: {e}"),
            Err(_) => {
                warn!("hook {program}: still running after {timeout:?}; killed");
                let _ = child.kill().await;
            }
        }
    });
}

fn reload_event(r: &Result<String, String>) -> serde_json::Value {
    match r {
        Ok(m) => serde_json::json!({"type": "reload", "ok": true, "message": m}),
        Err(e) => serde_json::json!({"type": "reload", "ok": false, "error": e}),
    }
}

/// Wait for the next tick, or forever without an interval.
async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleep until `t`, or forever when nothing is scheduled.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The probes of one link, opened lazily and re-opened after a send error (the interface they
/// are bound to may have been deleted and re-created).
struct LinkProber {
    binding: Binding,
    inner: Arc<Prober>,
    targets: Arc<Vec<Target>>,
    open: bool,
    reopen: Arc<AtomicBool>,
    warned: bool,
}

impl LinkProber {
    fn new(l: &crate::config::Link) -> Self {
        let binding = Binding {
            interface: l.interface.clone(),
            mark: l.mark,
        };
        LinkProber {
            inner: Arc::new(Prober::new(binding.clone())),
            binding,
            targets: Arc::new(l.targets.clone()),
            open: false,
            reopen: Arc::new(AtomicBool::new(false)),
            warned: false,
        }
    }

    /// Send one probe in its own task; the outcome arrives on `tx`.
    fn send(&mut self, req: ProbeRequest, timeout: Duration, tx: mpsc::Sender<ProbeOutcome>) {
        if self.reopen.swap(false, Ordering::Relaxed) || !self.open {
            // Fresh sockets on a fresh prober; probes in flight finish on the old one.
            let mut fresh = Prober::new(self.binding.clone());
            match fresh.open(&self.targets) {
                Ok(()) => {
                    self.open = true;
                    self.warned = false;
                }
                Err(e) => {
                    self.open = false;
                    if !self.warned {
                        warn!(
                            "cannot open probe sockets on {}: {e}",
                            self.binding.interface
                        );
                        self.warned = true;
                    }
                }
            }
            self.inner = Arc::new(fresh);
        }
        let (prober, targets, reopen) = (
            self.inner.clone(),
            self.targets.clone(),
            self.reopen.clone(),
        );
        tokio::spawn(async move {
            let target = &targets[req.target];
            let result = prober.probe(target, timeout).await.map_err(|e| {
                debug!("probe {target} via link {}: {e}", req.link);
                match e {
                    ProbeError::Timeout(_) => ProbeFailure::Timeout,
                    ProbeError::IcmpError { .. } => ProbeFailure::IcmpError,
                    ProbeError::Rejected(_) => ProbeFailure::Rejected,
                    ProbeError::Send(_) | ProbeError::Other(_) => {
                        reopen.store(true, Ordering::Relaxed);
                        ProbeFailure::SendError
                    }
                }
            });
            let outcome = ProbeOutcome {
                link: req.link,
                target: req.target,
                sent_at: req.sent_at,
                result,
            };
            let _ = tx.send(outcome).await;
        });
    }
}

fn status(
    engine: &Engine,
    d: &DesiredState,
    last: &[Option<TransitionStatus>],
    counters: &BTreeMap<String, Counters>,
    applies: (u64, Option<f64>),
    clock: Clock,
) -> Status {
    let cfg = engine.config();
    let now = Instant::now().into_std();
    Status {
        version: control::PROTOCOL_VERSION,
        steer_to: d.steer_to().map(|i| d.links[i].name.clone()),
        share: shares(d, d.share()),
        policies: d
            .policies
            .iter()
            .map(|p| control::PolicyStatus {
                name: p.name.clone(),
                links: p.members.iter().map(|&l| d.links[l].name.clone()).collect(),
                share: shares(d, p.steer.share()),
                last_resort: match p.last_resort {
                    LastResort::Default => "default",
                    LastResort::Unreachable => "unreachable",
                }
                .into(),
                sticky_s: p.sticky.map(|t| t.as_secs()),
            })
            .collect(),
        worst_case_detection_ms: cfg.worst_case_detection().as_millis() as u64,
        links: cfg
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let h = engine.link(i);
                let c = counters.get(&l.name).copied().unwrap_or_default();
                LinkStatus {
                    name: l.name.clone(),
                    interface: l.interface.clone(),
                    state: h.state.to_string(),
                    since: clock.epoch_secs(h.since),
                    reason: h.reason.clone(),
                    rtt_ms: h.last_rtt().map(ms),
                    srtt_ms: h.srtt().map(ms),
                    jitter_ms: h.jitter().map(ms),
                    loss_pct: h.loss_pct(),
                    targets: l.targets.len(),
                    silent_targets: h.silent_targets(),
                    quorum: l.quorum,
                    fast_probing: h.fast(),
                    flap_penalty: h.penalty(now, &cfg.detection),
                    hold_ms: ms(h.hold(now, &cfg.detection)),
                    mark: l.mark,
                    table: l.table,
                    drained: engine.drained(i),
                    probes_sent: h.probes,
                    probes_lost: h.probes_lost,
                    transitions: c.transitions,
                    flows_purged_total: c.flows,
                    tcp_reset_total: c.tcp,
                    sockets_aborted_total: c.sockets,
                    last_transition: last.get(i).cloned().flatten(),
                }
            })
            .collect(),
        last_apply_ms: applies.1,
        applies: applies.0,
    }
}

fn shares(d: &DesiredState, share: &[(LinkId, u32)]) -> Vec<control::Share> {
    let total: u32 = share.iter().map(|(_, w)| w).sum();
    share
        .iter()
        .map(|&(l, w)| control::Share {
            link: d.links[l].name.clone(),
            weight: w,
            pct: 100.0 * f64::from(w) / f64::from(total.max(1)),
        })
        .collect()
}

/// Where the default policy's new flows go.
fn steer_name(d: &DesiredState) -> String {
    share_name(d, d.share())
}

/// A link's name, or the links of a tier with their shares.
fn share_name(d: &DesiredState, share: &[(LinkId, u32)]) -> String {
    let total: u32 = share.iter().map(|(_, w)| w).sum();
    match share {
        [] => "(no link)".into(),
        [(l, _)] => d.links[*l].name.clone(),
        many => many
            .iter()
            .map(|&(l, w)| {
                format!(
                    "{} {:.0}%",
                    d.links[l].name,
                    100.0 * f64::from(w) / f64::from(total)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::engine::Event;

    const LINKS: &str = r#"
[[link]]
name = "fiber"
interface = "wan1"
targets = ["192.0.2.1"]

[[link]]
name = "lte"
interface = "wan2"
failback = "drain"
targets = ["192.0.2.1"]

[lan]
interfaces = ["lan0"]
"#;

    /// An engine for `LINKS` plus `extra` with both links up.
    fn engine(extra: &str) -> (Engine, std::time::Instant) {
        let cfg = crate::config::parse(&format!("{LINKS}{extra}")).unwrap();
        let t0 = std::time::Instant::now();
        let mut sim = crate::engine::sim::Sim::new(cfg, t0);
        sim.run(t0 + Duration::from_secs(5), |_, _, _| {
            Some(Duration::from_millis(5))
        });
        (sim.engine, t0 + Duration::from_secs(5))
    }

    fn down(e: &mut Engine, now: std::time::Instant, link: LinkId) -> Transition {
        e.handle(now, Event::Carrier { link, up: false }).remove(0)
    }

    #[test]
    fn flows_are_killed_only_when_a_policy_of_the_link_has_somewhere_else_to_go() {
        // The default policy has fiber only; lte serves another policy.
        let extra = "[[policy]]\nname = \"default\"\nlinks = [\"fiber\"]\n[[policy]]\nname = \"voip\"\nlinks = [\"lte\"]\n";
        let (mut e, now) = engine(extra);
        let t = down(&mut e, now, 0);
        assert!(
            !stranded(&t, &e.desired()),
            "fiber's flows have nowhere to go"
        );
        // With both links in the default policy, they move to lte.
        let (mut e, now) = engine("");
        let t = down(&mut e, now, 0);
        assert!(stranded(&t, &e.desired()));
    }

    #[test]
    fn failback_drain_follows_the_policy_priorities() {
        // The links' own priorities are equal; the default policy prefers fiber.
        let extra = "[[policy]]\nname = \"default\"\nlinks = [\"fiber\", \"lte\"]\n";
        let (mut e, now) = engine(extra);
        let cfg = e.config().clone();
        down(&mut e, now, 0);
        let on_lte = e.desired();
        assert_eq!(on_lte.share(), [(1, 1)]);
        e.handle(now, Event::Carrier { link: 0, up: true });
        let mut sim_now = now;
        // Fiber back up after its hold: probe until it is usable again.
        while !e.desired().links[0].usable {
            sim_now += Duration::from_millis(50);
            for r in e.poll_probes(sim_now) {
                e.handle(
                    sim_now,
                    Event::Probe(crate::engine::ProbeOutcome {
                        link: r.link,
                        target: r.target,
                        sent_at: r.sent_at,
                        result: Ok(Duration::from_millis(5)),
                    }),
                );
            }
            assert!(sim_now < now + Duration::from_secs(60));
        }
        let back = e.desired();
        assert!(
            draining(&cfg, 1, &on_lte, &back),
            "lte drains when fiber takes over"
        );
        // A link that leaves the share because it is drained by the operator is not reset.
        let (mut e, _) = engine(extra);
        let before = e.desired();
        e.set_drained(0, true);
        assert!(!draining(&cfg, 0, &before, &e.desired()));
    }
}
