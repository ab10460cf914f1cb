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
        manifest("panic")
    }
    fn init(_: &str) -> Result<(Self, Plan), String> {
        Ok((Bad, Plan::new().reads(["action"])))
    }
    fn process(&mut self, event: &Event) -> Outcome {
        if event.str(0) == Some("boom") {
            panic!("bad-panic was asked to panic by event {}", event.id());
        }
        Outcome::keep()
    }
}
export_plugin!(Bad);
