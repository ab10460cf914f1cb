//! A batch as the plugin reads it: the contract's columns, validated once, and a per-event view over them so a
//! plugin can be written one event at a time.

use crate::bindings::weir::transform::types as wit;

/// What an event holds at a read path (the codes of `column.kinds`).
pub mod kind {
    pub const ABSENT: u8 = 0;
    pub const NULL: u8 = 1;
    pub const BOOLEAN: u8 = 2;
    pub const INTEGER: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const TEXT: u8 = 5;
    pub const JSON: u8 = 6;
}

/// A JSON value borrowed from a batch. Objects and arrays are compact JSON text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(&'a str),
    Json(&'a str),
}

/// Strings sharing one buffer, validated as UTF-8 once (the fields a plugin asked for: it reads them).
#[derive(Clone, Debug, Default)]
pub struct Texts {
    text: String,
    offsets: Vec<u32>,
}

impl Texts {
    fn from_wit(strings: wit::Strings) -> Self {
        // The host sends UTF-8, so this never replaces anything.
        let text = String::from_utf8(strings.bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Texts {
            text,
            offsets: strings.offsets,
        }
    }

    /// String `i`, or `""` when out of range.
    pub fn get(&self, i: usize) -> &str {
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&start), Some(&end)) => self.text.get(start as usize..end as usize).unwrap_or(""),
            _ => "",
        }
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.len() < 2
    }

    /// Builds the contract's form of `strings` (tests and native harnesses).
    pub fn from_strs<'a>(strings: impl IntoIterator<Item = &'a str>) -> wit::Strings {
        let mut out = wit::Strings {
            bytes: Vec::new(),
            offsets: vec![0],
        };
        for s in strings {
            out.bytes.extend_from_slice(s.as_bytes());
            out.offsets.push(out.bytes.len() as u32);
        }
        out
    }
}

/// One read path's values for the whole batch.
#[derive(Clone, Debug, Default)]
pub struct Column {
    kinds: Vec<u8>,
    integers: Vec<i64>,
    floats: Vec<f64>,
    text: Texts,
}

impl Column {
    pub(crate) fn from_wit(column: wit::Column) -> Self {
        Column {
            kinds: column.kinds,
            integers: column.integers,
            floats: column.floats,
            text: Texts::from_wit(column.text),
        }
    }

    /// The value of event `i`; `None` when the path is absent from it.
    pub fn get(&self, i: usize) -> Option<ValueRef<'_>> {
        let int = || self.integers.get(i).copied().unwrap_or(0);
        Some(match *self.kinds.get(i)? {
            kind::NULL => ValueRef::Null,
            kind::BOOLEAN => ValueRef::Boolean(int() != 0),
            kind::INTEGER => ValueRef::Integer(int()),
            kind::FLOAT => ValueRef::Float(self.floats.get(i).copied().unwrap_or(0.0)),
            kind::TEXT => ValueRef::Text(self.text.get(i)),
            kind::JSON => ValueRef::Json(self.text.get(i)),
            _ => return None,
        })
    }
}

/// The ids of a batch: most plugins never read them, so each is checked as UTF-8 only when read.
#[derive(Clone, Debug, Default)]
struct Ids {
    bytes: Vec<u8>,
    offsets: Vec<u32>,
}

impl Ids {
    fn get(&self, i: usize) -> &str {
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&start), Some(&end)) => self
                .bytes
                .get(start as usize..end as usize)
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or(""),
            _ => "",
        }
    }
}

/// A batch of events. Iterate it with [`Batch::events`]; event `i` is entry `i` of every column.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    ids: Ids,
    times: Vec<i64>,
    fields: Vec<Column>,
    payloads: Texts,
    attributes: Vec<Vec<(String, String)>>,
}

impl From<wit::Batch> for Batch {
    fn from(batch: wit::Batch) -> Self {
        Batch {
            ids: Ids {
                bytes: batch.ids.bytes,
                offsets: batch.ids.offsets,
            },
            times: batch.times,
            fields: batch.fields.into_iter().map(Column::from_wit).collect(),
            payloads: Texts::from_wit(batch.payloads),
            attributes: batch.attributes,
        }
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    pub fn event(&self, index: usize) -> Event<'_> {
        Event { batch: self, index }
    }

    pub fn events(&self) -> impl ExactSizeIterator<Item = Event<'_>> + '_ {
        (0..self.len()).map(|index| Event { batch: self, index })
    }

    /// The column of the `i`-th read path.
    pub fn field(&self, i: usize) -> Option<&Column> {
        self.fields.get(i)
    }
}

