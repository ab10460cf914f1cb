//! What the pipeline hands the lake, and how it becomes Arrow columns: built in bulk, straight from the host's
//! events (their slots), never by parsing JSON text again.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::schema::{self, ColumnSpec, ColumnType, Layer};
use crate::event::{Event, FieldValue, Slot};
use crate::runtime::types::Value;

/// A message as it came off the stream (one bronze row).
#[derive(Clone, Debug)]
pub struct Received {
    pub seq: u64,
    /// `Nats-Msg-Id`: the source event id.
    pub source_id: String,
    pub sse_id: Option<String>,
    pub ingest_ms: i64,
    pub data: bytes::Bytes,
    /// Why the event could not be read (ingest or host parse), if it could not.
    pub rejected: Option<String>,
    pub invalid_utf8: bool,
}

/// An event a stage quarantined, or input that never became an event.
#[derive(Clone, Debug)]
pub struct QuarantineRow {
    pub layer: Layer,
    pub seq: u64,
    pub event_id: Option<String>,
    /// `parse`, `ingest`, `pipeline`, or the stage's name (`quality`, `gold_wiki`).
    pub stage: String,
    /// The plugin (`name@version`) when a plugin quarantined it.
    pub plugin: Option<String>,
    pub reason: String,
    pub failed_checks: Vec<String>,
    /// The original data.
    pub data: String,
    pub event_ms: Option<i64>,
    pub at_ms: i64,
}

#[derive(Clone, Debug)]
pub struct DropRow {
    pub seq: u64,
    pub event_id: String,
    pub stage: String,
    pub plugin: String,
    pub rule: String,
    pub event_ms: i64,
}

/// A row an aggregate emitted.
#[derive(Clone, Debug)]
pub struct GoldRow {
    pub table: String,
    /// `name@version` of the aggregate.
    pub plugin: String,
    pub columns: Vec<(String, Value)>,
}

/// `dt=YYYY-MM-DD/hour=HH` of a time in ms.
pub fn partition(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format("dt=%Y-%m-%d/hour=%H").to_string(),
        None => "dt=1970-01-01/hour=00".into(),
    }
}

/// Rows grouped by partition, in arrival order within each.
pub fn by_partition<'a, T>(
    rows: impl IntoIterator<Item = &'a T>,
    time: impl Fn(&T) -> i64,
) -> BTreeMap<String, Vec<&'a T>>
where
    T: 'a,
{
    // Grouped by hour number (rows of a batch nearly always share one or two), named once per group.
    let mut hours: BTreeMap<i64, Vec<&T>> = BTreeMap::new();
    for row in rows {
        hours
            .entry(time(row).div_euclid(3_600_000))
            .or_default()
            .push(row);
    }
    // Merged, not collected: hours beyond the calendar's range all name the same partition, and a plain
    // collect would keep only the last of their groups.
    let mut partitions: BTreeMap<String, Vec<&T>> = BTreeMap::new();
    for (hour, group) in hours {
        partitions
            .entry(partition(hour.saturating_mul(3_600_000)))
            .or_default()
            .extend(group);
    }
    partitions
}

fn micros(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

pub fn bronze_batch(rows: &[&Received]) -> RecordBatch {
    let mut seq = UInt64Builder::with_capacity(rows.len());
    let mut source_id = strings(rows, |r| r.source_id.len());
    let mut sse_id = strings(rows, |r| r.sse_id.as_ref().map_or(0, |s| s.len()));
    let mut ingest = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("+00:00");
    let mut data = strings(rows, |r| r.data.len());
    let mut rejected = strings(rows, |r| r.rejected.as_ref().map_or(0, |s| s.len()));
    let mut invalid = BooleanBuilder::with_capacity(rows.len());
    for r in rows {
        seq.append_value(r.seq);
        source_id.append_value(&r.source_id);
        sse_id.append_option(r.sse_id.as_deref());
        ingest.append_value(micros(r.ingest_ms));
        // Nearly always valid: the fast check, and the lossy copy only for the rest (flagged `invalid_utf8`).
        match std::str::from_utf8(&r.data) {
            Ok(text) => data.append_value(text),
            Err(_) => data.append_value(String::from_utf8_lossy(&r.data)),
        }
        rejected.append_option(r.rejected.as_deref());
        invalid.append_value(r.invalid_utf8);
    }
    batch(
        schema::bronze(),
        vec![
            Arc::new(seq.finish()),
            Arc::new(source_id.finish()),
            Arc::new(sse_id.finish()),
            Arc::new(ingest.finish()),
            Arc::new(data.finish()),
            Arc::new(rejected.finish()),
            Arc::new(invalid.finish()),
        ],
    )
}

/// A string column's builder with room for exactly these rows' values. A table's small batches wait in memory
/// until their partition has rows enough for a Parquet writer (a quarantine table may wait a whole epoch, a
/// few rows per batch), and `StringBuilder::new()` reserves room for 1,024 values: a quarantine batch of one
/// row held ~40 kB, 11 MB of the pipeline's peak heap at a million events.
fn strings<T>(rows: &[T], len: impl Fn(&T) -> usize) -> StringBuilder {
    StringBuilder::with_capacity(rows.len(), rows.iter().map(len).sum())
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema, columns).expect("columns built to their schema")
}

