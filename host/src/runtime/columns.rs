//! The contract's column-wise batches, host side: building columns, reading values out of them, checking the
//! columns a plugin returns, and cutting a batch in two (failure bisection).

use std::ops::Range;

use super::bindings::types::{Batch, Column, Strings};

/// What an event holds at a path (the codes of `column.kinds`, see `wit/weir.wit`).
pub mod kind {
    pub const ABSENT: u8 = 0;
    pub const NULL: u8 = 1;
    pub const BOOLEAN: u8 = 2;
    pub const INTEGER: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const TEXT: u8 = 5;
    pub const JSON: u8 = 6;
}

/// A JSON value borrowed from an event or a column. Objects and arrays are compact JSON text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(&'a str),
    Json(&'a str),
}

/// Builds many strings into one buffer.
#[derive(Debug)]
pub struct StringsBuilder {
    bytes: Vec<u8>,
    offsets: Vec<u32>,
}

impl StringsBuilder {
    pub fn with_capacity(strings: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(strings + 1);
        offsets.push(0);
        StringsBuilder {
            bytes: Vec::with_capacity(bytes),
            offsets,
        }
    }

    pub fn push(&mut self, s: &str) {
        self.bytes.extend_from_slice(s.as_bytes());
        self.offsets.push(self.bytes.len() as u32);
    }

    pub fn finish(self) -> Strings {
        Strings {
            bytes: self.bytes,
            offsets: self.offsets,
        }
    }

    /// No strings at all (`offsets` empty too), for the lists the contract sends empty when unused.
    pub fn empty() -> Strings {
        Strings {
            bytes: Vec::new(),
            offsets: Vec::new(),
        }
    }
}

/// Builds one column, one row after the other.
#[derive(Debug)]
pub struct ColumnBuilder {
    kinds: Vec<u8>,
    integers: Vec<i64>,
    floats: Vec<f64>,
    text: StringsBuilder,
    any_integer: bool,
    any_float: bool,
    any_text: bool,
}

impl ColumnBuilder {
    pub fn with_capacity(rows: usize) -> Self {
        ColumnBuilder {
            kinds: Vec::with_capacity(rows),
            integers: Vec::with_capacity(rows),
            floats: Vec::new(),
            text: StringsBuilder::with_capacity(rows, 0),
            any_integer: false,
            any_float: false,
            any_text: false,
        }
    }

    pub fn push(&mut self, value: Option<ValueRef<'_>>) {
        let (code, int, float, text) = match value {
            None => (kind::ABSENT, 0, 0.0, ""),
            Some(ValueRef::Null) => (kind::NULL, 0, 0.0, ""),
            Some(ValueRef::Boolean(b)) => (kind::BOOLEAN, i64::from(b), 0.0, ""),
            Some(ValueRef::Integer(i)) => (kind::INTEGER, i, 0.0, ""),
            Some(ValueRef::Float(f)) => (kind::FLOAT, 0, f, ""),
            Some(ValueRef::Text(s)) => (kind::TEXT, 0, 0.0, s),
            Some(ValueRef::Json(s)) => (kind::JSON, 0, 0.0, s),
        };
        self.any_integer |= matches!(code, kind::BOOLEAN | kind::INTEGER);
        self.any_text |= matches!(code, kind::TEXT | kind::JSON);
        if code == kind::FLOAT && !self.any_float {
            self.floats.resize(self.kinds.len(), 0.0);
            self.any_float = true;
        }
        if self.any_float {
            self.floats.push(float);
        }
        self.kinds.push(code);
        self.integers.push(int);
        self.text.push(text);
    }

    /// The column; value lists no row uses are sent empty.
    pub fn finish(mut self) -> Column {
        if !self.any_integer {
            self.integers = Vec::new();
        }
        let text = if self.any_text {
            self.text.finish()
        } else {
            StringsBuilder::empty()
        };
        Column {
            kinds: self.kinds,
            integers: self.integers,
            floats: self.floats,
            text,
        }
    }
}

/// A column that passed [`check_column`]: its text validated as UTF-8 once, so reading rows is cheap.
#[derive(Debug)]
pub struct CheckedColumn<'a> {
    column: &'a Column,
    text: &'a str,
}

impl<'a> CheckedColumn<'a> {
    pub fn rows(&self) -> usize {
        self.column.kinds.len()
    }

    /// The value of row `row`; `None` when the row is absent (not written).
    pub fn get(&self, row: usize) -> Option<ValueRef<'a>> {
        let c = self.column;
        let text = || {
            let (start, end) = (
                c.text.offsets[row] as usize,
                c.text.offsets[row + 1] as usize,
            );
            &self.text[start..end]
        };
        Some(match c.kinds[row] {
            kind::NULL => ValueRef::Null,
            kind::BOOLEAN => ValueRef::Boolean(c.integers[row] != 0),
            kind::INTEGER => ValueRef::Integer(c.integers[row]),
            kind::FLOAT => ValueRef::Float(c.floats[row]),
            kind::TEXT => ValueRef::Text(text()),
            kind::JSON => ValueRef::Json(text()),
            _ => return None,
        })
    }
}

