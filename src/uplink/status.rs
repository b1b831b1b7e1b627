//! What the uplink shows the rest of the gateway (web page, logs): connection
//! state, the last error in words, counts and the certificate's expiry. Shared as
//! an `Arc<UplinkStatus>`; the uplink task is the only writer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

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
}

impl UplinkStatus {
    pub fn new(state: ConnectionState) -> UplinkStatus {
        UplinkStatus {
            inner: Mutex::new(Inner {
                state,
                last_error: None,
                certificate_expires_at: None,
                certificate_warning: None,
            }),
            readings_delivered: AtomicU64::new(0),
            messages_delivered: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
        }
    }

    pub fn set_state(&self, state: ConnectionState) {
        self.inner.lock().unwrap().state = state;
    }

    pub fn set_error(&self, at: Timestamp, message: String) {
        self.inner.lock().unwrap().last_error = Some((at, message));
    }

    pub fn set_certificate(&self, expires_at: Option<Timestamp>, warning: Option<String>) {
        let mut i = self.inner.lock().unwrap();
        i.certificate_expires_at = expires_at;
        i.certificate_warning = warning;
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let i = self.inner.lock().unwrap().clone();
        StatusSnapshot {
            state: i.state,
            last_error: i.last_error,
            readings_delivered: self.readings_delivered.load(Ordering::Relaxed),
            messages_delivered: self.messages_delivered.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            backlog: self.backlog.load(Ordering::Relaxed),
            certificate_expires_at: i.certificate_expires_at,
            certificate_warning: i.certificate_warning,
        }
    }
}
