//! Encoding a lease into readings messages as its rows are read.
//!
//! The store reads a lease's rows in a blocking thread ([`StoreHandle::lease_into`])
//! and hands each reading to this encoder there, so that reading and encoding
//! the next lease run beside the MQTT event loop and the acks, off the async
//! executor, and no reading is copied into a list first.
//!
//! [`StoreHandle::lease_into`]: crate::store::StoreHandle::lease_into

use crate::config::PayloadFormat;
use crate::model::Reading;
use crate::store::LeaseSink;

use super::payload::{
    OutgoingReading, write_reading_json, write_readings_head, write_readings_tail,
};

/// MQTT 5 content type of a compressed readings message: raw DEFLATE (RFC 1951)
/// of the payload named (`docs/mqtt.md`, `docs/decisions/0013-deflate-on-the-wire.md`).
pub const CONTENT_TYPE_JSON_DEFLATE: &str = "application/vnd.carehub.readings+json;deflate";
pub const CONTENT_TYPE_FHIR_DEFLATE: &str = "application/fhir+json;deflate";

/// The DEFLATE level: 9, the smallest output (the link is paid by the byte).
const DEFLATE_LEVEL: u8 = 9;

/// One way a batch can go on the wire, for the wire-bytes bench.
#[derive(Debug, Clone, Copy)]
pub struct WireFormat {
    pub name: &'static str,
    pub payload: PayloadFormat,
    pub compact: bool,
}

impl WireFormat {
    /// The MQTT 5 content type announced with it (`None`: plain JSON as ever).
    pub fn content_type(&self) -> Option<&'static str> {
        content_type(self.payload, self.compact)
    }
}

/// Every payload and compression the uplink can send.
pub const WIRE_FORMATS: [WireFormat; 4] = [
    WireFormat {
        name: "json",
        payload: PayloadFormat::Json,
        compact: false,
    },
    WireFormat {
        name: "json+z",
        payload: PayloadFormat::Json,
        compact: true,
    },
    WireFormat {
        name: "fhir",
        payload: PayloadFormat::Fhir,
        compact: false,
    },
    WireFormat {
        name: "fhir+z",
        payload: PayloadFormat::Fhir,
        compact: true,
    },
];

/// The content type of a readings message: only compressed messages carry one.
pub fn content_type(payload: PayloadFormat, compact: bool) -> Option<&'static str> {
    match (payload, compact) {
        (_, false) => None,
        (PayloadFormat::Json, true) => Some(CONTENT_TYPE_JSON_DEFLATE),
        (PayloadFormat::Fhir, true) => Some(CONTENT_TYPE_FHIR_DEFLATE),
    }
}

/// Raw DEFLATE of `payload`.
pub fn deflate(payload: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec(payload, DEFLATE_LEVEL)
}

/// A lease sink that encodes and, in receipts mode, notes each reading's id
/// (the ids a receipt must name before the lease leaves the outbox).
#[derive(Debug)]
pub struct Noting {
    pub encoder: Encoder,
    /// `Some` in receipts mode.
    pub ids: Option<Vec<crate::model::ReadingId>>,
}

impl LeaseSink for Noting {
    fn reading(&mut self, reading: Reading, reference: Option<&str>) {
        if let Some(ids) = &mut self.ids {
            ids.push(reading.id);
        }
        self.encoder.reading(reading, reference);
    }
}

/// Bytes reserved per reading of a JSON message (a reading is about 250).
const JSON_BYTES_PER_READING: usize = 280;

/// Builds the messages of one lease, at most `per_message` readings each.
#[derive(Debug)]
pub struct Encoder {
    format: PayloadFormat,
    site: String,
    gateway: String,
    per_message: usize,
    /// Compress each message with DEFLATE (announced by its MQTT 5 content type).
    compact: bool,
    /// At most this many bytes a message (the broker's maximum packet size
    /// less the header), when the broker set one: a message is closed early
    /// rather than grow past it. A single reading is never split.
    max_bytes: Option<usize>,
    /// Finished messages.
    messages: Vec<Vec<u8>>,
    /// JSON: the message being written.
    current: Vec<u8>,
    /// Readings in the message being written.
    in_current: usize,
    /// FHIR: the readings of the message being built (a bundle is built whole).
    pending: Vec<(Reading, Option<String>)>,
    /// The first encoding failure; the lease is then not sent.
    error: Option<String>,
}

impl Encoder {
    pub fn new(format: PayloadFormat, site: &str, gateway: &str, per_message: usize) -> Encoder {
        Encoder {
            format,
            site: site.to_owned(),
            gateway: gateway.to_owned(),
            per_message: per_message.max(1),
            compact: false,
            max_bytes: None,
            messages: Vec::new(),
            current: Vec::new(),
            in_current: 0,
            pending: Vec::new(),
            error: None,
        }
    }

