use weir_sdk::prelude::*;

/// Misbehaves on events whose first read field (`action`) is the trigger word, and keeps every other event,
/// so tests can check that the host quarantines exactly the poison events.
pub struct Bad;

fn manifest(name: &str) -> Manifest {
    Manifest::new(
        name,
        "0.1.0",
        Kind::Transform,
        "a deliberately bad plugin for host tests",
    )
}

impl Plugin for Bad {
    fn manifest() -> Manifest {
        manifest("chatty")
    }
    fn init(_: &str) -> Result<(Self, Plan), String> {
        Ok((Bad, Plan::new().reads(["action"])))
    }
    fn process(&mut self, _: &Event) -> Outcome {
        Outcome::keep()
    }
    fn process_batch(&mut self, batch: &Batch) -> Output {
        for i in 0..16_384 {
            println!("chatty line {i}: {}", "blah ".repeat(12));
        }
        batch.events().map(|_| Outcome::keep()).collect()
    }
}
export_plugin!(Bad);
