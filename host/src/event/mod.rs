//! Events as the host holds them: the raw text as received, plus the values of the paths the chain uses,
//! extracted in one pass (see [`Layout`]). Plugins see projections of those values, and their field writes go
//! back into the same slots. The whole document is only built when something needs it: a plugin that asks for
//! the payload, a write that changes a path someone else reads a part of, or output of the event as JSON.

mod extract;
mod layout;
mod path;
mod project;
mod value;

pub use layout::{Layout, Slot, Usage};
pub use path::JsonPath;
pub use project::Projection;
pub use value::{FieldValue, Text, from_wit_value};

use std::sync::Arc;

use bytestring::ByteString;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::runtime::types::ValueRef;

/// One event: its raw text and the values of its layout's paths.
#[derive(Clone, Debug)]
pub struct Event {
    /// The source event id (`meta.id` for Wikimedia), or `sha256:<hex>` of the raw bytes when it has none.
    pub id: String,
    pub key: Option<String>,
    /// Event time in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The stream sequence of the message that carried the event (0 when it did not come from a stream).
    pub seq: u64,
    /// When the event was received by ingest, in ms since the epoch (0 when unknown).
    pub ingest_ms: i64,
    pub attributes: Vec<(String, String)>,
    raw: ByteString,
    layout: Arc<Layout>,
    values: Vec<Option<FieldValue>>,
    /// Slots written by plugins, in the order of their last write.
    written: Vec<Slot>,
    /// The whole document with every write applied, once something needed it; from then on it is kept in step
    /// with every write.
    doc: Option<Box<Value>>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.key == other.key
            && self.time_ms == other.time_ms
            && self.attributes == other.attributes
            && self.to_json() == other.to_json()
    }
}

/// Why raw input could not become an event. Such input is quarantined with `reason`, never dropped.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejected {
    pub reason: &'static str,
    pub detail: String,
}

/// Where the id, key and event time of an event are found.
#[derive(Clone, Debug, PartialEq)]
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
    /// A parser that extracts only the id, key and time paths (tests and tools; a chain builds its own).
    pub fn parser(&self) -> Parser {
        Parser::new(Arc::new(
            Layout::new(self, [], []).expect("three paths fit a layout"),
        ))
    }
}

/// Parses raw bytes into events laid out for one chain.
#[derive(Clone, Debug)]
pub struct Parser {
    layout: Arc<Layout>,
}

impl Parser {
    pub fn new(layout: Arc<Layout>) -> Self {
        Parser { layout }
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// Asks the processor to bring the start of the next event's raw bytes into cache while this one is
    /// parsed. The messages of a pull request (~4 MB) arrive well before they are parsed and are out of a
    /// core's L2 by then, so the parse otherwise waits on memory at each event's first bytes. In the lake
    /// bench (500k events, three interleaved pairs, best of five passes) parsing took 0.82-0.92 µs per event
    /// with it against 0.99-1.01 without; the pipeline's intake does the same, unmeasured on its own (the
    /// parse is under a tenth of the pipeline thread).
    #[inline]
    pub fn prefetch(next: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            /// Enough for a ~1 kB Wikimedia event; the hardware's own prefetcher follows a longer one.
            const BYTES: usize = 2048;
            for line in (0..next.len().min(BYTES)).step_by(64) {
                let at = next.as_ptr().wrapping_add(line);
                // SAFETY: SSE is part of the x86-64 baseline, so every CPU that runs this binary has it; a
                // prefetch is a hint, which reads nothing into the program and faults on no address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(at.cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = next;
    }

    /// Parses raw bytes into an event. `fallback_time_ms` is used when the event has no readable time (its
    /// attributes then say `time.source = host`), so that quality checks, not the parser, decide its fate.
    pub fn parse(
        &self,
        raw: impl Into<bytes::Bytes>,
        fallback_time_ms: i64,
    ) -> Result<Event, Rejected> {
        let raw = ByteString::try_from(raw.into()).map_err(|e| Rejected {
            reason: "invalid_utf8",
            detail: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        })?;
        let values = extract::extract(&self.layout, &raw).map_err(|e| match e {
            extract::ExtractError::InvalidJson(detail) => Rejected {
                reason: "invalid_json",
                detail,
            },
            extract::ExtractError::NotAnObject => Rejected {
                reason: "not_an_object",
                detail: "the event is JSON but not an object".into(),
            },
        })?;
        Ok(Event::from_values(
            raw,
            self.layout.clone(),
            values,
            fallback_time_ms,
        ))
    }
}

/// The id of an event that has none of its own: `sha256:` and the first 16 bytes of the digest of `bytes`, in
/// hex (the same bytes, the same id, so a resend is still a duplicate).
pub fn digest_id(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(&Sha256::digest(bytes)[..16]))
}

impl Event {
    fn from_values(
        raw: ByteString,
        layout: Arc<Layout>,
        values: Vec<Option<FieldValue>>,
        fallback_time_ms: i64,
    ) -> Event {
        let id = match &values[layout.id as usize] {
            Some(FieldValue::Text(t)) => t.resolve(&raw).to_string(),
            Some(FieldValue::Int(i)) => i.to_string(),
            Some(FieldValue::Float(f)) => f.to_string(),
            _ => digest_id(raw.as_bytes()),
        };
        let key = layout.key.and_then(|k| {
            values[k as usize].as_ref().map(|v| match v {
                FieldValue::Text(t) | FieldValue::Json(t) => t.resolve(&raw).to_string(),
                other => other.to_json(&raw).to_string(),
            })
        });
        let mut attributes = Vec::new();
        let time = values[layout.time as usize].as_ref().and_then(|v| match v {
            FieldValue::Text(t) => parse_rfc3339_ms(t.resolve(&raw)),
            FieldValue::Int(ms) => Some(*ms),
            FieldValue::Float(ms) => Some(*ms as i64),
            _ => None,
        });
        let time_ms = time.unwrap_or_else(|| {
            attributes.push(("time.source".to_string(), "host".to_string()));
            fallback_time_ms
        });
        Event {
            id,
            key,
            time_ms,
            seq: 0,
            ingest_ms: 0,
            attributes,
            raw,
            layout,
            values,
            written: Vec::new(),
            doc: None,
        }
    }

