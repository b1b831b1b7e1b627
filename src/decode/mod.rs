//! Turns the bytes sensors send into values: pure, no IO, no clock, no panics.
//!
//! [`Decoder`] is the one entry point the pipeline and `carehub decode` share. It
//! picks a format from what a frame carries (a GATT characteristic UUID, a service
//! data UUID, a manufacturer id) and keeps the little per-device state some formats
//! need (BTHome packet ids). The caller passes times in and owns the decoder.
//!
//! Specifications: Bluetooth SIG GATT Specification Supplement (characteristics),
//! IEEE 11073-20601 (numbers), bthome.io (BTHome v2). See `../shared/notes/protocols.md`.

pub mod bthome;
pub mod cli;
pub mod crypto;
pub mod fuzzing;
pub mod gatt;
pub mod govee;
pub mod ieee11073;
pub mod inkbird;
pub mod ruuvi;
pub mod xiaomi;

#[cfg(test)]
mod advert_tests;
#[cfg(test)]
mod gatt_flag_tests;

use std::borrow::Cow;
use std::collections::HashMap;

use crate::model::{CivilTime, DeviceAddress, Quantity, SiteZone, Timestamp, Unit, Value};
use crate::sensor::{Advertisement, Frame, Notification, short_uuid};

/// One decoded value, before the pipeline gives it an id, a device and a subject.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedValue {
    pub quantity: Quantity,
    pub value: Value,
    pub unit: Unit,
    /// The device's own time stamp for the measurement, if the format carries one.
    pub device_time: Option<DeviceDateTime>,
    /// Tells apart several values of one quantity in one frame: an axis (`"x"`), an
    /// averaging time (`"fast"`, `"slow"`). `None` for the plain value.
    pub qualifier: Option<&'static str>,
}

/// Something that happened rather than was measured (a button press), or a status
/// bit the device set (a cuff too loose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: &'static str,
    /// A fixed word for most events (no allocation), text made for a few.
    pub detail: Cow<'static, str>,
}

/// A fact about the frame or device that is not a measurement: a sequence number,
/// a user id, a temperature site, a firmware version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    Int(i64),
    Text(&'static str),
    Owned(String),
    /// A Bluetooth address, formatted only when printed (no allocation on decode).
    Address(DeviceAddress),
}

/// The result of decoding one frame.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    /// The format's name, e.g. `"bthome_v2"`, `"gatt_heart_rate_measurement"`.
    pub format: &'static str,
    pub values: Vec<DecodedValue>,
    pub events: Vec<Event>,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

impl Decoded {
    /// Empties the result for a frame of `format`, keeping its buffers: a decoder
    /// writes into a `Decoded` its caller may reuse from frame to frame, so that a
    /// long run (`carehub decode --stdin`) allocates nothing per frame.
    pub(crate) fn start(&mut self, format: &'static str) {
        self.format = format;
        self.values.clear();
        self.events.clear();
        self.attributes.clear();
        // Most frames carry a few values: one allocation for a new result, none for
        // a reused one.
        self.values.reserve(4);
    }

    pub(crate) fn push(&mut self, quantity: Quantity, value: Value, unit: Unit) {
        self.values.push(DecodedValue {
            quantity,
            value,
            unit,
            device_time: None,
            qualifier: None,
        });
    }

    pub(crate) fn push_number(&mut self, quantity: Quantity, n: f64, unit: Unit) {
        self.push(quantity, Value::Number(n), unit);
    }

    pub(crate) fn event(&mut self, kind: &'static str, detail: &'static str) {
        self.events.push(Event {
            kind,
            detail: Cow::Borrowed(detail),
        });
    }

    pub(crate) fn attr(&mut self, key: &'static str, value: AttrValue) {
        self.attributes.push((key, value));
    }
}

/// Runs a decoder that writes into a result and returns that result, new: the
/// form of the decode functions for callers that keep no `Decoded` of their own.
pub(crate) fn fresh(
    decode: impl FnOnce(&mut Decoded) -> Result<(), DecodeError>,
) -> Result<Decoded, DecodeError> {
    let mut out = Decoded::default();
    decode(&mut out)?;
    Ok(out)
}

