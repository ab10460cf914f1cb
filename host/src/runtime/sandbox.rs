//! Engine and sandbox policy: the one place where Weir decides what a plugin may do and how much it may use.
//!
//! Every limit is documented here, with its default and what happens when a plugin reaches it. Nothing else in
//! the code base creates a `wasmtime::Engine`.

use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::{Config, Engine, OptLevel};

/// How often the epoch advances. A call's CPU deadline is counted in these ticks, so a plugin that loops forever
/// is stopped between `call_timeout` and `call_timeout + EPOCH_TICK` after its call began.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// CPU deadline of the calls that copy a plugin's whole in-memory state (`snapshot`, `restore`, and repeating
/// the journal on a replacement instance). Their cost grows with the state (open windows of an aggregate), not
/// with a batch, so `call_timeout_ms` does not fit them; this still stops a plugin that loops in them.
pub const STATE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The epoch deadline of a state call, in ticks (see `STATE_CALL_TIMEOUT`).
pub fn state_deadline_ticks() -> u64 {
    ticks(STATE_CALL_TIMEOUT)
}

/// A deadline of `timeout` in epoch ticks, one more for the tick already under way.
fn ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() / EPOCH_TICK.as_millis()) as u64 + 1
}

/// CPU deadline of the calls that set an instance up once (instantiation, `manifest`, `init`). A language
/// runtime pays its own start-up in them (a componentized Python interpreter's first call took more than
/// the default 100 ms of `call_timeout_ms` on a busy 2-core machine), and they are not on the per-batch
/// path, so the batch deadline does not fit them; this still stops a plugin that loops in them (see
/// [`Limits::setup_deadline_ticks`]).
pub const SETUP_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Wasm stack available to one call. Deep recursion past it traps as a stack overflow (`plugin_trap`) instead of
/// taking the host thread's stack with it. 1 MiB is 2-4x what the SDK's own code needs at its deepest.
pub const MAX_WASM_STACK: usize = 1 << 20;

/// Core instances, linear memories and tables one plugin instance may create, and the entries of its tables
/// together: far above what the SDKs' components hold (a componentized interpreter has a handful of core
/// instances and memories), far below wasmtime's default of 10,000 each. A component past them is refused
/// when it is instantiated. (`Limits::memory_bytes` bounds its memories together.)
pub const MAX_CORE_INSTANCES: usize = 100;
pub const MAX_MEMORIES: usize = 16;
pub const MAX_TABLES: usize = 100;
pub const MAX_TABLE_ENTRIES: usize = 1_000_000;

/// Per-plugin resource limits. Pipeline configs can override each field per stage; the defaults suit a plugin
/// that handles batches of a few thousand ~1 kB events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// CPU time one call into the plugin (`process` of a whole batch, `on-watermark`, ...) may take, in
    /// milliseconds. Enforced by epoch interruption: past it the call traps, the batch is bisected and the event
    /// that keeps timing out is quarantined as `plugin_timeout`. Default 100 ms. Raise it for plugins that do
    /// heavy work per event, lower it to bound the latency a misbehaving plugin can add.
    pub call_timeout_ms: u64,
    /// Linear memory the plugin may grow to, all its memories together, in bytes. Growing past it traps (`plugin_oom`) and the instance is
    /// replaced. Default 64 MiB; interpreted languages (componentize-py, componentize-js) start near 20 MiB.
    pub memory_bytes: u64,
    /// Size of what one call may return (outcomes, field writes and rows, counted by content), in bytes. Larger
    /// output is rejected as `plugin_bad_output`. Default 16 MiB.
    pub output_bytes: u64,
    /// Rows one call may emit (aggregates). More is rejected as `plugin_bad_output`. Default 100,000.
    pub max_rows: usize,
    /// Largest value the plugin may store under one key of its keyed state, in bytes. A larger `set` traps.
    /// Default 1 MiB.
    pub state_value_bytes: usize,
    /// Keyed state the plugin may hold, keys (16 bytes each) and values together, in bytes, counting the writes
    /// of the call under way. A write past it traps as `plugin_oom`: the event is quarantined and the state
    /// keeps what it had. Expired entries count until the state's next sweep. Default 256 MiB.
    pub state_bytes: usize,
    /// Bytes the plugin may write per call to each of stdout and stderr (the `log` import's messages count
    /// as stderr's); the rest is dropped (and counted) so a chatty plugin cannot flood the host log. Default
    /// 64 KiB.
    pub log_bytes_per_call: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout_ms: 100,
            memory_bytes: 64 << 20,
            output_bytes: 16 << 20,
            max_rows: 100_000,
            state_value_bytes: 1 << 20,
            state_bytes: 256 << 20,
            log_bytes_per_call: 64 << 10,
        }
    }
}

