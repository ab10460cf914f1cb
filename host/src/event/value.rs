//! The values held in an event's slots: extracted from the raw text without copying it, or written by plugins.

use bytestring::ByteString;
use serde_json::{Number, Value};

use crate::runtime::types;
use crate::runtime::types::ValueRef;

/// Text held by a slot: a range of the event's raw text (no copy), or owned (unescaped, compacted, written).
#[derive(Clone, Debug, PartialEq)]
pub enum Text {
    Raw { start: u32, end: u32 },
    Owned(Box<str>),
}

impl Text {
    pub fn resolve<'a>(&'a self, raw: &'a ByteString) -> &'a str {
        match self {
            Text::Raw { start, end } => &raw[*start as usize..*end as usize],
            Text::Owned(s) => s,
        }
    }
}

/// A JSON value as the host holds it in a slot. Objects and arrays are compact JSON text, as plugins see them.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Text),
    Json(Text),
}

impl FieldValue {
    pub fn as_ref<'a>(&'a self, raw: &'a ByteString) -> ValueRef<'a> {
        match self {
            FieldValue::Null => ValueRef::Null,
            FieldValue::Bool(b) => ValueRef::Boolean(*b),
            FieldValue::Int(i) => ValueRef::Integer(*i),
            FieldValue::Float(f) => ValueRef::Float(*f),
            FieldValue::Text(t) => ValueRef::Text(t.resolve(raw)),
            FieldValue::Json(t) => ValueRef::Json(t.resolve(raw)),
        }
    }

    pub fn to_json(&self, raw: &ByteString) -> Value {
        match self {
            FieldValue::Null => Value::Null,
            FieldValue::Bool(b) => Value::Bool(*b),
            FieldValue::Int(i) => Value::Number((*i).into()),
            FieldValue::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            FieldValue::Text(t) => Value::String(t.resolve(raw).to_string()),
            FieldValue::Json(t) => {
                serde_json::from_str(t.resolve(raw)).expect("slots hold valid JSON text")
            }
        }
    }

    /// The value of a parsed JSON node, owned (used once an event's document has been materialized).
    pub fn from_json(value: &Value) -> FieldValue {
        match value {
            Value::Null => FieldValue::Null,
            Value::Bool(b) => FieldValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => FieldValue::Int(i),
                None => FieldValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => FieldValue::Text(Text::Owned(s.as_str().into())),
            nested => FieldValue::Json(Text::Owned(nested.to_string().into())),
        }
    }

    /// A value a plugin wrote into a column. Fails, naming the problem, for a float that is not a JSON number
    /// or JSON text that does not parse.
    pub fn from_ref(value: ValueRef<'_>) -> Result<FieldValue, String> {
        Ok(match value {
            ValueRef::Null => FieldValue::Null,
            ValueRef::Boolean(b) => FieldValue::Bool(b),
            ValueRef::Integer(i) => FieldValue::Int(i),
            ValueRef::Float(f) if f.is_finite() => FieldValue::Float(f),
            ValueRef::Float(f) => return Err(format!("{f} is not a JSON number")),
            ValueRef::Text(s) => FieldValue::Text(Text::Owned(s.into())),
            ValueRef::Json(text) => json_text(text)?,
        })
    }

    /// A value a plugin returned (a row column). Fails like [`FieldValue::from_ref`].
    pub fn from_wit(value: types::Value) -> Result<FieldValue, String> {
        Ok(match value {
            types::Value::Null => FieldValue::Null,
            types::Value::Boolean(b) => FieldValue::Bool(b),
            types::Value::Integer(i) => FieldValue::Int(i),
            types::Value::Float(f) if f.is_finite() => FieldValue::Float(f),
            types::Value::Float(f) => return Err(format!("{f} is not a JSON number")),
            types::Value::Text(s) => FieldValue::Text(Text::Owned(s.into())),
            types::Value::Json(text) => json_text(&text)?,
        })
    }

    /// The type name used in messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Null => "null",
            FieldValue::Bool(_) => "boolean",
            FieldValue::Int(_) => "integer",
            FieldValue::Float(_) => "float",
            FieldValue::Text(_) => "string",
            FieldValue::Json(_) => "object or array",
        }
    }
}

/// JSON text a plugin gave: objects and arrays stay text (compacted), scalars become values (`json("3")` is the
/// number 3: one representation per value).
fn json_text(text: &str) -> Result<FieldValue, String> {
    let parsed: Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON text: {e}"))?;
    Ok(match parsed {
        Value::Object(_) | Value::Array(_) => {
            FieldValue::Json(Text::Owned(compact(text, &parsed).into()))
        }
        scalar => FieldValue::from_json(&scalar),
    })
}

/// `text` when it is already compact JSON, else the compact serialization of `parsed`.
fn compact(text: &str, parsed: &Value) -> String {
    if has_whitespace(text) {
        parsed.to_string()
    } else {
        text.to_string()
    }
}

pub(crate) fn has_whitespace(text: &str) -> bool {
    text.bytes()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
}

/// A value from a plugin (a row column, say) as JSON.
pub fn from_wit_value(value: types::Value) -> Result<Value, String> {
    Ok(FieldValue::from_wit(value)?.to_json(&ByteString::new()))
}
