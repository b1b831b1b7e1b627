//! The Bluetooth source: residents' sensors through BlueZ over D-Bus, with btleplug.
//!
//! It scans continuously and turns every advertisement that carries data into a
//! [`RawFrame`]; it holds GATT sessions with the registered health devices (see
//! [`session`]), at most `max_connections` at a time; and it recovers on its own
//! when discovery falls silent, the adapter vanishes, or bluetoothd restarts.
//!
//! The work is done in *rounds*: a round opens BlueZ, finds the adapter, starts
//! discovery and runs until something ends it (the adapter or `org.bluez` going
//! away, BlueZ's event stream ending). The supervisor then starts a new round
//! after a back-off. Starting from scratch, rather than patching the old state,
//! is what makes a bluetoothd restart safe: nothing from the old BlueZ survives.
//!
//! Safety: only devices in the registry (the `devices` table) get a GATT session.
//! Everything else is only heard (its sighting is kept in [`BleStatus`]) and its
//! frames are dropped by ingest as unregistered. An unregistered health device is
//! paired (bonded) only while staff hold a pairing window open, or when it is on
//! the allow-list ([`pairing`]); a paired device is still not attributed to anyone
//! until it is registered to a resident or room.

pub mod agent;
pub mod pairing;
pub mod session;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use btleplug::api::{Central as _, CentralEvent, Manager as _, Peripheral as _, ScanFilter};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::BleConfig;
use crate::ingest::Registry;
use crate::model::{DeviceAddress, SiteZone, Timestamp};
use crate::sensor::{Advertisement, Frame, RawFrame, Source, SourceContext, SourceTask};
use crate::store::RegistryChange;
use crate::system::health::Heartbeat;

use pairing::{Decision, PairingPolicy};
use session::{SessionContext, SessionEnd};
use watch::{BluezChange, BluezWatch};

/// What can end a BLE round or a GATT session.
#[derive(Debug, thiserror::Error)]
pub enum BleError {
    /// btleplug (BlueZ over D-Bus) refused or failed.
    #[error("bluetooth: {0}")]
    Btleplug(#[from] btleplug::Error),
    /// The D-Bus connection that watches `org.bluez` could not be made.
    #[error("d-bus: {0}")]
    Dbus(#[from] dbus::Error),
    /// The configured adapter is not there (unplugged, blocked, or BlueZ not running).
    #[error("adapter {0} not found")]
    NoAdapter(String),
    /// The adapter was removed while in use.
    #[error("adapter {0} disappeared")]
    AdapterGone(String),
    /// `org.bluez` changed owner: bluetoothd stopped or restarted.
    #[error("bluetoothd restarted (org.bluez changed owner)")]
    BluezRestarted,
    /// BlueZ's event stream ended.
    #[error("bluez event stream ended")]
    EventsEnded,
    /// A BlueZ step took longer than allowed.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The device offers none of the measurement characteristics carehub reads.
    #[error("no measurement characteristic to subscribe to")]
    NothingToSubscribe,
    /// The connect itself failed or timed out: no link, the device was not
    /// there (or not connectable).
    #[error("not reached: {0}")]
    Unreachable(Box<BleError>),
}

impl BleError {
    /// Wraps the error of a connect attempt.
    pub fn unreachable(e: BleError) -> Self {
        BleError::Unreachable(Box::new(e))
    }
}

/// How often a round checks the adapter and the silence timer.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Every how many checks (5 s) registered devices that BlueZ holds connected
/// without a session are looked for.
const CONNECTED_CHECK_EVERY: u64 = 10;

/// Most devices a round keeps resolved (BlueZ id → address). Phones rotate
/// their private addresses every few minutes, so a long round would otherwise
/// remember every address ever heard; past this, unregistered ones are forgotten
/// and resolved again if heard again.
const MAX_KNOWN: usize = 1024;

/// Most devices whose sightings are kept; the oldest are forgotten first, so a
/// busy street cannot grow the table without bound.
const MAX_SIGHTINGS: usize = 512;

/// What the gateway last heard from one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Sighting {
    pub address: DeviceAddress,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    pub services: Vec<Uuid>,
    pub last_seen: Timestamp,
    /// Whether the device is in the registry. Unregistered devices are only
    /// listed ("nearby, not paired"); nothing they send is attributed.
    pub registered: bool,
    /// Whether BlueZ holds a bond with it (as read when first heard, or paired since).
    pub paired: bool,
}

/// The BLE source's state for status pages and logs. Cheap to share.
#[derive(Debug, Default)]
pub struct BleStatus {
    /// True while a round is scanning on a present adapter.
    pub scanning: AtomicBool,
    pub rounds_started: AtomicU64,
    pub discovery_restarts: AtomicU64,
    pub adapter_losses: AtomicU64,
    pub bluez_restarts: AtomicU64,
    pub advertisements: AtomicU64,
    pub sessions_started: AtomicU64,
    pub sessions_failed: AtomicU64,
    sightings: Mutex<HashMap<DeviceAddress, Sighting>>,
    /// What each glucose meter has handed over (RACP), across rounds.
    pub racp: session::RacpProgress,
}

impl BleStatus {
    /// Every device heard recently, newest first.
    pub fn sightings(&self) -> Vec<Sighting> {
        let mut v: Vec<Sighting> = self
            .sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
        v
    }

    /// What the gateway last heard from `address`, if anything.
    pub fn sighting(&self, address: DeviceAddress) -> Option<Sighting> {
        self.sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&address)
            .cloned()
    }

