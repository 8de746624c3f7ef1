//! Probe targets as written in the configuration, and the DNS wire format the DNS probe needs.
//!
//! | written                                  | probe                                              |
//! |------------------------------------------|----------------------------------------------------|
//! | `203.0.113.10`, `2001:db8::10`           | ICMP / ICMPv6 echo                                 |
//! | `icmp://203.0.113.10`                    | the same                                           |
//! | `tcp://203.0.113.10:443`                 | TCP connect; a refused connection fails the probe  |
//! | `http://203.0.113.10:8080/health`        | HTTP GET; status 200-399 passes                    |
//! | `https://203.0.113.10/health`            | TLS handshake, certificate verified, then HTTP GET |
//! | `dns://203.0.113.53/example.com`         | DNS A query (port 53 unless given); needs an answer|
//!
//! Addresses are literals: a probe must not depend on name resolution through the link it tests.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Icmp(IpAddr),
    Tcp(SocketAddr),
    Http {
        addr: SocketAddr,
        host: String,
        path: String,
    },
    Dns {
        server: SocketAddr,
        name: String,
    },
    /// The certificate is verified for `server_name` (a DNS name; `None`: the address, which
    /// the certificate must then name) against `ca_file`'s certificates (PEM; `None`: the
    /// system's store), and the Host header names the same.
    Https {
        addr: SocketAddr,
        host: String,
        path: String,
        server_name: Option<String>,
        ca_file: Option<std::path::PathBuf>,
    },
}

impl Target {
    pub fn addr(&self) -> IpAddr {
        match self {
            Target::Icmp(a) => *a,
            Target::Tcp(s)
            | Target::Http { addr: s, .. }
            | Target::Https { addr: s, .. }
            | Target::Dns { server: s, .. } => s.ip(),
        }
    }
}

fn socket_addr(s: &str, default_port: Option<u16>) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    match (ip.parse::<IpAddr>(), default_port) {
        (Ok(ip), Some(port)) => Ok(SocketAddr::new(ip, port)),
        (Ok(_), None) => Err(format!("{s:?} needs a port, like 203.0.113.10:443")),
        (Err(_), _) => Err(format!(
            "{s:?} is not an IP address (host names are not resolved; use an address literal)"
        )),
    }
}

/// Whether `name` is a DNS name as a query carries it: 1-253 bytes of labels of 1-63 letters,
/// digits and hyphens (a final dot allowed).
pub fn dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether a probe to `target` could ever say something about a link: a loopback address
/// answers from the router itself, whatever the link does; port 0 cannot be connected to.
fn usable(target: &Target) -> Result<(), String> {
    // (An IPv4-mapped address is the IPv4 address.)
    let ip = target.addr().to_canonical();
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        return Err(format!("{ip} is not a unicast address"));
    }
    if ip.is_loopback() {
        return Err(format!(
            "{ip} is a loopback address: the router itself would answer, not the link"
        ));
    }
    match target {
        Target::Icmp(_) => Ok(()),
        Target::Tcp(s)
        | Target::Http { addr: s, .. }
        | Target::Https { addr: s, .. }
        | Target::Dns { server: s, .. } => {
            if s.port() == 0 {
                Err(format!("{target}: port 0 cannot be probed"))
            } else {
                Ok(())
            }
        }
    }
}

/// The path of an HTTP probe goes into the request line as written: only visible ASCII (RFC
/// 9112: no spaces or control characters; anything else percent-encoded).
fn http_path(path: &str) -> Result<(), String> {
    if path.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!(
            "HTTP path {path:?} must be visible ASCII without spaces (percent-encode the rest)"
        ))
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s.split_once("://").unwrap_or(("icmp", s));
        let t = match scheme {
            "icmp" => Target::Icmp(
                rest.parse()
                    .map_err(|_| format!("{rest:?} is not an IP address (host names are not resolved; use an address literal)"))?,
            ),
            "tcp" => Target::Tcp(socket_addr(rest, None)?),
            "http" | "https" => {
                let (hostport, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
                let tls = scheme == "https";
                let addr = socket_addr(hostport, Some(if tls { 443 } else { 80 }))?;
                http_path(path)?;
                let (host, path) = (hostport.to_owned(), path.to_owned());
                if tls {
                    Target::Https {
                        addr,
                        host,
                        path,
                        server_name: None,
                        ca_file: None,
                    }
                } else {
                    Target::Http { addr, host, path }
                }
            }
            "dns" => {
                let (server, name) = rest
                    .split_once('/')
                    .ok_or_else(|| format!("{s:?}: expected dns://SERVER/NAME, like dns://203.0.113.53/example.com"))?;
                if !dns_name(name) {
                    return Err(format!("{name:?} is not a valid DNS name"));
                }
                Target::Dns {
                    server: socket_addr(server, Some(53))?,
                    name: name.trim_end_matches('.').to_owned(),
                }
            }
            other => return Err(format!("unknown probe kind {other:?}: use an address, icmp://, tcp://, http://, https:// or dns://")),
        };
        usable(&t)?;
        Ok(t)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Icmp(a) => write!(f, "{a}"),
            Target::Tcp(s) => write!(f, "tcp://{s}"),
            Target::Http { host, path, .. } => write!(f, "http://{host}{path}"),
            Target::Https {
                host,
                path,
                server_name,
                ..
            } => {
                write!(f, "https://{host}{path}")?;
                match server_name {
                    Some(n) => write!(f, " (as {n})"),
                    None => Ok(()),
                }
            }
            Target::Dns { server, name } => write!(f, "dns://{server}/{name}"),
        }
    }
}

