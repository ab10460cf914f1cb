use serde_json::{Value, json};
use weir_plugin_filter::{Config, Filter};
use weir_sdk::testing::{recentchange, run};
use weir_sdk::{Outcome, Plugin, Verdict};

fn verdicts(config: &str, docs: &[Value]) -> Vec<Option<String>> {
    let (_, outcomes) = run::<Filter>(config, docs).unwrap();
    outcomes.into_iter().map(dropped_by).collect()
}

fn dropped_by(outcome: Outcome) -> Option<String> {
    match outcome.verdict {
        Verdict::Keep => None,
        Verdict::Drop(rule) => Some(rule),
        Verdict::Quarantine(q) => panic!("the filter never quarantines: {q:?}"),
    }
}

#[test]
fn default_config_drops_only_canaries() {
    let mut docs = recentchange();
    docs.push(json!({"meta": {"domain": "canary", "dt": "2025-01-01T00:00:00Z"}, "type": "edit"}));
    let out = verdicts("{}", &docs);
    assert!(out[..docs.len() - 1].iter().all(Option::is_none));
    assert_eq!(out.last().unwrap().as_deref(), Some("canary"));
}

#[test]
fn the_documented_example_matches_an_independent_filter() {
    let config = serde_json::to_string(&example()).unwrap();
    let docs = recentchange();
    let out = verdicts(&config, &docs);
    for (doc, verdict) in docs.iter().zip(out) {
        let expected = if !["enwiki", "wikidatawiki", "commonswiki"]
            .contains(&doc["wiki"].as_str().unwrap_or(""))
        {
            Some("wikis")
        } else if doc["bot"] == true {
            Some("bots")
        } else if [1, 3, 5].contains(&doc["namespace"].as_i64().unwrap_or(-1)) {
            Some("talk")
        } else {
            None
        };
        assert_eq!(verdict.as_deref(), expected, "{}", doc["meta"]["id"]);
    }
}

#[test]
fn conditions_on_edge_cases() {
    let rule = |when: Value| {
        json!({"drop_canary": false, "rules": [{"name": "r", "path": "x.y", "when": when, "action": "drop"}]})
            .to_string()
    };
    let docs = [
        json!({"x": {"y": 5}}),
        json!({"x": {"y": 5.0}}),
        json!({"x": {"y": "5"}}),
        json!({"x": {"y": null}}),
        json!({"x": {}}),
        json!({"x": []}),
        json!({}),
    ];
    let dropped = |when: Value| -> Vec<bool> {
        verdicts(&rule(when), &docs)
            .iter()
            .map(Option::is_some)
            .collect()
    };
    assert_eq!(
        dropped(json!({"op": "equals", "value": 5})),
        [true, true, false, false, false, false, false]
    );
    assert_eq!(
        dropped(json!({"op": "in", "values": ["5", null]})),
        [false, false, true, true, false, false, false]
    );
    assert_eq!(
        dropped(json!({"op": "not_in", "values": [5]})),
        [false, false, true, true, true, true, true]
    );
    assert_eq!(
        dropped(json!({"op": "exists"})),
        [true, true, true, false, false, false, false]
    );
    assert_eq!(
        dropped(json!({"op": "missing"})),
        [false, false, false, true, true, true, true]
    );
    assert_eq!(
        dropped(json!({"op": "gt", "value": 4.5})),
        [true, true, false, false, false, false, false]
    );
    assert_eq!(
        dropped(json!({"op": "lte", "value": 5})),
        [true, true, false, false, false, false, false]
    );
    assert_eq!(
        dropped(json!({"op": "regex", "pattern": "^\\d$"})),
        [false, false, true, false, false, false, false]
    );
}

#[test]
fn allow_lists_drop_what_they_do_not_list() {
    let config = r#"{"rules": [{"name": "types", "path": "type", "when": {"op": "in", "values": ["edit"]}, "action": "allow"}]}"#;
    let docs = [json!({"type": "edit"}), json!({"type": "log"}), json!({})];
    assert_eq!(
        verdicts(config, &docs),
        [None, Some("types".into()), Some("types".into())]
    );
}

#[test]
fn bad_configs_name_the_problem() {
    let err = |config: &str| Filter::init(config).err().unwrap();
    assert!(err(r#"{"drop_canaries": true}"#).contains("unknown field `drop_canaries`"));
    let e = err(
        r#"{"rules": [{"name": "r", "path": "a", "when": {"op": "regex", "pattern": "("}, "action": "drop"}]}"#,
    );
    assert!(e.contains("rules[0]") && e.contains("bad regex"), "{e}");
    let e = err(
        r#"{"rules": [{"name": "r", "path": "a..b", "when": {"op": "exists"}, "action": "drop"}]}"#,
    );
    assert!(e.contains("not a dotted JSON path"), "{e}");
    let e =
        err(r#"{"rules": [{"name": "r", "path": "a", "when": {"op": "like"}, "action": "drop"}]}"#);
    assert!(e.contains("unknown variant `like`"), "{e}");
    let e = err(
        r#"{"rules": [{"name": "r", "path": "a", "when": {"op": "exists"}, "action": "keep"}]}"#,
    );
    assert!(e.contains("unknown variant `keep`"), "{e}");
}

fn example() -> Config {
    weir_plugin_filter::example_config()
}

#[test]
fn example_config_file_is_generated_from_the_code() {
    weir_sdk::testing::check_generated(
        concat!(env!("CARGO_MANIFEST_DIR"), "/example-config.json"),
        &serde_json::to_string_pretty(&example()).unwrap(),
    );
}

#[test]
fn example_config_parses_and_default_is_documented() {
    let (_, plan) = Filter::from_config(example()).unwrap();
    assert_eq!(plan.reads, ["meta.domain", "wiki", "bot", "namespace"]);
    let default = serde_json::to_value(Config::default()).unwrap();
    assert_eq!(default, json!({"drop_canary": true, "rules": []}));
}
