//! DynamoDB backend (design, access patterns and limits: docs/dynamodb.md).
//!
//! Two tables, `{prefix}-events` and `{prefix}-keys`. Every request-path read
//! is a GetItem or a strongly consistent Query; ingest (with its dedup) and
//! ack are each one TransactWriteItems, a batch of 100 events four
//! ([`batch`]); idempotency keys are items of their own ([`idempotency`]). No SDK type leaves this module: every
//! SDK error becomes a [`StoreError`] with the SDK error boxed as its source.
//! The tables themselves (keys, index, TTL) and their creation: [`schema`].

mod batch;
mod idempotency;
mod item;
mod leases;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::meta::region::RegionProviderChain;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Delete, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, Select, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use self::item::{Item, A_DELIVERED_AT, A_META_PARTS, A_TS, PK, SK, TSK, TTL};
use crate::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, IdempotencyKey, KeyId, KeyStatus, LeaseId,
};
use crate::store::{
    AckOutcome, ClaimOutcome, Dedup, Finish, IdempotencyClaim, InboxPage, InboxQuery, InboxState,
    Insert, Inserted, KeyChange, LeaseRequest, NewEvent, Position, RequeueOutcome, Settled, Store,
    StoreError,
};

/// How to reach DynamoDB. Credentials and region come from the standard AWS
/// chain (environment, profile, web identity, ECS/IMDS); `AWS_ENDPOINT_URL`
/// is honoured by that chain too.
#[derive(Debug, Clone)]
pub struct DynamoConfig {
    /// Tables are `{table_prefix}-events` and `{table_prefix}-keys`.
    /// 1–200 characters of `A-Z a-z 0-9 _ . -`.
    pub table_prefix: String,
    /// Overrides the endpoint (DynamoDB Local, LocalStack). When set and no
    /// region is configured, `us-east-1` is used.
    pub endpoint_url: Option<String>,
    /// The budget of one store call, retries included: no call takes longer.
    pub request_timeout: Duration,
    /// Attempts per DynamoDB request (1 = no retry).
    pub max_attempts: u32,
}

impl DynamoConfig {
    /// The defaults: a 2 s budget, 3 attempts, the endpoint from the chain.
    pub fn new(table_prefix: impl Into<String>) -> Self {
        Self {
            table_prefix: table_prefix.into(),
            endpoint_url: None,
            request_timeout: Duration::from_secs(2),
            max_attempts: 3,
        }
    }
}

/// The DynamoDB store. Cheap to clone (the SDK client is shared).
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    events: String,
    keys: String,
    budget: Duration,
    counter: Arc<RequestCounter>,
}

/// Counts every HTTP request sent to DynamoDB (retries included), by
/// operation name, from an SDK interceptor.
#[derive(Debug, Default)]
struct RequestCounter(Mutex<BTreeMap<String, u64>>);

#[derive(Debug)]
struct CountRequests(Arc<RequestCounter>);

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "triggers::CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        // `X-Amz-Target: DynamoDB_20120810.TransactWriteItems`
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown");
        let op = target.rsplit('.').next().unwrap_or(target);
        if let Ok(mut counts) = self.0 .0.lock() {
            *counts.entry(op.to_owned()).or_default() += 1;
        }
        Ok(())
    }
}

/// Error codes that mean "not now": throttling, overload, contention.
const UNAVAILABLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionInProgressException",
    "TransactionConflictException",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// Maps an SDK error: no answer (timeout, connection, unreadable response),
/// throttling and 5xx are `Unavailable`; anything else is `Internal`.
fn sdk_err<E>(e: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let unavailable = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => {
            se.raw().status().as_u16() >= 500
                || se
                    .err()
                    .code()
                    .is_some_and(|c| UNAVAILABLE_CODES.contains(&c))
        }
        _ => false,
    };
    // What DynamoDB said (its error code and message) goes into the cause
    // that is logged; the SDK's own Display says only "service error".
    let cause: crate::store::BoxError = match e.code() {
        Some(code) => Box::new(ServiceFailure {
            code: code.to_owned(),
            message: e.message().unwrap_or("").to_owned(),
            source: Box::new(e),
        }),
        None => Box::new(e),
    };
    if unavailable {
        StoreError::Unavailable(cause)
    } else {
        StoreError::Internal(cause)
    }
}

/// A DynamoDB error answer, with its code and message.
#[derive(Debug, thiserror::Error)]
#[error("DynamoDB answered {code}: {message}")]
struct ServiceFailure {
    code: String,
    message: String,
    #[source]
    source: crate::store::BoxError,
}

/// Why a transaction was cancelled, item by item.
#[derive(Debug, thiserror::Error)]
#[error("transaction cancelled: {codes:?}")]
struct Cancelled {
    codes: Vec<String>,
}

/// A cancellation reason code of one transaction item.
const CONDITION_FAILED: &str = "ConditionalCheckFailed";
const CONFLICT: &str = "TransactionConflict";

