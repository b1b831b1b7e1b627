//! `carehub news2`: the command-line contract other tools rely on.

use crate::support::carehub;

fn news2(args: &[&str]) -> (Option<i32>, String, String) {
    let out = carehub().arg("news2").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn full_set_prints_every_component_and_is_not_partial() {
    let (code, out, _) = news2(&[
        "--resp-rate",
        "26",
        "--spo2",
        "91",
        "--oxygen",
        "--systolic",
        "88",
        "--pulse",
        "135",
        "--consciousness",
        "V",
        "--temperature",
        "39.5",
    ]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"], 19);
    assert_eq!(v["band"], "high");
    assert_eq!(v["partial"], false);
    assert_eq!(v["missing"], serde_json::json!([]));
    let c = &v["components"];
    for (k, s) in [
        ("resp_rate", 3),
        ("spo2", 3),
        ("oxygen", 2),
        ("systolic", 3),
        ("pulse", 3),
        ("consciousness", 3),
        ("temperature", 2),
    ] {
        assert_eq!(c[k], s, "{k} in {out}");
    }
}

#[test]
fn partial_set_omits_absent_components_and_lists_them() {
    let (code, out, _) = news2(&["--spo2", "92", "--spo2-scale", "2", "--pulse", "50"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["components"],
        serde_json::json!({"spo2": 0, "oxygen": 0, "pulse": 1})
    );
    assert_eq!(v["partial"], true);
    assert_eq!(
        v["missing"],
        serde_json::json!(["resp_rate", "systolic", "consciousness", "temperature"])
    );
    assert_eq!(v["band"], "low");
}

#[test]
fn impossible_values_exit_1_with_a_reason_and_no_output() {
    for args in [
        &["--spo2", "140"][..],
        &["--resp-rate", "-4"],
        &["--pulse", "fast"],
        &["--consciousness", "Z"],
        &["--spo2-scale", "3"],
    ] {
        let (code, out, err) = news2(args);
        assert_eq!(code, Some(1), "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}
