//! The standard aggregate plugin: event-time windows closed by watermarks, one output row per window and group.
//!
//! - `tumbling` windows of `size_ms` (default 10 min), `sliding` windows of `size_ms` every `slide_ms`, and
//!   `session` windows per group that end after `gap_ms` without events (default 30 min).
//! - Group-by paths and measures are configuration (see [`measure::Measure`]).
//! - A window closes, and its row is emitted, when the watermark passes its end plus `allowed_lateness_ms`.
//!   An event whose window has already closed is quarantined with reason `late`, never dropped silently;
//!   for sessions, also one within `gap_ms` of a session of its group already emitted (it belongs there).
//! - `anomaly` adds `anomaly` and `z_score` columns: the z-score of one measure against the same group's
//!   trailing windows.
//! - Open windows live in the snapshot the host keeps (`snapshot_state`), so restarts and hot swaps lose none.
//!
//! Rows carry `window_start`/`window_end` (ms; for sessions the first and last event times), one column per
//! group-by path (dots become underscores) and one per measure. Ready configs for the Wikimedia gold tables
//! are in `configs/`.

pub mod measure;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

use measure::{Acc, MapHash, Measure, Op};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The table rows are emitted into.
    pub table: String,
    pub window: WindowSpec,
    /// Dotted JSON paths to group by; no paths means one global group.
    #[serde(default)]
    pub group_by: Vec<String>,
    pub measures: Vec<Measure>,
    /// How long after a window's end it stays open for out-of-order events, in ms.
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<Anomaly>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowSpec {
    Tumbling {
        #[serde(default = "ten_minutes")]
        size_ms: i64,
    },
    Sliding {
        size_ms: i64,
        slide_ms: i64,
    },
    Session {
        #[serde(default = "thirty_minutes")]
        gap_ms: i64,
    },
}

fn ten_minutes() -> i64 {
    600_000
}

fn thirty_minutes() -> i64 {
    1_800_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anomaly {
    /// The measure whose z-score is computed.
    pub measure: String,
    /// Trailing windows of the same group the z-score compares against.
    #[serde(default = "twelve")]
    pub history: usize,
    /// `anomaly` is true when |z| reaches this.
    #[serde(default = "three")]
    pub z_threshold: f64,
}

fn twelve() -> usize {
    12
}

fn three() -> f64 {
    3.0
}

/// Rows one `on-watermark` call returns at most (see `Aggregate::close`): a full part makes the host call
/// again.
pub const ROWS_PER_CALL: usize = weir_sdk::WATERMARK_PART_ROWS;

/// A session, or a closed window, of one group; and every window as snapshots hold it. The group's values
/// are not kept here: they are in the key the window is filed under (see [`Aggregate::add`]), and a second
/// copy was ~120 bytes of each window (a window over pages holds hundreds of thousands of groups).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Window {
    start: i64,
    /// Exclusive end for tumbling and sliding windows; the last event time for sessions.
    end: i64,
    accs: Vec<Acc>,
}

impl Window {
    /// A tumbling or sliding window's group, closing.
    fn closed(start: i64, end: i64, accs: Box<[Acc]>) -> Window {
        Window {
            start,
            end,
            accs: accs.into_vec(),
        }
    }
}

/// The separator of group values in a group key: JSON texts never hold it raw, and it sorts before every
/// character they do hold, so keys sort as their lists of values do.
const GROUP_SEPARATOR: char = '\u{1f}';

/// Group keys in the order of their texts, compared eight bytes at a time. Closing a window over pages sorts
/// ~10^5 keys that share their first ten bytes or more (`"wikidatawiki"`, the separator, `"Q`), and a
/// comparison of `str`s goes through the plugin's `memcmp`, wasi-libc's loop of one byte per step: sorting
/// took about half of the aggregates' time closing windows. Inlined into the sort: as a call per comparison
/// the sort took 2.2 % of the pipeline thread instead of 1.7 %.
#[inline]
fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x = u64::from_le_bytes(x.try_into().expect("eight bytes"));
        let y = u64::from_le_bytes(y.try_into().expect("eight bytes"));
        if x != y {
            // Read big-endian, the first differing byte decides, as it does between the texts.
            return x.swap_bytes().cmp(&y.swap_bytes());
        }
    }
    // Under eight bytes left on one side at least: byte by byte, then the shorter first.
    let done = a.len().min(b.len()) / 8 * 8;
    for (x, y) in a[done..].iter().zip(&b[done..]) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// A group key's values (JSON texts), in group-by order.
