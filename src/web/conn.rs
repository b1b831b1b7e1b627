//! Limits on the web server's connections, whoever opens them: at most
//! [`MAX_CONNECTIONS`] at once from other hosts and [`MAX_PER_CLIENT`] from any
//! one address, and each closed once nothing has been read from or written to
//! it for [`IDLE`]. (A request head must also arrive within
//! [`HEAD_TIMEOUT`](super::serve::HEAD_TIMEOUT): the HTTP server's own timer,
//! see `serve`.)
//!
//! axum's server keeps a connection for as long as the client keeps it open, and
//! takes every connection offered. A device on the care home's network that opens
//! thousands of connections and sends nothing (or reads nothing) would otherwise
//! use up the process's file descriptors, and with them the database, the broker
//! connection and Bluetooth, not only the staff pages. A connection past a limit
//! is closed as soon as it is accepted; an idle one (a browser's spare keep-alive
//! connection, a client that stopped reading a page) is closed after [`IDLE`]. A
//! live page's event stream is not idle: it writes a keep-alive every
//! [`KEEP_ALIVE`](super::events::KEEP_ALIVE).
//!
//! The per-address limit means one client cannot hold every place; the gateway
//! itself (127.0.0.1, ::1 and the listen address: its own health probe,
//! `carehub pair`, the demo's browser) has places of its own that the
//! network's connections never count against, so the probe measures the
//! server, not how full it is. When the probe still
//! gets no answer, the web stage sheds the connections of the address holding
//! most ([`ConnTable::shed_busiest`]): it recovers by itself, and never needs
//! the whole daemon restarted.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Connections open at once from other hosts: a home's tablets and desks open a
/// few each (a browser keeps up to six to one server, one of them a live page's
/// events).
pub const MAX_CONNECTIONS: usize = 256;

/// Connections open at once from one address (loopback included): a browser's
/// six and a few tabs' event streams, well under [`MAX_CONNECTIONS`], so that
/// one client never holds every place.
pub const MAX_PER_CLIENT: usize = 32;

/// Connections open at once from the gateway itself ([`is_own`]), apart from
/// [`MAX_CONNECTIONS`].
pub const MAX_LOOPBACK: usize = MAX_PER_CLIENT;

/// Whether `ip` is the gateway itself for a listener on `local`: 127.0.0.1,
/// ::1, or the listen address (from which the probe connects to it). Other
/// 127.x addresses count as other hosts.
pub fn is_own(ip: IpAddr, local: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    ip == IpAddr::from([127, 0, 0, 1])
        || ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        || (!local.is_unspecified() && ip == local)
}

/// A connection with no bytes read or written for this long is closed. Longer
/// than the events stream's keep-alive (15 s), and than a browser needs between
/// a page and its assets.
pub const IDLE: Duration = Duration::from_secs(60);

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open at once from addresses other than loopback.
    pub max: usize,
    /// Open at once from any one address.
    pub per_client: usize,
    /// Open at once from the gateway itself ([`is_own`]).
    pub loopback: usize,
    /// Closed after this long without a byte read or written.
    pub idle: Duration,
}

impl Limits {
    /// The daemon's limits.
    pub const DAEMON: Limits = Limits {
        max: MAX_CONNECTIONS,
        per_client: MAX_PER_CLIENT,
        loopback: MAX_LOOPBACK,
        idle: IDLE,
    };
}

/// Who holds the connections open now, shared by a listener and its
/// connections (and the probe, which sheds through it).
#[derive(Debug, Default)]
pub struct ConnTable {
    inner: Mutex<TableInner>,
}

#[derive(Debug, Default)]
struct TableInner {
    /// Open connections from addresses other than loopback.
    remote: usize,
    loopback: usize,
    by_client: HashMap<IpAddr, Client>,
}

#[derive(Debug)]
struct Client {
    open: usize,
    /// The gateway itself.
    own: bool,
    /// Cancelled to close every connection of this client at once.
    shed: CancellationToken,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place for other hosts (or for loopback) is taken.
    Full,
    /// This address holds its share already.
    PerClient,
}

