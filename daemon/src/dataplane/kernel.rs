//! The real dataplane: nftables over netlink, rules and routes over rtnetlink, purges over
//! ctnetlink, sock_diag and raw sockets.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{blocking, monitor, nft, reset, routes, rules, sysctl, Dataplane, Error, LinkEvent};
use crate::engine::{Applied, DesiredState, PurgeOrder, Purged};

/// Stale-set keys of recent purges with the time they expire.
type StaleMemory = Vec<(Instant, Vec<nft::StaleKey4>, Vec<nft::StaleKey6>)>;

pub struct Kernel {
    handle: rtnetlink::Handle,
    table_base: u32,
    /// Ruleset last written to the kernel; a new one is written only when it differs, or when
    /// our table has disappeared or was changed by someone else.
    applied: Option<nft::Ruleset>,
    /// The ruleset generation and our table's digest right after our last write.
    seen: Option<(u32, Option<u64>)>,
    /// Stale-set keys of recent purges, until they expire: re-added after a table replacement.
    /// Purges add to it from their own tasks.
    stale: Arc<Mutex<StaleMemory>>,
    src_valid_mark: sysctl::SrcValidMark,
    /// Links whose flows another table's NAT translated, as last read back.
    foreign_nat: Vec<(String, String)>,
}

impl Kernel {
    /// Open the rtnetlink connection (must be called inside a tokio runtime).
    pub fn new(table_base: u32) -> Result<Self, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Netlink)?;
        tokio::spawn(conn);
        Ok(Kernel {
            handle,
            table_base,
            applied: None,
            seen: None,
            stale: Arc::default(),
            src_valid_mark: sysctl::SrcValidMark::default(),
            foreign_nat: Vec::new(),
        })
    }

    /// Write our table if it differs from the one written last, or (with `verify`) if the
    /// kernel's no longer is what we wrote: missing, or edited by someone else (a flushed
    /// chain, an inserted rule, a changed policy). Returns whether it had to be restored (a
    /// first write, or a new ruleset applied in place, is not a repair).
    async fn write_nft(
        &mut self,
        d: &DesiredState,
        addrs: &[Vec<IpAddr>],
        verify: bool,
    ) -> Result<bool, Error> {
        let rules = nft::render(d, addrs);
        let (missing, edited) = if verify {
            self.check_table().await.map_err(Error::Nft)?
        } else {
            (false, false)
        };
        if !missing && !edited && self.applied.as_ref() == Some(&rules) {
            return Ok(false);
        }
        let r = rules.clone();
        let lists = list_names(&rules);
        // When our table went missing it is written afresh; an edited one is rewritten in place.
        let previous = self.applied.clone().filter(|_| !missing);
        let in_place = previous.is_some();
        let (v4, v6) = self.stale_keys();
        let (replaced, seen) = blocking(move || {
            let replaced = nft::replace(&r, previous.as_ref(), edited)?;
            // A replacement empties the sets, and an edit may have flushed them: the stale flows
            // are put back (adding one already there only renews it).
            if replaced || edited {
                nft::add_stale(&v4, &v6)?;
            }
            Ok((replaced, (nft::generation()?, nft::digest(&lists)?)))
        })
        .await
        .map_err(Error::Nft)?;
        self.applied = Some(rules);
        self.seen = Some(seen);
        Ok(missing || edited || (in_place && replaced))
    }

    /// Whether our table is missing, or differs from what we last wrote. Cheap when nothing in
    /// the ruleset changed since (one generation read); otherwise our table is read back.
    async fn check_table(&mut self) -> std::io::Result<(bool, bool)> {
        let Some((gen, digest)) = self.seen else {
            return Ok((false, false));
        };
        if blocking(nft::generation).await? == gen {
            return Ok((false, false));
        }
        let lists = self.applied.as_ref().map(list_names).unwrap_or_default();
        let (now_gen, now) =
            blocking(move || Ok((nft::generation()?, nft::digest(&lists)?))).await?;
        // Someone else changed some table: if not ours, it is the new normal.
        if now == digest {
            self.seen = Some((now_gen, now));
        }
        Ok((now.is_none(), now.is_some() && now != digest))
    }

    /// The stale keys that still matter.
    fn stale_keys(&self) -> (Vec<nft::StaleKey4>, Vec<nft::StaleKey6>) {
        let now = Instant::now();
        let mut stale = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        stale.retain(|(t, _, _)| *t > now);
        let v4 = stale.iter().flat_map(|(_, v4, _)| v4.iter().copied());
        let v6 = stale.iter().flat_map(|(_, _, v6)| v6.iter().copied());
        (v4.collect(), v6.collect())
    }
}

