//! The failover rules with a fake clock: what is purged, when, and what is told.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use super::*;
use crate::engine::sim::Sim;
use crate::engine::{Input, Steer};

const LINKS: &str = r#"
[[link]]
name = "fiber"
interface = "wan1"
targets = ["192.0.2.1"]

[[link]]
name = "lte"
interface = "wan2"
priority = 2
failback = "drain"
targets = ["192.0.2.1"]

[lan]
interfaces = ["lan0"]
"#;

/// A simulation of `LINKS` plus `extra`, both links up after 5 s, its actions so far cleared.
fn up(extra: &str) -> Sim {
    let cfg = crate::config::parse(&format!("{LINKS}{extra}")).unwrap();
    let t0 = Instant::now();
    let mut sim = Sim::new(cfg, t0);
    sim.run(t0 + Duration::from_secs(5), |_, _, _| {
        Some(Duration::from_millis(5))
    });
    sim.actions.clear();
    sim
}

/// The actions as short words, in order: `apply`, `purge NAME (why)`, `hook`, `event TEXT`.
fn words(sim: &Sim) -> Vec<String> {
    sim.actions
        .iter()
        .map(|(_, a)| match a {
            Action::Apply { state, .. } => {
                format!("apply via {}", share_name(state, state.share()))
            }
            Action::Purge(p) => format!("purge {} ({:?})", p.name, p.why),
            Action::RunHook(h) => format!("hook {} {}", h.link, h.to),
            Action::Emit(e) => format!("event {e}"),
        })
        .collect()
}

fn purges(sim: &Sim) -> Vec<String> {
    words(sim)
        .into_iter()
        .filter(|w| w.starts_with("purge"))
        .collect()
}

#[test]
fn a_dead_links_flows_are_purged_only_after_the_steering_away_from_it_is_live() {
    let mut sim = up("");
    sim.event(Input::Carrier { link: 0, up: false });
    let w = words(&sim);
    assert_eq!(
        w,
        [
            "event link fiber: up -> down (carrier lost)",
            "apply via lte",
            "event new flows now via lte (nft 0.0 ms, routes 0.0 ms)",
            "purge fiber (Down)",
        ],
        "{w:#?}"
    );
    let Action::Purge(p) = &sim.actions[3].1 else {
        panic!()
    };
    assert_eq!(
        (p.mark, p.mark_mask, p.tickle_mark),
        (0x200, 0xff00, 0xff00)
    );
    assert_eq!(p.lan_interfaces, ["lan0"]);
}

#[test]
fn nothing_is_purged_while_the_purge_waits_for_a_failed_apply_and_it_is_retried() {
    let mut sim = up("");
    let now = sim.now;
    sim.engine
        .handle(now, Input::Carrier { link: 0, up: false });
    let Some(Action::Emit(_)) = sim.engine.poll_action() else {
        panic!("the transition is told first")
    };
    let Some(Action::Apply { state, .. }) = sim.engine.poll_action() else {
        panic!("then the new steering is applied")
    };
    sim.engine.applied(now, state.clone(), Err("no".into()));
    let Some(Action::Emit(Event::ApplyFailed { error, retry_ms })) = sim.engine.poll_action()
    else {
        panic!("a failed apply is reported")
    };
    assert_eq!((error.as_str(), retry_ms), ("no", 1000));
    assert_eq!(
        sim.engine.poll_action(),
        None,
        "no purge before the steering is live"
    );
    assert_eq!(sim.engine.applies().2, Some("no"));
    // The retry is due one second later and re-checks the kernel.
    let (due, why) = sim.engine.poll_timeout().unwrap();
    assert!(due <= now + APPLY_RETRY, "{why}");
    sim.engine.poll_probes(now + APPLY_RETRY);
    let Some(Action::Apply {
        state: again,
        verify,
    }) = sim.engine.poll_action()
    else {
        panic!("retried")
    };
    assert!(verify);
    assert_eq!(again, state);
    sim.engine
        .applied(now + APPLY_RETRY, again, Ok(Applied::default()));
    let mut rest = Vec::new();
    while let Some(a) = sim.engine.poll_action() {
        rest.push(a);
    }
    assert!(
        matches!(rest.last(), Some(Action::Purge(p)) if p.name == "fiber"),
        "{rest:#?}"
    );
    assert_eq!(sim.engine.applies().2, None);
}

