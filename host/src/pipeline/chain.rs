//! A chain of plugins run over batches of events: each stage sees the events the previous one kept, projected
//! for its plan, and its writes are applied to the host's parsed document before the next stage.

use serde::Serialize;

use crate::event::{Event, Projection};
use crate::runtime::types::{Row, Verdict};
use crate::runtime::{Plugin, PluginFailure};

/// One plugin of a chain with its compiled projection.
pub struct Stage {
    plugin: Plugin,
    projection: Projection,
}

impl Stage {
    pub fn new(plugin: Plugin) -> anyhow::Result<Self> {
        let projection = Projection::from_plan(plugin.plan())
            .map_err(|e| anyhow::anyhow!("{}: {e}", plugin.label()))?;
        Ok(Stage { plugin, projection })
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
    pub plugin: String,
    pub rule: String,
}

/// An event a stage quarantined, with the reason and the checks it failed.
#[derive(Debug, Serialize)]
pub struct Quarantined {
    #[serde(skip)]
    pub event: Event,
    pub plugin: String,
    pub reason: String,
    pub failed_checks: Vec<String>,
}

/// A row emitted by an aggregate, with the plugin that emitted it.
#[derive(Debug)]
pub struct EmittedRow {
    pub plugin: String,
    pub row: Row,
}

/// Where every event of a batch went. `kept.len() + dropped.len() + quarantined.len()` is the batch size.
#[derive(Debug, Default)]
pub struct ChainOutput {
    pub kept: Vec<Event>,
    pub dropped: Vec<Dropped>,
    pub quarantined: Vec<Quarantined>,
    pub rows: Vec<EmittedRow>,
}

#[derive(Default)]
pub struct Chain {
    stages: Vec<Stage>,
}

impl Chain {
    pub fn new(plugins: Vec<Plugin>) -> anyhow::Result<Self> {
        Ok(Chain {
            stages: plugins
                .into_iter()
                .map(Stage::new)
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn stages_mut(&mut self) -> &mut [Stage] {
        &mut self.stages
    }

    pub fn run(&mut self, events: Vec<Event>) -> ChainOutput {
        let mut out = ChainOutput::default();
        let mut current = events;
        for stage in &mut self.stages {
            if current.is_empty() {
                break;
            }
            let projected: Vec<_> = current
                .iter()
                .map(|e| stage.projection.project(e))
                .collect();
            let result = stage.plugin.process(&projected);
            drop(projected);
            let label = stage.plugin.label();
            out.rows
                .extend(result.rows.into_iter().map(|row| EmittedRow {
                    plugin: label.clone(),
                    row,
                }));
            let mut next = Vec::with_capacity(current.len());
            for (mut event, outcome) in current.into_iter().zip(result.outcomes) {
                match outcome.verdict {
                    Verdict::Keep => match stage.projection.apply(&mut event, outcome.writes) {
                        Ok(()) => next.push(event),
                        Err(e) => out.quarantined.push(Quarantined {
                            event,
                            plugin: label.clone(),
                            reason: crate::runtime::FailureKind::BadOutput.reason().into(),
                            failed_checks: vec![e],
                        }),
                    },
                    Verdict::Drop(rule) => out.dropped.push(Dropped {
                        event,
                        plugin: label.clone(),
                        rule,
                    }),
                    Verdict::Quarantine(q) => out.quarantined.push(Quarantined {
                        event,
                        plugin: label.clone(),
                        reason: q.reason,
                        failed_checks: q.failed_checks,
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
        let mut failures = Vec::new();
        for stage in &mut self.stages {
            if stage.plugin.plan().emits.is_empty() && !stage.plugin.plan().state.snapshot {
                continue;
            }
            let label = stage.plugin.label();
            match stage.plugin.on_watermark(watermark_ms) {
                Ok(emitted) => rows.extend(emitted.into_iter().map(|row| EmittedRow {
                    plugin: label.clone(),
                    row,
                })),
                Err(failure) => failures.push((label, failure)),
            }
        }
        (rows, failures)
    }
}
