//! Validation of the raw file into a [`Config`], one checker per section; every problem is
//! collected with the line of the span it refers to.

mod control;
mod dataplane;
mod ha;
mod links;
mod policy;
mod probe;
mod syntax;

use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;

use super::raw::RawConfig;
use super::{Config, Problem};

/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const IFNAMSIZ: usize = 16;

/// The configuration in `text`, its links' marks and tables not yet allocated (0: see
/// `fence::allocate`); on failure every problem found, in file order.
pub(super) fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::new(text);
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            syntax::report(&mut c, text, &e);
            return Err(c.problems);
        }
    };
    // Problems are sorted by line only: the sections are checked in this order so that those
    // on one line (the first, for a missing section) are listed in it.
    let probe = probe::probe(&mut c, &raw.probe);
    let detection = probe::detection(&mut c, &raw.detection);
    let dataplane = dataplane::options(&mut c, &raw.dataplane);
    links::count(&mut c, &raw.link, &raw.dataplane, &dataplane);
    dataplane::owned_ids(&mut c, &raw.dataplane, &dataplane);
    let links = links::links(&mut c, &raw.link, raw.detection.quorum.as_ref());
    let lan_interfaces = links::lan(&mut c, raw.lan.as_ref(), &links);
    let control = control::control(&mut c, &raw.control);
    let metrics = control::metrics(&mut c, &raw.metrics);
    let hooks = control::hooks(&mut c, &raw.hooks);
    let (policies, rules) = policy::check(
        &mut c,
        &raw.policy,
        &raw.rule,
        &raw.sets,
        &links,
        &lan_interfaces,
    );
    let ha = ha::ha(&mut c, raw.ha.as_ref(), &raw.link, &links);
    c.finish(Config {
        ha,
        links,
        lan_interfaces,
        policies,
        rules: rules.into(),
        control,
        metrics,
        hooks,
        probe,
        detection,
        dataplane,
    })
}

/// Collects problems with the line of the span they refer to.
struct Checker {
    /// Offset of every newline of the text, ascending: a problem's line is found by binary
    /// search, so a file with a problem on each of its n lines is still checked in O(n log n).
    newlines: Vec<usize>,
    problems: Vec<Problem>,
}

impl Checker {
    fn new(text: &str) -> Self {
        Checker {
            newlines: newlines(text),
            problems: Vec::new(),
        }
    }

    fn line(&self, offset: usize) -> usize {
        line(&self.newlines, offset)
    }

    fn err(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let line = self.line(span.start);
        self.problems.push(Problem {
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// `config` if no problem was found, else the problems in file order.
    fn finish(mut self, config: Config) -> Result<Config, Vec<Problem>> {
        if self.problems.is_empty() {
            Ok(config)
        } else {
            self.problems.sort_by_key(|p| p.line);
            Err(self.problems)
        }
    }

    fn duration<T>(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        check: T,
    ) -> Duration
    where
        T: Fn(Duration) -> Result<(), String>,
    {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()).and_then(|d| check(d).map(|()| d)) {
            Ok(d) => d,
            Err(e) => {
                self.err(v.span(), key, e);
                default
            }
        }
    }

    /// Whether `name` (of a link, policy or set) is 1-32 characters of `[a-z0-9_-]`; reports
    /// the problem if not.
    fn name(&mut self, span: Range<usize>, key: &str, name: &str) -> bool {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' || ch == '-');
        if !valid {
            self.err(
                span,
                key,
                format!("{name:?} must be 1-32 characters of [a-z0-9_-]"),
            );
        }
        valid
    }

    fn int(
        &mut self,
        v: &Option<Spanned<u32>>,
        key: &str,
        default: u32,
        range: RangeInclusive<u32>,
    ) -> u32 {
        match v {
            Some(v) if !range.contains(v.get_ref()) => {
                self.err(
                    v.span(),
                    key,
                    format!(
                        "must be between {} and {}, got {}",
                        range.start(),
                        range.end(),
                        v.get_ref()
                    ),
                );
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    }

    /// Whether `name` passes the kernel's `dev_valid_name()` (net/core/dev.c): not empty,
    /// shorter than IFNAMSIZ, not "." or "..", no '/', ':' or `isspace()` byte. A NUL is refused
    /// too: the kernel would read the name only up to it, and so find another interface.
    fn ifname(&mut self, name: &Spanned<String>, key: &str) {
        let n = name.get_ref();
        // The kernel's isspace() (lib/ctype.c): space, \t \n \v \f \r and 0xa0 (Latin-1 NBSP,
        // also the second byte of UTF-8 characters like 'à').
        let refused = |b: u8| matches!(b, b'\0' | b'/' | b':' | b' ' | b'\t'..=b'\r' | 0xa0);
        let valid =
            !n.is_empty() && n.len() < IFNAMSIZ && n != "." && n != ".." && !n.bytes().any(refused);
        if !valid {
            self.err(
                name.span(),
                key,
                format!(
                    "{n:?} is not a valid interface name: 1-{} bytes, not \".\" or \"..\", \
                     without '/', ':', whitespace or NUL",
                    IFNAMSIZ - 1
                ),
            );
        }
    }
}

/// The offsets of the newlines of `text`, for [`line`].
fn newlines(text: &str) -> Vec<usize> {
    text.bytes()
        .enumerate()
        .filter_map(|(i, b)| (b == b'\n').then_some(i))
        .collect()
}

/// The line (from 1) of byte `offset`, given the offsets of the text's newlines.
fn line(newlines: &[usize], offset: usize) -> usize {
    newlines.partition_point(|&nl| nl < offset) + 1
}

/// Parse a duration written as a number and a unit: `"250ms"`, `"2s"`, `"1m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a whole number and a unit, like \"500ms\"")
    })?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("invalid duration {s:?}: unit must be ms, s or m")),
    };
    Ok(d)
}

