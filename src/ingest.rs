//! The decode stage: raw frames in, attributed readings out to the store.
//!
//! It decodes each frame, gives every value an id, its unit and its times, and
//! attributes it to the resident (or room) the device is assigned to. Frames from
//! devices nobody registered are counted and dropped: their data belongs to no
//! resident and is not kept. Decode errors are counted and logged; the stage never
//! stops for a bad frame.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::decode::{DecodeError, Decoder};
use crate::model::{Device, DeviceAddress, Reading, ReadingId, SiteZone, Subject};
use crate::sensor::RawFrame;
use crate::store::StoreHandle;
use crate::system::health::Heartbeat;

/// Counters for status pages and metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub frames: AtomicU64,
    pub readings: AtomicU64,
    pub decode_errors: AtomicU64,
    pub duplicates: AtomicU64,
    pub unregistered: AtomicU64,
    pub store_errors: AtomicU64,
}

/// Who each registered device belongs to. Shared between ingest, the BLE source
/// (which connects only to registered devices) and the web API (which assigns
/// devices while running). Cheap to clone; clones share the map.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<RwLock<HashMap<DeviceAddress, Subject>>>);

impl Registry {
    pub fn from_devices(devices: &[Device]) -> Self {
        Registry(Arc::new(RwLock::new(
            devices
                .iter()
                .map(|d| (d.address, d.subject.clone()))
                .collect(),
        )))
    }

    pub fn subject(&self, address: DeviceAddress) -> Option<Subject> {
        self.0.read().unwrap().get(&address).cloned()
    }

    pub fn contains(&self, address: DeviceAddress) -> bool {
        self.0.read().unwrap().contains_key(&address)
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers `address` to `subject` (or moves it); call after the store has
    /// recorded the assignment, so a restart keeps it.
    pub fn assign(&self, address: DeviceAddress, subject: Subject) {
        self.0.write().unwrap().insert(address, subject);
    }

    /// Takes `address` out of the registry: from now on its frames are dropped
    /// as unregistered and the BLE source starts no session with it. Call after
    /// the store has recorded the un-assignment.
    pub fn unassign(&self, address: DeviceAddress) -> bool {
        self.0.write().unwrap().remove(&address).is_some()
    }
}

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
        let mut frames = Vec::with_capacity(MAX_BATCH);
        loop {
            let got = tokio::select! {
                n = self.rx.recv_many(&mut frames, MAX_BATCH) => n,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                    self.heartbeat.beat();
                    continue;
                }
            };
            if got == 0 {
                break;
            }
            self.heartbeat.beat();
            let synced = (self.clock_synced)();
            let mut readings = Vec::with_capacity(frames.len() * 2);
            for raw in frames.drain(..) {
                self.stats.frames.fetch_add(1, Ordering::Relaxed);
                self.attribute(&mut decoder, raw, synced, &mut readings);
            }
            if readings.is_empty() {
                continue;
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
        tracing::debug!("ingest stopped: sources closed and all frames handed to the store");
    }

    fn attribute(
        &self,
        decoder: &mut Decoder,
        raw: RawFrame,
        clock_synced: bool,
        out: &mut Vec<Reading>,
    ) {
        let address = raw.frame.address();
        let Some(subject) = self.registry.subject(address) else {
            self.stats.unregistered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match decoder.decode(&raw.frame) {
            Ok(decoded) => {
                // Qualified values (an accelerometer axis, a PLX fast or slow average)
                // are shown by `carehub decode` but not stored: the store has no
                // column for the qualifier, and a fast SpO2 average stored as plain
                // SpO2 would pass for the reading staff are meant to see.
                for v in decoded.values.into_iter().filter(|v| v.qualifier.is_none()) {
                    out.push(Reading {
                        // Given by the store at commit, from the sequence number:
                        // no bytes on disk (docs/decisions/0011).
                        id: ReadingId::UNASSIGNED,
                        device: address,
                        subject: subject.clone(),
                        quantity: v.quantity,
                        value: v.value,
                        unit: v.unit,
                        measured_at: v
                            .device_time
                            .and_then(|t| t.to_timestamp(&self.zone, raw.received_at)),
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
                tracing::warn!(device = %address, error = %e, "frame not decoded");
            }
        }
    }
}
