//! What happened, as typed values: produced by the engine, logged by the daemon (one line each,
//! the [`Display`](fmt::Display) form), streamed to `uplinkctl watch` as JSON (`{"event":{...}}`,
//! tagged by `type`) and printed there in the same words.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::DEFAULT_POLICY;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The first apply is live.
    Ready {
        to: String,
        nft_ms: f64,
        routes_ms: f64,
    },
    /// A link changed state; `at` is the decision time, seconds since the Unix epoch.
    Transition {
        link: String,
        from: String,
        to: String,
        reason: String,
        at: f64,
    },
    /// A policy's new flows now go elsewhere (live in the kernel). `nft_ms`/`routes_ms`: how long
    /// the apply that made it live took (on the default policy's event).
    Steer {
        policy: String,
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nft_ms: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        routes_ms: Option<f64>,
    },
    /// A link's flows are about to be reset because new flows moved to a link its policy
    /// prefers (`failback = "drain"`).
    Draining {
        link: String,
        to: String,
    },
    /// A link died while no other link could take its flows: they are kept (and reset as soon
    /// as another link is usable).
    FlowsKept {
        link: String,
    },
    /// With `[ha]`: this router became the master or a backup.
    Role {
        role: String,
    },
    /// With `[ha]`: a purge this router would have made as the master; as a backup it leaves
    /// the flows to the master.
    LeftToMaster {
        link: String,
    },
    /// With `[ha]`: a master holds back the purge of a dead link's flows this long, for the
    /// peer to take over.
    HandingOver {
        link: String,
        ms: u64,
    },
    /// A link lost addresses while keeping another: the flows translated to them are reset.
    AddressGone {
        link: String,
        addresses: Vec<String>,
    },
    /// A link's flows were purged and their clients reset.
    Purge {
        link: String,
        flows: usize,
        tcp_reset: usize,
        sockets_aborted: usize,
        ms: f64,
        /// Where the time went: dump, stale set (what its inserts took after the dump, which they
        /// run alongside), flush, tickle, sockets (ms).
        #[serde(default)]
        phases_ms: [f64; 5],
    },
    PurgeFailed {
        link: String,
        error: String,
    },
    Drain {
        link: String,
        reset: bool,
    },
    Undrain {
        link: String,
    },
    Reload {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Someone else changed what uplinkd owns; it was put back.
    Repaired {
        what: String,
    },
    /// The kernel refused an apply; it is retried after `retry_ms`.
    ApplyFailed {
        error: String,
        retry_ms: u64,
    },
    /// Something is wrong with a link that uplinkd cannot repair itself (the kernel refuses its
    /// route, another table's NAT pre-empts it, a sysctl cannot be set); `None`: not any more.
    LinkProblem {
        link: String,
        problem: Option<String>,
    },
    /// Interfaces of configured links that do not exist (yet).
    MissingInterfaces {
        interfaces: Vec<String>,
    },
}

