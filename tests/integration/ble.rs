//! The BLE source end to end: the real `carehub run` with `source = "ble"`, its
//! btleplug code path talking D-Bus to a fake BlueZ (see `ble_support`), readings
//! checked in the real SQLite file.

use std::time::Duration;

use carehub::model::{DeviceKind, ResidentId, Subject};

use crate::ble_support::{FakeBluez, Gateway, device, http, http_json, resident};
use crate::support::wait_for;

const ROOM_SENSOR: &str = "A4:C1:38:00:00:01";
const HR_STRAP: &str = "C0:FF:EE:00:00:02";
const BP_CUFF: &str = "C0:FF:EE:00:00:03";
const STRANGER: &str = "DE:AD:BE:EF:00:09";

/// `GET /api/v1/bluetooth` from the gateway.
fn bluetooth_status(gw: &Gateway) -> serde_json::Value {
    let addr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    let (status, body) = wait_for(STEP, || crate::support::http_get(addr, "/api/v1/bluetooth"))
        .expect("the daemon serves its API");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// How long a step may take on a loaded two-core machine; every wait polls an
/// observable condition and returns as soon as it holds.
const STEP: Duration = Duration::from_secs(20);

/// BTHome v2, unencrypted: packet id `id`, temperature 25.00 °C.
fn bthome_25c(id: u8) -> String {
    format!("4000{id:02x}02c409")
}

/// Advertises until the gateway is scanning and one advertisement was heard,
/// then waits until its reading is stored. `next_id` keeps packet ids fresh so
/// BTHome's duplicate filter does not drop a retry.
fn advertise_until_stored(bluez: &FakeBluez, gw: &Gateway, next_id: &mut u8, expected: usize) {
    let stored = wait_for(STEP, || {
        *next_id = next_id.wrapping_add(1);
        if bluez.advertise_bthome(ROOM_SENSOR, -58, &bthome_25c(*next_id))
            && gw.wait_readings(ROOM_SENSOR, "temperature", expected, Duration::from_secs(2))
        {
            return Some(());
        }
        None
    });
    assert!(
        stored.is_some(),
        "no temperature reading #{expected} from the room sensor\n{}",
        bluez.log()
    );
}

fn room_gateway(extra: &str) -> Gateway {
    Gateway::new(
        vec![],
        vec![device(
            ROOM_SENSOR,
            DeviceKind::RoomSensor,
            Subject::Room("Room 4".into()),
        )],
        extra,
    )
}

fn stop_cleanly(daemon: crate::support::Daemon) -> String {
    let out = daemon.stop(libc::SIGTERM);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    stderr
}

#[test]
fn bthome_room_sensor_advertising_lands_in_sqlite_for_its_room() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(ROOM_SENSOR, "ATC_room4", &[0xFCD2]);
    let gw = room_gateway("");
    let daemon = gw.run(&bluez);

    let mut id = 0;
    advertise_until_stored(&bluez, &gw, &mut id, 1);
    let readings = gw.readings(ROOM_SENSOR);
    let (resident, room, quantity, value, unit) = &readings[0];
    assert_eq!(
        (
            resident,
            room.as_deref(),
            quantity.as_str(),
            *value,
            unit.as_str()
        ),
        (&None, Some("Room 4"), "temperature", Some(25.0), "Cel")
    );
    stop_cleanly(daemon);
}

#[test]
fn heart_rate_strap_is_connected_subscribed_and_its_notifications_stored() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(HR_STRAP, "Polar H10", &[0x180D, 0x180F]);
    let hr = bluez.add_service(HR_STRAP, 0x180D);
    let measurement = bluez.add_characteristic(&hr, 0x2A37, "notify", "0000");
    let battery = bluez.add_service(HR_STRAP, 0x180F);
    bluez.add_characteristic(&battery, 0x2A19, "read", "5a");
    let gw = Gateway::new(
        vec![resident(1, "Margaret Ellis", "Room 4")],
        vec![device(
            HR_STRAP,
            DeviceKind::HeartRateMonitor,
            Subject::Resident(ResidentId(1)),
        )],
        "",
    );
    let daemon = gw.run(&bluez);

    assert!(
        wait_for(STEP, || bluez.notifying(&measurement).then_some(())).is_some(),
        "carehub never subscribed to the heart rate measurement\n{}",
        bluez.log()
    );
    for bpm in [72u8, 75, 81] {
        // Flags 0x00: 8-bit heart rate, no contact status, no energy, no RR.
        assert!(bluez.notify(&measurement, &format!("00{bpm:02x}")));
    }
    assert!(gw.wait_readings(HR_STRAP, "heart_rate", 3, STEP));
    assert!(gw.wait_readings(HR_STRAP, "battery_level", 1, STEP));
    let readings = gw.readings(HR_STRAP);
    let hr: Vec<_> = readings
        .iter()
        .filter(|r| r.2 == "heart_rate")
        .map(|r| (r.0, r.3, r.4.as_str()))
        .collect();
    assert_eq!(
        hr,
        [
            (Some(1), Some(72.0), "/min"),
            (Some(1), Some(75.0), "/min"),
            (Some(1), Some(81.0), "/min")
        ]
    );
    let battery = readings.iter().find(|r| r.2 == "battery_level").unwrap();
    assert_eq!(
        (battery.0, battery.3, battery.4.as_str()),
        (Some(1), Some(90.0), "%")
    );
    assert_eq!(bluez.connect_count(HR_STRAP), 1);
    stop_cleanly(daemon);
}

#[test]
fn blood_pressure_cuff_indicates_its_stored_measurement_and_leaves_normally() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(BP_CUFF, "BP cuff", &[0x1810]);
    let bp = bluez.add_service(BP_CUFF, 0x1810);
    let measurement = bluez.add_characteristic(&bp, 0x2A35, "indicate", "00");
    // Flags 0x00 (mmHg, no time stamp, no pulse): 120/80, mean 93, as SFLOAT.
    bluez.store_then_disconnect(&measurement, &["00780050005d00"]);
    let gw = Gateway::new(
        vec![resident(2, "Arthur Price", "Room 7")],
        vec![device(
            BP_CUFF,
            DeviceKind::BloodPressureMonitor,
            Subject::Resident(ResidentId(2)),
        )],
        "",
    );
    let daemon = gw.run(&bluez);

    assert!(
        gw.wait_readings(BP_CUFF, "systolic_pressure", 1, STEP),
        "no stored measurement\n{}",
        bluez.log()
    );
    let readings = gw.readings(BP_CUFF);
    let mut got: Vec<_> = readings
        .iter()
        .map(|r| (r.0, r.2.as_str(), r.3, r.4.as_str()))
        .collect();
    got.sort_by(|a, b| a.1.cmp(b.1));
    assert_eq!(
        got,
        [
            (Some(2), "diastolic_pressure", Some(80.0), "mm[Hg]"),
            (Some(2), "mean_arterial_pressure", Some(93.0), "mm[Hg]"),
            (Some(2), "systolic_pressure", Some(120.0), "mm[Hg]"),
        ]
    );
    assert!(
        wait_for(STEP, || (!bluez.connected(BP_CUFF)).then_some(())).is_some(),
        "the cuff should have disconnected itself"
    );
    let stderr = stop_cleanly(daemon);
    assert!(
        stderr.contains("gatt session ended") && stderr.contains("Disconnected"),
        "a spot-check disconnect is a normal end:\n{stderr}"
    );
    assert!(!stderr.contains("gatt session failed"), "{stderr}");
}

