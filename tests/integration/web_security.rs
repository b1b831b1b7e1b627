//! The staff UI's defences against a client on the care home's network, through
//! the real daemon (`carehub demo`) and real sockets on loopback (issue 17):
//! one client cannot hold every connection, a trickled request head is dropped,
//! every answer carries the security headers, a forged `Host` is refused,
//! `next` never leaves the site, concurrent sign-ins cannot exhaust memory, and
//! anonymous requests cannot grow the database.
//!
//! Other loopback addresses (127.0.0.2, …) stand for other hosts on the LAN: the
//! daemon counts connections per address, and the probe (127.0.0.1) keeps its
//! places.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Daemon, free_port, http_get, wait_for};

/// A started demo and its address.
fn demo(dir: &Path) -> (Daemon, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let daemon = Daemon::demo(port, dir, &["--residents", "2"]);
    wait_for(Duration::from_secs(20), || {
        http_get(addr, "/healthz").filter(|(s, _)| *s == 200)
    })
    .expect("the daemon answers within 20 s");
    (daemon, addr)
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2_free::Socket::bound_v4(from)?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// A tiny stand-in for binding a client socket to a source address with std
/// only: libc's socket, bind and connect.
mod socket2_free {
    use std::net::{SocketAddr, TcpStream};
    use std::os::fd::{FromRawFd, OwnedFd};

    pub struct Socket(OwnedFd);

    pub struct Target(SocketAddr);

    impl From<SocketAddr> for Target {
        fn from(a: SocketAddr) -> Target {
            Target(a)
        }
    }

    fn sockaddr(ip: [u8; 4], port: u16) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        }
    }

    impl Socket {
        pub fn bound_v4(ip: [u8; 4]) -> std::io::Result<Socket> {
            // SAFETY: plain socket(2) and bind(2) on a descriptor we own.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let owned = OwnedFd::from_raw_fd(fd);
                let a = sockaddr(ip, 0);
                if libc::bind(
                    fd,
                    (&a as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(Socket(owned))
            }
        }

        pub fn connect(&self, to: &Target) -> std::io::Result<()> {
            use std::os::fd::AsRawFd;
            let SocketAddr::V4(v4) = to.0 else {
                return Err(std::io::Error::other("IPv4 only"));
            };
            let a = sockaddr(v4.ip().octets(), v4.port());
            // SAFETY: connect(2) on our descriptor with a valid sockaddr_in.
            let r = unsafe {
                libc::connect(
                    self.0.as_raw_fd(),
                    (&a as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }
    }

    impl From<Socket> for TcpStream {
        fn from(s: Socket) -> TcpStream {
            TcpStream::from(s.0)
        }
    }
}

/// Whether the server closed `s` within `within` (EOF or reset).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// One HTTP/1.1 exchange: status, head (lower-cased names) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn exchange(addr: SocketAddr, request: &str) -> Answer {
    exchange_from([127, 0, 0, 1], addr, request)
}

fn exchange_from(from: [u8; 4], addr: SocketAddr, request: &str) -> Answer {
    let mut s = connect_from(from, addr).unwrap();
    // Queued password checks in a debug build take seconds each.
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, path: &str, host: &str, extra: &str) -> Answer {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn post_form(addr: SocketAddr, path: &str, body: &str, extra: &str) -> Answer {
    exchange(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Regression (issue 17, finding 1): 256 connections each trickling a header
/// line every 20 s held every place and the daemon's own probe failed. Now one
/// address gets 32 places, the 33rd is closed at once, other addresses and the
/// probe are served, and a trickled head is dropped after its time-out.
#[test]
fn one_client_cannot_hold_every_connection_and_a_trickled_head_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr) = demo(dir.path());
    let lan_client = [127, 0, 0, 2];
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut s = connect_from(lan_client, addr).expect("connect from 127.0.0.2");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        held.push(s);
    }
    // The server has taken all 32 once one of them is known to be open: ask
    // another address (the server accepts in order).
    assert_eq!(get(addr, "/healthz", &addr.to_string(), "").status, 200);
    let mut extra = connect_from(lan_client, addr).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "a 33rd connection from one address was kept open"
    );
    // Another host on the network is still served, and so is the probe's
    // address.
    let mut other = connect_from([127, 0, 0, 3], addr).unwrap();
    write!(
        other,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    other.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // A head trickled one line every 2 s (far inside the 60 s idle limit) is
    // dropped once the 10 s head time-out passes: within at most 10 lines.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    let mut dropped = false;
    for i in 0..10 {
        if closed_within(&mut slow, Duration::from_secs(2)) {
            dropped = true;
            break;
        }
        if slow
            .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .is_err()
        {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "a trickling client was kept for 20 s");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9),
        "dropped before the head time-out: {took:?}"
    );
    // The held connections from 127.0.0.2 met the same time-out.
    for s in &mut held {
        assert!(closed_within(s, Duration::from_secs(5)));
    }
}

/// Regression (issue 17, findings 4, 5, 10): no CSP, X-Frame-Options,
/// nosniff, Referrer-Policy or Cache-Control on pages and JSON; any `Host`
/// accepted (DNS rebinding reached the loopback demo).
#[test]
fn every_answer_carries_the_security_headers_and_a_foreign_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr) = demo(dir.path());
    let nurse = crate::support::auth_header(addr);
    for (path, extra) in [
        ("/login", ""),
        ("/healthz", ""),
        ("/api/v1/residents", nurse.as_str()),
        ("/residents/1", nurse.as_str()),
        ("/no-such-page", ""),
    ] {
        let a = get(addr, path, &addr.to_string(), extra);
        assert!(a.status != 0 && a.status != 421, "{path}: {}", a.head);
        let csp = a.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {}",
            a.head
        );
        assert_eq!(a.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(a.header("cache-control"), Some("no-store"), "{path}");
    }
    // The content-hashed assets keep their own caching.
    let page = get(addr, "/login", &addr.to_string(), "");
    let css = page
        .body
        .split("href=\"")
        .find_map(|s| s.split('"').next().filter(|h| h.starts_with("/assets/")))
        .unwrap()
        .to_owned();
    let a = get(addr, &css, &addr.to_string(), "");
    assert!(
        a.header("cache-control")
            .unwrap_or_default()
            .contains("immutable"),
        "{}",
        a.head
    );
    // A rebinding page's name is refused before any handler runs; the names
    // the gateway has, and IP addresses, are served.
    let port = addr.port();
    let a = get(addr, "/healthz", &format!("attacker.example:{port}"), "");
    assert_eq!(a.status, 421, "{}", a.head);
    assert!(a.header("content-security-policy").is_some());
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        assert_eq!(get(addr, "/healthz", &host, "").status, 200, "{host}");
    }
}

