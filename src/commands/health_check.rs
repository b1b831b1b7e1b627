//! `carehub health-check`: whether this boot of the gateway is good, for
//! `carehub-healthy.service` (ordered before `boot-complete.target`, which
//! RAUC's mark-good waits for). Healthy means, all at once, within the time
//! limit:
//! - carehub answers on its web listener (it sends READY only once the store is
//!   open, the source started and the listener bound; the unit runs after
//!   carehub.service has started) and `/healthz` says every stage is beating;
//! - with the BLE source, the Bluetooth adapter is present and scanning;
//! - the store is writable: the filesystem of the database is mounted
//!   read-write, not full, and no commit has failed;
//! - the uplink is connected, or not configured.
//!
//! It reads the daemon's own status (`/healthz`, `/api/v1/gateway` as the local
//! "cli" account, like `carehub pair`) and asks again every two seconds until
//! all hold or the time is up; then it names every condition that failed.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{Config, SourceKind};

#[derive(Debug, clap::Args)]
pub struct HealthCheckArgs {
    /// The configuration the daemon runs with.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/carehub/carehub.toml"
    )]
    pub config: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value = "300")]
    pub timeout: u64,
}

/// What was found unhealthy when the time was up.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The configuration could not be read.
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// Not healthy within the time limit.
    #[error("carehub is not healthy after {seconds} s:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Unhealthy { seconds: u64, problems: Vec<String> },
}

/// Waits until carehub is healthy; returns what was checked.
pub fn run(args: &HealthCheckArgs) -> Result<String, HealthError> {
    let config = Config::load(&args.config)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let problems = check_once(&config);
        if problems.is_empty() {
            return Ok(format!(
                "carehub is healthy: stages beating, {}, store writable, uplink {}",
                match config.sensors.source {
                    SourceKind::Ble => format!("adapter {} scanning", config.ble.adapter),
                    SourceKind::Simulator => "simulated sensors".to_owned(),
                },
                if config.uplink.enabled {
                    "connected"
                } else {
                    "not configured"
                }
            ));
        }
        if Instant::now() >= deadline {
            return Err(HealthError::Unhealthy {
                seconds: args.timeout,
                problems,
            });
        }
        std::thread::sleep(Duration::from_secs(2).min(deadline - Instant::now()));
    }
}

/// Every condition that does not hold right now; empty when healthy.
pub fn check_once(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let state_dir = config
        .store
        .path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    problems.extend(store_filesystem(&state_dir));
    let client = match Client::new(config, &state_dir) {
        Ok(c) => c,
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    match client.get("/healthz") {
        Ok((200, _)) => {}
        Ok((status, body)) => problems.push(format!("/healthz answered {status}: {body}")),
        Err(e) => {
            problems.push(e);
            return problems;
        }
    }
    match client.get("/api/v1/gateway") {
        Ok((200, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) => problems.extend(judge_status(config, &v)),
            Err(e) => problems.push(format!("/api/v1/gateway is not JSON: {e}")),
        },
        Ok((status, body)) => problems.push(format!("/api/v1/gateway answered {status}: {body}")),
        Err(e) => problems.push(e),
    }
    problems
}

/// The conditions read from the gateway status JSON (`web::gateway`).
#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value read by index: a missing key reads as Null, never a panic"
)]
pub fn judge_status(config: &Config, v: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    if config.sensors.source == SourceKind::Ble {
        // The source reports scanning only while the adapter is present.
        let bt = &v["bluetooth"];
        if bt["source"] != "ble" {
            problems.push("carehub is not using the Bluetooth source".to_owned());
        } else if bt["scanning"] != serde_json::Value::Bool(true) {
            problems.push(format!(
                "Bluetooth adapter {} is absent or not scanning",
                config.ble.adapter
            ));
        }
    }
    let storage = &v["storage"];
    if storage["disk_full"] == serde_json::Value::Bool(true) {
        problems.push("the store's disk is full".to_owned());
    }
    if let Some(n) = storage["commit_errors"].as_u64().filter(|n| *n > 0) {
        problems.push(format!("the store has failed {n} commits"));
    }
    // The record of a damaged database stays for good (decision 0015); only
    // damage found now, or a start that had to replace the file, makes this
    // boot unhealthy, as the storage has just failed.
    if let Some(d) = storage["damage_found"].as_str() {
        problems.push(d.to_owned());
    }
    if storage["replaced_at_start"] == serde_json::Value::Bool(true)
        && let Some(c) = storage["corruption"].as_str()
    {
        problems.push(format!("the database was found corrupt: {c}"));
    }
    let uplink = v["uplink"]["state"].as_str().unwrap_or("unknown");
    if config.uplink.enabled && uplink != "connected" {
        let why = v["uplink"]["last_error"]
            .as_str()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        problems.push(format!("uplink is {uplink}, not connected{why}"));
    }
    problems
}

