//! `GET /api/v1/gold/{table}`: rows of a gold table whose window starts in `[from, to)`, filtered by equality
//! on any other query parameter (`?wiki=enwiki`, `?title=Main_Page`): per-wiki or per-page counts for a
//! window. Newest window first. Three sources:
//! - `auto`, the default: every row of the windows asked for. Memory (`Recent::GOLD_ROWS` per table, answered
//!   in microseconds) when it holds them all; else the committed Parquet files, with memory's rows that are
//!   not committed yet. Without `from`, the newest rows, from memory.
//! - `memory`: memory alone, with `dropped: true` when it lacks rows of windows from `from` on.
//! - `lake`: the committed files alone, for any window, oldest first.
//!
//! All give times as milliseconds. An answer says whether rows beyond `limit` match (`more`) and, when it does,
//! where the next page starts (`next`): pages end where a window ends, so that paging with `next` gives every
//! row once (see [`Page`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow_schema::{Field, Schema};
use axum::extract::{Path as UrlPath, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Map, json};

use super::{AppState, error, query_limit, query_time, repeated_parameter};
use crate::lake::log::CommitRecord;
use crate::lake::read;
use crate::lake::schema::gold_table;
use crate::lake::store::Store;
use crate::pipeline::shared::RecentGold;

/// Query parameters that are not column filters.
const PARAMETERS: [&str; 4] = ["from", "to", "limit", "source"];

pub(super) async fn gold(
    State(state): State<AppState>,
    UrlPath(table): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(refused) = repeated_parameter(raw.as_deref()) {
        return refused;
    }
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
    if limit == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "limit=0 asks for no rows: give at least 1",
        );
    }
    let ask = Question {
        table: gold_table(&table),
        from,
        to,
        limit,
        filters: q
            .iter()
            .filter(|(k, _)| !PARAMETERS.contains(&k.as_str()))
            .map(|(k, v)| Filter::new(k, v))
            .collect(),
        query: raw
            .as_deref()
            .map(|raw| {
                form_urlencoded::parse(raw.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default(),
    };
    if let Some(refused) = unknown_filter(&state, &ask).await {
        return refused;
    }
    match q.get("source").map(String::as_str) {
        None | Some("auto") => match &state.lake {
            // Without `from` the question is "the newest rows", which memory holds.
            Some(store) if q.contains_key("from") => merged(&state, store, ask).await,
            _ => from_memory(&state, &ask),
        },
        Some("memory") => from_memory(&state, &ask),
        Some("lake") => match &state.lake {
            Some(store) => from_lake(&state, store, ask).await,
            None => error(StatusCode::NOT_FOUND, "this process has no lake to read"),
        },
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "source={other:?}: use `auto` (the default: memory, and the lake for the windows memory \
                 lacks), `memory` (the newest rows) or `lake` (committed rows, any window)"
            ),
        ),
    }
}

/// A 400 naming the table's columns when a filter names a column no row of it has: a typo (`?wkii=`) would
/// otherwise match nothing and answer an empty 200. Memory's rows are asked first; the commit log's record
/// of the lake's columns only when they lack one. A table with no rows anywhere yet refuses nothing.
async fn unknown_filter(state: &AppState, ask: &Question) -> Option<Response> {
    if ask.filters.is_empty() {
        return None;
    }
    let mut known: std::collections::BTreeSet<String> = ["_plugin".to_string()].into();
    {
        let recent = state.shared.recent.lock().expect("not poisoned");
        let mut last: Option<&Arc<[Box<str>]>> = None;
        for row in recent.gold.get(&ask.table).into_iter().flatten() {
            if last.is_none_or(|l| !Arc::ptr_eq(l, row.columns())) {
                known.extend(row.columns().iter().map(|c| c.to_string()));
                last = Some(row.columns());
            }
        }
    }
    let unknown = |known: &std::collections::BTreeSet<String>| {
        ask.filters
            .iter()
            .find(|f| !known.contains(&f.column))
            .map(|f| f.column.clone())
    };
    unknown(&known)?;
    if let Some(store) = &state.lake {
        // A log that cannot be read now refuses nothing: the column may be in the lake.
        let records = state.log.records(store).await.ok()?;
        for record in records.iter() {
            if let Some(columns) = record.gold_columns.get(&ask.table) {
                known.extend(columns.iter().map(|(c, _)| c.clone()));
            }
        }
    }
    let column = unknown(&known)?;
    if known.len() == 1 {
        // Only `_plugin`: no row of the table has been seen, so there is nothing to judge by.
        return None;
    }
    let columns: Vec<&str> = known.iter().map(String::as_str).collect();
    Some(error(
        StatusCode::BAD_REQUEST,
        format!(
            "{} has no column {column:?}; filters are `column=value` over its columns: {}",
            ask.table,
            columns.join(", ")
        ),
    ))
}

