//! The device registry across restarts: the real `carehub run` against the fake
//! BlueZ (see `ble_support`), stopped and started again on the same SQLite file.
//! Paired state, assignments and the pairing record must survive; un-assigning
//! must stop attribution at once.

use std::net::SocketAddr;
use std::time::Duration;

use crate::ble_support::{FakeBluez, Gateway, http, http_json, resident};
use crate::support::{TEST_NURSE, wait_for};

const STRAP: &str = "C0:FF:EE:00:00:21";

/// How long a step may take on a loaded two-core machine; every wait polls an
/// observable condition.
const STEP: Duration = Duration::from_secs(20);

fn stop_cleanly(daemon: crate::support::Daemon) -> String {
    let out = daemon.stop(libc::SIGTERM);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    stderr
}

fn get_json(web: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = wait_for(STEP, || http(web, "GET", path)).expect("the daemon serves");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// One urlencoded form POST, as the staff page sends it.
fn post_form(web: SocketAddr, path: &str, form: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&web, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {web}\r\n{}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        crate::support::auth_header(web),
        form.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

/// The strap's entry in `GET /api/v1/devices`.
fn strap_entry(web: SocketAddr) -> serde_json::Value {
    let devices = get_json(web, "/api/v1/devices");
    devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["address"] == STRAP)
        .cloned()
        .unwrap_or_else(|| panic!("the strap is not listed: {devices}"))
}

/// Advertises until the strap's measurement characteristic is subscribed.
fn wait_subscribed(bluez: &FakeBluez, measurement: &str) {
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(STRAP);
            bluez.notifying(measurement).then_some(())
        })
        .is_some(),
        "the strap was not connected and subscribed\n{}",
        bluez.log()
    );
}

