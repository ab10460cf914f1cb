//! The lake's exactly-once promise, checked the hard way: `weir run` with the default pipeline is killed at
//! every named crash point of the commit protocol (and at random moments), restarted, and the Parquet files
//! are read back by pyarrow and DuckDB: every stream sequence is in bronze once and in exactly one of silver,
//! drops and quarantine; gold matches a recomputation from silver. The same on a real S3-compatible store
//! (SeaweedFS), on Azure Blob Storage's emulator (Azurite) and on `gs://` (Google's protocol, through a front
//! over SeaweedFS), including the store going away mid-run.

use std::time::Duration;

use crate::harness::{Azurite, GcsFront, Harness, LakeAt, Outage, Seaweed, realistic};
use crate::support::http;

const EVENTS: u64 = 3000;

/// Event time the test events cover: more than a session gap (30 min), so the watermark closes sessions too,
/// and less than the quality stage's freshness limit (8 days).
fn span() -> Duration {
    Duration::from_secs(50 * 60)
}

/// Runs until the process dies at `point` (its second visit, so one commit is already behind it), restarts,
/// finishes, and checks the lake.
fn crash_and_recover(lake: LakeAt, point: &str, seed: u64) {
    crash_and_recover_with(lake, point, seed, |_| {});
}

/// [`crash_and_recover`] on a pipeline that `edit` adjusts.
pub fn crash_and_recover_with(
    lake: LakeAt,
    point: &str,
    seed: u64,
    edit: impl FnOnce(&mut toml::Table),
) {
    let h = Harness::new(lake, edit);
    let last = h.prefill(realistic(seed, EVENTS, span()), EVENTS);
    let mut crashing = h.weir(&[("WEIR_CRASH_AT", &format!("{point}:2"))]);
    let status = crashing.wait(Duration::from_secs(180));
    assert!(
        !status.success(),
        "weir run should have crashed at {point}:\n{}",
        crashing.log_tail()
    );
    assert!(
        crashing
            .log_tail()
            .contains(&format!("crashing at {point}")),
        "{}",
        crashing.log_tail()
    );
    if point == "commit.after_record" {
        committed_rows_are_read_while_staged(&h);
    }
    let mut again = h.weir(&[]);
    h.finish(&mut again, last);
    h.verify();
    h.read_back().assert_exactly_once(last);
}

macro_rules! crash_tests {
    ($($name:ident => $point:literal,)*) => {$(
        #[test]
        fn $name() {
            crash_and_recover(LakeAt::Local, $point, line!() as u64);
        }
    )*};
}

crash_tests! {
    crash_at_commit_start => "commit.start",
    crash_after_files_are_staged => "commit.after_files",
    crash_after_the_commit_record => "commit.after_record",
    crash_after_files_are_published => "commit.after_publish",
    crash_after_the_acks => "commit.after_ack",
}

#[test]
fn every_crash_point_is_tested() {
    let tested = [
        "commit.start",
        "commit.after_files",
        "commit.after_record",
        "commit.after_publish",
        "commit.after_ack",
    ];
    assert_eq!(weir::lake::crash::POINTS, tested);
}

/// Kills at random moments, of commits and of the compactions running beside them.
#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    sigkill_at_random_moments(|_| {});
}

/// Four kills at moments spread over a run of small commits, then a run to the end; `edit` adjusts the
/// pipeline.
pub fn sigkill_at_random_moments(edit: impl FnOnce(&mut toml::Table)) {
    let h = Harness::new(LakeAt::Local, |t| {
        edit(t);
        let lake = t["lake"].as_table_mut().unwrap();
        // Small commits, so kills land in every phase of the protocol.
        lake.insert("commit_events".into(), 200.into());
        // Compactions all the while, of the hour before this one, so kills land in theirs too.
        lake.insert("compact_every".into(), "300ms".into());
        lake.insert("compact_after".into(), "0s".into());
    });
    let last = h.prefill(realistic(7, EVENTS, span()), EVENTS);
    for after in [1500u64, 2600, 1900, 3300] {
        let mut weir = h.weir(&[]);
        std::thread::sleep(Duration::from_millis(after));
        weir.kill();
    }
    let mut weir = h.weir(&[]);
    h.finish(&mut weir, last);
    h.verify();
    h.read_back().assert_exactly_once(last);
}

