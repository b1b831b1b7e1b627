//! `carehub provision` on a temporary directory standing in for the card's
//! partitions: the boot partition (where the bundle is dropped), `/data`'s
//! carehub state directory and root-only system directory, and the image's
//! real production configuration from the Yocto layer. A good bundle is applied
//! whole and its secrets leave the stick; a bundle with any one fault applies
//! nothing, keeps what the box had and says why on the stick. Then the
//! health check against a real daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::mqtt_support::Pki;
use crate::support::{Daemon, carehub, carehub_as_service, free_port};

const IMAGE_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/yocto-layer/recipes-carehub/carehub/files/carehub.toml"
);

/// The partitions of one box.
struct Card {
    _dir: tempfile::TempDir,
    boot: PathBuf,
    bundle: PathBuf,
    state: PathBuf,
    system: PathBuf,
}

impl Card {
    fn new() -> Card {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        let bundle = boot.join("carehub-provision");
        let state = dir.path().join("data/carehub");
        let system = dir.path().join("data/system");
        for d in [&bundle, &state, &system] {
            std::fs::create_dir_all(d).unwrap();
        }
        Card {
            _dir: dir,
            boot,
            bundle,
            state,
            system,
        }
    }

    /// A complete bundle for gateway `gw-test` (the CN of the test PKI's
    /// gateway certificate).
    fn good_bundle(&self, pki: &Pki) {
        self.write(PROVISION_TOML);
        let gw = pki.pair("gateway");
        std::fs::copy(&gw.cert, self.bundle.join("gateway.pem")).unwrap();
        std::fs::copy(&gw.key, self.bundle.join("gateway.key")).unwrap();
        std::fs::copy(pki.path("ca.pem"), self.bundle.join("ca.pem")).unwrap();
        std::fs::write(
            self.bundle.join("carehub.toml"),
            "[web]\nnames = [\"carehub-gw-test.example\"]\n",
        )
        .unwrap();
    }

    fn write(&self, provision_toml: &str) {
        std::fs::write(self.bundle.join("provision.toml"), provision_toml).unwrap();
    }

    fn provision(&self, extra: &[&str]) -> Output {
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        carehub()
            .arg("provision")
            .arg("--from")
            .arg(&self.boot)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--system-dir")
            .arg(&self.system)
            .args(["--image-config", IMAGE_CONFIG, "--user", &me])
            .args(extra)
            .output()
            .unwrap()
    }

