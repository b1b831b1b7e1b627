//! The uplink task: lease a batch from the outbox, publish it at QoS 1, ack the
//! lease when that message's PUBACK arrives; on any disconnect release what is
//! unacknowledged and reconnect with exponential back-off and jitter.
//!
//! How rumqttc behaves, and why nothing here depends on its memory: rumqttc gives
//! each QoS 1 publish a packet id when it takes the request off its channel and
//! reports it as `Event::Outgoing(Outgoing::Publish(pkid))`, in request order (a
//! packet-id collision holds all later requests back, so the order survives); the
//! broker's acknowledgement comes back as `Event::Incoming(Packet::PubAck(pkid))`.
//! On a connection error rumqttc moves unacknowledged publishes to its own
//! `pending` queue and resends them only if the broker resumes the session. This
//! task instead builds a fresh event loop for every connection with
//! `clean_session = true`, so rumqttc holds nothing across connections: the
//! batches it was carrying are released to the outbox and leased again.
//!
//! `EventLoop::poll` is not cancel-safe: while it connects it holds the new
//! connection inside its future, so dropping that future (another `select!`
//! branch winning) closes a connection the broker may already have accepted. The
//! broker then publishes the last will, and the cloud sees a false "offline"
//! before the first "online" (the flaky FHIR/last-will test: an alert raised
//! during the handshake woke the session loop). Dropping it while it writes can
//! also lose a packet. So the event loop runs on its own task, [`EventPump`],
//! which polls it without ever cancelling and hands each event over a channel;
//! the session waits on the channel, whose `recv` is cancel-safe.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PayloadFormat, Protocol};
use crate::model::Timestamp;
use crate::store::{LeaseId, StoreError, StoreHandle};

/// One lease covers at least this many messages: fewer round trips to the store
/// writer (which is busy committing acks) per message. The lease is acked once
/// every one of its messages has its PUBACK.
const MESSAGES_PER_LEASE: usize = 8;

/// At small batches a lease covers more messages, up to this many readings (and
/// half the messages in flight), so that a lease's fixed cost (the writer's round
/// trip, the read, the ack's commit) is shared by more readings.
const LEASE_READINGS_SMALL: usize = 256;

/// Messages per lease for `batch` readings a message and `max_inflight` messages
/// in flight (public for the drain bench, which leases as the uplink does).
pub fn messages_per_lease(batch: usize, max_inflight: u16) -> usize {
    let small = LEASE_READINGS_SMALL.div_ceil(batch.max(1));
    small
        .min(usize::from(max_inflight) / 2)
        .max(MESSAGES_PER_LEASE)
}

/// A connection that lasted this long resets the back-off when it ends; one
/// that ends sooner counts as a failed attempt.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// Alert messages outstanding at once (they are few and small; this bounds the
/// client channel, which has room for them).
const ALERTS_IN_FLIGHT: usize = 4;
use crate::system::health::Heartbeat;

use super::batch::{Encoder, Noting};
use super::cert::{CertInfo, read_cert_info};
use super::link::{self, LinkClient, LinkError, LinkEvent, LinkLoop, LinkOptions, Refusal};
use super::payload::{Presence, StatusMessage, Topics};
use super::receipts::Receipts;
use super::status::{ConnectionState, UplinkStatus};
use super::tls::{self, TlsFiles};

/// What the uplink task needs, from `[site]` and `[uplink]`.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsFiles,
    pub site: String,
    /// Also the MQTT client id and the certificate's CN.
    pub gateway: String,
    pub protocol: Protocol,
    pub payload: PayloadFormat,
    /// DEFLATE readings messages (MQTT 5 content type announces it).
    pub compact: bool,
    pub batch_max_readings: usize,
    pub max_inflight: u16,
    pub keep_alive: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub cert_warn_days: u32,
    /// Hold a batch refused (MQTT 5) or in flight when a young connection
    /// died this many times in a row.
    pub hold_after_refusals: u32,
    /// A connection that lasted this long resets the back-off when it ends,
    /// and the next connection retries held readings ([`STABLE_CONNECTION`]).
    pub stable_after: Duration,
    /// How often the certificate files are checked for changes.
    pub watch_every: Duration,
    /// How often the status message is refreshed while connected.
    pub status_every: Duration,
    /// End-to-end receipts (`uplink.receipts`): wait this long after a batch's
    /// last PUBACK for the consumer's receipt before sending it again. `None`:
    /// the PUBACK is enough.
    pub receipts: Option<Duration>,
}

impl UplinkSettings {
    pub fn from_config(c: &Config) -> UplinkSettings {
        let u = &c.uplink;
        UplinkSettings {
            host: u.host.clone(),
            port: u.port,
            tls: TlsFiles {
                ca: u.ca_file.clone(),
                cert: u.cert_file.clone(),
                key: u.key_file.clone(),
            },
            site: c.site.id.clone(),
            gateway: c.site.gateway_id.clone(),
            protocol: u.protocol,
            payload: u.payload,
            compact: u.compression == crate::config::Compression::Deflate
                && u.protocol == Protocol::V5,
            batch_max_readings: u.batch_max_readings,
            max_inflight: u.max_inflight,
            keep_alive: Duration::from_secs(u.keep_alive_s),
            backoff_min: Duration::from_millis(u.backoff_min_ms),
            backoff_max: Duration::from_millis(u.backoff_max_ms),
            cert_warn_days: u.cert_warn_days,
            hold_after_refusals: u.hold_after_refusals,
            stable_after: STABLE_CONNECTION,
            watch_every: Duration::from_secs(10),
            status_every: Duration::from_secs(60),
            receipts: u.receipts.then(|| Duration::from_secs(u.receipt_timeout_s)),
        }
    }
}

/// Why a connection ended; each says what a field engineer should look at.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The TLS files could not be loaded.
    #[error("cannot load the certificates: {0}")]
    Tls(#[from] tls::TlsError),
    /// The TLS handshake failed; the text is the explanation.
    #[error("{0}")]
    Handshake(String),
    /// Nothing accepted the TCP connection.
    #[error(
        "cannot reach the broker at {0}: connection refused (broker down, or wrong uplink.host/uplink.port)"
    )]
    Unreachable(String),
    /// The broker did not answer in time.
    #[error("the broker at {0} did not answer in time")]
    Timeout(String),
    /// The broker answered CONNECT with a refusal.
    #[error("the broker refused the connection ({0}); is the client id / certificate CN allowed?")]
    Refused(String),
    /// The connection dropped or the protocol failed.
    #[error("connection lost: {0}")]
    Connection(String),
    /// The outbox failed; the connection is closed so that nothing is lost.
    #[error("outbox: {0}")]
    Store(Arc<StoreError>),
    /// A payload could not be serialised (a bug; the batch is released).
    #[error("cannot encode a message: {0}")]
    Encode(String),
}

