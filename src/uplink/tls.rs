//! The TLS side of the uplink: a rustls client configuration from PEM files, and
//! the translation of TLS failures into sentences a field engineer can act on.
//!
//! rustls 0.23 on the `ring` provider (no aws-lc: it cross-compiles to the Pi with
//! a plain C toolchain), TLS 1.2 and 1.3 only. The broker is verified against the
//! configured CA and its host name; the gateway presents its certificate and key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The three PEM files of a mutual-TLS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn file_err(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read {what}: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("not a PEM {what}: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, format!("no {what} (no CERTIFICATE block)")));
    }
    Ok(certs)
}

/// Builds the client configuration. Blocking (reads files): call it from
/// `spawn_blocking` or start-up code.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certs(&files.ca, "CA certificate")? {
        roots
            .add(ca)
            .map_err(|e| file_err(&files.ca, format!("unusable CA certificate: {e}")))?;
    }
    let chain = certs(&files.cert, "gateway certificate")?;
    // PrivateKeyDer accepts PKCS#8, SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY").
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        file_err(
            &files.key,
            format!("no usable private key (PKCS#8, SEC1 or RSA PEM expected): {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A TLS failure explained for the person standing next to the gateway, or `None`
/// when `error` is not a TLS failure.
pub fn explain(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_rustls(tls));
        }
        // io::Error hides its inner error from `source()` in some versions; look inside.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(explain_rustls(tls));
        }
        cur = e.source();
    }
    None
}

fn explain_rustls(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the broker's certificate is not signed by the configured CA (uplink.ca_file): wrong broker or wrong CA file".into()
        }
        E::InvalidCertificate(CertificateError::NotValidForName)
        | E::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "the broker's certificate is not valid for the configured host name (uplink.host): check the host name".into()
        }
        E::InvalidCertificate(CertificateError::Expired)
        | E::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
            "the broker's certificate has expired (or this gateway's clock is wrong)".into()
        }
        E::InvalidCertificate(CertificateError::NotValidYet)
        | E::InvalidCertificate(CertificateError::NotValidYetContext { .. }) => {
            "the broker's certificate is not valid yet: check this gateway's clock".into()
        }
        E::AlertReceived(AlertDescription::CertificateExpired) => {
            "the broker refused this gateway's certificate: it has expired; install a renewed certificate (carehub cert request)".into()
        }
        E::AlertReceived(AlertDescription::UnknownCA) => {
            "the broker refused this gateway's certificate: it is not signed by a CA the broker trusts (wrong fleet CA?)".into()
        }
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the broker requires a client certificate and got none: check uplink.cert_file and uplink.key_file".into()
        }
        E::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::DecryptError
            | AlertDescription::HandshakeFailure
            | AlertDescription::AccessDenied,
        ) => format!(
            "the broker refused this gateway's certificate ({e}): check that it is current, issued by the fleet CA and matches the key"
        ),
        other => format!("tls failure: {other}"),
    }
}
