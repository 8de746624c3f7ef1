//! Probes that leave through one WAN only: ICMP/ICMPv6 echo, TCP connect, HTTP(S) GET and DNS.
//!
//! Every probe socket is bound to the WAN's device (SO_BINDTODEVICE) *and* carries the WAN's
//! mark (SO_MARK). The device binding alone is not enough: with no route for that device in the
//! main table the kernel would ARP for the target on-link; the mark sends the lookup to the WAN's
//! own routing table, whose default route points at the WAN's gateway.

mod icmp;
mod target;
pub mod tls;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

pub use icmp::{checksum, IcmpSocket, Outcome};
pub use target::{dns_name, Target};

/// Why a probe got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("ICMP error type {icmp_type} code {code} from {from}")]
    IcmpError {
        icmp_type: u8,
        code: u8,
        from: IpAddr,
    },
    /// The target answered, but not as expected (connection refused, HTTP status, DNS error).
    #[error("rejected: {0}")]
    Rejected(String),
    /// An HTTPS server's certificate did not verify (unknown issuer, wrong name, expired).
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("cannot send: {0}")]
    Send(#[source] io::Error),
    #[error("{0}")]
    Other(String),
}

/// Which WAN probes leave through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Shared: every probe's task names it, and a copy per probe was an allocation per probe.
    pub interface: std::sync::Arc<str>,
    pub mark: u32,
}

/// A non-blocking socket bound to the WAN's device and carrying its mark. Needs CAP_NET_RAW (or
/// CAP_NET_ADMIN) for SO_MARK and SO_BINDTODEVICE.
pub fn bound_socket(domain: Domain, ty: Type, proto: Protocol, b: &Binding) -> io::Result<Socket> {
    let socket = Socket::new(domain, ty, Some(proto))?;
    socket.set_nonblocking(true)?;
    socket.bind_device(Some(b.interface.as_bytes()))?;
    socket.set_mark(b.mark)?;
    Ok(socket)
}

/// The probes of one link that are transactions: TCP connect, HTTP(S) GET, DNS query, each on
/// a socket of its own. HTTPS probes share a TLS client per CA file, read when the prober is
/// made. (ICMP echo goes through the link's [`IcmpSocket`].)
pub struct Prober {
    binding: Binding,
    tls: HashMap<Option<PathBuf>, Result<Arc<rustls::ClientConfig>, String>>,
}

impl Prober {
    /// Reads the CA files of `targets`' HTTPS probes (one that cannot be read fails that
    /// target's probes, saying why).
    pub fn new(binding: Binding, targets: &[Target]) -> Self {
        let mut tls = HashMap::new();
        for t in targets {
            if let Target::Https { ca_file, .. } = t {
                tls.entry(ca_file.clone())
                    .or_insert_with(|| tls::client_config(ca_file.as_deref()));
            }
        }
        Prober { binding, tls }
    }

    /// One probe of `target`, answered within `timeout` or failed.
    pub async fn probe(&self, target: &Target, timeout: Duration) -> Result<Duration, ProbeError> {
        let start = Instant::now();
        match tokio::time::timeout(timeout, self.transaction(target)).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProbeError::Timeout(timeout)),
        }
    }

    async fn transaction(&self, target: &Target) -> Result<(), ProbeError> {
        match target {
            Target::Icmp(_) => Err(ProbeError::Other("ICMP echo is no transaction".into())),
            Target::Tcp(addr) => self.connect(*addr).await.map(drop),
            Target::Http { addr, host, path } => {
                let s = self.connect(*addr).await?;
                http_get(s, host, path).await
            }
            Target::Https {
                addr,
                host,
                path,
                server_name,
                ca_file,
            } => {
                let config = match self.tls.get(ca_file) {
                    Some(Ok(c)) => c.clone(),
                    Some(Err(e)) => return Err(ProbeError::Certificate(e.clone())),
                    None => return Err(ProbeError::Other("TLS not set up".into())),
                };
                let (name, host) = match server_name {
                    Some(n) => (
                        rustls::pki_types::ServerName::try_from(n.clone())
                            .map_err(|e| ProbeError::Other(format!("{n:?}: {e}")))?,
                        if addr.port() == 443 {
                            n.clone()
                        } else {
                            format!("{n}:{}", addr.port())
                        },
                    ),
                    None => (addr.ip().into(), host.clone()),
                };
                let tcp = self.connect(*addr).await?;
                let s = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(tls::handshake_error)?;
                http_get(s, &host, path).await
            }
            Target::Dns { server, name } => self.dns(*server, name).await,
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ProbeError> {
        let socket = bound_socket(
            Domain::for_address(addr),
            Type::STREAM,
            Protocol::TCP,
            &self.binding,
        )
        .map_err(ProbeError::Send)?;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        socket.connect(addr).await.map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => ProbeError::Rejected("connection refused".into()),
            _ => ProbeError::Send(e),
        })
    }

    async fn dns(&self, server: SocketAddr, name: &str) -> Result<(), ProbeError> {
        let socket = bound_socket(
            Domain::for_address(server),
            Type::DGRAM,
            Protocol::UDP,
            &self.binding,
        )
        .map_err(ProbeError::Send)?;
        let any: SocketAddr = if server.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|_| ProbeError::Other("bind".into()))?;
        socket
            .bind(&SockAddr::from(any))
            .map_err(ProbeError::Send)?;
        let socket =
            UdpSocket::from_std(std::net::UdpSocket::from(socket)).map_err(ProbeError::Send)?;
        let id = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), name) as u16;
        let query = target::dns_query(id, name);
        socket
            .send_to(&query, server)
            .await
            .map_err(ProbeError::Send)?;
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.map_err(ProbeError::Send)?;
            if from != server {
                continue;
            }
            match target::dns_answer(&buf[..n], id) {
                None => continue,
                Some(Ok(())) => return Ok(()),
                Some(Err(why)) => return Err(ProbeError::Rejected(why)),
            }
        }
    }
}

/// GET `path` from `host` over `s`: a status of 200-399 passes.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    path: &str,
) -> Result<(), ProbeError> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: uplinkd-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| ProbeError::Rejected(format!("write: {e}")))?;
    let status = read_status(&mut s).await?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::Rejected(format!("HTTP status {status}")))
    }
}

/// Read an HTTP status line ("HTTP/1.1 200 OK") and return the status code.
async fn read_status<S: AsyncRead + Unpin>(s: &mut S) -> Result<u16, ProbeError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| ProbeError::Rejected(format!("read: {e}")))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    target::http_status(&buf).ok_or_else(|| ProbeError::Rejected("not an HTTP response".into()))
}
