//! Health of one link: probe rounds, per-target silence, quorum, hysteresis and flap damping.
//!
//! Every round probes all targets of the link at once. A target is *silent* after `misses`
//! consecutive lost probes; the link is down when `quorum` targets are silent, or at once when
//! its interface loses carrier or address. Probing is calm (`interval`) while every target
//! answers and fast (`fast_interval`) from the first lost probe until every target answers
//! again, so a real outage is confirmed within a bounded time while a healthy link costs little.
//! A down link is trusted again after `up_after` consecutive good rounds that also span a hold
//! time which doubles with each recent down transition (flap penalty) and shrinks as the penalty
//! decays.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::{ProbeFailure, ProbeOutcome};
use crate::config::{Config, Detection};

/// The loss figure covers the probes of the last this many seconds: long enough that random
/// loss near a threshold does not make the link bounce between up and degraded.
const LOSS_WINDOW_SECS: u64 = 60;
/// Fewest outcomes before loss can make a link degraded. Over n probes a link losing p of them
/// shows a loss of p ± sqrt(p(1-p)/n): with 50, a link losing 20 % measured 25 % or more in a
/// third of the testbed runs (the window is still short when the loss starts); with 400 the
/// standard error is 2 points, so a 20 % link reaches a 25 % threshold about once in 160
/// windows. A lossy link is probed fast (40-70 probes/s), so this takes seconds.
const LOSS_MIN_SAMPLES: u32 = 400;
/// Rounds remembered while their probes are outstanding.
const MAX_ROUNDS: usize = 64;
/// Weight of a new RTT sample in the smoothed RTT (as TCP's SRTT, RFC 6298).
const RTT_ALPHA: f64 = 0.125;
/// Weight of a new deviation sample in the jitter (as TCP's RTTVAR).
const RTT_BETA: f64 = 0.25;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Just started, no verdict yet: treated as usable so traffic flows from the first second.
    Unknown,
    Up,
    /// Usable, but loss or latency is above its threshold: less preferred.
    Degraded,
    Down,
}

impl LinkState {
    pub fn usable(self) -> bool {
        !matches!(self, LinkState::Down)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Unknown => "unknown",
            LinkState::Up => "up",
            LinkState::Degraded => "degraded",
            LinkState::Down => "down",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default)]
pub struct TargetHealth {
    /// Lost probes sent after the newest answered one.
    pub misses: u32,
    last_answered: Option<Instant>,
    pub last_rtt: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Round {
    sent_at: Instant,
    answered: u32,
    concluded: u32,
}

type Change = Option<(LinkState, LinkState, String)>;

/// One target's outcomes over the loss window: (second since the link's epoch, probes
/// concluded, probes lost) per second, and their sums, kept as buckets come and go (the loss
/// is read after every outcome).
#[derive(Debug, Clone, Default)]
struct LossWindow {
    buckets: VecDeque<(u64, u32, u32)>,
    probes: u32,
    lost: u32,
}

#[derive(Debug, Clone)]
pub struct LinkHealth {
    pub state: LinkState,
    pub since: Instant,
    pub reason: String,
    pub targets: Vec<TargetHealth>,
    quorum: u32,
    /// Consecutive misses after which a target is silent (`detection.misses`).
    silent_after: u32,
    admin: bool,
    carrier: bool,
    address: bool,
    rounds: VecDeque<Round>,
    /// Fast probing: some probe was lost and not every target has answered since.
    fast: bool,
    next_round: Instant,
    good_streak: u32,
    good_since: Option<Instant>,
    penalty: f64,
    penalty_at: Instant,
    /// Per target: the loss window's buckets and their sums.
    loss: Vec<LossWindow>,
    epoch: Instant,
    srtt: Option<f64>,
    rttvar: f64,
    /// Probe outcomes since start, and how many of them failed.
    pub probes: u64,
    pub probes_lost: u64,
}

/// What changed at the link layer; `None`: unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LinkLayer {
    pub admin: Option<bool>,
    pub carrier: Option<bool>,
    pub address: Option<bool>,
}

