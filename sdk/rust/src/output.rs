//! What a plugin answers: a verdict per event, field writes and rows, gathered into the contract's columnar
//! output. Plugins usually return one [`Outcome`] per event and let the SDK gather them; a plugin that
//! overrides `process_batch` builds its [`Output`] with an [`OutputBuilder`].

use crate::batch::{ValueRef, kind};
use crate::bindings::weir::transform::types as wit;
use crate::{Output, Quarantine, Row, Value, Verdict};

/// A write of one field: `plan.writes[field]` is set to `value`.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldWrite {
    pub field: u32,
    pub value: Value,
}

/// The fate of one event, and what to write into it when it is kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub writes: Vec<FieldWrite>,
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

/// Gathers verdicts, writes and rows into an [`Output`], event by event, in batch order.
#[derive(Default)]
pub struct OutputBuilder {
    verdicts: Vec<Verdict>,
    writes: Vec<ColumnBuilder>,
    rows: Vec<Row>,
}

impl OutputBuilder {
    pub fn with_capacity(events: usize) -> Self {
        OutputBuilder {
            verdicts: Vec::with_capacity(events),
            ..Default::default()
        }
    }

    /// Sets a field of the next event to be decided (call before its `keep`, `drop` or `quarantine`).
    pub fn set(&mut self, field: u32, value: ValueRef<'_>) -> &mut Self {
        let field = field as usize;
        if self.writes.len() <= field {
            self.writes.resize_with(field + 1, Default::default);
        }
        self.writes[field].put(self.verdicts.len(), value);
        self
    }

    pub fn keep(&mut self) -> &mut Self {
        self.verdicts.push(Verdict::Keep);
        self
    }

    pub fn drop(&mut self, rule: impl Into<String>) -> &mut Self {
        self.verdicts.push(Verdict::Drop(rule.into()));
        self
    }

    pub fn quarantine(
        &mut self,
        reason: impl Into<String>,
        failed_checks: Vec<String>,
    ) -> &mut Self {
        self.verdicts.push(Verdict::Quarantine(Quarantine {
            reason: reason.into(),
            failed_checks,
        }));
        self
    }

    /// The next event's outcome.
    pub fn push(&mut self, outcome: Outcome) -> &mut Self {
        for write in &outcome.writes {
            self.set(write.field, write.value.as_value_ref());
        }
        self.verdicts.push(outcome.verdict);
        self
    }

    pub fn row(&mut self, row: Row) -> &mut Self {
        self.rows.push(row);
        self
    }

    pub fn rows(&mut self, rows: impl IntoIterator<Item = Row>) -> &mut Self {
        self.rows.extend(rows);
        self
    }

    pub fn finish(self) -> Output {
        let len = self.verdicts.len();
        Output {
            writes: self.writes.into_iter().map(|c| c.finish(len)).collect(),
            verdicts: self.verdicts,
            rows: self.rows,
        }
    }
}

impl FromIterator<Outcome> for Output {
    fn from_iter<I: IntoIterator<Item = Outcome>>(outcomes: I) -> Self {
        let outcomes = outcomes.into_iter();
        let mut builder = OutputBuilder::with_capacity(outcomes.size_hint().0);
        for outcome in outcomes {
            builder.push(outcome);
        }
        builder.finish()
    }
}

