//! The one event loop: owns the engine, reads the clock, hands the engine what happened and
//! executes the actions it returns on the dataplane, the probes and the control socket. It
//! decides nothing itself.

mod alarm;
pub mod ha;
mod hooks;
mod memory;
mod probing;
mod quality;
mod status;
#[cfg(test)]
mod tests;
mod trim;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alarm::Alarm;
use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::config::{Config, DEFAULT_POLICY};
use crate::control::event::Level;
use crate::control::{self, lock, Command, CommandReply, Event, Status};
use crate::dataplane::monitor::{self, KernelEvent};
use crate::dataplane::{Dataplane, Kernel};
use crate::engine::{Action, Engine, Input, ProbeOutcome, Purged};
use crate::history::History;
pub use probing::{LinkProbes, Probes};

/// How often the nftables ruleset generation is read (one netlink round trip): when it moved,
/// the kernel state is re-read and repaired, so an edit of our table is undone within this
/// time. Route and rule edits arrive as events and are repaired at once. With a peer, it is
/// also how often the peer is told our marks.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Every this many checks the whole kernel state is re-read even when nothing said it changed
/// (what sends no event, such as a sysctl): 30 s.
const RECONCILE_CHECKS: u32 = 15;

/// What the outside world tells the loop.
pub struct Inputs {
    pub kernel: mpsc::Receiver<KernelEvent>,
    pub commands: mpsc::Receiver<(Command, oneshot::Sender<CommandReply>)>,
    pub signals: mpsc::Receiver<Signal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Reload,
    Stop,
}

/// Run until SIGTERM or SIGINT, then remove what we created (unless configured not to). `path`
/// is where the configuration came from, for reloads (SIGHUP or `uplinkctl reload`).
pub async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    trim::one_arena();
    // Everything that can fail for reasons of its own is acquired before the kernel is touched.
    let socket = config.control.socket.clone();
    let listener = control::bind(&socket, config.control.gid)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let result = serve(listener, config, path).await;
    let _ = std::fs::remove_file(&socket);
    result
}

async fn serve(
    listener: tokio::net::UnixListener,
    config: Config,
    path: PathBuf,
) -> anyhow::Result<()> {
    let metrics = match config.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let (kernel_tx, kernel) = mpsc::channel(64);
    monitor::spawn(kernel_tx).context("cannot subscribe to kernel events")?;
    let signals = unix_signals()?;
    let dp = Kernel::new(config.dataplane.table_base)?;
    let alarm = Alarm::exact().context("cannot create a timerfd")?;
    let probes = LinkProbes::new(&config);
    let (events, _) = broadcast::channel::<Event>(256);
    let memory = memory::path(&config.control.socket);
    let history_file = config.control.history.clone();
    let mut sup = Supervisor::start(config, path, Some(memory), dp, probes, events.clone()).await?;
    sup.keep_history(history_file);
    sup.alarm = alarm;
    let (cmd_tx, commands) = mpsc::channel(8);
    let shared = control::Shared {
        status: sup.status.subscribe(),
        events,
        commands: cmd_tx,
        history: sup.history.clone(),
    };
    let control = tokio::spawn(control::serve(listener, shared));
    let metrics = metrics.map(|l| {
        if let Ok(addr) = l.local_addr() {
            info!("metrics on http://{addr}/metrics");
        }
        tokio::spawn(control::metrics::listen(
            l,
            sup.status.subscribe(),
            sup.history.clone(),
        ))
    });
    // READY only now: the first apply succeeded and the status socket answers.
    let to = sup.steer_name();
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("new flows via {to}")),
    ]);
    sup.watchdog = sd_notify::watchdog_enabled().map(|t| {
        let mut i = tokio::time::interval(t / 2);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });
    let inputs = Inputs {
        kernel,
        commands,
        signals,
    };
    let result = sup.run(inputs).await;
    control.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    result
}

/// SIGHUP reloads, SIGTERM and SIGINT stop.
fn unix_signals() -> anyhow::Result<mpsc::Receiver<Signal>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = hup.recv() => Signal::Reload,
                _ = term.recv() => Signal::Stop,
                _ = int.recv() => Signal::Stop,
            };
            if tx.send(s).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// The history is written where it is kept this often (and at stop): a router's flash is
/// spared a write per probe.
const HISTORY_EVERY: Duration = Duration::from_secs(300);

