//! `carehub pair --window 120`: asks the running daemon (through its local web API)
//! to open the pairing window, so a technician at the gateway can pair new sensors
//! without the web page. Prints the API's JSON answer; exits 1 with the reason if
//! the daemon is unreachable or refuses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct PairArgs {
    /// Seconds the window stays open, 1 to 600.
    #[arg(long, value_name = "SECONDS", default_value = "120")]
    pub window: u64,
    /// The daemon's web address (`web.listen`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub web: SocketAddr,
}

/// Why the window could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// Nothing answered at the address, or the connection broke.
    #[error("cannot reach carehub at {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The daemon answered with an error status.
    #[error("carehub refused ({status}): {body}")]
    Refused { status: u16, body: String },
    /// The answer was not HTTP.
    #[error("unreadable answer from carehub at {0}")]
    BadResponse(SocketAddr),
}

/// Opens the window; returns the daemon's JSON answer.
pub fn run(args: &PairArgs) -> Result<String, PairError> {
    let addr = args.web;
    let unreachable = |source| PairError::Unreachable { addr, source };
    let body = format!("{{\"seconds\":{}}}", args.window);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(unreachable)?;
    write!(
        s,
        "POST /api/v1/pairing/window HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Carehub-Client: cli\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(unreachable)?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(unreachable)?;
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(PairError::BadResponse(addr))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    if status == 200 {
        Ok(body)
    } else {
        Err(PairError::Refused { status, body })
    }
}
