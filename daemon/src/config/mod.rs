//! Configuration: raw TOML structs (unknown fields refused) turned into a validated [`Config`].
//!
//! Every semantic error is collected, each with the file, line and TOML path it refers to, so an
//! operator fixes a broken file in one pass.
//!
//! `raw` is the file as written, `check` validates it section by section, and `fence` then
//! allocates the kernel ids (marks, routing tables) of the valid configuration.

mod check;
pub mod fence;
mod raw;
pub mod render;
mod types;

use std::path::Path;

pub use check::parse_duration;
pub use fence::MAX_LINKS;
pub use types::{
    Config, ConfigError, Control, DataplaneOptions, Detection, Failback, Ha, Hooks, LastResort,
    Link, Member, Metrics, Policy, Prefix, Probe, Problem, Rule, DEFAULT_HISTORY, DEFAULT_POLICY,
    DEFAULT_SOCKET,
};
pub use uplinkd_probes::Target;

/// Two links for tests of the dataplane's rendering: `l1` on wan1 (priority 1), `l2` on wan2
/// (priority 2); no `[lan]`.
#[cfg(test)]
pub(crate) const TEST_LINKS: &str = r#"
[[link]]
name = "l1"
interface = "wan1"
targets = ["192.0.2.1"]

[[link]]
name = "l2"
interface = "wan2"
priority = 2
targets = ["192.0.2.1"]
"#;

/// Read and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let error = |problem| ConfigError {
        file: path.to_owned(),
        problems: vec![problem],
    };
    let bytes = std::fs::read(path).map_err(|e| {
        // "Permission denied (os error 13)" -> "permission denied".
        let e = e.to_string();
        let reason = e.split(" (os error").next().unwrap_or(&e).to_lowercase();
        error(Problem {
            line: 0,
            key: String::new(),
            message: format!("cannot read the file: {reason}"),
        })
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let (before, bad) = bytes.split_at(e.valid_up_to());
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        error(Problem {
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            key: String::new(),
            message: format!(
                "byte {:#04x} at column {} is not UTF-8 (TOML files are UTF-8)",
                bad.first().copied().unwrap_or_default(),
                before.len() - line_start + 1
            ),
        })
    })?;
    parse(text).map_err(|problems| ConfigError {
        file: path.to_owned(),
        problems,
    })
}

/// Validate configuration text; on failure every problem found, in file order.
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let mut config = check::parse(text)?;
    let ids = fence::allocate(&config.dataplane, &config.links);
    for (link, ids) in config.links.iter_mut().zip(ids) {
        link.mark = ids.mark;
        link.table = ids.table;
    }
    Ok(config)
}