#[test]
fn paired_state_assignment_and_record_survive_a_restart_and_unassign_stops_attribution() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(STRAP, "HR strap", &[0x180D]);
    let hr = bluez.add_service(STRAP, 0x180D);
    let measurement = bluez.add_characteristic(&hr, 0x2A37, "notify", "0000");
    let gw = Gateway::new(vec![resident(3, "Edith Moore", "Room 9")], vec![], "");
    let web: SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();

    // First run: pair inside a window, assign to Edith.
    let daemon = gw.run(&bluez);
    let (status, body) = wait_for(STEP, || {
        http_json(web, "POST", "/api/v1/pairing/window", r#"{"seconds": 60}"#)
    })
    .expect("the daemon serves its API");
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(STRAP);
            bluez.paired(STRAP).then_some(())
        })
        .is_some(),
        "not paired inside the window"
    );
    // Paired, not assigned: listed with its bond, never connected.
    assert!(
        wait_for(STEP, || {
            let d = get_json(web, "/api/v1/devices");
            d.as_array()
                .unwrap()
                .iter()
                .any(|d| d["address"] == STRAP && d["paired"] == true)
                .then_some(())
        })
        .is_some(),
        "the bond is not in the registry"
    );
    assert_eq!(bluez.connect_count(STRAP), 0, "connected before assignment");
    let path = format!("/api/v1/devices/{STRAP}/assignment");
    let (status, body) = http_json(web, "PUT", &path, r#"{"resident_id": 3}"#).unwrap();
    assert_eq!(status, 200, "{body}");
    wait_subscribed(&bluez, &measurement);
    assert!(bluez.notify(&measurement, "0046"));
    assert!(gw.wait_readings(STRAP, "heart_rate", 1, STEP));
    stop_cleanly(daemon);

    // Second run, same database: the bond, the assignment and the record are
    // read back from SQLite, and the strap's values are still Edith's.
    let daemon = gw.run(&bluez);
    let strap = strap_entry(web);
    assert_eq!(strap["paired"], true, "{strap}");
    assert_eq!(strap["resident_id"], 3, "{strap}");
    assert_eq!(strap["kind"], "heart_rate_monitor", "{strap}");
    assert!(strap["bonded_at"].is_string(), "{strap}");
    assert!(strap["assigned_at"].is_string(), "{strap}");
    // Heard before the restart: signal and last-seen were persisted.
    assert_eq!(strap["rssi_dbm"], -61, "{strap}");
    assert!(strap["last_seen"].is_string(), "{strap}");

    let record = get_json(web, "/api/v1/pairing");
    let events: Vec<(String, String, String)> = record["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["what"].as_str().unwrap().to_owned(),
                e["device"].as_str().unwrap_or("").to_owned(),
                e["who"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let has = |what: &str, device: &str, who: &str| {
        events
            .iter()
            .any(|(w, d, by)| w.starts_with(what) && d == device && by == who)
    };
    assert!(has("window opened for 60 s", "", TEST_NURSE), "{events:?}");
    assert!(has("paired and trusted", STRAP, "gateway"), "{events:?}");
    assert!(
        has("assigned to resident 3", STRAP, TEST_NURSE),
        "{events:?}"
    );
    let (status, page) = http(web, "GET", "/pairing").unwrap();
    assert_eq!(status, 200);
    // Listed under her name (issue 20); its signal on its own page.
    assert!(page.contains("Edith Moore, Room 9"), "{page}");
    let (status, own) = http(web, "GET", &format!("/devices/{STRAP}")).unwrap();
    assert_eq!(status, 200);
    assert!(own.contains("-61 dBm"), "{own}");
    assert!(
        page.contains(&format!("assigned to resident 3 (by {TEST_NURSE})")),
        "{page}"
    );

    wait_subscribed(&bluez, &measurement);
    assert!(bluez.notify(&measurement, "0048"));
    assert!(gw.wait_readings(STRAP, "heart_rate", 2, STEP));
    let r = gw.readings(STRAP);
    assert_eq!((r[1].0, r[1].3), (Some(3), Some(72.0)), "{r:?}");

    // Un-assign: nobody owns the strap from now on, so its link is closed (it
    // would hold a connection slot for data nobody may keep) and not dialled
    // again while it advertises. A value sent meanwhile is not Edith's; the next
    // one, after assigning it to a room, is the room's.
    let connects = bluez.connect_count(STRAP);
    assert_eq!(http(web, "DELETE", &path).unwrap().0, 204);
    assert_eq!(
        http(web, "DELETE", &path).unwrap(),
        (409, format!("{STRAP} is not assigned to anyone"))
    );
    assert!(bluez.notify(&measurement, "0050"));
    assert!(
        wait_for(STEP, || (!bluez.connected(STRAP)).then_some(())).is_some(),
        "the un-assigned strap is still connected\n{}",
        bluez.log()
    );
    for _ in 0..5 {
        bluez.advertise_presence(STRAP);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        bluez.connect_count(STRAP),
        connects,
        "an un-assigned device was dialled again"
    );
    let (status, body) = post_form(
        web,
        "/pairing/assign",
        &format!("address={STRAP}&resident_id=3&room=Lounge"),
    );
    assert_eq!(
        (status, body.as_str()),
        (422, "choose a resident or type a room, not both")
    );
    let (status, _) = post_form(
        web,
        "/pairing/assign",
        &format!("address={STRAP}&resident_id=&room=Lounge"),
    );
    assert_eq!(status, 303);
    wait_subscribed(&bluez, &measurement);
    assert!(bluez.notify(&measurement, "005a"));
    assert!(gw.wait_readings(STRAP, "heart_rate", 3, STEP));
    let r = gw.readings(STRAP);
    let values: Vec<(Option<i64>, Option<String>, Option<f64>)> =
        r.iter().map(|r| (r.0, r.1.clone(), r.3)).collect();
    assert_eq!(
        values,
        [
            (Some(3), None, Some(70.0)),
            (Some(3), None, Some(72.0)),
            (None, Some("Lounge".into()), Some(90.0)),
        ],
        "the value sent while un-assigned was attributed"
    );
    stop_cleanly(daemon);

    let db = gw.db();
    let (resident, room, paired): (Option<i64>, Option<String>, bool) = db
        .query_row(
            "SELECT resident_id, room, paired FROM devices WHERE address = ?1",
            [STRAP],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (resident, room.as_deref(), paired),
        (None, Some("Lounge"), true)
    );
    let whats: Vec<String> = db
        .prepare("SELECT what FROM pairing_events WHERE device = ?1 ORDER BY seq")
        .unwrap()
        .query_map([STRAP], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let pos = |w: &str| whats.iter().position(|x| x.starts_with(w));
    assert!(
        pos("assigned to resident 3") < pos("unassigned")
            && pos("unassigned") < pos("assigned to room Lounge")
            && pos("assigned to room Lounge").is_some(),
        "{whats:?}"
    );
}