    /// The event exactly as received.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// The value in a slot, borrowed; `None` when the path is absent from the event.
    pub fn value(&self, slot: Slot) -> Option<ValueRef<'_>> {
        self.values[slot as usize]
            .as_ref()
            .map(|v| v.as_ref(&self.raw))
    }

    pub fn field(&self, slot: Slot) -> Option<&FieldValue> {
        self.values[slot as usize].as_ref()
    }

    /// Resolves text held by a slot value of this event.
    pub fn text<'a>(&'a self, text: &'a Text) -> &'a str {
        text.resolve(&self.raw)
    }

    /// The value at any path, with every write applied: from its slot when the layout has one, else from the
    /// whole document (built for the occasion).
    pub fn get(&self, path: &str) -> Option<Value> {
        match self.layout.slot(path) {
            Some(slot) => self.values[slot as usize]
                .as_ref()
                .map(|v| v.to_json(&self.raw)),
            None => JsonPath::parse(path).ok()?.get(&self.to_json()).cloned(),
        }
    }

    /// Whether a plugin wrote any field.
    pub fn is_modified(&self) -> bool {
        !self.written.is_empty()
    }

    /// The whole document with every write applied.
    pub fn to_json(&self) -> Value {
        if let Some(doc) = &self.doc {
            return (**doc).clone();
        }
        let mut doc: Value = serde_json::from_str(&self.raw).expect("validated when parsed");
        for &slot in &self.written {
            let value = self.values[slot as usize]
                .as_ref()
                .expect("written slots hold values");
            // Cannot fail: `set` checked every prefix of the path when the write was made.
            let _ = self
                .layout
                .path(slot)
                .set(&mut doc, value.to_json(&self.raw));
        }
        doc
    }

