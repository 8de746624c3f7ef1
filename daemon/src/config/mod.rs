//! Configuration: raw TOML structs (unknown fields refused) turned into a validated [`Config`].
//!
//! Every semantic error is collected, each with the file, line and TOML path it refers to, so an
//! operator fixes a broken file in one pass.

mod raw;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::parse_duration;

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
    pub targets: Vec<IpAddr>,
    /// Mark value of this link under [`Dataplane::mark_mask`].
    pub mark: u32,
    /// Routing table holding this link's default route.
    pub table: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// Time between probe rounds; each round probes every target of a link concurrently.
    pub interval: Duration,
    /// A reply later than this counts as lost.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// A link is declared down when no target answered for this long and probes sent in that
    /// time have failed.
    pub down_after: Duration,
    /// Consecutive successful probe rounds before a down link is trusted again.
    pub up_after: u32,
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

impl Config {
    /// Worst-case time from a silent blackhole to a `down` decision with these settings: the
    /// last answered probe may have been sent just before the blackhole; probes sent over the
    /// next `down_after` must fail, and the last of them is known lost one `timeout` later.
    pub fn worst_case_detection(&self) -> Duration {
        self.detection.down_after + self.probe.timeout
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
