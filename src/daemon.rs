//! Wires the stages together and runs them until shutdown.
//!
//! sensor source → (bounded channel) → ingest (decode, attribute) → store writer
//! thread → SQLite; the web server reads beside. Shutdown runs in data-flow order:
//! the source stops, ingest drains what is in flight into the store, the writer
//! commits it and exits; all within [`SHUTDOWN_DEADLINE`].
//!
//! The source is chosen by `[sensors] source`: the simulator provisions its own
//! roster; the BLE source reads the registry from the `devices` table, so only
//! devices someone registered there are connected to and attributed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
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
use crate::web::{AppState, app};

/// Every stage must have stopped this long after the shutdown signal.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);

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

    // The allow-list was validated with the configuration.
    let allow = config
        .ble
        .allow
        .iter()
        .filter_map(|e| e.parse().ok())
        .collect();
    let pairing = PairingPolicy::new(allow);
    let ble_status = Arc::new(BleStatus::default());
    let passkeys = PasskeyRequests::default();
    let (source, registry, resident_count): (Box<dyn Source>, _, _) = match config.sensors.source {
        SourceKind::Simulator => {
            let simulator = Simulator::new(&config.simulator.to_simulator_config());
            let (residents, devices) = simulator.roster();
            let registry = Ingest::registry_from(&devices);
            let resident_count = residents.len();
            store_handle
                .provision(residents, devices)
                .await
                .map_err(|e| anyhow::anyhow!("cannot record the residents and devices: {e}"))?;
            (Box::new(simulator), registry, resident_count)
        }
        SourceKind::Ble => {
            let devices_reader = reader.clone();
            let devices = tokio::task::spawn_blocking(move || devices_reader.devices())
                .await
                .context("device registry task failed")?
                .context("cannot read the device registry")?;
            let registry = Ingest::registry_from(&devices);
            let settings = BleSettings::new(&config.ble, registry.clone());
            tracing::info!(devices = devices.len(), "device registry read");
            let ble = Ble {
                settings,
                status: ble_status.clone(),
                pairing: pairing.clone(),
                passkeys: passkeys.clone(),
            };
            (Box::new(ble), registry, 0)
        }
    };

    let cancel = CancellationToken::new();
    let (frames_tx, frames_rx) = mpsc::channel::<RawFrame>(config.sensors.channel_capacity);
    tracing::info!(source = source.name(), "sensor source starting");
    let sensor = tokio::spawn(source.start(SourceContext {
        frames: frames_tx,
        cancel: cancel.clone(),
        heartbeat: sensor_beat,
    }));
    let ingest = tokio::spawn(
        Ingest {
            rx: frames_rx,
            store: store_handle.clone(),
            registry: registry.clone(),
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
        pairing,
        registry,
        store: store_handle,
        ble: (config.sensors.source == SourceKind::Ble).then(|| BleHandle {
            status: ble_status,
            adapter: config.ble.adapter.clone(),
            passkeys,
        }),
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
        // The web API holds a store handle too (assignments): it stops first.
        let _ = web.await;
        // Every store handle is gone now; the writer commits what is left and exits.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    };
    match tokio::time::timeout(SHUTDOWN_DEADLINE, stop).await {
        Ok(()) => {
            tracing::info!("stopped cleanly; everything received is committed");
            Ok(())
        }
        Err(_) => bail!("shutdown took longer than {SHUTDOWN_DEADLINE:?}; some stage did not stop"),
    }
}
