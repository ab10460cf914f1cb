//! Deliberately bad plugins: the host survives each, quarantines exactly the poison event with the right
//! reason, gives every other event of the batch the plugin's real answer, and processes the next batch.

use weir::runtime::types::Verdict;
use weir::runtime::{FailureKind, Limits};

use crate::support::{action_events, start, start_with};

/// 64 events with a poison one at index 37, then a clean batch.
fn assert_isolates(crate_name: &str, kind: FailureKind, detail_contains: &str) {
    assert_isolates_with(crate_name, kind, detail_contains, Limits::default());
}

fn assert_isolates_with(
    crate_name: &str,
    kind: FailureKind,
    detail_contains: &str,
    limits: Limits,
) {
    let mut plugin = start_with(crate_name, limits);
    let mut actions = vec!["ok"; 64];
    actions[37] = "boom";
    let result = plugin.process(&action_events(&actions));
    assert_eq!(result.verdicts.len(), 64);
    for (i, outcome) in result.verdicts.iter().enumerate() {
        match (outcome, i) {
            (Verdict::Quarantine(q), 37) => {
                assert_eq!(q.reason, kind.reason(), "{crate_name}: {q:?}");
                assert!(
                    q.failed_checks.iter().any(|c| c.contains(detail_contains)),
                    "{crate_name}: expected {detail_contains:?} in {:?}",
                    q.failed_checks
                );
            }
            (Verdict::Keep, i) if i != 37 => {}
            (other, i) => panic!("{crate_name}: event {i} got {other:?}"),
        }
    }
    let stats = plugin.stats();
    assert!(
        stats.failures.get(&kind).copied().unwrap_or(0) >= 1,
        "{crate_name}: {:?}",
        stats.failures
    );
    assert!(stats.instance_restarts >= 1);
    assert_eq!((stats.kept, stats.quarantined, stats.failed), (63, 0, 1));

    let next = plugin.process(&action_events(&["ok"; 100]));
    assert!(
        next.verdicts.iter().all(|o| matches!(o, Verdict::Keep)),
        "{crate_name}: next batch"
    );
}

/// A plugin failing on every event is not chased one event at a time through a whole batch (511 calls for
/// 256 events, each up to the timeout): past the bisection's budget the events still failing fail together,
/// each with the reason and a note saying so. A few poison events in a batch are still each found.
#[test]
fn a_plugin_failing_on_every_event_is_not_bisected_to_the_end() {
    for (crate_name, kind) in [
        ("bad-panic", FailureKind::Trap),
        ("bad-iloop", FailureKind::Timeout),
    ] {
        let mut plugin = start(crate_name);
        let result = plugin.process(&action_events(&["boom"; 256]));
        assert_eq!(result.failed, (0..256).collect::<Vec<_>>(), "{crate_name}");
        let mut together = 0;
        for verdict in &result.verdicts {
            let Verdict::Quarantine(q) = verdict else {
                panic!("{crate_name}: {verdict:?}");
            };
            assert_eq!(q.reason, kind.reason(), "{crate_name}: {q:?}");
            together += q.failed_checks[0].contains("not tried alone") as usize;
        }
        assert!(together > 200, "{crate_name}: {together} failed together");
        let failures = plugin.stats().failures[&kind];
        // The budget (36 for 256 events), and at most one more call per level of the bisection under way
        // when it ran out.
        assert!(failures <= 36 + 8, "{crate_name}: {failures} failed calls");
        let next = plugin.process(&action_events(&["ok"; 100]));
        assert!(
            next.verdicts.iter().all(|o| matches!(o, Verdict::Keep)),
            "{crate_name}: next batch"
        );
    }

    let mut plugin = start("bad-panic");
    let mut actions = vec!["ok"; 256];
    for poison in [3, 90, 91, 200] {
        actions[poison] = "boom";
    }
    let result = plugin.process(&action_events(&actions));
    assert_eq!(result.failed, vec![3, 90, 91, 200]);
    assert_eq!(plugin.stats().kept, 252);
}

#[test]
fn infinite_loop_times_out() {
    assert_isolates("bad-iloop", FailureKind::Timeout, "CPU deadline");
}

/// A sleep waits in the host (`wasi:io/poll`), out of the epoch deadline's reach: one past the deadline is a
/// timeout at once, as a loop would be at the deadline.
#[test]
fn sleep_times_out() {
    assert_isolates("bad-sleep", FailureKind::Timeout, "CPU deadline");
}

#[test]
fn a_short_sleep_is_left_alone() {
    let mut plugin = start("bad-sleep");
    let result = plugin.process(&action_events(&["ok", "nap", "ok", "nap"]));
    assert!(result.verdicts.iter().all(|o| matches!(o, Verdict::Keep)));
    assert!(
        plugin.stats().failures.is_empty(),
        "{:?}",
        plugin.stats().failures
    );
}

#[test]
fn memory_bomb_hits_the_cap() {
    // Filling 64 MiB takes a few milliseconds alone, but can take longer than the default 100 ms CPU deadline
    // (wall time, by epochs) on a machine busy with the other tests; then the deadline, not the cap, stops it.
    // The cap is what this test is about.
    let limits = Limits {
        call_timeout_ms: 10_000,
        ..Limits::default()
    };
    assert_isolates_with("bad-memory-bomb", FailureKind::Oom, "memory limit", limits);
}

