//! Several hosts sharing one durable consumer and one lake, as `deploy/kubernetes/weir.yaml` runs them:
//! every event lands exactly once, and each host's gold answers hold the other hosts' rows.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Harness, LakeAt, now_ms, realistic};
use crate::support::{cli, get_json, http, metric, swap_plugin_path};
use weir::source::generate::GenConfig;

#[test]
fn two_hosts_share_the_consumer_and_the_lake() {
    let h = Harness::new(LakeAt::Local, |_| {});
    // Both hosts up before the first event, so the consumer spreads the stream over the two.
    let mut a = h.weir_as("host-a");
    let mut b = h.weir_as("host-b");
    let api = a.api(Duration::from_secs(60));
    b.api(Duration::from_secs(60));
    let events = 12_000;
    let last = h.prefill(realistic(31, events, Duration::from_secs(25 * 60)), events);
    h.wait_committed(&mut a, last, Duration::from_secs(240));

    let store = h.store();
    let records = h.rt.block_on(weir::lake::log::all_records(&store)).unwrap();
    for host in ["host-a", "host-b"] {
        assert!(
            records
                .iter()
                .any(|r| r.host == host && r.sequences.count() > 0),
            "{host} committed nothing"
        );
    }
    // Host a's memory holds its own gold rows only: an answer with `from` reads the lake, which holds both
    // hosts' (each host emits its own rows for a window and group).
    let keys = |rows: &Value| {
        let mut keys: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{}/{}/{}", r["wiki"], r["window_start"], r["events"]))
            .collect();
        keys.sort();
        keys
    };
    let committed = get_json(&api, "/api/v1/gold/gold_wiki?source=lake&limit=100000");
    let every = get_json(&api, "/api/v1/gold/gold_wiki?from=0&limit=100000");
    assert_eq!(every["source"], "memory+lake", "{every}");
    assert_eq!(keys(&every["rows"]), keys(&committed["rows"]));
    a.stop();
    b.stop();

    h.verify();
    h.read_back().assert_exactly_once(last);
}

/// A host that leaves for good leaves windows open in its plugin state. Once it has sent no report for
/// `consumer.adopt_after`, another host closes them and writes their rows in its name, so the gold rows of
/// those windows add up to silver. Brought back, the departed host starts empty: nothing is written twice.
#[test]
fn the_windows_a_departed_host_held_open_are_adopted() {
    let h = Harness::new(LakeAt::Local, |t| {
        t["consumer"]
            .as_table_mut()
            .unwrap()
            .insert("adopt_after".into(), "30s".into());
        // No ticks while the stream is quiet: bronze holds every sequence of the stream.
        t["events"]
            .as_table_mut()
            .unwrap()
            .insert("idle_close".into(), "0s".into());
    });
    let mut a = h.weir_as("host-a");
    let mut b = h.weir_as("host-b");
    let api_a = a.api(Duration::from_secs(60));
    b.api(Duration::from_secs(60));
    // Events of an hour ago: each host's last windows stay open until the later events below close them.
    let span = Duration::from_secs(20 * 60);
    let old = GenConfig {
        start_ms: now_ms() - 60 * 60_000,
        ..realistic(51, 6000, span)
    };
    let first = h.prefill(old, 6000);
    h.wait_committed(&mut a, first, Duration::from_secs(240));
    b.stop();

    let started = std::time::Instant::now();
    while counter(&api_a, "weir_pipeline_adoptions_total") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "host-a did not adopt host-b:\n{}",
            a.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let adoptions = || {
        let store = h.store();
        h.rt.block_on(weir::lake::log::all_records(&store))
            .unwrap()
            .into_iter()
            .filter(|r| r.adopted_by.is_some())
            .collect::<Vec<_>>()
    };
    let adopted = adoptions();
    assert_eq!(adopted.len(), 1, "{adopted:#?}");
    let adoption = &adopted[0];
    assert_eq!(
        (adoption.host.as_str(), adoption.adopted_by.as_deref()),
        ("host-b", Some("host-a"))
    );
    assert!(adoption.sequences.0.is_empty());
    assert!(
        adoption.tables.contains_key("gold_wiki"),
        "{:?}",
        adoption.tables.keys()
    );

    // Host b comes back on the adoption's empty state; the later events close host a's windows of the
    // first events, and both hosts' windows of these.
    let mut b = h.weir_as("host-b");
    b.api(Duration::from_secs(60));
    let last = h.prefill(realistic(52, 3000, span), 3000);
    h.wait_committed(&mut a, last, Duration::from_secs(240));
    a.stop();
    b.stop();
    assert_eq!(adoptions().len(), 1, "a host was adopted twice");
    h.verify();
    h.read_back().assert_exactly_once(last);
}

