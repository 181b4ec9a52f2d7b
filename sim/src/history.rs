//! The recorded history: every client operation as an invocation and its
//! completion (ok / fail / info, in the manner of Jepsen), plus notes of
//! what the environment did (restarts, faults, revocations). Times are
//! milliseconds since the start of the run (virtual time in a simulated
//! run). Every entry is rendered to one line as it is recorded and that
//! line is hashed, so the digest covers the whole history in order.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::env::SimClock;

pub type CallId = usize;

/// One event as a client saw it in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub ts_ms: i64,
    pub event_type: String,
    /// The payload's JSON text as served.
    pub payload: String,
    pub source: Option<String>,
    pub metadata: String,
    pub delivered: bool,
    /// What the service bounds pages by (`Event::approx_bytes`).
    pub approx_bytes: usize,
}

/// What a producer sends: the dedup identity (account, event_type, payload,
/// source) plus metadata.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Content {
    pub account: String,
    pub event_type: String,
    pub payload: String,
    pub source: Option<String>,
    pub metadata: Option<String>,
}

impl Content {
    /// The dedup identity.
    pub fn key(&self) -> (String, String, String, Option<String>) {
        (
            self.account.clone(),
            self.event_type.clone(),
            self.payload.clone(),
            self.source.clone(),
        )
    }
}

/// A client operation.
#[derive(Debug, Clone)]
pub enum Action {
    /// POST /events. `send` names the logical send (the same across
    /// retries of one body); `valid` is false for a body the API must refuse.
    Post {
        send: u64,
        attempt: u32,
        content: Content,
        valid: bool,
        /// The `Idempotency-Key` sent, if any.
        idem: Option<String>,
    },
    /// POST /events/batch: `items` in order (a repeat within the batch is
    /// the same content twice); `send` as for `Post`.
    Batch {
        send: u64,
        attempt: u32,
        items: Vec<Content>,
        idem: Option<String>,
    },
    /// One page of an inbox walk (GET /inbox).
    Page {
        walk: u64,
        page: u32,
        limit: u32,
        event_type: Option<String>,
        cursor: Option<String>,
        /// The checker's own walk after the run, with every fault off.
        final_walk: bool,
        /// `state=quarantined` (the quarantine listing).
        quarantined: bool,
    },
    /// GET /events/{id}.
    Get { id: String },
    /// DELETE /events/{id}.
    Ack { id: String },
    /// A request the API must refuse with this status (a bad input, a wrong
    /// role, another account's id or cursor).
    Refusable {
        what: &'static str,
        expect: u16,
        target: String,
    },
    /// A wrong secret for a real key id.
    WrongSecret { key_id: String },
    /// POST /inbox/lease (SPEC v2): answered with [`Outcome::Leased`].
    Lease {
        limit: u32,
        lease_seconds: u32,
        event_type: Option<String>,
        wait_seconds: u32,
    },
    /// POST /inbox/ack (`release: false`) or /inbox/release of a lease's
    /// events: `event_ids` are those sent or, when `all` (no `event_ids`
    /// in the body), the lease's events as its answer listed them.
    LeaseSettle {
        lease_id: String,
        release: bool,
        event_ids: Vec<String>,
        all: bool,
    },
    /// A connection that sends half a request head and stalls.
    SlowHead,
    /// GET /status (no key).
    Status,
}

