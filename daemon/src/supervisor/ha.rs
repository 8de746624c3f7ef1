//! With `[ha]`: keepalived's track files, which tell it how healthy this router's links are.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::Ha;

/// The UDP port on the sync link where each uplinkd of a pair tells the other its marks
/// fingerprint (conntrackd's is 3780).
pub const PEER_PORT: u16 = 3781;
/// A fingerprint older than this is no longer the peer's word.
const PEER_STALE: Duration = Duration::from_secs(10);

/// The peer's uplinkd, over the sync link: both routers must map marks to links alike
/// (committed flows route by their replicated mark), so each says its fingerprint every few
/// seconds and reports the peer's when it differs.
#[derive(Debug)]
pub struct Peer {
    sock: tokio::net::UdpSocket,
    to: SocketAddrV4,
    /// The peer's fingerprint and when it was last heard.
    heard: Option<(String, Instant)>,
}

impl Peer {
    /// Listen on `iface` (bound to the device: nothing arrives from elsewhere) for `peer`.
    pub fn open(iface: &str, peer: Ipv4Addr) -> io::Result<Peer> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.bind_device(Some(iface.as_bytes()))?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PEER_PORT)).into())?;
        Ok(Peer {
            sock: tokio::net::UdpSocket::from_std(s.into())?,
            to: SocketAddrV4::new(peer, PEER_PORT),
            heard: None,
        })
    }

    /// Tell the peer our fingerprint (lost datagrams do not matter: it is said again).
    pub fn say(&self, marks: &str) {
        let _ = self.sock.try_send_to(
            format!("uplinkd marks {marks}\n").as_bytes(),
            self.to.into(),
        );
    }

    /// The next datagram from the peer's port (others are dropped): its length.
    pub async fn recv(&self, buf: &mut [u8]) -> usize {
        loop {
            match self.sock.recv_from(buf).await {
                Ok((n, from)) if from == SocketAddr::V4(self.to) => return n,
                Ok(_) => {}
                // Nothing a datagram socket reports here is worth more than a pause.
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// A datagram from the peer: its fingerprint noted, a mismatch with `own` logged when it
    /// starts. Returns whether what the status shows changed. Anything else is ignored.
    pub fn heard(&mut self, payload: &[u8], own: &str, now: Instant) -> bool {
        let Some(marks) = parse(payload) else {
            return false;
        };
        let before = self.view(now);
        if before.as_deref() != Some(marks) {
            if marks == own {
                info!(
                    "the peer's uplinkd ({}) maps marks to links as this one does ({own})",
                    self.to.ip()
                );
            } else {
                warn!(
                    "the peer's uplinkd ({}) maps marks to links differently: its fingerprint is \
                     {marks}, ours {own}; replicated flows would leave by the wrong link after a \
                     takeover (give both routers the same links and [dataplane] mark_mask)",
                    self.to.ip()
                );
            }
        }
        self.heard = Some((marks.to_owned(), now));
        before.as_deref() != Some(marks)
    }

    /// The peer's fingerprint, if heard lately.
    pub fn view(&self, now: Instant) -> Option<String> {
        self.heard
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) < PEER_STALE)
            .map(|(m, _)| m.clone())
    }
}

/// `uplinkd marks XXXXXXXX\n` → the fingerprint.
fn parse(payload: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(payload).ok()?;
    let m = s.strip_prefix("uplinkd marks ")?.strip_suffix('\n')?;
    (m.len() == 8 && m.bytes().all(|b| b.is_ascii_hexdigit())).then_some(m)
}

/// What the track files say now, and the last error writing them (said once).
#[derive(Debug, Default)]
pub struct Track {
    written: Option<(u32, bool)>,
    error: Option<String>,
}

impl Track {
    /// Write `(weight, fault)` if it is not what the files say already. A failed write is
    /// retried the next time and logged when its error changes.
    pub fn update(&mut self, ha: &Ha, now: (u32, bool)) {
        if self.written == Some(now) {
            return;
        }
        let (weight, fault) = now;
        let r = replace(&ha.weight_file, weight)
            .and_then(|()| replace(&ha.fault_file, u32::from(fault)));
        match r {
            Ok(()) => {
                info!(
                    "told keepalived: {weight} usable link{}{}",
                    if weight == 1 { "" } else { "s" },
                    if fault { ", fault" } else { "" }
                );
                self.written = Some(now);
                self.error = None;
            }
            Err(e) => {
                let e = format!("cannot write keepalived's track files: {e}");
                if self.error.as_ref() != Some(&e) {
                    warn!("{e}");
                    self.error = Some(e);
                }
            }
        }
    }

    /// uplinkd stops: fault, so the peer takes over within keepalived's skew time.
    pub fn stop(&mut self, ha: &Ha) {
        let weight = self.written.map_or(0, |(w, _)| w);
        self.written = None;
        self.update(ha, (weight, true));
    }
}

/// Say fault (1) in `ha.fault_file`, whatever uplinkd said last: `uplinkd --ha-fault`, which
/// the unit runs after uplinkd ended however it did (a kill or a crash cannot write it).
pub fn fault(ha: &Ha) -> io::Result<()> {
    replace(&ha.fault_file, 1)
}

