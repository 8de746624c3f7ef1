//! The status the control socket and the metrics serve, assembled from the engine.

use std::time::Instant;

use crate::config::LastResort;
use crate::control::{self, LinkStatus, Status};
use crate::engine::{ms, DesiredState, Engine, LinkId};

/// The status now. Steering and shares are those live in the kernel (the desired state before
/// the first apply).
pub fn build(engine: &Engine, now: Instant) -> Status {
    let cfg = engine.config();
    let desired;
    let d = match engine.applied_state() {
        Some(d) => d,
        None => {
            desired = engine.desired();
            &desired
        }
    };
    let (applies, last_apply_ms, apply_error) = engine.applies();
    let ha = cfg.ha.as_ref().map(|h| {
        let track = engine.ha_track();
        control::HaStatus {
            role: if engine.is_master() == Some(true) {
                "master"
            } else {
                "backup"
            }
            .into(),
            lan_vip: h.lan_vip.to_string(),
            weight: track.map(|t| t.0),
            fault: track.map(|t| t.1),
            marks: crate::config::fence::fingerprint(cfg),
            peer: None,
        }
    });
    Status {
        ha,
        version: control::PROTOCOL_VERSION,
        steer_to: d.steer_to().map(|i| d.links[i].name.clone()),
        share: shares(d, d.share()),
        policies: d
            .policies
            .iter()
            .map(|p| control::PolicyStatus {
                name: p.name.clone(),
                links: p.members.iter().map(|&l| d.links[l].name.clone()).collect(),
                share: shares(d, p.steer.share()),
                last_resort: match p.last_resort {
                    LastResort::Default => "default",
                    LastResort::Unreachable => "unreachable",
                }
                .into(),
                sticky_s: p.sticky.map(|t| t.as_secs()),
            })
            .collect(),
        worst_case_detection_ms: cfg.worst_case_detection().as_millis() as u64,
        links: cfg
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let h = engine.link(i);
                let c = engine.counters(&l.name);
                LinkStatus {
                    name: l.name.clone(),
                    interface: l.interface.clone(),
                    state: h.state.to_string(),
                    since: engine.epoch_secs(h.since),
                    reason: h.reason.clone(),
                    rtt_ms: h.last_rtt().map(ms),
                    srtt_ms: h.srtt().map(ms),
                    jitter_ms: h.jitter().map(ms),
                    loss_pct: h.loss_pct(),
                    targets: l.targets.len(),
                    silent_targets: h.silent_targets(),
                    quorum: l.quorum,
                    fast_probing: h.fast(),
                    flap_penalty: h.penalty(now, &cfg.detection),
                    hold_ms: ms(h.hold(now, &cfg.detection)),
                    mark: l.mark,
                    table: l.table,
                    drained: engine.drained(i),
                    problem: engine.problem(i).map(str::to_owned),
                    probes_sent: h.probes,
                    probes_lost: h.probes_lost,
                    transitions: c.transitions,
                    flows_purged_total: c.flows,
                    tcp_reset_total: c.tcp,
                    sockets_aborted_total: c.sockets,
                    last_transition: engine.last_transition(i).cloned(),
                }
            })
            .collect(),
        last_apply_ms,
        applies,
        apply_error: apply_error.map(str::to_owned),
    }
}

fn shares(d: &DesiredState, share: &[(LinkId, u32)]) -> Vec<control::Share> {
    let total: u32 = share.iter().map(|(_, w)| w).sum();
    share
        .iter()
        .map(|&(l, w)| control::Share {
            link: d.links[l].name.clone(),
            weight: w,
            pct: 100.0 * f64::from(w) / f64::from(total.max(1)),
        })
        .collect()
}
