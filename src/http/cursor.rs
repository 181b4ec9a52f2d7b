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

    #[test]
    fn a_cursor_of_exactly_the_maximum_length_is_read_and_one_past_it_is_refused() {
        let c = CursorCodec::new([3; 32]);
        // 1 version byte + 367 + 16 tag bytes = 384 bytes = 512 characters.
        let at_max = c.encode(&acct("a"), &Position(vec![0xab; 367]));
        assert_eq!(at_max.len(), MAX_CURSOR_CHARS);
        assert_eq!(c.decode(&acct("a"), &at_max), Ok(Position(vec![0xab; 367])));
        // Correctly signed, but longer than any position a store hands out.
        let too_long = c.encode(&acct("a"), &Position(vec![0xab; 368]));
        assert!(too_long.len() > MAX_CURSOR_CHARS);
        assert_eq!(c.decode(&acct("a"), &too_long), Err(InvalidCursor));
    }

    #[test]
    fn a_cursor_for_an_empty_position_round_trips() {
        let c = CursorCodec::new([4; 32]);
        let s = c.encode(&acct("a"), &Position(Vec::new()));
        assert_eq!(c.decode(&acct("a"), &s), Ok(Position(Vec::new())));
    }

    #[test]
    fn cursors_shorter_than_version_and_tag_are_refused_without_panicking() {
        let c = CursorCodec::new([5; 32]);
        // As long as the tag alone (16 bytes), and shorter, with a valid
        // version byte in front.
        for len in [1, 2, TAG_LEN - 1, TAG_LEN] {
            let mut raw = vec![0u8; len];
            raw[0] = VERSION;
            let s = URL_SAFE_NO_PAD.encode(&raw);
            assert_eq!(c.decode(&acct("a"), &s), Err(InvalidCursor), "{len} bytes");
        }
        assert_eq!(c.decode(&acct("a"), ""), Err(InvalidCursor));
    }

    #[test]
    fn a_cursor_signed_with_another_key_or_version_is_refused() {
        let ours = CursorCodec::new([6; 32]);
        let theirs = CursorCodec::new([7; 32]);
        let pos = Position(vec![1, 2, 3, 4, 5, 6, 7, 8]);
        let s = theirs.encode(&acct("a"), &pos);
        assert_eq!(ours.decode(&acct("a"), &s), Err(InvalidCursor));
        // The same bytes under another version byte.
        let mut raw = URL_SAFE_NO_PAD
            .decode(ours.encode(&acct("a"), &pos))
            .unwrap();
        raw[0] = VERSION + 1;
        assert_eq!(
            ours.decode(&acct("a"), &URL_SAFE_NO_PAD.encode(raw)),
            Err(InvalidCursor)
        );
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
