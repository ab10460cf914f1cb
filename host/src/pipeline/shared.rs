//! What the running pipeline shares with the API: counters, readiness, the plugins' stats, recent data for
//! fast queries, and a channel for control requests. The API only reads these and sends requests; it never
//! reaches into the flow.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::ingest::IngestStats;
use crate::lake::log::CommitRecord;
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
    /// Ticks read back from the stream (see `Processor::tick`).
    pub ticks: AtomicU64,
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
    /// Deploys and rollbacks of other hosts of the pipeline applied here, and refused here (see
    /// `pipeline::cluster`).
    pub cluster_followed: AtomicU64,
    pub cluster_refused: AtomicU64,
    pub type_mismatches: AtomicU64,
    /// Compactions of the lake that committed, failed, and the files they merged.
    pub compactions: AtomicU64,
    pub compaction_failures: AtomicU64,
    pub compacted_files: AtomicU64,
    /// Departed hosts whose open windows this host wrote (see `pipeline::adopt`).
    pub adoptions: AtomicU64,
    /// Events passed on unchanged by stages whose plugin failed on them and whose `on_error` is `skip`, by
    /// stage (nothing of them is in the quarantine tables).
    pub skipped_events: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// The newest stream sequence the pipeline has read.
    pub newest_seq: AtomicU64,
    /// Messages of the stream this host's reader has yet to take or to ack (`weir_consumer_pending_messages`,
    /// measured every few seconds): what a falling-behind pipeline owes.
    pub pending: AtomicU64,
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
    /// Whether the last pull from the stream worked (see [`Health::nats_connected`]).
    pub nats_connected: AtomicBool,
    /// The pipeline's NATS client, whose connection tells whether NATS is reachable now.
    pub nats: std::sync::OnceLock<async_nats::Client>,
    pub store_reachable: AtomicBool,
    pub plugins_loaded: AtomicBool,
    pub paused: AtomicBool,
    pub stopping: AtomicBool,
}

impl Health {
    /// NATS is reachable: by the client's connection when the pipeline has set it (a quiet stream or a
    /// pause pulls nothing to tell by), else by the last pull.
    pub fn nats_connected(&self) -> bool {
        match self.nats.get() {
            Some(client) => client.connection_state() == async_nats::connection::State::Connected,
            None => self.nats_connected.load(Ordering::Relaxed),
        }
    }

    /// The store answered the lake's last requests: it was reached at the start (or at a commit since) and
    /// no request to it is failing and being retried now.
    pub fn store_reachable(&self) -> bool {
        self.store_reachable.load(Ordering::Relaxed) && !crate::lake::store_failing()
    }
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
    /// By table, what memory lacks of its rows: an answer from memory for the windows it lacks says so, and
    /// the default answer reads them from the lake.
    gold_gaps: BTreeMap<String, GoldGaps>,
    /// Gold rows pushed so far, over all tables: the next row's number. Rows join the open epoch in this order.
    gold_pushed: u64,
    /// Gold rows numbered below this are committed, so in the lake.
    gold_committed: u64,
    /// The latest commits started, oldest first: each one's first stream sequence and the number its gold
    /// rows end at. Tells a reader of the commit log which rows a commit it sees holds (see
    /// [`GoldCommits::saved_through`]) before that commit has settled here.
    gold_commits: VecDeque<(u64, u64)>,
    /// Another host commits to the lake too: its rows are there, never in this host's memory.
    gold_shared: bool,
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
    /// The default of `api.recent_gold_rows`: the newest windows of the smaller tables; answers about older
    /// ones read the lake (5,000 held ~11 MB more at the peak for nothing the lake does not answer).
    pub const GOLD_ROWS: usize = 1_000;
    /// Commits remembered in `gold_commits`. One runs at a time, and a reader needs those started between its
    /// look at memory and its read of the log (milliseconds; a commit takes a second at the least).
    const GOLD_COMMITS: usize = 64;

