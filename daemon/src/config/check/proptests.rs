//! Generated configuration files: every problem is found where it is, under its own key,
//! whatever else the file holds.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use crate::config::parse;

/// A valid file of `n` links; returns it as lines.
fn valid(n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..n {
        lines.extend([
            "[[link]]".to_owned(),
            format!("name = \"l{i}\""),
            format!("interface = \"wan{i}\""),
            "gateway = \"100.64.1.1\"".to_owned(),
            format!("priority = {}", i + 1),
            "weight = 1".to_owned(),
            "quorum = 1".to_owned(),
            "targets = [\"203.0.113.10\"]".to_owned(),
            String::new(),
        ]);
    }
    lines.extend(["[lan]".to_owned(), "interfaces = [\"lan0\"]".to_owned()]);
    lines
}

/// Values that no link key takes: wrong types, out of range, not addresses.
const BAD: &[&str] = &[
    "\"a/b\"",
    "-1",
    "true",
    "[1]",
    "{}",
    "1.5",
    "\"\"",
    "0x1_0000_0000",
];

/// Keys of a link whose value is replaced, by offset in its block.
const KEYS: &[(usize, &str)] = &[
    (2, "interface"),
    (3, "gateway"),
    (4, "priority"),
    (5, "weight"),
    (6, "quorum"),
    (7, "targets"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_bad_value_is_reported_at_its_line_and_key(n in 1usize..5, link in 0usize..5, key in 0usize..KEYS.len(), bad in 0usize..BAD.len(), comment: bool) {
        let link = link % n;
        let mut lines = valid(n);
        prop_assert!(parse(&lines.join("\n")).is_ok());
        let (offset, name) = KEYS[key];
        let at = link * 9 + offset;
        lines[at] = format!("{name} = {}{}", BAD[bad], if comment { "  # changed" } else { "" });
        let problems = parse(&lines.join("\n")).unwrap_err();
        let want = (at + 1, format!("link[{link}].{name}"));
        prop_assert!(
            problems.iter().any(|p| (p.line, p.key.clone()) == want),
            "{:?} not in {:?}", want, problems
        );
        // Nothing is blamed on another line.
        prop_assert!(problems.iter().all(|p| p.line == at + 1), "{:?}", problems);
    }

    /// Any text: an error is located on a line the text has (0: the whole file), never a panic.
    #[test]
    fn any_text_is_refused_with_a_real_line(text in "[\\[\\]a-z=\"{} ,.0-9\\n#_-]{0,200}") {
        if let Err(problems) = parse(&text) {
            let lines = text.split('\n').count();
            prop_assert!(!problems.is_empty());
            for p in problems {
                prop_assert!(p.line <= lines, "line {} of {}: {:?}", p.line, lines, p);
                prop_assert!(!p.message.is_empty());
            }
        }
    }
}