/// A registered heart-rate strap with its measurement characteristic; returns
/// the characteristic's path.
fn hr_strap(bluez: &FakeBluez, address: &str) -> String {
    bluez.add_sensor(address, "HR strap", &[0x180D]);
    let hr = bluez.add_service(address, 0x180D);
    bluez.add_characteristic(&hr, 0x2A37, "notify", "0000")
}

#[test]
fn connection_cap_queues_devices_and_links_that_drop_are_reconnected() {
    const OTHER_STRAP: &str = "C0:FF:EE:00:00:04";
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    let chars = [hr_strap(&bluez, HR_STRAP), hr_strap(&bluez, OTHER_STRAP)];
    let addresses = [HR_STRAP, OTHER_STRAP];
    let gw = Gateway::new(
        vec![
            resident(1, "Margaret Ellis", "Room 4"),
            resident(2, "Arthur Price", "Room 7"),
        ],
        vec![
            device(
                HR_STRAP,
                DeviceKind::HeartRateMonitor,
                Subject::Resident(ResidentId(1)),
            ),
            device(
                OTHER_STRAP,
                DeviceKind::HeartRateMonitor,
                Subject::Resident(ResidentId(2)),
            ),
        ],
        "max_connections = 1",
    );
    let daemon = gw.run(&bluez);

    // Both straps are in range from the start; one gets the only slot.
    let first = wait_for(STEP, || (0..2).find(|&i| bluez.notifying(&chars[i])))
        .expect("neither strap was subscribed");
    let second = 1 - first;
    assert!(bluez.notify(&chars[first], "0048"));
    assert!(gw.wait_readings(addresses[first], "heart_rate", 1, STEP));
    assert_eq!(
        bluez.connect_count(addresses[second]),
        0,
        "the second strap was connected while the only slot was taken"
    );

    // The first strap walks away: the waiting one gets the slot.
    bluez.drop_link(addresses[first]);
    assert!(
        wait_for(STEP, || bluez.notifying(&chars[second]).then_some(())).is_some(),
        "the queued strap never got the free slot\n{}",
        bluez.log()
    );
    assert!(bluez.notify(&chars[second], "0050"));
    assert!(gw.wait_readings(addresses[second], "heart_rate", 1, STEP));
    assert_eq!(
        bluez.connect_count(addresses[first]),
        1,
        "the cap of 1 was exceeded"
    );

    // And back: once the slot is free, the first strap is reconnected when it
    // is heard again (a device out of range is not dialled blindly).
    bluez.drop_link(addresses[second]);
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(addresses[first]);
            bluez.notifying(&chars[first]).then_some(())
        })
        .is_some(),
        "the first strap was not reconnected"
    );
    assert_eq!(bluez.connect_count(addresses[first]), 2);
    let readings = gw.readings(addresses[second]);
    assert!(
        readings.iter().all(|r| r.0 == Some(second as i64 + 1)),
        "{readings:?}"
    );
    stop_cleanly(daemon);
}

/// Issue 18: a glucose meter sends nothing until asked over its Record
/// Access Control Point. The session subscribes to the measurement, its
/// context and the RACP, then asks for every stored record; on the next
/// connection it asks only for records from the last one it has on.
#[test]
fn glucose_meter_is_asked_for_its_records_over_racp_and_only_new_ones_again() {
    const METER: &str = "C0:FF:EE:00:00:08";
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(METER, "Glucose meter", &[0x1808]);
    let glucose = bluez.add_service(METER, 0x1808);
    let measurement = bluez.add_characteristic(&glucose, 0x2A18, "notify", "00");
    let context = bluez.add_characteristic(&glucose, 0x2A34, "notify", "00");
    let racp = bluez.add_characteristic(&glucose, 0x2A52, "write,indicate", "00");
    let gw = Gateway::new(
        vec![resident(1, "Margaret Ellis", "Room 4")],
        vec![device(
            METER,
            DeviceKind::GlucoseMeter,
            Subject::Resident(ResidentId(1)),
        )],
        "",
    );
    let daemon = gw.run(&bluez);
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(METER);
            (!bluez.written(&racp).is_empty()).then_some(())
        })
        .is_some(),
        "the meter was never asked for its records\n{}",
        bluez.log()
    );
    // Subscribed to all three before asking: no record is sent to nobody.
    for c in [&measurement, &context, &racp] {
        assert!(bluez.notifying(c), "{c} not subscribed before the request");
    }
    assert_eq!(bluez.written(&racp), ["0101"], "report all stored records");
    // Two records, 95 and 110 mg/dL, sequence numbers 1 and 2.
    assert!(bluez.notify(&measurement, "020100ea070c030900005fb011"));
    assert!(bluez.notify(&measurement, "020200ea070c030a00006eb011"));
    assert!(bluez.notify(&racp, "06000101"));
    assert!(gw.wait_readings(METER, "blood_glucose", 2, STEP));

    bluez.drop_link(METER);
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(METER);
            (bluez.written(&racp).len() >= 2).then_some(())
        })
        .is_some(),
        "the meter was not asked again on its next connection\n{}",
        bluez.log()
    );
    assert_eq!(
        bluez.written(&racp),
        ["0101", "0103010200"],
        "the second request asks for sequence numbers from 2 (the last filed) on"
    );
    // It holds nothing new: the record filed comes again, and is not filed again.
    assert!(bluez.notify(&measurement, "020200ea070c030a00006eb011"));
    assert!(bluez.notify(&racp, "06000101"));
    assert!(
        wait_for(STEP, || (bluez.written(&racp).len() >= 3).then_some(())).is_some(),
        "nothing new: its last record was not asked for\n{}",
        bluez.log()
    );
    assert_eq!(bluez.written(&racp)[2], "0106");
    assert!(bluez.notify(&measurement, "020200ea070c030a00006eb011"));
    assert!(bluez.notify(&racp, "06000101"));
    let got: Vec<(Option<i64>, Option<f64>, String)> = gw
        .readings(METER)
        .into_iter()
        .filter(|r| r.2 == "blood_glucose")
        .map(|r| (r.0, r.3, r.4))
        .collect();
    assert_eq!(
        got,
        [
            (Some(1), Some(95.0), "mg/dL".to_owned()),
            (Some(1), Some(110.0), "mg/dL".to_owned())
        ]
    );
    stop_cleanly(daemon);
}

