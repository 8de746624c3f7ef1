//! Requests as the parser sees them: exact errors, generated requests against a model.

#![allow(clippy::unwrap_used)]

use super::super::*;

#[test]
fn requests_are_parsed_and_mutations_need_root() {
    assert_eq!(parse(r#"{"cmd":"status"}"#, false), Ok(Parsed::Status));
    assert_eq!(
        parse(r#"{"v":1,"cmd":"metrics"}"#, false),
        Ok(Parsed::Metrics)
    );
    assert_eq!(parse(r#"{"cmd":"watch"}"#, false), Ok(Parsed::Watch));
    assert_eq!(
        parse(r#"{"cmd":"drain","link":"lte","reset":true}"#, true),
        Ok(Parsed::Command(Command::Drain {
            link: "lte".into(),
            reset: true
        }))
    );
    assert_eq!(
        parse(r#"{"cmd":"reload"}"#, true),
        Ok(Parsed::Command(Command::Reload))
    );
    let e = parse(r#"{"cmd":"reload"}"#, false).unwrap_err();
    assert!(e.contains("only allowed for root"), "{e}");
    assert!(parse(r#"{"cmd":"undrain","link":"x"}"#, false).is_err());
}

#[test]
fn history_and_outages_are_read_by_anyone_for_at_most_a_week() {
    assert_eq!(
        parse(r#"{"cmd":"history"}"#, false),
        Ok(Parsed::History {
            link: None,
            since_s: 3600
        })
    );
    assert_eq!(
        parse(r#"{"cmd":"history","link":"lte","since_s":86400}"#, false),
        Ok(Parsed::History {
            link: Some("lte".into()),
            since_s: 86400
        })
    );
    assert_eq!(
        parse(r#"{"cmd":"outages"}"#, false),
        Ok(Parsed::Outages { since_s: 604800 })
    );
    for bad in ["0", "-5", "604801", "1e300"] {
        let e = parse(&format!(r#"{{"cmd":"outages","since_s":{bad}}}"#), false).unwrap_err();
        assert!(e.contains("since_s"), "{bad}: {e}");
    }
}

/// Every bad request gets the error that names what is wrong with it.
#[test]
fn bad_requests_get_errors() {
    let malformed = |m: &str| format!("malformed request: {m}");
    let cases: Vec<(&str, bool, String)> = vec![
        // Not JSON, or not a request object.
        ("", true, malformed("EOF while parsing a value at line 1 column 0")),
        ("{", true, malformed("EOF while parsing an object at line 1 column 1")),
        ("status", true, malformed("expected value at line 1 column 1")),
        (
            "null",
            true,
            malformed("invalid type: null, expected struct Request at line 1 column 4"),
        ),
        (
            r#""status""#,
            true,
            malformed(r#"invalid type: string "status", expected struct Request at line 1 column 8"#),
        ),
        ("[]", true, malformed("a request is a JSON object, not an array")),
        (
            r#" [1, "reload", null, false]"#,
            true,
            malformed("a request is a JSON object, not an array"),
        ),
        (
            r#"{"cmd":"status"} {"cmd":"status"}"#,
            true,
            malformed("trailing characters at line 1 column 18"),
        ),
        // Wrong fields.
        ("{}", true, malformed("missing field `cmd` at line 1 column 2")),
        (
            r#"{"v":1}"#,
            true,
            malformed("missing field `cmd` at line 1 column 7"),
        ),
        (
            r#"{"cmd":5}"#,
            true,
            malformed("invalid type: integer `5`, expected a string at line 1 column 8"),
        ),
        (
            r#"{"cmd":"status","x":1}"#,
            true,
            malformed(
                "unknown field `x`, expected one of `v`, `cmd`, `link`, `reset`, `since_s` at line 1 column 19",
            ),
        ),
        (
            r#"{"cmd":"status","cmd":"reload"}"#,
            true,
            malformed("duplicate field `cmd` at line 1 column 21"),
        ),
        (
            r#"{"v":"1","cmd":"status"}"#,
            true,
            malformed(r#"invalid type: string "1", expected u32 at line 1 column 8"#),
        ),
        (
            r#"{"v":-1,"cmd":"status"}"#,
            true,
            malformed("invalid value: integer `-1`, expected u32 at line 1 column 7"),
        ),
        (
            r#"{"cmd":"drain","link":7}"#,
            true,
            malformed("invalid type: integer `7`, expected a string at line 1 column 23"),
        ),
        (
            r#"{"cmd":"drain","link":"lte","reset":"yes"}"#,
            true,
            malformed(r#"invalid type: string "yes", expected a boolean at line 1 column 41"#),
        ),
        // Wrong version: named, with the one this daemon speaks.
        (
            r#"{"v":2,"cmd":"status"}"#,
            true,
            "unsupported protocol version 2, this daemon speaks 1".into(),
        ),
        (
            r#"{"v":0,"cmd":"drain"}"#,
            true,
            "unsupported protocol version 0, this daemon speaks 1".into(),
        ),
        // Unknown command (names are case-sensitive and not trimmed).
        (
            r#"{"cmd":"format-disk"}"#,
            true,
            r#"unknown command "format-disk""#.into(),
        ),
        (r#"{"cmd":"Status"}"#, false, r#"unknown command "Status""#.into()),
        (r#"{"cmd":"drain "}"#, true, r#"unknown command "drain ""#.into()),
        (r#"{"cmd":""}"#, true, r#"unknown command """#.into()),
        // Missing link: named, whoever asks.
        (r#"{"cmd":"drain"}"#, true, r#""drain" needs "link""#.into()),
        (
            r#"{"cmd":"undrain","link":null}"#,
            true,
            r#""undrain" needs "link""#.into(),
        ),
        (
            r#"{"cmd":"drain","reset":true}"#,
            false,
            r#""drain" needs "link""#.into(),
        ),
        // Mutations from a peer that is not root.
        (
            r#"{"cmd":"reload"}"#,
            false,
            r#""reload" changes state and is only allowed for root"#.into(),
        ),
        (
            r#"{"v":1,"cmd":"drain","link":"lte","reset":true}"#,
            false,
            r#""drain" changes state and is only allowed for root"#.into(),
        ),
        (
            r#"{"cmd":"undrain","link":"x"}"#,
            false,
            r#""undrain" changes state and is only allowed for root"#.into(),
        ),
    ];
    let wrong: Vec<String> = cases
        .into_iter()
        .filter_map(|(line, root, want)| {
            let got = parse(line, root);
            (got != Err(want.clone()))
                .then(|| format!("{line:?} (root: {root}): got {got:?}, want {want:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// xorshift64: deterministic pseudo-random numbers for the generated inputs.
pub(super) fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn pick<'a, T>(x: &mut u64, from: &'a [T]) -> &'a T {
    &from[(next(x) % from.len() as u64) as usize]
}

/// Deterministic pseudo-random bytes: truncated JSON, control characters, invalid UTF-8.
pub(super) fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let pool = b"{}[]\":,cmdstatuwrlo \\\x00\xff\xc3v1";
    (0..len).map(|_| *pick(&mut x, pool)).collect()
}

/// The request `uplinkctl` sends for a parsed request.
fn request_for(p: &Parsed) -> serde_json::Value {
    match p {
        Parsed::Status => serde_json::json!({"v": 1, "cmd": "status"}),
        Parsed::Metrics => serde_json::json!({"v": 1, "cmd": "metrics"}),
        Parsed::Watch => serde_json::json!({"v": 1, "cmd": "watch"}),
        Parsed::Command(Command::Reload) => serde_json::json!({"v": 1, "cmd": "reload"}),
        Parsed::Command(Command::Drain { link, reset }) => {
            serde_json::json!({"v": 1, "cmd": "drain", "link": link, "reset": reset})
        }
        Parsed::Command(Command::Undrain { link }) => {
            serde_json::json!({"v": 1, "cmd": "undrain", "link": link})
        }
        Parsed::History { link, since_s } => {
            serde_json::json!({"v": 1, "cmd": "history", "link": link, "since_s": since_s})
        }
        Parsed::Outages { since_s } => {
            serde_json::json!({"v": 1, "cmd": "outages", "since_s": since_s})
        }
    }
}

/// What a generated field's JSON text deserializes to: a value, or a type error.
#[derive(Clone, Copy)]
enum Field {
    V(Option<u32>),
    Cmd(&'static str),
    Link(Option<&'static str>),
    Reset(bool),
    /// Wrong type (or out of range) for its field.
    Invalid,
}

/// Candidate values of each field: (JSON text, what it means).
const VS: &[(&str, Field)] = &[
    ("1", Field::V(Some(1))),
    ("null", Field::V(None)),
    ("2", Field::V(Some(2))),
    ("0", Field::V(Some(0))),
    ("4294967296", Field::Invalid),
    ("-1", Field::Invalid),
    ("1.0", Field::Invalid),
    ("\"1\"", Field::Invalid),
];
const CMDS: &[(&str, Field)] = &[
    ("\"status\"", Field::Cmd("status")),
    ("\"metrics\"", Field::Cmd("metrics")),
    ("\"watch\"", Field::Cmd("watch")),
    ("\"reload\"", Field::Cmd("reload")),
    ("\"drain\"", Field::Cmd("drain")),
    ("\"undrain\"", Field::Cmd("undrain")),
    ("\"drain\"", Field::Cmd("drain")),
    ("\"undrain\"", Field::Cmd("undrain")),
    ("\"\"", Field::Cmd("")),
    ("\"Reload\"", Field::Cmd("Reload")),
    ("\"dr\\u0061in\"", Field::Cmd("drain")),
    ("\"drain \"", Field::Cmd("drain ")),
    ("5", Field::Invalid),
    ("null", Field::Invalid),
    ("[\"drain\"]", Field::Invalid),
];
const LINKS: &[(&str, Field)] = &[
    ("\"lte\"", Field::Link(Some("lte"))),
    ("\"\"", Field::Link(Some(""))),
    ("\"a \\\"b\\\\\"", Field::Link(Some("a \"b\\"))),
    ("\"\u{fc}ber\"", Field::Link(Some("\u{fc}ber"))),
    ("null", Field::Link(None)),
    ("7", Field::Invalid),
    ("true", Field::Invalid),
];
const RESETS: &[(&str, Field)] = &[
    ("true", Field::Reset(true)),
    ("false", Field::Reset(false)),
    ("null", Field::Invalid),
    ("\"yes\"", Field::Invalid),
    ("1", Field::Invalid),
];

/// A random request object: some of the known fields in random order, sometimes one twice or an
/// unknown one; and the expected outcome, worked out independently of `parse`. A malformed
/// request is expected as `Err` of the words its error must contain.
fn generated(x: &mut u64, root: bool) -> (String, Result<Parsed, String>) {
    let mut fields: Vec<(&str, &str, Field)> = Vec::new();
    for (name, values) in [("v", VS), ("cmd", CMDS), ("link", LINKS), ("reset", RESETS)] {
        // `cmd` is nearly always there, the others half of the time.
        if next(x) % 10 < if name == "cmd" { 9 } else { 5 } {
            let (text, f) = pick(x, values);
            fields.push((name, text, *f));
        }
    }
    match next(x) % 16 {
        0 => fields.push(("x", "1", Field::Invalid)),
        1 if !fields.is_empty() => {
            let dup = *pick(x, &fields);
            fields.push(dup);
        }
        _ => {}
    }
    for i in (1..fields.len()).rev() {
        fields.swap(i, (next(x) % (i as u64 + 1)) as usize);
    }
    let text = format!(
        "{{{}}}",
        fields
            .iter()
            .map(|(name, value, _)| format!("\"{name}\":{value}"))
            .collect::<Vec<_>>()
            .join(",")
    );

    // Deserializing: the first bad field in the text is the error; then a missing `cmd`.
    let (mut v, mut cmd, mut link, mut reset) = (None, None, None, false);
    let mut seen = Vec::new();
    for (name, _, f) in &fields {
        let malformed = |what: String| Err(format!("malformed request: {what}"));
        if *name == "x" {
            return (text, malformed("unknown field `x`".into()));
        }
        if seen.contains(name) {
            return (text, malformed(format!("duplicate field `{name}`")));
        }
        seen.push(*name);
        match *f {
            Field::V(n) => v = n,
            Field::Cmd(c) => cmd = Some(c),
            Field::Link(l) => link = l.map(String::from),
            Field::Reset(r) => reset = r,
            Field::Invalid => return (text, malformed("invalid ".into())),
        }
    }
    let Some(cmd) = cmd else {
        return (text, Err("malformed request: missing field `cmd`".into()));
    };
    // Checking: version, then the command and its link, then who may run it.
    if let Some(v) = v.filter(|&v| v != 1) {
        return (
            text,
            Err(format!(
                "unsupported protocol version {v}, this daemon speaks 1"
            )),
        );
    }
    let needs_link = || Err(format!("\"{cmd}\" needs \"link\""));
    let parsed = match cmd {
        "status" => Parsed::Status,
        "metrics" => Parsed::Metrics,
        "watch" => Parsed::Watch,
        "reload" => Parsed::Command(Command::Reload),
        "drain" => match link {
            Some(link) => Parsed::Command(Command::Drain { link, reset }),
            None => return (text, needs_link()),
        },
        "undrain" => match link {
            Some(link) => Parsed::Command(Command::Undrain { link }),
            None => return (text, needs_link()),
        },
        other => return (text, Err(format!("unknown command \"{other}\""))),
    };
    if matches!(parsed, Parsed::Command(_)) && !root {
        return (
            text,
            Err(format!(
                "\"{cmd}\" changes state and is only allowed for root"
            )),
        );
    }
    (text, Ok(parsed))
}

/// What an error from `parse` may say: each names what is wrong.
fn is_known_error(e: &str) -> bool {
    e.starts_with("malformed request: ")
        || e.starts_with("unsupported protocol version ")
        || e.starts_with("unknown command ")
        || e.ends_with(" needs \"link\"")
        || e.ends_with(" changes state and is only allowed for root")
}

/// Random request objects get exactly the outcome worked out for them; a non-root peer never
/// gets a mutation through; every accepted request round-trips through what `uplinkctl` sends.
#[test]
fn random_requests_get_the_expected_outcome() {
    let mut x = 0x5eed_u64;
    let (mut accepted, mut refused_to_non_root) = (0, 0);
    for i in 0..20_000 {
        let root = i % 2 == 0;
        let (text, want) = generated(&mut x, root);
        let got = parse(&text, root);
        match (&got, &want) {
            // serde_json's own words follow: which field, what was expected, where.
            (Err(e), Err(w)) if w.starts_with("malformed request: ") => {
                assert!(e.starts_with(w.as_str()), "{text}: {e:?}, want {w:?}...")
            }
            _ => assert_eq!(got, want, "{text} (root: {root})"),
        }
        if let Err(e) = &got {
            assert!(is_known_error(e), "{text}: {e}");
            refused_to_non_root += usize::from(e.ends_with("only allowed for root"));
        }
        if let Ok(p) = got {
            assert!(root || !matches!(p, Parsed::Command(_)), "{text}");
            let again = request_for(&p).to_string();
            assert_eq!(parse(&again, true), Ok(p), "{text} -> {again}");
            accepted += 1;
        }
    }
    // The generator reaches every outcome often enough to mean something.
    assert!(accepted > 1_000, "{accepted}");
    assert!(refused_to_non_root > 500, "{refused_to_non_root}");
}

/// Random bytes and truncated requests: always an error that names the problem, never a
/// mutation for a non-root peer, and whatever is accepted round-trips.
#[test]
fn random_input_is_refused_with_a_reason() {
    let full = r#"{"v":1,"cmd":"drain","link":"lte","reset":true}"#;
    for seed in 0..5_000u64 {
        let bytes = junk(seed, (seed % 200) as usize);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            for root in [false, true] {
                match parse(text, root) {
                    Err(e) => assert!(is_known_error(&e), "{text:?}: {e}"),
                    Ok(p) => {
                        assert!(root || !matches!(p, Parsed::Command(_)), "{text:?}");
                        assert_eq!(parse(&request_for(&p).to_string(), true), Ok(p));
                    }
                }
            }
        }
        // Every proper prefix of a request is cut-off JSON.
        let cut = &full[..(seed as usize % full.len())];
        let e = parse(cut, true).unwrap_err();
        assert!(
            e.starts_with("malformed request: EOF while parsing"),
            "{cut:?}: {e}"
        );
    }
    assert_eq!(
        parse(full, true),
        Ok(Parsed::Command(Command::Drain {
            link: "lte".into(),
            reset: true
        }))
    );
}
