//! The daemon under a stand-in for systemd: the test owns the `NOTIFY_SOCKET`
//! datagram socket and reads what the real binary sends, in order.
//!
//! Pins: READY comes first (after the store, source and listener are up), STATUS
//! follows, WATCHDOG pings keep a cadence well inside `WatchdogSec`, STOPPING comes
//! on SIGTERM; a hung stage (the debug-only fault hook) stops the pings; SIGHUP
//! reloads a good file and keeps the running config on a bad one; started as root
//! outside systemd, the daemon switches to `system.user`.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `WATCHDOG_USEC` the tests hand the daemon: pings every 250 ms, a stage is
/// stalled after the 3 s floor.
const WATCHDOG_USEC: u64 = 1_000_000;

/// Start-up of a debug build on a loaded 2-core machine can be slow.
const START_WITHIN: Duration = Duration::from_secs(60);

/// One notification datagram: when it arrived and its `KEY=value` lines.
#[derive(Debug, Clone)]
struct Message {
    at: Instant,
    lines: Vec<String>,
}

impl Message {
    fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }

    fn status(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| l.strip_prefix("STATUS="))
    }
}

struct Daemon {
    child: Child,
    socket: UnixDatagram,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `carehub` with `args` (`{dir}` replaced by the test's directory) and
    /// systemd's variables pointing at a socket the test owns.
    fn start(args: &[&str], env: &[(&str, String)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        let d = dir.path().display().to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_carehub"));
        cmd.args(args.iter().map(|a| a.replace("{dir}", &d)))
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("CAREHUB_TEST_HANG_STAGE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Daemon { child, socket, dir }
    }

    fn demo(env: &[(&str, String)]) -> Daemon {
        Daemon::start(
            &[
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                "{dir}/data",
            ],
            env,
        )
    }

    /// The next datagram, or `None` if none arrives within `within`.
    fn next(&self, within: Duration) -> Option<Message> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(Message {
                at: Instant::now(),
                lines: String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Every message until one satisfies `done` (included), failing after `within`.
    fn until(&mut self, within: Duration, done: impl Fn(&Message) -> bool) -> Vec<Message> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left.max(Duration::from_millis(1))) {
                Some(m) => {
                    let stop = done(&m);
                    got.push(m);
                    if stop {
                        return got;
                    }
                }
                None => {
                    let stderr = self.stop_and_stderr();
                    panic!(
                        "no matching notification within {within:?}; got {got:#?}\nstderr:\n{stderr}"
                    );
                }
            }
        }
    }

    /// Every message that arrives during `span`.
    fn during(&self, span: Duration) -> Vec<Message> {
        let end = Instant::now() + span;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Some(m) = self.next(left.max(Duration::from_millis(1))) {
                got.push(m);
            }
        }
        got
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_and_stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_ready(m: &Message) -> bool {
    m.has("READY=1")
}

#[test]
fn notify_order_is_ready_status_watchdog_cadence_then_stopping() {
    let mut d = Daemon::demo(&[]);
    let before_ready = d.until(START_WITHIN, is_ready);
    assert!(
        before_ready[..before_ready.len() - 1].is_empty(),
        "nothing may be sent before READY: {before_ready:#?}"
    );
    let ready = before_ready.last().unwrap().clone();
    let status = ready.status().unwrap_or_default();
    assert!(status.contains(" devices, 8 residents, "), "{status}");

    let running = d.during(Duration::from_secs(4));
    let pings: Vec<Instant> = running
        .iter()
        .filter(|m| m.has("WATCHDOG=1"))
        .map(|m| m.at)
        .collect();
    assert!(
        pings.len() >= 8,
        "expected a ping every 250 ms, got {}: {running:#?}",
        pings.len()
    );
    let mut last = ready.at;
    for at in &pings {
        // systemd restarts after WatchdogSec without a ping: every gap must be
        // shorter (pings are due every quarter; a loaded CI host may be late).
        assert!(
            at.duration_since(last) < Duration::from_micros(WATCHDOG_USEC),
            "a watchdog gap of {:?}",
            at.duration_since(last)
        );
        last = *at;
    }
    let statuses: Vec<&str> = running.iter().filter_map(Message::status).collect();
    assert!(
        statuses.iter().any(|s| s.contains("readings stored")),
        "a STATUS line after READY: {statuses:?}"
    );
    assert!(
        !running
            .iter()
            .any(|m| m.has("READY=1") || m.has("STOPPING=1")),
        "{running:#?}"
    );

    d.signal(libc::SIGTERM);
    let stopping = d.until(Duration::from_secs(10), |m| m.has("STOPPING=1"));
    assert!(
        stopping
            .last()
            .unwrap()
            .status()
            .unwrap_or_default()
            .contains("SIGTERM"),
        "{stopping:#?}"
    );
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    assert!(
        d.during(Duration::from_millis(300)).is_empty(),
        "nothing after STOPPING"
    );

    // The umask applied before the database was created: nothing for "others".
    let mode = std::fs::metadata(d.path("data/carehub.db")).unwrap().mode();
    assert_eq!(mode & 0o007, 0, "database mode {mode:o}");
}

/// The watchdog means "every stage is moving": hang one and the pings stop while
/// the process lives on, so systemd would restart it.
fn check_hung_stage_stops_the_watchdog(stage: &str) {
    let mut d = Daemon::demo(&[("CAREHUB_TEST_HANG_STAGE", stage.to_owned())]);
    d.until(START_WITHIN, is_ready);
    let stalled = d.until(Duration::from_secs(15), |m| {
        m.status()
            .is_some_and(|s| s.starts_with("stalled: ") && s.contains(stage))
    });
    let line = stalled.last().unwrap().status().unwrap().to_owned();
    assert!(line.contains("watchdog withheld"), "{line}");

    let after = d.during(Duration::from_micros(3 * WATCHDOG_USEC));
    assert!(
        !after.iter().any(|m| m.has("WATCHDOG=1")),
        "no ping while {stage} is stalled: {after:#?}"
    );
    assert!(
        d.still_running(),
        "the daemon itself must not exit; systemd restarts it"
    );

    d.signal(libc::SIGTERM);
    d.until(Duration::from_secs(10), |m| m.has("STOPPING=1"));
    // A hung stage cannot drain, so shutdown ends at its deadline (an error exit,
    // which `Restart=on-failure` answers); it must still end.
    d.wait_exit(Duration::from_secs(10));
}

#[test]
fn watchdog_stops_when_the_ingest_stage_hangs() {
    check_hung_stage_stops_the_watchdog("ingest");
}

/// A web server that answers nothing (the fault hook hangs every request) is
/// reported, but the watchdog pings go on: anyone on the network can slow the
/// staff pages, and a restart would stop the sensors, alerts and uplink too
/// (issue 17). Before, this withheld the watchdog.
#[test]
fn a_hung_web_server_is_reported_and_the_watchdog_kept() {
    let mut d = Daemon::demo(&[("CAREHUB_TEST_HANG_STAGE", "web".to_owned())]);
    d.until(START_WITHIN, is_ready);
    let degraded = d.until(Duration::from_secs(15), |m| {
        m.status()
            .is_some_and(|s| s.starts_with("degraded: ") && s.contains("web"))
    });
    let line = degraded.last().unwrap().status().unwrap().to_owned();
    assert!(line.contains("watchdog kept"), "{line}");
    assert!(
        !degraded
            .iter()
            .any(|m| m.status().is_some_and(|s| s.starts_with("stalled: "))),
        "{degraded:#?}"
    );
    let after = d.during(Duration::from_micros(3 * WATCHDOG_USEC));
    assert!(
        after.iter().filter(|m| m.has("WATCHDOG=1")).count() >= 2,
        "pings go on while only the web stage is stalled: {after:#?}"
    );
    d.signal(libc::SIGTERM);
    d.until(Duration::from_secs(10), |m| m.has("STOPPING=1"));
    d.wait_exit(Duration::from_secs(10));
}

fn write_config(path: &Path, dir: &Path, extra: &str) {
    write_config_listening(path, dir, "127.0.0.1:0", extra);
}

fn write_config_listening(path: &Path, dir: &Path, listen: &str, extra: &str) {
    std::fs::write(
        path,
        format!(
            "[store]\npath = \"{}/data/carehub.db\"\n[web]\nlisten = \"{listen}\"\nhttps = false\n{extra}",
            dir.display()
        ),
    )
    .unwrap();
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Status code and body of `GET path`, or `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{}Connection: close\r\n\r\n",
        crate::support::auth_header(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

/// A missing Bluetooth adapter is waited for, not a hang: the watchdog keeps being
/// fed, so systemd does not restart the gateway over and over (and leave it
/// stopped after five starts) because a dongle was unplugged.
#[test]
fn a_missing_bluetooth_adapter_does_not_stop_the_watchdog() {
    let bluez = crate::ble_support::FakeBluez::start(); // the fake starts with no adapter
    let cfg = tempfile::tempdir().unwrap();
    let file = cfg.path().join("carehub.toml");
    // The first retry waits 5 s, longer than the 3 s a stage may go without a beat.
    write_config(
        &file,
        cfg.path(),
        "[sensors]\nsource = \"ble\"\n[ble]\nreconnect_min_ms = 5000\nreconnect_max_ms = 20000\n",
    );
    let file_arg = file.display().to_string();
    let mut d = Daemon::start(
        &["run", "--config", &file_arg],
        &[("DBUS_SYSTEM_BUS_ADDRESS", bluez.bus_address())],
    );
    d.until(START_WITHIN, is_ready);
    let seen = d.during(Duration::from_secs(9));
    let pings: Vec<Instant> = seen
        .iter()
        .filter(|m| m.has("WATCHDOG=1"))
        .map(|m| m.at)
        .collect();
    assert!(pings.len() >= 9 * 2, "pings kept coming: {seen:#?}");
    assert!(
        pings
            .windows(2)
            .all(|w| w[1].duration_since(w[0]) < Duration::from_micros(WATCHDOG_USEC)),
        "no gap a watchdog would bite on: {seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|m| m.status().is_some_and(|s| s.starts_with("stalled: "))),
        "{seen:#?}"
    );
    assert!(d.still_running());
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn sighup_reloads_a_good_file_and_keeps_the_running_config_on_a_bad_one() {
    let cfg = tempfile::tempdir().unwrap();
    let file = cfg.path().join("carehub.toml");
    write_config(&file, cfg.path(), "");
    let file_arg = file.display().to_string();
    let mut d = Daemon::start(&["run", "--config", &file_arg], &[]);
    d.until(START_WITHIN, is_ready);

    write_config(&file, cfg.path(), "[simulator]\nresidents = 3\n");
    d.signal(libc::SIGHUP);
    let reload = d.until(Duration::from_secs(10), is_ready);
    assert!(
        reload
            .iter()
            .any(|m| m.has("RELOADING=1")
                && m.lines.iter().any(|l| l.starts_with("MONOTONIC_USEC="))),
        "RELOADING with its time before READY: {reload:#?}"
    );
    let status = reload.last().unwrap().status().unwrap();
    assert!(
        status.starts_with("config reloaded; restart needed for: simulator.residents;"),
        "{status}"
    );

    write_config(
        &file,
        cfg.path(),
        "[simulator]\nresidents = 4\nresidnets = 5\n",
    );
    d.signal(libc::SIGHUP);
    let rejected = d.until(Duration::from_secs(10), is_ready);
    let status = rejected.last().unwrap().status().unwrap();
    assert!(status.starts_with("config reload rejected: "), "{status}");
    // Line 8: the file's [web] section has listen and https before it.
    assert!(status.contains(":8: key `simulator.residnets`"), "{status}");
    assert!(
        status.contains("keeping the running configuration"),
        "{status}"
    );

    // Still healthy after both reloads.
    let pings = d.during(Duration::from_secs(1));
    assert!(pings.iter().any(|m| m.has("WATCHDOG=1")), "{pings:#?}");
    assert!(d.still_running());
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Real, effective, saved and filesystem uid must all have switched.
    let ids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    (ids.len() == 4 && ids.iter().all(|&i| i == ids[0])).then(|| ids[0])
}

#[test]
fn started_as_root_outside_systemd_it_runs_as_the_configured_user() {
    let me = unsafe { libc::geteuid() };
    let cfg = tempfile::tempdir().unwrap();
    // The switched user must be able to reach the data directory.
    std::fs::set_permissions(cfg.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = cfg.path().join("carehub.toml");
    let port = free_port();
    write_config_listening(
        &file,
        cfg.path(),
        &format!("127.0.0.1:{port}"),
        "[system]\nuser = \"nobody\"\n",
    );
    // Signs the API request in as a nurse (a session made in the daemon's
    // database once it answers).
    crate::support::web_state_dir(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        &cfg.path().join("data"),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_carehub"))
        .args(["run", "--config", &file.display().to_string()])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("INVOCATION_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let db = cfg.path().join("data/carehub.db");
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("the host has a nobody user")
        .uid
        .as_raw();
    // A non-root run must not switch at all.
    let expected = if me == 0 { nobody } else { me };
    let deadline = Instant::now() + START_WITHIN;
    let mut seen = None;
    while Instant::now() < deadline {
        seen = uid_of(pid);
        if seen == Some(expected) && db.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, Some(expected), "uid of the running daemon");
    if me == 0 {
        assert_eq!(std::fs::metadata(&db).unwrap().uid(), nobody);
        assert_eq!(
            std::fs::metadata(db.parent().unwrap()).unwrap().uid(),
            nobody
        );
    }
    // The web page's readers open the database as the new user: they must work.
    let deadline = Instant::now() + START_WITHIN;
    let answer = loop {
        match http_get(port, "/api/v1/residents") {
            Some(a) => break a,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => panic!("web page never answered"),
        }
    };
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert!(answer.1.contains("\"residents\":[{"), "{}", answer.1);
    // A clean stop as the new user: the writer still commits and the process exits 0.
    assert!(
        child.try_wait().unwrap().is_none(),
        "daemon died after switching"
    );
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn started_as_root_with_a_missing_user_run_refuses_to_go_on() {
    let cfg = tempfile::tempdir().unwrap();
    let file = cfg.path().join("carehub.toml");
    write_config(
        &file,
        cfg.path(),
        "[system]\nuser = \"carehub-no-such-user\"\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_carehub"))
        .args(["run", "--config", &file.display().to_string()])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("INVOCATION_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if unsafe { libc::geteuid() } != 0 {
        // Not root: there is nothing to drop, so the user is never looked up.
        let db = cfg.path().join("data/carehub.db");
        let deadline = Instant::now() + START_WITHIN;
        while !db.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "a non-root run must start"
        );
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
        return;
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("user \"carehub-no-such-user\" (system.user) does not exist"),
        "{stderr}"
    );
}

#[test]
fn a_failed_start_sends_no_ready_and_says_why_in_status() {
    // The port is taken, so the daemon cannot bind its web listener.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut d = Daemon::start(
        &["demo", "--listen", &listen, "--data-dir", "{dir}/data"],
        &[],
    );
    let got = d.until(START_WITHIN, |m| {
        m.status().is_some_and(|s| s.starts_with("failed: "))
    });
    assert!(!got.iter().any(is_ready), "{got:#?}");
    let status = got.last().unwrap().status().unwrap();
    assert!(
        status.contains(&format!("cannot listen on {listen} (web.listen)")),
        "{status}"
    );
    assert!(!d.wait_exit(Duration::from_secs(10)).success());
}