    /// The name a device last advertised, if it was heard.
    pub fn name_of(&self, address: DeviceAddress) -> Option<String> {
        self.sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&address)
            .and_then(|s| s.name.clone())
    }

    fn sighted(
        &self,
        address: DeviceAddress,
        registered: bool,
        update: impl FnOnce(&mut Sighting),
    ) {
        let mut map = self
            .sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(&address)
            && map.len() >= MAX_SIGHTINGS
            && let Some(oldest) = map.values().min_by_key(|s| s.last_seen).map(|s| s.address)
        {
            map.remove(&oldest);
        }
        let s = map.entry(address).or_insert_with(|| Sighting {
            address,
            name: None,
            rssi: None,
            services: Vec::new(),
            last_seen: Timestamp::now(),
            registered,
            paired: false,
        });
        s.last_seen = Timestamp::now();
        s.registered = registered;
        update(s);
    }
}

/// Settings for the BLE source, from `[ble]`, plus the registry it may connect to.
#[derive(Debug, Clone)]
pub struct BleSettings {
    pub adapter: String,
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub silence_restart: Duration,
    /// Registered devices (the `devices` table, and assignments made while
    /// running): the only ones given a GATT session.
    pub registered: Registry,
    /// The site's civil time zone, in which device clocks are set.
    pub zone: SiteZone,
}

impl BleSettings {
    pub fn new(config: &BleConfig, registered: Registry, zone: SiteZone) -> Self {
        BleSettings {
            adapter: config.adapter.clone(),
            max_connections: config.max_connections,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            reconnect_min: Duration::from_millis(config.reconnect_min_ms),
            reconnect_max: Duration::from_millis(config.reconnect_max_ms),
            silence_restart: Duration::from_secs(u64::from(config.silence_restart_s)),
            registered,
            zone,
        }
    }
}

/// What the web API needs of the BLE source: what it hears, and the adapter
/// for un-pairing.
#[derive(Debug, Clone)]
pub struct BleHandle {
    pub status: Arc<BleStatus>,
    pub adapter: String,
    pub passkeys: agent::PasskeyRequests,
}

impl BleStatus {
    /// What was heard from registered or paired devices since `since`, to
    /// persist; strangers are left out.
    pub fn seen_since(&self, since: Timestamp) -> Vec<crate::store::Seen> {
        self.sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| (s.registered || s.paired) && s.last_seen >= since)
            .map(|s| crate::store::Seen {
                device: s.address,
                rssi: s.rssi,
                at: s.last_seen,
                replay: None,
            })
            .collect()
    }

    /// Marks a device as no longer bonded (after un-pairing).
    pub fn unpaired(&self, address: DeviceAddress) {
        if let Some(s) = self
            .sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&address)
        {
            s.paired = false;
        }
    }
}

/// The BLE [`Source`].
pub struct Ble {
    pub settings: BleSettings,
    pub status: Arc<BleStatus>,
    pub pairing: PairingPolicy,
    pub passkeys: agent::PasskeyRequests,
}

impl Source for Ble {
    fn name(&self) -> &'static str {
        "ble"
    }

    fn start(self: Box<Self>, ctx: SourceContext) -> SourceTask {
        Box::pin(supervise(
            self.settings,
            self.status,
            self.pairing,
            self.passkeys,
            ctx,
        ))
    }
}

/// Doubling delays between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Runs rounds until cancelled, with a back-off between failed rounds.
async fn supervise(
    settings: BleSettings,
    status: Arc<BleStatus>,
    pairing: PairingPolicy,
    passkeys: agent::PasskeyRequests,
    ctx: SourceContext,
) {
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    // One btleplug manager (one D-Bus connection) for every round: bluez-async
    // keeps a task per connection until the connection is lost, so a manager per
    // round would leak a connection each time BlueZ is away. The connection
    // survives a bluetoothd restart; only a lost bus (the event stream ending)
    // calls for a new one.
    let mut manager: Option<Manager> = None;
    loop {
        status.rounds_started.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = round(&settings, &status, &pairing, &passkeys, &ctx, &mut manager).await;
        status.scanning.store(false, Ordering::Relaxed);
        let error = match outcome {
            Ok(()) => return,
            Err(e) => e,
        };
        match error {
            BleError::AdapterGone(_) => {
                status.adapter_losses.fetch_add(1, Ordering::Relaxed);
            }
            BleError::BluezRestarted => {
                status.bluez_restarts.fetch_add(1, Ordering::Relaxed);
            }
            BleError::EventsEnded => manager = None,
            _ => {}
        }
        // A round that ran a good while was healthy: start again promptly.
        if started.elapsed() > settings.reconnect_max {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "bluetooth round ended; starting again");
        // Waiting for an adapter or for bluetoothd is this stage doing its job,
        // not a hang: keep the heartbeat so the watchdog does not restart the
        // whole gateway (and, after five restarts, leave it stopped) because a
        // dongle was unplugged. The web UI, the store and the uplink carry on; the
        // adapter state is reported on /api/v1/bluetooth.
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = &mut wait => break,
                _ = beat.tick() => ctx.heartbeat.beat(),
            }
        }
    }
}

