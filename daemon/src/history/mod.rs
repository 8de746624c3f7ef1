//! Link quality history: each link's RTT, jitter, loss and state at three resolutions (10 s for
//! the last hour, 1 min for the last day, 15 min for the last week), and its outages. Bounded:
//! rings of [`Bucket`]s (20 bytes each) that fill as time passes, at most [`MAX_OUTAGES`]
//! outages. Kept across restarts in one file, replaced by rename; a file that cannot be read is
//! left aside.

pub mod report;

use std::collections::VecDeque;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// (seconds per bucket, buckets): an hour, a day and a week.
pub const TIERS: [(u32, usize); 3] = [(10, 360), (60, 1440), (900, 672)];
/// Outages kept (and none older than the longest tier).
pub const MAX_OUTAGES: usize = 1000;
/// A history file larger than this is not read.
const MAX_FILE: u64 = 16 << 20;
const FILE_VERSION: u32 = 1;

/// The probes of one link within one bucket's time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    pub sent: u32,
    pub lost: u32,
    /// Mean RTT (ms) of the answered probes, and the sum of squared deviations from it
    /// (Welford), for the jitter.
    mean: f32,
    m2: f32,
    /// The worst state seen: [`NO_DATA`], [`UP`], [`DEGRADED`] or [`DOWN`].
    pub state: u8,
}

pub const NO_DATA: u8 = 0;
pub const UP: u8 = 1;
pub const DEGRADED: u8 = 2;
pub const DOWN: u8 = 3;

/// A link state's code (an unknown link has no data yet).
pub fn state_code(state: &str) -> u8 {
    match state {
        "up" => UP,
        "degraded" => DEGRADED,
        "down" => DOWN,
        _ => NO_DATA,
    }
}

impl Bucket {
    fn answered(&self) -> u32 {
        self.sent - self.lost
    }

    fn add(&mut self, rtt_ms: Option<f64>) {
        self.sent += 1;
        match rtt_ms {
            None => self.lost += 1,
            Some(r) => {
                let r = r as f32;
                let d = r - self.mean;
                self.mean += d / self.answered() as f32;
                self.m2 += d * (r - self.mean);
            }
        }
    }

    /// Both buckets' probes as one (Chan et al.'s combination of means and deviations).
    pub fn merge(&mut self, o: &Bucket) {
        let (na, nb) = (self.answered() as f32, o.answered() as f32);
        if nb > 0.0 {
            let n = na + nb;
            let d = o.mean - self.mean;
            self.mean += d * nb / n;
            self.m2 += o.m2 + d * d * na * nb / n;
        }
        self.sent += o.sent;
        self.lost += o.lost;
        self.state = self.state.max(o.state);
    }

    pub fn rtt_ms(&self) -> Option<f64> {
        (self.answered() > 0).then_some(f64::from(self.mean))
    }

    /// The standard deviation of the RTTs.
    pub fn jitter_ms(&self) -> Option<f64> {
        (self.answered() > 0).then(|| f64::from((self.m2 / self.answered() as f32).max(0.0).sqrt()))
    }

    pub fn loss_pct(&self) -> Option<f64> {
        (self.sent > 0).then(|| 100.0 * f64::from(self.lost) / f64::from(self.sent))
    }
}

/// One resolution: the buckets up to the one numbered `newest` (bucket `j` covers `j * step`
/// seconds of the epoch onwards), oldest first, at most `len` of them. They are added as time
/// passes, and the ring's room doubles up to `len` as they come: a young history holds only
/// what it has seen.
#[derive(Debug, Clone, PartialEq)]
struct Tier {
    step: u32,
    len: usize,
    newest: u64,
    ring: VecDeque<Bucket>,
}

impl Tier {
    fn new(step: u32, len: usize) -> Self {
        Tier {
            step,
            len,
            newest: 0,
            ring: VecDeque::new(),
        }
    }

    /// Room for one more bucket.
    fn grow(&mut self) {
        if self.ring.len() == self.ring.capacity() {
            let room = (self.ring.capacity() * 2).max(16).min(self.len);
            self.ring.reserve_exact(room - self.ring.len());
        }
    }

