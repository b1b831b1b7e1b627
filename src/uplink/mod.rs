//! The uplink: forwards every reading from the SQLite outbox to the cloud broker
//! over MQTT with mutual TLS, and lets the outbox forget a reading only once the
//! broker has acknowledged the message that carried it (QoS 1 PUBACK; under
//! MQTT 5, the default, only a PUBACK whose reason code is below 0x80: a refusal
//! releases the batch, and one refused again and again is held, `actor`).
//!
//! The outbox is the truth, not the MQTT client's memory: each connection gets a
//! fresh rumqttc event loop with a clean session, and on any disconnect the
//! batches still waiting for their PUBACK are released back to the outbox and
//! leased again after reconnecting. Delivery is therefore at least once; every
//! reading carries its stable id so that the cloud drops repeats.
//!
//! With `uplink.receipts` the broker's PUBACK is not enough: a batch leaves the
//! outbox only once the cloud consumer's receipt names its readings, and is
//! sent again when none comes in time (`receipts`).

pub mod actor;
pub mod batch;
pub mod cert;
pub mod fhir;
pub mod link;
pub mod outgoing;
pub mod payload;
pub mod receipts;
pub mod status;
pub mod tls;

pub use actor::{AlertFeed, Uplink, UplinkError, UplinkSettings};
pub use status::{ConnectionState, UplinkStatus};
