//! Xiaomi-family room thermometers: the ATC1441 and pvvx custom firmwares (service
//! data 0x181A) and Xiaomi's own MiBeacon (service data 0xFE95), with the AES-CCM
//! encryption both can use.
//!
//! Formats: github.com/atc1441/ATC_MiThermometer and github.com/pvvx/ATC_MiThermometer
//! (advertising formats), the MiBeacon object list in `../shared/notes/protocols.md`.
//! Which 0x181A format a frame is follows from its length, as the firmwares define
//! no version byte: 13 ATC1441, 15 pvvx custom, 11 pvvx encrypted, 8 ATC1441 encrypted.

use super::crypto::{self, MAX_PLAIN};
use super::gatt::round_to;
use super::{AttrValue, BindKey, Cursor, DecodeError, Decoded, DeviceState};
use crate::model::{DeviceAddress, Quantity, Unit};

pub const ATC_SERVICE_UUID: u16 = 0x181A;
pub const MIBEACON_SERVICE_UUID: u16 = 0xFE95;

const ATC: &str = "atc1441";
const PVVX: &str = "pvvx";
const PVVX_ENC: &str = "pvvx_encrypted";
const ATC_ENC: &str = "atc1441_encrypted";
const MIBEACON: &str = "mibeacon";

/// The AD type of service data (16-bit UUID); part of the pvvx nonce.
const AD_SERVICE_DATA: u8 = 0x16;

fn mac_attr(out: &mut Decoded, mac: [u8; 6]) {
    out.attr("mac", AttrValue::Address(DeviceAddress(mac)));
}

/// Drops the same plain frame seen again (same frame counter).
fn dedup(state: &mut DeviceState, counter: u8) -> Result<(), DecodeError> {
    if state.last_frame_counter == Some(counter) {
        return Err(DecodeError::Duplicate(counter));
    }
    state.last_frame_counter = Some(counter);
    Ok(())
}

/// Decodes service data under 0x181A.
pub(crate) fn decode_atc(
    address: DeviceAddress,
    data: &[u8],
    state: &mut DeviceState,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    match data.len() {
        13 | 15 => {
            let format = if data.len() == 13 { ATC } else { PVVX };
            if state.key.is_some() {
                return Err(DecodeError::Downgrade(format));
            }
            let counter = if data.len() == 13 {
                atc1441(data, out)?
            } else {
                pvvx(data, out)?
            };
            dedup(state, counter)?;
            Ok(())
        }
        11 | 8 => atc_encrypted(address, data, state, out),
        n => Err(DecodeError::Invalid {
            format: ATC,
            field: if n < 8 {
                "length (too short for any 0x181A format)"
            } else {
                "length (not an ATC1441 or pvvx frame)"
            },
        }),
    }
}

/// ATC1441: MAC (big-endian), temperature s16 BE ×0.1 °C, humidity u8 %, battery u8
/// %, battery u16 BE mV, frame counter.
/// Returns the frame counter.
fn atc1441(data: &[u8], out: &mut Decoded) -> Result<u8, DecodeError> {
    let mut c = Cursor::new(ATC, data);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(c.take(6)?);
    let t = c.i16_be()?;
    let h = c.u8()?;
    let b = c.u8()?;
    let mv = c.u16_be()?;
    let counter = c.u8()?;
    out.start(ATC);
    out.push_number(
        Quantity::Temperature,
        round_to(f64::from(t) * 0.1, 1),
        Unit::Celsius,
    );
    out.push_number(Quantity::Humidity, f64::from(h), Unit::Percent);
    out.push_number(Quantity::BatteryLevel, f64::from(b), Unit::Percent);
    out.push_number(Quantity::BatteryVoltage, f64::from(mv) / 1000.0, Unit::Volt);
    mac_attr(out, mac);
    out.attr("frame_counter", AttrValue::Int(i64::from(counter)));
    Ok(counter)
}

