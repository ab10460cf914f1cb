use serde_json::json;
use weir_plugin_dedupe::{Config, Dedupe};
use weir_sdk::testing::{recentchange, run};
use weir_sdk::{Plugin, Verdict, clock, metrics};

fn kinds(outcomes: &[weir_sdk::Outcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .map(|o| match &o.verdict {
            Verdict::Keep => "keep",
            Verdict::Drop(rule) if rule == "duplicate" => "dup",
            Verdict::Drop(_) => "drop",
            Verdict::Quarantine(_) => "quarantine",
        })
        .collect()
}

#[test]
fn real_events_are_unique_and_replays_are_dropped() {
    clock::set_now_ms(Some(1_000));
    let docs = recentchange();
    let (mut plugin, plan) = Dedupe::init("{}").unwrap();
    let events = weir_sdk::testing::batch(&docs, &plan);
    let first = plugin.process_batch(&events);
    assert!(kinds(&first.outcomes()).iter().all(|k| *k == "keep"));
    // A reconnect replays the whole stream: every event is a duplicate now.
    let replay = plugin.process_batch(&events);
    assert!(kinds(&replay.outcomes()).iter().all(|k| *k == "dup"));
    assert_eq!(metrics::counter_value("duplicates"), docs.len() as u64);
}

#[test]
fn the_same_id_twice_in_one_batch() {
    let docs = [
        json!({"meta": {"id": "a"}}),
        json!({"meta": {"id": "b"}}),
        json!({"meta": {"id": "a"}}),
        json!({"meta": {}}),
        json!({"meta": {"id": null}}),
        json!({"meta": {"id": "b"}}),
    ];
    let (_, outcomes) = run::<Dedupe>("{}", &docs).unwrap();
    assert_eq!(
        kinds(&outcomes),
        ["keep", "keep", "dup", "keep", "keep", "dup"]
    );
    let (_, outcomes) = run::<Dedupe>(r#"{"on_missing": "quarantine"}"#, &docs).unwrap();
    assert_eq!(
        kinds(&outcomes),
        ["keep", "keep", "dup", "quarantine", "quarantine", "dup"]
    );
}

#[test]
fn keys_expire_after_the_ttl() {
    clock::set_now_ms(Some(10_000));
    let (mut plugin, plan) = Dedupe::init(r#"{"key": "revision.new", "ttl_ms": 500}"#).unwrap();
    let event = weir_sdk::testing::batch(&[json!({"revision": {"new": 42}})], &plan);
    assert_eq!(kinds(&plugin.process_batch(&event).outcomes()), ["keep"]);
    clock::set_now_ms(Some(10_499));
    assert_eq!(kinds(&plugin.process_batch(&event).outcomes()), ["dup"]);
    clock::set_now_ms(Some(10_500));
    assert_eq!(kinds(&plugin.process_batch(&event).outcomes()), ["keep"]);
}

#[test]
fn bad_configs_name_the_problem() {
    let err = |c: &str| Dedupe::init(c).err().unwrap();
    assert!(err(r#"{"ttl": 5}"#).contains("unknown field `ttl`"));
    assert!(err(r#"{"ttl_ms": 0}"#).contains("`ttl_ms` must be positive"));
    assert!(err(r#"{"key": ""}"#).contains("not a dotted JSON path"));
    assert!(err(r#"{"on_missing": "drop"}"#).contains("unknown variant `drop`"));
}

#[test]
fn example_config_file_is_generated_from_the_code() {
    weir_sdk::testing::check_generated(
        concat!(env!("CARGO_MANIFEST_DIR"), "/example-config.json"),
        &serde_json::to_string_pretty(&Config::default()).unwrap(),
    );
}
