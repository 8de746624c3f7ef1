//! The TOML file as written, and its validation into [`super::Config`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use std::path::PathBuf;
use std::time::Duration;
use uplinkd_probes::Target;

use serde::Deserialize;
use toml::Spanned;

use super::policy::{RawPolicy, RawRule, RawSets};
use super::{
    Config, Control, DataplaneOptions, Detection, Failback, Hooks, Link, Metrics, Prefix, Probe,
    Problem, DEFAULT_SOCKET, MAX_LINKS,
};

/// Kernel routing tables 253 (default), 254 (main) and 255 (local) are reserved, 0 is "unspec".
const RESERVED_TABLES: std::ops::RangeInclusive<u32> = 253..=255;
/// `ip rule` priority of the kernel's `lookup main` rule; ours must come before it.
const MAIN_RULE_PRIORITY: u32 = 32766;
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const IFNAMSIZ: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    link: Vec<Spanned<RawLink>>,
    lan: Option<Spanned<RawLan>>,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    hooks: RawHooks,
    #[serde(default)]
    probe: RawProbe,
    #[serde(default)]
    detection: RawDetection,
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    policy: Vec<Spanned<RawPolicy>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    sets: RawSets,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    name: Spanned<String>,
    interface: Spanned<String>,
    gateway: Option<Spanned<String>>,
    #[serde(default = "default_priority")]
    priority: u32,
    weight: Option<Spanned<u32>>,
    targets: Spanned<Vec<Spanned<String>>>,
    quorum: Option<Spanned<u32>>,
    #[serde(default)]
    failback: Failback,
    nptv6: Option<Spanned<String>>,
}

fn default_priority() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLan {
    interfaces: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    on_transition: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

/// The id of a group, from /etc/group (name:password:gid:members).
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name))
            .then(|| f.nth(1).and_then(|g| g.parse().ok()))
            .flatten()
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    interval: Option<Spanned<String>>,
    fast_interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDetection {
    misses: Option<Spanned<u32>>,
    quorum: Option<Spanned<u32>>,
    up_after: Option<Spanned<u32>>,
    stable_time: Option<Spanned<String>>,
    flap_half_life: Option<Spanned<String>>,
    max_hold: Option<Spanned<String>>,
    degraded_loss_pct: Option<Spanned<u32>>,
    degraded_rtt: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    mark_mask: Option<Spanned<u32>>,
    table_base: Option<Spanned<u32>>,
    rule_priority: Option<Spanned<u32>>,
    cleanup_on_exit: Option<bool>,
    steer_router: Option<bool>,
}