/// pvvx custom: MAC (little-endian), temperature s16 ×0.01 °C, humidity u16 ×0.01 %,
/// battery mV u16, battery %, counter, flags; all little-endian.
/// Returns the frame counter.
fn pvvx(data: &[u8], out: &mut Decoded) -> Result<u8, DecodeError> {
    let mut c = Cursor::new(PVVX, data);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(c.take(6)?);
    mac.reverse();
    let t = c.i16()?;
    let h = c.u16()?;
    let mv = c.u16()?;
    let b = c.u8()?;
    let counter = c.u8()?;
    let flags = c.u8()?;
    out.start(PVVX);
    out.push_number(
        Quantity::Temperature,
        round_to(f64::from(t) * 0.01, 2),
        Unit::Celsius,
    );
    out.push_number(
        Quantity::Humidity,
        round_to(f64::from(h) * 0.01, 2),
        Unit::Percent,
    );
    out.push_number(Quantity::BatteryVoltage, f64::from(mv) / 1000.0, Unit::Volt);
    out.push_number(Quantity::BatteryLevel, f64::from(b), Unit::Percent);
    mac_attr(out, mac);
    out.attr("frame_counter", AttrValue::Int(i64::from(counter)));
    out.attr("flags", AttrValue::Int(i64::from(flags)));
    Ok(counter)
}

/// Whether a one-byte counter `next` is ahead of `last` with wrapping: 1 to 127
/// steps on, modulo 256 (255 → 0 rises; 10 → 10 or 10 → 9 does not).
pub(crate) fn pvvx_counter_rises(last: u8, next: u8) -> bool {
    (1..=127).contains(&next.wrapping_sub(last))
}

/// The pvvx/ATC encrypted nonce: MAC (little-endian) then the AD structure header as
/// sent on air (length, AD type, UUID) and the counter.
fn atc_nonce(address: DeviceAddress, len: usize, counter: u8) -> [u8; 11] {
    let mut n = [0u8; 11];
    let mut mac = address.0;
    mac.reverse();
    n[..6].copy_from_slice(&mac);
    // AD length counts the type byte, the UUID and the service data.
    n[6] = (len + 3) as u8;
    n[7] = AD_SERVICE_DATA;
    n[8..10].copy_from_slice(&ATC_SERVICE_UUID.to_le_bytes());
    n[10] = counter;
    n
}

/// pvvx encrypted (11 bytes: counter, 6 encrypted, MIC 4) and ATC1441 encrypted (8
/// bytes: counter, 3 encrypted, MIC 4); associated data 0x11.
fn atc_encrypted(
    address: DeviceAddress,
    data: &[u8],
    state: &mut DeviceState,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    let format = if data.len() == 11 { PVVX_ENC } else { ATC_ENC };
    let key = state.key.ok_or(DecodeError::Encrypted(format))?;
    let invalid = DecodeError::Invalid {
        format,
        field: "length",
    };
    let (&counter, rest) = data.split_first().ok_or(invalid.clone())?;
    let (ciphertext, mic) = rest
        .split_at_checked(rest.len().saturating_sub(4))
        .ok_or(invalid.clone())?;
    let mut plain = [0u8; MAX_PLAIN];
    let n = crypto::decrypt(
        format,
        &key,
        &atc_nonce(address, data.len(), counter),
        &[0x11],
        ciphertext,
        mic,
        &mut plain,
    )?;
    // The counter must rise. It is one byte and wraps, so "rises" is serial
    // number arithmetic (RFC 1982): 1 to 127 steps ahead of the last accepted,
    // modulo 256. The same counter, or one up to 128 steps behind, is a replay.
    if let Some(last) = state.last_pvvx_counter
        && !pvvx_counter_rises(last, counter)
    {
        return Err(DecodeError::Replay {
            format,
            counter: u32::from(counter),
            last: u32::from(last),
        });
    }
    state.last_pvvx_counter = Some(counter);
    let p = plain.get(..n).unwrap_or_default();
    out.start(format);
    if format == PVVX_ENC {
        let &[t0, t1, h0, h1, battery, flags] = p else {
            return Err(invalid);
        };
        let t = i16::from_le_bytes([t0, t1]);
        let h = u16::from_le_bytes([h0, h1]);
        out.push_number(
            Quantity::Temperature,
            round_to(f64::from(t) * 0.01, 2),
            Unit::Celsius,
        );
        out.push_number(
            Quantity::Humidity,
            round_to(f64::from(h) * 0.01, 2),
            Unit::Percent,
        );
        out.push_number(
            Quantity::BatteryLevel,
            f64::from(battery.min(100)),
            Unit::Percent,
        );
        out.attr("flags", AttrValue::Int(i64::from(flags)));
    } else {
        let &[t, h, battery] = p else {
            return Err(invalid);
        };
        // ATC1441 encrypted packs each value in one byte: (t + 40) × 2, h × 2, battery.
        out.push_number(
            Quantity::Temperature,
            f64::from(t) / 2.0 - 40.0,
            Unit::Celsius,
        );
        out.push_number(Quantity::Humidity, f64::from(h) / 2.0, Unit::Percent);
        out.push_number(
            Quantity::BatteryLevel,
            f64::from((battery & 0x7F).min(100)),
            Unit::Percent,
        );
    }
    out.attr("frame_counter", AttrValue::Int(i64::from(counter)));
    Ok(())
}

