//! Bluetooth SIG health characteristics (GATT Specification Supplement): heart rate,
//! health thermometer, blood pressure, pulse oximeter, weight scale, battery.
//!
//! Each decoder reads the flags, then exactly the fields the flags promise; a frame
//! that ends early is an error, never a guess.

use super::ieee11073::{float, sfloat};
use super::{Cursor, DecodeError, Decoded, DecodedValue, DeviceDateTime, Event};
use crate::model::{Quantity, SpecialValue, Unit, Value};

pub const HEART_RATE_MEASUREMENT: u16 = 0x2A37;
pub const TEMPERATURE_MEASUREMENT: u16 = 0x2A1C;
pub const INTERMEDIATE_TEMPERATURE: u16 = 0x2A1E;
pub const BLOOD_PRESSURE_MEASUREMENT: u16 = 0x2A35;
pub const INTERMEDIATE_CUFF_PRESSURE: u16 = 0x2A36;
pub const PLX_SPOT_CHECK: u16 = 0x2A5E;
pub const PLX_CONTINUOUS: u16 = 0x2A5F;
pub const WEIGHT_MEASUREMENT: u16 = 0x2A9D;
pub const BATTERY_LEVEL: u16 = 0x2A19;

/// Decodes the value of the characteristic with the given 16-bit UUID.
pub fn decode(characteristic: u16, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    match characteristic {
        HEART_RATE_MEASUREMENT => heart_rate(bytes),
        TEMPERATURE_MEASUREMENT => temperature("gatt_temperature_measurement", bytes),
        INTERMEDIATE_TEMPERATURE => temperature("gatt_intermediate_temperature", bytes),
        BLOOD_PRESSURE_MEASUREMENT => blood_pressure("gatt_blood_pressure_measurement", bytes),
        INTERMEDIATE_CUFF_PRESSURE => blood_pressure("gatt_intermediate_cuff_pressure", bytes),
        PLX_SPOT_CHECK => plx_spot_check(bytes),
        PLX_CONTINUOUS => plx_continuous(bytes),
        WEIGHT_MEASUREMENT => weight(bytes),
        BATTERY_LEVEL => battery(bytes),
        other => Err(DecodeError::Unsupported(format!(
            "characteristic {other:04x}"
        ))),
    }
}

fn value(
    quantity: Quantity,
    value: Value,
    unit: Unit,
    device_time: Option<DeviceDateTime>,
) -> DecodedValue {
    DecodedValue {
        quantity,
        value,
        unit,
        device_time,
    }
}

fn heart_rate(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    const F: &str = "gatt_heart_rate_measurement";
    let mut c = Cursor::new(F, bytes);
    let flags = c.u8()?;
    let bpm = if flags & 0x01 != 0 {
        c.u16()?
    } else {
        u16::from(c.u8()?)
    };
    let mut out = Decoded {
        format: F,
        ..Decoded::default()
    };
    out.values.push(value(
        Quantity::HeartRate,
        Value::Number(f64::from(bpm)),
        Unit::PerMinute,
        None,
    ));
    if (flags >> 1) & 0x03 == 2 {
        out.events.push(Event {
            kind: "sensor_contact",
            detail: "not detected".into(),
        });
    }
    if flags & 0x08 != 0 {
        let kj = c.u16()?;
        out.values.push(value(
            Quantity::EnergyExpended,
            Value::Number(f64::from(kj)),
            Unit::Kilojoule,
            None,
        ));
    }
    if flags & 0x10 != 0 {
        // RR intervals fill the rest of the frame, each in units of 1/1024 s.
        while c.remaining() >= 2 {
            let rr = c.u16()?;
            let ms = f64::from(rr) * 1000.0 / 1024.0;
            out.values.push(value(
                Quantity::RrInterval,
                Value::Number(ms),
                Unit::Millisecond,
                None,
            ));
        }
        if c.remaining() != 0 {
            return Err(DecodeError::Invalid {
                format: F,
                field: "rr interval (odd length)",
            });
        }
    }
    Ok(out)
}

