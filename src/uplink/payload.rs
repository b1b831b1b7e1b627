//! The MQTT wire format: topics and the JSON v1 messages (readings batch, status).
//!
//! Only this module and `fhir` know the shape of a message; the domain types in
//! `model` carry no serde. Every message is versioned and documented in
//! `docs/mqtt.md`, whose examples a test parses back through these types.

use serde::{Deserialize, Serialize};

use crate::model::{Subject, Timestamp, Value};

/// The version written into every readings batch as `schema`.
pub const READINGS_SCHEMA: &str = "carehub.readings/1";
/// The version written into every status message as `schema`.
pub const STATUS_SCHEMA: &str = "carehub.status/1";
/// The version of a receipt the cloud consumer sends (`receipts` mode).
pub const RECEIPT_SCHEMA: &str = "carehub.receipt/1";

pub use super::outgoing::OutgoingReading;

/// The topics of one gateway: `carehub/v1/{site}/{gateway}/...`.
///
/// Site and gateway ids are validated by `config` to letters, digits, `-` and `_`,
/// so no topic contains a wildcard, a `$` prefix or an empty level, which AWS IoT,
/// Azure IoT Hub and mosquitto all accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub readings: String,
    pub status: String,
    pub alerts: String,
    /// Receipts from the cloud consumer to this gateway (`uplink.receipts`).
    pub receipts: String,
}

impl Topics {
    pub fn new(site: &str, gateway: &str) -> Topics {
        let base = format!("carehub/v1/{site}/{gateway}");
        Topics {
            readings: format!("{base}/readings"),
            status: format!("{base}/status"),
            alerts: format!("{base}/alerts"),
            receipts: format!("{base}/receipts"),
        }
    }
}

/// `.../receipts`: the cloud consumer has these readings in its own database
/// (sent by the consumer, read by the gateway in `uplink.receipts` mode). Fields
/// the gateway does not know are ignored, so a consumer may add its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptMessage {
    /// Always [`RECEIPT_SCHEMA`].
    pub schema: String,
    /// The reading ids stored, as sent (`id`, or a FHIR Observation's
    /// `urn:uuid:` identifier without its prefix).
    pub ids: Vec<String>,
}

impl ReceiptMessage {
    /// The reading ids of a receipt; a receipt of another schema, or one that
    /// is not JSON, is an error (and changes nothing). Ids that are not UUIDs
    /// are skipped.
    pub fn parse_ids(payload: &[u8]) -> Result<Vec<crate::model::ReadingId>, String> {
        let msg: ReceiptMessage =
            serde_json::from_slice(payload).map_err(|e| format!("not a receipt: {e}"))?;
        if msg.schema != RECEIPT_SCHEMA {
            return Err(format!(
                "receipt schema {:?}, this gateway reads {RECEIPT_SCHEMA:?}",
                msg.schema
            ));
        }
        Ok(msg
            .ids
            .iter()
            .filter_map(|id| id.trim_start_matches("urn:uuid:").parse().ok())
            .collect())
    }
}

/// `.../readings` in the JSON format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingsMessage {
    /// Always [`READINGS_SCHEMA`].
    pub schema: String,
    pub site: String,
    pub gateway: String,
    pub readings: Vec<WireReading>,
}

/// One reading in a [`ReadingsMessage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireReading {
    /// A UUID (v8 from the store, v7 for staff entries and older readings); the
    /// cloud drops repeats of an id (delivery is at least once).
    pub id: String,
    /// The sensor's Bluetooth address.
    pub device: String,
    /// The resident's pseudonymous reference, or null.
    pub resident: Option<String>,
    /// The room, for room sensors, or null.
    pub room: Option<String>,
    pub quantity: String,
    /// The number, or null when `status` is not `"ok"`.
    pub value: Option<f64>,
    /// `"ok"`, or the sensor's special value (`"nan"`, `"nres"`, `"+inf"`, ...).
    pub status: String,
    /// UCUM code.
    pub unit: String,
    /// RFC 3339 UTC; null when the device gave no time of its own.
    pub measured_at: Option<String>,
    /// RFC 3339 UTC, the gateway's clock.
    pub received_at: String,
    /// Whether the gateway's clock was NTP-synchronised when it received the reading.
    pub clock_synchronised: bool,
}

