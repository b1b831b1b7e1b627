//! Bytes on the wire per reading, for each readings payload the uplink can send,
//! from a real store (reading ids as the writer makes them) through the
//! uplink's own encoder: the payload, the MQTT 5 PUBLISH around it, and an
//! estimate of TLS 1.3 records and TCP/IP headers. Run:
//! `cargo bench --bench wire_bytes` (env `CAREHUB_BENCH_BATCHES`, default
//! "1,10,100,1000"). Figures in docs/performance.md.
//!
//! The mix is a care home's: per resident an oximeter (SpO2 and pulse every
//! 30 s) and a thermometer now and then, per room a sensor (temperature,
//! humidity, motion), received over a few minutes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

use carehub::model::{
    Device, DeviceAddress, DeviceKind, Quantity, Reading, ReadingId, Resident, ResidentId, Subject,
    Timestamp, Unit, Value,
};
use carehub::store::{Store, StoreSettings};
use carehub::system::health::Health;
use carehub::uplink::batch::Encoder;

const RESIDENTS: i64 = 20;
const READINGS: usize = 4000;
const TOPIC: &str = "carehub/v1/oak-house/gw-0001/readings";

fn oximeter(r: i64) -> DeviceAddress {
    DeviceAddress([0xA4, 0xC1, 0x38, 0x10, 0, r as u8])
}

fn room_sensor(r: i64) -> DeviceAddress {
    DeviceAddress([0xA4, 0xC1, 0x38, 0x20, 0, r as u8])
}

fn mix(start: Timestamp) -> Vec<Reading> {
    let mut out = Vec::with_capacity(READINGS);
    let mut i = 0usize;
    while out.len() < READINGS {
        let r = 1 + (i as i64 % RESIDENTS);
        let at = Timestamp::from_unix_ms(start.unix_ms() + i as i64 * 1500 + (i as i64 * 37) % 400);
        let device_time = Some(Timestamp::from_unix_ms(
            at.unix_ms() - 800 - (i as i64 * 13) % 300,
        ));
        let base = |device, subject, quantity, value, unit, measured_at| Reading {
            id: ReadingId::UNASSIGNED,
            device,
            subject,
            quantity,
            value: Value::Number(value),
            unit,
            measured_at,
            received_at: at,
            clock_synced: true,
        };
        let resident = Subject::Resident(ResidentId(r));
        let room = Subject::Room(format!("{}", 100 + r));
        out.push(base(
            oximeter(r),
            resident.clone(),
            Quantity::Spo2,
            94.0 + (i % 5) as f64,
            Unit::Percent,
            device_time,
        ));
        out.push(base(
            oximeter(r),
            resident.clone(),
            Quantity::PulseRate,
            60.0 + (i % 23) as f64,
            Unit::PerMinute,
            device_time,
        ));
        match i % 6 {
            0 => out.push(base(
                oximeter(r),
                resident,
                Quantity::BodyTemperature,
                36.4 + (i % 9) as f64 / 10.0,
                Unit::Celsius,
                device_time,
            )),
            1 => out.push(base(
                room_sensor(r),
                room.clone(),
                Quantity::Temperature,
                20.0 + (i % 40) as f64 / 10.0,
                Unit::Celsius,
                None,
            )),
            2 => out.push(base(
                room_sensor(r),
                room.clone(),
                Quantity::Humidity,
                40.0 + (i % 17) as f64 / 2.0,
                Unit::Percent,
                None,
            )),
            3 => out.push(base(
                room_sensor(r),
                room,
                Quantity::Motion,
                (i % 2) as f64,
                Unit::One,
                None,
            )),
            _ => {}
        }
        i += 1;
    }
    out.truncate(READINGS);
    out
}

/// The MQTT 5 PUBLISH (QoS 1) around a payload: fixed header, topic, packet id,
/// properties (`content_type` when given).
fn publish_bytes(payload: usize, content_type: Option<&str>) -> usize {
    let props = content_type.map_or(0, |t| 1 + 2 + t.len());
    let remaining = 2 + TOPIC.len() + 2 + 1 + props + payload;
    let len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + remaining
}

/// TLS 1.3 records (at most 16 kB each, 22 bytes of header, tag and type) and
/// TCP/IPv4 segments (1448 bytes of data, 52 bytes of headers with timestamps)
/// around `bytes`; the PUBACK coming back (4 bytes of MQTT in one record and
/// one segment) is counted too.
fn on_the_wire(bytes: usize) -> usize {
    let records = bytes.div_ceil(16_384);
    let tls = bytes + records * 22;
    let segments = tls.div_ceil(1448);
    let puback = 4 + 22 + 52;
    tls + segments * 52 + puback
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let batches: Vec<usize> = std::env::var("CAREHUB_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,10,100,1000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut health = Health::default();
        let store = Store::open(
            StoreSettings::at(dir.path().join("carehub.db")),
            tokio::runtime::Handle::current(),
            health.register("store"),
        )
        .unwrap();
        let residents = (1..=RESIDENTS)
            .map(|r| Resident {
                id: ResidentId(r),
                display_name: format!("Resident {r}"),
                room: format!("{}", 100 + r),
                reference: format!("res-{r:04}"),
            })
            .collect();
        let devices = (1..=RESIDENTS)
            .flat_map(|r| {
                [
                    Device {
                        address: oximeter(r),
                        kind: DeviceKind::PulseOximeter,
                        model: None,
                        name: None,
                        subject: Subject::Resident(ResidentId(r)),
                    },
                    Device {
                        address: room_sensor(r),
                        kind: DeviceKind::RoomSensor,
                        model: None,
                        name: None,
                        subject: Subject::Room(format!("{}", 100 + r)),
                    },
                ]
            })
            .collect();
        store.handle.provision(residents, devices).await.unwrap();
        store.handle.ingest(mix(Timestamp::now())).await.unwrap();
        println!("{READINGS} readings, {RESIDENTS} residents; bytes per reading");
        println!(
            "{:<8} {:>7} {:>10} {:>10} {:>10}",
            "payload", "batch", "payload", "mqtt", "wire"
        );
        for format in carehub::uplink::batch::WIRE_FORMATS {
            for &batch in &batches {
                let encoder = Encoder::new(format.payload, "oak-house", "gw-0001", batch)
                    .with_compact(format.compact);
                let (lease, encoder, n) = store
                    .handle
                    .lease_into(READINGS, encoder)
                    .await
                    .unwrap()
                    .unwrap();
                store.handle.release(lease).await.unwrap();
                let messages = encoder.finish().unwrap();
                let payload: usize = messages.iter().map(Vec::len).sum();
                let ct = format.content_type();
                let mqtt: usize = messages.iter().map(|m| publish_bytes(m.len(), ct)).sum();
                let wire: usize = messages
                    .iter()
                    .map(|m| on_the_wire(publish_bytes(m.len(), ct)))
                    .sum();
                let per = |b: usize| b as f64 / n as f64;
                println!(
                    "{:<8} {:>7} {:>10.1} {:>10.1} {:>10.1}",
                    format.name,
                    batch,
                    per(payload),
                    per(mqtt),
                    per(wire)
                );
            }
        }
    });
}
