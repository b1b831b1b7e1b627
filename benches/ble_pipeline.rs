//! The BLE path measured end to end: a notification emitted by the fake BlueZ
//! (python-dbusmock on a private bus, see `tests/integration/ble_support.rs`) →
//! btleplug → carehub's GATT session → ingest → committed in SQLite
//! (synchronous = full), with the real `carehub run` binary.
//!
//! Prints the latency of single notifications (median, p95, max), the sustained
//! rate of a burst, and the daemon's resident memory. The fake BlueZ is Python:
//! the burst rate is a floor set partly by the fake, not a ceiling of carehub.
//! Run: `cargo bench --bench ble_pipeline` (needs what `scripts/test` installs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]
// The harness modules are shared with the integration tests; not all of their
// helpers are used here.
#![allow(dead_code)]

#[path = "../tests/integration/ble_support.rs"]
mod ble_support;
#[path = "../tests/integration/support.rs"]
mod support;

use std::time::{Duration, Instant};

use carehub::model::{DeviceKind, ResidentId, Subject};

use ble_support::{FakeBluez, Gateway, device, resident};

const STRAP: &str = "C0:FF:EE:00:00:02";
const SINGLES: usize = 100;
const BURST: u32 = 2000;

fn stored(gw: &Gateway) -> i64 {
    gw.db()
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap()
}

/// Polls the database every millisecond until it holds `n` readings.
fn until_stored(gw: &Gateway, n: i64, limit: Duration) -> Instant {
    let start = Instant::now();
    loop {
        if stored(gw) >= n {
            return Instant::now();
        }
        assert!(start.elapsed() < limit, "only {} of {n} stored", stored(gw));
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn main() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(STRAP, "HR strap", &[0x180D]);
    let service = bluez.add_service(STRAP, 0x180D);
    let measurement = bluez.add_characteristic(&service, 0x2A37, "notify", "0000");
    let gw = Gateway::new(
        vec![resident(1, "Margaret Ellis", "Room 4")],
        vec![device(
            STRAP,
            DeviceKind::HeartRateMonitor,
            Subject::Resident(ResidentId(1)),
        )],
        "",
    );
    let daemon = gw.run(&bluez);
    let pid = daemon.child.as_ref().unwrap().id();
    support::wait_for(Duration::from_secs(30), || {
        bluez.notifying(&measurement).then_some(())
    })
    .expect("strap subscribed");
    let rss_idle = rss_kib(pid);

    // Single notifications, one at a time.
    let mut latencies = Vec::with_capacity(SINGLES);
    let mut send_costs = Vec::with_capacity(SINGLES);
    for i in 0..SINGLES {
        let before = stored(&gw);
        let t0 = Instant::now();
        assert!(bluez.notify(&measurement, &format!("00{:02x}", 60 + i % 40)));
        let sent = Instant::now();
        let done = until_stored(&gw, before + 1, Duration::from_secs(10));
        latencies.push(done - t0);
        send_costs.push(sent - t0);
    }
    latencies.sort();
    send_costs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "single notification -> committed row: median {:.1} ms, p95 {:.1} ms, max {:.1} ms (n = {SINGLES}; includes the dbus-send process, median {:.1} ms)",
        ms(latencies[SINGLES / 2]),
        ms(latencies[SINGLES * 95 / 100]),
        ms(latencies[SINGLES - 1]),
        ms(send_costs[SINGLES / 2]),
    );

    // A burst: how fast the whole path drains.
    let before = stored(&gw);
    let t0 = Instant::now();
    assert!(
        bluez
            .mock(
                "NotifyBurst",
                &[
                    &format!("string:{measurement}"),
                    "string:0048",
                    &format!("uint32:{BURST}")
                ]
            )
            .contains("true")
    );
    let emitted = Instant::now();
    let done = until_stored(&gw, before + i64::from(BURST), Duration::from_secs(120));
    println!(
        "burst of {BURST} notifications: all committed after {:.0} ms ({:.0} readings/s; the fake took {:.0} ms to emit them)",
        ms(done - t0),
        f64::from(BURST) / (done - t0).as_secs_f64(),
        ms(emitted - t0),
    );
    println!(
        "daemon resident memory: {} KiB idle with one session, {} KiB after the burst",
        rss_idle,
        rss_kib(pid)
    );
    let out = daemon.stop(libc::SIGTERM);
    assert!(out.status.success());
}
