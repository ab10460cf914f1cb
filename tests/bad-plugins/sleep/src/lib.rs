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
        manifest("sleep")
    }
    fn init(_: &str) -> Result<(Self, Plan), String> {
        Ok((Bad, Plan::new().reads(["action"])))
    }
    fn process(&mut self, event: &Event) -> Outcome {
        if event.str(0) == Some("boom") {
            // A wait on WASI's monotonic clock, in which the host, not the plugin's code, runs.
            std::thread::sleep(std::time::Duration::from_secs(365 * 24 * 3600));
        }
        if event.str(0) == Some("nap") {
            // Well within the call's deadline: left alone.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Outcome::keep()
    }
}
export_plugin!(Bad);