/// Checks a column a plugin returned against the contract: `rows` rows, known kinds, value lists that are
/// empty or full and hold what the kinds need, offsets in order, UTF-8 text cut at character boundaries.
pub fn check_column(column: &Column, rows: usize) -> Result<CheckedColumn<'_>, String> {
    if column.kinds.len() != rows {
        return Err(format!(
            "has {} kinds for {rows} events",
            column.kinds.len()
        ));
    }
    let full_or_empty = |len: usize, full: usize| len == 0 || len == full;
    if !full_or_empty(column.integers.len(), rows)
        || !full_or_empty(column.floats.len(), rows)
        || !full_or_empty(column.text.offsets.len(), rows + 1)
    {
        return Err("has a value list that is neither empty nor one entry per event".into());
    }
    let text = std::str::from_utf8(&column.text.bytes)
        .map_err(|e| format!("holds text that is not UTF-8 ({e})"))?;
    let offsets = &column.text.offsets;
    if offsets.first().is_some_and(|&o| o != 0)
        || offsets.windows(2).any(|w| w[0] > w[1])
        || offsets.last().is_some_and(|&o| o as usize > text.len())
        || offsets.iter().any(|&o| !text.is_char_boundary(o as usize))
    {
        return Err("has text offsets out of order, out of bounds or inside a character".into());
    }
    for (row, &code) in column.kinds.iter().enumerate() {
        let missing = match code {
            kind::ABSENT | kind::NULL => false,
            kind::BOOLEAN | kind::INTEGER => column.integers.is_empty(),
            kind::FLOAT => column.floats.is_empty(),
            kind::TEXT | kind::JSON => offsets.is_empty(),
            other => return Err(format!("row {row} has unknown kind {other}")),
        };
        if missing {
            return Err(format!(
                "row {row} has kind {code} but the column has no values of that kind"
            ));
        }
    }
    Ok(CheckedColumn { column, text })
}

/// Rows `range` of a batch, as a batch of their own (a failed call is retried on halves of its batch).
pub fn slice_batch(batch: &Batch, range: Range<usize>) -> Batch {
    Batch {
        ids: slice_strings(&batch.ids, range.clone()),
        times: batch.times[range.clone()].to_vec(),
        fields: batch
            .fields
            .iter()
            .map(|c| slice_column(c, range.clone()))
            .collect(),
        payloads: slice_strings(&batch.payloads, range.clone()),
        attributes: if batch.attributes.is_empty() {
            Vec::new()
        } else {
            batch.attributes[range].to_vec()
        },
    }
}

fn slice_column(column: &Column, range: Range<usize>) -> Column {
    let part = |v: &[i64]| {
        if v.is_empty() {
            Vec::new()
        } else {
            v[range.clone()].to_vec()
        }
    };
    Column {
        kinds: column.kinds[range.clone()].to_vec(),
        integers: part(&column.integers),
        floats: if column.floats.is_empty() {
            Vec::new()
        } else {
            column.floats[range.clone()].to_vec()
        },
        text: slice_strings(&column.text, range),
    }
}

fn slice_strings(strings: &Strings, range: Range<usize>) -> Strings {
    if strings.offsets.len() <= range.end {
        return Strings {
            bytes: Vec::new(),
            offsets: Vec::new(),
        };
    }
    let (start, end) = (
        strings.offsets[range.start] as usize,
        strings.offsets[range.end] as usize,
    );
    Strings {
        bytes: strings.bytes[start..end].to_vec(),
        offsets: strings.offsets[range.start..=range.end]
            .iter()
            .map(|o| o - start as u32)
            .collect(),
    }
}

/// The bytes a column takes, for output limits.
pub fn column_size(column: &Column) -> u64 {
    (column.kinds.len()
        + column.integers.len() * 8
        + column.floats.len() * 8
        + column.text.bytes.len()
        + column.text.offsets.len() * 4) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_reads_and_slices_columns() {
        let mut b = ColumnBuilder::with_capacity(4);
        b.push(Some(ValueRef::Text("héllo")));
        b.push(None);
        b.push(Some(ValueRef::Float(1.5)));
        b.push(Some(ValueRef::Boolean(true)));
        let column = b.finish();
        let checked = check_column(&column, 4).unwrap();
        assert_eq!(checked.get(0), Some(ValueRef::Text("héllo")));
        assert_eq!(checked.get(1), None);
        assert_eq!(checked.get(2), Some(ValueRef::Float(1.5)));
        assert_eq!(checked.get(3), Some(ValueRef::Boolean(true)));
        let half = slice_column(&column, 2..4);
        let checked = check_column(&half, 2).unwrap();
        assert_eq!(checked.get(0), Some(ValueRef::Float(1.5)));
        assert_eq!(half.text.bytes, b"");
    }

    #[test]
    fn unused_value_lists_are_empty() {
        let mut b = ColumnBuilder::with_capacity(2);
        b.push(Some(ValueRef::Null));
        b.push(None);
        let column = b.finish();
        assert!(column.integers.is_empty() && column.floats.is_empty());
        assert!(column.text.offsets.is_empty());
    }

    #[test]
    fn refuses_broken_columns() {
        let mut bad = ColumnBuilder::with_capacity(1);
        bad.push(Some(ValueRef::Text("ab")));
        let mut column = bad.finish();
        column.text.offsets[1] = 9;
        assert!(check_column(&column, 1).is_err());
        column.text.offsets[1] = 2;
        column.kinds[0] = 9;
        assert!(
            check_column(&column, 1)
                .unwrap_err()
                .contains("unknown kind")
        );
        column.kinds[0] = kind::FLOAT;
        assert!(check_column(&column, 1).is_err());
        assert!(check_column(&column, 2).is_err());
    }
}