/// Collects problems with the line of the span they refer to.
pub(super) struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(super) fn err(
        &mut self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = self.line(span.start);
        self.problems.push(Problem {
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration<T>(
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
}

impl Checker<'_> {
    /// Whether `name` (of a link, policy or set) is 1-32 characters of `[a-z0-9_-]`; reports
    /// the problem if not.
    pub(super) fn name(&mut self, span: std::ops::Range<usize>, key: &str, name: &str) -> bool {
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
        range: std::ops::RangeInclusive<u32>,
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

pub(super) fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        text,
        problems: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            c.err(span, "", e.message().trim().to_owned());
            return Err(c.problems);
        }
    };

    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    let range = |min: Duration, max: Duration| move |d| in_range(d, min, max);
    let rp = &raw.probe;
    let probe = Probe {
        interval: c.duration(
            &rp.interval,
            "probe.interval",
            ms(400),
            range(ms(10), secs(60)),
        ),
        fast_interval: c.duration(
            &rp.fast_interval,
            "probe.fast_interval",
            ms(50),
            range(ms(10), secs(60)),
        ),
        timeout: c.duration(
            &rp.timeout,
            "probe.timeout",
            ms(200),
            range(ms(10), secs(30)),
        ),
    };
    if probe.fast_interval > probe.interval {
        let span = rp.fast_interval.as_ref().map_or(0..0, |v| v.span());
        c.err(
            span,
            "probe.fast_interval",
            "must not be longer than probe.interval",
        );
    }
    let rd = &raw.detection;
    let detection = Detection {
        misses: c.int(&rd.misses, "detection.misses", 4, 1..=100),
        quorum: rd.quorum.as_ref().map(|q| *q.get_ref()),
        up_after: c.int(&rd.up_after, "detection.up_after", 3, 1..=1000),
        stable_time: c.duration(
            &rd.stable_time,
            "detection.stable_time",
            secs(1),
            range(ms(0), secs(3600)),
        ),
        flap_half_life: c.duration(
            &rd.flap_half_life,
            "detection.flap_half_life",
            secs(60),
            range(secs(1), secs(86400)),
        ),
        max_hold: c.duration(
            &rd.max_hold,
            "detection.max_hold",
            secs(300),
            range(ms(0), secs(86400)),
        ),
        degraded_loss_pct: c.int(
            &rd.degraded_loss_pct,
            "detection.degraded_loss_pct",
            25,
            1..=100,
        ),
        degraded_rtt: c.duration(
            &rd.degraded_rtt,
            "detection.degraded_rtt",
            ms(500),
            range(ms(1), secs(60)),
        ),
    };
    if let Some(q) = rd.quorum.as_ref().filter(|q| *q.get_ref() == 0) {
        c.err(q.span(), "detection.quorum", "must be at least 1");
    }

    let mark_mask = match &raw.dataplane.mark_mask {
        Some(v) if *v.get_ref() == 0 => {
            c.err(
                v.span(),
                "dataplane.mark_mask",
                "must have at least one bit set",
            );
            0xff00
        }
        Some(v)
            if (v.get_ref() >> v.get_ref().trailing_zeros()).count_ones()
                != (v.get_ref() >> v.get_ref().trailing_zeros()).trailing_ones() =>
        {
            c.err(
                v.span(),
                "dataplane.mark_mask",
                format!(
                    "{:#x} must be one run of consecutive bits, like 0xff00",
                    v.get_ref()
                ),
            );
            0xff00
        }
        Some(v) => *v.get_ref(),
        None => 0xff00,
    };
    let table_base = raw
        .dataplane
        .table_base
        .as_ref()
        .map_or(100, |v| *v.get_ref());
    let rule_priority = raw
        .dataplane
        .rule_priority
        .as_ref()
        .map_or(1000, |v| *v.get_ref());
    let dataplane = DataplaneOptions {
        mark_mask,
        table_base,
        rule_priority,
        cleanup_on_exit: raw.dataplane.cleanup_on_exit.unwrap_or(true),
        steer_router: raw.dataplane.steer_router.unwrap_or(true),
    };

    let links = check_links(&mut c, &raw, &dataplane);

    let lan_interfaces = match &raw.lan {
        None => {
            c.err(
                0..0,
                "lan",
                "missing section [lan] with `interfaces = [...]`",
            );
            Vec::new()
        }
        Some(lan) => {
            let ifs = &lan.get_ref().interfaces;
            if ifs.get_ref().is_empty() {
                c.err(
                    ifs.span(),
                    "lan.interfaces",
                    "must name at least one interface",
                );
            }
            let wan: BTreeSet<&str> = links.iter().map(|l| l.interface.as_str()).collect();
            let mut seen = BTreeSet::new();
            for i in ifs.get_ref() {
                check_ifname(&mut c, i, "lan.interfaces");
                if wan.contains(i.get_ref().as_str()) {
                    c.err(
                        i.span(),
                        "lan.interfaces",
                        format!("{:?} is also a link's interface", i.get_ref()),
                    );
                }
                if !seen.insert(i.get_ref().clone()) {
                    c.err(
                        i.span(),
                        "lan.interfaces",
                        format!("{:?} is listed twice", i.get_ref()),
                    );
                }
            }
            ifs.get_ref().iter().map(|i| i.get_ref().clone()).collect()
        }
    };

    let gid = raw
        .control
        .group
        .as_ref()
        .and_then(|g| match group_id(g.get_ref()) {
            Some(id) => Some(id),
            None => {
                c.err(
                    g.span(),
                    "control.group",
                    format!("no group named {:?} in /etc/group", g.get_ref()),
                );
                None
            }
        });
    let metrics = Metrics {
        listen: raw
            .metrics
            .listen
            .as_ref()
            .and_then(|l| match l.get_ref().parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.err(
                        l.span(),
                        "metrics.listen",
                        format!(
                            "{:?} is not an address:port, like \"127.0.0.1:9184\"",
                            l.get_ref()
                        ),
                    );
                    None
                }
            }),
    };
    let hooks = Hooks {
        on_transition: match &raw.hooks.on_transition {
            Some(cmd) if cmd.get_ref().first().is_none_or(|p| !p.starts_with('/')) => {
                c.err(
                    cmd.span(),
                    "hooks.on_transition",
                    "must be [\"/absolute/program\", \"arg\", ...]",
                );
                Vec::new()
            }
            Some(cmd) => cmd.get_ref().clone(),
            None => Vec::new(),
        },
        timeout: c.duration(
            &raw.hooks.timeout,
            "hooks.timeout",
            secs(10),
            range(ms(100), secs(3600)),
        ),
    };
    let control = Control {
        group: raw.control.group.as_ref().map(|g| g.get_ref().clone()),
        gid,
        socket: match &raw.control.socket {
            Some(s) if !s.get_ref().starts_with('/') => {
                c.err(s.span(), "control.socket", "must be an absolute path");
                PathBuf::from(DEFAULT_SOCKET)
            }
            Some(s) => PathBuf::from(s.get_ref()),
            None => PathBuf::from(DEFAULT_SOCKET),
        },
    };

    let (policies, rules) = super::policy::check(
        &mut c,
        &raw.policy,
        &raw.rule,
        &raw.sets,
        &links,
        &lan_interfaces,
    );

    if c.problems.is_empty() {
        Ok(Config {
            links,
            lan_interfaces,
            policies,
            rules,
            control,
            metrics,
            hooks,
            probe,
            detection,
            dataplane,
        })
    } else {
        c.problems.sort_by_key(|p| p.line);
        Err(c.problems)
    }
}

