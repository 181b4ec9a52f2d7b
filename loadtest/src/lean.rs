//! The lean engine (`--engine lean`): a closed-loop HTTP/1.1 client with as
//! little per-request work as possible, for measuring the server's hot path
//! when the load generator shares the machine's cores with it.
//!
//! Each user is one keep-alive connection (hyper's low-level client, no
//! pool, no cookie jar, no per-request metrics objects) that sends a request,
//! reads the whole answer, records its latency and sends the next. All users
//! run on one thread (a current-thread runtime), so the client never takes
//! more than one core. Requests started in the first second are warm-up and
//! not counted. What it reports has the same shape as a goose phase, so the
//! same checks and summary apply.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::{event_body, target, Endpoint, Kind, Phase, PhaseResult, RssSampler, PAGE};

const WARM_UP: Duration = Duration::from_secs(1);

/// What one user measured.
#[derive(Default)]
struct Tally {
    /// Latency of each counted request, µs, per endpoint.
    lat: BTreeMap<(&'static str, &'static str), Vec<u32>>,
    statuses: BTreeMap<(&'static str, &'static str), BTreeMap<u16, usize>>,
    fails: BTreeMap<(&'static str, &'static str), usize>,
    /// Events on the counted inbox pages (to show pages were full).
    inbox_events: usize,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (k, v) in other.lat {
            self.lat.entry(k).or_default().extend(v);
        }
        for (k, m) in other.statuses {
            let e = self.statuses.entry(k).or_default();
            for (s, n) in m {
                *e.entry(s).or_default() += n;
            }
        }
        for (k, n) in other.fails {
            *self.fails.entry(k).or_default() += n;
        }
        self.inbox_events += other.inbox_events;
    }
}

#[derive(Deserialize)]
struct Page {
    events: Vec<serde::de::IgnoredAny>,
    pagination: Pagination,
}

#[derive(Deserialize)]
struct Pagination {
    next_cursor: Option<String>,
}

fn socket_addr(host: &str) -> anyhow::Result<(SocketAddr, String)> {
    let Some(rest) = host.strip_prefix("http://") else {
        bail!("the lean engine speaks plain HTTP only (got {host})");
    };
    let authority = rest.split('/').next().unwrap_or(rest).to_owned();
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    Ok((addr, authority))
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request of `kind`; for inbox readers `cursor` is the walk's position.
fn request(
    kind: Kind,
    authority: &str,
    cursor: Option<&str>,
) -> (Request<Full<Bytes>>, (&'static str, &'static str), u16) {
    let bearer = format!("Bearer {}", target().key);
    let b = Request::builder().header(header::HOST, authority);
    match kind {
        Kind::Ingest => (
            b.method(Method::POST)
                .uri("/events")
                .header(header::AUTHORIZATION, bearer)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(event_body())))
                .expect("a valid request"),
            ("POST", "/events"),
            201,
        ),
        Kind::Inbox => {
            let uri = match cursor {
                Some(c) => format!("/inbox?limit={PAGE}&cursor={c}"),
                None => format!("/inbox?limit={PAGE}"),
            };
            (
                b.method(Method::GET)
                    .uri(uri)
                    .header(header::AUTHORIZATION, bearer)
                    .body(Full::new(Bytes::new()))
                    .expect("a valid request"),
                ("GET", "/inbox"),
                200,
            )
        }
        _ => (
            b.method(Method::GET)
                .uri("/status")
                .body(Full::new(Bytes::new()))
                .expect("a valid request"),
            ("GET", "/status"),
            200,
        ),
    }
}

