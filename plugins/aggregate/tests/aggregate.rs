use std::process::Command;

use serde_json::{Value as Json, json};
use weir_plugin_aggregate::{Aggregate, Config, gold_configs};
use weir_sdk::testing::{reset_host, timed_batch};
use weir_sdk::{Plugin, Row, Value, Verdict};

const T0: i64 = 1_740_000_000_000;

/// A small deterministic generator (LCG), so the test needs no crates and fails the same way every time.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// ~3 hours of recentchange-like events, out of order by up to 2 minutes, with the enrich fields present.
fn generated(n: usize) -> Vec<(i64, Json)> {
    let mut rng = Lcg(7);
    let types = ["edit", "edit", "edit", "new", "log", "categorize"];
    (0..n)
        .map(|i| {
            let t = T0 + (i as i64) * 3_600 + rng.next(120_000) as i64 - 60_000;
            let user = rng.next(40);
            let ty = types[rng.next(types.len() as u64) as usize];
            let bytes = rng.next(2_000) as i64 - 800;
            let wiki = ["enwiki", "dewiki", "frwiki", "wikidatawiki", "commonswiki"][rng.next(5) as usize];
            let doc = json!({
                "meta": {"id": format!("id-{i}")},
                "wiki": wiki,
                "title": format!("Page {}", rng.next(150)),
                "user": if user < 6 { format!("192.0.2.{user}") } else { format!("User{user}") },
                "type": ty,
                "is_bot": user.is_multiple_of(7),
                "is_anonymous": user < 6,
                "bytes_changed": if ty == "edit" || ty == "new" { json!(bytes) } else { Json::Null },
            });
            (t, doc)
        })
        .collect()
}

/// Runs the plugin natively over `events` in batches, with a watermark trailing the newest event by
/// `delay_ms` after each batch and a final one that closes everything.
fn run_plugin(
    config: &Config,
    events: &[(i64, Json)],
    batch: usize,
    delay_ms: i64,
) -> (Vec<Row>, usize) {
    reset_host();
    let (mut plugin, plan) = Aggregate::from_config(config.clone()).unwrap();
    let mut rows = Vec::new();
    let mut late = 0;
    let mut max_t = i64::MIN;
    for chunk in events.chunks(batch) {
        max_t = chunk.iter().map(|(t, _)| *t).fold(max_t, i64::max);
        let projected = timed_batch(chunk.iter().map(|(t, doc)| (*t, doc)), &plan);
        let out = plugin.process_batch(&projected);
        late += out
            .outcomes()
            .iter()
            .filter(|o| matches!(&o.verdict, Verdict::Quarantine(q) if q.reason == "late"))
            .count();
        rows.extend(drain(&mut plugin, max_t - delay_ms));
    }
    rows.extend(drain(&mut plugin, i64::MAX));
    (rows, late)
}

/// Calls `on_watermark` as the host does: again with the same watermark after a full part.
fn drain(plugin: &mut Aggregate, watermark: i64) -> Vec<Row> {
    let mut rows = Vec::new();
    loop {
        let part = plugin.on_watermark(watermark);
        let more = part.len() >= weir_sdk::WATERMARK_PART_ROWS;
        rows.extend(part);
        if !more {
            return rows;
        }
    }
}