/// One device the round knows by its BlueZ id.
struct Known {
    address: DeviceAddress,
    peripheral: Peripheral,
    services: Vec<Uuid>,
    /// When the radio last heard it this round (an advertising report: a
    /// signal strength, service or manufacturer data), not merely what BlueZ
    /// remembers of it. `None`: never heard this round.
    heard_at: Option<Instant>,
    /// Whether it was dialled this round without being heard ([`Dial::Probe`]).
    probed: bool,
}

/// Per-device reconnect state.
struct Retry {
    backoff: Backoff,
    not_before: Instant,
    /// When a connect to it last failed without a link (it was not there):
    /// it is dialled again only once heard after this.
    unreachable_at: Option<Instant>,
}

/// How a registered health device with no session is dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dial {
    /// It was heard on the air (or BlueZ holds it connected).
    Heard,
    /// Never heard this round: one probe, at most one at a time and with a
    /// short connect time-out ([`PROBE_CONNECT`]), for a device that still
    /// holds a link to the gateway's controller and so does not advertise
    /// (one left up across a carehub restart, or one whose disconnect never
    /// reached it: docs/hardware.md).
    Probe,
}

/// Longest connect of a [`Dial::Probe`]: a device that holds a link is
/// reached at once; one that is not there gives its slot back after this.
const PROBE_CONNECT: Duration = Duration::from_secs(15);

/// Whether (and how) a registered health device with no session may be
/// dialled now.
///
/// - `connected`: BlueZ holds a link to it already (no advertisement needed);
/// - heard this round (`heard_at`), and, if a connect to it failed for want
///   of a link (`unreachable_at`), heard again since: a device that is not
///   there is never dialled again on old news, so it cannot hold a connection
///   slot (and pause discovery) again and again;
/// - never heard and never probed this round: one [`Dial::Probe`];
/// - and only once its back-off is over (`not_before`).
fn dial(
    now: Instant,
    connected: bool,
    heard_at: Option<Instant>,
    unreachable_at: Option<Instant>,
    not_before: Option<Instant>,
    probed: bool,
) -> Option<Dial> {
    if not_before.is_some_and(|t| now < t) {
        return None;
    }
    if connected {
        return Some(Dial::Heard);
    }
    match (heard_at, unreachable_at) {
        (Some(_), None) => Some(Dial::Heard),
        (Some(heard), Some(failed)) if heard > failed => Some(Dial::Heard),
        (None, None) if !probed => Some(Dial::Probe),
        _ => None,
    }
}

/// Whether a BlueZ event is the radio hearing the device now. btleplug also
/// reports what BlueZ remembers as if it were heard: a round's first events
/// (`DeviceDiscovered`, and `ServicesAdvertisement` from BlueZ's cache of the
/// device's services) list every device BlueZ knows, in range or not, and a
/// service list changes when a connected device's services are resolved. The
/// signal strength and advertised data come only from advertising reports
/// (BlueZ drops the signal strength when discovery stops).
fn heard_on_air(event: &CentralEvent) -> bool {
    matches!(
        event,
        CentralEvent::RssiUpdate { .. }
            | CentralEvent::ServiceDataAdvertisement { .. }
            | CentralEvent::ManufacturerDataAdvertisement { .. }
    )
}

/// The state of one round.
struct Round<'a> {
    settings: &'a BleSettings,
    status: &'a BleStatus,
    frames: mpsc::Sender<RawFrame>,
    adapter: Adapter,
    known: HashMap<PeripheralId, Known>,
    slots: Arc<Semaphore>,
    /// One probe ([`Dial::Probe`]) at a time.
    probes: Arc<Semaphore>,
    /// Sessions waiting for one of the slots.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Sessions giving their slot up now ([`session::claim_turn`]).
    yielding: Arc<std::sync::atomic::AtomicUsize>,
    sessions: JoinSet<(DeviceAddress, Result<SessionEnd, BleError>)>,
    active: HashMap<DeviceAddress, CancellationToken>,
    /// For each session started as a probe: fired when the device is heard
    /// (`SessionContext::heard`), so that it stops waiting for its turn.
    probing: HashMap<DeviceAddress, CancellationToken>,
    retries: HashMap<DeviceAddress, Retry>,
    /// Devices that gave their slot up for a turn, to dial again.
    redial: std::collections::HashSet<DeviceAddress>,
    /// Devices whose current session was started from `redial`.
    redialled: std::collections::HashSet<DeviceAddress>,
    stop: CancellationToken,
    last_heard: Instant,
    pairing: &'a PairingPolicy,
    bluez: Arc<dbus::nonblock::SyncConnection>,
    pairings: JoinSet<(DeviceAddress, Result<bool, BleError>)>,
    /// When each unregistered device may next be tried for pairing.
    pair_not_before: HashMap<DeviceAddress, Instant>,
    /// What the adapter's `Pairable` was last set to this round (`None`: not
    /// yet, or the last attempt failed): on, and until when.
    pairable: Option<Pairable>,
    /// Checks done this round, to do the slower ones every so often.
    checks: u64,
    /// The adapter's power state as last reported this round.
    adapter_state: Option<btleplug::api::CentralState>,
}

/// The adapter's pairable state as carehub last set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pairable {
    Off,
    /// Pairable until the window closes.
    Window(Timestamp),
    /// Pairable while carehub pairs an allow-listed device.
    Pairing,
}

/// How long the adapter stays pairable for carehub's own pairing of an
/// allow-listed device (BlueZ turns it off by itself after this, should the
/// round not do so first).
const PAIRING_PAIRABLE: Duration = Duration::from_secs(40);

