//! Certificates a field engineer manages: `carehub cert request` makes a P-256 key
//! and a certificate signing request for the fleet CA; `carehub cert show` and the
//! daemon's expiry warning read a certificate's names and validity.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::Timestamp;

/// What can go wrong with certificate files.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The output file exists; a key is never overwritten.
    #[error("{0} already exists; refusing to overwrite a key or request")]
    Exists(PathBuf),
    /// The file is not a PEM X.509 certificate.
    #[error("{path}: not a PEM certificate: {what}")]
    NotACertificate { path: PathBuf, what: String },
    /// The gateway id cannot be a certificate CN and MQTT client id.
    #[error("invalid gateway id {0:?}: use 1 to 64 letters, digits, '-' or '_'")]
    BadGatewayId(String),
    /// rcgen could not make the key or the request.
    #[error("cannot make the key or request: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What `cert show` prints and the daemon watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// The subject's common name, if any (the gateway id for a gateway certificate).
    pub common_name: Option<String>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl CertInfo {
    /// Whole days from `now` until expiry; negative once expired.
    pub fn days_left(&self, now: Timestamp) -> i64 {
        (self.not_after.unix_ms() - now.unix_ms()).div_euclid(86_400_000)
    }

    /// The text `carehub cert show` prints.
    pub fn render(&self, now: Timestamp) -> String {
        let days = self.days_left(now);
        let state = if days < 0 {
            "EXPIRED".to_owned()
        } else {
            format!("{days} days left")
        };
        format!(
            "subject:    {}\nissuer:     {}\nnot before: {}\nnot after:  {} ({state})\n",
            self.subject,
            self.issuer,
            self.not_before.to_rfc3339(),
            self.not_after.to_rfc3339()
        )
    }
}

/// Reads the first certificate of a PEM file. Blocking.
pub fn read_cert_info(path: &Path) -> Result<CertInfo, CertError> {
    let bytes = std::fs::read(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_cert_info(&bytes).map_err(|what| CertError::NotACertificate {
        path: path.to_owned(),
        what,
    })
}

/// Parses the first certificate of PEM text.
pub fn parse_cert_info(pem: &[u8]) -> Result<CertInfo, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| e.to_string())?;
    if pem.label != "CERTIFICATE" {
        return Err(format!("found a {:?} block, not CERTIFICATE", pem.label));
    }
    let (_, cert) = X509Certificate::from_der(&pem.contents).map_err(|e| e.to_string())?;
    let ms = |t: x509_parser::time::ASN1Time| Timestamp::from_unix_ms(t.timestamp() * 1000);
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        not_before: ms(cert.validity().not_before),
        not_after: ms(cert.validity().not_after),
    })
}

/// The files `cert request` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub key: PathBuf,
    pub csr: PathBuf,
}

/// Makes `DIR/ID.key` (P-256, PKCS#8, mode 0600) and `DIR/ID.csr` with CN = `gateway_id`.
/// Refuses to overwrite either file. Blocking.
pub fn request(gateway_id: &str, out: &Path) -> Result<Requested, CertError> {
    let valid = (1..=64).contains(&gateway_id.len())
        && gateway_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(CertError::BadGatewayId(gateway_id.to_owned()));
    }
    std::fs::create_dir_all(out).map_err(|source| CertError::Io {
        path: out.to_owned(),
        source,
    })?;
    let key_path = out.join(format!("{gateway_id}.key"));
    let csr_path = out.join(format!("{gateway_id}.csr"));
    for p in [&key_path, &csr_path] {
        if p.exists() {
            return Err(CertError::Exists(p.clone()));
        }
    }
    // rcgen's default algorithm is ECDSA P-256 with SHA-256.
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, gateway_id);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?.pem()?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&csr_path, csr.as_bytes(), 0o644)?;
    Ok(Requested {
        key: key_path,
        csr: csr_path,
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_makes_a_p256_key_and_a_csr_with_the_gateway_cn() {
        let dir = tempfile::tempdir().unwrap();
        let r = request("gw-7", dir.path()).unwrap();
        let key = std::fs::read_to_string(&r.key).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        let kp = KeyPair::from_pem(&key).unwrap();
        assert_eq!(kp.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        let csr_pem = std::fs::read_to_string(&r.csr).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).unwrap();
        assert_eq!(pem.label, "CERTIFICATE REQUEST");
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
                .unwrap();
        // The request carries the public half of the key that was written.
        assert_eq!(
            csr.certification_request_info
                .subject_pki
                .subject_public_key
                .data
                .as_ref(),
            kp.public_key_raw()
        );
        assert_eq!(
            csr.certification_request_info.subject.to_string(),
            "CN=gw-7"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&r.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn request_never_overwrites_a_key() {
        let dir = tempfile::tempdir().unwrap();
        request("gw-7", dir.path()).unwrap();
        let before = std::fs::read(dir.path().join("gw-7.key")).unwrap();
        assert!(matches!(
            request("gw-7", dir.path()),
            Err(CertError::Exists(_))
        ));
        assert_eq!(std::fs::read(dir.path().join("gw-7.key")).unwrap(), before);
        assert!(matches!(
            request("gw 7/..", dir.path()),
            Err(CertError::BadGatewayId(_))
        ));
    }

    #[test]
    fn show_reads_names_validity_and_days_left() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["gw-7".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "gw-7");
        params.not_before = time::macros::datetime!(2026-01-01 00:00 UTC);
        params.not_after = time::macros::datetime!(2027-01-01 00:00 UTC);
        let pem = params.self_signed(&key).unwrap().pem();
        let info = parse_cert_info(pem.as_bytes()).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("gw-7"));
        assert_eq!(info.subject, "CN=gw-7");
        let now = Timestamp::from_unix_ms(1_798_761_600_000 - 10 * 86_400_000); // 2026-12-22
        assert_eq!(info.days_left(now), 10);
        assert!(info.render(now).contains("10 days left"));
        let after = Timestamp::from_unix_ms(1_798_761_600_000 + 1000);
        assert!(info.render(after).contains("EXPIRED"));
        assert!(
            parse_cert_info(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }
}