fn group_values(key: &str, columns: usize) -> impl Iterator<Item = &str> {
    key.split(GROUP_SEPARATOR).take(columns)
}

/// The open tumbling or sliding windows of one time range: each group's accumulators, by group key. A window
/// over pages holds hundreds of thousands of groups: boxed keys and accumulators make a table slot 16 bytes
/// (wasm32), which is what sets this instance's memory high-water mark when the table doubles (old and new
/// table live at once); and the range is the window's start and end, so a group keeps neither.
type Groups = HashMap<Box<str>, Box<[Acc]>, MapHash>;

/// Everything that must survive a restart or a hot swap.
#[derive(Debug, Default)]
struct State {
    watermark: Option<i64>,
    /// Arrival counter: breaks event-time ties for first/last.
    seq: u64,
    /// Tumbling and sliding windows by (end, start), then by group key: iteration order is closing order.
    windows: BTreeMap<(i64, i64), Groups>,
    /// Open sessions per group key, sorted by start.
    sessions: BTreeMap<String, Vec<Window>>,
    /// Trailing values of the anomaly measure per group key.
    history: BTreeMap<String, VecDeque<f64>>,
    /// Open sessions by (earliest `end + gap` of the key's sessions, key): a watermark visits only the keys
    /// with a session it may close, not every user. Derived from `sessions`, rebuilt on restore.
    expiries: BTreeSet<(i64, String)>,
    /// The last event time of each key's last closed session, while an event within `gap` of it may still
    /// come: such an event belongs to that session, already emitted, so it is late (a session of its own
    /// would count it twice over). Kept until the watermark makes every such event late anyway.
    closed_sessions: BTreeMap<String, i64>,
    /// `closed_sessions` by (end, key), to forget them in order. Derived, rebuilt on restore.
    closed_order: BTreeSet<(i64, String)>,
}

/// Per measure: the field index of its path, and of its filter path with the value it must equal.
type MeasureFields = (Option<usize>, Option<(usize, Value)>);

pub struct Aggregate {
    config: Config,
    fields: Vec<MeasureFields>,
    group_columns: Vec<String>,
    anomaly_index: Option<usize>,
    state: State,
    /// Reused buffers, so the per-event path allocates only for new windows and new distinct values.
    key_buf: String,
    scratch: String,
}

impl Aggregate {
    /// The state in the JSON form snapshots had before they were binary (tests check old commits restore).
    #[doc(hidden)]
    pub fn json_snapshot(&self) -> Vec<u8> {
        snapshot::write_v1_json(&self.state, self.group_columns.len())
    }

    /// The state in the binary form of 0.1.0 (tests check such snapshots restore).
    #[doc(hidden)]
    pub fn v1_snapshot(&self) -> Vec<u8> {
        snapshot::write_v1(&self.state, self.group_columns.len())
    }

