//! A chain of plugins run over batches of events: each stage sees the events the previous one kept, projected
//! for its plan, and its writes are applied to the host's parsed document before the next stage.

use std::sync::Arc;

use anyhow::anyhow;
use serde::Serialize;

use crate::config::OnError;
use crate::event::{Event, EventShape, JsonPath, Layout, Parser, Projection};
use crate::runtime::types::{Row, Verdict};
use crate::runtime::{FailureKind, Plugin, PluginFailure};

/// Two stages emitting rows into one gold table (see [`check_emits`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "emits rows into {table}, as stage {first} does: each would write its own rows for a window, and the \
     table would count its events twice; give each aggregate its own `table`"
)]
pub struct EmitsTwice {
    /// The later stage, where the configuration went wrong (a copied aggregate config that kept its table).
    pub stage: String,
    pub first: String,
    pub table: String,
}

/// Refuses two stages (`(name, plugin)`, in stage order) that emit rows into the same gold table.
pub fn check_emits<'a>(
    stages: impl IntoIterator<Item = (&'a str, &'a Plugin)>,
) -> Result<(), EmitsTwice> {
    let mut owners: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for (stage, plugin) in stages {
        for table in &plugin.plan().emits {
            let table = crate::lake::schema::gold_table(table);
            match owners.get(table.as_str()) {
                Some(&first) if first != stage => {
                    return Err(EmitsTwice {
                        stage: stage.to_string(),
                        first: first.to_string(),
                        table,
                    });
                }
                _ => {
                    owners.insert(table, stage);
                }
            }
        }
    }
    Ok(())
}

/// One plugin of a chain with its projection, compiled against the chain's layout.
pub struct Stage {
    /// The stage's name in the pipeline (`gold_wiki`); the plugin's own name unless the chain is `named`.
    name: String,
    plugin: Plugin,
    projection: Projection,
    /// Where events the plugin fails on go.
    on_error: OnError,
}

impl Stage {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    pub fn plugin_mut(&mut self) -> &mut Plugin {
        &mut self.plugin
    }
}

/// An event a stage dropped, with the rule that dropped it.
#[derive(Debug)]
pub struct Dropped {
    pub event: Event,
    pub stage: String,
    pub plugin: String,
    pub rule: String,
}

/// An event a stage quarantined, with the reason and the checks it failed.
#[derive(Debug, Serialize)]
pub struct Quarantined {
    #[serde(skip)]
    pub event: Event,
    pub stage: String,
    pub plugin: String,
    pub reason: String,
    pub failed_checks: Vec<String>,
    /// Quarantined by a stage that emits rows (an aggregate): the event stays in the chain's output (it is a
    /// good event; only the aggregate could not count it) and goes to the gold quarantine.
    pub gold: bool,
}

/// A row emitted by an aggregate, with the plugin that emitted it.
#[derive(Debug)]
pub struct EmittedRow {
    pub stage: String,
    pub plugin: String,
    pub row: Row,
}

/// Where every event of a batch went. Every event is in exactly one of `kept`, `dropped` and the quarantined
/// entries with `gold == false`; events an aggregate quarantined (`gold == true`) are in `kept` too.
#[derive(Debug, Default)]
pub struct ChainOutput {
    pub kept: Vec<Event>,
    pub dropped: Vec<Dropped>,
    pub quarantined: Vec<Quarantined>,
    pub rows: Vec<EmittedRow>,
    /// Events passed on by stages whose `on_error` is `skip`, by stage name.
    pub skipped: Vec<String>,
    /// Set when a stage whose `on_error` is `stop` failed on an event: what failed, on which event. The
    /// rest of the output is then incomplete and must not be committed.
    pub stop: Option<String>,
}

/// The layout and projections of a chain with one stage replaced (see [`Chain::replacement`]).
pub struct Replacement {
    index: usize,
    layout: Arc<Layout>,
    projections: Vec<Projection>,
}

