//! What the running pipeline shares with the API: counters, readiness, the plugins' stats, recent data for
//! fast queries, and a channel for control requests. The API only reads these and sends requests; it never
//! reaches into the flow.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::ingest::IngestStats;
use crate::lake::rows::GoldRow;
use crate::runtime::PluginStats;
use crate::runtime::types::Value;

/// Pipeline counters (exported as `weir_<name>_<unit>_total` and gauges).
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub silver: AtomicU64,
    pub dropped: AtomicU64,
    pub quarantined: AtomicU64,
    pub gold_rows: AtomicU64,
    /// Redeliveries of committed messages, acked and skipped.
    pub skipped_committed: AtomicU64,
    /// Redeliveries of messages still in the open epoch, ignored.
    pub skipped_in_flight: AtomicU64,
    /// Pulls opened anew after a quiet spell with messages waiting (see `runner::fetch`).
    pub pulls_reopened: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub committed_events: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Event time of the newest committed event (ms).
    pub newest_committed_event_ms: AtomicI64,
    /// The watermark the aggregates were last told (ms of event time; 0 before the first): windows that end
    /// at or before it have closed.
    pub watermark_ms: AtomicI64,
    pub last_commit_ms: AtomicI64,
    pub last_commit_duration_us: AtomicU64,
    pub swaps: AtomicU64,
    pub rollbacks: AtomicU64,
    pub type_mismatches: AtomicU64,
    /// Compactions of the lake that committed, failed, and the files they merged.
    pub compactions: AtomicU64,
    pub compaction_failures: AtomicU64,
    pub compacted_files: AtomicU64,
    /// Microseconds the pipeline's thread spent in each [`Phase`]: where a slow pipeline's time goes.
    pub phase_us: [AtomicU64; Phase::ALL.len()],
}

/// What the pipeline's thread is doing (`weir_pipeline_thread_seconds_total{phase}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the next micro-batch: the thread has nothing to do.
    Waiting,
    /// Reading messages: redelivery checks, headers, the host's parse of each event.
    Reading,
    /// The chain of plugins over a batch.
    Plugins,
    /// Closing windows: the aggregates' `on-watermark` and their rows into the epoch.
    Watermark,
    /// Building the batch's Arrow rows for the tables and handing them to the Parquet encoder.
    Tables,
    /// Saving the plugins' state at a commit.
    State,
    /// Waiting for a commit: the last Parquet encoding, the uploads, the commit record, the acks.
    Commit,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Waiting,
        Phase::Reading,
        Phase::Plugins,
        Phase::Watermark,
        Phase::Tables,
        Phase::State,
        Phase::Commit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Reading => "reading",
            Phase::Plugins => "plugins",
            Phase::Watermark => "watermark",
            Phase::Tables => "tables",
            Phase::State => "state",
            Phase::Commit => "commit",
        }
    }
}

impl Counters {
    /// Adds the time since `since` to `phase`; returns now, the start of the next phase.
    pub fn phase(&self, phase: Phase, since: std::time::Instant) -> std::time::Instant {
        let now = std::time::Instant::now();
        self.phase_us[phase as usize]
            .fetch_add((now - since).as_micros() as u64, Ordering::Relaxed);
        now
    }
}

/// Readiness: the API says ready only when every part is up.
#[derive(Debug, Default)]
pub struct Health {
    pub nats_connected: AtomicBool,
    pub store_reachable: AtomicBool,
    pub plugins_loaded: AtomicBool,
    pub paused: AtomicBool,
    pub stopping: AtomicBool,
}

/// A plugin as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    pub stage: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub kind: String,
    /// The tables it emits rows into (its plan's `emits`, as named in the lake: `gold_<table>`).
    pub emits: Vec<String>,
    /// The version a rollback returns to, if any.
    pub previous: Option<String>,
    pub stats: PluginStats,
}

