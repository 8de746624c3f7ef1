//! All kernel side effects: the nft table, routes and rules, conntrack purges, the link monitor.
//! Everything here converges the kernel to a complete [`DesiredState`]; applying the same state
//! twice changes nothing, and applying after a crash or someone else's edit repairs.

pub mod conntrack;
pub mod monitor;
pub mod nft;
pub mod routes;

use std::time::{Duration, Instant};

use crate::engine::DesiredState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to replace nft table inet uplinkd")]
    Nft(#[source] std::io::Error),
    #[error("failed to converge routing rules and tables")]
    Route(#[source] rtnetlink::Error),
    #[error("failed to flush conntrack entries with mark {mark:#x}")]
    Conntrack {
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
}

pub struct Dataplane {
    handle: rtnetlink::Handle,
    table_base: u32,
    /// Ruleset last written to the kernel; a new one is written only when it differs, or when
    /// our table has disappeared.
    applied: Option<nft::Ruleset>,
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
        })
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Converge the kernel to `d`. `verify` re-checks that our table still exists even when the
    /// ruleset did not change (periodic reconcile).
    pub async fn apply(&mut self, d: &DesiredState, verify: bool) -> Result<ApplyReport, Error> {
        let mut report = ApplyReport::default();
        let rules = nft::render(d);
        let t = Instant::now();
        let stale = self.applied.as_ref() != Some(&rules)
            || (verify && !blocking(nft::exists).await.map_err(Error::Nft)?);
        if stale {
            let r = rules.clone();
            blocking(move || nft::replace(&r))
                .await
                .map_err(Error::Nft)?;
            self.applied = Some(rules);
            report.nft_replaced = true;
        }
        report.nft = t.elapsed();
        let t = Instant::now();
        routes::converge_rules(&self.handle, d)
            .await
            .map_err(Error::Route)?;
        report.missing_interfaces = routes::converge_routes(&self.handle, d, self.table_base)
            .await
            .map_err(Error::Route)?;
        report.routes = t.elapsed();
        Ok(report)
    }

    /// Delete every conntrack entry of the link with `mark`, off the event loop.
    pub async fn purge(&self, mark: u32, mask: u32) -> Result<Duration, Error> {
        let t = Instant::now();
        blocking(move || conntrack::flush_mark(mark, mask))
            .await
            .map_err(|source| Error::Conntrack { mark, source })?;
        Ok(t.elapsed())
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