/// Without any event, the status (RTT, loss) is rebuilt at most this often.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The engine with the dataplane and the probes it drives.
pub struct Supervisor<D, P> {
    engine: Engine,
    dp: D,
    probes: P,
    path: PathBuf,
    /// Interfaces last seen up, to re-apply when one comes up (admin down deletes the routes in
    /// our tables and admin up does not restore them).
    carriers: BTreeMap<String, bool>,
    probe_tx: mpsc::UnboundedSender<ProbeOutcome>,
    probe_rx: mpsc::UnboundedReceiver<ProbeOutcome>,
    purge_tx: mpsc::Sender<(String, Result<Purged, String>)>,
    purge_rx: mpsc::Receiver<(String, Result<Purged, String>)>,
    status: watch::Sender<Status>,
    events: broadcast::Sender<Event>,
    watchdog: Option<tokio::time::Interval>,
    /// Wakes the loop for its next deadline (probes due, the next check).
    alarm: Alarm,
    /// A reload under way (its file is being checked) and who waits for its answer.
    reloading: Option<Vec<oneshot::Sender<CommandReply>>>,
    reload_tx: mpsc::Sender<Result<Config, String>>,
    reload_rx: mpsc::Receiver<Result<Config, String>>,
    /// Where link states are remembered across restarts, when they last were, and whether a
    /// transition happened since.
    memory: Option<PathBuf>,
    memory_saved: Option<Instant>,
    memory_dirty: bool,
    /// With `[ha]`: keepalived's track files.
    track: ha::Track,
    /// With `[ha]` and a sync link: the peer's uplinkd.
    peer: Option<ha::Peer>,
    /// The links' quality history and outages (the control socket reads it too), where it is
    /// kept across restarts (`None`: not kept), and when it was last written there.
    pub history: Arc<Mutex<History>>,
    history_file: Option<PathBuf>,
    history_saved: Option<Instant>,
    /// When the status was last rebuilt, and whether something not seen by the engine's actions
    /// (a command, a purge's result, a kernel event) wants it rebuilt now.
    status_at: Option<Instant>,
    status_due: bool,
}

impl<D: Dataplane, P: Probes> Supervisor<D, P> {
    /// Resume link states from `memory` (see [`memory`]), learn the interfaces, apply the first
    /// desired state. Fails when that apply fails.
    pub async fn start(
        config: Config,
        path: PathBuf,
        memory: Option<PathBuf>,
        dp: D,
        probes: P,
        events: broadcast::Sender<Event>,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        let mut engine = Engine::new(config, now.into_std());
        engine.set_wall_clock(now.into_std(), control::epoch_now());
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let (purge_tx, purge_rx) = mpsc::channel(16);
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let status = watch::Sender::new(status::build(&engine, now.into_std()));
        let history = History::new(&engine.config().link_names());
        let mut sup = Supervisor {
            engine,
            dp,
            probes,
            path,
            carriers: BTreeMap::new(),
            probe_tx,
            probe_rx,
            purge_tx,
            purge_rx,
            status,
            events,
            watchdog: None,
            alarm: Alarm::Tokio,
            reloading: None,
            reload_tx,
            reload_rx,
            memory,
            memory_saved: None,
            memory_dirty: true,
            track: ha::Track::default(),
            peer: None,
            history: Arc::new(Mutex::new(history)),
            history_file: None,
            history_saved: None,
            status_at: None,
            status_due: true,
        };
        sup.resume(now.into_std());
        sup.open_peer();
        let links = sup
            .dp
            .interfaces()
            .await
            .context("cannot list interfaces")?;
        for ev in links {
            sup.link_event(&ev);
        }
        sup.addresses().await;
        sup.execute().await;
        if sup.engine.applied_state().is_none() {
            // Whatever part of it the kernel took is removed again.
            let e = sup.engine.applies().2.unwrap_or("unknown error").to_owned();
            let d = sup.engine.desired();
            if let Err(c) = sup.dp.remove_all(&d).await {
                error!(
                    "{:#}",
                    anyhow::Error::new(c).context("cleanup after the failed start incomplete")
                );
            }
            anyhow::bail!("initial apply failed: {e}");
        }
        trim::trim();
        Ok(sup)
    }