    pub fn with_gold_rows(gold_rows: usize) -> Self {
        Recent {
            events: VecDeque::new(),
            gold: BTreeMap::new(),
            gold_gaps: BTreeMap::new(),
            gold_pushed: 0,
            gold_committed: 0,
            gold_commits: VecDeque::new(),
            gold_shared: false,
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
        let plugin = match rows.back() {
            Some(last) if *last.plugin == *row.plugin => Arc::clone(&last.plugin),
            _ => row.plugin.as_str().into(),
        };
        let full = rows.len() >= self.gold_rows;
        let dropped = full.then(|| rows.pop_front()).flatten();
        rows.push_back(RecentGold {
            number: self.gold_pushed,
            plugin,
            columns,
            values: row.columns.iter().map(|(_, value)| value.clone()).collect(),
        });
        self.gold_pushed += 1;
        if let Some(dropped) = dropped {
            self.note_dropped(table, &dropped);
        }
    }

    /// Remembers what memory lacks once it lets go of a row.
    fn note_dropped(&mut self, table: &str, row: &RecentGold) {
        let committed = self.gold_committed;
        if !self.gold_gaps.contains_key(table) {
            self.gold_gaps
                .insert(table.to_string(), GoldGaps::default());
        }
        let gaps = self.gold_gaps.get_mut(table).expect("just ensured");
        let start = row.window_start();
        gaps.dropped_through = Some(gaps.dropped_through.map_or(start, |d| d.max(start)));
        if row.number >= committed {
            // Earlier drops still waiting for their commit keep their window starts in the mark.
            gaps.unsaved = Some(match gaps.unsaved {
                Some((last, latest)) if last >= committed => (row.number, latest.max(start)),
                _ => (row.number, start),
            });
        }
    }

    /// Marks a table's rows of earlier runs (committed before this process began): memory lacks every window
    /// they may belong to.
    pub fn gold_in_lake(&mut self, table: &str) {
        self.gold_gaps
            .entry(table.to_string())
            .or_default()
            .dropped_through = Some(i64::MAX);
    }

    /// A commit of the open epoch starts: its stream sequences begin at `first_seq`, and it holds every gold
    /// row pushed so far. Returns the number they end at, for [`Recent::gold_committed`] once it is done.
    pub fn gold_commit_started(&mut self, first_seq: u64) -> u64 {
        if self.gold_commits.len() == Self::GOLD_COMMITS {
            self.gold_commits.pop_front();
        }
        self.gold_commits.push_back((first_seq, self.gold_pushed));
        self.gold_pushed
    }

    /// The commit holding the rows numbered below `through` is done.
    pub fn gold_committed(&mut self, through: u64) {
        self.gold_committed = self.gold_committed.max(through);
    }

    /// What a reader of the commit log needs to tell which of memory's rows the records it reads hold: the
    /// rows numbered below `floor` are committed (settled here), and the commits started lately may be in the
    /// log before they settle. Take it before reading the log; see [`GoldCommits::saved_through`].
    pub fn gold_commits(&self) -> GoldCommits {
        GoldCommits {
            floor: self.gold_committed,
            started: self.gold_commits.iter().copied().collect(),
        }
    }

    /// Whether memory has let go of rows of the table, or never had those of earlier runs.
    pub fn lacks_gold_of(&self, table: &str) -> bool {
        self.gold_gaps.contains_key(table)
    }

    /// Another host commits to this lake: memory never holds every row of a window again.
    pub fn gold_shared_lake(&mut self) {
        self.gold_shared = true;
    }

    /// The latest window start of a table's rows that memory dropped before their commit, if that commit is
    /// not among those holding the rows below `saved` (see [`GoldCommits::saved_through`]): neither memory
    /// nor the lake holds them until it is.
    pub fn unsaved_through(&self, table: &str, saved: u64) -> Option<i64> {
        let gaps = self.gold_gaps.get(table)?;
        let (number, latest) = gaps.unsaved?;
        (number >= saved).then_some(latest)
    }

    /// Whether memory holds every row of the table's windows that start at or after `from` (never once
    /// another host has committed to the lake: its rows are in the lake alone).
    pub fn has_gold_from(&self, table: &str, from: i64) -> bool {
        self.gold_rows > 0
            && !self.gold_shared
            && self
                .gold_gaps
                .get(table)
                .and_then(|g| g.dropped_through)
                .is_none_or(|through| through < from)
    }
}

/// Which of memory's gold rows are committed, as a reader of the commit log can tell (see
/// [`Recent::gold_commits`]).
pub struct GoldCommits {
    floor: u64,
    started: Vec<(u64, u64)>,
}

impl GoldCommits {
    /// The rows numbered below this were committed when this was taken.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The rows numbered below the result are in the lake as `records` (the commit log, read after this was
    /// taken) shows it: the floor, or further for each commit started here that the log holds. `now` is
    /// taken after the log was read, for the commits started meanwhile (each holds every row seen before).
    pub fn saved_through(&self, now: &GoldCommits, records: &[CommitRecord]) -> u64 {
        self.started
            .iter()
            .chain(&now.started)
            .filter(|&&(_, through)| through > self.floor)
            .filter(|(first, _)| {
                records
                    .iter()
                    .rev()
                    .any(|r| r.replay.is_none() && r.sequences.contains(*first))
            })
            .map(|&(_, through)| through)
            .fold(self.floor, u64::max)
    }
}

/// What memory lacks of a gold table's rows.
#[derive(Debug, Default)]
struct GoldGaps {
    /// The latest window start among the rows dropped to keep `gold_rows` (`i64::MAX` when the lake held rows
    /// of the table when this process began): memory lacks rows of the windows from there back.
    dropped_through: Option<i64>,
    /// Among those dropped before their commit: the last one's number, and their latest window start.
    unsaved: Option<(u64, i64)>,
}

/// A recent gold row. Kept as emitted and turned into JSON only when a query matches it: 20,000 rows per
/// table as JSON objects (a map and a string per column) were the largest part of the host's heap after the
/// keyed state, and building them cost time on every closing. Rows with the same columns (all of a table's,
/// normally) share one list of names.
#[derive(Debug)]
pub struct RecentGold {
    /// Its place in the order rows were pushed (see [`Recent::gold_committed`]).
    pub number: u64,
    /// The plugin version that emitted it, as the lake's `_plugin` column has it.
    plugin: Arc<str>,
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
        if column == "_plugin" {
            return *self.plugin == *text;
        }
        match self.get(column) {
            Some(Value::Text(s)) => s == text,
            Some(value) => match json_of(value) {
                serde_json::Value::String(s) => s == text,
                other => other == *json,
            },
            None => json.is_null(),
        }
    }

