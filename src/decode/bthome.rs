//! BTHome v2 (bthome.io): service data under UUID 0xFCD2, a device-information byte
//! then objects of `id` + fixed-size little-endian value in ascending id order.
//!
//! The object table below is the specification's, in full, every object with its
//! quantity and UCUM unit, so that nothing a sensor sends is silently dropped. An id
//! not in the table stops parsing with an error, as the specification requires (the
//! size of what follows is unknown).
//!
//! Device-information byte: bit 0 encrypted, bit 1 "MAC included" (the device's MAC
//! follows, six bytes least significant first, before the objects), bit 2 trigger
//! based, bits 5-7 the version.
//!
//! Encryption (bthome.io/encryption): AES-CCM, 4-byte MIC, no associated data, nonce
//! = MAC ‖ `D2 FC` ‖ device-info byte ‖ counter, where the MAC is the one in the frame
//! when it carries one (the advertiser's address otherwise). A device with a bind key must send
//! encrypted data with a counter that only goes up; anything else is rejected
//! (downgrade and replay protection).

use super::crypto::{self, MAX_PLAIN};
use super::gatt::round_to;
use super::{AttrValue, BindKey, Cursor, DecodeError, Decoded, DeviceState};
use crate::model::{DeviceAddress, Quantity, Unit, Value};

pub const SERVICE_UUID: u16 = 0xFCD2;
const FORMAT: &str = "bthome_v2";

/// Device-information bits.
const INFO_ENCRYPTED: u8 = 0x01;
const INFO_MAC_INCLUDED: u8 = 0x02;
const INFO_TRIGGER_BASED: u8 = 0x04;

/// A decoded BTHome frame and its packet id, for de-duplication by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct BthomeFrame {
    pub decoded: Decoded,
    pub packet_id: Option<u8>,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Unsigned or signed little-endian integer of `size` bytes, times `factor`.
    Number {
        size: u8,
        signed: bool,
        factor: f64,
        digits: i32,
    },
    /// A length byte then that many bytes (text, raw).
    LengthPrefixed,
    /// Handled by id: packet id, events, device information.
    Special { size: u8 },
}

struct Object {
    id: u8,
    kind: Kind,
    quantity: Option<(Quantity, Unit)>,
}

const fn num(
    id: u8,
    size: u8,
    signed: bool,
    factor: f64,
    digits: i32,
    q: Quantity,
    u: Unit,
) -> Object {
    Object {
        id,
        kind: Kind::Number {
            size,
            signed,
            factor,
            digits,
        },
        quantity: Some((q, u)),
    }
}

const fn binary(id: u8, q: Quantity) -> Object {
    num(id, 1, false, 1.0, 0, q, Unit::One)
}

const fn special(id: u8, size: u8) -> Object {
    Object {
        id,
        kind: Kind::Special { size },
        quantity: None,
    }
}

const fn text(id: u8) -> Object {
    Object {
        id,
        kind: Kind::LengthPrefixed,
        quantity: None,
    }
}

use Quantity as Q;
use Unit as U;

