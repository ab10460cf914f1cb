//! The self-test a new plugin version passes before a hot swap (`weir::pipeline::self_test`), decision by
//! decision, on real components and generated events, without a pipeline around it.

use std::sync::Arc;

use bytes::Bytes;
use weir::event::EventShape;
use weir::pipeline::self_test::{SelfTest, StageSpec};
use weir::runtime::{Clock, Limits, LoadedPlugin};
use weir::source::generate::{GenConfig, Generator};

use crate::support::{load, loader, swap_plugin_path};

fn spec(loaded: Arc<LoadedPlugin>, config: &str) -> StageSpec {
    StageSpec {
        loaded,
        config: config.into(),
        limits: Limits::default(),
    }
}

/// `n` generated events, as raw text.
fn sample(n: u64) -> Vec<Bytes> {
    let generator = Generator::new(GenConfig {
        seed: 7,
        ..GenConfig::default()
    });
    (0..n)
        .map(|i| Bytes::from(generator.event(i).data))
        .collect()
}

/// The enrich stage of the default pipeline, after its filter, serving enrich 0.1.0; `candidate` is the
/// new version.
fn enrich_stage(candidate: Arc<LoadedPlugin>, events: u64, min_kept: f64) -> SelfTest {
    SelfTest {
        shape: EventShape::default(),
        sample: sample(events),
        min_kept,
        batch: 256,
        clock: Clock::System,
        before: vec![spec(load("weir-plugin-filter"), r#"{"drop_canary": true}"#)],
        serving: spec(load("weir-plugin-enrich"), "{}"),
        candidate: spec(candidate, "{}"),
    }
}

fn drop_all() -> Arc<LoadedPlugin> {
    loader()
        .load(&swap_plugin_path("swap-enrich-drop-all"))
        .unwrap()
}

#[test]
fn a_version_that_keeps_nothing_is_refused_and_a_good_one_passes() {
    let refused = enrich_stage(drop_all(), 500, 0.01)
        .run()
        .map(drop)
        .unwrap_err();
    assert!(
        refused.contains("enrich@0.4.0 failed its self-test: of ")
            && refused.contains("the pipeline up to it would keep 0,"),
        "{refused}"
    );
    let next = loader()
        .load(&swap_plugin_path("swap-enrich-next"))
        .unwrap();
    enrich_stage(next, 500, 0.01).run().unwrap();
}

/// An aggregate's rows come from `on_watermark`: a version that fails there is refused before the swap.
#[test]
fn an_aggregate_that_fails_closing_its_windows_is_refused() {
    let stateful = load("bad-stateful");
    let test = |candidate: &str| SelfTest {
        shape: EventShape::default(),
        sample: sample(100),
        min_kept: 0.0,
        batch: 256,
        clock: Clock::System,
        before: Vec::new(),
        serving: spec(stateful.clone(), "{}"),
        candidate: spec(stateful.clone(), candidate),
    };
    let refused = test(r#"{"mode": "watermark-panic"}"#)
        .run()
        .map(drop)
        .unwrap_err();
    assert!(
        refused.contains("failed its self-test")
            && refused.contains("the serving version failed 0"),
        "{refused}"
    );
    test("{}").run().unwrap();
}

#[test]
fn the_kept_check_waits_for_enough_events_and_can_be_turned_off() {
    // 1 % of 50 events is less than one: dropping them all may be right.
    enrich_stage(drop_all(), 50, 0.01).run().unwrap();
    enrich_stage(drop_all(), 500, 0.0).run().unwrap();
    // A share of a half needs two kept events.
    enrich_stage(drop_all(), 50, 0.5)
        .run()
        .map(drop)
        .unwrap_err();
}

/// Failed calls refuse a version unless the serving version fails as many on the same events: the panic
/// fixture traps on events whose `action` is `boom`, three of the sample's; enrich reads no `action`.
#[test]
fn failed_calls_refuse_a_version_the_serving_one_does_better_than() {
    let panics = load("bad-panic");
    let poisoned = || {
        let mut events = sample(100);
        for i in [10, 50, 90] {
            let text = String::from_utf8(events[i].to_vec()).unwrap();
            events[i] = Bytes::from(text.replacen('{', r#"{"action":"boom","#, 1));
        }
        events
    };
    let mut test = enrich_stage(panics.clone(), 0, 0.0);
    test.sample = poisoned();
    let refused = test.run().map(drop).unwrap_err();
    assert!(
        refused.contains("panic@0.1.0 failed its self-test")
            && refused.contains("the serving version failed 0"),
        "{refused}"
    );
    // Where the serving version fails on the same events (its stage's `on_error` handles them live), they do
    // not block a deploy.
    let mut test = enrich_stage(panics.clone(), 0, 0.0);
    test.sample = poisoned();
    test.serving = spec(panics, "{}");
    test.run().unwrap();
}
