//! All kernel side effects: the nft table, routes and rules, conntrack purges, the link monitor.
//! Everything here converges the kernel to a complete [`DesiredState`]; applying the same state
//! twice changes nothing, and applying after a crash or someone else's edit repairs.
//!
//! The supervisor sees the kernel only through the [`Dataplane`] trait: [`Kernel`] is the real
//! one, [`fake::Fake`] renders what it was asked for as text, for tests without root.

pub mod conntrack;
pub mod fake;
mod kernel;
pub mod monitor;
mod netlink;
pub mod nft;
mod nft_ext;
pub mod reset;
pub mod routes;
pub mod rules;
pub mod sockets;
mod sysctl;

use std::future::Future;
use std::net::Ipv4Addr;

use crate::engine::{Applied, DesiredState, PurgeOrder, Purged};
pub use kernel::Kernel;
pub use monitor::LinkEvent;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to change nft table inet uplinkd")]
    Nft(#[source] std::io::Error),
    #[error("failed to converge routing rules and tables")]
    Route(#[source] rtnetlink::Error),
    #[error("failed to purge the flows with mark {mark:#x}")]
    Purge {
        mark: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open a netlink socket")]
    Netlink(#[source] std::io::Error),
    #[error("cannot restore net.ipv4.conf.*.src_valid_mark")]
    Sysctl(#[source] std::io::Error),
    #[error("cannot read the interfaces and addresses")]
    Read(#[source] rtnetlink::Error),
    #[error("{0}")]
    Fake(String),
}

/// What the supervisor may do to the kernel. The methods run on the daemon's single-threaded
/// event loop, so their futures need not be `Send`; only a purge, which runs beside the loop,
/// must be.
#[allow(async_fn_in_trait)]
pub trait Dataplane {
    /// Converge the kernel to `d`. `verify` re-reads what the kernel has even when `d` is the
    /// state applied last (someone else may have changed it).
    async fn apply(&mut self, d: &DesiredState, verify: bool) -> Result<Applied, Error>;

    /// Purge a link's flows and reset their clients. The future owns what it needs, so it can
    /// run in a task of its own; later tickle rounds may go on after it resolved.
    fn purge(
        &mut self,
        order: PurgeOrder,
    ) -> impl Future<Output = Result<Purged, Error>> + Send + 'static;

    /// Whether the nftables ruleset may have changed since the last apply, from what is cheap
    /// to read (its generation); a read that fails says yes.
    async fn ruleset_changed(&mut self) -> bool;

    /// Remove everything uplinkd created. Keeps going after an error and reports the first.
    async fn remove_all(&mut self, d: &DesiredState) -> Result<(), Error>;

    /// Every interface with its state now (carrier and admin state).
    async fn interfaces(&self) -> Result<Vec<LinkEvent>, Error>;

    /// Every IPv4 address now, with its interface (primary addresses first).
    async fn ipv4_addresses(&self) -> Result<Vec<(String, Ipv4Addr)>, Error>;
}

/// Run blocking netlink work on tokio's blocking pool (same process, same network namespace).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}