#[test]
fn tables_read_back_with_hive_partitioning_and_the_declared_schema() {
    let h = Harness::new(LakeAt::Local, |_| {});
    let last = h.prefill(realistic(11, EVENTS, span()), EVENTS);
    let mut weir = h.weir(&[]);
    h.finish(&mut weir, last);
    let report = h.read_back();
    report.assert_exactly_once(last);

    let tables = report.tables();
    for table in [
        "bronze",
        "silver",
        "drops",
        "quarantine_bronze",
        "quarantine_silver",
        "gold_entity",
        "gold_user",
        "gold_wiki",
        "gold_user_sessions",
    ] {
        assert!(tables.contains(&table.to_string()), "{table}: {tables:?}");
    }
    let ts = "timestamp[us, tz=+00:00]";
    let silver = report.schema("silver");
    let want_silver: Vec<(&str, String)> = [
        ("_seq", "uint64"),
        ("_event_id", "string"),
        ("_event_time", ts),
        ("_ingest_time", ts),
        ("_chain", "string"),
    ]
    .into_iter()
    .map(|(n, t)| (n, t.to_string()))
    .chain(h.config.silver.columns.iter().map(|c| {
        let t = match c.ty {
            weir::lake::schema::ColumnType::String | weir::lake::schema::ColumnType::Json => {
                "string"
            }
            weir::lake::schema::ColumnType::Int64 => "int64",
            weir::lake::schema::ColumnType::Float64 => "double",
            weir::lake::schema::ColumnType::Bool => "bool",
            _ => ts,
        };
        (c.name.as_str(), t.to_string())
    }))
    .chain([("dt", "string".to_string()), ("hour", "int32".to_string())])
    .collect();
    let got: Vec<(&str, String)> = silver
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    assert_eq!(got, want_silver);

    let bronze = report.schema("bronze");
    assert!(
        bronze.contains(&("data".into(), "string".into())),
        "{bronze:?}"
    );
    assert!(
        bronze.contains(&("ingest_time".into(), ts.into())),
        "{bronze:?}"
    );
    let gold = report.schema("gold_wiki");
    for column in ["window_start", "window_end"] {
        assert!(gold.contains(&(column.into(), ts.into())), "{gold:?}");
    }
    for column in ["events", "distinct_users", "bytes_added"] {
        assert!(gold.contains(&(column.into(), "int64".into())), "{gold:?}");
    }
    assert!(
        gold.contains(&("anomaly".into(), "bool".into())),
        "{gold:?}"
    );
    let quarantine = report.schema("quarantine_silver");
    assert!(
        quarantine.contains(&("failed_checks".into(), "list<item: string>".into())),
        "{quarantine:?}"
    );
    // Lineage: every silver row names the plugin versions of every stage.
    let chains = report.0["silver_chains"].as_array().unwrap();
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert!(
        chains[0].as_str().unwrap().starts_with("filter@"),
        "{chains:?}"
    );

    // `weir lake query` prints the same rows, as JSON lines, for a time range.
    let (ok, all, err) = lake_query(&h, &["silver", "--limit", "10000000"]);
    assert!(ok && !err.contains("more may match"), "{err}");
    let times: Vec<i64> = all
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let time = row["_event_time"].as_str().unwrap();
            chrono::DateTime::parse_from_rfc3339(time)
                .unwrap_or_else(|e| panic!("{time}: {e}"))
                .timestamp_millis()
        })
        .collect();
    assert_eq!(times.len(), report.seqs("silver").len());
    let mut sorted = times.clone();
    sorted.sort_unstable();
    let (from, to) = (sorted[sorted.len() / 4], sorted[sorted.len() / 2]);
    let (ok, some, _) = lake_query(
        &h,
        &[
            "silver",
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
            "--limit",
            "10000000",
        ],
    );
    assert!(ok);
    let expected = times.iter().filter(|t| (from..to).contains(*t)).count();
    assert!(expected > 0);
    assert_eq!(some.lines().count(), expected);
    let (_, five, err) = lake_query(&h, &["silver", "--limit", "5"]);
    assert_eq!(five.lines().count(), 5);
    // Cut by the limit: stderr says more rows match (and nothing when they all fit, above).
    assert!(
        err.contains("printed the first 5 rows of silver; more may match"),
        "{err}"
    );
    let (_, exact, err) = lake_query(&h, &["silver", "--limit", &times.len().to_string()]);
    assert_eq!(exact.lines().count(), times.len());
    assert!(!err.contains("more may match"), "{err}");
    // A reader that stops reading (`| head -1`) ends the query quietly, as it does any Unix tool.
    assert!(
        all.len() > 1 << 20,
        "more than a pipe holds: {} bytes",
        all.len()
    );
    let mut query = std::process::Command::new(crate::support::weir_bin())
        .args(["lake", "query", "silver", "--limit", "10000000", "--config"])
        .arg(&h.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(query.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with('{'), "{first}");
    let out = query.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.is_empty(),
        "{:?}: {err}",
        out.status
    );
    // A table with no rows yet prints none and says so; a name that is no table is an error naming them.
    let (ok, out, err) = lake_query(&h, &["gold_nothing"]);
    assert!(ok && out.is_empty(), "{out}{err}");
    assert!(
        err.contains("no rows of gold_nothing are committed"),
        "{err}"
    );
    let (ok, _, err) = lake_query(&h, &["silver", "--from", "2000", "--to", "1000"]);
    assert!(!ok);
    assert!(err.contains("is not before"), "{err}");
    let out = std::process::Command::new(crate::support::weir_bin())
        .args(["lake", "query", "silver", "--lake"])
        .arg(h.dir.path().join("no-such-lake"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && out.stdout.is_empty(), "{err}");
    assert!(err.contains("holds no commits yet"), "{err}");
    let (ok, _, err) = lake_query(&h, &["sliver"]);
    assert!(!ok);
    assert!(
        err.contains("no table \"sliver\"") && err.contains("silver"),
        "{err}"
    );
}

