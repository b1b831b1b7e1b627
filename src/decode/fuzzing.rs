//! Entry points shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and the test
//! that replays the committed corpus (`fuzz/corpus/<target>/`) in plain `cargo test`.
//!
//! Each entry point turns arbitrary bytes into decoder input, runs it, and panics if
//! a decoded number is not finite: a special value must never become a number, and
//! a panic is what a fuzzer reports.

#![allow(
    clippy::indexing_slicing,
    reason = "fuzzing entry points, not daemon code: every index is taken modulo its table's length"
)]

use super::{Decoded, Decoder, gatt, ruuvi};
use crate::model::DeviceAddress;
use crate::sensor::{Advertisement, Frame, Notification, uuid16};

/// The fuzz targets, each with a corpus directory of the same name.
pub const TARGETS: &[&str] = &[
    "dispatch",
    "gatt",
    "bthome",
    "ruuvi",
    "xiaomi",
    "govee_inkbird",
];

const ADDRESS: DeviceAddress = DeviceAddress([0xA4, 0xC1, 0x38, 0x12, 0x34, 0x56]);
/// A fixed key, so that encrypted corpus entries made with it decrypt.
pub const KEY: [u8; 16] = [
    0xb2, 0xd4, 0x6f, 0x0a, 0x8e, 0xa1, 0xf8, 0xe1, 0xbd, 0x0c, 0xd0, 0xd9, 0xc3, 0xeb, 0x5a, 0x0e,
];
const SERVICES: [u16; 4] = [0xFCD2, 0x181A, 0xFE95, 0x180F];
const COMPANIES: [u16; 5] = [0x0499, 0xEC88, 0x0001, 0x8801, 0x0A66];
const NAMES: [&str; 6] = [
    "",
    "sps",
    "tps",
    "GVH5075_1234",
    "Govee_H5074_1234",
    "Govee_H5179_1234",
];

/// Runs the named target; `false` if there is no such target.
pub fn run_target(target: &str, data: &[u8]) -> bool {
    match target {
        "dispatch" => dispatch(data),
        "gatt" => gatt_value(data),
        "bthome" => service_family(0xFCD2, data),
        "ruuvi" => check(ruuvi::decode(data).ok()),
        "xiaomi" => xiaomi_family(data),
        "govee_inkbird" => govee_inkbird(data),
        _ => return false,
    }
    true
}

fn check(d: Option<Decoded>) {
    if let Some(d) = d {
        for v in &d.values {
            if let Some(n) = v.value.number() {
                assert!(n.is_finite(), "{}: non-finite {n}", d.format);
            }
        }
    }
}

/// Byte 0: bit 7 registers the key; bits 0-1 pick service data, manufacturer data
/// or a characteristic; bits 2-6 the UUID/company/characteristic. Byte 1 the name.
/// The rest is the payload, decoded twice so that state (counters) is exercised.
pub fn dispatch(data: &[u8]) {
    let [sel, name, payload @ ..] = data else {
        return;
    };
    let mut d = Decoder::new();
    if sel & 0x80 != 0 {
        d.set_key(ADDRESS, KEY);
    }
    let pick = usize::from((sel >> 2) & 0x1F);
    let frame = match sel & 0x03 {
        0 => Frame::Advertisement(Advertisement {
            address: ADDRESS,
            service_data: vec![(uuid16(SERVICES[pick % SERVICES.len()]), payload.to_vec())],
            ..Advertisement::default()
        }),
        1 => Frame::Advertisement(Advertisement {
            address: ADDRESS,
            local_name: Some(NAMES[usize::from(*name) % NAMES.len()].to_owned()),
            manufacturer_data: vec![(COMPANIES[pick % COMPANIES.len()], payload.to_vec())],
            ..Advertisement::default()
        }),
        _ => Frame::Notification(Notification {
            address: ADDRESS,
            characteristic: uuid16(gatt::CHARACTERISTICS[pick % gatt::CHARACTERISTICS.len()]),
            value: payload.to_vec(),
        }),
    };
    check(d.decode(&frame).ok());
    check(d.decode(&frame).ok());
}

/// Byte 0 picks the characteristic; the rest is its value.
pub fn gatt_value(data: &[u8]) {
    let [sel, value @ ..] = data else {
        return;
    };
    let c = gatt::CHARACTERISTICS[usize::from(*sel) % gatt::CHARACTERISTICS.len()];
    check(gatt::decode(c, value).ok());
}

/// Byte 0 bit 0 registers the key; the rest is service data under `uuid`.
fn service_family(uuid: u16, data: &[u8]) {
    let [sel, payload @ ..] = data else {
        return;
    };
    let mut d = Decoder::new();
    if sel & 1 != 0 {
        d.set_key(ADDRESS, KEY);
    }
    let adv = Advertisement {
        address: ADDRESS,
        service_data: vec![(uuid16(uuid), payload.to_vec())],
        ..Advertisement::default()
    };
    check(d.decode_advertisement(&adv).ok());
    check(d.decode_advertisement(&adv).ok());
}

/// Byte 0 bit 1 picks MiBeacon (0xFE95) over ATC/pvvx (0x181A); bit 0 the key.
pub fn xiaomi_family(data: &[u8]) {
    let Some(sel) = data.first() else {
        return;
    };
    let uuid = if sel & 2 != 0 { 0xFE95 } else { 0x181A };
    service_family(uuid, data);
}

/// Byte 0 picks the name, bytes 1-2 the company id (little-endian); the rest is
/// manufacturer data.
pub fn govee_inkbird(data: &[u8]) {
    let [sel, c0, c1, payload @ ..] = data else {
        return;
    };
    let adv = Advertisement {
        address: ADDRESS,
        local_name: Some(NAMES[usize::from(*sel) % NAMES.len()].to_owned()),
        manufacturer_data: vec![(u16::from_le_bytes([*c0, *c1]), payload.to_vec())],
        ..Advertisement::default()
    };
    check(Decoder::new().decode_advertisement(&adv).ok());
}