    /// Compresses every message (DEFLATE). The packet-size limit is then
    /// applied to the uncompressed text, which is never smaller.
    pub fn with_compact(mut self, compact: bool) -> Encoder {
        self.compact = compact;
        self
    }

    /// Keeps every message within `max_bytes` (when `Some`).
    pub fn with_max_bytes(mut self, max_bytes: Option<usize>) -> Encoder {
        self.max_bytes = max_bytes;
        self
    }

    /// The messages, in lease order; an error if one could not be encoded.
    pub fn finish(mut self) -> Result<Vec<Vec<u8>>, String> {
        self.close_message();
        match self.error {
            Some(e) => Err(e),
            None if self.compact => Ok(self.messages.iter().map(|m| deflate(m)).collect()),
            None => Ok(self.messages),
        }
    }

    fn close_message(&mut self) {
        if self.in_current == 0 {
            return;
        }
        self.in_current = 0;
        match self.format {
            PayloadFormat::Json => {
                write_readings_tail(&mut self.current);
                self.messages.push(std::mem::take(&mut self.current));
            }
            PayloadFormat::Fhir => {
                let pending = std::mem::take(&mut self.pending);
                self.close_bundle(&pending);
            }
        }
    }
}

impl Encoder {
    /// Writes `pending` as one bundle, or as two halves (each split again as
    /// needed) when the whole is larger than `max_bytes`.
    fn close_bundle(&mut self, pending: &[(Reading, Option<String>)]) {
        let out: Vec<OutgoingReading<'_>> = pending
            .iter()
            .map(|(reading, reference)| OutgoingReading {
                reading,
                resident_reference: reference.as_deref(),
            })
            .collect();
        match serde_json::to_vec(&super::fhir::bundle(&self.gateway, &out)) {
            Ok(m) if pending.len() > 1 && self.max_bytes.is_some_and(|max| m.len() > max) => {
                let (a, b) = pending.split_at(pending.len() / 2);
                self.close_bundle(a);
                self.close_bundle(b);
            }
            Ok(m) => self.messages.push(m),
            Err(e) => {
                self.error.get_or_insert(e.to_string());
            }
        }
    }

    /// JSON: writes `r` into the message being written, closing it first when
    /// `r` would take it past `max_bytes`.
    fn write_json(&mut self, r: OutgoingReading<'_>) {
        if self.in_current == 0 {
            self.current
                .reserve(96 + self.per_message.min(1000) * JSON_BYTES_PER_READING);
            write_readings_head(&mut self.current, &self.site, &self.gateway);
        }
        let before = self.current.len();
        write_reading_json(&mut self.current, self.in_current == 0, r);
        // The tail `]}` is two bytes.
        if let Some(max) = self.max_bytes
            && self.in_current > 0
            && self.current.len() + 2 > max
        {
            self.current.truncate(before);
            self.close_message();
            self.write_json(r);
        }
    }
}

