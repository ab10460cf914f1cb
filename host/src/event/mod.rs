//! Events as the host holds them: parsed once, projected per plugin, written back once.

mod path;
mod project;

pub use path::JsonPath;
pub use project::{Projection, from_wit_value, to_wit_value};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// One parsed event. The document is the single parsed copy; plugins see projections of it and their field
/// writes are applied to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The source event id (`meta.id` for Wikimedia), or `sha256:<hex>` of the raw bytes when it has none.
    pub id: String,
    pub key: Option<String>,
    /// Event time in milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub doc: Value,
    pub attributes: Vec<(String, String)>,
}

/// Why raw input could not become an event. Such input is quarantined with `reason`, never dropped.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejected {
    pub reason: &'static str,
    pub detail: String,
}

/// Where the id, key and event time of an event are found.
#[derive(Clone, Debug)]
pub struct EventShape {
    pub id: JsonPath,
    pub key: Option<JsonPath>,
    /// RFC 3339 text (`2025-01-01T00:00:00Z`, with or without fractions) or a number of milliseconds.
    pub time: JsonPath,
}

impl Default for EventShape {
    /// Wikimedia EventStreams: `meta.id` and `meta.dt`.
    fn default() -> Self {
        EventShape {
            id: JsonPath::parse("meta.id").unwrap(),
            key: None,
            time: JsonPath::parse("meta.dt").unwrap(),
        }
    }
}

impl EventShape {
    /// Parses raw bytes into an event. `fallback_time_ms` is used when the event has no readable time (its
    /// attributes then say `time.source = host`), so that quality checks, not the parser, decide its fate.
    pub fn parse(&self, raw: &[u8], fallback_time_ms: i64) -> Result<Event, Rejected> {
        let text = std::str::from_utf8(raw).map_err(|e| Rejected {
            reason: "invalid_utf8",
            detail: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        })?;
        let doc: Value = serde_json::from_str(text).map_err(|e| Rejected {
            reason: "invalid_json",
            detail: e.to_string(),
        })?;
        if !doc.is_object() {
            return Err(Rejected {
                reason: "not_an_object",
                detail: "the event is JSON but not an object".into(),
            });
        }
        Ok(self.event_from_doc(doc, raw, fallback_time_ms))
    }

    pub fn event_from_doc(&self, doc: Value, raw: &[u8], fallback_time_ms: i64) -> Event {
        let id = match self.id.get(&doc) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Number(_)) => v.to_string(),
            _ => format!("sha256:{}", hex::encode(&Sha256::digest(raw)[..16])),
        };
        let key = self
            .key
            .as_ref()
            .and_then(|k| k.get(&doc))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        let mut attributes = Vec::new();
        let time_ms = match self.time.get(&doc).and_then(parse_time_ms) {
            Some(ms) => ms,
            None => {
                attributes.push(("time.source".to_string(), "host".to_string()));
                fallback_time_ms
            }
        };
        Event {
            id,
            key,
            time_ms,
            doc,
            attributes,
        }
    }
}

/// Reads an event time: RFC 3339 text, or a number of milliseconds.
pub fn parse_time_ms(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis()),
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wikimedia_ids_and_times() {
        let shape = EventShape::default();
        let ev = shape
            .parse(br#"{"meta":{"id":"abc","dt":"2025-01-01T00:00:01.5Z"}}"#, 7)
            .unwrap();
        assert_eq!(ev.id, "abc");
        assert_eq!(ev.time_ms, 1_735_689_601_500);
        assert!(ev.attributes.is_empty());
        let ev = shape
            .parse(br#"{"meta":{"dt":"2020-01-01T00:00:00Z"}}"#, 7)
            .unwrap();
        assert!(ev.id.starts_with("sha256:"), "{}", ev.id);
    }

    #[test]
    fn rejects_with_reasons() {
        let shape = EventShape::default();
        assert_eq!(
            shape.parse(b"{\"a\":\xff}", 0).unwrap_err().reason,
            "invalid_utf8"
        );
        assert_eq!(shape.parse(b"{nope", 0).unwrap_err().reason, "invalid_json");
        assert_eq!(shape.parse(b"[1]", 0).unwrap_err().reason, "not_an_object");
        let ev = shape.parse(br#"{"meta":{"dt":"yesterday"}}"#, 42).unwrap();
        assert_eq!(ev.time_ms, 42);
        assert_eq!(ev.attributes, vec![("time.source".into(), "host".into())]);
    }
}
