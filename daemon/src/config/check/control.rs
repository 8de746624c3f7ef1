//! `[control]`, `[metrics]` and `[hooks]`: how uplinkd is watched and told about.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::raw::{RawControl, RawHooks, RawMetrics};
use super::super::{Control, Hooks, Metrics, DEFAULT_HISTORY, DEFAULT_SOCKET};
use super::{range, Checker};

pub(super) fn control(c: &mut Checker, raw: &RawControl) -> Control {
    let gid = raw
        .group
        .as_ref()
        .and_then(|g| match group_id(g.get_ref()) {
            Some(id) => Some(id),
            None => {
                c.err(
                    g.span(),
                    "control.group",
                    format!("no group named {:?} in /etc/group", g.get_ref()),
                );
                None
            }
        });
    let history = match &raw.history {
        None => Some(PathBuf::from(DEFAULT_HISTORY)),
        Some(h) if h.get_ref().is_empty() => None,
        Some(h) if !h.get_ref().starts_with('/') || h.get_ref().ends_with('/') => {
            c.err(
                h.span(),
                "control.history",
                "must be an absolute path to a file, or \"\" (kept in memory only)",
            );
            None
        }
        Some(h) => Some(PathBuf::from(h.get_ref())),
    };
    Control {
        history,
        group: raw.group.as_ref().map(|g| g.get_ref().clone()),
        gid,
        socket: match &raw.socket {
            Some(s) if !s.get_ref().starts_with('/') => {
                c.err(s.span(), "control.socket", "must be an absolute path");
                PathBuf::from(DEFAULT_SOCKET)
            }
            Some(s) => match socket_problem(s.get_ref()) {
                Some(problem) => {
                    c.err(s.span(), "control.socket", problem);
                    PathBuf::from(DEFAULT_SOCKET)
                }
                None => PathBuf::from(s.get_ref()),
            },
            None => PathBuf::from(DEFAULT_SOCKET),
        },
    }
}

/// `sun_path` of `struct sockaddr_un` (unix(7)): 108 bytes, the path's terminating NUL included.
const SUN_PATH_LEN: usize = 108;

/// Why the daemon could not bind a socket at absolute path `path`, as far as this machine
/// tells now: `control::bind` creates the missing directories and replaces a stale socket, but
/// nothing else.
fn socket_problem(path: &str) -> Option<String> {
    if path.contains('\0') {
        return Some(format!("{path:?} contains a NUL byte"));
    }
    if path.len() >= SUN_PATH_LEN {
        return Some(format!(
            "{} bytes long; a unix socket path has at most {} ({SUN_PATH_LEN} bytes with its \
             terminating NUL)",
            path.len(),
            SUN_PATH_LEN - 1
        ));
    }
    if path.ends_with('/') {
        return Some(format!("{path:?} must name a file, not a directory"));
    }
    let path = Path::new(path);
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => return None,
        Ok(_) => return Some(format!("{} exists and is not a socket", path.display())),
        Err(_) => {}
    }
    // The nearest existing ancestor must be a directory, where the rest can be created.
    let existing = path.ancestors().skip(1).find(|a| a.exists())?;
    (!existing.is_dir()).then(|| format!("{} is not a directory", existing.display()))
}

/// The id of a group, from /etc/group (name:password:gid:members).
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name))
            .then(|| f.nth(1).and_then(|g| g.parse().ok()))
            .flatten()
    })
}

pub(super) fn metrics(c: &mut Checker, raw: &RawMetrics) -> Metrics {
    Metrics {
        listen: raw.listen.as_ref().and_then(|l| match l.get_ref().parse() {
            Ok(a) => match listen_problem(a) {
                Some(problem) => {
                    c.err(l.span(), "metrics.listen", problem);
                    None
                }
                None => Some(a),
            },
            Err(_) => {
                c.err(
                    l.span(),
                    "metrics.listen",
                    format!(
                        "{:?} is not an address:port, like \"127.0.0.1:9184\"",
                        l.get_ref()
                    ),
                );
                None
            }
        }),
    }
}