/// What a query asks for: the rows of `table` whose window starts in `[from, to)` and that pass every filter,
/// at most `limit` of them.
struct Question {
    table: String,
    from: i64,
    to: i64,
    limit: usize,
    filters: Vec<Filter>,
    /// The query's parameters as given, in order, for the URL of the next page.
    query: Vec<(String, String)>,
}

impl Question {
    /// Rows to fetch: one past the limit, which tells whether more match without counting them all.
    fn fetch(&self) -> usize {
        self.limit.saturating_add(1)
    }

    /// The answer's `rows`, `more` and `next` from rows fetched in `order` (at most [`Question::fetch`]).
    /// `unread`: the read stopped (its time budget spent) with hours left, so rows past these may match.
    fn page(
        &self,
        rows: Vec<serde_json::Value>,
        order: Order,
        unread: bool,
        answer: &mut serde_json::Value,
    ) {
        let mut page = Page::of(rows, self.limit, unread);
        let bound = page.next.and_then(|next| self.bound(next, order));
        if page.next.is_some() && bound.is_none() {
            // After the range's last window there is no next page: only a cut window has rows left then.
            page.next = None;
            page.more &= page.cut;
        }
        answer["more"] = json!(page.more);
        if let Some((name, value)) = bound {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (k, v) in self.query.iter().filter(|(k, _)| k != name) {
                query.append_pair(k, v);
            }
            query.append_pair(name, &value.to_string());
            let table = percent_encoding::utf8_percent_encode(&self.table, PATH_SEGMENT);
            answer["next"] = json!(format!("/api/v1/gold/{table}?{}", query.finish()));
        }
        let hint = if page.cut {
            Some(format!(
                "the rows of window_start {} are more than limit={}: this page holds the first of them{}; \
                 raise `limit` (up to {}) or add filters to have them all",
                page.rows.last().and_then(window_start).unwrap_or_default(),
                self.limit,
                if page.next.is_some() {
                    ", `next` goes on after that window"
                } else {
                    ""
                },
                super::MAX_QUERY_ROWS
            ))
        } else if unread && page.more {
            Some(format!(
                "the lake read stopped after {} s with hours left to read, so more rows may match: `next` \
                 goes on from there",
                LAKE_READ_BUDGET.as_secs()
            ))
        } else {
            None
        };
        if let Some(hint) = hint {
            add_hint(answer, &hint);
        }
        answer["rows"] = json!(page.rows);
    }

    /// The parameter that asks for the page at `next` in `order`, or `None` when that page would fall outside
    /// the range asked for (and be refused: `from` not before `to`).
    fn bound(&self, next: Next, order: Order) -> Option<(&'static str, i64)> {
        // `to` is exclusive and `from` inclusive, both over window starts.
        let (name, value) = match (order, next.with_window) {
            (Order::NewestFirst, true) => ("to", next.window.saturating_add(1)),
            (Order::NewestFirst, false) => ("to", next.window),
            (Order::OldestFirst, true) => ("from", next.window),
            (Order::OldestFirst, false) => ("from", next.window.saturating_add(1)),
        };
        let within = match order {
            Order::NewestFirst => value > self.from,
            Order::OldestFirst => value < self.to,
        };
        within.then_some((name, value))
    }
}

/// A gold row's window start (ms), the key pages and answers are ordered by.
fn window_start(row: &serde_json::Value) -> Option<i64> {
    row.get("window_start")?.as_i64()
}

/// Characters a table name keeps in the path of a URL (table names are plugins' `emits`, checked only to be
/// non-empty).
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'-')
    .remove(b'.');

/// Sets the answer's `hint`, after the one it has.
fn add_hint(answer: &mut serde_json::Value, hint: &str) {
    answer["hint"] = json!(match answer["hint"].as_str() {
        Some(before) => format!("{before}; {hint}"),
        None => hint.to_string(),
    });
}

/// A page of an answer: at most `limit` rows, ending where a window ends. Rows beyond the limit that belong to
/// the page's last window are left to the next page with the rest of that window, so that a client paging
/// with `next` gets every row once and never half a window (as long as the rows do not change between its
/// requests). Only a window that alone holds more than `limit` rows is cut: the page holds its first rows,
/// says so (`cut`), and the next page goes on after it.
#[derive(Debug, PartialEq)]
struct Page {
    rows: Vec<serde_json::Value>,
    /// Whether rows beyond the page match (or may: see [`Question::page`]'s `unread`).
    more: bool,
    /// Where the next page begins, when there is one.
    next: Option<Next>,
    /// The page is one window's first `limit` rows.
    cut: bool,
}

/// The next page begins at window start `window`, which it holds (`with_window`) or begins after.
#[derive(Debug, PartialEq, Clone, Copy)]
struct Next {
    window: i64,
    with_window: bool,
}

