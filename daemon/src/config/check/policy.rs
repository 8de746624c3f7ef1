//! `[[policy]]`, `[[rule]]` and `[sets]`: which link carries which traffic.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use toml::Spanned;

use super::super::raw::{RawMember, RawPolicy, RawPort, RawRule, RawSets};
use super::super::{LastResort, Link, Member, Policy, Prefix, Rule, DEFAULT_POLICY};
use super::{in_range, Checker};

/// The policies (the default one first) and the rules.
pub(super) fn check(
    c: &mut Checker,
    raw_policies: &[Spanned<RawPolicy>],
    raw_rules: &[Spanned<RawRule>],
    sets: &RawSets,
    links: &[Link],
    lan: &[String],
) -> (Vec<Policy>, Vec<Rule>) {
    let policies = policies(c, raw_policies, links);
    let sets = self::sets(c, sets);
    // Names looked up once per reference: a long file costs O(n log n), not O(n^2). The first
    // policy of a name is the one a rule gets (a second is refused anyway).
    let mut policy_ids = BTreeMap::new();
    for (i, p) in policies.iter().enumerate() {
        policy_ids.entry(p.name.as_str()).or_insert(i);
    }
    let lan: BTreeSet<&str> = lan.iter().map(String::as_str).collect();
    let rules = raw_rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(c, i, r.get_ref(), &policy_ids, &sets, &lan))
        .collect();
    (policies, rules)
}

