//! The residents overview under load: 50 concurrent clients asking for `/` with 60
//! residents on the page, against the real `carehub demo` (its simulator writing
//! readings all the while), from a load generator in this, a second, process on
//! loopback. Prints p50/p90/p99/max latency, requests per second, and the server's
//! CPU time per request. Goal (issue 7): p99 <= 20 ms.
//!
//! Run with `cargo bench --bench web_load`; results go to docs/performance.md.
//! Options: `--clients N` (50), `--residents N` (60), `--seconds N` (10, after a
//! 2 s warm-up), `--path P` (`/`), `--url http://HOST:PORT` (load a gateway that
//! is already running instead of starting the demo), `--cookie 'NAME=VALUE'` (a
//! session cookie sent with every request, for pages that require sign-in).
//!
//! Each client is a thread with one keep-alive HTTP/1.1 connection that sends a
//! request as soon as the previous answer is read (a closed loop, as wrk does).
//! Any answer but 200 is counted as an error and shown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Options {
    clients: usize,
    residents: usize,
    seconds: u64,
    path: String,
    url: Option<String>,
    cookie: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        clients: 50,
        residents: 60,
        seconds: 10,
        path: "/".to_owned(),
        url: None,
        cookie: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--clients" => o.clients = value().parse().expect("--clients N"),
            "--residents" => o.residents = value().parse().expect("--residents N"),
            "--seconds" => o.seconds = value().parse().expect("--seconds N"),
            "--path" => o.path = value(),
            "--url" => o.url = Some(value()),
            "--cookie" => o.cookie = Some(value()),
            // cargo bench passes --bench; nothing else is expected.
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// GET `path` on a fresh connection with `cookie` (`NAME=VALUE`, or empty): the
/// status and body, or `None`.
fn get_once(addr: SocketAddr, path: &str, cookie: &str) -> Option<(u16, String)> {
    let raw = get_raw(addr, path, cookie)?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The whole answer to a GET, headers included.
fn get_raw(addr: SocketAddr, path: &str, cookie: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let cookie = if cookie.is_empty() {
        String::new()
    } else {
        format!("Cookie: {cookie}\r\n")
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{cookie}\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

/// Follows the demo's one-time sign-in link: the session cookie it sets.
fn sign_in(addr: SocketAddr, link: &str) -> String {
    let path = &link[link.find("/signin/").expect("a sign-in link")..];
    let raw = get_raw(addr, path, "").expect("the gateway answers the sign-in link");
    raw.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap_or("").to_owned())
        })
        .unwrap_or_else(|| panic!("the sign-in link set no cookie:\n{raw}"))
}

/// `carehub demo` with `residents` residents, killed on drop.
struct Demo {
    child: Child,
    addr: SocketAddr,
    /// The demo admin's session, from the one-time link the demo prints.
    cookie: String,
    _dir: tempfile::TempDir,
}

impl Demo {
    fn start(residents: usize) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // `WEB_LOAD_BIN` runs another build of the daemon (e.g. to compare two).
        let bin =
            std::env::var("WEB_LOAD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_carehub").into());
        let child = Command::new(bin)
            .args(["demo", "--listen", &addr.to_string(), "--data-dir"])
            .arg(dir.path())
            .args(["--residents", &residents.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start carehub demo");
        let mut child = child;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the demo prints its sign-in link");
        let link = line
            .split_whitespace()
            .find(|w| w.contains("/signin/"))
            .unwrap_or_else(|| panic!("no sign-in link in {line:?}"))
            .to_owned();
        let cookie = sign_in(addr, &link);
        let demo = Demo {
            child,
            addr,
            cookie,
            _dir: dir,
        };
        // Wait until every resident has readings, so the page is at its full size.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let full =
                get_once(addr, "/api/v1/residents", &demo.cookie).is_some_and(|(status, body)| {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    status == 200
                        && v["residents"].as_array().is_some_and(|r| {
                            r.len() == residents
                                && r.iter()
                                    .all(|r| r["vitals"].as_array().is_some_and(|v| v.len() >= 4))
                        })
                });
            if full {
                break;
            }
            assert!(Instant::now() < deadline, "demo not full within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        demo
    }

    /// User + system CPU time the server has used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
        let rest = stat.rsplit_once(')').unwrap().1;
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|x| x.parse().unwrap())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis((f[0] + f[1]) * 1000 / hz)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client saw in the measured period.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: Vec<String>,
    bytes: u64,
}

