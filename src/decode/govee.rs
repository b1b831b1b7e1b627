//! Govee thermo-hygrometers, manufacturer data. Models reuse company ids, so the
//! local name (`GVH5075_1234`, `Govee_H5074_1234`) picks the layout, with the frame
//! length as the fallback when the name is missing.
//!
//! Layouts (after the company id; reference vectors in TheengsDecoder's
//! `tests/BLE/test_ble.cpp`):
//! - H5072/H5075 (0xEC88, 6 bytes): `00`, a 3-byte big-endian V packing temperature
//!   and humidity (see [`packed`]), battery %, `00`.
//! - H5101/H5102/H5104/H5174/H5177 (0x0001, 6 bytes): `01 01`, packed V, battery %.
//! - H5074 (0xEC88, 7 bytes): `00`, temperature s16 LE ×0.01 °C, humidity u16 LE
//!   ×0.01 %, battery %, a type byte. H5051/H5052 are decoded with this layout too,
//!   as protocols.md describes them; no published vector was found to confirm it.
//! - H5179 (0x8801, 9 bytes): `EC 00 01 01`, temperature s16 LE ×0.01, humidity
//!   u16 LE ×0.01, battery %.

use super::{Cursor, DecodeError, Decoded};
use crate::model::{Quantity, Unit};

#[derive(Clone, Copy)]
enum Layout {
    /// Packed temperature and humidity at this offset, battery after it.
    Packed {
        format: &'static str,
        offset: usize,
        len: usize,
    },
    /// Little-endian s16 temperature and u16 humidity at this offset, battery after.
    Split {
        format: &'static str,
        offset: usize,
        len: usize,
    },
}

const H5075: Layout = Layout::Packed {
    format: "govee_h5075",
    offset: 1,
    len: 6,
};
const H5102: Layout = Layout::Packed {
    format: "govee_h5102",
    offset: 2,
    len: 6,
};
const H5074: Layout = Layout::Split {
    format: "govee_h5074",
    offset: 1,
    len: 7,
};
const H5051: Layout = Layout::Split {
    format: "govee_h5051",
    offset: 1,
    len: 7,
};
const H5179: Layout = Layout::Split {
    format: "govee_h5179",
    offset: 4,
    len: 9,
};

fn layout(name: &str, company: u16, len: usize) -> Option<Layout> {
    let model = name
        .strip_prefix("GVH")
        .or_else(|| name.strip_prefix("Govee_H"))
        .or_else(|| name.strip_prefix("GV"))
        .map(|m| m.get(..4).unwrap_or(m));
    match (model, company) {
        (Some("5072" | "5075"), 0xEC88) => Some(H5075),
        (Some("5100" | "5101" | "5102" | "5104" | "5174" | "5177"), 0x0001) => Some(H5102),
        (Some("5074"), 0xEC88) => Some(H5074),
        (Some("5051" | "5052"), 0xEC88) => Some(H5051),
        (Some("5179"), 0x8801) => Some(H5179),
        (Some(_), _) => None,
        (None, 0xEC88) if len == 6 => Some(H5075),
        (None, 0xEC88) if len == 7 => Some(H5074),
        (None, 0x0001) if len == 6 => Some(H5102),
        (None, 0x8801) if len == 9 => Some(H5179),
        (None, _) => None,
    }
}

/// Decodes a Govee frame; `None` when the advertisement is not a Govee sensor
/// carehub knows, so that dispatch can try other formats.
pub fn decode(name: &str, company: u16, data: &[u8]) -> Option<Result<Decoded, DecodeError>> {
    let mut out = Decoded::default();
    Some(decode_into(name, company, data, &mut out)?.map(|()| out))
}

/// [`decode`] into a result the caller reuses (see [`super::Decoder::decode_into`]).
pub fn decode_into(
    name: &str,
    company: u16,
    data: &[u8],
    out: &mut Decoded,
) -> Option<Result<(), DecodeError>> {
    let l = layout(name, company, data.len())?;
    let (format, len) = match l {
        Layout::Packed { format, len, .. } | Layout::Split { format, len, .. } => (format, len),
    };
    // Every model sends a fixed length (longer when an iBeacon is appended); a
    // shorter frame is cut, even where the fields read would fit.
    if data.len() < len {
        return Some(Err(DecodeError::Truncated {
            format,
            offset: data.len(),
            needed: len - data.len(),
            len: data.len(),
        }));
    }
    Some(match l {
        Layout::Packed { format, offset, .. } => packed_frame(format, offset, data, out),
        Layout::Split { format, offset, .. } => split_frame(format, offset, data, out),
    })
}

/// H5075 packing: V = |t| × 10000 + h × 10 (t in 0.1 °C steps, h in 0.1 %), with
/// bit 23 set for a negative temperature.
pub fn packed(v: u32) -> (f64, f64) {
    let negative = v & 0x80_0000 != 0;
    let v = v & 0x7F_FFFF;
    let t = f64::from(v / 1000) / 10.0;
    let h = f64::from(v % 1000) / 10.0;
    (if negative { -t } else { t }, h)
}

fn packed_frame(
    format: &'static str,
    offset: usize,
    data: &[u8],
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    let mut c = Cursor::new(format, data);
    c.take(offset)?;
    let [b0, b1, b2] = c.array()?;
    let v = u32::from_be_bytes([0, b0, b1, b2]);
    let battery = c.u8()?;
    let (t, h) = packed(v);
    out.start(format);
    out.push_number(Quantity::Temperature, t, Unit::Celsius);
    out.push_number(Quantity::Humidity, h, Unit::Percent);
    battery_value(format, out, battery)?;
    Ok(())
}

fn split_frame(
    format: &'static str,
    offset: usize,
    data: &[u8],
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    let mut c = Cursor::new(format, data);
    c.take(offset)?;
    let t = c.i16()?;
    let h = c.u16()?;
    let battery = c.u8()?;
    out.start(format);
    out.push_number(Quantity::Temperature, f64::from(t) / 100.0, Unit::Celsius);
    out.push_number(Quantity::Humidity, f64::from(h) / 100.0, Unit::Percent);
    battery_value(format, out, battery)?;
    Ok(())
}

fn battery_value(format: &'static str, out: &mut Decoded, battery: u8) -> Result<(), DecodeError> {
    if battery > 100 {
        return Err(DecodeError::Invalid {
            format,
            field: "battery level over 100 %",
        });
    }
    out.push_number(Quantity::BatteryLevel, f64::from(battery), Unit::Percent);
    Ok(())
}