impl LinkHealth {
    pub fn new(now: Instant, targets: usize, quorum: u32, silent_after: u32) -> Self {
        LinkHealth {
            state: LinkState::Unknown,
            since: now,
            reason: "starting".into(),
            targets: vec![TargetHealth::default(); targets],
            quorum,
            silent_after,
            admin: true,
            carrier: true,
            address: true,
            rounds: VecDeque::new(),
            fast: false,
            next_round: now,
            good_streak: 0,
            good_since: None,
            penalty: 0.0,
            penalty_at: now,
            loss: vec![LossWindow::default(); targets],
            epoch: now,
            srtt: None,
            rttvar: 0.0,
            probes: 0,
            probes_lost: 0,
        }
    }

    /// What to remember of this link across a restart: whether it is down, and its flap
    /// penalty now.
    pub(super) fn memory(&self, now: Instant, d: &Detection) -> (LinkState, f64) {
        (self.state, self.penalty(now, d))
    }

    /// Resume from before a restart `age` ago: a link that was down starts down (it must earn
    /// its way up again like after any outage, not be trusted for the first round), and the
    /// flap penalty carries on decaying from what it was.
    pub(super) fn resume(&mut self, now: Instant, down: bool, penalty: f64, age: Duration) {
        self.penalty = penalty.max(0.0);
        self.penalty_at = now.checked_sub(age).unwrap_or(now);
        if down && self.state == LinkState::Unknown {
            self.state = LinkState::Down;
            self.since = now;
            self.reason = format!("down before the restart {:.1} s ago", age.as_secs_f64());
        }
    }

