//! Projection: turning events into the batch one plugin asked for (its read paths, column-wise), and applying
//! that plugin's writes back.

use super::{Event, FieldValue, Layout, Slot};
use crate::runtime::columns::{ColumnBuilder, StringsBuilder};
use crate::runtime::types::{Batch, Plan};
use crate::runtime::{BatchResult, WriteChunk};

/// A plugin's plan, compiled against a layout.
#[derive(Clone, Debug)]
pub struct Projection {
    reads: Vec<Slot>,
    writes: Vec<Slot>,
    needs_payload: bool,
    needs_attributes: bool,
}

impl Projection {
    /// Fails, naming the path, when the layout lacks a path of the plan (the layout was not built for it).
    pub fn new(layout: &Layout, plan: &Plan) -> Result<Self, String> {
        let slots = |paths: &[String]| {
            paths
                .iter()
                .map(|p| {
                    layout
                        .slot(p)
                        .ok_or_else(|| format!("the event layout has no slot for {p:?}"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Projection {
            reads: slots(&plan.reads)?,
            writes: slots(&plan.writes)?,
            needs_payload: plan.needs_payload,
            needs_attributes: plan.needs_attributes,
        })
    }

    pub fn reads(&self) -> &[Slot] {
        &self.reads
    }

    /// The events as the plugin's batch: ids, times, one column per read path, and payloads and attributes
    /// when the plan asks for them.
    pub fn batch(&self, events: &[Event]) -> Batch {
        let n = events.len();
        let mut ids = StringsBuilder::with_capacity(n, n * 40);
        let mut columns: Vec<ColumnBuilder> = self
            .reads
            .iter()
            .map(|_| ColumnBuilder::with_capacity(n))
            .collect();
        // Event by event, not column by column: each event's raw text is read while it is in cache.
        for event in events {
            ids.push(&event.id);
            for (column, &slot) in columns.iter_mut().zip(&self.reads) {
                column.push(event.value(slot));
            }
        }
        let fields = columns.into_iter().map(ColumnBuilder::finish).collect();
        let payloads = if self.needs_payload {
            let mut payloads = StringsBuilder::with_capacity(n, n * 1200);
            for event in events {
                payloads.push(&event.to_json_text());
            }
            payloads.finish()
        } else {
            StringsBuilder::empty()
        };
        Batch {
            ids: ids.finish(),
            times: events.iter().map(|e| e.time_ms).collect(),
            fields,
            payloads,
            attributes: if self.needs_attributes {
                events.iter().map(|e| e.attributes.clone()).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Applies one chunk of a plugin's writes to `events` (the chunk's rows are `events[chunk.start..]`), only
    /// to events the plugin kept. An event whose writes cannot be applied (bad JSON text, a path crossing a
    /// scalar) is reported with the reason, its fields left as they were, and the caller quarantines it.
    pub fn apply(
        &self,
        events: &mut [Event],
        result: &BatchResult,
        chunk: &WriteChunk,
        failed: &mut Vec<(usize, String)>,
    ) {
        let Some(rows) = chunk.columns.first().map(|c| c.kinds.len()) else {
            return;
        };
        let columns = chunk.checked(rows);
        for row in 0..rows {
            let index = chunk.start + row;
            if !matches!(result.verdicts[index], crate::runtime::types::Verdict::Keep) {
                continue;
            }
            let event = &mut events[index];
            let mut writes = Vec::new();
            for (field, column) in columns.iter().enumerate() {
                if let Some(value) = column.get(row) {
                    let slot = self.writes[field];
                    match FieldValue::from_ref(value) {
                        Ok(value) => writes.push((slot, value)),
                        Err(e) => {
                            failed.push((
                                index,
                                format!("write to {}: {e}", event.layout().path(slot).as_str()),
                            ));
                            writes.clear();
                            break;
                        }
                    }
                }
            }
            if let Err(e) = event.set_all(writes) {
                failed.push((index, e));
            }
        }
    }
}