    /// The bucket of time `epoch`, the ring moved on to it; `None` if it is older than the ring.
    fn at(&mut self, epoch: f64) -> Option<&mut Bucket> {
        self.slot((epoch.max(0.0) / f64::from(self.step)) as u64)
    }

    /// Bucket `j`, the ring moved on to it; `None` if it is older than the ring.
    fn slot(&mut self, j: u64) -> Option<&mut Bucket> {
        if self.ring.is_empty() {
            self.newest = j;
        }
        if j > self.newest {
            // Buckets between are times without probes (uplinkd was not running).
            for _ in 0..(j - self.newest).min(self.len as u64) {
                if self.ring.len() == self.len {
                    self.ring.pop_front();
                }
                self.grow();
                self.ring.push_back(Bucket::default());
            }
            self.newest = j;
        }
        let back = usize::try_from(self.newest - j)
            .ok()
            .filter(|&b| b < self.len)?;
        while self.ring.len() <= back {
            self.grow();
            self.ring.push_front(Bucket::default());
        }
        let i = self.ring.len() - 1 - back;
        self.ring.get_mut(i)
    }

    /// The buckets with their numbers, oldest first.
    fn numbered(&self) -> impl Iterator<Item = (u64, &Bucket)> {
        let oldest = (self.newest + 1).saturating_sub(self.ring.len() as u64);
        (oldest..).zip(&self.ring)
    }

    /// The buckets from time `from` (epoch) to the newest, oldest first, from the first with
    /// data, with that one's start time.
    fn since(&self, from: f64) -> (f64, Vec<Bucket>) {
        let from = (from.max(0.0) / f64::from(self.step)) as u64;
        let mut out = self
            .numbered()
            .skip_while(|&(j, b)| j < from || *b == Bucket::default())
            .peekable();
        let first = out.peek().map_or(self.newest + 1, |&(j, _)| j);
        (
            first as f64 * f64::from(self.step),
            out.map(|(_, b)| *b).collect(),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
struct LinkHistory {
    name: String,
    tiers: Vec<Tier>,
    /// When the current run of lost probes began, and the current run of answered ones: an
    /// outage is dated by what the probes saw, not by the decisions (which come a detection
    /// time later, and a hold time later).
    losing_since: Option<f64>,
    answering_since: Option<f64>,
}

impl LinkHistory {
    fn new(name: &str) -> Self {
        LinkHistory {
            name: name.to_owned(),
            tiers: TIERS.iter().map(|&(s, n)| Tier::new(s, n)).collect(),
            losing_since: None,
            answering_since: None,
        }
    }
}

/// A spell of a link down: when, for how long, why, and the flows it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    pub link: String,
    /// Seconds since the Unix epoch.
    pub start: f64,
    /// `None`: still down.
    pub end: Option<f64>,
    pub reason: String,
    /// Flows purged from the connection table and TCP clients reset for it.
    pub flows: u64,
    pub tcp_resets: u64,
}

/// Every link's history and the outages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    links: Vec<LinkHistory>,
    outages: VecDeque<Outage>,
}

/// One link's buckets at one resolution, as the control socket serves them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub link: String,
    pub step_s: u32,
    /// Start of the first bucket, seconds since the Unix epoch.
    pub start: f64,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Probes sent and lost.
    pub sent: u32,
    pub lost: u32,
    /// Mean and standard deviation of the answered probes' RTT.
    pub rtt_ms: Option<f32>,
    pub jitter_ms: Option<f32>,
    pub loss_pct: Option<f32>,
    /// [`NO_DATA`], [`UP`], [`DEGRADED`] or [`DOWN`].
    pub state: u8,
}

impl From<&Point> for Bucket {
    fn from(p: &Point) -> Self {
        let answered = p.sent.saturating_sub(p.lost) as f32;
        let sd = p.jitter_ms.unwrap_or(0.0);
        Bucket {
            sent: p.sent,
            lost: p.lost.min(p.sent),
            mean: p.rtt_ms.unwrap_or(0.0),
            m2: sd * sd * answered,
            state: p.state.min(DOWN),
        }
    }
}

