//! Configuration: raw TOML structs (unknown fields refused) turned into a validated [`Config`].
//!
//! Every semantic error is collected, each with the file, line and TOML path it refers to, so an
//! operator fixes a broken file in one pass.

mod raw;

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::parse_duration;
pub use uplinkd_probes::Target;

/// Most links uplinkd manages. It owns routing tables `table_base .. table_base + MAX_LINKS`
/// and rule priorities `rule_priority ..= rule_priority + MAX_LINKS`, so objects left over from
/// a larger earlier configuration are still recognised as its own and cleaned up.
pub const MAX_LINKS: u32 = 64;

/// Default control socket (DESIGN.md §4).
pub const DEFAULT_SOCKET: &str = "/run/uplinkd/control.sock";

/// A validated configuration. Everything the daemon needs, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Links in configuration order; index = link id everywhere in the daemon.
    pub links: Vec<Link>,
    pub lan_interfaces: Vec<String>,
    pub control: Control,
    pub metrics: Metrics,
    pub hooks: Hooks,
    pub probe: Probe,
    pub detection: Detection,
    pub dataplane: Dataplane,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub name: String,
    pub interface: String,
    /// `None`: learned from the kernel (a default route via this interface in the main table).
    pub gateway: Option<Ipv4Addr>,
    /// Lower is preferred.
    pub priority: u32,
    /// Share of new flows among usable links of the same priority (1 ..= 1000).
    pub weight: u32,
    /// What to probe through this link (see `uplinkd_probes::Target` for the syntax).
    pub targets: Vec<Target>,
    /// Number of silent targets that make this link down (1 ..= targets).
    pub quorum: u32,
    /// What happens to this link's flows when new flows move back to a preferred link.
    pub failback: Failback,
    /// Mark value of this link under [`Dataplane::mark_mask`].
    pub mark: u32,
    /// Routing table holding this link's default route.
    pub table: u32,
}

/// What happens to a link's flows when a preferred link recovers and new flows move back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    /// They stay (the default): nothing is interrupted that works.
    #[default]
    Keep,
    /// They are reset (like a dead link's), so clients reconnect through the preferred link:
    /// for a metered or slow backup.
    Drain,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub socket: PathBuf,
    /// Group allowed to read status (the socket is owner root, mode 0660).
    pub group: Option<String>,
    /// Its numeric id, resolved when the configuration is loaded.
    pub gid: Option<u32>,
}

/// Commands run on every link transition, with the details in the environment (UPLINKD_EVENT,
/// UPLINKD_LINK, UPLINKD_INTERFACE, UPLINKD_FROM, UPLINKD_TO, UPLINKD_REASON, UPLINKD_STEER_TO).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hooks {
    /// Program and arguments (no shell); empty: no hook.
    pub on_transition: Vec<String>,
    /// A hook still running after this is killed.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    /// Address of the Prometheus HTTP listener; none by default.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// Calm time between probe rounds while every target answers; each round probes every
    /// target of a link concurrently.
    pub interval: Duration,
    /// Time between rounds after a probe was lost, until every target answers again: a real
    /// outage is confirmed quickly while steady-state probe traffic stays low.
    pub fast_interval: Duration,
    /// A reply later than this counts as lost.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Consecutive lost probes after which a target counts as silent.
    pub misses: u32,
    /// Silent targets that make a link down; `None`: all of its targets. Per link it can be
    /// overridden; the resolved value is [`Link::quorum`].
    pub quorum: Option<u32>,
    /// Consecutive good rounds (fewer than `quorum` targets unanswered) before a down link is
    /// used again.
    pub up_after: u32,
    /// A down link must also have been good for this long, multiplied by `2^penalty`, where the
    /// penalty grows by one with each down transition and halves every `flap_half_life`.
    pub stable_time: Duration,
    pub flap_half_life: Duration,
    /// Upper bound of the flap-damped hold time.
    pub max_hold: Duration,
    /// An up link whose recent loss reaches this percentage is `degraded` (usable, less
    /// preferred); it is `up` again below half of it.
    pub degraded_loss_pct: u32,
    /// An up link whose smoothed RTT reaches this is `degraded`; `up` again below 80 % of it.
    pub degraded_rtt: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dataplane {
    /// Bits of the packet and conntrack mark that belong to uplinkd; other bits are preserved.
    pub mark_mask: u32,
    /// Routing table id of the first link; link `i` uses `table_base + i`.
    pub table_base: u32,
    /// Priority of the first `ip rule`; link `i`'s rule has `rule_priority + 1 + i`.
    pub rule_priority: u32,
    /// Remove the nft table, rules and routes on stop. `false` leaves the dataplane in place so
    /// traffic keeps flowing while the daemon is restarted.
    pub cleanup_on_exit: bool,
}

impl Dataplane {
    /// The highest value under the mask, never given to a link: it marks the packets uplinkd
    /// itself sends to reset stranded clients.
    pub fn reserved_mark(&self) -> u32 {
        self.mark_mask
    }
}

impl Config {
    /// Worst-case time from a silent blackhole to a `down` decision with these settings. The
    /// first probe lost to the blackhole may be sent up to one calm `interval` after it and is
    /// known lost one `timeout` later; probing then switches to `fast_interval` at once, and the
    /// remaining `misses - 1` probes are sent `fast_interval` apart, the last known lost one
    /// `timeout` after it was sent. Every target is probed in the same rounds, so the quorum
    /// does not add time.
    pub fn worst_case_detection(&self) -> Duration {
        let p = &self.probe;
        let confirm = match self.detection.misses {
            0 | 1 => Duration::ZERO,
            m => p.timeout + p.fast_interval * (m - 2),
        };
        p.interval + p.timeout + confirm
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    /// TOML path, e.g. `link[1].targets`.
    pub key: String,
    pub message: String,
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}: ", self.file.display(), p.line)?;
            if !p.key.is_empty() {
                write!(f, "{}: ", p.key)?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Read and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        problems: vec![Problem {
            line: 0,
            key: String::new(),
            message: format!("cannot read file: {e}"),
        }],
    })?;
    parse(&text).map_err(|problems| ConfigError {
        file: path.to_owned(),
        problems,
    })
}

/// Validate configuration text; on failure every problem found, in file order.
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    raw::parse(text)
}
