//! Writing our table to the kernel: one netlink transaction per change, sent in one piece.

use std::ffi::{CStr, CString};
use std::io;

use nftnl::expr::Lookup;
use nftnl::set::Set;
use nftnl::{Batch, Chain, FinalizedBatch, MsgType, Policy, ProtoFamily, Rule, Table};

use super::encode::{add_exprs, cstring, lower, Sets};
use super::plan::{AddrSet, Ruleset};
use super::{StaleKey4, StaleKey6, STALE4, STALE6, STALE_TIMEOUT_MS, TABLE};
use crate::dataplane::nft_ext::{set_buffers, set_dynamic, set_timeout};

/// Write our table as `rules` in one transaction; the kernel applies all of it or nothing.
///
/// With the ruleset written last (`previous`), the table is updated in place: every chain is
/// flushed and refilled, chains and sets no longer wanted are deleted, and the sets that stay
/// (stale flows, sticky sources) keep their elements. Without it, or when the kernel refuses the
/// update (someone changed our table), the table is replaced as a whole: add (so the delete
/// cannot fail), delete, re-create. Returns whether it was replaced, emptying its sets.
pub fn replace(rules: &Ruleset, previous: Option<&Ruleset>) -> io::Result<bool> {
    if let Some(previous) = previous {
        if write(rules, Some(previous)).is_ok() {
            return Ok(false);
        }
    }
    write(rules, None)?;
    Ok(true)
}

fn write(rules: &Ruleset, previous: Option<&Ruleset>) -> io::Result<()> {
    send(&build(rules, previous)?)
}

/// Set ids in a batch: the stale sets are 1 and 2, the new sticky sets follow, and the previous
/// ruleset's sticky sets (only ever deleted) get ids no new set can have.
const STICKY_FIRST_ID: u32 = 3;
const OLD_STICKY_FIRST_ID: u32 = 1000;

/// The batch that writes `rules` over `previous` (see [`replace`]). Each message is serialized
/// as it is added, so the nftnl objects need not outlive the batch.
pub(super) fn build(rules: &Ruleset, previous: Option<&Ruleset>) -> io::Result<FinalizedBatch> {
    let table = Table::new(TABLE, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    match previous {
        Some(p) => clear_previous(&mut batch, &table, p, rules)?,
        None => {
            batch.add(&table, MsgType::Del);
            batch.add(&table, MsgType::Add);
        }
    }
    let sets = StaleSets::new(&table);
    batch.add(&sets.v4, MsgType::Add);
    batch.add(&sets.v6, MsgType::Add);
    let sticky = sticky_sets(rules, &table, STICKY_FIRST_ID)?;
    for s in &sticky {
        s.add(&mut batch);
    }
    let names = chain_names(rules)?;
    let mut chains = Vec::new();
    for (c, name) in rules.chains.iter().zip(&names) {
        let mut chain = Chain::new(name, &table);
        if let Some((hook, kind, priority)) = c.base {
            chain.set_hook(hook, priority);
            chain.set_type(kind);
            chain.set_policy(Policy::Accept);
        }
        batch.add(&chain, MsgType::Add);
        chains.push(chain);
    }
    let refs = Refs {
        stale: &sets,
        addr_sets: &sticky,
    };
    for (c, chain) in rules.chains.iter().zip(&chains) {
        for ops in &c.rules {
            let mut rule = Rule::new(chain);
            for op in ops {
                add_exprs(&mut rule, &lower(op)?, &refs)?;
            }
            batch.add(&rule, MsgType::Add);
        }
    }
    Ok(batch.finalize())
}

/// Update in place: flush every chain of the previous ruleset, and delete its chains and sticky
/// sets that `rules` no longer has.
fn clear_previous(
    batch: &mut Batch,
    table: &Table,
    previous: &Ruleset,
    rules: &Ruleset,
) -> io::Result<()> {
    let names = chain_names(previous)?;
    let chains: Vec<Chain<'_>> = names.iter().map(|n| Chain::new(n, table)).collect();
    for chain in &chains {
        batch.add(&Rule::new(chain), MsgType::Del);
    }
    for (c, chain) in previous.chains.iter().zip(&chains) {
        if !rules.chains.iter().any(|n| n.name == c.name) {
            batch.add(chain, MsgType::Del);
        }
    }
    let sets = sticky_sets(previous, table, OLD_STICKY_FIRST_ID)?;
    for (s, obj) in previous.addr_sets.iter().zip(&sets) {
        if !rules.addr_sets.contains(s) {
            obj.del(batch);
        }
    }
    Ok(())
}

fn chain_names(r: &Ruleset) -> io::Result<Vec<CString>> {
    r.chains.iter().map(|c| cstring(&c.name)).collect()
}

fn sticky_sets<'a>(
    r: &Ruleset,
    table: &'a Table,
    first_id: u32,
) -> io::Result<Vec<AddrSetObj<'a>>> {
    r.addr_sets
        .iter()
        .zip(first_id..)
        .map(|(s, id)| AddrSetObj::new(s, id, table))
        .collect()
}

