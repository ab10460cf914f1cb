//! Keyed state, snapshot state and plugin metrics are transactional: a call that fails leaves nothing behind,
//! so bisecting a poison batch neither double-counts nor loses anything.

use weir::runtime::types::{Value, Verdict};
use weir::runtime::{Clock, FailureKind, Limits, Plugin};

use crate::support::{action_events, load, start, start_with};

#[test]
fn failed_calls_leave_no_state_metrics_or_counts() {
    let mut plugin = start("bad-stateful");
    let mut actions = vec!["ok"; 10];
    actions[5] = "boom";
    let result = plugin.process(&action_events(&actions));
    assert_eq!(plugin.stats().failed, 1);
    assert!(result.rows.is_empty());

    // Keyed state: every kept event marked exactly once, the poison event not at all.
    for i in 0..10 {
        let value = plugin.state().get(&format!("ev-{i}"), 1_700_000_000_000);
        if i == 5 {
            assert_eq!(value, None);
        } else {
            assert_eq!(value, Some(&[1u8][..]), "ev-{i}");
        }
    }
    // Plugin metrics: only from calls that succeeded.
    assert_eq!(plugin.stats().counters.get("seen"), Some(&9));
    // Snapshot state: the in-memory count survived the instance replacements.
    let rows = plugin.on_watermark(123).unwrap();
    assert_eq!(rows.len(), 1);
    let count = rows[0]
        .columns
        .iter()
        .find(|(c, _)| c == "count")
        .map(|(_, v)| v);
    assert!(
        matches!(count, Some(Value::Integer(9))),
        "{:?}",
        rows[0].columns
    );
}

/// Keyed state is capped in total (`limits.state_bytes`): the events whose writes would pass the cap are
/// quarantined as `plugin_oom`, and the state keeps what the others wrote.
#[test]
fn keyed_state_is_capped_in_total() {
    // `bad-stateful` sets one key (16 bytes hashed) to one byte per event: room for 50 events.
    let limits = Limits {
        state_bytes: 50 * 17,
        ..Limits::default()
    };
    let mut plugin = start_with("bad-stateful", limits);
    let result = plugin.process(&action_events(&["ok"; 64]));
    for (i, verdict) in result.verdicts.iter().enumerate() {
        match verdict {
            Verdict::Keep if i < 50 => {}
            Verdict::Quarantine(q) if i >= 50 => {
                assert_eq!(q.reason, FailureKind::Oom.reason(), "{q:?}");
                assert!(
                    q.failed_checks
                        .iter()
                        .any(|c| c.contains("limits.state_bytes")),
                    "{q:?}"
                );
            }
            other => panic!("event {i}: {other:?}"),
        }
    }
    assert_eq!(plugin.state().len(), 50);
}

#[test]
fn state_hands_over_to_a_new_instance() {
    let mut first = start("bad-stateful");
    first.process(&action_events(&["ok", "ok"]));
    let snapshot = first
        .take_snapshot()
        .unwrap()
        .expect("bad-stateful keeps snapshot state");
    let state = first.take_state();

    let mut second = start("bad-stateful");
    second.set_state(state);
    second.hand_over(snapshot).unwrap();
    second.process(&action_events(&["ok"]));
    // ev-0 was seen by the first instance and again by the second.
    assert_eq!(
        second.state().get("ev-0", 1_700_000_000_000),
        Some(&[2u8][..])
    );
    let rows = second.on_watermark(0).unwrap();
    assert!(
        rows[0]
            .columns
            .iter()
            .any(|(c, v)| c == "count" && matches!(v, Value::Integer(3)))
    );
}

#[test]
fn a_trap_after_many_batches_loses_no_snapshot_state() {
    // Snapshots are taken every few batches, not after each: the calls since the last one are journaled and
    // repeated on the replacement instance. Whatever the spacing, the in-memory count must come out exact.
    let mut plugin = start("bad-stateful");
    for _ in 0..25 {
        plugin.process(&action_events(&["ok"; 4]));
    }
    let mut actions = vec!["ok"; 6];
    actions[2] = "boom";
    plugin.process(&action_events(&actions));
    assert_eq!(plugin.stats().failed, 1);
    let rows = plugin.on_watermark(1).unwrap();
    assert!(
        rows[0]
            .columns
            .iter()
            .any(|(c, v)| c == "count" && matches!(v, Value::Integer(105))),
        "{:?}",
        rows[0].columns
    );
}