    pub fn from_config(config: Config) -> Result<(Self, Plan), String> {
        if config.table.is_empty() {
            return Err("`table` must not be empty".into());
        }
        match config.window {
            WindowSpec::Tumbling { size_ms } if size_ms <= 0 => {
                return Err("window.size_ms must be positive".into());
            }
            WindowSpec::Sliding { size_ms, slide_ms }
                if size_ms <= 0 || slide_ms <= 0 || slide_ms > size_ms =>
            {
                return Err("window: sliding needs 0 < slide_ms <= size_ms".into());
            }
            WindowSpec::Session { gap_ms } if gap_ms <= 0 => {
                return Err("window.gap_ms must be positive".into());
            }
            _ => {}
        }
        if config.allowed_lateness_ms < 0 {
            return Err("`allowed_lateness_ms` must not be negative".into());
        }
        if config.measures.is_empty() {
            return Err("`measures` is empty: nothing to aggregate".into());
        }
        let mut reads: Vec<String> = Vec::new();
        let mut field_of = |path: &str, at: &str| -> Result<usize, String> {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(format!("{at}: {path:?} is not a dotted JSON path"));
            }
            Ok(reads.iter().position(|p| p == path).unwrap_or_else(|| {
                reads.push(path.to_string());
                reads.len() - 1
            }))
        };
        for (i, path) in config.group_by.iter().enumerate() {
            field_of(path, &format!("group_by[{i}]"))?;
        }
        let mut fields = Vec::new();
        for (i, m) in config.measures.iter().enumerate() {
            let at = format!("measures[{i}] ({:?})", m.name);
            let path = match (&m.path, m.op) {
                (Some(p), _) => Some(field_of(p, &at)?),
                (None, Op::Count) => None,
                (None, op) => return Err(format!("{at}: `{op:?}` needs a `path`").to_lowercase()),
            };
            if m.sign.is_some() && m.op != Op::Sum {
                return Err(format!("{at}: `sign` applies to `sum` only"));
            }
            let filter = match &m.filter {
                Some(f) => Some((field_of(&f.path, &at)?, Value::from(&f.equals))),
                None => None,
            };
            fields.push((path, filter));
        }
        let group_columns: Vec<String> = config
            .group_by
            .iter()
            .map(|p| p.replace('.', "_"))
            .collect();
        let mut columns: Vec<&str> = vec!["window_start", "window_end"];
        columns.extend(group_columns.iter().map(String::as_str));
        columns.extend(config.measures.iter().map(|m| m.name.as_str()));
        if let Some(dup) = columns
            .iter()
            .enumerate()
            .find(|(i, c)| columns[..*i].contains(c))
            .map(|(_, c)| c)
        {
            return Err(format!("column {dup:?} appears twice: rename a measure"));
        }
        let anomaly_index = match &config.anomaly {
            Some(a) => {
                if a.history < 2 || a.z_threshold.is_nan() || a.z_threshold <= 0.0 {
                    return Err(
                        "anomaly: `history` must be at least 2 and `z_threshold` positive".into(),
                    );
                }
                Some(
                    config
                        .measures
                        .iter()
                        .position(|m| m.name == a.measure)
                        .ok_or_else(|| {
                            format!(
                                "anomaly.measure {:?} is not the name of a measure",
                                a.measure
                            )
                        })?,
                )
            }
            None => None,
        };
        let plan = Plan::new()
            .reads(reads)
            .snapshot_state()
            .emits([config.table.clone()]);
        Ok((
            Aggregate {
                config,
                fields,
                group_columns,
                anomaly_index,
                state: State::default(),
                key_buf: String::new(),
                scratch: String::new(),
            },
            plan,
        ))
    }

    fn lateness(&self) -> i64 {
        self.config.allowed_lateness_ms
    }

    fn closed_before(&self, end: i64) -> bool {
        self.state
            .watermark
            .is_some_and(|w| end.saturating_add(self.lateness()) <= w)
    }

    fn new_accs(measures: &[Measure]) -> Vec<Acc> {
        measures.iter().map(|m| Acc::new(m.op)).collect()
    }

    /// Adds an event to the accumulators of one window. An associated function, so callers can hold a window
    /// of `self.state` mutably at the same time.
    fn add_to(
        measures: &[Measure],
        fields: &[MeasureFields],
        accs: &mut [Acc],
        event: &Event,
        seq: u64,
        scratch: &mut String,
    ) {
        for ((measure, (path, filter)), acc) in measures.iter().zip(fields).zip(accs) {
            if let Some((field, equals)) = filter
                && !event.value(*field).is_some_and(|v| same(equals, v))
            {
                continue;
            }
            let value = path
                .and_then(|p| event.value(p))
                .filter(|v| !matches!(v, ValueRef::Null));
            if measure.op != Op::Count && value.is_none() {
                continue;
            }
            acc.add(value, measure.sign, event.time_ms(), seq, scratch);
        }
    }

    /// Adds an event to its windows; `false` when it is late.
    fn add(&mut self, event: &Event) -> bool {
        // The group key: the group-by values' JSON texts joined by a separator no JSON text contains raw.
        let mut key = std::mem::take(&mut self.key_buf);
        key.clear();
        for i in 0..self.config.group_by.len() {
            if i > 0 {
                key.push(GROUP_SEPARATOR);
            }
            match event.value(i) {
                Some(v) => measure::write_text(&mut key, v),
                None => key.push_str("null"),
            }
        }
        self.state.seq += 1;
        let accepted = match self.config.window {
            WindowSpec::Tumbling { size_ms } => self.add_fixed(event, size_ms, size_ms, &key),
            WindowSpec::Sliding { size_ms, slide_ms } => {
                self.add_fixed(event, size_ms, slide_ms, &key)
            }
            WindowSpec::Session { gap_ms } => self.add_session(event, gap_ms, &key),
        };
        self.key_buf = key;
        accepted
    }

    /// Adds the event to every window of `size`, one starting each `slide`, that contains its time.
    fn add_fixed(&mut self, event: &Event, size: i64, slide: i64, key: &str) -> bool {
        let t = event.time_ms();
        let last_start = t.div_euclid(slide) * slide;
        let starts = (0..)
            .map(|k| last_start - k * slide)
            .take_while(|s| s + size > t);
        // All or nothing: if the earliest window has closed, the event is late for all of them.
        if starts.clone().any(|s| self.closed_before(s + size)) {
            return false;
        }
        let seq = self.state.seq;
        let (measures, fields, scratch) = (&self.config.measures, &self.fields, &mut self.scratch);
        let mut add = |accs: &mut [Acc]| Self::add_to(measures, fields, accs, event, seq, scratch);
        for start in starts {
            let range = (start + size, start);
            // A window opens with room for as many groups as the one a slide before it holds: a window over
            // pages grows to ~10^5 groups, and growing by doubling rehashed every group several times. (A
            // window with no such neighbour, opened by an event far ahead, starts small. The cost: the next
            // window's full table exists while the last one waits out lateness, ~3 MB for 10^5 groups.)
            if !self.state.windows.contains_key(&range) {
                let capacity = match self.state.windows.range(..range).next_back() {
                    Some((&(_, before), groups)) if before + slide == start => groups.len(),
                    _ => 0,
                };
                let groups = Groups::with_capacity_and_hasher(capacity, MapHash::default());
                self.state.windows.insert(range, groups);
            }
            let groups = self.state.windows.get_mut(&range).expect("just ensured");
            // One lookup for a group seen before (most events), two for a new one.
            match groups.get_mut(key) {
                Some(accs) => add(accs),
                None => {
                    let mut accs = Self::new_accs(measures).into_boxed_slice();
                    add(&mut accs);
                    groups.insert(key.into(), accs);
                }
            }
        }
        true
    }

    fn add_session(&mut self, event: &Event, gap: i64, key: &str) -> bool {
        let t = event.time_ms();
        if self.closed_before(t.saturating_add(gap))
            || self
                .state
                .closed_sessions
                .get(key)
                .is_some_and(|&end| t <= end.saturating_add(gap))
        {
            return false;
        }
        let seq = self.state.seq;
        let (measures, fields, scratch) = (&self.config.measures, &self.fields, &mut self.scratch);
        let mut add = |accs: &mut [Acc]| Self::add_to(measures, fields, accs, event, seq, scratch);
        if !self.state.sessions.contains_key(key) {
            self.state.sessions.insert(key.to_string(), Vec::new());
        }
        let sessions = self
            .state
            .sessions
            .get_mut(key)
            .expect("sessions just ensured");
        let expiry_before = earliest_expiry(sessions, gap);
        // The open sessions within `gap` of the event: it extends the one (an active user's next edit, the
        // usual case), or merges them all into one with itself.
        let near = |s: &Window| t >= s.start - gap && t <= s.end + gap;
        let mut touching = (0..sessions.len()).filter(|&i| near(&sessions[i]));
        match (touching.next(), touching.next()) {
            (Some(i), None) => {
                let session = &mut sessions[i];
                session.start = session.start.min(t);
                session.end = session.end.max(t);
                add(&mut session.accs);
            }
            _ => {
                let mut merged = Window {
                    start: t,
                    end: t,
                    accs: Self::new_accs(measures),
                };
                add(&mut merged.accs);
                let mut i = 0;
                while i < sessions.len() {
                    if near(&sessions[i]) {
                        let s = sessions.swap_remove(i);
                        merged.start = merged.start.min(s.start);
                        merged.end = merged.end.max(s.end);
                        merged.accs = merge_accs(merged.accs, s.accs);
                    } else {
                        i += 1;
                    }
                }
                // Room for exactly one more: a first push would make room for four, and most users have
                // one open session (a window is 32 bytes in wasm32, so three spare were 96 bytes a user).
                sessions.reserve_exact(1);
                sessions.push(merged);
            }
        }
        sessions.sort_by_key(|s| s.start);
        let expiry = earliest_expiry(sessions, gap);
        if expiry != expiry_before {
            if let Some(before) = expiry_before {
                self.state.expiries.remove(&(before, key.to_string()));
            }
            if let Some(expiry) = expiry {
                self.state.expiries.insert((expiry, key.to_string()));
            }
        }
        true
    }

    /// Closes the windows the watermark has passed, in order of end time, and returns their rows: at most
    /// [`ROWS_PER_CALL`] of them, the rest on the next calls (the host calls again with the same watermark
    /// after a full part). A window over pages closes hundreds of thousands of groups at once, and their
    /// rows, built and then copied out whole, set this instance's memory high-water mark, which never goes
    /// down. Groups waiting for their turn stay in the state, already closed: a late event for one is
    /// quarantined like any other.
    fn close(&mut self, watermark: i64) -> Vec<Row> {
        self.state.watermark = Some(self.state.watermark.map_or(watermark, |w| w.max(watermark)));
        // Closed windows with their group keys.
        let mut closed: Vec<(Box<str>, Window)> = Vec::new();
        while let Some((&(end, start), groups)) = self.state.windows.first_key_value() {
            if !self.closed_before(end) || closed.len() >= ROWS_PER_CALL {
                break;
            }
            let room = ROWS_PER_CALL - closed.len();
            if groups.len() <= room {
                let groups = self
                    .state
                    .windows
                    .remove(&(end, start))
                    .expect("first key just read");
                let mut groups: Vec<(Box<str>, Box<[Acc]>)> = groups.into_iter().collect();
                // Rows of one window in key order, whatever the map's order.
                groups.sort_unstable_by(|a, b| key_order(&a.0, &b.0));
                closed.extend(
                    groups
                        .into_iter()
                        .map(|(key, accs)| (key, Window::closed(start, end, accs))),
                );
            } else {
                // The first `room` groups in key order (chosen in linear time), the rest next call.
                let mut keys: Vec<&Box<str>> = groups.keys().collect();
                keys.select_nth_unstable_by(room, |a, b| key_order(a, b));
                let mut keys: Vec<Box<str>> = keys[..room].iter().map(|k| (*k).clone()).collect();
                keys.sort_unstable_by(|a, b| key_order(a, b));
                let groups = self
                    .state
                    .windows
                    .get_mut(&(end, start))
                    .expect("first key just read");
                closed.extend(keys.into_iter().map(|k| {
                    let accs = groups.remove(&k).expect("a key of this map");
                    (k, Window::closed(start, end, accs))
                }));
            }
        }
        if let WindowSpec::Session { gap_ms } = self.config.window {
            while let Some((expiry, _)) = self.state.expiries.first() {
                if !self.closed_before(*expiry) || closed.len() >= ROWS_PER_CALL {
                    break;
                }
                let (_, key) = self.state.expiries.pop_first().expect("first just read");
                let Some(sessions) = self.state.sessions.remove(&key) else {
                    continue;
                };
                let (done, open): (Vec<Window>, Vec<Window>) = sessions
                    .into_iter()
                    .partition(|s| self.closed_before(s.end.saturating_add(gap_ms)));
                if let Some(end) = done.iter().map(|w| w.end).max() {
                    self.note_closed_session(&key, end);
                }
                closed.extend(done.into_iter().map(|w| (key.as_str().into(), w)));
                if let Some(expiry) = earliest_expiry(&open, gap_ms) {
                    self.state.expiries.insert((expiry, key.clone()));
                    self.state.sessions.insert(key, open);
                }
            }
            closed.sort_by(|(ka, a), (kb, b)| (a.end, a.start, ka).cmp(&(b.end, b.start, kb)));
            // Forget closed sessions no event can touch without being late by its own time already.
            while let Some((end, _)) = self.state.closed_order.first() {
                if !self.closed_before(end.saturating_add(gap_ms.saturating_mul(2))) {
                    break;
                }
                let (_, key) = self
                    .state
                    .closed_order
                    .pop_first()
                    .expect("first just read");
                self.state.closed_sessions.remove(&key);
            }
        }
        closed
            .into_iter()
            .map(|(key, window)| self.row(&key, window))
            .collect()
    }

    /// Remembers that `key`'s sessions up to `end` are closed (see `State::closed_sessions`).
    fn note_closed_session(&mut self, key: &str, end: i64) {
        let state = &mut self.state;
        if let Some(&before) = state.closed_sessions.get(key) {
            if before >= end {
                return;
            }
            state.closed_order.remove(&(before, key.to_string()));
        }
        state.closed_sessions.insert(key.to_string(), end);
        state.closed_order.insert((end, key.to_string()));
    }

    fn row(&mut self, key: &str, window: Window) -> Row {
        let mut row = Row::new(self.config.table.as_str());
        // Every column at once: grown push by push, the list moved three times per row, and a closing
        // window emits a row per group.
        row.columns
            .reserve(2 + self.group_columns.len() + self.config.measures.len() + 2);
        let mut row = row
            .with("window_start", window.start)
            .with("window_end", window.end);
        let group = group_values(key, self.group_columns.len());
        for (column, value) in self.group_columns.iter().zip(group) {
            row = row.with(column.as_str(), measure::from_text(value));
        }
        let results: Vec<Value> = window.accs.iter().map(Acc::result).collect();
        if let (Some(index), Some(anomaly)) = (self.anomaly_index, &self.config.anomaly) {
            let value = match results[index] {
                Value::Integer(n) => n as f64,
                Value::Float(f) => f,
                _ => 0.0,
            };
            // Keyed as 0.1.0 keyed it, so snapshots carry their history over.
            let group: Vec<&str> = group_values(key, self.group_columns.len()).collect();
            let key = serde_json::to_string(&group).expect("strings serialize");
            let history = self.state.history.entry(key).or_default();
            let z = z_score(history, value);
            history.push_back(value);
            while history.len() > anomaly.history {
                history.pop_front();
            }
            for (measure, result) in self.config.measures.iter().zip(results) {
                row = row.with(measure.name.as_str(), result);
            }
            row.with("anomaly", z.is_some_and(|z| z.abs() >= anomaly.z_threshold))
                .with("z_score", z)
        } else {
            for (measure, result) in self.config.measures.iter().zip(results) {
                row = row.with(measure.name.as_str(), result);
            }
            row
        }
    }
}

