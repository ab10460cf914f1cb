//! Conveniences on the contract's types: builders and conversions.

use crate::batch::ValueRef;
use crate::{Kind, Manifest, Plan, Row, StateNeeds, Value};

impl Manifest {
    pub fn new(name: &str, version: &str, kind: Kind, description: &str) -> Self {
        Manifest {
            name: name.into(),
            version: version.into(),
            kind,
            description: description.into(),
        }
    }
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            reads: Vec::new(),
            writes: Vec::new(),
            needs_payload: false,
            needs_attributes: false,
            state: StateNeeds {
                keyed: false,
                snapshot: false,
            },
            emits: Vec::new(),
        }
    }
}

impl Plan {
    pub fn new() -> Self {
        Plan::default()
    }

    /// Adds dotted JSON paths to read; each event's `fields` holds their values in this order.
    pub fn reads<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Self {
        self.reads.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Adds dotted JSON paths the plugin may set; writes name them by index in this order.
    pub fn writes<S: Into<String>>(mut self, paths: impl IntoIterator<Item = S>) -> Self {
        self.writes.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Adds tables the plugin emits rows into.
    pub fn emits<S: Into<String>>(mut self, tables: impl IntoIterator<Item = S>) -> Self {
        self.emits.extend(tables.into_iter().map(Into::into));
        self
    }

    /// Asks for the whole payload of every event (costly: prefer `reads`).
    pub fn payload(mut self) -> Self {
        self.needs_payload = true;
        self
    }

    /// Asks for the host's attributes (`stream.sequence`, `source`, ...) on every event.
    pub fn attributes(mut self) -> Self {
        self.needs_attributes = true;
        self
    }

    /// Declares use of the host's keyed state ([`crate::state`]).
    pub fn keyed_state(mut self) -> Self {
        self.state.keyed = true;
        self
    }

    /// Declares in-memory state saved through `Plugin::snapshot` and `Plugin::restore`.
    pub fn snapshot_state(mut self) -> Self {
        self.state.snapshot = true;
        self
    }
}

impl Row {
    pub fn new(table: impl Into<String>) -> Self {
        Row {
            table: table.into(),
            columns: Vec::new(),
        }
    }

    pub fn with(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.columns.push((column.into(), value.into()));
        self
    }

    pub fn get(&self, column: &str) -> Option<&Value> {
        self.columns
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v)
    }
}

impl Value {
    /// The value borrowed, as a batch holds it.
    pub fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Boolean(b) => ValueRef::Boolean(*b),
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Json(s) => ValueRef::Json(s),
        }
    }
}

impl From<ValueRef<'_>> for Value {
    fn from(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Boolean(b) => Value::Boolean(b),
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Text(s) => Value::Text(s.to_string()),
            ValueRef::Json(s) => Value::Json(s.to_string()),
        }
    }
}

impl<'a> From<&'a serde_json::Value> for ValueRef<'a> {
    /// Borrows scalars and strings; objects and arrays must be serialized first (see `Value::from`).
    fn from(v: &'a serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => ValueRef::Null,
            serde_json::Value::Bool(b) => ValueRef::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => ValueRef::Integer(i),
                None => ValueRef::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => ValueRef::Text(s),
            _ => panic!(
                "ValueRef::from borrows scalars only; serialize objects and arrays with Value::from"
            ),
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Integer(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        i64::try_from(n)
            .map(Value::Integer)
            .unwrap_or(Value::Float(n as f64))
    }
}

impl From<i32> for Value {
    fn from(n: i32) -> Self {
        Value::Integer(n.into())
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.into())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<&serde_json::Value> for Value {
    fn from(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Text(s.clone()),
            nested => Value::Json(nested.to_string()),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Boolean(a), Value::Boolean(b)) => a == b,
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Text(a), Value::Text(b)) | (Value::Json(a), Value::Json(b)) => a == b,
            _ => false,
        }
    }
}

impl From<&Value> for serde_json::Value {
    fn from(v: &Value) -> Self {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Boolean(b) => (*b).into(),
            Value::Integer(i) => (*i).into(),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
            }
            Value::Text(s) => s.as_str().into(),
            Value::Json(s) => serde_json::from_str(s).unwrap_or(serde_json::Value::Null),
        }
    }
}

impl PartialEq for crate::Quarantine {
    fn eq(&self, other: &Self) -> bool {
        self.reason == other.reason && self.failed_checks == other.failed_checks
    }
}

impl PartialEq for crate::Verdict {
    fn eq(&self, other: &Self) -> bool {
        use crate::Verdict::*;
        match (self, other) {
            (Keep, Keep) => true,
            (Drop(a), Drop(b)) => a == b,
            (Quarantine(a), Quarantine(b)) => a == b,
            _ => false,
        }
    }
}