/// Cursors are URL-safe base64 (see the API's README); anything else is
/// percent-encoded byte by byte.
fn url_safe(c: &str) -> String {
    c.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn user(
    kind: Kind,
    addr: SocketAddr,
    authority: String,
    count_from: Instant,
    end: Instant,
) -> Tally {
    let mut t = Tally::default();
    let mut sender = None;
    let mut cursor: Option<String> = None;
    while Instant::now() < end {
        let s = match &mut sender {
            Some(s) => s,
            None => match connect(addr).await {
                Ok(s) => sender.insert(s),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (req, ep, want) = request(kind, &authority, cursor.as_deref());
        let t0 = Instant::now();
        let counted = t0 >= count_from;
        let outcome = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        }
        .await;
        let micros = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
        match outcome {
            Ok((status, body)) => {
                if kind == Kind::Inbox {
                    let page = serde_json::from_slice::<Page>(&body).ok();
                    if counted {
                        t.inbox_events += page.as_ref().map_or(0, |p| p.events.len());
                    }
                    cursor = page
                        .and_then(|p| p.pagination.next_cursor)
                        .map(|c| url_safe(&c));
                }
                if counted {
                    t.lat.entry(ep).or_default().push(micros);
                    *t.statuses.entry(ep).or_default().entry(status).or_default() += 1;
                    if status != want {
                        *t.fails.entry(ep).or_default() += 1;
                    }
                }
            }
            Err(_) => {
                sender = None;
                if counted {
                    *t.fails.entry(ep).or_default() += 1;
                    t.lat.entry(ep).or_default().push(micros);
                }
            }
        }
    }
    t
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

/// Runs one phase: every (kind, weight) group gets its share of `users`
/// (at least one each), all for `run_time` seconds after a 1 s warm-up.
pub(crate) fn run_phase(
    host: &str,
    phase: &Phase,
    run_time: u64,
    pid: Option<u32>,
) -> anyhow::Result<PhaseResult> {
    let (addr, authority) = socket_addr(host)?;
    for (kind, _) in &phase.scenarios {
        if !matches!(kind, Kind::Status | Kind::Ingest | Kind::Inbox) {
            bail!("the lean engine runs status, ingest and inbox traffic (and so hotpath), not {kind:?}");
        }
    }
    let total_weight: usize = phase.scenarios.iter().map(|(_, w)| *w).sum();
    let users = phase.users.max(phase.scenarios.len());
    let mut plan = Vec::new();
    for (kind, w) in &phase.scenarios {
        let n = (users * w / total_weight.max(1)).max(1);
        plan.extend(std::iter::repeat_n(*kind, n));
    }
    eprintln!(
        "phase {} (lean engine): {} connections for {run_time}s against {host} ...",
        phase.name,
        plan.len()
    );
    let sampler = RssSampler::start(pid);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let count_from = started + WARM_UP;
    let end = count_from + Duration::from_secs(run_time);
    let tally = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = plan
                        .iter()
                        .map(|k| tokio::spawn(user(*k, addr, authority.clone(), count_from, end)))
                        .collect();
                    let mut all = Tally::default();
                    for t in tasks {
                        if let Ok(t) = t.await {
                            all.merge(t);
                        }
                    }
                    all
                })
            })
            .join()
    })
    .map_err(|_| anyhow::anyhow!("the lean client thread panicked"))?;
    let rss = sampler.finish();
    let seconds = run_time as f64;
    let pages = tally.lat.get(&("GET", "/inbox")).map_or(0, Vec::len);
    if pages > 0 {
        eprintln!(
            "  {} inbox pages read, {:.1} events per page on average (limit {PAGE})",
            pages,
            tally.inbox_events as f64 / pages as f64
        );
    }
    let mut endpoints: Vec<Endpoint> = tally
        .lat
        .into_iter()
        .map(|(ep, mut lat)| {
            lat.sort_unstable();
            Endpoint {
                method: ep.0.to_owned(),
                name: ep.1.to_owned(),
                count: lat.len(),
                fails: tally.fails.get(&ep).copied().unwrap_or(0),
                per_sec: lat.len() as f64 / seconds,
                p50_ms: percentile(&lat, 0.50),
                p95_ms: percentile(&lat, 0.95),
                p99_ms: percentile(&lat, 0.99),
                max_ms: lat.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
                statuses: tally.statuses.get(&ep).cloned().unwrap_or_default(),
            }
        })
        .collect();
    endpoints.sort_by_key(|e| std::cmp::Reverse(e.count));
    let created = endpoints
        .iter()
        .filter(|e| e.method == "POST")
        .map(|e| e.statuses.get(&201).copied().unwrap_or(0))
        .sum::<usize>() as f64;
    Ok(PhaseResult {
        name: phase.name.clone(),
        users: plan.len(),
        seconds,
        endpoints,
        events_created_per_sec: created / seconds,
        events_acked_per_sec: 0.0,
        server_rss_max_mib: rss,
        leases: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn cursors_are_escaped_for_the_query() {
        assert_eq!(url_safe("abc-_9"), "abc-_9");
        assert_eq!(url_safe("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn only_plain_http_hosts() {
        assert!(socket_addr("https://127.0.0.1:1").is_err());
        assert_eq!(
            socket_addr("http://127.0.0.1:8080").unwrap().0,
            "127.0.0.1:8080".parse().unwrap()
        );
    }
}
