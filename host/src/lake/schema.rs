//! The lake's tables and their columns.
//!
//! | table | what | partitioned by |
//! |---|---|---|
//! | `bronze` | every event as received: raw text, source id, SSE id, stream sequence, ingest time | ingest time |
//! | `silver` | events kept by the chain, with the configured typed columns | event time |
//! | `gold_<name>` | rows emitted by an aggregate | window start |
//! | `quarantine_bronze` | what could not be read as an event (not JSON, not UTF-8, oversize) | ingest time |
//! | `quarantine_silver` | events a plugin quarantined (quality, plugin failures) | event time |
//! | `quarantine_gold` | events an aggregate could not count (late) | event time |
//! | `drops` | events dropped by a rule: which plugin, which rule | event time |
//!
//! Every table has `_seq` (the JetStream stream sequence): with the commit log it proves each event is in
//! its tables exactly once. Timestamps are microseconds UTC (several engines cannot read nanoseconds).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// A configured silver column: its name, the JSON path it comes from and its type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    /// Dotted JSON path (`meta.dt`, `length.new`); the event after every plugin's writes.
    pub path: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

/// Column types. Values that do not fit their column are stored as null and counted
/// (`weir_lake_type_mismatches_total`); the raw event is always in bronze.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Bool,
    /// RFC 3339 text, or a number of milliseconds since the epoch.
    Timestamp,
    /// RFC 3339 text, or a number of seconds since the epoch (Wikimedia's `timestamp` field).
    TimestampSeconds,
    /// Any value, as compact JSON text.
    Json,
}

impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::String | ColumnType::Json => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Timestamp | ColumnType::TimestampSeconds => timestamp(),
        }
    }
}

pub fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
}

/// The lake table an aggregate's rows go to: its `table` name, prefixed with `gold_` unless it already is
/// (`gold_wiki` stays `gold_wiki`, `user_sessions` becomes `gold_user_sessions`).
pub fn gold_table(table: &str) -> String {
    if table.starts_with("gold_") {
        table.to_string()
    } else {
        format!("gold_{table}")
    }
}

/// Which quarantine table an event goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Bronze,
    Silver,
    Gold,
}

impl Layer {
    pub fn quarantine_table(self) -> &'static str {
        match self {
            Layer::Bronze => "quarantine_bronze",
            Layer::Silver => "quarantine_silver",
            Layer::Gold => "quarantine_gold",
        }
    }
}

/// Weir's own text columns that hold a different value in (nearly) every row: ids and raw payloads. The
/// Parquet writer skips dictionaries and min/max statistics for them (see `lake::files`).
pub const DISTINCT_TEXT: &[&str] = &["_event_id", "source_id", "sse_id", "data", "event_id"];

fn field(name: &str, ty: DataType, nullable: bool) -> Field {
    Field::new(name, ty, nullable)
}

pub fn bronze() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("_seq", DataType::UInt64, false),
        field("source_id", DataType::Utf8, false),
        field("sse_id", DataType::Utf8, true),
        field("ingest_time", timestamp(), false),
        field("data", DataType::Utf8, false),
        field("rejected", DataType::Utf8, true),
        field("invalid_utf8", DataType::Boolean, false),
    ]))
}

/// The silver schema: system columns, then the configured ones.
pub fn silver(columns: &[ColumnSpec]) -> SchemaRef {
    let mut fields = vec![
        field("_seq", DataType::UInt64, false),
        field("_event_id", DataType::Utf8, false),
        field("_event_time", timestamp(), false),
        field("_ingest_time", timestamp(), true),
        // The plugin versions that produced the row (`filter@0.1.0,enrich@0.1.0,...`): lineage per row, and
        // nearly free with dictionary encoding.
        field("_chain", DataType::Utf8, false),
    ];
    fields.extend(columns.iter().map(|c| field(&c.name, c.ty.arrow(), true)));
    Arc::new(Schema::new(fields))
}

pub fn quarantine() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("_seq", DataType::UInt64, false),
        field("event_id", DataType::Utf8, true),
        field("stage", DataType::Utf8, false),
        field("plugin", DataType::Utf8, true),
        field("reason", DataType::Utf8, false),
        field(
            "failed_checks",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        field("data", DataType::Utf8, false),
        field("event_time", timestamp(), true),
        field("quarantined_at", timestamp(), false),
    ]))
}

pub fn drops() -> SchemaRef {
    Arc::new(Schema::new(vec![
        field("_seq", DataType::UInt64, false),
        field("event_id", DataType::Utf8, false),
        field("stage", DataType::Utf8, false),
        field("plugin", DataType::Utf8, false),
        field("rule", DataType::Utf8, false),
        field("event_time", timestamp(), false),
    ]))
}

/// Checks configured silver columns; the message names the column.
pub fn validate_columns(columns: &[ColumnSpec]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in columns.iter().enumerate() {
        if c.name.is_empty()
            || c.name.starts_with('_')
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            return Err(format!(
                "silver.columns[{i}]: name {:?} must be letters, digits and `_`, not starting with `_` (those \
                 are Weir's)",
                c.name
            ));
        }
        if c.name == "dt" || c.name == "hour" {
            return Err(format!(
                "silver.columns[{i}]: name {:?} is a partition key of the lake's paths (`dt=.../hour=...`), \
                 which readers with Hive partitioning would confuse with it: choose another name",
                c.name
            ));
        }
        if !seen.insert(&c.name) {
            return Err(format!(
                "silver.columns[{i}]: column {:?} is declared twice",
                c.name
            ));
        }
        crate::event::JsonPath::parse(&c.path)
            .map_err(|e| format!("silver.columns[{i}] ({}): path {:?}: {e}", c.name, c.path))?;
    }
    Ok(())
}