/// How loudly an event is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Event {
    pub fn level(&self) -> Level {
        match self {
            Event::PurgeFailed { .. } | Event::ApplyFailed { .. } => Level::Error,
            Event::Reload { ok: false, .. }
            | Event::Repaired { .. }
            | Event::MissingInterfaces { .. }
            | Event::LinkProblem {
                problem: Some(_), ..
            } => Level::Warn,
            _ => Level::Info,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Ready {
                to,
                nft_ms,
                routes_ms,
            } => write!(
                f,
                "dataplane ready: new flows via {to} (nft {nft_ms:.1} ms, routes {routes_ms:.1} ms)"
            ),
            Event::Transition {
                link,
                from,
                to,
                reason,
                ..
            } => write!(f, "link {link}: {from} -> {to} ({reason})"),
            Event::Steer {
                policy,
                to,
                nft_ms,
                routes_ms,
            } => {
                if policy == DEFAULT_POLICY {
                    write!(f, "new flows now via {to}")?;
                } else {
                    write!(f, "policy {policy}: new flows via {to}")?;
                }
                if let (Some(n), Some(r)) = (nft_ms, routes_ms) {
                    write!(f, " (nft {n:.1} ms, routes {r:.1} ms)")?;
                }
                Ok(())
            }
            Event::Draining { link, to } => write!(
                f,
                "link {link}: new flows moved to {to}; draining its flows (failback = \"drain\")"
            ),
            Event::Purge {
                link,
                flows,
                tcp_reset,
                sockets_aborted,
                ms,
                phases_ms: [dump, stale, flush, tickle, sockets],
            } => write!(
                f,
                "link {link}: purged {flows} flows, reset {tcp_reset} TCP clients, aborted {sockets_aborted} router sockets in {ms:.1} ms (dump {dump:.1}, stale set after it {stale:.1}, flush {flush:.1}, tickle {tickle:.1}, sockets {sockets:.1})"
            ),
            Event::Role { role } => write!(
                f,
                "this router is the {role} of its pair{}",
                if role == "master" {
                    ": it purges and resets the flows of dead links"
                } else {
                    ": the master acts on flows, this router only probes and reports"
                }
            ),
            Event::HandingOver { link, ms } => write!(
                f,
                "link {link}: its flows are reset in {ms} ms unless the peer router takes over"
            ),
            Event::LeftToMaster { link } => write!(
                f,
                "link {link}: its flows are left to the master (this router is a backup)"
            ),
            Event::FlowsKept { link } => write!(
                f,
                "link {link}: no other link can take its flows; they are kept until one can"
            ),
            Event::AddressGone { link, addresses } => write!(
                f,
                "link {link}: lost {}; resetting the flows translated to it",
                addresses.join(", ")
            ),
            Event::PurgeFailed { link, error } => write!(f, "link {link}: {error}"),
            Event::Drain { link, reset } => write!(
                f,
                "link {link}: drained by request{}",
                if *reset {
                    ", its flows will be reset"
                } else {
                    ""
                }
            ),
            Event::Undrain { link } => write!(f, "link {link}: back in service by request"),
            Event::Reload {
                ok: true, message, ..
            } => write!(f, "{}", message.as_deref().unwrap_or("reloaded")),
            Event::Reload { error, .. } => write!(
                f,
                "reload failed, the running configuration stays:\n{}",
                error.as_deref().unwrap_or("")
            ),
            Event::Repaired { what } => write!(f, "{what}; restored"),
            Event::ApplyFailed { error, retry_ms } => {
                write!(f, "{error} (retrying in {retry_ms} ms)")
            }
            Event::LinkProblem {
                link,
                problem: Some(p),
            } => write!(f, "link {link}: {p}"),
            Event::LinkProblem {
                link,
                problem: None,
            } => write!(f, "link {link}: its problem is gone"),
            Event::MissingInterfaces { interfaces } => {
                write!(f, "interfaces not present yet: {}", interfaces.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_round_trip_as_json_tagged_by_type() {
        let events = [
            Event::Transition {
                link: "fiber".into(),
                from: "up".into(),
                to: "down".into(),
                reason: "carrier lost".into(),
                at: 1.5,
            },
            Event::Steer {
                policy: "voip".into(),
                to: "lte".into(),
                nft_ms: None,
                routes_ms: None,
            },
            Event::Reload {
                ok: false,
                message: None,
                error: Some("bad".into()),
            },
        ];
        for e in events {
            let json = serde_json::to_value(&e).unwrap();
            assert!(json["type"].is_string(), "{json}");
            assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
        }
        let json = serde_json::to_string(&Event::Undrain { link: "lte".into() }).unwrap();
        assert_eq!(json, r#"{"type":"undrain","link":"lte"}"#);
    }

    #[test]
    fn a_policys_steer_reads_as_that_policy_not_the_default() {
        let steer = |policy: &str| Event::Steer {
            policy: policy.into(),
            to: "lte".into(),
            nft_ms: None,
            routes_ms: None,
        };
        assert_eq!(steer("default").to_string(), "new flows now via lte");
        assert_eq!(steer("voip").to_string(), "policy voip: new flows via lte");
    }
}
