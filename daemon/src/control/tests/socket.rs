//! The socket itself: serving, abuse, watches, slots and deadlines.

#![allow(clippy::unwrap_used)]

use super::super::*;
use super::parse::junk;

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
            history: Default::default(),
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

/// Send raw bytes on a connection and read the reply line as JSON.
async fn exchange(
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    w: &mut tokio::net::unix::OwnedWriteHalf,
    bytes: &[u8],
) -> serde_json::Value {
    w.write_all(bytes).await.unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// The errors of the socket itself (not UTF-8, too long) and the supervisor's are passed on
/// word for word, and the conversation goes on after each except a line too long; a mutation
/// reaches the supervisor only from a root peer.
#[tokio::test]
async fn socket_errors_name_the_problem() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("uplinkd-ctl-err-{}", std::process::id()));
    let path = dir.join("control.sock");
    let listener = bind(&path, None).unwrap();
    let (shared, mut commands) = shared();
    let server = tokio::spawn(serve(listener, shared));
    let (r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
    let mut r = BufReader::new(r);

    let refused = |e: &str| serde_json::json!({"ok": false, "error": e});
    assert_eq!(
        exchange(&mut r, &mut w, b"{\"cmd\":\"st\xffatus\"}\n").await,
        refused("request is not UTF-8")
    );
    assert_eq!(
        exchange(&mut r, &mut w, b"\n").await,
        refused("malformed request: EOF while parsing a value at line 1 column 0")
    );
    assert_eq!(
        exchange(&mut r, &mut w, b"{\"cmd\":\"nope\"}\n").await,
        refused(r#"unknown command "nope""#)
    );
    // The longest line accepted: MAX_REQUEST bytes with its newline.
    let mut longest = br#"{"cmd":"status"}"#.to_vec();
    longest.resize(MAX_REQUEST - 1, b' ');
    longest.push(b'\n');
    let reply = exchange(&mut r, &mut w, &longest).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["status"]["steer_to"], "fiber", "{reply}");

    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if root {
        let supervisor = tokio::spawn(async move {
            for want in [
                Command::Drain {
                    link: "lte".into(),
                    reset: true,
                },
                Command::Undrain {
                    link: "nope".into(),
                },
            ] {
                let (got, reply) = commands.recv().await.unwrap();
                assert_eq!(got, want);
                let answer = match got {
                    Command::Drain { link, .. } => Ok(format!("{link} drained")),
                    _ => Err(r#"no link named "nope""#.to_string()),
                };
                reply.send(answer).unwrap();
            }
        });
        assert_eq!(
            exchange(
                &mut r,
                &mut w,
                b"{\"cmd\":\"drain\",\"link\":\"lte\",\"reset\":true}\n"
            )
            .await,
            serde_json::json!({"ok": true, "message": "lte drained"})
        );
        assert_eq!(
            exchange(&mut r, &mut w, b"{\"cmd\":\"undrain\",\"link\":\"nope\"}\n").await,
            refused(r#"no link named "nope""#)
        );
        supervisor.await.unwrap();
    } else {
        assert_eq!(
            exchange(&mut r, &mut w, b"{\"cmd\":\"drain\",\"link\":\"lte\"}\n").await,
            refused(r#""drain" changes state and is only allowed for root"#)
        );
        assert!(commands.try_recv().is_err());
    }

    // One byte more: refused, and the connection ends.
    let mut too_long = longest.clone();
    too_long.insert(0, b' ');
    assert_eq!(
        exchange(&mut r, &mut w, &too_long).await,
        refused(&format!("request longer than {MAX_REQUEST} bytes"))
    );
    let mut rest = String::new();
    assert_eq!(r.read_line(&mut rest).await.unwrap(), 0, "{rest:?}");
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

/// Root has a pool of its own; the others share one, at most a quarter of it each; what is
/// given back can be taken again.
#[test]
fn slots_keep_root_apart_and_share_the_rest() {
    let mut slots = Slots::default();
    for _ in 0..PER_USER_CLIENTS {
        slots.take(1000).unwrap();
    }
    assert_eq!(
        slots.take(1000),
        Err("too many connections: uid 1000 has 16 open".into())
    );
    for uid in 1001..1004 {
        for _ in 0..PER_USER_CLIENTS {
            slots.take(uid).unwrap();
        }
    }
    assert_eq!(
        slots.take(1004),
        Err("too many connections: users other than root have 64 open".into())
    );
    for _ in 0..ROOT_CLIENTS {
        slots.take(0).unwrap();
    }
    assert_eq!(
        slots.take(0),
        Err("too many connections: root has 64 open".into())
    );
    slots.give_back(1002);
    slots.give_back(0);
    assert_eq!(slots.take(1004), Ok(()));
    assert!(slots.take(1005).is_err());
    assert_eq!(slots.take(0), Ok(()));
    for uid in [0, 1000, 1001, 1002, 1003, 1004] {
        while slots.held.contains_key(&uid) {
            slots.give_back(uid);
        }
    }
    assert_eq!((slots.held.len(), slots.others), (0, 0));
}

/// What the supervisor receives.
type Commands = mpsc::Receiver<(Command, oneshot::Sender<CommandReply>)>;

/// A server on a fresh socket whose peers get their uid from `uid_of`; its directory (to be
/// removed at the end), the commands it passes on, and its task.
fn start(
    name: &str,
    uid_of: impl Fn(&UnixStream) -> u32 + Send + 'static,
) -> (std::path::PathBuf, Commands, tokio::task::JoinHandle<()>) {
    let dir = std::env::temp_dir().join(format!("uplinkd-ctl-{name}-{}", std::process::id()));
    let listener = bind(&dir.join("control.sock"), None).unwrap();
    let (shared, commands) = shared();
    let server = tokio::spawn(serve_with(listener, shared, uid_of));
    (dir, commands, server)
}

/// Ask for the status on a new connection: the reply, or `None` when none came within `limit`.
async fn status_within(path: &Path, limit: Duration) -> Option<Reply> {
    let ask = async {
        let mut c = Connection::open(path).await.ok()?;
        c.request(&serde_json::json!({"cmd":"status"})).await.ok()
    };
    tokio::time::timeout(limit, ask).await.ok().flatten()
}

/// A watch whose client went away gives its slot back at once, without waiting for an event
/// to fail to reach it: with every slot taken by watches whose clients then leave, the next
/// client is served.
#[tokio::test]
async fn a_watch_whose_client_left_frees_its_slot_without_an_event() {
    let (dir, _commands, server) = start("left", |_| 0);
    let path = dir.join("control.sock");
    let mut watches = Vec::new();
    for _ in 0..ROOT_CLIENTS {
        let mut c = Connection::open(&path).await.unwrap();
        let r = c
            .request(&serde_json::json!({"cmd":"watch"}))
            .await
            .unwrap();
        assert_eq!(r.message.as_deref(), Some("watching"), "{:?}", r.error);
        watches.push(c);
    }
    // Every slot is taken: one more is refused at once, and told why.
    let r = status_within(&path, Duration::from_secs(3)).await.unwrap();
    assert_eq!(
        r.error.as_deref(),
        Some("too many connections: root has 64 open")
    );
    drop(watches);
    let r = status_within(&path, Duration::from_secs(3)).await;
    assert!(r.is_some_and(|r| r.ok), "no status after the watches left");
    server.abort();
    std::fs::remove_dir_all(dir).unwrap();
}

/// An unprivileged peer that opens idle connections, half-sent requests (slowloris), watches
/// that go away, and floods of requests whose replies it never reads, cannot keep root from
/// reading the status and draining a link.
#[tokio::test]
async fn unprivileged_clients_cannot_lock_out_root() {
    // The first connections come from uid 65534 (nobody), the ones after them from root:
    // connections are accepted in the order they were made.
    const HOSTILE: usize = 200 + 70 + 64 + 64;
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let uid_of = move |_: &UnixStream| {
        let n = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n < HOSTILE {
            65534
        } else {
            0
        }
    };
    let (dir, mut commands, server) = start("lockout", uid_of);
    let path = dir.join("control.sock");
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(UnixStream::connect(&path).await.unwrap());
    }
    for _ in 0..70 {
        // (Writes to a connection refused already fail.)
        let mut s = UnixStream::connect(&path).await.unwrap();
        let _ = s.write_all(br#"{"cmd":"sta"#).await;
        held.push(s);
    }
    for _ in 0..64 {
        let mut s = UnixStream::connect(&path).await.unwrap();
        let _ = s.write_all(b"{\"cmd\":\"watch\"}\n").await;
        drop(s);
    }
    let mut floods = Vec::new();
    for _ in 0..64 {
        let s = UnixStream::connect(&path).await.unwrap();
        floods.push(tokio::spawn(async move {
            let (_r, mut w) = s.into_split();
            let line = b"{\"cmd\":\"status\"}\n".repeat(1024);
            while w.write_all(&line).await.is_ok() {}
            // Keeps the read half (unread) until the server gives up on this client.
            drop(_r);
        }));
    }

    let started = tokio::time::Instant::now();
    let r = status_within(&path, Duration::from_secs(2)).await;
    assert!(r.is_some_and(|r| r.ok), "root got no status");
    let status_took = started.elapsed();
    let supervisor = tokio::spawn(async move {
        let (got, reply) = commands.recv().await.unwrap();
        assert_eq!(
            got,
            Command::Drain {
                link: "wan2".into(),
                reset: false
            }
        );
        reply.send(Ok("wan2 drained".into())).unwrap();
    });
    let drain = async {
        let mut c = Connection::open(&path).await.unwrap();
        c.request(&serde_json::json!({"cmd":"drain","link":"wan2"}))
            .await
            .unwrap()
    };
    let r = tokio::time::timeout(Duration::from_secs(2), drain)
        .await
        .expect("root's drain got no answer");
    assert_eq!(r.message.as_deref(), Some("wan2 drained"), "{:?}", r.error);
    supervisor.await.unwrap();
    eprintln!(
        "under attack: root's status took {status_took:?}, status and drain {:?}",
        started.elapsed()
    );

    // The idle connections beyond the user's share were refused at once, not left waiting.
    let mut refused = 0;
    for mut s in held.drain(..200) {
        let mut line = String::new();
        let mut r = BufReader::new(&mut s);
        if tokio::time::timeout(Duration::from_millis(100), r.read_line(&mut line))
            .await
            .is_ok()
        {
            refused += usize::from(line.contains("too many connections: uid 65534 has 16 open"));
        }
    }
    assert_eq!(refused, 200 - PER_USER_CLIENTS);
    for f in floods {
        f.abort();
    }
    server.abort();
    std::fs::remove_dir_all(dir).unwrap();
}

/// A client that sends requests but never reads the replies, and one that never finishes its
/// request line, are dropped after a short deadline instead of being waited for.
#[tokio::test]
async fn clients_that_stall_are_dropped() {
    let (dir, _commands, server) = start("stall", |_| 0);
    let path = dir.join("control.sock");
    let started = tokio::time::Instant::now();
    // Writes fail once the server has closed the connection.
    let (_r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
    let line = b"{\"cmd\":\"status\"}\n".repeat(1024);
    let flood = async { while w.write_all(&line).await.is_ok() {} };
    tokio::time::timeout(Duration::from_secs(4), flood)
        .await
        .expect("a client that does not read is still served");
    eprintln!("non-reading client dropped after {:?}", started.elapsed());

    let started = tokio::time::Instant::now();
    let mut s = UnixStream::connect(&path).await.unwrap();
    s.write_all(br#"{"cmd":"sta"#).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut rest))
        .await
        .expect("a half-sent request is still waited for");
    assert_eq!(n.unwrap(), 0);
    eprintln!("half-sent request dropped after {:?}", started.elapsed());
    server.abort();
    std::fs::remove_dir_all(dir).unwrap();
}