/// The z-score of `value` against `history`; `None` with fewer than two points or no variance.
fn z_score(history: &VecDeque<f64>, value: f64) -> Option<f64> {
    if history.len() < 2 {
        return None;
    }
    let n = history.len() as f64;
    let mean = history.iter().sum::<f64>() / n;
    let var = history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (var > 0.0).then(|| (value - mean) / var.sqrt())
}

fn same(a: &Value, b: ValueRef<'_>) -> bool {
    match (a.as_value_ref(), b) {
        (ValueRef::Integer(x), ValueRef::Float(y)) | (ValueRef::Float(y), ValueRef::Integer(x)) => {
            x as f64 == y
        }
        (a, b) => a == b,
    }
}

/// Merges two sessions' accumulators (session windows merge when an event bridges them).
fn merge_accs(a: Vec<Acc>, b: Vec<Acc>) -> Vec<Acc> {
    a.into_iter()
        .zip(b)
        .map(|(x, y)| measure::merge(x, y))
        .collect()
}

impl Plugin for Aggregate {
    fn manifest() -> Manifest {
        Manifest::new(
            "aggregate",
            env!("CARGO_PKG_VERSION"),
            Kind::Aggregate,
            "Event-time windowed aggregates",
        )
    }

    fn init(config: &str) -> Result<(Self, Plan), String> {
        Aggregate::from_config(parse_config(config)?)
    }