/// Every object id of BTHome v2 (bthome.io/format), its size, scale, quantity and unit.
const OBJECTS: &[Object] = &[
    special(0x00, 1), // packet id
    num(0x01, 1, false, 1.0, 0, Q::BatteryLevel, U::Percent),
    num(0x02, 2, true, 0.01, 2, Q::Temperature, U::Celsius),
    num(0x03, 2, false, 0.01, 2, Q::Humidity, U::Percent),
    num(0x04, 3, false, 0.01, 2, Q::Pressure, U::Hectopascal),
    num(0x05, 3, false, 0.01, 2, Q::Illuminance, U::Lux),
    num(0x06, 2, false, 0.01, 2, Q::BodyWeight, U::Kilogram),
    num(0x07, 2, false, 0.01, 2, Q::BodyWeight, U::Pound),
    num(0x08, 2, true, 0.01, 2, Q::DewPoint, U::Celsius),
    num(0x09, 1, false, 1.0, 0, Q::Count, U::One),
    num(0x0A, 3, false, 0.001, 3, Q::Energy, U::KilowattHour),
    num(0x0B, 3, false, 0.01, 2, Q::Power, U::Watt),
    num(0x0C, 2, false, 0.001, 3, Q::BatteryVoltage, U::Volt),
    num(0x0D, 2, false, 1.0, 0, Q::Pm2_5, U::MicrogramPerCubicMetre),
    num(0x0E, 2, false, 1.0, 0, Q::Pm10, U::MicrogramPerCubicMetre),
    binary(0x0F, Q::BinaryGeneric),
    binary(0x10, Q::PowerState),
    binary(0x11, Q::Opening),
    num(0x12, 2, false, 1.0, 0, Q::Co2, U::PartsPerMillion),
    num(0x13, 2, false, 1.0, 0, Q::Voc, U::MicrogramPerCubicMetre),
    num(0x14, 2, false, 0.01, 2, Q::MoistureLevel, U::Percent),
    binary(0x15, Q::BatteryLow),
    binary(0x16, Q::BatteryCharging),
    binary(0x17, Q::CarbonMonoxide),
    binary(0x18, Q::Cold),
    binary(0x19, Q::Connectivity),
    binary(0x1A, Q::Door),
    binary(0x1B, Q::GarageDoor),
    binary(0x1C, Q::GasDetected),
    binary(0x1D, Q::Heat),
    binary(0x1E, Q::LightDetected),
    binary(0x1F, Q::Lock),
    binary(0x20, Q::Moisture),
    binary(0x21, Q::Motion),
    binary(0x22, Q::Moving),
    binary(0x23, Q::Occupancy),
    binary(0x24, Q::Plug),
    binary(0x25, Q::Presence),
    binary(0x26, Q::Problem),
    binary(0x27, Q::Running),
    binary(0x28, Q::Safety),
    binary(0x29, Q::Smoke),
    binary(0x2A, Q::Sound),
    binary(0x2B, Q::Tamper),
    binary(0x2C, Q::Vibration),
    binary(0x2D, Q::Window),
    num(0x2E, 1, false, 1.0, 0, Q::Humidity, U::Percent),
    num(0x2F, 1, false, 1.0, 0, Q::MoistureLevel, U::Percent),
    special(0x3A, 1), // button event
    special(0x3C, 2), // dimmer event
    num(0x3D, 2, false, 1.0, 0, Q::Count, U::One),
    num(0x3E, 4, false, 1.0, 0, Q::Count, U::One),
    num(0x3F, 2, true, 0.1, 1, Q::Rotation, U::Degree),
    num(0x40, 2, false, 1.0, 0, Q::Distance, U::Millimetre),
    num(0x41, 2, false, 0.1, 1, Q::Distance, U::Metre),
    num(0x42, 3, false, 0.001, 3, Q::Duration, U::Second),
    num(0x43, 2, false, 0.001, 3, Q::Current, U::Ampere),
    num(0x44, 2, false, 0.01, 2, Q::Speed, U::MetrePerSecond),
    num(0x45, 2, true, 0.1, 1, Q::Temperature, U::Celsius),
    num(0x46, 1, false, 0.1, 1, Q::UvIndex, U::One),
    num(0x47, 2, false, 0.1, 1, Q::Volume, U::Litre),
    num(0x48, 2, false, 1.0, 0, Q::Volume, U::Millilitre),
    num(0x49, 2, false, 0.001, 3, Q::FlowRate, U::CubicMetrePerHour),
    num(0x4A, 2, false, 0.1, 1, Q::BatteryVoltage, U::Volt),
    num(0x4B, 3, false, 0.001, 3, Q::GasVolume, U::CubicMetre),
    num(0x4C, 4, false, 0.001, 3, Q::GasVolume, U::CubicMetre),
    num(0x4D, 4, false, 0.001, 3, Q::Energy, U::KilowattHour),
    num(0x4E, 4, false, 0.001, 3, Q::Volume, U::Litre),
    num(0x4F, 4, false, 0.001, 3, Q::WaterVolume, U::Litre),
    num(0x50, 4, false, 1.0, 0, Q::DeviceTimestamp, U::Second),
    num(
        0x51,
        2,
        false,
        0.001,
        3,
        Q::Acceleration,
        U::MetrePerSecondSquared,
    ),
    num(
        0x52,
        2,
        false,
        0.001,
        3,
        Q::AngularVelocity,
        U::DegreePerSecond,
    ),
    text(0x53),
    text(0x54),
    num(0x55, 4, false, 0.001, 3, Q::VolumeStorage, U::Litre),
    num(
        0x56,
        2,
        false,
        1.0,
        0,
        Q::Conductivity,
        U::MicrosiemensPerCentimetre,
    ),
    num(0x57, 1, true, 1.0, 0, Q::Temperature, U::Celsius),
    num(0x58, 1, true, 0.35, 2, Q::Temperature, U::Celsius),
    num(0x59, 1, true, 1.0, 0, Q::Count, U::One),
    num(0x5A, 2, true, 1.0, 0, Q::Count, U::One),
    num(0x5B, 4, true, 1.0, 0, Q::Count, U::One),
    num(0x5C, 4, true, 0.01, 2, Q::Power, U::Watt),
    num(0x5D, 2, true, 0.001, 3, Q::Current, U::Ampere),
    num(0x5E, 2, false, 0.01, 2, Q::Direction, U::Degree),
    num(0x5F, 2, false, 0.1, 1, Q::Precipitation, U::Millimetre),
    num(0x60, 1, false, 1.0, 0, Q::Channel, U::One),
    num(0x61, 2, false, 1.0, 0, Q::RotationalSpeed, U::PerMinute),
    num(0x62, 4, true, 0.000001, 6, Q::Speed, U::MetrePerSecond),
    num(
        0x63,
        4,
        true,
        0.000001,
        6,
        Q::Acceleration,
        U::MetrePerSecondSquared,
    ),
    num(0x64, 1, false, 1.0, 0, Q::LightLevel, U::One),
    special(0xF0, 2), // device type id
    special(0xF1, 4), // firmware version, 4 parts
    special(0xF2, 3), // firmware version, 3 parts
];