impl Output {
    /// The output event by event, as the host reads it (tests).
    pub fn outcomes(&self) -> Vec<Outcome> {
        let columns: Vec<crate::batch::Column> = self
            .writes
            .iter()
            .cloned()
            .map(crate::batch::Column::from_wit)
            .collect();
        self.verdicts
            .iter()
            .enumerate()
            .map(|(i, verdict)| Outcome {
                verdict: verdict.clone(),
                writes: columns
                    .iter()
                    .enumerate()
                    .filter_map(|(field, column)| {
                        column.get(i).map(|v| FieldWrite {
                            field: field as u32,
                            value: Value::from(v),
                        })
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Builds one column, row by row. Rows never given a value are absent.
#[derive(Default, Debug)]
pub(crate) struct ColumnBuilder {
    kinds: Vec<u8>,
    integers: Vec<i64>,
    floats: Vec<f64>,
    bytes: Vec<u8>,
    /// Empty until the first text value; then one entry per row, plus the leading 0.
    offsets: Vec<u32>,
}

impl ColumnBuilder {
    /// Sets row `row` (rows are given in increasing order; setting the last row again replaces it).
    #[inline]
    pub(crate) fn put(&mut self, row: usize, value: ValueRef<'_>) {
        if self.kinds.len() != row {
            if self.kinds.len() == row + 1 {
                self.pop();
            }
            self.pad(row);
        }
        let code = match value {
            ValueRef::Null => kind::NULL,
            ValueRef::Boolean(_) => kind::BOOLEAN,
            ValueRef::Integer(_) => kind::INTEGER,
            ValueRef::Float(_) => kind::FLOAT,
            ValueRef::Text(_) => kind::TEXT,
            ValueRef::Json(_) => kind::JSON,
        };
        match value {
            ValueRef::Boolean(b) => self.int(i64::from(b)),
            ValueRef::Integer(i) => self.int(i),
            ValueRef::Float(f) => self.float(f),
            ValueRef::Text(s) | ValueRef::Json(s) => self.text(s),
            ValueRef::Null => {}
        }
        self.kinds.push(code);
        self.fill();
    }

    fn int(&mut self, value: i64) {
        if self.integers.is_empty() {
            self.integers.resize(self.kinds.len(), 0);
        }
        self.integers.push(value);
    }

    fn float(&mut self, value: f64) {
        if self.floats.is_empty() {
            self.floats.resize(self.kinds.len(), 0.0);
        }
        self.floats.push(value);
    }

    fn text(&mut self, value: &str) {
        if self.offsets.is_empty() {
            self.offsets.resize(self.kinds.len() + 1, 0);
        }
        self.bytes.extend_from_slice(value.as_bytes());
        self.offsets.push(self.bytes.len() as u32);
    }

    /// Brings the value lists in use to one entry per row, after `kinds` got its entry.
    fn fill(&mut self) {
        let rows = self.kinds.len();
        if !self.integers.is_empty() && self.integers.len() < rows {
            self.integers.push(0);
        }
        if !self.floats.is_empty() && self.floats.len() < rows {
            self.floats.push(0.0);
        }
        if !self.offsets.is_empty() && self.offsets.len() < rows + 1 {
            self.offsets.push(self.bytes.len() as u32);
        }
    }

    /// Absent rows up to `row`.
    fn pad(&mut self, row: usize) {
        while self.kinds.len() < row {
            self.kinds.push(kind::ABSENT);
            self.fill();
        }
    }

    fn pop(&mut self) {
        self.kinds.pop();
        let rows = self.kinds.len();
        self.integers.truncate(rows.min(self.integers.len()));
        self.floats.truncate(rows.min(self.floats.len()));
        if self.offsets.len() > rows + 1 {
            self.offsets.truncate(rows + 1);
            self.bytes.truncate(*self.offsets.last().unwrap() as usize);
        }
    }

    pub(crate) fn finish(mut self, rows: usize) -> wit::Column {
        self.pad(rows);
        wit::Column {
            kinds: self.kinds,
            integers: self.integers,
            floats: self.floats,
            text: wit::Strings {
                bytes: self.bytes,
                offsets: self.offsets,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fill_lazily_and_pad_absent_rows() {
        let mut c = ColumnBuilder::default();
        c.put(1, ValueRef::Integer(5));
        c.put(3, ValueRef::Text("ab"));
        c.put(3, ValueRef::Text("xyz"));
        let col = c.finish(5);
        assert_eq!(col.kinds, [0, 3, 0, 5, 0]);
        assert_eq!(col.integers, [0, 5, 0, 0, 0]);
        assert!(col.floats.is_empty());
        assert_eq!(col.text.offsets, [0, 0, 0, 0, 3, 3]);
        assert_eq!(col.text.bytes, b"xyz");
    }

    #[test]
    fn outcomes_round_trip_through_the_columns() {
        let outcomes = vec![
            Outcome::keep().set(1, "x"),
            Outcome::drop("bot"),
            Outcome::keep().set(0, 1.5).set(1, Value::Null),
        ];
        let output: Output = outcomes.clone().into_iter().collect();
        assert_eq!(output.outcomes(), outcomes);
    }
}
