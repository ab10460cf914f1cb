//! What each plugin instance's store holds, and the host side of the contract's imports: keyed state, log,
//! metrics and clock. These four are the only capabilities a plugin has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::weir::transform::{clock, log, metrics, state, types};
use super::guest_log::GuestLog;
use super::sandbox::{self, Limits};
use super::state::KeyedState;

/// The clock plugins see (and keyed state's time-to-live). Tests and `weir plugin run --now` pin it so
/// freshness checks are reproducible.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Fixed(i64),
    /// Set by the pipeline before each batch. Replays set it to when the batch's events were ingested, so
    /// that checks against "now" (freshness, state expiry) judge each event as the live run did, however
    /// long ago that was.
    Shared(Arc<AtomicI64>),
}

impl Clock {
    /// A clock the pipeline sets, starting at the system time.
    pub fn shared() -> Self {
        Clock::Shared(Arc::new(AtomicI64::new(Clock::System.now_ms())))
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            Clock::Fixed(ms) => *ms,
            Clock::Shared(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// Sets a shared clock (other kinds keep their own time).
    pub fn set(&self, now_ms: i64) {
        if let Clock::Shared(ms) = self {
            ms.store(now_ms, Ordering::Relaxed);
        }
    }
}

/// Counters and gauges a plugin reported during one call; merged into its stats only if the call succeeds.
#[derive(Debug, Default)]
pub struct StagedMetrics {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, f64>,
}

/// Enforces `Limits::memory_bytes` over all of an instance's linear memories together (a component may hold
/// many core instances, each with its own memory), and caps how many memories, tables and core instances it
/// may create. Returning an error (rather than refusing the growth) traps at once, so the failure is
/// classified as `plugin_oom` instead of surfacing later as an allocator abort.
#[derive(Debug)]
pub struct MemoryCap {
    pub max_bytes: usize,
    pub hit: bool,
    /// The instance's linear memories together, in bytes (they only grow).
    pub size: usize,
    /// The entries of its tables together.
    pub table_entries: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.size + desired.saturating_sub(current);
        if total > self.max_bytes {
            self.hit = true;
            wasmtime::bail!(
                "memory limit of {} bytes reached (its memories together wanted {total})",
                self.max_bytes
            );
        }
        self.size = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.table_entries + desired.saturating_sub(current);
        if total > sandbox::MAX_TABLE_ENTRIES {
            return Ok(false);
        }
        self.table_entries = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        sandbox::MAX_CORE_INSTANCES
    }

    fn memories(&self) -> usize {
        sandbox::MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        sandbox::MAX_TABLES
    }
}

/// The data of one plugin instance's store.
pub struct PluginCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    pub plugin: Arc<str>,
    pub state: KeyedState,
    pub metrics: StagedMetrics,
    pub memory: MemoryCap,
    pub stdout: GuestLog,
    pub stderr: GuestLog,
    pub clock: Clock,
    state_value_bytes: usize,
    state_bytes: usize,
    /// Set while a replacement instance repeats the calls journaled since its snapshot (see `journal`):
    /// their keyed-state writes are dropped, the state holds them already, so they count against no limit.
    pub repeating: bool,
    /// When the current call's deadline passes (see [`set_deadline`]): the plugin's waits on clocks end
    /// there (see `waits`).
    pub deadline: Instant,
}

/// Gives the plugin's next call `ticks` epoch ticks (see `sandbox`) before it traps as a timeout.
pub fn set_deadline(store: &mut Store<PluginCtx>, ticks: u64) {
    store.set_epoch_deadline(ticks);
    let budget = sandbox::EPOCH_TICK.saturating_mul(ticks.try_into().unwrap_or(u32::MAX));
    store.data_mut().deadline = Instant::now() + budget;
}

impl PluginCtx {
    pub fn new(plugin: Arc<str>, limits: &Limits, clock: Clock, state: KeyedState) -> Self {
        let stdout = GuestLog::new(plugin.clone(), "stdout", limits.log_bytes_per_call);
        let stderr = GuestLog::new(plugin.clone(), "stderr", limits.log_bytes_per_call);
        PluginCtx {
            wasi: sandbox::empty_wasi_ctx(stdout.clone(), stderr.clone()),
            table: ResourceTable::new(),
            plugin,
            state,
            metrics: StagedMetrics::default(),
            memory: MemoryCap {
                max_bytes: limits.memory_bytes as usize,
                hit: false,
                size: 0,
                table_entries: 0,
            },
            stdout,
            stderr,
            clock,
            state_value_bytes: limits.state_value_bytes,
            state_bytes: limits.state_bytes,
            repeating: false,
            deadline: Instant::now(),
        }
    }