/// Plugins in order, and the layout of the events they see: the paths any of them reads or writes, the id,
/// key and time paths, and the extra paths the caller reads afterwards (table columns).
pub struct Chain {
    shape: EventShape,
    extra_reads: Vec<JsonPath>,
    layout: Arc<Layout>,
    stages: Vec<Stage>,
}

impl Chain {
    /// A chain over Wikimedia-shaped events (`meta.id`, `meta.dt`).
    pub fn new(plugins: Vec<Plugin>) -> anyhow::Result<Self> {
        Chain::with_shape(EventShape::default(), plugins, Vec::new())
    }

    /// A chain over events of `shape`; `extra_reads` are paths read from kept events after the chain.
    pub fn with_shape(
        shape: EventShape,
        plugins: Vec<Plugin>,
        extra_reads: Vec<JsonPath>,
    ) -> anyhow::Result<Self> {
        let layout = build_layout(&shape, plugins.iter(), &extra_reads)?;
        let stages = plugins
            .into_iter()
            .map(|plugin| {
                let projection = Projection::new(&layout, plugin.plan())
                    .map_err(|e| anyhow!("{}: {e}", plugin.label()))?;
                Ok(Stage {
                    name: plugin.manifest().name.clone(),
                    plugin,
                    projection,
                    on_error: OnError::default(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Chain {
            shape,
            extra_reads,
            layout,
            stages,
        })
    }

    /// Names the stages as the pipeline does (`gold_wiki`, `gold_user`: several stages may run one plugin),
    /// for lineage, drops and quarantine rows.
    pub fn named(mut self, names: &[String]) -> Self {
        for (stage, name) in self.stages.iter_mut().zip(names) {
            stage.name = name.clone();
        }
        self
    }

    /// Sets what each stage does with the events its plugin fails on, in stage order.
    pub fn on_error(mut self, policies: &[OnError]) -> Self {
        for (stage, policy) in self.stages.iter_mut().zip(policies) {
            stage.on_error = *policy;
        }
        self
    }

    /// Parses raw events for this chain.
    pub fn parser(&self) -> Parser {
        Parser::new(self.layout.clone())
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    pub fn shape(&self) -> &EventShape {
        &self.shape
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn stages_mut(&mut self) -> &mut [Stage] {
        &mut self.stages
    }

    /// Checks that `plugin` can take the place of stage `index`: the layout and projections the chain would
    /// have with it, for [`Chain::replace_stage`]. Nothing changes, so a swap can be refused before any state
    /// moves.
    pub fn replacement(&self, index: usize, plugin: &Plugin) -> anyhow::Result<Replacement> {
        check_emits(
            self.stages
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.as_str(), if i == index { plugin } else { &s.plugin })),
        )
        .map_err(|e| anyhow!("stage {}: {e}", e.stage))?;
        let plans = self
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| if i == index { plugin } else { &s.plugin });
        let layout = build_layout(&self.shape, plans, &self.extra_reads)?;
        let mut projections = Vec::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            let p = if i == index { plugin } else { &stage.plugin };
            projections.push(
                Projection::new(&layout, p.plan()).map_err(|e| anyhow!("{}: {e}", p.label()))?,
            );
        }
        Ok(Replacement {
            index,
            layout,
            projections,
        })
    }

    /// Puts `plugin` in place of the stage `replacement` was made for, and returns the plugin it replaces.
    /// The layout is rebuilt for the new plan; events parsed for the previous layout are laid out again when
    /// they next run.
    pub fn replace_stage(&mut self, replacement: Replacement, plugin: Plugin) -> Plugin {
        for (stage, projection) in self.stages.iter_mut().zip(replacement.projections) {
            stage.projection = projection;
        }
        self.layout = replacement.layout;
        std::mem::replace(&mut self.stages[replacement.index].plugin, plugin)
    }

    pub fn run(&mut self, events: Vec<Event>) -> ChainOutput {
        let mut out = ChainOutput::default();
        let mut current = events;
        for event in &mut current {
            event.relayout(&self.layout);
        }
        for stage in &mut self.stages {
            if current.is_empty() {
                break;
            }
            let batch = stage.projection.batch(&current);
            let mut result = stage.plugin.process(&batch);
            drop(batch);
            let label = stage.plugin.label();
            let name = &stage.name;
            out.rows.extend(
                std::mem::take(&mut result.rows)
                    .into_iter()
                    .map(|row| EmittedRow {
                        stage: name.clone(),
                        plugin: label.clone(),
                        row,
                    }),
            );
            let mut failed_writes = Vec::new();
            for chunk in &result.writes {
                stage
                    .projection
                    .apply(&mut current, &result, chunk, &mut failed_writes);
            }
            let mut failed_writes = failed_writes.into_iter().peekable();
            let mut failed_calls = result.failed.iter().peekable();
            let mut next = Vec::with_capacity(current.len());
            let gold = !stage.plugin.plan().emits.is_empty();
            for (index, (event, verdict)) in current.into_iter().zip(result.verdicts).enumerate() {
                let mut write_error = None;
                while let Some((_, e)) = failed_writes.next_if(|(i, _)| *i == index) {
                    write_error.get_or_insert(e);
                }
                let call_failed = failed_calls.next_if(|&&i| i == index).is_some();
                if call_failed || write_error.is_some() {
                    let failure = || failure_of(&verdict, write_error.as_deref());
                    // An aggregate's verdicts decide what it counts, not whether the event is good: for it,
                    // `drop` leaves the event to silver uncounted, as `skip` does.
                    let policy = match stage.on_error {
                        OnError::Drop if gold => OnError::Skip,
                        policy => policy,
                    };
                    match policy {
                        OnError::Quarantine => {}
                        OnError::Skip => {
                            out.skipped.push(name.clone());
                            next.push(event);
                            continue;
                        }
                        OnError::Drop => {
                            out.dropped.push(Dropped {
                                event,
                                stage: name.clone(),
                                plugin: label.clone(),
                                rule: format!("on_error:{}", failure().0),
                            });
                            continue;
                        }
                        OnError::Stop => {
                            let (reason, detail) = failure();
                            out.stop = Some(format!(
                                "stage {name} ({label}) failed on event {} ({reason}: {detail}), and its \
                                 on_error is \"stop\"",
                                event.id
                            ));
                            return out;
                        }
                    }
                }
                if gold {
                    // An aggregate's verdict decides what it counts, not whether the event is good.
                    let (reason, failed_checks) = match (verdict, write_error) {
                        (Verdict::Keep, None) => {
                            next.push(event);
                            continue;
                        }
                        (_, Some(e)) => (
                            crate::runtime::FailureKind::BadOutput.reason().into(),
                            vec![e],
                        ),
                        (Verdict::Drop(rule), None) => (rule, Vec::new()),
                        (Verdict::Quarantine(q), None) => (q.reason, q.failed_checks),
                    };
                    out.quarantined.push(Quarantined {
                        event: event.clone(),
                        stage: name.clone(),
                        plugin: label.clone(),
                        reason,
                        failed_checks,
                        gold: true,
                    });
                    next.push(event);
                    continue;
                }
                match (verdict, write_error) {
                    (Verdict::Keep, None) => next.push(event),
                    (Verdict::Keep, Some(e)) => out.quarantined.push(Quarantined {
                        event,
                        stage: name.clone(),
                        plugin: label.clone(),
                        reason: crate::runtime::FailureKind::BadOutput.reason().into(),
                        failed_checks: vec![e],
                        gold: false,
                    }),
                    (Verdict::Drop(rule), _) => out.dropped.push(Dropped {
                        event,
                        stage: name.clone(),
                        plugin: label.clone(),
                        rule,
                    }),
                    (Verdict::Quarantine(q), _) => out.quarantined.push(Quarantined {
                        event,
                        stage: name.clone(),
                        plugin: label.clone(),
                        reason: q.reason,
                        failed_checks: q.failed_checks,
                        gold: false,
                    }),
                }
            }
            current = next;
        }
        out.kept = current;
        out
    }

    /// Advances event time in every stage; returns the rows closed windows emit. A stage that fails here has
    /// its instance replaced (its state survives through keyed state and snapshots); the failure is returned
    /// alongside the rows of the stages that succeeded.
    pub fn on_watermark(
        &mut self,
        watermark_ms: i64,
    ) -> (Vec<EmittedRow>, Vec<(String, PluginFailure)>) {
        let mut rows = Vec::new();
        let failures = self.on_watermark_parts(watermark_ms, |part| rows.extend(part));
        (rows, failures)
    }

    /// [`Chain::on_watermark`], handing the rows to `each` part by part as the plugins return them, so a
    /// large closing never needs to be held whole (see `on-watermark` in the WIT contract).
    pub fn on_watermark_parts(
        &mut self,
        watermark_ms: i64,
        mut each: impl FnMut(Vec<EmittedRow>),
    ) -> Vec<(String, PluginFailure)> {
        let mut failures = Vec::new();
        for stage in &mut self.stages {
            if stage.plugin.plan().emits.is_empty() && !stage.plugin.plan().state.snapshot {
                continue;
            }
            let label = stage.plugin.label();
            // A full part asks for another call with the same watermark.
            for _ in 0..MAX_WATERMARK_CALLS {
                match stage.plugin.on_watermark(watermark_ms) {
                    Ok(emitted) => {
                        let more = emitted.len() >= weir_sdk::WATERMARK_PART_ROWS;
                        if !emitted.is_empty() {
                            each(
                                emitted
                                    .into_iter()
                                    .map(|row| EmittedRow {
                                        stage: stage.name.clone(),
                                        plugin: label.clone(),
                                        row,
                                    })
                                    .collect(),
                            );
                        }
                        if !more {
                            break;
                        }
                    }
                    Err(failure) => {
                        failures.push((label, failure));
                        break;
                    }
                }
            }
        }
        failures
    }
}

/// Calls of `on-watermark` per stage and watermark at most (a million rows in parts): a plugin that returns
/// full parts on every call, with nothing left to close, still gets its turn ended.
const MAX_WATERMARK_CALLS: usize = 128;

fn build_layout<'a>(
    shape: &EventShape,
    plugins: impl Iterator<Item = &'a Plugin>,
    extra_reads: &[JsonPath],
) -> anyhow::Result<Arc<Layout>> {
    let mut reads = extra_reads.to_vec();
    let mut writes = Vec::new();
    for plugin in plugins {
        let parse = |p: &String| {
            JsonPath::parse(p).map_err(|e| anyhow!("{}: bad field path {p:?}: {e}", plugin.label()))
        };
        for p in &plugin.plan().reads {
            reads.push(parse(p)?);
        }
        for p in &plugin.plan().writes {
            writes.push(parse(p)?);
        }
    }
    Ok(Arc::new(
        Layout::new(shape, &reads, &writes).map_err(|e| anyhow!("{e}"))?,
    ))
}

/// The reason and detail of a plugin's failure on one event: a write it got wrong, or the host's quarantine
/// verdict for a failed call.
fn failure_of(verdict: &Verdict, write_error: Option<&str>) -> (String, String) {
    match (verdict, write_error) {
        (_, Some(e)) => (FailureKind::BadOutput.reason().to_string(), e.to_string()),
        (Verdict::Quarantine(q), None) => (q.reason.clone(), q.failed_checks.join("; ")),
        (other, None) => ("plugin_failed".to_string(), format!("{other:?}")),
    }
}