/// Explains a connection error of either MQTT client.
pub fn classify(e: &LinkError, addr: &str) -> UplinkError {
    use rumqttc::ConnectionError as E4;
    use rumqttc::v5::ConnectionError as E5;
    let explained = match e {
        LinkError::V311(e) => tls::explain(e),
        // The v5 client wraps a read error in a variant that hides its source.
        LinkError::V5(E5::MqttState(rumqttc::v5::StateError::Deserialization(
            rumqttc::v5::mqttbytes::Error::Io(io),
        ))) => tls::explain(io),
        LinkError::V5(e) => tls::explain(e),
    };
    if let Some(text) = explained {
        return UplinkError::Handshake(text);
    }
    let refused_tcp = |io: &std::io::Error| io.kind() == std::io::ErrorKind::ConnectionRefused;
    match e {
        LinkError::V311(E4::Io(io)) | LinkError::V5(E5::Io(io)) if refused_tcp(io) => {
            UplinkError::Unreachable(addr.to_owned())
        }
        LinkError::V311(E4::Tls(rumqttc::TlsError::Io(io)))
        | LinkError::V5(E5::Tls(rumqttc::TlsError::Io(io)))
            if refused_tcp(io) =>
        {
            UplinkError::Unreachable(addr.to_owned())
        }
        LinkError::V311(E4::NetworkTimeout | E4::FlushTimeout) | LinkError::V5(E5::Timeout(_)) => {
            UplinkError::Timeout(addr.to_owned())
        }
        LinkError::V311(E4::ConnectionRefused(code)) => UplinkError::Refused(format!("{code:?}")),
        LinkError::V5(E5::ConnectionRefused(code)) => UplinkError::Refused(format!("{code:?}")),
        LinkError::V5(E5::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code,
            reason_string,
        })) => UplinkError::Connection(format!(
            "the broker closed the connection: {reason_code:?}{}",
            reason_string
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )),
        other => UplinkError::Connection(other.to_string()),
    }
}

/// Exponential back-off with jitter: each delay is drawn between half and all of
/// `min × 2^failures`, capped at `max`, so that a fleet of gateways that lost the
/// broker together do not all return in the same second.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    rng: rand::rngs::SmallRng,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            max,
            failures: 0,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(self.rng.random_range(ms.div_ceil(2)..=ms))
    }
}

/// What a published message carried, so that its PUBACK can be acted on.
#[derive(Debug)]
enum Carried {
    /// One message of a lease (a lease may span several messages).
    Batch {
        lease: LeaseId,
    },
    Status,
    /// An alert; its PUBACK marks it published in the alert book.
    Alert {
        id: i64,
    },
}

/// Where the uplink finds alerts to publish: the alert book's unpublished rows
/// (stored and forwarded like readings), and a nudge when one is raised.
#[derive(Clone)]
pub struct AlertFeed {
    pub book: crate::alert_stage::SharedBook,
    pub changed: Arc<Notify>,
}

/// A finished read of unpublished alerts.
type AlertFetch =
    Pin<Box<dyn Future<Output = Result<Vec<crate::store::AlertRecord>, UplinkError>> + Send>>;

/// How a connection ended.
enum SessionEnd {
    Cancelled,
    /// The certificate files changed or SIGHUP: reconnect now with the new files.
    Reload,
    Failed {
        error: UplinkError,
        /// The connection was up for at least [`STABLE_CONNECTION`]: the
        /// back-off starts again from its minimum.
        was_connected: bool,
    },
}