impl Page {
    /// The page of `rows`, fetched by window start (in either order) up to one past `limit`; `unread` as for
    /// [`Question::page`].
    fn of(mut rows: Vec<serde_json::Value>, limit: usize, unread: bool) -> Page {
        if rows.len() <= limit {
            // All fetched fit. The read went through whole windows, so a next page begins after the last.
            let next = unread
                .then(|| rows.last().and_then(window_start))
                .flatten()
                .map(|window| Next {
                    window,
                    with_window: false,
                });
            return Page {
                more: next.is_some(),
                rows,
                next,
                cut: false,
            };
        }
        let last = window_start(&rows[limit]);
        // Rows of the window the limit cuts (the row past the limit is of it) go to the next page.
        let keep = rows[..limit]
            .iter()
            .rposition(|r| window_start(r) != last)
            .map_or(0, |p| p + 1);
        if keep > 0 {
            rows.truncate(keep);
            return Page {
                rows,
                more: true,
                next: last.map(|window| Next {
                    window,
                    with_window: true,
                }),
                cut: false,
            };
        }
        // One window alone is over the limit: its first rows, and on after it.
        rows.truncate(limit);
        Page {
            cut: !rows.is_empty(),
            rows,
            more: true,
            next: last.map(|window| Next {
                window,
                with_window: false,
            }),
        }
    }
}

impl Question {
    /// Whether a row in memory is one of those asked for.
    fn wants(&self, row: &RecentGold) -> bool {
        (self.from..self.to).contains(&row.window_start())
            && self
                .filters
                .iter()
                .all(|f| row.column_is(&f.column, &f.text, &f.json))
    }

    /// A batch [`Question::narrow`] gave as JSON rows, with the filters it could not apply (unless `exact`)
    /// applied to the JSON.
    fn json_of(
        &self,
        batch: &RecordBatch,
        exact: bool,
    ) -> Result<Vec<Map<String, serde_json::Value>>> {
        let mut rows = json_rows(batch)?;
        if !exact {
            rows.retain(|row| self.filters.iter().all(|f| f.matches(row)));
        }
        Ok(rows)
    }

    /// The rows of a batch that pass the filters on text, integer and boolean columns (and on columns it
    /// lacks, which are null), compared in the batch before any row becomes JSON: a window of gold_entity holds ~10^5 rows, of which
    /// a query by title wants one. Also whether that was every filter; if not, the others are left for the
    /// rows' JSON.
    fn narrow(&self, batch: &RecordBatch) -> Result<(RecordBatch, bool)> {
        let mut keep: Option<Vec<bool>> = None;
        let mut exact = true;
        for filter in &self.filters {
            let keep = keep.get_or_insert_with(|| vec![true; batch.num_rows()]);
            match batch.column_by_name(&filter.column) {
                // As `Filter::matches` has it: a null (or missing) value matches `null`.
                None if filter.json.is_null() => {}
                None => keep.fill(false),
                Some(column) => {
                    let any = column.as_any();
                    let null = filter.json.is_null();
                    if let Some(text) = any.downcast_ref::<StringArray>() {
                        narrow(keep, text.iter(), |v| v == filter.text, null);
                    } else if let Some(numbers) = any.downcast_ref::<Int64Array>() {
                        let n = filter.json.as_i64();
                        narrow(keep, numbers.iter(), |v| Some(v) == n, null);
                    } else if let Some(flags) = any.downcast_ref::<BooleanArray>() {
                        let flag = filter.json.as_bool();
                        narrow(keep, flags.iter(), |v| Some(v) == flag, null);
                    } else {
                        exact = false;
                    }
                }
            }
        }
        let batch = match keep {
            Some(keep) => {
                arrow_select::filter::filter_record_batch(batch, &BooleanArray::from(keep))?
            }
            None => batch.clone(),
        };
        Ok((batch, exact))
    }

    /// The first `want` rows in `order_by` of batches [`Question::narrow`] gave (`exact`: by every filter),
    /// as JSON, by window start (stable). Only those rows become JSON when the batches are exact: writing JSON
    /// is most of a lake read's time, and an hour of gold_entity holds ~10^5 rows.
    fn first_of(
        &self,
        batches: &[RecordBatch],
        exact: bool,
        want: usize,
        order_by: Order,
    ) -> Result<Vec<Map<String, serde_json::Value>>> {
        let by_start = |a: i64, b: i64| match order_by {
            Order::NewestFirst => b.cmp(&a),
            Order::OldestFirst => a.cmp(&b),
        };
        if !exact {
            let mut rows = Vec::new();
            for batch in batches {
                rows.extend(self.json_of(batch, false)?);
            }
            let start = |r: &Map<String, serde_json::Value>| {
                r.get("window_start").and_then(|t| t.as_i64()).unwrap_or(0)
            };
            rows.sort_by(|a, b| by_start(start(a), start(b)));
            rows.truncate(want);
            return Ok(rows);
        }
        // (window start, batch, row), in the order asked for.
        let mut order: Vec<(i64, usize, u32)> = Vec::new();
        for (b, batch) in batches.iter().enumerate() {
            let starts = batch
                .column_by_name("window_start")
                .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>());
            order.extend((0..batch.num_rows()).map(|r| {
                let start = starts.filter(|s| s.is_valid(r)).map_or(0, |s| s.value(r));
                (start, b, r as u32)
            }));
        }
        order.sort_by(|x, y| by_start(x.0, y.0).then((x.1, x.2).cmp(&(y.1, y.2))));
        order.truncate(want);
        // Each batch's chosen rows as JSON, in the order chosen; then taken back in the overall order.
        let mut chosen: Vec<Vec<u32>> = vec![Vec::new(); batches.len()];
        for &(_, b, r) in &order {
            chosen[b].push(r);
        }
        let mut json = Vec::with_capacity(batches.len());
        for (batch, rows) in batches.iter().zip(chosen) {
            let rows = if rows.is_empty() {
                Vec::new()
            } else {
                let picked =
                    arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))?;
                json_rows(&picked)?
            };
            json.push(rows.into_iter());
        }
        Ok(order
            .iter()
            .map(|&(_, b, _)| json[b].next().expect("one row of JSON per row chosen"))
            .collect())
    }
}

