//! An HTTP/1.1 client over the simulated network (hyper's own client, one
//! keep-alive connection per simulated client), with the faults a request
//! can meet on the way: lost before it arrives, delayed, cancelled by the
//! client while the server works on it, its answer lost after the server
//! acted, a partition, a timeout. The caller learns only what a real client
//! would: an answer, "certainly not sent" (connection refused), or "unknown"
//! (the request may or may not have been carried out).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::net::Network;

/// What can happen to one request on the network, chosen per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFault {
    None,
    /// The request never arrives; the client waits for its timeout.
    DropRequest,
    /// The request arrives this much later.
    Delay(Duration),
    /// The client gives up (closes the connection) this long after sending.
    CancelAfter(Duration),
    /// The server answers; the answer is lost (the connection drops).
    DropResponse,
}

/// A request as the simulated clients build it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Bytes>,
}

impl Req {
    pub fn new(method: Method, target: impl Into<String>) -> Self {
        Self {
            method,
            target: target.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn json(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self.header("content-type", "application/json")
    }

    fn build(&self) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(self.target.as_str())
            .header("host", "api.sim");
        for (k, v) in &self.headers {
            b = b.header(*k, v.as_str());
        }
        b.body(Full::new(self.body.clone().unwrap_or_default()))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }
}

/// What the client learned.
#[derive(Debug, Clone)]
pub enum Answer {
    Http {
        status: u16,
        retry_after: Option<u64>,
        /// `Idempotent-Replayed: true` came with it.
        replayed: bool,
        body: Bytes,
    },
    /// Certainly not carried out: the request never left the client.
    NotSent(&'static str),
    /// May or may not have been carried out.
    Unknown(&'static str),
}

struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Client {
    net: Network,
    addr: SocketAddr,
    conn: Option<Conn>,
    timeout: Duration,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

/// Resolves when a partition begins.
async fn partition_begins(mut rx: watch::Receiver<Option<Instant>>) {
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        if rx.borrow_and_update().is_some() {
            return;
        }
    }
}

enum Race<T> {
    Done(T),
    Timeout,
    Cancelled,
    Partition,
}

impl Client {
    pub fn new(net: Network, addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            net,
            addr,
            conn: None,
            timeout,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the connection (the server sees the client go away).
    pub fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.task.abort();
        }
    }

    async fn race<T>(
        net: &Network,
        fut: impl Future<Output = T>,
        deadline: Instant,
        cancel_at: Option<Instant>,
    ) -> Race<T> {
        let partition = partition_begins(net.watch_partition());
        let cancel = async {
            match cancel_at {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            out = fut => Race::Done(out),
            () = sleep_until(deadline) => Race::Timeout,
            () = cancel => Race::Cancelled,
            () = partition => Race::Partition,
        }
    }

    /// A ready connection: the open one, or a new one; the answer to give
    /// when there is none.
    async fn ready(&mut self, deadline: Instant) -> Result<(), Answer> {
        if let Some(c) = &mut self.conn {
            if !c.sender.is_closed() {
                if let Ok(Ok(())) = timeout_at(deadline, c.sender.ready()).await {
                    return Ok(());
                }
            }
            self.close();
        }
        let io = self
            .net
            .connect(self.addr)
            .map_err(|_| Answer::NotSent("connection refused"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|_| Answer::NotSent("handshake failed"))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        self.conn = Some(Conn { sender, task });
        Ok(())
    }

    /// Sends `req` through `fault`; never takes longer than the timeout
    /// (plus a delay the fault adds before sending).
    pub async fn send(&mut self, req: &Req, fault: NetFault) -> Answer {
        match fault {
            NetFault::DropRequest => {
                tokio::time::sleep(self.timeout).await;
                self.close();
                return Answer::Unknown("timeout (request lost)");
            }
            NetFault::Delay(d) => tokio::time::sleep(d).await,
            _ => {}
        }
        let deadline = Instant::now() + self.timeout;
        if let Some(until) = self.net.partitioned_until() {
            if until >= deadline {
                sleep_until(deadline).await;
                self.close();
                return Answer::Unknown("timeout (partition)");
            }
            sleep_until(until).await;
        }
        let cancel_at = match fault {
            NetFault::CancelAfter(d) => Some(Instant::now() + d),
            _ => None,
        };
        let mut request = req.build();
        for _ in 0..2 {
            if let Err(refused) = self.ready(deadline).await {
                return refused;
            }
            let Some(conn) = self.conn.as_mut() else {
                return Answer::NotSent("no connection");
            };
            let sending = conn.sender.try_send_request(request);
            let resp = match Self::race(&self.net, sending, deadline, cancel_at).await {
                Race::Done(Ok(resp)) => resp,
                Race::Done(Err(mut e)) => {
                    self.close();
                    match e.take_message() {
                        // Not sent at all (the connection had closed): again
                        // on a new one.
                        Some(r) => {
                            request = r;
                            continue;
                        }
                        None => return Answer::Unknown("connection closed"),
                    }
                }
                other => return self.lost(other, deadline).await,
            };
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let replayed = resp
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
            let body = match Self::race(&self.net, resp.into_body().collect(), deadline, cancel_at)
                .await
            {
                Race::Done(Ok(b)) => b.to_bytes(),
                Race::Done(Err(_)) => {
                    self.close();
                    return Answer::Unknown("connection closed mid-answer");
                }
                other => return self.lost(other, deadline).await,
            };
            if fault == NetFault::DropResponse {
                self.close();
                return Answer::Unknown("answer lost");
            }
            return Answer::Http {
                status,
                retry_after,
                replayed,
                body,
            };
        }
        self.close();
        Answer::Unknown("connection closed")
    }

    async fn lost<T>(&mut self, how: Race<T>, deadline: Instant) -> Answer {
        self.close();
        match how {
            Race::Cancelled => Answer::Unknown("cancelled by the client"),
            Race::Partition => {
                sleep_until(deadline).await;
                Answer::Unknown("timeout (partition)")
            }
            _ => Answer::Unknown("timeout"),
        }
    }
}
