//! The kernel-visible ids uplinkd uses, allocated in this one place: the link marks under the
//! mark mask and the two reserved marks, the routing tables, and the `ip rule` priority band.
//!
//! Validation (`check`) only asks whether a configuration fits ([`mark_capacity`],
//! [`owned_tables`], [`owned_rule_priorities`]); [`allocate`] hands out the ids once it is valid,
//! by link name.

use std::ops::{Range, RangeInclusive};

use super::{DataplaneOptions, Link};

/// Most links uplinkd manages. It owns routing tables `table_base .. table_base + MAX_LINKS`
/// and rule priorities `rule_priority ..= rule_priority + MAX_LINKS`, so objects left over from
/// a larger earlier configuration are still recognised as its own and cleaned up.
pub const MAX_LINKS: u32 = 64;

/// Default [`DataplaneOptions::mark_mask`]: the second byte of the mark, room for 253 links
/// (more than [`MAX_LINKS`]) beside the two reserved values, and the low byte left to others.
pub const DEFAULT_MARK_MASK: u32 = 0xff00;

/// Default [`DataplaneOptions::table_base`]: its [`MAX_LINKS`] tables (100..164) stay clear of
/// the kernel's tables 0 and 253-255.
pub const DEFAULT_TABLE_BASE: u32 = 100;

/// Default [`DataplaneOptions::rule_priority`]: after the kernel's `lookup local` rule (0),
/// well before its `lookup main` rule ([`MAIN_RULE_PRIORITY`]), with room on both sides for
/// the operator's own rules.
pub const DEFAULT_RULE_PRIORITY: u32 = 1000;

/// Kernel routing tables 253 (default), 254 (main) and 255 (local) are reserved, 0 is "unspec".
pub const RESERVED_TABLES: RangeInclusive<u32> = 253..=255;

/// `ip rule` priority of the kernel's `lookup main` rule; ours must come before it.
pub const MAIN_RULE_PRIORITY: u32 = 32766;

/// Priorities of our rules, relative to `rule_priority`: main without defaults (0); the marks;
/// for unmarked packets, the addresses of the links other than the default policy's (a socket
/// bound to one leaves through its link); the refusal of flows whose policy has no usable link;
/// and last, for the router's own unmarked lookups (`iif lo`: its sockets choosing their source
/// address), the default policy's link, so its new flows follow failover. A socket bound to the
/// default link's own address cannot be told from one whose address the kernel chose that way,
/// so it is steered like the router's other new flows.
///
/// The marks come first: nearly every packet routed is marked (every packet of a flow with a
/// link, every probe), and the kernel walks the rules in order, so a marked packet no longer
/// passes one address rule per link first. Address rules match only unmarked packets, so the
/// order of the two bands does not change which rule a packet meets.
pub const PRIO_MARK: u32 = 1;
/// See [`PRIO_MARK`].
pub const PRIO_FROM: u32 = 2;
/// See [`PRIO_MARK`]: the unreachable mark is never a link's.
pub const PRIO_UNREACHABLE: u32 = 3;
/// See [`PRIO_MARK`]: last, for the router's own lookups that no earlier rule took.
pub const PRIO_DEFAULT: u32 = 4;

/// Mark values under the mask never given to a link: [`DataplaneOptions::tickle_mark`] and
/// [`DataplaneOptions::unreachable_mark`], the two highest.
const RESERVED_MARKS: u32 = 2;

/// How many links fit under `mark_mask`: mark values count up from 1 at its lowest bit (0 is
/// "no link", unmarked), and the two highest values are reserved.
pub fn mark_capacity(mark_mask: u32) -> u32 {
    (mark_mask >> mark_mask.trailing_zeros()).saturating_sub(RESERVED_MARKS)
}

/// The routing tables uplinkd owns from `table_base`, one per possible link (`MAX_LINKS`); the
/// range is shorter than that if it reaches `u32::MAX`.
pub fn owned_tables(table_base: u32) -> Range<u32> {
    table_base..table_base.saturating_add(MAX_LINKS)
}

/// The `ip rule` priorities uplinkd owns from `rule_priority` (the `PRIO_*` offsets lie within).
pub fn owned_rule_priorities(rule_priority: u32) -> RangeInclusive<u32> {
    rule_priority..=rule_priority.saturating_add(MAX_LINKS)
}

/// The kernel ids of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkIds {
    /// Mark value under [`DataplaneOptions::mark_mask`].
    pub mark: u32,
    /// Routing table holding the link's default route.
    pub table: u32,
}

/// How many slots links are hashed into: every mark value under the mask that a link may get,
/// and no more than the [`MAX_LINKS`] tables uplinkd owns.
fn slots(options: &DataplaneOptions) -> u32 {
    mark_capacity(options.mark_mask).min(MAX_LINKS)
}

