//! The dedup fingerprint: SHA-256 over a canonical form of
//! (event_type, payload, source).
//!
//! Canonical form: object keys sorted by their (unescaped) UTF-8 bytes, a
//! repeated key keeping its last value, no insignificant whitespace, strings
//! in serde_json's escaping, numbers as the literal digits the client sent
//! (so `1` and `1.0` differ, like they do when the payload is read back;
//! only an exponent is normalised, to `e` with a sign, as serde_json does).
//! Each part is length- or tag-delimited so that no two different triples
//! share an encoding.
//!
//! The payload is canonicalised straight from the text the client sent, in
//! one pass, without building a tree: strings without escapes and number
//! literals are copied as they are, objects are reordered in place only when
//! their keys arrive unsorted, and the result is hashed in one call. The
//! buffers are reused across calls on the same thread.

use std::cell::RefCell;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::store::Fingerprint;

/// The payload text is not valid JSON (e.g. a string escape that is a lone
/// UTF-16 surrogate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidJson(pub String);

impl fmt::Display for InvalidJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidJson {}

/// Deeper than any request the extractor lets through (128 levels); only
/// stops a direct caller from overflowing the stack.
const MAX_DEPTH: usize = 1024;

/// Where an object member's key bytes (unescaped) live.
#[derive(Clone, Copy)]
enum Key {
    /// `src[start..end]`: the key had no escapes.
    Src(usize, usize),
    /// `arena[start..end]`: the unescaped key.
    Arena(usize, usize),
}

#[derive(Clone, Copy)]
struct Member {
    key: Key,
    /// `out[start..end]` holds `"key":value` in canonical form.
    start: usize,
    end: usize,
    /// Position in the object as sent, so a repeated key keeps its last value.
    index: usize,
}

#[derive(Default)]
struct Buffers {
    out: Vec<u8>,
    members: Vec<Member>,
    arena: Vec<u8>,
    scratch: Vec<u8>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Buffers larger than this are not kept between calls.
const KEEP_CAPACITY: usize = 1 << 20;

fn key_bytes<'a>(src: &'a [u8], arena: &'a [u8], k: Key) -> &'a [u8] {
    match k {
        Key::Src(s, e) => &src[s..e],
        Key::Arena(s, e) => &arena[s..e],
    }
}

struct Canon<'a> {
    src: &'a [u8],
    pos: usize,
    b: &'a mut Buffers,
}

fn invalid(what: &str) -> InvalidJson {
    InvalidJson(what.to_owned())
}