/// Why Prometheus could not scrape a listener on `a`, when that is known without the router's
/// addresses (an address it does not have is reported when the daemon starts).
fn listen_problem(a: SocketAddr) -> Option<String> {
    let ip = a.ip().to_canonical();
    let broadcast = ip == IpAddr::from([255, 255, 255, 255]);
    if ip.is_multicast() || broadcast {
        Some(format!(
            "{a}: a TCP listener needs a unicast address (or 0.0.0.0 or [::])"
        ))
    } else if a.port() == 0 {
        Some(format!(
            "{a}: port 0 would be a random port nobody knows to scrape"
        ))
    } else {
        None
    }
}

pub(super) fn hooks(c: &mut Checker, raw: &RawHooks) -> Hooks {
    let (ms, secs) = (Duration::from_millis, Duration::from_secs);
    Hooks {
        on_transition: match &raw.on_transition {
            Some(cmd) if cmd.get_ref().first().is_none_or(|p| !p.starts_with('/')) => {
                c.err(
                    cmd.span(),
                    "hooks.on_transition",
                    "must be [\"/absolute/program\", \"arg\", ...]",
                );
                Vec::new()
            }
            Some(cmd) => cmd.get_ref().clone(),
            None => Vec::new(),
        },
        timeout: c.duration(
            &raw.timeout,
            "hooks.timeout",
            secs(10),
            range(ms(100), secs(3600)),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::MINIMAL;
    use crate::config::parse;

    /// The problems of MINIMAL followed by `extra`, as (line, key, message).
    fn problems(extra: &str) -> Vec<(usize, String, String)> {
        match parse(&format!("{MINIMAL}{extra}")) {
            Ok(_) => Vec::new(),
            Err(p) => p.into_iter().map(|p| (p.line, p.key, p.message)).collect(),
        }
    }

    #[test]
    fn sockets_the_daemon_could_not_bind_are_refused() {
        // sun_path holds 108 bytes with the terminating NUL.
        let longest = format!("/run/{}", "x".repeat(102));
        assert_eq!(longest.len(), 107);
        assert_eq!(problems(&format!("[control]\nsocket = {longest:?}\n")), []);
        let too_long = format!("{longest}y");
        let p = problems(&format!("\n[control]\nsocket = {too_long:?}\n"));
        assert_eq!(
            (p.len(), p[0].0, p[0].1.as_str()),
            (1, 19, "control.socket")
        );
        assert!(p[0].2.contains("108 bytes"), "{p:?}");

        let dir = std::env::temp_dir().join(format!("uplinkd-socket-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let regular = dir.join("regular");
        std::fs::write(&regular, "").unwrap();
        for (path, why) in [
            (regular.clone(), "exists and is not a socket"),
            (dir.clone(), "exists and is not a socket"),
            (regular.join("sock"), "is not a directory"),
            ("/run/uplinkd/".into(), "must name a file"),
            ("/run/upl\0inkd.sock".into(), "NUL"),
        ] {
            let path = toml::Value::String(path.to_str().unwrap().into());
            let toml = format!("[control]\nsocket = {path}\n");
            let p = problems(&toml);
            assert_eq!(p.len(), 1, "{toml}: {p:?}");
            assert_eq!((p[0].0, p[0].1.as_str()), (18, "control.socket"));
            assert!(p[0].2.contains(why), "{toml}: {p:?}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn metrics_addresses_nobody_could_scrape_are_refused() {
        for ok in [
            "0.0.0.0:9184",
            "[::]:9184",
            "127.0.0.1:9184",
            "192.0.2.1:9184",
        ] {
            assert_eq!(
                problems(&format!("[metrics]\nlisten = {ok:?}\n")),
                [],
                "{ok}"
            );
        }
        for bad in [
            "224.0.0.1:9184",
            "[ff02::1]:9184",
            "255.255.255.255:9184",
            "127.0.0.1:0",
        ] {
            let p = problems(&format!("[metrics]\nlisten = {bad:?}\n"));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert_eq!((p[0].0, p[0].1.as_str()), (18, "metrics.listen"), "{bad}");
        }
    }
}