fn temperature(format: &'static str, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut c = Cursor::new(format, bytes);
    let flags = c.u8()?;
    let reading = float(c.u32()?);
    let unit = if flags & 0x01 != 0 {
        Unit::Fahrenheit
    } else {
        Unit::Celsius
    };
    let time = if flags & 0x02 != 0 {
        Some(c.date_time()?)
    } else {
        None
    };
    if flags & 0x04 != 0 {
        let site = c.u8()?;
        if !(1..=9).contains(&site) {
            return Err(DecodeError::Invalid {
                format,
                field: "temperature type",
            });
        }
    }
    Ok(Decoded {
        format,
        values: vec![value(Quantity::BodyTemperature, reading, unit, time)],
        events: vec![],
    })
}

fn blood_pressure(format: &'static str, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut c = Cursor::new(format, bytes);
    let flags = c.u8()?;
    let unit = if flags & 0x01 != 0 {
        Unit::Kilopascal
    } else {
        Unit::MillimetreOfMercury
    };
    let systolic = sfloat(c.u16()?);
    let diastolic = sfloat(c.u16()?);
    let mean = sfloat(c.u16()?);
    let time = if flags & 0x02 != 0 {
        Some(c.date_time()?)
    } else {
        None
    };
    let pulse = if flags & 0x04 != 0 {
        Some(sfloat(c.u16()?))
    } else {
        None
    };
    if flags & 0x08 != 0 {
        c.u8()?; // user id
    }
    let status = if flags & 0x10 != 0 {
        Some(c.u16()?)
    } else {
        None
    };

    let mut out = Decoded {
        format,
        ..Decoded::default()
    };
    if format == "gatt_intermediate_cuff_pressure" {
        // The first field is the current cuff pressure; the others are NaN.
        out.values
            .push(value(Quantity::CuffPressure, systolic, unit, time));
    } else {
        out.values
            .push(value(Quantity::SystolicPressure, systolic, unit, time));
        out.values
            .push(value(Quantity::DiastolicPressure, diastolic, unit, time));
        out.values
            .push(value(Quantity::MeanArterialPressure, mean, unit, time));
    }
    if let Some(p) = pulse {
        out.values
            .push(value(Quantity::PulseRate, p, Unit::PerMinute, time));
    }
    if let Some(s) = status {
        for (bit, what) in [
            (0, "body movement"),
            (1, "cuff too loose"),
            (2, "irregular pulse"),
            (5, "improper position"),
        ] {
            if s & (1 << bit) != 0 {
                out.events.push(Event {
                    kind: "measurement_status",
                    detail: what.into(),
                });
            }
        }
    }
    Ok(out)
}

fn plx_spot_check(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    const F: &str = "gatt_plx_spot_check";
    let mut c = Cursor::new(F, bytes);
    let flags = c.u8()?;
    let spo2 = sfloat(c.u16()?);
    let pr = sfloat(c.u16()?);
    let time = if flags & 0x01 != 0 {
        Some(c.date_time()?)
    } else {
        None
    };
    if flags & 0x02 != 0 {
        c.u16()?; // measurement status
    }
    if flags & 0x04 != 0 {
        c.u24()?; // device and sensor status
    }
    let mut out = Decoded {
        format: F,
        ..Decoded::default()
    };
    out.values
        .push(value(Quantity::Spo2, spo2, Unit::Percent, time));
    out.values
        .push(value(Quantity::PulseRate, pr, Unit::PerMinute, time));
    if flags & 0x08 != 0 {
        out.values.push(value(
            Quantity::PulseAmplitudeIndex,
            sfloat(c.u16()?),
            Unit::Percent,
            time,
        ));
    }
    Ok(out)
}