/// Links whose new flows another table's NAT translated to an address not theirs (as the
/// `check_nat` chain recorded it in the last minutes), as problems to report.
async fn foreign_nat(d: &DesiredState, addrs: &[Vec<IpAddr>]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, l) in d.links.iter().enumerate() {
        let Some(own) = addrs
            .get(i)
            .into_iter()
            .flatten()
            .find(|a| a.is_ipv4())
            .copied()
        else {
            continue;
        };
        let set = nft::foreign_nat_set(i);
        let seen = match blocking(move || nft::ipv4_elements(&set)).await {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot read nft set {}: {e}", nft::foreign_nat_set(i));
                continue;
            }
        };
        if !seen.is_empty() {
            let seen: Vec<String> = seen.iter().map(ToString::to_string).collect();
            out.push((
                l.name.clone(),
                format!(
                    "another table's NAT translated new flows leaving {} to {} instead of {own} (it ran before uplinkd's); their replies may come back another way or not at all",
                    l.interface,
                    seen.join(", ")
                ),
            ));
        }
    }
    out
}

impl Dataplane for Kernel {
    async fn apply(&mut self, d: &DesiredState, verify: bool) -> Result<Applied, Error> {
        let mut report = Applied::default();
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
        let rules = rules::converge_rules(&self.handle, d, &addrs)
            .await
            .map_err(Error::Route)?;
        let routes = routes::converge_routes(&self.handle, d, self.table_base, &ifindexes)
            .await
            .map_err(Error::Route)?;
        report.missing_interfaces = routes.missing;
        report.route_changes = rules + routes.changes;
        report.problems = routes.refused;
        for (l, index) in d.links.iter().zip(&ifindexes) {
            if index.is_some() {
                if let Err(e) = self.src_valid_mark.ensure(&l.interface) {
                    report.problems.push((l.name.clone(), e));
                }
            }
        }
        // Read back only when re-checking the kernel (reconcile): not on a failover's apply,
        // before its purge; the last reading stands meanwhile.
        if verify {
            self.foreign_nat = foreign_nat(d, &addrs).await;
        }
        report.problems.extend(self.foreign_nat.iter().cloned());
        report.routes = t.elapsed();
        nft?;
        Ok(report)
    }

    fn purge(
        &mut self,
        order: PurgeOrder,
    ) -> impl Future<Output = Result<Purged, Error>> + Send + 'static {
        let handle = self.handle.clone();
        let memory = self.stale.clone();
        async move {
            let (mark, mask, tickle_mark) = (order.mark, order.mark_mask, order.tickle_mark);
            let err = |source| Error::Purge { mark, source };
            let addrs = monitor::local_addrs(&handle).await.unwrap_or_default();
            let scope = reset::Scope {
                local: addrs.iter().map(|(_, a, _)| *a).collect(),
                lan: addrs
                    .iter()
                    .filter(|(i, _, _)| order.lan_interfaces.contains(i))
                    .map(|(_, a, len)| (*a, *len))
                    .collect(),
            };
            let nat_to = order.nat_to;
            let r = blocking(move || reset::purge(mark, mask, tickle_mark, &scope, &nat_to))
                .await
                .map_err(err)?;
            let until = Instant::now() + Duration::from_millis(nft::STALE_TIMEOUT_MS);
            memory.lock().unwrap_or_else(|p| p.into_inner()).push((
                until,
                r.stale4.clone(),
                r.stale6.clone(),
            ));
            // Later tickle rounds cover lost tickles and answers.
            let flows = r.tickle_flows.clone();
            if !flows.is_empty() {
                tokio::spawn(async move {
                    for _ in 1..reset::TICKLE_ROUNDS {
                        tokio::time::sleep(reset::TICKLE_GAP).await;
                        let f = flows.clone();
                        let round = move || reset::tickle(&f, tickle_mark, reset::TICKLE_BUDGET);
                        if let Err(e) = blocking(round).await {
                            warn!("tickle round failed: {e}");
                        }
                    }
                });
            }
            Ok(Purged {
                flows: r.flows,
                tcp_reset: r.tcp_reset,
                sockets: r.sockets,
                phases: [r.dump, r.stale, r.flush, r.tickle, r.destroy],
            })
        }
    }

    async fn ruleset_changed(&mut self) -> bool {
        match self.seen {
            Some((gen, _)) => blocking(nft::generation)
                .await
                .map_or(true, |now| now != gen),
            None => true,
        }
    }

    async fn remove_all(&mut self, d: &DesiredState) -> Result<(), Error> {
        self.applied = None;
        self.seen = None;
        let nft = blocking(nft::delete).await.map_err(Error::Nft);
        let rules = rules::remove_all(&self.handle, d).await;
        let routes = routes::remove_all(&self.handle, self.table_base).await;
        let sysctl = self.src_valid_mark.restore().map_err(Error::Sysctl);
        nft.and(rules.and(routes).map_err(Error::Route)).and(sysctl)
    }

    async fn interfaces(&self) -> Result<Vec<LinkEvent>, Error> {
        monitor::snapshot(&self.handle).await.map_err(Error::Read)
    }

    async fn ipv4_addresses(&self) -> Result<Vec<(String, std::net::Ipv4Addr)>, Error> {
        monitor::ipv4_addresses(&self.handle)
            .await
            .map_err(Error::Read)
    }
}

/// The names of the constant sets of `rules` (the rule lists' sets, the link marks' map),
/// whose elements the digest covers.
fn list_names(rules: &nft::Ruleset) -> Vec<String> {
    let lists = rules.match_sets.iter().map(|m| m.name.clone());
    lists.chain([nft::LINK_MARKS.to_string()]).collect()
}