/// Every object id the table knows, for tests, fuzz seeds and documentation.
pub fn object_ids() -> impl Iterator<Item = u8> {
    OBJECTS.iter().map(|o| o.id)
}

/// The value size of a fixed-size object id; `None` for length-prefixed or unknown ids.
pub fn object_size(id: u8) -> Option<usize> {
    match object(id)?.kind {
        Kind::Number { size, .. } | Kind::Special { size } => Some(usize::from(size)),
        Kind::LengthPrefixed => None,
    }
}

fn object(id: u8) -> Option<&'static Object> {
    // The table is sorted by id (a test checks it), so a binary search is exact.
    OBJECTS
        .binary_search_by_key(&id, |o| o.id)
        .ok()
        .and_then(|i| OBJECTS.get(i))
}

/// Decodes unencrypted service data under 0xFCD2 (the bytes after the UUID), with no
/// per-device state. Encrypted data is an error here; [`super::Decoder`] decrypts.
pub fn decode(data: &[u8]) -> Result<BthomeFrame, DecodeError> {
    let info = device_info(data)?;
    if info & INFO_ENCRYPTED != 0 {
        return Err(DecodeError::Encrypted(FORMAT));
    }
    let (mac, objects) = split_mac(info, data.get(1..).unwrap_or_default())?;
    let mut decoded = Decoded::default();
    let packet_id = parse_objects(info, objects, &mut decoded)?;
    if let Some(mac) = mac {
        decoded.attr("mac", AttrValue::Address(mac));
    }
    Ok(BthomeFrame { decoded, packet_id })
}