/// The store's directory is on a filesystem mounted read-write.
fn store_filesystem(dir: &Path) -> Option<String> {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) if s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) => Some(format!(
            "the store's directory {} is on a read-only filesystem",
            dir.display()
        )),
        Ok(_) => None,
        Err(e) => Some(format!("the store's directory {}: {e}", dir.display())),
    }
}

/// A one-request-per-connection client for the daemon's own listener.
struct Client {
    addr: SocketAddr,
    token: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Client {
    fn new(config: &Config, state_dir: &Path) -> Result<Client, String> {
        let listen = config.web.listen;
        // A wildcard listener is reached on loopback.
        let ip: IpAddr = match listen.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ip => ip,
        };
        let addr = SocketAddr::new(ip, listen.port());
        let token_path = state_dir.join(crate::web::serve::CLI_TOKEN_FILE);
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| format!("carehub has not written {}: {e}", token_path.display()))?
            .trim()
            .to_owned();
        let tls = if config.web.https {
            let cert = if config.web.cert_file.as_os_str().is_empty() {
                state_dir.join(crate::web::tls::GENERATED_CERT)
            } else {
                config.web.cert_file.clone()
            };
            let leaf = crate::web::tls::leaf_from_file(&cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            Some(crate::web::tls::pinned_client(leaf).map_err(|e| format!("tls: {e}"))?)
        } else {
            None
        };
        Ok(Client { addr, token, tls })
    }

    fn get(&self, path: &str) -> Result<(u16, String), String> {
        let addr = self.addr;
        let unreachable = |e: std::io::Error| format!("carehub does not answer at {addr}: {e}");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.token
        );
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(unreachable)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(unreachable)?;
        let mut response = String::new();
        match &self.tls {
            None => {
                let mut s = s;
                s.write_all(request.as_bytes()).map_err(unreachable)?;
                s.read_to_string(&mut response).map_err(unreachable)?;
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| format!("tls: {e}"))?;
                let mut tls = rustls::StreamOwned::new(conn, s);
                tls.write_all(request.as_bytes()).map_err(unreachable)?;
                match tls.read_to_string(&mut response) {
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == std::io::ErrorKind::UnexpectedEof
                            && !response.is_empty() => {}
                    Err(e) => return Err(unreachable(e)),
                }
            }
        }
        let status: u16 = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("unreadable answer from carehub at {addr}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(ble: bool, uplink: bool, status: serde_json::Value, expected: &[&str]) {
        let mut c = Config::default();
        if ble {
            c.sensors.source = SourceKind::Ble;
        }
        c.uplink.enabled = uplink;
        let got = judge_status(&c, &status);
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for (g, e) in got.iter().zip(expected) {
            assert!(g.contains(e), "{g:?} does not say {e:?}");
        }
    }

    fn status(source: &str, scanning: bool, uplink: &str) -> serde_json::Value {
        json!({
            "bluetooth": {"source": source, "adapter": "hci0", "scanning": scanning},
            "storage": {"disk_full": false, "commit_errors": 0, "corruption": null},
            "uplink": {"state": uplink, "last_error": "tls handshake refused"}
        })
    }

    #[test]
    fn healthy_means_adapter_store_and_uplink() {
        check(true, true, status("ble", true, "connected"), &[]);
        check(false, false, status("simulator", false, "disabled"), &[]);
        check(
            true,
            false,
            status("simulator", false, "disabled"),
            &["not using the Bluetooth source"],
        );
        check(
            true,
            false,
            status("ble", false, "disabled"),
            &["hci0 is absent or not scanning"],
        );
        check(
            true,
            true,
            status("ble", true, "waiting to reconnect"),
            &["uplink is waiting to reconnect, not connected: tls handshake refused"],
        );
        let mut full = status("ble", true, "connected");
        full["storage"] = json!({"disk_full": true, "commit_errors": 3, "corruption": "moved aside", "replaced_at_start": true});
        check(
            true,
            true,
            full,
            &["disk is full", "failed 3 commits", "corrupt"],
        );
        // The record of an earlier replacement alone is no reason; damage
        // found now is.
        let mut earlier = status("ble", true, "connected");
        earlier["storage"]["corruption"] = json!("moved aside last month");
        earlier["storage"]["replaced_at_start"] = json!(false);
        check(true, true, earlier.clone(), &[]);
        earlier["storage"]["damage_found"] = json!("the database file is damaged (read: …)");
        check(true, true, earlier, &["the database file is damaged"]);
    }
}
