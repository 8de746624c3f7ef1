//! The status socket: newline-delimited JSON over a Unix stream socket.
//!
//! Request: `{"cmd":"status"}` (optionally `"v":1`). Reply: `{"ok":true,"status":{...}}` or
//! `{"ok":false,"error":"..."}`, one line each. A connection may send any number of requests.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

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
    /// Name of the link new LAN flows are steered to.
    pub steer_to: Option<String>,
    /// Worst-case time from a silent blackhole to a `down` decision with this configuration.
    pub worst_case_detection_ms: u64,
    pub links: Vec<LinkStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkStatus {
    pub name: String,
    pub interface: String,
    /// `unknown`, `up` or `down`.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default)]
    v: Option<u32>,
    cmd: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn error(msg: impl Into<String>) -> Reply {
    Reply {
        ok: false,
        status: None,
        error: Some(msg.into()),
    }
}

/// Answer one request line.
pub fn answer(line: &str, status: &Status) -> Reply {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return error(format!("malformed request: {e}")),
    };
    if let Some(v) = req.v.filter(|&v| v != PROTOCOL_VERSION) {
        return error(format!(
            "unsupported protocol version {v}, this daemon speaks {PROTOCOL_VERSION}"
        ));
    }
    match req.cmd.as_str() {
        "status" => Reply {
            ok: true,
            status: Some(status.clone()),
            error: None,
        },
        other => error(format!("unknown command {other:?}")),
    }
}

/// Bind the socket: create its directory, replace a stale socket file (never another kind of
/// file), and let only the owner and group connect.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
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
    Ok(listener)
}

/// Serve clients until the task is dropped.
pub async fn serve(listener: UnixListener, status: watch::Receiver<Status>) {
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
        let status = status.clone();
        tokio::spawn(async move {
            if let Err(e) = client(stream, status).await {
                tracing::debug!("control client: {e}");
            }
            drop(permit);
        });
    }
}

async fn client(stream: UnixStream, status: watch::Receiver<Status>) -> io::Result<()> {
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
        let reply = if line.len() > MAX_REQUEST {
            error(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) => answer(text.trim(), &status.borrow()),
                Err(_) => error("request is not UTF-8"),
            }
        };
        let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        out.push(b'\n');
        w.write_all(&out).await?;
        if line.len() > MAX_REQUEST {
            // The rest of an oversized line cannot be parsed; end the conversation.
            return Ok(());
        }
    }
}

/// Send one request and read one reply (used by `uplinkctl`).
pub async fn request(path: &Path, cmd: &str) -> io::Result<Reply> {
    let stream = UnixStream::connect(path).await?;
    let (r, mut w) = stream.into_split();
    let req = serde_json::json!({ "v": PROTOCOL_VERSION, "cmd": cmd });
    w.write_all(format!("{req}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn status_request() {
        let s = Status {
            version: PROTOCOL_VERSION,
            ..Default::default()
        };
        let r = answer(r#"{"cmd":"status"}"#, &s);
        assert!(r.ok);
        assert_eq!(r.status, Some(s.clone()));
        let r = answer(r#"{"v":1,"cmd":"status"}"#, &s);
        assert!(r.ok);
    }

    #[test]
    fn bad_requests_get_error_replies() {
        let s = Status::default();
        for bad in [
            "",
            "{",
            "null",
            "[]",
            r#"{"cmd":5}"#,
            r#"{"cmd":"status","x":1}"#,
            r#"{"cmd":"format-disk"}"#,
            r#"{"v":2,"cmd":"status"}"#,
        ] {
            let r = answer(bad, &s);
            assert!(!r.ok, "{bad:?} was accepted");
            assert!(r.error.is_some_and(|e| !e.is_empty()));
        }
    }

    #[tokio::test]
    async fn socket_round_trip_and_oversized_line() {
        let dir = std::env::temp_dir().join(format!("uplinkd-test-{}", std::process::id()));
        let path = dir.join("control.sock");
        let listener = bind(&path).unwrap();
        let (_tx, rx) = watch::channel(Status {
            version: 1,
            steer_to: Some("fiber".into()),
            ..Default::default()
        });
        let server = tokio::spawn(serve(listener, rx));
        let r = request(&path, "status").await.unwrap();
        assert_eq!(r.status.unwrap().steer_to.as_deref(), Some("fiber"));

        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(&vec![b'x'; MAX_REQUEST * 4]).await.unwrap();
        s.write_all(b"\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.unwrap();
        assert!(line.contains("longer than"), "{line}");
        // The daemon still answers.
        assert!(request(&path, "status").await.unwrap().ok);
        server.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
