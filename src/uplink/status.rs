//! What the uplink shows the rest of the gateway (web page, logs): connection
//! state, the last error in words, counts and the certificate's expiry. Shared as
//! an `Arc<UplinkStatus>`; the uplink task is the only writer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::model::Timestamp;

/// Where the connection to the broker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// `[uplink] enabled = false`.
    Disabled,
    Connecting,
    Connected,
    /// Waiting before the next attempt.
    Backoff,
    Stopped,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Disabled => "disabled",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Backoff => "waiting to reconnect",
            ConnectionState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
struct Inner {
    state: ConnectionState,
    last_error: Option<(Timestamp, String)>,
    certificate_expires_at: Option<Timestamp>,
    certificate_warning: Option<String>,
    /// `None` until the uplink starts (then `"5"` or `"3.1.1"`).
    protocol: Option<&'static str>,
    last_refusal: Option<(Timestamp, String)>,
    max_packet_size: Option<u32>,
    /// The last warning logged and when, for [`UplinkStatus::warn_due`].
    warned: Option<(Instant, String)>,
}

/// The same warning is logged at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The uplink's visible state.
#[derive(Debug)]
pub struct UplinkStatus {
    inner: Mutex<Inner>,
    /// Readings the broker has acknowledged since start.
    pub readings_delivered: AtomicU64,
    /// Messages the broker has acknowledged since start.
    pub messages_delivered: AtomicU64,
    /// Connections made since start.
    pub connections: AtomicU64,
    /// Readings waiting in the outbox, as last counted.
    pub backlog: AtomicU64,
    /// Messages the broker refused since start (MQTT 5 PUBACK reason code
    /// 0x80 or more; always 0 under 3.1.1, which cannot say).
    pub messages_refused: AtomicU64,
    /// Readings held after repeated refusals: kept, not sent until a retry.
    pub held_readings: AtomicU64,
    /// The last reconnect delay drawn by the back-off, in milliseconds.
    pub retry_delay_ms: AtomicU64,
    /// Receipts mode: readings the broker has (or is taking) and whose
    /// receipt from the cloud consumer is awaited; kept in the outbox.
    pub awaiting_receipt: AtomicU64,
    /// Receipts mode: readings sent again because no receipt came in time.
    pub receipt_timeouts: AtomicU64,
    /// Staff asked to try held readings again (the gateway page).
    pub retry: Notify,
}

/// A copy of the status at one moment, for pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    pub state: ConnectionState,
    pub last_error: Option<(Timestamp, String)>,
    pub readings_delivered: u64,
    pub messages_delivered: u64,
    pub connections: u64,
    pub backlog: u64,
    pub certificate_expires_at: Option<Timestamp>,
    pub certificate_warning: Option<String>,
    pub protocol: Option<&'static str>,
    pub messages_refused: u64,
    pub held_readings: u64,
    /// Receipts mode: readings whose receipt is awaited.
    pub awaiting_receipt: u64,
    /// Receipts mode: readings sent again because no receipt came in time.
    pub receipt_timeouts: u64,
    /// The last refusal: topic, reason and code.
    pub last_refusal: Option<(Timestamp, String)>,
    /// The broker's Maximum Packet Size (MQTT 5 CONNACK), if it gave one.
    pub max_packet_size: Option<u32>,
}

impl UplinkStatus {
    pub fn new(state: ConnectionState) -> UplinkStatus {
        UplinkStatus {
            inner: Mutex::new(Inner {
                state,
                last_error: None,
                certificate_expires_at: None,
                certificate_warning: None,
                protocol: None,
                last_refusal: None,
                max_packet_size: None,
                warned: None,
            }),
            readings_delivered: AtomicU64::new(0),
            messages_delivered: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            messages_refused: AtomicU64::new(0),
            held_readings: AtomicU64::new(0),
            retry_delay_ms: AtomicU64::new(0),
            awaiting_receipt: AtomicU64::new(0),
            receipt_timeouts: AtomicU64::new(0),
            retry: Notify::new(),
        }
    }

    pub fn set_protocol(&self, protocol: &'static str) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .protocol = Some(protocol);
    }

    pub fn set_refusal(&self, at: Timestamp, what: String) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_refusal = Some((at, what));
    }

    pub fn set_max_packet_size(&self, size: Option<u32>) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .max_packet_size = size;
    }

    /// Staff ask for held readings to be tried again.
    pub fn request_retry(&self) {
        self.retry.notify_one();
    }

    /// Whether `warning` should be logged now: a warning is logged again only
    /// once [`WARN_EVERY`] has passed, or when its words changed, so that a
    /// reconnecting uplink does not repeat it at every attempt.
    pub fn warn_due(&self, warning: &str, now: Instant) -> bool {
        let mut i = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let due = match &i.warned {
            Some((at, text)) => text != warning || now.duration_since(*at) >= WARN_EVERY,
            None => true,
        };
        if due {
            i.warned = Some((now, warning.to_owned()));
        }
        due
    }

    pub fn set_state(&self, state: ConnectionState) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state = state;
    }

    pub fn set_error(&self, at: Timestamp, message: String) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_error = Some((at, message));
    }

    pub fn set_certificate(&self, expires_at: Option<Timestamp>, warning: Option<String>) {
        let mut i = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        i.certificate_expires_at = expires_at;
        i.certificate_warning = warning;
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let i = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        StatusSnapshot {
            state: i.state,
            last_error: i.last_error,
            readings_delivered: self.readings_delivered.load(Ordering::Relaxed),
            messages_delivered: self.messages_delivered.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            backlog: self.backlog.load(Ordering::Relaxed),
            certificate_expires_at: i.certificate_expires_at,
            certificate_warning: i.certificate_warning,
            protocol: i.protocol,
            messages_refused: self.messages_refused.load(Ordering::Relaxed),
            held_readings: self.held_readings.load(Ordering::Relaxed),
            awaiting_receipt: self.awaiting_receipt.load(Ordering::Relaxed),
            receipt_timeouts: self.receipt_timeouts.load(Ordering::Relaxed),
            last_refusal: i.last_refusal,
            max_packet_size: i.max_packet_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_warning_is_logged_at_most_once_a_day() {
        let s = UplinkStatus::new(ConnectionState::Connecting);
        let t0 = Instant::now();
        assert!(s.warn_due("expires in 9 days", t0));
        // Every reconnect attempt of the day after: not again.
        for minutes in [0, 1, 60, 23 * 60] {
            assert!(!s.warn_due("expires in 9 days", t0 + Duration::from_secs(minutes * 60)));
        }
        assert!(s.warn_due("expires in 9 days", t0 + WARN_EVERY));
        // Different words (a day less, or another problem) are logged at once.
        assert!(s.warn_due("expires in 8 days", t0 + WARN_EVERY));
    }
}
