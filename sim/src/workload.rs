//! The actors: producers (with careful retries), consumers (walk the inbox
//! and acknowledge), viewers, adversaries (another account's ids and
//! cursors, wrong-secret bursts, stalled request heads) and the chaos
//! schedule (restarts, store faults, partitions, a key revocation). Each
//! actor is a task with its own seeded random source, so on one thread the
//! whole run is fixed by the seed.
//!
//! SPEC v2 actors: lease consumers (several per account on one inbox:
//! `POST /inbox/lease`, some long polls, a seeded "processing" time that
//! sometimes outlives the lease, then `/inbox/ack` or `/inbox/release`, or
//! nothing at all: a consumer that died), batch sends (`POST
//! /events/batch`, with repeats inside the batch and whole-batch retries)
//! and `Idempotency-Key` sends (retries with the key after a 5xx or no
//! answer, a deliberate replay, and the key with another body, which must
//! be 409).

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use triggers_api::domain::KeyStatus;
use triggers_api::store::KeyChange;

use crate::client::{Answer, Client, NetFault, Req};
use crate::faults::Level;
use crate::history::{Action, ActorInfo, Content, ItemResult, Note, Outcome, Seen};
use crate::net::client_addr;
use crate::world::{SimKey, World};

pub const EVENT_TYPES: [&str; 3] = ["order.created", "order.paid", "user.signup"];

/// Pages one walk may take before it is abandoned.
const MAX_WALK_PAGES: u32 = 2000;

/// FNV-1a: a stable hash of a name, to derive per-actor seeds.
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An exponentially distributed duration with this mean.
pub fn exp(rng: &mut ChaCha8Rng, mean: Duration) -> Duration {
    let u: f64 = rng.random_range(0.0..1.0);
    mean.mul_f64(-(1.0 - u).ln()).min(mean * 20)
}

/// One simulated client: a name, an account, a key, a connection, a seed.
pub struct Actor {
    pub idx: usize,
    pub name: String,
    pub account: String,
    token: Option<String>,
    client: Client,
    pub rng: ChaCha8Rng,
    requests: u64,
    /// The run's epoch (ms since 1970), to turn `leased_until` into run time.
    epoch_ms: i64,
    /// Idempotency keys drawn so far.
    keys_drawn: u64,
    /// The service's id of the lease the last request got, if it got one.
    last_lease: Option<String>,
}

impl Actor {
    pub fn new(
        w: &World,
        name: &str,
        account: &str,
        key: Option<&SimKey>,
        net: u8,
        host: u8,
    ) -> Self {
        let idx = w.rec.actor(ActorInfo {
            name: name.to_owned(),
            account: account.to_owned(),
            key: key.map_or_else(|| "-".to_owned(), |k| k.label.clone()),
        });
        Self {
            idx,
            name: name.to_owned(),
            account: account.to_owned(),
            token: key.map(|k| k.token.clone()),
            client: Client::new(
                w.net.clone(),
                client_addr(net, host),
                w.params.profile.client_timeout,
            ),
            rng: ChaCha8Rng::seed_from_u64(w.seed ^ stable_hash(name)),
            requests: 0,
            epoch_ms: w.clock.epoch().timestamp_millis(),
            keys_drawn: 0,
            last_lease: None,
        }
    }

    /// Waits a think time with this mean (bursty: mostly short, sometimes
    /// long); `false` once the workload is over.
    pub async fn think(&mut self, w: &World, mean: Duration) -> bool {
        let m = if self.rng.random_bool(0.8) {
            mean.mul_f64(0.2)
        } else {
            mean.mul_f64(4.2)
        };
        let d = exp(&mut self.rng, m);
        w.pause(d).await
    }

    async fn backoff(&mut self, w: &World, attempt: u32, retry_after: Option<u64>) {
        let base = w.params.profile.backoff;
        let d = match retry_after {
            // Retry-After is in seconds; a real-time run scales it down.
            Some(s) if w.deterministic => Duration::from_secs(s),
            Some(s) => base * u32::try_from(s).unwrap_or(1),
            None => base * 2u32.pow(attempt.min(4)),
        };
        let jitter = base.mul_f64(self.rng.random_range(0.0..1.0));
        tokio::time::sleep(d + jitter).await;
    }

    fn net_fault(&mut self, w: &World) -> NetFault {
        if w.is_quiesced() {
            return NetFault::None;
        }
        let r = w.params.net;
        let roll = self.rng.random_range(0..1000u32);
        let max_delay = u64::try_from(w.params.profile.max_net_delay.as_millis()).unwrap_or(1);
        if roll < r.drop_request {
            NetFault::DropRequest
        } else if roll < r.drop_request + r.delay {
            NetFault::Delay(Duration::from_millis(self.rng.random_range(1..=max_delay)))
        } else if roll < r.drop_request + r.delay + r.cancel {
            NetFault::CancelAfter(Duration::from_millis(self.rng.random_range(0..=max_delay)))
        } else if roll < r.drop_request + r.delay + r.cancel + r.drop_response {
            NetFault::DropResponse
        } else {
            NetFault::None
        }
    }

    /// One request: recorded as invoked, sent through a network fault drawn
    /// for it, recorded with what came back.
    pub async fn request(
        &mut self,
        w: &World,
        action: Action,
        req: Req,
        authed: bool,
    ) -> (Outcome, Option<u64>) {
        self.requests += 1;
        let mut req = req.header("x-request-id", format!("{}-{}", self.name, self.requests));
        if authed {
            if let Some(t) = &self.token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
        }
        let fault = self.net_fault(w);
        let call = w.rec.invoke(self.idx, action.clone());
        let answer = self.client.send(&req, fault).await;
        let (mut outcome, retry_after) = interpret(&action, answer, self.epoch_ms);
        // What the lease is called in the history (see `Recorder::lease_name`).
        let mut real_lease = None;
        if let Outcome::Leased { lease_id, .. } = &mut outcome {
            if !lease_id.is_empty() {
                real_lease = Some(lease_id.clone());
                *lease_id = w.rec.lease_name(lease_id);
            }
        }
        self.last_lease = real_lease;
        w.rec.complete(call, outcome.clone());
        (outcome, retry_after)
    }

