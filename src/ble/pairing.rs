//! Who may pair: the pairing window staff open, and the provisioned allow-list.
//!
//! Pairing (bonding) with a device is a decision about a resident's data, so it
//! happens only while a staff member has opened the window (from the web API or
//! `carehub pair --window 120`), or for a device on the allow-list. Everything
//! else is observed and never bonded. The decision is pure ([`PairingPolicy::decide`]);
//! the BlueZ side (the agent and the `Pair` calls) lives in `agent`.
//!
//! Every pairing attempt, its outcome and every window opened is recorded through
//! [`PairingLog`]: into SQLite's `pairing_events` (through the store's
//! [`EventSink`], so the record survives restarts) and into a small bounded
//! in-memory cache for tests and logs. Pages read the record from SQLite.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use crate::config::{AllowEntry, AllowEntryError};
use crate::model::{DeviceAddress, Timestamp};
use crate::store::{EventSink, PairingRecord, RegistryChange};

/// Longest window a staff member can open at once (the error message says 600).
pub const MAX_WINDOW: Duration = Duration::from_secs(600);

/// Who the gateway itself is in the record, for what it did without being asked.
pub const GATEWAY: &str = "gateway";

/// Longest wait for the store to commit an event that must be durable first.
const COMMIT_WAIT: Duration = Duration::from_secs(5);

/// Most pairing events kept in memory (a cache; SQLite holds the record).
const LOG_CAPACITY: usize = 256;

/// What can be wrong with a pairing request or an allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    /// The window length is zero or longer than [`MAX_WINDOW`].
    #[error("a pairing window must be 1 to 600 seconds, not {0}")]
    WindowLength(u64),
}

/// Why a device may pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairReason {
    Window,
    AllowList,
}

/// The answer for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Pair(PairReason),
    /// Observe only: never bond, attribute nothing.
    Observe,
}

/// Something that happened about pairing, for the record.
#[derive(Debug, Clone, PartialEq)]
pub struct PairingEvent {
    pub at: Timestamp,
    pub address: Option<DeviceAddress>,
    pub what: String,
}

/// The record of pairing events: written to the store when one is attached, and
/// the newest kept in memory, bounded. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PairingLog {
    recent: Arc<Mutex<VecDeque<PairingEvent>>>,
    sink: Option<EventSink>,
}

impl PairingLog {
    /// Records something the gateway did by itself.
    pub fn record(&self, address: Option<DeviceAddress>, what: impl Into<String>) {
        self.record_change(address, what, GATEWAY, RegistryChange::Note);
    }

    /// Records an event asked for by `who`, with the registry change it stands
    /// for, without waiting for the commit. Callers that must not act before the
    /// record is durable use the store's `record` and then [`PairingLog::remember`].
    pub fn record_change(
        &self,
        address: Option<DeviceAddress>,
        what: impl Into<String>,
        who: &str,
        change: RegistryChange,
    ) {
        let what = what.into();
        if let Some(sink) = &self.sink {
            let record = new_record(address, &what, who, change);
            if let Err(e) = sink.record(record) {
                tracing::error!(error = %e, event = %what, "pairing event not recorded in the database");
            }
        }
        self.remember(address, what, who);
    }

    /// Records an event and waits (up to a few seconds) until the database has it,
    /// for changes that must be durable before they take effect.
    pub async fn record_committed(
        &self,
        address: Option<DeviceAddress>,
        what: impl Into<String>,
        who: &str,
        change: RegistryChange,
    ) {
        let what = what.into();
        if let Some(sink) = &self.sink {
            let record = new_record(address, &what, who, change);
            match tokio::time::timeout(COMMIT_WAIT, sink.record_committed(record)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, event = %what, "pairing event not recorded in the database")
                }
                Err(_) => {
                    tracing::error!(event = %what, "pairing event not committed in time; it may still be")
                }
            }
        }
        self.remember(address, what, who);
    }

    /// Logs an event and keeps it in the in-memory cache only (its database
    /// record, if any, was written by the caller).
    pub fn remember(&self, address: Option<DeviceAddress>, what: impl Into<String>, who: &str) {
        let event = PairingEvent {
            at: Timestamp::now(),
            address,
            what: what.into(),
        };
        tracing::info!(device = ?event.address.map(|a| a.to_string()), event = %event.what, who, "pairing");
        let mut log = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() == LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(event);
    }

    /// The newest events since start-up, oldest first.
    pub fn events(&self) -> Vec<PairingEvent> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// The pairing window and the allow-list, shared by the web API (which opens
/// the window), the agent and the BLE rounds. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PairingPolicy {
    closes_at: Arc<Mutex<Option<Timestamp>>>,
    allow: Arc<Vec<AllowEntry>>,
    pub log: PairingLog,
}

impl PairingPolicy {
    pub fn new(allow: Vec<AllowEntry>) -> Self {
        PairingPolicy {
            allow: Arc::new(allow),
            ..PairingPolicy::default()
        }
    }

    /// Writes every event to the store from now on, as well as the cache.
    pub fn with_sink(mut self, sink: EventSink) -> Self {
        self.log.sink = Some(sink);
        self
    }

