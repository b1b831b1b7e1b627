//! Wires the stages together and runs them until shutdown.
//!
//! sensor source → (bounded channel) → ingest (decode, attribute) → store writer
//! thread → SQLite → (when `[uplink] enabled`) the MQTT uplink; the web server
//! reads beside. Shutdown runs in data-flow order: the source stops, ingest drains
//! what is in flight into the store, the uplink says goodbye and releases what the
//! broker has not acknowledged, the writer commits it and exits; all within
//! [`SHUTDOWN_DEADLINE`].
//!
//! Beside the data path: systemd hears READY once everything is open, STATUS lines,
//! watchdog pings only while every stage beats (`system::watchdog`), STOPPING on
//! shutdown; SIGHUP re-reads the configuration (`system::reload`).
//!
//! The source is chosen by `[sensors] source`: the simulator provisions its own
//! roster; the BLE source reads the registry from the `devices` table, so only
//! devices someone registered there are connected to and attributed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ble::agent::PasskeyRequests;
use crate::ble::pairing::PairingPolicy;
use crate::ble::{Ble, BleHandle, BleSettings, BleStatus};
use crate::config::{Config, SourceKind};
use crate::ingest::{Ingest, IngestStats};
use crate::model::Timestamp;
use crate::sensor::simulator::Simulator;
use crate::sensor::{RawFrame, Source, SourceContext};
use crate::store::{Store, StoreSettings};
use crate::system::health::Health;
use crate::system::notify::Notifier;
use crate::system::privileges::PrivilegeError;
use crate::system::reload::ConfigSource;
use crate::system::watchdog::{Supervisor, WatchdogPlan};
use crate::system::{fault, privileges, probe};
use crate::web::{AppState, app};

/// Every stage must have stopped this long after the shutdown signal.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);

/// How the daemon was started, beyond its configuration.
pub struct Launch {
    /// Where the configuration came from, for SIGHUP; `None` path: no reload.
    pub source: ConfigSource,
    /// systemd's notification socket, or a no-op outside systemd.
    pub notifier: Notifier,
    /// Started as root outside systemd: `true` refuses to run when `system.user`
    /// does not exist (`run`); `false` warns and stays root (`demo` on a developer
    /// machine, where the simulated data is not clinical).
    pub require_user: bool,
    /// `carehub demo`: a one-time sign-in link for a demo admin instead of the
    /// first-start setup code.
    pub demo: bool,
}

/// What the daemon tells its starter once it is ready.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The bound web address.
    pub addr: SocketAddr,
    /// The page's address, `https://` or (loopback demo) `http://`.
    pub url: String,
    /// `carehub demo`: open this once to be signed in as the demo admin.
    pub sign_in_url: Option<String>,
}

