//! The TOML file as written: serde structs that refuse unknown fields and keep the spans
//! (`toml::Spanned`) problems are reported at. No validation here: see `check`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{Failback, LastResort};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) link: Vec<Spanned<RawLink>>,
    pub(super) lan: Option<Spanned<RawLan>>,
    #[serde(default)]
    pub(super) control: RawControl,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) hooks: RawHooks,
    #[serde(default)]
    pub(super) probe: RawProbe,
    #[serde(default)]
    pub(super) detection: RawDetection,
    #[serde(default)]
    pub(super) dataplane: RawDataplane,
    #[serde(default)]
    pub(super) policy: Vec<Spanned<RawPolicy>>,
    #[serde(default)]
    pub(super) rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub(super) sets: RawSets,
    pub(super) ha: Option<Spanned<RawHa>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    pub(super) lan_vip: Spanned<String>,
    pub(super) weight_file: Option<Spanned<String>>,
    pub(super) fault_file: Option<Spanned<String>>,
    pub(super) handover: Option<Spanned<String>>,
    pub(super) vrid: Option<Spanned<u32>>,
    pub(super) priority: Option<Spanned<u32>>,
    pub(super) advert: Option<Spanned<String>>,
    pub(super) preempt_delay: Option<Spanned<String>>,
    pub(super) sync_interface: Option<Spanned<String>>,
    pub(super) sync_peer: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLink {
    pub(super) name: Spanned<String>,
    pub(super) interface: Spanned<String>,
    pub(super) gateway: Option<Spanned<String>>,
    pub(super) gateway6: Option<Spanned<String>>,
    #[serde(default = "default_priority")]
    pub(super) priority: u32,
    pub(super) weight: Option<Spanned<u32>>,
    /// Each a string, or a table (`url`, `server_name`, `ca_file`) for an HTTPS target.
    pub(super) targets: Spanned<Vec<Spanned<toml::Value>>>,
    pub(super) quorum: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) failback: Failback,
    pub(super) nptv6: Option<Spanned<String>>,
    pub(super) public_vip: Option<Spanned<String>>,
}

fn default_priority() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLan {
    pub(super) interfaces: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub(super) socket: Option<Spanned<String>>,
    pub(super) group: Option<Spanned<String>>,
    pub(super) history: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pub(super) on_transition: Option<Spanned<Vec<String>>>,
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub(super) interval: Option<Spanned<String>>,
    pub(super) fast_interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetection {
    pub(super) misses: Option<Spanned<u32>>,
    pub(super) quorum: Option<Spanned<u32>>,
    pub(super) up_after: Option<Spanned<u32>>,
    pub(super) stable_time: Option<Spanned<String>>,
    pub(super) flap_half_life: Option<Spanned<String>>,
    pub(super) max_hold: Option<Spanned<String>>,
    pub(super) degraded_loss_pct: Option<Spanned<u32>>,
    pub(super) degraded_rtt: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    pub(super) mark_mask: Option<Spanned<u32>>,
    pub(super) table_base: Option<Spanned<u32>>,
    pub(super) rule_priority: Option<Spanned<u32>>,
    pub(super) cleanup_on_exit: Option<bool>,
    pub(super) steer_router: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: Spanned<String>,
    pub(super) links: Spanned<Vec<Spanned<RawMember>>>,
    #[serde(default)]
    pub(super) last_resort: LastResort,
    pub(super) sticky: Option<Spanned<String>>,
}

/// `"lte"`, or `{ link = "lte", priority = 2, weight = 3 }`.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a link name or { link = NAME, priority = N, weight = N }"
)]
pub(super) enum RawMember {
    Name(String),
    Full(RawMemberFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMemberFull {
    pub(super) link: String,
    pub(super) priority: Option<u32>,
    pub(super) weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) policy: Spanned<String>,
    #[serde(default)]
    pub(super) iif: Vec<Spanned<String>>,
    pub(super) proto: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) src: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) dst: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) sport: Vec<Spanned<RawPort>>,
    #[serde(default)]
    pub(super) dport: Vec<Spanned<RawPort>>,
}

/// `443`, `"443"` or `"8000-8100"`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a port number or a \"FIRST-LAST\" range")]
pub(super) enum RawPort {
    One(u16),
    Range(String),
}

/// `[sets]`: named lists of prefixes, used in rules as `"@NAME"`.
pub(super) type RawSets = BTreeMap<String, Spanned<Vec<Spanned<String>>>>;