impl From<&Bucket> for Point {
    fn from(b: &Bucket) -> Self {
        Point {
            sent: b.sent,
            lost: b.lost,
            rtt_ms: b.rtt_ms().map(|v| v as f32),
            jitter_ms: b.jitter_ms().map(|v| v as f32),
            loss_pct: b.loss_pct().map(|v| v as f32),
            state: b.state,
        }
    }
}

impl History {
    pub fn new(links: &[String]) -> Self {
        let mut h = History::default();
        h.reconfigure(links);
        h
    }

    /// The links are now `links`: each keeps its history by name; new ones start empty.
    pub fn reconfigure(&mut self, links: &[String]) {
        let mut old = std::mem::take(&mut self.links);
        self.links = links
            .iter()
            .map(|n| match old.iter().position(|l| l.name == *n) {
                Some(i) => old.swap_remove(i),
                None => LinkHistory::new(n),
            })
            .collect();
    }

    /// A probe of link `link` (its index) sent at `epoch`: answered in `rtt_ms`, or lost; the
    /// link's state after it.
    pub fn probe(&mut self, link: usize, epoch: f64, rtt_ms: Option<f64>, state: u8) {
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        if rtt_ms.is_some() {
            l.losing_since = None;
            l.answering_since.get_or_insert(epoch);
        } else {
            l.answering_since = None;
            l.losing_since.get_or_insert(epoch);
        }
        for t in &mut l.tiers {
            if let Some(b) = t.at(epoch) {
                b.add(rtt_ms);
                b.state = b.state.max(state);
            }
        }
    }

    /// A link changed state at `epoch`: its buckets show it, and an outage starts or ends. The
    /// outage starts when the probes' losses began (else now: a carrier or address lost) and
    /// ends when they were answered again (else now).
    pub fn transition(&mut self, link: usize, epoch: f64, to: &str, reason: &str) {
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        for t in &mut l.tiers {
            if let Some(b) = t.at(epoch) {
                b.state = b.state.max(state_code(to));
            }
        }
        let began = l.losing_since.map_or(epoch, |t| t.min(epoch));
        let ended = l.answering_since.map_or(epoch, |t| t.min(epoch));
        if to == "down" {
            // Answers from before do not end it (a carrier lost stops the probes).
            l.answering_since = None;
        }
        let name = l.name.clone();
        let open = self
            .outages
            .iter_mut()
            .rev()
            .find(|o| o.link == name && o.end.is_none());
        match (to, open) {
            ("down", None) => {
                self.outages.push_back(Outage {
                    link: name,
                    start: began,
                    end: None,
                    reason: reason.to_owned(),
                    flows: 0,
                    tcp_resets: 0,
                });
                let week = f64::from(TIERS[2].0) * TIERS[2].1 as f64;
                while self.outages.len() > MAX_OUTAGES
                    || self
                        .outages
                        .front()
                        .is_some_and(|o| o.end.is_some_and(|e| e < epoch - week))
                {
                    self.outages.pop_front();
                }
            }
            ("down", Some(_)) => {}
            (_, Some(o)) => o.end = Some(ended.max(o.start)),
            (_, None) => {}
        }
    }

    /// A purge of link `name`'s flows finished: counted to its latest outage.
    pub fn purged(&mut self, name: &str, flows: u64, tcp_resets: u64) {
        if let Some(o) = self.outages.iter_mut().rev().find(|o| o.link == name) {
            o.flows += flows;
            o.tcp_resets += tcp_resets;
        }
    }

    /// Each link's (or only `link`'s) buckets of the last `since_s` seconds before `now`, at the
    /// finest resolution that reaches back that far. `None`: no such link.
    pub fn series(&self, link: Option<&str>, since_s: f64, now: f64) -> Option<Vec<Series>> {
        let tier = TIERS
            .iter()
            .position(|&(s, n)| f64::from(s) * n as f64 >= since_s)
            .unwrap_or(TIERS.len() - 1);
        let out: Vec<Series> = self
            .links
            .iter()
            .filter(|l| link.is_none_or(|n| n == l.name))
            .map(|l| {
                let t = &l.tiers[tier];
                let (start, buckets) = if t.newest == 0 {
                    (now, Vec::new())
                } else {
                    t.since(now - since_s)
                };
                Series {
                    link: l.name.clone(),
                    step_s: t.step,
                    start,
                    points: buckets.iter().map(Point::from).collect(),
                }
            })
            .collect();
        (link.is_none() || !out.is_empty()).then_some(out)
    }