/// A deploy made through one host's API reaches the other host, a rollback made through the other reaches the
/// first, and a host started later with nothing on its disk (a pod rescheduled elsewhere) starts on the
/// version the others run. A host whose self-test refuses a version keeps its own, also across a restart.
/// Events flow throughout and land exactly once.
#[test]
fn deploys_and_rollbacks_reach_every_host() {
    let h = Harness::new(LakeAt::Local, |_| {});
    // Host a takes any version; the others keep the default self-test, which refuses one that keeps nothing.
    let mut a = h.weir_as_with("host-a", |t| {
        let plugins = t["plugins"].as_table_mut().unwrap();
        plugins.insert("self_test_min_kept".into(), 0.0.into());
    });
    let mut b = h.weir_as("host-b");
    let api_a = a.api(Duration::from_secs(60));
    let api_b = b.api(Duration::from_secs(60));
    let span = Duration::from_secs(20 * 60);
    let first = h.prefill(realistic(37, 4000, span), 4000);
    h.wait_committed(&mut a, first, Duration::from_secs(240));

    let deploy = |api: &str, fixture: &str| {
        let file = swap_plugin_path(fixture);
        cli(&[
            "plugin",
            "deploy",
            "--api",
            api,
            "--stage",
            "enrich",
            file.to_str().unwrap(),
        ])
    };
    let rollback = |api: &str| cli(&["plugin", "rollback", "--api", api, "--stage", "enrich"]);
    let answer = deploy(&api_a, "swap-enrich-next");
    assert!(answer.contains("enrich@0.2.0"), "{answer}");
    wait_enrich(&api_b, "0.2.0");
    // Either host's API shows what each host runs.
    wait_hosts(
        &api_b,
        &[("host-a", "enrich@0.2.0"), ("host-b", "enrich@0.2.0")],
    );
    let answer = rollback(&api_b);
    assert!(answer.contains("enrich@0.1.0"), "{answer}");
    wait_enrich(&api_a, "0.1.0");
    let answer = deploy(&api_a, "swap-enrich-next");
    assert!(answer.contains("enrich@0.2.0"), "{answer}");
    wait_enrich(&api_b, "0.2.0");
    // Each host swapped exactly as asked: no record was followed twice, none out of order.
    for (api, follows, swaps) in [(&api_a, 1, 2), (&api_b, 2, 2)] {
        assert_eq!(
            counter(api, "weir_plugin_cluster_follows_total"),
            follows,
            "{api}"
        );
        assert_eq!(counter(api, "weir_plugin_swaps_total"), swaps, "{api}");
        assert_eq!(counter(api, "weir_plugin_rollbacks_total"), 1, "{api}");
    }
    b.stop();

    let mut c = h.weir_as("host-c");
    let api_c = c.api(Duration::from_secs(60));
    let line = c.loaded_line("enrich");
    assert!(line.contains("enrich@0.2.0"), "host-c started on {line}");
    // Host b's report went with it.
    wait_hosts(
        &api_a,
        &[("host-a", "enrich@0.2.0"), ("host-c", "enrich@0.2.0")],
    );
    // Events for host c's self-test sample.
    let second = h.prefill(realistic(38, 3000, span), 3000);
    h.wait_committed(&mut a, second, Duration::from_secs(240));

    // A version that keeps nothing: host a takes it, host c's self-test refuses it.
    let answer = deploy(&api_a, "swap-enrich-drop-all");
    assert!(answer.contains("enrich@0.4.0"), "{answer}");
    let started = std::time::Instant::now();
    while counter(&api_c, "weir_plugin_cluster_refusals_total") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "host-c did not refuse 0.4.0:\n{}",
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_enrich(&api_c, "0.2.0");
    c.stop();
    let mut c = h.weir_as("host-c");
    c.api(Duration::from_secs(60));
    let line = c.loaded_line("enrich");
    assert!(
        line.contains("enrich@0.2.0"),
        "host-c refused 0.4.0, and started on {line}"
    );
    // Host a wrote the commit log's checkpoints meanwhile (the harness checkpoints every four commits):
    // they name host c's last whole state, so host c carries on with its dedupe keys and windows.
    assert!(
        !std::fs::read_to_string(&c.log)
            .unwrap()
            .contains("no plugin state of this host"),
        "host-c restarted without its plugin state:\n{}",
        c.log_tail()
    );
    let answer = rollback(&api_a);
    assert!(answer.contains("enrich@0.2.0"), "{answer}");

    // Host b comes back for the last events. Its windows still open when it stopped are in its own plugin
    // state, which host b restores, or another host adopts after `consumer.adopt_after` (10 minutes, longer
    // than this test; see the test above). Whether any were open depends on the minute the test runs, since
    // the events' times follow the clock.
    let mut b = h.weir_as("host-b");
    b.api(Duration::from_secs(60));
    let last = h.prefill(realistic(39, 3000, span), 3000);
    h.wait_committed(&mut a, last, Duration::from_secs(240));
    a.stop();
    b.stop();
    c.stop();

    let store = h.store();
    let records = h.rt.block_on(weir::lake::log::all_records(&store)).unwrap();
    let of_c: Vec<_> = records.iter().filter(|r| r.host == "host-c").collect();
    assert!(!of_c.is_empty(), "host-c committed nothing");
    for record in of_c {
        assert!(
            record.chain.iter().any(|p| p == "enrich@0.2.0"),
            "host-c ran {:?}",
            record.chain
        );
    }
    h.verify();
    // Each host closes a window once its own events have passed it: when they stop, one may have written its
    // share of a window that another still holds open in its state.
    h.read_back().assert_exactly_once_but_windows_held(last);
}

