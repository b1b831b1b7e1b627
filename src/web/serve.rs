//! Start-up of the web server's security: the accounts connection, the first
//! admin's setup code (or the demo's sign-in link), the token `carehub pair`
//! uses, the certificate, and the listeners (HTTPS, or plain HTTP on loopback,
//! plus the optional redirect port).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::auth::signin::FirstStart;
use super::auth::{AuthSettings, ClientAddr, password};
use super::conn::Guarded;
use super::tls;
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
    let tls = if web.https {
        let cert = if web.cert_file.as_os_str().is_empty() {
            let names = tls::Names::for_gateway(&web.names, web.listen);
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
    });
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

/// Serves `router` until `cancel`; the returned task ends when every listener
/// has stopped.
pub fn serve(
    listeners: Listeners,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let Listeners {
        main,
        redirect,
        bound,
    } = listeners;
    let service = router.into_make_service_with_connect_info::<ClientAddr>();
    let c = cancel.clone();
    let main_task = match tls {
        Some(config) => {
            let listener = Guarded::daemon(tls::TlsListener::new(main, config)?);
            tokio::spawn(async move {
                axum::serve(listener, service)
                    .with_graceful_shutdown(async move { c.cancelled().await })
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(Guarded::daemon(main), service)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await
        }),
    };
    let redirect_task = redirect.map(|listener| {
        let c = cancel.clone();
        tokio::spawn(async move {
            axum::serve(Guarded::daemon(listener), tls::redirect_app(bound.port()))
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await
        })
    });
    Ok(tokio::spawn(async move {
        if let Ok(Err(e)) = main_task.await {
            tracing::error!(error = %e, "web server failed");
        }
        if let Some(t) = redirect_task
            && let Ok(Err(e)) = t.await
        {
            tracing::error!(error = %e, "web redirect listener failed");
        }
    }))
}