/// The MAC a frame carries, if its "MAC included" bit is set, and the bytes after it.
/// The frame sends it least significant byte first; the address is in display order.
fn split_mac(info: u8, rest: &[u8]) -> Result<(Option<DeviceAddress>, &[u8]), DecodeError> {
    if info & INFO_MAC_INCLUDED == 0 {
        return Ok((None, rest));
    }
    let mut c = Cursor::new(FORMAT, rest);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(c.take(6)?);
    mac.reverse();
    Ok((Some(DeviceAddress(mac)), rest.get(6..).unwrap_or_default()))
}

/// The MAC an advertisement's BTHome service data carries ("MAC included"), if any:
/// the address to read its key and nonce by when the advertiser's is unknown or random.
pub fn embedded_mac(data: &[u8]) -> Option<DeviceAddress> {
    let info = device_info(data).ok()?;
    split_mac(info, data.get(1..)?).ok()?.0
}

fn device_info(data: &[u8]) -> Result<u8, DecodeError> {
    let info = Cursor::new(FORMAT, data).u8()?;
    let version = info >> 5;
    if version != 2 {
        return Err(DecodeError::UnsupportedVersion {
            format: FORMAT,
            version,
        });
    }
    Ok(info)
}

/// Decodes with the device's state: decrypts with its key, rejects replays and
/// downgrades, drops repeated packet ids.
pub(crate) fn decode_with_state(
    address: DeviceAddress,
    data: &[u8],
    state: &mut DeviceState,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    let info = device_info(data)?;
    let (mac, body) = split_mac(info, data.get(1..).unwrap_or_default())?;
    let packet_id = if info & INFO_ENCRYPTED != 0 {
        let key = state.key.ok_or(DecodeError::Encrypted(FORMAT))?;
        let mut plain = [0u8; MAX_PLAIN];
        // A frame that carries its MAC is encrypted under that MAC, whatever
        // address it was heard from.
        let (n, counter) = decrypt(mac.unwrap_or(address), &key, info, body, &mut plain)?;
        if let Some(last) = state.last_bthome_counter
            && counter <= last
        {
            return Err(DecodeError::Replay {
                format: FORMAT,
                counter,
                last,
            });
        }
        state.last_bthome_counter = Some(counter);
        let packet_id = parse_objects(info, plain.get(..n).unwrap_or_default(), out)?;
        out.attr("encryption_counter", AttrValue::Int(i64::from(counter)));
        packet_id
    } else {
        if state.key.is_some() {
            return Err(DecodeError::Downgrade(FORMAT));
        }
        parse_objects(info, body, out)?
    };
    if let Some(mac) = mac {
        out.attr("mac", AttrValue::Address(mac));
    }
    if let Some(id) = packet_id {
        if state.last_packet_id == Some(id) {
            return Err(DecodeError::Duplicate(id));
        }
        state.last_packet_id = Some(id);
    }
    Ok(())
}

/// The nonce of an encrypted frame: MAC (display order) ‖ UUID ‖ device info ‖ counter.
fn nonce(address: DeviceAddress, info: u8, counter: [u8; 4]) -> [u8; 13] {
    let mut n = [0u8; 13];
    n[..6].copy_from_slice(&address.0);
    n[6..8].copy_from_slice(&SERVICE_UUID.to_le_bytes());
    n[8] = info;
    n[9..].copy_from_slice(&counter);
    n
}

/// Layout of `body` (what follows the device info and the MAC, if included):
/// ciphertext ‖ counter (4, LE) ‖ MIC (4).
fn decrypt(
    address: DeviceAddress,
    key: &BindKey,
    info: u8,
    body: &[u8],
    out: &mut [u8; MAX_PLAIN],
) -> Result<(usize, u32), DecodeError> {
    let truncated = || DecodeError::Truncated {
        format: FORMAT,
        offset: body.len(),
        needed: 8,
        len: body.len(),
    };
    let (ciphertext, tail) = body
        .split_at_checked(body.len().checked_sub(8).ok_or_else(truncated)?)
        .ok_or_else(truncated)?;
    let (counter, mic) = tail.split_at_checked(4).ok_or_else(truncated)?;
    let counter: [u8; 4] = counter.try_into().map_err(|_| truncated())?;
    let n = nonce(address, info, counter);
    let len = crypto::decrypt(FORMAT, key, &n, &[], ciphertext, mic, out)?;
    Ok((len, u32::from_le_bytes(counter)))
}

