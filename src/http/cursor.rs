//! Opaque pagination cursors: a store position, bound to the account and
//! signed, so a malformed, tampered or foreign cursor is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::AccountId;
use crate::store::Position;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const MAX_CURSOR_CHARS: usize = 512;

#[derive(Clone)]
pub struct CursorCodec {
    key: [u8; 32],
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor")]
pub struct InvalidCursor;

impl CursorCodec {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self, account: &AccountId, position: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&[VERSION]);
        mac.update(account.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(position);
        mac
    }

    pub fn encode(&self, account: &AccountId, position: &Position) -> String {
        let tag = self.mac(account, &position.0).finalize().into_bytes();
        let mut raw = Vec::with_capacity(1 + position.0.len() + TAG_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(&position.0);
        raw.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(&self, account: &AccountId, cursor: &str) -> Result<Position, InvalidCursor> {
        if cursor.len() > MAX_CURSOR_CHARS {
            return Err(InvalidCursor);
        }
        let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| InvalidCursor)?;
        if raw.len() < 1 + TAG_LEN || raw[0] != VERSION {
            return Err(InvalidCursor);
        }
        let (body, tag) = raw.split_at(raw.len() - TAG_LEN);
        let position = &body[1..];
        self.mac(account, position)
            .verify_truncated_left(tag)
            .map_err(|_| InvalidCursor)?;
        Ok(Position(position.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acct(s: &str) -> AccountId {
        AccountId::parse(s).unwrap()
    }

    proptest! {
        #[test]
        fn cursors_round_trip_for_their_account_only(pos in proptest::collection::vec(any::<u8>(), 0..40)) {
            let c = CursorCodec::new([7; 32]);
            let s = c.encode(&acct("a"), &Position(pos.clone()));
            prop_assert_eq!(c.decode(&acct("a"), &s), Ok(Position(pos)));
            prop_assert_eq!(c.decode(&acct("b"), &s), Err(InvalidCursor));
        }

        #[test]
        fn any_single_flipped_bit_is_detected(pos in proptest::collection::vec(any::<u8>(), 1..20), bit in 0usize..1000) {
            let c = CursorCodec::new([9; 32]);
            let s = c.encode(&acct("a"), &Position(pos));
            let mut raw = URL_SAFE_NO_PAD.decode(&s).unwrap();
            let i = bit % (raw.len() * 8);
            raw[i / 8] ^= 1 << (i % 8);
            prop_assert_eq!(c.decode(&acct("a"), &URL_SAFE_NO_PAD.encode(raw)), Err(InvalidCursor));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,80}") {
            let c = CursorCodec::new([1; 32]);
            let _ = c.decode(&acct("a"), &s);
        }
    }
}
