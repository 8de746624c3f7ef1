//! Per-link routing tables and the `ip rule` entries that send each mark to its table.
//!
//! Converged by diffing against a fresh dump: missing objects are added before stale ones are
//! deleted, so there is never a moment without a route.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::config::MAX_LINKS;
use crate::engine::DesiredState;

/// The kernel's main routing table (`ip-rule(8)`: `lookup main`).
const RT_TABLE_MAIN: u32 = 254;

/// An `ip rule` as uplinkd cares about it; anything else about a rule makes it "not ours".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleSpec {
    pub priority: u32,
    /// `fwmark value/mask`, or none.
    pub fwmark: Option<(u32, u32)>,
    pub table: u32,
    pub suppress_prefixlen: Option<u32>,
}

/// A default route in one of our tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub table: u32,
    pub oif: u32,
    pub gateway: Option<Ipv4Addr>,
}

/// The rules for a desired state, in priority order.
pub fn desired_rules(d: &DesiredState) -> Vec<RuleSpec> {
    // `lookup main suppress_prefixlength 0` first: anything the main table routes more
    // specifically than a default route (LAN subnets, connected networks) stays there, so
    // replies to the LAN are not sent back out the WAN their restored mark points at.
    let mut rules = vec![RuleSpec {
        priority: d.rule_priority,
        fwmark: None,
        table: RT_TABLE_MAIN,
        suppress_prefixlen: Some(0),
    }];
    for (i, l) in d.links.iter().enumerate() {
        rules.push(RuleSpec {
            priority: d.rule_priority + 1 + i as u32,
            fwmark: Some((l.mark, d.mark_mask)),
            table: l.table,
            suppress_prefixlen: None,
        });
    }
    rules
}

fn owns_priority(d: &DesiredState, p: u32) -> bool {
    (d.rule_priority..=d.rule_priority + MAX_LINKS).contains(&p)
}

fn owns_table(table_base: u32, t: u32) -> bool {
    (table_base..table_base + MAX_LINKS).contains(&t)
}

/// Read a rule from a dump. A dump reports `SuppressPrefixLen = u32::MAX` on every rule: that
/// means "not set".
pub fn rule_spec(m: &RuleMessage) -> RuleSpec {
    let mut s = RuleSpec {
        priority: 0,
        fwmark: None,
        table: u32::from(m.header.table),
        suppress_prefixlen: None,
    };
    let mut mark = None;
    let mut mask = u32::MAX;
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => s.priority = *p,
            RuleAttribute::FwMark(v) => mark = Some(*v),
            RuleAttribute::FwMask(v) => mask = *v,
            RuleAttribute::Table(t) => s.table = *t,
            RuleAttribute::SuppressPrefixLen(v) if *v != u32::MAX => {
                s.suppress_prefixlen = Some(*v)
            }
            _ => {}
        }
    }
    s.fwmark = mark.map(|m| (m, mask));
    s
}

/// Converge our `ip rule` band to `desired_rules(d)`. Returns what was changed.
pub async fn converge_rules(h: &Handle, d: &DesiredState) -> Result<usize, rtnetlink::Error> {
    let want = desired_rules(d);
    let have: Vec<RuleMessage> = h.rule().get(IpVersion::V4).execute().try_collect().await?;
    let ours: Vec<(RuleSpec, &RuleMessage)> = have
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet)
        .map(|m| (rule_spec(m), m))
        .filter(|(s, _)| owns_priority(d, s.priority))
        .collect();
    let mut changes = 0;
    for w in &want {
        if !ours.iter().any(|(s, _)| s == w) {
            add_rule(h, w).await?;
            changes += 1;
        }
    }
    for (s, m) in &ours {
        // A rule is stale when it is not wanted, or a duplicate of one already counted.
        let first = ours.iter().position(|(o, _)| o == s);
        let dup = first.is_some_and(|f| !std::ptr::eq(ours[f].1, *m));
        if !want.contains(s) || dup {
            h.rule().del((*m).clone()).execute().await?;
            changes += 1;
        }
    }
    Ok(changes)
}

