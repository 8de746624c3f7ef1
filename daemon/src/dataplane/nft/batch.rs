//! Writing our table to the kernel: one netlink transaction per change, sent in one piece.

use std::ffi::{CStr, CString};
use std::io;

use nftnl::expr::Lookup;
use nftnl::set::Set;
use nftnl::{Batch, Chain, FinalizedBatch, MsgType, Policy, ProtoFamily, Rule, Table};

use super::encode::{add_exprs, cstring, lower, Sets};
use super::plan::{AddrSet, Intervals, MatchKind, MatchSet, Ruleset, LINK_MARKS};
use super::{StaleKey4, StaleKey6, STALE4, STALE6, STALE_TIMEOUT_MS, TABLE};
use crate::dataplane::nft_ext::{
    set_dynamic, set_interval, set_size, set_timeout, set_verdict_map, ConcatKey, Elem, Elems,
    ELEMS_PER_MSG, TYPE_INET_SERVICE, TYPE_IP6ADDR, TYPE_IPADDR, TYPE_MARK,
};

/// Write our table as `rules` in one transaction; the kernel applies all of it or nothing.
///
/// With the ruleset written last (`previous`), the table is updated in place, touching only
/// what changed: chains whose rules changed are flushed and refilled, others are left alone;
/// a rule list's set gets only the intervals added and removed; chains and sets no longer
/// wanted are deleted; the dynamic sets (stale flows, sticky sources) keep their elements.
/// `repair` (someone edited our table) rewrites every chain and every list's set instead.
/// Without `previous`, or when the kernel refuses the update, the table is replaced as a whole:
/// add (so the delete cannot fail), delete, re-create. Returns whether it was replaced,
/// emptying its sets.
pub fn replace(rules: &Ruleset, previous: Option<&Ruleset>, repair: bool) -> io::Result<bool> {
    if let Some(previous) = previous {
        if send(&build(rules, Some((previous, repair)))?).is_ok() {
            return Ok(false);
        }
    }
    send(&build(rules, None)?)?;
    Ok(true)
}

/// Set ids in a batch: the stale sets are 1 and 2, the link marks' map 3, the new sticky sets
/// follow, and the previous ruleset's sticky sets (only ever deleted) get ids no new set can
/// have; the rule lists' sets come after.
const LINK_MARKS_ID: u32 = 3;
const STICKY_FIRST_ID: u32 = 4;
const OLD_STICKY_FIRST_ID: u32 = 1000;
const MATCH_FIRST_ID: u32 = 2000;