/// What came back.
#[derive(Debug, Clone)]
pub enum Outcome {
    Posted {
        status: u16,
        event_id: String,
        ts_ms: i64,
        duplicate: bool,
        /// `Idempotent-Replayed: true` came with it.
        replayed: bool,
    },
    /// A batch answered 200: one result per item, in order.
    Batch {
        replayed: bool,
        results: Vec<ItemResult>,
    },
    /// POST /inbox/ack or /inbox/release answered 200: the ids acknowledged
    /// (or released) and those the lease no longer held.
    Settled {
        done: Vec<String>,
        stale: Vec<String>,
    },
    Page {
        events: Vec<Seen>,
        has_more: bool,
        next_cursor: Option<String>,
    },
    Event(Seen),
    Acked,
    /// A lease: its id, expiry (ms since the run began) and events; an
    /// empty `lease_id` (and `until_ms` 0) when nothing was available.
    Leased {
        lease_id: String,
        until_ms: u64,
        events: Vec<Seen>,
    },
    /// Any other HTTP answer (an error, or a success nothing more is
    /// recorded of).
    Status {
        status: u16,
        code: String,
    },
    /// Certainly not carried out (the request never left the client).
    NotSent(&'static str),
    /// May or may not have been carried out.
    Unknown(&'static str),
    /// The server closed a stalled connection after this long.
    Closed {
        after_ms: u64,
    },
}

/// One item's result in a batch answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    pub index: usize,
    pub status: u16,
    /// For 200 and 201.
    pub event_id: Option<String>,
    pub ts_ms: Option<i64>,
    pub duplicate: bool,
}

/// Ok, fail or info, as Jepsen histories classify completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ok,
    Fail,
    Info,
}

impl Outcome {
    /// `Some(self)` when it is a bare status in the 2xx range.
    pub fn filter_2xx(&self) -> Option<&Outcome> {
        match self {
            Outcome::Status { status, .. } if (200..300).contains(status) => Some(self),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Posted { status, .. } | Outcome::Status { status, .. } => Some(*status),
            Outcome::Page { .. }
            | Outcome::Event(_)
            | Outcome::Leased { .. }
            | Outcome::Batch { .. }
            | Outcome::Settled { .. } => Some(200),
            Outcome::Acked => Some(204),
            _ => None,
        }
    }

    pub fn kind(&self) -> Kind {
        match self.status() {
            Some(s) if s < 400 => Kind::Ok,
            Some(s) if s < 500 => Kind::Fail,
            Some(_) => Kind::Info,
            None => match self {
                Outcome::NotSent(_) => Kind::Fail,
                Outcome::Closed { .. } => Kind::Ok,
                _ => Kind::Info,
            },
        }
    }
}

/// What happened around the clients.
#[derive(Debug, Clone)]
pub enum Note {
    /// What the seed chose for the service (first entry of a history).
    Settings {
        text: String,
    },
    Key {
        label: String,
        key_id: String,
        account: String,
        role: &'static str,
    },
    Revoked {
        label: String,
    },
    ServerStarted {
        instance: u32,
    },
    ServerStartFailed {
        instance: u32,
    },
    /// A restart begins: graceful (the new instance starts, then the old
    /// one drains) or abrupt (the old one's task is dropped mid-flight).
    Restart {
        graceful: bool,
        instance: u32,
    },
    ServerStopped {
        instance: u32,
        took_ms: u64,
    },
    Faults {
        level: &'static str,
    },
    Partition {
        until_ms: u64,
    },
    /// A burst of wrong secrets ended: bcrypt runs of the instance that
    /// served it, before and after, and what the burst was.
    Burst {
        key_id: String,
        attempts: u32,
        sources: u32,
        instance: u32,
        runs_before: u64,
        runs_after: u64,
        instance_after: u32,
    },
    /// The run is over: faults off, partitions healed; the final walks follow.
    Quiesce,
    /// Checked after the run: resources that must be back to zero.
    Resource {
        what: &'static str,
        value: i64,
    },
}

#[derive(Debug, Clone)]
pub enum Entry {
    Invoke {
        call: CallId,
        t: u64,
        actor: usize,
        action: Action,
    },
    Complete {
        call: CallId,
        t: u64,
        outcome: Outcome,
    },
    Note {
        t: u64,
        note: Note,
    },
}

impl Entry {
    pub fn time(&self) -> u64 {
        match self {
            Entry::Invoke { t, .. } | Entry::Complete { t, .. } | Entry::Note { t, .. } => *t,
        }
    }
}

/// Who acts: a name, its account and the key it uses.
#[derive(Debug, Clone)]
pub struct ActorInfo {
    pub name: String,
    pub account: String,
    pub key: String,
}

