//! The status socket: newline-delimited JSON over a Unix stream socket (DESIGN.md §5).
//!
//! Request, one line: `{"v":1,"cmd":"status"}`; `cmd` is one of `status`, `metrics`, `watch`,
//! `history` (optionally `"link":NAME`, and `"since_s":SECONDS`, default an hour), `outages`
//! (optionally `"since_s"`, default a week), `reload`, `drain` / `undrain` (with `"link":NAME`,
//! and for drain optionally `"reset":true`).
//! Reply, one line: `{"ok":true,...}` with `status`, `metrics`, `history`, `outages` or `message`, or
//! `{"ok":false,"error":"..."}`. `watch` answers once and then streams one `{"event":{...}}`
//! line per transition or action until the client goes away. A connection may send any number
//! of requests, each within [`REQUEST_TIMEOUT`] of connecting or of the previous reply, and
//! must take each line within [`WRITE_TIMEOUT`]. Anyone who can open the socket (owner root,
//! mode 0660, optionally a group) may read; `reload`, `drain` and `undrain` need a root peer
//! (SO_PEERCRED). Root's connections and everyone else's are counted apart, so no other user can
//! keep root out; a connection over its limit gets `too many connections` and is closed.

pub mod event;
pub mod metrics;

pub use event::Event;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Protocol version; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;
/// A client that does not send a whole request line in this time (from connecting, or from our
/// previous reply) is dropped: an idle or half-sent request holds a slot no longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A client that does not take a reply or a watched event in this time is dropped rather than
/// waited for.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections root may hold at once. Root has a pool of its own that no other user's
/// connections count against, so nobody else can lock root out of the socket.
const ROOT_CLIENTS: usize = 64;
/// Connections all other users together may hold at once...
const OTHER_CLIENTS: usize = 64;
/// ...and one of them: a quarter, so that one user cannot take the pool from the others.
const PER_USER_CLIENTS: usize = 16;
/// Stands for the uid of a peer whose credentials cannot be read: `(uid_t)-1` is no user's.
const UNKNOWN_UID: u32 = u32::MAX;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub version: u32,
    /// Name of the link new LAN flows are steered to (the first of `share`).
    pub steer_to: Option<String>,
    /// The links sharing new flows (one tier), with their weights and percentages.
    #[serde(default)]
    pub share: Vec<Share>,
    /// Every policy (the default one first) with its links and where its new flows go now.
    #[serde(default)]
    pub policies: Vec<PolicyStatus>,
    /// Worst-case time from a silent blackhole to a `down` decision with this configuration.
    pub worst_case_detection_ms: u64,
    pub links: Vec<LinkStatus>,
    /// Duration of the newest dataplane apply, and how many applies there were.
    pub last_apply_ms: Option<f64>,
    pub applies: u64,
    /// Why the newest apply failed, while it is being retried; none when the kernel has the
    /// desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
    /// With `[ha]`: this router's role and what it tells keepalived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HaStatus {
    /// `master` (it holds the LAN virtual address) or `backup`.
    pub role: String,
    pub lan_vip: String,
    /// What the track files say: usable links, and fault; none until a link has a verdict.
    pub weight: Option<u32>,
    pub fault: Option<bool>,
    /// A fingerprint of the links' marks and tables: both routers of a pair must show the same
    /// (committed flows route by their replicated mark).
    pub marks: String,
    /// With a sync link: what the peer's uplinkd says over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// The peer's fingerprint; `None` when it was not heard in the last 10 s.
    pub marks: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PolicyStatus {
    pub name: String,
    /// Its links, usable or not, in configuration order.
    pub links: Vec<String>,
    /// The links sharing its new flows now; empty when none is usable.
    pub share: Vec<Share>,
    /// What happens to its new flows while `share` is empty: `default` (the default policy
    /// takes them) or `unreachable` (refused).
    pub last_resort: String,
    /// Seconds a source keeps its link after its last new flow; none: not sticky.
    pub sticky_s: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Share {
    pub link: String,
    pub weight: u32,
    pub pct: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkStatus {
    pub name: String,
    pub interface: String,
    /// `unknown`, `up`, `degraded` or `down`.
    pub state: String,
    /// When the link entered its state, seconds since the Unix epoch.
    pub since: f64,
    /// Why the link is in its state.
    pub reason: String,
    /// RTT of the newest answered probe.
    pub rtt_ms: Option<f64>,
    /// Smoothed RTT and its mean deviation (as TCP's SRTT and RTTVAR).
    pub srtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// Share of the recent probes to answering targets that went unanswered.
    pub loss_pct: Option<f64>,
    pub targets: usize,
    /// Targets with `detection.misses` or more probes lost in a row.
    pub silent_targets: usize,
    /// Silent targets that make the link down.
    pub quorum: u32,
    /// Probing at `fast_interval` to confirm a suspected outage.
    pub fast_probing: bool,
    /// Flap penalty, and the time a down link must now be good before it is used again.
    pub flap_penalty: f64,
    pub hold_ms: f64,
    pub mark: u32,
    pub table: u32,
    /// Taken out of service by `uplinkctl drain`: gets no new flows.
    pub drained: bool,
    /// What is wrong with this link that uplinkd cannot repair (a route the kernel refuses,
    /// another table's NAT pre-empting uplinkd's, a sysctl it cannot set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Counters since the daemon started.
    pub probes_sent: u64,
    pub probes_lost: u64,
    pub transitions: u64,
    pub flows_purged_total: u64,
    pub tcp_reset_total: u64,
    pub sockets_aborted_total: u64,
    pub last_transition: Option<TransitionStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TransitionStatus {
    pub from: String,
    pub to: String,
    /// Decision time, seconds since the Unix epoch.
    pub at: f64,
    pub reason: String,
    /// Decision → new steering live in the kernel.
    pub steer_ms: Option<f64>,
    /// When this transition stranded flows: how long purging them and resetting their clients
    /// took, how many conntrack entries were purged and how many TCP clients were reset.
    pub purge_ms: Option<f64>,
    pub flows_purged: Option<usize>,
    pub tcp_reset: Option<usize>,
    /// Router-local TCP sockets bound to the link's addresses that were aborted.
    pub sockets_aborted: Option<usize>,
}

/// A state-changing request, handed to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Reload,
    Drain { link: String, reset: bool },
    Undrain { link: String },
}

/// What the supervisor answers to a [`Command`]: a message, or an error.
pub type CommandReply = Result<String, String>;

/// What the server shares with the supervisor.
#[derive(Clone)]
pub struct Shared {
    pub status: watch::Receiver<Status>,
    /// Events, for `watch`.
    pub events: broadcast::Sender<Event>,
    pub commands: mpsc::Sender<(Command, oneshot::Sender<CommandReply>)>,
    /// The links' quality history and outages.
    pub history: Arc<Mutex<crate::history::History>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default)]
    v: Option<u32>,
    cmd: String,
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    since_s: Option<f64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<crate::history::Series>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outages: Option<Vec<crate::history::Outage>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn error(msg: impl Into<String>) -> Reply {
    Reply {
        error: Some(msg.into()),
        ..Reply::default()
    }
}

fn ok() -> Reply {
    Reply {
        ok: true,
        ..Reply::default()
    }
}

/// What a request line asks for, checked but not yet executed.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Status,
    Metrics,
    Watch,
    /// Each link's (or one's) history over the last `since_s` seconds.
    History {
        link: Option<String>,
        since_s: u64,
    },
    Outages {
        since_s: u64,
    },
    Command(Command),
}

