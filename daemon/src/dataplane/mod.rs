//! All kernel side effects: the nft table, routes and rules, conntrack purges, the link monitor.
//! Everything here converges the kernel to a complete [`DesiredState`]; applying the same state
//! twice changes nothing, and applying after a crash or someone else's edit repairs.

pub mod conntrack;
pub mod monitor;
pub mod nft;
mod nft_ext;
pub mod reset;
pub mod routes;
pub mod sockets;

use std::time::{Duration, Instant};

use crate::engine::DesiredState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to replace nft table inet uplinkd")]
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
}

/// What an apply did and how long it took.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub nft_replaced: bool,
    pub nft: Duration,
    pub routes: Duration,
    /// Interfaces of configured links that do not exist; their routes wait for them.
    pub missing_interfaces: Vec<String>,
    /// Rules and routes added or removed to converge.
    pub route_changes: usize,
}

pub struct Dataplane {
    handle: rtnetlink::Handle,
    table_base: u32,
    /// Ruleset last written to the kernel; a new one is written only when it differs, or when
    /// our table has disappeared.
    applied: Option<nft::Ruleset>,
    /// Stale-set keys of recent purges, until they expire: re-added after a table replacement.
    stale: Vec<(Instant, Vec<nft::StaleKey4>, Vec<nft::StaleKey6>)>,
}

impl Dataplane {
    /// Open the rtnetlink connection (must be called inside a tokio runtime).
    pub fn new(table_base: u32) -> Result<Self, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Netlink)?;
        tokio::spawn(conn);
        Ok(Dataplane {
            handle,
            table_base,
            applied: None,
            stale: Vec::new(),
        })
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Converge the kernel to `d`. `verify` re-checks that our table still exists even when the
    /// ruleset did not change (periodic reconcile).
    pub async fn apply(&mut self, d: &DesiredState, verify: bool) -> Result<ApplyReport, Error> {
        let mut report = ApplyReport::default();
        let ifindexes = routes::ifindexes(&self.handle, d)
            .await
            .map_err(Error::Route)?;
        let addrs = routes::link_addrs(&self.handle, &ifindexes)
            .await
            .map_err(Error::Route)?;
        let t = Instant::now();
        // Routes are converged even when the table cannot be written.
        let nft = self.write_nft(d, &addrs, verify).await;
        report.nft_replaced = *nft.as_ref().unwrap_or(&false);
        report.nft = t.elapsed();
        let t = Instant::now();
        let rules = routes::converge_rules(&self.handle, d, &addrs)
            .await
            .map_err(Error::Route)?;
        let (missing, changes) =
            routes::converge_routes(&self.handle, d, self.table_base, &ifindexes)
                .await
                .map_err(Error::Route)?;
        report.missing_interfaces = missing;
        report.route_changes = rules + changes;
        report.routes = t.elapsed();
        nft?;
        Ok(report)
    }

    /// Write our table if it differs from the one written last or (with `verify`) has gone
    /// missing; whether it was written.
    async fn write_nft(
        &mut self,
        d: &DesiredState,
        addrs: &[Vec<std::net::IpAddr>],
        verify: bool,
    ) -> Result<bool, Error> {
        let rules = nft::render(d, addrs);
        let missing = verify && !blocking(nft::exists).await.map_err(Error::Nft)?;
        if !missing && self.applied.as_ref() == Some(&rules) {
            return Ok(false);
        }
        let r = rules.clone();
        // When our table went missing it is written afresh.
        let previous = self.applied.clone().filter(|_| !missing);
        let now = Instant::now();
        self.stale.retain(|(t, _, _)| *t > now);
        let v4: Vec<_> = self
            .stale
            .iter()
            .flat_map(|(_, v4, _)| v4.iter().copied())
            .collect();
        let v6: Vec<_> = self
            .stale
            .iter()
            .flat_map(|(_, _, v6)| v6.iter().copied())
            .collect();
        blocking(move || {
            // Sets survive an update in place; a replacement empties them, so the stale flows
            // are put back.
            if nft::replace(&r, previous.as_ref())? {
                nft::add_stale(&v4, &v6)?;
            }
            Ok(())
        })
        .await
        .map_err(Error::Nft)?;
        self.applied = Some(rules);
        Ok(true)
    }

    /// Remember the keys a purge put in the stale sets, so they survive a later replacement of
    /// our table for as long as they matter.
    pub fn remember_stale(&mut self, v4: Vec<nft::StaleKey4>, v6: Vec<nft::StaleKey6>) {
        let until = Instant::now() + Duration::from_millis(nft::STALE_TIMEOUT_MS);
        self.stale.retain(|(t, _, _)| *t > Instant::now());
        self.stale.push((until, v4, v6));
    }

    /// Remove everything uplinkd created. Keeps going after an error and reports the first.
    pub async fn remove_all(&mut self, d: &DesiredState) -> Result<(), Error> {
        self.applied = None;
        let nft = blocking(nft::delete).await.map_err(Error::Nft);
        let routes = routes::remove_all(&self.handle, d, self.table_base)
            .await
            .map_err(Error::Route);
        nft.and(routes)
    }
}

/// Run blocking netlink work on tokio's blocking pool (same process, same network namespace).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}
