//! Bluetooth SIG health characteristics (GATT Specification Supplement): heart rate,
//! health thermometer, blood pressure, pulse oximeter, weight scale, glucose, battery.
//!
//! Each decoder reads the flags, then exactly the fields the flags promise; a frame
//! that ends early is an error, never a guess. Status bits become events so that a
//! "cuff too loose" travels with the numbers it qualifies; a device's own time
//! stamp is kept on every value beside the gateway's received-at time.

use super::ieee11073::{float, sfloat};
use super::{AttrValue, Cursor, DecodeError, Decoded, DecodedValue, DeviceDateTime};
use crate::model::{Quantity, SpecialValue, Unit, Value};

pub const HEART_RATE_MEASUREMENT: u16 = 0x2A37;
pub const TEMPERATURE_MEASUREMENT: u16 = 0x2A1C;
pub const INTERMEDIATE_TEMPERATURE: u16 = 0x2A1E;
pub const BLOOD_PRESSURE_MEASUREMENT: u16 = 0x2A35;
pub const INTERMEDIATE_CUFF_PRESSURE: u16 = 0x2A36;
pub const PLX_SPOT_CHECK: u16 = 0x2A5E;
pub const PLX_CONTINUOUS: u16 = 0x2A5F;
pub const WEIGHT_MEASUREMENT: u16 = 0x2A9D;
pub const GLUCOSE_MEASUREMENT: u16 = 0x2A18;
pub const BATTERY_LEVEL: u16 = 0x2A19;

/// Every characteristic this module decodes.
pub const CHARACTERISTICS: &[u16] = &[
    HEART_RATE_MEASUREMENT,
    TEMPERATURE_MEASUREMENT,
    INTERMEDIATE_TEMPERATURE,
    BLOOD_PRESSURE_MEASUREMENT,
    INTERMEDIATE_CUFF_PRESSURE,
    PLX_SPOT_CHECK,
    PLX_CONTINUOUS,
    WEIGHT_MEASUREMENT,
    GLUCOSE_MEASUREMENT,
    BATTERY_LEVEL,
];

/// Decodes the value of the characteristic with the given 16-bit UUID.
pub fn decode(characteristic: u16, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    super::fresh(|out| decode_into(characteristic, bytes, out))
}

/// [`decode`] into a result the caller reuses (see [`super::Decoder::decode_into`]).
pub fn decode_into(
    characteristic: u16,
    bytes: &[u8],
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    match characteristic {
        HEART_RATE_MEASUREMENT => heart_rate(bytes, out),
        TEMPERATURE_MEASUREMENT => temperature("gatt_temperature_measurement", bytes, out),
        INTERMEDIATE_TEMPERATURE => temperature("gatt_intermediate_temperature", bytes, out),
        BLOOD_PRESSURE_MEASUREMENT => blood_pressure("gatt_blood_pressure_measurement", bytes, out),
        INTERMEDIATE_CUFF_PRESSURE => blood_pressure("gatt_intermediate_cuff_pressure", bytes, out),
        PLX_SPOT_CHECK => plx_spot_check(bytes, out),
        PLX_CONTINUOUS => plx_continuous(bytes, out),
        WEIGHT_MEASUREMENT => weight(bytes, out),
        GLUCOSE_MEASUREMENT => glucose(bytes, out),
        BATTERY_LEVEL => battery(bytes, out),
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
        qualifier: None,
    }
}

fn flag_events(out: &mut Decoded, kind: &'static str, bits: u32, names: &[(u32, &'static str)]) {
    for (bit, name) in names {
        if bits & (1 << bit) != 0 {
            out.event(kind, name);
        }
    }
}

