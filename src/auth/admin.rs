//! Key management: what the `keys` CLI (and the tests) call.

use chrono::Utc;

use super::key::NewKey;
use crate::domain::{trunc_ms, AccountId, ApiKeyRecord, Email, KeyId, KeyStatus, Role};
use crate::store::{KeyChange, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no key with id {0}")]
    UnknownKey(String),
    #[error("no key belongs to {0}")]
    UnknownEmail(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A created key: the record, and the key itself (shown once).
pub struct CreatedKey {
    pub record: ApiKeyRecord,
    pub token: String,
}

pub async fn create(
    store: &dyn Store,
    account: &str,
    email: &str,
    role: Role,
    rate_limit_per_minute: u32,
    bcrypt_cost: u32,
) -> Result<CreatedKey, KeyError> {
    let account = AccountId::parse(account).map_err(|e| KeyError::Invalid {
        field: "account",
        message: e.0,
    })?;
    let email = Email::parse(email).map_err(|e| KeyError::Invalid {
        field: "email",
        message: e.0,
    })?;
    if rate_limit_per_minute == 0 {
        return Err(KeyError::Invalid {
            field: "rate limit",
            message: "must be at least 1".into(),
        });
    }
    loop {
        let key = NewKey::generate();
        let secret = key.secret.clone();
        let hash = tokio::task::spawn_blocking(move || bcrypt::hash(secret, bcrypt_cost))
            .await
            .map_err(StoreError::internal)?
            .map_err(|e| KeyError::Invalid {
                field: "bcrypt cost",
                message: e.to_string(),
            })?;
        let record = ApiKeyRecord {
            key_id: key.key_id.clone(),
            account: account.clone(),
            email: email.clone(),
            role,
            status: KeyStatus::Active,
            rate_limit_per_minute,
            secret_hash: hash,
            created_at: trunc_ms(Utc::now()),
        };
        match store.create_key(&record).await {
            Ok(()) => {
                return Ok(CreatedKey {
                    record,
                    token: key.token(),
                })
            }
            // A key id collision (1 in 36^16): draw again.
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn parse_id(key_id: &str) -> Result<KeyId, KeyError> {
    KeyId::parse(key_id).ok_or_else(|| KeyError::UnknownKey(key_id.to_owned()))
}

pub async fn update(
    store: &dyn Store,
    key_id: &str,
    change: KeyChange,
) -> Result<ApiKeyRecord, KeyError> {
    let id = parse_id(key_id)?;
    store
        .update_key(&id, change)
        .await?
        .ok_or_else(|| KeyError::UnknownKey(key_id.to_owned()))
}

pub async fn revoke_by_email(store: &dyn Store, email: &str) -> Result<Vec<KeyId>, KeyError> {
    let parsed = Email::parse(email).map_err(|e| KeyError::Invalid {
        field: "email",
        message: e.0,
    })?;
    let ids = store.revoke_keys_by_email(&parsed).await?;
    if ids.is_empty() {
        return Err(KeyError::UnknownEmail(email.to_owned()));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_key_needs_a_rate_limit_of_at_least_one() {
        let (_dir, s) = store();
        let e = create(&s, "acme", "a@acme.example", Role::Viewer, 0, 4).await;
        assert!(matches!(
            e,
            Err(KeyError::Invalid {
                field: "rate limit",
                ..
            })
        ));
        let k = create(&s, "acme", "a@acme.example", Role::Viewer, 1, 4)
            .await
            .unwrap();
        assert_eq!(k.record.rate_limit_per_minute, 1);
        assert_eq!(s.get_key(&k.record.key_id).await.unwrap(), Some(k.record));
    }

    #[tokio::test]
    async fn revoking_by_email_names_every_key_it_revoked() {
        let (_dir, s) = store();
        let a = create(&s, "acme", "a@acme.example", Role::Creator, 10, 4)
            .await
            .unwrap();
        let b = create(&s, "acme", "a@acme.example", Role::Viewer, 10, 4)
            .await
            .unwrap();
        let mut ids = revoke_by_email(&s, "a@acme.example").await.unwrap();
        ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        let mut want = vec![a.record.key_id, b.record.key_id];
        want.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(ids, want);
        for id in &ids {
            let k = s.get_key(id).await.unwrap().unwrap();
            assert_eq!(k.status, KeyStatus::Revoked);
        }
        assert!(matches!(
            revoke_by_email(&s, "nobody@acme.example").await,
            Err(KeyError::UnknownEmail(_))
        ));
    }

    #[tokio::test]
    async fn updating_an_unknown_or_malformed_key_id_is_an_unknown_key() {
        let (_dir, s) = store();
        let k = create(&s, "acme", "a@acme.example", Role::Creator, 10, 4)
            .await
            .unwrap();
        let r = update(&s, k.record.key_id.as_str(), KeyChange::RateLimit(7))
            .await
            .unwrap();
        assert_eq!(r.rate_limit_per_minute, 7);
        for id in ["zzzzzzzzzzzzzzzz", "not a key id"] {
            assert!(matches!(
                update(&s, id, KeyChange::RateLimit(7)).await,
                Err(KeyError::UnknownKey(got)) if got == id
            ));
        }
    }
}
