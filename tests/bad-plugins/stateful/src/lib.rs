//! Counts events in memory (snapshot state) and marks each event id in keyed state, then panics on events whose
//! `action` is "boom". After the host bisects such a batch, the count and the keyed state must reflect exactly
//! the events that were kept: nothing from the failed calls may leak.
use weir_sdk::prelude::*;

pub struct Stateful {
    count: u64,
}

impl Plugin for Stateful {
    fn manifest() -> Manifest {
        Manifest::new(
            "stateful",
            "0.1.0",
            Kind::Aggregate,
            "counts events; panics on boom",
        )
    }

    fn init(_: &str) -> Result<(Self, Plan), String> {
        let plan = Plan::new()
            .reads(["action"])
            .keyed_state()
            .snapshot_state()
            .emits(["counts"]);
        Ok((Stateful { count: 0 }, plan))
    }

    fn process(&mut self, event: &Event) -> Outcome {
        self.count += 1;
        let seen = state::get(event.id()).map_or(0, |v| v[0]);
        state::set(event.id(), &[seen + 1], None);
        metrics::counter("seen", 1);
        if event.str(0) == Some("boom") {
            panic!("boom");
        }
        Outcome::keep()
    }

    fn on_watermark(&mut self, watermark_ms: i64) -> Vec<Row> {
        vec![
            Row::new("counts")
                .with("count", self.count)
                .with("watermark", watermark_ms),
        ]
    }

    fn snapshot(&self) -> Vec<u8> {
        self.count.to_le_bytes().to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let bytes: [u8; 8] = snapshot
            .try_into()
            .map_err(|_| format!("snapshot of {} bytes, want 8", snapshot.len()))?;
        self.count = u64::from_le_bytes(bytes);
        Ok(())
    }
}

export_plugin!(Stateful);
