//! Start-up of the web server's security: the accounts connection, the first
//! admin's setup code (or the demo's sign-in link), the token `carehub pair`
//! uses, the certificate, and the listeners (HTTPS, or plain HTTP on loopback,
//! plus the optional redirect port).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::auth::signin::FirstStart;
use super::auth::{AuthSettings, ClientAddr, password};
use super::conn::{ConnTable, Guarded};
use super::tls;
use super::tls::RedirectTarget;
use crate::config::Config;
use crate::store::accounts::Accounts;

/// The file in the state directory holding the token `carehub pair` sends.
pub const CLI_TOKEN_FILE: &str = "cli-token";

/// The directory beside the database where the gateway keeps its own files.
pub fn state_dir(config: &Config) -> PathBuf {
    config
        .store
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// What the web server needs that start-up prepares (blocking work).
pub struct Prepared {
    pub accounts: Accounts,
    pub auth: Arc<AuthSettings>,
    /// The rustls configuration and our leaf certificate (for the probe); `None`
    /// for plain HTTP on loopback.
    pub tls: Option<(
        Arc<rustls::ServerConfig>,
        rustls::pki_types::CertificateDer<'static>,
    )>,
    pub first_start: FirstStart,
    /// Where the redirect port sends browsers.
    pub redirect: tls::RedirectTarget,
}

/// Opens the accounts, makes the setup code or demo link, writes the CLI token
/// and loads or makes the certificate. Blocking: call from `spawn_blocking`.
pub fn prepare(config: &Config, demo: bool) -> anyhow::Result<Prepared> {
    let accounts = Accounts::open(&config.store.path, config.store.synchronous)
        .context("cannot open the accounts tables")?;
    let first_start = super::auth::signin::first_start(&accounts, demo)
        .map_err(|e| anyhow::anyhow!("cannot prepare the first sign-in: {e}"))?;
    let dir = state_dir(config);
    let cli_token = password::new_token()?;
    write_owner_only(&dir.join(CLI_TOKEN_FILE), cli_token.as_bytes())
        .with_context(|| format!("cannot write {}", dir.join(CLI_TOKEN_FILE).display()))?;
    let web = &config.web;
    let names = tls::Names::for_gateway(&web.names, web.listen);
    let tls = if web.https {
        let cert = if web.cert_file.as_os_str().is_empty() {
            tls::generated(&dir, &names, &config.site.gateway_id)?
        } else {
            tls::load(&web.cert_file, &web.key_file)?
        };
        let leaf = cert
            .leaf()
            .cloned()
            .context("the web certificate file has no certificate")?;
        Some((tls::server_config(cert)?, leaf))
    } else {
        None
    };
    let auth = Arc::new(AuthSettings {
        limits: super::auth::limits(web.session_idle_minutes, web.session_max_hours),
        https: web.https,
        cli_token_hash: Some(password::token_hash(&cli_token)),
        hosts: Arc::new(names.allowed_hosts()),
    });
    let redirect = tls::RedirectTarget::for_gateway(&names, &web.names, web.listen);
    // Sessions past their limits are deleted when next used; this clears those
    // of people who never came back.
    if let Err(e) = accounts.purge_sessions(auth.limits, crate::model::Timestamp::now()) {
        tracing::warn!(error = %e, "old sessions not purged");
    }
    Ok(Prepared {
        accounts,
        auth,
        tls,
        first_start,
        redirect,
    })
}

fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: make sure.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The bound listeners, before privileges are dropped.
pub struct Listeners {
    main: tokio::net::TcpListener,
    redirect: Option<tokio::net::TcpListener>,
    pub bound: SocketAddr,
}

/// Binds `web.listen` and, if set, the redirect port.
pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
    let web = &config.web;
    let main = tokio::net::TcpListener::bind(web.listen)
        .await
        .with_context(|| format!("cannot listen on {} (web.listen)", web.listen))?;
    let bound = main.local_addr().context("listener has no local address")?;
    let redirect = if web.http_redirect_port != 0 {
        let addr = SocketAddr::new(web.listen.ip(), web.http_redirect_port);
        Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (web.http_redirect_port)"))?,
        )
    } else {
        None
    };
    Ok(Listeners {
        main,
        redirect,
        bound,
    })
}