/// A deploy made while NATS is away, on a host that stops before NATS is back, reaches the other hosts when
/// that host starts again: it was kept in the host's `deployed_dir` until NATS took it.
#[test]
fn a_deploy_made_while_nats_is_away_reaches_the_other_hosts_at_the_next_start() {
    let mut h = Harness::new(LakeAt::Local, |_| {});
    let mut a = h.weir_as("host-a");
    let api_a = a.api(Duration::from_secs(60));
    let span = Duration::from_secs(20 * 60);
    // Events for the self-test sample.
    let first = h.prefill(realistic(41, 2000, span), 2000);
    h.wait_committed(&mut a, first, Duration::from_secs(240));

    h.nats.kill();
    let file = swap_plugin_path("swap-enrich-next");
    let answer = cli(&[
        "plugin",
        "deploy",
        "--api",
        &api_a,
        "--stage",
        "enrich",
        file.to_str().unwrap(),
    ]);
    assert!(answer.contains("enrich@0.2.0"), "{answer}");
    a.stop();
    let kept = h
        .dir
        .path()
        .join(".weir/deployed-host-a/unannounced/enrich.json");
    assert!(
        kept.exists(),
        "host-a did not keep its deploy:\n{}",
        a.log_tail()
    );
    h.nats.restart().unwrap();

    // Host b, started meanwhile, finds no deploy in the cluster's record, and follows host a's once host a
    // is back.
    let mut b = h.weir_as("host-b");
    let api_b = b.api(Duration::from_secs(60));
    let line = b.loaded_line("enrich");
    assert!(line.contains("enrich@0.1.0"), "host-b started on {line}");
    let mut a = h.weir_as("host-a");
    let api_a = a.api(Duration::from_secs(60));
    let line = a.loaded_line("enrich");
    assert!(line.contains("enrich@0.2.0"), "host-a started on {line}");
    wait_enrich(&api_b, "0.2.0");
    let started = std::time::Instant::now();
    while counter(&api_b, "weir_plugin_cluster_follows_total") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "host-b counted no follow"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(counter(&api_b, "weir_plugin_cluster_follows_total"), 1);
    assert_eq!(counter(&api_a, "weir_plugin_cluster_follows_total"), 0);
    // Kept no longer: a later start does not put it again over a newer deploy.
    assert!(!kept.exists(), "{} is still there", kept.display());
    b.stop();
    a.stop();

    let mut a = h.weir_as("host-a");
    let last = h.prefill(realistic(42, 2000, span), 2000);
    h.wait_committed(&mut a, last, Duration::from_secs(240));
    a.stop();
    h.verify();
    h.read_back().assert_exactly_once(last);
}

/// A host stopping while events flow loses nothing: what its client had prefetched is handed back at once
/// for the other host to take; what the server was still sending it as it left comes again after `ack_wait`
/// (30 s here; it cannot be handed back, since it never arrived). The other host commits every event.
#[test]
fn a_host_stopping_while_events_flow_leaves_every_event_to_the_others() {
    let h = Harness::new(LakeAt::Local, |t| {
        t["consumer"]
            .as_table_mut()
            .unwrap()
            .insert("ack_wait".into(), "30s".into());
    });
    let mut a = h.weir_as("host-a");
    let mut b = h.weir_as("host-b");
    a.api(Duration::from_secs(60));
    b.api(Duration::from_secs(60));
    let events = 40_000;
    let last = h.prefill(realistic(71, events, Duration::from_secs(25 * 60)), events);
    b.stop();
    h.wait_committed(&mut a, last, Duration::from_secs(180));
    a.stop();
    h.verify();
    // Host b's share of the windows open when it stopped stays in its state until it comes back, or until
    // another host adopts it (`the_windows_a_departed_host_held_open_are_adopted`).
    h.read_back().assert_exactly_once_but_windows_held(last);
}