/// A host that stopped between a commit record and moving its files into place (and has not started again):
/// `weir lake query` reads the files from the staging the record names, every committed row once.
fn committed_rows_are_read_while_staged(h: &Harness) {
    let store = h.store();
    let records = h.rt.block_on(weir::lake::log::all_records(&store)).unwrap();
    // The crashed commit's record: the last with silver files (a compaction's may have landed after it).
    let last = records
        .iter()
        .rev()
        .find(|r| r.replaces.is_empty() && r.tables.contains_key("silver"))
        .expect("a commit of silver rows");
    let staged: Vec<&weir::lake::log::FileEntry> = last.tables["silver"]
        .iter()
        .filter(|f| {
            h.rt.block_on(object_store::ObjectStoreExt::head(
                &store.store,
                &store.path(&f.path),
            ))
            .is_err_and(|e| matches!(e, object_store::Error::NotFound { .. }))
        })
        .collect();
    assert!(!staged.is_empty(), "the crash left no silver file staged");
    let committed: u64 = records
        .iter()
        .flat_map(|r| r.tables.get("silver").into_iter().flatten())
        .map(|f| f.rows)
        .sum();
    let (ok, rows, err) = lake_query(h, &["silver", "--limit", "10000000"]);
    assert!(ok, "{err}");
    let mut seqs: Vec<u64> = rows
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["_seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs.len() as u64, committed);
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, committed, "a row printed twice");
    assert!(
        seqs.iter()
            .any(|s| (staged[0].min_seq..=staged[0].max_seq).contains(s)),
        "no row of the staged file {} was printed",
        staged[0].path
    );
}