impl WireReading {
    pub fn from_reading(r: OutgoingReading<'_>) -> WireReading {
        let reading = r.reading;
        let (value, status) = match reading.value {
            Value::Number(n) => (Some(n), "ok"),
            Value::Special(s) => (None, s.as_str()),
        };
        WireReading {
            id: reading.id.to_string(),
            device: reading.device.to_string(),
            resident: match reading.subject {
                Subject::Resident(_) => r.resident_reference.map(str::to_owned),
                _ => None,
            },
            room: match &reading.subject {
                Subject::Room(room) => Some(room.clone()),
                _ => None,
            },
            quantity: reading.quantity.as_str().to_owned(),
            value,
            status: status.to_owned(),
            unit: reading.unit.ucum().to_owned(),
            measured_at: reading.measured_at.map(Timestamp::to_rfc3339),
            received_at: reading.received_at.to_rfc3339(),
            clock_synchronised: reading.clock_synced,
        }
    }
}

impl ReadingsMessage {
    pub fn new(site: &str, gateway: &str, readings: &[OutgoingReading<'_>]) -> ReadingsMessage {
        ReadingsMessage {
            schema: READINGS_SCHEMA.to_owned(),
            site: site.to_owned(),
            gateway: gateway.to_owned(),
            readings: readings
                .iter()
                .map(|r| WireReading::from_reading(*r))
                .collect(),
        }
    }
}

/// Writes `.../readings` in the JSON format into `out`: byte for byte what
/// `serde_json::to_vec(&ReadingsMessage::new(..))` writes (a test keeps them
/// equal), without building a `WireReading` of owned strings for every reading.
/// The uplink encodes every reading it sends, so this is on its hot path; it
/// writes a message piece by piece ([`write_readings_head`], then
/// [`write_reading_json`] for each reading, then [`write_readings_tail`]) as the
/// rows are read.
pub fn write_readings_json(
    out: &mut Vec<u8>,
    site: &str,
    gateway: &str,
    readings: &[OutgoingReading<'_>],
) {
    out.reserve(96 + readings.len() * 300);
    write_readings_head(out, site, gateway);
    for (i, r) in readings.iter().enumerate() {
        write_reading_json(out, i == 0, *r);
    }
    write_readings_tail(out);
}

/// The start of a readings message, up to its first reading.
pub fn write_readings_head(out: &mut Vec<u8>, site: &str, gateway: &str) {
    out.extend_from_slice(b"{\"schema\":");
    json_str(out, READINGS_SCHEMA);
    out.extend_from_slice(b",\"site\":");
    json_str(out, site);
    out.extend_from_slice(b",\"gateway\":");
    json_str(out, gateway);
    out.extend_from_slice(b",\"readings\":[");
}

/// The end of a readings message, after its last reading.
pub fn write_readings_tail(out: &mut Vec<u8>) {
    out.extend_from_slice(b"]}");
}

/// One reading of a readings message; `first` for the first of the message.
#[allow(
    clippy::indexing_slicing,
    reason = "a nibble (0 to 15) indexes the 16 hex digits"
)]
pub fn write_reading_json(out: &mut Vec<u8>, first: bool, r: OutgoingReading<'_>) {
    if !first {
        out.push(b',');
    }
    let reading = r.reading;
    out.extend_from_slice(b"{\"id\":\"");
    let mut id = uuid::Uuid::encode_buffer();
    out.extend_from_slice(
        uuid::Uuid::from_bytes(*reading.id.as_bytes())
            .hyphenated()
            .encode_lower(&mut id)
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"device\":\"");
    for (j, b) in reading.device.0.iter().enumerate() {
        if j > 0 {
            out.push(b':');
        }
        out.push(HEX_UPPER[usize::from(b >> 4)]);
        out.push(HEX_UPPER[usize::from(b & 0xF)]);
    }
    out.extend_from_slice(b"\",\"resident\":");
    match (&reading.subject, r.resident_reference) {
        (Subject::Resident(_), Some(reference)) => json_str(out, reference),
        _ => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"room\":");
    match &reading.subject {
        Subject::Room(room) => json_str(out, room),
        _ => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"quantity\":");
    json_str(out, reading.quantity.as_str());
    out.extend_from_slice(b",\"value\":");
    match reading.value {
        Value::Number(n) => json_number(out, n),
        Value::Special(_) => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"status\":");
    json_str(out, reading.value.status());
    out.extend_from_slice(b",\"unit\":");
    json_str(out, reading.unit.ucum());
    out.extend_from_slice(b",\"measured_at\":");
    match reading.measured_at {
        Some(t) => json_time(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"received_at\":");
    json_time(out, reading.received_at);
    out.extend_from_slice(if reading.clock_synced {
        b",\"clock_synchronised\":true}"
    } else {
        b",\"clock_synchronised\":false}"
    });
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// A JSON string, escaped as serde_json escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes only control characters, `"` and `\`; the words of a
    // reading and most references have none, and are copied as they are.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    json_value(out, s);
}

/// A number as serde_json writes it. Whole numbers (a pulse rate, an SpO2) are
/// the common case and are written by hand, `95.0`; the rest by serde_json.
#[allow(
    clippy::indexing_slicing,
    reason = "a whole number below 1e9 has at most 9 digits; the buffer holds 10"
)]
fn json_number(out: &mut Vec<u8>, n: f64) {
    // Below 1e9 serde_json writes a whole number as its digits and ".0"; -0.0
    // keeps its sign there, so it goes the slow way.
    if n.fract() == 0.0 && n.abs() < 1e9 && !(n == 0.0 && n.is_sign_negative()) {
        let whole = n as i64;
        if whole < 0 {
            out.push(b'-');
        }
        let mut digits = [0u8; 10];
        let mut rest = whole.unsigned_abs();
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
        out.extend_from_slice(b".0");
        return;
    }
    json_value(out, &n);
}