/// The rumqttc event loop on its own task (see the module doc): events arrive
/// on `rx` in order; the first error is the last event. Dropping the pump stops
/// the task and closes the connection, so a session drops it only once it has
/// said goodbye or the connection is gone (or the daemon is stopping).
struct EventPump {
    rx: tokio::sync::mpsc::Receiver<Result<LinkEvent, LinkError>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventPump {
    /// Room for a burst of PUBACKs while the session is busy elsewhere; when it
    /// is full the pump waits (and rumqttc reads no further).
    const BACKLOG: usize = 64;

    fn start(mut events: LinkLoop) -> EventPump {
        let (tx, rx) = tokio::sync::mpsc::channel(Self::BACKLOG);
        let task = tokio::spawn(async move {
            loop {
                let event = events.poll().await;
                let last = event.is_err();
                if tx.send(event).await.is_err() || last {
                    break;
                }
            }
        });
        EventPump { rx, task }
    }

    /// The next event; `None` when the pump has stopped (after its error).
    async fn next(&mut self) -> Option<Result<LinkEvent, LinkError>> {
        self.rx.recv().await
    }
}

impl Drop for EventPump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A finished ack: its result, the lease and how many readings it held.
type AckDone = (Result<(), Arc<StoreError>>, LeaseId, u64);

/// A lease read and encoded, ready to publish.
struct Prepared {
    id: LeaseId,
    messages: Vec<Vec<u8>>,
    readings: u64,
    /// The reading ids, in receipts mode.
    ids: Option<Vec<crate::model::ReadingId>>,
}

type LeaseFuture = Pin<Box<dyn Future<Output = Result<Option<Prepared>, UplinkError>> + Send>>;

/// The uplink task. Run it with [`Uplink::run`].
pub struct Uplink {
    pub settings: UplinkSettings,
    pub store: StoreHandle,
    pub status: Arc<UplinkStatus>,
    pub heartbeat: Heartbeat,
    pub cancel: CancellationToken,
    /// Notified on SIGHUP: reload the certificate files.
    pub reload: Arc<Notify>,
    pub version: &'static str,
    /// `None`: this uplink publishes no alerts.
    pub alerts: Option<AlertFeed>,
}

impl Uplink {
    pub async fn run(self) {
        self.status.set_protocol(self.settings.protocol.as_str());
        if let Err(e) = self.store.release_all().await {
            tracing::error!(error = %e, "uplink: cannot release old leases; stopping");
            self.status
                .set_error(Timestamp::now(), format!("outbox: {e}"));
            self.status.set_state(ConnectionState::Stopped);
            return;
        }
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let mut backoff = Backoff::new(self.settings.backoff_min, self.settings.backoff_max, seed);
        let addr = format!("{}:{}", self.settings.host, self.settings.port);
        // Whether the next connection tries held readings again: after a
        // reload, or after a connection that lasted (a link cut, a broker
        // restart), but not after one that held readings ended soon after its
        // CONNACK, which they may have caused themselves.
        let mut retry_held = false;
        // Leases the broker has taken and whose receipt is awaited: kept
        // across connections (receipts mode).
        let mut receipts = self.settings.receipts.map(Receipts::new);
        loop {
            self.heartbeat.beat();
            self.status.set_state(ConnectionState::Connecting);
            tracing::debug!(broker = %addr, "uplink: session starting");
            let end = self.session(&addr, retry_held, receipts.as_mut()).await;
            retry_held = matches!(
                end,
                SessionEnd::Reload
                    | SessionEnd::Failed {
                        was_connected: true,
                        ..
                    }
            );
            match end {
                SessionEnd::Cancelled => {
                    tracing::debug!("uplink: session ended: cancelled");
                    break;
                }
                SessionEnd::Reload => {
                    tracing::debug!("uplink: session ended: reload");
                    tracing::info!("uplink: certificate files changed; reconnecting with them");
                    backoff.reset();
                    continue;
                }
                SessionEnd::Failed {
                    error,
                    was_connected,
                } => {
                    tracing::debug!(error = %error, was_connected, "uplink: session ended: failed");
                    if was_connected {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    self.status.retry_delay_ms.store(
                        u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    tracing::warn!(broker = %addr, retry_in_ms = delay.as_millis() as u64, "uplink: {error}");
                    self.status.set_error(Timestamp::now(), error.to_string());
                    self.status.set_state(ConnectionState::Backoff);
                    // A broker that is away is not a stalled stage: keep beating
                    // while waiting (health checks allow 30 s, back-off reaches 60).
                    let until = tokio::time::Instant::now() + delay;
                    let mut beat = tokio::time::interval(Duration::from_secs(1));
                    let cancelled = loop {
                        tokio::select! {
                            _ = self.cancel.cancelled() => break true,
                            _ = self.reload.notified() => {
                                backoff.reset();
                                retry_held = true;
                                break false;
                            }
                            _ = tokio::time::sleep_until(until) => break false,
                            _ = beat.tick() => self.heartbeat.beat(),
                        }
                    };
                    if cancelled {
                        break;
                    }
                }
            }
        }
        self.status.set_state(ConnectionState::Stopped);
    }

    fn status_message(&self, state: Presence, cert: Option<&CertInfo>) -> Vec<u8> {
        let expiring = cert.is_some_and(|c| {
            c.days_left(Timestamp::now()) < i64::from(self.settings.cert_warn_days)
        });
        let msg = StatusMessage {
            schema: super::payload::STATUS_SCHEMA.to_owned(),
            gateway: self.settings.gateway.clone(),
            state,
            version: self.version.to_owned(),
            backlog: match state {
                Presence::Online => Some(self.backlog()),
                Presence::Offline => None,
            },
            certificate_expires_at: cert.map(|c| c.not_after.to_rfc3339()),
            certificate_expiring: expiring,
        };
        serde_json::to_vec(&msg).unwrap_or_default()
    }

    fn backlog(&self) -> u64 {
        let n = self.store.stats().outbox_readings.load(Ordering::Relaxed);
        self.status.backlog.store(n, Ordering::Relaxed);
        n
    }

    /// Reads the certificate's validity and warns when it is close to expiry.
    async fn check_certificate(&self) -> Option<CertInfo> {
        let path = self.settings.tls.cert.clone();
        let info = tokio::task::spawn_blocking(move || read_cert_info(&path))
            .await
            .ok()?;
        match info {
            Ok(info) => {
                let days = info.days_left(Timestamp::now());
                let cn = info.common_name.as_deref().unwrap_or("");
                let mismatch = (cn != self.settings.gateway).then(|| {
                    format!(
                        "the gateway certificate's CN {cn:?} is not site.gateway_id {:?} (the MQTT client id); the broker may refuse it",
                        self.settings.gateway
                    )
                });
                let warning = (days < i64::from(self.settings.cert_warn_days)).then(|| {
                    if days < 0 {
                        format!("the gateway certificate expired on {}", info.not_after.to_rfc3339())
                    } else {
                        format!(
                            "the gateway certificate expires in {days} days ({}); request a new one with carehub cert request",
                            info.not_after.to_rfc3339()
                        )
                    }
                });
                let warning = match (warning, mismatch) {
                    (Some(w), Some(m)) => Some(format!("{w}; {m}")),
                    (w, m) => w.or(m),
                };
                if let Some(w) = &warning
                    && self.status.warn_due(w, std::time::Instant::now())
                {
                    // At most once a day for the same words, not at every
                    // reconnect attempt (the page and the alert show it meanwhile).
                    tracing::warn!("uplink: {w}");
                }
                self.status.set_certificate(Some(info.not_after), warning);
                Some(info)
            }
            Err(e) => {
                let text = e.to_string();
                if self.status.warn_due(&text, std::time::Instant::now()) {
                    tracing::warn!("uplink: {text}");
                }
                self.status.set_certificate(None, Some(text));
                None
            }
        }
    }

    fn options(&self, tls: Arc<rustls::ClientConfig>, cert: Option<&CertInfo>) -> LinkOptions {
        let s = &self.settings;
        // Large enough for the biggest batch (FHIR is about 1.5 kB a reading).
        let max_packet = s.batch_max_readings.saturating_mul(2048).max(64 * 1024);
        let max_packet = u32::try_from(max_packet).unwrap_or(u32::MAX);
        LinkOptions {
            client_id: s.gateway.clone(),
            host: s.host.clone(),
            port: s.port,
            tls,
            keep_alive: s.keep_alive,
            inflight: s.max_inflight.saturating_add(1),
            max_incoming: max_packet,
            max_outgoing: max_packet,
            will_topic: Topics::new(&s.site, &s.gateway).status,
            will_payload: self.status_message(Presence::Offline, cert),
        }
    }

    async fn session(
        &self,
        addr: &str,
        retry_held: bool,
        receipts: Option<&mut Receipts>,
    ) -> SessionEnd {
        // This task is the outbox's only leaser and holds no lease between
        // connections but those awaiting a receipt: whatever a previous
        // connection could not release (a lease reply lost when it ended
        // mid-request, a failed release) goes back now.
        let keep = receipts.as_ref().map(|r| r.kept()).unwrap_or_default();
        if let Err(e) = self.store.release_all_but(keep).await {
            return SessionEnd::Failed {
                error: UplinkError::Store(e),
                was_connected: false,
            };
        }
        let files = self.settings.tls.clone();
        let tls = match tokio::task::spawn_blocking(move || tls::client_config(&files)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return SessionEnd::Failed {
                    error: e.into(),
                    was_connected: false,
                };
            }
            Err(e) => {
                return SessionEnd::Failed {
                    error: UplinkError::Connection(format!("certificate loader failed: {e}")),
                    was_connected: false,
                };
            }
        };
        let cert = self.check_certificate().await;
        let stamp = files_stamp(&self.settings.tls).await;
        let options = self.options(tls, cert.as_ref());
        let capacity = usize::from(self.settings.max_inflight)
            + messages_per_lease(self.settings.batch_max_readings, self.settings.max_inflight)
            + ALERTS_IN_FLIGHT
            + 9;
        let (client, events) = link::client(self.settings.protocol, options, capacity);
        let mut events = EventPump::start(events);
        let mut session = Session {
            uplink: self,
            client,
            topics: Topics::new(&self.settings.site, &self.settings.gateway),
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            acking: JoinSet::new(),
            parts_left: HashMap::new(),
            alerts_out: std::collections::HashSet::new(),
            marking: JoinSet::new(),
            refused: std::collections::HashSet::new(),
            max_payload: None,
            connected: false,
            connected_at: None,
            retry_on_connect: retry_held,
            link_lost: false,
            receipts,
        };
        let end = session.drive(&mut events, addr, cert.as_ref(), stamp).await;
        // A connection that died soon after its CONNACK with batches in flight:
        // the oldest of them may be what kills it (a broker that disconnects
        // on a publish its ACL or size limit refuses). Count it like a refusal,
        // so that it is held after `hold_after_refusals` such deaths and the
        // readings behind it still go.
        let killer = match &end {
            SessionEnd::Failed {
                was_connected: false,
                ..
            } if session.connected && session.link_lost => session.oldest_batch_in_flight(),
            _ => None,
        };
        session.release_outstanding(killer).await;
        end
    }
}

/// Bytes left for a payload in a packet of `max_packet` bytes on `topic`: the
/// fixed header (at most 5 bytes), the topic (2 + its length), the packet id
/// (2) and room for the properties (content type and the like).
pub fn payload_room(max_packet: usize, topic: &str) -> usize {
    max_packet
        .saturating_sub(5 + 2 + topic.len() + 2 + 64)
        .max(1)
}

/// The modification times of the three TLS files, to notice a renewal.
async fn files_stamp(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    let paths: Vec<PathBuf> = vec![files.ca.clone(), files.cert.clone(), files.key.clone()];
    tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// One connection's state: what was handed to rumqttc and not yet acknowledged.
struct Session<'a> {
    uplink: &'a Uplink,
    client: LinkClient,
    topics: Topics,
    /// Handed to rumqttc, packet id not yet assigned (in request order).
    queued: VecDeque<Carried>,
    /// Sent, waiting for the PUBACK with this packet id.
    inflight: HashMap<u16, Carried>,
    /// Acknowledged by the broker, ack on its way to the outbox. Acks run
    /// concurrently so that the store writer commits many in one transaction.
    acking: JoinSet<AckDone>,
    /// Per lease: messages still waiting for their PUBACK, and its readings.
    parts_left: HashMap<LeaseId, (usize, u64)>,
    /// Alerts published in this session and not yet marked published.
    alerts_out: std::collections::HashSet<i64>,
    /// Marking acknowledged alerts as published in the alert book.
    marking: JoinSet<Result<i64, String>>,
    /// Leases a message of which the broker refused: already released or held,
    /// so the end of the session does not release them again.
    refused: std::collections::HashSet<LeaseId>,
    /// The largest readings payload the broker takes (from its Maximum Packet
    /// Size, MQTT 5), less room for the topic and the header.
    max_payload: Option<usize>,
    connected: bool,
    /// When the CONNACK came: a connection that dies soon after does not reset
    /// the back-off.
    connected_at: Option<tokio::time::Instant>,
    /// Try held readings again at the CONNACK.
    retry_on_connect: bool,
    /// The event loop reported the connection gone: no goodbye is possible.
    link_lost: bool,
    /// Receipts mode: the leases awaiting receipts (outlives the session).
    receipts: Option<&'a mut Receipts>,
}

impl Session<'_> {
    fn outstanding(&self) -> usize {
        self.queued.len() + self.inflight.len()
    }

    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        carried: Carried,
    ) -> Result<(), UplinkError> {
        self.publish_typed(topic, payload, retain, None, carried)
    }

