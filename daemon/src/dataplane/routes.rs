//! Per-link routing tables and the `ip rule` entries that send each mark to its table.
//!
//! Converged by diffing against a fresh dump: missing objects are added before stale ones are
//! deleted, so there is never a moment without a route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder, RuleAddRequest};

use crate::config::fence::{
    owned_rule_priorities, owned_tables, PRIO_DEFAULT, PRIO_FROM, PRIO_MARK, PRIO_UNREACHABLE,
};
use crate::engine::DesiredState;

/// The kernel's main routing table (`ip-rule(8)`: `lookup main`).
const RT_TABLE_MAIN: u32 = 254;

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

/// A default route in one of our tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub v6: bool,
    pub table: u32,
    pub oif: u32,
    pub gateway: Option<IpAddr>,
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

fn owns_table(table_base: u32, t: u32) -> bool {
    owned_tables(table_base).contains(&t)
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

/// The addresses of each link's interface (`ifindexes` from [`ifindexes`]), link-local ones
/// left out: they are never the source of routed traffic.
pub async fn link_addrs(
    h: &Handle,
    ifindexes: &[Option<u32>],
) -> Result<Vec<Vec<IpAddr>>, rtnetlink::Error> {
    use rtnetlink::packet_route::address::AddressMessage;
    let all: Vec<AddressMessage> = h.address().get().execute().try_collect().await?;
    Ok(ifindexes
        .iter()
        .map(|index| {
            let mut out: Vec<IpAddr> = Vec::new();
            for a in all.iter().filter(|a| Some(a.header.index) == *index) {
                match super::monitor::address(a) {
                    Some(IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80 => {}
                    Some(ip) if !out.contains(&ip) => out.push(ip),
                    _ => {}
                }
            }
            out
        })
        .collect())
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

/// The interface index of every link (`None`: the interface does not exist yet), looked up once
/// per apply for both rules and routes.
pub async fn ifindexes(h: &Handle, d: &DesiredState) -> Result<Vec<Option<u32>>, rtnetlink::Error> {
    let mut out = Vec::with_capacity(d.links.len());
    for l in &d.links {
        out.push(ifindex(h, &l.interface).await?);
    }
    Ok(out)
}

/// Interface index by name; `None` when the interface does not exist (yet).
pub async fn ifindex(h: &Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    match h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

fn route_spec(m: &RouteMessage) -> Option<RouteSpec> {
    let v6 = match m.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    if m.header.destination_prefix_length != 0 {
        return None;
    }
    let mut oif = None;
    let mut gateway = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
            _ => {}
        }
    }
    Some(RouteSpec {
        v6,
        table: route_table(m),
        oif: oif?,
        gateway,
    })
}

/// All routes of both families (a dump returns every table: callers filter).
async fn dump_routes(h: &Handle) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
    let mut routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await?;
    let v6: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await?;
    routes.extend(v6);
    Ok(routes)
}

/// The default route via `oif` in the main table (as DHCP, router advertisements or the operator
/// set it), of one family.
fn main_default(routes: &[RouteMessage], oif: u32, v6: bool) -> Option<RouteSpec> {
    routes
        .iter()
        .filter_map(route_spec)
        .find(|r| r.table == RT_TABLE_MAIN && r.oif == oif && r.v6 == v6)
}

/// The gateway of an IPv4 default route via `oif` in the main table.
pub fn learned_gateway(routes: &[RouteMessage], oif: u32) -> Option<Ipv4Addr> {
    match main_default(routes, oif, false)?.gateway? {
        IpAddr::V4(g) => Some(g),
        IpAddr::V6(_) => None,
    }
}

/// Converge the default routes of every link's table: IPv4 via the configured or learned
/// gateway (on-link without one), IPv6 like the main table's IPv6 default route via the link,
/// when there is one. A link whose interface does not exist is skipped (its name is returned
/// with the number of routes changed) and any stale route in its table removed; the rest
/// proceed.
pub async fn converge_routes(
    h: &Handle,
    d: &DesiredState,
    table_base: u32,
    ifindexes: &[Option<u32>],
) -> Result<(Vec<String>, usize), rtnetlink::Error> {
    let routes = dump_routes(h).await?;
    let mut want = Vec::new();
    let mut missing = Vec::new();
    for (l, index) in d.links.iter().zip(ifindexes) {
        let Some(oif) = *index else {
            missing.push(l.interface.clone());
            continue;
        };
        let gateway = l
            .gateway
            .or_else(|| learned_gateway(&routes, oif))
            .map(IpAddr::V4);
        want.push(RouteSpec {
            v6: false,
            table: l.table,
            oif,
            gateway,
        });
        if let Some(r6) = main_default(&routes, oif, true) {
            want.push(RouteSpec {
                table: l.table,
                ..r6
            });
        }
    }
    let ours: Vec<&RouteMessage> = routes
        .iter()
        .filter(|m| owns_table(table_base, route_table(m)))
        .collect();
    let mut changes = 0;
    for w in &want {
        if !ours.iter().any(|m| route_spec(m) == Some(*w)) {
            add_route(h, w).await?;
            changes += 1;
        }
    }
    for m in ours {
        if !route_spec(m).is_some_and(|s| want.contains(&s)) {
            h.route().del(m.clone()).execute().await?;
            changes += 1;
        }
    }
    Ok((missing, changes))
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

async fn add_route(h: &Handle, r: &RouteSpec) -> Result<(), rtnetlink::Error> {
    let msg = match (r.v6, r.gateway) {
        (false, Some(IpAddr::V4(g))) => route_builder::<Ipv4Addr>(r).gateway(g).build(),
        (true, Some(IpAddr::V6(g))) => route_builder::<Ipv6Addr>(r).gateway(g).build(),
        // No gateway (point-to-point links such as PPPoE): the route is on-link.
        (false, _) => route_builder::<Ipv4Addr>(r).scope(RouteScope::Link).build(),
        (true, _) => route_builder::<Ipv6Addr>(r).build(),
    };
    // Replace, not add: a route left with another gateway (renumbered WAN) is swapped in one step.
    h.route().add(msg).replace().execute().await
}

fn route_builder<T>(r: &RouteSpec) -> RouteMessageBuilder<T>
where
    RouteMessageBuilder<T>: Default,
{
    RouteMessageBuilder::<T>::default()
        .table_id(r.table)
        .output_interface(r.oif)
}

/// Remove every rule in our band and every route in our tables. Keeps going on errors and
/// returns the first one.
pub async fn remove_all(
    h: &Handle,
    d: &DesiredState,
    table_base: u32,
) -> Result<(), rtnetlink::Error> {
    let mut first_err = None;
    match dump_rules(h).await {
        Ok(rules) => {
            for m in rules
                .into_iter()
                .filter(|m| owns_priority(d, rule_spec(m).priority))
            {
                if let Err(e) = h.rule().del(m).execute().await {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(e) => {
            first_err.get_or_insert(e);
        }
    }
    match dump_routes(h).await {
        Ok(routes) => {
            for m in routes
                .into_iter()
                .filter(|m| owns_table(table_base, route_table(m)))
            {
                if let Err(e) = h.route().del(m).execute().await {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(e) => {
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
                "ip rule add pref 1002 fwmark 0x100/0xff00 lookup 100",
                "ip rule add pref 1002 fwmark 0x200/0xff00 lookup 101",
                "ip rule add pref 1003 fwmark 0xfe00/0xff00 unreachable",
                "ip rule add pref 1004 iif lo lookup 100",
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
            RuleAttribute::Priority(1001),
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