impl Limits {
    /// The epoch deadline for one call, in ticks beyond the current epoch. One extra tick because the current
    /// tick is already partly spent, so a call always gets at least `call_timeout_ms`.
    pub fn deadline_ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_millis() as u64;
        self.call_timeout_ms.div_ceil(tick).max(1) + 1
    }

    /// The epoch deadline of a setup call, in ticks: `SETUP_CALL_TIMEOUT`, or the call deadline if that is
    /// longer.
    pub fn setup_deadline_ticks(&self) -> u64 {
        ticks(SETUP_CALL_TIMEOUT).max(self.deadline_ticks())
    }

    /// Checks that the limits make sense; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.call_timeout_ms == 0 {
            return Err("limits.call_timeout_ms must be at least 1".into());
        }
        if self.memory_bytes < (1 << 20) {
            return Err(format!(
                "limits.memory_bytes = {} is below 1 MiB; no plugin can start in that",
                self.memory_bytes
            ));
        }
        if self.output_bytes == 0 {
            return Err("limits.output_bytes must be positive".into());
        }
        if self.max_rows == 0 {
            return Err("limits.max_rows must be positive".into());
        }
        Ok(())
    }
}

/// The process-wide engine. One engine means one compiled-code cache key, one epoch ticker and plugins that can
/// be swapped between pipelines.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let engine =
            Engine::new(&engine_config()).expect("the sandbox engine configuration is valid");
        start_epoch_ticker(&engine);
        engine
    })
}

fn engine_config() -> Config {
    let mut config = Config::new();
    // Plugins run inside a batch loop that already owns a thread; the component-model async machinery would only
    // add ~0.25 µs to every call.
    config.concurrency_support(false);
    config.wasm_component_model(true);
    // CPU deadlines. Epoch checks cost far less than fuel (measured here: 14-26 % vs 25-31 %), and a deadline
    // in wall-clock ticks is what an operator reasons about.
    config.epoch_interruption(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    config.cranelift_opt_level(OptLevel::Speed);
    // `WEIR_PERF_MAP=1` names plugin functions for `perf` (in /tmp/perf-<pid>.map): without it a profile
    // shows plugin code as unknown addresses.
    if std::env::var_os("WEIR_PERF_MAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    // Plugins are untrusted: keep the Spectre mitigations and guard pages that are wasmtime's defaults.
    config
}

/// Advances the engine's epoch every `EPOCH_TICK` for as long as the engine lives.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch ticker thread");
}

/// Identifies the code this engine produces; part of the key of every precompiled artifact so a wasmtime
/// upgrade or a config change never loads stale machine code.
pub fn engine_fingerprint() -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine().precompile_compatibility_hash().hash(&mut hasher);
    format!("wasmtime-{}-{:016x}", wasmtime_version(), hasher.finish())
}

fn wasmtime_version() -> &'static str {
    // Kept in step with the workspace dependency; the compatibility hash above already covers the rest.
    "48"
}

/// Whether a WASI interface may be linked. Plugins get the WASI basics that std-based guests import even when
/// they never use them (streams for stdout, clocks, random, an empty filesystem and environment, sockets that
/// are denied every address), all backed by an empty context: no preopened directory, no environment variable,
/// no argument, no network. Anything else (HTTP, key-value stores, ...) is refused at load.
pub fn is_allowed_wasi_import(name: &str) -> bool {
    const ALLOWED: [&str; 6] = [
        "wasi:cli/",
        "wasi:io/",
        "wasi:clocks/",
        "wasi:random/",
        "wasi:filesystem/",
        "wasi:sockets/",
    ];
    ALLOWED.iter().any(|prefix| name.starts_with(prefix))
}

/// A WASI context with nothing in it. Guest stdout and stderr go to the host log (see `guest_log`).
pub fn empty_wasi_ctx(
    stdout: impl wasmtime_wasi::cli::StdoutStream + 'static,
    stderr: impl wasmtime_wasi::cli::StdoutStream + 'static,
) -> wasmtime_wasi::WasiCtx {
    let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
    builder
        .stdout(stdout)
        .stderr(stderr)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    builder.build()
}