/// A Bluetooth SIG Date Time (0x2A08): the device's local time, no zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDateTime {
    /// 0 means the device does not know the year.
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DeviceDateTime {
    /// The date and time as the device's clock shows it, or `None` when the device
    /// left the date unknown (year, month or day 0).
    pub fn civil(self) -> Option<CivilTime> {
        if self.year == 0 || self.month == 0 || self.day == 0 {
            return None;
        }
        Some(CivilTime {
            year: self.year,
            month: self.month,
            day: self.day,
            hour: self.hour,
            minute: self.minute,
            second: self.second,
        })
    }

    /// The instant this device time stands for, read as the site's civil time
    /// (devices keep local time with no zone), or `None` when it is unknown or not
    /// a valid date. `received` resolves the hour that repeats or is skipped when
    /// the clocks change.
    pub fn to_timestamp(self, zone: &SiteZone, received: Timestamp) -> Option<Timestamp> {
        zone.civil_to_instant(self.civil()?, received)
    }

    /// The same wall-clock reading counted as if it were UTC: only for arithmetic on
    /// civil times (a record's minute offset) and for checking validity, never as
    /// the instant of a measurement.
    pub(crate) fn as_if_utc(self) -> Option<Timestamp> {
        let c = self.civil()?;
        let month = time::Month::try_from(c.month).ok()?;
        let date = time::Date::from_calendar_date(i32::from(c.year), month, c.day).ok()?;
        let t = time::Time::from_hms(c.hour, c.minute, c.second).ok()?;
        let secs = time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp();
        Some(Timestamp::from_unix_ms(secs.checked_mul(1000)?))
    }
}

/// Why a frame could not be decoded. The caller counts it and carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ended before a field the flags promised.
    #[error("{format}: truncated: needed {needed} bytes at offset {offset}, have {len}")]
    Truncated {
        format: &'static str,
        offset: usize,
        needed: usize,
        len: usize,
    },
    /// Nothing in the frame is a format carehub knows.
    #[error("no decoder for this frame ({0})")]
    Unsupported(String),
    /// The format's version field says a version carehub does not decode.
    #[error("{format}: unsupported version {version}")]
    UnsupportedVersion { format: &'static str, version: u8 },
    /// A BTHome object id that is not in the table: the rest cannot be parsed.
    #[error("bthome_v2: unknown object id {0:#04x}")]
    UnknownObject(u8),
    /// Encrypted data, and this build or this device has no key for it.
    #[error("{0}: encrypted payload and no key for this device")]
    Encrypted(&'static str),
    /// The message integrity check failed: wrong key, or the data was altered.
    #[error("{0}: decryption failed (wrong key or altered data)")]
    Authentication(&'static str),
    /// Plain data from a device that has a key: someone may be spoofing it.
    #[error("{0}: unencrypted data from a device that has a key (downgrade rejected)")]
    Downgrade(&'static str),
    /// An encrypted frame whose counter is not newer than the last one accepted.
    #[error("{format}: replayed counter {counter} (last accepted {last})")]
    Replay {
        format: &'static str,
        counter: u32,
        last: u32,
    },
    /// The same advertisement again (same packet id): not an error, just not new.
    #[error("repeated packet id {0}")]
    Duplicate(u8),
    /// A field holds a value the specification does not allow.
    #[error("{format}: invalid {field}")]
    Invalid {
        format: &'static str,
        field: &'static str,
    },
}

/// A 128-bit AES key (BTHome, pvvx and MiBeacon v4/v5 bind keys are all this size).
pub type BindKey = [u8; 16];

/// Parses a bind key as staff or engineers type it: 32 hex digits, spaces,
/// colons and dashes between them allowed.
pub fn parse_bind_key(text: &str) -> Result<BindKey, &'static str> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b'-'))
        .collect();
    const WRONG: &str = "an encryption key is 32 hexadecimal digits (0-9, a-f)";
    if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(WRONG);
    }
    let nibble = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
    let mut key = [0u8; 16];
    for (k, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        if let [hi, lo] = pair {
            *k = nibble(*hi) << 4 | nibble(*lo);
        }
    }
    Ok(key)
}

/// The last encryption counters accepted from one device, per format family:
/// what replay protection must remember across a restart of the gateway.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCounters {
    pub bthome: Option<u32>,
    pub mibeacon: Option<u32>,
    /// pvvx/ATC encrypted: one byte that wraps (it must rise by 1 to 127,
    /// modulo 256).
    pub pvvx: Option<u8>,
}