/// H35: a meter whose memory was cleared holds records 1 and 2 again, taken
/// later than the last record filed (3). Asked for records from 4 it answers
/// "no records found"; the session then asks for its last record (2, below 3:
/// the numbering went back), then for all its records, and the new records
/// are filed once each, beside the three filed before. (The last record is
/// not filed when it first comes: filed before 1, it would make 1 look like a
/// repeat.)
#[test]
fn a_glucose_meter_whose_memory_was_cleared_is_asked_for_all_its_records() {
    const METER: &str = "C0:FF:EE:00:00:08";
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(METER, "Glucose meter", &[0x1808]);
    let glucose = bluez.add_service(METER, 0x1808);
    let measurement = bluez.add_characteristic(&glucose, 0x2A18, "notify", "00");
    bluez.add_characteristic(&glucose, 0x2A34, "notify", "00");
    let racp = bluez.add_characteristic(&glucose, 0x2A52, "write,indicate", "00");
    let gw = Gateway::new(
        vec![resident(1, "Margaret Ellis", "Room 4")],
        vec![device(
            METER,
            DeviceKind::GlucoseMeter,
            Subject::Resident(ResidentId(1)),
        )],
        "",
    );
    let daemon = gw.run(&bluez);
    let asked = |n: usize, what: &str| {
        assert!(
            wait_for(STEP, || {
                bluez.advertise_presence(METER);
                (bluez.written(&racp).len() >= n).then_some(())
            })
            .is_some(),
            "{what}\n{}",
            bluez.log()
        );
    };
    asked(1, "the meter was never asked for its records");
    // Records 1 to 3 (95, 110, 120 mg/dL; 09:00, 10:00, 10:20 by its clock).
    assert!(bluez.notify(&measurement, "020100ea070c030900005fb011"));
    assert!(bluez.notify(&measurement, "020200ea070c030a00006eb011"));
    assert!(bluez.notify(&measurement, "020300ea070c030a140078b011"));
    assert!(bluez.notify(&racp, "06000101"));
    assert!(gw.wait_readings(METER, "blood_glucose", 3, STEP));

    // Its memory is cleared; it holds records 1 and 2 again: 150 mg/dL at
    // 11:00 and 160 mg/dL at 11:05.
    let new_1 = "020100ea070c030b000096b011";
    let new_2 = "020200ea070c030b0500a0b011";
    bluez.drop_link(METER);
    asked(2, "the meter was not asked again on its next connection");
    assert!(bluez.notify(&racp, "06000106"));
    asked(3, "no 'last record' question after 'no records found'");
    assert_eq!(bluez.written(&racp)[1..3], ["0103010300", "0106"]);
    assert!(bluez.notify(&measurement, new_2));
    assert!(bluez.notify(&racp, "06000101"));
    asked(
        4,
        "no 'all records' question after a last record below the one filed",
    );
    assert_eq!(bluez.written(&racp)[3], "0101");
    assert!(bluez.notify(&measurement, new_1));
    assert!(bluez.notify(&measurement, new_2));
    assert!(bluez.notify(&racp, "06000101"));
    assert!(gw.wait_readings(METER, "blood_glucose", 5, STEP));
    let got: Vec<(Option<i64>, Option<f64>, String)> = gw
        .readings(METER)
        .into_iter()
        .filter(|r| r.2 == "blood_glucose")
        .map(|r| (r.0, r.3, r.4))
        .collect();
    assert_eq!(
        got,
        [
            (Some(1), Some(95.0), "mg/dL".to_owned()),
            (Some(1), Some(110.0), "mg/dL".to_owned()),
            (Some(1), Some(120.0), "mg/dL".to_owned()),
            (Some(1), Some(150.0), "mg/dL".to_owned()),
            (Some(1), Some(160.0), "mg/dL".to_owned())
        ]
    );
    stop_cleanly(daemon);
}

