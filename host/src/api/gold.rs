//! `GET /api/v1/gold/{table}`: rows of a gold table whose window starts in `[from, to)`, filtered by equality
//! on any other query parameter (`?wiki=enwiki`, `?title=Main_Page`): per-wiki or per-page counts for a
//! window. By default from the newest rows, kept in memory (`Recent::GOLD_ROWS` per table, answered in
//! microseconds, newest first), with `dropped: true` when memory has let go of rows of windows from `from`
//! on; with `source=lake`, from the committed Parquet files, for any window (oldest first). Both give times
//! as milliseconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{Field, Schema};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Map, json};

use super::{AppState, error, query_limit, query_time};
use crate::lake::schema::gold_table;
use crate::lake::store::Store;
use crate::lake::{log, read};

/// Query parameters that are not column filters.
const PARAMETERS: [&str; 4] = ["from", "to", "limit", "source"];

pub(super) async fn gold(
    State(state): State<AppState>,
    UrlPath(table): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (from, to, limit) = match (
        query_time(&q, "from"),
        query_time(&q, "to"),
        query_limit(&q, 1000),
    ) {
        (Ok(f), Ok(t), Ok(limit)) => (f.unwrap_or(i64::MIN), t.unwrap_or(i64::MAX), limit),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    if from >= to {
        return error(
            StatusCode::BAD_REQUEST,
            format!("from={from} is not before to={to}: no window starts in that range"),
        );
    }
    let filters: Vec<Filter> = q
        .iter()
        .filter(|(k, _)| !PARAMETERS.contains(&k.as_str()))
        .map(|(k, v)| Filter::new(k, v))
        .collect();
    let table = gold_table(&table);
    match q.get("source").map(String::as_str) {
        None | Some("memory") => from_memory(&state, &table, from, to, limit, &filters),
        Some("lake") => match &state.lake {
            Some(store) => from_lake(&state, store, &table, from, to, limit, filters).await,
            None => error(StatusCode::NOT_FOUND, "this process has no lake to read"),
        },
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "source={other:?}: use `memory` (the default: the newest rows) or `lake` (committed rows, any window)"
            ),
        ),
    }
}

/// `column=value`: text columns match the text, others its JSON (`?events=3`, `?bot=false`).
struct Filter {
    column: String,
    text: String,
    json: serde_json::Value,
}

impl Filter {
    /// `value` as JSON if it is JSON, else as text.
    fn new(column: &str, value: &str) -> Self {
        Filter {
            column: column.to_string(),
            text: value.to_string(),
            json: serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_string())),
        }
    }

    fn matches(&self, row: &Map<String, serde_json::Value>) -> bool {
        match row.get(&self.column) {
            Some(serde_json::Value::String(s)) => *s == self.text,
            Some(value) => *value == self.json,
            // The lake's JSON leaves nulls out.
            None => self.json.is_null(),
        }
    }
}

fn from_memory(
    state: &AppState,
    table: &str,
    from: i64,
    to: i64,
    limit: usize,
    filters: &[Filter],
) -> Response {
    let recent = state.shared.recent.lock().expect("not poisoned");
    let Some(rows) = recent.gold.get(table) else {
        drop(recent);
        return no_rows_yet(state, table, "memory");
    };
    let matched: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| (from..to).contains(&r.window_start()))
        .filter(|r| {
            filters
                .iter()
                .all(|f| r.column_is(&f.column, &f.text, &f.json))
        })
        .rev()
        .take(limit)
        .map(|r| r.to_json())
        .collect();
    // Memory keeps the newest rows of each table: if it dropped any of a window at or after `from`, this
    // answer misses rows (a window over pages alone has more rows than are kept, by default).
    let dropped = recent
        .gold_dropped
        .get(table)
        .is_some_and(|&latest| latest >= from);
    let mut answer =
        json!({ "table": table, "source": "memory", "dropped": dropped, "rows": matched });
    if dropped {
        answer["hint"] = json!(format!(
            "memory keeps the newest {} rows of each table (`api.recent_gold_rows`) and has dropped rows of \
             windows from `from` on: `source=lake` reads every committed row",
            recent.gold_rows
        ));
    }
    Json(answer).into_response()
}