/// Recent data kept in memory, so queries about the last minutes answer in microseconds.
#[derive(Debug)]
pub struct Recent {
    /// The newest silver events, newest last. Kept as events and turned into JSON only when asked: the
    /// pipeline replaces them far more often than anyone reads them, and writing an enriched event out as
    /// JSON costs several times what keeping it does.
    pub events: VecDeque<crate::event::Event>,
    /// Gold rows by table, newest last, as the aggregates emitted them (see [`RecentGold`]).
    pub gold: BTreeMap<String, VecDeque<RecentGold>>,
    /// By table, the latest window start among the rows dropped to keep `gold_rows`: an answer from memory
    /// for windows from there back is missing rows, and says so.
    pub gold_dropped: BTreeMap<String, i64>,
    /// Quarantine reasons with counts, since start.
    pub quarantine_reasons: BTreeMap<String, u64>,
    /// How many gold rows to keep per table (`api.recent_gold_rows`).
    pub gold_rows: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Recent::with_gold_rows(Recent::GOLD_ROWS)
    }
}

impl Recent {
    pub const EVENTS: usize = 1000;
    /// The default of `api.recent_gold_rows`.
    pub const GOLD_ROWS: usize = 5_000;

    pub fn with_gold_rows(gold_rows: usize) -> Self {
        Recent {
            events: VecDeque::new(),
            gold: BTreeMap::new(),
            gold_dropped: BTreeMap::new(),
            quarantine_reasons: BTreeMap::new(),
            gold_rows,
        }
    }

    pub fn push_event(&mut self, event: crate::event::Event) {
        if self.events.len() == Self::EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub fn push_gold(&mut self, table: &str, row: &GoldRow) {
        if self.gold_rows == 0 {
            return;
        }
        if !self.gold.contains_key(table) {
            self.gold.insert(table.to_string(), VecDeque::new());
        }
        let rows = self.gold.get_mut(table).expect("just ensured");
        let columns = match rows.back() {
            Some(last) if last.has_columns(&row.columns) => last.columns.clone(),
            _ => row
                .columns
                .iter()
                .map(|(name, _)| name.as_str().into())
                .collect(),
        };
        while rows.len() >= self.gold_rows {
            let Some(dropped) = rows.pop_front() else {
                break;
            };
            let start = dropped.window_start();
            match self.gold_dropped.get_mut(table) {
                Some(latest) => *latest = (*latest).max(start),
                None => {
                    self.gold_dropped.insert(table.to_string(), start);
                }
            }
        }
        rows.push_back(RecentGold {
            columns,
            values: row.columns.iter().map(|(_, value)| value.clone()).collect(),
        });
    }
}

/// A recent gold row. Kept as emitted and turned into JSON only when a query matches it: 20,000 rows per
/// table as JSON objects (a map and a string per column) were the largest part of the host's heap after the
/// keyed state, and building them cost time on every closing. Rows with the same columns (all of a table's,
/// normally) share one list of names.
#[derive(Debug)]
pub struct RecentGold {
    columns: Arc<[Box<str>]>,
    values: Box<[Value]>,
}

impl RecentGold {
    fn has_columns(&self, columns: &[(String, Value)]) -> bool {
        self.columns.len() == columns.len()
            && self
                .columns
                .iter()
                .zip(columns)
                .all(|(a, (b, _))| **a == *b)
    }

    /// The start of the row's window in ms (0 for a row without one, which every window query then sees as
    /// the oldest).
    pub fn window_start(&self) -> i64 {
        match self.get("window_start") {
            Some(Value::Integer(ms)) => *ms,
            _ => 0,
        }
    }

    /// The value of a column (the last of that name, as in [`RecentGold::to_json`]).
    pub fn get(&self, column: &str) -> Option<&Value> {
        let at = self.columns.iter().rposition(|c| &**c == column)?;
        Some(&self.values[at])
    }