    /// The document as JSON text: the raw text itself when nothing was written.
    pub fn to_json_text(&self) -> std::borrow::Cow<'_, str> {
        if self.written.is_empty() && self.doc.is_none() {
            std::borrow::Cow::Borrowed(&self.raw)
        } else {
            std::borrow::Cow::Owned(self.to_json().to_string())
        }
    }

    /// Sets every slot of `writes`, in order, or none of them: when one fails, the writes before it are undone,
    /// so an event whose output is refused goes on (or to quarantine) as it came.
    pub fn set_all(&mut self, writes: Vec<(Slot, FieldValue)>) -> Result<(), String> {
        // A plain slot of an event without a document cannot fail, so the common case saves nothing.
        let cannot_fail = writes.len() < 2
            || (self.doc.is_none() && writes.iter().all(|&(slot, _)| self.layout.is_plain(slot)));
        let saved =
            (!cannot_fail).then(|| (self.values.clone(), self.written.clone(), self.doc.clone()));
        for (slot, value) in writes {
            if let Err(e) = self.set(slot, value) {
                if let Some((values, written, doc)) = saved {
                    (self.values, self.written, self.doc) = (values, written, doc);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sets a slot's path to `value`. Fails, changing nothing, when a prefix of the path holds a scalar (the
    /// path would cross it). Reads of related paths (a prefix read as JSON, or a path below) stay exact: such a
    /// write goes through the whole document and the related slots are read back from it.
    pub fn set(&mut self, slot: Slot, value: FieldValue) -> Result<(), String> {
        let layout = &self.layout;
        if self.doc.is_none() && layout.is_plain(slot) {
            self.values[slot as usize] = Some(value);
            mark_written(&mut self.written, slot);
            return Ok(());
        }
        if self.doc.is_none() {
            let mut needs_doc = layout.related(slot).iter().any(|&r| layout.usage(r).read);
            for &prefix in layout.ancestors(slot) {
                match &self.values[prefix as usize] {
                    None => {}
                    Some(FieldValue::Json(t)) if t.resolve(&self.raw).starts_with('{') => {}
                    // Whether the next segment indexes the array is for the document to say.
                    Some(FieldValue::Json(_)) => needs_doc = true,
                    Some(other) => {
                        return Err(format!(
                            "cannot set {}: {} holds a {}",
                            layout.path(slot).as_str(),
                            layout.path(prefix).as_str(),
                            other.type_name()
                        ));
                    }
                }
            }
            if !needs_doc {
                self.values[slot as usize] = Some(value);
                mark_written(&mut self.written, slot);
                return Ok(());
            }
            self.doc = Some(Box::new(self.to_json()));
        }
        let layout = &self.layout;
        let doc = self.doc.as_mut().expect("materialized above");
        layout.path(slot).set(doc, value.to_json(&self.raw))?;
        for &r in layout.related(slot) {
            self.values[r as usize] = layout.path(r).get(doc).map(FieldValue::from_json);
        }
        self.values[slot as usize] = Some(value);
        mark_written(&mut self.written, slot);
        Ok(())
    }

    /// Lays the event out for another layout (a chain whose plugins changed): its values are read again, from
    /// the raw text, or from the document when plugins wrote to it.
    pub fn relayout(&mut self, layout: &Arc<Layout>) {
        if Arc::ptr_eq(&self.layout, layout) {
            return;
        }
        if self.written.is_empty() && self.doc.is_none() {
            self.values = extract::extract(layout, &self.raw).expect("validated when parsed");
            self.layout = layout.clone();
            return;
        }
        let doc = self.to_json();
        self.values = layout
            .paths()
            .iter()
            .map(|p| p.get(&doc).map(FieldValue::from_json))
            .collect();
        // The writes live on in the document; the slot list only tells that something was written.
        self.written = layout
            .paths()
            .iter()
            .enumerate()
            .filter(|(_, p)| p.get(&doc).is_some())
            .map(|(s, _)| s as Slot)
            .collect();
        self.doc = Some(Box::new(doc));
        self.layout = layout.clone();
    }
}

/// Records a write, keeping `written` in the order of last writes.
fn mark_written(written: &mut Vec<Slot>, slot: Slot) {
    if let Some(i) = written.iter().position(|&s| s == slot) {
        written.remove(i);
    }
    written.push(slot);
}

/// Reads an event time: RFC 3339 text (any fraction digits, any offset). The plugins' SDK uses the same parser,
/// so a plugin and the host never disagree on an event's time.
pub use weir_sdk::time::parse_rfc3339_ms;

/// Reads an event time from a parsed value: RFC 3339 text, or a number of milliseconds.
pub fn parse_time_ms(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => parse_rfc3339_ms(s),
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Event, Rejected> {
        EventShape::default().parser().parse(text.to_string(), 7)
    }

    #[test]
    fn parses_wikimedia_ids_and_times() {
        let ev = parse(r#"{"meta":{"id":"abc","dt":"2025-01-01T00:00:01.5Z"}}"#).unwrap();
        assert_eq!(ev.id, "abc");
        assert_eq!(ev.time_ms, 1_735_689_601_500);
        assert!(ev.attributes.is_empty());
        let ev = parse(r#"{"meta":{"dt":"2020-01-01T00:00:00Z"}}"#).unwrap();
        assert!(ev.id.starts_with("sha256:"), "{}", ev.id);
    }

    #[test]
    fn rejects_with_reasons() {
        let parser = EventShape::default().parser();
        assert_eq!(
            parser.parse(&b"{\"a\":\xff}"[..], 0).unwrap_err().reason,
            "invalid_utf8"
        );
        assert_eq!(parse("{nope").unwrap_err().reason, "invalid_json");
        assert_eq!(parse("[1]").unwrap_err().reason, "not_an_object");
        let ev = parse(r#"{"meta":{"dt":"yesterday"}}"#).unwrap();
        assert_eq!(ev.time_ms, 7);
        assert_eq!(ev.attributes, vec![("time.source".into(), "host".into())]);
    }

    fn layout(reads: &[&str], writes: &[&str]) -> Arc<Layout> {
        let p = |v: &[&str]| {
            v.iter()
                .map(|p| JsonPath::parse(p).unwrap())
                .collect::<Vec<_>>()
        };
        Arc::new(Layout::new(&EventShape::default(), &p(reads), &p(writes)).unwrap())
    }

    #[test]
    fn writes_land_in_slots_and_in_the_document() {
        let layout = layout(&["a"], &["x.y", "a"]);
        let parser = Parser::new(layout.clone());
        let mut ev = parser
            .parse(r#"{"a": 1, "b": [1, 2]}"#.to_string(), 0)
            .unwrap();
        assert_eq!(ev.to_json_text(), r#"{"a": 1, "b": [1, 2]}"#);
        ev.set(layout.slot("x.y").unwrap(), FieldValue::Bool(true))
            .unwrap();
        ev.set(layout.slot("a").unwrap(), FieldValue::Int(2))
            .unwrap();
        assert_eq!(
            ev.value(layout.slot("a").unwrap()),
            Some(ValueRef::Integer(2))
        );
        assert_eq!(ev.to_json(), json!({"a": 2, "b": [1, 2], "x": {"y": true}}));
    }

    #[test]
    fn a_write_never_crosses_a_scalar() {
        let layout = layout(&[], &["a.b"]);
        let mut ev = Parser::new(layout.clone())
            .parse(r#"{"a": 1}"#.to_string(), 0)
            .unwrap();
        let err = ev
            .set(layout.slot("a.b").unwrap(), FieldValue::Int(1))
            .unwrap_err();
        assert!(err.contains("a holds a integer"), "{err}");
        assert_eq!(ev.to_json(), json!({"a": 1}));
    }

    #[test]
    fn writes_to_one_event_land_all_or_none() {
        // The first write would succeed and the second crosses a scalar: the event must come out as it went in
        // (its stage may pass it on unchanged), in its slots and in its document.
        let layout = layout(&["x"], &["x", "a.b"]);
        let mut ev = Parser::new(layout.clone())
            .parse(r#"{"a": 1, "x": 0}"#.to_string(), 0)
            .unwrap();
        let x = layout.slot("x").unwrap();
        let writes = vec![
            (x, FieldValue::Int(2)),
            (layout.slot("a.b").unwrap(), FieldValue::Int(1)),
        ];
        let err = ev.set_all(writes).unwrap_err();
        assert!(err.contains("a holds a integer"), "{err}");
        assert_eq!(ev.value(x), Some(ValueRef::Integer(0)));
        assert_eq!(ev.to_json_text(), r#"{"a": 1, "x": 0}"#);

        ev.set_all(vec![(x, FieldValue::Int(3))]).unwrap();
        assert_eq!(ev.to_json(), json!({"a": 1, "x": 3}));
    }

    #[test]
    fn reads_of_related_paths_follow_writes() {
        // One plugin writes `enriched` whole, another reads a path below it, a third the object itself.
        let layout = layout(
            &["enriched.lang", "enriched"],
            &["enriched", "enriched.extra"],
        );
        let mut ev = Parser::new(layout.clone())
            .parse(r#"{"enriched": {"lang": "en"}}"#.to_string(), 0)
            .unwrap();
        let lang = layout.slot("enriched.lang").unwrap();
        assert_eq!(ev.value(lang), Some(ValueRef::Text("en")));
        ev.set(
            layout.slot("enriched").unwrap(),
            FieldValue::from_wit(crate::runtime::types::Value::Json(
                r#"{"lang": "de"}"#.into(),
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(ev.value(lang), Some(ValueRef::Text("de")));
        ev.set(layout.slot("enriched.extra").unwrap(), FieldValue::Int(1))
            .unwrap();
        assert_eq!(
            ev.value(layout.slot("enriched").unwrap()),
            Some(ValueRef::Json(r#"{"extra":1,"lang":"de"}"#))
        );
    }

    #[test]
    fn relayout_keeps_writes() {
        let first = layout(&[], &["x"]);
        let mut ev = Parser::new(first.clone())
            .parse(r#"{"a": {"b": 5}}"#.to_string(), 0)
            .unwrap();
        ev.set(first.slot("x").unwrap(), FieldValue::Int(1))
            .unwrap();
        let second = layout(&["x", "a.b"], &[]);
        ev.relayout(&second);
        assert_eq!(
            ev.value(second.slot("x").unwrap()),
            Some(ValueRef::Integer(1))
        );
        assert_eq!(
            ev.value(second.slot("a.b").unwrap()),
            Some(ValueRef::Integer(5))
        );
        assert_eq!(ev.to_json(), json!({"a": {"b": 5}, "x": 1}));
    }
}