    /// The loop: each arm hands the engine what happened, then the engine's actions are
    /// executed. Returns after a stop, with what we created removed (unless configured not to).
    pub async fn run(&mut self, mut inputs: Inputs) -> anyhow::Result<()> {
        let mut check_at = Instant::now() + CHECK_EVERY;
        let mut checks = 0u32;
        let mut peer_buf = [0u8; 64];
        loop {
            let next = self.engine.poll_timeout().map(|(t, why)| {
                debug!("next wake-up: {why}");
                Instant::from_std(t)
            });
            let wake = next.map_or(check_at, |t| t.min(check_at));
            let now = || Instant::now().into_std();
            tokio::select! {
                () = self.alarm.at(wake) => {
                    for req in self.engine.poll_probes(now()) {
                        self.probes.send(req, &self.probe_tx);
                    }
                    if Instant::now() >= check_at {
                        if let Some(p) = &self.peer {
                            p.say(&self.marks());
                        }
                        checks = (checks + 1) % RECONCILE_CHECKS;
                        if checks == 0 || self.dp.ruleset_changed().await {
                            self.engine.reconcile();
                        }
                        self.memory_dirty |= self.memory_saved.is_none_or(|t| t.elapsed() >= memory::REFRESH);
                        if self.history_saved.is_none_or(|t| t.elapsed() >= HISTORY_EVERY) {
                            self.save_history();
                        }
                        check_at = Instant::now() + CHECK_EVERY;
                    }
                }
                Some(p) = self.probe_rx.recv() => self.probed(now(), p),
                Some(ev) = inputs.kernel.recv() => {
                    self.kernel_event(ev).await;
                    self.status_due = true;
                }
                Some((link, r)) = self.purge_rx.recv() => {
                    self.engine.purged(&link, r);
                    self.status_due = true;
                }
                () = tick(&mut self.watchdog) => notify(&[sd_notify::NotifyState::Watchdog]),
                n = peer_recv(self.peer.as_ref(), &mut peer_buf) => {
                    let own = self.marks();
                    if let Some(p) = &mut self.peer {
                        self.status_due |= p.heard(&peer_buf[..n], &own, Instant::now().into_std());
                    }
                }
                Some((cmd, reply)) = inputs.commands.recv() => {
                    let answer = match cmd {
                        Command::Reload => {
                            self.start_reload(Some(reply));
                            continue;
                        }
                        Command::Drain { link, reset } => self.engine.drain(&link, reset),
                        Command::Undrain { link } => self.engine.undrain(&link),
                    };
                    // Answered once it is live and in the status.
                    self.status_due = true;
                    self.execute().await;
                    let _ = reply.send(answer);
                }
                Some(checked) = self.reload_rx.recv() => {
                    let answer = self.finish_reload(checked).await;
                    // Answered once the new configuration is live (and in the status).
                    self.execute().await;
                    for r in self.reloading.take().unwrap_or_default() {
                        let _ = r.send(answer.clone());
                    }
                    // What parsing and writing a large file took is not kept (after the answer:
                    // 0.7 ms of a 30,000-prefix reload).
                    trim::trim();
                }
                s = inputs.signals.recv() => match s {
                    Some(Signal::Reload) => self.start_reload(None),
                    Some(Signal::Stop) | None => break,
                },
            }
            self.execute().await;
        }
        self.stop().await
    }

    /// Execute the engine's actions until it has none, reporting results back to it.
    async fn execute(&mut self) {
        let mut acted = false;
        while let Some(action) = self.engine.poll_action() {
            acted = true;
            match action {
                Action::Apply { state, verify } => {
                    let r = self.dp.apply(&state, verify).await;
                    let r = r.map_err(|e| format!("{:#}", anyhow::Error::new(e)));
                    self.engine.applied(Instant::now().into_std(), state, r);
                }
                Action::Purge(order) => {
                    let name = order.name.clone();
                    let purge = self.dp.purge(order);
                    let tx = self.purge_tx.clone();
                    tokio::spawn(async move {
                        let r = purge.await;
                        let r = r.map_err(|e| format!("{:#}", anyhow::Error::new(e)));
                        let _ = tx.send((name, r)).await;
                    });
                }
                Action::RunHook(call) => hooks::run(&self.engine.config().hooks, call),
                Action::Emit(e) => {
                    self.memory_dirty |= matches!(e, Event::Transition { .. });
                    self.emit(e);
                }
            }
        }
        // Rebuilt at once when something happened, otherwise (a probe result: RTT and loss
        // moved) at most every STATUS_EVERY: a status per probe was most of the idle cost with
        // many links.
        let now = Instant::now();
        let due = std::mem::take(&mut self.status_due);
        if acted || due || self.status_at.is_none_or(|t| now >= t + STATUS_EVERY) {
            self.status_at = Some(now);
            let mut status = status::build(&self.engine, now.into_std());
            if let (Some(ha), Some(p)) = (&mut status.ha, &self.peer) {
                ha.peer = Some(crate::control::PeerStatus {
                    marks: p.view(now.into_std()),
                });
            }
            self.status.send_replace(status);
        }
        self.remember();
        if let (Some(ha), Some(t)) = (&self.engine.config().ha, self.engine.ha_track()) {
            self.track.update(ha, t);
        }
    }