/// The policies, the default one first: as configured, or else every link with its own
/// priority and weight.
fn policies(c: &mut Checker, raw: &[Spanned<RawPolicy>], links: &[Link]) -> Vec<Policy> {
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
    let mut link_ids = BTreeMap::new();
    for (i, l) in links.iter().enumerate() {
        link_ids.entry(l.name.as_str()).or_insert(i);
    }
    let mut policies = vec![implicit_default];
    let mut explicit_default = false;
    // The names configured so far (the implicit default's is not one).
    let mut names = BTreeSet::new();
    for (i, p) in raw.iter().enumerate() {
        let p = p.get_ref();
        let key = |f: &str| format!("policy[{i}].{f}");
        let name = p.name.get_ref();
        let dup = !names.insert(name.as_str());
        if c.name(p.name.span(), &key("name"), name) && dup {
            c.err(
                p.name.span(),
                key("name"),
                format!("{name:?} is used by another policy"),
            );
        }
        let members = members(c, p, links, &link_ids, &key("links"));
        // (An invalid value is reported; the configuration is then refused as a whole.)
        let secs = std::time::Duration::from_secs;
        let sticky = p.sticky.is_some().then(|| {
            c.duration(&p.sticky, &key("sticky"), secs(0), |d| {
                in_range(d, secs(1), secs(86400))
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
    policies
}

/// A policy's links; unless given, a member's priority is its position (from 1) and its
/// weight the link's.
fn members(
    c: &mut Checker,
    p: &RawPolicy,
    links: &[Link],
    link_ids: &BTreeMap<&str, usize>,
    key: &str,
) -> Vec<Member> {
    if p.links.get_ref().is_empty() {
        c.err(p.links.span(), key, "must name at least one link");
    }
    let mut members: Vec<Member> = Vec::new();
    let mut listed = BTreeSet::new();
    for (pos, m) in p.links.get_ref().iter().enumerate() {
        let (link, priority, weight) = match m.get_ref() {
            RawMember::Name(n) => (n, None, None),
            RawMember::Full(f) => (&f.link, f.priority, f.weight),
        };
        let Some(&id) = link_ids.get(link.as_str()) else {
            c.err(m.span(), key, format!("no [[link]] named {link:?}"));
            continue;
        };
        if !listed.insert(id) {
            c.err(m.span(), key, format!("{link:?} is listed twice"));
            continue;
        }
        let weight = weight.unwrap_or(links[id].weight);
        if !(1..=1000).contains(&weight) {
            c.err(
                m.span(),
                key,
                format!("weight must be between 1 and 1000, got {weight}"),
            );
        }
        members.push(Member {
            link: id,
            priority: priority.unwrap_or(pos as u32 + 1),
            weight: weight.clamp(1, 1000),
        });
    }
    members
}

/// Every set, checked once whether used or not, its duplicates removed.
fn sets<'a>(c: &mut Checker, sets: &'a RawSets) -> BTreeMap<&'a str, Vec<Prefix>> {
    let mut parsed: BTreeMap<&str, Vec<Prefix>> = BTreeMap::new();
    for (name, list) in sets {
        let key = format!("sets.{name}");
        c.name(list.span(), &key, name);
        let mut out: Vec<Prefix> = Vec::new();
        let mut seen = BTreeSet::new();
        for e in list.get_ref() {
            match e.get_ref().parse::<Prefix>() {
                Ok(p) if seen.insert(p) => out.push(p),
                Ok(_) => {}
                Err(msg) => c.err(e.span(), &key, msg),
            }
        }
        parsed.insert(name.as_str(), out);
    }
    parsed
}

/// Rule `i`.
fn rule(
    c: &mut Checker,
    i: usize,
    r: &RawRule,
    policy_ids: &BTreeMap<&str, usize>,
    sets: &BTreeMap<&str, Vec<Prefix>>,
    lan: &BTreeSet<&str>,
) -> Rule {
    let key = |f: &str| format!("rule[{i}].{f}");
    let policy = policy_ids
        .get(r.policy.get_ref().as_str())
        .copied()
        .unwrap_or_else(|| {
            c.err(
                r.policy.span(),
                key("policy"),
                format!("no [[policy]] named {:?}", r.policy.get_ref()),
            );
            0
        });
    lan_only(c, &r.iif, lan, &key("iif"));
    let proto = r.proto.as_ref().and_then(|p| proto(c, p, &key("proto")));
    let src = prefixes(c, &r.src, sets, &key("src"));
    let dst = prefixes(c, &r.dst, sets, &key("dst"));
    // (Each list's families, then compared: O(src + dst).)
    let families = |l: &[Prefix]| {
        (
            l.iter().any(|p| !p.is_ipv6()),
            l.iter().any(Prefix::is_ipv6),
        )
    };
    let ((src4, src6), (dst4, dst6)) = (families(&src), families(&dst));
    let common_family = (src4 && dst4) || (src6 && dst6);
    if !src.is_empty() && !dst.is_empty() && !common_family {
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
    Rule {
        policy,
        iif: r.iif.iter().map(|n| n.get_ref().clone()).collect(),
        proto,
        src,
        dst,
        sport,
        dport,
    }
}

/// The interfaces of `raw` are LAN interfaces.
fn lan_only(c: &mut Checker, raw: &[Spanned<String>], lan: &BTreeSet<&str>, key: &str) {
    for n in raw {
        if !lan.contains(n.get_ref().as_str()) {
            c.err(
                n.span(),
                key,
                format!(
                    "{:?} is not in lan.interfaces (only LAN traffic is steered)",
                    n.get_ref()
                ),
            );
        }
    }
}

/// A protocol name or number.
fn proto(c: &mut Checker, p: &Spanned<String>, key: &str) -> Option<u8> {
    let n = proto_number(p.get_ref());
    if n.is_none() {
        c.err(
            p.span(),
            key,
            format!(
                "{:?} is not a protocol: tcp, udp, icmp, icmpv6, gre, esp, sctp or a number 0-255",
                p.get_ref()
            ),
        );
    }
    n
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
    c: &mut Checker,
    list: &[Spanned<String>],
    sets: &BTreeMap<&str, Vec<Prefix>>,
    key: &str,
) -> Vec<Prefix> {
    let mut out: Vec<Prefix> = Vec::with_capacity(list.len());
    let mut seen =
        HashSet::with_capacity_and_hasher(list.len(), BuildHasherDefault::<Fast>::default());
    // A set listed again adds nothing: it is not expanded twice.
    let mut expanded = BTreeSet::new();
    for item in list {
        let text = item.get_ref();
        let found: &[Prefix] = match text.strip_prefix('@') {
            Some(name) => match sets.get(name) {
                Some(_) if !expanded.insert(name) => continue,
                Some(set) => set,
                None => {
                    c.err(item.span(), key, format!("no set named {name:?} in [sets]"));
                    continue;
                }
            },
            None => match text.parse::<Prefix>() {
                Ok(p) => {
                    if seen.insert(p) {
                        out.push(p);
                    }
                    continue;
                }
                Err(msg) => {
                    c.err(item.span(), key, msg);
                    continue;
                }
            },
        };
        for &p in found {
            if seen.insert(p) {
                out.push(p);
            }
        }
    }
    out
}

/// A hasher for de-duplicating prefixes: multiply and rotate (FxHash's mix and finish). The
/// file is the administrator's, so there is no flooding to resist; SipHash took a tenth of
/// checking a file of 30,000 prefixes.
#[derive(Default)]
struct Fast(u64);

impl Hasher for Fast {
    fn finish(&self) -> u64 {
        // The product's high bits are its well-mixed ones; the table indexes by the low ones.
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

fn ports(c: &mut Checker, list: &[Spanned<RawPort>], key: &str) -> Vec<(u16, u16)> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::{Duration, Instant};

    use super::super::tests::MINIMAL;
    use crate::config::parse;

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
            crate::config::LastResort::Unreachable
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

    /// Every list is de-duplicated and every problem located in O(n log n): 50k entries in a set
    /// took seconds when each was compared with every earlier one, and 10k problems took
    /// minutes when each one's line was counted from the start of the file.
    #[test]
    fn long_lists_are_checked_quickly() {
        let (n, m) = (50_000u32, 10_000u32);
        let list = |len: u32, f: &dyn Fn(u32) -> String| -> String {
            (0..len).map(|i| format!("  \"{}\",\n", f(i))).collect()
        };
        let v4 = list(n, &|i| {
            format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
        });
        let v6 = list(m, &|i| format!("2001:db8::{i:x}"));
        let bad = list(m, &|i| format!("10.0.{}.{}/8", (i >> 8) & 255, i & 255 | 1));
        let text = format!(
            "{MINIMAL}\n[sets]\nv4 = [\n{v4}]\nv6 = [\n{v6}]\nbad = [\n{bad}]\n\n\
             [[rule]]\npolicy = \"default\"\nsrc = [\"@v4\", \"@v4\"]\ndst = [\"@v6\"]\n"
        );
        let start = Instant::now();
        let p = parse(&text).unwrap_err();
        let took = start.elapsed();
        // Every bad entry, then the rule's problem (no family in common); its length is none.
        assert_eq!(p.len(), m as usize + 1, "{:?}", &p[p.len() - 2..]);
        let first_bad = (24 + n + m) as usize;
        assert_eq!(p[0].line, first_bad);
        assert_eq!(p[m as usize - 1].line, first_bad + m as usize - 1);
        assert!(took < Duration::from_secs(5), "took {took:?}");
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
}