/// Builds a pvvx or ATC1441 encrypted frame (11 or 8 bytes) from its plaintext (6 or
/// 3 bytes), as the firmware does: for tests, benchmarks and fuzz seeds.
pub fn encrypt_atc(
    address: DeviceAddress,
    key: &BindKey,
    plain: &[u8],
    counter: u8,
) -> Option<Vec<u8>> {
    let len = 1 + plain.len() + 4;
    let mut buf = plain.to_vec();
    let tag = crypto::encrypt(key, &atc_nonce(address, len, counter), &[0x11], &mut buf)?;
    let mut out = vec![counter];
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    Some(out)
}

/// MiBeacon frame control bits.
const FC_ENCRYPTED: u16 = 1 << 3;
const FC_MAC: u16 = 1 << 4;
const FC_CAPABILITY: u16 = 1 << 5;
const FC_OBJECT: u16 = 1 << 6;
/// Mesh frames carry a different layout that no supported sensor sends.
const FC_MESH: u16 = 1 << 7;

/// Decodes service data under 0xFE95.
pub(crate) fn decode_mibeacon(
    address: DeviceAddress,
    data: &[u8],
    state: &mut DeviceState,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    let mut c = Cursor::new(MIBEACON, data);
    let fc = c.u16()?;
    let version = (fc >> 12) as u8;
    if !(2..=5).contains(&version) {
        return Err(DecodeError::UnsupportedVersion {
            format: MIBEACON,
            version,
        });
    }
    if fc & FC_MESH != 0 {
        return Err(DecodeError::Unsupported("mibeacon mesh frame".to_owned()));
    }
    let pid_bytes: [u8; 2] = c.array()?;
    let product_id = u16::from_le_bytes(pid_bytes);
    let counter = c.u8()?;
    let mac = if fc & FC_MAC != 0 {
        let mut m = [0u8; 6];
        m.copy_from_slice(c.take(6)?);
        m.reverse();
        DeviceAddress(m)
    } else {
        address
    };
    if fc & FC_CAPABILITY != 0 {
        let capability = c.u8()?;
        // Bit 5 of the capability announces one more byte, the I/O capability.
        if capability & 0x20 != 0 {
            c.u8()?;
        }
    }
    out.start(MIBEACON);
    out.attr("product_id", AttrValue::Int(i64::from(product_id)));
    if fc & FC_MAC != 0 {
        mac_attr(out, mac.0);
    }
    if fc & FC_OBJECT == 0 {
        // A beacon with no measurement (pairing, presence): nothing to report.
        return Ok(());
    }
    let rest = data
        .get(data.len().saturating_sub(c.remaining())..)
        .unwrap_or_default();
    if rest.is_empty() {
        return Err(DecodeError::Truncated {
            format: MIBEACON,
            offset: data.len(),
            needed: 3,
            len: data.len(),
        });
    }
    if fc & FC_ENCRYPTED != 0 {
        if version < 4 {
            // v2/v3 use a different, legacy scheme that no supported sensor needs.
            return Err(DecodeError::UnsupportedVersion {
                format: "mibeacon_encrypted",
                version,
            });
        }
        let key = state.key.ok_or(DecodeError::Encrypted(MIBEACON))?;
        let truncated = DecodeError::Truncated {
            format: MIBEACON,
            offset: data.len(),
            needed: 7,
            len: data.len(),
        };
        // Ciphertext, then the extended counter (3) and the MIC (4).
        let (ciphertext, tail) = rest
            .split_at_checked(rest.len().saturating_sub(7))
            .ok_or(truncated.clone())?;
        let &[e0, e1, e2, m0, m1, m2, m3] = tail else {
            return Err(truncated);
        };
        let ext = [e0, e1, e2];
        let nonce = mibeacon_nonce(mac, &pid_bytes, counter, &ext);
        let mut plain = [0u8; MAX_PLAIN];
        let n = crypto::decrypt(
            MIBEACON,
            &key,
            &nonce,
            &[0x11],
            ciphertext,
            &[m0, m1, m2, m3],
            &mut plain,
        )?;
        let full = u32::from_le_bytes([counter, e0, e1, e2]);
        if let Some(last) = state.last_mibeacon_counter
            && full <= last
        {
            return Err(DecodeError::Replay {
                format: MIBEACON,
                counter: full,
                last,
            });
        }
        state.last_mibeacon_counter = Some(full);
        mibeacon_objects(plain.get(..n).unwrap_or_default(), out)?;
    } else {
        if state.key.is_some() {
            return Err(DecodeError::Downgrade(MIBEACON));
        }
        dedup(state, counter)?;
        mibeacon_objects(rest, out)?;
    }
    Ok(())
}

