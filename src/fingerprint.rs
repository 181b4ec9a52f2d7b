//! The dedup fingerprint: SHA-256 over a canonical form of
//! (event_type, payload, source), streamed straight into the hasher.
//!
//! Canonical form: object keys sorted by their UTF-8 bytes, no insignificant
//! whitespace, strings in serde_json's escaping, numbers as the literal
//! digits the client sent (so `1` and `1.0` differ, like they do when the
//! payload is read back). Each part is length- or tag-delimited so that no
//! two different triples share an encoding.

use std::io::{self, Write};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::Fingerprint;

/// `io::Write` into a running SHA-256.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn put_str(h: &mut Sha256, s: &str) {
    // serde_json writes a &str as a quoted, escaped JSON string; writing into
    // a hasher cannot fail.
    let _ = serde_json::to_writer(HashWriter(h), s);
}

fn put_value(h: &mut Sha256, v: &Value) {
    match v {
        Value::Null => h.update(b"null"),
        Value::Bool(true) => h.update(b"true"),
        Value::Bool(false) => h.update(b"false"),
        Value::Number(n) => {
            let _ = write!(HashWriter(h), "{n}");
        }
        Value::String(s) => put_str(h, s),
        Value::Array(items) => {
            h.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                put_value(h, item);
            }
            h.update(b"]");
        }
        Value::Object(map) => put_object(h, map),
    }
}

fn put_object(h: &mut Sha256, map: &serde_json::Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    h.update(b"{");
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        put_str(h, k);
        h.update(b":");
        put_value(h, v);
    }
    h.update(b"}");
}

/// The fingerprint of an ingest request. `payload` is the parsed object.
pub fn fingerprint(
    event_type: &str,
    payload: &serde_json::Map<String, Value>,
    source: Option<&str>,
) -> Fingerprint {
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
    put_object(&mut h, payload);
    Fingerprint(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"x":[1,2],"y":null}}"#).unwrap();
        let b: Value =
            serde_json::from_str("{ \"b\" : { \"y\" : null , \"x\" : [ 1 , 2 ] } ,\n \"a\" : 1 }")
                .unwrap();
        assert_eq!(
            fingerprint("t", &obj(a), Some("s")),
            fingerprint("t", &obj(b), Some("s"))
        );
    }

    #[test]
    fn absent_source_differs_from_empty_source() {
        let p = obj(json!({"a": 1}));
        assert_ne!(fingerprint("t", &p, None), fingerprint("t", &p, Some("")));
    }

    #[test]
    fn number_literals_are_kept_digit_for_digit() {
        let a: Value = serde_json::from_str(r#"{"n":1}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"n":1.0}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"n":12345678901234567890123}"#).unwrap();
        let d: Value = serde_json::from_str(r#"{"n":12345678901234567890124}"#).unwrap();
        assert_ne!(
            fingerprint("t", &obj(a), None),
            fingerprint("t", &obj(b), None)
        );
        assert_ne!(
            fingerprint("t", &obj(c), None),
            fingerprint("t", &obj(d), None)
        );
    }

    /// The streamed form is byte for byte the straightforward one: object
    /// keys sorted, serde_json's string escaping, number literals as sent.
    #[test]
    fn the_streamed_form_matches_a_reference_serialisation() {
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
        let text = r#"{"b":"x\"y\\z\n\u0001","a":[1.50,-0,1e400,null,true,"é\u2028"],"c":{"k":"long ".repeat(1)}}"#
            .replace(r#""long ".repeat(1)"#, &format!("\"{}\"", "v".repeat(10_000)));
        let v: Value = serde_json::from_str(&text).unwrap();
        let mut canon = String::new();
        reference(&v, &mut canon);
        let mut h = Sha256::new();
        h.update(b"triggers-fp-v1\n");
        h.update(1u64.to_be_bytes());
        h.update(b"t");
        h.update([0u8]);
        h.update(canon.as_bytes());
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(fingerprint("t", v.as_object().unwrap(), None).0, want);
    }

    #[test]
    fn type_and_source_boundaries_cannot_be_shifted() {
        let p = obj(json!({}));
        assert_ne!(
            fingerprint("ab", &p, Some("c")),
            fingerprint("a", &p, Some("bc"))
        );
    }
}
