//! A running plugin: one sandboxed instance, its plan, its keyed state and its stats.
//!
//! The one rule here: a plugin failure never reaches the caller as an error. A call that traps, times out, runs
//! out of memory or returns output the contract forbids gets a fresh instance, the batch is bisected until the
//! event that fails alone is found, that event is quarantined with the failure's reason, and every other event
//! gets the plugin's real answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use wasmtime::Store;

use super::bindings::types::{
    Batch, Column, Output, Plan, PluginManifest as Manifest, Quarantine, Row, Value, Verdict,
};
use super::bindings::{self, Plugin as Instance};
use super::columns::{self, CheckedColumn};
use super::context::{Clock, PluginCtx, set_deadline};
use super::failure::{FailureKind, PluginFailure};
use super::journal::{Journal, Journaled, JournaledBatch, repeat};
use super::loader::LoadedPlugin;
use super::sandbox::{self, Limits};
use super::snapshot::{RestorePoint, Snapshot};
use super::state::KeyedState;
use super::stats::PluginStats;

/// Failed calls a batch of `events` may take before the events still failing fail together rather than
/// each tried alone: enough to find four poison events apart (one costs `log2(events) + 1` failed calls,
/// 9 in a batch of 256), and at least 32. A plugin failing on every event of 256 then costs at most 44
/// failed calls (the budget, and one more per level of the bisection under way), not 511, each up to its
/// deadline and each replacing the instance.
fn bisection_budget(events: usize) -> u32 {
    // log2 rounded up: a batch of 300 takes 10 halvings to reach one event.
    (4 * (events.max(1).next_power_of_two().ilog2() + 1)).max(32)
}

/// What a batch produced: one verdict per input event (failures already turned into quarantines), the field
/// writes of the calls that succeeded and the rows they emitted.
#[derive(Debug, Default)]
pub struct BatchResult {
    pub verdicts: Vec<Verdict>,
    /// Writes in chunks, one per successful call: each covers the events from `start` on, in order.
    pub writes: Vec<WriteChunk>,
    pub rows: Vec<Row>,
    /// The events (by index, ascending) whose verdict is the host's, not the plugin's: the plugin failed on
    /// them, and their quarantine verdict gives the failure's reason and detail.
    pub failed: Vec<usize>,
}

/// The write columns one call returned, for the events `start..start + rows` of the batch (every column has
/// passed `columns::check_column`).
#[derive(Debug)]
pub struct WriteChunk {
    pub start: usize,
    pub columns: Vec<Column>,
}

impl WriteChunk {
    /// The columns, checked again cheaply for reading (their text was validated when the call returned).
    pub fn checked(&self, rows: usize) -> Vec<CheckedColumn<'_>> {
        self.columns
            .iter()
            .map(|c| columns::check_column(c, rows).expect("checked when the call returned"))
            .collect()
    }
}

pub struct Plugin {
    loaded: Arc<LoadedPlugin>,
    manifest: Manifest,
    plan: Plan,
    config: String,
    limits: Limits,
    store: Store<PluginCtx>,
    instance: Instance,
    /// The plugin's last good in-memory state, for plugins whose plan asks for snapshots; restored into every
    /// replacement instance, followed by `journal`, so a trap loses none of it.
    snapshot: Option<RestorePoint>,
    /// The calls that succeeded since `snapshot` was taken.
    journal: Journal,
    /// How long the last call into the guest took.
    last_call: Duration,
    /// Set when a replacement instance could not be started; see `replace_instance`.
    broken: Option<String>,
    stats: PluginStats,
}