/// Per-device state some formats need between frames. The caller owns it (inside
/// [`Decoder`]); nothing here reads a clock.
#[derive(Debug, Default, Clone)]
pub(crate) struct DeviceState {
    key: Option<BindKey>,
    /// Last BTHome packet id (object 0x00), for dropping repeated advertisements.
    last_packet_id: Option<u8>,
    /// Last accepted encryption counter, per format family, for replay protection.
    last_bthome_counter: Option<u32>,
    last_mibeacon_counter: Option<u32>,
    last_pvvx_counter: Option<u8>,
    /// Last plain frame counter (ATC/pvvx, MiBeacon), for dropping repeats.
    last_frame_counter: Option<u8>,
}

/// Hashes a device address with one multiply instead of SipHash, which took a
/// seventh of a BTHome decode. Flooding the map with chosen addresses is not a
/// concern: the daemon decodes only registered devices (`ingest` checks the
/// registry first), so only they ever get state here.
#[derive(Debug, Default, Clone, Copy)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

type AddressMap<V> = HashMap<DeviceAddress, V, std::hash::BuildHasherDefault<AddressHasher>>;

/// Decodes frames; owns the per-device state. One per pipeline.
#[derive(Debug, Default)]
pub struct Decoder {
    devices: AddressMap<DeviceState>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Registers the bind key of a device that encrypts (BTHome, pvvx, MiBeacon
    /// v4/v5). From then on its plain data is rejected as a downgrade.
    pub fn set_key(&mut self, address: DeviceAddress, key: BindKey) {
        self.devices.entry(address).or_default().key = Some(key);
    }

    /// Forgets the device's key and its encryption counters (a new key starts a
    /// new count): from then on its encrypted data cannot be read and its plain
    /// data is accepted.
    pub fn clear_key(&mut self, address: DeviceAddress) {
        if let Some(state) = self.devices.get_mut(&address) {
            state.key = None;
            state.last_bthome_counter = None;
            state.last_mibeacon_counter = None;
            state.last_pvvx_counter = None;
        }
    }

    /// The key registered for the device, if any.
    pub fn key(&self, address: DeviceAddress) -> Option<BindKey> {
        self.devices.get(&address).and_then(|s| s.key)
    }

    /// The last encryption counters accepted from the device.
    pub fn replay_counters(&self, address: DeviceAddress) -> ReplayCounters {
        self.devices
            .get(&address)
            .map(|s| ReplayCounters {
                bthome: s.last_bthome_counter,
                mibeacon: s.last_mibeacon_counter,
                pvvx: s.last_pvvx_counter,
            })
            .unwrap_or_default()
    }

    /// Restores counters saved before a restart: frames with a counter not above
    /// them are rejected as replays. Never lowers a counter already newer.
    pub fn restore_replay_counters(&mut self, address: DeviceAddress, saved: ReplayCounters) {
        let state = self.devices.entry(address).or_default();
        state.last_bthome_counter = state.last_bthome_counter.max(saved.bthome);
        state.last_mibeacon_counter = state.last_mibeacon_counter.max(saved.mibeacon);
        // A wrapping counter has no "max": one already heard since start is newer
        // than any saved one.
        if state.last_pvvx_counter.is_none() {
            state.last_pvvx_counter = saved.pvvx;
        }
    }

    pub fn decode(&mut self, frame: &Frame) -> Result<Decoded, DecodeError> {
        fresh(|out| self.decode_into(frame, out))
    }

    /// [`Decoder::decode`] into a result the caller keeps and reuses: `out` is
    /// emptied first and keeps its buffers, so decoding allocates nothing once
    /// they have grown. On an error `out` holds what was read before it, which
    /// means nothing: read it only after `Ok`.
    pub fn decode_into(&mut self, frame: &Frame, out: &mut Decoded) -> Result<(), DecodeError> {
        match frame {
            Frame::Notification(n) => decode_notification(n, out),
            Frame::Advertisement(a) => self.decode_advertisement_into(a, out),
        }
    }

    /// Picks the decoder from what the advertisement carries: service data UUIDs
    /// first (they name a format), then manufacturer data by company id and, where a
    /// vendor reuses ids, by local name.
    pub fn decode_advertisement(&mut self, adv: &Advertisement) -> Result<Decoded, DecodeError> {
        fresh(|out| self.decode_advertisement_into(adv, out))
    }

    /// [`Decoder::decode_advertisement`] into a reused result, as
    /// [`Decoder::decode_into`].
    pub fn decode_advertisement_into(
        &mut self,
        adv: &Advertisement,
        out: &mut Decoded,
    ) -> Result<(), DecodeError> {
        for (uuid, data) in &adv.service_data {
            let Some(short) = short_uuid(uuid) else {
                continue;
            };
            match short {
                bthome::SERVICE_UUID => {
                    let state = self.devices.entry(adv.address).or_default();
                    return bthome::decode_with_state(adv.address, data, state, out);
                }
                xiaomi::ATC_SERVICE_UUID => {
                    let state = self.devices.entry(adv.address).or_default();
                    return xiaomi::decode_atc(adv.address, data, state, out);
                }
                xiaomi::MIBEACON_SERVICE_UUID => {
                    let state = self.devices.entry(adv.address).or_default();
                    return xiaomi::decode_mibeacon(adv.address, data, state, out);
                }
                _ => {}
            }
        }
        let name = adv.local_name.as_deref().unwrap_or("");
        for (company, data) in &adv.manufacturer_data {
            if *company == ruuvi::COMPANY_ID {
                return ruuvi::decode_into(data, out);
            }
            if inkbird::is_inkbird(name) {
                return inkbird::decode_into(*company, data, out);
            }
            if let Some(decoded) = govee::decode_into(name, *company, data, out) {
                return decoded;
            }
        }
        Err(DecodeError::Unsupported(describe(adv)))
    }

    /// Decodes a characteristic value: what [`Decoder::decode`] does with a
    /// [`Frame::Notification`], for a caller that keeps the notification itself.
    pub fn decode_notification(&self, n: &Notification) -> Result<Decoded, DecodeError> {
        fresh(|out| decode_notification(n, out))
    }

    /// [`Decoder::decode_notification`] into a reused result, as
    /// [`Decoder::decode_into`].
    pub fn decode_notification_into(
        &self,
        n: &Notification,
        out: &mut Decoded,
    ) -> Result<(), DecodeError> {
        decode_notification(n, out)
    }
}

fn decode_notification(n: &Notification, out: &mut Decoded) -> Result<(), DecodeError> {
    let Some(short) = short_uuid(&n.characteristic) else {
        return Err(DecodeError::Unsupported(format!(
            "characteristic {}",
            n.characteristic
        )));
    };
    gatt::decode_into(short, &n.value, out)
}

fn describe(adv: &Advertisement) -> String {
    let mut parts = Vec::new();
    for (uuid, _) in &adv.service_data {
        match short_uuid(uuid) {
            Some(s) => parts.push(format!("service data {s:04x}")),
            None => parts.push(format!("service data {uuid}")),
        }
    }
    for (company, _) in &adv.manufacturer_data {
        parts.push(format!("manufacturer {company:04x}"));
    }
    if parts.is_empty() {
        "no service or manufacturer data".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The MAC an advertisement carries inside its service data (BTHome v2 "MAC
/// included", MiBeacon's MAC field), if any: the address such a frame is encrypted
/// under, whatever address it was heard from.
pub fn embedded_mac(adv: &Advertisement) -> Option<DeviceAddress> {
    adv.service_data
        .iter()
        .find_map(|(uuid, data)| match short_uuid(uuid)? {
            bthome::SERVICE_UUID => bthome::embedded_mac(data),
            xiaomi::MIBEACON_SERVICE_UUID => xiaomi::mibeacon_embedded_mac(data),
            _ => None,
        })
}

/// A little-endian cursor that turns running off the end into [`DecodeError::Truncated`].
pub(crate) struct Cursor<'a> {
    format: &'static str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(format: &'static str, bytes: &'a [u8]) -> Self {
        Cursor {
            format,
            bytes,
            pos: 0,
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end.and_then(|end| Some((end, self.bytes.get(self.pos..end)?))) {
            Some((end, s)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                format: self.format,
                offset: self.pos,
                needed: n,
                len: self.bytes.len(),
            }),
        }
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let format = self.format;
        let offset = self.pos;
        self.take(N)?
            .try_into()
            .map_err(|_| DecodeError::Truncated {
                format,
                offset,
                needed: N,
                len: offset,
            })
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.array()?;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u24(&mut self) -> Result<u32, DecodeError> {
        let [a, b, c] = self.array()?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(self.u16()? as i16)
    }

    pub(crate) fn u16_be(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i16_be(&mut self) -> Result<i16, DecodeError> {
        Ok(self.u16_be()? as i16)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(crate) fn date_time(&mut self) -> Result<DeviceDateTime, DecodeError> {
        Ok(DeviceDateTime {
            year: self.u16()?,
            month: self.u8()?,
            day: self.u8()?,
            hour: self.u8()?,
            minute: self.u8()?,
            second: self.u8()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::uuid16;

    #[test]
    fn device_time_year_zero_is_unknown() {
        let t = DeviceDateTime {
            year: 0,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        };
        assert_eq!(t.as_if_utc(), None);
        let t = DeviceDateTime {
            year: 2026,
            month: 2,
            day: 30,
            hour: 0,
            minute: 0,
            second: 0,
        };
        assert_eq!(t.as_if_utc(), None);
        let t = DeviceDateTime {
            year: 2026,
            month: 11,
            day: 23,
            hour: 20,
            minute: 41,
            second: 7,
        };
        assert_eq!(
            t.as_if_utc().unwrap().to_rfc3339(),
            "2026-11-23T20:41:07.000Z"
        );
    }

    #[test]
    fn device_time_is_read_in_the_site_zone_not_as_utc() {
        let t = DeviceDateTime {
            year: 2026,
            month: 6,
            day: 15,
            hour: 9,
            minute: 5,
            second: 0,
        };
        let london = SiteZone::named("Europe/London").unwrap();
        let received = Timestamp::from_unix_ms(1_781_510_730_000); // 2026-06-15T08:05:30Z
        assert_eq!(
            t.to_timestamp(&london, received).unwrap().to_rfc3339(),
            "2026-06-15T08:05:00.000Z"
        );
        let unknown = DeviceDateTime { year: 0, ..t };
        assert_eq!(unknown.to_timestamp(&london, received), None);
    }

    #[test]
    fn repeated_bthome_packet_is_dropped_once_per_repeat() {
        let mut d = Decoder::new();
        let adv = |payload: Vec<u8>| Advertisement {
            address: "A4:C1:38:00:00:01".parse().unwrap(),
            service_data: vec![(uuid16(0xFCD2), payload)],
            ..Default::default()
        };
        // Packet id 9, temperature 25.00 °C.
        let a = adv(vec![0x40, 0x00, 0x09, 0x02, 0xC4, 0x09]);
        assert_eq!(d.decode_advertisement(&a).unwrap().values.len(), 1);
        assert_eq!(d.decode_advertisement(&a), Err(DecodeError::Duplicate(9)));
        let b = adv(vec![0x40, 0x00, 0x0A, 0x02, 0xC4, 0x09]);
        assert!(d.decode_advertisement(&b).is_ok());
    }

    #[test]
    fn unknown_advert_says_what_it_carried() {
        let mut d = Decoder::new();
        let a = Advertisement {
            manufacturer_data: vec![(0x004C, vec![1, 2])],
            ..Default::default()
        };
        assert_eq!(
            d.decode_advertisement(&a),
            Err(DecodeError::Unsupported("manufacturer 004c".into()))
        );
    }
}