    /// Every file under the state and system directories, with its bytes.
    fn applied(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for root in [&self.state, &self.system] {
            walk(root, &mut out);
        }
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            let bytes = std::fs::read(&p).unwrap();
            out.push((p, bytes));
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const PROVISION_TOML: &str = r#"
[gateway]
id = "gw-test"
[site]
id = "oakfield"
timezone = "Europe/London"
[broker]
host = "mqtt.oakfield.example"
port = 8884
[wifi]
ssid = "Oakfield-Staff"
passphrase = "correct horse battery"
country = "GB"
"#;

#[test]
fn a_good_bundle_is_applied_whole_and_its_secrets_leave_the_stick() {
    let pki = Pki::new();
    let card = Card::new();
    card.good_bundle(&pki);
    let out = card.provision(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("host name: carehub-gw-test"),
        "{}",
        text(&out)
    );

    // Secrets on /data with their modes.
    let certs = card.state.join("certs");
    assert_eq!(mode(&certs), 0o700);
    assert_eq!(mode(&certs.join("gateway.key")), 0o600);
    assert_eq!(
        std::fs::read(certs.join("gateway.key")).unwrap(),
        std::fs::read(pki.pair("gateway").key).unwrap()
    );
    assert_eq!(mode(&certs.join("gateway.pem")), 0o644);
    assert_eq!(mode(&certs.join("ca.pem")), 0o644);

    // The configuration: the image's production defaults with the box's
    // settings over them, and one the daemon accepts.
    let config_path = card.state.join("carehub.toml");
    assert_eq!(mode(&config_path), 0o640);
    let check = carehub()
        .args(["config", "check"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!(config["sensors"]["source"].as_str(), Some("ble"));
    assert_eq!(config["web"]["listen"].as_str(), Some("0.0.0.0:443"));
    assert_eq!(config["web"]["https"].as_bool(), Some(true));
    assert_eq!(config["site"]["gateway_id"].as_str(), Some("gw-test"));
    assert_eq!(config["site"]["id"].as_str(), Some("oakfield"));
    assert_eq!(config["uplink"]["enabled"].as_bool(), Some(true));
    assert_eq!(
        config["uplink"]["host"].as_str(),
        Some("mqtt.oakfield.example")
    );
    assert_eq!(config["uplink"]["port"].as_integer(), Some(8884));
    assert_eq!(
        config["uplink"]["key_file"].as_str().map(PathBuf::from),
        Some(certs.join("gateway.key"))
    );
    assert_eq!(
        config["web"]["names"].as_array().unwrap()[0].as_str(),
        Some("carehub-gw-test.example")
    );

    // Root-only: Wi-Fi with the derived key, never the passphrase; host name.
    let wifi = card.system.join("wpa_supplicant-wlan0.conf");
    assert_eq!(mode(&wifi), 0o600);
    let wifi = std::fs::read_to_string(wifi).unwrap();
    assert!(wifi.contains("country=GB"), "{wifi}");
    assert!(
        wifi.contains(&format!("ssid={}", hex(b"Oakfield-Staff"))),
        "{wifi}"
    );
    assert!(!wifi.contains("correct horse"), "{wifi}");
    assert!(
        wifi.lines()
            .any(|l| l.trim().starts_with("psk=") && l.trim().len() == 68),
        "{wifi}"
    );
    assert_eq!(
        std::fs::read_to_string(card.system.join("hostname")).unwrap(),
        "carehub-gw-test\n"
    );

    // The stick: no key, no passphrase, a receipt.
    let left: Vec<String> = std::fs::read_dir(&card.bundle)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["PROVISIONED.txt".to_owned()]);

    // The next boot finds no bundle and keeps the settings.
    let before = card.applied();
    let out = card.provision(&["--boot"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(card.applied(), before);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is wrong, how to spoil a good bundle that way, what the refusal says.
type Fault = (&'static str, Box<dyn Fn(&Card)>, &'static str);

/// One fault each; every one must leave the box untouched.
fn faulty_bundles(pki: &Pki) -> Vec<Fault> {
    let foreign_key = pki.pair("foreign").key;
    let expired = pki.pair("expired");
    let server = pki.pair("server");
    vec![
        (
            "the key is not the certificate's",
            Box::new(move |c: &Card| {
                std::fs::copy(&foreign_key, c.bundle.join("gateway.key")).unwrap();
            }),
            "tls configuration",
        ),
        (
            "an expired certificate",
            Box::new(move |c: &Card| {
                std::fs::copy(&expired.cert, c.bundle.join("gateway.pem")).unwrap();
                std::fs::copy(&expired.key, c.bundle.join("gateway.key")).unwrap();
            }),
            "expired",
        ),
        (
            "a certificate for another name",
            Box::new(move |c: &Card| {
                std::fs::copy(&server.cert, c.bundle.join("gateway.pem")).unwrap();
                std::fs::copy(&server.key, c.bundle.join("gateway.key")).unwrap();
            }),
            "not to gateway.id",
        ),
        (
            "no CA",
            Box::new(|c: &Card| std::fs::remove_file(c.bundle.join("ca.pem")).unwrap()),
            "ca.pem missing",
        ),
        (
            "a provision.toml cut short",
            Box::new(|c: &Card| c.write(&PROVISION_TOML[..PROVISION_TOML.len() / 2])),
            "provision.toml",
        ),
        (
            "a truncated certificate",
            Box::new(|c: &Card| {
                let p = c.bundle.join("gateway.pem");
                let pem = std::fs::read(&p).unwrap();
                std::fs::write(&p, &pem[..pem.len() / 2]).unwrap();
            }),
            "gateway.pem",
        ),
        (
            "a Wi-Fi passphrase too short",
            Box::new(|c: &Card| c.write(&PROVISION_TOML.replace("correct horse battery", "short"))),
            "wifi.passphrase",
        ),
        (
            "an unknown carehub setting",
            Box::new(|c: &Card| {
                std::fs::write(c.bundle.join("carehub.toml"), "[web]\nlisen = \"x\"\n").unwrap()
            }),
            "lisen",
        ),
        (
            "an unknown time zone",
            Box::new(|c: &Card| {
                c.write(&PROVISION_TOML.replace("Europe/London", "Europe/Atlantis"))
            }),
            "site.timezone",
        ),
        (
            "a gateway id that is no host name",
            Box::new(|c: &Card| c.write(&PROVISION_TOML.replace("gw-test", "gw test"))),
            "gateway.id",
        ),
    ]
}

#[test]
fn a_bundle_with_any_fault_applies_nothing_and_says_why_on_the_stick() {
    let pki = Pki::new();
    for (what, spoil, says) in faulty_bundles(&pki) {
        let card = Card::new();
        card.good_bundle(&pki);
        spoil(&card);
        let bundle_before: Vec<_> = {
            let mut v = Vec::new();
            walk(&card.bundle, &mut v);
            v.sort();
            v
        };
        let out = card.provision(&[]);
        assert!(!out.status.success(), "{what}: accepted: {}", text(&out));
        assert!(text(&out).contains(says), "{what}: {}", text(&out));
        assert!(
            text(&out).contains("nothing applied"),
            "{what}: {}",
            text(&out)
        );
        assert_eq!(card.applied(), vec![], "{what}: something was applied");
        // The bundle is kept as it was, with the reason beside it.
        let failed = std::fs::read_to_string(card.bundle.join("PROVISION-FAILED.txt")).unwrap();
        assert!(failed.contains(says), "{what}: {failed}");
        let mut after = Vec::new();
        walk(&card.bundle, &mut after);
        after.retain(|(p, _)| !p.ends_with("PROVISION-FAILED.txt"));
        after.sort();
        assert_eq!(after, bundle_before, "{what}: the bundle was changed");
    }
}

#[test]
fn a_refused_bundle_at_boot_keeps_the_provisioned_box_as_it_was() {
    let pki = Pki::new();
    let card = Card::new();
    card.good_bundle(&pki);
    assert!(card.provision(&["--boot"]).status.success());
    let before = card.applied();

    // A second bundle for another gateway with a key that is not its own.
    card.good_bundle(&pki);
    card.write(&PROVISION_TOML.replace("oakfield", "elsewhere"));
    std::fs::copy(pki.pair("foreign").key, card.bundle.join("gateway.key")).unwrap();
    let out = card.provision(&["--boot"]);
    // At boot the box still starts, with what it had.
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("refused"), "{}", text(&out));
    assert_eq!(card.applied(), before);
    assert!(card.bundle.join("PROVISION-FAILED.txt").exists());
    assert!(card.bundle.join("gateway.key").exists());
}

#[test]
fn an_unprovisioned_box_runs_the_production_defaults() {
    let card = Card::new();
    let out = card.provision(&["--boot"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not provisioned yet"), "{}", text(&out));
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(card.state.join("carehub.toml")).unwrap()).unwrap();
    assert_eq!(config["sensors"]["source"].as_str(), Some("ble"));
    assert_eq!(config["web"]["listen"].as_str(), Some("0.0.0.0:443"));
    assert_eq!(config["uplink"]["enabled"].as_bool(), Some(false));
    assert!(!card.system.join("hostname").exists());
    // Outside boot, no bundle is an error.
    let out = card.provision(&[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no provisioning bundle"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_example_bundle_is_written_to_fill_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = carehub()
        .args(["provision", "--example"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let toml =
        std::fs::read_to_string(dir.path().join("carehub-provision/provision.toml")).unwrap();
    assert!(
        toml.contains("[gateway]") && toml.contains("[wifi]"),
        "{toml}"
    );
    // Never over a bundle already there.
    let again = carehub()
        .args(["provision", "--example"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
}

/// The daemon as the appliance runs it, on loopback with HTTPS and simulated
/// sensors; `uplink` adds a broker nobody answers at.
fn start_daemon(dir: &Path, uplink_port: Option<u16>) -> (Daemon, PathBuf) {
    let port = free_port();
    let config = dir.join("carehub.toml");
    let mut text = format!(
        "[store]\npath = \"{}\"\n[web]\nlisten = \"127.0.0.1:{port}\"\n",
        dir.join("carehub.db").display()
    );
    if let Some(p) = uplink_port {
        let pki = Pki::new();
        let gw = pki.pair("gateway");
        for (from, to) in [
            (gw.cert, "gateway.pem"),
            (gw.key, "gateway.key"),
            (pki.path("ca.pem"), "ca.pem"),
        ] {
            std::fs::copy(from, dir.join(to)).unwrap();
        }
        text.push_str(&format!(
            "[site]\ngateway_id = \"gw-test\"\n[uplink]\nenabled = true\nhost = \"localhost\"\nport = {p}\nca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/gateway.pem\"\nkey_file = \"{d}/gateway.key\"\n",
            d = dir.display()
        ));
    }
    std::fs::write(&config, text).unwrap();
    let child = carehub_as_service()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Daemon { child: Some(child) }, config)
}

#[test]
fn health_check_passes_for_a_healthy_daemon_and_names_a_dead_uplink() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, config) = start_daemon(dir.path(), None);
    let out = carehub()
        .args(["health-check", "--timeout", "60", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("uplink not configured"),
        "{}",
        text(&out)
    );
    drop(daemon);

    // Nothing listens on the broker's port: never connected, so unhealthy.
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, config) = start_daemon(dir.path(), Some(free_port()));
    let out = carehub()
        .args(["health-check", "--timeout", "8", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("uplink is"), "{}", text(&out));
    assert!(text(&out).contains("not connected"), "{}", text(&out));

    // No daemon at all.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("carehub.toml"),
        format!(
            "[store]\npath = \"{}\"\n[web]\nlisten = \"127.0.0.1:{}\"\n",
            dir.path().join("carehub.db").display(),
            free_port()
        ),
    )
    .unwrap();
    let out = carehub()
        .args(["health-check", "--timeout", "1", "--config"])
        .arg(dir.path().join("carehub.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("has not written"), "{}", text(&out));
}

#[test]
fn factory_reset_keeps_unsent_readings_unless_told_and_then_forgets_everything() {
    let pki = Pki::new();
    let card = Card::new();
    card.good_bundle(&pki);
    assert!(card.provision(&[]).status.success());
    let bonds = card.state.parent().unwrap().join("bluetooth");
    std::fs::create_dir_all(bonds.join("AA:BB:CC:DD:EE:FF")).unwrap();
    std::fs::write(bonds.join("AA:BB:CC:DD:EE:FF/info"), "[LinkKey]\n").unwrap();

    // Readings in the outbox: the demo's simulated sensors, no uplink.
    let port = free_port();
    let daemon = Daemon::demo(port, &card.state, &["--residents", "1"]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    crate::support::wait_for(std::time::Duration::from_secs(30), || {
        let (status, body) = crate::support::http_get(addr, "/api/v1/gateway")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200 && v["outbox"]["readings"].as_u64()? > 0).then_some(())
    })
    .expect("the demo stores readings");
    daemon.stop(libc::SIGTERM);

    let reset = |extra: &[&str]| {
        carehub()
            .arg("factory-reset")
            .arg("--state-dir")
            .arg(&card.state)
            .arg("--also")
            .arg(&card.system)
            .arg("--also")
            .arg(&bonds)
            .args(extra)
            .output()
            .unwrap()
    };
    // Paths only, without SQLite's -shm and -wal, which reading it makes.
    let paths = |c: &Card| {
        c.applied()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| {
                !p.to_string_lossy().ends_with("-shm") && !p.to_string_lossy().ends_with("-wal")
            })
            .collect::<Vec<_>>()
    };
    let before = paths(&card);
    let out = reset(&[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    let out = reset(&["--yes"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("have not reached the cloud"),
        "{}",
        text(&out)
    );
    assert_eq!(paths(&card), before, "a refused reset removed something");

    let out = reset(&["--yes", "--discard-unsent"]);
    assert!(out.status.success(), "{}", text(&out));
    for dir in [&card.state, &card.system, &bonds] {
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "{}",
            dir.display()
        );
    }
    // The next boot is an unprovisioned box again.
    let out = card.provision(&["--boot"]);
    assert!(text(&out).contains("not provisioned yet"), "{}", text(&out));
}

#[test]
fn export_logs_packs_config_health_and_versions_without_secrets() {
    let pki = Pki::new();
    let card = Card::new();
    card.good_bundle(&pki);
    assert!(card.provision(&[]).status.success());
    let out_file = card.state.parent().unwrap().join("logs.tar.gz");
    let out = carehub()
        .arg("export-logs")
        .arg("--out")
        .arg(&out_file)
        .arg("--config")
        .arg(card.state.join("carehub.toml"))
        .args(["--lines", "50"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let list = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&out_file)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for name in ["carehub.toml", "health.txt", "versions.txt", "journal.txt"] {
        assert!(list.contains(&format!("carehub-logs/{name}")), "{list}");
    }
    let all = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&out_file)
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&all.stdout);
    let key = std::fs::read_to_string(pki.pair("gateway").key).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    assert!(!all.contains(key_body), "the key is in the export");
    assert!(!all.contains("PRIVATE KEY"), "a key is in the export");
    assert!(all.contains("gw-test"), "the configuration is missing");
}

#[test]
fn an_update_with_new_defaults_reaches_a_provisioned_box_and_keeps_its_settings() {
    let pki = Pki::new();
    let card = Card::new();
    card.good_bundle(&pki);
    assert!(card.provision(&[]).status.success());

    // The next image changes a default; the box's own settings stay.
    let new_image = card.state.parent().unwrap().join("new-image.toml");
    let image = std::fs::read_to_string(IMAGE_CONFIG).unwrap();
    std::fs::write(
        &new_image,
        format!("{image}\n[clinical]\nstale_after_minutes = 45\n"),
    )
    .unwrap();
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let out = carehub()
        .args(["provision", "--boot", "--from"])
        .arg(&card.boot)
        .arg("--state-dir")
        .arg(&card.state)
        .arg("--system-dir")
        .arg(&card.system)
        .arg("--image-config")
        .arg(&new_image)
        .args(["--user", &me])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(card.state.join("carehub.toml")).unwrap()).unwrap();
    assert_eq!(
        config["clinical"]["stale_after_minutes"].as_integer(),
        Some(45)
    );
    assert_eq!(config["site"]["gateway_id"].as_str(), Some("gw-test"));
    assert_eq!(config["uplink"]["enabled"].as_bool(), Some(true));
}

/// Regression (issue 19, finding 8): carehub.service's `ProcSubset=pid` hides
/// `/proc/sys`, and the self-signed web certificate silently lacked the host
/// name that provisioning sets. Here carehub runs with `/proc/sys` hidden (a
/// tmpfs over it in a private mount namespace) and its certificate must still
/// name the host and HOST.local, which avahi announces.
#[test]
fn the_web_certificate_names_the_host_when_proc_sys_is_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("carehub.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[web]\nlisten = \"127.0.0.1:{}\"\n",
            dir.path().join("carehub.db").display(),
            free_port()
        ),
    )
    .unwrap();
    let child = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg("mount -t tmpfs none /proc/sys && test ! -e /proc/sys/kernel/hostname && exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_carehub"))
        .arg(&config)
        .env("INVOCATION_ID", "carehub-integration-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare (util-linux) runs");
    let _daemon = Daemon { child: Some(child) };
    let cert = dir.path().join("web-cert.pem");
    let pem = crate::support::wait_for(std::time::Duration::from_secs(30), || {
        let pem = std::fs::read(&cert).ok()?;
        pem.ends_with(b"-----END CERTIFICATE-----\n").then_some(pem)
    })
    .expect("carehub writes its web certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(names.contains(&host), "{host} not in {names:?}");
    assert!(names.contains(&format!("{host}.local")), "{names:?}");
}

/// A public key made by OpenSSH's own ssh-keygen: (the .pub line, the
/// private key file's text).
fn ssh_key(dir: &Path, name: &str, args: &[&str]) -> (String, String) {
    let path = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .args(args)
        .output()
        .expect("ssh-keygen (openssh-client) runs");
    assert!(out.status.success(), "{}", text(&out));
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let private = std::fs::read_to_string(&path).unwrap();
    (public.trim().to_owned(), private)
}

#[test]
fn engineers_ssh_keys_go_to_data_for_root_only_and_a_bad_key_applies_nothing() {
    let pki = Pki::new();
    let keys = tempfile::tempdir().unwrap();
    let (ed25519, ed25519_private) = ssh_key(keys.path(), "alice", &["-t", "ed25519"]);
    let (ecdsa, _) = ssh_key(keys.path(), "bob", &["-t", "ecdsa", "-b", "384"]);
    let (rsa_small, _) = ssh_key(keys.path(), "old", &["-t", "rsa", "-b", "1024"]);

    let card = Card::new();
    card.good_bundle(&pki);
    let file = format!(
        "# field engineers\n{ed25519}\n\nfrom=\"192.0.2.0/24\",no-agent-forwarding {ecdsa}\n"
    );
    std::fs::write(card.bundle.join("authorized_keys"), &file).unwrap();
    let out = card.provision(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let installed = card.system.join("authorized_keys");
    assert_eq!(mode(&installed), 0o600);
    let meta = std::fs::metadata(&installed).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        nix::unistd::getuid().as_raw(),
        "owned by the provisioning account (root on the box)"
    );
    let text_installed = std::fs::read_to_string(&installed).unwrap();
    assert!(text_installed.contains(&ed25519), "{text_installed}");
    assert!(text_installed.contains(&ecdsa), "{text_installed}");
    // OpenSSH reads the installed file as two keys.
    let listed = std::process::Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(&installed)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 2);
    assert!(
        !card.bundle.join("authorized_keys").exists(),
        "taken off the stick"
    );

    // A later bundle without keys keeps them.
    card.good_bundle(&pki);
    let out = card.provision(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), text_installed);

    // Any bad key: nothing of the bundle is applied, the keys stay, and the
    // card says which line is wrong.
    let (_, swapped_blob) = ecdsa.split_once(' ').unwrap();
    let bad: [(&str, String, &str); 6] = [
        (
            "a private key",
            ed25519_private.clone(),
            "holds a private key",
        ),
        (
            "a short RSA key",
            format!("{ed25519}\n{rsa_small}\n"),
            "line 2: RSA key of 1024 bits",
        ),
        (
            "a key whose text is cut",
            format!("{}\n", &ed25519[..ed25519.len() - 20]),
            "line 1:",
        ),
        (
            "a key of another type than it says",
            format!(
                "ssh-ed25519 {}\n",
                swapped_blob.split_whitespace().next().unwrap()
            ),
            "does not hold a ssh-ed25519 key",
        ),
        (
            "a DSA key",
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP8= old\n".to_owned(),
            "DSA keys",
        ),
        (
            "no key at all",
            "# nobody yet\n".to_owned(),
            "no public key",
        ),
    ];
    for (what, keys_file, says) in bad {
        let card = Card::new();
        card.good_bundle(&pki);
        std::fs::write(card.bundle.join("authorized_keys"), keys_file).unwrap();
        let out = card.provision(&[]);
        assert!(!out.status.success(), "{what}: accepted: {}", text(&out));
        assert!(text(&out).contains(says), "{what}: {}", text(&out));
        assert_eq!(card.applied(), vec![], "{what}: something was applied");
        let failed = std::fs::read_to_string(card.bundle.join("PROVISION-FAILED.txt")).unwrap();
        assert!(failed.contains(says), "{what}: {failed}");
        assert!(card.bundle.join("authorized_keys").exists(), "{what}");
    }
}
