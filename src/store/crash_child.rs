//! The child process of the store's crash test (`carehub store-crash-child`, a
//! hidden subcommand): it ingests from several producers and drains through
//! lease/ack/release at full speed until it is killed with SIGKILL.
//!
//! After each commit it prints `c RUN PRODUCER FIRST COUNT` on stdout, in one
//! write, so that the test knows which readings were reported committed before the
//! kill. Even producers bring their own ids, made by [`reading_id`] so that the
//! test can rebuild them; odd producers leave the id to the store, as the ingest
//! stage does (schema v8). Every reading's device time is [`measured_ms`], unique,
//! so that the test finds each one either way.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{Store, StoreSettings};
use crate::config::Synchronous;
use crate::model::{
    DeviceAddress, Quantity, Reading, ReadingId, ResidentId, Subject, Timestamp, Unit, Value,
};

/// Producers writing at once, so that commits group several of them.
pub const PRODUCERS: u8 = 4;
/// Readings per `ingest` call.
pub const BATCH: u32 = 50;

/// The id of reading `n` of `producer` in crash run `run`: a UUIDv7 layout with a
/// fixed time, unique per (run, producer, n).
pub fn reading_id(run: u32, producer: u8, n: u32) -> ReadingId {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&1_800_000_000_000u64.to_be_bytes()[2..]);
    b[6] = 0x70;
    b[7] = producer;
    b[8] = 0x80;
    b[9..12].copy_from_slice(&run.to_be_bytes()[1..]);
    b[12..].copy_from_slice(&n.to_be_bytes());
    ReadingId::from_bytes(b)
}

/// Whether `producer` brings its own ids (even) or leaves them to the store (odd).
pub fn brings_ids(producer: u8) -> bool {
    producer.is_multiple_of(2)
}

/// The device time of reading `n` of `producer` in crash run `run`, in Unix ms:
/// unique per (run, producer, n).
pub fn measured_ms(run: u32, producer: u8, n: u32) -> i64 {
    1_700_000_000_000
        + i64::from(run) * 1_000_000_000
        + i64::from(producer) * 100_000_000
        + i64::from(n)
}

fn reading(run: u32, producer: u8, n: u32) -> Reading {
    let vital = !n.is_multiple_of(3);
    Reading {
        id: if brings_ids(producer) {
            reading_id(run, producer, n)
        } else {
            ReadingId::UNASSIGNED
        },
        device: DeviceAddress([0xC0, 0, 0, 0, producer, (n % 5) as u8]),
        subject: if vital {
            Subject::Resident(ResidentId(i64::from(producer)))
        } else {
            Subject::Room(format!("Room {producer}"))
        },
        quantity: if vital {
            Quantity::HeartRate
        } else {
            Quantity::Humidity
        },
        value: Value::Number(f64::from(n % 200)),
        unit: if vital {
            Unit::PerMinute
        } else {
            Unit::Percent
        },
        measured_at: Some(Timestamp::from_unix_ms(measured_ms(run, producer, n))),
        received_at: Timestamp::now(),
        clock_synced: true,
    }
}

/// Runs until killed (or an error).
pub fn run(db: PathBuf, run: u32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let settings = StoreSettings {
            commit_max_readings: 1000,
            commit_max_delay: Duration::from_millis(2),
            synchronous: Synchronous::Full,
            min_free_disk_bytes: 0,
            ..StoreSettings::at(db)
        };
        let mut health = crate::system::health::Health::default();
        let store = tokio::task::spawn_blocking({
            let rt = tokio::runtime::Handle::current();
            let beat = health.register("store");
            move || Store::open(settings, rt, beat)
        })
        .await??;
        let handle = store.handle;
        handle
            .release_all()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        say("ready\n")?;
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u32;
                loop {
                    let batch = (n..n + BATCH).map(|i| reading(run, p, i)).collect();
                    h.ingest(batch).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    say(&format!("c {run} {p} {n} {BATCH}\n"))?;
                    n += BATCH;
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            }));
        }
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            loop {
                round += 1;
                match h.lease(200).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                    // Every seventh lease goes back undelivered, as on a dropped link.
                    Some(l) if round.is_multiple_of(7) => h.release(l.id).await,
                    Some(l) => h.ack(l.id).await,
                    None => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        Ok(())
                    }
                }
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        }));
        for t in tasks {
            t.await??;
        }
        Ok(())
    })
}

/// One write per line, so that a kill never leaves half a line that looks whole.
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(())
}
