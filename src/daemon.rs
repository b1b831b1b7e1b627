//! Wires the stages together and runs them until shutdown.
//!
//! sensor source → (bounded channel) → ingest (decode, attribute) → store writer
//! thread → SQLite → (when `[uplink] enabled`) the MQTT uplink; the web server
//! reads beside. Shutdown runs in data-flow order: the source stops, ingest drains
//! what is in flight into the store, the uplink says goodbye and releases what the
//! broker has not acknowledged, the writer commits it and exits; all within
//! [`SHUTDOWN_DEADLINE`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SourceKind};
use crate::ingest::{Ingest, IngestStats};
use crate::model::Timestamp;
use crate::sensor::RawFrame;
use crate::sensor::simulator::Simulator;
use crate::store::{Store, StoreSettings};
use crate::system::health::{Health, Heartbeat};
use crate::web::{AppState, app};

/// Every stage must have stopped this long after the shutdown signal.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);

/// How often the simulator looks for due frames.
const SIMULATOR_TICK: Duration = Duration::from_millis(250);

/// Runs the daemon until `shutdown` resolves. `on_ready` receives the bound web
/// address once the store is open, the source is running and the listener is bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = &'static str>,
    on_ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let mut health = Health::default();
    let store_beat = health.register("store");
    let sensor_beat = health.register("sensor");
    let ingest_beat = health.register("ingest");
    let uplink_beat = config.uplink.enabled.then(|| health.register("uplink"));

    let settings = StoreSettings::from(&config.store);
    let runtime = tokio::runtime::Handle::current();
    let store = tokio::task::spawn_blocking(move || Store::open(settings, runtime, store_beat))
        .await
        .context("store start-up task failed")?
        .with_context(|| format!("cannot open the database {}", config.store.path.display()))?;
    let Store {
        handle: store_handle,
        reader,
        writer,
    } = store;

    let simulator = match config.sensors.source {
        SourceKind::Simulator => Simulator::new(&config.simulator.to_simulator_config()),
        SourceKind::Ble => bail!(
            "sensors.source = \"ble\" is not available in this build yet (the Bluetooth layer is its own piece of work); use \"simulator\""
        ),
    };
    let (residents, devices) = simulator.roster();
    let registry = Ingest::registry_from(&devices);
    let resident_count = residents.len();
    store_handle
        .provision(residents, devices)
        .await
        .map_err(|e| anyhow::anyhow!("cannot record the residents and devices: {e}"))?;

    let cancel = CancellationToken::new();
    let (frames_tx, frames_rx) = mpsc::channel::<RawFrame>(config.sensors.channel_capacity);
    let sensor = tokio::spawn(run_simulator(
        simulator,
        frames_tx,
        cancel.clone(),
        sensor_beat,
    ));
    let uplink_status = Arc::new(crate::uplink::UplinkStatus::new(
        crate::uplink::ConnectionState::Disabled,
    ));
    let uplink = match uplink_beat {
        Some(heartbeat) => {
            let reload = Arc::new(tokio::sync::Notify::new());
            spawn_sighup(reload.clone(), cancel.clone())
                .context("cannot install the SIGHUP handler")?;
            let task = crate::uplink::Uplink {
                settings: crate::uplink::UplinkSettings::from_config(&config),
                store: store_handle.clone(),
                status: uplink_status.clone(),
                heartbeat,
                cancel: cancel.clone(),
                reload,
                version: env!("CARGO_PKG_VERSION"),
            };
            Some(tokio::spawn(task.run()))
        }
        None => None,
    };
    let ingest = tokio::spawn(
        Ingest {
            rx: frames_rx,
            store: store_handle,
            registry,
            stats: Arc::new(IngestStats::default()),
            heartbeat: ingest_beat,
            clock_synced: crate::system::clock_synchronised,
        }
        .run(),
    );

    let listener = tokio::net::TcpListener::bind(config.web.listen)
        .await
        .with_context(|| format!("cannot listen on {} (web.listen)", config.web.listen))?;
    let bound = listener
        .local_addr()
        .context("listener has no local address")?;
    let state = AppState {
        reader,
        stale_after: Duration::from_secs(u64::from(config.clinical.stale_after_minutes) * 60),
        health: Arc::new(health),
        started_at: Timestamp::now(),
        version: env!("CARGO_PKG_VERSION"),
        uplink: uplink_status,
    };
    let web_cancel = cancel.clone();
    let web = tokio::spawn(async move {
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async move { web_cancel.cancelled().await })
            .await
    });

    tracing::info!(residents = resident_count, web = %format!("http://{bound}/"), db = %config.store.path.display(), "carehub running");
    on_ready(bound);

    let why = shutdown.await;
    tracing::info!(signal = why, "shutting down");
    cancel.cancel();

    let stop = async {
        let _ = sensor.await;
        let _ = ingest.await;
        if let Some(uplink) = uplink {
            let _ = uplink.await;
        }
        // Every store handle is gone now; the writer commits what is left and exits.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        let _ = web.await;
    };
    match tokio::time::timeout(SHUTDOWN_DEADLINE, stop).await {
        Ok(()) => {
            tracing::info!("stopped cleanly; everything received is committed");
            Ok(())
        }
        Err(_) => bail!("shutdown took longer than {SHUTDOWN_DEADLINE:?}; some stage did not stop"),
    }
}

/// Notifies `reload` on every SIGHUP until `cancel`: the uplink reloads its
/// certificate files without a restart (and without touching the backlog).
fn spawn_sighup(
    reload: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                got = hup.recv() => match got {
                    Some(()) => {
                        tracing::info!("SIGHUP: reloading the uplink certificates");
                        reload.notify_one();
                    }
                    None => break,
                },
            }
        }
    });
    Ok(())
}

async fn run_simulator(
    mut sim: Simulator,
    tx: mpsc::Sender<RawFrame>,
    cancel: CancellationToken,
    beat: Heartbeat,
) {
    let mut tick = tokio::time::interval(SIMULATOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        beat.beat();
        for frame in sim.poll(Timestamp::now()) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                sent = tx.send(frame) => if sent.is_err() { return },
            }
        }
    }
}
