//! `[control]`, `[metrics]` and `[hooks]`: how uplinkd is watched and told about.

use std::path::PathBuf;
use std::time::Duration;

use super::super::raw::{RawControl, RawHooks, RawMetrics};
use super::super::{Control, Hooks, Metrics, DEFAULT_SOCKET};
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
    Control {
        group: raw.group.as_ref().map(|g| g.get_ref().clone()),
        gid,
        socket: match &raw.socket {
            Some(s) if !s.get_ref().starts_with('/') => {
                c.err(s.span(), "control.socket", "must be an absolute path");
                PathBuf::from(DEFAULT_SOCKET)
            }
            Some(s) => PathBuf::from(s.get_ref()),
            None => PathBuf::from(DEFAULT_SOCKET),
        },
    }
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
            Ok(a) => Some(a),
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
