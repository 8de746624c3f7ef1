//! What the engine remembers across a restart (a crash, SIGKILL or `systemctl restart`): each
//! link's state and flap penalty. Without it a restarted daemon trusts every link for its first
//! probe round and steers new flows onto a WAN it knew was dead.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Engine, LinkState};

/// One link as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkMemory {
    pub name: String,
    pub interface: String,
    /// `up`, `degraded`, `down` or `unknown`.
    pub state: String,
    pub penalty: f64,
}

impl Engine {
    /// Every link's state and flap penalty at `now`.
    pub fn memory(&self, now: Instant) -> Vec<LinkMemory> {
        self.config
            .links
            .iter()
            .zip(&self.links)
            .map(|(l, h)| {
                let (state, penalty) = h.memory(now, &self.config.detection);
                LinkMemory {
                    name: l.name.clone(),
                    interface: l.interface.clone(),
                    state: state.as_str().to_owned(),
                    penalty,
                }
            })
            .collect()
    }

    /// Before the first apply: resume the links that have the same name and interface as
    /// `memory`, written `age` ago. Returns how each resumed link starts, for the log.
    pub fn resume(&mut self, memory: &[LinkMemory], age: Duration, now: Instant) -> Vec<String> {
        let mut resumed = Vec::new();
        for (l, h) in self.config.links.iter().zip(&mut self.links) {
            let Some(m) = memory
                .iter()
                .find(|m| m.name == l.name && m.interface == l.interface)
            else {
                continue;
            };
            let down = m.state == LinkState::Down.as_str();
            h.resume(now, down, m.penalty, age);
            resumed.push(format!(
                "{} {} (flap penalty {:.2})",
                l.name,
                h.state,
                h.penalty(now, &self.config.detection)
            ));
        }
        self.dirty = true;
        resumed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config;
    use crate::engine::{Action, Input};

    const CONFIG: &str = r#"
[[link]]
name = "fiber"
interface = "wan1"
gateway = "192.0.2.1"
targets = ["203.0.113.1"]

[[link]]
name = "lte"
interface = "wan2"
gateway = "192.0.2.5"
priority = 2
targets = ["203.0.113.1"]

[lan]
interfaces = ["lan0"]
"#;

    fn first_steer(e: &mut Engine) -> Option<usize> {
        loop {
            match e.poll_action()? {
                Action::Apply { state, .. } => return state.steer_to(),
                _ => continue,
            }
        }
    }

    #[test]
    fn a_link_that_was_down_before_a_restart_is_not_steered_to_at_start() {
        let t0 = Instant::now();
        let mut before = Engine::new(config::parse(CONFIG).unwrap(), t0);
        before.handle(t0, Input::Carrier { link: 0, up: false });
        let memory = before.memory(t0);
        assert_eq!(memory[0].state, "down");
        assert!(
            memory[0].penalty == 0.0,
            "a first outage from unknown carries no penalty"
        );

        // Without the memory the restarted engine trusts fiber at once.
        let mut fresh = Engine::new(config::parse(CONFIG).unwrap(), t0);
        assert_eq!(first_steer(&mut fresh), Some(0));

        let t1 = t0 + Duration::from_secs(3);
        let mut after = Engine::new(config::parse(CONFIG).unwrap(), t1);
        let resumed = after.resume(&memory, Duration::from_secs(3), t1);
        assert_eq!(resumed[0], "fiber down (flap penalty 0.00)");
        assert_eq!(first_steer(&mut after), Some(1), "new flows start on lte");
        assert_eq!(after.links[0].reason, "down before the restart 3.0 s ago");
    }

    #[test]
    fn only_links_with_the_same_name_and_interface_resume_and_penalties_keep_decaying() {
        let t0 = Instant::now();
        let c = config::parse(CONFIG).unwrap();
        let half_life = c.detection.flap_half_life;
        let mut e = Engine::new(c, t0);
        let memory = vec![
            LinkMemory {
                name: "fiber".into(),
                interface: "wan9".into(),
                state: "down".into(),
                penalty: 1.0,
            },
            LinkMemory {
                name: "lte".into(),
                interface: "wan2".into(),
                state: "up".into(),
                penalty: 2.0,
            },
        ];
        let resumed = e.resume(&memory, half_life, t0);
        assert_eq!(resumed, ["lte unknown (flap penalty 1.00)"]);
        assert_eq!(e.links[0].state, LinkState::Unknown);
        assert_eq!(
            e.links[1].state,
            LinkState::Unknown,
            "only down is remembered as a state"
        );
    }
}
