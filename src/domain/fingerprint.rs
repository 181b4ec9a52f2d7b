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

/// SHA-256 of the canonical (event_type, payload, source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

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
    /// The key's first 8 bytes, big-endian, zero-padded: orders like the
    /// bytes themselves, so most comparisons need no `memcmp`.
    prefix: u64,
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

fn prefix_of(key: &[u8]) -> u64 {
    let mut v = 0u64;
    for i in 0..8 {
        v = (v << 8) | u64::from(key.get(i).copied().unwrap_or(0));
    }
    v
}

/// `extend_from_slice` without a `memcpy` call for the short pieces most
/// tokens are.
#[inline]
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() <= 16 {
        out.reserve(bytes.len());
        for &b in bytes {
            out.push(b);
        }
    } else {
        out.extend_from_slice(bytes);
    }
}

fn cmp_keys(src: &[u8], arena: &[u8], a: &Member, b: &Member) -> std::cmp::Ordering {
    a.prefix
        .cmp(&b.prefix)
        .then_with(|| key_bytes(src, arena, a.key).cmp(key_bytes(src, arena, b.key)))
}

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
            Some(b'"') => self.string(false).map(|_| ()),
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
        put(&mut self.b.out, &self.src[start..self.pos]);
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
            put(&mut self.b.out, &self.src[digits..self.pos]);
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), InvalidJson> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            put(&mut self.b.out, word);
            Ok(())
        } else {
            Err(invalid("expected a JSON value"))
        }
    }

    /// Copies the string at `pos` (on its opening quote) to `out` in
    /// canonical form and returns where its unescaped bytes are (for a key,
    /// to sort by; an escaped non-key string is not kept).
    fn string(&mut self, is_key: bool) -> Result<Key, InvalidJson> {
        let start = self.pos; // the opening quote
        let mut i = start + 1;
        let mut escaped = false;
        // Most strings are short: look at the first bytes one by one before
        // handing the rest to the vectorised search.
        let short_end = (i + 24).min(self.src.len());
        while i < short_end && !matches!(self.src[i], b'"' | b'\\') {
            i += 1;
        }
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
            put(&mut self.b.out, &self.src[start..=end]);
            return Ok(Key::Src(start + 1, end));
        }
        let a = self.b.arena.len();
        unescape(
            &self.src[start + 1..end],
            &mut self.b.out,
            &mut self.b.arena,
            is_key,
        )?;
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
            let key = self.string(true)?;
            self.expect(b':')?;
            self.b.out.push(b':');
            self.value(depth + 1)?;
            let end = self.b.out.len();
            let member = Member {
                key,
                prefix: prefix_of(key_bytes(self.src, &self.b.arena, key)),
                start,
                end,
                index,
            };
            if self.b.members.len() > base {
                let prev = &self.b.members[self.b.members.len() - 1];
                if cmp_keys(self.src, &self.b.arena, prev, &member).is_ge() {
                    in_order = false;
                }
            }
            self.b.members.push(member);
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
        ms.sort_unstable_by(|a, b| cmp_keys(src, arena, a, b).then(a.index.cmp(&b.index)));
        scratch.clear();
        scratch.extend_from_slice(&out[body..]);
        out.truncate(body);
        let mut first = true;
        for (j, m) in ms.iter().enumerate() {
            let repeated_later = ms
                .get(j + 1)
                .is_some_and(|n| cmp_keys(src, arena, n, m).is_eq());
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

fn hex4(b: &[u8]) -> Result<u32, InvalidJson> {
    let mut v = 0u32;
    for &c in b.get(..4).ok_or_else(|| invalid("truncated \\u escape"))? {
        let d = (c as char)
            .to_digit(16)
            .ok_or_else(|| invalid("invalid \\u escape"))?;
        v = v * 16 + d;
    }
    Ok(v)
}

/// Writes `c` as serde_json does inside a string: `"` and `\` and control
/// characters escaped (the short forms where JSON has one, else `\u00xx`),
/// everything else as UTF-8.
fn put_char(out: &mut Vec<u8>, c: char) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match c {
        '"' => out.extend_from_slice(b"\\\""),
        '\\' => out.extend_from_slice(b"\\\\"),
        '\u{8}' => out.extend_from_slice(b"\\b"),
        '\u{c}' => out.extend_from_slice(b"\\f"),
        '\n' => out.extend_from_slice(b"\\n"),
        '\r' => out.extend_from_slice(b"\\r"),
        '\t' => out.extend_from_slice(b"\\t"),
        c if (c as u32) < 0x20 => {
            let b = c as u8;
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        c => {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
}

/// The body of a JSON string with escapes (`body` is between the quotes):
/// writes its canonical form, quoted, to `out` and, for a key, its
/// unescaped bytes to `arena`. A `\u` escape that is a lone surrogate is
/// an error, as it is for serde_json.
fn unescape(
    body: &[u8],
    out: &mut Vec<u8>,
    arena: &mut Vec<u8>,
    is_key: bool,
) -> Result<(), InvalidJson> {
    out.push(b'"');
    let mut run = 0;
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'\\', &body[i..]) {
        let at = i + off;
        out.extend_from_slice(&body[run..at]);
        if is_key {
            arena.extend_from_slice(&body[run..at]);
        }
        let (c, len) = match body.get(at + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => {
                let hi = hex4(&body[at + 2..])?;
                match hi {
                    0xD800..=0xDBFF => {
                        if body.get(at + 6..at + 8) != Some(b"\\u") {
                            return Err(invalid("lone leading surrogate in hex escape"));
                        }
                        let lo = hex4(&body[at + 8..])?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(invalid("lone leading surrogate in hex escape"));
                        }
                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (
                            char::from_u32(cp).ok_or_else(|| invalid("invalid \\u escape"))?,
                            12,
                        )
                    }
                    0xDC00..=0xDFFF => {
                        return Err(invalid("lone trailing surrogate in hex escape"));
                    }
                    _ => (
                        char::from_u32(hi).ok_or_else(|| invalid("invalid \\u escape"))?,
                        6,
                    ),
                }
            }
            _ => return Err(invalid("invalid escape")),
        };
        put_char(out, c);
        if is_key {
            let mut buf = [0u8; 4];
            arena.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        i = at + len;
        run = i;
    }
    out.extend_from_slice(&body[run..]);
    if is_key {
        arena.extend_from_slice(&body[run..]);
    }
    out.push(b'"');
    Ok(())
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
    with_canonical(payload, |canonical| h.update(canonical))?;
    Ok(Fingerprint(h.finalize().into()))
}

/// The canonical form of a JSON text, as the fingerprint hashes it (for
/// tests and tools that want to see it).
pub fn canonical_form(json: &str) -> Result<String, InvalidJson> {
    with_canonical(json, |canonical| {
        String::from_utf8_lossy(canonical).into_owned()
    })
}

/// Canonicalises `json` into this thread's reused buffers and hands the
/// result to `f`.
fn with_canonical<T>(json: &str, f: impl FnOnce(&[u8]) -> T) -> Result<T, InvalidJson> {
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
        let r = canonicalize(json, b).map(|()| f(&b.out));
        if b.out.capacity() > KEEP_CAPACITY || b.scratch.capacity() > KEEP_CAPACITY {
            *b = Buffers::default();
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(t: &str, payload: &str, s: Option<&str>) -> Fingerprint {
        fingerprint(t, payload, s).expect("valid payload")
    }

    fn canonical(text: &str) -> String {
        canonical_form(text).expect("valid JSON")
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
        assert_eq!(
            canonical(text),
            r#"{"a":[1e+5,1e+5,1e+5,2.5e-3,-0e+0,0.10]}"#
        );
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_like_the_parsed_payload() {
        let text = r#"{"b":1,"a":2,"b":3}"#;
        assert_eq!(canonical(text), r#"{"a":2,"b":3}"#);
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
            "",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":1,}",
            "[1,",
            "\"abc",
            "\"ab\\",
            "tru",
            "{} x",
            "{1:2}",
            "{\"a\" 1}",
        ] {
            assert!(fingerprint("t", bad, None).is_err(), "{bad:?}");
        }
    }

    /// The canonical form, spelled out: keys sorted by their UTF-8 bytes
    /// (`e` + combining accent < `~` < `é`), serde_json's escaping (`\n`,
    /// `\u0001`, U+2028 raw), number literals as sent but for the exponent;
    /// and the header the hash starts with.
    #[test]
    fn the_canonical_form_and_header_are_pinned() {
        let long = "v".repeat(10_000);
        let text = format!(
            r#"{{"b":"x\"y\\z\n\u0001","a":[1.50,-0,1e400,null,true,"é\u2028",{{"z":{{}},"y":[]}}],"c":{{"k":"{long}"}}, "é":1, "e\u0301":2, "~":3}}"#
        );
        let want = format!(
            r#"{{"a":[1.50,-0,1e+400,null,true,"é{ls}",{{"y":[],"z":{{}}}}],"b":"x\"y\\z\n\u0001","c":{{"k":"{long}"}},"e{acute}":2,"~":3,"é":1}}"#,
            ls = '\u{2028}',
            acute = '\u{301}',
        );
        assert_eq!(canonical(&text), want);

        let mut h = Sha256::new();
        h.update(b"triggers-fp-v1\n");
        h.update(1u64.to_be_bytes());
        h.update(b"t");
        h.update([0u8]);
        h.update(want.as_bytes());
        let expected: [u8; 32] = h.finalize().into();
        assert_eq!(fp("t", &text, None).0, expected);
    }

    #[test]
    fn long_keys_sort_by_all_their_bytes_not_their_first_eight() {
        assert_eq!(
            canonical(r#"{"b0000000":1,"a0000001":2}"#),
            r#"{"a0000001":2,"b0000000":1}"#
        );
        assert_eq!(
            canonical(r#"{"abcdefgh2":1,"abcdefgh1":2,"abcdefgh":3}"#),
            r#"{"abcdefgh":3,"abcdefgh1":2,"abcdefgh2":1}"#
        );
        // Escaped keys too, and a repeated long key keeps its last value.
        assert_eq!(
            canonical(r#"{"abcdefgh\u0032":1,"abcdefgh1":2,"abcdefgh2":3}"#),
            r#"{"abcdefgh1":2,"abcdefgh2":3}"#
        );
    }

    #[test]
    fn every_short_escape_is_read_and_written_as_serde_json_does() {
        assert_eq!(
            canonical(r#"["\b\f\n\r\t\"\\\/","\u0020\u001f\u007f"]"#),
            format!(r#"["\b\f\n\r\t\"\\/"," \u001f{}"]"#, '\u{7f}')
        );
        assert_eq!(canonical(r#"{"\n":"\t","":""}"#), r#"{"":"","\n":"\t"}"#);
        assert!(fingerprint("t", r#"{"a":"\x"}"#, None).is_err());
        assert!(fingerprint("t", r#"{"a":"\u12"}"#, None).is_err());
        assert!(fingerprint("t", r#"{"a":"\u12G4"}"#, None).is_err());
    }

    #[test]
    fn a_surrogate_pair_is_one_character() {
        assert_eq!(canonical(r#"["\ud83d\ude00"]"#), "[\"\u{1f600}\"]");
        assert_eq!(canonical(r#"["\uD800\uDC00x"]"#), "[\"\u{10000}x\"]");
        assert_eq!(canonical(r#"["\udbff\udfff"]"#), "[\"\u{10ffff}\"]");
        assert_eq!(
            fp("t", r#"{"k\ud83d\ude00":1}"#, None),
            fp("t", "{\"k\u{1f600}\":1}", None)
        );
        for bad in [
            r#"["\ud83dx"]"#,
            r#"["\ud83d\u0041"]"#,
            r#"["\ud83d\ud83d"]"#,
            r#"["\ud83d\ude0"]"#,
        ] {
            assert!(canonical_form(bad).is_err(), "{bad}");
        }
    }

    /// What the API reports for a lone surrogate is serde_json's wording.
    #[test]
    fn a_lone_surrogate_is_named_in_the_error() {
        let message = |text| fingerprint("t", text, None).unwrap_err().to_string();
        assert_eq!(
            message(r#"{"s":"\udc00"}"#),
            "lone trailing surrogate in hex escape"
        );
        assert_eq!(
            message(r#"{"s":"\ud800"}"#),
            "lone leading surrogate in hex escape"
        );
    }

    #[test]
    fn strings_that_end_the_text_early_are_errors_not_panics() {
        for bad in [
            "\"",
            "{\"a\":\"",
            "[\"",
            "\"\\",
            "[\"\\u00",
            "{\"a\":\"x\\\"",
        ] {
            assert!(canonical_form(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_is_accepted_down_to_max_depth_and_refused_below() {
        let at_max = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(canonical(&at_max), at_max);
        let deeper = format!("{}{}", "[".repeat(MAX_DEPTH + 2), "]".repeat(MAX_DEPTH + 2));
        assert!(canonical_form(&deeper).is_err());
    }

    #[test]
    fn a_large_payload_leaves_no_large_buffer_behind() {
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(2 * KEEP_CAPACITY));
        assert_eq!(canonical(&big).len(), big.len());
        let kept = BUFFERS.with(|b| b.borrow().out.capacity());
        assert!(kept <= KEEP_CAPACITY, "{kept}");
        // The next call on this thread still works on the reset buffers.
        assert_eq!(canonical(r#"{"b":1,"a":2}"#), r#"{"a":2,"b":1}"#);
    }

    #[test]
    fn true_false_and_null_are_kept_as_literals() {
        assert_eq!(
            canonical(r#"{"t":true,"f":false,"n":null,"l":[false,true,null]}"#),
            r#"{"f":false,"l":[false,true,null],"n":null,"t":true}"#
        );
        assert_ne!(
            fp("t", r#"{"a":false}"#, None),
            fp("t", r#"{"a":true}"#, None)
        );
    }

    #[test]
    fn a_small_payload_keeps_its_buffers_for_the_next_call() {
        assert_eq!(canonical(r#"{"b":1,"a":2}"#), r#"{"a":2,"b":1}"#);
        let kept = BUFFERS.with(|b| b.borrow().out.capacity());
        assert!(kept > 0 && kept <= KEEP_CAPACITY, "{kept}");
    }

    #[test]
    fn fingerprints_print_as_64_hex_digits() {
        let f = fp("t", "{}", None);
        assert_eq!(f.to_hex(), hex::encode(f.0));
        assert_eq!(Fingerprint([0xab; 32]).to_hex(), "ab".repeat(32));
    }

    #[test]
    fn type_and_source_boundaries_cannot_be_shifted() {
        assert_ne!(fp("ab", "{}", Some("c")), fp("a", "{}", Some("bc")));
    }
}
