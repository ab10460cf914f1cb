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
        manifest("slow")
    }
    fn init(_: &str) -> Result<(Self, Plan), String> {
        Ok((Bad, Plan::new().reads(["action"])))
    }
    fn process(&mut self, event: &Event) -> Outcome {
        if event.str(0) == Some("slow") {
            let start = std::time::Instant::now();
            let mut n: u64 = 0;
            while start.elapsed().as_millis() < 30 {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Outcome::keep()
    }
}
export_plugin!(Bad);