/// The MAC a MiBeacon frame carries in its MAC field (frame control bit 4), if any.
pub fn mibeacon_embedded_mac(data: &[u8]) -> Option<DeviceAddress> {
    let mut c = Cursor::new(MIBEACON, data);
    let fc = c.u16().ok()?;
    if fc & FC_MAC == 0 || fc & FC_MESH != 0 {
        return None;
    }
    c.take(3).ok()?;
    let mut m = [0u8; 6];
    m.copy_from_slice(c.take(6).ok()?);
    m.reverse();
    Some(DeviceAddress(m))
}

fn mibeacon_nonce(mac: DeviceAddress, pid: &[u8; 2], counter: u8, ext: &[u8; 3]) -> [u8; 12] {
    let mut n = [0u8; 12];
    let mut m = mac.0;
    m.reverse();
    n[..6].copy_from_slice(&m);
    n[6..8].copy_from_slice(pid);
    n[8] = counter;
    n[9..].copy_from_slice(ext);
    n
}

/// Builds an encrypted MiBeacon v5 frame (no MAC field, objects present) from plain
/// objects, as a LYWSD03MMC does: for tests, benchmarks and fuzz seeds.
pub fn encrypt_mibeacon(
    address: DeviceAddress,
    key: &BindKey,
    product_id: u16,
    counter: u32,
    objects: &[u8],
) -> Option<Vec<u8>> {
    // Auth mode 2 (bits 10-11) is what LYWSD03MMC sensors send with v5 encryption.
    let fc: u16 = (5 << 12) | (2 << 10) | FC_OBJECT | FC_ENCRYPTED;
    let [c0, c1, c2, c3] = counter.to_le_bytes();
    let ext = [c1, c2, c3];
    let pid = product_id.to_le_bytes();
    let mut buf = objects.to_vec();
    let tag = crypto::encrypt(
        key,
        &mibeacon_nonce(address, &pid, c0, &ext),
        &[0x11],
        &mut buf,
    )?;
    let mut out = Vec::with_capacity(buf.len() + 12);
    out.extend_from_slice(&fc.to_le_bytes());
    out.extend_from_slice(&pid);
    out.push(c0);
    out.extend_from_slice(&buf);
    out.extend_from_slice(&ext);
    out.extend_from_slice(&tag);
    Some(out)
}

fn mibeacon_objects(bytes: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
    let mut c = Cursor::new(MIBEACON, bytes);
    let invalid = || DecodeError::Invalid {
        format: MIBEACON,
        field: "object length",
    };
    while c.remaining() > 0 {
        let kind = c.u16()?;
        let len = c.u8()?;
        let v = c.take(usize::from(len))?;
        let temperature = |out: &mut Decoded, t: [u8; 2]| {
            out.push_number(
                Quantity::Temperature,
                round_to(f64::from(i16::from_le_bytes(t)) * 0.1, 1),
                Unit::Celsius,
            );
        };
        let humidity = |out: &mut Decoded, h: [u8; 2]| {
            out.push_number(
                Quantity::Humidity,
                round_to(f64::from(u16::from_le_bytes(h)) * 0.1, 1),
                Unit::Percent,
            );
        };
        match (kind, v) {
            (0x1004, &[t0, t1]) => temperature(out, [t0, t1]),
            (0x1006, &[h0, h1]) => humidity(out, [h0, h1]),
            (0x100A, &[b]) => {
                out.push_number(Quantity::BatteryLevel, f64::from(b), Unit::Percent);
            }
            (0x100D, &[t0, t1, h0, h1]) => {
                temperature(out, [t0, t1]);
                humidity(out, [h0, h1]);
            }
            (0x1004 | 0x1006 | 0x100A | 0x100D, _) => return Err(invalid()),
            // Objects carehub has no use for (buttons, plant sensors...) are stepped over.
            _ => {}
        }
    }
    Ok(())
}
