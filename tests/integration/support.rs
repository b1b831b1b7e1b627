//! Helpers shared by the integration tests: free ports, a tiny HTTP client, a
//! child process that is killed if a test fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn carehub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_carehub"))
}

/// `carehub run` started as systemd starts it. The tests run as root, and `run`
/// started by hand as root refuses to run without its service account; under
/// systemd (`INVOCATION_ID` set) the unit, not carehub, chooses the account. The
/// privilege drop itself is tested in `systemd.rs`.
pub fn carehub_as_service() -> Command {
    let mut c = carehub();
    c.env("INVOCATION_ID", "carehub-integration-test");
    c
}

/// A loopback port nobody is listening on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where the daemon listening on an address keeps its `cli-token`, so that the
/// helpers below can sign in as "cli" (nurse) the way `carehub pair` does.
static STATE_DIRS: std::sync::Mutex<Vec<(SocketAddr, std::path::PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

/// Registers the state directory of the daemon at `addr`.
pub fn web_state_dir(addr: SocketAddr, dir: &Path) {
    STATE_DIRS.lock().unwrap().push((addr, dir.to_owned()));
}

/// `Authorization: Bearer ...\r\n` for the daemon at `addr`, once it has
/// written its token; empty otherwise.
pub fn auth_header(addr: SocketAddr) -> String {
    let dir = STATE_DIRS
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(a, _)| *a == addr)
        .map(|(_, d)| d.clone());
    dir.and_then(|d| std::fs::read_to_string(d.join("cli-token")).ok())
        .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
        .unwrap_or_default()
}

/// GET `path` (as "cli" when the daemon's state directory is registered);
/// `None` while nothing listens yet.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{}Connection: close\r\n\r\n",
        auth_header(addr)
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A daemon child process, killed on drop so a failing test leaves nothing behind.
pub struct Daemon {
    pub child: Option<Child>,
}

impl Daemon {
    pub fn demo(port: u16, data_dir: &Path, extra: &[&str]) -> Daemon {
        web_state_dir(SocketAddr::from(([127, 0, 0, 1], port)), data_dir);
        let child = carehub()
            .args([
                "demo",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start carehub");
        Daemon { child: Some(child) }
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop(mut self, signal: i32) -> Output {
        let child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait_with_output().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