impl Canon<'_> {
    fn skip_ws(&mut self) {
        while let Some(&c) = self.src.get(self.pos) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), InvalidJson> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(invalid("unexpected character"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), InvalidJson> {
        if depth > MAX_DEPTH {
            return Err(invalid("nested too deeply"));
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string(None).map(|_| ()),
            Some(b'-' | b'0'..=b'9') => {
                self.number();
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(invalid("expected a JSON value")),
        }
    }

    /// A number literal as sent, except that an exponent is written as
    /// `e` with an explicit sign (`1E5` and `1e+5` are one number), which
    /// is how serde_json keeps literals.
    fn number(&mut self) {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() || matches!(c, b'-' | b'.') {
                self.pos += 1;
            } else {
                break;
            }
        }
        self.b.out.extend_from_slice(&self.src[start..self.pos]);
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            self.b.out.push(b'e');
            match self.peek() {
                Some(c @ (b'+' | b'-')) => {
                    self.pos += 1;
                    self.b.out.push(c);
                }
                _ => self.b.out.push(b'+'),
            }
            let digits = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            self.b.out.extend_from_slice(&self.src[digits..self.pos]);
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), InvalidJson> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            self.b.out.extend_from_slice(word);
            Ok(())
        } else {
            Err(invalid("expected a JSON value"))
        }
    }

    /// Copies the string at `pos` (on its opening quote) to `out` in
    /// canonical form. With `key_arena`, also returns where its unescaped
    /// bytes are, for sorting.
    fn string(&mut self, key_arena: Option<()>) -> Result<Key, InvalidJson> {
        let start = self.pos; // the opening quote
        let mut i = start + 1;
        let mut escaped = false;
        let end = loop {
            match memchr::memchr2(b'"', b'\\', &self.src[i..]) {
                None => return Err(invalid("unterminated string")),
                Some(off) => {
                    let at = i + off;
                    if self.src[at] == b'"' {
                        break at;
                    }
                    // A backslash and the character it escapes (for \uXXXX
                    // the hex digits are never a quote or a backslash).
                    escaped = true;
                    i = at + 2;
                    if i > self.src.len() {
                        return Err(invalid("unterminated string"));
                    }
                }
            }
        };
        self.pos = end + 1;
        if !escaped {
            // Valid JSON without escapes holds no quote, backslash or control
            // character: serde_json would write it exactly like this.
            self.b.out.extend_from_slice(&self.src[start..=end]);
            return Ok(Key::Src(start + 1, end));
        }
        let text = std::str::from_utf8(&self.src[start..=end])
            .map_err(|_| invalid("invalid UTF-8"))?;
        let unescaped: String =
            serde_json::from_str(text).map_err(|e| InvalidJson(format!("malformed JSON: {e}")))?;
        serde_json::to_writer(&mut self.b.out, &unescaped)
            .map_err(|e| InvalidJson(e.to_string()))?;
        if key_arena.is_none() {
            return Ok(Key::Src(0, 0));
        }
        let a = self.b.arena.len();
        self.b.arena.extend_from_slice(unescaped.as_bytes());
        Ok(Key::Arena(a, self.b.arena.len()))
    }

    fn array(&mut self, depth: usize) -> Result<(), InvalidJson> {
        self.pos += 1;
        self.b.out.push(b'[');
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.b.out.push(b']');
            return Ok(());
        }
        loop {
            self.value(depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.b.out.push(b',');
                }
                Some(b']') => {
                    self.pos += 1;
                    self.b.out.push(b']');
                    return Ok(());
                }
                _ => return Err(invalid("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), InvalidJson> {
        self.pos += 1;
        self.b.out.push(b'{');
        let body = self.b.out.len();
        let base = self.b.members.len();
        let arena_base = self.b.arena.len();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.b.out.push(b'}');
            return Ok(());
        }
        // In order as sent, and whether that order is already canonical
        // (strictly ascending keys: sorted and no repeats).
        let mut in_order = true;
        let mut index = 0;
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(invalid("expected an object key"));
            }
            let start = self.b.out.len();
            let key = self.string(Some(()))?;
            self.expect(b':')?;
            self.b.out.push(b':');
            self.value(depth + 1)?;
            let end = self.b.out.len();
            if self.b.members.len() > base {
                let prev = self.b.members[self.b.members.len() - 1].key;
                if key_bytes(self.src, &self.b.arena, prev) >= key_bytes(self.src, &self.b.arena, key)
                {
                    in_order = false;
                }
            }
            self.b.members.push(Member {
                key,
                start,
                end,
                index,
            });
            index += 1;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.b.out.push(b',');
                }
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(invalid("expected ',' or '}'")),
            }
        }
        if !in_order {
            self.reorder(base, body);
        }
        self.b.out.push(b'}');
        self.b.members.truncate(base);
        self.b.arena.truncate(arena_base);
        Ok(())
    }

    /// Rewrites `out[body..]` (this object's members) sorted by key, keeping
    /// the last of repeated keys.
    fn reorder(&mut self, base: usize, body: usize) {
        let Buffers {
            out,
            members,
            arena,
            scratch,
        } = &mut *self.b;
        let src = self.src;
        let ms = &mut members[base..];
        ms.sort_unstable_by(|a, b| {
            key_bytes(src, arena, a.key)
                .cmp(key_bytes(src, arena, b.key))
                .then(a.index.cmp(&b.index))
        });
        scratch.clear();
        scratch.extend_from_slice(&out[body..]);
        out.truncate(body);
        let mut first = true;
        for (j, m) in ms.iter().enumerate() {
            let repeated_later = ms
                .get(j + 1)
                .is_some_and(|n| key_bytes(src, arena, n.key) == key_bytes(src, arena, m.key));
            if repeated_later {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&scratch[m.start - body..m.end - body]);
        }
    }
}

/// Writes the canonical form of the JSON text `json` into `out`.
fn canonicalize(json: &str, b: &mut Buffers) -> Result<(), InvalidJson> {
    let mut c = Canon {
        src: json.as_bytes(),
        pos: 0,
        b,
    };
    c.value(0)?;
    c.skip_ws();
    if c.pos != c.src.len() {
        return Err(invalid("trailing characters"));
    }
    Ok(())
}

