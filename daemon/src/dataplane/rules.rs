//! The `ip rule` band that sends each mark to its link's table (the priorities are in
//! `config::fence`, the band is listed in the README).
//!
//! Converged by diffing against a fresh dump: missing rules are added before stale ones are
//! deleted, so no lookup ever finds a gap.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, RuleAddRequest};

use super::routes::RT_TABLE_MAIN;
use crate::config::fence::{
    owned_rule_priorities, PRIO_DEFAULT, PRIO_FROM, PRIO_MARK, PRIO_UNREACHABLE,
};
use crate::engine::DesiredState;

/// An `ip rule` as uplinkd cares about it; anything else about a rule makes it "not ours".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleSpec {
    pub v6: bool,
    pub priority: u32,
    /// `fwmark value/mask`, or none.
    pub fwmark: Option<(u32, u32)>,
    /// `from ADDR` (a host address), or none.
    pub from: Option<IpAddr>,
    pub table: u32,
    pub suppress_prefixlen: Option<u32>,
    /// `unreachable` instead of `lookup TABLE` (table 0).
    pub unreachable: bool,
    /// `iif lo`: only the router's own traffic.
    pub iif_lo: bool,
}

impl std::fmt::Display for RuleSpec {
    /// As `ip rule add` would take it: `ip [-6] rule add pref P [from A] [iif lo] [fwmark V/M]
    /// lookup T [suppress_prefixlength N]` or `... unreachable`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let family = if self.v6 { "ip -6" } else { "ip" };
        write!(f, "{family} rule add pref {}", self.priority)?;
        if let Some(a) = self.from {
            write!(f, " from {a}")?;
        }
        if self.iif_lo {
            write!(f, " iif lo")?;
        }
        if let Some((v, m)) = self.fwmark {
            write!(f, " fwmark {v:#x}/{m:#x}")?;
        }
        if self.unreachable {
            return write!(f, " unreachable");
        }
        write!(f, " lookup {}", self.table)?;
        if let Some(n) = self.suppress_prefixlen {
            write!(f, " suppress_prefixlength {n}")?;
        }
        Ok(())
    }
}

/// The rules for a desired state, in priority order.
pub fn desired_rules(d: &DesiredState) -> Vec<RuleSpec> {
    let mut rules = Vec::new();
    for v6 in [false, true] {
        // `lookup main suppress_prefixlength 0` first: anything the main table routes more
        // specifically than a default route (LAN subnets, connected networks) stays there, so
        // replies to the LAN are not sent back out the WAN their restored mark points at.
        rules.push(RuleSpec {
            v6,
            priority: d.rule_priority,
            fwmark: None,
            from: None,
            table: RT_TABLE_MAIN,
            suppress_prefixlen: Some(0),
            unreachable: false,
            iif_lo: false,
        });
        for l in &d.links {
            rules.push(RuleSpec {
                v6,
                priority: d.rule_priority + PRIO_MARK,
                fwmark: Some((l.mark, d.mark_mask)),
                from: None,
                table: l.table,
                suppress_prefixlen: None,
                unreachable: false,
                iif_lo: false,
            });
        }
        rules.push(RuleSpec {
            v6,
            priority: d.rule_priority + PRIO_UNREACHABLE,
            fwmark: Some((d.unreachable_mark, d.mark_mask)),
            from: None,
            table: 0,
            suppress_prefixlen: None,
            unreachable: true,
            iif_lo: false,
        });
        if let Some(l) = d.router_link {
            rules.push(RuleSpec {
                v6,
                priority: d.rule_priority + PRIO_DEFAULT,
                fwmark: None,
                from: None,
                table: d.links[l].table,
                suppress_prefixlen: None,
                unreachable: false,
                iif_lo: true,
            });
        }
    }
    rules
}

fn owns_priority(d: &DesiredState, p: u32) -> bool {
    owned_rule_priorities(d.rule_priority).contains(&p)
}