/// A pause asked of one host pauses every host, a host started while the pipeline is paused starts paused,
/// and a resume asked of another host resumes them all. What came meanwhile waited in the stream, and lands
/// exactly once.
#[test]
fn a_pause_and_a_resume_reach_every_host() {
    let h = Harness::new(LakeAt::Local, |_| {});
    let mut a = h.weir_as("host-a");
    let mut b = h.weir_as("host-b");
    let api_a = a.api(Duration::from_secs(60));
    let api_b = b.api(Duration::from_secs(60));
    let span = Duration::from_secs(20 * 60);
    let first = h.prefill(realistic(61, 2000, span), 2000);
    h.wait_committed(&mut a, first, Duration::from_secs(240));
    wait_pending(&api_a, |n| n == 0);

    ask_every_host(&api_a, "pause");
    wait_paused(&api_b, true);
    // A host stopped while paused (its fetch loop holding, its pull closed) stops cleanly; restarted, it
    // starts paused, before it takes an event.
    std::thread::sleep(Duration::from_secs(1));
    b.stop();
    let mut b = h.weir_as("host-b");
    let api_b = b.api(Duration::from_secs(60));
    assert_eq!(get_json(&api_b, "/ready")["paused"], true);
    let received = |api: &str| {
        get_json(api, "/api/v1/pipeline")["received"]
            .as_u64()
            .unwrap()
    };
    let before = (received(&api_a), received(&api_b));
    let backlog = 1000;
    let last = h.prefill(realistic(62, backlog, span), backlog);
    // They wait, unprocessed (a paused host holds the batch it pulled; the rest wait in the stream).
    wait_pending(&api_a, |n| n >= backlog);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!((received(&api_a), received(&api_b)), before);

    ask_every_host(&api_b, "resume");
    wait_paused(&api_a, false);
    h.wait_committed(&mut a, last, Duration::from_secs(240));
    a.stop();
    b.stop();
    h.verify();
    h.read_back().assert_exactly_once(last);
}

/// Asks the host behind `api` to pause or resume the pipeline (`what`), which every host then follows.
fn ask_every_host(api: &str, what: &str) {
    let (code, answer) = http("POST", &format!("{api}/api/v1/pipeline/{what}"), None, None);
    assert_eq!(
        (code, answer.contains(r#""hosts":"all""#)),
        (200, true),
        "{what}: {answer}"
    );
}

/// Waits until the consumer's messages not yet taken or acked (`weir_consumer_pending_messages`, measured
/// every 5 s) pass `ok`.
fn wait_pending(api: &str, ok: impl Fn(u64) -> bool) {
    let started = std::time::Instant::now();
    loop {
        let pending = counter(api, "weir_consumer_pending_messages");
        if ok(pending) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "weir_consumer_pending_messages stays at {pending}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the host behind `api` says it is paused (or not).
fn wait_paused(api: &str, paused: bool) {
    let started = std::time::Instant::now();
    while get_json(api, "/ready")["paused"] != paused {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{api} did not follow the pause record to paused = {paused}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of a pipeline counter behind `api`.
fn counter(api: &str, name: &str) -> u64 {
    metric(api, name).unwrap_or_else(|| panic!("no {name} in the metrics of {api}")) as u64
}

/// Waits until the hosts `api` lists as running are `hosts`, with their enrich versions.
fn wait_hosts(api: &str, hosts: &[(&str, &str)]) {
    let started = std::time::Instant::now();
    loop {
        let plugins = get_json(api, "/api/v1/plugins");
        let seen: Vec<(String, String)> = plugins["hosts"]
            .as_array()
            .unwrap_or_else(|| panic!("no hosts in {plugins}"))
            .iter()
            .map(|h| {
                let enrich = h["plugins"]["enrich"].as_str().unwrap_or("?");
                (h["host"].as_str().unwrap().to_string(), enrich.to_string())
            })
            .collect();
        let want: Vec<(String, String)> = hosts
            .iter()
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect();
        if seen == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{api} lists {seen:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the enrich stage behind `api` runs `version`.
fn wait_enrich(api: &str, version: &str) {
    let started = std::time::Instant::now();
    loop {
        let plugins = get_json(api, "/api/v1/plugins");
        let enrich = plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["stage"] == "enrich")
            .cloned()
            .unwrap();
        if enrich["version"] == version {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "enrich behind {api} still runs {}",
            enrich["version"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