    /// Whether a column equals a query's value: text columns as text, others as JSON (a missing column is
    /// null). Text, the usual case, is compared without building JSON.
    pub fn column_is(&self, column: &str, text: &str, json: &serde_json::Value) -> bool {
        match self.get(column) {
            Some(Value::Text(s)) => s == text,
            Some(value) => match json_of(value) {
                serde_json::Value::String(s) => s == text,
                other => other == *json,
            },
            None => json.is_null(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.columns
                .iter()
                .zip(&self.values)
                .map(|(name, value)| (name.to_string(), json_of(value)))
                .collect(),
        )
    }
}

fn json_of(value: &Value) -> serde_json::Value {
    crate::event::from_wit_value(value.clone()).unwrap_or(serde_json::Value::Null)
}

/// Hot-swap pauses (between batches), in microseconds, for the p50/p99 the API reports.
#[derive(Debug, Default)]
pub struct Pauses(Mutex<Vec<u64>>);

impl Pauses {
    pub fn record(&self, us: u64) {
        self.0.lock().expect("not poisoned").push(us);
    }

    /// (count, p50, p99) in microseconds.
    pub fn summary(&self) -> (usize, u64, u64) {
        let mut v = self.0.lock().expect("not poisoned").clone();
        if v.is_empty() {
            return (0, 0, 0);
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (v.len(), at(0.5), at(0.99))
    }
}

/// Requests to the pipeline (from the API, the CLI or the watched directory).
pub enum Control {
    /// Deploy a new version of a stage's plugin (already compiled and checked against the contract).
    Deploy {
        stage: String,
        plugin: Arc<crate::runtime::LoadedPlugin>,
        /// The component's bytes, kept so that the deploy outlives a restart.
        bytes: bytes::Bytes,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    Rollback {
        stage: String,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
}

/// Everything shared between the pipeline and the API.
pub struct Shared {
    pub pipeline: String,
    pub counters: Counters,
    pub health: Health,
    pub plugins: ArcSwap<Vec<PluginInfo>>,
    pub recent: Mutex<Recent>,
    pub pauses: Pauses,
    pub ingest: ArcSwap<Option<Arc<IngestStats>>>,
    pub control: tokio::sync::mpsc::Sender<Control>,
    /// Stage names, in chain order.
    pub stages: Vec<String>,
    /// Where the lake is (for queries that read committed data).
    pub lake: crate::lake::Store,
    pub started_ms: i64,
}

impl Shared {
    /// The gold tables the running stages emit, sorted (empty until the pipeline has published its plugins).
    pub fn gold_tables(&self) -> Vec<String> {
        let mut tables: Vec<String> = self
            .plugins
            .load()
            .iter()
            .flat_map(|p| p.emits.iter().cloned())
            .collect();
        tables.sort_unstable();
        tables.dedup();
        tables
    }

    pub fn is_ready(&self) -> bool {
        let h = &self.health;
        h.nats_connected.load(Ordering::Relaxed)
            && h.store_reachable.load(Ordering::Relaxed)
            && h.plugins_loaded.load(Ordering::Relaxed)
            && !h.stopping.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start: i64) -> GoldRow {
        GoldRow {
            table: "gold_wiki".into(),
            plugin: "aggregate@1".into(),
            columns: vec![
                ("window_start".into(), Value::Integer(start)),
                ("events".into(), Value::Integer(1)),
            ],
        }
    }

    /// Rows dropped to keep `gold_rows` are remembered by their latest window start, per table, so that an
    /// answer from memory can tell it is missing some.
    #[test]
    fn dropped_gold_rows_leave_their_latest_window_start() {
        let mut recent = Recent::with_gold_rows(2);
        for start in [20, 10] {
            recent.push_gold("gold_wiki", &row(start));
        }
        assert!(recent.gold_dropped.is_empty());
        recent.push_gold("gold_wiki", &row(30));
        assert_eq!(recent.gold_dropped["gold_wiki"], 20);
        // The latest of those dropped, whatever order they leave in.
        recent.push_gold("gold_wiki", &row(40));
        assert_eq!(recent.gold_dropped["gold_wiki"], 20);
        recent.push_gold("gold_wiki", &row(50));
        assert_eq!(recent.gold_dropped["gold_wiki"], 30);
        let kept: Vec<i64> = recent.gold["gold_wiki"]
            .iter()
            .map(RecentGold::window_start)
            .collect();
        assert_eq!(kept, [40, 50]);
        recent.push_gold("gold_user", &row(60));
        assert!(!recent.gold_dropped.contains_key("gold_user"));
    }
}