/// `weir lake query ARGS` on the harness's lake: (succeeded, stdout, stderr).
fn lake_query(h: &Harness, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(crate::support::weir_bin())
        .args(["lake", "query", "--config"])
        .arg(&h.config_path)
        .args(args)
        .envs(h.lake.env())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn s3_lake_survives_every_crash_point() {
    let weed = Seaweed::start();
    for (i, point) in weir::lake::crash::POINTS.iter().enumerate() {
        let bucket = format!("crash-{i}");
        weed.bucket(&bucket);
        let lake = LakeAt::S3 {
            endpoint: weed.endpoint.clone(),
            bucket,
        };
        crash_and_recover(lake, point, 100 + i as u64);
    }
}

/// A file spilled to disk uploads in parts (8 MiB each, S3's 5 MiB minimum for all but the last): three
/// parts and a tail against SeaweedFS, read back byte for byte.
#[test]
fn s3_takes_spilled_files_in_parts() {
    use std::io::Write;

    use object_store::ObjectStoreExt;
    use weir::lake::spill::{FileData, SpillSink};
    use weir::lake::store::{Store, StoreConfig};

    let weed = Seaweed::start();
    weed.bucket("parts");
    let lake = LakeAt::S3 {
        endpoint: weed.endpoint.clone(),
        bucket: "parts".into(),
    };
    // SAFETY: as in `Harness::store`, these variables only ever take these values in a test run.
    for (k, v) in lake.env() {
        unsafe { std::env::set_var(k, v) };
    }
    let store = Store::open(&StoreConfig {
        url: "s3://parts/lake".into(),
        endpoint: Some(weed.endpoint.clone()),
        allow_http: true,
        ..StoreConfig::default()
    })
    .unwrap();
    let mut x = 7u64;
    let data: Vec<u8> = (0..(3 * (8 << 20) + 123_457))
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    let mut sink = SpillSink::new(1 << 20);
    sink.write_all(&data).unwrap();
    let file = sink.finish().unwrap();
    assert!(matches!(file, FileData::Disk { .. }));
    crate::harness::runtime().block_on(async {
        let location = store.path("bronze/dt=2026-11-27/hour=05/part.parquet");
        file.upload(&*store.store, &location).await.unwrap();
        let back = store
            .store
            .get(&location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "the object differs from the file");
    });
}

/// The store goes away mid-run: commits retry, acks wait, nothing is lost, and it recovers by itself.
#[test]
fn s3_lake_survives_the_store_going_away() {
    let mut weed = Seaweed::start();
    weed.bucket("outage");
    let lake = LakeAt::S3 {
        endpoint: weed.endpoint.clone(),
        bucket: "outage".into(),
    };
    survive_outage(lake, 200, &mut weed);
}

/// The same promises on Azure Blob Storage (Azurite): every crash point, then the store going away. One
/// test, with one emulator: `object_store` takes the emulator's address from the environment, which a test
/// process shares.
#[test]
fn azure_lake_survives_every_crash_point_and_the_store_going_away() {
    let mut azurite = Azurite::start();
    let lake = |container: &str| LakeAt::Azure {
        endpoint: azurite.endpoint.clone(),
        container: container.into(),
    };
    for (i, point) in weir::lake::crash::POINTS.iter().enumerate() {
        let container = format!("crash-{i}");
        azurite.container(&container);
        crash_and_recover(lake(&container), point, 300 + i as u64);
    }
    azurite.container("outage");
    let lake = lake("outage");
    survive_outage(lake, 400, &mut azurite);
}

/// The same promises on `gs://`: `object_store`'s GCS client, as Weir opens it from a `gs://` URL and the
/// usual `GOOGLE_*` variables, with its conditional creates (`x-goog-if-generation-match: 0`), moves (a copy
/// and a delete) and multipart uploads, against `tests/gcs_front.py` over SeaweedFS: every crash point, a
/// compaction, then the front going away. One test, with one front: its address is in the environment.
#[test]
fn gcs_lake_survives_every_crash_point_and_the_store_going_away() {
    let weed = Seaweed::start();
    let mut front = GcsFront::start(&weed.endpoint);
    let lake = |bucket: &str| {
        weed.bucket(bucket);
        LakeAt::Gcs {
            front: front.endpoint.clone(),
            s3: weed.endpoint.clone(),
            bucket: bucket.into(),
        }
    };
    for (i, point) in weir::lake::crash::POINTS.iter().enumerate() {
        crash_and_recover(lake(&format!("gcs-crash-{i}")), point, 500 + i as u64);
    }
    compact_and_check(lake("gcs-compact"), 47);
    let lake = lake("gcs-outage");
    survive_outage(lake, 600, &mut front);
}

/// Runs the pipeline on `lake`, takes the store down after the first commits and brings it back a few
/// seconds later (longer than the consumer's ack wait); then checks the lake.
///
/// Events come in three waves while the store is down: the first fills an epoch whose commit then fails and
/// is retried, the second one whose commit must wait for it (the processor waits too), the third waits in the
/// queue to the processor for longer than `ack_wait`. The first is larger than that queue holds: the rest
/// wait in the pull (closed while the processor takes nothing). None is delivered again: each stays extended.
fn survive_outage(lake: LakeAt, seed: u64, store: &mut dyn Outage) {
    let h = Harness::new(lake, |_| {});
    h.prefill(realistic(seed, EVENTS, span()), EVENTS);
    let mut weir = h.weir(&[]);
    let started = std::time::Instant::now();
    while h.committed() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}",
            weir.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let api = weir.api(Duration::from_secs(30));
    store.kill();
    // More events while it is down, so that commits are due whatever the first ones did meanwhile; more than
    // the queue to the processor holds (16 micro-batches), so that some wait in the pull's client.
    h.prefill(realistic(seed + 1000, 6000, span()), 6000);
    // Readiness follows the store: not ready once a commit's requests fail and are retried.
    let down = std::time::Instant::now();
    let mut ready = http("GET", &format!("{api}/ready"), None, None);
    while ready.0 != 503 && down.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(200));
        ready = http("GET", &format!("{api}/ready"), None, None);
    }
    assert_eq!(ready.0, 503, "{ready:?}");
    assert!(
        ready.1.contains(r#""store_reachable":false"#),
        "{}",
        ready.1
    );
    h.prefill(realistic(seed + 2000, 200, span()), 200);
    // The second wave's epoch is due after `commit_interval` (1 s): its commit waits for the first's.
    std::thread::sleep(Duration::from_secs(2));
    let last = h.prefill(realistic(seed + 3000, 200, span()), 200);
    // Past the consumer's `ack_wait` (4 s) with the third wave waiting.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        weir.child.try_wait().unwrap().is_none(),
        "weir run gave up while the store was down:\n{}",
        weir.log_tail()
    );
    crate::support::assert_counted(&api, "weir_lake_store_retries_total");
    store.restart();
    h.wait_committed(&mut weir, last, Duration::from_secs(180));
    assert_eq!(http("GET", &format!("{api}/ready"), None, None).0, 200);
    crate::support::assert_none_redelivered(&api);
    weir.stop();
    h.verify();
    h.read_back().assert_exactly_once(last);
}

