//! Health of one link: the state machine driven by probe outcomes and carrier events.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::{ProbeFailure, ProbeOutcome};
use crate::config::Config;

/// Outcomes kept for the loss and RTT figures shown in status.
const RECENT: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Just started, no verdict yet: treated as usable so traffic flows from the first second.
    Unknown,
    Up,
    Down,
}

impl LinkState {
    pub fn usable(self) -> bool {
        matches!(self, LinkState::Unknown | LinkState::Up)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Unknown => "unknown",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct LinkHealth {
    pub state: LinkState,
    pub since: Instant,
    pub reason: String,
    carrier: bool,
    /// Send time of the newest probe that was answered (initially: start time).
    last_answered: Instant,
    /// Send time of the newest probe round that got at least one answer.
    answered_round: Option<Instant>,
    /// Consecutive answered rounds since the last failed one.
    answered_streak: u32,
    recent: VecDeque<Option<Duration>>,
}

type Change = Option<(LinkState, LinkState, String)>;

impl LinkHealth {
    pub fn new(now: Instant) -> Self {
        LinkHealth {
            state: LinkState::Unknown,
            since: now,
            reason: "starting".into(),
            carrier: true,
            last_answered: now,
            answered_round: None,
            answered_streak: 0,
            recent: VecDeque::with_capacity(RECENT),
        }
    }

    /// RTT of the newest answered probe among the recent ones.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.recent.iter().rev().find_map(|r| *r)
    }

    /// Percentage of the recent probes that were not answered; `None` before the first probe.
    pub fn loss_pct(&self) -> Option<f64> {
        if self.recent.is_empty() {
            return None;
        }
        let lost = self.recent.iter().filter(|r| r.is_none()).count();
        Some(100.0 * lost as f64 / self.recent.len() as f64)
    }

    pub(super) fn on_carrier(&mut self, now: Instant, up: bool) -> Change {
        if self.carrier == up {
            return None;
        }
        self.carrier = up;
        self.answered_streak = 0;
        if up {
            // Probes decide when it is trusted again; start the silence clock afresh so the link is
            // not declared down for silence that happened while it had no carrier.
            self.last_answered = now;
            None
        } else {
            self.set(now, LinkState::Down, "carrier lost".into())
        }
    }

    pub(super) fn on_probe(&mut self, now: Instant, p: &ProbeOutcome, config: &Config) -> Change {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(p.result.ok());
        if !self.carrier {
            return None;
        }
        match p.result {
            Ok(_) => {
                self.last_answered = self.last_answered.max(p.sent_at);
                if self.answered_round.is_none_or(|r| p.sent_at > r) {
                    self.answered_round = Some(p.sent_at);
                    self.answered_streak += 1;
                }
                let need = config.detection.up_after;
                match self.state {
                    LinkState::Unknown => self.set(now, LinkState::Up, "targets answer".into()),
                    LinkState::Down if self.answered_streak >= need => self.set(
                        now,
                        LinkState::Up,
                        format!("{need} consecutive probe rounds answered"),
                    ),
                    _ => None,
                }
            }
            Err(failure) => {
                // Replies beat timeouts: when a round's failure arrives, every answer that round
                // will get has arrived already, so an unanswered round ends the streak. A failure
                // from a round older than the newest answered one is stale and changes nothing.
                if self.answered_round.is_none_or(|r| p.sent_at > r) {
                    self.answered_streak = 0;
                }
                let silent = p.sent_at.saturating_duration_since(self.last_answered);
                let down_after = config.detection.down_after;
                if self.state != LinkState::Down && silent >= down_after {
                    let what = match failure {
                        ProbeFailure::Timeout => "timed out",
                        ProbeFailure::IcmpError => "got ICMP errors",
                        ProbeFailure::SendError => "could not be sent",
                    };
                    let reason = format!(
                        "no target answered probes sent over {} ms (last probe {what})",
                        silent.as_millis()
                    );
                    self.set(now, LinkState::Down, reason)
                } else {
                    None
                }
            }
        }
    }

    fn set(&mut self, now: Instant, to: LinkState, reason: String) -> Change {
        let from = self.state;
        if from == to {
            return None;
        }
        self.state = to;
        self.since = now;
        self.reason = reason.clone();
        if to == LinkState::Down {
            self.answered_streak = 0;
        }
        Some((from, to, reason))
    }
}