/// After a pairing attempt (or a device found already paired), the same device is
/// not tried again for this long.
const PAIR_RETRY: Duration = Duration::from_secs(30);

async fn round(
    settings: &BleSettings,
    status: &Arc<BleStatus>,
    pairing: &PairingPolicy,
    passkeys: &agent::PasskeyRequests,
    ctx: &SourceContext,
    manager: &mut Option<Manager>,
) -> Result<(), BleError> {
    let mut watch = BluezWatch::start(&settings.adapter).await?;
    let bluez = watch.connection();
    let manager = match manager {
        Some(m) => m,
        None => manager.insert(Manager::new().await?),
    };
    let adapter = find_adapter(manager, &settings.adapter).await?;
    if let Err(e) = agent::register(&bluez, pairing.clone(), status.clone(), passkeys.clone()).await
    {
        // Without the agent, BlueZ asks nobody before a device pairs on its own
        // initiative; carehub itself still pairs only what the policy allows.
        tracing::warn!(error = %e, "pairing agent not registered");
    }
    let mut r = Round {
        settings,
        status,
        frames: ctx.frames.clone(),
        adapter,
        known: HashMap::new(),
        slots: Arc::new(Semaphore::new(settings.max_connections)),
        probes: Arc::new(Semaphore::new(1)),
        waiting: Arc::default(),
        yielding: Arc::default(),
        sessions: JoinSet::new(),
        active: HashMap::new(),
        probing: HashMap::new(),
        retries: HashMap::new(),
        redial: std::collections::HashSet::new(),
        redialled: std::collections::HashSet::new(),
        stop: ctx.cancel.child_token(),
        last_heard: Instant::now(),
        pairing,
        bluez,
        pairings: JoinSet::new(),
        pair_not_before: HashMap::new(),
        pairable: None,
        checks: 0,
        adapter_state: None,
    };
    // Registering the agent made BlueZ bondable: close that door again at once,
    // before anything is heard, unless a window is open.
    r.sync_pairable().await?;
    let mut events = r.adapter.events().await?;
    // BlueZ keeps one discovery session per D-Bus client, and this process
    // keeps one connection for every round: a round that ended after starting
    // discovery (say, on a late signal that bluetoothd restarted) leaves it
    // running, and every later StartDiscovery is refused with "Operation
    // already in progress" (seen in the virtual lab's bluetoothd_restart).
    // Stop whatever this client left running first; BlueZ refuses when there
    // is nothing to stop, which is fine.
    let _ = r.adapter.stop_scan().await;
    r.adapter.start_scan(ScanFilter::default()).await?;
    status.scanning.store(true, Ordering::Relaxed);
    tracing::info!(adapter = %settings.adapter, registered = settings.registered.len(), "bluetooth scanning");

    let mut check = tokio::time::interval(CHECK_INTERVAL);
    let result = loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break Ok(()),
            change = watch.changed() => break Err(match change {
                BluezChange::OwnerChanged => BleError::BluezRestarted,
                BluezChange::AdapterRemoved => BleError::AdapterGone(settings.adapter.clone()),
            }),
            event = events.next() => match event {
                Some(e) => if !r.on_event(e).await { break Ok(()) },
                None => break Err(BleError::EventsEnded),
            },
            Some(done) = r.sessions.join_next() => {
                if let Ok((address, outcome)) = done {
                    r.session_ended(address, outcome);
                }
            }
            Some(done) = r.pairings.join_next() => {
                if let Ok((address, outcome)) = done {
                    r.pairing_ended(address, outcome).await;
                }
            }
            _ = check.tick() => {
                if let Err(e) = r.check(&ctx.heartbeat).await {
                    break Err(e);
                }
            }
        }
    };
    r.stop.cancel();
    r.pairings.abort_all();
    let sessions = async { while r.sessions.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), sessions).await;
    if result.is_ok() {
        // Shutdown: leave the adapter idle and not pairable (BlueZ would keep
        // it bondable with no agent to ask). Best effort; BlueZ may be gone.
        let _ = tokio::time::timeout(Duration::from_millis(300), r.adapter.stop_scan()).await;
        let off = agent::set_pairable(&r.bluez, &settings.adapter, None);
        let _ = tokio::time::timeout(Duration::from_millis(300), off).await;
    }
    result
}

/// Whether BlueZ says the pairing failed on authentication: a wrong passkey,
/// a rejected or unanswered numeric comparison, or a device that gave up.
fn auth_failed(e: &BleError) -> bool {
    matches!(
        e,
        BleError::Dbus(d) if d.name().is_some_and(|n| n.starts_with("org.bluez.Error.Authentication"))
    )
}

async fn find_adapter(manager: &Manager, name: &str) -> Result<Adapter, BleError> {
    for adapter in manager.adapters().await? {
        // adapter_info is "hci0 (usb:...)": the BlueZ name comes first.
        let info = adapter.adapter_info().await?;
        if info.split_whitespace().next() == Some(name) {
            return Ok(adapter);
        }
    }
    Err(BleError::NoAdapter(name.to_owned()))
}

