//! The `weir plugin` commands, run as a user would.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{fixture, plugin_path, weir_bin, workspace_root};

fn weir(args: &[&str]) -> Output {
    let cache = tempfile::tempdir().unwrap();
    Command::new(weir_bin())
        .args(args)
        .env("WEIR_CACHE_DIR", cache.path())
        .output()
        .expect("run weir")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_prints_the_manifest_and_rejects_bad_imports() {
    let ok = weir(&[
        "plugin",
        "check",
        plugin_path("rust-drop-bots").to_str().unwrap(),
        "--json",
    ]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let report: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["manifest"]["name"], "drop-bots");
    assert_eq!(report["manifest"]["kind"], "filter");
    assert_eq!(
        report["plan"]["reads"],
        serde_json::json!(["meta.domain", "bot"])
    );
    assert_eq!(report["limits"]["call_timeout_ms"], 100);

    let bad = weir(&[
        "plugin",
        "check",
        plugin_path("bad-wrong-import").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("imports `test:evil/net`"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn run_accounts_for_every_real_event() {
    let input = fixture("wikimedia/events/recentchange.verbatim.ndjson");
    let out = weir(&[
        "plugin",
        "run",
        plugin_path("rust-drop-bots").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: Value =
        serde_json::from_str(&text(&out.stderr)[text(&out.stderr).find("{\n").unwrap()..]).unwrap();
    let kept: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // Independent count over the fixture: bots and canaries are dropped.
    let events: Vec<Value> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected_kept = events
        .iter()
        .filter(|e| e["bot"] != true && e["meta"]["domain"] != "canary")
        .count();
    assert_eq!(summary["in"], events.len());
    assert_eq!(summary["kept"], expected_kept);
    assert_eq!(kept.len(), expected_kept);
    assert_eq!(summary["dropped"], events.len() - expected_kept);
    assert!(kept.iter().all(|e| e["bot"] != true));
}

#[test]
fn run_quarantines_bad_input_and_poison_events_without_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ndjson");
    let mut data = Vec::new();
    data.extend_from_slice(
        b"{\"action\":\"ok\",\"meta\":{\"id\":\"a\",\"dt\":\"2025-01-01T00:00:00Z\"}}\n",
    );
    data.extend_from_slice(b"{not json\n");
    data.extend_from_slice(b"{\"action\":\"\xff\xfe\"}\n");
    data.extend_from_slice(
        b"{\"action\":\"boom\",\"meta\":{\"id\":\"b\",\"dt\":\"2025-01-01T00:00:01Z\"}}\r\n",
    );
    data.extend_from_slice(b"\n[1,2]\n");
    data.extend_from_slice(
        b"{\"action\":\"ok\",\"meta\":{\"id\":\"c\",\"dt\":\"2025-01-01T00:00:02Z\"}}",
    );
    std::fs::write(&input, data).unwrap();
    let quarantine = dir.path().join("q.ndjson");
    let summary = dir.path().join("summary.json");
    let out = weir(&[
        "plugin",
        "run",
        plugin_path("bad-panic").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--quarantine",
        quarantine.to_str().unwrap(),
        "--summary",
        summary.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    assert_eq!(summary["in"], 6);
    assert_eq!(summary["kept"], 2);
    assert_eq!(summary["quarantined"], 4);
    let reasons = &summary["quarantined_by_reason"];
    assert_eq!(reasons["invalid_json"], 1);
    assert_eq!(reasons["invalid_utf8"], 1);
    assert_eq!(reasons["not_an_object"], 1);
    assert_eq!(reasons["plugin_trap"], 1);

    let records: Vec<Value> = std::fs::read_to_string(quarantine)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let trap = records
        .iter()
        .find(|r| r["reason"] == "plugin_trap")
        .unwrap();
    assert_eq!(trap["id"], "b");
    assert_eq!(trap["line"], 4);
    assert_eq!(trap["plugin"], "panic@0.1.0");
    let json_err = records
        .iter()
        .find(|r| r["reason"] == "invalid_json")
        .unwrap();
    assert_eq!(json_err["line"], 2);
    assert!(
        json_err["failed_checks"][0]
            .as_str()
            .unwrap()
            .contains("line 1 column 2"),
        "{json_err}"
    );
}

#[test]
fn run_chains_plugins_and_writes_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.ndjson");
    let input = fixture("wikimedia/events/recentchange.verbatim.ndjson");
    let out = weir(&[
        "plugin",
        "run",
        plugin_path("rust-drop-bots").to_str().unwrap(),
        plugin_path("bad-stateful").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--rows",
        rows.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<Value> = std::fs::read_to_string(rows)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The final watermark closes everything: the stateful plugin counted exactly the events drop-bots kept.
    let last = rows.last().unwrap();
    assert_eq!(last["table"], "counts");
    assert_eq!(last["plugin"], "stateful@0.1.0");
    let summary = text(&out.stderr);
    let summary: Value = serde_json::from_str(&summary[summary.find("{\n").unwrap()..]).unwrap();
    assert_eq!(last["row"]["count"], summary["kept"]);
}

#[test]
fn bad_arguments_get_clear_errors() {
    let out = weir(&[
        "plugin",
        "run",
        plugin_path("rust-drop-bots").to_str().unwrap(),
        "--config",
        "{nope",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("plugin config is not valid JSON"),
        "{}",
        text(&out.stderr)
    );
    let out = weir(&["plugin", "check", "/nonexistent.wasm"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot read plugin /nonexistent.wasm"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn new_creates_a_plugin_that_tests_builds_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(&[
        "plugin",
        "new",
        "my-filter",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let project = dir.path().join("my-filter");
    // Share the workspace's target directory so the SDK and its dependencies are not built again.
    let target = workspace_root().join("target");
    let cargo = |args: &[&str]| {
        let status = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .unwrap();
        assert!(status.success(), "cargo {args:?} in the new project failed");
    };
    cargo(&["test", "--quiet"]);
    cargo(&["build", "--release", "--target", "wasm32-wasip2", "--quiet"]);
    let wasm = target.join("wasm32-wasip2/release/my_filter.wasm");
    let out = weir(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--config",
        r#"{"drop_namespaces": [2]}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = weir(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--config",
        r#"{"drop_namespace": [2]}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown field `drop_namespace`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_standard_chain_runs_under_plugin_run() {
    let root = workspace_root();
    let gold = format!(
        "@{}",
        root.join("plugins/aggregate/configs/gold_wiki.json")
            .display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (rows, summary) = (
        dir.path().join("rows.ndjson"),
        dir.path().join("summary.json"),
    );
    let input = fixture("wikimedia/events/recentchange.verbatim.ndjson");
    let p = |name: &str| plugin_path(name).display().to_string();
    let out = weir(&[
        "plugin",
        "run",
        &p("weir-plugin-filter"),
        &p("weir-plugin-enrich"),
        &p("weir-plugin-dedupe"),
        &p("weir-plugin-quality"),
        &p("weir-plugin-aggregate"),
        "--config",
        "{}",
        "--config",
        "{}",
        "--config",
        "{}",
        // The recorded events are years old: judge freshness against a clock pinned to their time.
        "--config",
        r#"{"checks": [{"name": "id", "path": "meta.id", "rule": {"kind": "not_null"}}]}"#,
        "--config",
        &gold,
        "--input",
        input.to_str().unwrap(),
        "--rows",
        rows.to_str().unwrap(),
        "--summary",
        summary.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    assert_eq!(summary["in"], 34);
    assert_eq!(
        summary["kept"].as_u64().unwrap()
            + summary["dropped"].as_u64().unwrap()
            + summary["quarantined"].as_u64().unwrap(),
        34
    );
    let rows: Vec<Value> = std::fs::read_to_string(rows)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: i64 = rows
        .iter()
        .map(|r| r["row"]["events"].as_i64().unwrap())
        .sum();
    assert_eq!(
        events as u64,
        summary["kept"].as_u64().unwrap(),
        "every kept event is counted in gold_wiki once"
    );
}

/// `weir config check` passes the shipped pipeline, and names the file and line of what is wrong: a value
/// out of range, and a plugin whose imports the host does not provide.
#[test]
fn config_check_names_the_line_of_what_is_wrong() {
    let plugins = plugin_path("weir-plugin-enrich");
    let plugin_dir = plugins.parent().unwrap().to_str().unwrap().to_string();
    let check = |file: &std::path::Path| {
        let cache = tempfile::tempdir().unwrap();
        Command::new(weir_bin())
            .args(["config", "check"])
            .arg(file)
            .env("WEIR_CACHE_DIR", cache.path())
            .env("WEIR_PLUGIN_DIR", &plugin_dir)
            .output()
            .expect("run weir")
    };
    let shipped = workspace_root().join("deploy/pipelines/wikimedia.toml");
    let ok = check(&shipped);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains(": ok (8 stages"),
        "{}",
        text(&ok.stdout)
    );

    let original = std::fs::read_to_string(&shipped).unwrap();
    // Beside the shipped file, so that its relative paths (aggregate configs) hold.
    let dir = shipped.parent().unwrap();
    let line_of =
        |text: &str, start: &str| text.lines().position(|l| l.starts_with(start)).unwrap() + 1;
    let bad = tempfile::Builder::new()
        .prefix("check-")
        .suffix(".toml")
        .tempfile_in(dir)
        .unwrap();
    let batch = original.replace("batch = 256 ", "batch = 0   ");
    std::fs::write(bad.path(), &batch).unwrap();
    let out = check(bad.path());
    let expected = format!(
        "{}:{}: consumer.batch must be 1 to 65536",
        bad.path().display(),
        line_of(&batch, "batch = 0")
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );

    let wrong = plugin_path("bad-wrong-import");
    let wrong_name = wrong.file_name().unwrap().to_str().unwrap();
    let imports = original.replace(
        "plugin = \"weir_plugin_enrich.wasm\"",
        &format!("plugin = \"{wrong_name}\""),
    );
    std::fs::write(bad.path(), &imports).unwrap();
    let out = check(bad.path());
    let expected = format!(
        "{}:{}: stage enrich",
        bad.path().display(),
        line_of(&imports, &format!("plugin = \"{wrong_name}\""))
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );

    // Two aggregates writing one gold table (a copied config that kept its `table`).
    let twice = original.replace("configs/gold_user.json", "configs/gold_wiki.json");
    assert_ne!(twice, original);
    std::fs::write(bad.path(), &twice).unwrap();
    let out = check(bad.path());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("{}:", bad.path().display()))
            && text(&out.stderr)
                .contains("stage gold_wiki: emits rows into gold_wiki, as stage gold_user does"),
        "{}",
        text(&out.stderr)
    );
}