    fn process(&mut self, event: &Event) -> Outcome {
        if self.add(event) {
            Outcome::keep()
        } else {
            Outcome::quarantine(
                "late",
                vec![format!(
                    "window closed before event time {}",
                    event.time_ms()
                )],
            )
        }
    }

    fn on_watermark(&mut self, watermark_ms: i64) -> Vec<Row> {
        self.close(watermark_ms)
    }

    fn snapshot(&self) -> Vec<u8> {
        snapshot::write(&self.state)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        if snapshot.is_empty() {
            return Ok(());
        }
        let state = snapshot::read(snapshot)?;
        // Open windows of another configuration would be read as this one's: a count serving a distinct
        // count, sessions as tumbling windows. Refused; a replay rebuilds them.
        let sessions = matches!(self.config.window, WindowSpec::Session { .. });
        if (sessions && !state.windows.is_empty()) || (!sessions && !state.sessions.is_empty()) {
            return Err(
                "the snapshot holds windows of another kind (tumbling or sliding, or sessions) than this \
                 configuration: replay instead of restoring"
                    .into(),
            );
        }
        if let Some(accs) = state
            .windows
            .values()
            .flat_map(|groups| groups.values().map(|accs| &**accs))
            .chain(state.sessions.values().flatten().map(|w| &*w.accs))
            .next()
        {
            let ops: Vec<Op> = accs.iter().map(Acc::op).collect();
            let configured: Vec<Op> = self.config.measures.iter().map(|m| m.op).collect();
            if ops != configured {
                return Err(format!(
                    "the snapshot's measures are {ops:?}, this configuration's {configured:?}: replay \
                     instead of restoring"
                ));
            }
        }
        self.state = state;
        if let WindowSpec::Session { gap_ms } = self.config.window {
            let State {
                sessions, expiries, ..
            } = &mut self.state;
            for (key, open) in sessions.iter() {
                if let Some(expiry) = earliest_expiry(open, gap_ms) {
                    expiries.insert((expiry, key.clone()));
                }
            }
            let State {
                closed_sessions,
                closed_order,
                ..
            } = &mut self.state;
            closed_order.extend(closed_sessions.iter().map(|(key, &end)| (end, key.clone())));
        }
        Ok(())
    }
}