    fn publish_typed(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        content_type: Option<&str>,
        carried: Carried,
    ) -> Result<(), UplinkError> {
        // The channel has room for max_inflight + one lease's messages + alerts
        // + 8, and a lease starts only while fewer than max_inflight messages
        // are outstanding, so it is never full here.
        self.client
            .try_publish(topic, payload, retain, content_type)
            .map_err(|e| UplinkError::Connection(format!("mqtt client queue: {e}")))?;
        self.queued.push_back(carried);
        Ok(())
    }

    /// Publishes a lease's messages (of at most `batch_max_readings` readings).
    fn publish_lease(&mut self, lease: Prepared) -> Result<(), UplinkError> {
        self.parts_left
            .insert(lease.id, (lease.messages.len(), lease.readings));
        if let (Some(r), Some(ids)) = (self.receipts.as_deref_mut(), lease.ids) {
            r.expect(lease.id, ids);
            self.show_receipts();
        }
        let s = &self.uplink.settings;
        let content_type = super::batch::content_type(s.payload, s.compact);
        for payload in lease.messages {
            let carried = Carried::Batch { lease: lease.id };
            self.publish_typed(
                self.topics.readings.clone(),
                payload,
                false,
                content_type,
                carried,
            )?;
        }
        Ok(())
    }

    /// One message of `lease` has its PUBACK; once all have, ack the lease.
    fn part_acked(&mut self, lease: LeaseId) {
        self.uplink
            .status
            .messages_delivered
            .fetch_add(1, Ordering::Relaxed);
        let Some((left, readings)) = self.parts_left.get_mut(&lease) else {
            return;
        };
        *left -= 1;
        if *left == 0 {
            let readings = *readings;
            self.parts_left.remove(&lease);
            // Receipts mode: the broker has it; the consumer's receipt acks it.
            if let Some(r) = self.receipts.as_deref_mut()
                && r.tracks(lease)
            {
                r.published(lease, tokio::time::Instant::now());
                return;
            }
            let store = self.uplink.store.clone();
            self.acking
                .spawn(async move { (store.ack(lease).await, lease, readings) });
        }
    }