/// Parse and check one request line. `root`: the peer is root (may change state).
pub fn parse(line: &str, root: bool) -> Result<Parsed, String> {
    // A struct also deserializes from an array of its fields; a request is an object only.
    if line.trim_start().starts_with('[') {
        return Err("malformed request: a request is a JSON object, not an array".into());
    }
    let req: Request = serde_json::from_str(line).map_err(|e| format!("malformed request: {e}"))?;
    if let Some(v) = req.v.filter(|&v| v != PROTOCOL_VERSION) {
        return Err(format!(
            "unsupported protocol version {v}, this daemon speaks {PROTOCOL_VERSION}"
        ));
    }
    let link = || {
        req.link
            .clone()
            .ok_or_else(|| format!("{:?} needs \"link\"", req.cmd))
    };
    let parsed = match req.cmd.as_str() {
        "status" => Parsed::Status,
        "metrics" => Parsed::Metrics,
        "watch" => Parsed::Watch,
        "history" => Parsed::History {
            link: req.link.clone(),
            since_s: since(req.since_s, 3600)?,
        },
        "outages" => Parsed::Outages {
            since_s: since(req.since_s, 7 * 86400)?,
        },
        "reload" => Parsed::Command(Command::Reload),
        "drain" => Parsed::Command(Command::Drain {
            link: link()?,
            reset: req.reset,
        }),
        "undrain" => Parsed::Command(Command::Undrain { link: link()? }),
        other => return Err(format!("unknown command {other:?}")),
    };
    if matches!(parsed, Parsed::Command(_)) && !root {
        return Err(format!(
            "{:?} changes state and is only allowed for root",
            req.cmd
        ));
    }
    Ok(parsed)
}