#[test]
fn deep_recursion_overflows_the_stack() {
    assert_isolates("bad-deep-recursion", FailureKind::Trap, "stack overflow");
}

#[test]
fn panic_traps() {
    assert_isolates("bad-panic", FailureKind::Trap, "unreachable");
}

#[test]
fn huge_output_is_rejected() {
    assert_isolates("bad-huge-output", FailureKind::BadOutput, "output_bytes");
}

#[test]
fn wrong_outcome_count_is_rejected() {
    assert_isolates(
        "bad-bad-output",
        FailureKind::BadOutput,
        "verdicts for 1 events",
    );
}

#[test]
fn slow_but_legal_plugin_is_left_alone() {
    // One 30 ms event per batch: a 70 ms margin under the 100 ms deadline, even on a loaded CI machine.
    let mut plugin = start("bad-slow");
    let result = plugin.process(&action_events(&["ok", "slow", "ok"]));
    assert!(result.verdicts.iter().all(|o| matches!(o, Verdict::Keep)));
    assert!(
        plugin.stats().failures.is_empty(),
        "{:?}",
        plugin.stats().failures
    );
}

#[test]
fn chatty_plugin_is_capped_not_stopped() {
    // 16k host calls to print: give it a deadline no loaded machine can miss; this test is about the log cap.
    let limits = weir::runtime::Limits {
        call_timeout_ms: 5_000,
        ..Default::default()
    };
    let mut plugin = weir::runtime::Plugin::start(
        crate::support::load("bad-chatty"),
        "{}",
        limits,
        weir::runtime::Clock::System,
    )
    .unwrap();
    let result = plugin.process(&action_events(&["ok"; 10]));
    assert!(result.verdicts.iter().all(|o| matches!(o, Verdict::Keep)));
    assert!(
        plugin.stats().guest_log_dropped_bytes > 500_000,
        "{}",
        plugin.stats().guest_log_dropped_bytes
    );
}

#[test]
fn several_poison_events_in_one_batch() {
    let mut plugin = start("bad-panic");
    let actions: Vec<&str> = (0..1000)
        .map(|i| if i % 250 == 3 { "boom" } else { "ok" })
        .collect();
    let result = plugin.process(&action_events(&actions));
    let quarantined: Vec<usize> = result
        .verdicts
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Verdict::Quarantine(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(quarantined, [3, 253, 503, 753]);
}

/// `[[stages]] on_error`: an event the plugin fails on is quarantined (the default), passed on unchanged,
/// dropped under a counted rule, or stops the chain; the other events get the plugin's own answers.
#[test]
fn on_error_decides_where_a_failed_event_goes() {
    use weir::config::OnError;
    use weir::pipeline::chain::Chain;

    let run = |policy: OnError| {
        let chain = Chain::new(vec![start("bad-panic")]).unwrap();
        let mut chain = chain.on_error(&[policy]);
        let parser = chain.parser();
        let events = ["ok", "boom", "ok", "boom", "ok"]
            .iter()
            .enumerate()
            .map(|(i, action)| {
                let raw = format!(
                    r#"{{"meta": {{"id": "e{i}", "dt": "2026-12-05T12:00:00Z"}}, "action": "{action}"}}"#
                );
                parser.parse(raw.into_bytes(), 0).unwrap()
            })
            .collect();
        chain.run(events)
    };
    let ids = |events: Vec<&weir::event::Event>| -> Vec<String> {
        events.into_iter().map(|e| e.id.clone()).collect()
    };

    let out = run(OnError::Quarantine);
    assert_eq!(ids(out.kept.iter().collect()), ["e0", "e2", "e4"]);
    let quarantined: Vec<_> = out
        .quarantined
        .iter()
        .map(|q| (q.event.id.as_str(), q.reason.as_str()))
        .collect();
    assert_eq!(quarantined, [("e1", "plugin_trap"), ("e3", "plugin_trap")]);
    assert!(out.dropped.is_empty() && out.skipped.is_empty() && out.stop.is_none());

    let out = run(OnError::Skip);
    assert_eq!(
        ids(out.kept.iter().collect()),
        ["e0", "e1", "e2", "e3", "e4"]
    );
    assert_eq!(out.skipped, ["panic", "panic"]);
    assert!(out.quarantined.is_empty() && out.dropped.is_empty() && out.stop.is_none());

    let out = run(OnError::Drop);
    assert_eq!(ids(out.kept.iter().collect()), ["e0", "e2", "e4"]);
    let dropped: Vec<_> = out
        .dropped
        .iter()
        .map(|d| (d.event.id.as_str(), d.rule.as_str()))
        .collect();
    assert_eq!(
        dropped,
        [
            ("e1", "on_error:plugin_trap"),
            ("e3", "on_error:plugin_trap")
        ]
    );
    assert!(out.quarantined.is_empty() && out.skipped.is_empty() && out.stop.is_none());

    let out = run(OnError::Stop);
    let why = out.stop.expect("the chain stops");
    assert!(
        why.contains("stage panic") && why.contains("event e1") && why.contains("plugin_trap"),
        "{why}"
    );
}