impl Round<'_> {
    /// Handles one BlueZ event; false when the pipeline has closed.
    async fn on_event(&mut self, event: CentralEvent) -> bool {
        let on_air = heard_on_air(&event);
        match event {
            CentralEvent::DeviceDiscovered(id) | CentralEvent::DeviceUpdated(id) => {
                if let Some(address) = self.resolve(&id).await {
                    self.heard(address, |_| {});
                    self.maybe_connect(&id);
                    self.maybe_pair(&id);
                }
            }
            CentralEvent::ServicesAdvertisement { id, services } => {
                if let Some(address) = self.resolve(&id).await {
                    // Not evidence that it is here (see heard_on_air): BlueZ's
                    // cache lists the services of every device it remembers.
                    if let Some(k) = self.known.get_mut(&id) {
                        k.services.clone_from(&services);
                    }
                    if on_air {
                        self.mark_heard(&id);
                    }
                    self.heard(address, |s| s.services = services);
                    self.maybe_connect(&id);
                    self.maybe_pair(&id);
                }
            }
            CentralEvent::RssiUpdate { id, rssi } => {
                if let Some(address) = self.resolve(&id).await {
                    if on_air {
                        self.mark_heard(&id);
                    }
                    self.heard(address, |s| s.rssi = Some(rssi));
                    self.maybe_connect(&id);
                    self.maybe_pair(&id);
                }
            }
            CentralEvent::ServiceDataAdvertisement { id, service_data } => {
                let mut service_data: Vec<_> = service_data.into_iter().collect();
                service_data.sort();
                return self
                    .advertisement(&id, |a| a.service_data = service_data)
                    .await;
            }
            CentralEvent::ManufacturerDataAdvertisement {
                id,
                manufacturer_data,
            } => {
                let mut manufacturer_data: Vec<_> = manufacturer_data.into_iter().collect();
                manufacturer_data.sort();
                return self
                    .advertisement(&id, |a| a.manufacturer_data = manufacturer_data)
                    .await;
            }
            CentralEvent::DeviceDisconnected(id) => {
                if let Some(k) = self.known.get(&id)
                    && let Some(stop) = self.active.get(&k.address)
                {
                    stop.cancel();
                }
            }
            CentralEvent::StateUpdate(state) => {
                use btleplug::api::CentralState::PoweredOn;
                // btleplug reports the state on every change of the adapter's
                // properties (Discovering, Pairable, ...): act on a change of
                // power only.
                let was = self.adapter_state.replace(state.clone());
                if was.as_ref() == Some(&state) {
                    return true;
                }
                tracing::info!(state = ?state, "adapter state changed");
                if state == PoweredOn && was.is_some() {
                    self.status
                        .discovery_restarts
                        .fetch_add(1, Ordering::Relaxed);
                    // Powering off ends the kernel's discovery, and BlueZ does
                    // not start it again on power on (seen in the virtual lab's
                    // controller_power_cycle): the round would hear nothing
                    // until the silence timer. Start it again now.
                    let _ = self.adapter.stop_scan().await;
                    match self.adapter.start_scan(ScanFilter::default()).await {
                        Ok(()) => self.last_heard = Instant::now(),
                        Err(e) => {
                            tracing::warn!(error = %e, "discovery not restarted after power on")
                        }
                    }
                    // Whatever was connected before is gone; the check below
                    // and the next advertisements bring the sessions back.
                    self.pairable = None;
                }
            }
            CentralEvent::DeviceConnected(_) | CentralEvent::DeviceServicesModified(_) => {}
        }
        true
    }

    /// Sends an advertisement carrying data down the pipeline. Advertisements
    /// with no data (RSSI or name only) update the sighting but are not frames:
    /// there is nothing in them to decode.
    async fn advertisement(
        &mut self,
        id: &PeripheralId,
        fill: impl FnOnce(&mut Advertisement),
    ) -> bool {
        let Some(address) = self.resolve(id).await else {
            return true;
        };
        self.mark_heard(id);
        let mut a = Advertisement {
            address,
            ..Advertisement::default()
        };
        if let Some(s) = self
            .status
            .sightings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&address)
        {
            a.local_name.clone_from(&s.name);
            a.rssi = s.rssi;
            a.services.clone_from(&s.services);
        }
        fill(&mut a);
        self.heard(address, |_| {});
        self.status.advertisements.fetch_add(1, Ordering::Relaxed);
        let frame = RawFrame {
            frame: Frame::Advertisement(a),
            received_at: Timestamp::now(),
        };
        tokio::select! {
            _ = self.stop.cancelled() => false,
            sent = self.frames.send(frame) => sent.is_ok(),
        }
    }

    /// Notes that the radio heard the device just now (see [`heard_on_air`]).
    fn mark_heard(&mut self, id: &PeripheralId) {
        if let Some(k) = self.known.get_mut(id) {
            k.heard_at = Some(Instant::now());
            // Its probe, if it waits for its turn, need wait no longer.
            if let Some(heard) = self.probing.remove(&k.address) {
                heard.cancel();
            }
        }
    }

    fn heard(&mut self, address: DeviceAddress, update: impl FnOnce(&mut Sighting)) {
        self.last_heard = Instant::now();
        let registered = self.settings.registered.contains(address);
        self.status.sighted(address, registered, update);
    }

    /// The device's address, learning it (and its name) from BlueZ the first time.
    async fn resolve(&mut self, id: &PeripheralId) -> Option<DeviceAddress> {
        if let Some(k) = self.known.get(id) {
            return Some(k.address);
        }
        let peripheral = self.adapter.peripheral(id).await.ok()?;
        let props = peripheral.properties().await.ok().flatten();
        let address = DeviceAddress(peripheral.address().into_inner());
        let (name, rssi, services) = match props {
            Some(p) => (p.local_name, p.rssi, p.services),
            None => (None, None, Vec::new()),
        };
        let registered = self.settings.registered.contains(address);
        if !registered {
            tracing::debug!(device = %address, name = ?name, "nearby device, not registered: observed only");
        }
        // Bonds outlive carehub (BlueZ keeps them): ask, rather than remember.
        let paired = agent::is_paired(&self.bluez, &self.settings.adapter, address)
            .await
            .unwrap_or(false);
        self.status.sighted(address, registered, |s| {
            s.name.clone_from(&name);
            s.rssi = rssi.or(s.rssi);
            s.services.clone_from(&services);
            s.paired = paired;
        });
        if self.known.len() >= MAX_KNOWN {
            let registered = &self.settings.registered;
            self.known.retain(|_, k| registered.contains(k.address));
            self.pair_not_before.clear();
        }
        self.known.insert(
            id.clone(),
            Known {
                address,
                peripheral,
                services,
                // BlueZ has a signal strength only for what discovery heard
                // since it started (it drops them when discovery stops).
                heard_at: rssi.map(|_| Instant::now()),
                probed: false,
            },
        );
        Some(address)
    }

    /// Starts a GATT session for a registered health device that has none and is
    /// not waiting out a back-off. Called whenever the device is heard: a device
    /// is reconnected when it is in range again, never dialled blindly, because a
    /// connect to an absent device would hold a connection slot until it timed out.
    fn maybe_connect(&mut self, id: &PeripheralId) {
        self.connect_if(id, false);
    }

    /// [`Round::maybe_connect`]; `connected`: BlueZ holds the link already,
    /// so the device needs no advertisement to be reached.
    fn connect_if(&mut self, id: &PeripheralId, connected: bool) {
        let Some(k) = self.known.get(id) else { return };
        let address = k.address;
        // BlueZ reports every device it remembers when a round starts, in
        // range or not, and a connect to an absent one holds a connection
        // slot for the whole connect time-out while the kernel pauses
        // discovery: the virtual lab's more_devices_than_slots starved the
        // devices that were there this way. A device heard on the air (and,
        // after a failed connect, heard again since) is dialled; one never
        // heard is probed once, briefly, one probe at a time.
        let retry = self.retries.get(&address);
        if !self.settings.registered.contains(address)
            || !session::is_health_device(&k.services)
            || self.active.contains_key(&address)
        {
            return;
        }
        let Some(how) = dial(
            Instant::now(),
            connected,
            k.heard_at,
            retry.and_then(|r| r.unreachable_at),
            retry.map(|r| r.not_before),
            k.probed,
        ) else {
            return;
        };
        let (reach_timeout, probe) = match how {
            Dial::Heard => (self.settings.connect_timeout, None),
            Dial::Probe => (
                self.settings.connect_timeout.min(PROBE_CONNECT),
                Some(self.probes.clone()),
            ),
        };
        if let Some(k) = self.known.get_mut(id)
            && how == Dial::Probe
        {
            k.probed = true;
        }
        tracing::debug!(device = %address, connected, dial = ?how, "dialling");
        let stop = self.stop.child_token();
        self.active.insert(address, stop.clone());
        let heard = CancellationToken::new();
        if how == Dial::Probe {
            self.probing.insert(address, heard.clone());
        }
        self.status.sessions_started.fetch_add(1, Ordering::Relaxed);
        let ctx = SessionContext {
            address,
            frames: self.frames.clone(),
            slots: self.slots.clone(),
            probe,
            heard,
            stop,
            round: self.stop.clone(),
            connect_timeout: self.settings.connect_timeout,
            reach_timeout,
            zone: self.settings.zone.clone(),
            racp: self.status.racp.clone(),
            clock_synchronised: crate::system::clock_synchronised,
            waiting: self.waiting.clone(),
            yielding: self.yielding.clone(),
        };
        let Some(peripheral) = self.known.get(id).map(|k| k.peripheral.clone()) else {
            return;
        };
        self.sessions
            .spawn(async move { (address, session::run(peripheral, ctx).await) });
    }

    /// Pairs an unregistered health device if the policy allows it now.
    fn maybe_pair(&mut self, id: &PeripheralId) {
        let Some(k) = self.known.get(id) else { return };
        let address = k.address;
        if self.settings.registered.contains(address)
            || !session::is_health_device(&k.services)
            || self
                .pair_not_before
                .get(&address)
                .is_some_and(|t| Instant::now() < *t)
        {
            return;
        }
        let name = self.status.name_of(address);
        let reason = match self
            .pairing
            .decide(Timestamp::now(), address, name.as_deref())
        {
            Decision::Pair(reason) => reason,
            Decision::Observe => return,
        };
        self.pair_not_before
            .insert(address, Instant::now() + PAIR_RETRY);
        self.pairing
            .log
            .record(Some(address), format!("pairing started ({reason:?})"));
        let conn = self.bluez.clone();
        let adapter = self.settings.adapter.clone();
        // Without Pairable BlueZ would pair without bonding, so the pairing
        // makes the adapter pairable itself rather than wait for the round's
        // next check: for the rest of the window, or (an allow-listed device
        // outside a window) for this pairing only. The round's check turns it
        // off again once the window is closed and no pairing runs.
        let pairable_for = self
            .pairing
            .window_closes_at(Timestamp::now())
            .map_or(PAIRING_PAIRABLE, |closes| Timestamp::now().age_at(closes));
        // The task changes the adapter behind the round's back: check again.
        self.pairable = None;
        self.pairings.spawn(async move {
            let outcome = async {
                if agent::is_paired(&conn, &adapter, address).await? {
                    return Ok(false);
                }
                agent::set_pairable(&conn, &adapter, Some(pairable_for)).await?;
                if let Err(e) = agent::pair(&conn, &adapter, address).await {
                    // A failed pairing (a wrong passkey, a rejected number)
                    // can leave the link up, and a connected device does not
                    // advertise: it would never be heard, so never tried
                    // again. Drop the link, as after a pairing that worked.
                    let _ = agent::disconnect(&conn, &adapter, address).await;
                    return Err(e);
                }
                // Pairing left a link up that nobody uses: the device is not
                // assigned yet, and while connected it does not advertise, so
                // it would never be heard (and given a session) once it is.
                // Dropping the link lets it advertise again (the virtual lab's
                // cuff_pairs_in_window waited for nothing without this).
                if let Err(e) = agent::disconnect(&conn, &adapter, address).await {
                    tracing::debug!(device = %address, error = %e, "link after pairing not dropped");
                }
                Ok(true)
            }
            .await;
            (address, outcome)
        });
    }

    async fn pairing_ended(&mut self, address: DeviceAddress, outcome: Result<bool, BleError>) {
        let what = match &outcome {
            Ok(true) => "paired and trusted; not attributed until assigned".to_owned(),
            Ok(false) => "already paired".to_owned(),
            Err(e) if auth_failed(e) => format!(
                "pairing failed: the passkey was wrong, the number was rejected, or staff did not answer in time; no bond ({e})"
            ),
            Err(e) => format!("pairing failed: {e}"),
        };
        let change = if outcome.is_ok() {
            RegistryChange::Bonded {
                kind: self
                    .status
                    .sighting(address)
                    .map_or(crate::model::DeviceKind::Unknown, |s| {
                        session::kind_from_services(&s.services)
                    }),
                name: self.status.name_of(address),
            }
        } else {
            RegistryChange::Note
        };
        // The bond is in the registry before anyone is told it exists.
        self.pairing
            .log
            .record_committed(Some(address), what, pairing::GATEWAY, change)
            .await;
        if outcome.is_ok() {
            let registered = self.settings.registered.contains(address);
            self.status
                .sighted(address, registered, |s| s.paired = true);
        }
    }

    fn session_ended(&mut self, address: DeviceAddress, outcome: Result<SessionEnd, BleError>) {
        self.active.remove(&address);
        self.probing.remove(&address);
        let was_redialled = self.redialled.remove(&address);
        let retry = self.retries.entry(address).or_insert_with(|| Retry {
            backoff: Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max),
            not_before: Instant::now(),
            unreachable_at: None,
        });
        match outcome {
            Ok(end) => {
                tracing::info!(device = %address, end = ?end, "gatt session ended");
                retry.backoff.reset();
                // Even after a clean end, wait the shortest back-off: a spot-check
                // device still advertising as it powers down is not reconnected
                // in a tight loop.
                retry.not_before = Instant::now() + retry.backoff.next_delay();
                retry.backoff.reset();
                retry.unreachable_at = None;
                // A device that gave its slot up for a turn advertises again,
                // but BlueZ signals an advertisement only when something in it
                // changed: nothing would bring it back. It was there a moment
                // ago: dial it again once its back-off is over.
                // A session dialled again after a turn can be stopped at once
                // by BlueZ's late report that the link it gave up is down
                // (seen in the virtual lab): dial it once more.
                let stopped_late =
                    end == SessionEnd::Stopped && was_redialled && !self.stop.is_cancelled();
                if end == SessionEnd::Yielded || stopped_late {
                    self.redial.insert(address);
                    for k in self.known.values_mut().filter(|k| k.address == address) {
                        k.heard_at = Some(Instant::now());
                    }
                }
            }
            Err(e) => {
                self.status.sessions_failed.fetch_add(1, Ordering::Relaxed);
                let delay = retry.backoff.next_delay();
                retry.not_before = Instant::now() + delay;
                if matches!(e, BleError::Unreachable(_)) {
                    // Not there: dialled again only once heard again, and the
                    // back-off keeps growing while it stays away.
                    retry.unreachable_at = Some(Instant::now());
                }
                tracing::warn!(device = %address, error = %e, retry_in_ms = delay.as_millis() as u64, "gatt session failed");
            }
        }
    }

    /// What the adapter's pairable state should be now: on while the window
    /// is open or carehub is pairing, off otherwise.
    fn pairable_wanted(&self) -> Pairable {
        if let Some(closes) = self.pairing.window_closes_at(Timestamp::now()) {
            Pairable::Window(closes)
        } else if !self.pairings.is_empty() {
            Pairable::Pairing
        } else {
            Pairable::Off
        }
    }

    /// Sets the adapter's `Pairable` (and `PairableTimeout`) when it should
    /// change. Turning it off must work: a failure is this round's end, so the
    /// next round tries again from scratch.
    async fn sync_pairable(&mut self) -> Result<(), BleError> {
        let wanted = self.pairable_wanted();
        if self.pairable == Some(wanted) {
            return Ok(());
        }
        let timeout = match wanted {
            Pairable::Off => None,
            Pairable::Window(closes) => Some(Timestamp::now().age_at(closes)),
            Pairable::Pairing => Some(PAIRING_PAIRABLE),
        };
        self.pairable = None;
        agent::set_pairable(&self.bluez, &self.settings.adapter, timeout).await?;
        tracing::info!(pairable = ?wanted, "adapter pairable state set");
        self.pairable = Some(wanted);
        Ok(())
    }

    /// The periodic check: the adapter is still there, and discovery still hears
    /// something while sensors are known.
    async fn check(&mut self, heartbeat: &Heartbeat) -> Result<(), BleError> {
        if self.adapter.adapter_info().await.is_err() {
            return Err(BleError::AdapterGone(self.settings.adapter.clone()));
        }
        self.sync_pairable().await?;
        if !self.settings.registered.is_empty()
            && self.last_heard.elapsed() >= self.settings.silence_restart
        {
            self.status
                .discovery_restarts
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                silent_for_s = self.last_heard.elapsed().as_secs(),
                "no advertisement heard; restarting discovery"
            );
            // Stopping may fail if BlueZ already stopped on its own.
            let _ = self.adapter.stop_scan().await;
            self.adapter.start_scan(ScanFilter::default()).await?;
            self.last_heard = Instant::now();
        }
        // A registered device that BlueZ holds connected does not advertise, so
        // it is never heard: one left connected by a pairing, by another
        // client, or by carehub before a restart. Give it its session now
        // (the virtual lab's bond_survives_carehub_restart waited two minutes
        // for a strap held this way).
        self.checks = self.checks.wrapping_add(1);
        if self.checks.is_multiple_of(CONNECTED_CHECK_EVERY) {
            let idle: Vec<(PeripheralId, Peripheral)> = self
                .known
                .iter()
                .filter(|(_, k)| {
                    self.settings.registered.contains(k.address)
                        && !self.active.contains_key(&k.address)
                        && session::is_health_device(&k.services)
                })
                .map(|(id, k)| (id.clone(), k.peripheral.clone()))
                .collect();
            for (id, peripheral) in idle {
                if peripheral.is_connected().await.unwrap_or(false) {
                    self.connect_if(&id, true);
                }
            }
        }
        // Devices that yielded their slot, once their back-off is over.
        if !self.redial.is_empty() {
            let now = Instant::now();
            let due: Vec<DeviceAddress> = self
                .redial
                .iter()
                .copied()
                .filter(|a| self.retries.get(a).is_none_or(|r| now >= r.not_before))
                .collect();
            for address in due {
                self.redial.remove(&address);
                self.redialled.insert(address);
                let id = self
                    .known
                    .iter()
                    .find(|(_, k)| k.address == address)
                    .map(|(id, _)| id.clone());
                if let Some(id) = id {
                    self.connect_if(&id, false);
                }
            }
        }
        // A device un-assigned (or un-paired) while connected: close its session,
        // so the link and its connection slot are not held for data nobody may
        // keep. It is not dialled again unless it is registered again.
        for (address, stop) in &self.active {
            if !stop.is_cancelled() && !self.settings.registered.contains(*address) {
                tracing::info!(device = %address, "no longer registered: closing its gatt session");
                stop.cancel();
            }
        }
        // Healthy means scanning on a present adapter, not merely running.
        heartbeat.beat();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn a_device_only_remembered_by_bluez_is_probed_once_then_left_alone() {
        let now = Instant::now();
        // What BlueZ remembers (a round's first events, its cache of the
        // services) is not heard_on_air, so heard_at stays None: one probe.
        assert_eq!(dial(now, false, None, None, None, false), Some(Dial::Probe));
        // Probed already this round and not heard: left alone, however long.
        let later = now + Duration::from_secs(3600);
        assert_eq!(dial(later, false, None, None, None, true), None);
        // The probe failed: not probed again either.
        assert_eq!(dial(later, false, None, Some(now), Some(now), false), None);
        // Heard, no failure: dialled once its back-off is over.
        assert_eq!(
            dial(now, false, Some(now), None, None, true),
            Some(Dial::Heard)
        );
        let soon = Some(now + Duration::from_secs(1));
        assert_eq!(dial(now, false, Some(now), None, soon, true), None);
        // Held connected by BlueZ: reached without an advertisement.
        assert_eq!(dial(now, true, None, None, None, true), Some(Dial::Heard));
    }

    #[test]
    fn a_device_not_reached_is_dialled_again_only_once_heard_again() {
        let heard = Instant::now();
        let failed = heard + Duration::from_secs(20);
        let later = failed + Duration::from_secs(60);
        // The connect failed after it was last heard: old news, no dial, even
        // long after the back-off.
        assert_eq!(
            dial(later, false, Some(heard), Some(failed), Some(failed), false),
            None
        );
        // Heard again since the failure: dialled.
        let again = failed + Duration::from_secs(5);
        assert_eq!(
            dial(later, false, Some(again), Some(failed), Some(failed), true),
            Some(Dial::Heard)
        );
    }

    #[test]
    fn sightings_are_bounded_and_forget_the_oldest() {
        let status = BleStatus::default();
        for i in 0..(MAX_SIGHTINGS + 10) {
            let a = DeviceAddress([0, 0, 0, 0, (i >> 8) as u8, i as u8]);
            status.sighted(a, false, |s| s.rssi = Some(-50));
        }
        let s = status.sightings();
        assert_eq!(s.len(), MAX_SIGHTINGS);
        assert!(s.iter().all(|x| !x.registered && x.rssi == Some(-50)));
    }
}
