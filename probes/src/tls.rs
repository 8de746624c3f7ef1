//! TLS for HTTPS probes: rustls on ring (no system OpenSSL), the server's certificate verified
//! against the system's CA store or a CA file of the target's own.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::ProbeError;

/// Debian's bundle of the system's trusted CAs (package ca-certificates).
pub const SYSTEM_STORE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client that trusts the certificates of `ca_file` (PEM), or else the system's store.
/// Fails when the file cannot be read or holds no usable certificate.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let path = ca_file.unwrap_or(Path::new(SYSTEM_STORE));
    let what = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", path.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| what(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| what(&e))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(what(&"no usable certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| what(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every probe verifies the certificate: a resumed session would skip it, and a server
    // whose certificate changed (a portal, a proxy taking over the address) would pass.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// What a failed handshake says: a certificate that does not verify is its own kind of
/// failure (the path works, the server is not who it should be); anything else rejects.
pub fn handshake_error(e: io::Error) -> ProbeError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(
            t @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType),
        ) => ProbeError::Certificate(t.to_string()),
        Some(t) => ProbeError::Rejected(format!("TLS: {t}")),
        None => ProbeError::Rejected(format!("TLS handshake: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir();
        let missing = dir.join(format!("uplinkd-no-such-ca-{}", std::process::id()));
        let e = client_config(Some(&missing)).unwrap_err();
        assert!(
            e.starts_with(&format!("CA file {}:", missing.display())),
            "{e}"
        );
        let empty = dir.join(format!("uplinkd-empty-ca-{}", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(e.ends_with("no usable certificate in it"), "{e}");
        std::fs::remove_file(&empty).unwrap();
    }

    #[test]
    fn without_a_ca_file_the_systems_store_is_trusted() {
        // Debian's ca-certificates bundle (CI installs it).
        let c = client_config(None);
        if Path::new(SYSTEM_STORE).exists() {
            assert!(c.is_ok(), "{c:?}");
        } else {
            assert!(c.unwrap_err().contains(SYSTEM_STORE));
        }
    }

    #[test]
    fn certificate_errors_are_told_apart() {
        let bad_cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(
            matches!(handshake_error(bad_cert), ProbeError::Certificate(m) if m.contains("UnknownIssuer"))
        );
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert!(matches!(handshake_error(alert), ProbeError::Rejected(_)));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(handshake_error(reset), ProbeError::Rejected(_)));
    }
}