fn plx_continuous(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    const F: &str = "gatt_plx_continuous";
    let mut c = Cursor::new(F, bytes);
    let flags = c.u8()?;
    let spo2 = sfloat(c.u16()?);
    let pr = sfloat(c.u16()?);
    if flags & 0x01 != 0 {
        c.take(4)?; // SpO2PR-Fast
    }
    if flags & 0x02 != 0 {
        c.take(4)?; // SpO2PR-Slow
    }
    let mut invalid = false;
    if flags & 0x04 != 0 {
        let status = c.u16()?;
        // Bits 13 (data unavailable) and 15 (invalid) mean the numbers are not a measurement.
        invalid = status & ((1 << 13) | (1 << 15)) != 0;
    }
    if flags & 0x08 != 0 {
        c.u24()?;
    }
    let mut out = Decoded {
        format: F,
        ..Decoded::default()
    };
    let (spo2, pr) = if invalid {
        (
            Value::Special(SpecialValue::Unavailable),
            Value::Special(SpecialValue::Unavailable),
        )
    } else {
        (spo2, pr)
    };
    out.values
        .push(value(Quantity::Spo2, spo2, Unit::Percent, None));
    out.values
        .push(value(Quantity::PulseRate, pr, Unit::PerMinute, None));
    if flags & 0x10 != 0 {
        out.values.push(value(
            Quantity::PulseAmplitudeIndex,
            sfloat(c.u16()?),
            Unit::Percent,
            None,
        ));
    }
    Ok(out)
}

fn weight(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    const F: &str = "gatt_weight_measurement";
    let mut c = Cursor::new(F, bytes);
    let flags = c.u8()?;
    let imperial = flags & 0x01 != 0;
    let raw = c.u16()?;
    let time = if flags & 0x02 != 0 {
        Some(c.date_time()?)
    } else {
        None
    };
    if flags & 0x04 != 0 {
        c.u8()?; // user id
    }
    let (unit, resolution) = if imperial {
        (Unit::Pound, 0.01)
    } else {
        (Unit::Kilogram, 0.005)
    };
    let w = if raw == 0xFFFF {
        Value::Special(SpecialValue::Unsuccessful)
    } else {
        Value::Number(round_to(f64::from(raw) * resolution, 3))
    };
    let mut out = Decoded {
        format: F,
        ..Decoded::default()
    };
    out.values.push(value(Quantity::BodyWeight, w, unit, time));
    if flags & 0x08 != 0 {
        let bmi = c.u16()?;
        let height = c.u16()?;
        out.values.push(value(
            Quantity::BodyMassIndex,
            Value::Number(round_to(f64::from(bmi) * 0.1, 1)),
            Unit::KilogramPerSquareMetre,
            time,
        ));
        let (h_unit, h_res, digits) = if imperial {
            (Unit::Inch, 0.1, 1)
        } else {
            (Unit::Metre, 0.001, 3)
        };
        out.values.push(value(
            Quantity::BodyHeight,
            Value::Number(round_to(f64::from(height) * h_res, digits)),
            h_unit,
            time,
        ));
    }
    Ok(out)
}

fn battery(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    const F: &str = "gatt_battery_level";
    let mut c = Cursor::new(F, bytes);
    let pct = c.u8()?;
    if pct > 100 {
        return Err(DecodeError::Invalid {
            format: F,
            field: "battery level over 100 %",
        });
    }
    Ok(Decoded {
        format: F,
        values: vec![value(
            Quantity::BatteryLevel,
            Value::Number(f64::from(pct)),
            Unit::Percent,
            None,
        )],
        events: vec![],
    })
}

