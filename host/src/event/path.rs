//! Dotted JSON paths (`meta.domain`, `length.new`, `log_params.0`), parsed once and applied to parsed events.

use serde_json::{Map, Value};

/// A parsed dotted path. A numeric segment indexes an array, or names a key of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    key: String,
    index: Option<usize>,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty path".into());
        }
        let segments = text
            .split('.')
            .map(|part| {
                if part.is_empty() {
                    return Err(format!(
                        "empty segment in {text:?} (two dots, or a leading or trailing dot)"
                    ));
                }
                Ok(Segment {
                    key: part.to_string(),
                    index: part.parse().ok(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(JsonPath {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The segments, in order (`meta.dt` → `meta`, `dt`).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(|s| s.key.as_str())
    }

    /// Every strict prefix, shortest first (`a.b.c` → `a`, `a.b`).
    pub fn prefixes(&self) -> impl Iterator<Item = JsonPath> + '_ {
        (1..self.segments.len()).map(|n| {
            let segments = self.segments[..n].to_vec();
            let text = segments
                .iter()
                .map(|s| s.key.as_str())
                .collect::<Vec<_>>()
                .join(".");
            JsonPath { text, segments }
        })
    }

    /// Whether this path is a strict prefix of `other` (`a` of `a.b`, not of `ab` nor of `a`).
    pub fn is_prefix_of(&self, other: &JsonPath) -> bool {
        self.segments.len() < other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| a.key == b.key)
    }

    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.segments.iter().try_fold(doc, |node, seg| match node {
            Value::Object(map) => map.get(&seg.key),
            Value::Array(items) => seg.index.and_then(|i| items.get(i)),
            _ => None,
        })
    }

    /// Sets the value at this path, creating objects on the way. Fails when a segment crosses a scalar, or an
    /// index lies past the end of an array.
    pub fn set(&self, doc: &mut Value, value: Value) -> Result<(), String> {
        let mut node = doc;
        for (i, seg) in self.segments.iter().enumerate() {
            let last = i + 1 == self.segments.len();
            if node.is_null() {
                *node = Value::Object(Map::new());
            }
            node = match node {
                Value::Object(map) => {
                    if last {
                        map.insert(seg.key.clone(), value);
                        return Ok(());
                    }
                    map.entry(seg.key.clone()).or_insert(Value::Null)
                }
                Value::Array(items) => {
                    let slot = seg.index.and_then(|i| items.get_mut(i)).ok_or_else(|| {
                        format!(
                            "cannot set {}: segment {:?} is not an index of the array there",
                            self.text, seg.key
                        )
                    })?;
                    if last {
                        *slot = value;
                        return Ok(());
                    }
                    slot
                }
                _ => {
                    return Err(format!(
                        "cannot set {}: segment {:?} is inside a scalar value",
                        self.text, seg.key
                    ));
                }
            };
        }
        unreachable!("a parsed path has at least one segment")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gets_through_objects_and_arrays() {
        let doc = json!({"meta": {"domain": "canary"}, "log_params": ["a", "b"], "0": 1});
        assert_eq!(
            JsonPath::parse("meta.domain").unwrap().get(&doc),
            Some(&json!("canary"))
        );
        assert_eq!(
            JsonPath::parse("log_params.1").unwrap().get(&doc),
            Some(&json!("b"))
        );
        assert_eq!(JsonPath::parse("0").unwrap().get(&doc), Some(&json!(1)));
        assert_eq!(JsonPath::parse("meta.nope").unwrap().get(&doc), None);
        assert_eq!(JsonPath::parse("meta.domain.x").unwrap().get(&doc), None);
    }

    #[test]
    fn sets_creating_objects() {
        let mut doc = json!({"a": 1});
        JsonPath::parse("x.y")
            .unwrap()
            .set(&mut doc, json!(true))
            .unwrap();
        JsonPath::parse("a")
            .unwrap()
            .set(&mut doc, json!(2))
            .unwrap();
        assert_eq!(doc, json!({"a": 2, "x": {"y": true}}));
        assert!(
            JsonPath::parse("a.b")
                .unwrap()
                .set(&mut doc, json!(0))
                .is_err()
        );
    }

    #[test]
    fn rejects_bad_paths() {
        assert!(JsonPath::parse("").is_err());
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse(".a").is_err());
    }
}