/// Silver columns resolved against a layout: which slot each configured column reads.
#[derive(Clone, Debug)]
pub struct SilverColumns {
    pub specs: Vec<ColumnSpec>,
    pub slots: Vec<Slot>,
    pub schema: SchemaRef,
}

/// Counts values that did not fit their silver column (stored as null).
#[derive(Debug, Default)]
pub struct Mismatches(pub AtomicU64);

impl SilverColumns {
    pub fn new(specs: Vec<ColumnSpec>, layout: &crate::event::Layout) -> Result<Self, String> {
        let slots = specs
            .iter()
            .map(|c| {
                layout.slot(&c.path).ok_or_else(|| {
                    format!(
                        "silver column {}: path {} is not in the event layout",
                        c.name, c.path
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(SilverColumns {
            schema: schema::silver(&specs),
            specs,
            slots,
        })
    }

    /// The silver rows of `events` (all from one partition), with the chain's lineage.
    pub fn batch(&self, events: &[&Event], chain: &str, mismatches: &Mismatches) -> RecordBatch {
        let n = events.len();
        let mut seq = UInt64Builder::with_capacity(n);
        let mut id = StringBuilder::with_capacity(n, n * 36);
        let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
        let mut ingest = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
        let mut lineage = StringBuilder::with_capacity(n, n * chain.len());
        for e in events {
            seq.append_value(e.seq);
            id.append_value(&e.id);
            time.append_value(micros(e.time_ms));
            ingest.append_option((e.ingest_ms > 0).then(|| micros(e.ingest_ms)));
            lineage.append_value(chain);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(seq.finish()),
            Arc::new(id.finish()),
            Arc::new(time.finish()),
            Arc::new(ingest.finish()),
            Arc::new(lineage.finish()),
        ];
        let mut wrong = 0u64;
        for (spec, &slot) in self.specs.iter().zip(&self.slots) {
            columns.push(column(spec.ty, events, slot, &mut wrong));
        }
        if wrong > 0 {
            mismatches.0.fetch_add(wrong, Ordering::Relaxed);
        }
        batch(self.schema.clone(), columns)
    }
}

/// One typed column from a slot of every event.
fn column<'a>(ty: ColumnType, events: &[&'a Event], slot: Slot, wrong: &mut u64) -> ArrayRef {
    let n = events.len();
    macro_rules! fill {
        ($builder:expr, $convert:expr) => {{
            let mut b = $builder;
            for e in events {
                match e.field(slot) {
                    None | Some(FieldValue::Null) => b.append_null(),
                    Some(v) => match $convert(e, v) {
                        Some(x) => b.append_value(x),
                        None => {
                            *wrong += 1;
                            b.append_null()
                        }
                    },
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match ty {
        ColumnType::String => fill!(
            StringBuilder::with_capacity(n, n * 16),
            |e: &'a Event, v: &'a FieldValue| match v {
                FieldValue::Text(t) => Some(Cow::Borrowed(e.text(t))),
                FieldValue::Int(i) => Some(Cow::Owned(i.to_string())),
                FieldValue::Float(f) => Some(Cow::Owned(f.to_string())),
                FieldValue::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
                _ => None,
            }
        ),
        ColumnType::Json => fill!(
            StringBuilder::with_capacity(n, n * 16),
            |e: &Event, v: &FieldValue| match v {
                FieldValue::Text(t) =>
                    Some(serde_json::Value::String(e.text(t).to_string()).to_string()),
                FieldValue::Json(t) => Some(e.text(t).to_string()),
                FieldValue::Int(i) => Some(i.to_string()),
                FieldValue::Float(f) => Some(f.to_string()),
                FieldValue::Bool(b) => Some(b.to_string()),
                FieldValue::Null => None,
            }
        ),
        ColumnType::Int64 => fill!(
            Int64Builder::with_capacity(n),
            |_: &Event, v: &FieldValue| match v {
                FieldValue::Int(i) => Some(*i),
                FieldValue::Float(f) => whole(*f),
                _ => None,
            }
        ),
        ColumnType::Float64 => fill!(
            Float64Builder::with_capacity(n),
            |_: &Event, v: &FieldValue| match v {
                FieldValue::Int(i) => Some(*i as f64),
                FieldValue::Float(f) => Some(*f),
                _ => None,
            }
        ),
        ColumnType::Bool => fill!(
            BooleanBuilder::with_capacity(n),
            |_: &Event, v: &FieldValue| match v {
                FieldValue::Bool(b) => Some(*b),
                _ => None,
            }
        ),
        ColumnType::Timestamp | ColumnType::TimestampSeconds => {
            let scale = if ty == ColumnType::Timestamp { 1 } else { 1000 };
            fill!(
                TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00"),
                |e: &Event, v: &FieldValue| match v {
                    FieldValue::Text(t) => crate::event::parse_rfc3339_ms(e.text(t)).map(micros),
                    FieldValue::Int(i) => Some(micros(i.saturating_mul(scale))),
                    FieldValue::Float(f) => Some(micros((*f * scale as f64) as i64)),
                    _ => None,
                }
            )
        }
    }
}

pub fn quarantine_batch(rows: &[&QuarantineRow]) -> RecordBatch {
    let n = rows.len();
    let mut seq = UInt64Builder::with_capacity(n);
    let mut id = strings(rows, |r| r.event_id.as_ref().map_or(0, |s| s.len()));
    let mut stage = strings(rows, |r| r.stage.len());
    let mut plugin = strings(rows, |r| r.plugin.as_ref().map_or(0, |s| s.len()));
    let mut reason = strings(rows, |r| r.reason.len());
    let failed: Vec<&String> = rows.iter().flat_map(|r| &r.failed_checks).collect();
    let mut checks = ListBuilder::with_capacity(strings(&failed, |c| c.len()), n);
    let mut data = strings(rows, |r| r.data.len());
    let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
    let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
    for r in rows {
        seq.append_value(r.seq);
        id.append_option(r.event_id.as_deref());
        stage.append_value(&r.stage);
        plugin.append_option(r.plugin.as_deref());
        reason.append_value(&r.reason);
        for c in &r.failed_checks {
            checks.values().append_value(c);
        }
        checks.append(true);
        data.append_value(&r.data);
        time.append_option(r.event_ms.map(micros));
        at.append_value(micros(r.at_ms));
    }
    batch(
        schema::quarantine(),
        vec![
            Arc::new(seq.finish()),
            Arc::new(id.finish()),
            Arc::new(stage.finish()),
            Arc::new(plugin.finish()),
            Arc::new(reason.finish()),
            Arc::new(checks.finish()),
            Arc::new(data.finish()),
            Arc::new(time.finish()),
            Arc::new(at.finish()),
        ],
    )
}

pub fn drops_batch(rows: &[&DropRow]) -> RecordBatch {
    let n = rows.len();
    let mut seq = UInt64Builder::with_capacity(n);
    let mut id = strings(rows, |r| r.event_id.len());
    let mut stage = strings(rows, |r| r.stage.len());
    let mut plugin = strings(rows, |r| r.plugin.len());
    let mut rule = strings(rows, |r| r.rule.len());
    let mut time = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
    for r in rows {
        seq.append_value(r.seq);
        id.append_value(&r.event_id);
        stage.append_value(&r.stage);
        plugin.append_value(&r.plugin);
        rule.append_value(&r.rule);
        time.append_value(micros(r.event_ms));
    }
    batch(
        schema::drops(),
        vec![
            Arc::new(seq.finish()),
            Arc::new(id.finish()),
            Arc::new(stage.finish()),
            Arc::new(plugin.finish()),
            Arc::new(rule.finish()),
            Arc::new(time.finish()),
        ],
    )
}

/// The Arrow type of a gold column, from its values: the first non-null type decides (integers that meet a
/// float become floats); `window_start`, `window_end` and `*_time` columns are timestamps (ms in the row).
/// `None` while every value is null: the column is written once a value shows its type.
pub fn gold_type(name: &str, values: &[&Value]) -> Option<DataType> {
    if name == "window_start" || name == "window_end" || name.ends_with("_time") {
        return Some(schema::timestamp());
    }
    let mut ty: Option<DataType> = None;
    for v in values {
        let t = match v {
            Value::Null => continue,
            Value::Boolean(_) => DataType::Boolean,
            Value::Integer(_) => DataType::Int64,
            Value::Float(_) => DataType::Float64,
            Value::Text(_) | Value::Json(_) => DataType::Utf8,
        };
        ty = Some(match (ty, t) {
            (None, t) => t,
            (Some(DataType::Int64), DataType::Float64)
            | (Some(DataType::Float64), DataType::Int64) => DataType::Float64,
            (Some(a), b) if a == b => a,
            _ => DataType::Utf8,
        });
    }
    ty
}

/// A gold row's value of column `name`, if it has one.
fn gold_field<'r>(row: &'r GoldRow, name: &str) -> Option<&'r Value> {
    row.columns.iter().find(|(c, _)| c == name).map(|(_, v)| v)
}

/// Gold rows (all of one table and partition) as a batch with the given column types (every row's columns
/// are looked up by name; missing ones are null).
pub fn gold_batch(rows: &[&GoldRow], types: &[(String, DataType)]) -> RecordBatch {
    let n = rows.len();
    let mut fields = Vec::with_capacity(types.len() + 1);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(types.len() + 1);
    let value = |row: &GoldRow, name: &str| -> Option<Value> { gold_field(row, name).cloned() };
    for (name, ty) in types {
        fields.push(Field::new(name, ty.clone(), true));
        let array: ArrayRef = match ty {
            DataType::Timestamp(..) => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
                for r in rows {
                    b.append_option(match value(r, name) {
                        Some(Value::Integer(ms)) => Some(micros(ms)),
                        Some(Value::Float(ms)) => Some(micros(ms as i64)),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            DataType::Int64 => {
                let mut b = Int64Builder::with_capacity(n);
                for r in rows {
                    b.append_option(match value(r, name) {
                        Some(Value::Integer(i)) => Some(i),
                        // A whole number a plugin gave as a float (JavaScript has no other; a sum that met
                        // `-0`), as silver's integer columns take it.
                        Some(Value::Float(f)) => whole(f),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            DataType::Float64 => {
                let mut b = Float64Builder::with_capacity(n);
                for r in rows {
                    b.append_option(match value(r, name) {
                        Some(Value::Integer(i)) => Some(i as f64),
                        Some(Value::Float(f)) => Some(f),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            DataType::Boolean => {
                let mut b = BooleanBuilder::with_capacity(n);
                for r in rows {
                    b.append_option(match value(r, name) {
                        Some(Value::Boolean(v)) => Some(v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = strings(rows, |r| match gold_field(r, name) {
                    Some(Value::Text(s) | Value::Json(s)) => s.len(),
                    _ => 0,
                });
                for r in rows {
                    b.append_option(match value(r, name) {
                        Some(Value::Text(s)) | Some(Value::Json(s)) => Some(s),
                        Some(Value::Null) | None => None,
                        Some(other) => crate::event::from_wit_value(other)
                            .ok()
                            .map(|v| v.to_string()),
                    });
                }
                Arc::new(b.finish())
            }
        };
        columns.push(array);
    }
    fields.push(Field::new("_plugin", DataType::Utf8, false));
    let mut plugin = strings(rows, |r| r.plugin.len());
    for r in rows {
        plugin.append_value(&r.plugin);
    }
    columns.push(Arc::new(plugin.finish()));
    batch(Arc::new(Schema::new(fields)), columns)
}

/// A float that is a whole number in the i64 range, as an integer column takes it (JavaScript plugins and
/// JSON writers give whole numbers as floats).
fn whole(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silver_values_fit_their_columns_or_are_counted_as_null() {
        use crate::event::{EventShape, JsonPath, Layout, Parser};
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
        let specs: Vec<ColumnSpec> = [
            ("s", ColumnType::String),
            ("i", ColumnType::Int64),
            ("f", ColumnType::Float64),
            ("b", ColumnType::Bool),
            ("t", ColumnType::Timestamp),
            ("ts", ColumnType::TimestampSeconds),
            ("j", ColumnType::Json),
        ]
        .into_iter()
        .map(|(name, ty)| ColumnSpec {
            name: name.into(),
            path: name.into(),
            ty,
        })
        .collect();
        let reads: Vec<JsonPath> = specs
            .iter()
            .map(|c| JsonPath::parse(&c.path).unwrap())
            .collect();
        let layout = Arc::new(Layout::new(&EventShape::default(), &reads, &[]).unwrap());
        let parser = Parser::new(layout.clone());
        let columns = SilverColumns::new(specs, &layout).unwrap();
        let events: Vec<Event> = [
            // Every value fits.
            r#"{"s":"a\"b","i":7,"f":1.5,"b":true,"t":"2025-01-01T00:00:01Z","ts":1735689601,"j":{"k":[1]}}"#,
            // Other fitting forms: numbers and booleans as text, a whole float as an integer, milliseconds.
            r#"{"s":12,"i":3.0,"f":2,"b":false,"t":1735689601000,"ts":1.5,"j":"x"}"#,
            // Absent and null values are null, not mismatches.
            r#"{"s":null,"i":null}"#,
            // Values that do not fit: six mismatches (a null is not one).
            r#"{"s":{"o":1},"i":"x","f":"y","b":1,"t":"not a time","ts":true,"j":null}"#,
        ]
        .iter()
        .map(|text| parser.parse(text.to_string(), 0).unwrap())
        .collect();
        let refs: Vec<&Event> = events.iter().collect();
        let mismatches = Mismatches::default();
        let batch = columns.batch(&refs, "chain@1", &mismatches);
        assert_eq!(mismatches.0.load(Ordering::Relaxed), 6, "j: null is null");
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let s = column("s");
        let s = s.as_string::<i32>();
        assert_eq!((s.value(0), s.value(1)), ("a\"b", "12"));
        assert!(s.is_null(2) && s.is_null(3));
        let i = column("i");
        let i = i.as_primitive::<Int64Type>();
        assert_eq!((i.value(0), i.value(1)), (7, 3));
        assert!(i.is_null(2) && i.is_null(3));
        let f = column("f");
        let f = f.as_primitive::<Float64Type>();
        assert_eq!((f.value(0), f.value(1)), (1.5, 2.0));
        assert!(f.is_null(3));
        let b = column("b");
        let b = b.as_boolean();
        assert!(b.value(0) && !b.value(1) && b.is_null(3));
        let t = column("t");
        let t = t.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            (t.value(0), t.value(1)),
            (1_735_689_601_000_000, 1_735_689_601_000_000)
        );
        assert!(t.is_null(3));
        let ts = column("ts");
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            (ts.value(0), ts.value(1)),
            (1_735_689_601_000_000, 1_500_000)
        );
        assert!(ts.is_null(3));
        let j = column("j");
        let j = j.as_string::<i32>();
        assert_eq!((j.value(0), j.value(1)), (r#"{"k":[1]}"#, r#""x""#));
        assert!(j.is_null(2) && j.is_null(3));
        assert_eq!(batch.num_rows(), 4);
    }

    #[test]
    fn partitions_are_hive_style_by_hour() {
        assert_eq!(
            partition(1_767_225_600_000 + 3_600_000 * 5 + 59_000),
            "dt=2026-01-01/hour=05"
        );
        let times = [10i64, 20, 3_600_000 + 1, 30];
        let groups = by_partition(times.iter(), |t| *t);
        assert_eq!(groups["dt=1970-01-01/hour=00"], [&10, &20, &30]);
        assert_eq!(groups["dt=1970-01-01/hour=01"], [&3_600_001]);
        // Times beyond the calendar share a partition; none of them is lost.
        let times = [i64::MAX, 5, i64::MIN];
        let groups = by_partition(times.iter(), |t| *t);
        assert_eq!(groups.values().map(Vec::len).sum::<usize>(), 3);
    }

    #[test]
    fn an_integer_gold_column_takes_whole_floats() {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        let row = |v: Value| GoldRow {
            table: "gold_t".into(),
            plugin: "p@1".into(),
            columns: vec![("n".into(), v)],
        };
        let rows = [
            row(Value::Integer(3)),
            row(Value::Float(4.0)),
            row(Value::Float(-0.0)),
            row(Value::Float(4.5)),
        ];
        let batch = gold_batch(
            &rows.iter().collect::<Vec<_>>(),
            &[("n".to_string(), DataType::Int64)],
        );
        let n = batch
            .column_by_name("n")
            .unwrap()
            .as_primitive::<arrow_array::types::Int64Type>();
        assert_eq!(
            (0..4)
                .map(|i| n.is_valid(i).then(|| n.value(i)))
                .collect::<Vec<_>>(),
            [Some(3), Some(4), Some(0), None]
        );
    }

    #[test]
    fn gold_types_follow_values() {
        assert_eq!(
            gold_type("x", &[&Value::Integer(1), &Value::Float(1.5)]),
            Some(DataType::Float64)
        );
        assert_eq!(
            gold_type("x", &[&Value::Null, &Value::Boolean(true)]),
            Some(DataType::Boolean)
        );
        assert_eq!(
            gold_type("window_start", &[&Value::Integer(1)]),
            Some(schema::timestamp())
        );
        assert_eq!(gold_type("x", &[&Value::Null]), None);
    }
}
