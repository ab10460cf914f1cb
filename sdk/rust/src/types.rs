//! Conveniences on the contract's types: typed field access, builders and conversions.

use crate::{
    Event, FieldWrite, Kind, Manifest, Outcome, Plan, Quarantine, Row, StateNeeds, Value, Verdict,
};

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

impl Event {
    /// A test event: fields are the values of the plan's reads, in order.
    pub fn new(id: &str, time_ms: i64, fields: Vec<Option<Value>>) -> Self {
        Event {
            id: id.into(),
            key: None,
            time_ms,
            fields,
            payload: None,
            attributes: Vec::new(),
        }
    }

    /// The value of the `i`-th read path; `None` when the path is absent from the event (or out of range).
    pub fn field(&self, i: usize) -> Option<&Value> {
        self.fields.get(i).and_then(Option::as_ref)
    }

    /// Whether the `i`-th read path exists in the event (even if its value is `null`).
    pub fn has(&self, i: usize) -> bool {
        self.field(i).is_some()
    }

    pub fn is_null_or_missing(&self, i: usize) -> bool {
        matches!(self.field(i), None | Some(Value::Null))
    }

    pub fn str(&self, i: usize) -> Option<&str> {
        match self.field(i)? {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn bool(&self, i: usize) -> Option<bool> {
        match self.field(i)? {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// An integer, or a float without a fractional part.
    pub fn i64(&self, i: usize) -> Option<i64> {
        match self.field(i)? {
            Value::Integer(n) => Some(*n),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(*f as i64),
            _ => None,
        }
    }

    pub fn f64(&self, i: usize) -> Option<f64> {
        match self.field(i)? {
            Value::Integer(n) => Some(*n as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Outcome {
    pub fn keep() -> Self {
        Outcome {
            verdict: Verdict::Keep,
            writes: Vec::new(),
        }
    }

    /// Drops the event; `rule` names the rule, and the host counts drops per rule.
    pub fn drop(rule: impl Into<String>) -> Self {
        Outcome {
            verdict: Verdict::Drop(rule.into()),
            writes: Vec::new(),
        }
    }

    /// Quarantines the event with a reason code and the checks it failed.
    pub fn quarantine(reason: impl Into<String>, failed_checks: Vec<String>) -> Self {
        Outcome {
            verdict: Verdict::Quarantine(Quarantine {
                reason: reason.into(),
                failed_checks,
            }),
            writes: Vec::new(),
        }
    }

    /// Sets the `field`-th write path of the plan to `value`.
    pub fn set(mut self, field: u32, value: impl Into<Value>) -> Self {
        self.writes.push(FieldWrite {
            field,
            value: value.into(),
        });
        self
    }

    pub fn is_keep(&self) -> bool {
        matches!(self.verdict, Verdict::Keep)
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