/// An account with a password, made through carehub's own accounts store while
/// the demo runs.
fn add_nurse(dir: &Path, name: &str, password: &str) {
    let accounts = carehub::store::accounts::Accounts::open(
        &dir.join("carehub.db"),
        carehub::config::Synchronous::Full,
    )
    .unwrap();
    let hash = carehub::web::auth::password::hash(password).unwrap();
    accounts
        .create_user(
            name,
            &hash,
            carehub::store::accounts::Role::Nurse,
            "test",
            carehub::model::Timestamp::now(),
        )
        .unwrap();
}

/// Regression (issue 17, finding 3): `next=/%09/example.invalid/phish`
/// redirected to `/\t/example.invalid/phish` (another host, to Chromium), and
/// `next=/%0a…` answered 500 after the session was made. Also: sign-out tells
/// the browser to forget what it kept (finding 5).
#[test]
fn next_never_leaves_the_site_and_sign_out_clears_site_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr) = demo(dir.path());
    add_nurse(dir.path(), "kay", "correct horse battery staple");
    for (next, want) in [
        ("/%09/example.invalid/phish", "/"),
        ("/%0a/example.invalid", "/"),
        ("/%0d%0aSet-Cookie:%20x=1", "/"),
        ("//example.invalid", "/"),
        ("/residents/1", "/residents/1"),
    ] {
        let a = post_form(
            addr,
            "/login",
            &format!("username=kay&password=correct+horse+battery+staple&next={next}"),
            "",
        );
        assert_eq!(a.status, 303, "{next}: {}", a.head);
        assert_eq!(a.header("location"), Some(want), "{next}");
        if want == "/" {
            let cookie = a
                .header("set-cookie")
                .and_then(|c| c.split(';').next())
                .unwrap()
                .to_owned();
            let page = get(
                addr,
                "/",
                &addr.to_string(),
                &format!("Cookie: {cookie}\r\n"),
            );
            let csrf = page
                .body
                .split("name=\"csrf\" value=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap()
                .to_owned();
            let out = post_form(
                addr,
                "/logout",
                &format!("csrf={csrf}"),
                &format!("Cookie: {cookie}\r\n"),
            );
            assert_eq!(out.status, 303, "{}", out.head);
            let clear = out.header("clear-site-data").unwrap_or_default();
            assert!(clear.contains("\"cache\""), "{}", out.head);
        }
    }
}