/// Connects to `addr`, from `from` when given. The gateway allows 32
/// connections at once from one address (`web::conn::MAX_PER_CLIENT`), and
/// counts other loopback addresses than 127.0.0.1 as other hosts: on loopback
/// each client comes from an address of its own, as each tablet in a home does.
/// (Until 2026-12-03 all 50 came from 127.0.0.1, and every one past the 32nd
/// was refused: the run of that day counted 99,605 errors.)
fn connect(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    from: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(addr);
    };
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = rt.block_on(socket.connect(addr))?.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// One keep-alive connection asking for `request` until `stop`; answers that
/// arrive after `measure_from` are counted.
fn client(
    addr: SocketAddr,
    from: Option<IpAddr>,
    request: Arc<String>,
    measure_from: Instant,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut t = Tally::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime to connect with");
    let mut conn: Option<BufReader<TcpStream>> = None;
    // Reused for every answer: the generator must cost little next to the server.
    let mut buf = Buffers::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let r = conn.take().map_or_else(
            || {
                let s = connect(&rt, addr, from).map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                // Room for a whole answer, so that one is read in few system calls.
                Ok(BufReader::with_capacity(256 * 1024, s))
            },
            Ok,
        );
        let outcome =
            r.and_then(|mut c| exchange(&mut c, &request, &mut buf).map(|(s, n)| (c, s, n)));
        let elapsed = started.elapsed();
        let counted = started >= measure_from;
        match outcome {
            Ok((c, status, n)) => {
                conn = Some(c);
                if counted {
                    t.latencies_us
                        .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                    t.bytes += n as u64;
                    if status != 200 {
                        t.errors.push(format!("status {status}"));
                    }
                }
            }
            Err(e) => {
                if counted {
                    t.errors.push(e);
                }
            }
        }
    }
    t
}

/// A client's line and body buffers.
#[derive(Default)]
struct Buffers {
    line: String,
    body: Vec<u8>,
}

/// Sends one request and reads its answer; the status and the body's length.
fn exchange(
    c: &mut BufReader<TcpStream>,
    request: &str,
    buf: &mut Buffers,
) -> Result<(u16, usize), String> {
    c.get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let line = &mut buf.line;
    line.clear();
    c.read_line(line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    loop {
        line.clear();
        c.read_line(line).map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let n = length.ok_or("answer without Content-Length")?;
    buf.body.resize(n, 0);
    c.read_exact(&mut buf.body).map_err(|e| e.to_string())?;
    Ok((status, n))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let o = options();
    let demo: Option<Demo> = o.url.is_none().then(|| Demo::start(o.residents));
    let addr: SocketAddr = match (&demo, &o.url) {
        (Some(d), _) => d.addr,
        (None, Some(url)) => url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("--url http://IP:PORT"),
        (None, None) => unreachable!("the demo starts when no --url is given"),
    };
    let cookie_value = o
        .cookie
        .clone()
        .or_else(|| demo.as_ref().map(|d| d.cookie.clone()))
        .unwrap_or_default();
    let cookie = if cookie_value.is_empty() {
        String::new()
    } else {
        format!("Cookie: {cookie_value}\r\n")
    };
    let request = Arc::new(format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: carehub-web-load\r\n{cookie}\r\n",
        o.path
    ));
    let (status, page) = get_once(addr, &o.path, &cookie_value).expect("the gateway answers");
    assert_eq!(status, 200, "GET {} answered {status}: {page}", o.path);

    let warmup = Duration::from_secs(2);
    let stop = Arc::new(AtomicBool::new(false));
    let measure_from = Instant::now() + warmup;
    let threads: Vec<_> = (0..o.clients)
        .map(|i| {
            let (request, stop) = (request.clone(), stop.clone());
            // 127.0.1.1, 127.0.1.2, ...: one address a client on loopback.
            let from = (addr.ip().is_loopback() && addr.is_ipv4()).then(|| {
                let i = u32::try_from(i).unwrap_or(0);
                IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0101 + i))
            });
            std::thread::spawn(move || client(addr, from, request, measure_from, stop))
        })
        .collect();
    std::thread::sleep(warmup);
    let cpu_before = demo.as_ref().map(Demo::cpu);
    let measured_at = Instant::now();
    std::thread::sleep(Duration::from_secs(o.seconds));
    stop.store(true, Ordering::Relaxed);
    let measured = measured_at.elapsed();
    let cpu = demo
        .as_ref()
        .map(|d| d.cpu().saturating_sub(cpu_before.unwrap_or_default()));
    let tallies: Vec<Tally> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let mut all: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let errors: Vec<&String> = tallies.iter().flat_map(|t| &t.errors).collect();
    let bytes: u64 = tallies.iter().map(|t| t.bytes).sum();
    assert!(!all.is_empty(), "no answers: {errors:?}");
    let n = all.len();
    let rps = n as f64 / measured.as_secs_f64();
    println!(
        "web_load: GET {} with {} residents, {} clients, {} s (after {} s warm-up), on {} cores",
        o.path,
        o.residents,
        o.clients,
        o.seconds,
        warmup.as_secs(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  requests {n}, {rps:.0} req/s, {:.0} KiB per page, errors {}",
        bytes as f64 / n as f64 / 1024.0,
        errors.len()
    );
    println!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        percentile(&all, 0.50),
        percentile(&all, 0.90),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        percentile(&all, 1.0),
    );
    if let Some(cpu) = cpu {
        println!(
            "  server CPU {:.2} s in {:.1} s: {:.0} us per request",
            cpu.as_secs_f64(),
            measured.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / n as f64
        );
    }
    if let Some(e) = errors.first() {
        println!("  first error: {e}");
    }
    let p99 = percentile(&all, 0.99);
    println!(
        "  goal p99 <= 20 ms: {}",
        if p99 <= 20.0 { "met" } else { "MISSED" }
    );
}