/// Runs the daemon until `shutdown` resolves. `on_ready` receives the bound web
/// address once the store is open, the source is running and the listener is bound;
/// systemd hears READY=1 at the same moment.
pub async fn run(
    config: Config,
    launch: Launch,
    shutdown: impl Future<Output = &'static str>,
    on_ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    let Launch {
        source: config_source,
        notifier,
        require_user,
        demo,
    } = launch;
    // Created before anything else so that no early SIGHUP is missed (or kills us:
    // SIGHUP's default action is to terminate).
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    // Before the database exists: its files are created owner/group only.
    privileges::restrict_umask();
    let drop_privileges = privileges::should_drop();

    // Registering a stage here is all it takes for the watchdog to supervise it.
    // Argon2's 19 MiB blocks go back to the system once freed (issue 17).
    crate::web::auth::password::return_freed_memory();
    let mut health = Health::default();
    let store_beat = health.register("store");
    let sensor_beat = health.register("sensor");
    let ingest_beat = health.register("ingest");
    // Reported, never a reason for systemd to restart everything (see
    // `system::watchdog`).
    let web_beat = health.register_self_healing("web");
    let uplink_beat = config.uplink.enabled.then(|| health.register("uplink"));
    let alerts_beat = health.register("alerts");

    let settings = StoreSettings::from(&config.store);
    let runtime = tokio::runtime::Handle::current();
    let (store, db_dir) = tokio::task::spawn_blocking(move || {
        // A directory the daemon creates for the database is handed over with it
        // when privileges are dropped; an existing one (say /tmp) never is.
        let db_dir = settings
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(std::path::Path::to_path_buf);
        (Store::open(settings, runtime, store_beat), db_dir)
    })
    .await
    .context("store start-up task failed")?;
    let store = store
        .with_context(|| format!("cannot open the database {}", config.store.path.display()))?;
    let db_path_for_exit = config.store.path.clone();
    let Store {
        handle: store_handle,
        reader,
        writer,
    } = store;
    let store_stats = store_handle.stats().clone();
    let damage_found = store_stats.damage_found.clone();
    let web_config = config.clone();
    let web_security =
        tokio::task::spawn_blocking(move || crate::web::serve::prepare(&web_config, demo))
            .await
            .context("web start-up task failed")??;
    let db_path = config.store.path.clone();
    let alert_book = tokio::task::spawn_blocking(move || crate::alert_stage::open_book(&db_path))
        .await
        .context("alert book start-up task failed")?
        .context("cannot open the alert book")?;
    // Wakes the uplink when an alert is raised, so it is published at once.
    let alerts_changed = Arc::new(tokio::sync::Notify::new());

    // The allow-list was validated with the configuration.
    let allow = config
        .ble
        .allow
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect();
    let pairing = PairingPolicy::new(allow).with_sink(store_handle.event_sink());
    let ble_status = Arc::new(BleStatus::default());
    // How far each glucose meter's records are filed: asked only for newer
    // ones after a restart, and none filed twice.
    let racp_reader = reader.clone();
    let racp = tokio::task::spawn_blocking(move || racp_reader.racp_progress())
        .await
        .context("glucose record progress task failed")?
        .context("cannot read how far the glucose meters' records are filed")?;
    ble_status.racp.load(&racp);
    let passkeys = PasskeyRequests::default();
    let (source, registry, resident_count, device_count): (Box<dyn Source>, _, _, _) =
        match config.sensors.source {
            SourceKind::Simulator => {
                let simulator = Simulator::new(&config.simulator.to_simulator_config(&config.site));
                let (residents, devices) = simulator.roster();
                let registry = Ingest::registry_from(&devices);
                let (resident_count, device_count) = (residents.len(), devices.len());
                store_handle
                    .provision(residents, devices)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot record the residents and devices: {e}"))?;
                (Box::new(simulator), registry, resident_count, device_count)
            }
            SourceKind::Ble => {
                let devices_reader = reader.clone();
                let devices = tokio::task::spawn_blocking(move || devices_reader.devices())
                    .await
                    .context("device registry task failed")?
                    .context("cannot read the device registry")?;
                // A row with no subject is a device paired but not (or no longer)
                // assigned: it is listed, never connected, and nothing it sends is
                // attributed, exactly as before the restart.
                let devices: Vec<_> = devices
                    .into_iter()
                    .filter(|d| d.subject != crate::model::Subject::Unassigned)
                    .collect();
                let registry = Ingest::registry_from(&devices);
                let history_reader = reader.clone();
                let history =
                    tokio::task::spawn_blocking(move || history_reader.assignment_history())
                        .await
                        .context("device registry task failed")?
                        .context("cannot read the devices' assignment history")?;
                registry.load_history(&history);
                let settings = BleSettings::new(&config.ble, registry.clone(), config.site.zone());
                tracing::info!(devices = devices.len(), "device registry read");
                let ble = Ble {
                    settings,
                    status: ble_status.clone(),
                    pairing: pairing.clone(),
                    passkeys: passkeys.clone(),
                };
                let device_count = devices.len();
                (Box::new(ble), registry, 0, device_count)
            }
        };

    // Bind keys of encrypting sensors, with the counters saved before the last
    // stop, so that a frame captured earlier is not accepted as new.
    let keys_reader = reader.clone();
    let keys = tokio::task::spawn_blocking(move || keys_reader.keys())
        .await
        .context("device key task failed")?
        .context("cannot read the devices' encryption keys")?;
    if !keys.is_empty() {
        tracing::info!(devices = keys.len(), "encryption keys loaded");
    }
    registry.load_keys(&keys);

    let cancel = CancellationToken::new();
    let ingest_stats = Arc::new(IngestStats::default());
    let events = crate::web::events::Events::new(cancel.clone());
    let (frames_tx, frames_rx) = mpsc::channel::<RawFrame>(config.sensors.channel_capacity);
    // SIGHUP also tells the uplink to reload its certificate files (without a
    // restart and without touching the backlog).
    let uplink_reload = Arc::new(tokio::sync::Notify::new());
    let uplink_status = Arc::new(crate::uplink::UplinkStatus::new(
        crate::uplink::ConnectionState::Disabled,
    ));
    let uplink = match uplink_beat {
        Some(heartbeat) => {
            let task = crate::uplink::Uplink {
                settings: crate::uplink::UplinkSettings::from_config(&config),
                store: store_handle.clone(),
                status: uplink_status.clone(),
                heartbeat,
                cancel: cancel.clone(),
                reload: uplink_reload.clone(),
                version: env!("CARGO_PKG_VERSION"),
                alerts: Some(crate::uplink::AlertFeed {
                    book: alert_book.clone(),
                    changed: alerts_changed.clone(),
                }),
            };
            Some(tokio::spawn(task.run()))
        }
        None => None,
    };
    let a = &config.alerts;
    let alert_stage = crate::alert_stage::AlertStage {
        book: alert_book.clone(),
        reader: reader.clone(),
        db_path: config.store.path.clone(),
        limits: crate::clinical::alert_rules::Limits {
            zone: config.site.zone(),
            freshness_window: Duration::from_secs(
                u64::from(config.clinical.stale_after_minutes) * 60,
            ),
            sensor_silent_after: Duration::from_secs(u64::from(a.sensor_silent_minutes) * 60),
            battery_low_percent: a.battery_low_percent,
            backlog_max_age: Duration::from_secs(u64::from(a.backlog_max_minutes) * 60),
            cert_warn_days: i64::from(a.certificate_warn_days),
            disk_low_bytes: a.disk_low_mb.saturating_mul(1024 * 1024),
        },
        lifecycle: crate::clinical::alert_rules::Lifecycle {
            clear_hold: Duration::from_secs(u64::from(a.clear_after_minutes) * 60),
            reannounce_after: Duration::from_secs(u64::from(a.reannounce_minutes) * 60),
        },
        started_at: Timestamp::now(),
        every: Duration::from_secs(u64::from(a.evaluate_every_seconds)),
        store_stats: store_stats.clone(),
        uplink: config.uplink.enabled.then(|| uplink_status.clone()),
        changed: alerts_changed.clone(),
        heartbeat: alerts_beat,
        web: Some(web_beat.clone()),
        cancel: cancel.clone(),
    };
    let alerts_task = tokio::spawn(alert_stage.run());
    tracing::info!(source = source.name(), "sensor source starting");
    let sensor = tokio::spawn(source.start(SourceContext {
        frames: frames_tx,
        cancel: cancel.clone(),
        heartbeat: sensor_beat,
    }));
    let ingest_stage = Ingest {
        rx: frames_rx,
        store: store_handle.clone(),
        registry: registry.clone(),
        stats: ingest_stats.clone(),
        heartbeat: ingest_beat,
        clock_synced: crate::system::clock_synchronised,
        zone: config.site.zone(),
        racp: ble_status.racp.clone(),
    };
    let hang_ingest = fault::hang_requested("ingest");
    let ingest = tokio::spawn(async move {
        if hang_ingest {
            // Test fault: the stage never takes a frame, as if stuck.
            std::future::pending::<()>().await;
        }
        ingest_stage.run().await
    });

    let listeners = crate::web::serve::bind(&config).await?;
    let bound = listeners.bound;

    // The privileged resources are open: from here on the daemon needs no root.
    if drop_privileges {
        let user = config.system.user.clone();
        let db = config.store.path.clone();
        let dropped = tokio::task::spawn_blocking(move || {
            let mut files = privileges::database_files(&db);
            // The web certificate and the CLI token, made above as root.
            if let Some(dir) = db.parent() {
                for name in [
                    crate::web::serve::CLI_TOKEN_FILE,
                    crate::web::tls::GENERATED_CERT,
                    crate::web::tls::GENERATED_KEY,
                ] {
                    let path = dir.join(name);
                    if path.exists() {
                        files.push(path);
                    }
                }
            }
            files.extend(db_dir);
            let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
            privileges::drop_to(&user, &paths)
        })
        .await
        .context("privilege drop task failed")?;
        match dropped {
            Ok(()) => {
                tracing::info!(user = %config.system.user, "started as root: now running as the configured user")
            }
            Err(e @ PrivilegeError::NoSuchUser(_)) if !require_user => {
                tracing::warn!(error = %e, "started as root: staying root for the demo");
            }
            Err(e) => return Err(e.into()),
        }
    }

    let health = Arc::new(health);
    let is_ble = config.sensors.source == SourceKind::Ble;
    let ble_seen = is_ble.then(|| (ble_status.clone(), store_handle.event_sink()));
    let state = AppState {
        reader,
        stale_after: Duration::from_secs(u64::from(config.clinical.stale_after_minutes) * 60),
        health: health.clone(),
        started_at: Timestamp::now(),
        version: env!("CARGO_PKG_VERSION"),
        pairing,
        registry,
        store: store_handle,
        ble: is_ble.then(|| BleHandle {
            status: ble_status,
            adapter: config.ble.adapter.clone(),
            passkeys,
        }),
        uplink: uplink_status.clone(),
        accounts: web_security.accounts,
        auth: web_security.auth,
        alerts: alert_book,
        gateway_name: config.site.gateway_id.as_str().into(),
        zone: config.site.zone(),
        ingest: ingest_stats,
        events: events.clone(),
        web_metrics: Default::default(),
        overview: Default::default(),
    };
    let live = tokio::spawn(events.watch(store_stats.clone(), uplink_status.clone()));
    let mut router = app(state);
    if fault::hang_requested("web") {
        // Test fault: every request waits forever, as if the server were stuck.
        router = router.layer(axum::middleware::from_fn(
            |_req: axum::extract::Request, _next: axum::middleware::Next| async {
                std::future::pending::<axum::response::Response>().await
            },
        ));
    }
    let (server_tls, probe_tls) = match web_security.tls {
        Some((server, leaf)) => (Some(server), Some(crate::web::tls::pinned_client(leaf)?)),
        None => (None, None),
    };
    let web = crate::web::serve::serve(
        listeners,
        server_tls,
        router,
        cancel.clone(),
        web_security.redirect.clone(),
    )?;
    let probe = tokio::spawn(probe::run(
        bound,
        probe_tls,
        web_beat,
        web.table.clone(),
        cancel.clone(),
    ));
    let trim = tokio::spawn(crate::system::memory::trim_heap(cancel.clone()));
    let seen_flush = ble_seen
        .map(|(status, sink)| tokio::spawn(persist_sightings(status, sink, cancel.clone())));

    let uplink_enabled = config.uplink.enabled;
    let describe = move || {
        let uplink = uplink_enabled.then(|| uplink_status.snapshot());
        status_line(
            resident_count,
            device_count,
            store_stats.readings_committed.load(Ordering::Relaxed),
            store_stats.last_commit(),
            uplink.as_ref(),
        )
    };
    notifier.ready(&describe());
    let scheme = if config.web.https { "https" } else { "http" };
    let url = format!("{scheme}://{}/", probe::reachable(bound));
    let mut sign_in_url = None;
    match &web_security.first_start {
        crate::web::auth::signin::FirstStart::Ready => {}
        crate::web::auth::signin::FirstStart::SetupCode(code) => {
            // To the log (and so to journald): whoever can read the gateway's log
            // may create the first admin.
            tracing::warn!(
                setup_code = %code,
                "no admin account yet: open {url}setup and type the setup code {code} (valid 24 hours, once; a restart makes a new one)"
            );
        }
        crate::web::auth::signin::FirstStart::SignInLink(token) => {
            sign_in_url = Some(format!("{url}signin/{token}"));
        }
    }
    tracing::info!(residents = resident_count, web = %url, db = %config.store.path.display(), "carehub running");
    on_ready(&Ready {
        addr: bound,
        url,
        sign_in_url,
    });

    let plan = match notifier.watchdog_timeout() {
        Ok(timeout) => WatchdogPlan::for_timeout(timeout),
        Err(e) => {
            // Run without pings: systemd then restarts us, which is loud and safe.
            tracing::error!(error = %e, "watchdog settings unreadable; not pinging");
            WatchdogPlan::for_timeout(None)
        }
    };
    if let Some(every) = plan.ping_every {
        tracing::info!(
            every_ms = every.as_millis() as u64,
            stall_after_s = plan.stall_after.as_secs(),
            "systemd watchdog on"
        );
    }
    let supervisor = tokio::spawn(
        Supervisor {
            health,
            notifier,
            plan,
            describe: describe.clone(),
        }
        .run(cancel.clone()),
    );

    // The running configuration; stages that apply changes live subscribe to it.
    let (config_tx, _config_rx) = watch::channel(config);
    tokio::pin!(shutdown);
    let why = loop {
        tokio::select! {
            why = &mut shutdown => break why,
            // The database file is damaged: stop in order (what is in flight
            // goes to the rescue file or the damaged file, read back at the next
            // start) and exit non-zero, so that systemd restarts carehub into
            // the start-up check, which moves the file aside (decision 0015).
            () = damage_found.cancelled() => break "the database file is damaged",
            _ = hangup.recv() => {
                reload(&config_source, &config_tx, notifier, &describe).await;
                uplink_reload.notify_one();
            }
        }
    };
    tracing::info!(signal = why, "shutting down");
    cancel.cancel();
    // The supervisor first: once it has stopped, no ping or status can follow
    // STOPPING (on a busy machine one did, between STOPPING and the cancel).
    // Bounded: a supervisor that does not stop must not hold the shutdown.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), supervisor).await;
    notifier.stopping(&format!("stopping ({why}): committing what is in flight"));

    let stop = async {
        let _ = probe.await;
        let _ = trim.await;
        let _ = live.await;
        if let Some(flush) = seen_flush {
            let _ = flush.await;
        }
        let _ = sensor.await;
        let _ = ingest.await;
        let _ = alerts_task.await;
        if let Some(uplink) = uplink {
            let _ = uplink.await;
        }
        // The web API holds a store handle too (assignments): it stops first.
        let _ = web.task.await;
        // Every store handle is gone now; the writer commits what is left and exits.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    };
    let stopped = tokio::time::timeout(SHUTDOWN_DEADLINE, stop).await;
    if damage_found.is_cancelled() {
        bail!(
            "stopped because the database file {} is damaged; the next start moves it aside, starts a fresh one and copies into it what can be read (systemd restarts carehub)",
            db_path_for_exit.display()
        );
    }
    match stopped {
        Ok(()) => {
            tracing::info!("stopped cleanly; everything received is committed");
            Ok(())
        }
        Err(_) => bail!("shutdown took longer than {SHUTDOWN_DEADLINE:?}; some stage did not stop"),
    }
}

/// How often the signal strength and last-seen time of registered devices are
/// written to the registry: often enough for the page after a restart, rarely
/// enough to spare the SD card.
const PERSIST_SIGHTINGS_EVERY: Duration = Duration::from_secs(30);

/// Writes what the radio heard from registered devices to the `devices` table
/// until cancelled, then once more.
async fn persist_sightings(
    status: Arc<BleStatus>,
    sink: crate::store::EventSink,
    cancel: CancellationToken,
) {
    let mut since = Timestamp::from_unix_ms(0);
    let mut tick = tokio::time::interval(PERSIST_SIGHTINGS_EVERY);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = cancel.cancelled() => true,
        };
        let now = Timestamp::now();
        if let Err(e) = sink.seen(status.seen_since(since)) {
            tracing::warn!(error = %e, "signal strength and last-seen not persisted");
        }
        since = now;
        if stopping {
            break;
        }
    }
}

