//! The kernel-visible ids uplinkd uses, allocated in this one place: the link marks under the
//! mark mask and the two reserved marks, the routing tables, and the `ip rule` priority band.
//!
//! Validation (`check`) only asks whether a configuration fits ([`mark_capacity`],
//! [`owned_tables`], [`owned_rule_priorities`]); [`allocate`] hands out the ids once it is valid.

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

/// Priorities of our rules, relative to `rule_priority`: main without defaults (0); the
/// addresses of the links other than the default policy's (a socket bound to one leaves through
/// its link, whatever mark the steering gives it); the marks; the refusal of flows whose policy
/// has no usable link; and last, for the router's own unmarked lookups (`iif lo`: its sockets
/// choosing their source address), the default policy's link, so its new flows follow failover.
/// A socket bound to the default link's own address cannot be told from one whose address the
/// kernel chose that way, so it is steered like the router's other new flows.
pub const PRIO_FROM: u32 = 1;
/// See [`PRIO_FROM`]: after the bound addresses, so those win over the steering.
pub const PRIO_MARK: u32 = 2;
/// See [`PRIO_FROM`]: after the links' marks; the unreachable mark is never a link's.
pub const PRIO_UNREACHABLE: u32 = 3;
/// See [`PRIO_FROM`]: last, for the router's own lookups that no earlier rule took.
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

/// The ids of each link of a valid configuration (at most [`mark_capacity`] and [`MAX_LINKS`]
/// links), in the order of `links`.
///
/// Both follow the link's position: link `i` gets mark value `i + 1` at the lowest bit of the
/// mask and table `table_base + i`.
pub fn allocate(options: &DataplaneOptions, links: &[Link]) -> Vec<LinkIds> {
    let shift = options.mark_mask.trailing_zeros();
    (0..links.len() as u32)
        .map(|i| LinkIds {
            mark: (i.wrapping_add(1) << shift) & options.mark_mask,
            table: options.table_base.wrapping_add(i),
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

    #[test]
    fn links_get_marks_and_tables_by_position_clear_of_the_reserved_marks() {
        let c = crate::config::parse(&format!(
            "{}\n[lan]\ninterfaces = [\"lan0\"]\n[dataplane]\nmark_mask = 0x70\n",
            crate::config::TEST_LINKS
        ))
        .unwrap();
        let ids = allocate(&c.dataplane, &c.links);
        assert_eq!(
            ids,
            [
                LinkIds {
                    mark: 0x10,
                    table: 100
                },
                LinkIds {
                    mark: 0x20,
                    table: 101
                }
            ]
        );
        assert_eq!(mark_capacity(0x70), 5);
        assert_eq!(
            (c.dataplane.unreachable_mark(), c.dataplane.tickle_mark()),
            (0x60, 0x70)
        );
    }
}
