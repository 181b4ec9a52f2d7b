//! Prometheus metrics, in a registry owned by the app state (no globals).
//!
//! Every label comes from a fixed set, so no request can create a series:
//! `method` is one of the standard methods or `other`, `route` a route
//! template or `unmatched`, `status` a status code the service sends, and
//! `reason` one of [`CloseReason`].

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::auth::AuthMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: String,
}

/// The `method` label: a standard method's name, or `other`.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it (or it ended normally).
    Client,
    HeaderTimeout,
    IdleTimeout,
    /// Closed to make room for a new connection at the cap.
    Evicted,
    /// Refused at the cap: every open connection was busy.
    Refused,
    /// A request hyper could not parse (answered 400 by hyper).
    Malformed,
    /// A request head over hyper's limits (answered 414/431 by hyper).
    HeadTooLarge,
    IoError,
    /// Closed by the server's shutdown with no request under way.
    Shutdown,
    /// Still open when the shutdown grace period ended.
    ShutdownForced,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::Client,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::Evicted,
        CloseReason::Refused,
        CloseReason::Malformed,
        CloseReason::HeadTooLarge,
        CloseReason::IoError,
        CloseReason::Shutdown,
        CloseReason::ShutdownForced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::Refused => "refused",
            CloseReason::Malformed => "malformed",
            CloseReason::HeadTooLarge => "head_too_large",
            CloseReason::IoError => "io_error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ShutdownForced => "shutdown_forced",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Connection counters of the server loop. Every reason's series exists
/// from the start (at 0), so the set of series never changes at run time.
#[derive(Clone, Debug)]
pub struct ConnMetrics {
    open: Gauge,
    closed: Family<ReasonLabels, Counter>,
}

impl Default for ConnMetrics {
    fn default() -> Self {
        let metrics = Self {
            open: Gauge::default(),
            closed: Family::default(),
        };
        for reason in CloseReason::ALL {
            let _ = metrics.closed.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        metrics
    }
}

impl ConnMetrics {
    pub fn opened(&self) {
        self.open.inc();
    }

    pub fn closed(&self, reason: CloseReason) {
        if reason != CloseReason::Refused {
            self.open.dec();
        }
        self.closed
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Connections closed for `reason` so far.
    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        self.closed
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    /// Connections open now.
    pub fn open_now(&self) -> i64 {
        self.open.get()
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub events_ingested: Counter,
    pub duplicates: Counter,
    /// Requests answered with a kept response (same Idempotency-Key, same
    /// request).
    pub idempotent_replays: Counter,
    pub acks: Counter,
    pub leased: Counter,
    pub released: Counter,
    pub requeued: Counter,
    pub auth: AuthMetrics,
    pub connections: ConnMetrics,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("triggers");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let events_ingested = Counter::default();
        let duplicates = Counter::default();
        let idempotent_replays = Counter::default();
        let acks = Counter::default();
        let leased = Counter::default();
        let released = Counter::default();
        let requeued = Counter::default();
        let auth = AuthMetrics::default();
        let connections = ConnMetrics::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route",
            latency.clone(),
        );
        registry.register(
            "events_ingested",
            "Events created by POST /events and POST /events/batch (per event)",
            events_ingested.clone(),
        );
        registry.register(
            "events_duplicate",
            "Events of POST /events and POST /events/batch answered as duplicates (per event)",
            duplicates.clone(),
        );
        registry.register(
            "idempotent_replays",
            "Requests answered again with the response kept for their Idempotency-Key",
            idempotent_replays.clone(),
        );
        registry.register(
            "inbox_acks",
            "Events acknowledged (first ack only)",
            acks.clone(),
        );
        registry.register(
            "events_leased",
            "Events handed out by POST /inbox/lease",
            leased.clone(),
        );
        registry.register(
            "events_released",
            "Events released by POST /inbox/release",
            released.clone(),
        );
        registry.register(
            "events_requeued",
            "Quarantined events requeued",
            requeued.clone(),
        );
        registry.register(
            "auth_bcrypt_runs",
            "bcrypt verifications started",
            auth.bcrypt_runs.clone(),
        );
        registry.register(
            "auth_bcrypt_in_flight",
            "bcrypt verifications under way",
            auth.bcrypt_in_flight.clone(),
        );
        registry.register(
            "auth_over_budget",
            "Key checks refused without bcrypt: over the key id's bcrypt budget",
            auth.over_budget.clone(),
        );
        registry.register(
            "auth_busy",
            "Key checks answered 503: no verifier free in time",
            auth.busy.clone(),
        );
        registry.register(
            "http_connections_open",
            "Open client connections",
            connections.open.clone(),
        );
        registry.register(
            "http_connections_closed",
            "Client connections closed, by reason",
            connections.closed.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            events_ingested,
            duplicates,
            idempotent_replays,
            acks,
            leased,
            released,
            requeued,
            auth,
            connections,
        }
    }

    pub fn observe_request(
        &self,
        method: &axum::http::Method,
        route: &str,
        status: u16,
        seconds: f64,
    ) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method,
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_method_outside_the_standard_set_is_labelled_other() {
        let m = Metrics::new();
        for i in 0..500 {
            let method = axum::http::Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
            m.observe_request(&method, "unmatched", 405, 0.001);
        }
        m.observe_request(&axum::http::Method::GET, "/status", 200, 0.001);
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("triggers_http_requests_total{"))
            .count();
        assert_eq!(series, 2, "{text}");
        assert!(text.contains("method=\"other\""));
    }

    #[test]
    fn every_close_reason_is_a_series_from_the_start_and_closing_adds_none() {
        let m = Metrics::new();
        let series = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("triggers_http_connections_closed_total{"))
                .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_owned())
                .collect()
        };
        let before = series(&m.render());
        assert_eq!(before.len(), CloseReason::ALL.len(), "{before:?}");
        for reason in CloseReason::ALL {
            m.connections.closed(reason);
        }
        assert_eq!(series(&m.render()), before);
    }
}
