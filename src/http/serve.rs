//! The HTTP/1.1 server loop, with the limits a public service needs against
//! slow and idle clients (axum's own `serve` has none of them):
//!
//! - **header-read timeout**: a request whose head has begun to arrive must
//!   be complete within `header_read_timeout`, else the connection closes;
//! - **idle timeout**: a keep-alive connection with no request under way
//!   and no byte received for `idle_timeout` closes;
//! - **connection cap**: at most `max_connections` open connections (and
//!   always fewer than the process's file-descriptor limit allows). At the
//!   cap, a new connection takes the place of the idlest one that has no
//!   request under way (slow-header connections first); when every
//!   connection is busy with a request, the new one is closed at once. So
//!   a crowd of trickling clients can never starve `GET /status`;
//! - **graceful shutdown with a deadline**: on shutdown no new connection is
//!   accepted, idle ones close, requests under way may finish within
//!   `shutdown_grace`; whatever is left then is closed.
//!
//! The loop runs on any [`axum::serve::Listener`] whose address is a
//! `SocketAddr`: [`TcpAcceptor`] in production (a TCP listener with this
//! loop's accept-error handling and `TCP_NODELAY`), an in-memory listener in
//! the simulator. Where two events are ready at once, the loop takes them in
//! a fixed order (`biased` selects), so a run on a simulated runtime replays
//! exactly.
//!
//! Requests carry the peer address ([`ClientAddr`]) for the auth budgets.
//! Connection-level events (timeouts, evictions, refusals, malformed
//! requests hyper answers itself) are logged and counted in
//! `triggers_http_connections_closed_total{reason}`.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::serve::Listener;
use axum::Router;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

pub use crate::config::ServeConfig;
use crate::metrics::{CloseReason, ConnMetrics};

/// Connections told to close (to make room at the cap) that may still hold
/// their descriptor while new ones are accepted.
const EVICTING_MAX: usize = 16;

/// Header fields hyper itself accepts; the API's own, lower limit is
/// checked by `observe`, which answers it with a problem body.
const HYPER_MAX_HEADERS: usize = 256;

/// The peer address of the connection a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// One open connection, as the accept loop and its watchdog see it.
struct Conn {
    base: Instant,
    in_flight: AtomicU32,
    /// Milliseconds since `base` at which the connection last became idle
    /// (accepted, or its last request finished).
    idle_since: AtomicU64,
    /// Milliseconds since `base` (+1, so 0 means none) at which bytes of a
    /// request head began to arrive while no request was under way.
    head_since: AtomicU64,
    /// Chosen to make room for a new connection (closing).
    evicted: AtomicBool,
    evict: Notify,
    /// A request head began to arrive: the watchdog's deadline changed.
    head_started: Notify,
}

impl Conn {
    fn new(base: Instant) -> Self {
        let c = Self {
            base,
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
            head_started: Notify::new(),
        };
        c.idle_since.store(c.now_ms(), Ordering::Relaxed);
        c
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// When this connection expires if nothing happens, and why.
    fn deadline(&self, cfg: &ServeConfig) -> Option<(Instant, CloseReason)> {
        if self.busy() {
            return None;
        }
        match self.head_since.load(Ordering::Acquire) {
            0 => Some((
                self.at(self.idle_since.load(Ordering::Acquire)) + cfg.idle_timeout,
                CloseReason::IdleTimeout,
            )),
            since => Some((
                self.at(since - 1) + cfg.header_read_timeout,
                CloseReason::HeaderTimeout,
            )),
        }
    }

    fn bytes_arrived(&self) {
        if !self.busy() && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now_ms() + 1, Ordering::Release);
            self.head_started.notify_one();
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
    }

