//! The calls a snapshot plugin made since its restore point, kept to be repeated: a replacement instance (after
//! a trap, or a broken version's successor) gets the restore point, then these calls, and is where the old
//! instance was.
//!
//! The journal copies every batch it keeps, so it is one of the pipeline's larger costs in memory: up to
//! [`MAX_EVENTS`] events per aggregate. The aggregates of a pipeline see the same events, so the ids and
//! times of a batch, half of its bytes, are kept once for all of them.

use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Result, anyhow};
use wasmtime::Store;

use super::bindings::Plugin as Instance;
use super::bindings::types::{Batch, Strings};
use super::context::{PluginCtx, set_deadline};
use super::sandbox;

/// A new snapshot is taken once the calls journaled since the last one took this many times as long as that
/// snapshot did: snapshots then cost at most ~1/(N+1) of the plugin's time, whatever the size of its state,
/// and repeating the journal after a trap takes at most N snapshots' time. At 4, restore points and commit
/// snapshots were a quarter of the four aggregates' time in pipeline_throughput (7.4 of 27.5 s at 1M events).
const COST_RATIO: u32 = 8;
/// ... or once the journal holds this many events (bounds its memory and the time a restart spends repeating).
const MAX_EVENTS: usize = 50_000;

/// Successful calls since the last snapshot, to repeat on a replacement instance.
#[derive(Default)]
pub struct Journal {
    pub calls: Vec<Journaled>,
    events: usize,
    /// Time those calls took.
    spent: Duration,
    /// Time the last snapshot took.
    snapshot_cost: Duration,
}

impl Journal {
    /// An empty journal after a snapshot that took `cost`.
    pub fn after_snapshot(cost: Duration) -> Journal {
        Journal {
            snapshot_cost: cost,
            ..Journal::default()
        }
    }

    /// Adds a call of `events` events that took `spent`; returns whether a new snapshot is due.
    pub fn push(&mut self, call: Journaled, events: usize, spent: Duration) -> bool {
        self.calls.push(call);
        self.events += events;
        self.spent += spent;
        self.spent >= self.snapshot_cost * COST_RATIO || self.events >= MAX_EVENTS
    }
}

#[derive(Clone)]
pub enum Journaled {
    Process(JournaledBatch),
    Watermark(i64),
}

/// A batch as the journal keeps it: its ids and times shared with the other journals that hold the same events.
#[derive(Clone)]
pub struct JournaledBatch {
    ids_and_times: Arc<IdsAndTimes>,
    /// The rest of the batch; its ids and times are empty.
    rest: Batch,
}

struct IdsAndTimes {
    ids: Strings,
    times: Vec<i64>,
}

thread_local! {
    /// The ids and times journaled last on this thread (the pipeline's, where a chain's stages run one after
    /// another): the next stage to journal the same events shares them. Weak, so the cache keeps nothing
    /// alive that no journal holds.
    static LAST_IDS_AND_TIMES: RefCell<Weak<IdsAndTimes>> = const { RefCell::new(Weak::new()) };
}

impl JournaledBatch {
    pub fn new(batch: &Batch) -> JournaledBatch {
        let ids_and_times = LAST_IDS_AND_TIMES.with_borrow_mut(|last| {
            // Comparing costs a pass over 48 bytes per event, less than copying them.
            if let Some(shared) = last.upgrade()
                && shared.times == batch.times
                && shared.ids.offsets == batch.ids.offsets
                && shared.ids.bytes == batch.ids.bytes
            {
                return shared;
            }
            let shared = Arc::new(IdsAndTimes {
                ids: batch.ids.clone(),
                times: batch.times.clone(),
            });
            *last = Arc::downgrade(&shared);
            shared
        });
        JournaledBatch {
            ids_and_times,
            rest: Batch {
                ids: Strings {
                    bytes: Vec::new(),
                    offsets: Vec::new(),
                },
                times: Vec::new(),
                fields: batch.fields.clone(),
                payloads: batch.payloads.clone(),
                attributes: batch.attributes.clone(),
            },
        }
    }

    /// The batch as it was given to the plugin.
    fn whole(&self) -> Batch {
        Batch {
            ids: self.ids_and_times.ids.clone(),
            times: self.ids_and_times.times.clone(),
            ..self.rest.clone()
        }
    }
}

/// Brings a fresh instance's in-memory state up to date by repeating `calls`, which succeeded since the
/// snapshot it was given. Their outputs, keyed-state writes and metrics were taken the first time: they are
/// dropped now.
pub fn repeat(
    instance: &Instance,
    store: &mut Store<PluginCtx>,
    calls: &[Journaled],
) -> Result<()> {
    store.data_mut().repeating = true;
    let repeated = repeat_each(instance, store, calls);
    store.data_mut().repeating = false;
    repeated
}

fn repeat_each(
    instance: &Instance,
    store: &mut Store<PluginCtx>,
    calls: &[Journaled],
) -> Result<()> {
    let guest = instance.weir_transform_transform();
    for call in calls {
        set_deadline(store, sandbox::state_deadline_ticks());
        let repeated = match call {
            Journaled::Process(batch) => guest
                .call_process(&mut *store, &batch.whole())
                .map(drop)
                .map_err(|e| anyhow!("repeating a journaled batch trapped: {e}")),
            Journaled::Watermark(w) => guest
                .call_on_watermark(&mut *store, *w)
                .map(drop)
                .map_err(|e| anyhow!("repeating a journaled watermark trapped: {e}")),
        };
        // Failed or not: a failed call's writes must not stay staged either.
        let ctx = store.data_mut();
        ctx.state.rollback();
        ctx.metrics = Default::default();
        // Each repeated call gets a call's log budget, as it did the first time, when what went over it was
        // counted.
        ctx.end_guest_output();
        repeated?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ids: &[&str], field: &str) -> Batch {
        let strings = |texts: &[&str]| {
            let mut offsets = vec![0];
            let mut bytes = Vec::new();
            for text in texts {
                bytes.extend_from_slice(text.as_bytes());
                offsets.push(bytes.len() as u32);
            }
            Strings { bytes, offsets }
        };
        Batch {
            ids: strings(ids),
            times: (0..ids.len() as i64).collect(),
            fields: Vec::new(),
            payloads: strings(&[field]),
            attributes: Vec::new(),
        }
    }

    fn same(a: &Batch, b: &Batch) -> bool {
        a.ids.bytes == b.ids.bytes
            && a.ids.offsets == b.ids.offsets
            && a.times == b.times
            && a.payloads.bytes == b.payloads.bytes
    }

    #[test]
    fn journals_of_the_same_events_share_their_ids_and_times() {
        let (a, b) = (batch(&["x", "y"], "a"), batch(&["x", "y"], "b"));
        let (first, second) = (JournaledBatch::new(&a), JournaledBatch::new(&b));
        assert!(Arc::ptr_eq(&first.ids_and_times, &second.ids_and_times));
        assert!(same(&first.whole(), &a) && same(&second.whole(), &b));

        let other = batch(&["x", "z"], "a");
        let third = JournaledBatch::new(&other);
        assert!(!Arc::ptr_eq(&first.ids_and_times, &third.ids_and_times));
        assert!(same(&third.whole(), &other));
        // Nothing is kept for a batch no journal holds any more.
        drop((first, second, third));
        assert!(LAST_IDS_AND_TIMES.with_borrow(|last| last.upgrade().is_none()));
    }
}