/// SIGHUP: re-read the file; a bad one is logged with its line and key and the
/// running configuration stays.
async fn reload(
    source: &ConfigSource,
    current: &watch::Sender<Config>,
    notifier: Notifier,
    describe: &impl Fn() -> String,
) {
    notifier.reloading();
    match source.reload(current).await {
        Ok(r) if r.changed.is_empty() => {
            tracing::info!("SIGHUP: configuration re-read; nothing changed");
            notifier.ready(&format!("config re-read, unchanged; {}", describe()));
        }
        Ok(r) => {
            tracing::info!(changed = ?r.changed, "SIGHUP: configuration reloaded");
            if !r.need_restart.is_empty() {
                tracing::warn!(keys = ?r.need_restart, "these changed keys take effect only after a restart (systemctl restart carehub)");
            }
            notifier.ready(&format!(
                "config reloaded; restart needed for: {}; {}",
                if r.need_restart.is_empty() {
                    "nothing".to_owned()
                } else {
                    r.need_restart.join(", ")
                },
                describe()
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: configuration not reloaded");
            notifier.ready(&format!("config reload rejected: {e}"));
        }
    }
}

/// The STATUS line `systemctl status` shows while every stage is moving.
fn status_line(
    residents: usize,
    devices: usize,
    readings: u64,
    last_commit: Option<Timestamp>,
    uplink: Option<&crate::uplink::status::StatusSnapshot>,
) -> String {
    let last = match last_commit {
        Some(t) => format!(
            "last commit {}",
            crate::web::describe_age(t.age_at(Timestamp::now()))
        ),
        None => "nothing committed yet".to_owned(),
    };
    let uplink = match uplink {
        Some(u) => format!("uplink {}, backlog {}", u.state.as_str(), u.backlog),
        None => "uplink off".to_owned(),
    };
    format!(
        "{devices} devices, {residents} residents, {readings} readings stored, {last}; {uplink}"
    )
}
