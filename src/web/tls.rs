//! HTTPS for the staff web UI: the device certificate, the TLS listener axum
//! serves on, the plain-HTTP redirect listener, and a client configuration pinned
//! to our own certificate (for the health probe and `carehub pair`).
//!
//! Without `web.cert_file`/`web.key_file` the gateway makes its own self-signed
//! certificate on first start (ECDSA P-256; SANs: the host name, `localhost`,
//! `web.names` and the listen address) and keeps it in the state directory as
//! `web-cert.pem` and `web-key.pem` (owner-only); it is made again when it has
//! less than 30 days left or is deleted. Browsers warn about a self-signed
//! certificate until it is installed on the tablets or replaced by one from the
//! care home's CA.
//!
//! TLS handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at once
//! ([`MAX_HANDSHAKES_PER_CLIENT`] from one address; loopback apart) and each
//! within [`HANDSHAKE_TIMEOUT`], so a slow or silent client never holds up the
//! others: a connection beyond the limits is closed at once, not queued.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::headers::AllowedHosts;

/// The generated certificate's file in the state directory.
pub const GENERATED_CERT: &str = "web-cert.pem";
/// The generated key's file in the state directory.
pub const GENERATED_KEY: &str = "web-key.pem";
/// A generated certificate is valid this long...
const GENERATED_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);
/// ...and made again when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// TLS handshakes in progress at once from other hosts; a connection beyond
/// that is closed as soon as it is accepted.
pub const MAX_HANDSHAKES: usize = 64;
/// TLS handshakes in progress at once from one address: a browser opens a few
/// connections at a time, so one client never holds every place.
pub const MAX_HANDSHAKES_PER_CLIENT: usize = 8;
/// A client that has not finished its handshake by then is dropped (a real
/// handshake on the care home's network takes milliseconds).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong with the web certificate.
#[derive(Debug, thiserror::Error)]
pub enum WebTlsError {
    /// A certificate or key file is missing, unreadable or not PEM.
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
    /// rcgen could not make the certificate.
    #[error("cannot make the web certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("the web certificate and key are not usable together: {0}")]
    Config(#[from] rustls::Error),
}

fn file_err(path: &Path, what: impl Into<String>) -> WebTlsError {
    WebTlsError::File {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// The certificate chain and key the web server presents.
#[derive(Debug)]
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where the certificate was read from.
    pub cert_path: PathBuf,
}

impl ServerCert {
    /// The end-entity certificate (what clients pin).
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }
}

/// Reads a PEM certificate chain and key.
pub fn load(cert: &Path, key: &Path) -> Result<ServerCert, WebTlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, format!("cannot read the web certificate: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate (no CERTIFICATE block)"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        file_err(
            key,
            format!("no usable private key (PKCS#8, SEC1 or RSA PEM expected): {e}"),
        )
    })?;
    Ok(ServerCert {
        chain,
        key,
        cert_path: cert.to_owned(),
    })
}

/// Seconds since the epoch at which the PEM certificate stops being valid.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// The names the generated certificate is for.
pub struct Names {
    /// DNS names (the host name, `localhost`, `web.names`).
    pub dns: Vec<String>,
    /// IP addresses (the listen address when it is not the unspecified one).
    pub ips: Vec<IpAddr>,
}

impl Names {
    /// The host name, `localhost`, the configured extra names (an entry that
    /// parses as an IP address is an IP SAN) and the listen address.
    pub fn for_gateway(extra: &[String], listen: SocketAddr) -> Names {
        let mut dns = vec!["localhost".to_owned()];
        // gethostname(2), not /proc/sys/kernel/hostname: carehub.service's
        // ProcSubset=pid hides /proc/sys. A host name is also announced over
        // mDNS (avahi on the gateway image) as NAME.local.
        if let Ok(h) = nix::unistd::gethostname() {
            let h = h.to_string_lossy();
            let h = h.trim();
            if !h.is_empty() {
                dns.push(h.to_owned());
                if !h.contains('.') {
                    dns.push(format!("{h}.local"));
                }
            }
        }
        let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
        for e in extra {
            match e.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(e.clone()),
            }
        }
        if !listen.ip().is_unspecified() {
            ips.push(listen.ip());
        }
        dns.sort();
        dns.dedup();
        ips.sort();
        ips.dedup();
        Names { dns, ips }
    }

    /// The `Host` allow-list: these DNS names (IP addresses are always let in).
    pub fn allowed_hosts(&self) -> AllowedHosts {
        AllowedHosts::new(&self.dns)
    }
}