fn json_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing a string or a number into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// A time as `Timestamp::to_rfc3339` writes it, quoted; computed by hand for the
/// years 0 to 9999 (Howard Hinnant's days-to-civil), else by `to_rfc3339`.
#[allow(
    clippy::indexing_slicing,
    reason = "fixed positions in a fixed-size RFC 3339 buffer"
)]
fn json_time(out: &mut Vec<u8>, t: Timestamp) {
    const DAY_MS: i64 = 86_400_000;
    let ms = t.unix_ms();
    let (days, in_day) = (ms.div_euclid(DAY_MS), ms.rem_euclid(DAY_MS));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        json_str(out, &t.to_rfc3339());
        return;
    }
    // Written into a fixed buffer, then copied once.
    let mut text = *b"\"0000-00-00T00:00:00.000Z\"";
    let mut digits = |at: usize, width: usize, mut n: i64| {
        for k in (at..at + width).rev() {
            text[k] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    digits(1, 4, year);
    digits(6, 2, month);
    digits(9, 2, day);
    digits(12, 2, in_day / 3_600_000);
    digits(15, 2, in_day / 60_000 % 60);
    digits(18, 2, in_day / 1000 % 60);
    digits(21, 3, in_day % 1000);
    out.extend_from_slice(&text);
}

/// Whether the gateway is connected, as the status topic says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    /// Published by the broker as the last will when the connection drops
    /// without a DISCONNECT, and by the gateway when it stops cleanly.
    Offline,
}

/// `.../status`, retained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusMessage {
    /// Always [`STATUS_SCHEMA`].
    pub schema: String,
    pub gateway: String,
    pub state: Presence,
    /// carehub's version.
    pub version: String,
    /// Readings waiting in the outbox when this was sent; null in the last will
    /// (written at connect time, it would be stale when the broker publishes it).
    pub backlog: Option<u64>,
    /// When the gateway certificate expires, RFC 3339 UTC.
    pub certificate_expires_at: Option<String>,
    /// True within the configured warning period before expiry (or after it).
    pub certificate_expiring: bool,
}

