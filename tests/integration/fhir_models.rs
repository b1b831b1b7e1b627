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

/// Medplum's FHIR router and definitions, pinned, installed from npm under
/// the target directory on first use.
const MEDPLUM: &str = "5.2.13";

/// The venv's python with `fhir.resources` installed (made on first use).
fn fhir_python() -> PathBuf {
    crate::support::python_venv(
        "fhir-venv",
        "fhir.resources.R4B.bundle",
        "fhir.resources>=8,<9",
    )
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

/// Every quantity with a number (unit-less ones included), every unit, every
/// special value, and every kind of subject: a resident by reference, a room,
/// an unassigned device.
fn every_kind() -> Vec<(Reading, Option<&'static str>)> {
    let mut readings: Vec<(Reading, Option<&'static str>)> = Vec::new();
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
    readings
}

#[test]
fn every_fhir_payload_kind_is_valid_for_the_fhir_r4b_models() {
    let readings = every_kind();
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

/// `node` with Medplum's packages on its module path: the command to run a
/// script with (Node before 22 needs its WebSocket flag for @medplum/core).
fn medplum_node() -> Command {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("medplum-{MEDPLUM}"));
    let modules = dir.join("node_modules");
    if !modules.join("@medplum/fhir-router/package.json").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let packages =
            ["fhir-router", "core", "definitions"].map(|p| format!("@medplum/{p}@{MEDPLUM}"));
        let npm = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .args(&packages)
            .status()
            .expect("npm (Node.js) is needed for the FHIR server test");
        assert!(npm.success(), "npm install of Medplum's FHIR router failed");
    }
    let version = Command::new("node")
        .arg("--version")
        .output()
        .expect("node is needed");
    let major: u32 = String::from_utf8_lossy(&version.stdout)
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let mut node = Command::new("node");
    if major < 22 {
        node.arg("--experimental-websocket");
    }
    node.env("NODE_PATH", modules);
    node
}

/// Every payload kind, as the uplink batches it, processed as a transaction by
/// a FHIR server (Medplum's router): each resource valid for Medplum's R4
/// validator, every entry accepted, each Observation stored once with its
/// reading-id identifier as sent and its device and gateway references resolved
/// to Devices, and a repeat of the Bundle creating nothing. The shape of old
/// (an Observation `fullUrl` equal to its identifier, which the server rewrote
/// into the identifier, so a repeat was stored twice) is refused there.
#[test]
fn every_fhir_payload_kind_is_processed_by_a_fhir_server_as_a_transaction() {
    let readings = every_kind();
    let mut encoder = Encoder::new(PayloadFormat::Fhir, "oak-house", "gw-test", 25);
    for (r, reference) in &readings {
        encoder.reading(r.clone(), *reference);
    }
    let messages = encoder.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let path = dir.path().join(format!("bundle-{i}.json"));
        std::fs::write(&path, m).unwrap();
        files.push(path);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir/medplum_transaction.cjs");
    let run = |files: &[PathBuf]| {
        let out = medplum_node().arg(&script).args(files).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (text, out.status.success())
    };
    let (report, ok) = run(&files);
    assert!(ok, "{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        files.len(),
        "{report}"
    );

    // A small Bundle (one sensor, three readings: five entries) is also taken
    // as an isolated transaction, which Medplum allows up to 8 entries.
    let mut small = Encoder::new(PayloadFormat::Fhir, "oak-house", "gw-test", 25);
    for i in 0..3 {
        let mut r = readings[0].0.clone();
        r.id = ReadingId::new(Timestamp::from_unix_ms(1_763_930_467_000 + i));
        small.reading(r, readings[0].1);
    }
    let small = small.finish().unwrap();
    let path = dir.path().join("small.json");
    std::fs::write(&path, &small[0]).unwrap();
    let out = medplum_node()
        .arg(&script)
        .arg("--strict")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The old shape: an Observation's fullUrl equal to its identifier.
    let mut old: serde_json::Value = serde_json::from_slice(&messages[0]).unwrap();
    for e in old["entry"].as_array_mut().unwrap() {
        if e["resource"]["resourceType"] == "Observation" {
            e["fullUrl"] = e["resource"]["identifier"][0]["value"].clone();
        }
    }
    let path = dir.path().join("old-full-url.json");
    std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
    let (report, ok) = run(&[path]);
    assert!(!ok && report.contains("not stored as sent"), "{report}");
}