    /// RTT of the newest answered probe of any target.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.targets
            .iter()
            .filter_map(|t| t.last_answered.zip(t.last_rtt))
            .max_by_key(|(at, _)| *at)
            .map(|(_, r)| r)
    }

    /// Smoothed RTT over all targets.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_secs_f64)
    }

    /// Smoothed mean deviation of the RTT.
    pub fn jitter(&self) -> Option<Duration> {
        self.srtt.map(|_| Duration::from_secs_f64(self.rttvar))
    }

    /// Share of the probes of the last minute to targets that are not silent that went
    /// unanswered: the link's loss, not that of a target that stopped answering altogether
    /// (those are counted by [`Self::silent_targets`]).
    pub fn loss_pct(&self) -> Option<f64> {
        let (samples, lost) = self.loss_samples();
        (samples > 0).then(|| 100.0 * f64::from(lost) / f64::from(samples))
    }

    fn loss_samples(&self) -> (u32, u32) {
        self.targets
            .iter()
            .zip(&self.loss)
            .filter(|(t, _)| t.misses < self.silent_after)
            .fold((0, 0), |(n, lost), (_, w)| (n + w.probes, lost + w.lost))
    }

    fn record_loss(&mut self, now: Instant, target: usize, lost: bool) {
        let sec = now.saturating_duration_since(self.epoch).as_secs();
        let Some(w) = self.loss.get_mut(target) else {
            return;
        };
        while let Some(&(_, n, l)) = w.buckets.front().filter(|b| b.0 + LOSS_WINDOW_SECS <= sec) {
            w.buckets.pop_front();
            w.probes -= n;
            w.lost -= l;
        }
        match w.buckets.back_mut() {
            Some(b) if b.0 == sec => {
                b.1 += 1;
                b.2 += u32::from(lost);
            }
            _ => w.buckets.push_back((sec, 1, u32::from(lost))),
        }
        w.probes += 1;
        w.lost += u32::from(lost);
    }

    pub fn silent_targets(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| t.misses >= self.silent_after)
            .count()
    }

    pub fn fast(&self) -> bool {
        self.fast
    }

    /// Flap penalty now: one per down transition, halving every `flap_half_life`.
    pub fn penalty(&self, now: Instant, d: &Detection) -> f64 {
        let age = now.saturating_duration_since(self.penalty_at).as_secs_f64();
        self.penalty * exp2(-age / d.flap_half_life.as_secs_f64())
    }

    /// How long a down link must be good before it is used again: `stable_time` doubled for
    /// every unit of flap penalty, so a link that keeps failing soon needs longer to be trusted
    /// than its good spells last.
    pub fn hold(&self, now: Instant, d: &Detection) -> Duration {
        let factor = exp2(self.penalty(now, d).min(30.0));
        d.stable_time.mul_f64(factor).min(d.max_hold)
    }

    pub(super) fn next_round(&self) -> Option<Instant> {
        self.link_layer_ok().then_some(self.next_round)
    }

    /// Start a round at `now` if one is due; the caller probes every target with `sent_at = now`.
    pub(super) fn start_round(&mut self, now: Instant, config: &Config) -> bool {
        if !self.link_layer_ok() || now < self.next_round {
            return false;
        }
        // A down link is probed calmly: fast probing only confirms an outage of a usable link.
        let fast = self.fast && self.state != LinkState::Down;
        let step = if fast {
            config.probe.fast_interval
        } else {
            config.probe.interval
        };
        // Stay on the grid unless we fell behind by more than a step (a paused process).
        self.next_round = if now - self.next_round < step {
            self.next_round + step
        } else {
            now + step
        };
        if self.rounds.len() == MAX_ROUNDS {
            self.rounds.pop_front();
        }
        self.rounds.push_back(Round {
            sent_at: now,
            answered: 0,
            concluded: 0,
        });
        true
    }

    /// Whether the interface can carry traffic at all.
    fn link_layer_ok(&self) -> bool {
        self.admin && self.carrier && self.address
    }

    pub(super) fn on_link_layer(&mut self, now: Instant, c: LinkLayer, config: &Config) -> Change {
        let was_ok = self.link_layer_ok();
        self.admin = c.admin.unwrap_or(self.admin);
        self.carrier = c.carrier.unwrap_or(self.carrier);
        self.address = c.address.unwrap_or(self.address);
        let ok = self.link_layer_ok();
        if ok == was_ok {
            return None;
        }
        self.good_streak = 0;
        self.good_since = None;
        if ok {
            // Probe at once; probes decide when the link is trusted again. Outcomes of probes
            // sent before this moment say nothing about the link as it is now.
            self.next_round = now;
            self.rounds.clear();
            for t in &mut self.targets {
                t.misses = 0;
            }
            None
        } else {
            let reason = if !self.admin {
                "interface administratively down".to_owned()
            } else if !self.carrier {
                "carrier lost".to_owned()
            } else {
                "no IPv4 address on the interface".to_owned()
            };
            self.set(now, LinkState::Down, reason, config)
        }
    }

    pub(super) fn on_probe(&mut self, now: Instant, p: &ProbeOutcome, config: &Config) -> Change {
        if p.target >= self.targets.len() {
            return None;
        }
        self.record_loss(now, p.target, p.result.is_err());
        self.probes += 1;
        self.probes_lost += u64::from(p.result.is_err());
        let target = &mut self.targets[p.target];
        match p.result {
            Ok(rtt) => {
                // A miss concludes `timeout` after its probe was sent, an answer before that; so
                // any miss already counted belongs to an older probe, and this answer supersedes it.
                if target.last_answered.is_none_or(|a| p.sent_at >= a) {
                    target.last_answered = Some(p.sent_at);
                    target.last_rtt = Some(rtt);
                    target.misses = 0;
                }
                let r = rtt.as_secs_f64();
                match self.srtt {
                    None => {
                        self.srtt = Some(r);
                        self.rttvar = r / 2.0;
                    }
                    Some(s) => {
                        self.rttvar = (1.0 - RTT_BETA) * self.rttvar + RTT_BETA * (s - r).abs();
                        self.srtt = Some((1.0 - RTT_ALPHA) * s + RTT_ALPHA * r);
                    }
                }
            }
            Err(_) => {
                if target.last_answered.is_none_or(|a| p.sent_at > a) {
                    target.misses += 1;
                }
                if !self.fast && self.state != LinkState::Down {
                    self.fast = true;
                    self.next_round = self.next_round.min(now);
                }
            }
        }

        let round_done = self
            .rounds
            .iter_mut()
            .find(|r| r.sent_at == p.sent_at)
            .and_then(|r| {
                r.concluded += 1;
                r.answered += u32::from(p.result.is_ok());
                (r.concluded as usize >= self.targets.len()).then_some(*r)
            });
        if !self.link_layer_ok() {
            return None;
        }
        if let Err(failure) = p.result {
            if let Some(change) = self.check_silence(now, failure, config) {
                return Some(change);
            }
        }
        match round_done {
            Some(r) => {
                self.rounds.retain(|x| x.sent_at != r.sent_at);
                self.on_round(now, r, config)
            }
            None => None,
        }
    }

    fn check_silence(&mut self, now: Instant, failure: ProbeFailure, config: &Config) -> Change {
        let d = &config.detection;
        let silent = self.silent_targets();
        if self.state == LinkState::Down || silent < self.quorum as usize {
            return None;
        }
        let what = match failure {
            ProbeFailure::Timeout => "timed out",
            ProbeFailure::IcmpError => "got an ICMP error",
            ProbeFailure::SendError => "could not be sent",
            ProbeFailure::OwnAddress => "went to this router's own address",
            ProbeFailure::Rejected => "was rejected",
            ProbeFailure::Certificate => "failed certificate verification",
        };
        let reason = format!(
            "{silent}/{} targets silent, {} probes lost in a row each (quorum {}; last probe {what})",
            self.targets.len(),
            d.misses,
            self.quorum
        );
        self.set(now, LinkState::Down, reason, config)
    }

    fn on_round(&mut self, now: Instant, r: Round, config: &Config) -> Change {
        let d = &config.detection;
        let n = self.targets.len() as u32;
        if r.answered == n {
            self.fast = false;
        }
        // Good: fewer than `quorum` targets unanswered, i.e. this round alone would not take the
        // link down.
        let good = n - r.answered < self.quorum;
        if good {
            self.good_streak += 1;
            self.good_since.get_or_insert(r.sent_at);
        } else {
            self.good_streak = 0;
            self.good_since = None;
        }
        match self.state {
            LinkState::Unknown if good => {
                self.set(now, LinkState::Up, "targets answer".into(), config)
            }
            LinkState::Down if good && self.good_streak >= d.up_after => {
                let stable = now.saturating_duration_since(self.good_since.unwrap_or(now));
                let hold = self.hold(now, d);
                if stable < hold {
                    return None;
                }
                let reason = format!(
                    "{} good rounds over {:.1} s (hold {:.1} s, flap penalty {:.2})",
                    self.good_streak,
                    stable.as_secs_f64(),
                    hold.as_secs_f64(),
                    self.penalty(now, d)
                );
                self.set(now, LinkState::Up, reason, config)
            }
            LinkState::Up => self
                .degradation(d)
                .and_then(|why| self.set(now, LinkState::Degraded, why, config)),
            LinkState::Degraded if self.recovered(d) => {
                let reason = format!(
                    "loss {:.0}% and RTT {:.0} ms back under half and 80% of the thresholds",
                    self.loss_pct().unwrap_or(0.0),
                    self.srtt.unwrap_or(0.0) * 1000.0
                );
                self.set(now, LinkState::Up, reason, config)
            }
            _ => None,
        }
    }

    fn degradation(&self, d: &Detection) -> Option<String> {
        let (samples, lost) = self.loss_samples();
        let loss = 100.0 * f64::from(lost) / f64::from(samples.max(1));
        if samples >= LOSS_MIN_SAMPLES && loss >= f64::from(d.degraded_loss_pct) {
            return Some(format!(
                "loss {loss:.0}% over the last minute's {samples} probes (threshold {}%)",
                d.degraded_loss_pct
            ));
        }
        match self.srtt {
            Some(s) if s >= d.degraded_rtt.as_secs_f64() => Some(format!(
                "smoothed RTT {:.0} ms (threshold {} ms)",
                s * 1000.0,
                d.degraded_rtt.as_millis()
            )),
            _ => None,
        }
    }

    fn recovered(&self, d: &Detection) -> bool {
        self.loss_pct().unwrap_or(0.0) < f64::from(d.degraded_loss_pct) / 2.0
            && self.srtt.unwrap_or(0.0) < d.degraded_rtt.as_secs_f64() * 0.8
    }

    fn set(&mut self, now: Instant, to: LinkState, reason: String, config: &Config) -> Change {
        let from = self.state;
        if from == to {
            return None;
        }
        if to == LinkState::Down {
            let d = &config.detection;
            if from != LinkState::Unknown {
                self.penalty = self.penalty(now, d) + 1.0;
                self.penalty_at = now;
            }
            self.good_streak = 0;
            self.good_since = None;
            self.fast = false;
        }
        if from == LinkState::Down {
            // Losses during the outage say nothing about the link's quality now.
            self.loss.fill(LossWindow::default());
        }
        self.state = to;
        self.since = now;
        self.reason = reason.clone();
        Some((from, to, reason))
    }
}

