use serde_json::{Value as Json, json};
use weir_plugin_quality::{Config, Quality};
use weir_sdk::testing::{batch, recentchange, reset_host, run};
use weir_sdk::time::parse_rfc3339_ms;
use weir_sdk::{Plugin, Verdict, clock, metrics};

const NOW: i64 = 1_740_000_000_000; // 2025-02-19T21:20:00Z

/// Failed checks per event; empty when kept.
fn failures(config: &str, docs: &[Json]) -> Vec<Vec<String>> {
    clock::set_now_ms(Some(NOW));
    let (_, outcomes) = run::<Quality>(config, docs).unwrap();
    outcomes
        .into_iter()
        .map(|o| match o.verdict {
            Verdict::Keep => vec![],
            Verdict::Quarantine(q) => {
                assert_eq!(q.reason, "quality_failed");
                q.failed_checks
            }
            Verdict::Drop(r) => panic!("quality never drops: {r}"),
        })
        .collect()
}

fn event(extra: Json) -> Json {
    let mut doc = json!({
        "meta": {"id": "e1", "dt": "2025-02-19T21:19:00Z", "domain": "en.wikipedia.org"},
        "type": "edit", "namespace": 0, "id": 5, "revision": {"new": 10, "old": 9}
    });
    merge(&mut doc, extra);
    doc
}

fn merge(doc: &mut Json, patch: Json) {
    match (doc, patch) {
        (Json::Object(d), Json::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    d.remove(&k);
                } else {
                    merge(d.entry(k).or_insert(Json::Null), v);
                }
            }
        }
        (d, p) => *d = p,
    }
}

#[test]
fn real_events_pass_the_default_gates_at_their_own_time() {
    let (mut quality, plan) = Quality::init("{}").unwrap();
    for doc in recentchange() {
        let t = parse_rfc3339_ms(doc["meta"]["dt"].as_str().unwrap()).unwrap();
        clock::set_now_ms(Some(t + 30_000));
        let events = batch(std::slice::from_ref(&doc), &plan);
        let outcome = quality.process(&events.event(0));
        assert!(
            matches!(outcome.verdict, Verdict::Keep),
            "{}: {:?}",
            doc["meta"]["id"],
            outcome.verdict
        );
    }
}

#[test]
fn each_gate_names_itself_and_every_failure_is_listed() {
    let docs = [
        event(json!({})),
        event(json!({"meta": {"id": null}})),
        event(json!({"type": "bogus"})),
        event(json!({"revision": null})),
        event(json!({"revision": {"new": 0}, "id": -3})),
        event(json!({"namespace": "0"})),
        event(json!({"meta": {"dt": "2025-02-10T19:00:00Z"}})),
        event(json!({"meta": {"dt": "2031-01-01T00:00:00Z"}})),
        event(json!({"meta": {"dt": "yesterday"}})),
        event(json!({"type": "log", "revision": null, "log_params": []})),
        event(json!({"type": "log", "revision": null, "log_params": {"target": "x"}})),
        event(json!({"type": null, "meta": {"id": null}})),
        // JSON Schema's integers: numbers without a fraction, whatever their notation.
        event(json!({"namespace": 4.0})),
        event(json!({"namespace": -0.0})),
        event(json!({"namespace": 4.5})),
    ];
    let got = failures("{}", &docs);
    let expect: [&[&str]; 15] = [
        &[],
        &["event_id_present"],
        &["type_valid"],
        &["edit_has_revision"],
        &["rc_id_positive", "revision_new_positive"],
        &["namespace_is_integer"],
        &["timestamp_fresh"],
        &["timestamp_not_future"],
        &["timestamp_fresh", "timestamp_not_future"],
        &[],
        &[],
        &["event_id_present", "event_data_present"],
        &[],
        &[],
        &["namespace_is_integer"],
    ];
    for (i, (got, want)) in got.iter().zip(expect).enumerate() {
        assert_eq!(got, want, "event {i}");
    }
}

#[test]
fn warnings_keep_the_event_and_count() {
    reset_host();
    let config = json!({"checks": [
        {"name": "short_title", "path": "title", "severity": "warn", "rule": {"kind": "max_length", "max": 5}},
        {"name": "wiki_code", "path": "wiki", "rule": {"kind": "regex", "pattern": "^[a-z_]+wiki$"}},
        {"name": "len", "path": "length.new", "rule": {"kind": "range", "max": 100}},
        {"name": "title_type", "path": "title", "rule": {"kind": "type", "type": "string"}},
        {"name": "params", "path": "log_params", "severity": "warn", "rule": {"kind": "type", "type": "object"}}
    ]})
    .to_string();
    let docs = [
        json!({"title": "Café au lait", "wiki": "frwiki", "length": {"new": 100}}),
        json!({"title": "ok", "wiki": "Frwiki"}),
        json!({"title": 5, "length": {"new": 100.5}, "log_params": []}),
    ];
    assert_eq!(
        failures(&config, &docs),
        [
            vec![],
            vec!["wiki_code".to_string()],
            vec!["len".into(), "title_type".into(), "params".into()]
        ]
    );
    assert_eq!(metrics::counter_value("warn.short_title"), 1);
}

#[test]
fn pass_rate_and_alert_level_per_batch() {
    let mut docs: Vec<Json> = (0..9).map(|_| event(json!({}))).collect();
    docs.push(event(json!({"type": "bogus"})));
    failures("{}", &docs);
    assert_eq!(metrics::gauge_value("pass_rate"), Some(0.9));
    assert_eq!(metrics::gauge_value("alert_level"), Some(1.0));
    docs.extend((0..5).map(|_| event(json!({"type": "bogus"}))));
    failures("{}", &docs);
    assert_eq!(metrics::gauge_value("alert_level"), Some(2.0));
    failures("{}", &docs[..9]);
    assert_eq!(metrics::gauge_value("alert_level"), Some(0.0));
}

#[test]
fn bad_configs_name_the_problem() {
    let err = |c: Json| Quality::init(&c.to_string()).err().unwrap();
    let one = |rule: Json| json!({"checks": [{"name": "c", "path": "a", "rule": rule}]});
    assert!(err(json!({"check": []})).contains("unknown field `check`"));
    assert!(err(json!({"checks": []})).contains("`checks` is empty"));
    assert!(err(one(json!({"kind": "range"}))).contains("checks[0] (\"c\"): a range needs"));
    assert!(err(one(json!({"kind": "regex", "pattern": "["}))).contains("bad regex"));
    assert!(err(one(json!({"kind": "type", "type": "date"}))).contains("unknown variant `date`"));
    assert!(err(one(json!({"kind": "unique"}))).contains("unknown variant `unique`"));
    assert!(err(json!({"checks": [{"name": "c", "path": "a", "rule": {"kind": "not_null"}, "severity": "fatal"}]}))
        .contains("unknown variant `fatal`"));
    assert!(err(json!({"warning_below": 95})).contains("between 0 and 1"));
}

#[test]
fn example_config_file_is_generated_from_the_code() {
    weir_sdk::testing::check_generated(
        concat!(env!("CARGO_MANIFEST_DIR"), "/example-config.json"),
        &serde_json::to_string_pretty(&Config::default()).unwrap(),
    );
}