async fn from_lake(
    state: &AppState,
    store: &Store,
    table: &str,
    from: i64,
    to: i64,
    limit: usize,
    filters: Vec<Filter>,
) -> Response {
    let unreadable = |e: anyhow::Error| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read gold table {table} from the lake: {e:#}"),
        )
    };
    let records = match log::all_records(store).await {
        Ok(records) if records.iter().any(|r| r.tables.contains_key(table)) => records,
        Ok(_) => return no_rows_yet(state, table, "lake"),
        Err(e) => return unreadable(e),
    };
    // Decoding Parquet and writing JSON is CPU work: on a blocking thread, so that a large answer does not
    // hold one of the runtime's workers, which also carry the commits and the NATS connection.
    let (runtime, store, name) = (
        tokio::runtime::Handle::current(),
        store.clone(),
        table.to_string(),
    );
    let read = tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        runtime
            .block_on(read::query(
                &store,
                &records,
                &name,
                from,
                to,
                usize::MAX,
                |batch| {
                    for row in json_rows(batch)? {
                        if rows.len() == limit {
                            return Ok(false);
                        }
                        if filters.iter().all(|f| f.matches(&row)) {
                            rows.push(serde_json::Value::Object(row));
                        }
                    }
                    Ok(rows.len() < limit)
                },
            ))
            .map(|_| rows)
    })
    .await;
    match read {
        Ok(Ok(rows)) => {
            Json(json!({ "table": table, "source": "lake", "rows": rows })).into_response()
        }
        Ok(Err(e)) => unreadable(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading gold table {table} from the lake failed: {e}"),
        ),
    }
}

/// The answer for a table without rows in `source`: empty, with a note on when rows come, if a running stage
/// emits it (an aggregate's first window closes only once event time has passed its end and the watermark
/// delay: up to ~11 minutes after the start with the default pipeline); else 404, naming the tables there are.
fn no_rows_yet(state: &AppState, table: &str, source: &str) -> Response {
    if state.shared.plugins.load().is_empty() {
        // Which tables the stages emit is known once the pipeline has published its plugins, as it starts.
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no rows of {table} yet, and the pipeline is still starting: ask again in a moment"
            ),
        );
    }
    let declared = state.shared.gold_tables();
    if !declared.iter().any(|t| t == table) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no gold table {table} in this pipeline (its gold tables: {declared:?})"),
        );
    }
    let watermark = state.shared.counters.watermark_ms.load(Ordering::Relaxed);
    let watermark = match chrono::DateTime::from_timestamp_millis(watermark) {
        Some(t) if watermark != 0 => format!("the watermark is at {}", t.to_rfc3339()),
        _ => "no event has reached the aggregates yet".to_string(),
    };
    let answer = if source == "lake" {
        json!({ "table": table, "source": source, "rows": [], "note": format!(
            "no rows of {table} are committed yet: rows reach the lake at the first commit after their \
             window closes ({watermark})"
        ) })
    } else {
        json!({ "table": table, "source": source, "dropped": false, "rows": [], "note": format!(
            "no window of {table} has closed yet ({watermark}): a window closes once the watermark, the \
             newest event time less `events.watermark_delay`, passes its end"
        ) })
    };
    Json(answer).into_response()
}

/// A batch's rows as JSON objects, timestamps in milliseconds as the rows in memory give them.
fn json_rows(batch: &RecordBatch) -> Result<Vec<Map<String, serde_json::Value>>> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(
            |column| match column.as_any().downcast_ref::<TimestampMicrosecondArray>() {
                Some(times) => Arc::new(
                    times
                        .iter()
                        .map(|t| t.map(|us| us.div_euclid(1000)))
                        .collect::<Int64Array>(),
                ) as ArrayRef,
                None => Arc::clone(column),
            },
        )
        .collect();
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(field, column)| Field::new(field.name(), column.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    writer.write(&batch)?;
    writer.finish()?;
    Ok(serde_json::from_slice(&writer.into_inner())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lake rows come out as the rows in memory do: times in milliseconds, filters on text and on JSON.
    #[test]
    fn lake_rows_read_as_memory_rows_do() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "window_start",
                arrow_schema::DataType::Timestamp(
                    arrow_schema::TimeUnit::Microsecond,
                    Some("UTC".into()),
                ),
                false,
            ),
            Field::new("wiki", arrow_schema::DataType::Utf8, true),
            Field::new("events", arrow_schema::DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        1_700_000_000_000_000,
                        1_700_000_060_000_000,
                    ])
                    .with_timezone("UTC"),
                ),
                Arc::new(arrow_array::StringArray::from(vec![Some("enwiki"), None])),
                Arc::new(Int64Array::from(vec![3, 4])),
            ],
        )
        .unwrap();
        let rows = json_rows(&batch).unwrap();
        assert_eq!(rows[0]["window_start"], 1_700_000_000_000i64);
        assert_eq!(rows[1]["window_start"], 1_700_000_060_000i64);
        let filter = Filter::new;
        assert!(filter("wiki", "enwiki").matches(&rows[0]));
        assert!(!filter("wiki", "enwiki").matches(&rows[1]));
        assert!(filter("wiki", "null").matches(&rows[1]));
        assert!(filter("events", "4").matches(&rows[1]));
        assert!(!filter("events", "4").matches(&rows[0]));
        assert!(!filter("nonesuch", "x").matches(&rows[0]));
    }
}