/// The fingerprint of an ingest request. `payload` is the payload's JSON
/// text as the client sent it (any whitespace and key order).
///
/// The text is expected to be syntactically valid JSON (the request parser
/// has checked it); what this reports as invalid is what that check leaves
/// out: string escapes that are not valid Unicode (lone surrogates).
pub fn fingerprint(
    event_type: &str,
    payload: &str,
    source: Option<&str>,
) -> Result<Fingerprint, InvalidJson> {
    let mut h = Sha256::new();
    h.update(b"triggers-fp-v1\n");
    h.update((event_type.len() as u64).to_be_bytes());
    h.update(event_type.as_bytes());
    match source {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    }
    BUFFERS.with(|cell| {
        let mut guard = cell.try_borrow_mut();
        let mut fresh = Buffers::default();
        let b: &mut Buffers = match guard.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut fresh,
        };
        b.out.clear();
        b.members.clear();
        b.arena.clear();
        let r = canonicalize(payload, b);
        if r.is_ok() {
            h.update(&b.out);
        }
        if b.out.capacity() > KEEP_CAPACITY || b.scratch.capacity() > KEEP_CAPACITY {
            *b = Buffers::default();
        }
        r
    })?;
    Ok(Fingerprint(h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fp(t: &str, payload: &str, s: Option<&str>) -> Fingerprint {
        fingerprint(t, payload, s).expect("valid payload")
    }

    /// The canonical form built the straightforward way, from the parsed
    /// tree (serde_json with `preserve_order` keeps the last of repeated
    /// keys, `arbitrary_precision` keeps number literals).
    fn reference(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    reference(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    reference(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&serde_json::to_string(other).unwrap()),
        }
    }

    fn canonical(text: &str) -> String {
        let mut b = Buffers::default();
        canonicalize(text, &mut b).unwrap();
        String::from_utf8(b.out).unwrap()
    }

    fn reference_of(text: &str) -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        let mut out = String::new();
        reference(&v, &mut out);
        out
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        assert_eq!(
            fp("t", r#"{"a":1,"b":{"x":[1,2],"y":null}}"#, Some("s")),
            fp(
                "t",
                "{ \"b\" : { \"y\" : null , \"x\" : [ 1 , 2 ] } ,\n \"a\" : 1 }",
                Some("s")
            )
        );
    }

    #[test]
    fn escaped_and_literal_spellings_of_a_string_are_the_same() {
        assert_eq!(
            fp("t", r#"{"k\u00e9":"a\/b\u0041"}"#, None),
            fp("t", r#"{"ké":"a/bA"}"#, None)
        );
    }

    #[test]
    fn absent_source_differs_from_empty_source() {
        assert_ne!(fp("t", r#"{"a":1}"#, None), fp("t", r#"{"a":1}"#, Some("")));
    }

    #[test]
    fn number_literals_are_kept_digit_for_digit() {
        assert_ne!(fp("t", r#"{"n":1}"#, None), fp("t", r#"{"n":1.0}"#, None));
        assert_ne!(
            fp("t", r#"{"n":12345678901234567890123}"#, None),
            fp("t", r#"{"n":12345678901234567890124}"#, None)
        );
    }

    #[test]
    fn exponents_are_normalised_like_serde_json_keeps_them() {
        let text = r#"{"a":[1E5,1e5,1e+5,2.5E-3,-0e0,0.10]}"#;
        assert_eq!(canonical(text), r#"{"a":[1e+5,1e+5,1e+5,2.5e-3,-0e+0,0.10]}"#);
        assert_eq!(canonical(text), reference_of(text));
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_like_the_parsed_payload() {
        let text = r#"{"b":1,"a":2,"b":3}"#;
        assert_eq!(canonical(text), r#"{"a":2,"b":3}"#);
        assert_eq!(canonical(text), reference_of(text));
        let sorted_but_repeated = r#"{"a":1,"a":2}"#;
        assert_eq!(canonical(sorted_but_repeated), r#"{"a":2}"#);
    }

    #[test]
    fn a_lone_surrogate_is_invalid() {
        assert!(fingerprint("t", r#"{"s":"\ud800"}"#, None).is_err());
        assert!(fingerprint("t", r#"{"\udc00":1}"#, None).is_err());
    }

    #[test]
    fn text_that_is_not_json_is_an_error_not_a_panic() {
        for bad in [
            "", "{", "{\"a\"", "{\"a\":", "{\"a\":1", "{\"a\":1,}", "[1,", "\"abc", "\"ab\\",
            "tru", "{} x", "{1:2}", "{\"a\" 1}",
        ] {
            assert!(fingerprint("t", bad, None).is_err(), "{bad:?}");
        }
    }

    /// Byte for byte the straightforward form: object keys sorted, serde_json's
    /// string escaping, number literals as sent.
    #[test]
    fn the_streamed_form_matches_a_reference_serialisation() {
        let text = r#"{"b":"x\"y\\z\n\u0001","a":[1.50,-0,1e400,null,true,"é\u2028",{"z":{},"y":[]}],"c":{"k":"long ".repeat(1)}, "é":1, "e\u0301":2, "~":3}"#
            .replace(r#""long ".repeat(1)"#, &format!("\"{}\"", "v".repeat(10_000)));
        assert_eq!(canonical(&text), reference_of(&text));

        let mut h = Sha256::new();
        h.update(b"triggers-fp-v1\n");
        h.update(1u64.to_be_bytes());
        h.update(b"t");
        h.update([0u8]);
        h.update(reference_of(&text).as_bytes());
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(fp("t", &text, None).0, want);
    }

    #[test]
    fn type_and_source_boundaries_cannot_be_shifted() {
        assert_ne!(fp("ab", "{}", Some("c")), fp("a", "{}", Some("bc")));
    }
}