/// A look back: whole seconds, at most the week the history keeps.
fn since(s: Option<f64>, default: u64) -> Result<u64, String> {
    match s {
        None => Ok(default),
        Some(s) if (1.0..=7.0 * 86400.0).contains(&s) => Ok(s as u64),
        Some(s) => Err(format!("\"since_s\" must be 1 to 604800 seconds, got {s}")),
    }
}

/// The wall clock: seconds since the Unix epoch.
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Bind the socket: create its directory, replace a stale socket file (never another kind of
/// file), and let only the owner and `group` (when given) connect.
pub fn bind(path: &Path, group: Option<u32>) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(listener)
}

/// Serve clients until the task is dropped. A connection beyond its owner's limit is told
/// `too many connections` and closed at once; the accept loop never waits for a client.
pub async fn serve(listener: UnixListener, shared: Shared) {
    serve_with(listener, shared, peer_uid).await
}

/// The peer's uid (SO_PEERCRED); a peer whose credentials cannot be read counts as unprivileged.
fn peer_uid(stream: &UnixStream) -> u32 {
    stream.peer_cred().map_or(UNKNOWN_UID, |c| c.uid())
}

/// [`serve`], with the peer's uid from `uid_of` (tests pose as unprivileged peers with it).
async fn serve_with(listener: UnixListener, shared: Shared, uid_of: impl Fn(&UnixStream) -> u32) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = uid_of(&stream);
        let slot = match Slot::take(&slots, uid) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!("control client (uid {uid}) refused: {why}");
                refuse(&stream, why);
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = client(stream, shared, uid == 0).await {
                tracing::debug!("control client (uid {uid}): {e}");
            }
            drop(slot);
        });
    }
}

/// Connections held, by uid, within [`ROOT_CLIENTS`], [`OTHER_CLIENTS`] and
/// [`PER_USER_CLIENTS`].
#[derive(Debug, Default)]
struct Slots {
    held: HashMap<u32, usize>,
    /// Held by users other than root, together.
    others: usize,
}

impl Slots {
    /// Count a new connection of `uid`, or say which limit it is over.
    fn take(&mut self, uid: u32) -> Result<(), String> {
        let held = self.held.get(&uid).copied().unwrap_or(0);
        if uid == 0 && held >= ROOT_CLIENTS {
            return Err(format!(
                "too many connections: root has {ROOT_CLIENTS} open"
            ));
        }
        if uid != 0 && held >= PER_USER_CLIENTS {
            return Err(format!(
                "too many connections: uid {uid} has {PER_USER_CLIENTS} open"
            ));
        }
        if uid != 0 && self.others >= OTHER_CLIENTS {
            return Err(format!(
                "too many connections: users other than root have {OTHER_CLIENTS} open"
            ));
        }
        self.held.insert(uid, held + 1);
        self.others += usize::from(uid != 0);
        Ok(())
    }

    /// A connection of `uid` ended.
    fn give_back(&mut self, uid: u32) {
        if let Some(n) = self.held.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&uid);
            }
            self.others -= usize::from(uid != 0);
        }
    }
}

/// A connection's place in the [`Slots`], given back when the connection ends.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    uid: u32,
}

impl Slot {
    fn take(slots: &Arc<Mutex<Slots>>, uid: u32) -> Result<Self, String> {
        lock(slots).take(uid)?;
        Ok(Slot {
            slots: slots.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.slots).give_back(self.uid);
    }
}

/// The lock of a mutex whose holder panicked is taken over: what they guard are counters.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tell a refused client why, without waiting: its socket is new, so the send buffer is empty
/// and the short line fits (a failed write only loses the explanation). Dropping the stream
/// closes it.
fn refuse(stream: &UnixStream, why: String) {
    if let Ok(mut line) = serde_json::to_vec(&error(why)) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
}

/// Send one line, or give up on a client that does not take it within [`WRITE_TIMEOUT`].
async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, v: &impl Serialize) -> io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(io::Error::other)?;
    out.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&out)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("did not read a reply within {WRITE_TIMEOUT:?}"),
        )),
    }
}