/// The resident set size and its peak, in KiB, of process `pid`.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Regression (issue 17, findings 2 and 7): 64 concurrent anonymous sign-ins
/// took the process from 17 MiB to 1.2 GiB, and kept it; a 2,000,000-character
/// name was logged whole, twice per attempt (ten attempts: 60 MB). Now at most
/// two Argon2 calls run, the rest wait in a short queue or get 503 with
/// Retry-After, and failed sign-ins are tallied with their fields capped.
#[test]
fn concurrent_sign_ins_and_huge_names_stay_within_memory_and_disk_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = demo(dir.path());
    let pid = daemon.child.as_ref().unwrap().id();
    let (before, _) = memory_kib(pid);
    let db = dir.path().join("carehub.db");
    let db_size = || {
        ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
            .map(|m| m.len())
            .sum::<u64>()
    };
    let size_before = db_size();
    // From 8 addresses, 8 each (one address may hold 32 connections).
    let threads: Vec<_> = (0..64u8)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!("username=user{i}&password=wrong+password+{i}");
                exchange_from(
                    [127, 0, 1, 10 + i % 8],
                    addr,
                    &format!(
                        "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                )
            })
        })
        .collect();
    let answers: Vec<Answer> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy = answers.iter().filter(|a| a.status == 503).count();
    assert!(
        answers.iter().all(|a| matches!(a.status, 401 | 503)),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!(busy > 0, "64 at once were all hashed: nothing bounded them");
    assert!(
        answers
            .iter()
            .filter(|a| a.status == 503)
            .all(|a| a.header("retry-after").is_some())
    );
    let (after, peak) = memory_kib(pid);
    eprintln!(
        "64 concurrent sign-ins: {busy} answered 503; RSS {before} KiB before, peak {peak} KiB, {after} KiB after"
    );
    // Two Argon2 calls of 19 MiB at once, with room for the runtime's own.
    assert!(
        peak < before + 120 * 1024,
        "peak {peak} KiB from {before} KiB: hashing is not bounded"
    );
    assert!(
        after < before + 60 * 1024,
        "{after} KiB kept after the sign-ins (from {before} KiB)"
    );

    // Ten sign-ins with a 2,000,000-character name, from different addresses.
    let huge = "x".repeat(2_000_000);
    for _ in 0..10 {
        let a = post_form(
            addr,
            "/login",
            &format!("username={huge}&password=whatever+it+is"),
            "",
        );
        assert_eq!(a.status, 401);
    }
    // Two hundred refused sign-in links.
    for i in 0..200 {
        assert_eq!(
            get(addr, &format!("/signin/x{i}"), &addr.to_string(), "").status,
            403
        );
    }
    let grown = db_size().saturating_sub(size_before);
    assert!(
        grown < 2 * 1024 * 1024,
        "the database grew by {grown} bytes from anonymous requests"
    );
}

/// One request with a JSON body and extra header lines.
fn send_json(addr: SocketAddr, method: &str, path: &str, extra: &str, json: &str) -> Answer {
    exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        ),
    )
}

/// Regression (issue 17, finding 9): the `cli-token` gave nurse rights (it
/// read residents and acknowledged alerts) and was logged as "cli". Now, on the
/// real daemon, it is refused everywhere but the pairing window, `carehub pair`
/// still opens the window with it, and the audit log names `carehub pair`.
#[test]
fn the_cli_token_opens_the_pairing_window_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr) = demo(dir.path());
    let cli = crate::support::cli_token_header(addr);
    assert!(cli.starts_with("Authorization: Bearer "), "no cli-token");
    let nurse = crate::support::auth_header(addr);
    assert!(nurse.contains("X-CSRF-Token"), "no nurse session");

    // A nurse reads the resident; the token cannot.
    let host = addr.to_string();
    assert_eq!(get(addr, "/api/v1/residents/1", &host, &nurse).status, 200);
    for path in ["/api/v1/residents/1", "/residents/1", "/api/v1/alerts"] {
        let a = get(addr, path, &host, &cli);
        assert_eq!(a.status, 403, "{path}: {}", a.head);
        assert!(!a.body.contains("Margaret Ellis"), "{path}: {}", a.body);
    }
    for (method, path, json) in [
        ("POST", "/api/v1/alerts/1/ack", ""),
        (
            "POST",
            "/api/v1/residents",
            r#"{"display_name":"X","room":"1"}"#,
        ),
        ("POST", "/api/v1/pairing/passkey", r#"{"passkey":"123456"}"#),
    ] {
        let a = send_json(addr, method, path, &cli, json);
        assert_eq!(a.status, 403, "{method} {path}: {}", a.head);
    }

    // The window: opened and closed with the token, and by `carehub pair`.
    let a = send_json(
        addr,
        "POST",
        "/api/v1/pairing/window",
        &cli,
        r#"{"seconds": 30}"#,
    );
    assert_eq!(a.status, 200, "{}{}", a.head, a.body);
    let a = send_json(addr, "DELETE", "/api/v1/pairing/window", &cli, "");
    assert!((200..300).contains(&a.status), "{}{}", a.head, a.body);
    let out = crate::support::carehub()
        .args(["pair", "--window", "30", "--plain-http", "--web", &host])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"open\":true"));

    // Every use is in the audit log under the name of `carehub pair`; the
    // refusals are not the nurse's.
    let accounts = carehub::store::accounts::Accounts::open(
        &dir.path().join("carehub.db"),
        carehub::config::Synchronous::Full,
    )
    .unwrap();
    let log = accounts.audit_page(0, 200).unwrap();
    let by = |action: &str| -> Vec<String> {
        log.iter()
            .filter(|e| e.action == action)
            .map(|e| e.who.clone())
            .collect()
    };
    assert_eq!(
        by("POST /api/v1/pairing/window"),
        ["cli (carehub pair)", "cli (carehub pair)"],
        "{log:?}"
    );
    assert_eq!(
        by("DELETE /api/v1/pairing/window"),
        ["cli (carehub pair)"],
        "{log:?}"
    );
    assert!(log.iter().all(|e| e.who != "cli"), "{log:?}");
}
