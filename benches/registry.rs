//! Benchmark of the device registry's writes (schema v3): how long a pairing
//! event takes to be committed (what staff wait for when they assign or
//! un-assign a device), and what persisting signal strength and last-seen costs
//! the SD card: bytes written per flush of N registered devices, alone (no
//! readings flowing to share its commit with, the worst case).
//!
//! Run: `cargo bench --bench registry` (prints a Markdown table for
//! docs/performance.md). `CAREHUB_BENCH_DIR` picks the directory (default under
//! the target directory; it must be a real disk, not tmpfs, or fsync is free).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carehub::config::Synchronous;
use carehub::model::{Device, DeviceAddress, DeviceKind, Resident, ResidentId, Subject, Timestamp};
use carehub::store::{PairingRecord, RegistryChange, Seen, Store, StoreSettings};
use carehub::system::health::Health;

fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("write_bytes:")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn address(i: usize) -> DeviceAddress {
    DeviceAddress([0xC0, 0, 0, 0, (i >> 8) as u8, i as u8])
}

fn open(path: &Path) -> Store {
    let settings = StoreSettings {
        commit_max_delay: Duration::from_millis(20),
        synchronous: Synchronous::Full,
        min_free_disk_bytes: 0,
        ..StoreSettings::at(path)
    };
    let mut health = Health::default();
    Store::open(
        settings,
        tokio::runtime::Handle::current(),
        health.register("store"),
    )
    .expect("open the bench database")
}

fn main() {
    let dir = std::env::var_os("CAREHUB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
            PathBuf::from(target).join("bench-registry")
        });
    std::fs::create_dir_all(&dir).expect("bench directory");
    let path = dir.join("registry.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = open(&path);
        let residents = (1..=40)
            .map(|i| Resident {
                id: ResidentId(i),
                display_name: format!("Resident {i}"),
                room: format!("Room {i}"),
                reference: format!("ref-{i}"),
            })
            .collect();
        store
            .handle
            .provision(residents, vec![])
            .await
            .expect("residents");
        println!("| what | n | mean | p99 | bytes written each |");
        println!("|---|---:|---:|---:|---:|");
        // Assignments, one at a time, each awaited as the API does.
        const N: usize = 200;
        let mut times = Vec::with_capacity(N);
        let before = write_bytes();
        for i in 0..N {
            let device = Device {
                address: address(i),
                kind: DeviceKind::HeartRateMonitor,
                model: None,
                name: Some(format!("strap {i}")),
                subject: Subject::Resident(ResidentId(1 + i as i64 % 40)),
            };
            let t = Instant::now();
            store
                .handle
                .record(PairingRecord {
                    at: Timestamp::now(),
                    device: Some(address(i)),
                    what: "assigned".into(),
                    who: "127.0.0.1".into(),
                    change: RegistryChange::Assigned(device),
                })
                .await
                .expect("record");
            times.push(t.elapsed());
        }
        let bytes = (write_bytes() - before) / N as u64;
        times.sort();
        let mean = times.iter().sum::<Duration>() / N as u32;
        println!(
            "| assignment committed (record + devices row) | {N} | {:.1} ms | {:.1} ms | {bytes} |",
            mean.as_secs_f64() * 1e3,
            times[N * 99 / 100].as_secs_f64() * 1e3
        );
        // Sightings flushes of 40 and 200 registered devices.
        let sink = store.handle.event_sink();
        for devices in [40usize, 200] {
            const FLUSHES: usize = 50;
            let before = write_bytes();
            let mut times = Vec::with_capacity(FLUSHES);
            for f in 0..FLUSHES {
                let seen = (0..devices)
                    .map(|i| Seen {
                        device: address(i),
                        rssi: Some(-60 - (f % 20) as i16),
                        at: Timestamp::now(),
                        replay: None,
                    })
                    .collect();
                let t = Instant::now();
                sink.seen(seen).expect("seen");
                // A committed record after it: the flush is on disk when it returns.
                store
                    .handle
                    .record(PairingRecord {
                        at: Timestamp::now(),
                        device: None,
                        what: "bench marker".into(),
                        who: "bench".into(),
                        change: RegistryChange::Note,
                    })
                    .await
                    .expect("marker");
                times.push(t.elapsed());
            }
            let bytes = (write_bytes() - before) / FLUSHES as u64;
            times.sort();
            let mean = times.iter().sum::<Duration>() / FLUSHES as u32;
            println!(
                "| sightings flush, alone in its commit | {devices} devices | {:.1} ms | {:.1} ms | {bytes} |",
                mean.as_secs_f64() * 1e3,
                times[FLUSHES * 99 / 100].as_secs_f64() * 1e3
            );
        }
        let Store { handle, writer, .. } = store;
        drop(handle);
        tokio::task::spawn_blocking(move || writer.join().expect("writer"))
            .await
            .expect("join");
    });
}