fn in_range(d: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if d < min || d > max {
        Err(format!("must be between {min:?} and {max:?}, got {d:?}"))
    } else {
        Ok(())
    }
}

/// A check of a duration against `min ..= max`, for [`Checker::duration`].
fn range(min: Duration, max: Duration) -> impl Fn(Duration) -> Result<(), String> {
    move |d| in_range(d, min, max)
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::PathBuf;
    use std::time::Duration;

    use super::parse_duration;
    use crate::config::{parse, DEFAULT_SOCKET};

    pub(super) const MINIMAL: &str = r#"
[[link]]
name = "fiber"
interface = "wan1"
gateway = "100.64.1.1"
priority = 1
targets = ["203.0.113.10", "198.51.100.10"]

[[link]]
name = "lte"
interface = "wan2"
priority = 2
targets = ["203.0.113.10"]

[lan]
interfaces = ["lan0"]
"#;

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.links.len(), 2);
        assert_eq!(c.links[0].mark, 0x200);
        assert_eq!(c.links[1].mark, 0x1900);
        assert_eq!(c.links[0].table, 101);
        assert_eq!(c.links[1].table, 124);
        assert_eq!(c.links[1].gateway, None);
        assert_eq!(c.control.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.probe.interval, Duration::from_millis(400));
        assert_eq!(c.links[0].quorum, 2);
        assert!(c.dataplane.cleanup_on_exit);
        assert_eq!(c.worst_case_detection(), Duration::from_millis(900));
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../../config.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.links.len(), 2);
    }

    #[test]
    fn example_policies_are_valid_when_uncommented() {
        let text: String = include_str!("../../../../config.example.toml")
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                // (Not the control group: it must exist on this machine.)
                Some(rest)
                    if !rest.starts_with("group")
                        && (rest.starts_with('[')
                            || rest.split_once(" = ").is_some_and(|(k, _)| {
                                k.chars().all(|c| {
                                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
                                })
                            })) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&text).unwrap();
        assert_eq!((c.policies.len(), c.rules.len()), (2, 1));
        assert!(c.links[1].nptv6.is_some() && c.policies[1].sticky.is_some());
        assert!(c.hooks.on_transition.len() == 2 && c.metrics.listen.is_some());
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"
[[link]]
name = "Fiber!"
interface = "wan1"
gateway = "not-an-ip"
targets = []

[[link]]
name = "lte"
interface = "wan1"
targets = ["gopher://203.0.113.1/", "300.1.1.1"]

[lan]
interfaces = ["wan1"]

[probe]
interval = "5 parsecs"
"#;
        let p = parse(text).unwrap_err();
        let got: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (3, "link[0].name"),
                (5, "link[0].gateway"),
                (6, "link[0].targets"),
                (10, "link[1].interface"),
                (11, "link[1].targets"),
                (11, "link[1].targets"),
                (14, "lan.interfaces"),
                (17, "probe.interval"),
            ]
        );
    }

    #[test]
    fn unknown_field_is_refused_with_its_line() {
        let text = MINIMAL.replace("priority = 2", "priority = 2\nprio = 3");
        let p = parse(&text).unwrap_err();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].line, p[0].key.as_str()), (13, "link[1].prio"));
        assert!(
            p[0].message.contains("unknown field `prio`"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn type_errors_and_duplicate_keys_name_the_key() {
        let first = |text: &str| {
            let p = parse(text).unwrap_err();
            assert_eq!(p.len(), 1, "{p:?}");
            (p[0].line, p[0].key.clone(), p[0].message.clone())
        };
        let (line, key, msg) = first("[[link]]\nname = 3\n");
        assert_eq!((line, key.as_str()), (2, "link[0].name"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
        let (line, key, _) = first(&MINIMAL.replace("\"203.0.113.10\"]", "\"203.0.113.10\", 4]"));
        assert_eq!((line, key.as_str()), (13, "link[1].targets"));
        let (line, key, msg) =
            first(&MINIMAL.replace("priority = 2", "priority = 2\ninterface = \"x\""));
        assert_eq!((line, key.as_str()), (13, "link[1].interface"), "{msg}");
        assert!(
            msg.contains("duplicate key") && msg.contains("line 11"),
            "{msg}"
        );
        let (line, key, _) = first(&format!("{MINIMAL}\n[lan]\ninterfaces = []\n"));
        assert_eq!((line, key.as_str()), (18, "lan"));
        let (line, key, _) = first(&format!("{MINIMAL}\n[probe]\ninterval = 5\n"));
        assert_eq!((line, key.as_str()), (19, "probe.interval"));
        let (line, key, _) = first(&format!(
            "{MINIMAL}\n[[policy]]\nname = \"p\"\nlinks = [\"lte\", {{ link = \"fiber\", weight = \"5\" }}]\n"
        ));
        assert_eq!((line, key.as_str()), (20, "policy[0].links"));
        let (line, key, _) = first(&format!(
            "{MINIMAL}\n[sets]\na = [\"10.0.0.0/8\"]\na = []\n"
        ));
        assert_eq!((line, key.as_str()), (20, "sets.a"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