/// FNV-1a (32 bit) of a link name: a fixed function, so every build and every router maps the
/// same name to the same slot.
fn name_hash(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A fingerprint of the mark mask and each link's name, mark and table (in name order): two
/// routers of a pair must show the same, since their flows' replicated marks pick the link.
pub fn fingerprint(c: &super::Config) -> String {
    let mark_mask = c.dataplane.mark_mask;
    let mut ids: Vec<String> = c
        .links
        .iter()
        .map(|l| format!("{}={:#x}/{}", l.name, l.mark, l.table))
        .collect();
    ids.sort();
    let text = format!("{mark_mask:#x};{}", ids.join(";"));
    format!("{:08x}", name_hash(&text))
}

/// The ids of each link of a valid configuration (at most [`mark_capacity`] and [`MAX_LINKS`]
/// links), in the order of `links`.
///
/// They follow the link's *name*, never its position: the name's hash picks a slot `s`, giving
/// mark value `s + 1` at the lowest bit of the mask and table `table_base + s`. Reordering,
/// adding or removing other links leaves a link's ids alone (unless two names share a slot:
/// then the name that sorts first keeps it and the other takes the next free one), so its
/// flows survive a reload, and two routers with the same links agree on every mark.
pub fn allocate(options: &DataplaneOptions, links: &[Link]) -> Vec<LinkIds> {
    let shift = options.mark_mask.trailing_zeros();
    let n = slots(options);
    let mut by_name: Vec<usize> = (0..links.len()).collect();
    by_name.sort_by(|&a, &b| links[a].name.cmp(&links[b].name));
    let mut taken = vec![false; n as usize];
    let mut slot_of = vec![0u32; links.len()];
    for i in by_name {
        let mut s = name_hash(&links[i].name) % n;
        while taken[s as usize] {
            s = (s + 1) % n;
        }
        taken[s as usize] = true;
        slot_of[i] = s;
    }
    slot_of
        .into_iter()
        .map(|s| LinkIds {
            mark: (s.wrapping_add(1) << shift) & options.mark_mask,
            table: options.table_base.wrapping_add(s),
        })
        .collect()
}

impl DataplaneOptions {
    /// The highest value under the mask, never given to a link: it marks the packets uplinkd
    /// itself sends to reset stranded clients.
    pub fn tickle_mark(&self) -> u32 {
        self.mark_mask
    }

    /// The value below it, also never a link's: new flows of a policy with no usable link and
    /// `last_resort = "unreachable"` get it, and an `unreachable` rule refuses them.
    pub fn unreachable_mark(&self) -> u32 {
        self.mark_mask - (1 << self.mark_mask.trailing_zeros())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ids(names: &[&str], mask: u32) -> Vec<LinkIds> {
        let mut text = String::new();
        for n in names {
            text += &format!(
                "[[link]]\nname = \"{n}\"\ninterface = \"{n}\"\ngateway = \"192.0.2.1\"\ntargets = [\"203.0.113.1\"]\n"
            );
        }
        text += &format!("[lan]\ninterfaces = [\"lan0\"]\n[dataplane]\nmark_mask = {mask:#x}\n");
        let c = crate::config::parse(&text).unwrap();
        allocate(&c.dataplane, &c.links)
    }

    #[test]
    fn ids_follow_the_name_not_the_position() {
        let ab = ids(&["wan1", "wan2", "lte"], DEFAULT_MARK_MASK);
        let ba = ids(&["lte", "wan2", "wan1"], DEFAULT_MARK_MASK);
        assert_eq!((ab[0], ab[1], ab[2]), (ba[2], ba[1], ba[0]));
        // Removing a link leaves the others' ids alone.
        assert_eq!(ids(&["wan2", "lte"], DEFAULT_MARK_MASK), [ab[1], ab[2]]);
        // Fixed values: the same name gets the same mark on every router and every build.
        assert_eq!(
            ab[0],
            LinkIds {
                mark: (name_hash("wan1") % MAX_LINKS + 1) << 8,
                table: DEFAULT_TABLE_BASE + name_hash("wan1") % MAX_LINKS
            }
        );
        // The published FNV-1a test vector, and the testbed's links (mark 0x1100, table 116; 0xa00, 109).
        assert_eq!(name_hash("a"), 0xe40c_292c);
        assert_eq!(
            ids(&["wan1", "wan2"], DEFAULT_MARK_MASK),
            [
                LinkIds {
                    mark: 0x1100,
                    table: 116
                },
                LinkIds {
                    mark: 0xa00,
                    table: 109
                }
            ]
        );
    }

    #[test]
    fn colliding_names_get_distinct_ids_clear_of_the_reserved_marks() {
        // Under a 3-bit mask there are 5 slots: six names cannot all hash apart, five must fit.
        let names = ["a", "b", "c", "d", "e"];
        let got = ids(&names, 0x70);
        let mut marks: Vec<u32> = got.iter().map(|i| i.mark).collect();
        marks.sort_unstable();
        assert_eq!(marks, [0x10, 0x20, 0x30, 0x40, 0x50]);
        let mut tables: Vec<u32> = got.iter().map(|i| i.table).collect();
        tables.sort_unstable();
        assert_eq!(tables, [100, 101, 102, 103, 104]);
        // The name that sorts first keeps its hashed slot, whatever the file order.
        let rev: Vec<&str> = names.iter().rev().copied().collect();
        let got_rev = ids(&rev, 0x70);
        assert_eq!(got_rev.iter().rev().copied().collect::<Vec<_>>(), got);
        assert_eq!(got[0].mark, (name_hash("a") % 5 + 1) << 4);
        assert_eq!(mark_capacity(0x70), 5);
        let c = crate::config::parse(&format!(
            "{}\n[lan]\ninterfaces = [\"lan0\"]\n[dataplane]\nmark_mask = 0x70\n",
            crate::config::TEST_LINKS
        ))
        .unwrap();
        assert_eq!(
            (c.dataplane.unreachable_mark(), c.dataplane.tickle_mark()),
            (0x60, 0x70)
        );
    }
}