/// The order of rows by window start.
#[derive(Clone, Copy)]
enum Order {
    NewestFirst,
    OldestFirst,
}

/// Keeps the rows whose value passes `test` (a null passes when the filter asks for `null`).
fn narrow<T>(
    keep: &mut [bool],
    values: impl Iterator<Item = Option<T>>,
    test: impl Fn(T) -> bool,
    null: bool,
) {
    for (keep, value) in keep.iter_mut().zip(values) {
        *keep &= value.map_or(null, &test);
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
            // Nulls are left out of rows, as is a column the row's file does not have.
            None => self.json.is_null(),
        }
    }
}

fn from_memory(state: &AppState, ask: &Question) -> Response {
    match memory_answer(state, ask) {
        Some(answer) => Json(answer).into_response(),
        None => no_rows_yet(state, &ask.table, "memory"),
    }
}

/// Memory's rows asked for, newest first; `None` when no row of the table has come (not even in an earlier
/// run).
fn memory_answer(state: &AppState, ask: &Question) -> Option<serde_json::Value> {
    let recent = state.shared.recent.lock().expect("not poisoned");
    let rows = recent.gold.get(&ask.table);
    if rows.is_none() && !recent.lacks_gold_of(&ask.table) {
        return None;
    }
    // Rows come in the order windows closed, which is not that of their starts (a long session closes after
    // a short one that started later): sorted, newest emitted first within a window.
    let mut matched: Vec<&RecentGold> = rows
        .into_iter()
        .flatten()
        .filter(|r| ask.wants(r))
        .collect();
    matched.reverse();
    matched.sort_by_key(|r| Reverse(r.window_start()));
    let matched: Vec<serde_json::Value> = matched
        .into_iter()
        .take(ask.fetch())
        .map(RecentGold::to_json)
        .collect();
    // Memory keeps the newest rows of each table, and none of earlier runs: if it lacks rows of a window at
    // or after `from`, this answer misses them (a window over pages alone has more rows than are kept, by
    // default).
    let dropped = !recent.has_gold_from(&ask.table, ask.from);
    let mut answer = json!({ "table": ask.table, "source": "memory", "dropped": dropped });
    if dropped {
        answer["hint"] = json!(format!(
            "memory lacks rows of windows from `from` on (it keeps the newest {} rows of each table, \
             `api.recent_gold_rows`, and none from before this process started): give `from` to have the \
             lake fill them in, or `source=lake` for committed rows alone",
            recent.gold_rows
        ));
    }
    ask.page(matched, Order::NewestFirst, false, &mut answer);
    Some(answer)
}

