//! The same contract from JavaScript (componentize-js) and Python (componentize-py): the host runs both, alone
//! and chained with a Rust plugin, and their answers match an independent computation over real events.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use weir::pipeline::chain::Chain;
use weir::runtime::{Clock, Limits, Plugin};

use crate::support::{loader, plugin_path, real_events, workspace_root};

/// Runs an example's build script once (it rebuilds only when the source changed).
fn built(example: &str, artifact: &str) -> PathBuf {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(Default::default).lock().unwrap();
    let script = workspace_root()
        .join("plugins/examples")
        .join(example)
        .join("build.sh");
    let out = Command::new(&script)
        .output()
        .expect("run the example's build script");
    assert!(
        out.status.success(),
        "{} failed (run `make setup` to install componentize-py and Node.js deps):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = workspace_root()
        .join("target/wasm32-wasip2/plugin")
        .join(artifact);
    assert!(path.exists());
    path
}

fn start(path: &Path, config: &str) -> Plugin {
    Plugin::start(
        loader().load(path).unwrap(),
        config,
        Limits::default(),
        Clock::System,
    )
    .unwrap()
}

#[test]
fn javascript_filter_matches_an_independent_count() {
    let js = built("js-drop-canary", "js_drop_canary.wasm");
    let (docs, events) = real_events();
    let mut chain = Chain::new(vec![start(&js, r#"{"types": ["edit", "new"]}"#)]).unwrap();
    let out = chain.run(events);
    let expected = docs
        .iter()
        .filter(|d| d["meta"]["domain"] != "canary" && (d["type"] == "edit" || d["type"] == "new"))
        .count();
    assert_eq!(out.kept.len(), expected);
    assert_eq!(out.dropped.len(), docs.len() - expected);
    assert!(out.quarantined.is_empty());
    assert!(
        out.kept
            .iter()
            .all(|e| e.to_json()["type"] == "edit" || e.to_json()["type"] == "new")
    );
}

#[test]
fn javascript_config_errors_reach_the_user() {
    let js = built("js-drop-canary", "js_drop_canary.wasm");
    let err = Plugin::start(
        loader().load(&js).unwrap(),
        r#"{"typez": []}"#,
        Limits::default(),
        Clock::System,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains(r#"unknown configuration key "typez""#),
        "{err}"
    );
}

#[test]
fn python_enrich_then_rust_filter_then_javascript_filter() {
    let py = built("python-wiki-project", "python_wiki_project.wasm");
    let js = built("js-drop-canary", "js_drop_canary.wasm");
    let (docs, events) = real_events();
    let mut chain = Chain::new(vec![
        start(&py, "{}"),
        start(&plugin_path("rust-drop-bots"), "{}"),
        start(&js, "{}"),
    ])
    .unwrap();
    let out = chain.run(events);
    let expected = docs
        .iter()
        .filter(|d| d["bot"] != true && d["meta"]["domain"] != "canary")
        .count();
    assert_eq!(out.kept.len(), expected);
    for event in &out.kept {
        let doc = event.to_json();
        let server = doc["server_name"].as_str().unwrap();
        let parts: Vec<&str> = server.split('.').collect();
        let project = if parts[parts.len() - 2] == "wikimedia" {
            parts[0]
        } else {
            parts[parts.len() - 2]
        };
        assert_eq!(doc["project"], project, "{server}");
        if server.ends_with(".wikipedia.org") && !server.starts_with("test") {
            assert_eq!(doc["language"], parts[0], "{server}");
        }
    }
    assert_eq!(
        chain.stages()[0].plugin().stats().counters.get("enriched"),
        Some(&(docs.len() as u64))
    );
}
