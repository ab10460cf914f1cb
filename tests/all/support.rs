//! Shared helpers: building the Wasm plugins and the `weir` binary once per test run, making events, and
//! asking the HTTP API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use weir::runtime::columns::{ColumnBuilder, StringsBuilder};
use weir::runtime::types::{Batch, ValueRef};
use weir::runtime::{Clock, Limits, LoadedPlugin, Loader, Plugin};

/// Runs `weir` with `args`, which must succeed; its output.
pub fn cli(args: &[&str]) -> String {
    let out = Command::new(weir_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "weir {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo(args: &[&str]) {
    let mut command = Command::new(env!("CARGO"));
    // Cargo gives the test process the variables of the package under test (`CARGO_PKG_NAME`,
    // `CARGO_MANIFEST_DIR`, ...). Some build scripts (ring's) rerun when those change, so passing them on
    // would rebuild half the dependency tree for every test run.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || matches!(
                key.as_ref(),
                "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            command.env_remove(key.as_ref());
        }
    }
    let status = command
        .args(args)
        .current_dir(workspace_root())
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo {args:?} failed");
}

/// Builds every Wasm plugin of the workspace (the `cargo plugins` alias) once, and returns the path of one.
pub fn plugin_path(crate_name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| cargo(&["plugins"]));
    built(&target_dir(), crate_name)
}

/// A hot-swap fixture (`tests/swap-plugins/`), built on its own (see the `swap-plugins` alias).
pub fn swap_plugin_path(crate_name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| cargo(&["swap-plugins"]));
    built(&workspace_root().join("target/swap-plugins"), crate_name)
}

/// Where the `plugin` profile puts a crate's component under `target`.
fn built(target: &std::path::Path, crate_name: &str) -> PathBuf {
    let path = target
        .join("wasm32-wasip2/plugin")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The `weir` binary, built with the profile the tests run under.
pub fn weir_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let release = !cfg!(debug_assertions);
            let mut args = vec!["build", "-p", "weir", "--bin", "weir"];
            if release {
                args.push("--release");
            }
            cargo(&args);
            target_dir()
                .join(if release { "release" } else { "debug" })
                .join("weir")
        })
        .clone()
}

/// A loader with a private, per-process cache directory.
pub fn loader() -> Loader {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    Loader::new(Some(dir.path().to_path_buf()))
}

pub fn load(crate_name: &str) -> Arc<LoadedPlugin> {
    loader().load(&plugin_path(crate_name)).unwrap()
}

pub fn start(crate_name: &str) -> Plugin {
    start_with(crate_name, Limits::default())
}

pub fn start_with(crate_name: &str, limits: Limits) -> Plugin {
    Plugin::start(
        load(crate_name),
        "{}",
        limits,
        Clock::Fixed(1_700_000_000_000),
    )
    .unwrap()
}

/// A batch for plugins that read `["action"]`: each event carries the given action text.
pub fn action_events(actions: &[&str]) -> Batch {
    let mut ids = StringsBuilder::with_capacity(actions.len(), 0);
    let mut column = ColumnBuilder::with_capacity(actions.len());
    for (i, action) in actions.iter().enumerate() {
        ids.push(&format!("ev-{i}"));
        column.push(Some(ValueRef::Text(action)));
    }
    Batch {
        ids: ids.finish(),
        times: (0..actions.len() as i64)
            .map(|i| 1_700_000_000_000 + i)
            .collect(),
        fields: vec![column.finish()],
        payloads: StringsBuilder::empty(),
        attributes: Vec::new(),
    }
}

pub fn fixture(path: &str) -> PathBuf {
    let path = workspace_root().join("../shared/fixtures").join(path);
    assert!(
        path.exists(),
        "fixture {} is missing: ../shared must sit beside the checkout",
        path.display()
    );
    path
}

/// The real Wikimedia events of the fixtures, as JSON and as host events.
pub fn real_events() -> (Vec<serde_json::Value>, Vec<weir::event::Event>) {
    let text =
        std::fs::read_to_string(fixture("wikimedia/events/recentchange.verbatim.ndjson")).unwrap();
    let parser = weir::event::EventShape::default().parser();
    let docs = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events = text
        .lines()
        .map(|l| parser.parse(l.to_string(), 0).unwrap())
        .collect();
    (docs, events)
}

/// Logs to the test output when `WEIR_LOG` is set (`WEIR_LOG=debug cargo test ...`).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("WEIR_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// (status, body) of a request with curl (`method`, optional bearer token, optional body file); status 0
/// when there is no answer within two minutes (a hung API fails its test rather than stall the run).
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args([
        "-s",
        "--max-time",
        "120",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        url,
    ]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if let Some(body) = body {
        command.args(["--data-binary", body]);
    }
    let out = command.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of the pipeline's `name` behind `api` (the first series of it), if the API answers with it.
pub fn metric(api: &str, name: &str) -> Option<f64> {
    let (_, metrics) = http("GET", &format!("{api}/metrics"), None, None);
    let series = format!("{name}{{");
    metrics
        .lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Asserts that the API at `api` reports no message skipped as a redelivery: none came again.
pub fn assert_none_redelivered(api: &str) {
    let (_, metrics) = http("GET", &format!("{api}/metrics"), None, None);
    let redelivered: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("weir_redeliveries_skipped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(redelivered, 0.0, "messages came again:\n{metrics}");
}

/// Asserts that the API at `api` reports `metric` (a counter) above zero.
pub fn assert_counted(api: &str, metric: &str) {
    let (_, metrics) = http("GET", &format!("{api}/metrics"), None, None);
    let prefix = format!("{metric}{{");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&prefix) && !l.ends_with(" 0")),
        "{metric} counted nothing:\n{metrics}"
    );
}

/// The JSON body of a `GET` that must answer 200.
pub fn get_json(api: &str, path: &str) -> Value {
    let (code, body) = http("GET", &format!("{api}{path}"), None, None);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}