/// Removes the binary noise of a fixed-point scale factor (0.005 × 14000 = 70.0).
pub(crate) fn round_to(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(characteristic: u16, bytes: &[u8], expected: &[(Quantity, Value, Unit)]) {
        let d = decode(characteristic, bytes)
            .unwrap_or_else(|e| panic!("{characteristic:04x} {bytes:02x?}: {e}"));
        let got: Vec<_> = d
            .values
            .iter()
            .map(|v| (v.quantity, v.value, v.unit))
            .collect();
        assert_eq!(got, expected, "{characteristic:04x} {bytes:02x?}");
    }

    use Quantity as Q;
    use Unit as U;
    use Value::Number as N;

    #[test]
    fn heart_rate_variants() {
        check(
            0x2A37,
            &[0x00, 72],
            &[(Q::HeartRate, N(72.0), U::PerMinute)],
        );
        check(
            0x2A37,
            &[0x01, 0x2C, 0x01],
            &[(Q::HeartRate, N(300.0), U::PerMinute)],
        );
        check(
            0x2A37,
            &[0x18, 60, 0x10, 0x00, 0x00, 0x04, 0x00, 0x02],
            &[
                (Q::HeartRate, N(60.0), U::PerMinute),
                (Q::EnergyExpended, N(16.0), U::Kilojoule),
                (Q::RrInterval, N(1000.0), U::Millisecond),
                (Q::RrInterval, N(500.0), U::Millisecond),
            ],
        );
    }

    #[test]
    fn blood_pressure_with_time_and_pulse() {
        // 120/80 mmHg, MAP 93, 2026-11-23 08:30:00, pulse 70.
        let bytes = [
            0x06, 120, 0, 80, 0, 93, 0, 0xEA, 0x07, 11, 23, 8, 30, 0, 70, 0,
        ];
        let d = decode(0x2A35, &bytes).unwrap();
        assert_eq!(d.values.len(), 4);
        assert_eq!(d.values[0].value, N(120.0));
        assert_eq!(d.values[1].value, N(80.0));
        assert_eq!(d.values[3].quantity, Q::PulseRate);
        assert_eq!(d.values[0].device_time.unwrap().year, 2026);
    }

    #[test]
    fn weight_unsuccessful_is_not_a_number() {
        check(
            0x2A9D,
            &[0x00, 0xFF, 0xFF],
            &[(
                Q::BodyWeight,
                Value::Special(SpecialValue::Unsuccessful),
                U::Kilogram,
            )],
        );
        check(
            0x2A9D,
            &[0x00, 0xB0, 0x36],
            &[(Q::BodyWeight, N(70.0), U::Kilogram)],
        );
    }

    #[test]
    fn truncation_at_every_length_is_an_error_not_a_panic() {
        let full: &[(u16, &[u8])] = &[
            (0x2A37, &[0x19, 0x2C, 0x01, 0x10, 0x00, 0x00, 0x04]),
            (
                0x2A35,
                &[
                    0x1E, 120, 0, 80, 0, 93, 0, 0xEA, 0x07, 11, 23, 8, 30, 0, 70, 0, 1, 0, 0,
                ],
            ),
            (
                0x2A1C,
                &[
                    0x06, 0x6D, 0x01, 0x00, 0xFF, 0xEA, 0x07, 11, 23, 8, 30, 0, 2,
                ],
            ),
            (
                0x2A5E,
                &[
                    0x0F, 97, 0, 70, 0, 0xEA, 0x07, 11, 23, 8, 30, 0, 0, 0, 0, 0, 0, 5, 0,
                ],
            ),
            (
                0x2A9D,
                &[
                    0x0E, 0xB0, 0x36, 0xEA, 0x07, 11, 23, 8, 30, 0, 1, 0xF0, 0, 0x8E, 0x06,
                ],
            ),
        ];
        for (c, bytes) in full {
            assert!(decode(*c, bytes).is_ok(), "{c:04x} full frame");
            for len in 0..bytes.len() {
                if *c == 0x2A37 && len == 5 {
                    continue; // Zero RR intervals is a valid frame.
                }
                assert!(
                    decode(*c, &bytes[..len]).is_err(),
                    "{c:04x} truncated to {len}"
                );
            }
        }
    }
}
