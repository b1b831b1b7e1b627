//! The guided pairing flow in a real browser: the real `carehub run` on the fake
//! BlueZ (`ble_support`), Debian's Chromium over WebDriver (`browser_support`).
//! A member of staff opens the flow with one button and pairs and assigns a new
//! heart-rate strap, typing the number it shows; the test counts the taps.

use std::time::Duration;

use serde_json::json;

use crate::ble_support::{FakeBluez, Gateway, resident};
use crate::browser::{NURSE, seed_user, sign_in_at};
use crate::browser_support::Browser;
use crate::support::{http_get, wait_for};

const STRAP: &str = "DE:AD:BE:EF:00:21";
const STEP: Duration = Duration::from_secs(20);

/// A browser that counts what staff tap.
struct Taps<'a> {
    b: &'a Browser,
    n: usize,
}

impl Taps<'_> {
    /// Taps the element matching `css` whose text contains `words` once the
    /// page shows it. The page is a live region that may be replaced between
    /// finding and tapping; a person taps what is there now, and so does this:
    /// a tap that found its element gone is tried again and counted once.
    fn tap(&mut self, css: &str, words: &str) {
        let b = self.b;
        wait_for(STEP, || {
            let e = b
                .find_all(css)
                .ok()?
                .into_iter()
                .find(|e| b.text(e).is_ok_and(|t| t.contains(words)))?;
            b.click_to_page(&e).ok()
        })
        .unwrap_or_else(|| panic!("could not tap {css} {words:?}:\n{}", page_text(b)));
        self.n += 1;
    }
}

/// The page's text now, as a person reads it.
fn page_text(b: &Browser) -> String {
    b.execute("return document.body.innerText;", json!([]))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The text of the element matching `css` that contains `words`, once the
/// live page shows it (read as found: the region may be replaced after).
fn wait_shown(b: &Browser, css: &str, words: &str) -> String {
    wait_for(STEP, || {
        b.find_all(css)
            .ok()?
            .into_iter()
            .filter_map(|e| b.text(&e).ok())
            .find(|t| t.contains(words))
    })
    .unwrap_or_else(|| panic!("no {css} with {words:?} within {STEP:?}:\n{}", page_text(b)))
}

/// Issue 20: from "Pair a new sensor", a strap that asks for a passkey is
/// found (by name and kind, live), paired and assigned, and its first reading
/// shows, in at most 4 taps.
#[test]
fn a_new_strap_is_paired_and_assigned_in_at_most_four_taps() {
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(STRAP, "Polar H10 7E2A", &[0x180D]);
    let hr = bluez.add_service(STRAP, 0x180D);
    let measurement = bluez.add_characteristic(&hr, 0x2A37, "notify", "0000");
    let gw = Gateway::new(
        vec![
            resident(3, "Doreen Baptiste", "Room 3"),
            resident(4, "Edith Moore", "Room 9"),
        ],
        vec![],
        "",
    );
    seed_user(
        &gw.dir.path().join("carehub.db"),
        NURSE,
        carehub::store::accounts::Role::Nurse,
    );
    let _daemon = gw.run(&bluez);
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    wait_for(STEP, || {
        http_get(web, "/healthz").filter(|(s, _)| *s == 200)
    })
    .expect("the gateway serves its pages");
    let base = format!("http://{web}");

    let b = Browser::start(1024, 768);
    sign_in_at(&b, &base, NURSE.0, NURSE.1);
    b.goto(&format!("{base}/pairing")).unwrap();
    // Opening the flow: the one button; the taps are counted after it.
    b.click_to_page(&b.find("form.guide button").unwrap())
        .unwrap();
    assert!(
        b.url().unwrap().ends_with("/pairing/guide"),
        "{}",
        b.url().unwrap()
    );
    let intro = page_text(&b);
    assert!(
        intro.contains("Switch the sensor on, or press its button")
            && intro.contains("Pairing is on until"),
        "{intro}"
    );
    let mut taps = Taps { b: &b, n: 0 };

    // The strap is switched on: it appears by itself, by name and kind.
    // Its text is read as it is found: the live list may be replaced after.
    let shown = wait_for(STEP, || {
        bluez.advertise_presence(STRAP);
        b.find_all("a.found")
            .ok()?
            .into_iter()
            .filter_map(|e| b.text(&e).ok())
            .find(|t| t.contains("Polar H10 7E2A"))
    })
    .unwrap_or_else(|| panic!("the strap was not listed:\n{}", page_text(&b)));
    assert!(shown.contains("heart-rate strap"), "{shown}");
    taps.tap("a.found", "Polar H10 7E2A");
    assert!(b.url().unwrap().contains(&format!("address={STRAP}")));

    // BlueZ asks for the number the strap shows; the page asks staff.
    std::thread::scope(|s| {
        let asked = s.spawn(|| bluez.call_agent("RequestPasskey", STRAP));
        wait_shown(&b, "form.passkey", "6-digit number");
        // Typing puts the focus in the form, and the page is then never
        // replaced under it; before that it may be, so find the field anew.
        wait_for(STEP, || {
            let input = b.find("form.passkey input[name=passkey]").ok()?;
            b.type_into(&input, "482913").ok()
        })
        .expect("the passkey field takes the number");
        taps.tap("form.passkey button", "Send number");
        let answer = asked.join().unwrap().expect("BlueZ got the number");
        assert!(answer.contains("482913"), "{answer}");
    });

    // Whom it is for: one tap on her name.
    taps.tap("form.for-resident button", "Doreen Baptiste, Room 3");
    let done = page_text(&b);
    assert!(
        done.contains("Done: it is Doreen Baptiste's, Room 3."),
        "{done}"
    );

    // Assigned: carehub connects it; the first reading shows with unit and time.
    assert!(
        wait_for(STEP, || {
            bluez.advertise_presence(STRAP);
            bluez.notifying(&measurement).then_some(())
        })
        .is_some(),
        "the assigned strap was not connected\n{}",
        bluez.log()
    );
    assert!(bluez.notify(&measurement, "0046"));
    let reading = wait_shown(&b, "p.first-reading", "Heart rate 70 /min at ");
    assert!(
        reading.contains(" ago)") || reading.contains("(just now)"),
        "{reading}"
    );

    assert!(taps.n <= 4, "{} taps after opening the flow", taps.n);
    let (_, devices) = http_get(web, "/api/v1/devices").unwrap();
    let devices: serde_json::Value = serde_json::from_str(&devices).unwrap();
    let strap = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["address"] == STRAP)
        .unwrap_or_else(|| panic!("{devices}"));
    assert_eq!(strap["resident_id"], 3, "{strap}");
    crate::browser::screenshot(&b, "pairing-guide", false);
}

