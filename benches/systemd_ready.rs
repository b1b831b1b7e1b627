//! Measures the daemon as systemd sees it: how long from exec to READY=1, how much
//! memory it holds once running, how much CPU it uses idle with the watchdog
//! supervisor and web probe running, and how long from SIGTERM to exit.
//!
//! Run with `cargo bench --bench systemd_ready`; results go to docs/performance.md.
//! A plain binary (no criterion): each sample is a whole process start.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test and benchmark code: a failure is the run's"
)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 10;
const IDLE: Duration = Duration::from_secs(10);

fn wait_for(socket: &UnixDatagram, line: &str, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = socket.recv(&mut buf).ok()?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == line)
        {
            return Some(Instant::now());
        }
    }
    None
}

fn proc_field(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn summary(name: &str, mut v: Vec<f64>, unit: &str) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name}: median {:.1} {unit}, min {:.1}, max {:.1} (n={})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1],
        v.len()
    );
}

fn main() {
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let (mut ready, mut rss, mut hwm, mut cpu, mut stop) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let sock_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&sock_path).unwrap();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_carehub"))
            .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "30000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let at = wait_for(&socket, "READY=1", Duration::from_secs(60)).expect("no READY");
        ready.push(at.duration_since(started).as_secs_f64() * 1000.0);
        let t0 = cpu_ticks(pid);
        std::thread::sleep(IDLE);
        cpu.push((cpu_ticks(pid) - t0) as f64 / ticks_per_s / IDLE.as_secs_f64() * 100.0);
        rss.push(proc_field(pid, "VmRSS:") as f64 / 1024.0);
        hwm.push(proc_field(pid, "VmHWM:") as f64 / 1024.0);
        let term = Instant::now();
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success());
        stop.push(term.elapsed().as_secs_f64() * 1000.0);
    }
    summary("exec to READY=1", ready, "ms");
    summary("RSS after 10 s running", rss, "MiB");
    summary("peak RSS (VmHWM)", hwm, "MiB");
    summary(
        "CPU while running (8 simulated residents)",
        cpu,
        "% of one core",
    );
    summary("SIGTERM to exit", stop, "ms");
}
