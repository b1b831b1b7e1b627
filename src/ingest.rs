//! The decode stage: raw frames in, attributed readings out to the store.
//!
//! It decodes each frame, gives every value an id, its unit and its times, and
//! attributes it to the resident (or room) the device is assigned to. Frames from
//! devices nobody registered are counted and dropped: their data belongs to no
//! resident and is not kept. Decode errors are counted and logged; the stage never
//! stops for a bad frame.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::decode::{BindKey, DecodeError, Decoder, ReplayCounters};
use crate::model::{Device, DeviceAddress, Reading, ReadingId, SiteZone, Subject, Timestamp};
use crate::sensor::RawFrame;
use crate::sensor::racp::Verdict;
use crate::store::{Seen, StoreHandle, StoredKey};
use crate::system::health::Heartbeat;

/// Counters for status pages and metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub frames: AtomicU64,
    pub readings: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Of the decode errors, frames refused as replayed, forged (integrity
    /// check failed) or downgraded to plain text: someone may be imitating a
    /// sensor whose key carehub holds.
    pub refused: AtomicU64,
    pub duplicates: AtomicU64,
    pub unregistered: AtomicU64,
    pub store_errors: AtomicU64,
}

/// Who each registered device belongs to, and the encryption keys of those
/// that encrypt. Shared between ingest, the BLE source (which connects only to
/// registered devices) and the web API (which assigns devices and sets keys
/// while running). Cheap to clone; clones share the maps.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    subjects: Arc<RwLock<HashMap<DeviceAddress, Subject>>>,
    /// Whom each device belonged to since when, oldest first (bounded), so that
    /// a measurement is filed by the time it was taken, not by when it arrived.
    history: Arc<RwLock<HashMap<DeviceAddress, Vec<AssignmentSpan>>>>,
    keys: Arc<RwLock<KeyBook>>,
}

/// From `from` on (until the next span), the device belonged to `subject`
/// (`Subject::Unassigned`: to nobody).
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentSpan {
    pub subject: Subject,
    pub from: Timestamp,
}

/// Spans kept per device: a device is reassigned a few times a year; a
/// measurement older than the oldest span kept is held (unattributed).
const HISTORY_PER_DEVICE: usize = 16;

/// Bind keys with the replay counters to start them with; `generation` moves on
/// every change so that ingest re-reads the book only when it changed.
#[derive(Debug, Default)]
struct KeyBook {
    generation: u64,
    keys: HashMap<DeviceAddress, (BindKey, ReplayCounters)>,
}

impl Registry {
    pub fn from_devices(devices: &[Device]) -> Self {
        let registry = Registry::default();
        registry
            .subjects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(devices.iter().map(|d| (d.address, d.subject.clone())));
        registry
    }

    pub fn subject(&self, address: DeviceAddress) -> Option<Subject> {
        self.subjects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&address)
            .cloned()
    }

    pub fn contains(&self, address: DeviceAddress) -> bool {
        self.subjects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&address)
    }

    pub fn len(&self) -> usize {
        self.subjects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers `address` to `subject` (or moves it); call after the store has
    /// recorded the assignment, so a restart keeps it. The assignment begins
    /// now, as far as the history knows; see [`Registry::assign_since`].
    pub fn assign(&self, address: DeviceAddress, subject: Subject) {
        self.assign_since(address, subject, Timestamp::now());
    }

    /// Registers `address` to `subject` from `since` (the committed time of the
    /// assignment): measurements the device took before then are filed under
    /// whom it belonged to then ([`Registry::subject_at`]).
    pub fn assign_since(&self, address: DeviceAddress, subject: Subject, since: Timestamp) {
        self.remember(address, subject.clone(), since);
        self.subjects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address, subject);
    }

    /// Takes `address` out of the registry: from now on its frames are dropped
    /// as unregistered and the BLE source starts no session with it. Call after
    /// the store has recorded the un-assignment.
    pub fn unassign(&self, address: DeviceAddress) -> bool {
        self.remember(address, Subject::Unassigned, Timestamp::now());
        self.subjects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&address)
            .is_some()
    }

    fn remember(&self, address: DeviceAddress, subject: Subject, from: Timestamp) {
        let mut history = self.history.write().unwrap_or_else(PoisonError::into_inner);
        let spans = history.entry(address).or_default();
        spans.push(AssignmentSpan { subject, from });
        spans.sort_by_key(|s| s.from);
        let excess = spans.len().saturating_sub(HISTORY_PER_DEVICE);
        spans.drain(..excess);
    }

    /// Loads the assignment history read from the store at start:
    /// (device, subject, from, until), oldest first.
    pub fn load_history(&self, rows: &[(DeviceAddress, Subject, Timestamp, Option<Timestamp>)]) {
        let mut history = self.history.write().unwrap_or_else(PoisonError::into_inner);
        for (address, subject, from, until) in rows {
            let spans = history.entry(*address).or_default();
            spans.push(AssignmentSpan {
                subject: subject.clone(),
                from: *from,
            });
            if let Some(until) = until {
                spans.push(AssignmentSpan {
                    subject: Subject::Unassigned,
                    from: *until,
                });
            }
        }
        for spans in history.values_mut() {
            // Stable: an un-assignment and the next assignment at the same
            // instant keep their order, and the assignment wins.
            spans.sort_by_key(|s| s.from);
            let excess = spans.len().saturating_sub(HISTORY_PER_DEVICE);
            spans.drain(..excess);
        }
    }

    /// Whom a measurement the device took at `at` belongs to: `None` when the
    /// device is not registered now (its frames are dropped); the subject of
    /// the assignment in force at `at`; `Subject::Unassigned` (held: stored with
    /// the device, filed under nobody) when it was taken before any assignment
    /// the history knows or while the device belonged to nobody. A device with
    /// no recorded history (registered from the simulator's roster) files
    /// everything under its current subject.
    pub fn subject_at(&self, address: DeviceAddress, at: Timestamp) -> Option<Subject> {
        let current = self.subject(address)?;
        let history = self.history.read().unwrap_or_else(PoisonError::into_inner);
        let Some(spans) = history.get(&address).filter(|s| !s.is_empty()) else {
            return Some(current);
        };
        Some(match spans.iter().rev().find(|s| s.from <= at) {
            Some(s) => s.subject.clone(),
            None => Subject::Unassigned,
        })
    }

    /// Loads the keys and saved counters read from the store at start.
    pub fn load_keys(&self, stored: &[StoredKey]) {
        let mut book = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        for k in stored {
            book.keys.insert(k.device, (k.key, k.replay));
        }
        book.generation += 1;
    }

    /// The device encrypts with `key` from now on, its count starting again.
    /// Call after the store has recorded it.
    pub fn set_key(&self, address: DeviceAddress, key: BindKey) {
        let mut book = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        book.keys.insert(address, (key, ReplayCounters::default()));
        book.generation += 1;
    }

    /// Forgets the device's key. Call after the store has recorded it.
    pub fn clear_key(&self, address: DeviceAddress) -> bool {
        let mut book = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        book.generation += 1;
        book.keys.remove(&address).is_some()
    }

    /// Whether the device has a key.
    pub fn has_key(&self, address: DeviceAddress) -> bool {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .contains_key(&address)
    }

    fn keys_generation(&self) -> u64 {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    fn keys(&self) -> HashMap<DeviceAddress, (BindKey, ReplayCounters)> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .clone()
    }
}