#[test]
fn nothing_is_purged_when_no_link_is_left() {
    let mut sim = up("");
    sim.event(Input::Carrier { link: 1, up: false });
    assert_eq!(purges(&sim), ["purge lte (Down)"]);
    sim.actions.clear();
    sim.event(Input::Carrier { link: 0, up: false });
    assert!(purges(&sim).is_empty(), "{:#?}", words(&sim));
}

#[test]
fn flows_are_killed_only_when_a_policy_of_the_link_has_somewhere_else_to_go() {
    // The default policy has fiber only; lte serves another policy.
    let extra = "[[policy]]\nname = \"default\"\nlinks = [\"fiber\"]\n[[policy]]\nname = \"voip\"\nlinks = [\"lte\"]\n";
    let mut sim = up(extra);
    sim.event(Input::Carrier { link: 0, up: false });
    assert!(purges(&sim).is_empty(), "fiber's flows have nowhere to go");
    // voip falls back to the default policy, whose link is usable: lte's flows go.
    sim.event(Input::Carrier { link: 0, up: true });
    let mut sim = up(extra);
    sim.event(Input::Carrier { link: 1, up: false });
    assert_eq!(sim.engine.desired().policies[1].steer, Steer::Fallback);
    assert_eq!(purges(&sim), ["purge lte (Down)"]);
}

#[test]
fn a_refusing_policy_gives_its_links_flows_nowhere_to_go() {
    let extra = "[[policy]]\nname = \"default\"\nlinks = [\"fiber\"]\n[[policy]]\nname = \"voip\"\nlinks = [\"lte\"]\nlast_resort = \"unreachable\"\n";
    let mut sim = up(extra);
    sim.event(Input::Carrier { link: 1, up: false });
    assert!(purges(&sim).is_empty(), "{:#?}", words(&sim));
    assert!(words(&sim).contains(
        &"event policy voip: new flows via nothing: refused (no link usable)".to_owned()
    ));
}

#[test]
fn failback_drain_resets_the_backup_after_new_flows_are_back_on_the_preferred_link() {
    let mut sim = up("");
    sim.event(Input::Carrier { link: 0, up: false });
    sim.event(Input::Carrier { link: 0, up: true });
    sim.actions.clear();
    // Fiber back up after its hold.
    let t = sim.now + Duration::from_secs(60);
    sim.run(t, |_, _, _| Some(Duration::from_millis(5)));
    let w = words(&sim);
    let apply = w.iter().position(|x| x == "apply via fiber").unwrap();
    let drain = w.iter().position(|x| x == "purge lte (Failback)").unwrap();
    assert!(apply < drain, "{w:#?}");
    assert!(w[apply..drain]
        .iter()
        .any(|x| x.starts_with("event link lte: new flows moved to fiber; draining")));
    // A link that leaves the share because the operator drained it is not reset.
    let mut sim = up("");
    sim.engine.drain("fiber", false).unwrap();
    sim.act();
    assert!(purges(&sim).is_empty(), "{:#?}", words(&sim));
}