    /// Start links as they were before a restart, if the memory of them is recent.
    fn resume(&mut self, now: std::time::Instant) {
        let Some(path) = &self.memory else { return };
        match memory::load(path) {
            Ok(None) => {}
            Ok(Some((links, age))) => {
                let resumed = self.engine.resume(&links, age, now);
                if !resumed.is_empty() {
                    info!(
                        "resuming from {:.1} s ago: {}",
                        age.as_secs_f64(),
                        resumed.join(", ")
                    );
                }
            }
            Err(e) => warn!("link states from before the restart not used: {e}"),
        }
    }

    /// Save the link states if a transition happened or the file is due for a refresh.
    fn remember(&mut self) {
        let Some(path) = &self.memory else { return };
        if !std::mem::take(&mut self.memory_dirty) {
            return;
        }
        let now = Instant::now();
        if let Err(e) = memory::save(path, self.engine.memory(now.into_std())) {
            warn!(
                "cannot save link states to {}: {e}; a restart will not know them",
                path.display()
            );
            self.memory = None;
        }
        self.memory_saved = Some(now);
    }

    /// Log an event, stream it to `watch`, and keep systemd's status line current.
    fn emit(&self, e: Event) {
        match e.level() {
            Level::Info => info!("{e}"),
            Level::Warn => warn!("{e}"),
            Level::Error => error!("{e}"),
        }
        match &e {
            Event::Transition {
                link,
                to,
                reason,
                at,
                ..
            } => {
                if let Some(id) = self.engine.link_id(link) {
                    lock(&self.history).transition(id, *at, to, reason);
                }
            }
            Event::Purge {
                link,
                flows,
                tcp_reset,
                ..
            } => {
                lock(&self.history).purged(link, *flows as u64, *tcp_reset as u64);
            }
            _ => {}
        }
        if let Event::Steer { policy, to, .. } = &e {
            if policy == DEFAULT_POLICY {
                notify(&[sd_notify::NotifyState::Status(&format!(
                    "new flows via {to}"
                ))]);
            }
        }
        let _ = self.events.send(e);
    }

    async fn kernel_event(&mut self, ev: KernelEvent) {
        match ev {
            KernelEvent::Link(ev) => {
                if ev.up && self.carriers.get(&ev.name) != Some(&true) {
                    self.engine.reconcile();
                }
                self.link_event(&ev);
            }
            // Renumbered: the learned gateway and routes must follow.
            KernelEvent::Addresses => {
                self.engine.reconcile();
                self.addresses().await;
            }
            KernelEvent::Routing => self.engine.reconcile(),
        }
    }

    /// Admin state and carrier of an interface, for every link on it (admin state first, so a
    /// link taken down by an admin says so).
    fn link_event(&mut self, ev: &monitor::LinkEvent) {
        self.carriers.insert(ev.name.clone(), ev.up);
        let now = Instant::now().into_std();
        let links = &self.engine.config().links;
        let ids: Vec<usize> = (0..links.len())
            .filter(|&i| links[i].interface == ev.name)
            .collect();
        for link in ids {
            let admin = ev.admin_up;
            self.engine.handle(now, Input::Admin { link, up: admin });
            self.engine.handle(now, Input::Carrier { link, up: ev.up });
        }
    }

