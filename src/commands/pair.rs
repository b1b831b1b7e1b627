//! `carehub pair --window 120`: asks the running daemon (through its local web API)
//! to open the pairing window, so a technician at the gateway can pair new sensors
//! without the web page. Prints the API's JSON answer; exits 1 with the reason if
//! the daemon is unreachable or refuses.
//!
//! It signs in with the token the daemon writes to `cli-token` in its state
//! directory (readable by the daemon's account only, so only root or that account
//! can pair from the command line), and speaks HTTPS trusting exactly the
//! gateway's own web certificate, or plain HTTP to a loopback address with
//! `--plain-http` (the demo).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct PairArgs {
    /// Seconds the window stays open, 1 to 600.
    #[arg(long, value_name = "SECONDS", default_value = "120")]
    pub window: u64,
    /// The daemon's web address (`web.listen`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub web: SocketAddr,
    /// The daemon's state directory (beside the database), holding `cli-token`.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/carehub")]
    pub state_dir: PathBuf,
    /// The web certificate to trust (default: `web-cert.pem` in the state
    /// directory, the one the gateway made).
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// Plain HTTP, for a daemon with `web.https = false` (loopback only).
    #[arg(long)]
    pub plain_http: bool,
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
    /// The token or the certificate could not be read.
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
    /// Plain HTTP was asked for a non-loopback address.
    #[error("plain HTTP is only for a loopback address, not {0}")]
    NotLoopback(SocketAddr),
    /// TLS could not be set up.
    #[error("tls: {0}")]
    Tls(String),
}

/// Opens the window; returns the daemon's JSON answer.
pub fn run(args: &PairArgs) -> Result<String, PairError> {
    let addr = args.web;
    let unreachable = |source| PairError::Unreachable { addr, source };
    let body = format!("{{\"seconds\":{}}}", args.window);
    let token_path = args.state_dir.join(crate::web::serve::CLI_TOKEN_FILE);
    let token = std::fs::read_to_string(&token_path).map_err(|e| PairError::File {
        path: token_path.clone(),
        what: format!("cannot read the daemon's token (run as root or the carehub user): {e}"),
    })?;
    let request = format!(
        "POST /api/v1/pairing/window HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    );
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(unreachable)?;
    let mut response = String::new();
    if args.plain_http {
        if !addr.ip().is_loopback() {
            return Err(PairError::NotLoopback(addr));
        }
        let mut s = s;
        s.write_all(request.as_bytes()).map_err(unreachable)?;
        s.read_to_string(&mut response).map_err(unreachable)?;
    } else {
        let cert = args
            .cert
            .clone()
            .unwrap_or_else(|| args.state_dir.join(crate::web::tls::GENERATED_CERT));
        let leaf = crate::web::tls::leaf_from_file(&cert).map_err(|e| PairError::File {
            path: cert.clone(),
            what: e.to_string(),
        })?;
        let config =
            crate::web::tls::pinned_client(leaf).map_err(|e| PairError::Tls(e.to_string()))?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| PairError::Tls(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, s);
        tls.write_all(request.as_bytes()).map_err(unreachable)?;
        match tls.read_to_string(&mut response) {
            Ok(_) => {}
            // A server that closes without close_notify after a whole answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(e) => return Err(unreachable(e)),
        }
    }
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