async fn add_rule(h: &Handle, s: &RuleSpec) -> Result<(), rtnetlink::Error> {
    // The action must be set explicitly: the default "unspecified" action makes every lookup
    // that hits the rule fail with EINVAL, a silent blackhole.
    let mut req = h
        .rule()
        .add()
        .v4()
        .priority(s.priority)
        .table_id(s.table)
        .action(RuleAction::ToTable);
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
    req.execute().await
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
    if m.header.destination_prefix_length != 0 || m.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(m.header.table);
    let mut oif = None;
    let mut gateway = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            _ => {}
        }
    }
    Some(RouteSpec {
        table,
        oif: oif?,
        gateway,
    })
}

/// All IPv4 routes (a dump returns every table: callers filter).
async fn dump_routes(h: &Handle) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
    let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
    h.route().get(req).execute().try_collect().await
}

/// The gateway of a default route via `oif` in the main table (as DHCP or the operator set it).
pub fn learned_gateway(main: &[RouteMessage], oif: u32) -> Option<Ipv4Addr> {
    main.iter()
        .filter_map(route_spec)
        .find(|r| r.table == RT_TABLE_MAIN && r.oif == oif && r.gateway.is_some())
        .and_then(|r| r.gateway)
}

/// Converge the default route of every link's table. A link whose interface does not exist is
/// skipped (its name is returned) and any stale route in its table removed; the rest proceed.
pub async fn converge_routes(
    h: &Handle,
    d: &DesiredState,
    table_base: u32,
) -> Result<Vec<String>, rtnetlink::Error> {
    let routes = dump_routes(h).await?;
    let mut want = Vec::new();
    let mut missing = Vec::new();
    for l in &d.links {
        match ifindex(h, &l.interface).await? {
            Some(oif) => want.push(RouteSpec {
                table: l.table,
                oif,
                gateway: l.gateway.or_else(|| learned_gateway(&routes, oif)),
            }),
            None => missing.push(l.interface.clone()),
        }
    }
    let ours: Vec<&RouteMessage> = routes
        .iter()
        .filter(|m| owns_table(table_base, route_table(m)))
        .collect();
    for w in &want {
        if !ours.iter().any(|m| route_spec(m) == Some(*w)) {
            add_route(h, w).await?;
        }
    }
    for m in ours {
        if !route_spec(m).is_some_and(|s| want.contains(&s)) {
            h.route().del(m.clone()).execute().await?;
        }
    }
    Ok(missing)
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
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(r.table)
        .output_interface(r.oif);
    b = match r.gateway {
        Some(g) => b.gateway(g),
        // No gateway (point-to-point links such as PPPoE): the route is on-link.
        None => b.scope(RouteScope::Link),
    };
    // Replace, not add: a route left with another gateway (renumbered WAN) is swapped in one step.
    h.route().add(b.build()).replace().execute().await
}

/// Remove every rule in our band and every route in our tables. Keeps going on errors and
/// returns the first one.
pub async fn remove_all(
    h: &Handle,
    d: &DesiredState,
    table_base: u32,
) -> Result<(), rtnetlink::Error> {
    let mut first_err = None;
    match h
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect::<Vec<_>>()
        .await
    {
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
    use super::*;
    use crate::engine::LinkPlan;

    #[test]
    fn rules_put_main_without_defaults_before_the_marks() {
        let link = |i: u32| LinkPlan {
            name: format!("l{i}"),
            interface: format!("wan{i}"),
            gateway: None,
            mark: i << 8,
            table: 99 + i,
            usable: true,
        };
        let d = DesiredState {
            mark_mask: 0xff00,
            tickle_mark: 0xff00,
            rule_priority: 1000,
            lan_interfaces: vec![],
            links: vec![link(1), link(2)],
            steer_to: Some(0),
        };
        let text: Vec<String> = desired_rules(&d)
            .iter()
            .map(|r| match (r.fwmark, r.suppress_prefixlen) {
                (Some((v, m)), _) => {
                    format!("{}: fwmark {v:#x}/{m:#x} lookup {}", r.priority, r.table)
                }
                (None, Some(s)) => format!(
                    "{}: lookup {} suppress_prefixlength {s}",
                    r.priority, r.table
                ),
                (None, None) => format!("{}: lookup {}", r.priority, r.table),
            })
            .collect();
        assert_eq!(
            text,
            vec![
                "1000: lookup 254 suppress_prefixlength 0",
                "1001: fwmark 0x100/0xff00 lookup 100",
                "1002: fwmark 0x200/0xff00 lookup 101",
            ]
        );
    }
}