impl Plugin {
    /// Instantiates the plugin, reads its manifest and initializes it with `config` (JSON text).
    pub fn start(
        loaded: Arc<LoadedPlugin>,
        config: &str,
        limits: Limits,
        clock: Clock,
    ) -> Result<Self> {
        limits
            .validate()
            .map_err(|e| anyhow!("{}: {e}", loaded.path.display()))?;
        let name: Arc<str> = loaded
            .path
            .file_stem()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default()
            .into();
        let (mut store, instance) =
            instantiate(&loaded, name, &limits, clock.clone(), KeyedState::default())?;
        let guest = instance.weir_transform_transform();
        set_deadline(&mut store, limits.setup_deadline_ticks());
        let manifest = guest.call_manifest(&mut store).map_err(|e| {
            anyhow!(
                "{}: manifest() failed: {}",
                loaded.path.display(),
                classify(&store, &e)
            )
        })?;
        store.data_mut().plugin = manifest.name.clone().into();
        set_deadline(&mut store, limits.setup_deadline_ticks());
        let plan = guest
            .call_init(&mut store, config)
            .map_err(|e| {
                anyhow!(
                    "{}: init() failed: {}",
                    loaded.path.display(),
                    classify(&store, &e)
                )
            })?
            .map_err(|e| anyhow!("plugin {} rejected its configuration: {e}", manifest.name))?;
        check_plan(&manifest, &plan)?;
        let mut plugin = Plugin {
            loaded,
            manifest,
            plan,
            config: config.to_string(),
            limits,
            store,
            instance,
            snapshot: None,
            journal: Journal::default(),
            last_call: Duration::ZERO,
            broken: None,
            stats: PluginStats::default(),
        };
        plugin.store.data_mut().state.commit(clock.now_ms());
        plugin
            .snapshot_now()
            .map_err(|f| anyhow!("{}: snapshot() failed: {f}", plugin.label()))?;
        Ok(plugin)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    pub fn loaded(&self) -> &Arc<LoadedPlugin> {
        &self.loaded
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `name@version`, as recorded in lineage and quarantine rows.
    pub fn label(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    pub fn state(&self) -> &KeyedState {
        &self.store.data().state
    }

    pub fn state_mut(&mut self) -> &mut KeyedState {
        &mut self.store.data_mut().state
    }

    /// Runs a batch. Never fails: see the module documentation.
    pub fn process(&mut self, batch: &Batch) -> BatchResult {
        let events = batch.times.len();
        let mut result = BatchResult {
            verdicts: Vec::with_capacity(events),
            writes: Vec::new(),
            rows: Vec::new(),
            failed: Vec::new(),
        };
        let mut failures_left = bisection_budget(events);
        self.process_into(batch, 0, &mut result, &mut failures_left);
        self.stats.events_in += events as u64;
        // The host's verdicts for events the plugin failed on are not the plugin's: where those events go is
        // for the stage's `on_error` to say, so they are counted apart.
        self.stats.failed += result.failed.len() as u64;
        let mut failed = result.failed.iter().peekable();
        for (index, verdict) in result.verdicts.iter().enumerate() {
            if failed.next_if(|&&i| i == index).is_some() {
                continue;
            }
            match verdict {
                Verdict::Keep => self.stats.kept += 1,
                Verdict::Drop(rule) => {
                    self.stats.dropped += 1;
                    super::stats::count_label(&mut self.stats.dropped_by_rule, rule);
                }
                Verdict::Quarantine(q) => {
                    self.stats.quarantined += 1;
                    super::stats::count_label(&mut self.stats.quarantined_by_reason, &q.reason);
                }
            }
        }
        self.stats.rows_emitted += result.rows.len() as u64;
        result
    }

    /// Runs `batch`, whose first event is event `start` of the whole batch; `failures_left` counts down the
    /// whole batch's [`bisection_budget`].
    fn process_into(
        &mut self,
        batch: &Batch,
        start: usize,
        result: &mut BatchResult,
        failures_left: &mut u32,
    ) {
        let events = batch.times.len();
        if events == 0 {
            return;
        }
        let failure = match self.broken.clone() {
            Some(why) => PluginFailure {
                kind: FailureKind::Trap,
                detail: why,
            },
            None => {
                let (emits, writes, limits) = (
                    self.plan.emits.clone(),
                    self.plan.writes.len(),
                    self.limits.clone(),
                );
                let call = self.call(
                    |instance, store| {
                        instance
                            .weir_transform_transform()
                            .call_process(store, batch)
                    },
                    |output| check_output(output, events, writes, &emits, &limits),
                );
                match call {
                    Ok(output) => {
                        self.refresh_snapshot(
                            || Journaled::Process(JournaledBatch::new(batch)),
                            events,
                        );
                        result.verdicts.extend(output.verdicts);
                        if !output.writes.is_empty() {
                            result.writes.push(WriteChunk {
                                start,
                                columns: output.writes,
                            });
                        }
                        result.rows.extend(output.rows);
                        return;
                    }
                    Err(failure) => failure,
                }
            }
        };
        *failures_left = failures_left.saturating_sub(1);
        if events == 1 {
            let id = String::from_utf8_lossy(&batch.ids.bytes);
            tracing::warn!(plugin = %self.label(), event = %id, reason = failure.kind.reason(), "failed on an event (its stage's on_error decides where it goes): {}", failure.detail);
            result.failed.push(start);
            result.verdicts.push(Verdict::Quarantine(Quarantine {
                reason: failure.kind.reason().to_string(),
                failed_checks: vec![failure.detail],
            }));
            return;
        }
        if *failures_left == 0 || self.broken.is_some() {
            // A plugin failing on most events (a bad version, data it cannot read) would otherwise be called
            // twice per event of the batch; a broken one is not called at all. These events fail together,
            // each with the reason.
            let detail = match &self.broken {
                Some(_) => failure.detail,
                None => {
                    tracing::warn!(plugin = %self.label(), events, reason = failure.kind.reason(), "failed too often in one batch: the rest of its failing events are not tried one by one (their stage's on_error decides where they go): {}", failure.detail);
                    format!(
                        "{} (the plugin failed so often in this batch that the {events} events still \
                         failing together were not tried alone: some may be fine; replay them once the \
                         plugin is fixed)",
                        failure.detail
                    )
                }
            };
            for index in start..start + events {
                result.failed.push(index);
                result.verdicts.push(Verdict::Quarantine(Quarantine {
                    reason: failure.kind.reason().to_string(),
                    failed_checks: vec![detail.clone()],
                }));
            }
            return;
        }
        let half = events / 2;
        self.process_into(
            &columns::slice_batch(batch, 0..half),
            start,
            result,
            failures_left,
        );
        self.process_into(
            &columns::slice_batch(batch, half..events),
            start + half,
            result,
            failures_left,
        );
    }

    /// Tells the plugin that event time reached `watermark_ms`; returns the rows it closes.
    pub fn on_watermark(&mut self, watermark_ms: i64) -> Result<Vec<Row>, PluginFailure> {
        if let Some(why) = &self.broken {
            return Err(PluginFailure {
                kind: FailureKind::Trap,
                detail: why.clone(),
            });
        }
        let (emits, limits) = (self.plan.emits.clone(), self.limits.clone());
        let rows = self.call(
            |instance, store| {
                instance
                    .weir_transform_transform()
                    .call_on_watermark(store, watermark_ms)
            },
            |rows| check_rows(rows, &emits, &limits).map(drop),
        )?;
        self.refresh_snapshot(|| Journaled::Watermark(watermark_ms), 0);
        self.stats.rows_emitted += rows.len() as u64;
        Ok(rows)
    }

    /// The plugin's in-memory state, for a hot swap's [`Plugin::hand_over`] (`None` for plugins without
    /// snapshot state): a snapshot as of now, handed over raw (packing it to unpack it at once would lengthen
    /// the swap's pause). A broken plugin has no instance left to take one: it hands over its restore point
    /// and the calls journaled since, for the new version to repeat. That is the way out of a broken stateful
    /// stage: deploying a version that works, without losing the state.
    pub fn take_snapshot(&mut self) -> Result<Option<HandOver>, PluginFailure> {
        if self.broken.is_none() || !self.plan.state.snapshot {
            return Ok(self.snapshot_now()?.map(|snapshot| HandOver {
                snapshot,
                since: Vec::new(),
                shape: self.batch_shape(),
            }));
        }
        let unreadable = |e: anyhow::Error| PluginFailure {
            kind: FailureKind::Trap,
            detail: format!("its last restore point: {e:#}"),
        };
        let Some(snapshot) = self
            .restore_point()
            .map(Snapshot::unpack)
            .transpose()
            .map_err(unreadable)?
        else {
            return Ok(None);
        };
        // Copied, not taken: if the swap fails, this version stays, and its next commit must still fail
        // rather than save the restore point without these calls.
        Ok(Some(HandOver {
            snapshot: Arc::new(snapshot),
            since: self.journal.calls.clone(),
            shape: self.batch_shape(),
        }))
    }

    /// Replaces the restore point with a snapshot of the state as of now, and returns the snapshot as the
    /// plugin gave it (nothing for plugins without one).
    fn snapshot_now(&mut self) -> Result<Option<Arc<Vec<u8>>>, PluginFailure> {
        if !self.plan.state.snapshot {
            return Ok(None);
        }
        if let Some(why) = &self.broken {
            return Err(PluginFailure {
                kind: FailureKind::Trap,
                detail: why.clone(),
            });
        }
        let snapshot = self.call_with_deadline(
            sandbox::state_deadline_ticks(),
            |instance, store| instance.weir_transform_transform().call_snapshot(store),
            |_| Ok(()),
        )?;
        self.journal = Journal::after_snapshot(self.last_call);
        self.stats.snapshot_bytes = snapshot.len() as u64;
        self.stats.snapshots += 1;
        self.stats.snapshot_time_us += self.last_call.as_micros() as u64;
        // The previous restore point's packing is done by now, nearly always; waiting for it keeps one
        // packing per plugin at most, whatever the pace of snapshots, and its size gives this one's room.
        let snapshot = Arc::new(snapshot);
        let next = RestorePoint::pack(Arc::clone(&snapshot), self.restore_point());
        self.snapshot = Some(next);
        Ok(Some(snapshot))
    }

    /// Brings the restore point up to the state as of now, for a commit: a new snapshot if a call changed the
    /// state since the last one. Its packing may go on apart, so the stages of a commit pack side by side
    /// ([`Plugin::last_snapshot`] waits for it). If the plugin cannot take one, the commit must not go ahead
    /// with a stale state.
    pub fn update_snapshot(&mut self) -> Result<(), PluginFailure> {
        if self.plan.state.snapshot && !self.journal.calls.is_empty() {
            self.snapshot_now()?;
        }
        Ok(())
    }

    /// The snapshot [`Plugin::update_snapshot`] made current, without taking another.
    pub fn last_snapshot(&mut self) -> Option<&Snapshot> {
        self.restore_point()
    }

    /// The restore point, packed (waiting for its packing if need be).
    fn restore_point(&mut self) -> Option<&Snapshot> {
        let snapshot = self.snapshot.as_mut()?.get();
        self.stats.snapshot_packed_bytes = snapshot.packed().len() as u64;
        Some(snapshot)
    }

    /// Gives the plugin a snapshot a commit saved (of this version or an earlier one).
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        if !self.plan.state.snapshot {
            return Ok(());
        }
        let raw = snapshot
            .unpack()
            .map_err(|e| anyhow!("{}: {e:#}", self.label()))?;
        self.give_snapshot(&raw)?;
        self.stats.snapshot_packed_bytes = snapshot.packed().len() as u64;
        self.snapshot = Some(RestorePoint::from(snapshot.clone()));
        Ok(())
    }

    /// Gives the plugin the state `take_snapshot` took of the version it replaces (a hot swap).
    pub fn hand_over(&mut self, state: HandOver) -> Result<()> {
        if !self.plan.state.snapshot {
            return Ok(());
        }
        // The journaled batches carry the fields the old version read, in its order.
        if !state.since.is_empty() && state.shape != self.batch_shape() {
            anyhow::bail!(
                "{} reads other fields than the broken version it replaces, so it cannot repeat that \
                 version's calls since its last snapshot: deploy a version that reads the same fields, or \
                 restart (which starts again from the last commit)",
                self.label()
            );
        }
        self.give_snapshot(&state.snapshot)?;
        if state.since.is_empty() {
            let next = RestorePoint::pack(state.snapshot, self.restore_point());
            self.snapshot = Some(next);
            return Ok(());
        }
        repeat(&self.instance, &mut self.store, &state.since)
            .map_err(|e| anyhow!("{}: {e:#}", self.label()))?;
        self.snapshot_now().map_err(|f| {
            anyhow!(
                "{}: snapshot() failed after taking the state over: {f}",
                self.label()
            )
        })?;
        Ok(())
    }

    /// What the batches it is given hold besides ids and times: the fields it reads, in order, and
    /// whether payloads and attributes come too.
    fn batch_shape(&self) -> (Vec<String>, bool, bool) {
        (
            self.plan.reads.clone(),
            self.plan.needs_payload,
            self.plan.needs_attributes,
        )
    }

    /// Restores the plugin's in-memory state from `raw`; the caller sets the restore point.
    fn give_snapshot(&mut self, raw: &[u8]) -> Result<()> {
        self.call_with_deadline(
            sandbox::state_deadline_ticks(),
            |instance, store| instance.weir_transform_transform().call_restore(store, raw),
            |_| Ok(()),
        )?
        .map_err(|e| anyhow!("plugin {} refused the state snapshot: {e}", self.label()))?;
        self.stats.snapshot_bytes = raw.len() as u64;
        self.journal = Journal::default();
        Ok(())
    }

    /// Replaces the keyed state (restart from a checkpoint, or hand-over from the version being replaced).
    pub fn set_state(&mut self, state: KeyedState) {
        self.store.data_mut().state = state;
    }

    /// Takes the keyed state out, leaving this plugin with none (hand-over to the next version).
    pub fn take_state(&mut self) -> KeyedState {
        std::mem::take(&mut self.store.data_mut().state)
    }

    /// One call into the guest under the sandbox limits. Staged state writes and metrics are applied only if
    /// the call succeeds and its result passes `check`; otherwise they are forgotten with the instance.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&Instance, &mut Store<PluginCtx>) -> wasmtime::Result<R>,
        check: impl FnOnce(&R) -> Result<(), PluginFailure>,
    ) -> Result<R, PluginFailure> {
        self.call_with_deadline(self.limits.deadline_ticks(), f, check)
    }

    fn call_with_deadline<R>(
        &mut self,
        deadline_ticks: u64,
        f: impl FnOnce(&Instance, &mut Store<PluginCtx>) -> wasmtime::Result<R>,
        check: impl FnOnce(&R) -> Result<(), PluginFailure>,
    ) -> Result<R, PluginFailure> {
        set_deadline(&mut self.store, deadline_ticks);
        self.store.data_mut().memory.hit = false;
        let started = Instant::now();
        let outcome = f(&self.instance, &mut self.store);
        self.last_call = started.elapsed();
        self.stats.record_call(self.last_call);
        let ctx = self.store.data_mut();
        self.stats.guest_log_dropped_bytes += ctx.end_guest_output();
        self.stats.memory_bytes = ctx.memory.size as u64;
        let failure = match outcome {
            Ok(value) => match check(&value) {
                Ok(()) => {
                    let now = ctx.clock.now_ms();
                    ctx.state.commit(now);
                    self.stats.merge_metrics(&mut ctx.metrics);
                    return Ok(value);
                }
                Err(failure) => failure,
            },
            Err(error) => {
                tracing::debug!(plugin = %self.manifest.name, "call failed: {error:?}");
                PluginFailure::from_call_error(&error, ctx.memory.hit)
            }
        };
        self.stats.record_failure(failure.kind);
        self.replace_instance();
        Err(failure)
    }

    /// Keeps the restore point of a snapshot plugin current after a successful call, so a trap in the next one
    /// loses nothing: the call joins the journal, and a new snapshot replaces snapshot and journal once the
    /// journal has cost more than a few snapshots would (a snapshot copies the whole state, so taking one per
    /// batch would make a large window state quadratic), or holds too many events. `call` is only made (a
    /// batch copied) for plugins with snapshot state.
    fn refresh_snapshot(&mut self, call: impl FnOnce() -> Journaled, events: usize) {
        if !self.plan.state.snapshot {
            return;
        }
        let due = self.journal.push(call(), events, self.last_call);
        if due && let Err(failure) = self.snapshot_now() {
            tracing::warn!(plugin = %self.label(), "snapshot failed, keeping the previous one and its journal: {failure}");
        }
    }

    /// A fresh instance with the same config, keyed state (committed part) and last snapshot.
    fn replace_instance(&mut self) {
        self.stats.instance_restarts += 1;
        let ctx = self.store.data_mut();
        ctx.state.rollback();
        ctx.metrics = Default::default();
        let (clock, name) = (ctx.clock.clone(), ctx.plugin.clone());
        let restarted = instantiate(
            &self.loaded,
            name,
            &self.limits,
            clock,
            KeyedState::default(),
        )
        .and_then(|(mut store, instance)| {
            // The keyed state moves to the new instance only if it comes up: a broken plugin keeps it, for
            // the version that replaces it.
            store.data_mut().state = self.take_state();
            match self.bring_up(&mut store, &instance) {
                Ok(()) => Ok((store, instance)),
                Err(e) => {
                    self.set_state(std::mem::take(&mut store.data_mut().state));
                    Err(e)
                }
            }
        });
        match restarted {
            Ok((store, instance)) => {
                self.stats.memory_bytes = store.data().memory.size as u64;
                self.store = store;
                self.instance = instance;
            }
            Err(e) => {
                // Keep the host up: every later event is quarantined with this reason until the plugin is
                // replaced by a working version.
                let why = format!("plugin cannot be restarted after a failure: {e:#}");
                tracing::error!(plugin = %self.label(), "{why}");
                self.broken = Some(why);
            }
        }
    }

    /// Brings a replacement instance to where the one it replaces was: the same config (the plugin accepted
    /// it before, and init must be deterministic), the last snapshot, then the calls journaled since.
    fn bring_up(&mut self, store: &mut Store<PluginCtx>, instance: &Instance) -> Result<()> {
        let snapshot = self.restore_point().map(Snapshot::unpack).transpose()?;
        let guest = instance.weir_transform_transform();
        set_deadline(store, self.limits.setup_deadline_ticks());
        guest
            .call_init(&mut *store, &self.config)
            .map_err(|e| anyhow!("init() trapped: {e}"))?
            .map_err(|e| anyhow!("init() refused the config it accepted before: {e}"))?;
        if let Some(raw) = snapshot {
            set_deadline(store, sandbox::state_deadline_ticks());
            guest
                .call_restore(&mut *store, &raw)
                .map_err(|e| anyhow!("restore() trapped: {e}"))?
                .map_err(|e| anyhow!("restore() refused its own snapshot: {e}"))?;
        }
        // What init and restore printed is counted here, and not against the first repeated call's budget.
        self.stats.guest_log_dropped_bytes += store.data().end_guest_output();
        repeat(instance, store, &self.journal.calls)
    }
}

/// A plugin's in-memory state, handed from the version a hot swap replaces to the new one: a snapshot, and the
/// calls made since it (only when the old version was broken and could not take a snapshot of now).
pub struct HandOver {
    snapshot: Arc<Vec<u8>>,
    since: Vec<Journaled>,
    /// The old version's batch shape (see `Plugin::batch_shape`), which `since` was made for.
    shape: (Vec<String>, bool, bool),
}

fn instantiate(
    loaded: &LoadedPlugin,
    name: Arc<str>,
    limits: &Limits,
    clock: Clock,
    state: KeyedState,
) -> Result<(Store<PluginCtx>, Instance)> {
    let mut store = Store::new(
        sandbox::engine(),
        PluginCtx::new(name, limits, clock, state),
    );
    store.limiter(|ctx| &mut ctx.memory);
    store.epoch_deadline_trap();
    set_deadline(&mut store, limits.setup_deadline_ticks());
    let instance = loaded
        .pre
        .instantiate(&mut store)
        .map_err(|e| anyhow!("{}: cannot instantiate: {e:#}", loaded.path.display()))?;
    Ok((store, instance))
}

fn classify(store: &Store<PluginCtx>, error: &wasmtime::Error) -> PluginFailure {
    PluginFailure::from_call_error(error, store.data().memory.hit)
}

fn check_plan(manifest: &Manifest, plan: &Plan) -> Result<()> {
    for path in plan.reads.iter().chain(&plan.writes) {
        crate::event::JsonPath::parse(path).map_err(|e| {
            anyhow!(
                "plugin {} declared a bad field path {path:?}: {e}",
                manifest.name
            )
        })?;
    }
    if let Some(table) = plan.emits.iter().find(|t| t.is_empty()) {
        anyhow::bail!(
            "plugin {} declared an empty table name in `emits` ({table:?})",
            manifest.name
        );
    }
    Ok(())
}

/// Checks a call's output against the contract and the limits.
fn check_output(
    output: &Output,
    events: usize,
    writes: usize,
    emits: &[String],
    limits: &Limits,
) -> Result<(), PluginFailure> {
    if output.verdicts.len() != events {
        return Err(PluginFailure::bad_output(format!(
            "returned {} verdicts for {events} events",
            output.verdicts.len()
        )));
    }
    if output.writes.len() > writes {
        return Err(PluginFailure::bad_output(format!(
            "returned {} write columns but its plan declares {writes} writes",
            output.writes.len()
        )));
    }
    let mut size = check_rows(&output.rows, emits, limits)?;
    for (i, column) in output.writes.iter().enumerate() {
        columns::check_column(column, events)
            .map_err(|e| PluginFailure::bad_output(format!("write column {i} {e}")))?;
        size += columns::column_size(column);
    }
    for verdict in &output.verdicts {
        size += 8;
        match verdict {
            Verdict::Keep => {}
            Verdict::Drop(rule) => size += rule.len() as u64,
            Verdict::Quarantine(q) => {
                size += q.reason.len() as u64
                    + q.failed_checks
                        .iter()
                        .map(|c| c.len() as u64 + 8)
                        .sum::<u64>()
            }
        }
    }
    if size > limits.output_bytes {
        return Err(PluginFailure::bad_output(format!(
            "returned about {size} bytes, over limits.output_bytes = {}",
            limits.output_bytes
        )));
    }
    Ok(())
}

/// Checks emitted rows; returns their approximate size in bytes.
fn check_rows(rows: &[Row], emits: &[String], limits: &Limits) -> Result<u64, PluginFailure> {
    if rows.len() > limits.max_rows {
        return Err(PluginFailure::bad_output(format!(
            "emitted {} rows in one call, over limits.max_rows = {}",
            rows.len(),
            limits.max_rows
        )));
    }
    let mut size = 0;
    for row in rows {
        if !emits.contains(&row.table) {
            return Err(PluginFailure::bad_output(format!(
                "emitted a row for table {:?}, which its plan does not list in `emits`",
                row.table
            )));
        }
        size += row.table.len() as u64
            + row
                .columns
                .iter()
                .map(|(c, v)| c.len() as u64 + value_size(v))
                .sum::<u64>();
    }
    if size > limits.output_bytes {
        return Err(PluginFailure::bad_output(format!(
            "emitted about {size} bytes of rows, over limits.output_bytes = {}",
            limits.output_bytes
        )));
    }
    Ok(size)
}

fn value_size(value: &Value) -> u64 {
    match value {
        Value::Text(s) | Value::Json(s) => 8 + s.len() as u64,
        _ => 8,
    }
}

/// Re-exported for callers that build events.
pub use bindings::types;
