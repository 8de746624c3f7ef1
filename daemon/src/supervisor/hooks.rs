//! The transition hook: a program run with the transition's details in its environment.

use tracing::{debug, warn};

use crate::config::Hooks;
use crate::engine::HookCall;

/// Run the hook, if any, in its own task: it can neither block nor outlive its timeout.
pub fn run(hooks: &Hooks, call: HookCall) {
    let Some((program, args)) = hooks.on_transition.split_first() else {
        return;
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("UPLINKD_EVENT", "transition")
        .env("UPLINKD_LINK", &call.link)
        .env("UPLINKD_INTERFACE", &call.interface)
        .env("UPLINKD_FROM", call.from)
        .env("UPLINKD_TO", call.to)
        .env("UPLINKD_REASON", &call.reason)
        .env("UPLINKD_STEER_TO", &call.steer_to)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let (timeout, program) = (hooks.timeout, program.clone());
    tokio::spawn(async move {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return warn!("hook {program}: cannot start: {e}"),
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(s)) if s.success() => debug!("hook {program}: done"),
            Ok(Ok(s)) => warn!("hook {program}: {s}"),
            Ok(Err(e)) => warn!("hook {program}: {e}"),
            Err(_) => {
                warn!("hook {program}: still running after {timeout:?}; killed");
                let _ = child.kill().await;
            }
        }
    });
}
