//! The API key format: `trg_<key_id>_<secret>`. The key id (16 lowercase
//! alphanumerics) finds the record in O(1); the secret is 32 random bytes
//! (256 bits) in unpadded base64url and is stored only as a bcrypt hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::domain::KeyId;

pub const PREFIX: &str = "trg_";
const SECRET_BYTES: usize = 32;
const SECRET_CHARS: usize = 43;

/// A freshly minted key: shown once, then only its hash is kept.
pub struct NewKey {
    pub key_id: KeyId,
    pub secret: String,
}

impl NewKey {
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let id: String = (0..KeyId::LEN)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill(&mut secret);
        Self {
            key_id: KeyId::parse(&id).expect("generated from the key id alphabet"),
            secret: URL_SAFE_NO_PAD.encode(secret),
        }
    }

    /// The full key string the client presents.
    pub fn token(&self) -> String {
        format!("{PREFIX}{}_{}", self.key_id, self.secret)
    }
}

/// A key as presented by a client, split into its parts.
#[derive(Debug)]
pub struct PresentedKey<'a> {
    pub key_id: KeyId,
    pub secret: &'a str,
}

/// Splits a presented key; `None` when it is not of our format.
pub fn parse(token: &str) -> Option<PresentedKey<'_>> {
    let rest = token.strip_prefix(PREFIX)?;
    if rest.len() != KeyId::LEN + 1 + SECRET_CHARS || !rest.is_char_boundary(KeyId::LEN) {
        return None;
    }
    let (id, tail) = rest.split_at(KeyId::LEN);
    let secret = tail.strip_prefix('_')?;
    if !secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(PresentedKey {
        key_id: KeyId::parse(id)?,
        secret,
    })
}

/// SHA-256 of the whole presented key: what the in-memory caches are keyed
/// by, so the key itself is never held in a cache.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_parts() {
        let k = NewKey::generate();
        let token = k.token();
        let p = parse(&token).expect("parses");
        assert_eq!(p.key_id, k.key_id);
        assert_eq!(p.secret, k.secret);
        assert_eq!(k.secret.len(), SECRET_CHARS);
    }

    const ID: &str = "abcdefgh12345678";

    fn token_with_secret(secret: &str) -> String {
        format!("{PREFIX}{ID}_{secret}")
    }

    #[test]
    fn a_secret_may_use_every_base64url_character() {
        let secret = format!("{}x-_", "aZ09".repeat(10));
        assert_eq!(secret.len(), SECRET_CHARS);
        let token = token_with_secret(&secret);
        let p = parse(&token).expect("base64url secret");
        assert_eq!((p.key_id.as_str(), p.secret), (ID, secret.as_str()));
    }

    #[test]
    fn a_secret_with_a_character_outside_base64url_is_refused() {
        for bad in ['+', '/', '=', '.', ' ', '!'] {
            let secret = format!("{}{bad}", "a".repeat(SECRET_CHARS - 1));
            assert!(parse(&token_with_secret(&secret)).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_with_a_multibyte_character_across_the_key_id_boundary_is_refused() {
        // The right length in bytes, but byte 16 of the rest falls inside
        // 'é' (2 bytes): refused, not a panic on splitting.
        let token = format!("{PREFIX}abcdefghijklmno\u{e9}{}", "a".repeat(SECRET_CHARS));
        assert_eq!(token.len(), PREFIX.len() + KeyId::LEN + 1 + SECRET_CHARS);
        assert!(parse(&token).is_none());
    }

    #[test]
    fn the_separator_after_the_key_id_must_be_an_underscore() {
        let good = token_with_secret(&"a".repeat(SECRET_CHARS));
        assert!(parse(&good).is_some());
        let bad = good.replacen(&format!("{ID}_"), &format!("{ID}-"), 1);
        assert!(parse(&bad).is_none());
    }

    #[test]
    fn an_invalid_key_id_is_refused() {
        let token = format!("{PREFIX}ABCDEFGH12345678_{}", "a".repeat(SECRET_CHARS));
        assert!(parse(&token).is_none());
    }

    #[test]
    fn the_digest_is_sha256_of_the_whole_key() {
        let t = NewKey::generate().token();
        assert_eq!(digest(&t), <[u8; 32]>::from(Sha256::digest(t.as_bytes())));
        assert_ne!(digest(&t), digest(&NewKey::generate().token()));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(parse("").is_none());
        assert!(parse("trg_short").is_none());
        let t = NewKey::generate().token();
        assert!(parse(&t[1..]).is_none());
        assert!(parse(&format!("{t}x")).is_none());
        assert!(parse(&t.replace("trg_", "xyz_")).is_none());
    }
}