    /// Whether to try again after `outcome` (and after how long).
    fn retryable(outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Status { status, .. } => *status == 429 || *status >= 500,
            Outcome::NotSent(_) | Outcome::Unknown(_) => true,
            _ => false,
        }
    }

    /// POST /events with a careful client's retries: the same body again
    /// after a 5xx, a 429 or no answer (dedup makes that safe). The id
    /// answered, if any.
    pub async fn post(&mut self, w: &World, content: Content) -> Option<String> {
        self.post_keyed(w, content, None).await
    }

    /// A fresh idempotency key of this actor's (keys are the account's).
    fn draw_key(&mut self) -> String {
        self.keys_drawn += 1;
        format!(
            "{}-k{}-{:x}",
            self.name,
            self.keys_drawn,
            self.rng.next_u32()
        )
    }

    /// POST /events, with `Idempotency-Key: key` on every attempt when
    /// given (a 409 while the first attempt is in flight is retried too).
    pub async fn post_keyed(
        &mut self,
        w: &World,
        content: Content,
        key: Option<String>,
    ) -> Option<String> {
        let send = w.next_send();
        w.board().add_content(&content);
        let body = body_text(&content);
        for attempt in 1..=w.params.max_attempts {
            let action = Action::Post {
                send,
                attempt,
                content: content.clone(),
                valid: true,
                idem: key.clone(),
            };
            let mut req = Req::new(Method::POST, "/events").json(body.clone());
            if let Some(k) = &key {
                req = req.header("idempotency-key", k.clone());
            }
            let (outcome, retry_after) = self.request(w, action, req, true).await;
            match &outcome {
                Outcome::Posted { event_id, .. } => {
                    w.board().add_id(&self.account, event_id);
                    return Some(event_id.clone());
                }
                Outcome::Status { status: 409, .. } if key.is_some() => {
                    self.backoff(w, attempt, retry_after).await;
                }
                o if Self::retryable(o) => self.backoff(w, attempt, retry_after).await,
                _ => return None,
            }
        }
        None
    }

    /// The key of an answered keyed send with another body: must be 409
    /// (no retry: the answer is the point).
    pub async fn post_conflicting(&mut self, w: &World, content: Content, key: String) {
        let send = w.next_send();
        w.board().add_content(&content);
        let action = Action::Post {
            send,
            attempt: 1,
            content: content.clone(),
            valid: true,
            idem: Some(key.clone()),
        };
        let req = Req::new(Method::POST, "/events")
            .json(body_text(&content))
            .header("idempotency-key", key);
        self.request(w, action, req, true).await;
    }

    /// POST /events/batch with a careful client's retries of the whole
    /// batch (the same body, and the same key when keyed). The results of
    /// the answer that came, if one did.
    pub async fn post_batch(
        &mut self,
        w: &World,
        items: Vec<Content>,
        key: Option<String>,
    ) -> Option<Vec<ItemResult>> {
        let send = w.next_send();
        for c in &items {
            w.board().add_content(c);
        }
        let body = batch_body(&items);
        for attempt in 1..=w.params.max_attempts {
            let action = Action::Batch {
                send,
                attempt,
                items: items.clone(),
                idem: key.clone(),
            };
            let mut req = Req::new(Method::POST, "/events/batch").json(body.clone());
            if let Some(k) = &key {
                req = req.header("idempotency-key", k.clone());
            }
            let (outcome, retry_after) = self.request(w, action, req, true).await;
            match outcome {
                Outcome::Batch { results, .. } => {
                    let mut b = w.board();
                    for r in &results {
                        if let Some(id) = &r.event_id {
                            b.add_id(&self.account, id);
                        }
                    }
                    return Some(results);
                }
                Outcome::Status { status: 409, .. } if key.is_some() => {
                    self.backoff(w, attempt, retry_after).await;
                }
                o if Self::retryable(&o) => self.backoff(w, attempt, retry_after).await,
                _ => return None,
            }
        }
        None
    }

    /// POST /inbox/lease, no retry (a lease whose answer was lost holds its
    /// events until it ends: the next lease simply takes others).
    pub async fn lease(
        &mut self,
        w: &World,
        limit: u32,
        lease_seconds: u32,
        event_type: Option<&str>,
        wait_seconds: u32,
    ) -> Option<(String, Vec<String>)> {
        let action = Action::Lease {
            limit,
            lease_seconds,
            event_type: event_type.map(str::to_owned),
            wait_seconds,
        };
        let mut body = format!(r#"{{"limit":{limit},"lease_seconds":{lease_seconds}"#);
        if wait_seconds > 0 {
            body.push_str(&format!(r#","wait_seconds":{wait_seconds}"#));
        }
        if let Some(t) = event_type {
            body.push_str(&format!(r#","event_type":"{t}""#));
        }
        body.push('}');
        let req = Req::new(Method::POST, "/inbox/lease").json(body);
        match self.request(w, action, req, true).await.0 {
            Outcome::Leased { events, .. } => {
                let real = self.last_lease.take()?;
                Some((real, events.into_iter().map(|e| e.id).collect()))
            }
            _ => None,
        }
    }

    /// POST /inbox/ack or /inbox/release of `ids` of a lease (`all`: no
    /// `event_ids` in the body), retried after a 5xx or no answer (settling
    /// twice is safe: the second finds them stale).
    pub async fn settle(
        &mut self,
        w: &World,
        lease_id: &str,
        ids: Vec<String>,
        all: bool,
        release: bool,
    ) {
        let mut body = format!(r#"{{"lease_id":"{lease_id}""#);
        if !all {
            let list: Vec<String> = ids.iter().map(|i| format!(r#""{i}""#)).collect();
            body.push_str(&format!(r#","event_ids":[{}]"#, list.join(",")));
        }
        body.push('}');
        let path = if release {
            "/inbox/release"
        } else {
            "/inbox/ack"
        };
        for attempt in 1..=w.params.max_attempts {
            let action = Action::LeaseSettle {
                lease_id: w.rec.lease_name(lease_id),
                release,
                event_ids: ids.clone(),
                all,
            };
            let req = Req::new(Method::POST, path).json(body.clone());
            let (o, ra) = self.request(w, action, req, true).await;
            if !Self::retryable(&o) {
                return;
            }
            self.backoff(w, attempt, ra).await;
        }
    }

    /// One inbox page, no retry (a probe).
    pub async fn inbox_page(&mut self, w: &World) {
        let action = Action::Page {
            walk: w.next_walk(),
            page: 0,
            limit: 1,
            event_type: None,
            cursor: None,
            final_walk: false,
            quarantined: false,
        };
        self.request(w, action, Req::new(Method::GET, "/inbox?limit=1"), true)
            .await;
    }

    pub async fn get(&mut self, w: &World, id: &str) {
        for attempt in 1..=3 {
            let (o, ra) = self
                .request(
                    w,
                    Action::Get { id: id.to_owned() },
                    Req::new(Method::GET, format!("/events/{id}")),
                    true,
                )
                .await;
            if !Self::retryable(&o) {
                return;
            }
            self.backoff(w, attempt, ra).await;
        }
    }

    pub async fn ack(&mut self, w: &World, id: &str) {
        for attempt in 1..=w.params.max_attempts {
            let (o, ra) = self
                .request(
                    w,
                    Action::Ack { id: id.to_owned() },
                    Req::new(Method::DELETE, format!("/events/{id}")),
                    true,
                )
                .await;
            if !Self::retryable(&o) {
                return;
            }
            self.backoff(w, attempt, ra).await;
        }
    }

    /// Walks the inbox from the start until `has_more` is false, retrying a
    /// failed page with the same cursor. Acknowledges events it sees with
    /// probability `ack_now` at once (during the walk) and `ack_later`
    /// after it. The ids seen and whether the walk completed.
    pub async fn walk(
        &mut self,
        w: &World,
        limit: u32,
        event_type: Option<&str>,
        final_walk: bool,
        ack_now: f64,
        ack_later: f64,
    ) -> (Vec<String>, bool) {
        self.walk_state(w, limit, event_type, final_walk, false, ack_now, ack_later)
            .await
    }

    /// [`Actor::walk`] of the inbox or (`quarantined`) of the quarantine
    /// listing.
    #[allow(clippy::too_many_arguments)]
    pub async fn walk_state(
        &mut self,
        w: &World,
        limit: u32,
        event_type: Option<&str>,
        final_walk: bool,
        quarantined: bool,
        ack_now: f64,
        ack_later: f64,
    ) -> (Vec<String>, bool) {
        let walk = w.next_walk();
        let mut cursor: Option<String> = None;
        let mut seen = Vec::new();
        let mut later = Vec::new();
        let max_attempts = if final_walk {
            50
        } else {
            w.params.max_attempts
        };
        for page in 0u32.. {
            // A walk that never ends (a broken store can loop) or outlives
            // the workload is abandoned, incomplete.
            if page >= MAX_WALK_PAGES || (!final_walk && w.over()) {
                return (seen, false);
            }
            let mut target = format!("/inbox?limit={limit}");
            if quarantined {
                target.push_str("&state=quarantined");
            }
            if let Some(t) = event_type {
                target.push_str(&format!("&event_type={t}"));
            }
            if let Some(c) = &cursor {
                target.push_str(&format!("&cursor={c}"));
            }
            let mut got = None;
            for attempt in 1..=max_attempts {
                let action = Action::Page {
                    walk,
                    page,
                    limit,
                    event_type: event_type.map(str::to_owned),
                    cursor: cursor.clone(),
                    final_walk,
                    quarantined,
                };
                let (o, ra) = self
                    .request(w, action, Req::new(Method::GET, target.clone()), true)
                    .await;
                match o {
                    Outcome::Page {
                        events,
                        has_more,
                        next_cursor,
                    } => {
                        got = Some((events, has_more, next_cursor));
                        break;
                    }
                    o if Self::retryable(&o) => self.backoff(w, attempt, ra).await,
                    _ => break,
                }
            }
            let Some((events, has_more, next)) = got else {
                return (seen, false);
            };
            {
                let mut b = w.board();
                for e in &events {
                    b.add_id(&self.account, &e.id);
                }
                if let Some(c) = &next {
                    b.cursors.insert(self.account.clone(), c.clone());
                }
            }
            for e in events {
                if self.rng.random_bool(ack_now) {
                    self.ack(w, &e.id).await;
                } else if self.rng.random_bool(ack_later) {
                    later.push(e.id.clone());
                }
                seen.push(e.id);
            }
            match (has_more, next) {
                (false, _) => break,
                (true, Some(c)) => cursor = Some(c),
                (true, None) => return (seen, false),
            }
        }
        for id in later {
            self.ack(w, &id).await;
        }
        (seen, true)
    }

    fn new_content(&mut self, n: u64, huge: bool) -> Content {
        let event_type = EVENT_TYPES[self.rng.random_range(0..EVENT_TYPES.len())];
        let amount = self.rng.random_range(0..100_000u32);
        let mut payload = format!(
            r#"{{"acct":"{}","from":"{}","n":{n},"amount":{}.{:02},"ok":{},"nested":{{"x":null,"y":[1,2.50,-3e2],"é":"ü"}}"#,
            self.account,
            self.name,
            amount / 100,
            amount % 100,
            self.rng.random_bool(0.5),
        );
        if huge {
            let len = self.rng.random_range(100_000..=250_000usize);
            let blob: String = (0..len)
                .map(|_| char::from(b'a' + self.rng.random_range(0..26u8)))
                .collect();
            payload.push_str(&format!(r#","blob":"{blob}""#));
        }
        payload.push('}');
        let source = match self.rng.random_range(0..10) {
            0..=5 => Some("shop".to_owned()),
            6 | 7 => Some("crm".to_owned()),
            8 => Some(String::new()),
            _ => None,
        };
        let metadata = self
            .rng
            .random_bool(0.5)
            .then(|| format!(r#"{{"trace":"{}-{n}"}}"#, self.name));
        Content {
            account: self.account.clone(),
            event_type: event_type.to_owned(),
            payload,
            source,
            metadata,
        }
    }

    /// A request the API must refuse, with the status it must refuse with.
    async fn refusable(&mut self, w: &World) {
        let tag = self.rng.next_u64();
        let acct = self.account.clone();
        let own_cursor = w.board().cursors.get(&acct).cloned();
        let (what, expect, req, authed): (&'static str, u16, Req, bool) = match self
            .rng
            .random_range(0..11)
        {
            0 => (
                "missing event_type",
                400,
                Req::new(Method::POST, "/events")
                    .json(format!(r#"{{"payload":{{"acct":"{acct}","t":{tag}}}}}"#)),
                true,
            ),
            1 => (
                "payload not an object",
                400,
                Req::new(Method::POST, "/events")
                    .json(format!(r#"{{"event_type":"x","payload":[{tag}]}}"#)),
                true,
            ),
            2 => (
                "unknown field",
                400,
                Req::new(Method::POST, "/events").json(format!(
                    r#"{{"event_type":"x","payload":{{"acct":"{acct}","t":{tag}}},"extra":true}}"#
                )),
                true,
            ),
            3 => (
                "control character in event_type",
                400,
                Req::new(Method::POST, "/events").json(format!(
                    r#"{{"event_type":"a\u0007b","payload":{{"acct":"{acct}","t":{tag}}}}}"#
                )),
                true,
            ),
            4 => (
                "malformed JSON",
                400,
                Req::new(Method::POST, "/events")
                    .json(format!(r#"{{"event_type":"x","payload":{{"t":{tag}"#)),
                true,
            ),
            5 => {
                let mut r = Req::new(Method::POST, "/events");
                r.body = Some(
                    format!(r#"{{"event_type":"x","payload":{{"acct":"{acct}","t":{tag}}}}}"#)
                        .into(),
                );
                (
                    "wrong content type",
                    415,
                    r.header("content-type", "text/plain"),
                    true,
                )
            }
            6 => (
                "payload over 256 KiB",
                413,
                Req::new(Method::POST, "/events").json(format!(
                    r#"{{"event_type":"x","payload":{{"acct":"{acct}","blob":"{}"}}}}"#,
                    "z".repeat(270_000)
                )),
                true,
            ),
            7 => (
                "no key",
                401,
                Req::new(Method::POST, "/events").json(format!(
                    r#"{{"event_type":"x","payload":{{"acct":"{acct}","t":{tag}}}}}"#
                )),
                false,
            ),
            8 => (
                "not an event id",
                404,
                Req::new(Method::GET, format!("/events/not-an-id-{tag}")),
                true,
            ),
            9 => (
                "limit out of range",
                400,
                Req::new(Method::GET, "/inbox?limit=0"),
                true,
            ),
            _ => {
                let tampered = match own_cursor {
                    Some(c) if c.len() > 4 => {
                        let mut b = c.into_bytes();
                        let i = b.len() / 2;
                        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                        String::from_utf8(b).unwrap_or_default()
                    }
                    _ => "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
                };
                (
                    "tampered cursor",
                    400,
                    Req::new(Method::GET, format!("/inbox?cursor={tampered}")),
                    true,
                )
            }
        };
        let target = format!("{} {}", req.method, short_target(&req.target));
        let action = Action::Refusable {
            what,
            expect,
            target,
        };
        self.request(w, action, req, authed).await;
    }
}

fn short_target(t: &str) -> String {
    if t.len() > 80 {
        format!("{}…", &t[..80])
    } else {
        t.to_owned()
    }
}

/// The POST body of `c`, with its payload and metadata text as they are.
pub fn body_text(c: &Content) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut s = format!(
        r#"{{"event_type":{},"payload":{}"#,
        q(&c.event_type),
        c.payload
    );
    if let Some(src) = &c.source {
        s.push_str(&format!(r#","source":{}"#, q(src)));
    }
    if let Some(m) = &c.metadata {
        s.push_str(&format!(r#","metadata":{m}"#));
    }
    s.push('}');
    s
}

/// The body of a batch of `items`.
pub fn batch_body(items: &[Content]) -> String {
    let list: Vec<String> = items.iter().map(body_text).collect();
    format!(r#"{{"events":[{}]}}"#, list.join(","))
}

#[derive(Deserialize)]
struct ItemDto {
    index: usize,
    status: u16,
    event_id: Option<String>,
    timestamp: Option<String>,
    #[serde(default)]
    duplicate: bool,
}

#[derive(Deserialize)]
struct BatchDto {
    results: Vec<ItemDto>,
}

#[derive(Deserialize)]
struct LeaseDto<'a> {
    lease_id: Option<String>,
    leased_until: Option<String>,
    #[serde(borrow)]
    events: Vec<EventDto<'a>>,
}

#[derive(Deserialize)]
struct SettleDto {
    #[serde(alias = "released")]
    acknowledged: Vec<String>,
    stale: Vec<String>,
}

#[derive(Deserialize)]
struct PostedDto {
    event_id: String,
    timestamp: String,
    duplicate: bool,
}

#[derive(Deserialize)]
struct EventDto<'a> {
    event_id: String,
    event_type: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    source: Option<String>,
    #[serde(borrow)]
    metadata: &'a RawValue,
    timestamp: String,
    delivered: bool,
}

#[derive(Deserialize)]
struct PaginationDto {
    next_cursor: Option<String>,
    has_more: bool,
}

#[derive(Deserialize)]
struct PageDto<'a> {
    #[serde(borrow)]
    events: Vec<EventDto<'a>>,
    pagination: PaginationDto,
}

#[derive(Deserialize)]
struct StatusDto {
    status: String,
}

#[derive(Deserialize)]
struct ProblemDto {
    code: Option<String>,
}

fn ts_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn seen(e: &EventDto<'_>) -> Option<Seen> {
    let payload = e.payload.get().to_owned();
    let metadata = e.metadata.get().to_owned();
    let approx_bytes = 200
        + payload.len()
        + metadata.len()
        + e.event_type.len()
        + e.source.as_ref().map_or(0, String::len);
    Some(Seen {
        id: e.event_id.clone(),
        ts_ms: ts_ms(&e.timestamp)?,
        event_type: e.event_type.clone(),
        payload,
        source: e.source.clone(),
        metadata,
        delivered: e.delivered,
        approx_bytes,
    })
}

/// What an answer means for this action.
/// `epoch_ms` is the run's start (a lease's `leased_until` is recorded as
/// milliseconds since then).
pub fn interpret(action: &Action, answer: Answer, epoch_ms: i64) -> (Outcome, Option<u64>) {
    let (status, retry_after, replayed, body) = match answer {
        Answer::NotSent(why) => return (Outcome::NotSent(why), None),
        Answer::Unknown(why) => return (Outcome::Unknown(why), None),
        Answer::Http {
            status,
            retry_after,
            replayed,
            body,
        } => (status, retry_after, replayed, body),
    };
    let parsed =
        match (action, status) {
            (Action::Post { .. }, 200 | 201) => serde_json::from_slice::<PostedDto>(&body)
                .ok()
                .and_then(|p| {
                    Some(Outcome::Posted {
                        status,
                        ts_ms: ts_ms(&p.timestamp)?,
                        event_id: p.event_id,
                        duplicate: p.duplicate,
                        replayed,
                    })
                }),
            (Action::Batch { .. }, 200) => {
                serde_json::from_slice::<BatchDto>(&body)
                    .ok()
                    .and_then(|b| {
                        let results = b
                            .results
                            .into_iter()
                            .map(|r| {
                                let ts = match &r.timestamp {
                                    Some(t) => Some(ts_ms(t)?),
                                    None => None,
                                };
                                Some(ItemResult {
                                    index: r.index,
                                    status: r.status,
                                    event_id: r.event_id,
                                    ts_ms: ts,
                                    duplicate: r.duplicate,
                                })
                            })
                            .collect::<Option<Vec<_>>>()?;
                        Some(Outcome::Batch { replayed, results })
                    })
            }
            (Action::Lease { .. }, 200) => serde_json::from_slice::<LeaseDto<'_>>(&body)
                .ok()
                .and_then(|l| {
                    let until_ms = match &l.leased_until {
                        Some(t) => u64::try_from(ts_ms(t)? - epoch_ms).unwrap_or(0),
                        None => 0,
                    };
                    Some(Outcome::Leased {
                        lease_id: l.lease_id.unwrap_or_default(),
                        until_ms,
                        events: l.events.iter().map(seen).collect::<Option<Vec<_>>>()?,
                    })
                }),
            (Action::LeaseSettle { .. }, 200) => serde_json::from_slice::<SettleDto>(&body)
                .ok()
                .map(|s| Outcome::Settled {
                    done: s.acknowledged,
                    stale: s.stale,
                }),
            (Action::Page { .. }, 200) => serde_json::from_slice::<PageDto<'_>>(&body)
                .ok()
                .and_then(|p| {
                    Some(Outcome::Page {
                        events: p.events.iter().map(seen).collect::<Option<Vec<_>>>()?,
                        has_more: p.pagination.has_more,
                        next_cursor: p.pagination.next_cursor,
                    })
                }),
            (Action::Get { .. }, 200) => serde_json::from_slice::<EventDto<'_>>(&body)
                .ok()
                .and_then(|e| seen(&e))
                .map(Outcome::Event),
            (Action::Ack { .. }, 204) => Some(Outcome::Acked),
            (Action::Status, 200 | 503) => {
                serde_json::from_slice::<StatusDto>(&body)
                    .ok()
                    .map(|s| Outcome::Status {
                        status,
                        code: s.status,
                    })
            }
            _ => None,
        };
    let outcome = parsed.unwrap_or_else(|| Outcome::Status {
        status,
        code: serde_json::from_slice::<ProblemDto>(&body)
            .ok()
            .and_then(|p| p.code)
            .unwrap_or_else(|| {
                if status < 300 {
                    "UNPARSABLE_ANSWER".to_owned()
                } else {
                    String::new()
                }
            }),
    });
    (outcome, retry_after)
}

/// How a plain consumer takes events from its inbox (lease consumers are
/// their own actor, [`lease_consumer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerProtocol {
    /// GET /inbox pages, DELETE /events/{id}.
    WalkAndAck,
}

pub async fn producer(mut a: Actor, w: Arc<World>, pace: Duration, huge: bool) {
    let mut n = 0u64;
    while a.think(&w, pace).await {
        let roll = a.rng.random_range(0..100);
        if roll < 7 {
            a.refusable(&w).await;
            continue;
        }
        if roll < 20 {
            let recent = {
                let b = w.board();
                b.contents.get(&a.account).and_then(|cs| {
                    let tail = cs.len().min(8);
                    (tail > 0).then(|| cs[cs.len() - 1 - a.rng.random_range(0..tail)].clone())
                })
            };
            if let Some(c) = recent {
                a.post(&w, c).await;
                continue;
            }
        }
        if roll < 30 {
            n = batch_send(&mut a, &w, n).await;
            continue;
        }
        if roll < 40 {
            n += 1;
            keyed_send(&mut a, &w, n).await;
            continue;
        }
        n += 1;
        let big = huge && a.rng.random_bool(0.5);
        let content = a.new_content(n, big);
        if let Some(id) = a.post(&w, content.clone()).await {
            if a.rng.random_bool(0.25) {
                a.get(&w, &id).await;
            }
            // A careless client sends the same event again a little later,
            // within the dedup window: it must get the original back.
            // Sometimes just before the window closes, where a slow store
            // call can straddle its end.
            let window = w.params.settings.dedup_window;
            let roll = a.rng.random_range(0..100);
            let edge = (15..=24).contains(&roll);
            let later = match roll {
                0..=14 => Some(window.mul_f64(a.rng.random_range(0.0..0.9))),
                15..=24 => {
                    // Log-uniform from 1 ms: as likely a millisecond
                    // before the end as a second.
                    let max = (w.params.profile.max_store_latency * 2).as_secs_f64();
                    let slack = a.rng.random_range(0.001f64.ln()..max.max(0.002).ln()).exp();
                    Some(window.saturating_sub(Duration::from_secs_f64(slack)))
                }
                _ => None,
            };
            if let Some(later) = later {
                if w.pause(later).await {
                    a.post(&w, content.clone()).await;
                }
                // At the edge, an impatient client tries a few more times.
                if edge {
                    for _ in 0..a.rng.random_range(0..4) {
                        let gap = Duration::from_millis(a.rng.random_range(0..300));
                        if !w.pause(gap).await {
                            break;
                        }
                        a.post(&w, content.clone()).await;
                    }
                }
            }
        }
    }
}

/// A batch of 1 to 8 events, some repeating an earlier one of the same
/// batch or a recent send, sometimes with an idempotency key; now and then
/// the whole batch again later (a client that lost track). The send counter
/// after it.
async fn batch_send(a: &mut Actor, w: &World, mut n: u64) -> u64 {
    let len = a.rng.random_range(1..=8usize);
    let recent: Vec<Content> = {
        let b = w.board();
        b.contents
            .get(&a.account)
            .map(|cs| cs[cs.len().saturating_sub(8)..].to_vec())
            .unwrap_or_default()
    };
    let mut items: Vec<Content> = Vec::new();
    for _ in 0..len {
        let roll = a.rng.random_range(0..100);
        if roll < 20 && !items.is_empty() {
            let i = a.rng.random_range(0..items.len());
            items.push(items[i].clone());
        } else if roll < 30 && !recent.is_empty() {
            items.push(recent[a.rng.random_range(0..recent.len())].clone());
        } else {
            n += 1;
            items.push(a.new_content(n, false));
        }
    }
    // A careful client keeps its batch under the API's body limit (the
    // simulated server's own setting): repeats of a
    // recent huge send can push it over, and a 413 for the whole batch is
    // then the right answer, not a refusal of a valid request.
    let limit = w.params.settings.max_batch_body_bytes;
    while items.len() > 1 && batch_body(&items).len() > limit {
        items.pop();
    }
    let key = a.rng.random_bool(0.3).then(|| a.draw_key());
    if a.post_batch(w, items.clone(), key.clone()).await.is_some() && a.rng.random_bool(0.2) {
        let later = Duration::from_millis(a.rng.random_range(0..5_000));
        if w.pause(later).await {
            a.post_batch(w, items, key).await;
        }
    }
    n
}

/// A send with an idempotency key (retried with it after a 5xx or no
/// answer); once answered, sometimes the same request again (a replay:
/// the first id, `Idempotent-Replayed`) and sometimes the key with another
/// body (409).
async fn keyed_send(a: &mut Actor, w: &World, n: u64) {
    let content = a.new_content(n, false);
    let key = a.draw_key();
    if a.post_keyed(w, content.clone(), Some(key.clone()))
        .await
        .is_none()
    {
        return;
    }
    let roll = a.rng.random_range(0..100);
    let later = Duration::from_millis(a.rng.random_range(0..20_000));
    if roll < 40 {
        if w.pause(later).await {
            a.post_keyed(w, content, Some(key)).await;
        }
    } else if roll < 60 && w.pause(later).await {
        let mut other = content;
        other.payload = other.payload.replacen('{', r#"{"other":true,"#, 1);
        a.post_conflicting(w, other, key).await;
    }
}

/// A lease consumer (several share each account's inbox): leases (some
/// long-poll), "processes" for a seeded time (sometimes past the lease, so
/// the lease ends and the events go to another), then acknowledges or
/// releases all or some of them, or dies without settling.
pub async fn lease_consumer(mut a: Actor, w: Arc<World>, pace: Duration) {
    let long_poll = a.rng.random_bool(0.5);
    let max_wait =
        u32::try_from(w.params.profile.client_timeout.as_secs().saturating_sub(2)).unwrap_or(0);
    let lease_choices: &[u32] = if w.deterministic {
        &[1, 5, 30, 120, 600]
    } else {
        &[1, 2, 3]
    };
    while a.think(&w, pace).await {
        let limit = [1, 2, 5, 10, 50][a.rng.random_range(0..5)];
        let event_type = a
            .rng
            .random_bool(0.15)
            .then(|| EVENT_TYPES[a.rng.random_range(0..EVENT_TYPES.len())]);
        let wait = if long_poll && max_wait > 0 && a.rng.random_bool(0.6) {
            a.rng.random_range(1..=max_wait)
        } else {
            0
        };
        let lease_seconds = lease_choices[a.rng.random_range(0..lease_choices.len())];
        let Some((lease_id, ids)) = a.lease(&w, limit, lease_seconds, event_type, wait).await
        else {
            continue;
        };
        let secs = f64::from(lease_seconds);
        let processing = if a.rng.random_bool(0.7) {
            secs * a.rng.random_range(0.02..0.8)
        } else {
            secs * a.rng.random_range(1.0..2.5)
        };
        if !w.pause(Duration::from_secs_f64(processing)).await {
            break;
        }
        let roll = a.rng.random_range(0..100);
        if roll < 10 {
            // Died: the lease runs out and the events go to another.
            continue;
        }
        let release = roll < 30;
        if a.rng.random_bool(0.5) {
            a.settle(&w, &lease_id, ids, true, release).await;
        } else {
            let (some, rest): (Vec<String>, Vec<String>) =
                ids.into_iter().partition(|_| a.rng.random_bool(0.7));
            if !some.is_empty() {
                a.settle(&w, &lease_id, some, false, release).await;
            }
            if !rest.is_empty() && a.rng.random_bool(0.5) {
                a.settle(&w, &lease_id, rest, false, !release).await;
            }
        }
    }
}

pub async fn consumer(mut a: Actor, w: Arc<World>, pace: Duration, protocol: ConsumerProtocol) {
    let (ack_now, ack_later) = (a.rng.random_range(0.2..0.7), a.rng.random_range(0.3..0.9));
    while a.think(&w, pace).await {
        match protocol {
            ConsumerProtocol::WalkAndAck => {
                let event_type = a
                    .rng
                    .random_bool(0.15)
                    .then(|| EVENT_TYPES[a.rng.random_range(0..EVENT_TYPES.len())]);
                let limit = [1, 3, 10, 50, 200][a.rng.random_range(0..5)];
                a.walk(&w, limit, event_type, false, ack_now, ack_later)
                    .await;
            }
        }
    }
}

/// A read-only key: walks, reads events, and is refused writes.
pub async fn viewer(mut a: Actor, w: Arc<World>, pace: Duration) {
    while a.think(&w, pace).await {
        let known = {
            let b = w.board();
            b.ids.get(&a.account).and_then(|ids| {
                (!ids.is_empty()).then(|| ids[a.rng.random_range(0..ids.len())].clone())
            })
        };
        match a.rng.random_range(0..100) {
            0..=44 => {
                let event_type = a
                    .rng
                    .random_bool(0.3)
                    .then(|| EVENT_TYPES[a.rng.random_range(0..EVENT_TYPES.len())]);
                let limit = [1, 7, 50][a.rng.random_range(0..3)];
                a.walk(&w, limit, event_type, false, 0.0, 0.0).await;
            }
            45..=69 => {
                if let Some(id) = known {
                    a.get(&w, &id).await;
                }
            }
            70..=79 => {
                a.request(&w, Action::Status, Req::new(Method::GET, "/status"), false)
                    .await;
            }
            80..=89 => {
                let tag = a.rng.next_u64();
                let req = Req::new(Method::POST, "/events").json(format!(
                    r#"{{"event_type":"x","payload":{{"acct":"{}","viewer":{tag}}}}}"#,
                    a.account
                ));
                let action = Action::Refusable {
                    what: "a viewer may not ingest",
                    expect: 403,
                    target: "POST /events".to_owned(),
                };
                a.request(&w, action, req, true).await;
            }
            _ => {
                if let Some(id) = known {
                    let action = Action::Refusable {
                        what: "a viewer may not acknowledge",
                        expect: 403,
                        target: format!("DELETE /events/{id}"),
                    };
                    a.request(
                        &w,
                        action,
                        Req::new(Method::DELETE, format!("/events/{id}")),
                        true,
                    )
                    .await;
                }
            }
        }
    }
}

/// A key of one account probing another's events and cursors: every probe
/// must be refused (404 for ids, 400 for cursors).
pub async fn cross_tenant(mut a: Actor, w: Arc<World>, pace: Duration) {
    while a.think(&w, pace).await {
        let (id, cursor) = {
            let b = w.board();
            let others: Vec<&String> = b.ids.keys().filter(|k| **k != a.account).collect();
            if others.is_empty() {
                continue;
            }
            let victim = others[a.rng.random_range(0..others.len())].clone();
            let ids = &b.ids[&victim];
            let id = (!ids.is_empty()).then(|| ids[a.rng.random_range(0..ids.len())].clone());
            (id, b.cursors.get(&victim).cloned())
        };
        match (a.rng.random_range(0..3), id, cursor) {
            (0, Some(id), _) => {
                let action = Action::Refusable {
                    what: "foreign event read",
                    expect: 404,
                    target: format!("GET /events/{id}"),
                };
                a.request(
                    &w,
                    action,
                    Req::new(Method::GET, format!("/events/{id}")),
                    true,
                )
                .await;
            }
            (1, Some(id), _) => {
                let action = Action::Refusable {
                    what: "foreign event acknowledgement",
                    expect: 404,
                    target: format!("DELETE /events/{id}"),
                };
                a.request(
                    &w,
                    action,
                    Req::new(Method::DELETE, format!("/events/{id}")),
                    true,
                )
                .await;
            }
            (_, _, Some(c)) => {
                let action = Action::Refusable {
                    what: "foreign cursor",
                    expect: 400,
                    target: "GET /inbox?cursor=(another account's)".to_owned(),
                };
                a.request(
                    &w,
                    action,
                    Req::new(Method::GET, format!("/inbox?cursor={c}")),
                    true,
                )
                .await;
            }
            _ => {}
        }
    }
}

/// Bursts of wrong secrets for real key ids from a few networks at once.
/// What they cost is observable: the bcrypt runs of the instance.
pub async fn wrong_secrets(mut sources: Vec<Actor>, w: Arc<World>, pace: Duration) {
    let Some(mut lead) = sources.pop() else {
        return;
    };
    let keys: Vec<String> = w.keys.iter().map(|k| k.key_id.clone()).collect();
    while w.pause(exp(&mut lead.rng, pace)).await {
        let key_id = keys[lead.rng.random_range(0..keys.len())].clone();
        let n_sources = lead.rng.random_range(1..=sources.len().max(1));
        let each: u32 = lead.rng.random_range(20..=100) / u32::try_from(n_sources).unwrap_or(1);
        let attempts = each * u32::try_from(n_sources).unwrap_or(1);
        let (instance, before) = w.bcrypt_runs();
        let mut tasks = Vec::new();
        for mut s in sources.drain(..n_sources) {
            let w = w.clone();
            let key_id = key_id.clone();
            tasks.push(tokio::spawn(async move {
                let mut secret = String::new();
                for _ in 0..each {
                    if secret.is_empty() || s.rng.random_bool(0.8) {
                        let mut b = [0u8; 32];
                        s.rng.fill_bytes(&mut b);
                        use base64::Engine;
                        secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
                    }
                    let token = format!("trg_{key_id}_{secret}");
                    let req = Req::new(Method::GET, "/inbox")
                        .header("authorization", format!("Bearer {token}"));
                    let action = Action::WrongSecret {
                        key_id: key_id.clone(),
                    };
                    s.request(&w, action, req, false).await;
                }
                s
            }));
        }
        for t in tasks {
            if let Ok(s) = t.await {
                sources.push(s);
            }
        }
        let (instance_after, after) = w.bcrypt_runs();
        w.rec.note(Note::Burst {
            key_id,
            attempts,
            sources: u32::try_from(n_sources).unwrap_or(0),
            instance,
            runs_before: before,
            runs_after: after,
            instance_after,
        });
    }
}

/// Opens a connection, sends half a request head and stalls: the server
/// must close it within its header-read timeout.
pub async fn slow_heads(a: Actor, w: Arc<World>, pace: Duration) {
    let mut a = a;
    let addr = client_addr(250, 1);
    while a.think(&w, pace).await {
        let call = w.rec.invoke(a.idx, Action::SlowHead);
        let outcome = match w.net.connect(addr) {
            Err(_) => Outcome::NotSent("connection refused"),
            Ok(mut io) => {
                let started = Instant::now();
                let _ = io
                    .write_all(b"GET /inbox HTTP/1.1\r\nhost: api.sim\r\nx-slow: ")
                    .await;
                let limit = w.params.settings.http.header_read_timeout + Duration::from_secs(30);
                let closed = tokio::time::timeout(limit, async {
                    let mut buf = [0u8; 512];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                match closed {
                    Ok(()) => Outcome::Closed {
                        after_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    },
                    Err(_) => Outcome::Unknown("still open"),
                }
            }
        };
        w.rec.complete(call, outcome);
    }
}

/// Restarts, graceful (rolling) or abrupt (a crash), now and then.
pub async fn restarts(w: Arc<World>, mut rng: ChaCha8Rng) {
    let p = w.params.profile.clone();
    while w.pause(exp(&mut rng, p.restart_every)).await {
        if rng.random_bool(0.5) {
            w.restart_graceful().await;
        } else {
            let downtime = p.max_downtime.mul_f64(rng.random_range(0.0..1.0));
            w.restart_abrupt(downtime).await;
        }
    }
}

/// Store fault phases: light, heavy or an outage for a while, then off.
pub async fn store_faults(w: Arc<World>, mut rng: ChaCha8Rng) {
    let p = w.params.profile.clone();
    while w.pause(exp(&mut rng, p.faults_every)).await {
        let level = match rng.random_range(0..100) {
            0..=44 => Level::Light,
            45..=69 => Level::Heavy,
            70..=89 => Level::Slow,
            _ => Level::Outage,
        };
        w.faults.set(level);
        w.rec.note(Note::Faults {
            level: level.name(),
        });
        let span = exp(&mut rng, p.faults_every / 4);
        let more = w.pause(span).await;
        w.faults.set(w.params.baseline);
        w.rec.note(Note::Faults {
            level: w.params.baseline.name(),
        });
        if !more {
            break;
        }
    }
}

/// Network partitions between every client and the server.
pub async fn partitions(w: Arc<World>, mut rng: ChaCha8Rng) {
    let p = w.params.profile.clone();
    while w.pause(exp(&mut rng, p.partition_every)).await {
        let span = p.max_partition.mul_f64(rng.random_range(0.05..1.0));
        let until = Instant::now() + span;
        w.net.partition(until);
        w.rec.note(Note::Partition {
            until_ms: w.clock.elapsed_ms() + u64::try_from(span.as_millis()).unwrap_or(0),
        });
        let more = w.pause(span).await;
        w.net.heal();
        if !more {
            break;
        }
    }
}

/// Revokes `label`'s key at `at` (the admin path, no faults), with a probe
/// on that key just before, within the auth cache TTL after (may still
/// work) and just past it (must be 403).
pub async fn revoke(w: Arc<World>, at: Duration, label: String) {
    let Some(key) = w.key(&label).cloned() else {
        return;
    };
    let mut probe = Actor::new(
        &w,
        &format!("{label}-probe"),
        &key.account,
        Some(&key),
        1,
        41,
    );
    let ttl = w.params.settings.auth.cache_ttl;
    let lead = Duration::from_secs(1).min(at);
    if !w.pause(at - lead).await {
        return;
    }
    probe.inbox_page(&w).await;
    if !w.pause(lead).await {
        return;
    }
    let Some(id) = triggers_api::domain::KeyId::parse(&key.key_id) else {
        return;
    };
    if w.admin
        .update_key(&id, KeyChange::Status(KeyStatus::Revoked))
        .await
        .is_err()
    {
        return;
    }
    w.rec.note(Note::Revoked { label });
    for wait in [
        ttl / 2,
        ttl - ttl / 2 + Duration::from_millis(1),
        Duration::from_secs(1),
    ] {
        if !w.pause(wait).await {
            return;
        }
        probe.inbox_page(&w).await;
    }
}
