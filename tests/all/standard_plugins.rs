//! The standard plugins as components: each runs under the host over real events and answers exactly as its
//! native build does (the native builds have their own unit tests in plugins/*/tests).

use weir::pipeline::chain::Chain;
use weir::runtime::{Clock, Limits, Plugin};

use crate::support::{load, real_events};

fn start(crate_name: &str, config: &str) -> Plugin {
    Plugin::start(
        load(crate_name),
        config,
        Limits::default(),
        Clock::Fixed(1_800_000_000_000),
    )
    .unwrap()
}

#[test]
fn filter_enrich_dedupe_chain_over_real_events() {
    let filter = r#"{"rules": [{"name": "bots", "path": "bot", "when": {"op": "equals", "value": true}, "action": "drop"}]}"#;
    let mut chain = Chain::new(vec![
        start("weir-plugin-filter", filter),
        start("weir-plugin-enrich", "{}"),
        start("weir-plugin-dedupe", "{}"),
    ])
    .unwrap();
    let (docs, events) = real_events();
    let humans = docs.iter().filter(|d| d["bot"] != true).count();

    let first = chain.run(events.clone());
    assert_eq!(first.kept.len(), humans);
    assert!(first.quarantined.is_empty());
    for event in &first.kept {
        let doc = &event.to_json();
        assert_eq!(doc["is_bot"], false);
        assert_eq!(
            doc["processing_lag_ms"],
            1_800_000_000_000i64 - event.time_ms,
            "{}",
            event.id
        );
        // A page creation has no old length: all its bytes are added.
        let bytes = doc["length"]["new"]
            .as_i64()
            .map(|n| n - doc["length"]["old"].as_i64().unwrap_or(0));
        assert_eq!(doc["bytes_changed"], serde_json::json!(bytes));
    }

    // The same events again (a reconnect replay): dedupe drops every one, counted.
    let replay = chain.run(events);
    assert!(replay.kept.is_empty());
    let duplicates = replay
        .dropped
        .iter()
        .filter(|d| d.rule == "duplicate")
        .count();
    assert_eq!(duplicates, humans);
    assert_eq!(
        chain.stages()[2]
            .plugin()
            .stats()
            .counters
            .get("duplicates"),
        Some(&(humans as u64))
    );
}

#[test]
fn bad_configs_are_refused_at_start_with_the_plugins_message() {
    let err = Plugin::start(
        load("weir-plugin-dedupe"),
        r#"{"ttl": 1}"#,
        Limits::default(),
        Clock::System,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("plugin dedupe rejected its configuration")
            && err.contains("unknown field `ttl`"),
        "{err}"
    );
}

#[test]
fn quality_quarantines_stale_events_with_every_failed_check() {
    // The clock is pinned years after the recorded events: the freshness gate fails for each, nothing else.
    let mut chain = Chain::new(vec![start("weir-plugin-quality", "{}")]).unwrap();
    let (docs, events) = real_events();
    let out = chain.run(events);
    assert_eq!(out.quarantined.len(), docs.len());
    for q in &out.quarantined {
        assert_eq!(q.reason, "quality_failed");
        assert_eq!(q.failed_checks, ["timestamp_fresh"], "{}", q.event.id);
        assert_eq!(q.plugin, "quality@0.1.1");
    }
    let stats = chain.stages()[0].plugin().stats();
    assert_eq!(stats.gauges.get("pass_rate"), Some(&0.0));
    assert_eq!(stats.gauges.get("alert_level"), Some(&2.0));
}

#[test]
fn gold_wiki_aggregate_after_enrich_counts_every_event_once() {
    let config = std::fs::read_to_string(
        crate::support::workspace_root().join("plugins/aggregate/configs/gold_wiki.json"),
    )
    .unwrap();
    let mut chain = Chain::new(vec![
        start("weir-plugin-enrich", "{}"),
        start("weir-plugin-aggregate", &config),
    ])
    .unwrap();
    let (docs, events) = real_events();
    let out = chain.run(events);
    assert_eq!(out.kept.len(), docs.len());
    let (rows, failures) = chain.on_watermark(i64::MAX);
    assert!(failures.is_empty());
    let total = |column: &str| -> i64 {
        rows.iter()
            .map(|r| {
                match r
                    .row
                    .columns
                    .iter()
                    .find(|(c, _)| c == column)
                    .map(|(_, v)| v)
                {
                    Some(weir::runtime::types::Value::Integer(n)) => *n,
                    other => panic!("{column}: {other:?}"),
                }
            })
            .sum()
    };
    assert_eq!(total("events"), docs.len() as i64);
    assert_eq!(
        total("bot_events"),
        docs.iter().filter(|d| d["bot"] == true).count() as i64
    );
    assert_eq!(
        total("edits"),
        docs.iter().filter(|d| d["type"] == "edit").count() as i64
    );
    // Lineage: every row names the aggregate's version (plugins/aggregate/Cargo.toml).
    assert!(
        rows.iter()
            .all(|r| r.plugin == "aggregate@0.2.4" && r.row.table == "gold_wiki"),
        "rows from {:?}",
        rows.iter()
            .map(|r| &r.plugin)
            .collect::<std::collections::BTreeSet<_>>()
    );
}