/// Builds an encrypted frame from a plain one, as a sensor does: for tests, the
/// benchmark and fuzz seeds. A plain frame with "MAC included" keeps its MAC in the
/// clear and is encrypted under it.
pub fn encrypt(
    address: DeviceAddress,
    key: &BindKey,
    plain: &[u8],
    counter: u32,
) -> Option<Vec<u8>> {
    let (&info, rest) = plain.split_first()?;
    let info = info | INFO_ENCRYPTED;
    let (mac, objects) = split_mac(info, rest).ok()?;
    let c = counter.to_le_bytes();
    let mut buf = objects.to_vec();
    let tag = crypto::encrypt(key, &nonce(mac.unwrap_or(address), info, c), &[], &mut buf)?;
    let mut out = Vec::with_capacity(buf.len() + 15);
    out.push(info);
    out.extend_from_slice(rest.get(..rest.len() - objects.len())?);
    out.extend_from_slice(&buf);
    out.extend_from_slice(&c);
    out.extend_from_slice(&tag);
    Some(out)
}

/// Reads the objects into `out`; returns the packet id, if the frame has one.
fn parse_objects(info: u8, objects: &[u8], out: &mut Decoded) -> Result<Option<u8>, DecodeError> {
    let mut c = Cursor::new(FORMAT, objects);
    out.start(FORMAT);
    if info & INFO_TRIGGER_BASED != 0 {
        out.attr("trigger_based", AttrValue::Int(1));
    }
    let mut packet_id = None;
    while c.remaining() > 0 {
        let id = c.u8()?;
        let obj = object(id).ok_or(DecodeError::UnknownObject(id))?;
        match obj.kind {
            Kind::LengthPrefixed => {
                let len = c.u8()?;
                let bytes = c.take(usize::from(len))?;
                if id == 0x53 {
                    let text = String::from_utf8_lossy(bytes).into_owned();
                    out.attr("text", AttrValue::Owned(text));
                } else {
                    out.attr("raw", AttrValue::Owned(hex(bytes)));
                }
            }
            Kind::Special { size } => {
                let b = c.take(usize::from(size))?;
                // `b` has the size the table gives its id, so each id meets its arm.
                match (id, b) {
                    (0x00, &[p]) => packet_id = Some(p),
                    (0x3A, &[e]) => out.event("button", button(e)),
                    (0x3C, &[code, steps]) => dimmer(out, code, steps),
                    (0xF0, &[lo, hi]) => out.attr(
                        "device_type_id",
                        AttrValue::Int(i64::from(u16::from_le_bytes([lo, hi]))),
                    ),
                    // Firmware versions are sent least significant part first.
                    _ => {
                        let parts: Vec<String> = b.iter().rev().map(u8::to_string).collect();
                        out.attr("firmware_version", AttrValue::Owned(parts.join(".")));
                    }
                }
            }
            Kind::Number {
                size,
                signed,
                factor,
                digits,
            } => {
                let bytes = c.take(usize::from(size))?;
                if let Some((quantity, unit)) = obj.quantity {
                    let raw = le_int(bytes, signed);
                    let v = round_to(raw as f64 * factor, digits);
                    out.push(quantity, Value::Number(v), unit);
                }
            }
        }
    }
    Ok(packet_id)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn le_int(bytes: &[u8], signed: bool) -> i64 {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    let bits = 8 * bytes.len() as u32;
    if signed && (1..64).contains(&bits) && v & (1 << (bits - 1)) != 0 {
        (v as i64) - (1i64 << bits)
    } else {
        v as i64
    }
}

fn button(code: u8) -> &'static str {
    match code {
        0x00 => "none",
        0x01 => "press",
        0x02 => "double_press",
        0x03 => "triple_press",
        0x04 => "long_press",
        0x05 => "long_double_press",
        0x06 => "long_triple_press",
        0x80 => "hold_press",
        _ => "unknown",
    }
}

