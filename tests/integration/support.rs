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

/// The member of staff the helpers below act as: a nurse account made through
/// carehub's own accounts store, with a session of its own (the `cli-token` of
/// `carehub pair` only opens the pairing window).
pub const TEST_NURSE: &str = "nurse.test";

/// A daemon the helpers sign in to: its address, its data directory (holding
/// `carehub.db` and `cli-token`) and, once made, the headers of its session.
struct Signed {
    addr: SocketAddr,
    dir: std::path::PathBuf,
    headers: Option<String>,
}

static STATE_DIRS: std::sync::Mutex<Vec<Signed>> = std::sync::Mutex::new(Vec::new());

/// Registers the data directory (where `carehub.db` is) of the daemon at `addr`.
pub fn web_state_dir(addr: SocketAddr, dir: &Path) {
    STATE_DIRS.lock().unwrap().push(Signed {
        addr,
        dir: dir.to_owned(),
        headers: None,
    });
}

/// The session cookie and `X-CSRF-Token` header lines of [`TEST_NURSE`] on the
/// (plain-HTTP) daemon at `addr`; empty when no data directory is registered
/// for it or its database is not ready yet. The account and the session are
/// made once per registration through carehub's accounts store (the same rows
/// `/login` writes), so the daemon sees an ordinary signed-in nurse: the audit
/// log, acknowledgements and pairing records name `nurse.test`. Call it once
/// the daemon answers (its accounts tables exist by then).
pub fn auth_header(addr: SocketAddr) -> String {
    let mut dirs = STATE_DIRS.lock().unwrap();
    let Some(signed) = dirs.iter_mut().rev().find(|s| s.addr == addr) else {
        return String::new();
    };
    if signed.headers.is_none() {
        signed.headers = nurse_session(&signed.dir);
    }
    signed.headers.clone().unwrap_or_default()
}

/// Makes [`TEST_NURSE`] (if the database has no such account yet) and a new
/// session for it; `None` while the daemon has not made its database.
fn nurse_session(dir: &Path) -> Option<String> {
    use carehub::store::accounts::{Accounts, Role};
    use carehub::web::auth::password;
    let db = dir.join("carehub.db");
    if !db.exists() {
        return None;
    }
    let accounts = Accounts::open(&db, carehub::config::Synchronous::Full).ok()?;
    let now = carehub::model::Timestamp::now();
    let user = match accounts.credentials(TEST_NURSE).ok()? {
        Some(c) => c.user,
        None => accounts
            .create_user(TEST_NURSE, password::NO_PASSWORD, Role::Nurse, "test", now)
            .ok()?,
    };
    let token = password::new_token().ok()?;
    let csrf = password::new_token().ok()?;
    accounts
        .create_session(&password::token_hash(&token), user.id, &csrf, "test", now)
        .ok()?;
    // Plain HTTP: the cookie without the `__Host-` prefix.
    Some(format!(
        "Cookie: carehub_session={token}\r\nX-CSRF-Token: {csrf}\r\n"
    ))
}

/// `Authorization: Bearer ...\r\n` with the `cli-token` of the daemon at
/// `addr`, as `carehub pair` sends it; empty before the daemon wrote it.
pub fn cli_token_header(addr: SocketAddr) -> String {
    let dirs = STATE_DIRS.lock().unwrap();
    dirs.iter()
        .rev()
        .find(|s| s.addr == addr)
        .and_then(|s| std::fs::read_to_string(s.dir.join("cli-token")).ok())
        .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
        .unwrap_or_default()
}

/// GET `path` (as [`TEST_NURSE`] when the daemon's data directory is registered);
/// `None` while nothing listens yet.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, "", "")
}

/// One HTTP/1.1 request (as [`TEST_NURSE`] when the daemon's data directory is
/// registered), `extra` being more header lines, each ending in `\r\n`; the
/// status and the body, or `None` while nothing listens yet.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let length = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{}{extra}{length}Connection: close\r\n\r\n{body}",
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

/// The python of a venv under the test target dir with `requirement` installed,
/// made on first use; `module` is imported to tell whether it is ready. Tests
/// run in parallel: one makes a venv while the others wait, so none finds it
/// half made.
pub fn python_venv(name: &str, module: &str, requirement: &str) -> std::path::PathBuf {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for a test's Python venv");
        assert!(made.success(), "python3 -m venv {name} failed");
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", requirement])
            .status()
            .unwrap();
        assert!(pip.success(), "pip install {requirement} failed");
    }
    python
}