/// The schema of an alert message.
pub const ALERT_SCHEMA: &str = "carehub.alert/2";

/// `.../alerts`: one alert, sent when it is raised and again each time an
/// unacknowledged emergency is announced again. The shape is fixed here; the
/// alert stage decides when to send one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertMessage {
    /// Always `"carehub.alert/2"`.
    pub schema: String,
    pub gateway: String,
    /// UUIDv7 of the alert; with `announcement`, the de-duplication key.
    pub id: String,
    /// 1 when raised; 2, 3, ... when announced again unacknowledged.
    pub announcement: u32,
    /// The resident's pseudonymous reference.
    pub resident: String,
    /// E.g. `"news2"`.
    pub kind: String,
    /// E.g. `"low"`, `"low-medium"`, `"medium"`, `"high"`.
    pub level: String,
    pub score: Option<u32>,
    /// The score behind the alert lacked parameters (`missing`).
    pub partial: bool,
    /// The NEWS2 parameters the score lacked or left out as implausible.
    pub missing: Vec<String>,
    /// The parameter that scored 3 (`news2-single-3`) or crossed a nurse's
    /// limit (`threshold`); null otherwise.
    pub parameter: Option<String>,
    /// The readings the alert was computed from.
    pub reading_ids: Vec<String>,
    /// RFC 3339 UTC.
    pub raised_at: String,
    /// With `uplink.payload = "fhir"`, on a NEWS2 alert: the score as a FHIR
    /// transaction Bundle ([`super::fhir::news2_bundle`]); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir: Option<serde_json::Value>,
}

impl AlertMessage {
    /// The message for a stored alert, from gateway `gateway`. The resident goes
    /// out by reference only; the alert's text (which names them) stays local.
    pub fn from_record(gateway: &str, a: &crate::store::AlertRecord) -> AlertMessage {
        AlertMessage {
            schema: ALERT_SCHEMA.into(),
            gateway: gateway.into(),
            id: a.uuid.clone(),
            announcement: a.announcements,
            resident: a.resident_reference.clone().unwrap_or_default(),
            kind: a.rule.clone(),
            level: a.level.clone(),
            score: a.score.map(u32::from),
            partial: a.partial,
            missing: a.missing.clone(),
            parameter: a.parameter.clone(),
            reading_ids: a.reading_ids.clone(),
            raised_at: a.raised_at.to_rfc3339(),
            fhir: None,
        }
    }