/// The sets rules refer to, for lookups and dynamic updates by name and batch id.
struct Refs<'r, 'a> {
    stale: &'r StaleSets<'a>,
    addr_sets: &'r [AddrSetObj<'a>],
}

impl Sets for Refs<'_, '_> {
    fn lookup(&self, set: &str) -> io::Result<Lookup> {
        Ok(if set.as_bytes() == STALE4.to_bytes() {
            Lookup::new(&self.stale.v4)
        } else if set.as_bytes() == STALE6.to_bytes() {
            Lookup::new(&self.stale.v6)
        } else {
            self.addr_set(set)?.lookup()
        })
    }

    fn id(&self, set: &str) -> io::Result<(&CStr, u32)> {
        Ok(if set.as_bytes() == STALE4.to_bytes() {
            (STALE4, self.stale.v4.get_id())
        } else if set.as_bytes() == STALE6.to_bytes() {
            (STALE6, self.stale.v6.get_id())
        } else {
            let s = self.addr_set(set)?;
            (s.name(), s.id())
        })
    }
}

impl Refs<'_, '_> {
    fn addr_set(&self, name: &str) -> io::Result<&AddrSetObj<'_>> {
        self.addr_sets
            .iter()
            .find(|s| s.name().to_bytes() == name.as_bytes())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no set {name}")))
    }
}

/// An address set as nftnl objects: flags dynamic and timeout, the timeout given per element by
/// the rules that add them.
enum AddrSetObj<'a> {
    V4(Set<'a, std::net::Ipv4Addr>, CString),
    V6(Set<'a, std::net::Ipv6Addr>, CString),
}

impl<'a> AddrSetObj<'a> {
    fn new(s: &AddrSet, id: u32, table: &'a Table) -> io::Result<Self> {
        let name = cstring(&s.name)?;
        Ok(if s.v6 {
            let set = Set::new_named(&name, id, table, ProtoFamily::Inet);
            set_dynamic(&set);
            AddrSetObj::V6(set, name)
        } else {
            let set = Set::new_named(&name, id, table, ProtoFamily::Inet);
            set_dynamic(&set);
            AddrSetObj::V4(set, name)
        })
    }

    fn name(&self) -> &CStr {
        match self {
            AddrSetObj::V4(_, n) | AddrSetObj::V6(_, n) => n,
        }
    }

    fn add(&self, batch: &mut Batch) {
        match self {
            AddrSetObj::V4(s, _) => batch.add(s, MsgType::Add),
            AddrSetObj::V6(s, _) => batch.add(s, MsgType::Add),
        }
    }

    fn del(&self, batch: &mut Batch) {
        match self {
            AddrSetObj::V4(s, _) => batch.add(s, MsgType::Del),
            AddrSetObj::V6(s, _) => batch.add(s, MsgType::Del),
        }
    }

    fn lookup(&self) -> Lookup {
        match self {
            AddrSetObj::V4(s, _) => Lookup::new(s),
            AddrSetObj::V6(s, _) => Lookup::new(s),
        }
    }

    fn id(&self) -> u32 {
        match self {
            AddrSetObj::V4(s, _) => s.get_id(),
            AddrSetObj::V6(s, _) => s.get_id(),
        }
    }
}

struct StaleSets<'a> {
    v4: Set<'a, StaleKey4>,
    v6: Set<'a, StaleKey6>,
}

impl<'a> StaleSets<'a> {
    fn new(table: &'a Table) -> Self {
        let v4 = Set::new_named(STALE4, 1, table, ProtoFamily::Inet);
        let v6 = Set::new_named(STALE6, 2, table, ProtoFamily::Inet);
        // Dynamic too: a new connection reusing a killed flow's key deletes it from the packet
        // path.
        set_timeout(&v4, STALE_TIMEOUT_MS);
        set_timeout(&v6, STALE_TIMEOUT_MS);
        set_dynamic(&v4);
        set_dynamic(&v6);
        StaleSets { v4, v6 }
    }
}

/// Remove our table, if it exists.
pub fn delete() -> io::Result<()> {
    let table = Table::new(TABLE, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(&batch.finalize())
}

/// Send a finalized batch in one `sendto` (the kernel applies a batch only when it arrives in one
/// message; nftnl splits it into 128 KiB pages) and read every acknowledgement. The socket's
/// buffers are sized for the batch and for one acknowledgement per message, all of which the
/// kernel queues before we read the first, as nft(8) does.
pub(in crate::dataplane) fn send(batch: &FinalizedBatch) -> io::Result<()> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let portid = socket.portid();
    let data: Vec<u8> = batch.iter().flatten().copied().collect();
    let mut expected = batch.sequence_numbers();
    let acks = expected.len();
    set_buffers(
        &socket,
        data.len() + (64 << 10),
        acks.saturating_mul(1024) + (256 << 10),
    )?;
    if socket.send(&data)? < data.len() {
        return Err(io::Error::other("sendto did not send the whole batch"));
    }
    let mut buf = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    while !expected.is_empty() {
        for message in socket.recv(&mut buf[..])? {
            let message = message?;
            let Some(seq) = expected.next() else { break };
            mnl::cb_run(message, seq, portid)?;
        }
    }
    Ok(())
}