/// The default answer for a range: memory's when it holds every row of those windows; else the lake's
/// committed rows with memory's rows that are not committed yet (each row is in exactly one of the two).
/// Memory's rows alone, flagged, if the lake cannot be read.
async fn merged(state: &AppState, store: &Store, ask: Question) -> Response {
    // Memory's rows not committed when looked at, then the log: a commit that lands between the two is in
    // the log, and its rows are left to the lake's answer. Of memory's, only those that can be among the
    // newest `limit` become JSON, under the lock the pipeline's thread also takes.
    let (seen, mut uncommitted, in_memory) = {
        let recent = state.shared.recent.lock().expect("not poisoned");
        if recent.has_gold_from(&ask.table, ask.from) {
            drop(recent);
            return from_memory(state, &ask);
        }
        let seen = recent.gold_commits();
        let rows = recent.gold.get(&ask.table);
        let mut wanted: Vec<&RecentGold> = rows
            .into_iter()
            .flatten()
            .filter(|r| r.number >= seen.floor() && ask.wants(r))
            .collect();
        wanted.sort_by_key(|r| Reverse(r.window_start()));
        wanted.truncate(ask.fetch());
        let uncommitted: Vec<(u64, serde_json::Value)> =
            wanted.iter().map(|r| (r.number, r.to_json())).collect();
        (seen, uncommitted, rows.is_some())
    };
    let ask = Arc::new(ask);
    let read = read_committed(state, store, &ask.table, |records| {
        // Which of memory's rows these records hold, worked out as soon as the log is read (see
        // `GoldCommits::saved_through`).
        let now = state
            .shared
            .recent
            .lock()
            .expect("not poisoned")
            .gold_commits();
        let saved = seen.saved_through(&now, &records);
        let (store, ask) = (store.clone(), Arc::clone(&ask));
        async move { Ok((saved, lake_rows_newest_first(&store, records, ask).await?)) }
    })
    .await;
    let (saved, (committed, unread)) = match read {
        Ok(Some(read)) => read,
        // No commit holds the table, so none of memory's rows of it are committed.
        Ok(None) if in_memory => (seen.floor(), (Vec::new(), false)),
        Ok(None) => return no_rows_yet(state, &ask.table, "memory"),
        Err(e) if e.is::<TooBroad>() => return unreadable(&ask.table, e),
        Err(e) => return memory_alone(state, &ask, e),
    };
    uncommitted.retain(|(number, _)| *number >= saved);
    if unread {
        // The lake was read down to its last row's window: older rows of memory's would stand before rows of
        // the lake not read yet.
        let floor = committed
            .last()
            .and_then(|r| r.get("window_start"))
            .and_then(|s| s.as_i64());
        uncommitted.retain(|(_, row)| window_start(row) >= floor);
    }
    let unsaved = state
        .shared
        .recent
        .lock()
        .expect("not poisoned")
        .unsaved_through(&ask.table, saved)
        .filter(|&t| t >= ask.from);
    let mut rows: Vec<serde_json::Value> = uncommitted.into_iter().map(|(_, row)| row).collect();
    rows.extend(committed.into_iter().map(serde_json::Value::Object));
    // Newest window first; the sort is stable, so the lake's rows keep their order within a window.
    rows.sort_by_key(|r| Reverse(window_start(r).unwrap_or(0)));
    rows.truncate(ask.fetch());
    let mut answer = json!({
        "table": ask.table, "source": "memory+lake", "dropped": unsaved.is_some(),
    });
    if let Some(through) = unsaved {
        answer["hint"] = json!(format!(
            "rows of windows up to window_start {through} left memory before their commit: they are in the \
             lake once it is done (within `lake.commit_interval`), ask again then"
        ));
    }
    ask.page(rows, Order::NewestFirst, unread, &mut answer);
    Json(answer).into_response()
}

/// Memory's rows, flagged as missing the rest, when the lake cannot be read.
fn memory_alone(state: &AppState, ask: &Question, e: anyhow::Error) -> Response {
    let mut answer = memory_answer(state, ask).unwrap_or_else(
        || json!({ "table": ask.table, "source": "memory", "rows": [], "more": false }),
    );
    answer["dropped"] = json!(true);
    add_hint(
        &mut answer,
        &format!(
            "these are memory's rows alone: the lake, which holds the rest, cannot be read ({e:#})"
        ),
    );
    Json(answer).into_response()
}

async fn from_lake(state: &AppState, store: &Store, ask: Question) -> Response {
    let ask = Arc::new(ask);
    let read = read_committed(state, store, &ask.table, |records| {
        lake_rows_oldest_first(store, records, Arc::clone(&ask))
    })
    .await;
    match read {
        Ok(Some((rows, unread))) => {
            let mut answer = json!({ "table": ask.table, "source": "lake" });
            ask.page(rows, Order::OldestFirst, unread, &mut answer);
            Json(answer).into_response()
        }
        Ok(None) => no_rows_yet(state, &ask.table, "lake"),
        Err(e) => unreadable(&ask.table, e),
    }
}