struct Inner {
    entries: Vec<Entry>,
    actors: Vec<ActorInfo>,
    /// Entry index of each call's invocation and completion.
    calls: Vec<(usize, Option<usize>)>,
    hasher: Sha256,
    /// Lease ids as the service drew them (at random) -> the names the
    /// history gives them, in the order they were first answered.
    leases: std::collections::BTreeMap<String, String>,
}

/// The history being recorded; cheap to clone (shared).
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<SimClock>,
}

impl Recorder {
    pub fn new(clock: Arc<SimClock>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: Vec::new(),
                actors: Vec::new(),
                calls: Vec::new(),
                hasher: Sha256::new(),
                leases: std::collections::BTreeMap::new(),
            })),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn actor(&self, info: ActorInfo) -> usize {
        let mut s = self.lock();
        let line = format!("actor {} {} {}\n", info.name, info.account, info.key);
        s.hasher.update(line.as_bytes());
        s.actors.push(info);
        s.actors.len() - 1
    }

    fn push(s: &mut Inner, entry: Entry) -> usize {
        let idx = s.entries.len();
        let line = render(&s.actors, &entry, idx, None);
        s.hasher.update(line.as_bytes());
        s.hasher.update(b"\n");
        s.entries.push(entry);
        idx
    }

    pub fn invoke(&self, actor: usize, action: Action) -> CallId {
        let t = self.clock.elapsed_ms();
        let mut s = self.lock();
        let call = s.calls.len();
        let idx = Self::push(
            &mut s,
            Entry::Invoke {
                call,
                t,
                actor,
                action,
            },
        );
        s.calls.push((idx, None));
        call
    }

    pub fn complete(&self, call: CallId, outcome: Outcome) {
        let t = self.clock.elapsed_ms();
        let mut s = self.lock();
        let idx = Self::push(&mut s, Entry::Complete { call, t, outcome });
        if let Some(c) = s.calls.get_mut(call) {
            c.1 = Some(idx);
        }
    }

    pub fn note(&self, note: Note) {
        let t = self.clock.elapsed_ms();
        let mut s = self.lock();
        Self::push(&mut s, Entry::Note { t, note });
    }

    /// The history's name for a lease id the service drew: the service
    /// draws them at random (not from the seed), so the history names them
    /// `lease-1`, `lease-2`, … in the order they were first answered, and a
    /// seed's history stays the same byte for byte.
    pub fn lease_name(&self, lease_id: &str) -> String {
        let mut s = self.lock();
        let n = s.leases.len() + 1;
        s.leases
            .entry(lease_id.to_owned())
            .or_insert_with(|| format!("lease-{n}"))
            .clone()
    }

    /// Calls invoked so far.
    pub fn calls(&self) -> usize {
        self.lock().calls.len()
    }

    /// The history recorded, and its digest.
    pub fn finish(&self) -> History {
        let s = self.lock();
        History {
            entries: s.entries.clone(),
            actors: s.actors.clone(),
            calls: s.calls.clone(),
            digest: hex::encode(s.hasher.clone().finalize()),
        }
    }
}

/// A finished history.
#[derive(Debug, Clone)]
pub struct History {
    pub entries: Vec<Entry>,
    pub actors: Vec<ActorInfo>,
    /// Entry index of each call's invocation and completion.
    pub calls: Vec<(usize, Option<usize>)>,
    /// SHA-256 of every rendered entry, in order (hex).
    pub digest: String,
}

/// One call, invocation and completion joined.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub id: CallId,
    pub actor: usize,
    /// Times (ms into the run) of the invocation and completion
    /// (`u64::MAX` when it never completed).
    pub invoked: u64,
    pub completed: u64,
    /// History positions of the invocation and completion (`usize::MAX`
    /// when it never completed): what "before" means, since many entries
    /// share one millisecond.
    pub inv: usize,
    pub done: usize,
    pub action: &'a Action,
    pub outcome: Option<&'a Outcome>,
}

