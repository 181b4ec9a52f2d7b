//! Idempotency keys on DynamoDB (docs/dynamodb.md, "Idempotency keys"):
//! one item per (account, key), `IK#{account}#{key}` / `K`, in the events
//! table. A claim is one conditional PutItem (absent, or expired: judged by
//! the stored expiry, since TTL deletes late) that returns the live record
//! when it fails; finishing is one UpdateItem or DeleteItem conditional on
//! the claim's token and on the record still being in flight.

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::item::{self, I_BODY, I_EXPIRES, I_STATUS, I_TOKEN, PK, TTL};
use super::{names, sdk_err, values, DynamoStore, Message};
use crate::domain::{AccountId, IdempotencyKey};
use crate::store::{ClaimOutcome, Finish, IdempotencyClaim, StoreError};

/// Attempts of one claim when the record it met vanished or expired
/// before it could be read (a release or a lapse in between).
const CLAIM_ATTEMPTS: usize = 4;

impl DynamoStore {
    pub(super) async fn claim_idempotency_inner(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, StoreError> {
        let now = claim.now.timestamp_millis();
        let key = item::key(
            item::idempotency_pk(&claim.account, &claim.key),
            item::IDEMPOTENCY_SK,
        );
        for _ in 0..CLAIM_ATTEMPTS {
            let res = self
                .client
                .put_item()
                .table_name(&self.events)
                .set_item(Some(item::idempotency_claim_item(claim)))
                .condition_expression("attribute_not_exists(#pk) OR #exp <= :now")
                .set_expression_attribute_names(Some(names(&[PK, I_EXPIRES])))
                .set_expression_attribute_values(Some(values(vec![(":now", item::n(now))])))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let old = match res {
                Ok(_) => return Ok(ClaimOutcome::Claimed),
                Err(e) => match e.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(c)) => c.item().cloned(),
                    _ => return Err(sdk_err(e)),
                },
            };
            // The live record comes with the failure; an endpoint that
            // omits it costs one consistent read.
            let old = match old.filter(|it| !it.is_empty()) {
                Some(it) => Some(it),
                None => self.get_item(&self.events, key.clone()).await?,
            };
            let Some(old) = old else { continue };
            let rec = item::idempotency_record(&old)?;
            if rec.expires_ms <= now {
                // It expired between the condition and the read.
                continue;
            }
            let same_request = rec.request == claim.request;
            return Ok(match rec.response {
                None => ClaimOutcome::InFlight { same_request },
                Some(response) => ClaimOutcome::Kept {
                    same_request,
                    response,
                },
            });
        }
        Err(StoreError::Unavailable(Box::new(Message(
            "idempotency record kept changing",
        ))))
    }

    pub(super) async fn finish_idempotency_inner(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        token: uuid::Uuid,
        finish: Finish,
    ) -> Result<bool, StoreError> {
        let k = item::key(item::idempotency_pk(account, key), item::IDEMPOTENCY_SK);
        let cond = "#tok = :tok AND attribute_not_exists(#st)";
        let tok = (":tok", item::s(token.to_string()));
        let res = match finish {
            Finish::Keep {
                response,
                expires_at,
            } => self
                .client
                .update_item()
                .table_name(&self.events)
                .set_key(Some(k))
                .update_expression("SET #st = :st, #body = :body, #exp = :exp, #ttl = :ttl")
                .condition_expression(cond)
                .set_expression_attribute_names(Some(names(&[
                    I_TOKEN, I_STATUS, I_BODY, I_EXPIRES, TTL,
                ])))
                .set_expression_attribute_values(Some(values(vec![
                    tok,
                    (":st", item::n(i64::from(response.status))),
                    (":body", AttributeValue::B(Blob::new(response.body))),
                    (":exp", item::ms(&expires_at)),
                    (":ttl", item::ttl_secs(&expires_at)),
                ])))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    let failed = e
                        .as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception());
                    (failed, sdk_err(e))
                }),
            Finish::Release => self
                .client
                .delete_item()
                .table_name(&self.events)
                .set_key(Some(k))
                .condition_expression(cond)
                .set_expression_attribute_names(Some(names(&[I_TOKEN, I_STATUS])))
                .set_expression_attribute_values(Some(values(vec![tok])))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    let failed = e
                        .as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception());
                    (failed, sdk_err(e))
                }),
        };
        match res {
            Ok(()) => Ok(true),
            Err((true, _)) => Ok(false),
            Err((false, e)) => Err(e),
        }
    }
}