/// A Glucose Measurement value in hex: number, base time (year, month, day,
/// hour, minute), mg/dL (kg/L, exponent -5), capillary blood, finger.
fn glucose_hex(sequence: u16, (y, mo, d, h, mi): (u16, u8, u8, u8, u8), mgdl: u16) -> String {
    let mut v = vec![0x02];
    v.extend_from_slice(&sequence.to_le_bytes());
    v.extend_from_slice(&y.to_le_bytes());
    v.extend_from_slice(&[mo, d, h, mi, 0]);
    v.extend_from_slice(&(0xB000u16 | mgdl).to_le_bytes());
    v.push(0x11);
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// H35's residual: the meter's memory is cleared AND its clock reset (to
/// 2000-01-01, with the battery), and it holds records 1 to 3 again: the
/// same numbers as those filed, and "taken" before them. Asked from 3 on,
/// it sends its 3, not the 3 filed: the numbering went back, the meter is
/// asked for all its records, the new ones are filed once each, and the renumbering is
/// kept for staff (the technical alert's source and the pairing record).
/// Fails with the rule by base time: the last record was taken for the
/// filed 3, the new ones for repeats.
#[test]
fn a_glucose_meter_renumbered_with_its_clock_reset_has_its_new_records_filed() {
    const METER: &str = "C0:FF:EE:00:00:08";
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(METER, "Glucose meter", &[0x1808]);
    let glucose = bluez.add_service(METER, 0x1808);
    let measurement = bluez.add_characteristic(&glucose, 0x2A18, "notify", "00");
    bluez.add_characteristic(&glucose, 0x2A34, "notify", "00");
    let racp = bluez.add_characteristic(&glucose, 0x2A52, "write,indicate", "00");
    let gw = Gateway::new(
        vec![resident(1, "Margaret Ellis", "Room 4")],
        vec![device(
            METER,
            DeviceKind::GlucoseMeter,
            Subject::Resident(ResidentId(1)),
        )],
        "",
    );
    let daemon = gw.run(&bluez);
    let asked = |n: usize, what: &str| {
        assert!(
            wait_for(STEP, || {
                bluez.advertise_presence(METER);
                (bluez.written(&racp).len() >= n).then_some(())
            })
            .is_some(),
            "{what}\n{}",
            bluez.log()
        );
    };
    asked(1, "the meter was never asked for its records");
    for n in 1..=3u8 {
        let value = glucose_hex(n.into(), (2026, 12, 3, 9, 10 * n), 90 + u16::from(n));
        assert!(bluez.notify(&measurement, &value));
    }
    assert!(bluez.notify(&racp, "06000101"));
    assert!(gw.wait_readings(METER, "blood_glucose", 3, STEP));

    let new: Vec<String> = (1..=3u8)
        .map(|n| glucose_hex(n.into(), (2000, 1, 1, 0, 5 * n), 140 + 10 * u16::from(n)))
        .collect();
    bluez.drop_link(METER);
    asked(2, "the meter was not asked again on its next connection");
    assert_eq!(
        bluez.written(&racp)[1],
        "0103010300",
        "from 3, the last filed, on"
    );
    // Its record 3 is not the 3 filed.
    assert!(bluez.notify(&measurement, &new[2]));
    assert!(bluez.notify(&racp, "06000101"));
    asked(
        3,
        "no 'all records' question after a record at the number filed that is not the record filed",
    );
    assert_eq!(bluez.written(&racp)[2], "0101");
    for value in &new {
        assert!(bluez.notify(&measurement, value));
    }
    assert!(bluez.notify(&racp, "06000101"));
    assert!(gw.wait_readings(METER, "blood_glucose", 6, STEP));
    let got: Vec<(Option<f64>, String)> = gw
        .readings(METER)
        .into_iter()
        .filter(|r| r.2 == "blood_glucose")
        .map(|r| (r.3, r.4))
        .collect();
    let mgdl = |v: f64| (Some(v), "mg/dL".to_owned());
    assert_eq!(
        got,
        [
            mgdl(91.0),
            mgdl(92.0),
            mgdl(93.0),
            mgdl(150.0),
            mgdl(160.0),
            mgdl(170.0)
        ]
    );
    let db = gw.db();
    let from: Option<i64> = db
        .query_row(
            "SELECT racp_renumbered_sequence FROM devices WHERE address = ?1",
            [METER],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        from,
        Some(1),
        "the renumbering kept for the technical alert"
    );
    let told: i64 = db
        .query_row(
            "SELECT count(*) FROM pairing_events WHERE device = ?1 AND who = 'gateway'
             AND what LIKE 'the meter''s record numbering started again at 1 %'",
            [METER],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(told, 1, "the pairing record's line");
    stop_cleanly(daemon);
}

/// Issue 18: more devices than `max_connections`, and the one connected
/// never leaves (a continuous strap): the waiting device is still served, in
/// its turn, because a session that has held its slot for `SLOT_SHARE` while
/// others wait gives it up and queues again behind them.
#[test]
fn a_device_that_never_disconnects_gives_its_slot_to_one_that_waits() {
    const OTHER_STRAP: &str = "C0:FF:EE:00:00:04";
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    let chars = [hr_strap(&bluez, HR_STRAP), hr_strap(&bluez, OTHER_STRAP)];
    let addresses = [HR_STRAP, OTHER_STRAP];
    let gw = Gateway::new(
        vec![
            resident(1, "Margaret Ellis", "Room 4"),
            resident(2, "Arthur Price", "Room 7"),
        ],
        vec![
            device(
                HR_STRAP,
                DeviceKind::HeartRateMonitor,
                Subject::Resident(ResidentId(1)),
            ),
            device(
                OTHER_STRAP,
                DeviceKind::HeartRateMonitor,
                Subject::Resident(ResidentId(2)),
            ),
        ],
        "max_connections = 1",
    );
    let daemon = gw.run(&bluez);
    let first = wait_for(STEP, || (0..2).find(|&i| bluez.notifying(&chars[i])))
        .expect("neither strap was subscribed");
    let second = 1 - first;
    // The second strap keeps advertising; the first never hangs up. Within
    // the share (30 s) and a link check, the second gets the slot.
    let share = carehub::ble::session::SLOT_SHARE + STEP;
    assert!(
        wait_for(share, || {
            bluez.advertise_presence(addresses[second]);
            bluez.notifying(&chars[second]).then_some(())
        })
        .is_some(),
        "the waiting strap was never served\n{}",
        bluez.log()
    );
    assert!(bluez.notify(&chars[second], "0050"));
    assert!(gw.wait_readings(addresses[second], "heart_rate", 1, STEP));
    // Never both at once: the first gave its link up before the second got one.
    assert!(
        !bluez.connected(addresses[first]),
        "the cap of 1 was exceeded"
    );
    // And the first is served again in its turn.
    assert!(
        wait_for(share, || {
            bluez.advertise_presence(addresses[first]);
            (bluez.connect_count(addresses[first]) >= 2 && bluez.notifying(&chars[first]))
                .then_some(())
        })
        .is_some(),
        "the first strap never got its turn back\n{}",
        bluez.log()
    );
    let stderr = stop_cleanly(daemon);
    assert!(stderr.contains("giving this one up for a turn"), "{stderr}");
}

/// Issue 18 (found in the virtual lab's more_devices_than_slots once its
/// emulated controller kept to the specification): a session that gives its
/// slot up asks BlueZ to disconnect, and BlueZ asks the kernel only some
/// 2.5 s later. Handing the slot on after a short wait put a third link on a
/// controller meant to hold two. The slot goes to the waiting device only
/// once the yielded link is down (here the fake's links go down 2 s after
/// `Disconnect` has returned).
#[test]
fn a_yielded_slot_is_given_on_only_once_the_link_is_down() {
    const OTHER_STRAP: &str = "C0:FF:EE:00:00:04";
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    let chars = [hr_strap(&bluez, HR_STRAP), hr_strap(&bluez, OTHER_STRAP)];
    let addresses = [HR_STRAP, OTHER_STRAP];
    for a in addresses {
        bluez.slow_disconnect(a, 2000);
    }
    let gw = Gateway::new(
        vec![
            resident(1, "Margaret Ellis", "Room 4"),
            resident(2, "Arthur Price", "Room 7"),
        ],
        vec![
            device(
                HR_STRAP,
                DeviceKind::HeartRateMonitor,
                Subject::Resident(ResidentId(1)),
            ),
            device(
                OTHER_STRAP,
                DeviceKind::HeartRateMonitor,
                Subject::Resident(ResidentId(2)),
            ),
        ],
        "max_connections = 1",
    );
    let daemon = gw.run(&bluez);
    let first = wait_for(STEP, || (0..2).find(|&i| bluez.notifying(&chars[i])))
        .expect("neither strap was subscribed");
    let second = 1 - first;
    let share = carehub::ble::session::SLOT_SHARE + STEP;
    assert!(
        wait_for(share, || {
            bluez.advertise_presence(addresses[second]);
            bluez.notifying(&chars[second]).then_some(())
        })
        .is_some(),
        "the waiting strap was never served\n{}",
        bluez.log()
    );
    assert!(bluez.notify(&chars[second], "0050"));
    assert!(gw.wait_readings(addresses[second], "heart_rate", 1, STEP));
    assert_eq!(
        bluez.most_links(),
        1,
        "the yielded link was still up when the waiting strap was connected\n{}",
        bluez.log()
    );
    let stderr = stop_cleanly(daemon);
    assert!(stderr.contains("giving this one up for a turn"), "{stderr}");
}

/// Issue 18 (found in the virtual lab): real BlueZ restores a bonded
/// device's subscriptions when it reconnects, and a spot-check device then
/// indicates what it stored at once, before the session has subscribed, and
/// hangs up. The session's value stream is open before it connects, and what
/// arrived is passed on even though the session ends while setting up.
#[test]
fn a_value_sent_before_the_session_subscribes_is_not_lost() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(BP_CUFF, "BP cuff", &[0x1810]);
    let bp = bluez.add_service(BP_CUFF, 0x1810);
    let measurement = bluez.add_characteristic(&bp, 0x2A35, "indicate", "00");
    let gw = Gateway::new(
        vec![resident(2, "Arthur Price", "Room 7")],
        vec![device(
            BP_CUFF,
            DeviceKind::BloodPressureMonitor,
            Subject::Resident(ResidentId(2)),
        )],
        "",
    );
    let daemon = gw.run(&bluez);
    // A first session, as after pairing: subscribed, then the cuff leaves.
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(BP_CUFF);
            bluez.notifying(&measurement).then_some(())
        })
        .is_some(),
        "the cuff was never subscribed\n{}",
        bluez.log()
    );
    bluez.drop_link(BP_CUFF);
    // It comes back with a stored 120/80/93 mmHg and sends it the moment the
    // link is up.
    bluez.indicate_on_reconnect(&measurement, &["00780050005d00"]);
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(BP_CUFF);
            (bluez.connect_count(BP_CUFF) >= 2).then_some(())
        })
        .is_some(),
        "the cuff was not reconnected"
    );
    assert!(
        gw.wait_readings(BP_CUFF, "systolic_pressure", 1, STEP),
        "the measurement sent before the subscription was lost\n{}",
        bluez.log()
    );
    stop_cleanly(daemon);
}