    /// Ends a call's guest output: logs an unfinished line, gives the next call its whole log budget, and
    /// returns the bytes this call's output went over it.
    pub fn end_guest_output(&self) -> u64 {
        self.stdout.end_call() + self.stderr.end_call()
    }

    /// Stages a write within `limits.state_value_bytes` and `limits.state_bytes`.
    fn set_checked(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        now: i64,
    ) -> wasmtime::Result<()> {
        if value.len() > self.state_value_bytes {
            wasmtime::bail!(
                "state value for key {key:?} is {} bytes, over the limit of {} (limits.state_value_bytes)",
                value.len(),
                self.state_value_bytes
            );
        }
        let limit = if self.repeating {
            usize::MAX
        } else {
            self.state_bytes
        };
        if let Err(total) = self.state.try_set(key, value, ttl_ms, now, limit) {
            // A resource cap, like memory: the failure is `plugin_oom`.
            self.memory.hit = true;
            wasmtime::bail!(
                "keyed state limit of {} bytes reached (setting {key:?} would make it {total}; \
                 limits.state_bytes)",
                self.state_bytes
            );
        }
        Ok(())
    }
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginCtx {}

impl state::Host for PluginCtx {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self
            .state
            .get(&key, self.clock.now_ms())
            .map(<[u8]>::to_vec))
    }

    fn get_many(&mut self, keys: Vec<String>) -> wasmtime::Result<Vec<Option<Vec<u8>>>> {
        let now = self.clock.now_ms();
        Ok(keys
            .iter()
            .map(|k| self.state.get(k, now).map(<[u8]>::to_vec))
            .collect())
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<()> {
        let now = self.clock.now_ms();
        self.set_checked(&key, value, ttl_ms, now)
    }

    fn set_many(&mut self, entries: Vec<state::Entry>) -> wasmtime::Result<()> {
        let now = self.clock.now_ms();
        for entry in entries {
            self.set_checked(&entry.key, entry.value, entry.ttl_ms, now)?;
        }
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.state.delete(&key);
        Ok(())
    }

    fn delete_many(&mut self, keys: Vec<String>) -> wasmtime::Result<()> {
        keys.iter().for_each(|k| self.state.delete(k));
        Ok(())
    }
}

impl log::Host for PluginCtx {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        // Cut very long messages: a log line is for people.
        let message = match message.char_indices().nth(4096) {
            Some((cut, _)) => &message[..cut],
            None => &message,
        };
        // A plugin logging in a loop must not flood the host log either.
        if !self.stderr.charge(message.len()) {
            return Ok(());
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(target: "weir::plugin", plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: "weir::plugin", plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "weir::plugin", plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "weir::plugin", plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "weir::plugin", plugin, "{message}"),
        }
        Ok(())
    }
}

impl metrics::Host for PluginCtx {
    fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        *self.metrics.counters.entry(name).or_default() += delta;
        Ok(())
    }

    fn gauge_set(&mut self, name: String, value: f64) -> wasmtime::Result<()> {
        self.metrics.gauges.insert(name, value);
        Ok(())
    }
}

impl clock::Host for PluginCtx {
    fn now_ms(&mut self) -> wasmtime::Result<i64> {
        Ok(self.clock.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter;

    use super::*;

    /// A component may hold many core instances, each with a memory: the cap is on all of them together.
    #[test]
    fn the_memory_cap_counts_every_memory() {
        let mut cap = MemoryCap {
            max_bytes: 64 << 20,
            hit: false,
            size: 0,
            table_entries: 0,
        };
        assert!(cap.memory_growing(0, 40 << 20, None).unwrap());
        assert!(cap.memory_growing(40 << 20, 50 << 20, None).unwrap());
        assert!(!cap.hit);
        let second = cap.memory_growing(0, 20 << 20, None).unwrap_err();
        assert!(cap.hit);
        assert!(second.to_string().contains("memory limit"), "{second}");
        assert_eq!(cap.size, 50 << 20);
        // Tables likewise, by entries.
        assert!(cap.table_growing(0, 600_000, None).unwrap());
        assert!(!cap.table_growing(0, 600_000, None).unwrap());
    }
}