fn dimmer(out: &mut Decoded, code: u8, steps: u8) {
    match code {
        0x00 => out.event("dimmer", "none"),
        0x01 => out.events.push(super::Event {
            kind: "dimmer",
            detail: format!("rotate_left {steps}").into(),
        }),
        0x02 => out.events.push(super::Event {
            kind: "dimmer",
            detail: format!("rotate_right {steps}").into(),
        }),
        _ => out.event("dimmer", "unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Event;

    fn check(hex: &[u8], expected: &[(Quantity, f64, Unit)]) {
        let f = decode(hex).unwrap_or_else(|e| panic!("{hex:02x?}: {e}"));
        let got: Vec<_> = f
            .decoded
            .values
            .iter()
            .map(|v| (v.quantity, v.value.number().unwrap(), v.unit))
            .collect();
        assert_eq!(got, expected, "{hex:02x?}");
    }

    #[test]
    fn examples_from_the_bthome_format_page() {
        // bthome.io/format examples: temperature 0x02 CA09 = 25.06 °C; humidity 0x03 BF13 = 50.55 %.
        check(
            &[0x40, 0x02, 0xCA, 0x09],
            &[(Q::Temperature, 25.06, U::Celsius)],
        );
        check(
            &[0x40, 0x03, 0xBF, 0x13],
            &[(Q::Humidity, 50.55, U::Percent)],
        );
        // Pressure 0x04 138A01 = 1008.83 hPa; battery 0x01 61 = 97 %.
        check(
            &[0x40, 0x01, 0x61, 0x04, 0x13, 0x8A, 0x01],
            &[
                (Q::BatteryLevel, 97.0, U::Percent),
                (Q::Pressure, 1008.83, U::Hectopascal),
            ],
        );
        // Negative temperature, s16: 0xF830 = -20.00 °C.
        check(
            &[0x40, 0x02, 0x30, 0xF8],
            &[(Q::Temperature, -20.0, U::Celsius)],
        );
        // Two objects of the same kind.
        check(
            &[0x40, 0x02, 0xC4, 0x09, 0x02, 0x30, 0xF8],
            &[
                (Q::Temperature, 25.0, U::Celsius),
                (Q::Temperature, -20.0, U::Celsius),
            ],
        );
    }

    #[test]
    fn version_encryption_and_unknown_ids_are_errors() {
        assert_eq!(
            decode(&[0x20, 0x02, 0, 0]).unwrap_err(),
            DecodeError::UnsupportedVersion {
                format: FORMAT,
                version: 1
            }
        );
        assert_eq!(
            decode(&[0x41, 0x02, 0, 0]).unwrap_err(),
            DecodeError::Encrypted(FORMAT)
        );
        assert_eq!(
            decode(&[0x40, 0xEE, 0]).unwrap_err(),
            DecodeError::UnknownObject(0xEE)
        );
        assert!(matches!(
            decode(&[0x40, 0x02, 0x01]).unwrap_err(),
            DecodeError::Truncated { .. }
        ));
        assert!(matches!(
            decode(&[]).unwrap_err(),
            DecodeError::Truncated { .. }
        ));
    }

    #[test]
    fn button_event_and_packet_id() {
        let f = decode(&[0x44, 0x00, 0x07, 0x3A, 0x02]).unwrap();
        assert_eq!(f.packet_id, Some(7));
        assert_eq!(
            f.decoded.events,
            vec![Event {
                kind: "button",
                detail: "double_press".into()
            }]
        );
    }

    #[test]
    fn table_is_sorted_and_unique() {
        for w in OBJECTS.windows(2) {
            assert!(w[0].id < w[1].id, "{:#04x} then {:#04x}", w[0].id, w[1].id);
        }
    }
}
