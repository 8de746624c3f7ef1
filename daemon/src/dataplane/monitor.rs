//! Link monitor: carrier and admin state of interfaces, from rtnetlink multicast events.
//!
//! Carrier loss arrives as a link event within about a millisecond (LowerUp cleared); no route
//! event comes with it, and the route stays (flagged linkdown), so probes alone would need the
//! whole detection window to notice.

use std::io;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::mpsc;

/// An interface is usable for traffic when it is administratively up and has carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    pub name: String,
    pub up: bool,
}

fn event(m: &LinkMessage, deleted: bool) -> Option<LinkEvent> {
    let name = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    let up = !deleted && m.header.flags.contains(LinkFlags::Up | LinkFlags::LowerUp);
    Some(LinkEvent { name, up })
}

/// The current state of every interface.
pub async fn snapshot(h: &Handle) -> Result<Vec<LinkEvent>, rtnetlink::Error> {
    let links: Vec<LinkMessage> = h.link().get().execute().try_collect().await?;
    Ok(links.iter().filter_map(|m| event(m, false)).collect())
}

/// Subscribe to link events and forward them until the receiver goes away.
pub fn spawn(tx: mpsc::Sender<LinkEvent>) -> io::Result<()> {
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        // The handle must live as long as we read, or the connection shuts down.
        let _handle = _handle;
        while let Some((msg, _)) = messages.next().await {
            let ev = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => event(&m, false),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => event(&m, true),
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
