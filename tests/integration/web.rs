//! The staff pages through the real daemon and a real socket: live-update
//! streams carry events and never hold up shutdown; the pages, metrics and the
//! OpenAPI document are served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{Daemon, free_port, http_get, wait_for};

/// Reads from `s` until `needle` has arrived or `limit` passes; returns all read.
fn read_until(s: &mut TcpStream, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit && !String::from_utf8_lossy(&got).contains(needle) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("reading the event stream: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn an_open_event_stream_carries_events_and_does_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let daemon = Daemon::demo(port, dir.path(), &["--residents", "3"]);
    wait_for(Duration::from_secs(10), || {
        http_get(addr, "/healthz").filter(|(s, _)| *s == 200)
    })
    .expect("the daemon answers within 10 s");

    for (path, words) in [
        ("/", "data-live="),
        ("/gateway", "Waiting to be sent"),
        ("/residents/1", "Last 24 hours"),
        (
            "/metrics",
            "# TYPE carehub_readings_committed_total counter",
        ),
        ("/api/v1/openapi.json", "\"openapi\": \"3.1.0\""),
    ] {
        let (status, body) = http_get(addr, path).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains(words), "{path}: {body}");
    }

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{}\r\n",
        super::support::auth_header(addr)
    )
    .unwrap();
    let head = read_until(&mut s, "event: readings", Duration::from_secs(10));
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("event: readings\ndata: readings"), "{head}");

    // The stream is still open: shutdown must end it, and stop cleanly in time.
    let start = Instant::now();
    let out = daemon.stop(libc::SIGTERM);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        start.elapsed()
    );
    let _ = read_until(&mut s, "\u{0}", Duration::from_secs(2));
    let mut rest = [0u8; 16];
    assert!(
        matches!(s.read(&mut rest), Ok(0)),
        "the event stream is closed after shutdown"
    );
}