/// One event of a batch: the values of the plan's read paths, by their index in `plan.reads`.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    batch: &'a Batch,
    index: usize,
}

impl<'a> Event<'a> {
    /// The position of the event in its batch.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The source event id (`meta.id` for Wikimedia).
    pub fn id(&self) -> &'a str {
        self.batch.ids.get(self.index)
    }

    /// Event time in milliseconds since the Unix epoch.
    pub fn time_ms(&self) -> i64 {
        self.batch.times[self.index]
    }

    /// The value of the `i`-th read path; `None` when the path is absent from the event (or out of range).
    pub fn value(&self, i: usize) -> Option<ValueRef<'a>> {
        self.batch.fields.get(i)?.get(self.index)
    }

    /// Whether the `i`-th read path exists in the event (even if its value is `null`).
    pub fn has(&self, i: usize) -> bool {
        self.value(i).is_some()
    }

    pub fn is_null_or_missing(&self, i: usize) -> bool {
        matches!(self.value(i), None | Some(ValueRef::Null))
    }

    pub fn str(&self, i: usize) -> Option<&'a str> {
        match self.value(i)? {
            ValueRef::Text(s) => Some(s),
            _ => None,
        }
    }

    /// An object or array, as compact JSON text.
    pub fn json(&self, i: usize) -> Option<&'a str> {
        match self.value(i)? {
            ValueRef::Json(s) => Some(s),
            _ => None,
        }
    }

    pub fn bool(&self, i: usize) -> Option<bool> {
        match self.value(i)? {
            ValueRef::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// An integer, or a float without a fractional part.
    pub fn i64(&self, i: usize) -> Option<i64> {
        match self.value(i)? {
            ValueRef::Integer(n) => Some(n),
            ValueRef::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(f as i64),
            _ => None,
        }
    }

    pub fn f64(&self, i: usize) -> Option<f64> {
        match self.value(i)? {
            ValueRef::Integer(n) => Some(n as f64),
            ValueRef::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The whole event as JSON text (plans with `payload()` only).
    pub fn payload(&self) -> Option<&'a str> {
        (!self.batch.payloads.is_empty()).then(|| self.batch.payloads.get(self.index))
    }

    /// A host attribute (`stream.sequence`, `source`, ...), for plans with `attributes()`.
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.batch
            .attributes
            .get(self.index)?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Builds batches in the contract's form, for tests and native harnesses (the host does this for components).
#[derive(Default)]
pub struct BatchBuilder {
    ids: Vec<String>,
    times: Vec<i64>,
    fields: Vec<crate::output::ColumnBuilder>,
    payloads: Option<Vec<String>>,
    attributes: Vec<Vec<(String, String)>>,
}

impl BatchBuilder {
    /// A builder for events with `reads` read paths.
    pub fn new(reads: usize) -> Self {
        BatchBuilder {
            fields: (0..reads).map(|_| Default::default()).collect(),
            ..Default::default()
        }
    }

    /// Adds an event: its id, time and the values of the read paths (`None`: absent), in plan order.
    pub fn push(&mut self, id: &str, time_ms: i64, fields: &[Option<ValueRef<'_>>]) -> &mut Self {
        let row = self.times.len();
        self.ids.push(id.to_string());
        self.times.push(time_ms);
        for (column, value) in self.fields.iter_mut().zip(fields) {
            if let Some(value) = value {
                column.put(row, *value);
            }
        }
        self
    }

    /// Sets the payload of the last event pushed (every event then carries one).
    pub fn payload(&mut self, payload: &str) -> &mut Self {
        let payloads = self.payloads.get_or_insert_with(Vec::new);
        payloads.resize(self.times.len().saturating_sub(1), String::new());
        payloads.push(payload.to_string());
        self
    }

    /// Sets the attributes of the last event pushed.
    pub fn attributes(&mut self, attributes: Vec<(String, String)>) -> &mut Self {
        self.attributes
            .resize(self.times.len().saturating_sub(1), Vec::new());
        self.attributes.push(attributes);
        self
    }

    pub fn build(mut self) -> Batch {
        let len = self.times.len();
        Batch::from(wit::Batch {
            ids: Texts::from_strs(self.ids.iter().map(String::as_str)),
            times: self.times,
            fields: self.fields.into_iter().map(|c| c.finish(len)).collect(),
            payloads: match &mut self.payloads {
                Some(p) => {
                    p.resize(len, String::new());
                    Texts::from_strs(p.iter().map(String::as_str))
                }
                None => Texts::from_strs([]),
            },
            attributes: if self.attributes.is_empty() {
                self.attributes
            } else {
                self.attributes.resize(len, Vec::new());
                self.attributes
            },
        })
    }
}
