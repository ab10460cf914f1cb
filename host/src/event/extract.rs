//! One pass over an event's raw JSON text: every byte is validated, the values of the layout's paths are
//! recorded in their slots (strings as ranges of the raw text, not copies) and everything else is skipped
//! without being built. This is what makes parsing cheap: a ~1 kB Wikimedia event holds ~40 values, a chain
//! reads a dozen of them.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::layout::{Layout, Node};
use super::value::{FieldValue, Text, has_whitespace};

/// Why raw text could not be read as an event.
#[derive(Debug)]
pub(crate) enum ExtractError {
    InvalidJson(String),
    NotAnObject,
}

/// Extracts the slots of `layout` from `text` (the whole raw event).
pub(crate) fn extract(
    layout: &Layout,
    text: &str,
) -> Result<Vec<Option<FieldValue>>, ExtractError> {
    let mut extractor = Extractor {
        nodes: &layout.nodes,
        out: vec![None; layout.len()],
        base: text.as_ptr() as usize,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let is_object = ContainerSeed {
        ex: &mut extractor,
        node: 0,
    }
    .deserialize(&mut de)
    .map_err(|e| ExtractError::InvalidJson(e.to_string()))?;
    de.end()
        .map_err(|e| ExtractError::InvalidJson(e.to_string()))?;
    if !is_object {
        return Err(ExtractError::NotAnObject);
    }
    Ok(extractor.out)
}

struct Extractor<'l> {
    nodes: &'l [Node],
    out: Vec<Option<FieldValue>>,
    /// Address of the first byte of the raw text: borrowed strings are recorded as offsets from it.
    base: usize,
}

impl Extractor<'_> {
    fn text(&self, s: &str) -> Text {
        let start = s.as_ptr() as usize - self.base;
        Text::Raw {
            start: start as u32,
            end: (start + s.len()) as u32,
        }
    }

    /// Reads a captured value. `raw` is exactly the value's JSON text (no surrounding whitespace).
    fn classify(&self, raw: &str) -> Result<FieldValue, String> {
        let bytes = raw.as_bytes();
        Ok(match bytes[0] {
            b'"' if !bytes.contains(&b'\\') => FieldValue::Text(self.text(&raw[1..raw.len() - 1])),
            b'"' => FieldValue::Text(Text::Owned(
                serde_json::from_str::<String>(raw)
                    .map_err(|e| e.to_string())?
                    .into(),
            )),
            b't' => FieldValue::Bool(true),
            b'f' => FieldValue::Bool(false),
            b'n' => FieldValue::Null,
            b'{' | b'[' if has_whitespace(raw) => {
                let value: serde_json::Value =
                    serde_json::from_str(raw).map_err(|e| e.to_string())?;
                FieldValue::Json(Text::Owned(value.to_string().into()))
            }
            b'{' | b'[' => FieldValue::Json(self.text(raw)),
            // Numbers: integers that fit an i64 stay integers, everything else is a float (as serde_json reads
            // them, so the host and the SDK's test projection agree).
            _ => match raw.parse::<i64>() {
                Ok(i) => FieldValue::Int(i),
                Err(_) => FieldValue::Float(raw.parse::<f64>().map_err(|e| e.to_string())?),
            },
        })
    }
}

/// The value at a node of the layout's trie.
struct NodeSeed<'x, 'l> {
    ex: &'x mut Extractor<'l>,
    node: usize,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let nodes = self.ex.nodes;
        let node = &nodes[self.node];
        // A key that repeats: the last occurrence wins, as when the document is parsed whole.
        for slot in node.slots.clone() {
            self.ex.out[slot] = None;
        }
        let Some(slot) = node.slot else {
            ContainerSeed {
                ex: self.ex,
                node: self.node,
            }
            .deserialize(d)?;
            return Ok(());
        };
        let raw = <&'de RawValue as serde::Deserialize>::deserialize(d)?;
        let text = raw.get();
        let value = self.ex.classify(text).map_err(de::Error::custom)?;
        self.ex.out[slot as usize] = Some(value);
        if !node.children.is_empty() && matches!(text.as_bytes()[0], b'{' | b'[') {
            // Paths below a captured value: walk the captured text (a slice of the same raw text).
            let mut sub = serde_json::Deserializer::from_str(text);
            ContainerSeed {
                ex: self.ex,
                node: self.node,
            }
            .deserialize(&mut sub)
            .map_err(de::Error::custom)?;
        }
        Ok(())
    }
}