    /// The message for a stored alert in the configured payload format: with
    /// FHIR, a NEWS2 alert also carries its score as an Observation.
    pub fn for_payload(
        gateway: &str,
        a: &crate::store::AlertRecord,
        format: crate::config::PayloadFormat,
    ) -> AlertMessage {
        let mut msg = AlertMessage::from_record(gateway, a);
        if format == crate::config::PayloadFormat::Fhir {
            msg.fhir = super::fhir::news2_bundle(gateway, a);
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Reading;
    use crate::model::{
        DeviceAddress, Quantity, ReadingId, ResidentId, SpecialValue, Timestamp, Unit,
    };

    fn reading(subject: Subject, value: Value) -> Reading {
        let at = Timestamp::from_unix_ms(1_763_930_467_123);
        Reading {
            id: ReadingId::new(at),
            device: DeviceAddress([0xA4, 0xC1, 0x38, 0, 0, 1]),
            subject,
            quantity: Quantity::Spo2,
            value,
            unit: Unit::Percent,
            measured_at: None,
            received_at: at,
            clock_synced: true,
        }
    }

    /// The hand-written encoder against serde on every kind of reading, and on
    /// times from year 0 to 9999 and beyond.
    #[test]
    fn hand_written_json_is_exactly_what_serde_writes() {
        let mut readings = vec![
            reading(Subject::Resident(ResidentId(3)), Value::Number(97.0)),
            reading(Subject::Resident(ResidentId(3)), Value::Number(-0.125)),
            reading(Subject::Resident(ResidentId(4)), Value::Number(1e300)),
            reading(
                Subject::Resident(ResidentId(3)),
                Value::Special(SpecialValue::NotANumber),
            ),
            reading(
                Subject::Room("Salle \"à\" manger\\\n".into()),
                Value::Number(21.5),
            ),
            reading(Subject::Unassigned, Value::Number(5.0)),
        ];
        readings[1].measured_at = Some(Timestamp::from_unix_ms(1_700_000_000_007));
        readings[2].clock_synced = false;
        // Times: the epoch, before it, leap days, the ends of the supported range,
        // and beyond it (where to_rfc3339 decides).
        let mut times = vec![
            0,
            -1,
            -86_400_000,
            951_782_400_000,
            4_107_542_399_999,
            -62_167_219_200_000,
            253_402_300_799_999,
            253_402_300_800_000,
            -62_167_219_200_001,
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            times.push((x % 315_569_520_000_000) as i64 - 62_167_219_200_000);
        }
        for t in times {
            let mut r = reading(Subject::Resident(ResidentId(1)), Value::Number(1.0));
            r.received_at = Timestamp::from_unix_ms(t);
            readings.push(r);
        }
        let references = [Some("R-7f3a"), None, Some("ref \u{1}")];
        let out: Vec<OutgoingReading<'_>> = readings
            .iter()
            .enumerate()
            .map(|(i, r)| OutgoingReading {
                reading: r,
                resident_reference: references[i % references.len()],
            })
            .collect();
        for chunk in [&out[..0], &out[..1], &out[..]] {
            let want =
                serde_json::to_vec(&ReadingsMessage::new("oak \"house\"", "gw-7", chunk)).unwrap();
            let mut got = Vec::new();
            write_readings_json(&mut got, "oak \"house\"", "gw-7", chunk);
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = (0u32..=0x80)
            .filter_map(char::from_u32)
            .map(|c| format!("a{c}b"))
            .collect();
        cases.extend(["", "é", "\u{7f}", "\u{2028}", "😀\"", "res-7f3a"].map(String::from));
        for s in cases {
            let mut got = Vec::new();
            json_str(&mut got, &s);
            assert_eq!(got, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            95.0,
            36.6,
            -40.5,
            999_999_999.0,
            -999_999_999.0,
            1e9,
            1e15,
            1e16,
            1e300,
            f64::MIN_POSITIVE,
            0.1 + 0.2,
        ];
        values.extend((-300..300).map(f64::from));
        values.extend((0..200).map(|i| f64::from(i) * 0.25));
        for n in values {
            let mut got = Vec::new();
            json_number(&mut got, n);
            assert_eq!(
                String::from_utf8(got).unwrap(),
                serde_json::to_string(&n).unwrap(),
                "{n:?}"
            );
        }
    }

    #[test]
    fn topics_follow_the_documented_pattern() {
        let t = Topics::new("oak-house", "gw-7");
        assert_eq!(t.readings, "carehub/v1/oak-house/gw-7/readings");
        assert_eq!(t.status, "carehub/v1/oak-house/gw-7/status");
        assert_eq!(t.alerts, "carehub/v1/oak-house/gw-7/alerts");
    }

    #[test]
    fn a_special_value_is_a_status_never_a_number() {
        let r = reading(
            Subject::Resident(ResidentId(3)),
            Value::Special(SpecialValue::NotANumber),
        );
        let w = WireReading::from_reading(OutgoingReading {
            reading: &r,
            resident_reference: Some("R-7f3a"),
        });
        assert_eq!((w.value, w.status.as_str()), (None, "nan"));
        assert_eq!(w.unit, "%");
        let json = serde_json::to_value(&w).unwrap();
        assert!(json["value"].is_null());
    }

    #[test]
    fn residents_appear_only_by_reference_and_rooms_by_room() {
        let r = reading(Subject::Resident(ResidentId(3)), Value::Number(97.0));
        let w = WireReading::from_reading(OutgoingReading {
            reading: &r,
            resident_reference: Some("R-7f3a"),
        });
        assert_eq!((w.resident.as_deref(), w.room), (Some("R-7f3a"), None));
        let room = reading(Subject::Room("12".into()), Value::Number(21.5));
        let w = WireReading::from_reading(OutgoingReading {
            reading: &room,
            resident_reference: Some("must-not-appear"),
        });
        assert_eq!((w.resident, w.room.as_deref()), (None, Some("12")));
    }
}

/// The examples in `docs/mqtt.md` are exactly what this code produces and parses.
#[cfg(test)]
mod doc_examples {
    use super::*;
    use crate::model::Reading;
    use crate::model::{DeviceAddress, Quantity, ResidentId, SpecialValue, Timestamp, Unit};

    const DOC: &str = include_str!("../../docs/mqtt.md");

    /// The JSON block after `<!-- example: NAME -->`.
    fn example(name: &str) -> serde_json::Value {
        let marker = format!("<!-- example: {name} -->");
        let after = DOC
            .split_once(&marker)
            .unwrap_or_else(|| panic!("docs/mqtt.md has no {marker}"))
            .1;
        let body = after.split_once("```json\n").unwrap().1;
        let body = body.split_once("```").unwrap().0;
        serde_json::from_str(body).unwrap_or_else(|e| panic!("example {name}: {e}"))
    }

    pub(crate) fn sample_readings() -> Vec<Reading> {
        let received = Timestamp::from_unix_ms(1_795_467_667_123);
        vec![
            Reading {
                id: "019ab3c2-7a33-7c81-9d2e-0a4f5b6c7d8e".parse().unwrap(),
                device: DeviceAddress([0xA4, 0xC1, 0x38, 0x12, 0x34, 0x56]),
                subject: Subject::Resident(ResidentId(7)),
                quantity: Quantity::Spo2,
                value: Value::Number(96.0),
                unit: Unit::Percent,
                measured_at: Some(Timestamp::from_unix_ms(1_795_467_665_000)),
                received_at: received,
                clock_synced: true,
            },
            Reading {
                id: "019ab3c2-7a33-7c82-8a1b-1c2d3e4f5a6b".parse().unwrap(),
                device: DeviceAddress([0xA4, 0xC1, 0x38, 0x12, 0x34, 0x57]),
                subject: Subject::Resident(ResidentId(7)),
                quantity: Quantity::BodyTemperature,
                value: Value::Special(SpecialValue::NotANumber),
                unit: Unit::Celsius,
                measured_at: None,
                received_at: received,
                clock_synced: true,
            },
            Reading {
                id: "019ab3c2-7a33-7c83-b9c8-d7e6f5a4b3c2".parse().unwrap(),
                device: DeviceAddress([0xC0, 0x7A, 0x11, 0x00, 0x00, 0x03]),
                subject: Subject::Room("12".into()),
                quantity: Quantity::Humidity,
                value: Value::Number(48.5),
                unit: Unit::Percent,
                measured_at: None,
                received_at: received,
                clock_synced: false,
            },
        ]
    }

    fn outgoing(readings: &[Reading]) -> Vec<OutgoingReading<'_>> {
        readings
            .iter()
            .map(|r| OutgoingReading {
                reading: r,
                resident_reference: Some("res-7f3a"),
            })
            .collect()
    }

    #[test]
    fn readings_example_is_what_the_gateway_sends() {
        let readings = sample_readings();
        let made = ReadingsMessage::new("oak-house", "gw-0042", &outgoing(&readings));
        let doc = example("readings");
        assert_eq!(serde_json::to_value(&made).unwrap(), doc);
        let parsed: ReadingsMessage = serde_json::from_value(doc).unwrap();
        assert_eq!(parsed, made);
    }

    #[test]
    fn fhir_example_is_what_the_gateway_sends_and_validates() {
        let readings = sample_readings();
        let made = super::super::fhir::bundle("gw-0042", &outgoing(&readings));
        let doc = example("fhir");
        assert_eq!(
            made,
            doc,
            "{}",
            serde_json::to_string_pretty(&made).unwrap()
        );
        assert_eq!(super::super::fhir::validate(&doc), Ok(3));
    }

    #[test]
    fn status_and_alert_examples_parse() {
        for name in ["status-online", "status-offline"] {
            let doc = example(name);
            let s: StatusMessage = serde_json::from_value(doc.clone()).unwrap();
            assert_eq!(s.schema, STATUS_SCHEMA);
            assert_eq!(serde_json::to_value(&s).unwrap(), doc);
        }
        for name in ["alert", "alert-single-3"] {
            let doc = example(name);
            let a: AlertMessage = serde_json::from_value(doc.clone()).unwrap();
            assert_eq!(a.schema, ALERT_SCHEMA);
            assert_eq!(serde_json::to_value(&a).unwrap(), doc);
        }
    }

    #[test]
    fn the_receipt_example_parses_and_names_its_readings() {
        let doc = example("receipt");
        let r: ReceiptMessage = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(r.schema, RECEIPT_SCHEMA);
        assert_eq!(serde_json::to_value(&r).unwrap(), doc);
        let ids = ReceiptMessage::parse_ids(doc.to_string().as_bytes()).unwrap();
        let want: Vec<crate::model::ReadingId> =
            sample_readings().iter().take(2).map(|r| r.id).collect();
        assert_eq!(ids, want);
        // A FHIR identifier value names the same reading.
        let fhir = br#"{"schema":"carehub.receipt/1","ids":["urn:uuid:019ab3c2-7a33-7c81-9d2e-0a4f5b6c7d8e","junk"]}"#;
        assert_eq!(ReceiptMessage::parse_ids(fhir).unwrap(), want[..1].to_vec());
        // Another schema or no JSON at all is refused, never half read.
        assert!(ReceiptMessage::parse_ids(br#"{"schema":"carehub.receipt/9","ids":[]}"#).is_err());
        assert!(ReceiptMessage::parse_ids(b"\xff").is_err());
    }

    /// The message built from a stored alert has the documented example's shape,
    /// and never carries the alert's text (it names the resident).
    #[test]
    fn an_alert_record_becomes_the_documented_message() {
        let record = crate::store::AlertRecord {
            id: 2,
            uuid: "019ab3c3-0000-7000-8000-000000000002".into(),
            cause_key: "resident:7/news2-single-3:spo2".into(),
            resident_id: Some(7),
            resident_reference: Some("res-7f3a".into()),
            rule: "news2-single-3".into(),
            severity: "urgent".into(),
            level: "low-medium".into(),
            score: Some(3),
            message: "Edith Example: SpO₂ scores 3 (partial)".into(),
            raised_at: Timestamp::from_unix_ms(1_795_467_720_000),
            acknowledged_by: None,
            acknowledged_at: None,
            resolved_at: None,
            published: false,
            cleared_at: None,
            announced_at: Timestamp::from_unix_ms(1_795_467_720_000),
            announcements: 1,
            partial: true,
            missing: ["resp_rate", "oxygen", "consciousness", "temperature"]
                .map(String::from)
                .to_vec(),
            parameter: Some("spo2".into()),
            reading_ids: vec!["019ab3c2-7a33-7c81-9d2e-0a4f5b6c7d90".into()],
        };
        let msg = AlertMessage::from_record("gw-0042", &record);
        assert_eq!(
            serde_json::to_value(&msg).unwrap(),
            example("alert-single-3")
        );
        assert!(!serde_json::to_string(&msg).unwrap().contains("Edith"));
    }

    /// The stored alert behind the `alert` example.
    fn news2_record() -> crate::store::AlertRecord {
        crate::store::AlertRecord {
            id: 1,
            uuid: "019ab3c3-0000-7000-8000-000000000001".into(),
            cause_key: "resident:7/news2:medium".into(),
            resident_id: Some(7),
            resident_reference: Some("res-7f3a".into()),
            rule: "news2".into(),
            severity: "urgent".into(),
            level: "medium".into(),
            score: Some(5),
            message: "Edith Example: NEWS2 5 (partial)".into(),
            raised_at: Timestamp::from_unix_ms(1_795_467_720_000),
            acknowledged_by: None,
            acknowledged_at: None,
            resolved_at: None,
            published: false,
            cleared_at: None,
            announced_at: Timestamp::from_unix_ms(1_795_467_720_000),
            announcements: 1,
            partial: true,
            missing: ["resp_rate", "consciousness"].map(String::from).to_vec(),
            parameter: None,
            reading_ids: vec![
                "019ab3c2-7a33-7c81-9d2e-0a4f5b6c7d8e".into(),
                "019ab3c2-7a33-7c81-9d2e-0a4f5b6c7d8f".into(),
            ],
        }
    }

    /// Issue 15: with the FHIR payload a NEWS2 alert carries the score as an
    /// Observation (SNOMED CT 1104051000000101, valueInteger, the time, the
    /// resident by reference, a note when partial), exactly as docs/mqtt.md
    /// shows it, and the crate's validator accepts it.
    #[test]
    fn with_fhir_a_news2_alert_carries_the_score_as_an_observation() {
        use crate::config::PayloadFormat;
        let record = news2_record();
        let msg = AlertMessage::for_payload("gw-0042", &record, PayloadFormat::Fhir);
        let made = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            made,
            example("alert-fhir"),
            "{}",
            serde_json::to_string_pretty(&made).unwrap()
        );
        let bundle = msg.fhir.as_ref().unwrap();
        assert_eq!(super::super::fhir::validate(bundle), Ok(1));
        let obs = &bundle["entry"][1]["resource"];
        assert_eq!(obs["code"]["coding"][0]["system"], "http://snomed.info/sct");
        assert_eq!(obs["code"]["coding"][0]["code"], "1104051000000101");
        assert_eq!(obs["valueInteger"], 5);
        assert_eq!(obs["effectiveDateTime"], "2026-11-23T21:02:00.000Z");
        assert_eq!(obs["subject"]["identifier"]["value"], "res-7f3a");
        let note = obs["note"][0]["text"].as_str().unwrap();
        assert!(note.contains("Partial") && note.contains("resp_rate, consciousness"));
        assert!(!serde_json::to_string(&msg).unwrap().contains("Edith"));

        // A full score has no note; still valid.
        let full = crate::store::AlertRecord {
            partial: false,
            missing: vec![],
            ..news2_record()
        };
        let bundle = super::super::fhir::news2_bundle("gw-0042", &full).unwrap();
        assert_eq!(super::super::fhir::validate(&bundle), Ok(1));
        assert!(bundle["entry"][1]["resource"].get("note").is_none());

        // The JSON payload, and alerts that are not a NEWS2 score, carry none.
        let json = AlertMessage::for_payload("gw-0042", &record, PayloadFormat::Json);
        assert_eq!(json.fhir, None);
        assert!(!serde_json::to_string(&json).unwrap().contains("fhir"));
        let silent = crate::store::AlertRecord {
            rule: "sensor-silent".into(),
            score: None,
            ..news2_record()
        };
        let msg = AlertMessage::for_payload("gw-0042", &silent, PayloadFormat::Fhir);
        assert_eq!(msg.fhir, None);
    }

    /// The validator refuses a NEWS2 total that is out of range, not an integer,
    /// or about a resident not named by pseudonymous reference.
    #[test]
    fn the_validator_refuses_a_malformed_news2_observation() {
        let good = super::super::fhir::news2_bundle("gw-0042", &news2_record()).unwrap();
        let broken = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut b = good.clone();
            f(&mut b["entry"][1]["resource"]);
            super::super::fhir::validate(&b)
        };
        assert!(broken(&|o| o["valueInteger"] = 21.into()).is_err());
        assert!(broken(&|o| o["valueInteger"] = 4.5.into()).is_err());
        assert!(
            broken(&|o| {
                o["subject"] = serde_json::json!({ "display": "Edith Example" });
            })
            .is_err()
        );
        assert!(
            broken(&|o| {
                o.as_object_mut().unwrap().remove("effectiveDateTime");
            })
            .is_err()
        );
        assert!(broken(&|o| o["note"] = serde_json::json!([{ "text": "" }])).is_err());
    }
}
