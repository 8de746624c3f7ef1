//! `[[policy]]`, `[[rule]]` and `[sets]`: which link carries which traffic.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::raw::Checker;
use super::{LastResort, Link, Member, Policy, Prefix, Rule, DEFAULT_POLICY};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    name: Spanned<String>,
    links: Spanned<Vec<Spanned<RawMember>>>,
    #[serde(default)]
    last_resort: LastResort,
    sticky: Option<Spanned<String>>,
}

/// `"lte"`, or `{ link = "lte", priority = 2, weight = 3 }`.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a link name or { link = NAME, priority = N, weight = N }"
)]
enum RawMember {
    Name(String),
    Full(RawMemberFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemberFull {
    link: String,
    priority: Option<u32>,
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    policy: Spanned<String>,
    #[serde(default)]
    iif: Vec<Spanned<String>>,
    proto: Option<Spanned<String>>,
    #[serde(default)]
    src: Vec<Spanned<String>>,
    #[serde(default)]
    dst: Vec<Spanned<String>>,
    #[serde(default)]
    sport: Vec<Spanned<RawPort>>,
    #[serde(default)]
    dport: Vec<Spanned<RawPort>>,
}

/// `443`, `"443"` or `"8000-8100"`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a port number or a \"FIRST-LAST\" range")]
enum RawPort {
    One(u16),
    Range(String),
}

/// `[sets]`: named lists of prefixes, used in rules as `"@NAME"`.
pub(super) type RawSets = BTreeMap<String, Spanned<Vec<Spanned<String>>>>;

/// Most nft rules one `[[rule]]` may render to (its lists are matched in chained steps, so this
/// bounds the sum of their lengths, not the product).
const MAX_RULE_ENTRIES: usize = 4096;

/// The policies (the default one first) and the rules.
pub(super) fn check(
    c: &mut Checker<'_>,
    raw_policies: &[Spanned<RawPolicy>],
    raw_rules: &[Spanned<RawRule>],
    sets: &RawSets,
    links: &[Link],
    lan: &[String],
) -> (Vec<Policy>, Vec<Rule>) {
    let link_id = |n: &str| links.iter().position(|l| l.name == n);
    let implicit_default = Policy {
        name: DEFAULT_POLICY.into(),
        members: links
            .iter()
            .enumerate()
            .map(|(i, l)| Member {
                link: i,
                priority: l.priority,
                weight: l.weight,
            })
            .collect(),
        last_resort: LastResort::Default,
        sticky: None,
    };
    let mut policies = vec![implicit_default];
    let mut explicit_default = false;
    for (i, p) in raw_policies.iter().enumerate() {
        let p = p.get_ref();
        let key = |f: &str| format!("policy[{i}].{f}");
        let name = p.name.get_ref();
        let dup = policies[usize::from(!explicit_default)..]
            .iter()
            .any(|q| &q.name == name);
        if c.name(p.name.span(), &key("name"), name)
            && (dup || (name == DEFAULT_POLICY && explicit_default))
        {
            c.err(
                p.name.span(),
                key("name"),
                format!("{name:?} is used by another policy"),
            );
        }
        if p.links.get_ref().is_empty() {
            c.err(p.links.span(), key("links"), "must name at least one link");
        }
        let mut members: Vec<Member> = Vec::new();
        for (pos, m) in p.links.get_ref().iter().enumerate() {
            let (link, priority, weight) = match m.get_ref() {
                RawMember::Name(n) => (n, None, None),
                RawMember::Full(f) => (&f.link, f.priority, f.weight),
            };
            let Some(id) = link_id(link) else {
                c.err(
                    m.span(),
                    key("links"),
                    format!("no [[link]] named {link:?}"),
                );
                continue;
            };
            if members.iter().any(|x| x.link == id) {
                c.err(m.span(), key("links"), format!("{link:?} is listed twice"));
                continue;
            }
            let weight = weight.unwrap_or(links[id].weight);
            if !(1..=1000).contains(&weight) {
                c.err(
                    m.span(),
                    key("links"),
                    format!("weight must be between 1 and 1000, got {weight}"),
                );
            }
            members.push(Member {
                link: id,
                priority: priority.unwrap_or(pos as u32 + 1),
                weight: weight.clamp(1, 1000),
            });
        }
        // (An invalid value is reported; the configuration is then refused as a whole.)
        let secs = std::time::Duration::from_secs;
        let sticky = p.sticky.is_some().then(|| {
            c.duration(&p.sticky, &key("sticky"), secs(0), |d| {
                super::raw::in_range(d, secs(1), secs(86400))
            })
        });
        let policy = Policy {
            name: name.clone(),
            members,
            last_resort: p.last_resort,
            sticky,
        };
        if name == DEFAULT_POLICY && !explicit_default {
            explicit_default = true;
            policies[0] = policy;
        } else {
            policies.push(policy);
        }
    }

    // Every set is checked once, used or not.
    let mut parsed: BTreeMap<&str, Vec<Prefix>> = BTreeMap::new();
    for (name, list) in sets {
        let key = format!("sets.{name}");
        c.name(list.span(), &key, name);
        let mut out: Vec<Prefix> = Vec::new();
        for e in list.get_ref() {
            match e.get_ref().parse::<Prefix>() {
                Ok(p) if !out.contains(&p) => out.push(p),
                Ok(_) => {}
                Err(msg) => c.err(e.span(), &key, msg),
            }
        }
        parsed.insert(name.as_str(), out);
    }
    let sets = &parsed;

    let mut rules = Vec::new();
    for (i, r) in raw_rules.iter().enumerate() {
        let r = r.get_ref();
        let key = |f: &str| format!("rule[{i}].{f}");
        let policy = policies
            .iter()
            .position(|p| &p.name == r.policy.get_ref())
            .unwrap_or_else(|| {
                c.err(
                    r.policy.span(),
                    key("policy"),
                    format!("no [[policy]] named {:?}", r.policy.get_ref()),
                );
                0
            });
        for n in &r.iif {
            if !lan.contains(n.get_ref()) {
                c.err(
                    n.span(),
                    key("iif"),
                    format!(
                        "{:?} is not in lan.interfaces (only LAN traffic is steered)",
                        n.get_ref()
                    ),
                );
            }
        }
        let proto = r.proto.as_ref().and_then(|p| match proto_number(p.get_ref()) {
            Some(n) => Some(n),
            None => {
                c.err(
                    p.span(),
                    key("proto"),
                    format!(
                        "{:?} is not a protocol: tcp, udp, icmp, icmpv6, gre, esp, sctp or a number 0-255",
                        p.get_ref()
                    ),
                );
                None
            }
        });
        let src = prefixes(c, &r.src, sets, &key("src"));
        let dst = prefixes(c, &r.dst, sets, &key("dst"));
        if !src.is_empty()
            && !dst.is_empty()
            && !src
                .iter()
                .any(|s| dst.iter().any(|d| s.is_ipv6() == d.is_ipv6()))
        {
            let span = r.dst.first().map_or(0..0, |d| d.span());
            c.err(
                span,
                key("dst"),
                "no address family in common with src: the rule could never match",
            );
        }
        let sport = ports(c, &r.sport, &key("sport"));
        let dport = ports(c, &r.dport, &key("dport"));
        let tcp_udp = matches!(proto, Some(6 | 17 | 132));
        if (!sport.is_empty() || !dport.is_empty()) && !tcp_udp {
            let span = r
                .dport
                .first()
                .or(r.sport.first())
                .map_or(0..0, |p| p.span());
            c.err(
                span,
                key(if dport.is_empty() { "sport" } else { "dport" }),
                "ports need proto = \"tcp\", \"udp\" or \"sctp\"",
            );
        }
        let entries = r.iif.len() + src.len() + dst.len() + sport.len() + dport.len();
        if entries > MAX_RULE_ENTRIES {
            let span = r.policy.span();
            c.err(
                span,
                key("src"),
                format!("{entries} entries; at most {MAX_RULE_ENTRIES} per rule"),
            );
        }
        rules.push(Rule {
            policy,
            iif: r.iif.iter().map(|n| n.get_ref().clone()).collect(),
            proto,
            src,
            dst,
            sport,
            dport,
        });
    }
    (policies, rules)
}

fn proto_number(s: &str) -> Option<u8> {
    Some(match s {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        "gre" => 47,
        "esp" => 50,
        "sctp" => 132,
        n => return n.parse().ok(),
    })
}

/// Prefixes and `@set` references (sets already checked), expanded, duplicates removed (in
/// order).
fn prefixes(
    c: &mut Checker<'_>,
    list: &[Spanned<String>],
    sets: &BTreeMap<&str, Vec<Prefix>>,
    key: &str,
) -> Vec<Prefix> {
    let mut out: Vec<Prefix> = Vec::new();
    for item in list {
        let text = item.get_ref();
        let found: Vec<Prefix> = match text.strip_prefix('@') {
            Some(name) => match sets.get(name) {
                Some(set) => set.clone(),
                None => {
                    c.err(item.span(), key, format!("no set named {name:?} in [sets]"));
                    continue;
                }
            },
            None => match text.parse::<Prefix>() {
                Ok(p) => vec![p],
                Err(msg) => {
                    c.err(item.span(), key, msg);
                    continue;
                }
            },
        };
        for p in found {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

fn ports(c: &mut Checker<'_>, list: &[Spanned<RawPort>], key: &str) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for p in list {
        let range = match p.get_ref() {
            RawPort::One(n) => Some((*n, *n)),
            RawPort::Range(s) => s
                .split_once('-')
                .or(Some((s.as_str(), s.as_str())))
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                .filter(|(a, b)| a <= b),
        };
        match range {
            Some(r) if r.0 > 0 => out.push(r),
            _ => c.err(
                p.span(),
                key,
                "must be a port 1-65535 or a \"FIRST-LAST\" range with FIRST <= LAST",
            ),
        }
    }
    out
}
