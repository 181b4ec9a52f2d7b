//! The simulated network: in-memory byte streams (`tokio::io::duplex`)
//! between clients and whichever server instance listens now. The service's
//! own server loop (`serve_with`: hyper HTTP/1.1, header and idle timeouts,
//! the connection cap, graceful drain) runs on [`SimListener`] exactly as it
//! runs on a TCP listener.
//!
//! Faults the network itself can have: no server listening (connections
//! refused, during an abrupt restart), and partitions (for a while no byte
//! reaches the server, and answers under way are lost). Losses and delays
//! of single requests are chosen per request by the client
//! ([`crate::client`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use axum::serve::Listener;
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Bytes buffered each way on one connection.
const PIPE_BYTES: usize = 64 * 1024;

/// Where the server listens.
pub const SERVER_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443));

/// A client address: one network per `net`, one host per `host`.
pub fn client_addr(net: u8, host: u8) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 1, net, host), 40_000))
}

type Incoming = (DuplexStream, SocketAddr);

#[derive(Clone)]
pub struct Network {
    inner: Arc<Mutex<NetState>>,
    /// The end of the current partition, if one is under way.
    partition: Arc<watch::Sender<Option<Instant>>>,
}

struct NetState {
    server: Option<mpsc::UnboundedSender<Incoming>>,
    connections: u64,
    refused: u64,
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Network {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(NetState {
                server: None,
                connections: 0,
                refused: 0,
            })),
            partition: Arc::new(watch::channel(None).0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A listener at [`SERVER_ADDR`] and the route to it: connections go
    /// to it once [`Network::route`] is called with the route (after the
    /// instance started; an instance still draining keeps the connections
    /// it has).
    pub fn listener(&self) -> (SimListener, Route) {
        let (tx, rx) = mpsc::unbounded_channel();
        (SimListener { rx }, Route(tx))
    }

    /// New connections go to this listener from now on.
    pub fn route(&self, route: Route) {
        self.lock().server = Some(route.0);
    }

    /// Opens a connection from `from`; refused when no server listens.
    pub fn connect(&self, from: SocketAddr) -> io::Result<DuplexStream> {
        let mut s = self.lock();
        let (client, server) = tokio::io::duplex(PIPE_BYTES);
        let sent = s
            .server
            .as_ref()
            .is_some_and(|tx| tx.send((server, from)).is_ok());
        if sent {
            s.connections += 1;
            Ok(client)
        } else {
            s.refused += 1;
            Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "no server listening",
            ))
        }
    }

    /// No byte reaches the server until `until`.
    pub fn partition(&self, until: Instant) {
        self.partition.send_replace(Some(until));
    }

    pub fn heal(&self) {
        self.partition.send_replace(None);
    }

    /// The end of the partition under way, if any.
    pub fn partitioned_until(&self) -> Option<Instant> {
        let until = *self.partition.borrow();
        until.filter(|u| *u > Instant::now())
    }

    /// Resolves when a partition begins (for answers under way).
    pub fn watch_partition(&self) -> watch::Receiver<Option<Instant>> {
        self.partition.subscribe()
    }

    /// (connections made, connections refused) so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.connections, s.refused)
    }
}

/// Where new connections go (see [`Network::listener`]).
pub struct Route(mpsc::UnboundedSender<Incoming>);

/// The server side of the simulated network, for `serve_with`.
pub struct SimListener {
    rx: mpsc::UnboundedReceiver<Incoming>,
}

impl Listener for SimListener {
    type Io = DuplexStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (DuplexStream, SocketAddr) {
        match self.rx.recv().await {
            Some(incoming) => incoming,
            // Another instance listens now: nothing more comes here.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SERVER_ADDR)
    }
}