/// Replace `path` by a file holding `value`: written beside it, then renamed over it, so
/// keepalived (inotify) never reads a half-written file.
fn replace(path: &Path, value: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("not a file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, format!("{value}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl<D: crate::dataplane::Dataplane, P: super::Probes> super::Supervisor<D, P> {
    /// With a sync link: listen for the peer's uplinkd on it. Without (or if the link cannot
    /// be bound) the pair works, unchecked.
    pub(super) fn open_peer(&mut self) {
        let Some((iface, peer)) = self
            .engine
            .config()
            .ha
            .as_ref()
            .and_then(|h| h.sync.clone())
        else {
            return;
        };
        match Peer::open(&iface, peer) {
            Ok(p) => self.peer = Some(p),
            Err(e) => warn!(
                "cannot listen for the peer's uplinkd on {iface} port {}: {e}; its marks go \
                 unchecked",
                PEER_PORT
            ),
        }
    }

    /// The fingerprint of this router's marks and tables.
    pub(super) fn marks(&self) -> String {
        let c = self.engine.config();
        crate::config::fence::fingerprint(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A pair whose track files are in `dir`.
    fn ha(dir: &Path) -> Ha {
        let text = format!(
            "[[link]]\nname = \"wan1\"\ninterface = \"wan1\"\ntargets = [\"203.0.113.10\"]\n\
             [lan]\ninterfaces = [\"lan0\"]\n[ha]\nlan_vip = \"10.98.0.1\"\n\
             weight_file = {:?}\nfault_file = {:?}\n",
            dir.join("vrrp-weight"),
            dir.join("vrrp-fault")
        );
        crate::config::parse(&text).unwrap().ha.unwrap()
    }

    #[test]
    fn the_files_are_replaced_only_when_their_values_change_and_say_fault_at_stop() {
        let dir = std::env::temp_dir().join(format!("uplinkd-track-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ha = ha(&dir);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let mut t = Track::default();
        t.update(&ha, (2, false));
        assert_eq!(
            (read(&ha.weight_file), read(&ha.fault_file)),
            ("2\n".into(), "0\n".into())
        );
        // Unchanged: not written again (an outside edit stays until the value changes).
        std::fs::write(&ha.weight_file, "7\n").unwrap();
        t.update(&ha, (2, false));
        assert_eq!(read(&ha.weight_file), "7\n");
        t.update(&ha, (0, true));
        assert_eq!(
            (read(&ha.weight_file), read(&ha.fault_file)),
            ("0\n".into(), "1\n".into())
        );
        t.update(&ha, (1, false));
        t.stop(&ha);
        assert_eq!(
            (read(&ha.weight_file), read(&ha.fault_file)),
            ("1\n".into(), "1\n".into())
        );
        // Only the two files: the temporary ones were renamed.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_peers_fingerprint_is_noted_and_only_a_well_formed_one_counts() {
        assert_eq!(parse(b"uplinkd marks f7e08855\n"), Some("f7e08855"));
        for bad in [
            &b"uplinkd marks f7e08855"[..],
            b"uplinkd marks f7e0885\n",
            b"uplinkd marks zzzzzzzz\n",
            b"\xff",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn only_the_peers_port_is_heard() {
        let p = Peer {
            sock: tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            heard: None,
        };
        let at = p.sock.local_addr().unwrap();
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = Peer {
            to: match peer.local_addr().unwrap() {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => unreachable!(),
            },
            ..p
        };
        stranger.send_to(b"uplinkd marks 11111111\n", at).unwrap();
        peer.send_to(b"uplinkd marks 22222222\n", at).unwrap();
        let mut buf = [0; 64];
        let n = p.recv(&mut buf).await;
        assert_eq!(&buf[..n], b"uplinkd marks 22222222\n");
    }

    #[tokio::test]
    async fn a_peer_heard_lately_is_shown_and_forgotten_when_silent() {
        let mut p = Peer {
            sock: tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, PEER_PORT),
            heard: None,
        };
        let t0 = Instant::now();
        assert_eq!(p.view(t0), None);
        assert!(p.heard(b"uplinkd marks 0000abcd\n", "f7e08855", t0));
        assert_eq!(p.view(t0).as_deref(), Some("0000abcd"));
        // Heard again, the same: nothing changed for the status.
        assert!(!p.heard(
            b"uplinkd marks 0000abcd\n",
            "f7e08855",
            t0 + Duration::from_secs(2)
        ));
        assert!(!p.heard(b"garbage", "f7e08855", t0 + Duration::from_secs(3)));
        assert_eq!(
            p.view(t0 + Duration::from_secs(11)).as_deref(),
            Some("0000abcd")
        );
        assert_eq!(p.view(t0 + Duration::from_secs(12)), None);
    }

    #[test]
    fn a_missing_directory_is_an_error_retried_later() {
        let dir =
            std::env::temp_dir().join(format!("uplinkd-track-missing-{}", std::process::id()));
        let ha = ha(&dir);
        let mut t = Track::default();
        t.update(&ha, (1, false));
        assert!(t.error.as_ref().unwrap().contains("vrrp-weight"));
        std::fs::create_dir_all(&dir).unwrap();
        t.update(&ha, (1, false));
        assert_eq!(std::fs::read_to_string(&ha.fault_file).unwrap(), "0\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