impl History {
    /// Builds a history from entries (for tests of the checker).
    pub fn from_entries(actors: Vec<ActorInfo>, entries: Vec<Entry>) -> Self {
        let mut calls: Vec<(usize, Option<usize>)> = Vec::new();
        let mut hasher = Sha256::new();
        for (idx, e) in entries.iter().enumerate() {
            hasher.update(render(&actors, e, idx, None).as_bytes());
            hasher.update(b"\n");
            match e {
                Entry::Invoke { call, .. } => {
                    if calls.len() <= *call {
                        calls.resize(*call + 1, (usize::MAX, None));
                    }
                    calls[*call].0 = idx;
                }
                Entry::Complete { call, .. } => {
                    if let Some(c) = calls.get_mut(*call) {
                        c.1 = Some(idx);
                    }
                }
                Entry::Note { .. } => {}
            }
        }
        Self {
            entries,
            actors,
            calls,
            digest: hex::encode(hasher.finalize()),
        }
    }

    pub fn call(&self, id: CallId) -> Option<Call<'_>> {
        let (inv, done) = *self.calls.get(id)?;
        let Entry::Invoke {
            t, actor, action, ..
        } = self.entries.get(inv)?
        else {
            return None;
        };
        let (completed, outcome) = match done.and_then(|d| self.entries.get(d)) {
            Some(Entry::Complete { t, outcome, .. }) => (*t, Some(outcome)),
            _ => (u64::MAX, None),
        };
        Some(Call {
            id,
            actor: *actor,
            invoked: *t,
            completed,
            inv,
            done: done.unwrap_or(usize::MAX),
            action,
            outcome,
        })
    }

    pub fn all_calls(&self) -> impl Iterator<Item = Call<'_>> {
        (0..self.calls.len()).filter_map(|i| self.call(i))
    }

    pub fn notes(&self) -> impl Iterator<Item = (usize, u64, &Note)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Note { t, note } => Some((i, *t, note)),
                _ => None,
            })
    }

    /// The lines of the entries at `indices`, in order, with page listings
    /// cut down to the event ids in `focus`.
    pub fn excerpt(&self, indices: &BTreeSet<usize>, focus: &BTreeSet<String>) -> Vec<String> {
        indices
            .iter()
            .filter_map(|i| {
                self.entries
                    .get(*i)
                    .map(|e| render(&self.actors, e, *i, Some(focus)))
            })
            .collect()
    }

    /// Every line (for `--print-history`).
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| render(&self.actors, e, i, None))
    }
}

/// `T+hh:mm:ss.mmm`
pub fn fmt_time(ms: u64) -> String {
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    format!("T+{h:02}:{m:02}:{:02}.{:03}", rest / 1000, rest % 1000)
}

/// A payload shortened for a report line.
pub fn fmt_payload(payload: &str) -> String {
    short(payload, 80)
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…({} bytes)", text.len())
    }
}

fn render_events(out: &mut String, events: &[Seen], focus: Option<&BTreeSet<String>>) {
    match focus {
        None => {
            let _ = write!(out, "[");
            for (i, e) in events.iter().enumerate() {
                let sep = if i == 0 { "" } else { " " };
                let _ = write!(out, "{sep}{}@{}", e.id, e.ts_ms);
                if e.delivered {
                    let _ = write!(out, "(delivered)");
                }
            }
            let _ = write!(out, "]");
        }
        Some(focus) => {
            let shown: Vec<String> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| focus.contains(&e.id))
                .map(|(i, e)| format!("#{i}={}", e.id))
                .collect();
            let _ = write!(out, "[{} events", events.len());
            if !shown.is_empty() {
                let _ = write!(out, ": {}", shown.join(" "));
            }
            let _ = write!(out, "]");
        }
    }
}

