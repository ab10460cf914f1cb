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

/// Scalars only, so every frame lives on the wasm stack (not the shadow stack in linear memory) and the
/// recursion ends in a real stack overflow.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    std::hint::black_box(depth).wrapping_add(descend(depth + 1))
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
            std::hint::black_box(descend(0));
        }
        Outcome::keep()
    }
}
export_plugin!(Bad);
