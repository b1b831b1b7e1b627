//! Inkbird IBS-TH1 / IBS-TH2 thermometers (local name `sps` or `tps`).
//!
//! These sensors misuse the manufacturer data field: the two bytes BlueZ reports as
//! the company id are the temperature (s16 LE ×0.01 °C). After them: humidity u16
//! ×0.01 %, external-probe flag u8, a checksum u16, battery %, and a type byte.
//! Humidity 0 means "no humidity sensor" (the IBS-TH2 temperature-only model);
//! reference vectors: TheengsDecoder `tests/BLE/test_ble.cpp`.

use super::{AttrValue, Cursor, DecodeError, Decoded};
use crate::model::{Quantity, Unit};

const FORMAT: &str = "inkbird_ibs_th";

/// Whether the local name is one the IBS-TH family uses.
pub fn is_inkbird(name: &str) -> bool {
    name == "sps" || name == "tps"
}

/// Decodes a frame given the "company id" BlueZ reported and the data after it.
pub fn decode(company: u16, data: &[u8]) -> Result<Decoded, DecodeError> {
    super::fresh(|out| decode_into(company, data, out))
}

/// [`decode`] into a result the caller reuses (see [`super::Decoder::decode_into`]).
pub fn decode_into(company: u16, data: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
    let mut c = Cursor::new(FORMAT, data);
    let h = c.u16()?;
    let probe = c.u8()?;
    let _checksum = c.u16()?;
    let battery = c.u8()?;
    let t = company as i16;
    out.start(FORMAT);
    out.push_number(Quantity::Temperature, f64::from(t) / 100.0, Unit::Celsius);
    if h != 0 {
        out.push_number(Quantity::Humidity, f64::from(h) / 100.0, Unit::Percent);
    }
    if battery > 100 {
        return Err(DecodeError::Invalid {
            format: FORMAT,
            field: "battery level over 100 %",
        });
    }
    out.push_number(Quantity::BatteryLevel, f64::from(battery), Unit::Percent);
    out.attr("external_probe", AttrValue::Int(i64::from(probe == 1)));
    Ok(())
}