    fn request_ended(&self) {
        self.idle_since.store(self.now_ms(), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends a request's in-flight mark however its future ends.
struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The socket, noting when request bytes arrive.
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let out = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(out, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.bytes_arrived();
        }
        out
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that notes when it has been read to its end.
struct ReadToEnd {
    inner: Incoming,
    read: Arc<AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let out = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(out, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The open connections, to pick one to close at the cap. Ordered by id, so
/// among equally idle connections the oldest goes first.
#[derive(Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections, not counting those already told to close.
    /// Every registered connection, those told to close included (each
    /// holds its descriptor until its task ends).
    fn total(&self) -> usize {
        self.lock().len()
    }

    fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|c| !c.evicted.load(Ordering::Acquire))
            .count()
    }

    /// Picks the connection to give up for a new one and tells it to close:
    /// among those with no request under way, one sending a request head
    /// slowly (the oldest such), else the longest idle. `false` when every
    /// connection is busy.
    fn evict_one(&self) -> bool {
        let conns = self.lock();
        let victim = conns
            .values()
            .filter(|c| !c.busy() && !c.evicted.load(Ordering::Acquire))
            .min_by_key(|c| match c.head_since.load(Ordering::Acquire) {
                0 => (1, c.idle_since.load(Ordering::Acquire)),
                since => (0, since),
            });
        match victim {
            Some(v) => {
                v.evicted.store(true, Ordering::Release);
                v.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the registry when its task ends.
struct Registered {
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A TCP listener as the server loop takes it: transient accept errors are
/// skipped; others (e.g. out of file descriptors) back off 20 ms and are
/// logged at most once a second; accepted sockets get `TCP_NODELAY`.
pub struct TcpAcceptor {
    listener: TcpListener,
    last_error: Option<Instant>,
}

impl TcpAcceptor {
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            last_error: None,
        }
    }
}

impl Listener for TcpAcceptor {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, peer);
                }
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    if self
                        .last_error
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        tracing::warn!(error = %e, "accept failed");
                        self.last_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves `app` on `listener` with `cfg`'s limits until `shutdown`
/// resolves, then drains (see the module docs).
pub async fn serve_with<L>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cfg: ServeConfig,
    metrics: ConnMetrics,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let cap = cfg.connection_cap();
    let cfg = Arc::new(cfg);
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let base = Instant::now();
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            // While as many connections as the cap allows, plus a few told
            // to close that have not closed yet, hold descriptors, new ones
            // wait in the listen backlog: evictions are asynchronous, and
            // accepting faster than they complete would run the process
            // out of file descriptors.
            (stream, peer) = listener.accept(), if registry.total() < cap + EVICTING_MAX => {
                if registry.len() >= cap && !registry.evict_one() {
                    metrics.closed(CloseReason::Refused);
                    tracing::debug!(%peer, "connection refused: every connection is busy");
                    drop(stream);
                    continue;
                }
                next_id += 1;
                let conn = Arc::new(Conn::new(base));
                registry.lock().insert(next_id, conn.clone());
                let registered = Registered { id: next_id, registry: registry.clone() };
                tasks.spawn(run_connection(
                    stream,
                    peer,
                    conn,
                    registered,
                    app.clone(),
                    cfg.clone(),
                    stop_rx.clone(),
                    metrics.clone(),
                ));
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = tasks.len();
    if open > 0 {
        tracing::info!(connections = open, "draining connections");
    }
    let drained = tokio::time::timeout(cfg.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left = tasks.len();
        for _ in 0..left {
            metrics.closed(CloseReason::ShutdownForced);
        }
        tracing::warn!(
            connections = left,
            "shutdown grace period over; closing the connections left"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_connection<S>(
    stream: S,
    peer: SocketAddr,
    conn: Arc<Conn>,
    _registered: Registered,
    app: Router,
    cfg: Arc<ServeConfig>,
    mut stop: watch::Receiver<bool>,
    metrics: ConnMetrics,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    metrics.opened();
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: conn.clone(),
    });
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            conn.request_started();
            let in_flight = InFlight(conn.clone());
            req.extensions_mut().insert(ClientAddr(peer));
            let app = app.clone();
            let read = Arc::new(AtomicBool::new(req.body().is_end_stream()));
            let req = req.map(|inner| {
                Body::new(ReadToEnd {
                    inner,
                    read: read.clone(),
                })
            });
            // Boxed: `poll_without_shutdown` needs an `Unpin` future.
            Box::pin(async move {
                let mut resp = app.oneshot(req).await;
                drop(in_flight);
                if let Ok(resp) = &mut resp {
                    if !read.load(Ordering::Acquire) {
                        // Answered before its body was read (413, 403, 401…):
                        // hyper closes the connection after this answer, and
                        // says so, so that no client sends its next request
                        // on a connection that is going away.
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                resp
            })
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_headers(HYPER_MAX_HEADERS)
        // The watchdog below times header reads (hyper's own timer would
        // also cut idle keep-alive connections at the same bound).
        .header_read_timeout(None);
    let mut connection = builder.serve_connection(io, service);
    let mut draining = false;
    let mut linger = false;
    let reason = loop {
        let deadline = conn.deadline(&cfg);
        let wake =
            deadline.map_or_else(|| Instant::now() + Duration::from_millis(250), |(at, _)| at);
        tokio::select! {
            biased;
            res = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => break match res {
                Ok(()) => {
                    linger = !draining;
                    CloseReason::Client
                }
                Err(e) => classify(&e, peer),
            },
            () = tokio::time::sleep_until(wake) => {
                if let Some((at, why)) = conn.deadline(&cfg) {
                    if Instant::now() >= at {
                        tracing::debug!(%peer, reason = why.as_str(), "closing connection");
                        break why;
                    }
                }
            }
            () = conn.head_started.notified() => {}
            () = conn.evict.notified() => {
                // A request may have begun since it was chosen: it finishes,
                // and the connection closes after it.
                if !conn.busy() {
                    tracing::debug!(%peer, "connection closed to make room for a new one");
                    break CloseReason::Evicted;
                }
                Pin::new(&mut connection).graceful_shutdown();
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                // Nothing under way (idle, or a head still arriving): close
                // now; a request under way may finish within the grace.
                if !conn.busy() {
                    break CloseReason::Shutdown;
                }
                Pin::new(&mut connection).graceful_shutdown();
            }
        }
    };
    if linger {
        lingering_close(connection.into_parts().io.into_inner()).await;
    }
    metrics.closed(reason);
}

/// How long a closing connection keeps reading (and discarding) what the
/// client still sends, in all and between two reads, and how much.
const LINGER_TOTAL: Duration = Duration::from_secs(2);
const LINGER_IDLE: Duration = Duration::from_millis(500);
const LINGER_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Closes a connection hyper has finished with, the way nginx's
/// `lingering_close` does: the answer is flushed and our side shut down
/// (FIN), then bytes the client is still sending (the rest of a body we
/// refused without reading: 413, 403, 401…) are read and dropped until it
/// closes too, for at most [`LINGER_TOTAL`] and [`LINGER_MAX_BYTES`].
/// Closing at once instead would make the kernel answer those bytes with a
/// reset, and a client still writing its body would see "connection reset"
/// instead of the problem body already sent to it.
async fn lingering_close<S>(mut io: Tracked<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if io.shutdown().await.is_err() {
        return;
    }
    let end = Instant::now() + LINGER_TOTAL;
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = LINGER_MAX_BYTES;
    loop {
        let until = end.min(Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(until, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 && n <= left => left -= n,
            _ => return,
        }
    }
}

/// Why hyper ended a connection with an error; malformed requests are
/// logged (hyper answered them itself: 400, 414 or 431 with an empty body).
fn classify(e: &hyper::Error, peer: SocketAddr) -> CloseReason {
    if e.is_parse_too_large() {
        tracing::info!(%peer, error = %e, "request head too large; hyper answered 431 or 414");
        CloseReason::HeadTooLarge
    } else if e.is_parse() || e.is_parse_status() {
        tracing::info!(%peer, error = %e, "malformed request; hyper answered 400");
        CloseReason::Malformed
    } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        CloseReason::Client
    } else {
        tracing::debug!(%peer, error = %e, "connection error");
        CloseReason::IoError
    }
}
