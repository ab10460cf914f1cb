#![allow(unconditional_recursion)] // the point of this plugin
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

#[inline(never)]
fn descend(depth: u64, pad: [u64; 16]) -> u64 {
    let pad = std::hint::black_box(pad);
    pad[(depth % 16) as usize] + descend(depth + 1, pad)
}

impl Plugin for Bad {
    fn manifest() -> Manifest {
        manifest("deep-recursion")
    }
    fn init(_: &str) -> Result<(Self, Plan), String> {
        Ok((Bad, Plan::new().reads(["action"])))
    }
    fn process(&mut self, event: &Event) -> Outcome {
        if event.str(0) == Some("boom") {
            std::hint::black_box(descend(0, [1; 16]));
        }
        Outcome::keep()
    }
}
export_plugin!(Bad);