    /// Opens (or extends, or shortens) the window to `length` from `now`, as
    /// asked by `who`.
    pub fn open_window(
        &self,
        now: Timestamp,
        length: Duration,
        who: &str,
    ) -> Result<Timestamp, PairingError> {
        if length.is_zero() || length > MAX_WINDOW {
            return Err(PairingError::WindowLength(length.as_secs()));
        }
        let closes = now.saturating_add(length);
        *self
            .closes_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(closes);
        self.log.record_change(
            None,
            format!("window opened for {} s", length.as_secs()),
            who,
            RegistryChange::Note,
        );
        Ok(closes)
    }

    pub fn close_window(&self, who: &str) {
        if self
            .closes_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some()
        {
            self.log
                .record_change(None, "window closed", who, RegistryChange::Note);
        }
    }

    /// When the window closes, if it is open at `now`.
    pub fn window_closes_at(&self, now: Timestamp) -> Option<Timestamp> {
        self.closes_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .filter(|c| *c > now)
    }

    pub fn allow_list(&self) -> &[AllowEntry] {
        &self.allow
    }

    /// May `address`, advertising `name`, pair at `now`?
    pub fn decide(&self, now: Timestamp, address: DeviceAddress, name: Option<&str>) -> Decision {
        let allowed = self.allow.iter().any(|e| {
            e.address == address
                && e.model
                    .as_deref()
                    .is_none_or(|m| name.is_some_and(|n| n.trim() == m))
        });
        if allowed {
            Decision::Pair(PairReason::AllowList)
        } else if self.window_closes_at(now).is_some() {
            Decision::Pair(PairReason::Window)
        } else {
            Decision::Observe
        }
    }
}

/// A pairing record stamped now.
fn new_record(
    address: Option<DeviceAddress>,
    what: &str,
    who: &str,
    change: RegistryChange,
) -> PairingRecord {
    PairingRecord {
        at: Timestamp::now(),
        device: address,
        what: what.to_owned(),
        who: who.to_owned(),
        change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_unix_ms(1_800_000_000_000);

    fn addr(s: &str) -> DeviceAddress {
        s.parse().unwrap()
    }

    #[test]
    fn decisions() {
        let policy = PairingPolicy::new(vec![
            "AA:AA:AA:AA:AA:01".parse().unwrap(),
            "AA:AA:AA:AA:AA:02=UA-651BLE".parse().unwrap(),
        ]);
        let check = |now: Timestamp, a: &str, name: Option<&str>, expected: Decision| {
            assert_eq!(policy.decide(now, addr(a), name), expected, "{a} {name:?}");
        };
        use Decision::*;
        // Window closed: only the allow-list pairs, and a model must match.
        check(T0, "AA:AA:AA:AA:AA:01", None, Pair(PairReason::AllowList));
        check(
            T0,
            "AA:AA:AA:AA:AA:02",
            Some("UA-651BLE"),
            Pair(PairReason::AllowList),
        );
        check(T0, "AA:AA:AA:AA:AA:02", Some("Other"), Observe);
        check(T0, "AA:AA:AA:AA:AA:02", None, Observe);
        check(T0, "BB:BB:BB:BB:BB:BB", Some("Strap"), Observe);
        // Window open: anyone, until it closes.
        let closes = policy
            .open_window(T0, Duration::from_secs(120), "cli")
            .unwrap();
        assert_eq!(closes, T0.saturating_add(Duration::from_secs(120)));
        check(
            T0,
            "BB:BB:BB:BB:BB:BB",
            Some("Strap"),
            Pair(PairReason::Window),
        );
        check(
            closes.saturating_sub(Duration::from_millis(1)),
            "BB:BB:BB:BB:BB:BB",
            None,
            Pair(PairReason::Window),
        );
        check(closes, "BB:BB:BB:BB:BB:BB", None, Observe);
        policy
            .open_window(T0, Duration::from_secs(60), "cli")
            .unwrap();
        policy.close_window("cli");
        check(T0, "BB:BB:BB:BB:BB:BB", None, Observe);
        let log: Vec<String> = policy.log.events().into_iter().map(|e| e.what).collect();
        assert_eq!(
            log,
            [
                "window opened for 120 s",
                "window opened for 60 s",
                "window closed"
            ]
        );
    }

    #[test]
    fn window_length_is_bounded() {
        let policy = PairingPolicy::default();
        for bad in [0, 601, 86_400] {
            assert_eq!(
                policy.open_window(T0, Duration::from_secs(bad), "cli"),
                Err(PairingError::WindowLength(bad))
            );
        }
        assert_eq!(policy.window_closes_at(T0), None);
    }

    #[test]
    fn allow_entries_parse_and_reject_garbage() {
        let e: AllowEntry = " AA:BB:CC:DD:EE:FF = UA-651BLE ".parse().unwrap();
        assert_eq!(e.to_string(), "AA:BB:CC:DD:EE:FF=UA-651BLE");
        let e: AllowEntry = "aa:bb:cc:dd:ee:ff".parse().unwrap();
        assert_eq!(e.to_string(), "AA:BB:CC:DD:EE:FF");
        assert!(matches!(
            "AA:BB:CC:DD:EE:FF=".parse::<AllowEntry>(),
            Err(AllowEntryError::EmptyModel(_))
        ));
        assert!(matches!(
            "AA:BB:CC=x".parse::<AllowEntry>(),
            Err(AllowEntryError::Address(_))
        ));
    }
}