    /// The outages that ended after `from` (or have not ended), oldest first.
    pub fn outages(&self, from: f64) -> Vec<Outage> {
        self.outages
            .iter()
            .filter(|o| o.end.is_none_or(|e| e >= from))
            .cloned()
            .collect()
    }

    /// Write the history to `path` (beside it, then renamed over it).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let saved = Saved {
            version: FILE_VERSION,
            links: self
                .links
                .iter()
                .map(|l| SavedLink {
                    name: l.name.clone(),
                    tiers: l
                        .tiers
                        .iter()
                        .map(|t| SavedTier {
                            step: t.step,
                            newest: t.newest,
                            // A bucket's place in a ring of `len`: its number modulo `len`.
                            buckets: t
                                .numbered()
                                .filter(|(_, b)| b.sent > 0 || b.state != NO_DATA)
                                .map(|(j, b)| {
                                    let i = (j % t.len as u64) as u32;
                                    (i, b.sent, b.lost, b.mean, b.m2, b.state)
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            outages: self.outages.iter().cloned().collect(),
        };
        let text = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// The history saved at `path`, for the links `links` (others' are dropped). An error says
    /// why the file cannot be used; the caller starts empty then.
    pub fn load(path: &Path, links: &[String]) -> Result<Self, String> {
        let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        if len > MAX_FILE {
            return Err(format!("{len} bytes, more than a history can be"));
        }
        let text = std::fs::read(path).map_err(|e| e.to_string())?;
        let saved: Saved = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        if saved.version != FILE_VERSION {
            return Err(format!("version {}, not {FILE_VERSION}", saved.version));
        }
        let mut h = History {
            links: Vec::new(),
            outages: saved
                .outages
                .into_iter()
                .rev()
                .take(MAX_OUTAGES)
                .rev()
                .collect(),
        };
        for sl in saved.links {
            let mut l = LinkHistory::new(&sl.name);
            for (t, st) in l.tiers.iter_mut().zip(sl.tiers) {
                if st.step != t.step {
                    return Err(format!(
                        "link {}: a tier of {} s, not {} s",
                        sl.name, st.step, t.step
                    ));
                }
                if !st.buckets.is_empty() {
                    // The newest bucket first, so that the ring ends at it.
                    t.slot(st.newest);
                }
                let len = t.len as u64;
                for (i, sent, lost, mean, m2, state) in st.buckets {
                    let i = u64::from(i);
                    if i >= len {
                        return Err(format!("link {}: bucket {i} out of range", sl.name));
                    }
                    // The number of the bucket at place `i`: within `len` of the newest.
                    let j = t.newest - (t.newest % len + len - i) % len;
                    let b = t
                        .slot(j)
                        .ok_or_else(|| format!("link {}: bucket {i} out of range", sl.name))?;
                    if lost > sent || state > DOWN || !mean.is_finite() || !m2.is_finite() {
                        return Err(format!("link {}: bucket {i} is not a bucket", sl.name));
                    }
                    *b = Bucket {
                        sent,
                        lost,
                        mean,
                        m2,
                        state,
                    };
                }
            }
            h.links.push(l);
        }
        h.reconfigure(links);
        Ok(h)
    }
}

#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    links: Vec<SavedLink>,
    outages: Vec<Outage>,
}

#[derive(Serialize, Deserialize)]
struct SavedLink {
    name: String,
    tiers: Vec<SavedTier>,
}

#[derive(Serialize, Deserialize)]
struct SavedTier {
    step: u32,
    newest: u64,
    /// The buckets with something in them: (ring index, sent, lost, mean, m2, state).
    buckets: Vec<(u32, u32, u32, f32, f32, u8)>,
}

#[cfg(test)]
mod tests;
