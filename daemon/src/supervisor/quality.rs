//! The links' quality history, as the supervisor keeps it: fed by every probe, kept in its file.

use std::path::PathBuf;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Probes, Supervisor};
use crate::control::lock;
use crate::dataplane::Dataplane;
use crate::engine::{Input, ProbeOutcome};
use crate::history::{self, History};

impl<D: Dataplane, P: Probes> Supervisor<D, P> {
    /// A probe's outcome: to the engine, then to the history (dated by when it was sent, with
    /// the link's state after it).
    pub(super) fn probed(&mut self, now: std::time::Instant, p: ProbeOutcome) {
        let (link, sent, rtt) = (p.link, p.sent_at, p.result.ok());
        self.engine.handle(now, Input::Probe(p));
        if link < self.engine.config().links.len() {
            let state = history::state_code(self.engine.link(link).state.as_str());
            let rtt_ms = rtt.map(|d| d.as_secs_f64() * 1000.0);
            lock(&self.history).probe(link, self.engine.epoch_secs(sent), rtt_ms, state);
        }
    }

    /// Keep the history at `history_file` from now on: what it holds now is read first (a file
    /// that cannot be used is left aside with a warning; the history starts empty).
    pub fn keep_history(&mut self, path: Option<PathBuf>) {
        self.history_file = path;
        let Some(path) = &self.history_file else {
            return;
        };
        match History::load(path, &self.engine.config().link_names()) {
            Ok(h) => *lock(&self.history) = h,
            Err(e) if !path.exists() => debug!("no history at {}: {e}", path.display()),
            Err(e) => warn!(
                "ignoring the history in {}: {e}; starting a new one",
                path.display()
            ),
        }
        self.history_saved = Some(Instant::now());
    }

    /// Write the history where it is kept; a failure is logged, and tried again later.
    pub(super) fn save_history(&mut self) {
        self.history_saved = Some(Instant::now());
        let Some(path) = &self.history_file else {
            return;
        };
        if let Err(e) = lock(&self.history).save(path) {
            warn!("cannot save the link history to {}: {e}", path.display());
        }
    }
}
