//! Projection: turning a parsed event into what one plugin asked for, and applying that plugin's writes back.

use serde_json::{Number, Value};

use super::{Event, JsonPath};
use crate::runtime::types::{self, FieldWrite, Plan};

/// A plugin's plan, compiled against the host's event representation.
#[derive(Clone, Debug)]
pub struct Projection {
    reads: Vec<JsonPath>,
    writes: Vec<JsonPath>,
    needs_payload: bool,
    needs_attributes: bool,
}

impl Projection {
    pub fn from_plan(plan: &Plan) -> Result<Self, String> {
        let parse = |paths: &[String]| {
            paths
                .iter()
                .map(|p| JsonPath::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Projection {
            reads: parse(&plan.reads)?,
            writes: parse(&plan.writes)?,
            needs_payload: plan.needs_payload,
            needs_attributes: plan.needs_attributes,
        })
    }

    pub fn project(&self, event: &Event) -> types::Event {
        types::Event {
            id: event.id.clone(),
            key: event.key.clone(),
            time_ms: event.time_ms,
            fields: self
                .reads
                .iter()
                .map(|p| p.get(&event.doc).map(to_wit_value))
                .collect(),
            payload: self.needs_payload.then(|| event.doc.to_string()),
            attributes: if self.needs_attributes {
                event.attributes.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// Applies a plugin's field writes to the event, in place (no copy of the document). Values are converted
    /// before anything is written, so a bad value changes nothing; a path that crosses a scalar fails at that
    /// write and the caller quarantines the event.
    pub fn apply(&self, event: &mut Event, writes: Vec<FieldWrite>) -> Result<(), String> {
        if writes.is_empty() {
            return Ok(());
        }
        let converted = writes
            .into_iter()
            .map(|w| {
                let path = &self.writes[w.field as usize];
                from_wit_value(w.value)
                    .map(|v| (path, v))
                    .map_err(|e| format!("write to {}: {e}", path.as_str()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (path, value) in converted {
            path.set(&mut event.doc, value)?;
        }
        Ok(())
    }
}

pub fn to_wit_value(value: &Value) -> types::Value {
    match value {
        Value::Null => types::Value::Null,
        Value::Bool(b) => types::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => types::Value::Integer(i),
            None => types::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => types::Value::Text(s.clone()),
        nested => types::Value::Json(nested.to_string()),
    }
}

pub fn from_wit_value(value: types::Value) -> Result<Value, String> {
    Ok(match value {
        types::Value::Null => Value::Null,
        types::Value::Boolean(b) => Value::Bool(b),
        types::Value::Integer(i) => Value::Number(i.into()),
        types::Value::Float(f) => {
            Value::Number(Number::from_f64(f).ok_or_else(|| format!("{f} is not a JSON number"))?)
        }
        types::Value::Text(s) => Value::String(s),
        types::Value::Json(text) => {
            serde_json::from_str(&text).map_err(|e| format!("invalid JSON text: {e}"))?
        }
    })
}
