//! IEEE 11073-20601 SFLOAT (16 bit) and FLOAT (32 bit), the number formats of every
//! Bluetooth SIG health profile.
//!
//! Special values (NaN, NRes, ±INF, reserved) become [`SpecialValue`]s, never
//! numbers. Negative exponents divide by an exact power of ten, so that `0xF16D`
//! (365 × 10⁻¹) is exactly the double nearest 36.5, as a person would write it.

use crate::model::{SpecialValue, Value};

/// Decodes a 16-bit SFLOAT: a 4-bit signed exponent over a 12-bit signed mantissa.
pub fn sfloat(raw: u16) -> Value {
    match raw {
        0x07FF => return Value::Special(SpecialValue::NotANumber),
        0x0800 => return Value::Special(SpecialValue::NotAtResolution),
        0x07FE => return Value::Special(SpecialValue::PositiveInfinity),
        0x0802 => return Value::Special(SpecialValue::NegativeInfinity),
        0x0801 => return Value::Special(SpecialValue::Reserved),
        _ => {}
    }
    let mut mantissa = i32::from(raw & 0x0FFF);
    if mantissa >= 0x0800 {
        mantissa -= 0x1000;
    }
    let mut exponent = i32::from(raw >> 12);
    if exponent >= 8 {
        exponent -= 16;
    }
    Value::Number(scale(mantissa, exponent))
}

/// Decodes a 32-bit FLOAT: an 8-bit signed exponent over a 24-bit signed mantissa.
pub fn float(raw: u32) -> Value {
    match raw {
        0x007F_FFFF => return Value::Special(SpecialValue::NotANumber),
        0x0080_0000 => return Value::Special(SpecialValue::NotAtResolution),
        0x007F_FFFE => return Value::Special(SpecialValue::PositiveInfinity),
        0x0080_0002 => return Value::Special(SpecialValue::NegativeInfinity),
        0x0080_0001 => return Value::Special(SpecialValue::Reserved),
        _ => {}
    }
    let mut mantissa = (raw & 0x00FF_FFFF) as i32;
    if mantissa >= 0x0080_0000 {
        mantissa -= 0x0100_0000;
    }
    let exponent = i32::from((raw >> 24) as u8 as i8);
    Value::Number(scale(mantissa, exponent))
}

fn scale(mantissa: i32, exponent: i32) -> f64 {
    let m = f64::from(mantissa);
    if exponent >= 0 {
        m * 10f64.powi(exponent)
    } else {
        m / 10f64.powi(-exponent)
    }
}

/// Encodes `value` as an SFLOAT with the given exponent, as a sensor would; `None`
/// when the mantissa does not fit. The range stops at ±2045 so that no exponent-0
/// encoding lands on a special value (0x07FE +INF, 0x0802 −INF).
pub fn encode_sfloat(value: f64, exponent: i8) -> Option<u16> {
    if !(-8..=7).contains(&exponent) || !value.is_finite() {
        return None;
    }
    let m = (value / 10f64.powi(i32::from(exponent))).round();
    if !(-2045.0..=2045.0).contains(&m) {
        return None;
    }
    let m = m as i32;
    Some((((exponent as i32 & 0xF) << 12) | (m & 0x0FFF)) as u16)
}

/// Encodes `value` as a FLOAT with the given exponent; `None` when it does not fit.
pub fn encode_float(value: f64, exponent: i8) -> Option<u32> {
    if !value.is_finite() {
        return None;
    }
    let m = (value / 10f64.powi(i32::from(exponent))).round();
    if !(-8_388_605.0..=8_388_605.0).contains(&m) {
        return None;
    }
    let m = m as i32;
    Some((((exponent as u8) as u32) << 24) | (m as u32 & 0x00FF_FFFF))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_s(raw: u16, expected: Value) {
        assert_eq!(sfloat(raw), expected, "SFLOAT {raw:#06x}");
    }

    fn check_f(raw: u32, expected: Value) {
        assert_eq!(float(raw), expected, "FLOAT {raw:#010x}");
    }

    #[test]
    fn worked_examples_from_the_hl7_phd_guide() {
        check_s(0xF014, Value::Number(2.0));
        check_s(0xE0C8, Value::Number(2.0));
        check_s(0x1002, Value::Number(20.0));
        check_s(0x0B2E, Value::Number(-1234.0));
        check_f(0xFF00_0014, Value::Number(2.0));
        check_f(0x00FF_FB2E, Value::Number(-1234.0));
    }

    #[test]
    fn special_values_are_never_numbers() {
        use SpecialValue::*;
        check_s(0x07FF, Value::Special(NotANumber));
        check_s(0x0800, Value::Special(NotAtResolution));
        check_s(0x07FE, Value::Special(PositiveInfinity));
        check_s(0x0802, Value::Special(NegativeInfinity));
        check_s(0x0801, Value::Special(Reserved));
        check_f(0x007F_FFFF, Value::Special(NotANumber));
        check_f(0x0080_0000, Value::Special(NotAtResolution));
        check_f(0x007F_FFFE, Value::Special(PositiveInfinity));
        check_f(0x0080_0002, Value::Special(NegativeInfinity));
        check_f(0x0080_0001, Value::Special(Reserved));
    }

    #[test]
    fn body_temperature_is_exact() {
        check_f(encode_float(36.5, -1).unwrap(), Value::Number(36.5));
        check_s(0xF16D, Value::Number(36.5));
    }

    #[test]
    fn encode_round_trips() {
        for e in -3i8..=2 {
            for m in [-2045i32, -1, 0, 1, 97, 2045] {
                let v = f64::from(m) * 10f64.powi(i32::from(e));
                let raw = encode_sfloat(v, e).unwrap();
                let back = sfloat(raw).number().unwrap();
                assert!(
                    (back - v).abs() <= v.abs() * 1e-12,
                    "{v} at e{e} came back {back}"
                );
            }
        }
        assert_eq!(encode_sfloat(5000.0, 0), None);
    }
}
