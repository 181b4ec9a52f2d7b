//! Checks and small readers shared by every case (and by the repository's
//! in-process tests).

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Reads a problem+json response, checking the transport-level shape:
/// status, content type, `code`, the RFC 9457 members, and the
/// `correlation_id` equal to the `X-Request-ID` header.
pub async fn problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let url = resp.url().path().to_owned();
    assert_eq!(resp.status().as_u16(), status, "status of {url}");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(ct, "application/problem+json", "content type");
    let rid = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let v: Value = resp.json().await.expect("problem body is JSON");
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["code"], code, "{v}");
    for field in ["type", "title", "detail", "correlation_id"] {
        assert!(v[field].is_string(), "problem lacks {field}: {v}");
    }
    assert_eq!(
        v["correlation_id"],
        rid.as_str(),
        "correlation_id is the X-Request-ID"
    );
    v
}

/// The `field`s listed in a validation problem.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Parses JSON of any depth (serde_json's default stops at 128 levels, and
/// a response wraps the payload in more levels).
pub fn parse_deep(text: &str) -> Value {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    Value::deserialize(&mut de).expect("valid JSON")
}

/// The `event_id`s of a list of events.
pub fn ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .expect("a list of events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

/// The `lease_id` of a lease answer (asserting there is one).
pub fn lease_id(leased: &Value) -> String {
    leased["lease_id"].as_str().expect("a lease id").to_owned()
}

/// An RFC 3339 timestamp.
pub fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a timestamp"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// Percent-encodes a query parameter value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn enc_leaves_unreserved_characters_alone() {
        assert_eq!(super::enc("conf.ab12.x_y-z~"), "conf.ab12.x_y-z~");
        assert_eq!(super::enc("a b/ü"), "a%20b%2F%C3%BC");
    }
}