#[test]
fn unknown_device_is_observed_never_connected_and_nothing_attributed() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(ROOM_SENSOR, "ATC_room4", &[0xFCD2]);
    // A heart-rate strap nobody registered, advertising a health service and data.
    bluez.add_sensor(STRANGER, "Someone's strap", &[0x180D, 0xFCD2]);
    let hr = bluez.add_service(STRANGER, 0x180D);
    bluez.add_characteristic(&hr, 0x2A37, "notify", "0048");
    let gw = room_gateway("");
    let daemon = gw.run(&bluez);

    let mut id = 0;
    for _ in 0..3 {
        wait_for(STEP, || {
            bluez
                .advertise_bthome(STRANGER, -70, &bthome_25c(id))
                .then_some(())
        })
        .expect("gateway scanning");
        id += 1;
    }
    // The registered sensor's reading lands after the stranger's adverts were
    // sent: the gateway heard them and had every chance to act on them.
    advertise_until_stored(&bluez, &gw, &mut id, 1);
    let stderr = stop_cleanly(daemon);

    assert_eq!(
        bluez.connect_count(STRANGER),
        0,
        "connected to an unregistered device"
    );
    assert!(gw.readings(STRANGER).is_empty());
    let db = gw.db();
    let unattributed: i64 = db
        .query_row(
            "SELECT count(*) FROM readings_text WHERE device = ?1",
            [crate::ble_support::address_bytes(STRANGER)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unattributed, 0);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(STRANGER) && l.contains("observed only")),
        "{stderr}"
    );
}

#[test]
fn silent_discovery_is_restarted() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(ROOM_SENSOR, "ATC_room4", &[0xFCD2]);
    let gw = room_gateway("silence_restart_s = 1");
    let daemon = gw.run(&bluez);

    let mut id = 0;
    advertise_until_stored(&bluez, &gw, &mut id, 1);
    // BlueZ stops scanning without telling anyone that matters.
    bluez.stop_scanning();
    advertise_until_stored(&bluez, &gw, &mut id, 2);
    let status = bluetooth_status(&gw);
    assert!(
        status["discovery_restarts"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status["scanning"], true, "{status}");
    let stderr = stop_cleanly(daemon);
    assert!(stderr.contains("restarting discovery"), "{stderr}");
}

#[test]
fn adapter_vanishing_and_returning_is_recovered() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(ROOM_SENSOR, "ATC_room4", &[0xFCD2]);
    let gw = room_gateway("");
    let daemon = gw.run(&bluez);

    let mut id = 0;
    advertise_until_stored(&bluez, &gw, &mut id, 1);
    bluez.remove_adapter();
    bluez.add_adapter();
    bluez.add_sensor(ROOM_SENSOR, "ATC_room4", &[0xFCD2]);
    advertise_until_stored(&bluez, &gw, &mut id, 2);
    let status = bluetooth_status(&gw);
    assert!(status["adapter_losses"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["scanning"], true, "{status}");
    let stderr = stop_cleanly(daemon);
    assert!(stderr.contains("adapter hci0 disappeared"), "{stderr}");
}