fn heart_rate(bytes: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
    const F: &str = "gatt_heart_rate_measurement";
    let mut c = Cursor::new(F, bytes);
    let flags = c.u8()?;
    let bpm = if flags & 0x01 != 0 {
        c.u16()?
    } else {
        u16::from(c.u8()?)
    };
    out.start(F);
    out.push_number(Quantity::HeartRate, f64::from(bpm), Unit::PerMinute);
    // Bits 1-2: 0 or 1 contact not supported, 2 supported but not detected, 3 detected.
    match (flags >> 1) & 0x03 {
        2 => out.attr("sensor_contact", AttrValue::Text("not_detected")),
        3 => out.attr("sensor_contact", AttrValue::Text("detected")),
        _ => {}
    }
    if flags & 0x08 != 0 {
        let kj = c.u16()?;
        out.push_number(Quantity::EnergyExpended, f64::from(kj), Unit::Kilojoule);
    }
    if flags & 0x10 != 0 {
        // RR intervals fill the rest of the frame, each in units of 1/1024 s. A
        // frame whose flags announce them must carry at least one: a sensor that
        // sets the bit over nothing is sending a frame we do not understand.
        if c.remaining() < 2 {
            return Err(DecodeError::Invalid {
                format: F,
                field: "rr interval (announced by the flags, none present)",
            });
        }
        while c.remaining() >= 2 {
            let rr = c.u16()?;
            let ms = round_to(f64::from(rr) * 1000.0 / 1024.0, 3);
            out.push_number(Quantity::RrInterval, ms, Unit::Millisecond);
        }
        if c.remaining() != 0 {
            return Err(DecodeError::Invalid {
                format: F,
                field: "rr interval (odd length)",
            });
        }
    }
    Ok(())
}

// Bytes after the last field the flags announce are ignored, as the GATT
// specification asks of clients (later versions may append fields): the fields
// before them sit at the same offsets either way.

const TEMPERATURE_SITES: [&str; 9] = [
    "armpit",
    "body",
    "ear",
    "finger",
    "gastro_intestinal_tract",
    "mouth",
    "rectum",
    "toe",
    "tympanum",
];

fn temperature(format: &'static str, bytes: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
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
    out.start(format);
    if flags & 0x04 != 0 {
        let site = c.u8()?;
        let name = usize::from(site)
            .checked_sub(1)
            .and_then(|i| TEMPERATURE_SITES.get(i))
            .ok_or(DecodeError::Invalid {
                format,
                field: "temperature type",
            })?;
        out.attr("temperature_site", AttrValue::Text(name));
    }
    // Intermediate Temperature is the thermometer settling, not the result: its
    // own quantity, so that it is never stored, scored or sent as a body
    // temperature (as cuff pressure is not a blood pressure).
    let quantity = if format == "gatt_intermediate_temperature" {
        Quantity::IntermediateTemperature
    } else {
        Quantity::BodyTemperature
    };
    out.values.push(value(quantity, reading, unit, time));
    Ok(())
}

fn blood_pressure(
    format: &'static str,
    bytes: &[u8],
    out: &mut Decoded,
) -> Result<(), DecodeError> {
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
    let user = if flags & 0x08 != 0 {
        Some(c.u8()?)
    } else {
        None
    };
    let status = if flags & 0x10 != 0 {
        Some(c.u16()?)
    } else {
        None
    };

    out.start(format);
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
    user_attr(out, user);
    if let Some(s) = status {
        let s = u32::from(s);
        flag_events(
            out,
            "measurement_status",
            s,
            &[
                (0, "body_movement"),
                (1, "cuff_too_loose"),
                (2, "irregular_pulse"),
                (5, "improper_position"),
            ],
        );
        match (s >> 3) & 0x03 {
            1 => out.event("measurement_status", "pulse_rate_above_upper_limit"),
            2 => out.event("measurement_status", "pulse_rate_below_lower_limit"),
            _ => {}
        }
    }
    Ok(())
}

/// User index: 0xFF means "unknown user" (Bluetooth SIG User Index 0x2A9A).
fn user_attr(out: &mut Decoded, user: Option<u8>) {
    if let Some(u) = user
        && u != 0xFF
    {
        out.attr("user_id", AttrValue::Int(i64::from(u)));
    }
}

