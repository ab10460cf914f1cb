//! The pipeline configuration: one TOML file declares the source, the stream and its consumer, the stages,
//! the tables, the lake and the API. It is validated strictly before anything starts: an unknown key, a
//! missing plugin or a bad column type stops the start with a message naming the file, line and field.
//!
//! `deploy/pipelines/wikimedia.toml` is the default pipeline and the reference for every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use toml::Spanned;

use crate::bus::StreamConfig;
use crate::ingest::IngestConfig;
use crate::lake::{ColumnSpec, LakeConfig};
use crate::runtime::Limits;
use crate::source::client::SseConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub pipeline: PipelineSection,
    /// Read an SSE source into the stream in the same process (leave out to consume a stream another
    /// process fills, e.g. `weir ingest` at the edge).
    pub source: Option<SseConfig>,
    /// How the source is ingested (with `[source]`).
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub nats: NatsSection,
    #[serde(default)]
    pub stream: StreamConfig,
    #[serde(default)]
    pub consumer: ConsumerSection,
    #[serde(default)]
    pub events: EventsSection,
    #[serde(default)]
    pub plugins: PluginsSection,
    #[serde(default)]
    pub stages: Vec<StageSection>,
    #[serde(default)]
    pub silver: SilverSection,
    #[serde(default)]
    pub lake: LakeConfig,
    #[serde(default)]
    pub api: ApiSection,
    /// The file this came from (for relative paths and messages).
    #[serde(skip)]
    pub file: PathBuf,
    /// Set by `weir replay`: run as a replay into a new table version (see `pipeline::replay`).
    #[serde(skip)]
    pub replay: Option<crate::pipeline::replay::Replay>,
    /// The lake URL came from the command line (see [`Config::set_lake_url`]): `WEIR_LAKE_URL` does not
    /// override it.
    #[serde(skip)]
    lake_url_given: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// The pipeline's name: in metrics, logs and the default consumer name.
    pub name: String,
    /// This host's id in the lake's commit log and file names; default: the machine's hostname.
    pub host: Option<String>,
    /// When `[source]` cannot be reached at start, serve generated events locally instead (`weir
    /// serve-sse`), so a demo works on a machine without internet access. Off by default: the generated
    /// events would land in a production lake like real ones (`weir run --offline-fallback` turns it on).
    #[serde(default)]
    pub offline_fallback: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSection {
    /// A NATS server or cluster (`nats://host:4222`). Empty: Weir starts and supervises a local
    /// nats-server with its data in `data_dir`.
    pub url: String,
    pub data_dir: PathBuf,
    /// Port of the local nats-server (0: any free port).
    pub port: u16,
}