    /// The row's column names (shared between consecutive rows of one shape).
    pub fn columns(&self) -> &Arc<[Box<str>]> {
        &self.columns
    }

    /// The row as the lake's answers give it: its columns but the null ones, then the plugin that emitted it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut row: serde_json::Map<String, serde_json::Value> = self
            .columns
            .iter()
            .zip(&self.values)
            .map(|(name, value)| (name.to_string(), json_of(value)))
            .filter(|(_, value)| !value.is_null())
            .collect();
        row.insert("_plugin".into(), self.plugin.as_ref().into());
        serde_json::Value::Object(row)
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
        /// Whether the other hosts of the pipeline should follow (not for a deploy that came from them).
        announce: bool,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    /// A new version started and self-tested off the pipeline thread, ready to take its stage's place: the
    /// pipeline only swaps it in (see `Processor::handle`).
    Ready {
        stage: String,
        /// Which of the stage's deploys this is: a later deploy or a rollback supersedes it.
        generation: u64,
        plugin: Box<crate::runtime::Plugin>,
        bytes: bytes::Bytes,
        announce: bool,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    Rollback {
        stage: String,
        /// As for `Deploy`.
        announce: bool,
        /// The SHA-256 the version rolled back to must have (the other hosts' rollback being followed).
        to: Option<String>,
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
        h.nats_connected()
            && h.store_reachable()
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
    /// answer from memory can tell it is missing some, and where the lake must fill in.
    #[test]
    fn dropped_gold_rows_leave_their_latest_window_start() {
        let mut recent = Recent::with_gold_rows(2);
        let dropped = |r: &Recent| r.gold_gaps.get("gold_wiki").and_then(|g| g.dropped_through);
        for start in [20, 10] {
            recent.push_gold("gold_wiki", &row(start));
        }
        assert_eq!(dropped(&recent), None);
        assert!(recent.has_gold_from("gold_wiki", i64::MIN));
        recent.push_gold("gold_wiki", &row(30));
        assert_eq!(dropped(&recent), Some(20));
        // The latest of those dropped, whatever order they leave in.
        recent.push_gold("gold_wiki", &row(40));
        assert_eq!(dropped(&recent), Some(20));
        recent.push_gold("gold_wiki", &row(50));
        assert_eq!(dropped(&recent), Some(30));
        assert!(!recent.has_gold_from("gold_wiki", 30));
        assert!(recent.has_gold_from("gold_wiki", 31));
        let kept: Vec<i64> = recent.gold["gold_wiki"]
            .iter()
            .map(RecentGold::window_start)
            .collect();
        assert_eq!(kept, [40, 50]);
        // Rows answer as the lake's do: with the plugin that emitted them, which a filter can ask for.
        let newest = recent.gold["gold_wiki"].back().unwrap();
        assert_eq!(newest.to_json()["_plugin"], "aggregate@1");
        assert!(newest.column_is("_plugin", "aggregate@1", &serde_json::Value::Null));
        assert!(!newest.column_is("_plugin", "aggregate@2", &serde_json::Value::Null));
        recent.push_gold("gold_user", &row(60));
        assert!(!recent.gold_gaps.contains_key("gold_user"));
        assert!(recent.has_gold_from("gold_user", i64::MIN));
        // A table the lake held rows of when the process began: memory lacks every window.
        recent.gold_in_lake("gold_user");
        assert!(!recent.has_gold_from("gold_user", i64::MAX));
        // Memory that keeps no rows lacks them all.
        assert!(!Recent::with_gold_rows(0).has_gold_from("gold_wiki", 0));
    }

    /// Rows dropped before their commit are in neither memory nor the lake until it comes: the mark says so,
    /// and lifts once the commit holding the last of them is done, or seen in the log.
    #[test]
    fn rows_dropped_before_their_commit_are_unsaved_until_it() {
        let mut recent = Recent::with_gold_rows(2);
        let unsaved = |r: &Recent| r.unsaved_through("gold_wiki", r.gold_commits().floor());
        recent.push_gold("gold_wiki", &row(10)); // number 0
        let through = recent.gold_commit_started(1);
        recent.gold_committed(through); // 0 committed
        recent.push_gold("gold_wiki", &row(20)); // 1
        recent.push_gold("gold_wiki", &row(30)); // 2 drops 0: committed, so saved
        assert_eq!(unsaved(&recent), None);
        recent.push_gold("gold_wiki", &row(40)); // 3 drops 1, unsaved
        recent.push_gold("gold_wiki", &row(50)); // 4 drops 2, unsaved
        assert_eq!(unsaved(&recent), Some(30));
        recent.gold_committed(2); // holds 1 but not 2
        assert_eq!(unsaved(&recent), Some(30));
        recent.gold_committed(recent.gold_pushed);
        assert_eq!(unsaved(&recent), None);
        // A drop after that commit starts a new mark.
        recent.push_gold("gold_wiki", &row(60)); // 5 drops 3: committed
        recent.push_gold("gold_wiki", &row(5)); // 6 drops 4: committed
        assert_eq!(unsaved(&recent), None);
        recent.push_gold("gold_wiki", &row(70)); // 7 drops 5, unsaved
        assert_eq!(unsaved(&recent), Some(60));
        assert_eq!(recent.unsaved_through("gold_user", 0), None);
    }

    /// A reader of the commit log counts a commit it sees as holding its rows even before it settles here,
    /// and only the commits it sees.
    #[test]
    fn rows_are_saved_through_the_commits_the_log_holds() {
        let mut recent = Recent::with_gold_rows(10);
        let record = |first: u64, last: u64| CommitRecord {
            sequences: crate::lake::Ranges(vec![(first, last)]),
            ..Default::default()
        };
        for start in [10, 20] {
            recent.push_gold("gold_wiki", &row(start));
        }
        let first = recent.gold_commit_started(1); // sequences 1..=100, rows 0 and 1
        recent.gold_committed(first);
        recent.push_gold("gold_wiki", &row(30));
        recent.gold_commit_started(101); // sequences 101..=200, row 2; not settled
        recent.push_gold("gold_wiki", &row(40));
        let seen = recent.gold_commits();
        assert_eq!(seen.floor(), 2);
        let saved = |records: &[CommitRecord]| seen.saved_through(&recent.gold_commits(), records);
        assert_eq!(saved(&[record(1, 100)]), 2);
        let both = [record(1, 100), record(101, 200)];
        assert_eq!(saved(&both), 3);
        // A replay's record over the same sequences says nothing about these rows.
        let mut replay = record(101, 200);
        replay.replay = Some("v2".into());
        assert_eq!(saved(&[replay]), 2);
        // A commit started after the look at memory, and in the log by the time it is read, holds every row
        // seen (and more).
        recent.push_gold("gold_wiki", &row(50));
        let now = {
            recent.gold_commit_started(201); // rows 3 and 4
            recent.gold_commits()
        };
        let three = [record(1, 100), record(101, 200), record(201, 300)];
        assert_eq!(seen.saved_through(&now, &three), 5);
        // Once another host commits to the lake, memory never holds every row.
        assert!(recent.has_gold_from("gold_wiki", 41));
        recent.gold_shared_lake();
        assert!(!recent.has_gold_from("gold_wiki", 41));
    }
}
