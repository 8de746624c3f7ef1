//! Kernel monitor: carrier and admin state of interfaces, IPv4 addresses, and main-table route
//! changes, from rtnetlink multicast events.
//!
//! Carrier loss arrives as a link event within about a millisecond (LowerUp cleared); no route
//! event comes with it, and the route stays (flagged linkdown), so probes alone would need the
//! whole detection window to notice. Address and route events tell that a WAN was renumbered
//! (DHCP, PPPoE): the learned gateway and the masquerade address follow on re-apply. Route
//! and rule events also tell that someone edited uplinkd's tables or rules: re-apply repairs
//! them at once.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::mpsc;

/// The kernel's local routing table.
const RT_TABLE_LOCAL: u32 = 255;

/// An interface is usable for traffic when it is administratively up and has carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    pub name: String,
    /// Administratively up (`ip link set up`).
    pub admin_up: bool,
    /// Up with carrier: usable for traffic.
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Link(LinkEvent),
    /// Some interface gained or lost an IPv4 address: re-read them.
    Addresses,
    /// A route or routing rule changed: a new default gateway in the main table (DHCP), or
    /// someone edited uplinkd's rules or tables.
    Routing,
}

fn link_event(m: &LinkMessage, deleted: bool) -> Option<LinkEvent> {
    let name = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    let admin_up = !deleted && m.header.flags.contains(LinkFlags::Up);
    let up = admin_up && m.header.flags.contains(LinkFlags::LowerUp);
    Some(LinkEvent { name, admin_up, up })
}

/// The local table (255) changes with every address; it is not ours and says nothing new.
fn in_local_table(m: &RouteMessage) -> bool {
    super::routes::route_table(m) == RT_TABLE_LOCAL
}

/// The current state of every interface.
pub async fn snapshot(h: &Handle) -> Result<Vec<LinkEvent>, rtnetlink::Error> {
    let links: Vec<LinkMessage> = h.link().get().execute().try_collect().await?;
    Ok(links.iter().filter_map(|m| link_event(m, false)).collect())
}

/// Every IPv4 address of the router with its interface's name, in the kernel's order (an
/// interface's primary address first).
pub async fn ipv4_addresses(h: &Handle) -> Result<Vec<(String, Ipv4Addr)>, rtnetlink::Error> {
    Ok(local_addrs(h)
        .await?
        .into_iter()
        .filter_map(|(name, ip, _)| match ip {
            std::net::IpAddr::V4(a) => Some((name, a)),
            std::net::IpAddr::V6(_) => None,
        })
        .collect())
}

/// Every address of the router, IPv4 and IPv6, with the name of its interface and its prefix
/// length.
pub async fn local_addrs(
    h: &Handle,
) -> Result<Vec<(String, std::net::IpAddr, u8)>, rtnetlink::Error> {
    let links: Vec<LinkMessage> = h.link().get().execute().try_collect().await?;
    let names: BTreeMap<u32, String> = links
        .iter()
        .filter_map(|m| link_event(m, false).map(|e| (m.header.index, e.name)))
        .collect();
    let addrs: Vec<AddressMessage> = h.address().get().execute().try_collect().await?;
    Ok(addrs
        .iter()
        .filter_map(|a| {
            let ip = address(a)?;
            Some((names.get(&a.header.index)?.clone(), ip, a.header.prefix_len))
        })
        .collect())
}

/// The address an address message is about (its local address where it has one).
pub fn address(a: &AddressMessage) -> Option<std::net::IpAddr> {
    use rtnetlink::packet_route::address::AddressAttribute;
    a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

/// Subscribe to link, IPv4 address, route and rule events and forward them until the receiver
/// goes away.
pub fn spawn(tx: mpsc::Sender<KernelEvent>) -> io::Result<()> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Ipv6Rule,
    ];
    let (conn, handle, mut messages) = rtnetlink::new_multicast_connection(&groups)?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        // The handle must live as long as we read, or the connection shuts down.
        let _handle = handle;
        while let Some((msg, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            let ev = match m {
                RouteNetlinkMessage::NewLink(m) => link_event(&m, false).map(KernelEvent::Link),
                RouteNetlinkMessage::DelLink(m) => link_event(&m, true).map(KernelEvent::Link),
                RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => {
                    Some(KernelEvent::Addresses)
                }
                RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m)
                    if !in_local_table(&m) =>
                {
                    Some(KernelEvent::Routing)
                }
                RouteNetlinkMessage::NewRule(_) | RouteNetlinkMessage::DelRule(_) => {
                    Some(KernelEvent::Routing)
                }
                _ => None,
            };
            if let Some(ev) = ev {
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(())
}