#[test]
fn failback_drain_follows_the_policy_priorities() {
    // The links' own priorities say lte is the backup; the default policy prefers lte.
    let extra = "[[policy]]\nname = \"default\"\nlinks = [\"lte\", \"fiber\"]\n";
    let cfg = crate::config::parse(
        &format!("{LINKS}{extra}")
            .replace("failback = \"drain\"\n", "")
            .replace(
                "interface = \"wan1\"\n",
                "interface = \"wan1\"\nfailback = \"drain\"\n",
            ),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut sim = Sim::new(cfg, t0);
    sim.run(t0 + Duration::from_secs(5), |_, _, _| {
        Some(Duration::from_millis(5))
    });
    sim.event(Input::Carrier { link: 1, up: false });
    sim.event(Input::Carrier { link: 1, up: true });
    sim.actions.clear();
    let t = sim.now + Duration::from_secs(60);
    sim.run(t, |_, _, _| Some(Duration::from_millis(5)));
    assert_eq!(purges(&sim), ["purge fiber (Failback)"]);
}

#[test]
fn an_operator_drain_with_reset_purges_only_once_new_flows_go_elsewhere() {
    let mut sim = up("");
    assert_eq!(
        sim.engine.drain("nope", true),
        Err("no link named \"nope\"".into())
    );
    sim.engine.drain("fiber", true).unwrap();
    sim.act();
    let w = words(&sim);
    assert_eq!(
        w,
        [
            "event link fiber: drained by request, its flows will be reset",
            "apply via lte",
            "event new flows now via lte (nft 0.0 ms, routes 0.0 ms)",
            "purge fiber (Drained)",
        ],
        "{w:#?}"
    );
    // With lte down, draining fiber leaves new flows on fiber: nothing to reset.
    let mut sim = up("");
    sim.event(Input::Carrier { link: 1, up: false });
    sim.actions.clear();
    sim.engine.drain("fiber", true).unwrap();
    sim.act();
    assert!(purges(&sim).is_empty(), "{:#?}", words(&sim));
}

#[test]
fn a_reload_keeps_unchanged_links_and_their_history_and_reapplies() {
    let mut sim = up("");
    sim.event(Input::Carrier { link: 1, up: false });
    let before = sim.engine.last_transition(1).cloned();
    assert!(before.is_some());
    // Swapped order, same links.
    let (a, b) = LINKS.split_at(LINKS.find("[[link]]\nname = \"lte\"").unwrap());
    let (b, lan) = b.split_at(b.find("[lan]").unwrap());
    let cfg = crate::config::parse(&format!("{b}{a}{lan}")).unwrap();
    sim.actions.clear();
    let now = sim.now;
    sim.engine.reconfigure(cfg, now, "reloaded".into());
    sim.act();
    let lte = sim.engine.link_id("lte").unwrap();
    assert_eq!(lte, 0);
    assert_eq!(sim.engine.link(lte).state, crate::engine::LinkState::Down);
    assert_eq!(sim.engine.last_transition(lte).cloned(), before);
    let w = words(&sim);
    assert_eq!(w[0], "event reloaded");
    assert!(
        matches!(sim.actions[1].1, Action::Apply { verify: true, .. }),
        "{w:#?}"
    );
}

#[test]
fn every_transition_is_told_and_hooked_with_where_new_flows_go() {
    let mut sim = up("[hooks]\non_transition = [\"/bin/true\"]\n");
    sim.event(Input::Carrier { link: 0, up: false });
    let hook = sim.actions.iter().find_map(|(_, a)| match a {
        Action::RunHook(h) => Some(h.clone()),
        _ => None,
    });
    assert_eq!(
        hook,
        Some(HookCall {
            link: "fiber".into(),
            interface: "wan1".into(),
            from: "up",
            to: "down",
            reason: "carrier lost".into(),
            steer_to: "lte".into(),
        })
    );
    assert_eq!(sim.engine.counters("fiber").transitions, 2);
}

#[test]
fn purge_results_reach_status_and_counters() {
    let mut sim = up("");
    sim.event(Input::Carrier { link: 0, up: false });
    let r = Purged {
        flows: 7,
        tcp_reset: 3,
        sockets: 1,
        phases: [Duration::from_millis(2); 5],
    };
    sim.engine.purged("fiber", Ok(r));
    let t = sim.engine.last_transition(0).unwrap();
    assert_eq!(
        (t.flows_purged, t.tcp_reset, t.sockets_aborted),
        (Some(7), Some(3), Some(1))
    );
    assert_eq!(t.purge_ms, Some(10.0));
    assert!(t.steer_ms.is_some());
    assert_eq!(sim.engine.counters("fiber").flows, 7);
    let Some(Action::Emit(e)) = sim.engine.poll_action() else {
        panic!()
    };
    assert!(
        e.to_string()
            .starts_with("link fiber: purged 7 flows, reset 3 TCP clients"),
        "{e}"
    );
    sim.engine.purged("fiber", Err("boom".into()));
    let Some(Action::Emit(e)) = sim.engine.poll_action() else {
        panic!()
    };
    assert_eq!(e.level(), crate::control::event::Level::Error);
}

#[test]
fn a_renumbered_link_resets_only_the_flows_translated_to_its_lost_address() {
    let mut sim = up("");
    let (old, new) = (
        std::net::Ipv4Addr::new(100, 64, 1, 2),
        std::net::Ipv4Addr::new(100, 64, 1, 3),
    );
    sim.event(Input::Addresses {
        link: 0,
        v4: vec![old],
    });
    sim.actions.clear();
    // The new lease arrives before the old one goes: the link never lacks an address.
    sim.event(Input::Addresses {
        link: 0,
        v4: vec![old, new],
    });
    assert!(purges(&sim).is_empty());
    sim.event(Input::Addresses {
        link: 0,
        v4: vec![new],
    });
    let w = words(&sim);
    let apply = w.iter().position(|x| x.starts_with("apply")).unwrap();
    let purge = w
        .iter()
        .position(|x| x == "purge fiber (Renumbered)")
        .unwrap();
    assert!(apply < purge, "{w:#?}");
    assert!(w.contains(
        &"event link fiber: lost 100.64.1.2; resetting the flows translated to it".to_owned()
    ));
    let Some((_, Action::Purge(p))) = sim
        .actions
        .iter()
        .find(|(_, a)| matches!(a, Action::Purge(_)))
    else {
        panic!()
    };
    assert_eq!(p.nat_to, [std::net::IpAddr::V4(old)]);
    assert_eq!(
        sim.engine.link(0).state,
        crate::engine::LinkState::Up,
        "up all along"
    );
    // Losing the last address takes the link down and all its flows go.
    sim.actions.clear();
    sim.event(Input::Addresses {
        link: 0,
        v4: vec![],
    });
    let Some((_, Action::Purge(p))) = sim
        .actions
        .iter()
        .find(|(_, a)| matches!(a, Action::Purge(_)))
    else {
        panic!("{:#?}", words(&sim))
    };
    assert_eq!((p.why, p.nat_to.len()), (Why::Down, 0));
}

#[test]
fn flows_kept_while_no_link_was_usable_go_as_soon_as_another_link_is() {
    let mut sim = up("");
    sim.event(Input::Carrier { link: 1, up: false });
    sim.actions.clear();
    // Fiber dies too: nowhere to go, nothing is killed.
    sim.event(Input::Carrier { link: 0, up: false });
    assert!(purges(&sim).is_empty());
    assert!(words(&sim).contains(
        &"event link fiber: no other link can take its flows; they are kept until one can"
            .to_owned()
    ));
    // lte returns: fiber's kept flows go, once the steering to lte is live.
    sim.event(Input::Carrier { link: 1, up: true });
    let t = sim.now + Duration::from_secs(30);
    sim.run(t, |l, _, _| (l == 1).then_some(Duration::from_millis(5)));
    let w = words(&sim);
    let apply = w.iter().position(|x| x == "apply via lte").unwrap();
    let purge = w.iter().position(|x| x == "purge fiber (Down)").unwrap();
    assert!(apply < purge, "{w:#?}");
    assert_eq!(purges(&sim), ["purge fiber (Down)"], "once");
    // A dead link that comes back itself keeps its flows.
    let mut sim = up("");
    sim.event(Input::Carrier { link: 1, up: false });
    sim.event(Input::Carrier { link: 0, up: false });
    sim.actions.clear();
    sim.event(Input::Carrier { link: 0, up: true });
    let t = sim.now + Duration::from_secs(30);
    sim.run(t, |l, _, _| (l == 0).then_some(Duration::from_millis(5)));
    assert!(purges(&sim).is_empty(), "{:#?}", words(&sim));
}

const HA: &str = r#"
[ha]
lan_vip = "10.98.0.1"
"#;

fn role(sim: &mut Sim, master: bool) {
    let mut local: Vec<std::net::IpAddr> = vec!["10.98.0.2".parse().unwrap()];
    if master {
        local.push("10.98.0.1".parse().unwrap());
    }
    sim.event(Input::Local(local));
}

#[test]
fn a_backup_purges_and_resets_nothing_and_says_the_flows_are_the_masters() {
    let mut sim = up(HA);
    role(&mut sim, false);
    assert_eq!(sim.engine.is_master(), Some(false));
    sim.actions.clear();
    sim.event(Input::Carrier { link: 0, up: false });
    let w = words(&sim);
    assert!(purges(&sim).is_empty(), "{w:#?}");
    assert!(
        w.contains(&"apply via lte".to_owned()),
        "the same dataplane: {w:#?}"
    );
    assert!(
        w.contains(
            &"event link fiber: its flows are left to the master (this router is a backup)"
                .to_owned()
        ),
        "{w:#?}"
    );
    // An operator's drain with reset is the master's to do too.
    sim.event(Input::Carrier { link: 0, up: true });
    sim.actions.clear();
    sim.engine.drain("lte", true).unwrap();
    sim.act();
    assert!(purges(&sim).is_empty(), "{:#?}", words(&sim));
}

#[test]
fn a_new_master_purges_at_once_the_inherited_flows_of_links_it_considers_down() {
    let mut sim = up(HA);
    role(&mut sim, false);
    sim.event(Input::Carrier { link: 0, up: false });
    sim.actions.clear();
    role(&mut sim, true);
    let w = words(&sim);
    assert_eq!(
        w,
        [
            "event this router is the master of its pair: it purges and resets the flows of dead links",
            "apply via lte",
            "purge fiber (Inherited)",
        ],
        "{w:#?}"
    );
    // Losing the address again: a backup; a link dying now is left to the new master.
    role(&mut sim, false);
    sim.actions.clear();
    sim.event(Input::Carrier { link: 0, up: true });
    sim.event(Input::Carrier { link: 1, up: false });
    assert!(purges(&sim).is_empty(), "{:#?}", words(&sim));
}

#[test]
fn without_ha_there_is_no_role_and_nothing_for_keepalived() {
    let mut sim = up("");
    role(&mut sim, false);
    assert_eq!(sim.engine.is_master(), None);
    assert_eq!(sim.engine.ha_track(), None);
    sim.event(Input::Carrier { link: 0, up: false });
    assert_eq!(purges(&sim), ["purge fiber (Down)"]);
}

#[test]
fn keepalived_is_told_the_usable_links_and_a_fault_when_none_is_left() {
    let cfg = crate::config::parse(&format!("{LINKS}{HA}")).unwrap();
    let t0 = Instant::now();
    let mut sim = Sim::new(cfg, t0);
    // No verdict yet: nothing is said, keepalived keeps its initial fault.
    assert_eq!(sim.engine.ha_track(), None);
    sim.run(t0 + Duration::from_secs(5), |_, _, _| {
        Some(Duration::from_millis(5))
    });
    assert_eq!(sim.engine.ha_track(), Some((2, false)));
    sim.event(Input::Carrier { link: 1, up: false });
    assert_eq!(sim.engine.ha_track(), Some((1, false)));
    sim.engine.drain("fiber", false).unwrap();
    assert_eq!(
        sim.engine.ha_track(),
        Some((0, true)),
        "a drained link does not count"
    );
    sim.engine.undrain("fiber").unwrap();
    sim.event(Input::Carrier { link: 0, up: false });
    assert_eq!(sim.engine.ha_track(), Some((0, true)));
}

fn run_for(sim: &mut Sim, ms: u64) {
    let until = sim.now + Duration::from_millis(ms);
    sim.run(until, |_, _, _| Some(Duration::from_millis(5)));
}

#[test]
fn a_master_gives_the_peer_time_to_take_over_before_it_resets_a_dead_links_flows() {
    let mut sim = up(HA);
    role(&mut sim, true);
    sim.actions.clear();
    sim.event(Input::Carrier { link: 0, up: false });
    let w = words(&sim);
    assert!(purges(&sim).is_empty(), "{w:#?}");
    assert!(
        w.contains(
            &"event link fiber: its flows are reset in 1500 ms unless the peer router takes over"
                .to_owned()
        ),
        "{w:#?}"
    );
    run_for(&mut sim, 1400);
    assert!(purges(&sim).is_empty(), "{:#?}", words(&sim));
    // Still the master, the link still dead: the purge.
    run_for(&mut sim, 200);
    assert_eq!(purges(&sim), ["purge fiber (Down)"]);
    let at = sim
        .actions
        .iter()
        .find(|(_, a)| matches!(a, Action::Purge(_)))
        .unwrap()
        .0;
    assert!(
        at >= sim.now - Duration::from_millis(200),
        "purged before the wait ended"
    );
}

#[test]
fn a_master_that_hands_over_or_whose_link_recovers_during_the_wait_resets_nothing() {
    let mut sim = up(HA);
    role(&mut sim, true);
    sim.event(Input::Carrier { link: 0, up: false });
    run_for(&mut sim, 500);
    role(&mut sim, false);
    sim.actions.clear();
    run_for(&mut sim, 2000);
    assert!(purges(&sim).is_empty(), "{:#?}", words(&sim));
    assert!(words(&sim).contains(
        &"event link fiber: its flows are left to the master (this router is a backup)".to_owned()
    ));

    // A link back in service before the wait ends (its flap damping included) keeps its flows.
    let mut sim = up(&format!("{HA}handover = \"10s\"\n"));
    role(&mut sim, true);
    sim.event(Input::Carrier { link: 0, up: false });
    run_for(&mut sim, 500);
    sim.event(Input::Carrier { link: 0, up: true });
    run_for(&mut sim, 12_000);
    assert_eq!(sim.engine.link(0).state, LinkState::Up);
    // (lte's flows are drained on failback, as configured.)
    assert_eq!(purges(&sim), ["purge lte (Failback)"]);

    // With no wait configured, at once.
    let mut sim = up(&format!("{HA}handover = \"0s\"\n"));
    role(&mut sim, true);
    sim.actions.clear();
    sim.event(Input::Carrier { link: 0, up: false });
    assert_eq!(purges(&sim), ["purge fiber (Down)"]);
}
