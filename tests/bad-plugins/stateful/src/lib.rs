//! Counts events in memory (snapshot state) and marks each event id in keyed state, then panics on events whose
//! `action` is "boom". After the host bisects such a batch, the count and the keyed state must reflect exactly
//! the events that were kept: nothing from the failed calls may leak.
//!
//! An event whose `action` is "taint" marks the state; configured with `refuse-tainted`, the plugin refuses to
//! restore a marked snapshot, as a release with a bug in `restore` would. Its replacement instance after a
//! trap then cannot start, and the stage is broken until a working version takes its state over.
//!
//! Configured with `watermark-panic`, `on_watermark` panics, as an aggregate with a bug in closing its
//! windows would.
//!
//! An event whose `action` is "shout" prints a 1,000-byte line. Configured with `slow-snapshot`, `snapshot`
//! spins for some milliseconds, so the host journals the calls after a snapshot rather than taking another.
use weir_sdk::prelude::*;

pub struct Stateful {
    count: u64,
    tainted: bool,
    refuse_tainted: bool,
    slow_snapshot: bool,
    watermark_panic: bool,
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

    fn init(config: &str) -> Result<(Self, Plan), String> {
        let plan = Plan::new()
            .reads(["action"])
            .keyed_state()
            .snapshot_state()
            .emits(["counts"]);
        let plugin = Stateful {
            count: 0,
            tainted: false,
            refuse_tainted: config.contains("refuse-tainted"),
            slow_snapshot: config.contains("slow-snapshot"),
            watermark_panic: config.contains("watermark-panic"),
        };
        Ok((plugin, plan))
    }

    fn process(&mut self, event: &Event) -> Outcome {
        self.count += 1;
        let seen = state::get(event.id()).map_or(0, |v| v[0]);
        state::set(event.id(), &[seen + 1], None);
        metrics::counter("seen", 1);
        match event.str(0) {
            Some("boom") => panic!("boom"),
            Some("taint") => self.tainted = true,
            Some("shout") => println!("{}", "!".repeat(999)),
            _ => {}
        }
        Outcome::keep()
    }

    fn on_watermark(&mut self, watermark_ms: i64) -> Vec<Row> {
        assert!(!self.watermark_panic, "closing the windows failed");
        vec![
            Row::new("counts")
                .with("count", self.count)
                .with("watermark", watermark_ms),
        ]
    }

    fn snapshot(&self) -> Vec<u8> {
        if self.slow_snapshot {
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
        }
        let mut bytes = self.count.to_le_bytes().to_vec();
        if self.tainted {
            bytes.push(1);
        }
        bytes
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (count, tainted) = match snapshot.len() {
            8 => (snapshot, false),
            9 => (&snapshot[..8], true),
            n => return Err(format!("snapshot of {n} bytes, want 8 or 9")),
        };
        if tainted && self.refuse_tainted {
            return Err("refusing a tainted snapshot".into());
        }
        self.count = u64::from_le_bytes(count.try_into().unwrap());
        self.tainted = tainted;
        Ok(())
    }
}

export_plugin!(Stateful);
