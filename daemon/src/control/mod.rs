//! The status socket: newline-delimited JSON over a Unix stream socket (DESIGN.md §5).
//!
//! Request, one line: `{"v":1,"cmd":"status"}`; `cmd` is one of `status`, `metrics`, `watch`,
//! `reload`, `drain` / `undrain` (with `"link":NAME`, and for drain optionally `"reset":true`).
//! Reply, one line: `{"ok":true,...}` with `status`, `metrics` or `message`, or
//! `{"ok":false,"error":"..."}`. `watch` answers once and then streams one `{"event":{...}}`
//! line per transition or action until the client goes away. A connection may send any number
//! of requests. Anyone who can open the socket (owner root, mode 0660, optionally a group) may
//! read; `reload`, `drain` and `undrain` need a root peer (SO_PEERCRED).

pub mod event;
pub mod metrics;

pub use event::Event;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};

/// Protocol version; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;
/// A client that does not finish a request in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 64;

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
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
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
    Command(Command),
}

/// Parse and check one request line. `root`: the peer is root (may change state).
pub fn parse(line: &str, root: bool) -> Result<Parsed, String> {
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

/// Serve clients until the task is dropped.
pub async fn serve(listener: UnixListener, shared: Shared) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = client(stream, shared).await {
                tracing::debug!("control client: {e}");
            }
            drop(permit);
        });
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, v: &impl Serialize) -> io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await
}

async fn client(stream: UnixStream, shared: Shared) -> io::Result<()> {
    let root = stream.peer_cred().is_ok_and(|c| c.uid() == 0);
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
            Ok(Parsed::Watch) => return watch_events(w, shared.events.subscribe()).await,
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
    }
}

/// Stream events until the client goes away. A client too slow to keep up loses events (and is
/// told how many) rather than holding the daemon back.
async fn watch_events(
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
    loop {
        match events.recv().await {
            Ok(e) => send(&mut w, &serde_json::json!({ "event": e })).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                send(&mut w, &serde_json::json!({ "lost_events": n })).await?
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
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
        self.writer.write_all(format!("{req}\n").as_bytes()).await?;
        let line = self
            .line()
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
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
