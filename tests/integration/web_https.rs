//! The staff web UI over real HTTPS: `carehub run` with the default `https =
//! true` makes its own certificate, serves it, redirects plain HTTP to HTTPS,
//! hands out the setup code in its log, and a real TLS client (Debian's `curl`,
//! verifying against the gateway's certificate) creates the first admin and reads
//! residents with the session cookie. `carehub pair` speaks HTTPS pinned to the
//! same certificate.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Daemon, carehub_as_service, free_port, wait_for};

/// `curl` with the gateway's certificate as the only CA; returns (status,
/// headers, body). `--resolve` makes the name `localhost` (in the certificate's
/// SANs) reach the port.
fn curl(dir: &Path, args: &[&str]) -> Option<(u16, String, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", "-o", "-"])
        .arg("--cacert")
        .arg(dir.join("web-cert.pem"))
        .args(args)
        .output()
        .expect("curl is installed (Debian package curl)");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_owned(), body.to_owned()))
}

#[test]
fn https_serves_the_gateway_certificate_redirects_plain_http_and_signs_in_with_the_setup_code() {
    let dir = tempfile::tempdir().unwrap();
    let (port, redirect) = (free_port(), free_port());
    let config = dir.path().join("carehub.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[web]\nlisten = \"0.0.0.0:{port}\"\nhttp_redirect_port = {redirect}\nnames = [\"carehub.test\"]\n",
            dir.path().join("carehub.db").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = carehub_as_service()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let daemon = Daemon { child: Some(child) };
    let base = format!("https://localhost:{port}");
    let resolve = format!("localhost:{port}:127.0.0.1");

    // The certificate verifies for its SAN "localhost": curl checks it against
    // the file the gateway wrote, not with -k.
    let (status, head, body) = wait_for(Duration::from_secs(15), || {
        curl(
            dir.path(),
            &["--resolve", &resolve, &format!("{base}/healthz")],
        )
    })
    .expect("https /healthz answers with the gateway's certificate");
    assert_eq!(status, 200, "{body}");
    // Over HTTPS the browser is told to stay on HTTPS (issue 17).
    assert!(
        head.to_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    let cert = std::fs::read_to_string(dir.path().join("web-cert.pem")).unwrap();
    assert!(cert.contains("BEGIN CERTIFICATE"));
    let alt = format!("carehub.test:{port}:127.0.0.1");
    let (status, _, _) = curl(
        dir.path(),
        &[
            "--resolve",
            &alt,
            &format!("https://carehub.test:{port}/healthz"),
        ],
    )
    .expect("the configured name is in the certificate");
    assert_eq!(status, 200);

    // Plain HTTP on the redirect port (on every address) goes to HTTPS.
    let (status, head, _) = curl(
        dir.path(),
        &[&format!("http://127.0.0.1:{redirect}/pairing?x=1")],
    )
    .unwrap();
    assert_eq!(status, 308, "{head}");
    assert!(
        head.to_lowercase()
            .contains(&format!("location: https://127.0.0.1:{port}/pairing?x=1")),
        "{head}"
    );
    // Plain HTTP to the HTTPS port is not served.
    assert!(
        curl(dir.path(), &[&format!("http://127.0.0.1:{port}/healthz")]).map(|r| r.0) != Some(200)
    );

    // Anonymous: no data.
    let (status, _, body) = curl(
        dir.path(),
        &["--resolve", &resolve, &format!("{base}/api/v1/residents")],
    )
    .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"sign in first"}"#)
    );

    // The setup code is in the log; it creates the first admin, once.
    let text = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let code = text
        .split("type the setup code ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no setup code in the log:\n{text}"))
        .to_owned();
    let jar = dir.path().join("cookies");
    let form = format!(
        "code={code}&username=ann&password=a+long+passphrase&password_again=a+long+passphrase"
    );
    let jar_s = jar.to_str().unwrap();
    let (status, head, body) = curl(
        dir.path(),
        &[
            "--resolve",
            &resolve,
            "-c",
            jar_s,
            "--data",
            &form,
            &format!("{base}/setup"),
        ],
    )
    .unwrap();
    assert_eq!(status, 303, "{head}{body}");
    let cookie = head
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("__Host-carehub_session=")
            && cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let (status, _, body) = curl(
        dir.path(),
        &[
            "--resolve",
            &resolve,
            "-b",
            jar_s,
            &format!("{base}/api/v1/residents"),
        ],
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"residents\""), "{body}");
    let (status, _, _) = curl(
        dir.path(),
        &[
            "--resolve",
            &resolve,
            "--data",
            &form.replace("ann", "eve"),
            &format!("{base}/setup"),
        ],
    )
    .unwrap();
    assert_eq!(status, 422, "the setup code works once");

    // `carehub pair` over HTTPS, trusting only the gateway's certificate.
    let out = crate::support::carehub()
        .args([
            "pair",
            "--window",
            "30",
            "--web",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"open\":true"));

    let out = daemon.stop(libc::SIGTERM);
    assert!(out.status.success());
}

#[test]
fn plain_http_off_loopback_is_refused_by_the_configuration_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("carehub.toml");
    std::fs::write(&config, "[web]\nlisten = \"0.0.0.0:8080\"\nhttps = false\n").unwrap();
    let out = crate::support::carehub()
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web.https") && err.contains("loopback"),
        "{err}"
    );
}