/// PLX Measurement Status bits (PLX service specification, table 3.3).
const PLX_MEASUREMENT_STATUS: &[(u32, &str)] = &[
    (5, "measurement_ongoing"),
    (6, "early_estimated_data"),
    (7, "validated_data"),
    (8, "fully_qualified_data"),
    (9, "data_from_measurement_storage"),
    (10, "data_for_demonstration"),
    (11, "data_for_testing"),
    (12, "calibration_ongoing"),
    (13, "measurement_unavailable"),
    (14, "questionable_measurement"),
    (15, "invalid_measurement"),
];

/// PLX Device and Sensor Status bits (PLX service specification, table 3.4).
const PLX_DEVICE_STATUS: &[(u32, &str)] = &[
    (0, "extended_display_update_ongoing"),
    (1, "equipment_malfunction"),
    (2, "signal_processing_irregularity"),
    (3, "inadequate_signal"),
    (4, "poor_signal"),
    (5, "low_perfusion"),
    (6, "erratic_signal"),
    (7, "nonpulsatile_signal"),
    (8, "questionable_pulse"),
    (9, "signal_analysis_ongoing"),
    (10, "sensor_interference"),
    (11, "sensor_unconnected"),
    (12, "unknown_sensor_connected"),
    (13, "sensor_displaced"),
    (14, "sensor_malfunction"),
    (15, "sensor_disconnected"),
];

/// Bits 13 (unavailable) and 15 (invalid) say the numbers are not a measurement, so
/// they are carried as "unavailable", never as numbers.
fn plx_invalid(status: Option<u16>) -> bool {
    status.is_some_and(|s| s & ((1 << 13) | (1 << 15)) != 0)
}

fn plx_status(out: &mut Decoded, measurement: Option<u16>, device: Option<u32>) {
    if let Some(m) = measurement {
        flag_events(
            out,
            "measurement_status",
            u32::from(m),
            PLX_MEASUREMENT_STATUS,
        );
    }
    if let Some(d) = device {
        flag_events(out, "device_status", d, PLX_DEVICE_STATUS);
    }
}

fn unless_invalid(v: Value, invalid: bool) -> Value {
    if invalid {
        Value::Special(SpecialValue::Unavailable)
    } else {
        v
    }
}

fn plx_spot_check(bytes: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
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
    let measurement = if flags & 0x02 != 0 {
        Some(c.u16()?)
    } else {
        None
    };
    let device = if flags & 0x04 != 0 {
        Some(c.u24()?)
    } else {
        None
    };
    let pai = if flags & 0x08 != 0 {
        Some(sfloat(c.u16()?))
    } else {
        None
    };
    let invalid = plx_invalid(measurement);
    out.start(F);
    out.values.push(value(
        Quantity::Spo2,
        unless_invalid(spo2, invalid),
        Unit::Percent,
        time,
    ));
    out.values.push(value(
        Quantity::PulseRate,
        unless_invalid(pr, invalid),
        Unit::PerMinute,
        time,
    ));
    if let Some(pai) = pai {
        out.values.push(value(
            Quantity::PulseAmplitudeIndex,
            unless_invalid(pai, invalid),
            Unit::Percent,
            time,
        ));
    }
    if flags & 0x10 != 0 {
        out.attr("device_clock_set", AttrValue::Int(0));
    }
    plx_status(out, measurement, device);
    Ok(())
}

