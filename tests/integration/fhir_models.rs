//! Every kind of readings payload in FHIR form is validated by a real FHIR
//! implementation: the `fhir.resources` R4B models (PyPI), in a virtual
//! environment this test creates under the target directory. A bundle with an
//! empty string (the motion readings' `"unit": ""` of old) is refused there, so
//! the test also proves the validator is strict enough to see that fault.

use std::path::{Path, PathBuf};
use std::process::Command;

use carehub::config::PayloadFormat;
use carehub::model::{
    DeviceAddress, Quantity, Reading, ReadingId, ResidentId, SpecialValue, Subject, Timestamp,
    Unit, Value,
};
use carehub::store::LeaseSink;
use carehub::uplink::batch::Encoder;

/// The venv's python with `fhir.resources` installed (made on first use).
fn fhir_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fhir-venv");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import fhir.resources.R4B.bundle"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for the FHIR validation test");
        assert!(made.success(), "python3 -m venv failed");
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "fhir.resources>=8,<9"])
            .status()
            .unwrap();
        assert!(pip.success(), "pip install fhir.resources failed");
    }
    python
}

fn reading(n: usize, quantity: Quantity, value: Value, unit: Unit, subject: Subject) -> Reading {
    let at = Timestamp::from_unix_ms(1_763_930_467_000 + n as i64 * 1000);
    Reading {
        id: ReadingId::new(at),
        device: DeviceAddress([0xA4, 0xC1, 0x38, 0, (n >> 8) as u8, n as u8]),
        subject,
        quantity,
        value,
        unit,
        measured_at: n.is_multiple_of(2).then_some(at),
        received_at: at,
        clock_synced: !n.is_multiple_of(3),
    }
}

/// Runs the validator on `files`; its report and whether every file passed.
fn validate(files: &[PathBuf]) -> (String, bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir/validate.py");
    let out = Command::new(fhir_python())
        .arg(script)
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status.success())
}

#[test]
fn every_fhir_payload_kind_is_valid_for_the_fhir_r4b_models() {
    // Every quantity with a number (unit-less ones included), every unit,
    // every special value, and every kind of subject: a resident by reference,
    // a room, an unassigned device.
    let mut readings: Vec<(Reading, Option<&str>)> = Vec::new();
    for (i, q) in Quantity::ALL.iter().enumerate() {
        let unit = Unit::ALL[i % Unit::ALL.len()];
        readings.push((
            reading(
                i,
                *q,
                Value::Number(1.5),
                unit,
                Subject::Resident(ResidentId(1)),
            ),
            Some("res-0001"),
        ));
        readings.push((
            reading(
                i,
                *q,
                Value::Number(0.0),
                Unit::One,
                Subject::Room("12".into()),
            ),
            None,
        ));
    }
    for (i, u) in Unit::ALL.iter().enumerate() {
        readings.push((
            reading(
                1000 + i,
                Quantity::Spo2,
                Value::Number(-2.25),
                *u,
                Subject::Unassigned,
            ),
            None,
        ));
    }
    for (i, s) in SpecialValue::ALL.iter().enumerate() {
        readings.push((
            reading(
                2000 + i,
                Quantity::BodyTemperature,
                Value::Special(*s),
                Unit::Celsius,
                Subject::Resident(ResidentId(2)),
            ),
            Some("res-0002"),
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    // Bundles as the uplink makes them: 25 readings a message.
    let mut encoder = Encoder::new(PayloadFormat::Fhir, "oak-house", "gw-test", 25);
    for (r, reference) in &readings {
        encoder.reading(r.clone(), *reference);
    }
    let messages = encoder.finish().unwrap();
    assert!(messages.len() >= 4, "{} messages", messages.len());
    let mut files = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let path = dir.path().join(format!("bundle-{i}.json"));
        std::fs::write(&path, m).unwrap();
        files.push(path);
    }
    let (report, ok) = validate(&files);
    assert!(ok, "{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        files.len(),
        "{report}"
    );
    assert!(report.contains("Device,Observation"), "{report}");

    // The validator refuses an empty unit, as a FHIR server does.
    let mut bad: serde_json::Value = serde_json::from_slice(&messages[0]).unwrap();
    let entry = bad["entry"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["resource"]["valueQuantity"].is_object())
        .unwrap();
    entry["resource"]["valueQuantity"]["unit"] = serde_json::json!("");
    let path = dir.path().join("empty-unit.json");
    std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
    let (report, ok) = validate(&[path]);
    assert!(!ok && report.contains("valueQuantity.unit"), "{report}");
}