/// Read a rule from a dump. A dump reports `SuppressPrefixLen = u32::MAX` on every rule: that
/// means "not set".
pub fn rule_spec(m: &RuleMessage) -> RuleSpec {
    let mut s = RuleSpec {
        v6: m.header.family == AddressFamily::Inet6,
        priority: 0,
        fwmark: None,
        from: None,
        table: u32::from(m.header.table),
        suppress_prefixlen: None,
        unreachable: m.header.action == RuleAction::Unreachable,
        iif_lo: false,
    };
    let mut mark = None;
    let mut mask = None;
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => s.priority = *p,
            RuleAttribute::FwMark(v) => mark = Some(*v),
            RuleAttribute::FwMask(v) => mask = Some(*v),
            RuleAttribute::Table(t) => s.table = *t,
            RuleAttribute::Source(ip) => s.from = Some(*ip),
            RuleAttribute::Iifname(n) => s.iif_lo = n == "lo",
            RuleAttribute::SuppressPrefixLen(v) if *v != u32::MAX => {
                s.suppress_prefixlen = Some(*v)
            }
            _ => {}
        }
    }
    // `fwmark 0/MASK` may come as the mask alone.
    if mark.is_some() || mask.is_some() {
        s.fwmark = Some((mark.unwrap_or(0), mask.unwrap_or(u32::MAX)));
    }
    if s.unreachable {
        // The kernel reports the table it defaults to (main), which an unreachable rule never
        // looks up.
        s.table = 0;
    }
    s
}

/// Rules that send unmarked traffic from the links' own addresses out their link's table: a
/// socket bound to a WAN's address (a VPN endpoint) must leave through that WAN, or its ISP drops
/// it as spoofed. Marked packets follow their mark (the nft output chain gives a new flow from a
/// link's address that link's mark). Not for the default policy's link when the router's own
/// traffic is steered: see PRIO_DEFAULT.
pub fn source_rules(d: &DesiredState, addrs: &[Vec<IpAddr>]) -> Vec<RuleSpec> {
    let mut rules = Vec::new();
    for (i, l) in d.links.iter().enumerate() {
        if d.router_link == Some(i) {
            continue;
        }
        for &ip in addrs.get(i).into_iter().flatten() {
            rules.push(RuleSpec {
                v6: ip.is_ipv6(),
                priority: d.rule_priority + PRIO_FROM,
                fwmark: Some((0, d.mark_mask)),
                from: Some(ip),
                table: l.table,
                suppress_prefixlen: None,
                unreachable: false,
                iif_lo: false,
            });
        }
    }
    rules
}

/// Converge our `ip rule` band to `desired_rules(d)` plus the source rules of the links'
/// current addresses (from [`link_addrs`]). Returns what was changed.
pub async fn converge_rules(
    h: &Handle,
    d: &DesiredState,
    addrs: &[Vec<IpAddr>],
) -> Result<usize, rtnetlink::Error> {
    let mut want = desired_rules(d);
    want.extend(source_rules(d, addrs));
    let have = dump_rules(h).await?;
    let ours: Vec<(RuleSpec, &RuleMessage)> = have
        .iter()
        .map(|m| (rule_spec(m), m))
        .filter(|(s, _)| owns_priority(d, s.priority))
        .collect();
    let have: Vec<RuleSpec> = ours.iter().map(|(s, _)| *s).collect();
    let (add, del) = rule_changes(&want, &have);
    for &i in &add {
        add_rule(h, &want[i]).await?;
    }
    for &i in &del {
        h.rule().del(ours[i].1.clone()).execute().await?;
    }
    Ok(add.len() + del.len())
}

/// What converges `have` (our rules in the kernel) to `want`: the indexes of wanted rules to
/// add, then of rules to delete: the unwanted ones and every duplicate after the first.
/// Added first, so no lookup ever finds a gap.
pub fn rule_changes(want: &[RuleSpec], have: &[RuleSpec]) -> (Vec<usize>, Vec<usize>) {
    let add = (0..want.len())
        .filter(|&i| !have.contains(&want[i]))
        .collect();
    let del = (0..have.len())
        .filter(|&i| !want.contains(&have[i]) || have[..i].contains(&have[i]))
        .collect();
    (add, del)
}

/// Our rules of both families (a dump of one family returns only that family).
async fn dump_rules(h: &Handle) -> Result<Vec<RuleMessage>, rtnetlink::Error> {
    let mut rules: Vec<RuleMessage> = h.rule().get(IpVersion::V4).execute().try_collect().await?;
    let v6: Vec<RuleMessage> = h.rule().get(IpVersion::V6).execute().try_collect().await?;
    rules.extend(v6);
    Ok(rules)
}

async fn add_rule(h: &Handle, s: &RuleSpec) -> Result<(), rtnetlink::Error> {
    if s.v6 {
        rule_request(h.rule().add().v6(), s).execute().await
    } else {
        rule_request(h.rule().add().v4(), s).execute().await
    }
}