impl ConnTable {
    /// Takes a place for a connection from `ip` (`own`: the gateway itself),
    /// or says why not.
    fn admit(self: &Arc<Self>, ip: IpAddr, own: bool, limits: &Limits) -> Result<Slot, Refused> {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let loopback = own;
        let (used, cap) = if loopback {
            (t.loopback, limits.loopback)
        } else {
            (t.remote, limits.max)
        };
        if used >= cap {
            return Err(Refused::Full);
        }
        let client = t.by_client.entry(ip).or_insert_with(|| Client {
            open: 0,
            own,
            shed: CancellationToken::new(),
        });
        if client.open >= limits.per_client {
            return Err(Refused::PerClient);
        }
        client.open += 1;
        let shed = client.shed.clone();
        if loopback {
            t.loopback += 1;
        } else {
            t.remote += 1;
        }
        Ok(Slot {
            table: self.clone(),
            ip,
            own,
            shed,
        })
    }

    /// Connections open now from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        t.by_client.get(&ip).map_or(0, |c| c.open)
    }

    /// Closes every connection of the address (other than the gateway's own)
    /// that holds most, and says which and how many; `None` when no other host
    /// has one. The web stage's recovery when its probe gets no answer.
    pub fn shed_busiest(&self) -> Option<(IpAddr, usize)> {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (ip, client) = t
            .by_client
            .iter_mut()
            .filter(|(_, c)| !c.own)
            .max_by_key(|(_, c)| c.open)?;
        let open = client.open;
        client.shed.cancel();
        // Connections opened from now on get a fresh token; the shed ones still
        // give their places back as they drop.
        client.shed = CancellationToken::new();
        Some((*ip, open))
    }
}

/// One connection's place in the table, given back when dropped.
struct Slot {
    table: Arc<ConnTable>,
    ip: IpAddr,
    own: bool,
    shed: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.inner.lock().unwrap_or_else(|p| p.into_inner());
        if self.own {
            t.loopback = t.loopback.saturating_sub(1);
        } else {
            t.remote = t.remote.saturating_sub(1);
        }
        if let Some(c) = t.by_client.get_mut(&self.ip) {
            c.open = c.open.saturating_sub(1);
            if c.open == 0 {
                t.by_client.remove(&self.ip);
            }
        }
    }
}

/// A listener whose connections count against the limits and close when idle.
pub struct Guarded<L> {
    inner: L,
    table: Arc<ConnTable>,
    limits: Limits,
    /// When a refusal was last logged (at most one line a minute).
    refused_logged: Option<Instant>,
    refused: u64,
}

impl<L> Guarded<L> {
    /// `inner`'s connections under `limits`.
    pub fn new(inner: L, limits: Limits) -> Guarded<L> {
        Guarded {
            inner,
            table: Arc::default(),
            limits,
            refused_logged: None,
            refused: 0,
        }
    }

    /// With the daemon's limits.
    pub fn daemon(inner: L) -> Guarded<L> {
        Guarded::new(inner, Limits::DAEMON)
    }

    /// The table of open connections, for the probe's recovery.
    pub fn table(&self) -> Arc<ConnTable> {
        self.table.clone()
    }

    fn log_refusal(&mut self, ip: IpAddr, why: Refused) {
        self.refused += 1;
        let now = Instant::now();
        if self
            .refused_logged
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            let why = match why {
                Refused::Full => "too many connections open",
                Refused::PerClient => "too many connections open from one address",
            };
            tracing::warn!(
                limit = self.limits.max,
                per_client = self.limits.per_client,
                refused = self.refused,
                client = %ip,
                "web: {why}; new ones are closed until some end"
            );
            self.refused_logged = Some(now);
            self.refused = 0;
        }
    }
}

