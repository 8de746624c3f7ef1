//! Discrete-event simulation of probing with a virtual clock, for tests and benchmarks: drives an
//! [`Engine`] exactly as the supervisor does (ask for due probes, feed outcomes in arrival order),
//! with a scripted network deciding the fate of each probe. Days of virtual time run in seconds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Action, Applied, Engine, Input, LinkId, ProbeFailure, ProbeOutcome, Transition};
use crate::config::Config;

pub struct Sim {
    pub engine: Engine,
    pub now: Instant,
    /// Probes sent so far.
    pub sent: u64,
    /// The engine's actions so far, in order, with the virtual time they were taken; every apply
    /// succeeds at once.
    pub actions: Vec<(Instant, Action)>,
    pending: BTreeMap<(Instant, u64), ProbeOutcome>,
}

impl Sim {
    pub fn new(config: Config, start: Instant) -> Self {
        Sim {
            engine: Engine::new(config, start),
            now: start,
            sent: 0,
            actions: Vec::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Feed a link event at the current virtual time.
    pub fn event(&mut self, ev: Input) -> Vec<Transition> {
        let out = self.engine.handle(self.now, ev);
        self.act();
        out
    }

    /// Take the engine's actions as the supervisor would, every apply succeeding at once.
    pub fn act(&mut self) {
        while let Some(a) = self.engine.poll_action() {
            if let Action::Apply { state, .. } = &a {
                self.engine
                    .applied(self.now, state.clone(), Ok(Applied::default()));
            }
            self.actions.push((self.now, a));
        }
    }

    /// Run until `until`. `answer(link, target, sent_at)` gives a probe's RTT, or `None` when the
    /// network loses it; an RTT at or over the probe timeout counts as lost. Returns every
    /// transition, in order.
    pub fn run(
        &mut self,
        until: Instant,
        mut answer: impl FnMut(LinkId, usize, Instant) -> Option<Duration>,
    ) -> Vec<Transition> {
        let timeout = self.engine.config().probe.timeout;
        let mut out = Vec::new();
        loop {
            let next_probe = self
                .engine
                .poll_timeout()
                .map(|(t, _)| t)
                .filter(|t| *t <= until);
            let next_arrival = self
                .pending
                .keys()
                .next()
                .map(|k| k.0)
                .filter(|t| *t <= until);
            match (next_probe, next_arrival) {
                (Some(p), a) if a.is_none_or(|a| p <= a) => {
                    self.now = self.now.max(p);
                    for req in self.engine.poll_probes(self.now) {
                        let rtt =
                            answer(req.link, req.target, req.sent_at).filter(|r| *r < timeout);
                        let arrival = req.sent_at + rtt.unwrap_or(timeout);
                        self.sent += 1;
                        let outcome = ProbeOutcome {
                            link: req.link,
                            target: req.target,
                            sent_at: req.sent_at,
                            result: rtt.ok_or(ProbeFailure::Timeout),
                        };
                        self.pending.insert((arrival, self.sent), outcome);
                    }
                    // As the supervisor does after every wake-up (a handover wait may end).
                    self.act();
                }
                (_, Some(_)) => {
                    let Some(((at, _), outcome)) = self.pending.pop_first() else {
                        break;
                    };
                    self.now = self.now.max(at);
                    out.extend(self.engine.handle(self.now, Input::Probe(outcome)));
                    self.act();
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
        out
    }
}

/// A deterministic xorshift generator, so a loss pattern is reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in 0..100.
    pub fn percent(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 100
    }
}