    /// Tell the engine each link's IPv4 addresses. A failed dump changes nothing.
    async fn addresses(&mut self) {
        let all = match self.dp.ipv4_addresses().await {
            Ok(a) => a,
            Err(e) => return warn!("{:#}", anyhow::Error::new(e)),
        };
        let now = Instant::now().into_std();
        let per_link: Vec<Vec<std::net::Ipv4Addr>> = self
            .engine
            .config()
            .links
            .iter()
            .map(|l| {
                all.iter()
                    .filter(|(i, _)| *i == l.interface)
                    .map(|(_, a)| *a)
                    .collect()
            })
            .collect();
        for (link, v4) in per_link.into_iter().enumerate() {
            self.engine.handle(now, Input::Addresses { link, v4 });
        }
        let local = all.iter().map(|(_, a)| std::net::IpAddr::V4(*a)).collect();
        self.engine.handle(now, Input::Local(local));
    }

    /// Start a reload: the file is read and checked on a blocking thread (a large one takes a
    /// while), and the loop goes on probing meanwhile; the result comes back as an input. A
    /// reload asked for while one is under way is answered with that one's result.
    fn start_reload(&mut self, reply: Option<oneshot::Sender<CommandReply>>) {
        let first = self.reloading.is_none();
        let replies = self.reloading.get_or_insert_with(Vec::new);
        replies.extend(reply);
        if !first {
            return;
        }
        notify(&[sd_notify::NotifyState::Reloading]);
        let (path, running) = (self.path.clone(), self.engine.config().clone());
        let tx = self.reload_tx.clone();
        tokio::spawn(async move {
            let checked = tokio::task::spawn_blocking(move || reload_config(&path, &running))
                .await
                .unwrap_or_else(|e| Err(format!("reload failed: {e}")));
            let _ = tx.send(checked).await;
        });
    }

    /// Take a checked configuration in, or report why it was refused (the running one stays).
    async fn finish_reload(&mut self, checked: Result<Config, String>) -> CommandReply {
        let result = match checked {
            Err(e) => {
                self.engine.reload_failed(e.clone());
                Err(e)
            }
            Ok(new) => {
                let n = new.links.len();
                let message = format!(
                    "reloaded {} ({n} link{})",
                    self.path.display(),
                    if n == 1 { "" } else { "s" }
                );
                self.probes.reconfigure(&new);
                lock(&self.history).reconfigure(&new.link_names());
                if self.history_file.is_some() && new.control.history != self.history_file {
                    self.save_history();
                    self.history_file = new.control.history.clone();
                }
                let sync = |c: &Config| c.ha.as_ref().and_then(|h| h.sync.clone());
                let reopen = sync(&new) != sync(self.engine.config());
                let now = Instant::now().into_std();
                self.engine.reconfigure(new, now, message.clone());
                // Links kept their health; new ones learn carrier and addresses like at start.
                if let Ok(links) = self.dp.interfaces().await {
                    for ev in links {
                        self.link_event(&ev);
                    }
                }
                self.addresses().await;
                if reopen {
                    self.peer = None;
                    self.open_peer();
                }
                Ok(message)
            }
        };
        notify(&[sd_notify::NotifyState::Ready]);
        result
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        notify(&[sd_notify::NotifyState::Stopping]);
        self.memory_dirty = true;
        self.remember();
        self.save_history();
        if let Some(ha) = &self.engine.config().ha {
            self.track.stop(ha);
        }
        if !self.engine.config().dataplane.cleanup_on_exit {
            info!("stopping: leaving the dataplane in place (cleanup_on_exit = false)");
            return Ok(());
        }
        info!("stopping: removing nft table, rules and routes");
        let d = self.engine.desired();
        self.dp.remove_all(&d).await.context("cleanup incomplete")
    }

    /// Where the default policy's new flows go now (as applied).
    fn steer_name(&self) -> String {
        let d = self
            .engine
            .applied_state()
            .cloned()
            .unwrap_or_else(|| self.engine.desired());
        crate::engine::share_name(&d, d.share())
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

/// Tell systemd (when it started us with Type=notify); harmless otherwise.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        debug!("sd_notify: {e}");
    }
}

/// Wait for the next tick, or forever without an interval.
/// The peer's next datagram; never, without a peer.
async fn peer_recv(peer: Option<&ha::Peer>, buf: &mut [u8]) -> usize {
    match peer {
        Some(p) => p.recv(buf).await,
        None => std::future::pending().await,
    }
}

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