/// A recursive A query for `name` with transaction id `id`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    q
}

/// `None`: not a response to our query (wrong id); otherwise whether it answered.
pub fn dns_answer(msg: &[u8], id: u16) -> Option<Result<(), String>> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id || msg[2] & 0x80 == 0 {
        return None;
    }
    let rcode = msg[3] & 0x0f;
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    Some(match (rcode, answers) {
        (0, n) if n > 0 => Ok(()),
        (0, _) => Err("DNS answer is empty".into()),
        (r, _) => Err(format!("DNS rcode {r}")),
    })
}

/// The status code of an HTTP response that starts with `buf`: its first line must be
/// `HTTP/x.y NNN[ reason]` (RFC 9112: three digits); anything else is not an HTTP response.
pub fn http_status(buf: &[u8]) -> Option<u16> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let rest = line.strip_prefix(b"HTTP/")?;
    let sp = rest.iter().position(|&b| b == b' ')?;
    let code = rest.get(sp + 1..sp + 4)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(sp + 4).is_some_and(|&b| b != b' ') {
        return None;
    }
    Some(code.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_every_kind() {
        let t = |s: &str| s.parse::<Target>();
        assert_eq!(
            t("203.0.113.10"),
            Ok(Target::Icmp("203.0.113.10".parse().unwrap()))
        );
        assert_eq!(
            t("icmp://2001:db8::10"),
            Ok(Target::Icmp("2001:db8::10".parse().unwrap()))
        );
        assert_eq!(
            t("tcp://203.0.113.10:443"),
            Ok(Target::Tcp("203.0.113.10:443".parse().unwrap()))
        );
        assert_eq!(
            t("tcp://[2001:db8::1]:22"),
            Ok(Target::Tcp("[2001:db8::1]:22".parse().unwrap()))
        );
        assert_eq!(
            t("http://203.0.113.10:8080/health"),
            Ok(Target::Http {
                addr: "203.0.113.10:8080".parse().unwrap(),
                host: "203.0.113.10:8080".into(),
                path: "/health".into()
            })
        );
        assert_eq!(
            t("http://203.0.113.10").unwrap().to_string(),
            "http://203.0.113.10/"
        );
        assert_eq!(
            t("https://203.0.113.10/health"),
            Ok(Target::Https {
                addr: "203.0.113.10:443".parse().unwrap(),
                host: "203.0.113.10".into(),
                path: "/health".into(),
                server_name: None,
                ca_file: None,
            })
        );
        assert_eq!(
            t("dns://203.0.113.53/example.com."),
            Ok(Target::Dns {
                server: "203.0.113.53:53".parse().unwrap(),
                name: "example.com".into()
            })
        );
    }

    #[test]
    fn refuses_what_it_cannot_probe() {
        for bad in [
            "example.com",
            "tcp://203.0.113.10",
            "http://example.com/",
            "https://example.com/",
            "https://203.0.113.10:0/",
            "dns://203.0.113.53",
            "dns://203.0.113.53/bad..name",
            "gopher://203.0.113.10",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            // Nothing answers for the link there:
            "127.0.0.1",
            "127.0.0.53",
            "::1",
            "::ffff:127.0.0.1",
            "::",
            "ff02::1",
            "tcp://203.0.113.10:0",
            "http://203.0.113.10:0/",
            "dns://203.0.113.53:0/example.com",
            // A request line cannot carry these:
            "http://203.0.113.10/a b",
            "http://203.0.113.10/a\tb",
            "http://203.0.113.10/a\r\nX: y",
            "http://203.0.113.10/\u{7f}",
            "http://203.0.113.10/é",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn dns_wire_format() {
        let q = dns_query(0xabcd, "example.com");
        assert_eq!(&q[..4], &[0xab, 0xcd, 0x01, 0x00]);
        assert_eq!(&q[12..25], b"\x07example\x03com\x00");
        let mut r = q.clone();
        r[2] |= 0x80;
        assert_eq!(
            dns_answer(&r, 0xabcd),
            Some(Err("DNS answer is empty".into()))
        );
        r[7] = 1;
        assert_eq!(dns_answer(&r, 0xabcd), Some(Ok(())));
        r[3] |= 3;
        assert_eq!(dns_answer(&r, 0xabcd), Some(Err("DNS rcode 3".into())));
        assert_eq!(dns_answer(&r, 0x1111), None);
        assert_eq!(dns_answer(&q, 0xabcd), None, "a query is not a response");
    }

    #[test]
    fn http_status_lines() {
        assert_eq!(http_status(b"HTTP/1.1 200 OK\r\nServer: x\r\n"), Some(200));
        assert_eq!(http_status(b"HTTP/1.0 404\n"), Some(404));
        assert_eq!(http_status(b"HTTP/1.1 200 OK"), None, "no end of line yet");
        assert_eq!(
            http_status(b"HTTP/1.1\r\n200 OK\r\n"),
            None,
            "the code is on the first line"
        );
        assert_eq!(http_status(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(http_status(b"HTTP/1.1 +20 OK\r\n"), None);
        assert_eq!(http_status(b"SSH-2.0-OpenSSH 200\r\n"), None);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A status line round-trips, whatever the version, reason and what follows it.
        #[test]
        fn an_http_status_line_reads_back(minor in 0u8..10, code in 100u16..1000, reason in "[ -~]{0,20}", tail in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut buf = format!("HTTP/1.{minor} {code} {reason}\r\n").into_bytes();
            buf.extend(tail);
            prop_assert_eq!(http_status(&buf), Some(code));
        }

        /// Any answer at all: a status only if its first line is an HTTP status line.
        #[test]
        fn any_bytes_give_a_status_only_from_a_status_line(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(code) = http_status(&buf) {
                prop_assert!(buf.starts_with(b"HTTP/"));
                prop_assert!((0..1000).contains(&code));
                let line = &buf[..buf.iter().position(|&b| b == b'\n').unwrap()];
                prop_assert!(line.windows(4).any(|w| w[0] == b' ' && w[1..].iter().all(u8::is_ascii_digit)));
            }
        }

        /// The query names what was asked, label by label, and only a response to it with
        /// our id and at least one answer counts; any bytes are read safely.
        #[test]
        fn dns_queries_encode_the_name_and_answers_match_the_id(
            labels in proptest::collection::vec("[a-z0-9-]{1,63}", 1..5), id: u16, other: u16,
            rcode in 0u8..16, answers: u16, junk in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let name = labels.join(".");
            let q = dns_query(id, &name);
            prop_assert_eq!(&q[..2], &id.to_be_bytes());
            let mut at = 12;
            for l in &labels {
                prop_assert_eq!(usize::from(q[at]), l.len());
                prop_assert_eq!(&q[at + 1..at + 1 + l.len()], l.as_bytes());
                at += 1 + l.len();
            }
            prop_assert_eq!(&q[at..], &[0, 0, 1, 0, 1]);
            // The response: the query with QR set, an rcode and an answer count.
            let mut r = q.clone();
            r[2] |= 0x80;
            r[3] = rcode;
            r[6..8].copy_from_slice(&answers.to_be_bytes());
            let want = match (rcode, answers) {
                (0, n) if n > 0 => Ok(()),
                (0, _) => Err("DNS answer is empty".to_owned()),
                (r, _) => Err(format!("DNS rcode {r}")),
            };
            prop_assert_eq!(dns_answer(&r, id), Some(want));
            prop_assert_eq!(dns_answer(&q, id), None, "a query is not an answer");
            if other != id {
                prop_assert_eq!(dns_answer(&r, other), None);
            }
            if dns_answer(&junk, id).is_some() {
                prop_assert!(junk.len() >= 12 && junk[..2] == id.to_be_bytes() && junk[2] & 0x80 != 0);
            }
        }
    }
}