    /// The broker refused a message (MQTT 5 reason code 0x80 or more): it was
    /// not delivered. A batch's lease is released, never acked, and held once
    /// its readings were refused `hold_after_refusals` times in a row; an alert
    /// stays unpublished and goes again in the next session; a status message
    /// is only logged.
    async fn refused(
        &mut self,
        carried: Option<Carried>,
        refusal: Refusal,
    ) -> Result<(), UplinkError> {
        let status = &self.uplink.status;
        status.messages_refused.fetch_add(1, Ordering::Relaxed);
        let topic = match &carried {
            Some(Carried::Batch { .. }) => &self.topics.readings,
            Some(Carried::Alert { .. }) => &self.topics.alerts,
            Some(Carried::Status) | None => &self.topics.status,
        };
        status.set_refusal(Timestamp::now(), format!("{topic}: {refusal}"));
        match carried {
            Some(Carried::Batch { lease }) => {
                if !self.refused.insert(lease) {
                    // Another message of this lease was refused before: the
                    // lease is already released or held.
                    return Ok(());
                }
                self.parts_left.remove(&lease);
                if let Some(r) = self.receipts.as_deref_mut() {
                    r.forget(lease);
                }
                let hold_after = self.uplink.settings.hold_after_refusals;
                let outcome = self
                    .uplink
                    .store
                    .refuse(lease, hold_after)
                    .await
                    .map_err(UplinkError::Store)?;
                status
                    .held_readings
                    .store(outcome.held_readings, Ordering::Relaxed);
                if outcome.held {
                    tracing::error!(
                        topic = %topic, reason = %refusal, refusals = outcome.refusals,
                        held_readings = outcome.held_readings,
                        "uplink: the broker refused a batch again and again; its readings are held (kept, not sent) until a reconnect, a reload or a retry from the gateway page"
                    );
                } else {
                    tracing::warn!(
                        topic = %topic, reason = %refusal, refusals = outcome.refusals,
                        "uplink: the broker refused a batch; it stays in the outbox and is sent again"
                    );
                }
            }
            Some(Carried::Alert { id }) => {
                tracing::warn!(topic = %topic, reason = %refusal, "uplink: the broker refused an alert; it stays unpublished");
                // Not sent again in this session (it would be refused again):
                // left in alerts_out, so the next session sends it.
                let _ = id;
            }
            Some(Carried::Status) | None => {
                tracing::warn!(topic = %topic, reason = %refusal, "uplink: the broker refused a status message");
            }
        }
        Ok(())
    }

    /// Whether another lease may start: in receipts mode at most two windows of
    /// readings (`max_inflight` × `batch_max_readings`) wait for receipts, so a
    /// consumer that has stopped does not pull the whole outbox into flight.
    fn receipts_room(&self) -> bool {
        let s = &self.uplink.settings;
        self.receipts.as_deref().is_none_or(|r| {
            let window = u64::from(s.max_inflight)
                .saturating_mul(u64::try_from(s.batch_max_readings).unwrap_or(u64::MAX))
                .saturating_mul(2);
            r.waiting_readings() < window
        })
    }

    fn show_receipts(&self) {
        if let Some(r) = self.receipts.as_deref() {
            self.uplink
                .status
                .awaiting_receipt
                .store(r.waiting_readings(), Ordering::Relaxed);
        }
    }