impl<L> axum::serve::Listener for Guarded<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = GuardedIo<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            let local = self
                .inner
                .local_addr()
                .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
            let own = is_own(addr.ip(), local);
            match self.table.admit(addr.ip(), own, &self.limits) {
                Ok(slot) => return (GuardedIo::new(io, slot, self.limits.idle), addr),
                Err(why) => {
                    // Closed at once: waiting would let the kernel's queue grow.
                    drop(io);
                    self.log_refusal(addr.ip(), why);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One connection: its place under the limits, its idle timer, and the signal
/// that sheds it.
pub struct GuardedIo<T> {
    io: T,
    _slot: Slot,
    shed: Pin<Box<WaitForCancellationFutureOwned>>,
    idle: Duration,
    last_active: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<T> GuardedIo<T> {
    fn new(io: T, slot: Slot, idle: Duration) -> GuardedIo<T> {
        let now = Instant::now();
        GuardedIo {
            io,
            shed: Box::pin(slot.shed.clone().cancelled_owned()),
            _slot: slot,
            idle,
            last_active: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    fn active(&mut self) {
        // The timer is moved on lazily, when it fires (see `expired`): resetting
        // it on every read and write would cost a timer-wheel update each.
        self.last_active = Instant::now();
    }

    /// Called when the connection would wait: whether it has been idle too long
    /// or was shed. Otherwise the timer is armed to wake this task when it will
    /// have been idle too long.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.shed.as_mut().poll(cx).is_ready() {
            return true;
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last_active + self.idle;
            if due <= Instant::now() {
                return true;
            }
            self.timer.as_mut().reset(due);
        }
    }

    fn timed_out() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "web connection idle too long or shed",
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> GuardedIo<T> {
    /// What a write came to: progress counts as activity; a write that waits
    /// (a client that stopped reading holds the response) is idle all the same.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
        Poll::Ready(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A server with `max` connections and `idle`: `/` answers "ok", `/slow`
    /// streams ten chunks 100 ms apart.
    async fn server(max: usize, idle: Duration) -> std::net::SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        // One fallback handler (not `route`s: the policy test reads every route
        // in src/web).
        let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
            if uri.path() != "/slow" {
                return axum::body::Body::from("ok");
            }
            let chunks = futures_util::stream::unfold(0u8, |n| async move {
                if n == 10 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, std::convert::Infallible>(format!("{n};")), n + 1))
            });
            axum::body::Body::from_stream(chunks)
        });
        tokio::spawn(async move {
            axum::serve(
                Guarded::new(
                    tcp,
                    Limits {
                        max,
                        per_client: max,
                        loopback: max,
                        idle,
                    },
                ),
                app,
            )
            .await
        });
        addr
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Whether the server closed `s` within `within` (EOF or reset).
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut b = [0u8; 64];
        match tokio::time::timeout(within, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => panic!("unexpected bytes"),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_idle_ones_end() {
        let idle = Duration::from_millis(600);
        let addr = server(2, idle).await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        // Both accepted (the server has them) before the third arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut c, Duration::from_millis(300)).await,
            "a third connection was kept past a limit of two"
        );
        assert!(
            !closed_within(&mut a, Duration::from_millis(200)).await,
            "closed before it was idle for long"
        );
        // Idle: both are closed, and the server takes new connections again.
        assert!(
            closed_within(&mut a, idle * 2).await,
            "idle connection kept"
        );
        assert!(closed_within(&mut b, idle).await, "idle connection kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(get(addr, "/").await.ends_with("ok"));
    }

    #[tokio::test]
    async fn a_response_that_keeps_writing_is_not_idle() {
        // The stream takes a second; no gap in it is as long as `idle`.
        let addr = server(4, Duration::from_millis(400)).await;
        let body = get(addr, "/slow").await;
        // Chunked: each chunk "n;" behind its size, then the empty last chunk.
        let chunks: String = (0..10).map(|n| format!("2\r\n{n};\r\n")).collect();
        assert!(body.ends_with(&format!("{chunks}0\r\n\r\n")), "{body}");
    }

    #[tokio::test]
    async fn a_client_that_sends_half_a_request_is_closed() {
        let addr = server(4, Duration::from_millis(400)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    }

    /// One address holds at most its share; the busiest one is shed when the
    /// probe gets no answer, and the gateway's own addresses are never shed.
    #[tokio::test]
    async fn one_address_holds_its_share_and_the_busiest_is_shed() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let limits = Limits {
            max: 10,
            per_client: 3,
            loopback: 3,
            idle: Duration::from_secs(60),
        };
        let guarded = Guarded::new(tcp, limits);
        let table = guarded.table();
        let app = axum::Router::new().fallback(|| async { "ok" });
        tokio::spawn(async move { axum::serve(guarded, app).await });
        let from = |last: u8| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::from(([127, 0, 0, last], 0)))
                .unwrap();
            socket.connect(addr)
        };
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(from(2).await.unwrap());
        }
        let mut other = from(3).await.unwrap();
        // Once 127.0.0.3's place is taken, 127.0.0.2's three are too.
        while table.open_from(IpAddr::from([127, 0, 0, 3])) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(table.open_from(IpAddr::from([127, 0, 0, 2])), 3);
        let mut fourth = from(2).await.unwrap();
        assert!(closed_within(&mut fourth, Duration::from_secs(2)).await);
        let own = TcpStream::connect(addr).await.unwrap();
        while table.open_from(IpAddr::from([127, 0, 0, 1])) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            table.shed_busiest(),
            Some((IpAddr::from([127, 0, 0, 2]), 3))
        );
        for s in &mut mine {
            assert!(closed_within(s, Duration::from_secs(2)).await, "not shed");
        }
        assert!(!closed_within(&mut other, Duration::from_millis(200)).await);
        drop(own);
    }
}