/// When the first of these sessions may close: its last event time plus the gap.
fn earliest_expiry(sessions: &[Window], gap_ms: i64) -> Option<i64> {
    sessions.iter().map(|s| s.end.saturating_add(gap_ms)).min()
}

export_plugin!(Aggregate);

/// Ready configurations for the gold tables of a Wikimedia `recentchange` pipeline, written to `configs/` by
/// the tests (`WEIR_BLESS=1` regenerates them). They read the fields the standard enrich plugin adds
/// (`is_bot`, `is_anonymous`, `bytes_changed`), so they run after it in the chain.
pub fn gold_configs() -> Vec<(&'static str, Config)> {
    use measure::{Filter, Sign};
    let m = |name: &str, op, path: Option<&str>| Measure {
        name: name.into(),
        op,
        path: path.map(Into::into),
        filter: None,
        sign: None,
    };
    let count_if = |name: &str, path: &str, equals: serde_json::Value| Measure {
        filter: Some(Filter {
            path: path.into(),
            equals,
        }),
        ..m(name, Op::Count, None)
    };
    let bytes = |name: &str, sign| Measure {
        sign: Some(sign),
        ..m(name, Op::Sum, Some("bytes_changed"))
    };
    let tumbling = WindowSpec::Tumbling {
        size_ms: ten_minutes(),
    };
    let config = |table: &str, window, group_by: &[&str], measures, anomaly| Config {
        table: table.into(),
        window,
        group_by: group_by.iter().map(|g| g.to_string()).collect(),
        measures,
        allowed_lateness_ms: 60_000,
        anomaly,
    };
    vec![
        (
            "gold_entity",
            config(
                "gold_entity",
                tumbling,
                &["wiki", "title"],
                vec![
                    m("events", Op::Count, None),
                    count_if("edits", "type", "edit".into()),
                    m("distinct_users", Op::DistinctCount, Some("user")),
                    bytes("bytes_added", Sign::Positive),
                    bytes("bytes_removed", Sign::Negative),
                    m("last_revision", Op::Last, Some("revision.new")),
                ],
                None,
            ),
        ),
        (
            "gold_user",
            config(
                "gold_user",
                tumbling,
                &["user"],
                vec![
                    m("events", Op::Count, None),
                    count_if("edits", "type", "edit".into()),
                    m("pages", Op::DistinctCount, Some("title")),
                    m("wikis", Op::DistinctCount, Some("wiki")),
                    bytes("bytes_added", Sign::Positive),
                    bytes("bytes_removed", Sign::Negative),
                    m("is_bot", Op::Last, Some("is_bot")),
                ],
                None,
            ),
        ),
        (
            "gold_wiki",
            config(
                "gold_wiki",
                tumbling,
                &["wiki"],
                vec![
                    m("events", Op::Count, None),
                    count_if("edits", "type", "edit".into()),
                    count_if("new_pages", "type", "new".into()),
                    count_if("bot_events", "is_bot", true.into()),
                    count_if("human_events", "is_bot", false.into()),
                    count_if("anonymous_events", "is_anonymous", true.into()),
                    m("distinct_users", Op::DistinctCount, Some("user")),
                    bytes("bytes_added", Sign::Positive),
                    bytes("bytes_removed", Sign::Negative),
                ],
                Some(Anomaly {
                    measure: "events".into(),
                    history: twelve(),
                    z_threshold: three(),
                }),
            ),
        ),
        (
            "user_sessions",
            config(
                "user_sessions",
                WindowSpec::Session {
                    gap_ms: thirty_minutes(),
                },
                &["user"],
                vec![
                    m("events", Op::Count, None),
                    m("pages", Op::DistinctCount, Some("title")),
                    m("wikis", Op::DistinctCount, Some("wiki")),
                ],
                None,
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::key_order;

    /// Keys order as their texts do: shared prefixes of every length around the eight-byte words, a key
    /// before its own extensions, multi-byte text.
    #[test]
    fn keys_order_as_their_texts() {
        let mut keys: Vec<String> = Vec::new();
        for stem in ["", "\"wikidatawiki\"\u{1f}\"Q", "\"enwiki\"\u{1f}\"Ä"] {
            for tail in [
                "",
                "1",
                "12",
                "123456789",
                "2",
                "Zé",
                "é",
                "\u{7f}",
                "a\u{1f}b",
            ] {
                for pad in 0..10 {
                    keys.push(format!("{stem}{}{tail}", "x".repeat(pad)));
                }
            }
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(key_order(a, b), a.cmp(b), "{a:?} against {b:?}");
            }
        }
    }
}