fn plx_continuous(bytes: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
    const F: &str = "gatt_plx_continuous";
    let mut c = Cursor::new(F, bytes);
    let flags = c.u8()?;
    let spo2 = sfloat(c.u16()?);
    let pr = sfloat(c.u16()?);
    let fast = if flags & 0x01 != 0 {
        Some((sfloat(c.u16()?), sfloat(c.u16()?)))
    } else {
        None
    };
    let slow = if flags & 0x02 != 0 {
        Some((sfloat(c.u16()?), sfloat(c.u16()?)))
    } else {
        None
    };
    let measurement = if flags & 0x04 != 0 {
        Some(c.u16()?)
    } else {
        None
    };
    let device = if flags & 0x08 != 0 {
        Some(c.u24()?)
    } else {
        None
    };
    let pai = if flags & 0x10 != 0 {
        Some(sfloat(c.u16()?))
    } else {
        None
    };
    let invalid = plx_invalid(measurement);
    out.start(F);
    for (qualifier, pair) in [
        (None, Some((spo2, pr))),
        (Some("fast"), fast),
        (Some("slow"), slow),
    ] {
        let Some((s, p)) = pair else { continue };
        for (q, v, u) in [
            (Quantity::Spo2, s, Unit::Percent),
            (Quantity::PulseRate, p, Unit::PerMinute),
        ] {
            out.values.push(DecodedValue {
                qualifier,
                ..value(q, unless_invalid(v, invalid), u, None)
            });
        }
    }
    if let Some(pai) = pai {
        out.values.push(value(
            Quantity::PulseAmplitudeIndex,
            unless_invalid(pai, invalid),
            Unit::Percent,
            None,
        ));
    }
    plx_status(out, measurement, device);
    Ok(())
}

fn weight(bytes: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
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
    let user = if flags & 0x04 != 0 {
        Some(c.u8()?)
    } else {
        None
    };
    let bmi_height = if flags & 0x08 != 0 {
        Some((c.u16()?, c.u16()?))
    } else {
        None
    };
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
    out.start(F);
    out.values.push(value(Quantity::BodyWeight, w, unit, time));
    if let Some((bmi, height)) = bmi_height {
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
    user_attr(out, user);
    Ok(())
}

const GLUCOSE_TYPES: [&str; 10] = [
    "capillary_whole_blood",
    "capillary_plasma",
    "venous_whole_blood",
    "venous_plasma",
    "arterial_whole_blood",
    "arterial_plasma",
    "undetermined_whole_blood",
    "undetermined_plasma",
    "interstitial_fluid",
    "control_solution",
];

const GLUCOSE_LOCATIONS: [&str; 4] = [
    "finger",
    "alternate_site_test",
    "earlobe",
    "control_solution",
];

/// Sensor Status Annunciation bits (Glucose service specification, 3.106).
const GLUCOSE_STATUS: &[(u32, &str)] = &[
    (0, "device_battery_low"),
    (1, "sensor_malfunction"),
    (2, "sample_size_insufficient"),
    (3, "strip_insertion_error"),
    (4, "strip_type_incorrect"),
    (5, "result_above_device_range"),
    (6, "result_below_device_range"),
    (7, "sensor_temperature_too_high"),
    (8, "sensor_temperature_too_low"),
    (9, "sensor_read_interrupted"),
    (10, "general_device_fault"),
    (11, "time_fault"),
];

/// Glucose Measurement 0x2A18. The concentration is an SFLOAT in kg/L or mol/L;
/// carehub reports it in the clinical units mg/dL (×10⁵) and mmol/L (×10³).
fn glucose(bytes: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
    const F: &str = "gatt_glucose_measurement";
    let mut c = Cursor::new(F, bytes);
    let flags = c.u8()?;
    let sequence = c.u16()?;
    let base = c.date_time()?;
    let offset = if flags & 0x01 != 0 {
        Some(c.i16()?)
    } else {
        None
    };
    let concentration = if flags & 0x02 != 0 {
        let raw = c.u16()?;
        let type_location = c.u8()?;
        Some((raw, type_location))
    } else {
        None
    };
    let status = if flags & 0x08 != 0 {
        Some(c.u16()?)
    } else {
        None
    };
    let time = offset_time(base, offset);
    out.start(F);
    out.attr("sequence", AttrValue::Int(i64::from(sequence)));
    if let Some(o) = offset {
        out.attr("time_offset_min", AttrValue::Int(i64::from(o)));
    }
    if let Some((raw, tl)) = concentration {
        let (unit, factor) = if flags & 0x04 != 0 {
            (Unit::MillimolePerLitre, 1e3)
        } else {
            (Unit::MilligramPerDecilitre, 1e5)
        };
        let v = match sfloat(raw) {
            Value::Number(n) => Value::Number(round_to(n * factor, 3)),
            special => special,
        };
        out.values
            .push(value(Quantity::BloodGlucose, v, unit, time));
        if let Some(t) = usize::from(tl & 0x0F)
            .checked_sub(1)
            .and_then(|i| GLUCOSE_TYPES.get(i))
        {
            out.attr("sample_type", AttrValue::Text(t));
        }
        if let Some(l) = usize::from(tl >> 4)
            .checked_sub(1)
            .and_then(|i| GLUCOSE_LOCATIONS.get(i))
        {
            out.attr("sample_location", AttrValue::Text(l));
        }
    }
    if let Some(s) = status {
        flag_events(out, "sensor_status", u32::from(s), GLUCOSE_STATUS);
    }
    if flags & 0x10 != 0 {
        out.attr("context_follows", AttrValue::Int(1));
    }
    Ok(())
}

/// Base time plus the signed minute offset; the base unchanged when the base is
/// unknown (year 0) or the sum is not a valid date.
fn offset_time(base: DeviceDateTime, offset: Option<i16>) -> Option<DeviceDateTime> {
    let Some(minutes) = offset.filter(|m| *m != 0) else {
        return Some(base);
    };
    let ts = base.as_if_utc()?;
    let ms = ts.unix_ms().checked_add(i64::from(minutes) * 60_000)?;
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000).ok()?;
    Some(DeviceDateTime {
        year: u16::try_from(t.year()).ok()?,
        month: u8::from(t.month()),
        day: t.day(),
        hour: t.hour(),
        minute: t.minute(),
        second: t.second(),
    })
}