/// 2^x, without libm: `powf` was the daemon's only call into it, and libm then cost a shared
/// library mapped into the process (≈0.4 MB of its resident set). The integer part of x goes
/// into the exponent, the fraction through the series of e^(f·ln 2), 1e-8 exact.
fn exp2(x: f64) -> f64 {
    let x = x.clamp(-1022.0, 1023.0);
    // floor() itself is a libm call on baseline x86-64.
    let mut i = x as i64;
    if i as f64 > x {
        i -= 1;
    }
    let f = (x - i as f64) * std::f64::consts::LN_2;
    let (mut term, mut sum) = (1.0, 1.0);
    for k in 1..=10 {
        term *= f / f64::from(k);
        sum += term;
    }
    sum * f64::from_bits(((i + 1023) as u64) << 52)
}

#[cfg(test)]
mod exp2_tests {
    #[test]
    fn matches_powf() {
        for n in -40_000..=40_000 {
            let x = f64::from(n) / 1000.0;
            let (got, want) = (super::exp2(x), 2f64.powf(x));
            assert!((got - want).abs() <= want * 1e-8, "2^{x}: {got} != {want}");
        }
        assert_eq!(super::exp2(-5000.0), 2f64.powi(-1022));
    }
}

#[cfg(test)]
mod loss_window_tests {
    use std::time::{Duration, Instant};

    /// The running sums equal the buckets' own over three windows' worth of outcomes, as old
    /// seconds leave the window (some seconds with no outcome at all).
    #[test]
    fn sums_follow_the_buckets() {
        let t0 = Instant::now();
        let mut h = super::LinkHealth::new(t0, 2, 1, 3);
        let mut rng = crate::engine::sim::Rng::new(7);
        for ms in (0..3 * super::LOSS_WINDOW_SECS * 1000).step_by(130) {
            if rng.percent() < 14 {
                continue;
            }
            let lost = rng.percent() < 20;
            let target = (rng.percent() % 2) as usize;
            h.record_loss(t0 + Duration::from_millis(ms), target, lost);
            for w in &h.loss {
                let sums = w
                    .buckets
                    .iter()
                    .fold((0, 0), |(n, l), b| (n + b.1, l + b.2));
                assert_eq!((w.probes, w.lost), sums, "at {ms} ms");
            }
        }
        let (n, lost) = h.loss_samples();
        assert!(n > 300 && lost > 0 && lost < n / 3, "{n} {lost}");
    }
}
