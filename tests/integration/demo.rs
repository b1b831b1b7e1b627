//! The walking skeleton end to end: `carehub demo` serves simulated residents'
//! readings, stops cleanly on a signal, and leaves a consistent database.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{Daemon, carehub, free_port, http_get, wait_for};

#[test]
fn demo_serves_readings_and_stops_cleanly_on_sigterm_and_sigint() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let daemon = Daemon::demo(port, dir.path(), &["--residents", "3"]);

        // Every resident has SpO2, pulse and temperature within 10 s of start.
        let api = wait_for(Duration::from_secs(10), || {
            let (status, body) = http_get(addr, "/api/v1/residents")?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let residents = v["residents"].as_array()?;
            let complete = status == 200
                && residents.len() == 3
                && residents.iter().all(|r| {
                    let q: Vec<&str> = r["vitals"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x["quantity"].as_str().unwrap())
                        .collect();
                    ["spo2", "pulse_rate", "body_temperature"]
                        .iter()
                        .all(|want| q.contains(want))
                });
            complete.then_some(v)
        })
        .expect("readings for every resident within 10 s");
        for vital in api["residents"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["vitals"].as_array().unwrap())
        {
            assert!(
                !vital["unit"].as_str().unwrap().is_empty(),
                "value without unit: {vital}"
            );
            assert!(
                vital["taken_at"].as_str().unwrap().ends_with('Z'),
                "{vital}"
            );
            assert_eq!(vital["freshness"], "current", "{vital}");
        }

        let (status, page) = http_get(addr, "/").unwrap();
        assert_eq!(status, 200);
        assert!(
            page.contains("Margaret Ellis") && page.contains("SpO₂"),
            "{page}"
        );

        let out = daemon.stop(signal);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "exit {:?} after signal {signal}\n{stderr}",
            out.status
        );
        assert!(stderr.contains("stopped cleanly"), "{stderr}");

        let db = rusqlite::Connection::open(dir.path().join("carehub.db")).unwrap();
        let verdict: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(verdict, "ok");
        let stored: i64 = db
            .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap();
        let shown = api["residents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["vitals"].as_array().unwrap().len() as i64)
            .sum::<i64>();
        assert!(stored >= shown, "{stored} stored < {shown} shown");
        let unitless: i64 = db
            .query_row(
                "SELECT count(*) FROM readings_text WHERE unit = ''",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unitless, 0);
    }
}

#[test]
fn a_broken_config_names_line_and_key_and_the_daemon_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carehub.toml");
    std::fs::write(
        &path,
        "[site]\nid = \"home-1\"\n\n[store]\ncommit_max_readigns = 10\n",
    )
    .unwrap();

    let check = carehub()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let check_err = String::from_utf8_lossy(&check.stderr).into_owned();
    assert_eq!(check.status.code(), Some(1), "{check_err}");
    assert!(
        check_err.contains("carehub.toml:5: key `store.commit_max_readigns`: unknown field"),
        "{check_err}"
    );

    let run = carehub()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let run_err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        run_err.contains(check_err.trim().trim_start_matches("carehub: ")),
        "{run_err}"
    );
}

#[test]
fn config_example_is_accepted_by_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = carehub().args(["config", "example"]).output().unwrap();
    assert!(out.status.success());
    let path = dir.path().join("example.toml");
    std::fs::write(&path, &out.stdout).unwrap();
    let check = carehub()
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// The Yocto recipe installs `docs/carehub.example.toml` as the default
/// configuration (it cannot run the cross-compiled binary at build time): it must
/// be exactly what `carehub config example` prints. Regenerate it with
/// `cargo run -- config example > docs/carehub.example.toml`.
#[test]
fn committed_example_config_matches_config_example() {
    let out = carehub().args(["config", "example"]).output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/carehub.example.toml"
    ))
    .unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "docs/carehub.example.toml is stale: cargo run -- config example > docs/carehub.example.toml"
    );
}