/// The keys the decoder holds, kept in step with the registry's book.
#[derive(Default)]
struct KeysApplied {
    generation: Option<u64>,
    keys: HashMap<DeviceAddress, BindKey>,
    /// Keyed devices whose frames were accepted since the counters were last
    /// saved, with when they were last heard.
    heard: HashMap<DeviceAddress, Timestamp>,
}

/// How often the replay counters of encrypting devices are saved. A frame
/// captured within this long before a crash could be accepted once after it;
/// saving on every frame would cost an SD-card write per advertisement.
pub const SAVE_COUNTERS_EVERY: Duration = Duration::from_secs(60);

/// The stage's state: the decoder and who each device belongs to.
pub struct Ingest {
    pub rx: mpsc::Receiver<RawFrame>,
    pub store: StoreHandle,
    pub registry: Registry,
    pub stats: Arc<IngestStats>,
    pub heartbeat: Heartbeat,
    /// Asked once per batch: is the gateway's clock synchronised?
    pub clock_synced: fn() -> bool,
    /// The site's civil time zone: device clocks show local time.
    pub zone: SiteZone,
    /// The glucose records filed per meter (shared with the BLE source, which
    /// asks a meter only for newer ones): a record filed already is not filed
    /// again.
    pub racp: crate::sensor::RacpProgress,
}

/// A device's undecodable frames are logged at most once in this long, with how
/// many were not logged since: a sensor that also sends a frame carehub cannot
/// read, every few seconds, or someone replaying frames under its address, must
/// not fill the journal on the SD card. Every one is still counted.
pub const LOG_DECODE_ERRORS_EVERY: Duration = Duration::from_secs(60);

/// Which devices' decode errors were logged when (registered devices only, so
/// bounded by the registry). Refused frames are counted apart from other
/// errors, so that a sensor's routine undecodable frames never hide an attack.
#[derive(Debug, Default)]
struct ErrorLog {
    /// Per device and kind (refused or not): when one was last logged, and how
    /// many since were not.
    last: HashMap<(DeviceAddress, bool), (Instant, u64)>,
}

impl ErrorLog {
    /// Whether to log a failure of `device` at `now`; if so, how many failures
    /// of it were held back since the last one logged.
    fn admit(&mut self, device: (DeviceAddress, bool), now: Instant) -> Option<u64> {
        match self.last.get_mut(&device) {
            Some((at, held)) if now.saturating_duration_since(*at) < LOG_DECODE_ERRORS_EVERY => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                self.last.insert(device, (now, 0));
                Some(0)
            }
        }
    }
}

/// How long after a step of the clock a frame stamped before it is still
/// looked for (and corrected on its own).
const LATE_FRAMES_FOR: Duration = Duration::from_secs(10);

fn shifted(t: Timestamp, delta_ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(t.unix_ms().saturating_add(delta_ms))
}

/// Most frames folded into one store command.
const MAX_BATCH: usize = 512;

impl Ingest {
    pub fn registry_from(devices: &[Device]) -> Registry {
        Registry::from_devices(devices)
    }

