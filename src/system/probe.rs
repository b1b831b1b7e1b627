//! The web server's heartbeat: a real HTTP request to the bound listener, once a
//! second. The web stage counts as making progress only while it answers, so a
//! server that accepts connections but never responds stops the watchdog.
//!
//! When the probe gets no answer, the web stage mends itself: it closes every
//! connection of the network address that holds most
//! ([`ConnTable::shed_busiest`]), once per failed probe, and says so in the log.
//! The web stage's stall is reported, never a reason to restart the daemon
//! (`system::watchdog`).
//!
//! A hand-written HTTP/1.1 GET keeps an HTTP client library out of the build; the
//! probe only needs the status line of our own server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::health::Heartbeat;
use crate::web::conn::ConnTable;

/// How often the listener is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A probe that takes longer than this counts as no answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong probing the web server.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connecting, writing or reading failed.
    #[error("probe i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with something that is not an HTTP status line.
    #[error("not an http response: {0:?}")]
    NotHttp(String),
    /// No answer within [`PROBE_TIMEOUT`].
    #[error("no answer within {PROBE_TIMEOUT:?}")]
    Timeout,
}

/// Probes `listening` until `cancel`, beating after every answer. With `tls`
/// (a client pinned to our own certificate) the probe speaks HTTPS, so a stuck
/// TLS acceptor stops the watchdog too.
pub async fn run(
    listening: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    beat: Heartbeat,
    connections: std::sync::Arc<ConnTable>,
    cancel: CancellationToken,
) {
    let target = reachable(listening);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answer = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(PROBE_TIMEOUT, status_of(target, "/healthz", tls.clone())) => {
                r.unwrap_or(Err(ProbeError::Timeout))
            }
        };
        match answer {
            // Any status is an answer: /healthz says 503 when *other* stages stall,
            // and the web stage itself is then still serving.
            Ok(_) => {
                beat.beat();
                if failing {
                    tracing::info!(stage = "web", "web server answers again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(stage = "web", error = %e, "web server did not answer its health probe");
                }
                failing = true;
                if let Some((client, open)) = connections.shed_busiest() {
                    tracing::warn!(stage = "web", %client, open, "web: closed every connection of the busiest client to recover");
                }
            }
        }
    }
}

/// A listener on the unspecified address is probed over loopback.
pub fn reachable(listening: SocketAddr) -> SocketAddr {
    let ip = match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listening.port())
}

/// The status code of `GET path` at `addr`, over TLS with `tls`.
pub async fn status_of(
    addr: SocketAddr,
    path: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<u16, ProbeError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    match tls {
        None => exchange(stream, addr, path).await,
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            exchange(stream, addr, path).await
        }
    }
}

#[allow(
    clippy::indexing_slicing,
    reason = "got never exceeds head.len(): each read fills at most what is left of head"
)]
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    path: &str,
) -> Result<u16, ProbeError> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: carehub-probe\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line fits in the first read; the body is not needed.
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = stream.read(&mut head[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    parse_status(&head[..got])
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status(head: &[u8]) -> Result<u16, ProbeError> {
    let text = String::from_utf8_lossy(head);
    let not_http = || ProbeError::NotHttp(text.chars().take(40).collect());
    let rest = text.strip_prefix("HTTP/1.").ok_or_else(not_http)?;
    rest.get(2..5)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..=599).contains(code))
        .ok_or_else(not_http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse_and_garbage_does_not() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n").unwrap(), 200);
        assert_eq!(parse_status(b"HTTP/1.0 503 Service").unwrap(), 503);
        for bad in [
            &b""[..],
            b"SSH-2.0-OpenSSH",
            b"HTTP/1.1 abc",
            b"HTTP/1.1 999 x",
        ] {
            assert!(
                matches!(parse_status(bad), Err(ProbeError::NotHttp(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unspecified_listeners_are_probed_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:80".parse().unwrap()),
            "127.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("[::]:80".parse().unwrap()),
            "[::1]:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("192.0.2.1:80".parse().unwrap()),
            "192.0.2.1:80".parse::<SocketAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn probe_beats_while_a_real_server_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
        });
        assert_eq!(status_of(addr, "/healthz", None).await.unwrap(), 204);
    }
}
