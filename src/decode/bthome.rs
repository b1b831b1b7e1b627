//! BTHome v2 (bthome.io): service data under UUID 0xFCD2, a device-information byte
//! then objects of `id` + fixed-size little-endian value in ascending id order.
//!
//! The object table below is the specification's, in full, so that parsing can step
//! over every object it knows the size of. Objects carehub has no quantity for are
//! stepped over; an id not in the table stops parsing with an error, as the
//! specification requires (the size of what follows is unknown).

use super::gatt::round_to;
use super::{Cursor, DecodeError, Decoded, DecodedValue, Event};
use crate::model::{Quantity, Unit, Value};

pub const SERVICE_UUID: u16 = 0xFCD2;
const FORMAT: &str = "bthome_v2";

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
    quantity: Option<(Quantity, Unit)>,
) -> Object {
    Object {
        id,
        kind: Kind::Number {
            size,
            signed,
            factor,
            digits,
        },
        quantity,
    }
}

const fn binary(id: u8, quantity: Option<(Quantity, Unit)>) -> Object {
    num(id, 1, false, 1.0, 0, quantity)
}

use Quantity as Q;
use Unit as U;

/// Every object id of BTHome v2, its size and scale; the quantity where carehub has one.
const OBJECTS: &[Object] = &[
    num(0x00, 1, false, 1.0, 0, None), // packet id, handled separately
    num(0x01, 1, false, 1.0, 0, Some((Q::BatteryLevel, U::Percent))),
    num(0x02, 2, true, 0.01, 2, Some((Q::Temperature, U::Celsius))),
    num(0x03, 2, false, 0.01, 2, Some((Q::Humidity, U::Percent))),
    num(0x04, 3, false, 0.01, 2, Some((Q::Pressure, U::Hectopascal))),
    num(0x05, 3, false, 0.01, 2, Some((Q::Illuminance, U::Lux))),
    num(0x06, 2, false, 0.01, 2, Some((Q::BodyWeight, U::Kilogram))),
    num(0x07, 2, false, 0.01, 2, Some((Q::BodyWeight, U::Pound))),
    num(0x08, 2, true, 0.01, 2, Some((Q::DewPoint, U::Celsius))),
    num(0x09, 1, false, 1.0, 0, Some((Q::Count, U::One))),
    num(0x0A, 3, false, 0.001, 3, None),
    num(0x0B, 3, false, 0.01, 2, None),
    num(0x0C, 2, false, 0.001, 3, Some((Q::BatteryVoltage, U::Volt))),
    num(
        0x0D,
        2,
        false,
        1.0,
        0,
        Some((Q::Pm2_5, U::MicrogramPerCubicMetre)),
    ),
    num(
        0x0E,
        2,
        false,
        1.0,
        0,
        Some((Q::Pm10, U::MicrogramPerCubicMetre)),
    ),
    binary(0x0F, None),
    binary(0x10, None),
    binary(0x11, Some((Q::Opening, U::One))),
    num(0x12, 2, false, 1.0, 0, Some((Q::Co2, U::PartsPerMillion))),
    num(
        0x13,
        2,
        false,
        1.0,
        0,
        Some((Q::Voc, U::MicrogramPerCubicMetre)),
    ),
    num(0x14, 2, false, 0.01, 2, None),
    binary(0x15, Some((Q::BatteryLow, U::One))),
    binary(0x16, None),
    binary(0x17, Some((Q::CarbonMonoxide, U::One))),
    binary(0x18, None),
    binary(0x19, None),
    binary(0x1A, Some((Q::Door, U::One))),
    binary(0x1B, None),
    binary(0x1C, None),
    binary(0x1D, None),
    binary(0x1E, None),
    binary(0x1F, None),
    binary(0x20, Some((Q::Moisture, U::One))),
    binary(0x21, Some((Q::Motion, U::One))),
    binary(0x22, None),
    binary(0x23, Some((Q::Occupancy, U::One))),
    binary(0x24, None),
    binary(0x25, Some((Q::Presence, U::One))),
    binary(0x26, None),
    binary(0x27, None),
    binary(0x28, None),
    binary(0x29, Some((Q::Smoke, U::One))),
    binary(0x2A, None),
    binary(0x2B, None),
    binary(0x2C, None),
    binary(0x2D, Some((Q::Window, U::One))),
    num(0x2E, 1, false, 1.0, 0, Some((Q::Humidity, U::Percent))),
    num(0x2F, 1, false, 1.0, 0, None),
    num(0x3A, 1, false, 1.0, 0, None), // button event
    num(0x3C, 2, false, 1.0, 0, None), // dimmer event
    num(0x3D, 2, false, 1.0, 0, Some((Q::Count, U::One))),
    num(0x3E, 4, false, 1.0, 0, Some((Q::Count, U::One))),
    num(0x3F, 2, true, 0.1, 1, None),
    num(0x40, 2, false, 1.0, 0, None),
    num(0x41, 2, false, 0.1, 1, None),
    num(0x42, 3, false, 0.001, 3, None),
    num(0x43, 2, false, 0.001, 3, None),
    num(0x44, 2, false, 0.01, 2, None),
    num(0x45, 2, true, 0.1, 1, Some((Q::Temperature, U::Celsius))),
    num(0x46, 1, false, 0.1, 1, None),
    num(0x47, 2, false, 0.1, 1, None),
    num(0x48, 2, false, 1.0, 0, None),
    num(0x49, 2, false, 0.001, 3, None),
    num(0x4A, 2, false, 0.1, 1, Some((Q::BatteryVoltage, U::Volt))),
    num(0x4B, 3, false, 0.001, 3, None),
    num(0x4C, 4, false, 0.001, 3, None),
    num(0x4D, 4, false, 0.001, 3, None),
    num(0x4E, 4, false, 0.001, 3, None),
    num(0x4F, 4, false, 0.001, 3, None),
    num(0x50, 4, false, 1.0, 0, None), // timestamp
    num(
        0x51,
        2,
        false,
        0.001,
        3,
        Some((Q::Acceleration, U::MetrePerSecondSquared)),
    ),
    num(0x52, 2, false, 0.001, 3, None),
    Object {
        id: 0x53,
        kind: Kind::LengthPrefixed,
        quantity: None,
    },
    Object {
        id: 0x54,
        kind: Kind::LengthPrefixed,
        quantity: None,
    },
    num(0x55, 4, false, 0.001, 3, None),
    num(0x56, 2, false, 1.0, 0, None),
    num(0x57, 1, true, 1.0, 0, Some((Q::Temperature, U::Celsius))),
    num(0x58, 1, true, 0.35, 2, Some((Q::Temperature, U::Celsius))),
    num(0x59, 1, true, 1.0, 0, Some((Q::Count, U::One))),
    num(0x5A, 2, true, 1.0, 0, Some((Q::Count, U::One))),
    num(0x5B, 4, true, 1.0, 0, Some((Q::Count, U::One))),
    num(0x5C, 4, true, 0.01, 2, None),
    num(0x5D, 2, true, 0.001, 3, None),
    num(0x5E, 2, false, 0.01, 2, None),
    num(0x5F, 2, false, 0.1, 1, None),
    num(0x60, 1, false, 1.0, 0, None),
    num(0x61, 2, false, 1.0, 0, None),
    num(0x62, 4, true, 0.000001, 6, None),
    num(0x63, 4, true, 0.000001, 6, None),
    num(0x64, 1, false, 1.0, 0, None),
    num(0xF0, 2, false, 1.0, 0, None),
    num(0xF1, 4, false, 1.0, 0, None),
    num(0xF2, 3, false, 1.0, 0, None),
];