fn reason_code(r: &CancellationReason) -> &str {
    r.code().unwrap_or("None")
}

/// What a cancelled transaction means.
#[derive(Debug)]
enum TxVerdict {
    /// A condition decided: the caller reads the reasons.
    ConditionFailed,
    /// Only contention with another transaction: try again.
    Retry,
    Fail(StoreError),
}

fn tx_verdict(reasons: &[CancellationReason]) -> TxVerdict {
    let codes: Vec<&str> = reasons.iter().map(reason_code).collect();
    if codes.contains(&CONDITION_FAILED) {
        return TxVerdict::ConditionFailed;
    }
    if codes.contains(&CONFLICT) {
        return TxVerdict::Retry;
    }
    // ItemCollectionSizeLimitExceeded: the account's inbox partition reached
    // 10 GB (the LSI limit): back-pressure, not a bug.
    let unavailable = codes.iter().any(|c| {
        matches!(
            *c,
            "ThrottlingError"
                | "ProvisionedThroughputExceeded"
                | "RequestLimitExceeded"
                | "ItemCollectionSizeLimitExceeded"
        )
    });
    let err = Box::new(Cancelled {
        codes: codes.into_iter().map(str::to_owned).collect(),
    });
    TxVerdict::Fail(if unavailable {
        StoreError::Unavailable(err)
    } else {
        StoreError::Internal(err)
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(&'static str);

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt { what }
}

/// `#name` for every attribute name an expression uses (some, like `ttl`
/// and `status`, are reserved words).
fn names(list: &[&str]) -> HashMap<String, String> {
    list.iter()
        .map(|n| (format!("#{n}"), (*n).to_owned()))
        .collect()
}

fn values(list: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
    list.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An earlier event with the fingerprint whose timestamp is after this
/// (epoch ms) makes `e` a duplicate.
fn dedup_cutoff(e: &NewEvent, dedup: &Dedup) -> i64 {
    e.timestamp
        .timestamp_millis()
        .saturating_sub(millis(dedup.window))
}

fn from_millis_saturating(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 200
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Internal(Box::new(Message(
            "the DynamoDB table prefix must be 1-200 characters of A-Z a-z 0-9 _ . -",
        ))))
    }
}

impl DynamoStore {
    /// Builds the client (no network call yet). Timeouts and retries are set
    /// explicitly from `cfg`: each attempt gets `request_timeout /
    /// max_attempts` (at least 200 ms), the whole operation
    /// `request_timeout`, and every store method is cut at `request_timeout`
    /// as well, so nothing waits longer than that.
    pub async fn connect(cfg: &DynamoConfig) -> Result<DynamoStore, StoreError> {
        validate_prefix(&cfg.table_prefix)?;
        let budget = cfg.request_timeout.max(Duration::from_millis(100));
        let attempts = cfg.max_attempts.max(1);
        let attempt_timeout = (budget / attempts)
            .max(Duration::from_millis(200))
            .min(budget);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(attempt_timeout.min(Duration::from_secs(1)))
            .operation_attempt_timeout(attempt_timeout)
            .operation_timeout(budget)
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(attempts)
            .with_initial_backoff(Duration::from_millis(25))
            .with_max_backoff(attempt_timeout.min(Duration::from_millis(500)));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(url) = &cfg.endpoint_url {
            loader = loader
                .endpoint_url(url)
                .region(RegionProviderChain::default_provider().or_else("us-east-1"));
        }
        let shared = loader.load().await;
        if shared.region().is_none() {
            return Err(StoreError::Internal(Box::new(Message(
                "no AWS region configured (set AWS_REGION)",
            ))));
        }
        let counter = Arc::new(RequestCounter::default());
        let conf = aws_sdk_dynamodb::config::Builder::from(&shared)
            .interceptor(CountRequests(Arc::clone(&counter)))
            .build();
        Ok(DynamoStore {
            client: Client::from_conf(conf),
            events: schema::EVENTS.table_name(&cfg.table_prefix),
            keys: schema::KEYS.table_name(&cfg.table_prefix),
            budget,
            counter,
        })
    }

    /// The table names: (events, keys).
    pub fn table_names(&self) -> (&str, &str) {
        (&self.events, &self.keys)
    }

    /// HTTP requests sent to DynamoDB so far by this store, retries
    /// included, by operation name (e.g. `"TransactWriteItems"`).
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.counter.0.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Cuts `work` at the budget: a call never hangs, whatever it does.
    async fn within<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.budget, work).await {
            Ok(r) => r,
            Err(elapsed) => Err(StoreError::Unavailable(Box::new(elapsed))),
        }
    }

    /// Runs a transaction. `Ok(None)`: committed. `Ok(Some(reasons))`: a
    /// condition failed (one reason per item, in order). Transaction
    /// conflicts (another transaction on the same item) are retried here
    /// with jittered backoff until a condition decides or the budget ends.
    async fn transact(
        &self,
        writes: Vec<TransactWriteItem>,
    ) -> Result<Option<Vec<CancellationReason>>, StoreError> {
        let mut backoff_ms = 5u64;
        loop {
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(writes.clone()))
                .send()
                .await;
            let err = match res {
                Ok(_) => return Ok(None),
                Err(e) => e,
            };
            let reasons = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    c.cancellation_reasons().to_vec()
                }
                _ => return Err(sdk_err(err)),
            };
            match tx_verdict(&reasons) {
                TxVerdict::ConditionFailed => return Ok(Some(reasons)),
                TxVerdict::Retry => {
                    let jitter = rand::random::<u64>() % (backoff_ms + 1);
                    tokio::time::sleep(Duration::from_millis(backoff_ms / 2 + jitter)).await;
                    backoff_ms = (backoff_ms * 2).min(200);
                }
                TxVerdict::Fail(e) => return Err(e),
            }
        }
    }

    async fn get_item(&self, table: &str, key: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(out.item)
    }

    /// A strongly consistent Query, paged until `want` items or the end,
    /// or until the items hold more than `max_bytes` (and at least two), so
    /// a page of large events is never read whole into memory.
    async fn query(
        &self,
        index: Option<&str>,
        key_condition: &str,
        attr_names: HashMap<String, String>,
        attr_values: HashMap<String, AttributeValue>,
        want: Option<usize>,
        max_bytes: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items: Vec<Item> = Vec::new();
        let mut bytes = 0usize;
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.events)
                .set_index_name(index.map(str::to_owned))
                .consistent_read(true)
                .key_condition_expression(key_condition)
                .set_expression_attribute_names(Some(attr_names.clone()))
                .set_expression_attribute_values(Some(attr_values.clone()))
                .set_exclusive_start_key(start.take());
            if index.is_some() {
                // Projected keys only: DynamoDB fetches the rest from the
                // table within the same (consistent) call.
                q = q.select(Select::AllAttributes);
            }
            if let Some(want) = want {
                let left = want.saturating_sub(items.len()).max(1);
                q = q.limit(i32::try_from(left).unwrap_or(i32::MAX));
            }
            let out = q.send().await.map_err(sdk_err)?;
            let page = out.items.unwrap_or_default();
            bytes = page
                .iter()
                .fold(bytes, |b, it| b.saturating_add(item::approx_bytes(it)));
            items.extend(page);
            let full = max_bytes.is_some_and(|m| bytes > m && items.len() >= 2);
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() && want.is_none_or(|w| items.len() < w) && !full => {
                    start = Some(k)
                }
                _ => return Ok(items),
            }
        }
    }

    /// Joins the metadata parts of an event that keeps them out of line.
    async fn load_parts(
        &self,
        account: &AccountId,
        id: &EventId,
        count: usize,
    ) -> Result<String, StoreError> {
        let parts = self
            .query(
                None,
                "#pk = :pk AND begins_with(#sk, :prefix)",
                names(&[PK, SK]),
                values(vec![
                    (":pk", item::s(item::event_pk(account, id))),
                    (":prefix", item::s(item::PART_SK_PREFIX)),
                ]),
                None,
                None,
            )
            .await?;
        item::join_parts(&parts, count)
    }

    async fn to_event(&self, it: &Item) -> Result<Event, StoreError> {
        let parts = item::meta_parts(it)?;
        let metadata = if parts > 0 {
            let account = AccountId::parse(item::get_s(it, item::A_ACCOUNT, "event.account")?)
                .map_err(|_| corrupt("event.account"))?;
            Some(
                self.load_parts(&account, &item::get_event_id(it)?, parts)
                    .await?,
            )
        } else {
            None
        };
        item::item_to_event(it, metadata)
    }

    fn put(&self, table: &str, it: Item) -> Result<Put, StoreError> {
        Put::builder()
            .table_name(table)
            .set_item(Some(it))
            .build()
            .map_err(StoreError::internal)
    }

    /// The writes of one new event, in this order: the dedup record
    /// (conditional: absent or past the window; `ALL_OLD` on failure), the
    /// event (conditional: its id is new), its inbox entry, its available
    /// marker [and its metadata parts]. Also their estimated size.
    fn insert_writes(
        &self,
        e: &NewEvent,
        dedup: &Dedup,
    ) -> Result<(Vec<TransactWriteItem>, usize), StoreError> {
        let ts = e.timestamp.timestamp_millis();
        let window = millis(dedup.window);
        // An earlier event with this fingerprint and `ts > cutoff` makes this
        // one a duplicate: judged by the stored timestamp, not by TTL.
        let cutoff = ts.saturating_sub(window);
        // TTL only cleans up, past the window and its margin: a repeat
        // stamped inside the window may arrive up to the margin later.
        let expires = from_millis_saturating(
            ts.saturating_add(window)
                .saturating_add(millis(dedup.margin)),
        );
        let dedup_item = item::dedup_item(e, &dedup.fingerprint, &expires);
        let items = item::event_items(e);
        let bytes = item::item_size(&dedup_item)
            + item::item_size(&items.event)
            + item::item_size(&items.inbox)
            + item::item_size(&items.available)
            + items.parts.iter().map(item::item_size).sum::<usize>();

        let dedup_put = Put::builder()
            .table_name(&self.events)
            .set_item(Some(dedup_item))
            .condition_expression("attribute_not_exists(#pk) OR #ts <= :cutoff")
            .set_expression_attribute_names(Some(names(&[PK, A_TS])))
            .set_expression_attribute_values(Some(values(vec![(":cutoff", item::n(cutoff))])))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(StoreError::internal)?;
        let event_put = Put::builder()
            .table_name(&self.events)
            .set_item(Some(items.event))
            .condition_expression("attribute_not_exists(#pk)")
            .set_expression_attribute_names(Some(names(&[PK])))
            .build()
            .map_err(StoreError::internal)?;
        let mut writes = vec![
            TransactWriteItem::builder().put(dedup_put).build(),
            TransactWriteItem::builder().put(event_put).build(),
            TransactWriteItem::builder()
                .put(self.put(&self.events, items.inbox)?)
                .build(),
            TransactWriteItem::builder()
                .put(self.put(&self.events, items.available)?)
                .build(),
        ];
        for part in items.parts {
            writes.push(
                TransactWriteItem::builder()
                    .put(self.put(&self.events, part)?)
                    .build(),
            );
        }
        Ok((writes, bytes))
    }

    async fn insert_inner(&self, e: NewEvent, dedup: Dedup) -> Result<Inserted, StoreError> {
        let (writes, _) = self.insert_writes(&e, &dedup)?;
        for _ in 0..4 {
            let Some(reasons) = self.transact(writes.clone()).await? else {
                return Ok(Inserted::Created);
            };
            if let Some(dup) = self.dedup_verdict(&e, &dedup, &reasons).await? {
                return Ok(dup);
            }
        }
        Err(StoreError::Unavailable(Box::new(Message(
            "dedup record kept changing",
        ))))
    }

    /// What the cancellation of an event's writes ([`Self::insert_writes`],
    /// `reasons` in that order) means: a duplicate (`Some`), or `None` when
    /// the dedup record changed between the cancellation and the read (the
    /// caller decides again). An event id that exists already (a caller
    /// retrying the same `NewEvent` after an unknown outcome, or an id
    /// collision) is `Conflict`.
    async fn dedup_verdict(
        &self,
        e: &NewEvent,
        dedup: &Dedup,
        reasons: &[CancellationReason],
    ) -> Result<Option<Inserted>, StoreError> {
        let code = |i: usize| reasons.get(i).map(reason_code);
        if code(1) == Some(CONDITION_FAILED) {
            return Err(StoreError::Conflict);
        }
        if code(0) != Some(CONDITION_FAILED) {
            return Err(StoreError::Internal(Box::new(Message(
                "unexpected transaction cancellation",
            ))));
        }
        // The original arrives with the cancellation (ALL_OLD); an
        // endpoint that omits it costs one consistent read.
        let original = match reasons
            .first()
            .and_then(|r| r.item.clone())
            .filter(|it| !it.is_empty())
        {
            Some(it) => Some(it),
            None => {
                self.get_item(
                    &self.events,
                    item::key(
                        item::dedup_pk(&e.account, &dedup.fingerprint),
                        item::DEDUP_SK,
                    ),
                )
                .await?
            }
        };
        if let Some(original) = original {
            let (event_id, timestamp) = item::dedup_original(&original)?;
            if timestamp.timestamp_millis() > dedup_cutoff(e, dedup) {
                return Ok(Some(Inserted::Duplicate {
                    event_id,
                    timestamp,
                }));
            }
        }
        Ok(None)
    }

    async fn get_event_inner(
        &self,
        account: &AccountId,
        id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        let Some(it) = self
            .get_item(
                &self.events,
                item::key(item::event_pk(account, id), item::EVENT_SK),
            )
            .await?
        else {
            return Ok(None);
        };
        // Expired (TTL deletes up to ~2 days late): as good as purged.
        if let Some(da) = item::get_opt_ms(&it, A_DELIVERED_AT, "event.delivered_at")? {
            if da <= delivered_cutoff {
                return Ok(None);
            }
        }
        let event = self.to_event(&it).await?;
        Ok((event.account == *account).then_some(event))
    }

    async fn inbox_inner(
        &self,
        account: &AccountId,
        query: &InboxQuery,
    ) -> Result<InboxPage, StoreError> {
        let limit = usize::try_from(query.limit.clamp(1, 200)).unwrap_or(200);
        let after = match &query.after {
            None => None,
            Some(p) => Some(Uuid::from_slice(&p.0).map_err(|_| corrupt("inbox position"))?),
        };
        let pk = item::s(match query.state {
            InboxState::Inbox => item::inbox_pk(account),
            InboxState::Quarantined => item::quarantine_pk(account),
        });
        let items = match &query.event_type {
            None => {
                let (cond, vals) = match after {
                    None => ("#pk = :pk", vec![(":pk", pk)]),
                    Some(a) => (
                        "#pk = :pk AND #sk > :after",
                        vec![(":pk", pk), (":after", item::s(a.hyphenated().to_string()))],
                    ),
                };
                let attr_names = if after.is_some() {
                    names(&[PK, SK])
                } else {
                    names(&[PK])
                };
                self.query(
                    None,
                    cond,
                    attr_names,
                    values(vals),
                    Some(limit + 1),
                    Some(query.max_bytes),
                )
                .await?
            }
            Some(t) => match item::type_range(t, after) {
                None => Vec::new(),
                Some((lo, hi)) => {
                    self.query(
                        Some(item::BY_TYPE_INDEX),
                        "#pk = :pk AND #tsk BETWEEN :lo AND :hi",
                        names(&[PK, TSK]),
                        values(vec![
                            (":pk", pk),
                            (":lo", item::s(lo)),
                            (":hi", item::s(hi)),
                        ]),
                        Some(limit + 1),
                        Some(query.max_bytes),
                    )
                    .await?
                }
            },
        };
        let mut has_more = items.len() > limit;
        let mut events: Vec<Event> = Vec::with_capacity(limit.min(items.len()));
        let mut bytes = 0usize;
        for it in items.iter().take(limit) {
            let event = self.to_event(it).await?;
            bytes = bytes.saturating_add(event.approx_bytes());
            if bytes > query.max_bytes && !events.is_empty() {
                // Cut short: this one and the rest are for the next page.
                has_more = true;
                break;
            }
            // A 128-bit type-hash collision would show here; never expected.
            if query
                .event_type
                .as_ref()
                .is_some_and(|t| *t != event.event_type)
            {
                continue;
            }
            events.push(event);
        }
        let last = events
            .last()
            .map(|e| Position(e.event_id.as_uuid().as_bytes().to_vec()));
        Ok(InboxPage {
            events,
            has_more,
            last,
        })
    }

    async fn ack_inner(
        &self,
        account: &AccountId,
        id: &EventId,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError> {
        // The trait passes the cutoff, not the retention: retention = now -
        // cutoff, so the item expires when a later read would hide it anyway.
        let retention = (now.timestamp_millis() - delivered_cutoff.timestamp_millis()).max(0);
        let expires = from_millis_saturating(now.timestamp_millis().saturating_add(retention));
        let pk = item::event_pk(account, id);
        // Events with out-of-line metadata need their parts' TTL set too;
        // the first attempt excludes them by condition and learns the count
        // from the cancellation.
        let mut parts: Option<usize> = None;
        for _ in 0..4 {
            let mut cond = "attribute_exists(#pk) AND attribute_not_exists(#da)".to_owned();
            let mut attr_names = vec![PK, A_DELIVERED_AT, TTL];
            if parts.is_none() {
                cond.push_str(" AND attribute_not_exists(#mp)");
                attr_names.push(A_META_PARTS);
            }
            let update = Update::builder()
                .table_name(&self.events)
                .set_key(Some(item::key(pk.clone(), item::EVENT_SK)))
                .update_expression("SET #da = :now, #ttl = :ttl")
                .condition_expression(cond)
                .set_expression_attribute_names(Some(names(&attr_names)))
                .set_expression_attribute_values(Some(values(vec![
                    (":now", item::ms(&now)),
                    (":ttl", item::ttl_secs(&expires)),
                ])))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .build()
                .map_err(StoreError::internal)?;
            let remove = Delete::builder()
                .table_name(&self.events)
                .set_key(Some(item::key(item::inbox_pk(account), item::inbox_sk(id))))
                .build()
                .map_err(StoreError::internal)?;
            // A quarantined event's entry, or an available one's marker;
            // a leased one's marker stays until a lease finds it stale.
            let also = [
                item::key(item::quarantine_pk(account), item::inbox_sk(id)),
                item::key(item::available_pk(account), id.to_string()),
            ];
            let mut writes = vec![
                TransactWriteItem::builder().update(update).build(),
                TransactWriteItem::builder().delete(remove).build(),
            ];
            for key in also {
                writes.push(
                    TransactWriteItem::builder()
                        .delete(
                            Delete::builder()
                                .table_name(&self.events)
                                .set_key(Some(key))
                                .build()
                                .map_err(StoreError::internal)?,
                        )
                        .build(),
                );
            }
            for i in 0..parts.unwrap_or(0) {
                let part = Update::builder()
                    .table_name(&self.events)
                    .set_key(Some(item::key(pk.clone(), item::part_sk(i))))
                    .update_expression("SET #ttl = :ttl")
                    .condition_expression("attribute_exists(#pk)")
                    .set_expression_attribute_names(Some(names(&[PK, TTL])))
                    .set_expression_attribute_values(Some(values(vec![(
                        ":ttl",
                        item::ttl_secs(&expires),
                    )])))
                    .build()
                    .map_err(StoreError::internal)?;
                writes.push(TransactWriteItem::builder().update(part).build());
            }

            let Some(reasons) = self.transact(writes).await? else {
                return Ok(AckOutcome::Acknowledged);
            };
            if reasons.first().map(reason_code) != Some(CONDITION_FAILED) {
                // Only a part's condition can have failed: a part is missing.
                return Err(corrupt("event.metadata parts"));
            }
            // ALL_OLD: the reason carries the item if it exists. None: it
            // never existed, or was purged (and is not recreated).
            let Some(old) = reasons
                .first()
                .and_then(|r| r.item.clone())
                .filter(|it| !it.is_empty())
            else {
                return Ok(AckOutcome::NotFound);
            };
            if let Some(da) = item::get_opt_ms(&old, A_DELIVERED_AT, "event.delivered_at")? {
                return Ok(if da <= delivered_cutoff {
                    AckOutcome::NotFound
                } else {
                    AckOutcome::AlreadyDelivered
                });
            }
            parts = Some(item::meta_parts(&old)?);
        }
        Err(StoreError::Unavailable(Box::new(Message(
            "event kept changing during ack",
        ))))
    }

    async fn scan_keys(
        &self,
        filter: Option<(&str, AttributeValue)>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut scan = self
                .client
                .scan()
                .table_name(&self.keys)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some((attr, value)) = &filter {
                scan = scan
                    .filter_expression(format!("#{attr} = :v"))
                    .set_expression_attribute_names(Some(names(&[attr])))
                    .set_expression_attribute_values(Some(values(vec![(":v", value.clone())])));
            }
            let page = scan.send().await.map_err(sdk_err)?;
            for it in page.items.unwrap_or_default() {
                out.push(item::item_to_key(&it)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.sort_by(|a, b| {
            (a.created_at, a.key_id.as_str()).cmp(&(b.created_at, b.key_id.as_str()))
        });
        Ok(out)
    }

    async fn update_key_inner(
        &self,
        key_id: &KeyId,
        change: KeyChange,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let (attr, value) = match change {
            KeyChange::Status(s) => (item::K_STATUS, item::s(s.as_str())),
            KeyChange::RateLimit(n) => (item::K_RATE, item::n(i64::from(n))),
        };
        let res = self
            .client
            .update_item()
            .table_name(&self.keys)
            .key(PK, item::s(key_id.as_str()))
            .update_expression(format!("SET #{attr} = :v"))
            .condition_expression("attribute_exists(#pk)")
            .set_expression_attribute_names(Some(names(&[PK, attr])))
            .expression_attribute_values(":v", value)
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match res {
            Ok(out) => out.attributes.as_ref().map(item::item_to_key).transpose(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk_err(e)),
        }
    }

    async fn secret_inner(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let key = item::key(item::secret_pk(name), item::SECRET_SK);
        if let Some(it) = self.get_item(&self.events, key.clone()).await? {
            return item::secret_from_item(&it);
        }
        let fresh: [u8; 32] = rand::random();
        let res = self
            .client
            .put_item()
            .table_name(&self.events)
            .set_item(Some(item::secret_item(name, &fresh)))
            .condition_expression("attribute_not_exists(#pk)")
            .set_expression_attribute_names(Some(names(&[PK])))
            .send()
            .await;
        match res {
            Ok(_) => Ok(fresh),
            // Another instance created it first: use theirs.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                let it = self
                    .get_item(&self.events, key)
                    .await?
                    .ok_or(corrupt("secret"))?;
                item::secret_from_item(&it)
            }
            Err(e) => Err(sdk_err(e)),
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    fn backend(&self) -> &'static str {
        "dynamodb"
    }

    /// One eventually consistent GetItem of a fixed key (0.5 RCU).
    async fn ping(&self) -> Result<(), StoreError> {
        self.within(async {
            self.client
                .get_item()
                .table_name(&self.events)
                .set_key(Some(item::key(item::PING_PK, item::PING_SK)))
                .send()
                .await
                .map_err(sdk_err)?;
            Ok(())
        })
        .await
    }

    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        self.within(self.secret_inner(name)).await
    }

    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.within(async {
            let res = self
                .client
                .put_item()
                .table_name(&self.keys)
                .set_item(Some(item::key_to_item(key)))
                .condition_expression("attribute_not_exists(#pk)")
                .set_expression_attribute_names(Some(names(&[PK])))
                .send()
                .await;
            match res {
                Ok(_) => Ok(()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    Err(StoreError::Conflict)
                }
                Err(e) => Err(sdk_err(e)),
            }
        })
        .await
    }

    /// One strongly consistent GetItem by key id: a revoked key is refused
    /// from the next request on.
    async fn get_key(&self, key_id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.within(async {
            let key = HashMap::from([(PK.to_owned(), item::s(key_id.as_str()))]);
            self.get_item(&self.keys, key)
                .await?
                .as_ref()
                .map(item::item_to_key)
                .transpose()
        })
        .await
    }

    /// Admin path: a consistent Scan of the keys table (which holds keys
    /// only), filtered by account when given.
    async fn list_keys(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.within(self.scan_keys(account.map(|a| (item::K_ACCOUNT, item::s(a.as_str())))))
            .await
    }

    async fn update_key(
        &self,
        key_id: &KeyId,
        change: KeyChange,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.within(self.update_key_inner(key_id, change)).await
    }

    /// Admin path: a consistent Scan of the keys table filtered by email,
    /// then one conditional UpdateItem per key.
    async fn revoke_keys_by_email(&self, email: &Email) -> Result<Vec<KeyId>, StoreError> {
        self.within(async {
            let keys = self
                .scan_keys(Some((item::K_EMAIL, item::s(email.as_str()))))
                .await?;
            let mut revoked = Vec::with_capacity(keys.len());
            for k in keys {
                if self
                    .update_key_inner(&k.key_id, KeyChange::Status(KeyStatus::Revoked))
                    .await?
                    .is_some()
                {
                    revoked.push(k.key_id);
                }
            }
            Ok(revoked)
        })
        .await
    }

    /// One TransactWriteItems: the dedup record (conditional on the window,
    /// returning the original on failure), the event, its inbox entry.
    async fn insert_event(&self, event: NewEvent, dedup: Dedup) -> Result<Inserted, StoreError> {
        self.within(self.insert_inner(event, dedup)).await
    }

    /// TransactWriteItems of up to 100 items (4 per event: 25 events each
    /// without metadata parts), all sent at once; a transaction cancelled
    /// by duplicates is sent again without them (the cancellation carries
    /// each original). 100 new events: 4 requests.
    async fn insert_events(&self, events: Vec<Insert>) -> Result<Vec<Inserted>, StoreError> {
        self.within(self.insert_events_inner(events)).await
    }

    /// One conditional PutItem (its failure returns the live record).
    async fn claim_idempotency_key(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, StoreError> {
        self.within(self.claim_idempotency_inner(claim)).await
    }

    /// One conditional UpdateItem (keep) or DeleteItem (release).
    async fn finish_idempotency_key(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        token: uuid::Uuid,
        finish: Finish,
    ) -> Result<bool, StoreError> {
        self.within(self.finish_idempotency_inner(account, key, token, finish))
            .await
    }

    /// One strongly consistent GetItem (plus one Query for an event whose
    /// metadata lives in parts).
    async fn get_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        self.within(self.get_event_inner(account, event_id, delivered_cutoff))
            .await
    }

    /// One strongly consistent Query of the account's inbox partition (or
    /// of its by-type LSI), `limit + 1` items; more only past 1 MB.
    async fn inbox(
        &self,
        account: &AccountId,
        query: &InboxQuery,
    ) -> Result<InboxPage, StoreError> {
        self.within(self.inbox_inner(account, query)).await
    }

    /// One TransactWriteItems: a conditional update of the event (exists,
    /// undelivered) and the delete of its inbox entry.
    async fn ack_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError> {
        self.within(self.ack_inner(account, event_id, now, delivered_cutoff))
            .await
    }

    /// Two Queries at once (the account's available markers, `limit`; its
    /// ended leases' markers, up to 1,000), one consistent BatchGetItem of
    /// the candidates' event items, then TransactWriteItems of up to 100
    /// items (24 events and a chunk of the lease record), all at once; each
    /// event's writes are conditional on the state it was read in. Events
    /// lost to a concurrent call are skipped and looked for again (up to 4
    /// rounds).
    async fn lease(
        &self,
        account: &AccountId,
        req: &LeaseRequest,
    ) -> Result<Vec<Event>, StoreError> {
        self.within(self.lease_inner(account, req)).await
    }

    /// One Query of the lease record, then TransactWriteItems (4 items per
    /// event, plus its metadata parts) conditional on the event being held
    /// by this lease and undelivered.
    async fn ack_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.within(self.ack_leased_inner(account, lease_id, event_ids, now, delivered_cutoff))
            .await
    }

    /// One Query of the lease record, then TransactWriteItems (4 items per
    /// event, 2 for a quarantined one) conditional on the lease.
    async fn release_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.within(self.release_leased_inner(account, lease_id, event_ids, delivered_cutoff))
            .await
    }

    /// One consistent GetItem, then one TransactWriteItems conditional on
    /// the state read.
    async fn requeue(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<RequeueOutcome, StoreError> {
        self.within(self.requeue_inner(account, event_id, delivered_cutoff))
            .await
    }

    /// DynamoDB's TTL deletes delivered events, dedup and idempotency
    /// records (the `ttl` attribute); reads already hide what is past its
    /// cutoff. Nothing to do.
    async fn purge(
        &self,
        _delivered_cutoff: DateTime<Utc>,
        _dedup_cutoff: DateTime<Utc>,
        _idempotency_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use aws_smithy_types::body::SdkBody;

    fn service_error(code: &str, status: u16) -> SdkError<GetItemError> {
        let raw = axum::http::Response::builder()
            .status(status)
            .body(SdkBody::empty())
            .expect("a response");
        let raw = HttpResponse::try_from(raw).expect("a response");
        SdkError::service_error(
            GetItemError::generic(ErrorMetadata::builder().code(code).build()),
            raw,
        )
    }

    #[test]
    fn throttling_overload_and_no_answer_are_unavailable() {
        for (code, status) in [
            ("ProvisionedThroughputExceededException", 400),
            ("ThrottlingException", 400),
            ("RequestLimitExceeded", 400),
            ("TransactionConflictException", 400),
            ("InternalServerError", 500),
            ("Whatever", 503),
        ] {
            let e = sdk_err(service_error(code, status));
            assert!(matches!(e, StoreError::Unavailable(_)), "{code}: {e:?}");
            // What DynamoDB said is the source; the SDK error, boxed, not a
            // string, is its source.
            let source = std::error::Error::source(&e).expect("a source");
            assert!(source.to_string().contains(code), "{source}");
            let sdk = source.source().expect("the SDK error");
            assert!(sdk.downcast_ref::<SdkError<GetItemError>>().is_some());
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e: SdkError<GetItemError> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(io)));
        assert!(matches!(sdk_err(e), StoreError::Unavailable(_)));
        let e: SdkError<GetItemError> = SdkError::timeout_error(Box::new(Message("slow")));
        assert!(matches!(sdk_err(e), StoreError::Unavailable(_)));
    }

    #[test]
    fn the_logged_cause_names_dynamodbs_error_code_and_message() {
        let raw = axum::http::Response::builder()
            .status(400)
            .body(SdkBody::empty())
            .expect("a response");
        let raw = HttpResponse::try_from(raw).expect("a response");
        let e = sdk_err(SdkError::service_error(
            GetItemError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("User is not authorized to perform dynamodb:GetItem")
                    .build(),
            ),
            raw,
        ));
        assert!(matches!(e, StoreError::Internal(_)));
        let mut chain = Vec::new();
        let mut cur: Option<&dyn std::error::Error> = Some(&e);
        while let Some(c) = cur {
            chain.push(c.to_string());
            cur = c.source();
        }
        let text = chain.join(": ");
        assert!(text.contains("AccessDeniedException"), "{text}");
        assert!(
            text.contains("not authorized to perform dynamodb:GetItem"),
            "{text}"
        );
    }

    #[test]
    fn client_errors_are_internal() {
        for code in [
            "ValidationException",
            "ResourceNotFoundException",
            "AccessDeniedException",
        ] {
            assert!(
                matches!(sdk_err(service_error(code, 400)), StoreError::Internal(_)),
                "{code}"
            );
        }
        let e: SdkError<GetItemError> =
            SdkError::construction_failure(Box::new(Message("bad input")));
        assert!(matches!(sdk_err(e), StoreError::Internal(_)));
    }

    fn reasons(codes: &[&str]) -> Vec<CancellationReason> {
        codes
            .iter()
            .map(|c| CancellationReason::builder().code(*c).build())
            .collect()
    }

    #[test]
    fn cancellations_are_classified() {
        assert!(matches!(
            tx_verdict(&reasons(&["ConditionalCheckFailed", "None", "None"])),
            TxVerdict::ConditionFailed
        ));
        // A condition decides even when another item also conflicted.
        assert!(matches!(
            tx_verdict(&reasons(&["TransactionConflict", "ConditionalCheckFailed"])),
            TxVerdict::ConditionFailed
        ));
        assert!(matches!(
            tx_verdict(&reasons(&["None", "TransactionConflict", "None"])),
            TxVerdict::Retry
        ));
        for throttled in [
            "ThrottlingError",
            "ProvisionedThroughputExceeded",
            "ItemCollectionSizeLimitExceeded",
        ] {
            assert!(matches!(
                tx_verdict(&reasons(&["None", throttled])),
                TxVerdict::Fail(StoreError::Unavailable(_))
            ));
        }
        assert!(matches!(
            tx_verdict(&reasons(&["ValidationError", "None"])),
            TxVerdict::Fail(StoreError::Internal(_))
        ));
    }

    #[test]
    fn table_prefixes_are_validated() {
        assert!(validate_prefix("triggers-prod_1.x").is_ok());
        for bad in ["", "has space", "slash/", &"x".repeat(201)] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