#[test]
fn bluetoothd_restart_is_recovered() {
    let mut bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(ROOM_SENSOR, "ATC_room4", &[0xFCD2]);
    let gw = room_gateway("");
    let daemon = gw.run(&bluez);

    let mut id = 0;
    advertise_until_stored(&bluez, &gw, &mut id, 1);
    bluez.stop_bluez();
    bluez.start_bluez();
    bluez.add_adapter();
    bluez.add_sensor(ROOM_SENSOR, "ATC_room4", &[0xFCD2]);
    advertise_until_stored(&bluez, &gw, &mut id, 2);
    let status = bluetooth_status(&gw);
    assert!(status["bluez_restarts"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["scanning"], true, "{status}");
    let stderr = stop_cleanly(daemon);
    assert!(stderr.contains("bluetoothd restarted"), "{stderr}");
}

#[test]
fn allow_listed_device_pairs_and_an_unknown_one_is_refused_outside_a_window() {
    const ALLOWED: &str = "00:09:1F:80:12:34";
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(ALLOWED, "UA-651BLE", &[0x1810]);
    bluez.add_sensor(STRANGER, "Someone's strap", &[0x180D]);
    let gw = Gateway::new(
        vec![],
        vec![],
        &format!("allow = [\"{ALLOWED}=UA-651BLE\"]"),
    );
    let daemon = gw.run(&bluez);

    assert!(
        wait_for(STEP, || bluez.paired(ALLOWED).then_some(())).is_some(),
        "the allow-listed cuff was not paired\n{}",
        bluez.log()
    );
    // Both devices were known from the first moment; the stranger was heard too.
    let stranger_heard = wait_for(STEP, || {
        bluez.advertise_presence(STRANGER);
        let (_, body) = crate::support::http_get(
            format!("127.0.0.1:{}", gw.port).parse().unwrap(),
            "/api/v1/pairing",
        )?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["nearby"]
            .as_array()?
            .iter()
            .find(|d| d["address"] == STRANGER)
            .cloned()
    })
    .expect("the stranger is listed as nearby");
    assert_eq!(stranger_heard["registered"], false);
    assert_eq!(stranger_heard["paired"], false);
    assert!(!bluez.paired(STRANGER), "bonded with a device nobody chose");

    // BlueZ asking the agent: the allow-listed device yes, the stranger no.
    assert_eq!(bluez.ask_agent(ALLOWED), Ok(()));
    let refused = bluez.ask_agent(STRANGER).unwrap_err();
    assert!(refused.contains("org.bluez.Error.Rejected"), "{refused}");

    // Paired is not assigned: nothing from either device is stored.
    assert_eq!(bluez.connect_count(ALLOWED), 0);
    assert!(gw.readings(ALLOWED).is_empty());
    let stderr = stop_cleanly(daemon);
    assert!(stderr.contains("pairing agent registered"), "{stderr}");
}

/// Real BlueZ makes the adapter bondable when an agent registers, and the
/// kernel then starts pairing with any connected device that asks (SMP
/// Security Request), leaving only the agent's answer between a stranger and
/// a bond (the virtual lab's `stranger_refused_with_carehub` shows it). So
/// carehub keeps the adapter not pairable except inside a window, and lets
/// BlueZ end it by itself (`PairableTimeout`) should carehub be killed first.
/// The fake's adapter starts pairable, as BlueZ's is once the agent is
/// registered.
#[test]
fn adapter_is_pairable_only_while_a_window_is_open() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    assert_eq!(bluez.pairable(), (true, 0), "the fake starts as BlueZ does");
    let gw = Gateway::new(vec![], vec![], "");
    let daemon = gw.run(&bluez);
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();

    assert!(
        wait_for(STEP, || (!bluez.pairable().0).then_some(())).is_some(),
        "carehub left the adapter pairable with no window open\n{}",
        bluez.log()
    );
    let (status, body) = wait_for(STEP, || {
        http_json(web, "POST", "/api/v1/pairing/window", r#"{"seconds": 60}"#)
    })
    .expect("the daemon serves its API");
    assert_eq!(status, 200, "{body}");
    let (on, timeout) = wait_for(STEP, || Some(bluez.pairable()).filter(|p| p.0))
        .expect("the window did not make the adapter pairable");
    assert!(
        on && (1..=60).contains(&timeout),
        "PairableTimeout {timeout}"
    );

    let (status, body) = http(web, "DELETE", "/api/v1/pairing/window").unwrap();
    assert!(status == 200 || status == 204, "{status} {body}");
    assert!(
        wait_for(STEP, || (!bluez.pairable().0).then_some(())).is_some(),
        "closing the window left the adapter pairable"
    );
    stop_cleanly(daemon);
}

#[test]
fn carehub_pair_opens_a_window_in_which_a_new_device_pairs() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(STRANGER, "New strap", &[0x180D]);
    let gw = Gateway::new(vec![], vec![], "");
    let daemon = gw.run(&bluez);
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    let pairing = || -> Option<serde_json::Value> {
        let (status, body) = crate::support::http_get(web, "/api/v1/pairing")?;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    };

    // Heard, listed, not paired while no window is open.
    let listed = wait_for(STEP, || {
        bluez.advertise_presence(STRANGER);
        let v = pairing()?;
        v["nearby"]
            .as_array()?
            .iter()
            .any(|d| d["address"] == STRANGER)
            .then_some(v)
    })
    .expect("the new strap is listed as nearby");
    assert_eq!(listed["window"]["open"], false);
    assert!(!bluez.paired(STRANGER));

    let out = crate::support::carehub()
        .args([
            "pair",
            "--window",
            "60",
            "--web",
            &web.to_string(),
            "--plain-http",
        ])
        .arg("--state-dir")
        .arg(gw.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["open"], true, "{answer}");

    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(STRANGER);
            bluez.paired(STRANGER).then_some(())
        })
        .is_some(),
        "not paired inside the window\n{}",
        bluez.log()
    );
    let v = wait_for(STEP, || {
        let v = pairing()?;
        let d = v["nearby"]
            .as_array()?
            .iter()
            .find(|d| d["address"] == STRANGER)?
            .clone();
        (d["paired"] == true).then_some(v)
    })
    .expect("the API shows the strap paired");
    let events: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"window opened for 60 s"), "{events:?}");
    assert!(
        events.iter().any(|e| e.starts_with("paired and trusted")),
        "{events:?}"
    );
    let (_, page) = crate::support::http_get(web, "/pairing").unwrap();
    assert!(
        page.contains(STRANGER) && page.contains("paired, not assigned"),
        "{page}"
    );
    // Paired, but assigned to nobody: no session, no readings.
    assert_eq!(bluez.connect_count(STRANGER), 0);
    assert!(gw.readings(STRANGER).is_empty());

    // Un-pairing removes the bond from BlueZ and is recorded.
    let path = format!("/api/v1/pairing/devices/{STRANGER}");
    let (status, body) = http(web, "DELETE", &path).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["removed"],
        true
    );
    assert!(!bluez.paired(STRANGER), "the bond is still in BlueZ");
    let v = pairing().unwrap();
    assert_eq!(
        v["events"].as_array().unwrap().last().unwrap()["what"],
        "bond removed"
    );
    let (status, _) = http(web, "DELETE", "/api/v1/pairing/devices/not-an-address").unwrap();
    assert_eq!(status, 400);

    let refused = crate::support::carehub()
        .args([
            "pair",
            "--window",
            "0",
            "--web",
            &web.to_string(),
            "--plain-http",
        ])
        .arg("--state-dir")
        .arg(gw.dir.path())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("1 to 600 seconds"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    stop_cleanly(daemon);
}

#[test]
fn a_device_already_connected_at_start_is_subscribed_not_reconnected() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    let measurement = hr_strap(&bluez, HR_STRAP);
    bluez.connect_now(HR_STRAP);
    let gw = Gateway::new(
        vec![resident(1, "Margaret Ellis", "Room 4")],
        vec![device(
            HR_STRAP,
            DeviceKind::HeartRateMonitor,
            Subject::Resident(ResidentId(1)),
        )],
        "",
    );
    let daemon = gw.run(&bluez);
    assert!(
        wait_for(STEP, || bluez.notifying(&measurement).then_some(())).is_some(),
        "the connected strap was never subscribed\n{}",
        bluez.log()
    );
    assert!(bluez.notify(&measurement, "0042"));
    assert!(gw.wait_readings(HR_STRAP, "heart_rate", 1, STEP));
    assert_eq!(bluez.connect_count(HR_STRAP), 1, "connected again");
    let stderr = stop_cleanly(daemon);
    assert!(!stderr.contains("gatt session failed"), "{stderr}");
}