/// The generated certificate in `dir`, made (or made again, when it expires
/// within 30 days) if needed. Blocking.
pub fn generated(dir: &Path, names: &Names, common_name: &str) -> Result<ServerCert, WebTlsError> {
    let cert_path = dir.join(GENERATED_CERT);
    let key_path = dir.join(GENERATED_KEY);
    if cert_path.exists() && key_path.exists() {
        let existing = load(&cert_path, &key_path)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let renew = i64::try_from(RENEW_BEFORE.as_secs()).unwrap_or(i64::MAX);
        match existing.leaf().and_then(not_after) {
            Some(end) if end - now > renew => return Ok(existing),
            _ => {
                tracing::warn!(path = %cert_path.display(), "the web certificate expires soon or is unreadable: making a new one")
            }
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(names.dns.clone())?;
    params
        .subject_alt_names
        .extend(names.ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "carehub gateway (self-signed)",
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + GENERATED_VALIDITY;
    let cert = params.self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_private(&cert_path, cert.pem().as_bytes())?;
    tracing::info!(path = %cert_path.display(), dns = ?names.dns, ips = ?names.ips, "made a self-signed web certificate");
    load(&cert_path, &key_path)
}

/// Writes a file readable by its owner only, replacing it atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), WebTlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| file_err(path, format!("cannot write: {e}")))
}

/// The rustls server configuration (ring provider, TLS 1.3 and 1.2, HTTP/1.1).
pub fn server_config(cert: ServerCert) -> Result<Arc<ServerConfig>, WebTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener that hands axum connections whose TLS handshake has finished.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

/// Handshakes in progress, in all and per client address.
#[derive(Debug, Default)]
struct Handshakes {
    remote: usize,
    by_client: std::collections::HashMap<IpAddr, usize>,
}

/// One handshake's place, given back when dropped.
struct HandshakeSlot {
    table: Arc<std::sync::Mutex<Handshakes>>,
    ip: IpAddr,
    own: bool,
}

impl HandshakeSlot {
    /// A place for a handshake from `ip`: at most [`MAX_HANDSHAKES_PER_CLIENT`]
    /// per address and [`MAX_HANDSHAKES`] from other hosts in all; the gateway
    /// itself (`conn::is_own`: the probe, `carehub pair`) is not counted against
    /// the network's total.
    fn take(
        table: &Arc<std::sync::Mutex<Handshakes>>,
        ip: IpAddr,
        own: bool,
    ) -> Option<HandshakeSlot> {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        let loopback = own;
        if !loopback && t.remote >= MAX_HANDSHAKES {
            return None;
        }
        let mine = t.by_client.entry(ip).or_insert(0);
        if *mine >= MAX_HANDSHAKES_PER_CLIENT {
            return None;
        }
        *mine += 1;
        if !loopback {
            t.remote += 1;
        }
        Some(HandshakeSlot {
            table: table.clone(),
            ip,
            own,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !self.own {
            t.remote = t.remote.saturating_sub(1);
        }
        if let Some(n) = t.by_client.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.by_client.remove(&self.ip);
            }
        }
    }
}

impl TlsListener {
    /// Starts accepting on `tcp`; handshakes run in their own tasks. A
    /// connection beyond the handshake limits is closed at once, so silent
    /// clients never make the next one wait.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let table = Arc::new(std::sync::Mutex::new(Handshakes::default()));
        let acceptor = tokio::spawn(async move {
            let mut refused_logged: Option<tokio::time::Instant> = None;
            loop {
                let (stream, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    r = tcp.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, as axum does.
                            tracing::warn!(error = %e, "web: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let own = super::conn::is_own(peer.ip(), local.ip());
                let Some(slot) = HandshakeSlot::take(&table, peer.ip(), own) else {
                    drop(stream);
                    let now = tokio::time::Instant::now();
                    if refused_logged
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
                    {
                        tracing::warn!(%peer, limit = MAX_HANDSHAKES, per_client = MAX_HANDSHAKES_PER_CLIENT, "web: too many TLS handshakes in progress; new connections are closed");
                        refused_logged = Some(now);
                    }
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    // The place is given back once the handshake is over, before
                    // the connection waits for the server to take it.
                    drop(slot);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "web: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "web: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor only stops when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Where the redirect port sends browsers: built from the configuration, never
/// from whatever `Host` a request names.
#[derive(Debug, Clone)]
pub struct RedirectTarget {
    /// The names the HTTPS server answers to: a request's `Host` is kept only
    /// when it is one of them (or an IP address).
    pub hosts: Arc<AllowedHosts>,
    /// Otherwise this host: the first of `web.names`, else the listen address,
    /// else the host name.
    pub fallback: String,
    pub https_port: u16,
}

impl RedirectTarget {
    /// From the configured names and listen address.
    pub fn for_gateway(names: &Names, configured: &[String], listen: SocketAddr) -> RedirectTarget {
        let fallback = configured
            .first()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
                _ => n.clone(),
            })
            .or_else(|| {
                (!listen.ip().is_unspecified()).then(|| match listen.ip() {
                    IpAddr::V6(v6) => format!("[{v6}]"),
                    ip => ip.to_string(),
                })
            })
            .or_else(|| names.dns.iter().find(|n| *n != "localhost").cloned())
            .unwrap_or_else(|| "localhost".to_owned());
        RedirectTarget {
            hosts: Arc::new(names.allowed_hosts()),
            fallback,
            https_port: listen.port(),
        }
    }

    /// The `Location` for a request with `host` (its `Host` header) and `path`.
    pub fn location(&self, host: Option<&str>, path: &str) -> String {
        let host = host
            .and_then(|h| self.hosts.check(h))
            .unwrap_or(&self.fallback);
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        format!("https://{host}{port}{path}")
    }
}

/// The plain-HTTP listener's whole application: every request is sent to the
/// same path on HTTPS (308, so a form POST stays a POST).
pub fn redirect_app(target: RedirectTarget) -> axum::Router {
    let target = Arc::new(target);
    axum::Router::new().fallback(move |req: axum::extract::Request| async move {
        let host = req
            .headers()
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        // Only an origin-form path: an absolute-form request target must not
        // name the host.
        let path = if path.starts_with('/') { path } else { "/" };
        axum::response::Redirect::permanent(&target.location(host, path))
    })
}

/// Accepts exactly one certificate (ours), checking the handshake signatures
/// with ring: how the probe and `carehub pair` trust a self-signed server.
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that trusts only `leaf` (our own certificate).
pub fn pinned_client(leaf: CertificateDer<'static>) -> Result<Arc<ClientConfig>, WebTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { leaf, provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The first certificate of a PEM file, for pinning.
pub fn leaf_from_file(path: &Path) -> Result<CertificateDer<'static>, WebTlsError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read the web certificate: {e}")))?
        .next()
        .ok_or_else(|| file_err(path, "no certificate (no CERTIFICATE block)"))?
        .map_err(|e| file_err(path, format!("not a PEM certificate: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_certificate_names_the_gateway_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let names = Names::for_gateway(
            &["carehub.local".into(), "192.168.1.20".into()],
            "0.0.0.0:443".parse().unwrap(),
        );
        let first = generated(dir.path(), &names, "gw-1").unwrap();
        let leaf = first.leaf().unwrap().clone();
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let text = format!("{:?}", san.general_names);
        assert!(text.contains("carehub.local"), "{text}");
        assert!(text.contains("localhost"), "{text}");
        assert!(text.contains("[192, 168, 1, 20]"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(GENERATED_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key must be owner-only: {mode:o}");
        let again = generated(dir.path(), &names, "gw-1").unwrap();
        assert_eq!(again.leaf(), Some(&leaf), "kept across restarts");
        server_config(again).unwrap();
    }

    #[test]
    fn redirects_keep_the_path_and_name_only_configured_hosts() {
        let names = Names::for_gateway(&["gw.local".into()], "0.0.0.0:8443".parse().unwrap());
        let t = RedirectTarget::for_gateway(
            &names,
            &["gw.local".into()],
            "0.0.0.0:8443".parse().unwrap(),
        );
        let check = |host: Option<&str>, want: &str| {
            assert_eq!(t.location(host, "/x?y=1"), want, "{host:?}");
        };
        check(Some("gw.local:8080"), "https://gw.local:8443/x?y=1");
        check(Some("192.168.1.20"), "https://192.168.1.20:8443/x?y=1");
        check(Some("[::1]:80"), "https://[::1]:8443/x?y=1");
        for forged in ["evil.example", "evil/x", "a@b", "gw.local.evil.example:80"] {
            check(Some(forged), "https://gw.local:8443/x?y=1");
        }
        check(None, "https://gw.local:8443/x?y=1");
    }

    /// Regression (issue 17, finding 1): 64 silent TCP connections took every
    /// handshake place and new clients waited about 10 s. Now one address gets
    /// 8 places, the 9th is closed at once, and the gateway's own client (the
    /// probe) completes its handshake meanwhile.
    #[tokio::test]
    async fn silent_connections_from_one_address_cannot_take_every_handshake_place() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let names = Names::for_gateway(&[], "127.0.0.1:0".parse().unwrap());
        let cert = generated(dir.path(), &names, "gw-1").unwrap();
        let leaf = cert.leaf().unwrap().clone();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = TlsListener::new(tcp, server_config(cert).unwrap()).unwrap();
        tokio::spawn(async move {
            use axum::serve::Listener;
            loop {
                let (mut tls, _) = listener.accept().await;
                tokio::spawn(async move {
                    let _ = tls.write_all(b"hello").await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let from = |last: u8| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::from(([127, 0, 0, last], 0)))
                .unwrap();
            socket.connect(addr)
        };
        let mut silent = Vec::new();
        for _ in 0..MAX_HANDSHAKES_PER_CLIENT {
            silent.push(from(2).await.unwrap());
        }
        // The gateway's own client completes a handshake while they wait.
        let started = tokio::time::Instant::now();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(pinned_client(leaf).unwrap())
            .connect(name, stream)
            .await
            .unwrap();
        let mut hello = String::new();
        tls.read_to_string(&mut hello).await.unwrap();
        assert_eq!(hello, "hello");
        assert!(started.elapsed() < Duration::from_secs(2));
        // The next silent connection from the same address is closed at once.
        let mut extra = from(2).await.unwrap();
        let mut b = [0u8; 8];
        let closed = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut b)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a 9th silent connection from one address was kept: {closed:?}"
        );
        // Another address still gets a place.
        let mut other = from(3).await.unwrap();
        let kept = tokio::time::timeout(Duration::from_millis(500), other.read(&mut b)).await;
        assert!(kept.is_err(), "another address was refused: {kept:?}");
    }
}