fn object(id: u8) -> Option<&'static Object> {
    OBJECTS.iter().find(|o| o.id == id)
}

/// Decodes the service data under 0xFCD2 (the bytes after the UUID).
pub fn decode(data: &[u8]) -> Result<BthomeFrame, DecodeError> {
    let mut c = Cursor::new(FORMAT, data);
    let info = c.u8()?;
    let version = info >> 5;
    if version != 2 {
        return Err(DecodeError::UnsupportedVersion {
            format: FORMAT,
            version,
        });
    }
    if info & 0x01 != 0 {
        return Err(DecodeError::Encrypted(FORMAT));
    }
    let mut out = Decoded {
        format: FORMAT,
        ..Decoded::default()
    };
    let mut packet_id = None;
    while c.remaining() > 0 {
        let id = c.u8()?;
        let obj = object(id).ok_or(DecodeError::UnknownObject(id))?;
        match obj.kind {
            Kind::LengthPrefixed => {
                let len = c.u8()?;
                c.take(usize::from(len))?;
            }
            Kind::Number {
                size,
                signed,
                factor,
                digits,
            } => {
                let bytes = c.take(usize::from(size))?;
                let raw = le_int(bytes, signed);
                match id {
                    0x00 => packet_id = Some(bytes[0]),
                    0x3A => out.events.push(button(bytes[0])),
                    0x3C => out.events.push(dimmer(bytes[0], bytes[1])),
                    _ => {}
                }
                if let Some((quantity, unit)) = obj.quantity {
                    let v = round_to(raw as f64 * factor, digits);
                    out.values.push(DecodedValue {
                        quantity,
                        value: Value::Number(v),
                        unit,
                        device_time: None,
                    });
                }
            }
        }
    }
    Ok(BthomeFrame {
        decoded: out,
        packet_id,
    })
}

fn le_int(bytes: &[u8], signed: bool) -> i64 {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    let bits = 8 * bytes.len() as u32;
    if signed && bits < 64 && v & (1 << (bits - 1)) != 0 {
        (v as i64) - (1i64 << bits)
    } else {
        v as i64
    }
}

fn button(code: u8) -> Event {
    let detail = match code {
        0x00 => "none",
        0x01 => "press",
        0x02 => "double_press",
        0x03 => "triple_press",
        0x04 => "long_press",
        0x05 => "long_double_press",
        0x06 => "long_triple_press",
        0x80 => "hold_press",
        _ => "unknown",
    };
    Event {
        kind: "button",
        detail: detail.into(),
    }
}

fn dimmer(code: u8, steps: u8) -> Event {
    let detail = match code {
        0x00 => "none".to_owned(),
        0x01 => format!("rotate_left {steps}"),
        0x02 => format!("rotate_right {steps}"),
        _ => "unknown".to_owned(),
    };
    Event {
        kind: "dimmer",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