/// A request head (request line and headers) must arrive in full within this
/// long of the server starting to wait for it, however the client spaces its
/// bytes: a client that sends one header line every 20 s is dropped. This also
/// ends a keep-alive connection that sends no next request for this long.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The running web server.
pub struct Serving {
    /// Ends when every listener and connection has stopped.
    pub task: tokio::task::JoinHandle<()>,
    /// The main listener's open connections (the probe sheds through it).
    pub table: Arc<ConnTable>,
}

/// Serves `router` until `cancel`.
pub fn serve(
    listeners: Listeners,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    cancel: CancellationToken,
    mut redirect_to: RedirectTarget,
) -> anyhow::Result<Serving> {
    let Listeners {
        main,
        redirect,
        bound,
    } = listeners;
    // The port actually bound (a test listens on port 0).
    redirect_to.https_port = bound.port();
    let (main_task, table) = match tls {
        Some(config) => {
            let listener = Guarded::daemon(tls::TlsListener::new(main, config)?);
            let table = listener.table();
            (
                tokio::spawn(run_listener(listener, router, cancel.clone())),
                table,
            )
        }
        None => {
            let listener = Guarded::daemon(main);
            let table = listener.table();
            (
                tokio::spawn(run_listener(listener, router, cancel.clone())),
                table,
            )
        }
    };
    let redirect_task = redirect.map(|listener| {
        tokio::spawn(run_listener(
            Guarded::daemon(listener),
            tls::redirect_app(redirect_to),
            cancel.clone(),
        ))
    });
    let task = tokio::spawn(async move {
        let _ = main_task.await;
        if let Some(t) = redirect_task {
            let _ = t.await;
        }
    });
    Ok(Serving { task, table })
}

/// Accepts connections from `listener` and serves each with `router` until
/// `cancel`, then lets the open ones finish what they are answering and returns
/// once they have all ended. Each connection is HTTP/1.1 with hyper's
/// request-head timer ([`HEAD_TIMEOUT`]), which `axum::serve` does not set.
pub async fn run_listener<L>(listener: L, router: axum::Router, cancel: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    run_listener_with(listener, router, cancel, HEAD_TIMEOUT).await
}

async fn run_listener_with<L>(
    mut listener: L,
    router: axum::Router,
    cancel: CancellationToken,
    head_timeout: Duration,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    // Every connection holds a receiver; the server is done once none is left.
    let (done_tx, done_rx) = tokio::sync::watch::channel(());
    loop {
        let (io, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            c = listener.accept() => c,
        };
        let router = router.clone();
        let client = axum::extract::ConnectInfo(ClientAddr(peer));
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(client);
                tower::ServiceExt::oneshot(router.clone(), req)
            });
        let (cancel, done) = (cancel.clone(), done_rx.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = cancel.cancelled() => None,
            };
            let result = match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "web connection ended");
            }
            drop(done);
        });
    }
    drop(listener);
    drop(done_rx);
    done_tx.closed().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::conn::Limits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A real server on loopback with `head` as its head time-out and the
    /// daemon's idle limit (60 s, so only the head timer can end a trickle).
    async fn server(head: Duration) -> (SocketAddr, CancellationToken) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = axum::Router::new().fallback(|| async { "ok" });
        let cancel = CancellationToken::new();
        tokio::spawn(run_listener_with(
            Guarded::new(tcp, Limits::DAEMON),
            app,
            cancel.clone(),
            head,
        ));
        (addr, cancel)
    }

    /// Regression (issue 17, finding 1): a client that sends one header line at
    /// a time, each well inside the idle limit, was never dropped. Now its head
    /// must be complete within the head time-out, however it trickles.
    #[tokio::test]
    async fn a_client_trickling_its_request_head_is_dropped() {
        let head = Duration::from_millis(1500);
        let (addr, cancel) = server(head).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 256];
        // One header line every 300 ms, for at most 20 lines (6 s): every gap
        // is far inside the idle limit, so only the head timer can end it.
        let mut closed = false;
        for i in 0..20 {
            match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                // hyper answers a timed-out head with nothing, or a 408.
                Ok(Ok(n)) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                }
                Err(_) => {}
            }
            if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "a trickling client was kept for 6 s");
        assert!(started.elapsed() >= head, "closed before its head time-out");
        // A prompt client is served meanwhile and after.
        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        ok.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
            "{out}"
        );
        cancel.cancel();
    }

    /// Shutdown waits for the connection being answered, then ends.
    #[tokio::test]
    async fn the_server_stops_on_cancel() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = axum::Router::new().fallback(|| async { "ok" });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_listener(Guarded::daemon(tcp), app, cancel.clone()));
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stopped")
            .unwrap();
    }
}