/// A window of many groups closes over several calls, each bounded, in group order, every group once;
/// a late event for a group still waiting its turn is quarantined, and a snapshot taken in between
/// resumes the rest.
#[test]
fn a_large_closing_comes_in_bounded_parts() {
    reset_host();
    let config: Config = serde_json::from_value(json!({
        "table": "gold_entity",
        "window": {"kind": "tumbling", "size_ms": 600000},
        "group_by": ["title"],
        "measures": [{"name": "events", "op": "count"}, {"name": "users", "op": "distinct_count", "path": "user"}],
    }))
    .unwrap();
    let (mut plugin, plan) = Aggregate::from_config(config.clone()).unwrap();
    let pages = 3 * weir_plugin_aggregate::ROWS_PER_CALL + 100;
    let events: Vec<(i64, Json)> = (0..pages * 2)
        .map(|i| {
            (
                T0 + 1_000,
                json!({"title": format!("Page {:06}", i % pages), "user": format!("u{}", i % 3)}),
            )
        })
        .collect();
    let batch = timed_batch(events.iter().map(|(t, doc)| (*t, doc)), &plan);
    plugin.process_batch(&batch);
    let first = plugin.on_watermark(i64::MAX / 2);
    assert_eq!(first.len(), weir_plugin_aggregate::ROWS_PER_CALL);
    // A late event for a page not yet emitted: its window is closed all the same.
    let late = json!({"title": format!("Page {:06}", pages - 1), "user": "late"});
    let out = plugin.process_batch(&timed_batch([(T0 + 2_000, &late)], &plan));
    assert!(matches!(&out.outcomes()[0].verdict, Verdict::Quarantine(q) if q.reason == "late"));
    // The rest survives a snapshot and restore.
    let snapshot = plugin.snapshot();
    let (mut restored, _) = Aggregate::from_config(config).unwrap();
    restored.restore(&snapshot).unwrap();
    let rest = drain(&mut restored, i64::MAX / 2);
    let titles: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|r| match r.get("title") {
            Some(Value::Text(t)) => t.clone(),
            other => panic!("title {other:?}"),
        })
        .collect();
    let mut sorted = titles.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(titles, sorted, "in key order, each once");
    assert_eq!(titles.len(), pages);
    assert!(
        first
            .iter()
            .chain(&rest)
            .all(|r| r.get("events") == Some(&Value::Integer(2)))
    );
}

/// Rows as sorted canonical JSON texts, without the anomaly columns (the reference does not compute them).
fn canonical_rows(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| {
            let map: serde_json::Map<String, Json> = r
                .columns
                .iter()
                .filter(|(c, _)| c != "anomaly" && c != "z_score")
                .map(|(c, v)| (c.clone(), Json::from(v)))
                .collect();
            Json::Object(map).to_string()
        })
        .collect();
    out.sort();
    out
}

/// The reference computation in Python over the same events.
fn reference(config: &Config, events: &[(i64, Json)]) -> Vec<String> {
    let dir = tempfile_dir();
    let config_path = dir.join("config.json");
    let events_path = dir.join("events.ndjson");
    std::fs::write(&config_path, serde_json::to_string(config).unwrap()).unwrap();
    let lines: Vec<String> = events
        .iter()
        .map(|(t, d)| json!({"time_ms": t, "doc": d}).to_string())
        .collect();
    std::fs::write(&events_path, lines.join("\n") + "\n").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&config_path)
        .arg(&events_path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Map<String, Json>> = serde_json::from_slice(&out.stdout).unwrap();
    let mut rows: Vec<String> = rows
        .into_iter()
        .map(|r| Json::Object(r).to_string())
        .collect();
    rows.sort();
    rows
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "weir-aggregate-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(window: Json, group_by: Json) -> Config {
    serde_json::from_value(json!({
        "table": "t",
        "window": window,
        "group_by": group_by,
        "measures": [
            {"name": "events", "op": "count"},
            {"name": "edits", "op": "count", "filter": {"path": "type", "equals": "edit"}},
            {"name": "bytes_added", "op": "sum", "path": "bytes_changed", "sign": "positive"},
            {"name": "bytes_removed", "op": "sum", "path": "bytes_changed", "sign": "negative"},
            {"name": "users", "op": "distinct_count", "path": "user"},
            {"name": "smallest", "op": "min", "path": "bytes_changed"},
            {"name": "largest", "op": "max", "path": "bytes_changed"},
            {"name": "first_title", "op": "first", "path": "title"},
            {"name": "last_title", "op": "last", "path": "title"}
        ]
    }))
    .unwrap()
}