/// Reads committed rows of `table` with `rows`, over the commit log as it stands; `None` when no commit
/// holds the table. Files not in place yet are read from their commit's staging (see `read::Committed`); one
/// gone from both, as a compaction that has just replaced it (or a move between the two looks) leaves it, is
/// looked for again in the log, read afresh a moment later.
async fn read_committed<T, F>(
    state: &AppState,
    store: &Store,
    table: &str,
    rows: impl Fn(Arc<Vec<CommitRecord>>) -> F,
) -> Result<Option<T>>
where
    F: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        let records = state.log.records(store).await?;
        if !records.iter().any(|r| r.tables.contains_key(table)) {
            return Ok(None);
        }
        match rows(records).await {
            Ok(read) => return Ok(Some(read)),
            Err(e) if read::is_not_found(&e) && tries < LAKE_READ_TRIES => {
                // Doubling: a compaction deletes what it replaced right after its record, which a cached
                // log may not have yet.
                tokio::time::sleep(LAKE_READ_PAUSE * 2u32.pow(tries)).await;
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How often a lake read that found a file gone is tried again, and after how long the first time (twice
/// as long each time after: 6.2 s in all).
const LAKE_READ_TRIES: u32 = 5;
const LAKE_READ_PAUSE: Duration = Duration::from_millis(200);

fn unreadable(table: &str, e: anyhow::Error) -> Response {
    if e.is::<TooBroad>() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}"));
    }
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read gold table {table} from the lake: {e:#}"),
    )
}

/// The committed rows asked for, newest first: hour partition by hour from the newest, each hour's rows by
/// window start. Stops after the hour in which [`Question::fetch`] is reached, since every later hour holds
/// older windows. Also whether hours were left unread (see [`lake_rows`]).
async fn lake_rows_newest_first(
    store: &Store,
    records: Arc<Vec<CommitRecord>>,
    ask: Arc<Question>,
) -> Result<(Vec<Map<String, serde_json::Value>>, bool)> {
    lake_rows(store, records, ask, Order::NewestFirst).await
}

/// The committed rows asked for, oldest first, as [`lake_rows_newest_first`] reads them. By window start
/// within an hour too (its files come in the order of their sequences, which, with several hosts or a
/// watermark behind, is not that of their windows), so that a limit never cuts an earlier window out.
async fn lake_rows_oldest_first(
    store: &Store,
    records: Arc<Vec<CommitRecord>>,
    ask: Arc<Question>,
) -> Result<(Vec<serde_json::Value>, bool)> {
    let (rows, unread) = lake_rows(store, records, ask, Order::OldestFirst).await?;
    Ok((
        rows.into_iter().map(serde_json::Value::Object).collect(),
        unread,
    ))
}

/// How long one request may read the lake: a filter that matches nothing would otherwise read every file of
/// the table, on a blocking thread that goes on after the client has given up.
const LAKE_READ_BUDGET: Duration = Duration::from_secs(20);

/// A request that read the lake for [`LAKE_READ_BUDGET`] with hours still to read.
#[derive(Debug, thiserror::Error)]
#[error(
    "the query read {hours} hours of {table} in {secs} s and found {found} of its {limit} rows, with {left} hours left to read: narrow it with `from` and `to`"
)]
struct TooBroad {
    table: String,
    hours: usize,
    secs: u64,
    found: usize,
    limit: usize,
    left: usize,
}

/// The rows asked for in `order`, up to [`Question::fetch`], hour by hour. A read that spends
/// [`LAKE_READ_BUDGET`] with hours still to read stops: with at least `limit` rows found, it answers them
/// (whole hours, so whole windows) and says hours were left unread; with fewer, it is [`TooBroad`].
async fn lake_rows(
    store: &Store,
    records: Arc<Vec<CommitRecord>>,
    ask: Arc<Question>,
    order: Order,
) -> Result<(Vec<Map<String, serde_json::Value>>, bool)> {
    let started = Instant::now();
    let store = store.clone();
    on_blocking_thread(move |runtime| {
        let mut hours: BTreeMap<Option<i64>, Vec<read::Committed>> = BTreeMap::new();
        for file in read::files_in_range(&records, &ask.table, ask.from, ask.to) {
            hours
                .entry(read::partition_start(&file.path))
                .or_default()
                .push(file);
        }
        let mut rows = Vec::new();
        let count = hours.len();
        let hours: Box<dyn Iterator<Item = &Vec<read::Committed>>> = match order {
            Order::NewestFirst => Box::new(hours.values().rev()),
            Order::OldestFirst => Box::new(hours.values()),
        };
        for (read, files) in hours.enumerate() {
            if started.elapsed() > LAKE_READ_BUDGET {
                if rows.len() >= ask.limit {
                    return Ok((rows, true));
                }
                return Err(TooBroad {
                    table: ask.table.clone(),
                    hours: read,
                    secs: started.elapsed().as_secs(),
                    found: rows.len(),
                    limit: ask.limit,
                    left: count - read,
                }
                .into());
            }
            let (mut batches, mut exact) = (Vec::new(), true);
            runtime.block_on(read::query_files(
                &store,
                files,
                &ask.table,
                ask.from,
                ask.to,
                usize::MAX,
                |batch| {
                    let (batch, all) = ask.narrow(batch)?;
                    exact &= all;
                    if batch.num_rows() > 0 {
                        batches.push(batch);
                    }
                    Ok(true)
                },
            ))?;
            rows.extend(ask.first_of(&batches, exact, ask.fetch() - rows.len(), order)?);
            if rows.len() >= ask.fetch() {
                break;
            }
        }
        Ok((rows, false))
    })
    .await
}

