use serde_json::{Value as Json, json};
use weir_plugin_enrich::{Config, Enrich, split_server_name};
use weir_sdk::testing::{recentchange, run};
use weir_sdk::{Plugin, Verdict, clock};

const NOW: i64 = 1_800_000_000_000;

/// Runs the plugin and returns, per event, the written fields as a JSON object.
fn enrich(config: &str, docs: &[Json]) -> Vec<serde_json::Map<String, Json>> {
    clock::set_now_ms(Some(NOW));
    let (_, plan) = Enrich::init(config).unwrap();
    let (_, outcomes) = run::<Enrich>(config, docs).unwrap();
    outcomes
        .into_iter()
        .map(|o| {
            assert!(matches!(o.verdict, Verdict::Keep));
            o.writes
                .into_iter()
                .map(|w| (plan.writes[w.field as usize].clone(), Json::from(&w.value)))
                .collect()
        })
        .collect()
}

#[test]
fn real_events_match_an_independent_computation() {
    let docs = recentchange();
    for (doc, out) in docs.iter().zip(enrich("{}", &docs)) {
        let id = &doc["meta"]["id"];
        assert_eq!(out["is_bot"], doc["bot"], "{id}");
        let user = doc["user"].as_str();
        let looks_ip = user.map(|u| {
            u.split('.').count() == 4 && u.split('.').all(|p| p.parse::<u8>().is_ok())
                || u.contains(':')
                || u.starts_with('~')
        });
        assert_eq!(out["is_anonymous"], json!(looks_ip), "{id} {user:?}");
        let bytes = doc["length"]["new"]
            .as_i64()
            .map(|n| n - doc["length"]["old"].as_i64().unwrap_or(0));
        assert_eq!(out["bytes_changed"], json!(bytes), "{id}");
        let ns = doc["namespace"].as_i64();
        assert_eq!(
            out["is_talk_namespace"],
            json!(ns.map(|n| n % 2 == 1 && n > 0)),
            "{id}"
        );
        let t = out["event_time_ms"]
            .as_i64()
            .expect("every fixture event has meta.dt");
        assert_eq!(out["processing_lag_ms"], json!(NOW - t));
        // The fixture's own record of the time: the manifest has meta.dt as text; check the round trip.
        let dt = doc["meta"]["dt"].as_str().unwrap();
        assert_eq!(&chrono_like(t)[..19], &dt[..19], "{id}");
        let server = doc["server_name"].as_str().unwrap();
        assert_eq!(out["project"].as_str(), split_server_name(server).0);
    }
}

/// Formats ms as `YYYY-MM-DDTHH:MM:SS` independently of the plugin's parser (civil-from-days).
fn chrono_like(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn missing_fields_give_null_not_errors() {
    let out = enrich("{}", &[json!({"meta": {"domain": "x"}})]);
    for field in [
        "is_bot",
        "is_anonymous",
        "bytes_changed",
        "event_time_ms",
        "processing_lag_ms",
        "project",
        "language",
        "is_talk_namespace",
    ] {
        assert_eq!(out[0][field], Json::Null, "{field}");
    }
}

#[test]
fn edge_cases() {
    let docs = [
        json!({"user": "2001:db8:85a3::8a2e:370:7334", "meta": {"dt": "2025-03-01T12:00:00.123Z"}}),
        json!({"user": "192.0.2.14", "meta": {"dt": "2020-07-31T00:00:00Z"}, "type": "log", "log_params": []}),
        json!({"user": "~2025-31337-42", "meta": {"dt": "not a time"}, "log_params": {"target": "x"}}),
        json!({"user": "Alice", "length": {"new": 10}, "namespace": 3}),
        json!({"length": {"new": 10, "old": 25}, "namespace": -1, "server_name": "en.m.wikipedia.org"}),
        json!({"server_name": "www.wikidata.org", "namespace": 0}),
        json!({"server_name": "commons.wikimedia.org", "bot": true}),
    ];
    let out = enrich("{}", &docs);
    let col = |f: &str| out.iter().map(|o| o[f].clone()).collect::<Vec<_>>();
    assert_eq!(
        col("is_anonymous"),
        [
            json!(true),
            json!(true),
            // A temporary account (wikis without IP edits, from 2025).
            json!(true),
            json!(false),
            Json::Null,
            Json::Null,
            Json::Null
        ]
    );
    assert_eq!(
        col("event_time_ms")[..3],
        [
            json!(1_740_830_400_123i64),
            json!(1_596_153_600_000i64),
            Json::Null
        ]
    );
    // A page creation: no old length, all its bytes added.
    assert_eq!(col("bytes_changed")[3..5], [json!(10), json!(-15)]);
    assert_eq!(
        col("is_talk_namespace")[3..6],
        [json!(true), json!(false), json!(false)]
    );
    assert_eq!(
        col("project")[4..],
        [json!("wikipedia"), json!("wikidata"), json!("commons")]
    );
    assert_eq!(col("language")[4..], [json!("en"), Json::Null, Json::Null]);
    assert_eq!(col("is_bot")[6], json!(true));
}

#[test]
fn chosen_fields_under_a_prefix() {
    let (_, plan) =
        Enrich::init(r#"{"fields": ["project", "is_bot"], "prefix": "enriched."}"#).unwrap();
    assert_eq!(plan.writes, ["enriched.project", "enriched.is_bot"]);
}

#[test]
fn bad_configs_name_the_problem() {
    let err = |c: &str| Enrich::init(c).err().unwrap();
    assert!(err(r#"{"fields": ["is_robot"]}"#).contains("unknown variant `is_robot`"));
    assert!(err(r#"{"field": []}"#).contains("unknown field `field`"));
    assert!(err(r#"{"fields": []}"#).contains("`fields` is empty"));
    assert!(err(r#"{"prefix": "a.."}"#).contains("`prefix`"));
}

#[test]
fn example_config_file_is_generated_from_the_code() {
    weir_sdk::testing::check_generated(
        concat!(env!("CARGO_MANIFEST_DIR"), "/example-config.json"),
        &serde_json::to_string_pretty(&Config::default()).unwrap(),
    );
}

#[test]
fn server_names_split_into_project_and_language() {
    let cases = [
        ("en.wikipedia.org", (Some("wikipedia"), Some("en"))),
        ("en.m.wikipedia.org", (Some("wikipedia"), Some("en"))),
        ("commons.wikimedia.org", (Some("commons"), None)),
        ("www.wikidata.org", (Some("wikidata"), None)),
        ("test.wikipedia.org", (Some("wikipedia"), None)),
        ("wikipedia.org", (None, None)),
        ("en..wikipedia.org", (None, None)),
        (".wikipedia.org", (None, None)),
        ("en.wikipedia.", (None, None)),
        ("", (None, None)),
    ];
    for (server, expected) in cases {
        assert_eq!(split_server_name(server), expected, "{server}");
    }
}