fn battery(bytes: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
    const F: &str = "gatt_battery_level";
    let mut c = Cursor::new(F, bytes);
    let pct = c.u8()?;
    if pct > 100 {
        return Err(DecodeError::Invalid {
            format: F,
            field: "battery level over 100 %",
        });
    }
    out.start(F);
    out.push_number(Quantity::BatteryLevel, f64::from(pct), Unit::Percent);
    Ok(())
}

/// Removes the binary noise of a fixed-point scale factor (0.005 × 14000 = 70.0).
/// Digits 0 to 6 (all the formats use) come from a table: `powi` showed up in profiles.
pub(crate) fn round_to(v: f64, digits: i32) -> f64 {
    const POW10: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
    let p = usize::try_from(digits)
        .ok()
        .and_then(|d| POW10.get(d).copied())
        .unwrap_or_else(|| 10f64.powi(digits));
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
    fn heart_rate_announcing_rr_intervals_without_any_is_rejected() {
        // Heart Rate Measurement (GATT Specification Supplement 3.113): flags bit 4
        // "RR-Interval present"; the field is one or more uint16 in 1/1024 s. Flags
        // 0x10, 72 /min and nothing after it announces an interval that is absent.
        let err = decode(0x2A37, &[0x10, 72]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Invalid {
                format: "gatt_heart_rate_measurement",
                field: "rr interval (announced by the flags, none present)",
            }
        );
        assert!(err.to_string().contains("none present"), "{err}");
        // With energy expended (flags 0x18) and still no interval: rejected too.
        assert!(decode(0x2A37, &[0x18, 72, 0x10, 0x00]).is_err());
        // The same frame with one interval (1024/1024 s) is accepted.
        check(
            0x2A37,
            &[0x10, 72, 0x00, 0x04],
            &[
                (Q::HeartRate, N(72.0), U::PerMinute),
                (Q::RrInterval, N(1000.0), U::Millisecond),
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
                assert!(
                    decode(*c, &bytes[..len]).is_err(),
                    "{c:04x} truncated to {len}"
                );
            }
        }
    }
}