pub(super) fn in_range(d: Duration, min: Duration, max: Duration) -> Result<(), String> {
    if d < min || d > max {
        Err(format!("must be between {min:?} and {max:?}, got {d:?}"))
    } else {
        Ok(())
    }
}

fn check_ifname(c: &mut Checker<'_>, name: &Spanned<String>, key: &str) {
    let n = name.get_ref();
    let valid = !n.is_empty()
        && n.len() < IFNAMSIZ
        && n != "."
        && n != ".."
        && !n
            .chars()
            .any(|ch| ch == '/' || ch == ':' || ch.is_whitespace());
    if !valid {
        c.err(
            name.span(),
            key,
            format!("{n:?} is not a valid interface name"),
        );
    }
}

fn check_links(c: &mut Checker<'_>, raw: &RawConfig, dp: &DataplaneOptions) -> Vec<Link> {
    if raw.link.is_empty() {
        c.err(0..0, "link", "at least one [[link]] is required");
    }
    // Mark values count up from the lowest bit of the mask: 0 means "no link" (unmarked).
    let shift = dp.mark_mask.trailing_zeros();
    // The two highest values under the mask are reserved (see `DataplaneOptions::tickle_mark` and
    // `DataplaneOptions::unreachable_mark`).
    let max_links = (dp.mark_mask >> shift).saturating_sub(2);
    if raw.link.len() as u64 > u64::from(max_links) {
        let span = raw.link.last().map_or(0..0, |l| l.span());
        c.err(
            span,
            "dataplane.mark_mask",
            format!(
                "{:#x} leaves room for {max_links} links, {} configured",
                dp.mark_mask,
                raw.link.len()
            ),
        );
    }
    if raw.link.len() > MAX_LINKS as usize {
        let span = raw.link.last().map_or(0..0, |l| l.span());
        c.err(
            span,
            "link",
            format!(
                "at most {MAX_LINKS} links are supported, {} configured",
                raw.link.len()
            ),
        );
    }
    let owned_tables = dp.table_base..dp.table_base.saturating_add(MAX_LINKS);
    if dp.table_base == 0
        || RESERVED_TABLES.clone().any(|t| owned_tables.contains(&t))
        || owned_tables.end < owned_tables.start + MAX_LINKS
    {
        let span = raw.dataplane.table_base.as_ref().map_or(0..0, |v| v.span());
        c.err(
            span,
            "dataplane.table_base",
            format!(
                "uplinkd owns tables {}..{} which must not include the kernel's tables 0 or 253-255",
                owned_tables.start, owned_tables.end
            ),
        );
    }
    if dp.rule_priority == 0 || dp.rule_priority.saturating_add(MAX_LINKS) >= MAIN_RULE_PRIORITY {
        let span = raw
            .dataplane
            .rule_priority
            .as_ref()
            .map_or(0..0, |v| v.span());
        c.err(
            span,
            "dataplane.rule_priority",
            format!(
                "uplinkd owns rule priorities {}..={} which must lie within 1..{MAIN_RULE_PRIORITY}",
                dp.rule_priority,
                dp.rule_priority.saturating_add(MAX_LINKS)
            ),
        );
    }

    let mut names = BTreeSet::new();
    let mut ifaces = BTreeSet::new();
    let mut out = Vec::new();
    for (i, l) in raw.link.iter().enumerate() {
        let l = l.get_ref();
        let key = |field: &str| format!("link[{i}].{field}");
        let name = l.name.get_ref();
        if c.name(l.name.span(), &key("name"), name) && !names.insert(name.clone()) {
            c.err(
                l.name.span(),
                key("name"),
                format!("{name:?} is used by another link"),
            );
        }
        check_ifname(c, &l.interface, &key("interface"));
        if !ifaces.insert(l.interface.get_ref().clone()) {
            c.err(
                l.interface.span(),
                key("interface"),
                format!("{:?} is used by another link", l.interface.get_ref()),
            );
        }
        let gateway = l
            .gateway
            .as_ref()
            .and_then(|g| match g.get_ref().parse::<Ipv4Addr>() {
                Ok(a) if !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast() => Some(a),
                _ => {
                    c.err(
                        g.span(),
                        key("gateway"),
                        format!("{:?} is not a usable IPv4 unicast address", g.get_ref()),
                    );
                    None
                }
            });
        if l.targets.get_ref().is_empty() {
            c.err(
                l.targets.span(),
                key("targets"),
                "must list at least one address to probe",
            );
        }
        let mut targets: Vec<Target> = Vec::new();
        for t in l.targets.get_ref() {
            match t.get_ref().parse::<Target>() {
                Ok(target) if targets.contains(&target) => {
                    c.err(
                        t.span(),
                        key("targets"),
                        format!("{target} is listed twice"),
                    );
                }
                Ok(target) => targets.push(target),
                Err(e) => c.err(t.span(), key("targets"), e),
            }
        }
        let n = targets.len() as u32;
        let quorum = match (&l.quorum, raw.detection.quorum.as_ref()) {
            (Some(q), _) | (None, Some(q)) => {
                let v = *q.get_ref();
                if n > 0 && !(1..=n).contains(&v) {
                    let k = if l.quorum.is_some() {
                        key("quorum")
                    } else {
                        "detection.quorum".into()
                    };
                    c.err(
                        q.span(),
                        k,
                        format!("must be between 1 and the link's {n} targets, got {v}"),
                    );
                }
                v.clamp(1, n.max(1))
            }
            (None, None) => n.max(1),
        };
        let nptv6 = l
            .nptv6
            .as_ref()
            .and_then(|p| match p.get_ref().parse::<Prefix>() {
                Ok(n) if n.is_ipv6() && (1..=64).contains(&n.len) => Some(n),
                Ok(_) => {
                    c.err(
                        p.span(),
                        key("nptv6"),
                        "must be an IPv6 prefix of length 1-64, like \"2001:db8:1::/48\"",
                    );
                    None
                }
                Err(e) => {
                    c.err(p.span(), key("nptv6"), e);
                    None
                }
            });
        out.push(Link {
            nptv6,
            name: name.clone(),
            quorum,
            failback: l.failback,
            interface: l.interface.get_ref().clone(),
            gateway,
            priority: l.priority,
            weight: c.int(&l.weight, &key("weight"), 1, 1..=1000),
            targets,
            mark: ((i as u32).wrapping_add(1) << shift) & dp.mark_mask,
            table: dp.table_base.wrapping_add(i as u32),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MINIMAL: &str = r#"
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
        assert_eq!(c.links[0].mark, 0x100);
        assert_eq!(c.links[1].mark, 0x200);
        assert_eq!(c.links[0].table, 100);
        assert_eq!(c.links[1].table, 101);
        assert_eq!(c.links[1].gateway, None);
        assert_eq!(c.control.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.probe.interval, Duration::from_millis(400));
        assert_eq!(c.links[0].quorum, 2);
        assert!(c.dataplane.cleanup_on_exit);
        assert_eq!(c.worst_case_detection(), Duration::from_millis(900));
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../config.example.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.links.len(), 2);
    }

    #[test]
    fn example_policies_are_valid_when_uncommented() {
        let text: String = include_str!("../../../config.example.toml")
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
targets = ["https://203.0.113.1/", "300.1.1.1"]

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
        assert_eq!(p[0].line, 13);
        assert!(
            p[0].message.contains("unknown field `prio`"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn missing_sections_are_reported() {
        let p = parse("").unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["link", "lan"]);
    }

    #[test]
    fn mark_mask_limits_the_number_of_links() {
        let text = format!("{MINIMAL}\n[dataplane]\nmark_mask = 0x1\n");
        let p = parse(&text).unwrap_err();
        assert!(p.iter().any(|p| p.key == "dataplane.mark_mask"), "{p:?}");
        let text = format!("{MINIMAL}\n[dataplane]\nmark_mask = 0xf0f0\n");
        let p = parse(&text).unwrap_err();
        assert!(p[0].message.contains("consecutive"), "{p:?}");
        let text = format!("{MINIMAL}\n[dataplane]\nmark_mask = 0x70\n");
        let c = parse(&text).unwrap();
        assert_eq!((c.links[0].mark, c.links[1].mark), (0x10, 0x20));
    }

    #[test]
    fn reserved_tables_and_rule_priorities_are_refused() {
        let text = format!("{MINIMAL}\n[dataplane]\ntable_base = 200\nrule_priority = 32750\n");
        let p = parse(&text).unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["dataplane.table_base", "dataplane.rule_priority"]
        );
    }

    #[test]
    fn policies_rules_and_sets() {
        let text = format!(
            r#"{MINIMAL}
[sets]
phones = ["192.168.1.20", "2001:db8::/64"]

[[policy]]
name = "lte-first"
links = ["lte", {{ link = "fiber", weight = 5 }}]
sticky = "10m"

[[policy]]
name = "default"
links = ["fiber"]
last_resort = "unreachable"

[[rule]]
src = ["@phones", "10.0.0.0/8"]
proto = "tcp"
dport = [443, "8000-8100"]
policy = "lte-first"
"#
        );
        let c = parse(&text).unwrap();
        let names: Vec<&str> = c.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default", "lte-first"]);
        assert_eq!(
            c.policies[0].last_resort,
            super::super::LastResort::Unreachable
        );
        let m = &c.policies[1].members;
        assert_eq!((m[0].link, m[0].priority, m[0].weight), (1, 1, 1));
        assert_eq!((m[1].link, m[1].priority, m[1].weight), (0, 2, 5));
        assert_eq!(c.policies[1].sticky, Some(Duration::from_secs(600)));
        let r = &c.rules[0];
        assert_eq!(r.policy, 1);
        let src: Vec<String> = r.src.iter().map(|p| p.to_string()).collect();
        assert_eq!(src, ["192.168.1.20/32", "2001:db8::/64", "10.0.0.0/8"]);
        assert_eq!(
            (r.proto, r.dport.clone()),
            (Some(6), vec![(443, 443), (8000, 8100)])
        );
        // Without a [[policy]] named "default", every link with its own priority and weight.
        let c = parse(MINIMAL).unwrap();
        let m = &c.policies[0].members;
        assert_eq!((m.len(), m[1].priority), (2, 2));
    }

    #[test]
    fn policy_and_rule_mistakes_are_reported_with_their_lines() {
        let text = format!(
            r#"{MINIMAL}
[[policy]]
name = "x"
links = ["dsl"]
sticky = "forever"

[[rule]]
policy = "y"
src = ["10.0.0.1/8", "@nope"]
dport = [80]
iif = ["eth9"]
"#
        );
        let p = parse(&text).unwrap_err();
        let got: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (20, "policy[0].links"),
                (21, "policy[0].sticky"),
                (24, "rule[0].policy"),
                (25, "rule[0].src"),
                (25, "rule[0].src"),
                (26, "rule[0].dport"),
                (27, "rule[0].iif"),
            ]
        );
        assert!(
            p[3].message.contains("did you mean \"10.0.0.0/8\""),
            "{}",
            p[3].message
        );
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