impl LeaseSink for Encoder {
    fn reading(&mut self, reading: Reading, reference: Option<&str>) {
        match self.format {
            PayloadFormat::Json => self.write_json(OutgoingReading {
                reading: &reading,
                resident_reference: reference,
            }),
            PayloadFormat::Fhir => self.pending.push((reading, reference.map(str::to_owned))),
        }
        self.in_current += 1;
        if self.in_current == self.per_message {
            self.close_message();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceAddress, Quantity, ReadingId, ResidentId, Subject, Timestamp};
    use crate::model::{Unit, Value};
    use crate::uplink::payload::{ReadingsMessage, write_readings_json};

    fn reading(n: i64) -> Reading {
        let at = Timestamp::from_unix_ms(1_763_930_467_000 + n);
        Reading {
            id: ReadingId::new(at),
            device: DeviceAddress([0xA4, 0xC1, 0x38, 0, 0, n as u8]),
            subject: if n % 2 == 0 {
                Subject::Resident(ResidentId(n))
            } else {
                Subject::Room(format!("Room \"{n}\""))
            },
            quantity: Quantity::Spo2,
            value: Value::Number(90.0 + n as f64),
            unit: Unit::Percent,
            measured_at: None,
            received_at: at,
            clock_synced: true,
        }
    }

    /// Encodes `n` readings `per_message` at a time; checks the messages are
    /// those of the whole-message writer for the same chunks, and parse back.
    fn check(n: i64, per_message: usize, messages: usize) {
        let readings: Vec<Reading> = (0..n).map(reading).collect();
        let mut e = Encoder::new(PayloadFormat::Json, "site-1", "gw-1", per_message);
        for r in &readings {
            e.reading(r.clone(), Some("res-0001"));
        }
        let got = e.finish().unwrap();
        assert_eq!(got.len(), messages, "{n} readings, {per_message} a message");
        for (chunk, message) in readings.chunks(per_message).zip(&got) {
            let out: Vec<OutgoingReading<'_>> = chunk
                .iter()
                .map(|reading| OutgoingReading {
                    reading,
                    resident_reference: Some("res-0001"),
                })
                .collect();
            let mut whole = Vec::new();
            write_readings_json(&mut whole, "site-1", "gw-1", &out);
            assert_eq!(
                String::from_utf8_lossy(message),
                String::from_utf8_lossy(&whole)
            );
            let parsed: ReadingsMessage = serde_json::from_slice(message).unwrap();
            assert_eq!(parsed, ReadingsMessage::new("site-1", "gw-1", &out));
        }
    }

    #[test]
    fn a_lease_is_split_into_messages_of_at_most_the_batch_size() {
        check(0, 10, 0);
        check(1, 10, 1);
        check(10, 10, 1);
        check(11, 10, 2);
        check(25, 1, 25);
        check(7, 3, 3);
    }

    #[test]
    fn messages_stay_within_the_brokers_packet_size() {
        let readings: Vec<Reading> = (0..100).map(reading).collect();
        for format in [PayloadFormat::Json, PayloadFormat::Fhir] {
            let whole = {
                let mut e = Encoder::new(format, "site-1", "gw-1", 100);
                for r in &readings {
                    e.reading(r.clone(), Some("res-0001"));
                }
                e.finish().unwrap()
            };
            assert_eq!(whole.len(), 1);
            let max = whole[0].len() / 7;
            let mut e = Encoder::new(format, "site-1", "gw-1", 100).with_max_bytes(Some(max));
            for r in &readings {
                e.reading(r.clone(), Some("res-0001"));
            }
            let parts = e.finish().unwrap();
            assert!(parts.len() >= 7, "{format:?}: {} parts", parts.len());
            assert!(
                parts.iter().all(|p| p.len() <= max),
                "{format:?}: a part over {max} bytes"
            );
            // Every reading once, in order.
            let ids = |m: &Vec<u8>| -> Vec<String> {
                let v: serde_json::Value = serde_json::from_slice(m).unwrap();
                match format {
                    PayloadFormat::Json => v["readings"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["id"].as_str().unwrap().to_owned())
                        .collect(),
                    _ => v["entry"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|e| e["resource"]["resourceType"] == "Observation")
                        .map(|e| {
                            e["resource"]["identifier"][0]["value"]
                                .as_str()
                                .unwrap()
                                .to_owned()
                        })
                        .collect(),
                }
            };
            let split: Vec<String> = parts.iter().flat_map(ids).collect();
            assert_eq!(split, ids(&whole[0]), "{format:?}");
        }
    }

    #[test]
    fn compact_messages_inflate_to_the_plain_ones() {
        let readings: Vec<Reading> = (0..100).map(reading).collect();
        for format in [PayloadFormat::Json, PayloadFormat::Fhir] {
            let encode = |compact| {
                let mut e = Encoder::new(format, "site-1", "gw-1", 40).with_compact(compact);
                for r in &readings {
                    e.reading(r.clone(), Some("res-0001"));
                }
                e.finish().unwrap()
            };
            let (plain, compact) = (encode(false), encode(true));
            assert_eq!(plain.len(), compact.len());
            for (p, c) in plain.iter().zip(&compact) {
                assert!(
                    c.len() * 4 < p.len(),
                    "{format:?}: {} of {}",
                    c.len(),
                    p.len()
                );
                assert_eq!(&miniz_oxide::inflate::decompress_to_vec(c).unwrap(), p);
            }
        }
    }

    #[test]
    fn fhir_messages_are_bundles_of_the_batch() {
        let mut e = Encoder::new(PayloadFormat::Fhir, "site-1", "gw-1", 2);
        for n in 0..3 {
            e.reading(reading(n), Some("res-0001"));
        }
        let got = e.finish().unwrap();
        assert_eq!(got.len(), 2);
        let first: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
        assert_eq!(first["resourceType"], "Bundle");
        let observations = |m: &serde_json::Value| {
            m["entry"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["resource"]["resourceType"] == "Observation")
                .count()
        };
        assert_eq!(observations(&first), 2);
        let second: serde_json::Value = serde_json::from_slice(&got[1]).unwrap();
        assert_eq!(observations(&second), 1);
    }
}
