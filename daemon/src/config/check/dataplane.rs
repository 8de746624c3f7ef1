//! `[dataplane]`: the mark bits, routing tables and rule priorities uplinkd may use (the ids
//! themselves are allocated by `fence`).

use super::super::fence::{
    self, DEFAULT_MARK_MASK, DEFAULT_RULE_PRIORITY, DEFAULT_TABLE_BASE, MAIN_RULE_PRIORITY,
    MAX_LINKS, RESERVED_TABLES,
};
use super::super::raw::RawDataplane;
use super::super::DataplaneOptions;
use super::Checker;

/// The options, the mark mask checked to be one run of bits.
pub(super) fn options(c: &mut Checker, raw: &RawDataplane) -> DataplaneOptions {
    let mark_mask = match &raw.mark_mask {
        Some(v) if *v.get_ref() == 0 => {
            c.err(
                v.span(),
                "dataplane.mark_mask",
                "must have at least one bit set",
            );
            DEFAULT_MARK_MASK
        }
        Some(v)
            if (v.get_ref() >> v.get_ref().trailing_zeros()).count_ones()
                != (v.get_ref() >> v.get_ref().trailing_zeros()).trailing_ones() =>
        {
            c.err(
                v.span(),
                "dataplane.mark_mask",
                format!(
                    "{:#x} must be one run of consecutive bits, like 0xff00",
                    v.get_ref()
                ),
            );
            DEFAULT_MARK_MASK
        }
        Some(v) => *v.get_ref(),
        None => DEFAULT_MARK_MASK,
    };
    DataplaneOptions {
        mark_mask,
        table_base: raw
            .table_base
            .as_ref()
            .map_or(DEFAULT_TABLE_BASE, |v| *v.get_ref()),
        rule_priority: raw
            .rule_priority
            .as_ref()
            .map_or(DEFAULT_RULE_PRIORITY, |v| *v.get_ref()),
        cleanup_on_exit: raw.cleanup_on_exit.unwrap_or(true),
        steer_router: raw.steer_router.unwrap_or(true),
    }
}

/// The routing tables and rule priorities uplinkd owns are clear of the kernel's.
pub(super) fn owned_ids(c: &mut Checker, raw: &RawDataplane, dp: &DataplaneOptions) {
    let owned_tables = fence::owned_tables(dp.table_base);
    if dp.table_base == 0
        || RESERVED_TABLES.clone().any(|t| owned_tables.contains(&t))
        || owned_tables.end - owned_tables.start < MAX_LINKS
    {
        let span = raw.table_base.as_ref().map_or(0..0, |v| v.span());
        c.err(
            span,
            "dataplane.table_base",
            format!(
                "uplinkd owns tables {}..{} which must not include the kernel's tables 0 or 253-255",
                owned_tables.start, owned_tables.end
            ),
        );
    }
    let owned_priorities = fence::owned_rule_priorities(dp.rule_priority);
    if dp.rule_priority == 0 || *owned_priorities.end() >= MAIN_RULE_PRIORITY {
        let span = raw.rule_priority.as_ref().map_or(0..0, |v| v.span());
        c.err(
            span,
            "dataplane.rule_priority",
            format!(
                "uplinkd owns rule priorities {}..={} which must lie within 1..{MAIN_RULE_PRIORITY}",
                owned_priorities.start(),
                owned_priorities.end()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::MINIMAL;
    use crate::config::parse;

    #[test]
    fn mark_mask_limits_the_number_of_links() {
        let text = format!("{MINIMAL}\n[dataplane]\nmark_mask = 0x1\n");
        let p = parse(&text).unwrap_err();
        assert!(p.iter().any(|p| p.key == "dataplane.mark_mask"), "{p:?}");
        let text = format!("{MINIMAL}\n[dataplane]\nmark_mask = 0xf0f0\n");
        let p = parse(&text).unwrap_err();
        assert!(p[0].message.contains("consecutive"), "{p:?}");
        let text = format!("{MINIMAL}\n[dataplane]\nmark_mask = 0x70\n");
        let c = parse(&text).unwrap();
        assert_eq!((c.links[0].mark, c.links[1].mark), (0x20, 0x10));
    }

    #[test]
    fn too_many_links_are_reported_where_the_limit_is() {
        // MINIMAL's links start on lines 2 and 9; the mask is on line 19.
        let text = format!("{MINIMAL}\n[dataplane]\nmark_mask = 0x7\n");
        let links: String = (0..6)
            .map(|i| {
                format!(
                    "[[link]]\nname = \"x{i}\"\ninterface = \"x{i}\"\ntargets = [\"192.0.2.1\"]\n"
                )
            })
            .collect();
        let p = parse(&format!("{text}{links}")).unwrap_err();
        let got: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(got, [(19, "dataplane.mark_mask")]);
        assert!(
            p[0].message.contains("room for 5 links, 8 configured"),
            "{p:?}"
        );
        // Without a mask, past MAX_LINKS: the first link too many.
        let links: String = (0..64)
            .map(|i| {
                format!(
                    "[[link]]\nname = \"x{i}\"\ninterface = \"x{i}\"\ntargets = [\"192.0.2.1\"]\n"
                )
            })
            .collect();
        let p = parse(&format!("{MINIMAL}{links}")).unwrap_err();
        let got: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(got, [(17 + 62 * 4, "link")], "link[64] is link x62");
    }

    #[test]
    fn reserved_tables_and_rule_priorities_are_refused() {
        let text = format!("{MINIMAL}\n[dataplane]\ntable_base = 200\nrule_priority = 32750\n");
        let p = parse(&text).unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["dataplane.table_base", "dataplane.rule_priority"]
        );
    }

    #[test]
    fn tables_past_the_last_table_id_are_refused() {
        let text = format!("{MINIMAL}\n[dataplane]\ntable_base = 4294967290\n");
        let p = parse(&text).unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["dataplane.table_base"]);
    }
}