fn render(actors: &[ActorInfo], e: &Entry, idx: usize, focus: Option<&BTreeSet<String>>) -> String {
    let mut out = String::new();
    let who = |a: usize| actors.get(a).map_or("?", |x| x.name.as_str());
    match e {
        Entry::Invoke {
            call,
            t,
            actor,
            action,
        } => {
            let _ = write!(
                out,
                "{idx:>6} {} {:<14} invoke #{call} ",
                fmt_time(*t),
                who(*actor)
            );
            match action {
                Action::Post {
                    send,
                    attempt,
                    content,
                    valid,
                    idem,
                } => {
                    let _ = write!(
                        out,
                        "POST /events send={send} attempt={attempt}{}{} type={} source={:?} payload={}",
                        if *valid { "" } else { " (invalid)" },
                        idem.as_ref().map(|k| format!(" key={k}")).unwrap_or_default(),
                        content.event_type,
                        content.source,
                        if focus.is_some() {
                            short(&content.payload, 80)
                        } else {
                            content.payload.clone()
                        }
                    );
                    if let Some(m) = &content.metadata {
                        let _ = write!(out, " metadata={}", short(m, 40));
                    }
                }
                Action::Batch {
                    send,
                    attempt,
                    items,
                    idem,
                } => {
                    let _ = write!(
                        out,
                        "POST /events/batch send={send} attempt={attempt}{} items={}:",
                        idem.as_ref()
                            .map(|k| format!(" key={k}"))
                            .unwrap_or_default(),
                        items.len()
                    );
                    for c in items {
                        let _ = write!(
                            out,
                            " [type={} source={:?} payload={}]",
                            c.event_type,
                            c.source,
                            if focus.is_some() {
                                short(&c.payload, 80)
                            } else {
                                c.payload.clone()
                            }
                        );
                    }
                }
                Action::Page {
                    walk,
                    page,
                    limit,
                    event_type,
                    cursor,
                    final_walk,
                    quarantined,
                } => {
                    let _ = write!(
                        out,
                        "GET /inbox walk={walk}{}{} page={page} limit={limit}",
                        if *final_walk { " (final)" } else { "" },
                        if *quarantined {
                            " state=quarantined"
                        } else {
                            ""
                        }
                    );
                    if let Some(t) = event_type {
                        let _ = write!(out, " event_type={t}");
                    }
                    if let Some(c) = cursor {
                        let _ = write!(out, " cursor={}", short(c, 16));
                    }
                }
                Action::Get { id } => {
                    let _ = write!(out, "GET /events/{id}");
                }
                Action::Ack { id } => {
                    let _ = write!(out, "DELETE /events/{id}");
                }
                Action::Refusable {
                    what,
                    expect,
                    target,
                } => {
                    let _ = write!(out, "{target} ({what}, expect {expect})");
                }
                Action::WrongSecret { key_id } => {
                    let _ = write!(out, "GET /inbox with a wrong secret for key id {key_id}");
                }
                Action::Lease {
                    limit,
                    lease_seconds,
                    event_type,
                    wait_seconds,
                } => {
                    let _ = write!(
                        out,
                        "POST /inbox/lease limit={limit} lease_seconds={lease_seconds} wait_seconds={wait_seconds}"
                    );
                    if let Some(t) = event_type {
                        let _ = write!(out, " event_type={t}");
                    }
                }
                Action::LeaseSettle {
                    lease_id,
                    release,
                    event_ids,
                    all,
                } => {
                    let _ = write!(
                        out,
                        "POST /inbox/{} lease={lease_id} {}[{}]",
                        if *release { "release" } else { "ack" },
                        if *all { "(all) " } else { "" },
                        event_ids.join(" ")
                    );
                }
                Action::SlowHead => {
                    let _ = write!(out, "half a request head, then nothing");
                }
                Action::Status => {
                    let _ = write!(out, "GET /status");
                }
            }
        }
        Entry::Complete { call, t, outcome } => {
            let kind = match outcome.kind() {
                Kind::Ok => "ok  ",
                Kind::Fail => "fail",
                Kind::Info => "info",
            };
            let _ = write!(
                out,
                "{idx:>6} {} {:<14} {kind}   #{call} ",
                fmt_time(*t),
                ""
            );
            match outcome {
                Outcome::Posted {
                    status,
                    event_id,
                    ts_ms,
                    duplicate,
                    replayed,
                } => {
                    let _ = write!(
                        out,
                        "{status} event={event_id} ts={ts_ms}{}{}",
                        if *duplicate { " duplicate" } else { "" },
                        if *replayed { " replayed" } else { "" }
                    );
                }
                Outcome::Batch { replayed, results } => {
                    let _ = write!(out, "200{} [", if *replayed { " replayed" } else { "" });
                    for (i, r) in results.iter().enumerate() {
                        let sep = if i == 0 { "" } else { " " };
                        let _ = write!(out, "{sep}#{}:{}", r.index, r.status);
                        if let Some(id) = &r.event_id {
                            let _ = write!(out, "={id}@{}", r.ts_ms.unwrap_or(0));
                        }
                        if r.duplicate {
                            let _ = write!(out, "(dup)");
                        }
                    }
                    let _ = write!(out, "]");
                }
                Outcome::Settled { done, stale } => {
                    let _ = write!(
                        out,
                        "200 done=[{}] stale=[{}]",
                        done.join(" "),
                        stale.join(" ")
                    );
                }
                Outcome::Page {
                    events,
                    has_more,
                    next_cursor,
                } => {
                    let _ = write!(out, "200 ");
                    render_events(&mut out, events, focus);
                    let _ = write!(out, " has_more={has_more}");
                    if let (Some(c), None) = (next_cursor, focus) {
                        let _ = write!(out, " next={c}");
                    }
                }
                Outcome::Event(e) => {
                    let _ = write!(
                        out,
                        "200 event={} ts={} delivered={}",
                        e.id, e.ts_ms, e.delivered
                    );
                }
                Outcome::Acked => {
                    let _ = write!(out, "204");
                }
                Outcome::Leased {
                    lease_id,
                    until_ms,
                    events,
                } => {
                    let _ = write!(out, "200 lease={lease_id} until={} ", fmt_time(*until_ms));
                    render_events(&mut out, events, focus);
                }
                Outcome::Status { status, code } => {
                    let _ = write!(out, "{status} {code}");
                }
                Outcome::NotSent(why) => {
                    let _ = write!(out, "not sent: {why}");
                }
                Outcome::Unknown(why) => {
                    let _ = write!(out, "no answer: {why}");
                }
                Outcome::Closed { after_ms } => {
                    let _ = write!(out, "closed by the server after {after_ms} ms");
                }
            }
        }
        Entry::Note { t, note } => {
            let _ = write!(out, "{idx:>6} {} {:<14} ", fmt_time(*t), "--");
            let _ = match note {
                Note::Settings { text } => write!(out, "settings: {text}"),
                Note::Key {
                    label,
                    key_id,
                    account,
                    role,
                } => write!(out, "key {label} = {key_id} ({role} of {account})"),
                Note::Revoked { label } => write!(out, "key {label} revoked"),
                Note::ServerStarted { instance } => write!(out, "server instance {instance} up"),
                Note::ServerStartFailed { instance } => {
                    write!(out, "server instance {instance} failed to start")
                }
                Note::Restart { graceful, instance } => write!(
                    out,
                    "{} restart of instance {instance}",
                    if *graceful { "graceful" } else { "abrupt" }
                ),
                Note::ServerStopped { instance, took_ms } => {
                    write!(out, "instance {instance} stopped after {took_ms} ms")
                }
                Note::Faults { level } => write!(out, "store faults: {level}"),
                Note::Partition { until_ms } => {
                    write!(out, "network partition until {}", fmt_time(*until_ms))
                }
                Note::Burst {
                    key_id,
                    attempts,
                    sources,
                    instance,
                    runs_before,
                    runs_after,
                    instance_after,
                } => write!(
                    out,
                    "wrong-secret burst on {key_id}: {attempts} attempts from {sources} networks; bcrypt runs {runs_before} -> {runs_after} (instance {instance} -> {instance_after})"
                ),
                Note::Quiesce => write!(out, "quiesce: faults off, network healed"),
                Note::Resource { what, value } => write!(out, "after the run: {what} = {value}"),
            };
        }
    }
    out
}