    /// Runs until every source has closed its sender and every frame is handed to
    /// the store. Shutdown is driven by the sources: they stop, then this drains.
    pub async fn run(mut self) {
        let mut decoder = Decoder::new();
        let mut keys = KeysApplied::default();
        let mut errors = ErrorLog::default();
        let mut saved_at = Instant::now();
        let mut frames = Vec::with_capacity(MAX_BATCH);
        let mut clock = crate::system::clock::ClockWatch::new();
        let mut last_step: Option<(crate::system::clock::Step, Instant)> = None;
        loop {
            self.apply_keys(&mut decoder, &mut keys);
            if saved_at.elapsed() >= SAVE_COUNTERS_EVERY {
                self.save_counters(&decoder, &mut keys);
                saved_at = Instant::now();
            }
            let got = tokio::select! {
                n = self.rx.recv_many(&mut frames, MAX_BATCH) => n,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    self.heartbeat.beat();
                    if let Some(step) = clock.as_mut().and_then(|c| c.check()) {
                        last_step = Some((step, Instant::now()));
                        self.clock_stepped(step, Vec::new()).await;
                    }
                    continue;
                }
            };
            if got == 0 {
                break;
            }
            self.heartbeat.beat();
            // A step of the clock since the last look: this batch's frames
            // stamped before it are stored as unsynchronised before the
            // correction, the others after it.
            let step = clock.as_mut().and_then(|c| c.check());
            let synced = (self.clock_synced)();
            let mut before = Vec::new();
            let mut readings = Vec::with_capacity(frames.len() * 2);
            for mut raw in frames.drain(..) {
                self.stats.frames.fetch_add(1, Ordering::Relaxed);
                let (out, synced) = match step {
                    Some(s) if s.stamped_before(raw.received_at) => (&mut before, false),
                    _ => {
                        // A frame stamped before the last step but reaching
                        // ingest after it (a source descheduled between its
                        // stamp and its send): corrected here, still marked
                        // unsynchronised.
                        let late = last_step.filter(|(s, at)| {
                            at.elapsed() < LATE_FRAMES_FOR && s.stamped_before(raw.received_at)
                        });
                        match late {
                            Some((s, _)) => {
                                let first = readings.len();
                                let was = raw.received_at;
                                raw.received_at = shifted(was, s.delta_ms);
                                self.attribute(
                                    &mut decoder,
                                    &mut keys,
                                    &mut errors,
                                    raw,
                                    false,
                                    &mut readings,
                                );
                                for r in readings.iter_mut().skip(first) {
                                    // A device time that agreed with the old clock moves with it.
                                    if let Some(m) = r.measured_at
                                        && (m.unix_ms() - was.unix_ms()).abs()
                                            <= crate::model::CLOCK_TOLERANCE.as_millis() as i64
                                    {
                                        r.measured_at = Some(shifted(m, s.delta_ms));
                                    }
                                }
                                continue;
                            }
                            None => (&mut readings, synced),
                        }
                    }
                };
                self.attribute(&mut decoder, &mut keys, &mut errors, raw, synced, out);
            }
            if let Some(step) = step {
                last_step = Some((step, Instant::now()));
                self.clock_stepped(step, before).await;
            }
            self.hand_over(readings).await;
            self.save_racp();
        }
        self.save_counters(&decoder, &mut keys);
        tracing::debug!("ingest stopped: sources closed and all frames handed to the store");
    }

    /// Has the store save how far each meter's records are filed; queued after
    /// the readings of those records, so never committed before them.
    fn save_racp(&self) {
        let filed = self.racp.take_unsaved();
        if let Err(e) = self.store.event_sink().racp_filed(filed) {
            tracing::warn!(error = %e, "cannot save how far the glucose meters' records are filed");
        }
    }

    /// Hands readings to the store without waiting for their commit.
    async fn hand_over(&self, readings: Vec<Reading>) {
        if readings.is_empty() {
            return;
        }
        let n = readings.len() as u64;
        match self.store.ingest_nowait(readings).await {
            Ok(()) => {
                self.stats.readings.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.store_errors.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, readings = n, "cannot hand readings to the store");
            }
        }
    }

    /// The clock stepped: hands over the readings stamped before the step (as
    /// unsynchronised), then has the store correct this run's unsynchronised
    /// readings by the step and waits for it, so that no reading stamped after
    /// the step is corrected (docs/decisions/0014).
    async fn clock_stepped(&self, step: crate::system::clock::Step, before: Vec<Reading>) {
        self.hand_over(before).await;
        match self.store.clock_stepped(step.delta_ms).await {
            Ok(n) => tracing::warn!(
                step_s = step.delta_ms / 1000,
                corrected = n,
                "the clock was set (stepped): readings stamped before it while it was not synchronised were corrected by the step"
            ),
            Err(e) => tracing::error!(
                error = %e,
                step_s = step.delta_ms / 1000,
                "the clock was set, and the readings stamped before it could not be corrected: they stay marked unsynchronised"
            ),
        }
    }

    /// Brings the decoder's keys in step with the registry when they changed: a
    /// key set by staff takes effect from the next batch.
    fn apply_keys(&self, decoder: &mut Decoder, applied: &mut KeysApplied) {
        let generation = self.registry.keys_generation();
        if applied.generation == Some(generation) {
            return;
        }
        let book = self.registry.keys();
        for (address, old) in &applied.keys {
            if book.get(address).is_none_or(|(key, _)| key != old) {
                decoder.clear_key(*address);
                applied.heard.remove(address);
            }
        }
        for (address, (key, counters)) in &book {
            if applied.keys.get(address) != Some(key) {
                decoder.set_key(*address, *key);
                decoder.restore_replay_counters(*address, *counters);
            }
        }
        applied.keys = book.into_iter().map(|(a, (k, _))| (a, k)).collect();
        applied.generation = Some(generation);
    }

    /// Hands the replay counters of the keyed devices heard since the last save
    /// to the store (it saves them only while the device still has that key).
    fn save_counters(&self, decoder: &Decoder, applied: &mut KeysApplied) {
        let seen: Vec<Seen> = applied
            .heard
            .drain()
            .filter_map(|(device, at)| {
                let key = *applied.keys.get(&device)?;
                Some(Seen {
                    device,
                    rssi: None,
                    at,
                    replay: Some((key, decoder.replay_counters(device))),
                })
            })
            .collect();
        if let Err(e) = self.store.event_sink().seen(seen) {
            tracing::warn!(error = %e, "cannot save the encryption counters of the sensors");
        }
    }

    fn attribute(
        &self,
        decoder: &mut Decoder,
        keys: &mut KeysApplied,
        errors: &mut ErrorLog,
        raw: RawFrame,
        clock_synced: bool,
        out: &mut Vec<Reading>,
    ) {
        let address = raw.frame.address();
        let Some(subject) = self.registry.subject(address) else {
            self.stats.unregistered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // A glucose record carries the meter's sequence number, base time and
        // content: one filed already (the same record, asked for again after
        // a restart or sent twice) is not filed twice; one at or below the
        // last number filed that was never filed is a renumbered meter's new
        // record, filed, whatever its clock says (H35).
        let record = match &raw.frame {
            crate::sensor::Frame::Notification(n) => crate::sensor::glucose_record(n),
            _ => None,
        };
        let verdict = record.map(|(r, key)| (r, key, self.racp.judge(address, r, key)));
        match verdict {
            Some((r, _, Verdict::Repeat)) => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::info!(device = %address, sequence = r.sequence, "glucose record filed already: not filed again");
                return;
            }
            Some((r, _, Verdict::Renumbered)) => {
                tracing::warn!(
                    device = %address,
                    sequence = r.sequence,
                    filed_up_to = ?self.racp.last(address),
                    "{}",
                    crate::sensor::racp::renumbered_words(r.sequence)
                );
            }
            _ => {}
        }
        match decoder.decode(&raw.frame) {
            Ok(decoded) => {
                if let Some((r, key, verdict)) = verdict {
                    self.racp.filed(address, r, key, verdict, raw.received_at);
                }
                if keys.keys.contains_key(&address) {
                    keys.heard.insert(address, raw.received_at);
                }
                // Qualified values (an accelerometer axis, a PLX fast or slow average)
                // are shown by `carehub decode` but not stored: the store has no
                // column for the qualifier, and a fast SpO2 average stored as plain
                // SpO2 would pass for the reading staff are meant to see.
                for v in decoded.values.into_iter().filter(|v| v.qualifier.is_none()) {
                    let measured_at = v
                        .device_time
                        .and_then(|t| t.to_timestamp(&self.zone, raw.received_at));
                    // Filed by when it was taken: a spot-check device moved to
                    // another resident uploads its memory on connect, and what
                    // it measured before the move is never filed under the new
                    // resident (issue 15; docs/safety).
                    let taken = crate::model::trusted_time(measured_at, raw.received_at);
                    let subject = match measured_at {
                        Some(_) => self
                            .registry
                            .subject_at(address, taken)
                            .unwrap_or(Subject::Unassigned),
                        None => subject.clone(),
                    };
                    out.push(Reading {
                        // Given by the store at commit, from the sequence number:
                        // no bytes on disk (docs/decisions/0011).
                        id: ReadingId::UNASSIGNED,
                        device: address,
                        subject,
                        quantity: v.quantity,
                        value: v.value,
                        unit: v.unit,
                        measured_at,
                        received_at: raw.received_at,
                        clock_synced,
                    });
                }
            }
            Err(DecodeError::Duplicate(_)) => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                let refused = matches!(
                    e,
                    DecodeError::Authentication(_)
                        | DecodeError::Downgrade(_)
                        | DecodeError::Replay { .. }
                );
                if refused {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                let Some(not_logged) = errors.admit((address, refused), Instant::now()) else {
                    return;
                };
                if refused {
                    tracing::warn!(device = %address, error = %e, not_logged, "frame refused: replayed, forged or unencrypted from a sensor with a key; someone may be imitating it");
                } else {
                    tracing::warn!(device = %address, error = %e, not_logged, "frame not decoded");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_are_logged_once_a_minute_per_device_with_what_was_held_back() {
        let mut log = ErrorLog::default();
        let (a, b) = (
            (DeviceAddress([1; 6]), false),
            (DeviceAddress([2; 6]), false),
        );
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(log.admit(a, at(0)), Some(0), "the first is logged");
        assert_eq!(log.admit(a, at(1)), None);
        assert_eq!(
            log.admit(b, at(1)),
            Some(0),
            "each device has its own minute"
        );
        assert_eq!(log.admit(a, at(59)), None);
        assert_eq!(log.admit(a, at(60)), Some(2), "two held back");
        assert_eq!(log.admit(a, at(61)), None);
        assert_eq!(log.admit(a, at(200)), Some(1));
        assert_eq!(log.admit(b, at(200)), Some(0));
        // A refused frame of a device whose other errors were just logged is
        // logged all the same.
        assert_eq!(log.admit((a.0, true), at(201)), Some(0));
        assert_eq!(log.admit((a.0, true), at(202)), None);
    }
    use crate::decode::bthome;
    use crate::model::{DeviceKind, ResidentId};
    use crate::sensor::{Advertisement, Frame};
    use crate::store::{PairingRecord, Reader, RegistryChange, Store, StoreSettings};
    use crate::system::health::Health;

    const ROOM_SENSOR: &str = "A4:C1:38:AA:BB:CC";
    const KEY: BindKey = *b"0123456789abcdef";

    fn advert(counter: u32, packet_id: u8) -> RawFrame {
        let address: DeviceAddress = ROOM_SENSOR.parse().unwrap();
        // Packet id, temperature 21.50 °C.
        let plain = [0x40, 0x00, packet_id, 0x02, 0x66, 0x08];
        let data = bthome::encrypt(address, &KEY, &plain, counter).unwrap();
        RawFrame {
            frame: Frame::Advertisement(Advertisement {
                address,
                service_data: vec![(crate::sensor::uuid16(bthome::SERVICE_UUID), data)],
                ..Advertisement::default()
            }),
            received_at: Timestamp::now(),
        }
    }

    /// Runs the stage over `frames` until they are all handed to the store and
    /// the stage has stopped, as at a gateway's shutdown. Returns its counters.
    async fn run_over(store: &Store, registry: &Registry, frames: Vec<RawFrame>) -> IngestStats {
        let (tx, rx) = mpsc::channel(16);
        let stats = Arc::new(IngestStats::default());
        let stage = Ingest {
            rx,
            store: store.handle.clone(),
            registry: registry.clone(),
            stats: stats.clone(),
            heartbeat: Health::default().register("ingest"),
            clock_synced: || true,
            zone: SiteZone::utc(),
            // As the daemon does at start: what the store kept.
            racp: {
                let racp = crate::sensor::RacpProgress::default();
                racp.load(&store.reader.racp_progress().unwrap());
                racp
            },
        };
        let task = tokio::spawn(stage.run());
        for f in frames {
            tx.send(f).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        // What the stage queued (readings, counters) is committed before the
        // next command is answered.
        store.handle.maintain(Timestamp::now()).await.unwrap();
        Arc::try_unwrap(stats).unwrap()
    }

    /// Staff set a key: committed with its pairing-record line.
    async fn set_key_in(store: &Store, address: DeviceAddress, key: BindKey) {
        store
            .handle
            .event_sink()
            .record_committed(PairingRecord {
                at: Timestamp::now(),
                device: Some(address),
                what: "encryption key set".into(),
                who: "test".into(),
                change: RegistryChange::KeySet(key),
            })
            .await
            .unwrap();
    }

    fn stored(reader: &Reader) -> u64 {
        reader.outbox_depth().unwrap()
    }

    /// A blood pressure notification (GATT 0x2A35) with the cuff's own clock.
    fn cuff_reading(address: DeviceAddress, systolic: u16, at: Timestamp) -> RawFrame {
        let c = SiteZone::utc().instant_to_civil(at).unwrap();
        let mut value = vec![0x02];
        for v in [systolic, 80, 95] {
            value.extend_from_slice(&v.to_le_bytes());
        }
        value.extend_from_slice(&c.year.to_le_bytes());
        value.extend_from_slice(&[c.month, c.day, c.hour, c.minute, c.second]);
        RawFrame {
            frame: Frame::Notification(crate::sensor::Notification {
                address,
                characteristic: crate::sensor::uuid16(
                    crate::decode::gatt::BLOOD_PRESSURE_MEASUREMENT,
                ),
                value,
            }),
            received_at: Timestamp::now(),
        }
    }

    /// Issue 15: a spot-check cuff moved from resident 1 to resident 2 uploads
    /// its memory on connect. What it measured while it was resident 1's is filed
    /// under resident 1, what it measured before anyone had it is held (filed
    /// under nobody), and only what it measured since the move is resident 2's;
    /// the history survives a restart (read back from the store).
    #[tokio::test]
    async fn stored_measurements_are_filed_by_when_they_were_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            StoreSettings::at(dir.path().join("t.db")),
            tokio::runtime::Handle::current(),
            Health::default().register("store"),
        )
        .unwrap();
        let address: DeviceAddress = "C0:00:00:00:00:35".parse().unwrap();
        let resident = |id: i64| crate::model::Resident {
            id: ResidentId(id),
            display_name: format!("Resident {id}"),
            room: format!("{id}"),
            reference: format!("r-{id}"),
        };
        store
            .handle
            .provision(vec![resident(1), resident(2)], vec![])
            .await
            .unwrap();
        let hour = 3_600_000;
        let now = Timestamp::now().unix_ms();
        let at = |ms: i64| Timestamp::from_unix_ms(ms);
        for (id, when) in [(1, now - 3 * hour), (2, now - hour)] {
            store
                .handle
                .event_sink()
                .record_committed(PairingRecord {
                    at: at(when),
                    device: Some(address),
                    what: format!("assigned to resident {id}"),
                    who: "test".into(),
                    change: RegistryChange::Assigned(Device {
                        address,
                        kind: DeviceKind::BloodPressureMonitor,
                        model: None,
                        name: None,
                        subject: Subject::Resident(ResidentId(id)),
                    }),
                })
                .await
                .unwrap();
        }
        // As at start-up: the devices and their history from the store.
        let registry = Registry::from_devices(&store.reader.devices().unwrap());
        registry.load_history(&store.reader.assignment_history().unwrap());
        run_over(
            &store,
            &registry,
            vec![
                cuff_reading(address, 141, at(now - 4 * hour)),
                cuff_reading(address, 142, at(now - 2 * hour)),
                cuff_reading(address, 143, at(now - hour / 2)),
            ],
        )
        .await;
        let c = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        let filed: Vec<(i64, Option<i64>)> = c
            .prepare(
                "SELECT CAST(value AS INTEGER), resident_id FROM readings_text
                 WHERE quantity = 'systolic_pressure' ORDER BY value",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(filed, vec![(141, None), (142, Some(1)), (143, Some(2))]);
    }

    /// A Glucose Measurement (0x2A18) record: sequence number, base time,
    /// concentration in kg/L (SFLOAT, exponent -5), capillary blood, finger.
    fn glucose_record(address: DeviceAddress, sequence: u16, mgdl: u16) -> RawFrame {
        glucose_taken(address, sequence, mgdl, (9, 0))
    }

    /// A glucose record taken at `(hour, minute)` on 2026-12-03 by the
    /// meter's clock (its base time).
    fn glucose_taken(
        address: DeviceAddress,
        sequence: u16,
        mgdl: u16,
        (hour, minute): (u8, u8),
    ) -> RawFrame {
        let mut value = vec![0x02];
        value.extend_from_slice(&sequence.to_le_bytes());
        value.extend_from_slice(&2026u16.to_le_bytes());
        value.extend_from_slice(&[12, 3, hour, minute, 0]);
        let sfloat = (0xB000u16) | (mgdl & 0x0FFF);
        value.extend_from_slice(&sfloat.to_le_bytes());
        value.push(0x11);
        RawFrame {
            frame: Frame::Notification(crate::sensor::Notification {
                address,
                characteristic: crate::sensor::uuid16(crate::sensor::GLUCOSE_MEASUREMENT),
                value,
            }),
            received_at: Timestamp::now(),
        }
    }

    /// The last sequence number saved per meter.
    fn filed_up_to(reader: &Reader) -> Vec<(DeviceAddress, u16)> {
        reader
            .racp_progress()
            .unwrap()
            .into_iter()
            .map(|(d, m)| (d, m.progress.last.sequence))
            .collect()
    }

    /// The glucose readings in the database file: value, unit, device time
    /// (as minutes past midnight UTC on 2026-12-03, the tests' zone).
    fn glucose_filed(db: &std::path::Path) -> Vec<(f64, String, i64)> {
        let day = 1_796_256_000_000; // 2026-12-03T00:00:00Z
        rusqlite::Connection::open(db)
            .unwrap()
            .prepare(
                "SELECT value, unit, measured_at_ms FROM readings_text
                 WHERE quantity = 'blood_glucose' ORDER BY seq",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, (r.get::<_, i64>(2)? - day) / 60_000))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The pairing record's lines about `device` (what, who).
    fn record_of(reader: &Reader, device: DeviceAddress) -> Vec<(String, String)> {
        reader
            .pairing_events(100)
            .unwrap()
            .into_iter()
            .filter(|e| e.device == Some(device.to_string()))
            .map(|e| (e.what, e.who.unwrap_or_default()))
            .collect()
    }

    async fn glucose_meter_store(dir: &std::path::Path) -> (Store, Registry, DeviceAddress) {
        let store = Store::open(
            StoreSettings::at(dir.join("t.db")),
            tokio::runtime::Handle::current(),
            Health::default().register("store"),
        )
        .unwrap();
        let meter: DeviceAddress = "C0:FF:EE:00:00:08".parse().unwrap();
        let device = Device {
            address: meter,
            kind: DeviceKind::GlucoseMeter,
            model: None,
            name: None,
            subject: Subject::Room("Room 3".into()),
        };
        store
            .handle
            .provision(vec![], vec![device.clone()])
            .await
            .unwrap();
        (store, Registry::from_devices(&[device]), meter)
    }

    /// H35: a meter whose memory was cleared numbers its records from 1 again;
    /// taken after the last record filed, they are new and filed (with their
    /// values, units and device times), across a restart, the renumbering is
    /// written in the pairing record and kept for the technical alert, and
    /// what it sends again after that is still filed once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_meter_whose_memory_was_cleared_has_its_new_records_filed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let (store, registry, meter) = glucose_meter_store(dir.path()).await;
        let s = run_over(
            &store,
            &registry,
            (1..=3)
                .map(|n| glucose_taken(meter, n, 90 + n, (9, 10 * n as u8)))
                .collect(),
        )
        .await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 3);
        assert_eq!(filed_up_to(&store.reader), vec![(meter, 3)]);

        // A restart, then the meter's memory is cleared: records 1 and 2 of
        // the new numbering, taken later, and 1 sent twice.
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_taken(meter, 1, 150, (11, 0)),
                glucose_taken(meter, 1, 150, (11, 0)),
                glucose_taken(meter, 2, 160, (11, 5)),
            ],
        )
        .await;
        assert_eq!(
            s.readings.load(Ordering::Relaxed),
            2,
            "the new records filed"
        );
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 1);
        let mgdl = "mg/dL".to_owned();
        assert_eq!(
            glucose_filed(&db),
            vec![
                (91.0, mgdl.clone(), 9 * 60 + 10),
                (92.0, mgdl.clone(), 9 * 60 + 20),
                (93.0, mgdl.clone(), 9 * 60 + 30),
                (150.0, mgdl.clone(), 11 * 60),
                (160.0, mgdl.clone(), 11 * 60 + 5),
            ]
        );
        assert_eq!(filed_up_to(&store.reader), vec![(meter, 2)]);
        assert_eq!(
            record_of(&store.reader, meter),
            vec![(
                "the meter's record numbering started again at 1 (memory cleared or reset); records since are filed".to_owned(),
                "gateway".to_owned()
            )]
        );
        let (at, from): (Option<i64>, Option<i64>) = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT racp_renumbered_at_ms, racp_renumbered_sequence FROM devices WHERE address = ?1",
                [meter.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(at.is_some() && from == Some(1), "{at:?} {from:?}");

        // Another restart: the new records, and an old one, sent again are
        // not filed again; the next new one is.
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_taken(meter, 1, 150, (11, 0)),
                glucose_taken(meter, 2, 160, (11, 5)),
                glucose_taken(meter, 3, 93, (9, 30)),
                glucose_taken(meter, 3, 170, (11, 30)),
            ],
        )
        .await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 1);
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 3);
        assert_eq!(glucose_filed(&db).len(), 6);
        assert_eq!(filed_up_to(&store.reader), vec![(meter, 3)]);
        assert_eq!(
            record_of(&store.reader, meter).len(),
            1,
            "one renumbering, told once"
        );
    }

    /// H35: the sequence number wraps after 65,535 to 0; the records after the
    /// wrap are filed, and those before it that the meter still holds, sent
    /// again when it is asked for all its records, are not filed twice, also
    /// after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_meter_whose_numbering_wrapped_has_its_new_records_filed_and_old_ones_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let (store, registry, meter) = glucose_meter_store(dir.path()).await;
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_taken(meter, 65_534, 100, (9, 0)),
                glucose_taken(meter, 65_535, 101, (9, 1)),
            ],
        )
        .await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 2);
        // The wrap, in the same run: 0 and 1 taken later.
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_taken(meter, 0, 102, (9, 2)),
                glucose_taken(meter, 1, 103, (9, 3)),
            ],
        )
        .await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 2, "0 and 1 filed");
        assert_eq!(filed_up_to(&store.reader), vec![(meter, 1)]);
        // After a restart the meter sends everything it holds.
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_taken(meter, 65_534, 100, (9, 0)),
                glucose_taken(meter, 65_535, 101, (9, 1)),
                glucose_taken(meter, 0, 102, (9, 2)),
                glucose_taken(meter, 1, 103, (9, 3)),
                glucose_taken(meter, 2, 104, (9, 4)),
            ],
        )
        .await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 1, "only 2 is new");
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 4);
        let values: Vec<f64> = glucose_filed(&db).into_iter().map(|(v, ..)| v).collect();
        assert_eq!(values, vec![100.0, 101.0, 102.0, 103.0, 104.0]);
        assert_eq!(
            record_of(&store.reader, meter),
            vec![(
                "the meter's record numbering started again at 0 (memory cleared or reset); records since are filed".to_owned(),
                "gateway".to_owned()
            )]
        );
    }

    /// A glucose record taken at `(year, month, day, hour, minute)` by the
    /// meter's clock, with `mgdl`.
    fn glucose_on(
        address: DeviceAddress,
        sequence: u16,
        mgdl: u16,
        (year, month, day, hour, minute): (u16, u8, u8, u8, u8),
    ) -> RawFrame {
        let mut frame = glucose_taken(address, sequence, mgdl, (hour, minute));
        if let Frame::Notification(n) = &mut frame.frame {
            n.value.splice(3..7, {
                let [lo, hi] = year.to_le_bytes();
                [lo, hi, month, day]
            });
        }
        frame
    }

    /// The glucose readings in the database file: value, unit, device time
    /// as the meter gave it (ms since the epoch, none when it has no date).
    fn glucose_rows(db: &std::path::Path) -> Vec<(f64, String, Option<i64>)> {
        rusqlite::Connection::open(db)
            .unwrap()
            .prepare(
                "SELECT value, unit, measured_at_ms FROM readings_text
                 WHERE quantity = 'blood_glucose' ORDER BY seq",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Closes the store as the daemon does at shutdown (the writer drains
    /// and stops) and opens the file again: a restart.
    async fn restart(store: Store, dir: &std::path::Path) -> (Store, Registry, DeviceAddress) {
        let Store { handle, writer, .. } = store;
        drop(handle);
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        glucose_meter_store(dir).await
    }

    /// H35's residual: the meter's memory was cleared AND its clock went
    /// back (reset with the battery to 2000-01-01, never set again). Its new
    /// records, numbered from 1 again and "taken" before the last one filed,
    /// are filed, each once (also when sent again, across restarts of the
    /// gateway on the same SQLite file), staff are told as for any
    /// renumbering, and the old records it might send again stay repeats.
    /// Under the rule by base time the new records were all dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_meter_whose_memory_was_cleared_and_clock_reset_has_its_new_records_filed_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let (store, registry, meter) = glucose_meter_store(dir.path()).await;
        let dec3 = |n: u8| (2026, 12, 3, 9, 10 * n);
        let y2000 = |minute: u8| (2000, 1, 1, 0, minute);
        let s = run_over(
            &store,
            &registry,
            (1..=3)
                .map(|n| glucose_on(meter, n, 90 + n, dec3(n as u8)))
                .collect(),
        )
        .await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 3);

        let (store, registry, meter) = restart(store, dir.path()).await;
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_on(meter, 1, 150, y2000(0)),
                glucose_on(meter, 1, 150, y2000(0)),
                glucose_on(meter, 2, 160, y2000(5)),
            ],
        )
        .await;
        assert_eq!(
            (
                s.readings.load(Ordering::Relaxed),
                s.duplicates.load(Ordering::Relaxed)
            ),
            (2, 1),
            "the two new records filed, the one sent twice once"
        );
        assert_eq!(filed_up_to(&store.reader), vec![(meter, 2)]);
        assert_eq!(
            record_of(&store.reader, meter),
            vec![(
                "the meter's record numbering started again at 1 (memory cleared or reset); records since are filed".to_owned(),
                "gateway".to_owned()
            )]
        );
        let (at, from): (Option<i64>, Option<i64>) = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT racp_renumbered_at_ms, racp_renumbered_sequence FROM devices WHERE address = ?1",
                [meter.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(at.is_some() && from == Some(1), "{at:?} {from:?}");

        // Another restart: the meter sends all it holds (the new 1 and 2),
        // an old record comes again (3, as filed), and a new 3.
        let (store, registry, meter) = restart(store, dir.path()).await;
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_on(meter, 1, 150, y2000(0)),
                glucose_on(meter, 2, 160, y2000(5)),
                glucose_on(meter, 3, 93, dec3(3)),
                glucose_on(meter, 3, 170, y2000(30)),
            ],
        )
        .await;
        assert_eq!(
            (
                s.readings.load(Ordering::Relaxed),
                s.duplicates.load(Ordering::Relaxed)
            ),
            (1, 3)
        );
        let mgdl = "mg/dL".to_owned();
        let dec3_ms = |n: i64| Some(1_796_256_000_000 + (9 * 60 + 10 * n) * 60_000);
        let y2000_ms = |m: i64| Some(946_684_800_000 + m * 60_000);
        assert_eq!(
            glucose_rows(&db),
            vec![
                (91.0, mgdl.clone(), dec3_ms(1)),
                (92.0, mgdl.clone(), dec3_ms(2)),
                (93.0, mgdl.clone(), dec3_ms(3)),
                (150.0, mgdl.clone(), y2000_ms(0)),
                (160.0, mgdl.clone(), y2000_ms(5)),
                (170.0, mgdl.clone(), y2000_ms(30)),
            ],
            "each record once, with its value, unit and the meter's own time"
        );
        assert_eq!(filed_up_to(&store.reader), vec![(meter, 3)]);
        assert_eq!(record_of(&store.reader, meter).len(), 1, "told once");
    }

    /// H35's residual: a meter that does not know the date (year 0) and one
    /// renumbered up to the very number filed. Records numbered at or below
    /// the last one filed that were never filed are filed (once, across a
    /// restart); the ones filed stay repeats. Under the rule by base time
    /// (year 0: by number alone) the new ones were dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_meter_without_a_date_or_renumbered_to_the_same_number_has_its_new_records_filed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let (store, registry, meter) = glucose_meter_store(dir.path()).await;
        let year0 = |minute: u8| (0, 0, 0, 0, minute);
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_on(meter, 1, 91, year0(1)),
                glucose_on(meter, 2, 92, year0(2)),
            ],
        )
        .await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 2);
        let (store, registry, meter) = restart(store, dir.path()).await;
        // Memory cleared: a new 1 and 2 (other values), and the old 2 as filed.
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_on(meter, 2, 92, year0(2)),
                glucose_on(meter, 1, 120, year0(0)),
                glucose_on(meter, 2, 125, year0(0)),
            ],
        )
        .await;
        assert_eq!(
            (
                s.readings.load(Ordering::Relaxed),
                s.duplicates.load(Ordering::Relaxed)
            ),
            (2, 1)
        );
        let (store, registry, meter) = restart(store, dir.path()).await;
        // Renumbered again, this time up to 2, the last number filed: the
        // new 2 is another record. The one before, sent again, stays one.
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_on(meter, 2, 125, year0(0)),
                glucose_on(meter, 1, 130, (2026, 12, 3, 12, 0)),
                glucose_on(meter, 2, 131, (2026, 12, 3, 12, 5)),
                glucose_on(meter, 2, 131, (2026, 12, 3, 12, 5)),
            ],
        )
        .await;
        assert_eq!(
            (
                s.readings.load(Ordering::Relaxed),
                s.duplicates.load(Ordering::Relaxed)
            ),
            (2, 2)
        );
        let values: Vec<f64> = glucose_rows(&db).into_iter().map(|(v, ..)| v).collect();
        assert_eq!(values, vec![91.0, 92.0, 120.0, 125.0, 130.0, 131.0]);
        assert_eq!(
            glucose_rows(&db).first().map(|r| r.2),
            Some(None),
            "a meter without a date: no device time"
        );
        assert_eq!(filed_up_to(&store.reader), vec![(meter, 2)]);
        let told: Vec<String> = record_of(&store.reader, meter)
            .into_iter()
            .map(|(what, _)| what)
            .collect();
        assert_eq!(told.len(), 2, "both renumberings told: {told:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_glucose_record_is_filed_once_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, registry, meter) = glucose_meter_store(dir.path()).await;
        assert_eq!(filed_up_to(&store.reader), vec![]);

        // Records 1 and 2, then record 2 again in the same run (a meter that
        // sends it twice): filed once.
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_record(meter, 1, 95),
                glucose_record(meter, 2, 110),
                glucose_record(meter, 2, 110),
            ],
        )
        .await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 2);
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(stored(&store.reader), 2);
        // Saved with them: the next start asks the meter for records after 2.
        assert_eq!(filed_up_to(&store.reader), vec![(meter, 2)]);

        // A restart (run_over loads the progress from the store, as the
        // daemon does): a meter that sends 1 to 3 again files only 3.
        let s = run_over(
            &store,
            &registry,
            vec![
                glucose_record(meter, 1, 95),
                glucose_record(meter, 2, 110),
                glucose_record(meter, 3, 120),
            ],
        )
        .await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 1);
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 2);
        assert_eq!(stored(&store.reader), 3);
        assert_eq!(filed_up_to(&store.reader), vec![(meter, 3)]);
    }

    #[tokio::test]
    async fn keys_take_effect_while_running_and_replay_counters_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings::at(dir.path().join("t.db"));
        let store = Store::open(
            settings,
            tokio::runtime::Handle::current(),
            Health::default().register("store"),
        )
        .unwrap();
        let address: DeviceAddress = ROOM_SENSOR.parse().unwrap();
        let device = Device {
            address,
            kind: DeviceKind::Unknown,
            model: None,
            name: None,
            subject: Subject::Room("Lounge".into()),
        };
        store
            .handle
            .provision(vec![], vec![device.clone()])
            .await
            .unwrap();
        let registry = Registry::from_devices(&[device]);

        // No key yet: its encrypted data cannot be read, and nothing is stored.
        let s = run_over(&store, &registry, vec![advert(10, 1)]).await;
        assert_eq!(s.decode_errors.load(Ordering::Relaxed), 1);
        assert_eq!(
            s.refused.load(Ordering::Relaxed),
            0,
            "no key is not an attack"
        );
        assert_eq!(stored(&store.reader), 0);

        // Staff set the key: committed, then given to the running stage.
        set_key_in(&store, address, KEY).await;
        registry.set_key(address, KEY);
        let s = run_over(&store, &registry, vec![advert(10, 1), advert(11, 2)]).await;
        assert_eq!(s.readings.load(Ordering::Relaxed), 2);
        assert_eq!(stored(&store.reader), 2);
        // The stage saved the last counter it accepted when it stopped.
        let keys = store.reader.keys().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].key, KEY);
        assert_eq!(keys[0].replay.bthome, Some(11));

        // A restart: a new registry and stage from what the store kept. A frame
        // captured before the restart is a replay; a newer one is a reading.
        let after = Registry::from_devices(&store.reader.devices().unwrap());
        after.load_keys(&store.reader.keys().unwrap());
        let s = run_over(&store, &after, vec![advert(11, 2), advert(12, 3)]).await;
        assert_eq!(s.decode_errors.load(Ordering::Relaxed), 1, "the replay");
        assert_eq!(s.refused.load(Ordering::Relaxed), 1, "counted as refused");
        assert_eq!(s.readings.load(Ordering::Relaxed), 1);
        assert_eq!(stored(&store.reader), 3);
        assert_eq!(store.reader.keys().unwrap()[0].replay.bthome, Some(12));
        // pvvx's wrapping counter is saved and read back as it is (issue 15).
        store
            .handle
            .event_sink()
            .seen(vec![Seen {
                device: address,
                rssi: None,
                at: Timestamp::now(),
                replay: Some((
                    KEY,
                    ReplayCounters {
                        bthome: Some(12),
                        mibeacon: None,
                        pvvx: Some(200),
                    },
                )),
            }])
            .unwrap();
        store.handle.maintain(Timestamp::now()).await.unwrap();
        assert_eq!(store.reader.keys().unwrap()[0].replay.pvvx, Some(200));

        // Removing the key forgets the counters with it; an old save arriving
        // after a key change is not carried over to the new key.
        after.clear_key(address);
        let s = run_over(&store, &after, vec![advert(13, 4)]).await;
        assert_eq!(s.decode_errors.load(Ordering::Relaxed), 1);
        assert_eq!(stored(&store.reader), 3);
        set_key_in(&store, address, *b"fedcba9876543210").await;
        store
            .handle
            .event_sink()
            .seen(vec![Seen {
                device: address,
                rssi: None,
                at: Timestamp::now(),
                replay: Some((
                    KEY,
                    ReplayCounters {
                        bthome: Some(99),
                        mibeacon: None,
                        pvvx: Some(7),
                    },
                )),
            }])
            .unwrap();
        store.handle.maintain(Timestamp::now()).await.unwrap();
        let keys = store.reader.keys().unwrap();
        assert_eq!(keys[0].key, *b"fedcba9876543210");
        assert_eq!(keys[0].replay, ReplayCounters::default());
    }
}
