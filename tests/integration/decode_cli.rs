//! The `carehub decode` contract, run as other tools run it: the real binary, its
//! stdout, stderr and exit code (docs/decode.md).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn carehub(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_carehub"))
        .arg("decode")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("carehub binary runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

#[test]
fn bthome_plain_prints_one_json_object_and_exits_0() {
    let out = carehub(&["--service-data", "fcd2=4002ca0903bf13"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out.stdout);
    assert_eq!(v["format"], "bthome_v2");
    assert_eq!(
        v["readings"],
        serde_json::json!([
            {"quantity": "temperature", "value": 25.06, "unit": "Cel", "status": "ok"},
            {"quantity": "humidity", "value": 50.55, "unit": "%", "status": "ok"},
        ])
    );
    assert_eq!(v["events"], serde_json::json!([]));
}

#[test]
fn uuid_and_company_spellings_are_all_accepted() {
    for sd in [
        "fcd2=4002ca09",
        "0xFCD2=4002ca09",
        "0000fcd2-0000-1000-8000-00805f9b34fb=4002CA09",
    ] {
        let out = carehub(&["--service-data", sd], None);
        assert_eq!(out.status.code(), Some(0), "{sd}");
    }
    let out = carehub(
        &[
            "--manufacturer-data",
            "0x0499=0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F",
        ],
        None,
    );
    assert_eq!(json(&out.stdout)["format"], "ruuvi_v5");
}

#[test]
fn encrypted_bthome_with_key_and_special_values_with_null() {
    // bthome.io encryption example.
    let out = carehub(
        &[
            "--mac",
            "54:48:E6:8F:80:A5",
            "--key",
            "231d39c1d7cc1ab1aee224cd096db932",
            "--service-data",
            "fcd2=41a47266c95f730011223378237214",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out.stdout)["readings"][0]["value"], 25.06);
    // An SFLOAT NaN pulse oximeter reading: value null, status nan, unit present.
    let out = carehub(&["--characteristic", "0x2A5E=00ff07ff07"], None);
    let v = json(&out.stdout);
    assert_eq!(
        v["readings"][0],
        serde_json::json!({"quantity": "spo2", "value": null, "unit": "%", "status": "nan"})
    );
}

#[test]
fn frames_that_carry_their_mac_decrypt_with_a_key_and_no_mac_argument() {
    // BTHome v2 "MAC included" (bthome.io's example key and MAC, made with bthome-ble's
    // own encryption example) and MiBeacon v5 with its MAC field (cross-checked by
    // xiaomi-ble); see benches/peers/make_vectors.py.
    for (key, sd, value) in [
        (
            "231d39c1d7cc1ab1aee224cd096db932",
            "fcd2=43a5808fe64854f196c06ffb4900112233f08ecbde",
            25.06,
        ),
        (
            "b2d46f0a8ea1f8e1bd0cd0d9c3eb5a0e",
            "fe95=58585b052b56341238c1a4ab98ac2e00b256010000a1d3bc1d",
            23.0,
        ),
    ] {
        let out = carehub(&["--key", key, "--service-data", sd], None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{sd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json(&out.stdout)["readings"][0]["value"], value, "{sd}");
    }
    // A frame without its MAC still needs --mac, and says so.
    let out = carehub(
        &[
            "--key",
            "231d39c1d7cc1ab1aee224cd096db932",
            "--service-data",
            "fcd2=41a47266c95f730011223378237214",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--key needs --mac"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn documented_blood_pressure_example_decodes_as_documented() {
    let out = carehub(
        &[
            "--characteristic",
            "2a35=1e780050005d00ea070b17081e054600020f00",
        ],
        None,
    );
    let v = json(&out.stdout);
    assert_eq!(v["format"], "gatt_blood_pressure_measurement");
    assert_eq!(v["attributes"]["user_id"], 2);
    assert_eq!(v["readings"][0]["quantity"], "systolic_pressure");
    assert_eq!(v["readings"][0]["unit"], "mm[Hg]");
    assert_eq!(v["readings"][0]["device_time"], "2026-11-23T08:30:05");
    assert_eq!(v["readings"][3]["quantity"], "pulse_rate");
    assert_eq!(v["events"][0]["detail"], "body_movement");
}

#[test]
fn bad_input_exits_1_with_one_line_on_stderr_and_nothing_on_stdout() {
    let cases: &[&[&str]] = &[
        &["--service-data", "fcd2=4002"],
        &["--service-data", "fcd2=40zz"],
        &["--service-data", "fcd2=402"],
        &["--service-data", "fcd2"],
        &["--service-data", "12345=40"],
        &["--manufacturer-data", "004c=0215"],
        &["--characteristic", "2a99=00"],
        &["--mac", "not-a-mac", "--service-data", "fcd2=40"],
        &[
            "--key",
            "00112233445566778899aabbccddeeff",
            "--service-data",
            "fcd2=41",
        ],
        &[
            "--mac",
            "54:48:E6:8F:80:A5",
            "--key",
            "0011",
            "--service-data",
            "fcd2=41",
        ],
        &[
            "--mac",
            "54:48:E6:8F:80:A5",
            "--service-data",
            "fcd2=41a47266c95f730011223378237214",
        ],
        &[],
    ];
    for args in cases {
        let out = carehub(args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.starts_with("carehub: "), "{err}");
    }
}

#[test]
fn stdin_mode_one_result_per_line_with_state_across_lines() {
    let input = concat!(
        r#"{"mac": "54:48:E6:8F:80:A5", "key": "231d39c1d7cc1ab1aee224cd096db932", "service_data": {"fcd2": "41a47266c95f730011223378237214"}}"#,
        "\n",
        // The same encrypted frame again: a replay, because state carries over.
        r#"{"mac": "54:48:E6:8F:80:A5", "service_data": {"fcd2": "41a47266c95f730011223378237214"}}"#,
        "\n",
        // Plain data from the device that now has a key: a downgrade.
        r#"{"mac": "54:48:E6:8F:80:A5", "service_data": {"fcd2": "4002ca09"}}"#,
        "\n\n",
        "not json\n",
        r#"{"characteristic": {"2a37": "0048"}}"#,
        "\n",
        r#"{"mac": "A4:C1:38:00:00:01", "service_data": {"fcd2": "4000070201"}}"#,
        "\n",
        r#"{"mac": "A4:C1:38:00:00:01", "service_data": {"fcd2": "40000702c409"}}"#,
        "\n",
        r#"{"mac": "A4:C1:38:00:00:01", "service_data": {"fcd2": "40000702c409"}}"#,
        "\n",
    );
    let out = carehub(&["--stdin"], Some(input));
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| json(l.as_bytes()))
        .collect();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[0]["readings"][1]["value"], 50.55);
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("replayed counter")
    );
    assert!(lines[2]["error"].as_str().unwrap().contains("downgrade"));
    assert!(
        lines[3]["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid json line")
    );
    assert_eq!(lines[4]["readings"][0]["value"], 72.0);
    assert!(lines[5]["error"].as_str().unwrap().contains("truncated"));
    assert_eq!(lines[6]["readings"][0]["value"], 25.0);
    assert_eq!(lines[7]["error"], "repeated packet id 7");
}

#[test]
fn docs_name_every_quantity_and_unit() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/decode.md")).unwrap();
    for q in carehub::model::Quantity::ALL {
        assert!(
            doc.contains(&format!("`{}`", q.as_str())),
            "docs/decode.md lacks {}",
            q.as_str()
        );
    }
    for u in carehub::model::Unit::ALL {
        assert!(
            doc.contains(&format!("`{}`", u.ucum())),
            "docs/decode.md lacks unit {}",
            u.ucum()
        );
    }
}
