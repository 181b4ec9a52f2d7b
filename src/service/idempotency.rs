//! Idempotency keys: what the ingest handlers call around their work when
//! a request carries an `Idempotency-Key`. A request first claims the key
//! (in the store, so the claim holds across instances and restarts); the
//! claim is then finished with the response to keep (a 2xx) or released
//! (anything else, so that a retry after a 5xx can succeed). A claim that
//! is never finished — the request died, the server crashed — lapses after
//! the request timeout, and the key can be claimed again.
//!
//! What counts as "the same request" is [`request_digest`]: SHA-256 of the
//! route and the raw body bytes, so a replay needs the byte-identical body.

use sha2::{Digest, Sha256};

use crate::domain::{AccountId, IdempotencyKey};
use crate::state::AppState;
use crate::store::{ClaimOutcome, Finish, IdempotencyClaim, KeptResponse, StoreError};

/// What identifies a request for its idempotency key: SHA-256 of `route`
/// (e.g. `"POST /events"`), a NUL byte, and the body exactly as received.
pub fn request_digest(route: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

/// What claiming a key found.
pub enum Begun {
    /// The key is this request's: do the work, then finish the claim.
    Claimed(Claim),
    /// The same request was answered before: send this again.
    Replay(KeptResponse),
    /// The same request is under way elsewhere (retry later).
    InFlight,
    /// The key belongs to another request (answered or under way).
    OtherRequest,
}

/// A claim held by a request under way. Finish it with [`Claim::keep`] or
/// [`Claim::release`]; one dropped unfinished (the request was cut off) is
/// released in the background.
pub struct Claim {
    state: AppState,
    account: AccountId,
    key: IdempotencyKey,
    token: uuid::Uuid,
    finished: bool,
}

impl AppState {
    /// Claims `key` of `account` for the request whose digest is
    /// `request`. The claim lapses after the request timeout.
    pub async fn claim_idempotency_key(
        &self,
        account: &AccountId,
        key: IdempotencyKey,
        request: [u8; 32],
    ) -> Result<Begun, StoreError> {
        let now = self.clock.now();
        let lapse = chrono::Duration::from_std(self.settings.request_timeout)
            .unwrap_or(chrono::Duration::MAX);
        let claim = IdempotencyClaim {
            account: account.clone(),
            key,
            request,
            token: uuid::Uuid::new_v4(),
            now,
            lapses_at: now.checked_add_signed(lapse).unwrap_or(now),
        };
        Ok(match self.store.claim_idempotency_key(&claim).await? {
            ClaimOutcome::Claimed => Begun::Claimed(Claim {
                state: self.clone(),
                account: claim.account,
                key: claim.key,
                token: claim.token,
                finished: false,
            }),
            ClaimOutcome::Kept {
                same_request: true,
                response,
            } => {
                self.metrics.idempotent_replays.inc();
                Begun::Replay(response)
            }
            ClaimOutcome::InFlight { same_request: true } => Begun::InFlight,
            ClaimOutcome::Kept {
                same_request: false,
                ..
            }
            | ClaimOutcome::InFlight {
                same_request: false,
            } => Begun::OtherRequest,
        })
    }
}

impl Claim {
    /// Keeps `response` for the key (for the configured time, from now).
    /// `Ok(false)`: not kept, because the claim lapsed and another request
    /// took the key over meanwhile.
    pub async fn keep(mut self, response: KeptResponse) -> Result<bool, StoreError> {
        self.finished = true;
        let now = self.state.clock.now();
        let ttl = chrono::Duration::from_std(self.state.settings.idempotency_ttl)
            .unwrap_or(chrono::Duration::MAX);
        let finish = Finish::Keep {
            response,
            expires_at: now.checked_add_signed(ttl).unwrap_or(now),
        };
        let kept = self
            .state
            .store
            .finish_idempotency_key(&self.account, &self.key, self.token, finish)
            .await;
        if !matches!(kept, Ok(true)) {
            // Not kept: free the key at once if it is still ours (else it
            // lapses by itself), so a retry is not held off.
            self.release_now().await;
        }
        kept
    }

    /// Releases the key: a retry may claim it at once.
    pub async fn release(mut self) {
        self.finished = true;
        self.release_now().await;
    }

    async fn release_now(&self) {
        let res = self
            .state
            .store
            .finish_idempotency_key(&self.account, &self.key, self.token, Finish::Release)
            .await;
        if let Err(e) = res {
            // The claim lapses by itself after the request timeout.
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "could not release an idempotency key; it lapses after the request timeout"
            );
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The request was cut off (timeout, client gone) before it
        // finished: free the key in the background.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, account, key, token) = (
                self.state.store.clone(),
                self.account.clone(),
                self.key.clone(),
                self.token,
            );
            rt.spawn(async move {
                let _ = store
                    .finish_idempotency_key(&account, &key, token, Finish::Release)
                    .await;
            });
        }
    }
}
