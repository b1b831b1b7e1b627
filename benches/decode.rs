//! Decode time per frame through `Decoder::decode`, the dispatch the daemon uses.
//!
//! `cargo bench --bench decode`; results and the Python peer comparison are in
//! docs/performance.md (reproduce with `benches/peers/run.sh`). The payloads are the
//! same bytes `benches/peers/decode_peers.py` gives bthome-ble and TheengsDecoder.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

use carehub::decode::{Decoder, bthome};
use carehub::model::DeviceAddress;
use carehub::sensor::{Advertisement, Frame, Notification, uuid16};

fn hex(s: &str) -> Vec<u8> {
    carehub::decode::cli::parse_hex("bench payload", &s.replace(' ', "")).expect("valid hex")
}

const MAC: DeviceAddress = DeviceAddress([0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5]);
const KEY: [u8; 16] = [
    0x23, 0x1d, 0x39, 0xc1, 0xd7, 0xcc, 0x1a, 0xb1, 0xae, 0xe2, 0x24, 0xcd, 0x09, 0x6d, 0xb9, 0x32,
];

fn service(uuid: u16, data: Vec<u8>) -> Frame {
    Frame::Advertisement(Advertisement {
        address: MAC,
        local_name: Some("ATC_8F80A5".into()),
        service_data: vec![(uuid16(uuid), data)],
        ..Advertisement::default()
    })
}

fn notification(c: u16, value: &str) -> Frame {
    Frame::Notification(Notification {
        address: MAC,
        characteristic: uuid16(c),
        value: hex(value),
    })
}

fn plain(c: &mut Criterion) {
    let cases = [
        (
            "ruuvi_v5",
            Frame::Advertisement(Advertisement {
                address: MAC,
                manufacturer_data: vec![(
                    0x0499,
                    hex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
                )],
                ..Advertisement::default()
            }),
        ),
        ("gatt_heart_rate", notification(0x2A37, "10 48 0004 0002")),
        ("gatt_plx_continuous", notification(0x2A5F, "00 6100 4600")),
        (
            "gatt_blood_pressure",
            notification(0x2A35, "1e 7800 5000 5d00 ea070b17081e05 4600 02 0000"),
        ),
    ];
    let mut group = c.benchmark_group("decode");
    // BTHome with a packet id, battery 100 %, 25.06 °C, 50.55 % (the layout pvvx
    // firmware sends, so TheengsDecoder can decode it too). Packet ids cycle through
    // 0..=255 so that no frame is a repeat of the one before.
    let bthome: Vec<Frame> = (0..=255u8)
        .map(|pid| {
            let mut p = hex("40 0000 0164 02ca09 03bf13");
            p[2] = pid;
            service(0xFCD2, p)
        })
        .collect();
    let mut d = Decoder::new();
    assert_eq!(d.decode(&bthome[0]).map(|x| x.values.len()), Ok(3));
    let mut i = 0usize;
    group.bench_function("bthome_v2_plain", |b| {
        b.iter(|| {
            i = (i + 1) & 0xFF;
            d.decode(black_box(&bthome[i]))
        })
    });
    for (name, frame) in cases {
        let mut d = Decoder::new();
        assert!(d.decode(&frame).is_ok(), "{name} decodes");
        group.bench_function(name, |b| b.iter(|| d.decode(black_box(&frame))));
    }
    group.finish();
}

/// Encrypted frames need rising counters (a repeat is a replay), so a batch of
/// frames with counters 1..N is made up front and each batch gets a fresh decoder.
fn encrypted(c: &mut Criterion) {
    const N: u32 = 4096;
    let plain = hex("40 0164 02ca09 03bf13");
    let frames: Vec<Frame> = (1..=N)
        .map(|counter| {
            service(
                0xFCD2,
                bthome::encrypt(MAC, &KEY, &plain, counter).expect("encrypts"),
            )
        })
        .collect();
    let mut group = c.benchmark_group("decode");
    group.bench_function("bthome_v2_encrypted", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let mut d = Decoder::new();
                d.set_key(MAC, KEY);
                let n = left.min(u64::from(N));
                let start = Instant::now();
                for f in &frames[..n as usize] {
                    let r = d.decode(black_box(f));
                    debug_assert!(r.is_ok());
                    black_box(r).ok();
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, plain, encrypted);
criterion_main!(benches);