fn cross_check(config: Config) {
    let events = generated(3_000);
    let (rows, late) = run_plugin(&config, &events, 100, 300_000);
    assert_eq!(
        late, 0,
        "the watermark trails by more than the disorder: nothing is late"
    );
    let got = canonical_rows(&rows);
    let want = reference(&config, &events);
    assert_eq!(got.len(), want.len(), "row count");
    assert!(
        got.len() > 20,
        "only {} rows: the generator should span many windows and groups",
        got.len()
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

#[test]
fn tumbling_windows_match_the_reference() {
    cross_check(config(
        json!({"kind": "tumbling", "size_ms": 600_000}),
        json!(["wiki"]),
    ));
}

#[test]
fn sliding_windows_match_the_reference() {
    cross_check(config(
        json!({"kind": "sliding", "size_ms": 600_000, "slide_ms": 120_000}),
        json!(["wiki", "type"]),
    ));
}

#[test]
fn session_windows_match_the_reference() {
    cross_check(config(
        json!({"kind": "session", "gap_ms": 240_000}),
        json!(["user"]),
    ));
}

/// An event within the gap of a session already emitted belongs to it: it is late, not a session of its
/// own (which counted the user's edits twice over). After a snapshot and restore too; one past the gap
/// starts a new session.
#[test]
fn an_event_of_an_emitted_session_is_late() {
    const MIN: i64 = 60_000;
    let config = config(
        json!({"kind": "session", "gap_ms": 30 * MIN}),
        json!(["user"]),
    );
    let (mut plugin, plan) = Aggregate::from_config(config.clone()).unwrap();
    let doc = json!({"user": "Ann", "type": "edit"});
    let ev = |t: i64| timed_batch(std::iter::once((t, &doc)), &plan);
    assert!(plugin.process_batch(&ev(0)).outcomes()[0].is_keep());
    assert_eq!(plugin.on_watermark(31 * MIN).len(), 1, "the session closed");
    let late = plugin.process_batch(&ev(5 * MIN));
    assert!(
        matches!(&late.outcomes()[0].verdict, Verdict::Quarantine(q) if q.reason == "late"),
        "{:?}",
        late.outcomes()[0].verdict
    );
    let (mut restored, _) = Aggregate::from_config(config).unwrap();
    restored.restore(&plugin.snapshot()).unwrap();
    let late = restored.process_batch(&ev(29 * MIN));
    assert!(matches!(&late.outcomes()[0].verdict, Verdict::Quarantine(q) if q.reason == "late"));
    assert!(restored.process_batch(&ev(45 * MIN)).outcomes()[0].is_keep());
    let rows = restored.on_watermark(i64::MAX);
    assert_eq!(rows.len(), 1, "only the new session: {rows:?}");
    assert_eq!(rows[0].get("events"), Some(&Value::Integer(1)));
}

#[test]
fn global_group_and_batch_size_do_not_change_the_result() {
    let config = config(json!({"kind": "tumbling", "size_ms": 900_000}), json!([]));
    let events = generated(2_000);
    let (a, _) = run_plugin(&config, &events, 1, 300_000);
    let (b, _) = run_plugin(&config, &events, 1_000, 300_000);
    assert_eq!(canonical_rows(&a), canonical_rows(&b));
    assert_eq!(canonical_rows(&a), reference(&config, &events));
}

#[test]
fn late_events_are_quarantined_not_lost() {
    let mut config = config(json!({"kind": "tumbling", "size_ms": 1_000}), json!([]));
    config.allowed_lateness_ms = 500;
    let (mut plugin, plan) = Aggregate::from_config(config).unwrap();
    let edit = json!({"type": "edit"});
    let ev = |times: &[i64]| timed_batch(times.iter().map(|t| (*t, &edit)), &plan);
    assert!(
        plugin
            .process_batch(&ev(&[100, 1_100]))
            .outcomes()
            .iter()
            .all(|o| o.is_keep())
    );
    assert!(
        plugin.on_watermark(1_400).is_empty(),
        "window [0,1000) stays open for 500 ms of lateness"
    );
    assert!(
        plugin.process_batch(&ev(&[900])).outcomes()[0].is_keep(),
        "late but allowed"
    );
    let rows = plugin.on_watermark(1_500);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get("events"), Some(&Value::Integer(2)));
    let out = plugin.process_batch(&ev(&[999, 1_200]));
    assert!(matches!(&out.outcomes()[0].verdict, Verdict::Quarantine(q) if q.reason == "late"));
    assert!(out.outcomes()[1].is_keep());
}

#[test]
fn windows_survive_a_snapshot_and_restore() {
    let config = config(
        json!({"kind": "session", "gap_ms": 240_000}),
        json!(["user"]),
    );
    let events = generated(1_000);
    let (expected, _) = run_plugin(&config, &events, 100, 300_000);
    // Same run, but the plugin is rebuilt from a snapshot halfway (a restart or a hot swap).
    let (mut first, plan) = Aggregate::from_config(config.clone()).unwrap();
    let project_all =
        |chunk: &[(i64, Json)]| timed_batch(chunk.iter().map(|(t, d)| (*t, d)), &plan);
    let mut rows = Vec::new();
    let mut max_t = i64::MIN;
    let (a, b) = events.split_at(500);
    for chunk in a.chunks(100) {
        max_t = max_t.max(chunk.iter().map(|(t, _)| *t).max().unwrap());
        first.process_batch(&project_all(chunk));
        rows.extend(first.on_watermark(max_t - 300_000));
    }
    let snapshot = first.snapshot();
    // Lakes written before snapshots were binary hold JSON ones: they restore to the same state.
    let closed_from = |snapshot: &[u8]| {
        let (mut probe, _) = Aggregate::from_config(config.clone()).unwrap();
        probe.restore(snapshot).unwrap();
        canonical_rows(&probe.on_watermark(i64::MAX))
    };
    assert_eq!(closed_from(&first.json_snapshot()), closed_from(&snapshot));
    assert_eq!(closed_from(&first.v1_snapshot()), closed_from(&snapshot));
    let (mut second, _) = Aggregate::from_config(config).unwrap();
    second.restore(&snapshot).unwrap();
    for chunk in b.chunks(100) {
        max_t = max_t.max(chunk.iter().map(|(t, _)| *t).max().unwrap());
        second.process_batch(&project_all(chunk));
        rows.extend(second.on_watermark(max_t - 300_000));
    }
    rows.extend(second.on_watermark(i64::MAX));
    assert_eq!(canonical_rows(&rows), canonical_rows(&expected));
}

/// A snapshot restores only into a configuration with the same kind of windows and the same measures: a hot
/// swap to one with its measures reordered read one measure's accumulators as another's.
#[test]
fn a_snapshot_of_another_configuration_is_refused() {
    let tumbling = config(
        json!({"kind": "tumbling", "size_ms": 600_000}),
        json!(["wiki"]),
    );
    let (mut plugin, plan) = Aggregate::from_config(tumbling.clone()).unwrap();
    let events = generated(200);
    plugin.process_batch(&timed_batch(events.iter().map(|(t, d)| (*t, d)), &plan));
    let snapshot = plugin.snapshot();

    let mut reordered = tumbling.clone();
    reordered.measures.swap(0, 4);
    let (mut other, _) = Aggregate::from_config(reordered).unwrap();
    let err = other.restore(&snapshot).unwrap_err();
    assert!(err.contains("measures") && err.contains("replay"), "{err}");

    let sessions = config(
        json!({"kind": "session", "gap_ms": 240_000}),
        json!(["wiki"]),
    );
    let (mut other, _) = Aggregate::from_config(sessions).unwrap();
    let err = other.restore(&snapshot).unwrap_err();
    assert!(err.contains("another kind"), "{err}");

    let (mut same, _) = Aggregate::from_config(tumbling).unwrap();
    same.restore(&snapshot).unwrap();
}

/// Snapshots of 0.1.0, binary or JSON, whose windows also held their group's values, restore to the same
/// open windows as today's.
#[test]
fn snapshots_of_older_versions_restore() {
    for config in [
        config(
            json!({"kind": "tumbling", "size_ms": 600_000}),
            json!(["wiki", "title"]),
        ),
        config(
            json!({"kind": "session", "gap_ms": 240_000}),
            json!(["user"]),
        ),
        config(json!({"kind": "tumbling", "size_ms": 600_000}), json!([])),
    ] {
        let events = generated(1_000);
        let (mut plugin, plan) = Aggregate::from_config(config.clone()).unwrap();
        plugin.process_batch(&timed_batch(events.iter().map(|(t, d)| (*t, d)), &plan));
        let closed_from = |snapshot: &[u8]| {
            let (mut probe, _) = Aggregate::from_config(config.clone()).unwrap();
            probe.restore(snapshot).unwrap();
            canonical_rows(&probe.on_watermark(i64::MAX))
        };
        let today = closed_from(&plugin.snapshot());
        assert!(!today.is_empty());
        assert_eq!(closed_from(&plugin.v1_snapshot()), today);
        assert_eq!(closed_from(&plugin.json_snapshot()), today);
        assert_eq!(canonical_rows(&plugin.on_watermark(i64::MAX)), today);
    }
}

/// Snapshots that aggregate 0.1.0 itself wrote (in `fixtures/0.1.0/`, with the rows 0.1.0 went on to emit)
/// restore in this version and go on to emit the same rows in the same order: page windows with two group
/// columns, sessions, and anomaly z-scores that depend on the history in the snapshot.
#[test]
fn snapshots_written_by_0_1_0_go_on_to_the_same_rows() {
    for (name, config) in compat_configs() {
        let (snapshot, want) = fixture("0.1.0", name);
        assert!(snapshot.starts_with(b"WAGG1"), "{name}: a 0.1.0 snapshot");
        assert_eq!(rows_after_restore(&config, &snapshot), want, "{name}");
    }
}

/// The same for snapshots of 0.2.1 (in `fixtures/0.2.1/`), the last version whose accumulators kept their
/// snapshot form in memory; and after the same steps this version writes the very same bytes, so 0.2.1
/// restores what this version writes (a rollback to it keeps every open window). Sessions are followed by
/// the closed sessions this version remembers, which 0.2.1 does not read (it stops after the state).
#[test]
fn snapshots_of_0_2_1_restore_and_are_written_the_same() {
    for (name, config) in compat_configs() {
        let (snapshot, want) = fixture("0.2.1", name);
        assert!(snapshot.starts_with(b"WAGG2"), "{name}: a 0.2.1 snapshot");
        assert_eq!(rows_after_restore(&config, &snapshot), want, "{name}");
        let events = generated(600);
        let (a, _) = events.split_at(300);
        let (mut plugin, plan) = Aggregate::from_config(config).unwrap();
        plugin.process_batch(&timed_batch(a.iter().map(|(t, d)| (*t, d)), &plan));
        let max = a.iter().map(|(t, _)| *t).max().unwrap();
        plugin.on_watermark(max - 300_000);
        let written = plugin.snapshot();
        if name == "sessions" {
            assert!(written.starts_with(&snapshot) && written.len() > snapshot.len());
        } else {
            assert!(written == snapshot, "{name}: not 0.2.1's bytes");
        }
    }
}

/// A fixture's snapshot, and the rows its version went on to emit (see `fixtures/*/README.md`).
fn fixture(version: &str, name: &str) -> (Vec<u8>, Vec<Json>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(version);
    let snapshot = std::fs::read(dir.join(format!("{name}.snapshot"))).unwrap();
    let rows: Vec<Json> = std::fs::read_to_string(dir.join(format!("{name}.rows.ndjson")))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(!rows.is_empty());
    (snapshot, rows)
}

/// The rows a plugin restored from `snapshot` emits, all columns, in emitted order, over the second half of
/// the fixtures' events (the steps the fixtures were written with).
fn rows_after_restore(config: &Config, snapshot: &[u8]) -> Vec<Json> {
    let events = generated(600);
    let (_, b) = events.split_at(300);
    let (mut plugin, plan) = Aggregate::from_config(config.clone()).unwrap();
    plugin.restore(snapshot).unwrap();
    plugin.process_batch(&timed_batch(b.iter().map(|(t, d)| (*t, d)), &plan));
    let max = b.iter().map(|(t, _)| *t).max().unwrap();
    let mut rows = plugin.on_watermark(max - 300_000);
    rows.extend(plugin.on_watermark(i64::MAX));
    rows.iter()
        .map(|r| {
            let map: serde_json::Map<String, Json> = r
                .columns
                .iter()
                .map(|(c, v)| (c.clone(), Json::from(v)))
                .collect();
            Json::Object(map)
        })
        .collect()
}

/// The configurations of the fixtures.
fn compat_configs() -> Vec<(&'static str, Config)> {
    vec![
        (
            "pages",
            config(
                json!({"kind": "tumbling", "size_ms": 600_000}),
                json!(["wiki", "title"]),
            ),
        ),
        (
            "sessions",
            config(
                json!({"kind": "session", "gap_ms": 240_000}),
                json!(["user"]),
            ),
        ),
        (
            "anomaly",
            serde_json::from_value(json!({
                "table": "t", "window": {"kind": "tumbling", "size_ms": 60_000},
                "group_by": ["wiki"],
                "measures": [{"name": "events", "op": "count"}],
                "anomaly": {"measure": "events", "history": 3, "z_threshold": 1.0}
            }))
            .unwrap(),
        ),
    ]
}

#[test]
fn anomaly_flags_a_spike_against_trailing_windows() {
    let config: Config = serde_json::from_value(json!({
        "table": "t", "window": {"kind": "tumbling", "size_ms": 1_000},
        "measures": [{"name": "events", "op": "count"}],
        "anomaly": {"measure": "events", "history": 5, "z_threshold": 3.0}
    }))
    .unwrap();
    let (mut plugin, plan) = Aggregate::from_config(config).unwrap();
    let counts = [10, 11, 9, 10, 12, 10, 60];
    for (w, count) in counts.iter().enumerate() {
        let empty = json!({});
        let events = timed_batch((0..*count).map(|i| (w as i64 * 1_000 + i, &empty)), &plan);
        plugin.process_batch(&events);
    }
    let rows = plugin.on_watermark(i64::MAX);
    let flags: Vec<bool> = rows
        .iter()
        .map(|r| r.get("anomaly") == Some(&Value::Boolean(true)))
        .collect();
    assert_eq!(flags, [false, false, false, false, false, false, true]);
    assert_eq!(rows[0].get("z_score"), Some(&Value::Null));
}

#[test]
fn bad_configs_name_the_problem() {
    let err = |c: Json| Aggregate::init(&c.to_string()).err().unwrap();
    let base = |window: Json, measures: Json| json!({"table": "t", "window": window, "measures": measures});
    let count = json!([{"name": "n", "op": "count"}]);
    assert!(
        err(base(json!({"kind": "hopping"}), count.clone())).contains("unknown variant `hopping`")
    );
    assert!(
        err(base(
            json!({"kind": "sliding", "size_ms": 10, "slide_ms": 20}),
            count.clone()
        ))
        .contains("slide_ms <= size_ms")
    );
    assert!(
        err(base(
            json!({"kind": "tumbling"}),
            json!([{"name": "s", "op": "sum"}])
        ))
        .contains("needs a `path`")
    );
    assert!(
        err(base(
            json!({"kind": "tumbling"}),
            json!([{"name": "window_end", "op": "count"}])
        ))
        .contains("appears twice")
    );
    assert!(
        err(base(
            json!({"kind": "tumbling"}),
            json!([{"name": "n", "op": "count", "sign": "positive"}])
        ))
        .contains("`sign` applies to `sum` only")
    );
    let mut c = base(json!({"kind": "tumbling"}), count);
    c["anomaly"] = json!({"measure": "nope"});
    assert!(err(c).contains("anomaly.measure \"nope\""));
    assert!(
        err(json!({"table": "t", "window": {"kind": "session"}, "measures": [], "extra": 1}))
            .contains("unknown field `extra`")
    );
}

#[test]
fn gold_config_files_are_generated_from_the_code() {
    for (name, config) in gold_configs() {
        Aggregate::from_config(config.clone()).unwrap();
        weir_sdk::testing::check_generated(
            &format!("{}/configs/{name}.json", env!("CARGO_MANIFEST_DIR")),
            &serde_json::to_string_pretty(&config).unwrap(),
        );
    }
}