    /// A receipt: the consumer has stored these readings. Every lease now
    /// wholly receipted is acked (deleted from the outbox). A receipt that does
    /// not parse changes nothing (the time-out sends its readings again).
    fn receipt_arrived(&mut self, payload: &[u8]) {
        let Some(r) = self.receipts.as_deref_mut() else {
            return;
        };
        let ids = match super::payload::ReceiptMessage::parse_ids(payload) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "uplink: a message on the receipts topic was not a receipt; ignored");
                return;
            }
        };
        for (lease, readings) in r.receipt(&ids) {
            // A receipt may overtake the PUBACK: the PUBACK then finds nothing.
            self.parts_left.remove(&lease);
            let store = self.uplink.store.clone();
            self.acking
                .spawn(async move { (store.ack(lease).await, lease, readings) });
        }
        self.show_receipts();
    }

    /// Leases whose receipt did not come in time go back to the outbox and are
    /// sent again (the consumer de-duplicates by reading id).
    async fn receipts_expired(&mut self) {
        let Some(r) = self.receipts.as_deref_mut() else {
            return;
        };
        let expired = r.expired(tokio::time::Instant::now());
        for (lease, readings) in expired {
            match self.uplink.store.release(lease).await {
                Ok(()) => {
                    tracing::warn!(
                        lease = lease.0,
                        readings,
                        "uplink: no receipt from the cloud consumer in time; the batch is sent again"
                    );
                    self.uplink
                        .status
                        .receipt_timeouts
                        .fetch_add(readings, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(lease = lease.0, error = %e, "uplink: cannot release a batch whose receipt did not come")
                }
            }
        }
        self.show_receipts();
    }

    /// Makes held readings leasable again (on a reconnect or a staff action).
    async fn retry_held(&mut self) -> Result<(), UplinkError> {
        let status = &self.uplink.status;
        if status.held_readings.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let n = self
            .uplink
            .store
            .retry_held()
            .await
            .map_err(UplinkError::Store)?;
        status.held_readings.store(0, Ordering::Relaxed);
        if n > 0 {
            tracing::info!(readings = n, "uplink: held readings are tried again");
        }
        Ok(())
    }

    /// Publishes the alerts not yet out in this session, up to the in-flight cap.
    fn publish_alerts(&mut self, rows: Vec<crate::store::AlertRecord>) -> Result<(), UplinkError> {
        for a in rows {
            if self.alerts_out.len() >= ALERTS_IN_FLIGHT {
                break;
            }
            if self.alerts_out.contains(&a.id) {
                continue;
            }
            let msg = crate::uplink::payload::AlertMessage::for_payload(
                &self.uplink.settings.gateway,
                &a,
                self.uplink.settings.payload,
            );
            let payload = serde_json::to_vec(&msg)
                .map_err(|e| UplinkError::Connection(format!("cannot encode alert: {e}")))?;
            self.alerts_out.insert(a.id);
            self.publish(
                self.topics.alerts.clone(),
                payload,
                false,
                Carried::Alert { id: a.id },
            )?;
        }
        Ok(())
    }

    /// The broker has alert `id`: record it, off the executor.
    fn alert_acked(&mut self, id: i64) {
        self.uplink
            .status
            .messages_delivered
            .fetch_add(1, Ordering::Relaxed);
        let Some(feed) = self.uplink.alerts.clone() else {
            return;
        };
        self.marking.spawn(async move {
            tokio::task::spawn_blocking(move || {
                feed.book
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .mark_published(id)
                    .map(|()| id)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        });
    }

    fn publish_status(&mut self, cert: Option<&CertInfo>) -> Result<(), UplinkError> {
        let payload = self.uplink.status_message(Presence::Online, cert);
        self.publish(self.topics.status.clone(), payload, true, Carried::Status)
    }

    /// Runs the session until it ends. A session that fails for a reason of
    /// its own (the outbox, a payload) while the connection is up still says a
    /// clean goodbye: the gateway is not gone, so the broker must not publish
    /// the last will.
    async fn drive(
        &mut self,
        events: &mut EventPump,
        addr: &str,
        cert: Option<&CertInfo>,
        stamp: Vec<Option<SystemTime>>,
    ) -> SessionEnd {
        let mut end = self.run_connection(events, addr, cert, stamp).await;
        if let SessionEnd::Failed { error, .. } = &end
            && self.connected
            && !self.link_lost
        {
            tracing::debug!(error = %error, "uplink: ending a live connection cleanly after a failure");
            self.say_goodbye(events, None).await;
        }
        // A connection that dies soon after its CONNACK (a size limit, an ACL
        // that disconnects) is a failure like a refused one: the back-off keeps
        // growing, so such a broker is not hit twice a second forever.
        if let SessionEnd::Failed { was_connected, .. } = &mut end
            && *was_connected
            && self
                .connected_at
                .is_none_or(|t| t.elapsed() < self.uplink.settings.stable_after)
        {
            *was_connected = false;
        }
        end
    }

    async fn run_connection(
        &mut self,
        events: &mut EventPump,
        addr: &str,
        cert: Option<&CertInfo>,
        stamp: Vec<Option<SystemTime>>,
    ) -> SessionEnd {
        let s = &self.uplink.settings;
        let max = usize::from(s.max_inflight);
        let mut leasing: Option<LeaseFuture> = None;
        let mut fetching: Option<AlertFetch> = None;
        // Set on connect, when an alert is raised and now and then: look for
        // unpublished alerts (the stored-and-forwarded ones included).
        let mut alerts_due = true;
        let no_feed = Arc::new(Notify::new());
        let alert_nudge = self
            .uplink
            .alerts
            .as_ref()
            .map_or(no_feed, |f| f.changed.clone());
        // When the outbox was found empty, look again after this pause.
        let mut idle_until: Option<tokio::time::Instant> = None;
        let mut status_tick = tokio::time::interval(s.status_every);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = tokio::time::interval(s.watch_every);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        watch.reset();
        let failed = |error, was_connected| SessionEnd::Failed {
            error,
            was_connected,
        };
        // A reload asked for while connecting waits for the CONNACK: ending the
        // session in the middle of the handshake would fire the last will.
        let mut reload_due = false;
        loop {
            let receipt_due = self.receipts.as_deref().and_then(Receipts::next_deadline);
            if reload_due && self.connected {
                self.say_goodbye(events, None).await;
                return SessionEnd::Reload;
            }
            if idle_until.is_some_and(|t| t <= tokio::time::Instant::now()) {
                idle_until = None;
            }
            if leasing.is_none()
                && self.connected
                && idle_until.is_none()
                && self.outstanding() < max
                && self.receipts_room()
            {
                let store = self.uplink.store.clone();
                let batch = s.batch_max_readings.max(1);
                let n = batch.saturating_mul(messages_per_lease(batch, s.max_inflight));
                let encoder = Encoder::new(s.payload, &s.site, &s.gateway, batch)
                    .with_max_bytes(self.max_payload)
                    .with_compact(s.compact);
                let sink = Noting {
                    encoder,
                    ids: self.receipts.is_some().then(Vec::new),
                };
                // Read and encoded in a blocking thread while this task goes on
                // serving the event loop and the acks.
                leasing = Some(Box::pin(async move {
                    let Some((id, sink, readings)) = store
                        .lease_into(n, sink)
                        .await
                        .map_err(UplinkError::Store)?
                    else {
                        return Ok(None);
                    };
                    match sink.encoder.finish() {
                        Ok(messages) => Ok(Some(Prepared {
                            id,
                            messages,
                            readings,
                            ids: sink.ids,
                        })),
                        Err(e) => {
                            let _ = store.release(id).await;
                            Err(UplinkError::Encode(e))
                        }
                    }
                }));
            }
            if fetching.is_none()
                && alerts_due
                && self.connected
                && self.alerts_out.len() < ALERTS_IN_FLIGHT
                && let Some(feed) = self.uplink.alerts.clone()
            {
                alerts_due = false;
                fetching = Some(Box::pin(async move {
                    tokio::task::spawn_blocking(move || {
                        feed.book
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .unpublished(ALERTS_IN_FLIGHT * 2)
                    })
                    .await
                    .map_err(|e| UplinkError::Connection(format!("alert read task failed: {e}")))?
                    .map_err(|e| {
                        UplinkError::Connection(format!("cannot read unpublished alerts: {e}"))
                    })
                }));
            }
            tokio::select! {
                _ = self.uplink.cancel.cancelled() => {
                    if self.connected {
                        self.say_goodbye(events, Some(cert)).await;
                    }
                    return SessionEnd::Cancelled;
                }
                _ = self.uplink.reload.notified() => {
                    tracing::debug!(connected = self.connected, "uplink: reload requested");
                    reload_due = true;
                }
                _ = watch.tick() => {
                    if files_stamp(&s.tls).await != stamp {
                        tracing::debug!(connected = self.connected, "uplink: certificate files changed");
                        reload_due = true;
                    }
                }
                _ = self.uplink.status.retry.notified() => {
                    tracing::info!("uplink: retry of held readings asked for");
                    if let Err(e) = self.retry_held().await {
                        return failed(e, self.connected);
                    }
                    idle_until = None;
                }
                _ = alert_nudge.notified() => {
                    tracing::debug!(connected = self.connected, "uplink: alert nudge");
                    alerts_due = true;
                }
                fetched = async { match fetching.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if fetching.is_some() => {
                    fetching = None;
                    match fetched {
                        Ok(rows) => {
                            // A full page may mean more are waiting.
                            alerts_due = rows.len() >= ALERTS_IN_FLIGHT * 2;
                            if let Err(e) = self.publish_alerts(rows) {
                                return failed(e, true);
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "uplink: alerts not published now; retrying"),
                    }
                }
                Some(done) = self.marking.join_next(), if !self.marking.is_empty() => {
                    match done {
                        Ok(Ok(id)) => {
                            self.alerts_out.remove(&id);
                            alerts_due = true;
                        }
                        // Left in alerts_out: not sent again in this session; the
                        // next session sends it again (a duplicate, never a loss).
                        Ok(Err(e)) => tracing::error!(error = %e, "uplink: cannot record a published alert"),
                        Err(e) => tracing::error!(error = %e, "uplink: alert marking task failed"),
                    }
                }
                _ = status_tick.tick(), if self.connected => {
                    alerts_due = true;
                    self.uplink.heartbeat.beat();
                    if let Err(e) = self.publish_status(cert) {
                        return failed(e, true);
                    }
                }
                _ = async { if let Some(t) = idle_until { tokio::time::sleep_until(t).await } }, if idle_until.is_some() => {
                    idle_until = None;
                }
                _ = async { if let Some(t) = receipt_due { tokio::time::sleep_until(t).await } }, if receipt_due.is_some() => {
                    self.receipts_expired().await;
                    idle_until = None;
                }
                leased = async { match leasing.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if leasing.is_some() => {
                    leasing = None;
                    self.uplink.heartbeat.beat();
                    match leased {
                        Ok(Some(lease)) => {
                            let id = lease.id;
                            if let Err(e) = self.publish_lease(lease) {
                                // Parts already queued are released with the others
                                // at the end of the session; this releases the rest.
                                let _ = self.uplink.store.release(id).await;
                                return failed(e, true);
                            }
                        }
                        Ok(None) => {
                            self.uplink.backlog();
                            idle_until = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                        }
                        Err(e @ UplinkError::Store(_)) => return failed(e, self.connected),
                        Err(e) => return failed(e, true),
                    }
                }
                Some(done) = self.acking.join_next(), if !self.acking.is_empty() => {
                    if let Err(e) = self.acked(done) {
                        return failed(e, true);
                    }
                }
                event = events.next() => match event {
                    None => {
                        self.link_lost = true;
                        return failed(UplinkError::Connection("the MQTT event loop stopped".into()), self.connected);
                    }
                    Some(event) => match event {
                    Ok(LinkEvent::ConnAck { max_packet_size }) => {
                        tracing::debug!(?max_packet_size, "uplink: CONNACK");
                        self.connected = true;
                        self.connected_at = Some(tokio::time::Instant::now());
                        self.max_payload = max_packet_size.map(|m| {
                            payload_room(usize::try_from(m).unwrap_or(usize::MAX), &self.topics.readings)
                        });
                        self.uplink.status.set_max_packet_size(max_packet_size);
                        // Receipts mode: subscribe before any reading leaves,
                        // so that no receipt for them can come before it.
                        if self.receipts.is_some()
                            && let Err(e) = self.client.try_subscribe(&self.topics.receipts)
                        {
                            return failed(UplinkError::Connection(format!("mqtt client queue: {e}")), true);
                        }
                        // A reconnect is one of the times held readings are
                        // tried again (the broker or its ACL may have changed).
                        if self.retry_on_connect
                            && let Err(e) = self.retry_held().await
                        {
                            return failed(e, true);
                        }
                        self.uplink.status.connections.fetch_add(1, Ordering::Relaxed);
                        self.uplink.status.set_state(ConnectionState::Connected);
                        status_tick.reset();
                        tracing::info!(broker = %addr, backlog = self.uplink.backlog(), "uplink: connected");
                        if let Err(e) = self.publish_status(cert) {
                            return failed(e, true);
                        }
                    }
                    Ok(LinkEvent::Published(pkid)) => {
                        match self.queued.pop_front() {
                            Some(c) => { self.inflight.insert(pkid, c); }
                            None => return failed(UplinkError::Connection(format!("packet id {pkid} for a publish this uplink did not make")), self.connected),
                        }
                    }
                    Ok(LinkEvent::PubAck { pkid, refused: None }) => {
                        self.uplink.heartbeat.beat();
                        match self.inflight.remove(&pkid) {
                            Some(Carried::Batch { lease }) => self.part_acked(lease),
                            Some(Carried::Status) => {}
                            Some(Carried::Alert { id }) => self.alert_acked(id),
                            None => tracing::warn!(pkid, "uplink: PUBACK for no message in flight; ignored"),
                        }
                    }
                    Ok(LinkEvent::PubAck { pkid, refused: Some(refusal) }) => {
                        self.uplink.heartbeat.beat();
                        let carried = self.inflight.remove(&pkid);
                        if let Err(e) = self.refused(carried, refusal).await {
                            return failed(e, true);
                        }
                    }
                    Ok(LinkEvent::SubAck { granted }) => {
                        if granted {
                            tracing::debug!(topic = %self.topics.receipts, "uplink: subscribed to receipts");
                        } else {
                            let text = format!(
                                "the broker refused the subscription to {}: no receipt can arrive, so readings are sent again every {} s and never leave the outbox; let the gateway read its receipts topic (ACL)",
                                self.topics.receipts,
                                s.receipts.map_or(0, |d| d.as_secs())
                            );
                            tracing::error!("uplink: {text}");
                            self.uplink.status.set_error(Timestamp::now(), text);
                        }
                    }
                    Ok(LinkEvent::Message { topic, payload }) => {
                        if topic == self.topics.receipts {
                            self.receipt_arrived(&payload);
                        } else {
                            tracing::debug!(topic, "uplink: message on a topic it does not read; ignored");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.link_lost = true;
                        return failed(classify(&e, addr), self.connected);
                    }
                    },
                },
            }
        }
    }

    /// A clean stop: publish "offline" (the last will is only for unclean ends),
    /// then DISCONNECT, waiting briefly for both to leave (500 ms: shutdown has a
    /// 2 s deadline).
    ///
    /// For a reload (`offline_status` is `None`) only the DISCONNECT: the broker
    /// then discards the last will, so a certificate reload does not show the
    /// gateway going offline. Nothing waits on a reload, so it gives the queued
    /// messages ahead of the DISCONNECT up to 5 s to leave: a connection dropped
    /// before the DISCONNECT is written would fire the will.
    async fn say_goodbye(
        &mut self,
        events: &mut EventPump,
        offline_status: Option<Option<&CertInfo>>,
    ) {
        if let Some(cert) = offline_status {
            let payload = self.uplink.status_message(Presence::Offline, cert);
            if self
                .publish(self.topics.status.clone(), payload, true, Carried::Status)
                .is_err()
            {
                return;
            }
        }
        let patience = if offline_status.is_some() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        // The request channel may be full of queued publishes: keep offering the
        // DISCONNECT while the event loop drains them.
        let mut disconnect_queued = self.client.try_disconnect().is_ok();
        let drain = async {
            let mut disconnect_sent = false;
            loop {
                if !disconnect_queued {
                    disconnect_queued = self.client.try_disconnect().is_ok();
                }
                match events.next().await {
                    Some(Ok(LinkEvent::Published(pkid))) => {
                        if let Some(c) = self.queued.pop_front() {
                            self.inflight.insert(pkid, c);
                        }
                    }
                    // A refused message stays in `inflight`: its lease is
                    // released with the others at the end of the session.
                    Some(Ok(LinkEvent::PubAck {
                        pkid,
                        refused: None,
                    })) => match self.inflight.remove(&pkid) {
                        Some(Carried::Batch { lease }) => self.part_acked(lease),
                        Some(Carried::Alert { id }) => self.alert_acked(id),
                        Some(Carried::Status) | None => {}
                    },
                    // Keep reading until the broker closes the connection:
                    // closing a socket with unread data in it sends a reset,
                    // which can discard the DISCONNECT before the broker reads
                    // it (and the broker would then fire the will).
                    Some(Ok(LinkEvent::DisconnectSent)) => {
                        tracing::debug!("uplink: DISCONNECT sent");
                        disconnect_sent = true;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, disconnect_sent, "uplink: connection closed");
                        break;
                    }
                    None => break,
                    Some(Ok(_)) => {}
                }
            }
        };
        let _ = tokio::time::timeout(patience, drain).await;
    }

    /// Counts a finished ack. The broker has these readings; if the outbox cannot
    /// forget them they are sent again later (a duplicate, never a loss).
    fn acked(&self, done: Result<AckDone, tokio::task::JoinError>) -> Result<(), UplinkError> {
        match done {
            Ok((Ok(()), _, readings)) => {
                let s = &self.uplink.status;
                s.readings_delivered.fetch_add(readings, Ordering::Relaxed);
                Ok(())
            }
            Ok((Err(e), lease, _)) => {
                tracing::error!(lease = lease.0, error = %e, "uplink: cannot ack a delivered batch");
                Err(UplinkError::Store(e))
            }
            Err(e) => Err(UplinkError::Connection(format!("ack task failed: {e}"))),
        }
    }

    /// Gives every unacknowledged batch back to the outbox, after letting the acks
    /// of acknowledged ones finish (an aborted ack would leave its lease held).
    /// The lease of the oldest batch message still waiting for its PUBACK
    /// (leases are numbered in order), unless a refusal already counted it.
    fn oldest_batch_in_flight(&self) -> Option<LeaseId> {
        self.inflight
            .values()
            .filter_map(|c| match c {
                Carried::Batch { lease } if !self.refused.contains(lease) => Some(*lease),
                _ => None,
            })
            .min_by_key(|l| l.0)
    }

    /// Counts `killer` as refused once (see [`Uplink::session`]).
    async fn charge_killer(&mut self, lease: LeaseId) {
        if let Some(r) = self.receipts.as_deref_mut() {
            r.forget(lease);
        }
        let hold_after = self.uplink.settings.hold_after_refusals;
        match self.uplink.store.refuse(lease, hold_after).await {
            Ok(outcome) => {
                self.uplink
                    .status
                    .held_readings
                    .store(outcome.held_readings, Ordering::Relaxed);
                if outcome.held {
                    tracing::error!(
                        deaths = outcome.refusals,
                        held_readings = outcome.held_readings,
                        "uplink: connections keep dying soon after they start while the same batch is in flight; its readings are held (kept, not sent) until a reconnect, a reload or a retry from the gateway page"
                    );
                } else {
                    tracing::debug!(
                        deaths = outcome.refusals,
                        "uplink: a young connection died with a batch in flight"
                    );
                }
                self.refused.insert(lease);
            }
            Err(e) => {
                tracing::error!(lease = lease.0, error = %e, "uplink: cannot count a batch in flight when the connection died")
            }
        }
    }

    async fn release_outstanding(&mut self, killer: Option<LeaseId>) {
        while let Some(done) = self.acking.join_next().await {
            let _ = self.acked(done);
        }
        if let Some(lease) = killer {
            self.charge_killer(lease).await;
        }
        let leases: Vec<LeaseId> = self
            .queued
            .drain(..)
            .chain(self.inflight.drain().map(|(_, c)| c))
            .filter_map(|c| match c {
                // Not refused (released or held already), nor completed by a
                // receipt that overtook its PUBACK (acked already).
                Carried::Batch { lease }
                    if !self.refused.contains(&lease) && self.parts_left.contains_key(&lease) =>
                {
                    Some(lease.0)
                }
                Carried::Batch { .. } | Carried::Status | Carried::Alert { .. } => None,
            })
            .collect::<std::collections::BTreeSet<u64>>()
            .into_iter()
            .map(LeaseId)
            .collect();
        self.parts_left.clear();
        self.refused.clear();
        // Alerts whose PUBACK came in are marked before the session ends; the
        // rest stay unpublished in the book and go out in the next session.
        while self.marking.join_next().await.is_some() {}
        self.alerts_out.clear();
        if let Some(r) = self.receipts.as_deref_mut() {
            for lease in &leases {
                r.forget(*lease);
            }
        }
        self.show_receipts();
        for lease in leases {
            if let Err(e) = self.uplink.store.release(lease).await {
                // The lease stays in the writer's memory; release_all at the next
                // start makes it leasable again, so nothing is lost.
                tracing::error!(lease = lease.0, error = %e, "uplink: cannot release a lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_batches_share_a_lease_among_more_messages() {
        let check = |batch: usize, inflight: u16, want: usize| {
            assert_eq!(
                messages_per_lease(batch, inflight),
                want,
                "{batch} a message, {inflight} in flight"
            );
        };
        // 256 readings a lease, at most half the window...
        check(1, 32, 16);
        check(1, 1000, 256);
        check(16, 64, 16);
        // ...never fewer than 8 messages.
        check(100, 32, 8);
        check(1000, 32, 8);
        check(1, 4, 8);
        check(0, 32, 16);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000), 7);
        let ceilings = [100, 200, 400, 800, 1000, 1000];
        for c in ceilings {
            let d = b.next_delay().as_millis() as u64;
            assert!((c / 2..=c).contains(&d), "{d} not in {}..={c}", c / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        // Jitter: two gateways with different seeds do not retry in lockstep.
        let mut x = Backoff::new(Duration::from_secs(10), Duration::from_secs(60), 1);
        let mut y = Backoff::new(Duration::from_secs(10), Duration::from_secs(60), 2);
        let xs: Vec<_> = (0..4).map(|_| x.next_delay()).collect();
        let ys: Vec<_> = (0..4).map(|_| y.next_delay()).collect();
        assert_ne!(xs, ys);
    }
}
