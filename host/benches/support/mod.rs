//! Shared by the benchmarks: the native path. A natively compiled plugin gets exactly the batch a component
//! gets (built by the same projection), and its output is applied by the same code; only the sandbox boundary
//! is missing.

use weir::event::{Event, Projection};
use weir::runtime::types;
use weir::runtime::{BatchResult, WriteChunk};
use weir_sdk::bindings::weir::transform::types as sdk;

/// Runs a native plugin over `events` as `Plugin::process` runs a component: the same batch in, the same
/// result out. Also returns the number of rows emitted.
pub fn decide_native<P: weir_sdk::Plugin>(
    plugin: &mut P,
    projection: &Projection,
    events: &[Event],
) -> (BatchResult, usize) {
    let batch = weir_sdk::Batch::from(to_sdk(projection.batch(events)));
    let output = plugin.process_batch(&batch);
    let rows = output.rows.len();
    let result = BatchResult {
        verdicts: output.verdicts.into_iter().map(verdict).collect(),
        writes: if output.writes.is_empty() {
            Vec::new()
        } else {
            vec![WriteChunk {
                start: 0,
                columns: output.writes.into_iter().map(column).collect(),
            }]
        },
        rows: Vec::new(),
        failed: Vec::new(),
    };
    (result, rows)
}

/// [`decide_native`], then the writes applied and the events the plugin did not keep removed, as the chain
/// does; returns the rows emitted.
#[allow(dead_code, reason = "each benchmark binary uses part of this module")]
pub fn run_native<P: weir_sdk::Plugin>(
    plugin: &mut P,
    projection: &Projection,
    events: &mut Vec<Event>,
) -> usize {
    let (result, rows) = decide_native(plugin, projection, events);
    let mut failed = Vec::new();
    for chunk in &result.writes {
        projection.apply(events, &result, chunk, &mut failed);
    }
    assert!(failed.is_empty(), "native writes failed: {failed:?}");
    let mut verdicts = result.verdicts.iter();
    events.retain(|_| matches!(verdicts.next(), Some(types::Verdict::Keep)));
    rows
}

fn to_sdk(batch: types::Batch) -> sdk::Batch {
    let strings = |s: types::Strings| sdk::Strings {
        bytes: s.bytes,
        offsets: s.offsets,
    };
    sdk::Batch {
        ids: strings(batch.ids),
        times: batch.times,
        fields: batch
            .fields
            .into_iter()
            .map(|c| sdk::Column {
                kinds: c.kinds,
                integers: c.integers,
                floats: c.floats,
                text: strings(c.text),
            })
            .collect(),
        payloads: strings(batch.payloads),
        attributes: batch.attributes,
    }
}

fn column(c: sdk::Column) -> types::Column {
    types::Column {
        kinds: c.kinds,
        integers: c.integers,
        floats: c.floats,
        text: types::Strings {
            bytes: c.text.bytes,
            offsets: c.text.offsets,
        },
    }
}

fn verdict(v: sdk::Verdict) -> types::Verdict {
    match v {
        sdk::Verdict::Keep => types::Verdict::Keep,
        sdk::Verdict::Drop(rule) => types::Verdict::Drop(rule),
        sdk::Verdict::Quarantine(q) => types::Verdict::Quarantine(types::Quarantine {
            reason: q.reason,
            failed_checks: q.failed_checks,
        }),
    }
}