/// The children of a node inside an object or array; any other value is skipped. Answers whether the value
/// was an object.
struct ContainerSeed<'x, 'l> {
    ex: &'x mut Extractor<'l>,
    node: usize,
}

impl<'de> DeserializeSeed<'de> for ContainerSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ContainerSeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let nodes = self.ex.nodes;
        let node = &nodes[self.node];
        while let Some(child) = map.next_key_seed(KeySeed { nodes, node })? {
            match child {
                Some(child) => map.next_value_seed(NodeSeed {
                    ex: self.ex,
                    node: child,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let nodes = self.ex.nodes;
        let node = &nodes[self.node];
        let mut index = 0;
        loop {
            let more = match node.child_at(nodes, index) {
                Some(child) => seq
                    .next_element_seed(NodeSeed {
                        ex: self.ex,
                        node: child,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(false);
            }
            index += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// An object key: answers the child node it names, if the layout has one.
struct KeySeed<'l> {
    nodes: &'l [Node],
    node: &'l Node,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.node.child(self.nodes, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventShape, JsonPath};

    fn layout(reads: &[&str]) -> Layout {
        let reads: Vec<JsonPath> = reads.iter().map(|p| JsonPath::parse(p).unwrap()).collect();
        Layout::new(&EventShape::default(), &reads, &[]).unwrap()
    }

    fn get(layout: &Layout, text: &str, path: &str) -> Option<serde_json::Value> {
        let out = extract(layout, text).unwrap();
        let raw = bytestring::ByteString::from(text);
        out[layout.slot(path).unwrap() as usize]
            .as_ref()
            .map(|v| v.to_json(&raw))
    }

    #[test]
    fn extracts_scalars_strings_and_nested_values() {
        let l = layout(&["a", "b.c", "d", "d.0", "e", "s", "big", "f"]);
        let text = r#"{"a": 1, "b": {"c": "x\"y", "z": [1, 2]}, "d": [ "p" , 2], "e": null, "s": "plain",
                       "big": 18446744073709551615, "f": 1.5, "skip": {"deep": [{"x": 1}]}}"#;
        assert_eq!(get(&l, text, "a"), Some(1.into()));
        assert_eq!(get(&l, text, "b.c"), Some("x\"y".into()));
        assert_eq!(get(&l, text, "d"), Some(serde_json::json!(["p", 2])));
        assert_eq!(get(&l, text, "d.0"), Some("p".into()));
        assert_eq!(get(&l, text, "e"), Some(serde_json::Value::Null));
        assert_eq!(get(&l, text, "s"), Some("plain".into()));
        assert_eq!(
            get(&l, text, "big"),
            Some(serde_json::json!(18446744073709551615f64))
        );
        assert_eq!(get(&l, text, "f"), Some(serde_json::json!(1.5)));
        assert_eq!(get(&l, text, "meta.id"), None);
    }

    #[test]
    fn last_duplicate_key_wins() {
        let l = layout(&["a.b"]);
        assert_eq!(get(&l, r#"{"a": {"b": 1}, "a": 2}"#, "a.b"), None);
        assert_eq!(get(&l, r#"{"a": 2, "a": {"b": 3}}"#, "a.b"), Some(3.into()));
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        let l = layout(&["a"]);
        assert!(matches!(extract(&l, "[1]"), Err(ExtractError::NotAnObject)));
        assert!(matches!(
            extract(&l, "{\"a\":1} x"),
            Err(ExtractError::InvalidJson(_))
        ));
        assert!(matches!(
            extract(&l, "{\"skip\": [1,}"),
            Err(ExtractError::InvalidJson(_))
        ));
        assert!(matches!(extract(&l, ""), Err(ExtractError::InvalidJson(_))));
    }
}
