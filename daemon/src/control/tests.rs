#![allow(clippy::unwrap_used)]

use super::*;

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
fn bad_requests_get_errors() {
    for bad in [
        "",
        "{",
        "null",
        "[]",
        r#"{"cmd":5}"#,
        r#"{"cmd":"status","x":1}"#,
        r#"{"cmd":"format-disk"}"#,
        r#"{"v":2,"cmd":"status"}"#,
        r#"{"cmd":"drain"}"#,
    ] {
        let e = parse(bad, true).unwrap_err();
        assert!(!e.is_empty(), "{bad:?}");
    }
}

/// Deterministic pseudo-random bytes: truncated JSON, control characters, invalid UTF-8.
fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pool = b"{}[]\":,cmdstatuwrlo \\\x00\xff\xc3v1";
            pool[(x % pool.len() as u64) as usize]
        })
        .collect()
}

#[test]
fn random_input_never_panics() {
    for seed in 0..5_000 {
        let bytes = junk(seed, (seed % 200) as usize);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse(text, seed % 2 == 0);
        }
        let full = r#"{"v":1,"cmd":"drain","link":"lte","reset":true}"#;
        let _ = parse(&full[..(seed as usize % full.len())], true);
    }
}

fn shared() -> (
    Shared,
    mpsc::Receiver<(Command, oneshot::Sender<CommandReply>)>,
) {
    let (_, status) = watch::channel(Status {
        version: 1,
        steer_to: Some("fiber".into()),
        ..Default::default()
    });
    let (events, _) = broadcast::channel(16);
    let (commands, rx) = mpsc::channel(4);
    (
        Shared {
            status,
            events,
            commands,
        },
        rx,
    )
}

#[tokio::test]
async fn socket_serves_many_requests_and_survives_abuse() {
    let dir = std::env::temp_dir().join(format!("uplinkd-ctl-{}", std::process::id()));
    let path = dir.join("control.sock");
    let listener = bind(&path, None).unwrap();
    let (shared, _commands) = shared();
    let server = tokio::spawn(serve(listener, shared));

    let mut c = Connection::open(&path).await.unwrap();
    for _ in 0..3 {
        let r = c
            .request(&serde_json::json!({"cmd":"status"}))
            .await
            .unwrap();
        assert_eq!(r.status.unwrap().steer_to.as_deref(), Some("fiber"));
    }
    let r = c
        .request(&serde_json::json!({"cmd":"metrics"}))
        .await
        .unwrap();
    assert!(r.metrics.unwrap().contains("uplinkd_steering_share"));

    // A huge line gets an error and the connection is closed; the daemon keeps answering.
    let mut s = UnixStream::connect(&path).await.unwrap();
    s.write_all(&vec![b'x'; MAX_REQUEST * 4]).await.unwrap();
    s.write_all(b"\n").await.unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.unwrap();
    assert!(line.contains("longer than"), "{line}");

    // Random garbage on many connections at once: every line gets an error reply.
    let mut tasks = Vec::new();
    for seed in 0..32u64 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = UnixStream::connect(&path).await.unwrap();
            let mut bytes = junk(seed, 300);
            bytes.retain(|b| *b != b'\n');
            bytes.push(b'\n');
            s.write_all(&bytes).await.unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).await.unwrap();
            assert!(line.contains(r#""ok":false"#), "{line}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = Connection::open(&path)
        .await
        .unwrap()
        .request(&serde_json::json!({"cmd":"status"}))
        .await
        .unwrap();
    assert!(r.ok);
    server.abort();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn watch_streams_events() {
    let dir = std::env::temp_dir().join(format!("uplinkd-ctl-watch-{}", std::process::id()));
    let path = dir.join("control.sock");
    let listener = bind(&path, None).unwrap();
    let (shared, _commands) = shared();
    let events = shared.events.clone();
    let server = tokio::spawn(serve(listener, shared));
    let mut c = Connection::open(&path).await.unwrap();
    let r = c
        .request(&serde_json::json!({"cmd":"watch"}))
        .await
        .unwrap();
    assert_eq!(r.message.as_deref(), Some("watching"));
    // The subscription exists once the reply is sent.
    let e = crate::control::Event::Undrain {
        link: "fiber".into(),
    };
    events.send(e.clone()).unwrap();
    let line = c.line().await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        serde_json::from_value::<crate::control::Event>(v["event"].clone()).unwrap(),
        e
    );
    server.abort();
    std::fs::remove_dir_all(dir).unwrap();
}