/// Runs a read of the lake on a blocking thread: decoding Parquet and writing JSON is CPU work, and a large
/// answer must not hold one of the runtime's workers, which also carry the commits and the NATS connection.
async fn on_blocking_thread<T: Send + 'static>(
    read: impl FnOnce(&tokio::runtime::Handle) -> Result<T> + Send + 'static,
) -> Result<T> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || read(&runtime))
        .await
        .map_err(|e| anyhow::anyhow!("the read failed: {e}"))?
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
        json!({ "table": table, "source": source, "rows": [], "more": false, "note": format!(
            "no rows of {table} are committed yet: rows reach the lake at the first commit after their \
             window closes ({watermark})"
        ) })
    } else {
        json!({ "table": table, "source": source, "dropped": false, "rows": [], "more": false, "note": format!(
            "no window of {table} has closed yet ({watermark}): a window closes once the watermark, the \
             newest event time less `events.watermark_delay`, passes its end"
        ) })
    };
    Json(answer).into_response()
}

/// A batch's rows as JSON objects, timestamps in milliseconds and nulls left out, as the rows in memory give
/// them (a file may lack a column that was null in all its rows).
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
        // Filtered in the batch first, the same rows pass.
        let ask = |filters: &[(&str, &str)]| Question {
            table: "gold_wiki".into(),
            from: i64::MIN,
            to: i64::MAX,
            limit: 10,
            filters: filters.iter().map(|&(c, v)| Filter::new(c, v)).collect(),
            query: Vec::new(),
        };
        let events = |filters: &[(&str, &str)]| -> Vec<i64> {
            let ask = ask(filters);
            let (narrowed, exact) = ask.narrow(&batch).unwrap();
            ask.json_of(&narrowed, exact)
                .unwrap()
                .iter()
                .map(|r| r["events"].as_i64().unwrap())
                .collect()
        };
        assert_eq!(events(&[("wiki", "enwiki")]), [3]);
        assert_eq!(events(&[("wiki", "null")]), [4]);
        assert_eq!(
            events(&[("wiki", "enwiki"), ("events", "4")]),
            Vec::<i64>::new()
        );
        assert_eq!(events(&[("events", "4")]), [4]);
        assert_eq!(events(&[]), [3, 4]);
        // The newest rows of several batches, only those written as JSON when the batch did all the filtering.
        let first = |filters: &[(&str, &str)], want: usize, order: Order| -> Vec<i64> {
            let ask = ask(filters);
            let (mut batches, mut exact) = (Vec::new(), true);
            for _ in 0..2 {
                let (narrowed, all) = ask.narrow(&batch).unwrap();
                batches.push(narrowed);
                exact &= all;
            }
            ask.first_of(&batches, exact, want, order)
                .unwrap()
                .iter()
                .map(|r| r["events"].as_i64().unwrap())
                .collect()
        };
        let newest = |filters: &[(&str, &str)], want| first(filters, want, Order::NewestFirst);
        assert_eq!(first(&[], 3, Order::OldestFirst), [3, 3, 4]);
        assert_eq!(newest(&[], 3), [4, 4, 3]);
        assert_eq!(newest(&[], 10), [4, 4, 3, 3]);
        assert_eq!(newest(&[("wiki", "enwiki")], 10), [3, 3]);
        assert_eq!(newest(&[("events", "3")], 10), [3, 3]);
        assert_eq!(newest(&[("events", "4")], 1), [4]);
        assert_eq!(newest(&[("events", "4"), ("wiki", "null")], 10), [4, 4]);
        // A filter the batch cannot apply (a timestamp, in milliseconds as JSON has it) is applied to the JSON.
        assert_eq!(newest(&[("window_start", "1700000000000")], 10), [3, 3]);
        assert_eq!(newest(&[("window_start", "1700000060000")], 1), [4]);
    }

    /// Pages end where a window ends: paging with `next` gives every row once, and a window larger than the
    /// limit is cut only when it is alone on its page, which then says so and goes on after it.
    #[test]
    fn pages_end_where_a_window_ends() {
        let rows = |starts: &[i64]| -> Vec<serde_json::Value> {
            starts
                .iter()
                .enumerate()
                .map(|(i, &s)| json!({ "window_start": s, "n": i }))
                .collect()
        };
        let of = |starts: &[i64], limit, unread| {
            let page = Page::of(rows(starts), limit, unread);
            let got: Vec<i64> = page
                .rows
                .iter()
                .map(|r| r["window_start"].as_i64().unwrap())
                .collect();
            let next = page.next.map(|n| (n.window, n.with_window));
            (got, page.more, next, page.cut)
        };
        // All fit: no more.
        assert_eq!(
            of(&[30, 20, 20], 3, false),
            (vec![30, 20, 20], false, None, false)
        );
        // The limit cuts window 20: it goes whole to the next page.
        assert_eq!(
            of(&[30, 30, 20, 20], 3, false),
            (vec![30, 30], true, Some((20, true)), false)
        );
        // The limit falls where a window ends: the page is full.
        assert_eq!(
            of(&[30, 20, 10], 2, false),
            (vec![30, 20], true, Some((10, true)), false)
        );
        // Oldest first the same.
        assert_eq!(
            of(&[10, 20, 20, 20], 3, false),
            (vec![10], true, Some((20, true)), false)
        );
        // One window over the limit: cut, and the next page goes on after it.
        assert_eq!(
            of(&[20, 20, 20], 2, false),
            (vec![20, 20], true, Some((20, false)), true)
        );
        // A read that left hours unread: what it found, and the next page after its last window.
        assert_eq!(
            of(&[30, 20], 2, true),
            (vec![30, 20], true, Some((20, false)), false)
        );
        assert_eq!(
            of(&[30, 20, 20], 2, true),
            (vec![30], true, Some((20, true)), false)
        );

        // The answer: `next` keeps the query's other parameters and moves the bound of its order.
        let ask = Question {
            table: "gold_wiki".into(),
            from: 5,
            to: i64::MAX,
            limit: 3,
            filters: vec![Filter::new("wiki", "en wiki")],
            query: vec![
                ("wiki".into(), "en wiki".into()),
                ("from".into(), "5".into()),
                ("limit".into(), "3".into()),
            ],
        };
        let answer = |starts: &[i64], order, unread, before: serde_json::Value| {
            let mut answer = before;
            ask.page(rows(starts), order, unread, &mut answer);
            answer
        };
        let newest = answer(&[30, 30, 20, 20], Order::NewestFirst, false, json!({}));
        assert_eq!(newest["more"], true);
        assert_eq!(newest["rows"].as_array().unwrap().len(), 2);
        assert_eq!(
            newest["next"],
            "/api/v1/gold/gold_wiki?wiki=en+wiki&from=5&limit=3&to=21"
        );
        assert!(newest.get("hint").is_none(), "{newest}");
        let oldest = answer(&[10, 20, 20, 20], Order::OldestFirst, false, json!({}));
        assert_eq!(
            oldest["next"],
            "/api/v1/gold/gold_wiki?wiki=en+wiki&limit=3&from=20"
        );
        // A cut window: its first rows, a hint after the one the answer had, and on past the window.
        let cut = answer(
            &[20, 20, 20, 20],
            Order::NewestFirst,
            false,
            json!({ "hint": "memory lacks rows" }),
        );
        assert_eq!(cut["more"], true);
        assert_eq!(cut["rows"].as_array().unwrap().len(), 3);
        assert_eq!(
            cut["next"],
            "/api/v1/gold/gold_wiki?wiki=en+wiki&from=5&limit=3&to=20"
        );
        let hint = cut["hint"].as_str().unwrap();
        assert!(
            hint.starts_with(
                "memory lacks rows; the rows of window_start 20 are more than limit=3"
            ),
            "{hint}"
        );
        let cut = answer(&[20, 20, 20, 20], Order::OldestFirst, false, json!({}));
        assert_eq!(
            cut["next"],
            "/api/v1/gold/gold_wiki?wiki=en+wiki&limit=3&from=21"
        );
        // Hours left unread: more may match, and the hint says why.
        let unread = answer(&[10, 20], Order::OldestFirst, true, json!({}));
        assert_eq!(unread["more"], true);
        assert_eq!(
            unread["next"],
            "/api/v1/gold/gold_wiki?wiki=en+wiki&limit=3&from=21"
        );
        assert!(
            unread["hint"]
                .as_str()
                .unwrap()
                .contains("hours left to read"),
            "{unread}"
        );
        let all = answer(&[20], Order::NewestFirst, false, json!({}));
        assert_eq!(all["more"], false);
        assert!(all.get("next").is_none() && all.get("hint").is_none());
        // A cut window that is the range's last: no next page, and the hint does not promise one.
        let edge = Question {
            from: 20,
            query: Vec::new(),
            ..ask
        };
        let mut cut = json!({});
        edge.page(rows(&[20, 20, 20, 20]), Order::NewestFirst, false, &mut cut);
        assert_eq!((cut["more"].clone(), cut.get("next")), (json!(true), None));
        let hint = cut["hint"].as_str().unwrap();
        assert!(hint.contains("the first of them; raise"), "{hint}");
        let mut unread = json!({});
        edge.page(rows(&[30, 20, 20]), Order::NewestFirst, true, &mut unread);
        assert_eq!(
            (unread["more"].clone(), unread.get("next")),
            (json!(false), None)
        );
        // A table name that is not a plain word is encoded in the path.
        let odd = Question {
            table: "gold_a b/c".into(),
            from: 5,
            ..edge
        };
        let mut answer = json!({});
        odd.page(rows(&[30, 20]), Order::NewestFirst, false, &mut answer);
        assert_eq!(answer["more"], false);
        let odd = Question { limit: 1, ..odd };
        let mut answer = json!({});
        odd.page(rows(&[30, 20]), Order::NewestFirst, false, &mut answer);
        assert_eq!(answer["next"], "/api/v1/gold/gold_a%20b%2Fc?to=21");
    }
}
