//! `weir serve-sse` → `weir run` with the default pipeline → Parquet read back, end to end, while the enrich
//! stage is hot-swapped several times (from the CLI, the API and the watched directory, once to a broken
//! release that must be rolled back) and while `weir run` and `nats-server` are killed and restarted.
//! Afterwards the conservation rule holds and gold equals a recomputation from silver.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir::source::generate::GenConfig;

use crate::harness::{Harness, LakeAt, Weir, free_ports, now_ms, realistic};
use crate::support::{cli, http, plugin_path, swap_plugin_path, weir_bin};

const EVENTS: u64 = 6000;

/// `weir serve-sse` with generated events at a steady rate, on a free port.
struct ServeSse {
    child: Child,
    url: String,
}

impl ServeSse {
    fn start(count: u64, rate: f64) -> Self {
        let port = free_ports(1)[0];
        let generator = realistic(5, count, Duration::from_secs(25 * 60));
        let child = Command::new(weir_bin())
            .args(["serve-sse", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--events", &count.to_string(), "--rate", &rate.to_string()])
            .args(["--seed", &generator.seed.to_string()])
            .args(["--start", &generator.start_ms.to_string()])
            .args(["--event-rate", &generator.events_per_s.to_string()])
            .args(["--malformed", &generator.malformed.to_string()])
            .args(["--canary", &generator.canary.to_string()])
            .args(["--late", &generator.late.to_string()])
            .args(["--future", &generator.future.to_string()])
            // Reconnects on cuts too, as against the live stream, whose positions are times and whose events
            // come with times out of order (`source.resume_overlap` is what keeps a resume from skipping them).
            .args(["--cut-every", "1000", "--hold-open", "--ids", "timestamps"])
            .args(["--disorder-ms", "2000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "serve-sse did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ServeSse {
            child,
            url: format!("http://127.0.0.1:{port}/v2/stream/recentchange"),
        }
    }
}

impl ServeSse {
    /// A harness whose pipeline reads this source, reconnecting quickly after cuts.
    fn harness(&self) -> Harness {
        self.harness_with(|_| {})
    }

    /// [`ServeSse::harness`], with `edit` adjusting the pipeline.
    fn harness_with(&self, edit: impl FnOnce(&mut toml::Table)) -> Harness {
        let url = self.url.clone();
        Harness::new(LakeAt::Local, move |t| {
            edit(t);
            let mut source = toml::Table::new();
            source.insert("url".into(), url.into());
            source.insert("min_backoff".into(), "20ms".into());
            source.insert("max_backoff".into(), "500ms".into());
            source.insert("idle_timeout".into(), "5s".into());
            t.insert("source".into(), source.into());
        })
    }
}

impl Drop for ServeSse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deploys `file` to the enrich stage with `weir plugin deploy`.
fn deploy(weir: &Weir, file: &Path) -> String {
    let api = weir.api(Duration::from_secs(60));
    cli(&[
        "plugin",
        "deploy",
        "--api",
        &api,
        "--stage",
        "enrich",
        file.to_str().unwrap(),
    ])
}

/// Waits for `text` to appear in the log of `weir run`.
fn wait_log(weir: &Weir, text: &str, timeout: Duration) {
    let started = Instant::now();
    while !std::fs::read_to_string(&weir.log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            started.elapsed() < timeout,
            "no {text:?} in the log of weir run:\n{}",
            weir.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `/ready` answers ready (200), or not ready (503) for want of NATS.
fn wait_ready(api: &str, ready: bool) {
    let started = Instant::now();
    loop {
        let (status, body) = http("GET", &format!("{api}/ready"), None, None);
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if ready && status == 200 {
            return;
        }
        if !ready && status == 503 && answer["nats_connected"] == false {
            assert_eq!(answer["store_reachable"], true, "{body}");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/ready still answers {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_until(h: &Harness, weir: &mut Weir, committed: u64) {
    h.wait_committed(weir, committed, Duration::from_secs(120));
}

#[test]
fn the_pipeline_survives_swaps_kills_and_restarts_without_loss_or_duplicates() {
    let source = ServeSse::start(EVENTS, 250.0);
    let mut h = source.harness();
    let next = swap_plugin_path("swap-enrich-next");
    let flaky = swap_plugin_path("swap-enrich-flaky");
    let original = plugin_path("weir-plugin-enrich");

    let mut weir = h.weir(&[]);
    wait_until(&h, &mut weir, 500);
    // A good new release, from the CLI.
    assert!(deploy(&weir, &next).contains("enrich@0.2.0"));
    wait_until(&h, &mut weir, 1200);

    // A release whose rule drops every event fails no call, so only its self-test's comparison with the
    // serving version, which keeps the same recent events, refuses it.
    let api = weir.api(Duration::from_secs(60));
    let drop_all = swap_plugin_path("swap-enrich-drop-all");
    let args = ["plugin", "deploy", "--api", &api, "--stage", "enrich"];
    let out = Command::new(weir_bin())
        .args(args)
        .arg(&drop_all)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("enrich@0.4.0 failed its self-test: of ")
            && stderr.contains("the pipeline up to it would keep 0,"),
        "a release that drops everything was not refused: {stderr}"
    );

    // A broken release, dropped in the watched directory: it passes its self-test, then fails batches and
    // is rolled back to 0.2.0 by the error-rate watch.
    let watch = h.config.watch_dir().unwrap();
    std::fs::create_dir_all(&watch).unwrap();
    std::fs::copy(&flaky, watch.join("enrich.wasm.tmp")).unwrap();
    std::fs::rename(watch.join("enrich.wasm.tmp"), watch.join("enrich.wasm")).unwrap();
    wait_log(&weir, "rolled back", Duration::from_secs(60));
    // The watched file is set aside once handled, so a restart does not deploy it again.
    assert!(
        !watch.join("enrich.wasm").exists() && watch.join("enrich.wasm.deployed").exists(),
        "{:?}",
        std::fs::read_dir(&watch).unwrap().collect::<Vec<_>>()
    );
    // Back to the original, from the CLI.
    assert!(deploy(&weir, &original).contains("enrich@0.1.0"));
    wait_until(&h, &mut weir, 2000);

    // Killed mid-stream, restarted.
    weir.kill();
    let mut weir = h.weir(&[]);
    wait_until(&h, &mut weir, 2800);
    assert!(deploy(&weir, &next).contains("enrich@0.2.0"));

    // The broker crashes and comes back; `/ready` says so meanwhile.
    let api = weir.api(Duration::from_secs(60));
    let killed = Instant::now();
    h.nats.kill();
    wait_ready(&api, false);
    // Down for a while, as a crashed broker is.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(killed.elapsed()));
    h.nats.restart().unwrap();
    wait_ready(&api, true);
    wait_until(&h, &mut weir, 3500);
    assert!(deploy(&weir, &original).contains("enrich@0.1.0"));

    // Everything the source served lands, then a clean stop.
    let last = wait_for_stream(&h, EVENTS, &weir);
    wait_until(&h, &mut weir, last);
    weir.stop();
    drop(source);

    h.verify();
    let report = h.read_back();
    report.assert_exactly_once(last);
    let chains: Vec<String> = report.0["silver_chains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    for version in ["enrich@0.1.0", "enrich@0.2.0"] {
        assert!(
            chains.iter().any(|c| c.contains(version)),
            "no silver row from {version}: {chains:?}"
        );
    }
    assert!(
        !chains.iter().any(|c| c.contains("enrich@0.4.0")),
        "the refused release made rows: {chains:?}"
    );
}

/// With a store 100 ms away (`WEIR_LAKE_LATENCY_MS`) a commit takes most of a second, so each runs while the
/// next epoch fills. A broker that crashes then sends the unacked messages of both again, some as first
/// deliveries (it lost their delivery counts): none may land twice, none may be lost.
#[test]
fn commits_running_behind_the_next_epoch_survive_broker_crashes() {
    survive_broker_crashes(|_| {});
}

/// The same with one host reading alone: its ordered consumer lives in the broker's memory and is gone
/// after each crash, so it starts again from the last sequence it handed over; its lease, in a file-backed
/// bucket, is still its own.
#[test]
fn an_exclusive_reader_survives_broker_crashes() {
    survive_broker_crashes(crate::exclusive::exclusive);
}

fn survive_broker_crashes(edit: impl FnOnce(&mut toml::Table)) {
    const COUNT: u64 = 3000;
    let source = ServeSse::start(COUNT, 400.0);
    let mut h = source.harness_with(edit);
    let mut weir = h.weir(&[("WEIR_LAKE_LATENCY_MS", "100")]);
    for committed in [700, 1700] {
        wait_until(&h, &mut weir, committed);
        h.nats.kill();
        std::thread::sleep(Duration::from_secs(1));
        h.nats.restart().unwrap();
    }
    finish_and_check(&h, weir, source, COUNT);
}

/// Lets `weir` commit all `count` events the source serves, stops both, and checks the lake: every event
/// exactly once.
fn finish_and_check(h: &Harness, mut weir: Weir, source: ServeSse, count: u64) {
    let last = wait_for_stream(h, count, &weir);
    wait_until(h, &mut weir, last);
    weir.stop();
    drop(source);
    h.verify();
    h.read_back().assert_exactly_once(last);
}

/// An exclusive host whose lease another host takes (as when it ran out while the holder stalled) stops at
/// its next renewal, committing nothing more; once the other lets go, a restart finishes the stream, every
/// event once.
#[test]
fn an_exclusive_reader_that_loses_its_lease_stops_without_committing() {
    const COUNT: u64 = 3000;
    let source = ServeSse::start(COUNT, 200.0);
    let h = source.harness_with(crate::exclusive::exclusive);
    let mut weir = h.weir(&[]);
    wait_until(&h, &mut weir, 500);
    let lease = |value: Option<&str>| {
        h.rt.block_on(async {
            let nats = weir::bus::connect(&h.nats.url(), "test").await.unwrap();
            let js = async_nats::jetstream::new(nats);
            let kv = js.get_key_value(weir::bus::lease::BUCKET).await.unwrap();
            match value {
                Some(v) => drop(kv.put("wikimedia", v.to_string().into()).await.unwrap()),
                None => kv.delete("wikimedia").await.unwrap(),
            }
        })
    };
    lease(Some(r#"{"host": "intruder", "pid": 1, "since_ms": 0}"#));
    let status = weir.wait(Duration::from_secs(60));
    let log = std::fs::read_to_string(&weir.log).unwrap();
    assert!(!status.success(), "{log}");
    assert!(log.contains("taken over by host intruder"), "{log}");
    // Refused before its commit starts, or, for a commit already under way when the lease went, by the
    // fence before its record.
    assert!(
        log.contains("the open epoch stays uncommitted")
            || log.contains("not writing the commit record"),
        "{log}"
    );

    lease(None);
    let weir = h.weir(&[]);
    finish_and_check(&h, weir, source, COUNT);
}

/// Waits until the stream holds `count` messages (the source's every event); returns its last sequence.
fn wait_for_stream(h: &Harness, count: u64, weir: &Weir) -> u64 {
    let started = Instant::now();
    h.rt.block_on(async {
        let nats = weir::bus::connect(&h.nats.url(), "test").await.unwrap();
        let js = async_nats::jetstream::new(nats);
        loop {
            if let Ok(mut stream) = js.get_stream(&h.config.stream.name).await
                && let Ok(info) = stream.info().await
                && info.state.messages >= count
            {
                assert_eq!(info.state.messages, count, "duplicates in the stream");
                return info.state.last_sequence;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the stream did not reach {count} events:\n{}",
                weir.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// A deploy outlives a restart: `weir run` starts again on the version deployed, and can still roll back to
/// the one before it; a rollback outlives a restart too.
#[test]
fn deploys_and_rollbacks_outlive_a_restart() {
    let h = Harness::new(LakeAt::Local, |_| {});
    let last = h.prefill(realistic(31, 1500, Duration::from_secs(20 * 60)), 1500);
    let next = swap_plugin_path("swap-enrich-next");
    let mut weir = h.weir(&[]);
    h.wait_committed(&mut weir, 500, Duration::from_secs(120));
    assert!(deploy(&weir, &next).contains("enrich@0.2.0"));
    weir.stop();

    let mut weir = h.weir(&[]);
    let api = weir.api(Duration::from_secs(60));
    let line = weir.loaded_line("enrich");
    assert!(
        line.contains("deployed before the restart") && line.contains("@0.2.0"),
        "{line}"
    );
    let back = cli(&["plugin", "rollback", "--api", &api, "--stage", "enrich"]);
    assert!(back.contains("@0.1.0"), "{back}");
    h.wait_committed(&mut weir, last, Duration::from_secs(120));
    weir.stop();

    let mut weir = h.weir(&[]);
    weir.api(Duration::from_secs(60));
    let line = weir.loaded_line("enrich");
    assert!(
        !line.contains("deployed before the restart") && line.contains("@0.1.0"),
        "{line}"
    );
    weir.stop();
    h.read_back().assert_exactly_once(last);
}

/// A stream that goes quiet is committed once it has been quiet for `lake.commit_after_idle`, not at the end
/// of a long `commit_interval`: with an interval of an hour and an epoch size it never reaches, the events
/// can only be committed that way. Read back exactly once.
#[test]
fn a_quiet_stream_is_committed_without_waiting_for_the_interval() {
    let h = Harness::new(LakeAt::Local, |t| {
        let lake = t["lake"].as_table_mut().unwrap();
        lake.insert("commit_interval".into(), "1h".into());
        lake.insert("commit_events".into(), 1_000_000.into());
        lake.insert("commit_after_idle".into(), "500ms".into());
    });
    let events = 1500;
    let last = h.prefill(realistic(31, events, Duration::from_secs(20 * 60)), events);
    let mut weir = h.weir(&[]);
    // Far below the hour: the idle commit, or none.
    h.wait_committed(&mut weir, last, Duration::from_secs(120));
    weir.stop();
    h.read_back().assert_exactly_once(last);
}

/// An epoch open longer than the consumer's `ack_wait` (4 s here: a long `commit_interval`, no idle commit)
/// keeps its messages: their ack deadline is extended while it fills, so the server delivers none of them
/// again. Read back exactly once after the stop's commit.
#[test]
fn an_epoch_open_past_ack_wait_keeps_its_messages() {
    let h = Harness::new(LakeAt::Local, |t| {
        let lake = t["lake"].as_table_mut().unwrap();
        lake.insert("commit_interval".into(), "1h".into());
        lake.insert("commit_events".into(), 1_000_000.into());
        lake.insert("commit_after_idle".into(), "1h".into());
    });
    let events = 1500;
    let last = h.prefill(realistic(37, events, Duration::from_secs(20 * 60)), events);
    let mut weir = h.weir(&[]);
    let api = weir.api(Duration::from_secs(60));
    let started = std::time::Instant::now();
    while received(&api) < events {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "events not read"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Three ack deadlines with the epoch open.
    std::thread::sleep(Duration::from_secs(12));
    crate::support::assert_none_redelivered(&api);
    weir.stop();
    h.read_back().assert_exactly_once(last);
}

/// A stream quiet because the pipeline's own source cannot be reached puts no ticks in it: the events wait
/// at the source, and ticks would move event time past them, so that the backlog read once the source is
/// back came too late for every window.
#[test]
fn no_ticks_while_the_source_is_down() {
    let h = Harness::new(LakeAt::Local, |_| {});
    let events = 500;
    let last = h.prefill(realistic(41, events, Duration::from_secs(20 * 60)), events);
    h.edit_config(|t| {
        let events = t["events"].as_table_mut().unwrap();
        events.insert("idle_close".into(), "1s".into());
        let mut source = toml::Table::new();
        // Nothing listens on port 1.
        source.insert("url".into(), "http://127.0.0.1:1/down".into());
        source.insert("min_backoff".into(), "100ms".into());
        source.insert("max_backoff".into(), "500ms".into());
        t.insert("source".into(), source.into());
    });
    let mut weir = h.weir(&[]);
    let api = weir.api(Duration::from_secs(60));
    let started = Instant::now();
    while received(&api) < events {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "events not read"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several `idle_close` spans of quiet.
    std::thread::sleep(Duration::from_secs(5));
    let metric = |name| crate::support::metric(&api, name);
    assert_eq!(metric("weir_ingest_connected"), Some(0.0));
    assert_eq!(
        metric("weir_watermark_ticks_total"),
        Some(0.0),
        "{}",
        weir.log_tail()
    );
    weir.stop();
    h.read_back().assert_exactly_once(last);
}

/// A stream that goes quiet still closes its last windows: after `events.idle_close` without messages the
/// pipeline puts a tick in its stream, and the tick moves the watermark on by the quiet since the last event.
/// The events end just before a 10-minute boundary, so without ticks the watermark (a second behind them)
/// leaves their last window open; with them it passes the window's end and its minute of allowed lateness
/// once the stream has been quiet for a little over a minute.
///
/// The events are processed with ticks off, and the pipeline restarted with them on and no event to come:
/// where event time had got to is committed with the plugins' state, so a host restarted on a quiet stream
/// (an edge box at night) still closes the windows its state holds open.
#[test]
fn a_quiet_stream_closes_its_last_windows() {
    let h = Harness::new(LakeAt::Local, |t| {
        let events = t["events"].as_table_mut().unwrap();
        events.insert("idle_close".into(), "0s".into());
        events.insert("watermark_delay".into(), "1s".into());
        let lake = t["lake"].as_table_mut().unwrap();
        lake.insert("commit_after_idle".into(), "300ms".into());
    });
    let events = 1200;
    let span = Duration::from_secs(15 * 60);
    let boundary = now_ms() / 600_000 * 600_000;
    let generator = GenConfig {
        start_ms: boundary - span.as_millis() as i64,
        ..realistic(41, events, span)
    };
    let last = h.prefill(generator, events);
    let mut weir = h.weir(&[]);
    h.wait_committed(&mut weir, last, Duration::from_secs(120));
    weir.stop();
    let open = h.read_back().0["gold_wiki"]["unwritten"].clone();
    assert!(
        open.as_u64().is_some_and(|n| n > 0),
        "without ticks the last windows stay open: {open}"
    );

    h.edit_config(|t| {
        let events = t["events"].as_table_mut().unwrap();
        events.insert("idle_close".into(), "1s".into());
    });
    let mut weir = h.weir(&[]);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let gold = h.read_back().0["gold_wiki"].clone();
        if gold["unwritten"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "windows still open three minutes into the quiet: {gold}\n{}",
            weir.log_tail()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    crate::support::assert_counted(
        &weir.api(Duration::from_secs(10)),
        "weir_watermark_ticks_total",
    );
    weir.stop();
    assert!(
        h.committed() > last,
        "the ticks are committed with the epochs"
    );
    // Ticks are not events: bronze and silver hold the events alone, each once.
    h.read_back().assert_exactly_once(last);

    // A replay from bronze (which holds no tick) stages the ticks again from the log: it covers every
    // committed sequence, so it can be put in place, and closes the same windows.
    let out = Command::new(weir_bin())
        .args(["replay", "--in-place", "--from-bronze", "--from-seq", "1"])
        .args(["--version", "again", "--config"])
        .arg(&h.config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weir replay failed: {stderr}");
    h.verify();
    let after = h.read_back();
    after.assert_exactly_once(last);
    assert_eq!(
        after.0["gold_wiki"]["unwritten"], 0,
        "{}",
        after.0["gold_wiki"]
    );
}

/// The pipeline with no NATS URL: `weir run` starts and supervises its own nats-server, with its data under
/// the working directory, as the quick start does. Nothing is committed before the stop, so the stop has a
/// whole run's messages to commit and ack.
fn own_nats_server(t: &mut toml::Table) {
    t["nats"]
        .as_table_mut()
        .unwrap()
        .insert("url".into(), "".into());
    let lake = t["lake"].as_table_mut().unwrap();
    lake.insert("commit_interval".into(), "1h".into());
    lake.insert("commit_after_idle".into(), "1h".into());
    lake.insert("commit_events".into(), 1_000_000.into());
}

/// Events the pipeline has taken from the stream, from its metrics.
fn received(api: &str) -> u64 {
    crate::support::metric(api, "weir_events_received_total").map_or(0, |v| v as u64)
}

/// A run of the default pipeline on its own nats-server, started in a process group of its own (as a shell
/// starts a command in a terminal), once it has taken 1000 events; with the server's process id and port.
fn run_on_own_server(h: &Harness) -> (Weir, String, u16) {
    let mut weir = h.weir_with(&[], |command| {
        std::os::unix::process::CommandExt::process_group(command, 0);
    });
    let api = weir.api(Duration::from_secs(120));
    let started = Instant::now();
    while received(&api) < 1000 {
        assert!(
            weir.child.try_wait().unwrap().is_none(),
            "weir run exited:\n{}",
            weir.log_tail()
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no 1000 events taken in 120 s:\n{}",
            weir.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = weir::bus::NatsServer::running(&h.dir.path().join(".weir/nats"))
        .expect("the run's own nats-server is running");
    let port = url.trim().rsplit(':').next().unwrap().parse().unwrap();
    let out = Command::new("pgrep")
        .args(["-P", &weir.child.id().to_string(), "nats-server"])
        .output()
        .unwrap();
    let server = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!server.is_empty(), "no nats-server under weir run");
    (weir, server, port)
}

/// The quick start's Ctrl-C. A terminal signals its whole foreground process group, and the nats-server that
/// `weir run` supervises was in it: the server died under a run that still had a batch to commit and ack,
/// and the run waited for it forever. The server has a group of its own now: the run commits, acks, stops
/// the server and exits 0.
#[test]
fn ctrl_c_stops_the_run_and_then_its_own_nats_server() {
    let source = ServeSse::start(EVENTS, 400.0);
    let h = source.harness_with(own_nats_server);
    let (mut weir, server, port) = run_on_own_server(&h);
    // Field 5 of /proc/PID/stat, after the parenthesized command name: the process group.
    let stat = std::fs::read_to_string(format!("/proc/{server}/stat")).unwrap();
    let server_group = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap();
    assert_ne!(
        server_group,
        weir.child.id().to_string(),
        "the nats-server is in weir run's process group: a terminal's Ctrl-C reaches it too"
    );
    let group = format!("-{}", weir.child.id());
    Command::new("kill")
        .args(["-INT", "--", &group])
        .status()
        .unwrap();
    let status = weir.wait(Duration::from_secs(60));
    assert!(
        status.success(),
        "weir run did not stop cleanly on Ctrl-C ({status}):\n{}",
        weir.log_tail()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "weir run left its nats-server running"
    );
    assert!(h.committed() >= 1000, "the stop committed nothing");
    h.verify();
}

/// A stop whose nats-server went away first (killed; or stopped with it, as systemd's default stop signals a
/// unit's whole control group at once) still ends: the last acks and flushes wait for the server only so
/// long, and what was committed stays whole.
#[test]
fn a_stop_ends_when_its_nats_server_went_away_first() {
    let source = ServeSse::start(EVENTS, 400.0);
    let h = source.harness_with(own_nats_server);
    let (mut weir, server, port) = run_on_own_server(&h);
    Command::new("kill")
        .args(["-KILL", &server])
        .status()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-INT", &weir.child.id().to_string()])
        .status()
        .unwrap();
    // Ends (the run may report the lost server as its error); `wait` fails the test if it does not.
    weir.wait(Duration::from_secs(90));
    h.verify();
}

/// A `weir run` killed outright (SIGKILL, the OOM killer) cannot stop its own nats-server: the kernel does,
/// as Weir asked it to when it started the server. The server used to live on, holding its port and store,
/// with no one left to stop it. The next run starts its own server on the same store and carries on.
#[test]
fn a_killed_run_takes_its_own_nats_server_with_it() {
    let source = ServeSse::start(EVENTS, 400.0);
    let h = source.harness_with(own_nats_server);
    let (mut weir, server, port) = run_on_own_server(&h);
    weir.kill();
    let started = Instant::now();
    // Running, as opposed to gone or a zombie that no init reaps (as in some containers).
    let running = || {
        std::fs::read_to_string(format!("/proc/{server}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z')
        })
    };
    while running() || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the nats-server of a killed weir run is still running (pid {server})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut weir, _, _) = run_on_own_server(&h);
    Command::new("kill")
        .args(["-INT", &weir.child.id().to_string()])
        .status()
        .unwrap();
    let status = weir.wait(Duration::from_secs(60));
    assert!(
        status.success(),
        "the second run did not stop cleanly ({status}):\n{}",
        weir.log_tail()
    );
    assert!(h.committed() >= 1000, "the second run committed nothing");
    h.verify();
}