/// Issue 18 on the staff page: a sensor that pairs by numeric comparison shows
/// its number in the guided flow and the pairing goes on only when a nurse says
/// it matches; "different" ends it with BlueZ told no (hazard H31).
#[test]
fn a_number_to_compare_is_shown_and_only_a_nurse_accepts_or_rejects_it() {
    const SCALE: &str = "DE:AD:BE:EF:00:22";
    let bluez = FakeBluez::start();
    bluez.add_adapter();
    bluez.add_sensor(SCALE, "A&D UC-352BLE", &[0x181D]);
    let gw = Gateway::new(vec![resident(3, "Doreen Baptiste", "Room 3")], vec![], "");
    seed_user(
        &gw.dir.path().join("carehub.db"),
        NURSE,
        carehub::store::accounts::Role::Nurse,
    );
    let _daemon = gw.run(&bluez);
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().unwrap();
    wait_for(STEP, || {
        http_get(web, "/healthz").filter(|(s, _)| *s == 200)
    })
    .expect("the gateway serves its pages");
    let base = format!("http://{web}");
    let b = Browser::start(1024, 768);
    sign_in_at(&b, &base, NURSE.0, NURSE.1);
    b.goto(&format!("{base}/pairing")).unwrap();
    b.click_to_page(&b.find("form.guide button").unwrap())
        .unwrap();
    let mut taps = Taps { b: &b, n: 0 };
    wait_for(STEP, || {
        bluez.advertise_presence(SCALE);
        b.find_all("a.found")
            .ok()?
            .into_iter()
            .filter_map(|e| b.text(&e).ok())
            .find(|t| t.contains("A&D UC-352BLE"))
    })
    .unwrap_or_else(|| panic!("the scale was not listed:\n{}", page_text(&b)));
    taps.tap("a.found", "A&D UC-352BLE");

    // First the nurse sees a number that differs from the scale's: rejected.
    std::thread::scope(|s| {
        let asked =
            s.spawn(|| bluez.call_agent_with("RequestConfirmation", SCALE, &["uint32:48213"]));
        let shown = wait_shown(&b, "div.confirm", "Does the sensor show");
        assert!(shown.contains("048 213"), "{shown}");
        taps.tap("form.confirm-no button", "different");
        let answer = asked.join().unwrap();
        let refused = answer.expect_err("a rejected number is refused to BlueZ");
        assert!(refused.contains("org.bluez.Error.Rejected"), "{refused}");
    });
    // Then the number matches: accepted, and BlueZ's call returns.
    std::thread::scope(|s| {
        let asked =
            s.spawn(|| bluez.call_agent_with("RequestConfirmation", SCALE, &["uint32:902114"]));
        let shown = wait_shown(&b, "div.confirm", "Does the sensor show");
        assert!(shown.contains("902 114"), "{shown}");
        taps.tap("form.confirm-yes button", "Yes");
        asked
            .join()
            .unwrap()
            .expect("a confirmed number lets the pairing go on");
    });
    let (_, record) = http_get(web, "/api/v1/pairing").unwrap();
    assert!(
        record.contains("number 048213 rejected by staff")
            && record.contains("number 902114 confirmed by staff"),
        "{record}"
    );
}