#[test]
fn passkey_typed_by_staff_reaches_bluez_only_inside_a_window() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(STRANGER, "BP cuff with display", &[0x1810]);
    let gw = Gateway::new(vec![], vec![], "");
    let daemon = gw.run(&bluez);
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();

    // Outside a window BlueZ's passkey question is refused at once.
    let refused = wait_for(STEP, || {
        bluez
            .call_agent("RequestPasskey", STRANGER)
            .err()
            .filter(|e| e.contains("org.bluez.Error"))
    })
    .expect("the agent is registered and answers");
    assert!(refused.contains("org.bluez.Error.Rejected"), "{refused}");

    let (status, body) = wait_for(STEP, || {
        http_json(web, "POST", "/api/v1/pairing/window", r#"{"seconds": 60}"#)
    })
    .expect("the daemon serves its API");
    assert_eq!(status, 200, "{body}");
    std::thread::scope(|s| {
        let asked = s.spawn(|| bluez.call_agent("RequestPasskey", STRANGER));
        // The question waits for staff; the pairing page lists it.
        wait_for(STEP, || {
            let (_, body) = crate::support::http_get(web, "/api/v1/pairing")?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v["passkey_requests"]
                .as_array()?
                .iter()
                .any(|r| r["address"] == STRANGER)
                .then_some(())
        })
        .expect("the passkey request is listed");
        let (_, page) = crate::support::http_get(web, "/pairing").unwrap();
        assert!(page.contains("shows a 6-digit number"), "{page}");
        let (status, body) = http_json(
            web,
            "POST",
            "/api/v1/pairing/passkey",
            &format!(r#"{{"address": "{STRANGER}", "passkey": 123456}}"#),
        )
        .unwrap();
        assert_eq!(status, 204, "{body}");
        let answer = asked.join().unwrap().expect("BlueZ got an answer");
        assert!(answer.contains("123456"), "{answer}");
    });
    // Answered once; a second answer has no question to go to.
    let (status, _) = http_json(
        web,
        "POST",
        "/api/v1/pairing/passkey",
        &format!(r#"{{"address": "{STRANGER}", "passkey": 123456}}"#),
    )
    .unwrap();
    assert_eq!(status, 404);
    let (status, _) = http_json(
        web,
        "POST",
        "/api/v1/pairing/passkey",
        &format!(r#"{{"address": "{STRANGER}", "passkey": 1234567}}"#),
    )
    .unwrap();
    assert_eq!(status, 422);
    stop_cleanly(daemon);
}

/// Issue 18: numeric comparison is shown to staff with its number and
/// waits for them; it is never accepted by the gateway on its own, also
/// inside a window. Rejected, BlueZ is told no; confirmed, BlueZ is told yes.
#[test]
fn numeric_comparison_waits_for_staff_and_is_never_accepted_alone() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(STRANGER, "Scale with display", &[0x181D]);
    let gw = Gateway::new(vec![], vec![], "");
    let daemon = gw.run(&bluez);
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    let ask = || bluez.call_agent_with("RequestConfirmation", STRANGER, &["uint32:4321"]);

    // Outside a window the question is refused at once.
    let refused = wait_for(STEP, || {
        ask().err().filter(|e| e.contains("org.bluez.Error"))
    })
    .expect("the agent is registered and answers");
    assert!(refused.contains("org.bluez.Error.Rejected"), "{refused}");

    let (status, body) = wait_for(STEP, || {
        http_json(web, "POST", "/api/v1/pairing/window", r#"{"seconds": 60}"#)
    })
    .expect("the daemon serves its API");
    assert_eq!(status, 200, "{body}");
    let listed = || {
        let (_, body) = crate::support::http_get(web, "/api/v1/pairing")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["confirm_requests"]
            .as_array()?
            .iter()
            .find(|r| r["address"] == STRANGER)
            .cloned()
    };
    for accept in [false, true] {
        std::thread::scope(|s| {
            let asked = s.spawn(ask);
            let request = wait_for(STEP, listed).expect("the comparison is listed for staff");
            assert_eq!(request["number"], 4321, "{request}");
            assert!(request["since"].is_string(), "{request}");
            // Listed means held: BlueZ has had no answer of the gateway's own.
            assert!(!asked.is_finished(), "answered without staff");
            let (status, body) = http_json(
                web,
                "POST",
                "/api/v1/pairing/confirm",
                &format!(r#"{{"address": "{STRANGER}", "accept": {accept}}}"#),
            )
            .unwrap();
            assert_eq!(status, 204, "{body}");
            let answer = asked.join().unwrap();
            if accept {
                answer.expect("BlueZ was told yes");
            } else {
                let e = answer.expect_err("BlueZ was told no");
                assert!(e.contains("org.bluez.Error.Rejected"), "{e}");
            }
        });
        assert!(listed().is_none(), "still listed once answered");
    }
    // Unanswered until BlueZ gives up (Cancel): no longer listed, and the
    // record says that nothing bonded.
    std::thread::scope(|s| {
        let asked = s.spawn(ask);
        wait_for(STEP, listed).expect("the comparison is listed for staff");
        bluez
            .call_agent("Cancel", STRANGER)
            .expect("the agent takes BlueZ's Cancel");
        let e = asked.join().unwrap().expect_err("nothing accepted it");
        assert!(e.contains("org.bluez.Error.Rejected"), "{e}");
    });
    assert!(listed().is_none(), "still listed once BlueZ gave up");
    wait_for(STEP, || {
        let (_, events) = crate::support::http_get(web, "/api/v1/pairing")?;
        events
            .contains("pairing cancelled before staff answered: no bond")
            .then_some(())
    })
    .expect("the cancelled comparison is recorded");
    // Answered: a second answer has no question to go to.
    let (status, _) = http_json(
        web,
        "POST",
        "/api/v1/pairing/confirm",
        &format!(r#"{{"address": "{STRANGER}", "accept": true}}"#),
    )
    .unwrap();
    assert_eq!(status, 404);
    let (status, _) = http_json(
        web,
        "POST",
        "/api/v1/pairing/confirm",
        r#"{"address": "not an address", "accept": true}"#,
    )
    .unwrap();
    assert_eq!(status, 400);
    // Both answers are in the record, with the number.
    wait_for(STEP, || {
        let (_, events) = crate::support::http_get(web, "/api/v1/pairing")?;
        (events.contains("number 004321 rejected by staff")
            && events.contains("number 004321 confirmed by staff"))
        .then_some(())
    })
    .expect("staff's answers are recorded");
    stop_cleanly(daemon);
}

#[test]
fn a_device_paired_in_a_window_delivers_readings_once_assigned_to_a_resident() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    let measurement = hr_strap(&bluez, STRANGER);
    let gw = Gateway::new(vec![resident(3, "Edith Moore", "Room 9")], vec![], "");
    let daemon = gw.run(&bluez);
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();

    // The first request also waits for the daemon to listen.
    let (status, body) = wait_for(STEP, || {
        http_json(web, "POST", "/api/v1/pairing/window", r#"{"seconds": 60}"#)
    })
    .expect("the daemon serves its API");
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(STRANGER);
            bluez.paired(STRANGER).then_some(())
        })
        .is_some(),
        "not paired inside the window"
    );
    assert_eq!(
        bluez.connect_count(STRANGER),
        0,
        "connected before assignment"
    );

    let path = format!("/api/v1/devices/{STRANGER}/assignment");
    let (status, _) = http_json(web, "PUT", &path, r#"{"resident_id": 99}"#).unwrap();
    assert_eq!(status, 404, "no such resident");
    let (status, _) = http_json(web, "PUT", &path, r#"{"resident_id": 3, "room": "x"}"#).unwrap();
    assert_eq!(status, 422);
    let (status, body) = http_json(web, "PUT", &path, r#"{"resident_id": 3}"#).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kind"], "heart_rate_monitor", "{v}");

    // Assigned: the next time the strap is heard it is connected and its
    // values are the resident's.
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(STRANGER);
            bluez.notifying(&measurement).then_some(())
        })
        .is_some(),
        "the assigned strap was not connected\n{}",
        bluez.log()
    );
    assert!(bluez.notify(&measurement, "0046"));
    assert!(gw.wait_readings(STRANGER, "heart_rate", 1, STEP));
    let r = &gw.readings(STRANGER)[0];
    assert_eq!((r.0, r.3), (Some(3), Some(70.0)));
    let stderr = stop_cleanly(daemon);
    assert!(stderr.contains("assigned to resident 3"), "{stderr}");

    // The assignment is in the registry table, so it survives a restart.
    let (kind, resident): (String, i64) = gw
        .db()
        .query_row(
            "SELECT kind, resident_id FROM devices WHERE address = ?1",
            [STRANGER],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((kind.as_str(), resident), ("heart_rate_monitor", 3));
}

/// BTHome v2 encrypted with `key` by the sensor: packet id `id`, temperature
/// `centi` hundredths of a degree, encryption counter `counter`.
fn bthome_encrypted(key: &[u8; 16], counter: u32, id: u8, centi: u16) -> String {
    let address: carehub::model::DeviceAddress = ROOM_SENSOR.parse().unwrap();
    let [lo, hi] = centi.to_le_bytes();
    let plain = [0x40, 0x00, id, 0x02, lo, hi];
    let data = carehub::decode::bthome::encrypt(address, key, &plain, counter).unwrap();
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Temperatures stored from the room sensor, in order.
fn temperatures(gw: &Gateway) -> Vec<f64> {
    gw.readings(ROOM_SENSOR)
        .iter()
        .filter(|r| r.2 == "temperature")
        .filter_map(|r| r.3)
        .collect()
}

/// Advertises the frame until one more temperature is stored than `before`.
fn advertise_encrypted_until_stored(bluez: &FakeBluez, gw: &Gateway, frame: &str, before: usize) {
    let stored = wait_for(STEP, || {
        (bluez.advertise_bthome(ROOM_SENSOR, -58, frame)
            && gw.wait_readings(
                ROOM_SENSOR,
                "temperature",
                before + 1,
                Duration::from_secs(2),
            ))
        .then_some(())
    });
    assert!(
        stored.is_some(),
        "the encrypted advertisement was not stored\n{}",
        bluez.log()
    );
}

#[test]
fn an_encrypted_sensor_is_read_once_given_its_key_and_a_replay_after_restart_is_refused() {
    const KEY: [u8; 16] = *b"carehub-test-key";
    let key_hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(ROOM_SENSOR, "ATC_000001", &[0xFCD2]);
    let gw = room_gateway("");
    let web = format!("127.0.0.1:{}", gw.port).parse().unwrap();

    let daemon = gw.run(&bluez);
    // Without its key nothing the sensor sends can be read: counted as a decode
    // error, nothing stored.
    let no_key = bthome_encrypted(&KEY, 10, 1, 2150);
    wait_for(STEP, || {
        bluez.advertise_bthome(ROOM_SENSOR, -58, &no_key);
        (decode_errors(web)? >= 1.0).then_some(())
    })
    .expect("the frame without a key is heard and not decoded");
    let path = format!("/api/v1/devices/{ROOM_SENSOR}/key");
    let (status, body) = wait_for(STEP, || {
        http_json(web, "PUT", &path, &format!(r#"{{"key": "{key_hex}"}}"#))
    })
    .expect("the daemon serves its API");
    assert_eq!(status, 204, "{body}");
    assert!(
        temperatures(&gw).is_empty(),
        "stored before the key was given"
    );

    // With it, frames with a rising counter are readings.
    advertise_encrypted_until_stored(&bluez, &gw, &bthome_encrypted(&KEY, 11, 2, 2150), 0);
    let captured = bthome_encrypted(&KEY, 12, 3, 2200);
    advertise_encrypted_until_stored(&bluez, &gw, &captured, 1);
    assert_eq!(temperatures(&gw), [21.5, 22.0]);
    stop_cleanly(daemon);

    // After a restart the captured frame (counter 12) is a replay: sent again and
    // again it is refused, and the next real frame is stored after it.
    let daemon = gw.run(&bluez);
    wait_for(STEP, || {
        bluez
            .advertise_bthome(ROOM_SENSOR, -58, &captured)
            .then_some(())
    })
    .expect("gateway scanning after the restart");
    for _ in 0..5 {
        bluez.advertise_bthome(ROOM_SENSOR, -58, &captured);
    }
    advertise_encrypted_until_stored(&bluez, &gw, &bthome_encrypted(&KEY, 13, 4, 2300), 2);
    let stderr = stop_cleanly(daemon);
    assert_eq!(
        temperatures(&gw),
        [21.5, 22.0, 23.0],
        "a replayed frame was stored\n{stderr}"
    );
    assert!(stderr.contains("replayed counter 12"), "{stderr}");
}

/// `carehub_decode_errors_total` from the gateway's /metrics.
fn decode_errors(web: std::net::SocketAddr) -> Option<f64> {
    let (status, body) = crate::support::http_get(web, "/metrics")?;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("carehub_decode_errors_total "))
        .and_then(|v| v.trim().parse().ok())
}