impl Default for NatsSection {
    fn default() -> Self {
        NatsSection {
            url: String::new(),
            data_dir: PathBuf::from(".weir/nats"),
            port: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerSection {
    /// How this host reads the stream: `shared` (the default) or `exclusive`; see [`ConsumerMode`].
    pub mode: ConsumerMode,
    /// The durable consumer's name; hosts that share it share the work. Default `weir-<pipeline>`.
    pub durable: Option<String>,
    /// Events per micro-batch through the plugins.
    pub batch: usize,
    /// Messages delivered and not yet acked, at most (bounds memory; backpressure beyond it).
    pub max_ack_pending: i64,
    /// A message not acked within this is delivered again (progress acks extend it while its epoch is open
    /// and while a slow commit runs).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// The server's most deliveries of a message; the one before the last puts it in quarantine as `poison`
    /// instead of through the plugins (so at least 3).
    pub max_deliver: i64,
    /// Shared mode: a host of the pipeline that has sent no report for this long is taken for gone, and
    /// another host closes and writes the windows its plugin state held open (see `pipeline::adopt`). Long
    /// enough for a restart or a rescheduled pod to come back; `0s` never adopts. At least 30s.
    #[serde(with = "humantime_serde")]
    pub adopt_after: Duration,
}

/// How the pipeline reads its stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerMode {
    /// A durable consumer with explicit acks, one per message after its commit: any number of hosts share
    /// it and JetStream spreads the messages across them; a message that keeps failing (delivered
    /// `max_deliver - 1` times) goes to quarantine as `poison`.
    #[default]
    Shared,
    /// This host alone reads the stream, from the first sequence the lake's commit log does not hold, through
    /// an ordered consumer without acks: the commit log is the only cursor, which halves the broker's work
    /// per event. A second host on the same lake is refused at its first commit (the commit log sees two
    /// hosts' epochs over the same sequences) and stops. With no deliveries counted, a message that crashes
    /// the host is read again after each restart rather than quarantined as `poison` (plugin failures are
    /// quarantined as always). For one host per pipeline: an edge box, a single container.
    Exclusive,
}

impl Default for ConsumerSection {
    fn default() -> Self {
        ConsumerSection {
            mode: ConsumerMode::Shared,
            durable: None,
            batch: 256,
            max_ack_pending: 300_000,
            ack_wait: Duration::from_secs(120),
            max_deliver: 5,
            adopt_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    pub id_path: String,
    /// RFC 3339 text or milliseconds.
    pub time_path: String,
    pub key_path: Option<String>,
    /// The watermark trails the newest event time by this much; aggregate windows close behind it.
    #[serde(with = "humantime_serde")]
    pub watermark_delay: Duration,
    /// When no message has come for this long, the pipeline puts a tick in its stream: the tick moves the
    /// watermark on by the quiet since the last event, so a quiet stream still closes its last windows.
    /// `0s`: never (windows then wait for the next event).
    #[serde(with = "humantime_serde")]
    pub idle_close: Duration,
}

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection {
            id_path: "meta.id".into(),
            time_path: "meta.dt".into(),
            key_path: None,
            watermark_delay: Duration::from_secs(60),
            idle_close: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Where stage plugins are looked up, relative to this file. `WEIR_PLUGIN_DIR` overrides it.
    pub dir: PathBuf,
    /// New versions dropped here (`<stage>.wasm`) are deployed to that stage. Empty: not watched.
    pub watch_dir: Option<PathBuf>,
    /// After a swap, a failure rate above this (failed calls / calls over the next `watch_batches` batches)
    /// rolls the previous version back.
    pub rollback_error_rate: f64,
    pub watch_batches: u64,
    /// A new version whose self-test keeps less than this share of the sample events the serving version
    /// keeps is refused (a rule that drops everything, a check that quarantines everything), when the share
    /// is one event or more. 0: no such check.
    pub self_test_min_kept: f64,
    /// Compiled components are cached here (`off` disables it); default `~/.cache/weir`.
    pub cache_dir: Option<PathBuf>,
    /// Versions deployed while running are kept here, relative to the working directory, so that a restart
    /// comes back with them (see `pipeline::deployed`), with the versions the pipeline's other hosts
    /// deployed meanwhile (`pipeline::cluster`). Empty: a restart runs the configured versions, and follows
    /// only the deploys made while it runs.
    pub deployed_dir: PathBuf,
}

impl Default for PluginsSection {
    fn default() -> Self {
        PluginsSection {
            dir: PathBuf::from("."),
            watch_dir: None,
            rollback_error_rate: 0.05,
            watch_batches: 20,
            self_test_min_kept: 0.01,
            cache_dir: None,
            deployed_dir: PathBuf::from(".weir/deployed"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    /// The stage's name (unique): used by the API, metrics and the watched directory.
    pub name: String,
    /// The component: a `.wasm` path, relative to `plugins.dir`.
    pub plugin: Spanned<String>,
    /// The plugin's configuration, as a TOML table (passed to the plugin as JSON).
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Or a JSON file with it, relative to this file.
    pub config_file: Option<PathBuf>,
    #[serde(default)]
    pub limits: Limits,
    /// What becomes of an event the plugin fails on (a trap, a timeout, memory over the limit, output the
    /// contract forbids), once the host has narrowed the failure down to that one event.
    #[serde(default)]
    pub on_error: OnError,
}

/// What a stage does with an event its plugin failed on (`[[stages]] on_error`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Into quarantine with the failure as its reason (`plugin_trap`, `plugin_timeout`, ...): nothing is lost,
    /// and the event can be replayed once the plugin is fixed. For an aggregate, into the gold quarantine,
    /// while the event goes on to silver.
    #[default]
    Quarantine,
    /// On to the next stage as if this one had kept it unchanged: for stages the data can do without (an
    /// optional enrichment). Counted per stage (`weir_skipped_events_total`).
    Skip,
    /// Out of the pipeline, counted as dropped by the rule `on_error:<reason>`.
    Drop,
    /// Stop the pipeline: nothing of the open epoch is committed or acked, so the events come again after a
    /// restart, in shared mode as `poison` once they reach `consumer.max_deliver`. For plugins whose every
    /// failure must be looked at before anything else moves.
    Stop,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilverSection {
    /// The silver table's typed columns.
    #[serde(default)]
    pub columns: Vec<ColumnSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Where the HTTP API listens (empty: no API).
    pub listen: String,
    /// Control endpoints (deploy, rollback, pause, resume, replay) require `Authorization: Bearer <token>`
    /// when set. `WEIR_API_TOKEN` overrides it.
    pub token: Option<String>,
    /// Largest plugin upload, in bytes.
    pub max_upload_bytes: usize,
    /// Gold rows kept in memory per table, the newest, for `/api/v1/gold/{table}` to answer at once (~200
    /// bytes each); a question about windows memory lacks reads the lake for them.
    pub recent_gold_rows: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: "127.0.0.1:8080".into(),
            token: None,
            max_upload_bytes: 64 << 20,
            recent_gold_rows: crate::pipeline::shared::Recent::GOLD_ROWS,
        }
    }
}

/// A stage resolved: its component's path and its configuration as JSON text.
#[derive(Debug, Clone)]
pub struct ResolvedStage {
    pub name: String,
    pub path: PathBuf,
    pub config: String,
    pub limits: Limits,
    pub on_error: OnError,
}

impl Config {
    /// Reads and validates a pipeline file. Errors name the file, line and field.
    pub fn load(file: &Path) -> Result<Config> {
        let config = Self::load_settings(file)?;
        let text = std::fs::read_to_string(file).with_context(|| {
            format!("cannot read the pipeline configuration {}", file.display())
        })?;
        config.check_plugin_files(&text)?;
        Ok(config)
    }

    /// The configuration, checked but for its plugin files: for commands that only read the lake, which
    /// need nothing built.
    pub fn load_settings(file: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(file).with_context(|| {
            format!("cannot read the pipeline configuration {}", file.display())
        })?;
        Self::parse_settings(&text, file)
    }

    pub fn parse(text: &str, file: &Path) -> Result<Config> {
        let config = Self::parse_settings(text, file)?;
        config.check_plugin_files(text)?;
        Ok(config)
    }

    fn parse_settings(text: &str, file: &Path) -> Result<Config> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
        config.file = file.to_path_buf();
        config.validate(text)?;
        Ok(config)
    }

    fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    /// `file:line: message` for a span of the text.
    fn at(
        &self,
        text: &str,
        span: std::ops::Range<usize>,
        message: impl std::fmt::Display,
    ) -> anyhow::Error {
        let line = line_at(text, span.start);
        anyhow::anyhow!("{}:{line}: {message}", self.file.display())
    }

    /// `file:line: message`, the line being where `field` (`consumer.batch`, `stages.2.limits`) is set, or
    /// the nearest table around it that is in the file (a field left at its default is not).
    fn at_field(&self, text: &str, field: &str, message: impl std::fmt::Display) -> anyhow::Error {
        match span_of(text, field) {
            Some(span) => self.at(text, span, message),
            None => anyhow::anyhow!("{}: {message}", self.file.display()),
        }
    }

    /// [`Config::at_field`] for a check's message that starts with the field it is about (`stream.replicas
    /// must be ...`, `silver.columns[3]: ...`), as the sections' own checks write them; the field is looked
    /// for within `within` (`stages.2`), and the message is prefixed with `context`.
    fn at_named_field(
        &self,
        text: &str,
        within: &str,
        context: &str,
        message: String,
    ) -> anyhow::Error {
        let named = message
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches([':', ','])
            .replace('[', ".")
            .replace(']', "");
        let field = match within {
            "" => named,
            _ => format!("{within}.{named}"),
        };
        self.at_field(text, &field, format!("{context}{message}"))
    }

    fn validate(&self, text: &str) -> Result<()> {
        // Names that become parts of paths (the lake's staging directories) and of NATS names (consumers,
        // keys): a `/` or `.` there would split them.
        let plain = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        for (field, name) in [
            ("pipeline.name", Some(&self.pipeline.name)),
            ("pipeline.host", self.pipeline.host.as_ref()),
            ("consumer.durable", self.consumer.durable.as_ref()),
        ] {
            if let Some(name) = name
                && !plain(name)
            {
                return Err(self.at_field(
                    text,
                    field,
                    format!("{field} {name:?} must be letters, digits, `-` and `_`"),
                ));
            }
        }
        if self.ingest.name.trim().is_empty() {
            return Err(self.at_field(
                text,
                "ingest.name",
                "ingest.name must not be empty: it is the key of the source's saved position",
            ));
        }
        if let Some(source) = &self.source {
            source
                .validate()
                .map_err(|e| self.at_named_field(text, "", "", e))?;
        }
        self.stream
            .validate()
            .map_err(|e| self.at_named_field(text, "", "", e))?;
        if let Some(source) = &self.source {
            source
                .check_overlap(self.stream.duplicate_window)
                .map_err(|e| self.at_field(text, "source.resume_overlap", e))?;
        }
        if self.consumer.batch == 0 || self.consumer.batch > 65_536 {
            return Err(self.at_field(text, "consumer.batch", "consumer.batch must be 1 to 65536"));
        }
        if self.consumer.max_deliver < 3 {
            return Err(self.at_field(
                text,
                "consumer.max_deliver",
                "consumer.max_deliver must be at least 3: the delivery before the last puts the message in \
                 quarantine as poison unread, so with 2 every message would go there",
            ));
        }
        if self.consumer.ack_wait < Duration::from_secs(1) {
            return Err(self.at_field(
                text,
                "consumer.ack_wait",
                "consumer.ack_wait must be at least 1s: messages not acked within it are delivered again, \
                 and a commit or a batch waiting for the processor takes longer than that",
            ));
        }
        if self.consumer.max_ack_pending < 1 {
            return Err(self.at_field(
                text,
                "consumer.max_ack_pending",
                "consumer.max_ack_pending must be positive: it bounds the messages delivered and not yet \
                 acked",
            ));
        }
        if !self.consumer.adopt_after.is_zero()
            && self.consumer.adopt_after < crate::bus::deploys::REPORT_TTL
        {
            return Err(self.at_field(
                text,
                "consumer.adopt_after",
                "consumer.adopt_after must be at least 30s (or 0s, never): a live host's report may be \
                 that old, and a live host taken for gone has to restart",
            ));
        }
        self.check_consumer_mode()
            .map_err(|e| self.at_field(text, "consumer.durable", e))?;
        let key_path = self.events.key_path.as_deref();
        for (what, path) in [
            ("events.id_path", Some(&self.events.id_path[..])),
            ("events.time_path", Some(&self.events.time_path[..])),
            ("events.key_path", key_path),
            ("ingest.id_path", Some(&self.ingest.id_path[..])),
        ] {
            let Some(path) = path else { continue };
            crate::event::JsonPath::parse(path)
                .map_err(|e| self.at_field(text, what, format!("{what} {path:?}: {e}")))?;
        }
        for (what, share, of) in [
            (
                "plugins.rollback_error_rate",
                self.plugins.rollback_error_rate,
                "calls",
            ),
            (
                "plugins.self_test_min_kept",
                self.plugins.self_test_min_kept,
                "the events the serving version keeps",
            ),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(self.at_field(
                    text,
                    what,
                    format!("{what} {share} must be a share of {of}, 0 to 1"),
                ));
            }
        }
        let idle_close = self.events.idle_close;
        if !idle_close.is_zero() && idle_close < Duration::from_secs(1) {
            return Err(self.at_field(
                text,
                "events.idle_close",
                format!(
                    "events.idle_close {idle_close:?} would put a tick in the stream that often while it is \
                     quiet: give 1s or more, or 0s for no ticks"
                ),
            ));
        }
        crate::lake::schema::validate_columns(&self.silver.columns)
            .map_err(|e| self.at_named_field(text, "", "", e))?;
        if self.stages.is_empty() {
            bail!(
                "{}: no [[stages]]: a pipeline needs at least one plugin",
                self.file.display()
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, stage) in self.stages.iter().enumerate() {
            // A stage's name is a file name (`<stage>.wasm`), a metrics label and a key in NATS.
            if stage.name.is_empty()
                || !stage
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(self.at_field(
                    text,
                    &format!("stages.{i}.name"),
                    format!(
                        "stages[{i}].name {:?} must be letters, digits, `-` and `_`",
                        stage.name
                    ),
                ));
            }
            if !names.insert(stage.name.as_str()) {
                return Err(self.at_field(
                    text,
                    &format!("stages.{i}.name"),
                    format!("stages[{i}].name {:?} is used twice", stage.name),
                ));
            }
            if stage.config.is_some() && stage.config_file.is_some() {
                return Err(self.at_field(
                    text,
                    &format!("stages.{i}.config_file"),
                    format!(
                        "stages[{i}] ({}): give `config` or `config_file`, not both",
                        stage.name
                    ),
                ));
            }
            if let Some(config_file) = &stage.config_file
                && !self.dir().join(config_file).is_file()
            {
                return Err(self.at_field(
                    text,
                    &format!("stages.{i}.config_file"),
                    format!(
                        "stages[{i}] ({}).config_file: {} does not exist (it is relative to this file)",
                        stage.name,
                        self.dir().join(config_file).display()
                    ),
                ));
            }
            stage.limits.validate().map_err(|e| {
                self.at_named_field(
                    text,
                    &format!("stages.{i}"),
                    &format!("stages[{i}] ({}): ", stage.name),
                    e,
                )
            })?;
        }
        if self.lake.commit_events == 0 {
            return Err(self.at_field(
                text,
                "lake.commit_events",
                "lake.commit_events must be positive",
            ));
        }
        if self.lake.commit_interval.is_zero() {
            return Err(self.at_field(
                text,
                "lake.commit_interval",
                "lake.commit_interval must be positive",
            ));
        }
        self.check_addresses(text)?;
        for (field, value, least, why) in [
            (
                "lake.max_file_bytes",
                self.lake.max_file_bytes as u64,
                1 << 20,
                "1048576 (1 MiB): smaller files would be closed after every batch",
            ),
            (
                "lake.checkpoint_every",
                self.lake.checkpoint_every,
                1,
                "1 (commits between two checkpoints of the commit log)",
            ),
            (
                "lake.upload_concurrency",
                self.lake.upload_concurrency as u64,
                1,
                "1 (requests a commit keeps in flight)",
            ),
            (
                "plugins.watch_batches",
                self.plugins.watch_batches,
                1,
                "1 (batches watched after a swap for the rollback error rate)",
            ),
            (
                "api.recent_gold_rows",
                self.api.recent_gold_rows as u64,
                1,
                "1 (gold rows kept in memory per table: without any, the API cannot tell a table with no \
                 closed window from one whose rows are all in the lake)",
            ),
            (
                "api.max_upload_bytes",
                self.api.max_upload_bytes as u64,
                1024,
                "1024: no plugin fits in less",
            ),
        ] {
            if value < least {
                return Err(self.at_field(
                    text,
                    field,
                    format!("{field} = {value} is too small: give at least {why}"),
                ));
            }
        }
        Ok(())
    }

    /// The lake URL, the NATS URL and the API address: refused here, with the line, rather than once
    /// `weir run` has started NATS and compiled the plugins.
    fn check_addresses(&self, text: &str) -> Result<()> {
        let lake = self.lake_config().url;
        if let Err(e) = crate::lake::store::check_url(&lake) {
            return Err(if lake == self.lake.url {
                self.at_field(text, "lake.url", format!("lake.url: {e}"))
            } else {
                anyhow::anyhow!("WEIR_LAKE_URL (which overrides lake.url): {e}")
            });
        }
        // Read as `bus::connect` reads it (empty: a local nats-server).
        if let Err(e) = crate::bus::server_addrs(&self.nats.url) {
            return Err(self.at_field(text, "nats.url", format!("nats.url: {e}")));
        }
        let listen = &self.api.listen;
        let port = listen
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if !listen.is_empty() && !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
            return Err(self.at_field(
                text,
                "api.listen",
                format!(
                    "api.listen {listen:?} must be host:port (127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080), or \
                     empty for no API"
                ),
            ));
        }
        Ok(())
    }

    /// That every stage's plugin file exists (checked after the rest: that needs nothing built).
    fn check_plugin_files(&self, text: &str) -> Result<()> {
        for (i, stage) in self.stages.iter().enumerate() {
            let path = self.plugin_path(stage.plugin.get_ref());
            if !path.is_file() {
                return Err(self.at(
                    text,
                    stage.plugin.span(),
                    format!(
                        "stages[{i}] ({}).plugin: {} does not exist ({} is {}; build the plugins with `make \
                         plugins`)",
                        stage.name,
                        path.display(),
                        match std::env::var_os("WEIR_PLUGIN_DIR") {
                            Some(_) => "WEIR_PLUGIN_DIR, which overrides plugins.dir,",
                            None => "plugins.dir",
                        },
                        self.plugin_dir().display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `file:line: stage NAME`, the line of the stage's `plugin =`: where errors about a stage's plugin (it
    /// does not load, its contract does not match, its `init` refuses the config) point.
    pub fn stage_at(&self, name: &str) -> String {
        let stage = self.stages.iter().find(|s| s.name == name);
        let line = stage.and_then(|stage| {
            let text = std::fs::read_to_string(&self.file).ok()?;
            Some(line_at(&text, stage.plugin.span().start))
        });
        match line {
            Some(line) => format!("{}:{line}: stage {name}", self.file.display()),
            None => format!("{}: stage {name}", self.file.display()),
        }
    }

    pub fn plugin_dir(&self) -> PathBuf {
        match std::env::var_os("WEIR_PLUGIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => self.dir().join(&self.plugins.dir),
        }
    }

    pub fn plugin_path(&self, plugin: &str) -> PathBuf {
        self.plugin_dir().join(plugin)
    }

    /// Where deployed versions are remembered; `None` for replays, which run the versions they are given.
    pub fn deployed(&self) -> Option<crate::pipeline::deployed::Deployed> {
        (self.replay.is_none() && !self.plugins.deployed_dir.as_os_str().is_empty())
            .then(|| crate::pipeline::deployed::Deployed::new(self.plugins.deployed_dir.clone()))
    }

    pub fn watch_dir(&self) -> Option<PathBuf> {
        self.plugins.watch_dir.as_ref().map(|d| self.dir().join(d))
    }

    /// The stages with their plugin paths and JSON configurations.
    pub fn stages(&self) -> Result<Vec<ResolvedStage>> {
        self.stages
            .iter()
            .map(|s| {
                let config = match (&s.config, &s.config_file) {
                    (Some(table), _) => serde_json::to_string(table)?,
                    (None, Some(path)) => {
                        let path = self.dir().join(path);
                        std::fs::read_to_string(&path).with_context(|| {
                            format!("stage {}: cannot read {}", s.name, path.display())
                        })?
                    }
                    (None, None) => "{}".to_string(),
                };
                Ok(ResolvedStage {
                    name: s.name.clone(),
                    path: self.plugin_path(s.plugin.get_ref()),
                    config,
                    limits: s.limits.clone(),
                    on_error: s.on_error,
                })
            })
            .collect()
    }

    pub fn host(&self) -> String {
        self.pipeline.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "weir".into())
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        })
    }

    /// Reads the stream as `mode` instead of the configured `consumer.mode` (`weir run --consumer-mode`).
    pub fn set_consumer_mode(&mut self, mode: ConsumerMode) -> Result<()> {
        self.consumer.mode = mode;
        self.check_consumer_mode()
            .map_err(|e| anyhow::anyhow!("--consumer-mode: {e}"))
    }

    fn check_consumer_mode(&self) -> Result<(), String> {
        if self.consumer.mode == ConsumerMode::Exclusive && self.consumer.durable.is_some() {
            return Err(
                "consumer.durable names a consumer to share, but consumer.mode is \"exclusive\" (one \
                 host, no durable consumer): remove one of the two"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether this host reads the stream alone (`consumer.mode = "exclusive"`). Replays always read through
    /// a durable consumer of their own, whatever the mode.
    pub fn exclusive(&self) -> bool {
        self.consumer.mode == ConsumerMode::Exclusive && self.replay.is_none()
    }

    pub fn durable(&self) -> String {
        let live = self
            .consumer
            .durable
            .clone()
            .unwrap_or_else(|| format!("weir-{}", self.pipeline.name));
        match &self.replay {
            Some(replay) => replay.durable(&live),
            None => live,
        }
    }

    /// The control endpoints' bearer token, trimmed: a secret mounted from a file (`kubectl create secret
    /// --from-file`) usually ends in a newline, which no client sends.
    pub fn api_token(&self) -> Option<String> {
        let given = |t: String| Some(t.trim().to_string()).filter(|t| !t.is_empty());
        std::env::var("WEIR_API_TOKEN")
            .ok()
            .and_then(given)
            .or_else(|| self.api.token.clone().and_then(given))
    }

    /// A lake URL given on the command line (empty: the configured one stays). It wins over `WEIR_LAKE_URL`,
    /// as a flag wins over the environment everywhere else.
    pub fn set_lake_url(&mut self, url: String) {
        if !url.is_empty() {
            self.lake.url = url;
            self.lake_url_given = true;
        }
    }

    /// An S3-compatible endpoint given on the command line (empty: the configured one stays).
    pub fn set_lake_endpoint(&mut self, endpoint: String) {
        if !endpoint.is_empty() {
            self.lake.allow_http |= endpoint.starts_with("http://");
            self.lake.endpoint = Some(endpoint);
        }
    }

    pub fn lake_config(&self) -> LakeConfig {
        let mut lake = self.lake.clone();
        // A relative local lake path is relative to the working directory (where `weir run` starts), like
        // the quick start's `./lake`.
        // A replay's lake is its table version, set explicitly: the variable names the live lake.
        if let Ok(url) = std::env::var("WEIR_LAKE_URL")
            && !url.is_empty()
            && self.replay.is_none()
            && !self.lake_url_given
        {
            lake.url = url;
        }
        lake
    }
}

/// The 1-based line of byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where `field` (dotted, array elements by index: `stages.2.limits.max_rows`) is set in the TOML `text`:
/// its value's span, or the span of the deepest part of the path that is there.
fn span_of(text: &str, field: &str) -> Option<std::ops::Range<usize>> {
    use toml::de::{DeTable, DeValue};
    let document = DeTable::parse(text).ok()?;
    let mut parts = field.split('.');
    let mut value: &Spanned<DeValue<'_>> = document.get_ref().get(parts.next()?)?;
    for part in parts {
        let next = match part.parse::<usize>() {
            Ok(index) => value.get_ref().get(index),
            Err(_) => value.get_ref().get(part),
        };
        match next {
            Some(next) => value = next,
            None => break,
        }
    }
    Some(value.span())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/tmp/p.toml"))
    }

    /// Values that passed before the checks of 3b617e7, and must still.
    #[test]
    fn values_that_worked_still_do() {
        let stage = "\n[[stages]]\nname = \"f\"\nplugin = \"f.wasm\"\n";
        for section in [
            "[nats]\nurl = \"nats://a:4222, nats://b:4222\"\n",
            "[nats]\nurl = \"NATS://host:4222\"\n",
            "[nats]\nurl = \"127.0.0.1:4222\"\n",
            "[ingest]\nname = \"wikimedia.recentchange\"\n",
            "[lake]\nurl = \"lake:v2\"\n",
            "[api]\nlisten = \"[::1]:8080\"\n",
            "[api]\nlisten = \"\"\n",
            // A duplicate window under the overlap's 60s default: the default halves it.
            "[source]\nurl = \"https://example.org/s\"\n[stream]\nduplicate_window = \"30s\"\nmax_age = \"1h\"\n",
        ] {
            let text = format!("[pipeline]\nname = \"x\"\n{section}{stage}");
            // Validated: the check after it, that the plugin file exists, is the one to fail here.
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("f.wasm does not exist"), "{section}: {err}");
        }
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let err = parse("[pipeline]\nname = \"x\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/tmp/p.toml") && err.contains("line 3") && err.contains("bogus"),
            "{err}"
        );
        let err = parse(
            "[pipeline]\nname = \"x\"\n\n[[stages]]\nname = \"f\"\nplugin = \"missing.wasm\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/tmp/p.toml:6") && err.contains("missing.wasm"),
            "{err}"
        );
        let err = parse("[pipeline]\nname = \"x\"\n[silver]\ncolumns = [{name = \"a\", path = \"a\", type = \"int\"}]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4") && err.contains("int"), "{err}");
    }

    /// Checks beyond the types name the line of the field too (or of its table, when the field is left
    /// at a default that fails with another).
    #[test]
    fn checks_name_the_line_of_the_field() {
        let stage = "\n[[stages]]\nname = \"f\"\nplugin = \"f.wasm\"\n";
        let with_stage = |text: &str| format!("{text}{stage}");
        let cases = [
            (
                with_stage("[pipeline]\nname = \"x\"\n[consumer]\nmode = \"shared\"\nbatch = 0\n"),
                5,
                "consumer.batch",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[stream]\n\nreplicas = 9\n"),
                5,
                "stream.replicas",
            ),
            (
                with_stage(
                    "[pipeline]\nname = \"x\"\n[silver]\ncolumns = [\n  { name = \"a\", path = \"a\", type = \"string\" },\n  { name = \"dt\", path = \"b\", type = \"string\" },\n]\n",
                ),
                6,
                "partition key",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[plugins]\nrollback_error_rate = 5.0\n"),
                4,
                "0 to 1",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[plugins]\n\nself_test_min_kept = -1\n"),
                5,
                "plugins.self_test_min_kept -1 must be a share",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[events]\nidle_close = \"10ms\"\n"),
                4,
                "events.idle_close",
            ),
            (
                with_stage("[pipeline]\nname = \"bad name\"\n"),
                2,
                "pipeline.name",
            ),
            (
                "[pipeline]\nname = \"x\"\n\n[[stages]]\nname = \"f\"\nplugin = \"f.wasm\"\n\n[[stages]]\nname = \"f\"\nplugin = \"f.wasm\"\nlimits = { call_timeout_ms = 0 }\n".to_string(),
                9,
                "used twice",
            ),
            (
                "[pipeline]\nname = \"x\"\n\n[[stages]]\nname = \"my stage\"\nplugin = \"f.wasm\"\n".to_string(),
                5,
                "stages[0].name \"my stage\" must be letters",
            ),
            (
                format!("[pipeline]\nname = \"x\"\n{stage}limits = {{ call_timeout_ms = 0 }}\n"),
                7,
                "stages[0] (f): limits.call_timeout_ms",
            ),
            (
                format!("[pipeline]\nname = \"x\"\n{stage}[stages.limits]\noutput_bytes = 9\nmax_rows = 0\n"),
                9,
                "limits.max_rows must be positive",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[lake]\nurl = \"s3:/bucket/lake\"\n"),
                4,
                "lacks the `//` of s3://",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[lake]\nurl = \"ftp://host/lake\"\n"),
                4,
                "unknown scheme \"ftp\"",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[lake]\nmax_file_bytes = 0\n"),
                4,
                "lake.max_file_bytes = 0 is too small",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[api]\nlisten = \"localhost\"\n"),
                4,
                "api.listen \"localhost\" must be host:port",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[nats]\nurl = \"htp://127.0.0.1:4222\"\n"),
                4,
                "nats.url: NATS server \"htp://127.0.0.1:4222\"",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[stream]\nmax_age = \"1m\"\nduplicate_window = \"2m\"\n"),
                5,
                "must not be longer than stream.max_age",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[source]\nresume_overlap = \"10m\"\n"),
                4,
                "source.resume_overlap 600s must be shorter than stream.duplicate_window 600s",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[stream]\nmax_bytes = -5\n"),
                4,
                "stream.max_bytes -5",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[source]\nurl = \"https://example.org/s\"\nsince = \"yesterday\"\n"),
                5,
                "source.since \"yesterday\"",
            ),
            (
                with_stage("[pipeline]\nname = \"x\"\n[source]\nurl = \"https://example.org/s\"\nmin_backoff = \"1s\"\nmax_backoff = \"500ms\"\n"),
                6,
                "source.max_backoff 500ms must be at least",
            ),
        ];
        for (text, line, says) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("/tmp/p.toml:{line}:")) && err.contains(says),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn on_error_takes_four_answers() {
        let err = parse(
            "[pipeline]\nname = \"x\"\n\n[[stages]]\nname = \"f\"\nplugin = \"f.wasm\"\non_error = \"retry\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 7") && err.contains("retry") && err.contains("skip"),
            "{err}"
        );
    }

    #[test]
    fn max_deliver_leaves_a_delivery_before_the_poison_one() {
        let err = parse("[pipeline]\nname = \"x\"\n[consumer]\nmax_deliver = 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/tmp/p.toml:4") && err.contains("at least 3"),
            "{err}"
        );
    }

    /// Settings that would break the pipeline later are refused at their line.
    #[test]
    fn settings_that_break_later_are_refused_where_they_are() {
        for (toml, field, says) in [
            ("[consumer]\nack_wait = \"100ms\"\n", "4", "at least 1s"),
            ("[consumer]\nmax_ack_pending = 0\n", "4", "must be positive"),
            ("[consumer]\nadopt_after = \"10s\"\n", "4", "at least 30s"),
            ("[consumer]\ndurable = \"a.b\"\n", "4", "consumer.durable"),
            ("[events]\nkey_path = \"a..b\"\n", "4", "events.key_path"),
            ("[ingest]\nid_path = \"\"\n", "4", "ingest.id_path"),
        ] {
            let err = parse(&format!("[pipeline]\nname = \"x\"\n{toml}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("/tmp/p.toml:{field}")) && err.contains(says),
                "{toml}: {err}"
            );
        }
        let err = parse("[pipeline]\nname = \"x\"\nhost = \"edge/1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/tmp/p.toml:3") && err.contains("pipeline.host"),
            "{err}"
        );
    }

    #[test]
    fn an_exclusive_reader_names_no_shared_consumer() {
        let err = parse("[pipeline]\nname = \"x\"\n[consumer]\nmode = \"solo\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 4") && err.contains("shared") && err.contains("exclusive"),
            "{err}"
        );
        let err =
            parse("[pipeline]\nname = \"x\"\n[consumer]\nmode = \"exclusive\"\ndurable = \"d\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("/tmp/p.toml") && err.contains("consumer.durable"),
            "{err}"
        );
    }
}
