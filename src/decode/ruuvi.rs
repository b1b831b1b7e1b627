//! RuuviTag data format 5 (RAWv2), manufacturer data under company id 0x0499.
//!
//! Specification: docs.ruuvi.com, "Data Format 5 Protocol Specification (RAWv2)".
//! Every field has a "not available" value (0x8000 for signed fields, the maximum
//! for unsigned ones); those become the `unavailable` status, never a number.

use super::{AttrValue, Cursor, DecodeError, Decoded, DecodedValue};
use crate::model::{DeviceAddress, Quantity, SpecialValue, Unit, Value};

pub const COMPANY_ID: u16 = 0x0499;
const FORMAT: &str = "ruuvi_v5";
const NA: Value = Value::Special(SpecialValue::Unavailable);

/// Decodes manufacturer data after the company id.
pub fn decode(data: &[u8]) -> Result<Decoded, DecodeError> {
    super::fresh(|out| decode_into(data, out))
}

/// [`decode`] into a result the caller reuses (see [`super::Decoder::decode_into`]).
pub fn decode_into(data: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
    let mut c = Cursor::new(FORMAT, data);
    let version = c.u8()?;
    if version != 5 {
        return Err(DecodeError::UnsupportedVersion {
            format: "ruuvi",
            version,
        });
    }
    let t = c.i16_be()?;
    let h = c.u16_be()?;
    let p = c.u16_be()?;
    let acc = [c.i16_be()?, c.i16_be()?, c.i16_be()?];
    let power = c.u16_be()?;
    let movement = c.u8()?;
    let sequence = c.u16_be()?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(c.take(6)?);

    out.start(FORMAT);
    let num = |ok: bool, v: f64| if ok { Value::Number(v) } else { NA };
    out.push(
        Quantity::Temperature,
        num(t != i16::MIN, f64::from(t) * 5.0 / 1000.0),
        Unit::Celsius,
    );
    out.push(
        Quantity::Humidity,
        num(h != u16::MAX, f64::from(h) * 25.0 / 10_000.0),
        Unit::Percent,
    );
    out.push(
        Quantity::Pressure,
        num(p != u16::MAX, (f64::from(p) + 50_000.0) / 100.0),
        Unit::Hectopascal,
    );
    for (axis, a) in ["x", "y", "z"].into_iter().zip(acc) {
        out.values.push(DecodedValue {
            quantity: Quantity::Acceleration,
            value: num(a != i16::MIN, f64::from(a) / 1000.0),
            unit: Unit::StandardGravity,
            device_time: None,
            qualifier: Some(axis),
        });
    }
    let mv = power >> 5;
    let tx = power & 0x1F;
    out.push(
        Quantity::BatteryVoltage,
        num(mv != 0x7FF, (f64::from(mv) + 1600.0) / 1000.0),
        Unit::Volt,
    );
    out.push(
        Quantity::TxPower,
        num(tx != 0x1F, f64::from(tx) * 2.0 - 40.0),
        Unit::DecibelMilliwatt,
    );
    out.push(
        Quantity::MovementCount,
        num(movement != u8::MAX, f64::from(movement)),
        Unit::One,
    );
    if sequence != u16::MAX {
        out.attr("sequence", AttrValue::Int(i64::from(sequence)));
    }
    if mac != [0xFF; 6] {
        out.attr("mac", AttrValue::Address(DeviceAddress(mac)));
    }
    Ok(())
}
