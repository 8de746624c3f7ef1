//! Per-link routing tables: each link's table holds its default route.
//!
//! Converged by diffing against a fresh dump: missing routes are added (replacing one with
//! another gateway in one step) before stale ones are deleted, so there is never a moment
//! without a route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::config::fence::owned_tables;
use crate::engine::DesiredState;

/// The kernel's main routing table (`ip-rule(8)`: `lookup main`).
pub const RT_TABLE_MAIN: u32 = 254;

/// A default route in one of our tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub v6: bool,
    pub table: u32,
    pub oif: u32,
    pub gateway: Option<IpAddr>,
}

fn owns_table(table_base: u32, t: u32) -> bool {
    owned_tables(table_base).contains(&t)
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

/// What converging the routes did.
#[derive(Debug, Default)]
pub struct Converged {
    /// Interfaces of links that do not exist (yet).
    pub missing: Vec<String>,
    /// Routes added or removed.
    pub changes: usize,
    /// Links whose route the kernel refused (e.g. the interface is down or has no address to
    /// reach the gateway from), with the error. The other links proceed.
    pub refused: Vec<(String, String)>,
}

/// Converge the default routes of every link's table: IPv4 via the configured or learned
/// gateway (on-link without one), IPv6 via the configured IPv6 gateway, else like the main
/// table's IPv6 default route via the link, when there is one. A link whose interface does not exist is skipped, and any stale route in
/// its table removed; a route the kernel refuses is reported for its link. Neither stops the
/// other links.
pub async fn converge_routes(
    h: &Handle,
    d: &DesiredState,
    table_base: u32,
    ifindexes: &[Option<u32>],
) -> Result<Converged, rtnetlink::Error> {
    let routes = dump_routes(h).await?;
    let mut want = Vec::new();
    let mut out = Converged::default();
    for (l, index) in d.links.iter().zip(ifindexes) {
        let Some(oif) = *index else {
            out.missing.push(l.interface.clone());
            continue;
        };
        let gateway = l
            .gateway
            .or_else(|| learned_gateway(&routes, oif))
            .map(IpAddr::V4);
        want.push((
            l,
            RouteSpec {
                v6: false,
                table: l.table,
                oif,
                gateway,
            },
        ));
        let r6 = match l.gateway6 {
            Some(g) => Some(RouteSpec {
                v6: true,
                table: l.table,
                oif,
                gateway: Some(IpAddr::V6(g)),
            }),
            None => main_default(&routes, oif, true),
        };
        if let Some(r6) = r6 {
            want.push((
                l,
                RouteSpec {
                    table: l.table,
                    ..r6
                },
            ));
        }
    }
    let ours: Vec<&RouteMessage> = routes
        .iter()
        .filter(|m| owns_table(table_base, route_table(m)))
        .collect();
    for (l, w) in &want {
        if ours.iter().any(|m| route_spec(m) == Some(*w)) {
            continue;
        }
        match add_route(h, w).await {
            Ok(()) => out.changes += 1,
            Err(e) => out.refused.push((
                l.name.clone(),
                format!(
                    "cannot install its {} default route in table {}: {e}",
                    if w.v6 { "IPv6" } else { "IPv4" },
                    w.table
                ),
            )),
        }
    }
    for m in ours {
        if route_spec(m).is_some_and(|s| want.iter().any(|(_, w)| *w == s)) {
            continue;
        }
        match h.route().del(m.clone()).execute().await {
            Ok(()) => out.changes += 1,
            // Gone meanwhile: `replace` swapped it for the wanted one, or the kernel dropped it
            // with its interface.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The table a route is in (a table id over 255 comes as an attribute).
pub fn route_table(m: &RouteMessage) -> u32 {
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

/// Remove every route in our tables. Keeps going on errors and returns the first one.
pub async fn remove_all(h: &Handle, table_base: u32) -> Result<(), rtnetlink::Error> {
    let mut first_err = None;
    for m in dump_routes(h)
        .await?
        .into_iter()
        .filter(|m| owns_table(table_base, route_table(m)))
    {
        if let Err(e) = h.route().del(m).execute().await {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}