/// `bad-stateful` as a release with a bug in `restore`: it refuses its own tainted snapshots.
fn refusing_tainted() -> Plugin {
    Plugin::start(
        load("bad-stateful"),
        "refuse-tainted",
        Limits::default(),
        Clock::Fixed(1_700_000_000_000),
    )
    .unwrap()
}

/// The count a `bad-stateful` instance reports at a watermark.
fn count(plugin: &mut Plugin) -> i64 {
    let rows = plugin.on_watermark(0).unwrap();
    rows[0]
        .columns
        .iter()
        .find_map(|(c, v)| match (c.as_str(), v) {
            ("count", Value::Integer(n)) => Some(*n),
            _ => None,
        })
        .expect("a count")
}

/// A stateful plugin whose replacement instance cannot start after a trap (its `restore` refuses its own
/// snapshot) is broken: it quarantines every event and cannot snapshot for a commit. Deploying a version that
/// works is the way out, and must lose nothing: the new version takes over the last restore point, repeats
/// the calls made since, and gets the keyed state the broken one kept; a version that refuses the state
/// leaves the broken one as it was.
#[test]
fn a_broken_stateful_plugin_hands_its_state_over_to_a_working_version() {
    let mut broken = refusing_tainted();
    broken.process(&action_events(&["ok", "taint"]));
    broken.update_snapshot().unwrap(); // the restore point is tainted now
    broken.process(&action_events(&["ok", "ok", "ok"])); // journaled
    broken.process(&action_events(&["boom"]));
    let later = broken.process(&action_events(&["ok"]));
    assert_eq!(broken.stats().failed, 2, "the boom and the event after it");
    assert!(
        format!("{:?}", later.verdicts).contains("cannot be restarted"),
        "{:?}",
        later.verdicts
    );
    assert!(
        broken.on_watermark(0).is_err(),
        "a broken plugin has no instance to call"
    );

    // A version that refuses the state (it has the same bug): the swap fails, and the broken version keeps
    // all it had, for the next try.
    let mut refusing = refusing_tainted();
    let handed = broken
        .take_snapshot()
        .expect("a broken plugin still hands its state over")
        .expect("bad-stateful keeps snapshot state");
    assert!(refusing.hand_over(handed).is_err());

    let handed = broken.take_snapshot().unwrap().unwrap();
    let state = broken.take_state();
    let mut fixed = start("bad-stateful");
    fixed.set_state(state);
    fixed.hand_over(handed).unwrap();
    // The five events the broken version kept, then one more.
    assert_eq!(count(&mut fixed), 5);
    fixed.process(&action_events(&["ok"]));
    assert_eq!(count(&mut fixed), 6);
    // ev-0 was kept in the first two batches and the last; the journal's repetition wrote nothing.
    assert_eq!(
        fixed.state().get("ev-0", 1_700_000_000_000),
        Some(&[3u8][..])
    );
    // Its restore point covers what it took over: a trap now loses none of it.
    fixed.process(&action_events(&["boom"]));
    assert_eq!(count(&mut fixed), 6);
}

/// Calls repeated on a replacement instance print again, as they did the first time; that output must not
/// count against the log budget of the next real call.
#[test]
fn repeated_calls_leave_the_next_call_its_whole_log_budget() {
    let limits = Limits {
        log_bytes_per_call: 2_500,
        ..Default::default()
    };
    let clock = Clock::Fixed(1_700_000_000_000);
    let mut plugin = Plugin::start(load("bad-stateful"), "slow-snapshot", limits, clock).unwrap();
    plugin.process(&action_events(&["ok"]));
    plugin.update_snapshot().unwrap();
    // 2,000 bytes, journaled: a snapshot takes far longer than the call.
    plugin.process(&action_events(&["shout", "shout"]));
    // The trap's replacement instance repeats the journal, shouts included.
    plugin.process(&action_events(&["boom"]));
    assert_eq!(plugin.stats().instance_restarts, 1);
    plugin.process(&action_events(&["shout", "shout"]));
    assert_eq!(plugin.stats().guest_log_dropped_bytes, 0);
}