/// The batch that writes `rules` over `previous` (see [`replace`]). Each message is serialized
/// as it is added, so the nftnl objects need not outlive the batch.
pub(super) fn build(
    rules: &Ruleset,
    previous: Option<(&Ruleset, bool)>,
) -> io::Result<FinalizedBatch> {
    let table = Table::new(TABLE, ProtoFamily::Inet);
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    // The link marks' map is refilled when it changes: emptied before the chains it jumps to
    // may be deleted, filled once the chains it jumps to exist.
    let fill_map = previous.is_none_or(|(p, repair)| repair || p.link_marks != rules.link_marks);
    // Per chain of `rules`: whether its rules are written (it is new or changed).
    let fill: Vec<bool> = match previous {
        Some((p, repair)) => {
            clear_previous(&mut batch, &table, p, rules, repair, fill_map)?;
            rules
                .chains
                .iter()
                .map(|c| repair || !p.chains.contains(c))
                .collect()
        }
        None => {
            batch.add(&table, MsgType::Del);
            batch.add(&table, MsgType::Add);
            vec![true; rules.chains.len()]
        }
    };
    let sets = StaleSets::new(&table);
    batch.add(&sets.v4, MsgType::Add);
    batch.add(&sets.v6, MsgType::Add);
    let map_name = cstring(LINK_MARKS)?;
    let map: Set<'_, ConcatKey<4, TYPE_MARK>> =
        Set::new_named(&map_name, LINK_MARKS_ID, &table, ProtoFamily::Inet);
    set_verdict_map(&map);
    batch.add(&map, MsgType::Add);
    let sticky = sticky_sets(rules, &table, STICKY_FIRST_ID)?;
    for s in &sticky {
        s.add(&mut batch);
    }
    let lists = match_sets(rules, &table)?;
    for (m, obj) in rules.match_sets.iter().zip(&lists) {
        obj.add(&mut batch);
        let old = previous.and_then(|(p, repair)| {
            let old = p.match_sets.iter().find(|o| o.name == m.name)?;
            (!repair).then_some(&old.intervals)
        });
        let added = match old {
            Some(old) => only_in(&m.intervals, old),
            None => m.intervals.to_vec(),
        };
        add_elems(&mut batch, m, obj.id(), &added, false)?;
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
    if fill_map {
        add_jumps(&mut batch, &map_name, &rules.link_marks)?;
    }
    let refs = Refs {
        stale: &sets,
        link_marks: &map_name,
        addr_sets: &sticky,
        match_sets: &lists,
    };
    for ((c, chain), fill) in rules.chains.iter().zip(&chains).zip(fill) {
        if !fill {
            continue;
        }
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

/// Update in place: empty the link marks' map first if it is refilled (`refill_map`: its
/// elements hold the chains they jump to), flush the chains of the previous ruleset that change
/// (all of them for a repair), delete its chains and sets that `rules` no longer has, and take
/// out of the rule lists' sets the intervals they lose (everything, for a repair, which refills
/// them).
fn clear_previous(
    batch: &mut Batch,
    table: &Table,
    previous: &Ruleset,
    rules: &Ruleset,
    repair: bool,
    refill_map: bool,
) -> io::Result<()> {
    if refill_map {
        flush_elems(batch, LINK_MARKS)?;
    }
    let names = chain_names(previous)?;
    let chains: Vec<Chain<'_>> = names.iter().map(|n| Chain::new(n, table)).collect();
    for (c, chain) in previous.chains.iter().zip(&chains) {
        if repair || !rules.chains.contains(c) {
            batch.add(&Rule::new(chain), MsgType::Del);
        }
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
    let lists = match_sets(previous, table)?;
    for (old, obj) in previous.match_sets.iter().zip(&lists) {
        match rules.match_sets.iter().find(|m| m.name == old.name) {
            None => obj.del(batch),
            Some(_) if repair => flush_elems(batch, &old.name)?,
            Some(m) => add_elems(batch, old, 0, &only_in(&old.intervals, &m.intervals), true)?,
        }
    }
    Ok(())
}

/// The intervals of `a` that `b` does not have (both sorted).
fn only_in(a: &Intervals, b: &Intervals) -> Intervals {
    let mut b = b.iter().peekable();
    a.iter()
        .filter(|x| {
            while b.next_if(|y| y < x).is_some() {}
            b.peek() != Some(x)
        })
        .copied()
        .collect()
}

/// Add (or delete) `intervals` of set `m` in messages of at most ELEMS_PER_MSG elements: each
/// interval is its first key and, unless it runs to the highest key, the key after it flagged
/// as an interval end (as nft(8) writes them).
fn add_elems(
    batch: &mut Batch,
    m: &MatchSet,
    set_id: u32,
    intervals: &[(u128, Option<u128>)],
    delete: bool,
) -> io::Result<()> {
    let name = cstring(&m.name)?;
    let key = |k: u128| k.to_be_bytes()[16 - m.kind.len()..].to_vec();
    let elems: Vec<Elem> = intervals
        .iter()
        .flat_map(|&(lo, end)| {
            std::iter::once(Elem::key(key(lo), false)).chain(end.map(|e| Elem::key(key(e), true)))
        })
        .collect();
    for elems in elems.chunks(ELEMS_PER_MSG) {
        let message = Elems {
            table: TABLE,
            set: &name,
            set_id,
            elems,
            delete,
        };
        batch.add(&message, MsgType::Add);
    }
    Ok(())
}

/// The link marks' map `name` gets `jumps`: each mark (in host byte order, as the kernel keeps
/// marks) jumps to its chain.
fn add_jumps(batch: &mut Batch, name: &CStr, jumps: &[(u32, String)]) -> io::Result<()> {
    let elems = jumps
        .iter()
        .map(|(mark, chain)| {
            Ok(Elem {
                key: mark.to_ne_bytes().to_vec(),
                end: false,
                jump: Some(cstring(chain)?),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let message = Elems {
        table: TABLE,
        set: name,
        set_id: LINK_MARKS_ID,
        elems: &elems,
        delete: false,
    };
    batch.add(&message, MsgType::Add);
    Ok(())
}

/// Empty the set called `name` (a DELSETELEM without elements).
fn flush_elems(batch: &mut Batch, name: &str) -> io::Result<()> {
    let name = cstring(name)?;
    let message = Elems {
        table: TABLE,
        set: &name,
        set_id: 0,
        elems: &[],
        delete: true,
    };
    batch.add(&message, MsgType::Del);
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

/// The rule lists' sets of `r` as nftnl objects, with batch ids from MATCH_FIRST_ID.
fn match_sets<'a>(r: &Ruleset, table: &'a Table) -> io::Result<Vec<MatchSetObj<'a>>> {
    r.match_sets
        .iter()
        .zip(MATCH_FIRST_ID..)
        .map(|(m, id)| MatchSetObj::new(m, id, table))
        .collect()
}

/// The sets rules refer to, for lookups and dynamic updates by name and batch id.
struct Refs<'r, 'a> {
    stale: &'r StaleSets<'a>,
    link_marks: &'r CStr,
    addr_sets: &'r [AddrSetObj<'a>],
    match_sets: &'r [MatchSetObj<'a>],
}

impl Sets for Refs<'_, '_> {
    fn lookup(&self, set: &str) -> io::Result<Lookup> {
        Ok(if set.as_bytes() == STALE4.to_bytes() {
            Lookup::new(&self.stale.v4)
        } else if set.as_bytes() == STALE6.to_bytes() {
            Lookup::new(&self.stale.v6)
        } else if let Some(m) = self.match_sets.iter().find(|m| m.name() == set) {
            m.lookup()
        } else {
            self.addr_set(set)?.lookup()
        })
    }

    fn id(&self, set: &str) -> io::Result<(&CStr, u32)> {
        Ok(if set == LINK_MARKS {
            (self.link_marks, LINK_MARKS_ID)
        } else if set.as_bytes() == STALE4.to_bytes() {
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

/// A rule list's set as an nftnl object: flags interval, keyed by address or port.
enum MatchSetObj<'a> {
    V4(Set<'a, ConcatKey<4, TYPE_IPADDR>>, String),
    V6(Set<'a, ConcatKey<16, TYPE_IP6ADDR>>, String),
    Port(Set<'a, ConcatKey<2, TYPE_INET_SERVICE>>, String),
}

impl<'a> MatchSetObj<'a> {
    fn new(m: &MatchSet, id: u32, table: &'a Table) -> io::Result<Self> {
        let name = cstring(&m.name)?;
        let family = ProtoFamily::Inet;
        let n = m.name.clone();
        Ok(match m.kind {
            MatchKind::V4 => {
                let s = Set::new_named(&name, id, table, family);
                set_interval(&s);
                MatchSetObj::V4(s, n)
            }
            MatchKind::V6 => {
                let s = Set::new_named(&name, id, table, family);
                set_interval(&s);
                MatchSetObj::V6(s, n)
            }
            MatchKind::Port => {
                let s = Set::new_named(&name, id, table, family);
                set_interval(&s);
                MatchSetObj::Port(s, n)
            }
        })
    }

    fn name(&self) -> &str {
        match self {
            MatchSetObj::V4(_, n) | MatchSetObj::V6(_, n) | MatchSetObj::Port(_, n) => n,
        }
    }

    fn add(&self, batch: &mut Batch) {
        match self {
            MatchSetObj::V4(s, _) => batch.add(s, MsgType::Add),
            MatchSetObj::V6(s, _) => batch.add(s, MsgType::Add),
            MatchSetObj::Port(s, _) => batch.add(s, MsgType::Add),
        }
    }

    fn del(&self, batch: &mut Batch) {
        match self {
            MatchSetObj::V4(s, _) => batch.add(s, MsgType::Del),
            MatchSetObj::V6(s, _) => batch.add(s, MsgType::Del),
            MatchSetObj::Port(s, _) => batch.add(s, MsgType::Del),
        }
    }

    fn lookup(&self) -> Lookup {
        match self {
            MatchSetObj::V4(s, _) => Lookup::new(s),
            MatchSetObj::V6(s, _) => Lookup::new(s),
            MatchSetObj::Port(s, _) => Lookup::new(s),
        }
    }

    fn id(&self) -> u32 {
        match self {
            MatchSetObj::V4(s, _) => s.get_id(),
            MatchSetObj::V6(s, _) => s.get_id(),
            MatchSetObj::Port(s, _) => s.get_id(),
        }
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

/// Most killed flows the stale sets hold: far more than a link carries (the bench
/// purges 500,000 TCP flows at once).
pub(super) const STALE_MAX: u32 = 1 << 22;

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
        set_size(&v4, STALE_MAX);
        set_size(&v6, STALE_MAX);
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
/// message; nftnl splits it into 128 KiB pages) and read every acknowledgement, on the daemon's
/// nf_tables socket.
pub(in crate::dataplane) fn send(batch: &FinalizedBatch) -> io::Result<()> {
    let data: Vec<u8> = batch.iter().flatten().copied().collect();
    super::with_socket(|s| s.batch(&data, batch.sequence_numbers()))
}