/// `weir replay` computes silver and gold again from the stream, through a new enrich version, into a new
/// table version beside the live tables; running it again adds nothing; a replay from a later sequence
/// covers only what follows it.
#[test]
fn replay_writes_a_new_table_version_without_duplicates() {
    let h = Harness::new(LakeAt::Local, |_| {});
    let last = h.prefill(realistic(17, EVENTS, span()), EVENTS);
    let mut weir = h.weir(&[]);
    h.finish(&mut weir, last);
    let live = h.read_back();

    let next = crate::support::swap_plugin_path("swap-enrich-next");
    let replay = |version: &str, extra: &[&str]| {
        let out = std::process::Command::new(crate::support::weir_bin())
            .args(["replay", "--config"])
            .arg(&h.config_path)
            .args(["--version", version])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weir replay failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stage = format!("enrich={}", next.display());
    replay("v2", &["--stage", &stage]);
    let version_url = format!("{}/_versions/v2", h.lake_url());
    let v2 = h.read_back_at(&version_url);
    v2.assert_replayed(1, last);
    let mut live_silver = live.seqs("silver");
    let mut v2_silver = v2.seqs("silver");
    live_silver.sort_unstable();
    v2_silver.sort_unstable();
    assert_eq!(live_silver, v2_silver, "the same events reach silver");
    let chains = v2.0["silver_chains"].as_array().unwrap();
    assert!(
        chains
            .iter()
            .all(|c| c.as_str().unwrap().contains("enrich@0.2.0")),
        "{chains:?}"
    );
    // The live tables are untouched.
    h.read_back().assert_exactly_once(last);

    // Again: everything is in the version already.
    let again = replay("v2", &["--stage", &stage]);
    assert!(again.contains("replayed 0 events"), "{again}");
    h.read_back_at(&version_url).assert_replayed(1, last);

    // From the middle: only what follows.
    let from = last / 2;
    replay("tail", &["--from-seq", &from.to_string()]);
    h.read_back_at(&format!("{}/_versions/tail", h.lake_url()))
        .assert_replayed(from, last);
}

/// `weir replay --in-place` puts silver and gold computed again through a new enrich version in place of
/// the live rows from a sequence on, while `weir run` keeps running: killed at each step of the swap and
/// run again, it ends with every sequence exactly once (bronze untouched), the new version's lineage on the
/// rows of its range and the old one's before it, gold matching a recomputation from silver, and a log
/// `weir lake verify` accepts. Running it again changes nothing.
#[test]
fn replay_in_place_replaces_the_rows_of_its_range_exactly_once() {
    let h = Harness::new(LakeAt::Local, |_| {});
    let last = h.prefill(realistic(31, EVENTS, span()), EVENTS);
    let mut weir = h.weir(&[]);
    h.wait_committed(&mut weir, last, Duration::from_secs(180));
    let before = h.read_back();

    let next = crate::support::swap_plugin_path("swap-enrich-next");
    let stage = format!("enrich={}", next.display());
    let from = (last / 2).to_string();
    let replay = |crash_at: &str| {
        let mut command = std::process::Command::new(crate::support::weir_bin());
        command
            .args(["replay", "--in-place", "--config"])
            .arg(&h.config_path)
            .args([
                "--version",
                "fix-enrich",
                "--from-seq",
                &from,
                "--stage",
                &stage,
            ]);
        if !crash_at.is_empty() {
            command.env("WEIR_CRASH_AT", crash_at);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The replay runs, then dies at each step of the swap in turn; the last run finishes it.
    let mut planned = String::new();
    for point in weir::lake::crash::REPLACE_POINTS {
        let (ok, stderr) = replay(point);
        assert!(!ok, "weir replay should have crashed at {point}: {stderr}");
        if planned.is_empty() {
            planned = stderr.clone();
        }
    }
    let (ok, stderr) = replay("");
    assert!(ok, "weir replay failed: {stderr}");
    assert!(stderr.contains("in place already"), "{stderr}");
    // "in place: sequences A..=B (...)": the range, widened to whole commits.
    let range = planned
        .split("in place: sequences ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no planned range in: {planned}"));
    let (start, end) = range.split_once("..=").unwrap();
    let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
    assert!(start <= last / 2 && start > 1 && end == last, "{planned}");

    h.verify();
    let after = h.read_back();
    after.assert_exactly_once(last);
    assert_eq!(
        {
            let mut b = after.seqs("bronze");
            b.sort_unstable();
            b
        },
        {
            let mut b = before.seqs("bronze");
            b.sort_unstable();
            b
        },
        "bronze is untouched"
    );
    let ranges = after.0["silver_chain_ranges"].as_object().unwrap();
    for (chain, range) in ranges {
        let (lo, hi) = (range[0].as_u64().unwrap(), range[1].as_u64().unwrap());
        if chain.contains("enrich@0.2.0") {
            assert!(lo >= start, "{chain}: rows {lo}..={hi}, range from {start}");
        } else {
            assert!(
                hi < start,
                "{chain}: rows {lo}..={hi} left in the range from {start}"
            );
        }
    }
    assert!(
        ranges.keys().any(|c| c.contains("enrich@0.2.0")),
        "{ranges:?}"
    );

    // The live pipeline, still running, and a restart of it, see the swap and lose nothing.
    weir.stop();
    let mut again = h.weir(&[]);
    std::thread::sleep(Duration::from_secs(3));
    again.stop();
    let (ok, stderr) = replay("");
    assert!(ok && stderr.contains("nothing to do"), "{stderr}");
    h.verify();
    h.read_back().assert_exactly_once(last);

    // From a time (everything was ingested within the last hour): the whole stream, back to the first
    // enrich version, over rows a replay in place wrote before.
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        - 3_600_000;
    let out = std::process::Command::new(crate::support::weir_bin())
        .args(["replay", "--in-place", "--config"])
        .arg(&h.config_path)
        .args(["--version", "by-time", "--from-time", &hour_ago.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("in place: sequences 1..={last} ")),
        "{stderr}"
    );
    h.verify();
    let back = h.read_back();
    back.assert_exactly_once(last);
    let chains = back.0["silver_chains"].as_array().unwrap();
    assert!(
        chains
            .iter()
            .all(|c| !c.as_str().unwrap().contains("enrich@0.2.0")),
        "{chains:?}"
    );
}

/// `weir lake compact` merges the small files of each partition while the pipeline runs, dying at each step
/// of its swap in turn: afterwards every table holds exactly the rows it held (as pyarrow and DuckDB read
/// them), with the same columns and lineage, in fewer files; the pipeline commits on, a restart finds
/// everything in place, and a second compaction merges the files written since.
#[test]
fn compaction_merges_small_files_without_changing_a_row() {
    compact_and_check(LakeAt::Local, 41);
}

/// The same on a real S3-compatible store (SeaweedFS), where a move is a copy and a delete.
#[test]
fn s3_compaction_merges_small_files_without_changing_a_row() {
    let weed = Seaweed::start();
    weed.bucket("compact");
    let lake = LakeAt::S3 {
        endpoint: weed.endpoint.clone(),
        bucket: "compact".into(),
    };
    compact_and_check(lake, 43);
}

fn compact_and_check(lake: LakeAt, seed: u64) {
    let h = Harness::new(lake, |_| {});
    let last = h.prefill(realistic(seed, EVENTS, span()), EVENTS);
    let mut weir = h.weir(&[]);
    h.wait_committed(&mut weir, last, Duration::from_secs(180));
    let before = h.read_back();
    let files_before = lake_files(&h);

    let compact = |crash_at: &str| {
        let mut command = std::process::Command::new(crate::support::weir_bin());
        command
            .args([
                "lake",
                "compact",
                "--json",
                "--include-current",
                "--min-files",
                "2",
            ])
            .arg("--config")
            .arg(&h.config_path);
        command.envs(h.lake.env());
        if !crash_at.is_empty() {
            command.env("WEIR_CRASH_AT", crash_at);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.success(),
            crash_at.is_empty(),
            "weir lake compact (crash at {crash_at:?}): {stderr}"
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    for point in weir::lake::crash::COMPACT_POINTS {
        compact(point);
    }
    // The run that died after its record is finished, and nothing is left to merge.
    let report = compact("");
    assert_eq!(report["finished"], 1, "{report}");
    assert!(report["epoch"].is_null(), "{report}");

    h.verify();
    let after = h.read_back();
    after.assert_exactly_once(last);
    for table in before.tables() {
        let sorted = |r: &crate::harness::LakeReport| {
            let mut s = r.seqs(&table);
            s.sort_unstable();
            s
        };
        assert_eq!(sorted(&before), sorted(&after), "{table}: sequences");
        assert_eq!(
            before.schema(&table),
            after.schema(&table),
            "{table}: columns"
        );
        assert_eq!(
            before.0["tables"][&table]["rows"], after.0["tables"][&table]["rows"],
            "{table}: rows"
        );
    }
    assert_eq!(
        before.0["silver_chain_ranges"],
        after.0["silver_chain_ranges"]
    );
    let files_after = lake_files(&h);
    for (table, n) in &files_before {
        assert!(
            files_after[table] <= *n,
            "{table}: {n} files, then {}",
            files_after[table]
        );
    }
    assert!(
        files_after["silver"] < files_before["silver"]
            && files_after["bronze"] < files_before["bronze"],
        "silver: {files_before:?} -> {files_after:?}"
    );

    // The pipeline commits on after the compaction's record, and a second compaction merges what it wrote.
    let last = h.prefill(realistic(seed + 1, 1000, span()), 1000);
    h.wait_committed(&mut weir, last, Duration::from_secs(180));
    weir.stop();
    let report = compact("");
    assert!(report["epoch"].is_u64(), "{report}");
    let mut again = h.weir(&[]);
    std::thread::sleep(Duration::from_secs(3));
    again.stop();
    h.verify();
    h.read_back().assert_exactly_once(last);
}

/// Files per table, as `weir lake ls` counts them from the commit log.
fn lake_files(h: &Harness) -> std::collections::BTreeMap<String, u64> {
    let out = std::process::Command::new(crate::support::weir_bin())
        .args(["lake", "ls", "--json", "--config"])
        .arg(&h.config_path)
        .envs(h.lake.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    summary["tables"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, s)| (t.clone(), s["files"].as_u64().unwrap()))
        .collect()
}

/// `weir replay --from-bronze` computes silver and gold again from the bronze table when the stream no
/// longer holds the events (here: purged): the version holds every sequence once, keyed by the original
/// sequences, with the same events in silver as the live tables, although by the time of the replay the
/// oldest are too old for the freshness check by the wall clock (a replay judges them as of their ingest);
/// running it again adds nothing; a range replays only its part; the staging stream is removed at the end.
#[test]
fn replay_from_bronze_when_the_stream_is_gone() {
    // The live run has 80 s to read the events while they are fresh.
    const MAX_AGE_S: u64 = 180;
    let h = Harness::new(LakeAt::Local, |t| {
        let checks = format!(
            r#"checks = [
                {{ name = "timestamp_fresh", path = "meta.dt", rule = {{ kind = "freshness", max_age_ms = {} }} }},
                {{ name = "timestamp_not_future", path = "meta.dt", rule = {{ kind = "not_future", skew_ms = 300000 }} }},
            ]"#,
            MAX_AGE_S * 1000
        );
        let config: toml::Table = toml::from_str(&checks).unwrap();
        for stage in t["stages"].as_array_mut().unwrap() {
            let stage = stage.as_table_mut().unwrap();
            if stage["name"].as_str() == Some("quality") {
                stage.insert("config".into(), config.clone().into());
            }
        }
    });
    let started = std::time::Instant::now();
    // Event times from 100 s to 60 s before now (see `realistic`): fresh while the live run reads them.
    let last = h.prefill(realistic(23, EVENTS, Duration::from_secs(40)), EVENTS);
    let mut weir = h.weir(&[]);
    h.finish(&mut weir, last);
    let live = h.read_back();

    // The stream's retention has passed: nothing left to replay from but bronze.
    let stream = h.config.stream.name.clone();
    h.rt.block_on(async {
        let client = weir::bus::connect(&h.nats.url(), "test").await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_stream(&stream).await.unwrap().purge().await.unwrap();
    });
    // Until the oldest events (100 s old at the start) are past the freshness limit by the wall clock.
    let stale_after = Duration::from_secs(MAX_AGE_S - 100 + 10);
    std::thread::sleep(stale_after.saturating_sub(started.elapsed()));

    let replay = |version: &str, extra: &[&str]| {
        let out = std::process::Command::new(crate::support::weir_bin())
            .args(["replay", "--from-bronze", "--config"])
            .arg(&h.config_path)
            .args(["--version", version])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "weir replay failed: {stderr}");
        stderr
    };
    let first = replay("from-bronze", &[]);
    assert!(
        first.contains(&format!("replayed {last} events")),
        "{first}"
    );
    let url = format!("{}/_versions/from-bronze", h.lake_url());
    let version = h.read_back_at(&url);
    version.assert_replayed(1, last);
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    let (live_silver, replayed) = (sorted(live.seqs("silver")), sorted(version.seqs("silver")));
    let missing: Vec<&u64> = live_silver
        .iter()
        .filter(|s| replayed.binary_search(s).is_err())
        .take(10)
        .collect();
    assert!(
        live_silver == replayed,
        "the same events reach silver, under their original sequences: {} live, {} replayed; first missing from the replay: {missing:?}",
        live_silver.len(),
        replayed.len()
    );

    let again = replay("from-bronze", &[]);
    assert!(again.contains("replayed 0 events"), "{again}");
    h.read_back_at(&url).assert_replayed(1, last);

    let from = last / 3;
    let to = 2 * last / 3;
    replay(
        "middle",
        &["--from-seq", &from.to_string(), "--to-seq", &to.to_string()],
    );
    h.read_back_at(&format!("{}/_versions/middle", h.lake_url()))
        .assert_replayed(from, to);

    let streams: Vec<String> = h.rt.block_on(async {
        use futures::TryStreamExt;
        let client = weir::bus::connect(&h.nats.url(), "test").await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.stream_names().try_collect().await.unwrap()
    });
    assert!(
        streams.contains(&stream) && !streams.iter().any(|s| s.contains("_REPLAY_")),
        "staging streams are removed: {streams:?}"
    );
}

/// S3 credentials from the profile files `aws configure` writes, with no `AWS_*` keys in the environment
/// (`object_store` alone would fall through to the instance metadata endpoint).
#[test]
fn s3_credentials_come_from_the_aws_profile_files() {
    let weed = Seaweed::start();
    weed.bucket("profile");
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let config = dir.path().join("config");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[weir]\naws_access_key_id = weir\naws_secret_access_key = weir\n",
    )
    .unwrap();
    std::fs::write(&config, "[profile weir]\nregion = us-east-1\n").unwrap();
    let mut command = std::process::Command::new(crate::support::weir_bin());
    command
        .args([
            "lake",
            "verify",
            "--lake",
            "s3://profile/lake",
            "--allow-http",
        ])
        .args(["--endpoint", &weed.endpoint])
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_PROFILE", "weir");
    for variable in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "WEIR_LAKE_URL",
        "WEIR_LAKE_ENDPOINT",
    ] {
        command.env_remove(variable);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"missing\": []"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
