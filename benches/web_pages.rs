//! Benchmark of the staff pages (issue 7) on a realistic database: 60 residents
//! with 24 h of history (six vital signs each, one reading every 2 minutes).
//!
//! Measures, single client, in-process through the real router (`oneshot`, no
//! socket): the residents overview, the resident detail page (charts of 24 h,
//! newest 100 readings), `/metrics` and `/api/v1/gateway`; then the resident
//! history query as shipped (a scan of the recent tail of `readings`) against a
//! per-resident index, and what that index would cost the writer (group commits
//! of 1000 readings with and without it). The many-clients load test of the overview is the browser helper's
//! bench; this one isolates the page work.
//!
//! Run: `cargo bench --bench web_pages` (prints a Markdown table for
//! docs/performance.md). `CAREHUB_BENCH_DIR` picks the directory (default under
//! the target directory).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use carehub::config::Synchronous;
use carehub::model::{
    DeviceAddress, Quantity, Reading, ReadingId, Resident, ResidentId, Subject, Timestamp, Unit,
    Value,
};
use carehub::store::{Store, StoreSettings};
use carehub::system::health::Health;
use carehub::web::{AppState, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

const RESIDENTS: i64 = 60;
const EVERY: Duration = Duration::from_secs(120);
const VITALS: [(Quantity, Unit, f64); 6] = [
    (Quantity::Spo2, Unit::Percent, 96.0),
    (Quantity::PulseRate, Unit::PerMinute, 72.0),
    (Quantity::SystolicPressure, Unit::MillimetreOfMercury, 125.0),
    (Quantity::DiastolicPressure, Unit::MillimetreOfMercury, 80.0),
    (Quantity::BodyTemperature, Unit::Celsius, 36.8),
    (Quantity::BodyWeight, Unit::Kilogram, 70.0),
];

/// The per-resident index the history query does without (see
/// `Reader::resident_history`), for the comparison.
const INDEX_SQL: &str = "CREATE INDEX readings_resident_taken
    ON readings (resident_id, coalesce(measured_at_ms, received_at_ms))
    WHERE resident_id IS NOT NULL";

fn open(path: &Path) -> Store {
    let settings = StoreSettings {
        commit_max_readings: 1000,
        commit_max_delay: Duration::from_millis(5),
        synchronous: Synchronous::Normal,
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

fn reading(resident: i64, k: usize, at: Timestamp, n: u64) -> Reading {
    let (q, unit, base) = VITALS[k];
    Reading {
        id: ReadingId::new(at),
        device: DeviceAddress([0xC0, 0, 0, 0, resident as u8, k as u8]),
        subject: Subject::Resident(ResidentId(resident)),
        quantity: q,
        value: Value::Number(base + (n % 7) as f64 * 0.5),
        unit,
        measured_at: None,
        received_at: at,
        clock_synced: true,
    }
}

/// The 24 h of history, oldest first, in batches the size of a group commit.
fn history(now: Timestamp) -> Vec<Vec<Reading>> {
    let steps = (24 * 3600 / EVERY.as_secs()) as i64;
    let mut all = Vec::new();
    let mut n = 0u64;
    for s in (0..steps).rev() {
        let at = Timestamp::from_unix_ms(now.unix_ms() - s * EVERY.as_millis() as i64);
        for r in 1..=RESIDENTS {
            for k in 0..VITALS.len() {
                n += 1;
                all.push(reading(r, k, at, n));
            }
        }
    }
    all.chunks(1000).map(<[Reading]>::to_vec).collect()
}

/// Bytes this process has caused to be written to storage (`/proc/self/io`).
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

fn percentile(times: &mut [Duration], p: usize) -> f64 {
    times.sort();
    times[(times.len() * p / 100).min(times.len() - 1)].as_secs_f64() * 1e3
}

async fn page(state: &AppState, cookie: &str, uri: &str, n: usize) -> (f64, f64, usize) {
    let mut times = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let res = app(state.clone())
            .oneshot(
                Request::get(uri)
                    .header("cookie", cookie)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert!(res.status().is_success(), "{uri}: {}", res.status());
        size = res
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .len();
        times.push(t.elapsed());
    }
    (percentile(&mut times, 50), percentile(&mut times, 99), size)
}

fn main() {
    let dir = std::env::var_os("CAREHUB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
            PathBuf::from(target).join("bench-web-pages")
        });
    std::fs::create_dir_all(&dir).expect("bench directory");
    let path = dir.join("pages.db");
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
        let residents = (1..=RESIDENTS)
            .map(|i| Resident {
                id: ResidentId(i),
                display_name: format!("Resident {i}"),
                room: format!("Room {i}"),
                reference: format!("R-{i:04}"),
            })
            .collect();
        store
            .handle
            .provision(residents, vec![])
            .await
            .expect("residents");
        let now = Timestamp::now();
        let batches = history(now);
        let total: usize = batches.iter().map(Vec::len).sum();
        let t = Instant::now();
        for b in batches {
            store.handle.ingest(b).await.expect("ingest");
        }
        let fill = t.elapsed();
        let state = AppState {
            reader: store.reader.clone(),
            stale_after: Duration::from_secs(3600),
            health: Arc::new(Health::default()),
            started_at: now,
            version: "bench",
            pairing: Default::default(),
            ble: None,
            registry: Default::default(),
            store: store.handle.clone(),
            uplink: Arc::new(carehub::uplink::UplinkStatus::new(
                carehub::uplink::ConnectionState::Disabled,
            )),
            gateway_name: "bench".into(),
            zone: carehub::model::SiteZone::utc(),
            ingest: Default::default(),
            events: carehub::web::events::Events::new(Default::default()),
            web_metrics: Default::default(),
            overview: Default::default(),
            accounts: carehub::web::auth::testing::accounts(&path),
            auth: carehub::web::auth::testing::settings(),
            alerts: carehub::alert_stage::open_book(&path).expect("alert book"),
        };
        // Pages need a signed-in user; every view is audited, as in the daemon.
        let login = carehub::web::auth::testing::sign_in(
            &state,
            "bench-nurse",
            carehub::store::accounts::Role::Nurse,
        );
        println!(
            "database: {RESIDENTS} residents, {total} readings over 24 h (filled in {:.1} s)\n",
            fill.as_secs_f64()
        );
        println!("| request (one client, in process) | n | p50 | p99 | body |");
        println!("|---|---:|---:|---:|---:|");
        for (uri, n) in [
            ("/", 200),
            ("/residents/30", 100),
            ("/api/v1/residents/30", 100),
            ("/metrics", 200),
            ("/api/v1/gateway", 200),
        ] {
            let (p50, p99, size) = page(&state, &login.cookie, uri, n).await;
            println!(
                "| `GET {uri}` | {n} | {p50:.2} ms | {p99:.2} ms | {:.0} kB |",
                size as f64 / 1e3
            );
        }

        // The history query as the page runs it (a scan of the rows received in
        // the last 25 h, found by bisection), and the per-resident index it does
        // without: what that index would gain the query and cost the writer.
        let reader = store.reader.clone();
        let since = now.saturating_sub(Duration::from_secs(24 * 3600));
        let query = move |n: usize| {
            let mut times = Vec::with_capacity(n);
            let mut rows = 0;
            for i in 0..n {
                let id = ResidentId(1 + (i as i64 % RESIDENTS));
                let t = Instant::now();
                rows = reader.resident_history(id, since).expect("history").len();
                times.push(t.elapsed());
            }
            (percentile(&mut times, 50), percentile(&mut times, 99), rows)
        };
        println!("\n| resident history query (24 h) | n | p50 | p99 | rows |");
        println!("|---|---:|---:|---:|---:|");
        let run = |n: usize| {
            let q = query.clone();
            tokio::task::spawn_blocking(move || q(n))
        };
        let (p50, p99, rows) = run(100).await.expect("query");
        println!("| tail scan, no index (as shipped) | 100 | {p50:.2} ms | {p99:.2} ms | {rows} |");
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(INDEX_SQL).expect("create the index");
        let index_pages: i64 = conn
            .query_row(
                "SELECT count(*) FROM dbstat WHERE name = 'readings_resident_taken'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(-1);
        let (p50, p99, rows) = run(100).await.expect("query");
        println!(
            "| with a per-resident index (not shipped) | 100 | {p50:.2} ms | {p99:.2} ms | {rows} |"
        );
        conn.execute_batch("DROP INDEX readings_resident_taken")
            .expect("drop");

        // What the index costs the writer: 20 groups of 1000 readings each way.
        let write = |with_index: bool| {
            let store = &store;
            async move {
                let start = Timestamp::now();
                let before = write_bytes();
                let t = Instant::now();
                for g in 0..20i64 {
                    let batch: Vec<Reading> = (0..1000)
                        .map(|i| {
                            let at = Timestamp::from_unix_ms(start.unix_ms() + g * 1000 + i);
                            reading(
                                1 + (i % RESIDENTS),
                                (i as usize) % VITALS.len(),
                                at,
                                i as u64,
                            )
                        })
                        .collect();
                    store.handle.ingest(batch).await.expect("ingest");
                }
                let per = t.elapsed().as_secs_f64() * 1e6 / 20_000.0;
                let bytes = (write_bytes() - before) / 20_000;
                println!(
                    "| 20 × 1000 readings, {} the index | {per:.1} µs | {bytes} |",
                    if with_index { "with" } else { "without" }
                );
            }
        };
        println!("\n| writer: group commits | time per reading | bytes written per reading |");
        println!("|---|---:|---:|");
        for _ in 0..2 {
            write(false).await;
            conn.execute_batch(INDEX_SQL).expect("create the index");
            write(true).await;
            conn.execute_batch("DROP INDEX readings_resident_taken")
                .expect("drop");
        }
        println!(
            "\nper-resident index size: {index_pages} pages of 4 KiB (-1: dbstat not compiled in)"
        );
        drop(store);
    });
}