async fn client(stream: UnixStream, shared: Shared, root: bool) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut r).take(MAX_REQUEST as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        let n = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(n) => n?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST {
            // The rest of an oversized line cannot be parsed; end the conversation.
            return send(
                &mut w,
                &error(format!("request longer than {MAX_REQUEST} bytes")),
            )
            .await;
        }
        let parsed = match std::str::from_utf8(&line) {
            Ok(text) => parse(text.trim(), root),
            Err(_) => Err("request is not UTF-8".into()),
        };
        let reply = match parsed {
            Err(e) => error(e),
            Ok(Parsed::Status) => Reply {
                status: Some(shared.status.borrow().clone()),
                ..ok()
            },
            Ok(Parsed::Metrics) => Reply {
                metrics: Some(metrics::render(&shared.status.borrow())),
                ..ok()
            },
            Ok(Parsed::Watch) => return watch_events(r, w, shared.events.subscribe()).await,
            Ok(Parsed::History { link, since_s }) => {
                let now = epoch_now();
                let h = lock(&shared.history).series(link.as_deref(), since_s as f64, now);
                match h {
                    Some(h) => Reply {
                        history: Some(h),
                        ..ok()
                    },
                    None => error(format!("no link named {:?}", link.unwrap_or_default())),
                }
            }
            Ok(Parsed::Outages { since_s }) => Reply {
                outages: Some(lock(&shared.history).outages(epoch_now() - since_s as f64)),
                ..ok()
            },
            Ok(Parsed::Command(c)) => {
                let (tx, rx) = oneshot::channel();
                match shared.commands.send((c, tx)).await {
                    Err(_) => error("the daemon is shutting down"),
                    Ok(()) => match rx.await {
                        Ok(Ok(message)) => Reply {
                            message: Some(message),
                            ..ok()
                        },
                        Ok(Err(e)) => error(e),
                        Err(_) => error("the daemon is shutting down"),
                    },
                }
            }
        };
        send(&mut w, &reply).await?;
        // One request per turn: a client that sends many at once (its requests then come from
        // our buffer, and its replies fit in the socket's) takes turns with the other clients
        // instead of keeping the daemon's one thread to itself until its backlog is answered.
        tokio::task::yield_now().await;
    }
}

/// Stream events until the client goes away: it closes (or shuts down its sending side), or does
/// not take an event within [`WRITE_TIMEOUT`]. A client slower than the events loses some (and
/// is told how many) rather than holding the daemon back. Anything it sends is ignored.
async fn watch_events(
    mut r: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut w: tokio::net::unix::OwnedWriteHalf,
    mut events: broadcast::Receiver<Event>,
) -> io::Result<()> {
    send(
        &mut w,
        &Reply {
            message: Some("watching".into()),
            ..ok()
        },
    )
    .await?;
    let mut ignored = [0u8; 512];
    loop {
        // Both are cancel-safe: an event or bytes not taken in one round stay for the next.
        let line = tokio::select! {
            read = r.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
            event = events.recv() => match event {
                Ok(e) => serde_json::json!({ "event": e }),
                Err(broadcast::error::RecvError::Lagged(n)) => serde_json::json!({ "lost_events": n }),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        };
        send(&mut w, &line).await?;
    }
}

/// An open conversation with the daemon (used by `uplinkctl`).
pub struct Connection {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Connection {
    pub async fn open(path: &Path) -> io::Result<Self> {
        let (r, writer) = UnixStream::connect(path).await?.into_split();
        Ok(Connection {
            reader: BufReader::new(r),
            writer,
        })
    }

    /// Send one request and read its reply.
    pub async fn request(&mut self, req: &serde_json::Value) -> io::Result<Reply> {
        let sent = self.writer.write_all(format!("{req}\n").as_bytes()).await;
        // A refused connection is closed right after its error line, and the request may not
        // get through any more; the line says why.
        let line = match (self.line().await, sent) {
            (Ok(Some(line)), _) => line,
            (_, Err(e)) | (Err(e), Ok(())) => return Err(e),
            (Ok(None), Ok(())) => return Err(io::ErrorKind::UnexpectedEof.into()),
        };
        serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The next line the daemon sends (after `watch`), or `None` when it closed the connection.
    pub async fn line(&mut self) -> io::Result<Option<String>> {
        let mut line = String::new();
        Ok((self.reader.read_line(&mut line).await? > 0).then_some(line))
    }
}

#[cfg(test)]
mod tests;