fn rule_request<T>(req: RuleAddRequest<T>, s: &RuleSpec) -> RuleAddRequest<T> {
    // The action must be set explicitly: the default "unspecified" action makes every lookup
    // that hits the rule fail with EINVAL, a silent blackhole.
    let mut req = if s.unreachable {
        req.priority(s.priority).action(RuleAction::Unreachable)
    } else {
        req.priority(s.priority)
            .table_id(s.table)
            .action(RuleAction::ToTable)
    };
    if let Some((mark, mask)) = s.fwmark {
        req = req.fw_mark(mark);
        req.message_mut()
            .attributes
            .push(RuleAttribute::FwMask(mask));
    }
    if let Some(p) = s.suppress_prefixlen {
        req.message_mut()
            .attributes
            .push(RuleAttribute::SuppressPrefixLen(p));
    }
    if s.iif_lo {
        req.message_mut()
            .attributes
            .push(RuleAttribute::Iifname("lo".into()));
    }
    if let Some(ip) = s.from {
        let m = req.message_mut();
        m.header.src_len = if ip.is_ipv6() { 128 } else { 32 };
        m.attributes.push(RuleAttribute::Source(ip));
    }
    req
}

/// Remove every rule in our band. Keeps going on errors and returns the first one.
pub async fn remove_all(h: &Handle, d: &DesiredState) -> Result<(), rtnetlink::Error> {
    let mut first_err = None;
    for m in dump_rules(h)
        .await?
        .into_iter()
        .filter(|m| owns_priority(d, rule_spec(m).priority))
    {
        if let Err(e) = h.rule().del(m).execute().await {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rules_put_main_without_defaults_before_the_marks() {
        let text = format!(
            "{}\n[lan]\ninterfaces = [\"lan0\"]\n",
            crate::config::TEST_LINKS
        );
        let config = crate::config::parse(&text).unwrap();
        let d = crate::engine::Engine::new(config, std::time::Instant::now()).desired();
        let text: Vec<String> = desired_rules(&d)
            .iter()
            .filter(|r| !r.v6)
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            vec![
                "ip rule add pref 1000 lookup 254 suppress_prefixlength 0",
                "ip rule add pref 1001 fwmark 0xf00/0xff00 lookup 114",
                "ip rule add pref 1001 fwmark 0x3c00/0xff00 lookup 159",
                "ip rule add pref 1003 fwmark 0xfe00/0xff00 unreachable",
                "ip rule add pref 1004 iif lo lookup 114",
            ]
        );
        // The same for IPv6.
        let (v4, v6): (Vec<_>, Vec<_>) = desired_rules(&d).into_iter().partition(|r| !r.v6);
        assert_eq!(v4.len(), v6.len());
        assert!(v4
            .iter()
            .zip(&v6)
            .all(|(a, b)| RuleSpec { v6: true, ..*a } == *b));
    }

    #[test]
    fn rules_converge_by_adding_the_missing_then_deleting_the_stale_and_duplicates() {
        let text = format!(
            "{}\n[lan]\ninterfaces = [\"lan0\"]\n",
            crate::config::TEST_LINKS
        );
        let config = crate::config::parse(&text).unwrap();
        let d = crate::engine::Engine::new(config, std::time::Instant::now()).desired();
        let want = desired_rules(&d);
        // Converged: nothing to do.
        assert_eq!(rule_changes(&want, &want), (vec![], vec![]));
        // One deleted by someone, one stale (an old mark), one duplicated.
        let stale = RuleSpec {
            fwmark: Some((0x300, 0xff00)),
            ..want[1]
        };
        let have = vec![want[0], want[2], stale, want[2], want[3]];
        let (add, del) = rule_changes(&want, &have);
        let added: Vec<String> = add.iter().map(|&i| want[i].to_string()).collect();
        assert!(added.contains(&want[1].to_string()), "{added:?}");
        assert!(!added.contains(&want[0].to_string()));
        assert_eq!(del, vec![2, 3], "the stale rule and the second copy go");
    }

    #[test]
    fn dumped_rules_read_back_as_they_were_added() {
        // What the kernel reports for `from ADDR fwmark 0/0xff00` (the mark may be left out)
        // and for `iif lo lookup 100`.
        let mut m = RuleMessage::default();
        m.attributes = vec![
            RuleAttribute::Priority(1002),
            RuleAttribute::FwMask(0xff00),
            RuleAttribute::Table(101),
        ];
        assert_eq!(rule_spec(&m).fwmark, Some((0, 0xff00)));
        m.attributes = vec![
            RuleAttribute::Priority(1004),
            RuleAttribute::Iifname("lo".into()),
            RuleAttribute::Table(100),
        ];
        let s = rule_spec(&m);
        assert!(s.iif_lo && s.fwmark.is_none());
    }
}
