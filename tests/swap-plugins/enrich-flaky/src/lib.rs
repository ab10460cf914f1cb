//! A broken enrich release: it passes the host's self-test (its first batches are fine, more than a self-test
//! makes) and then panics on every second batch, so the pipeline's error-rate watch must roll it back to the
//! previous version.

use weir_plugin_enrich::Enrich;
use weir_sdk::prelude::*;

pub struct Flaky {
    inner: Enrich,
    batches: u64,
}

/// Batches before the bug shows: twice what a self-test calls (`Sample::EVENTS`, 1,024, in batches of the
/// default `consumer.batch`, 256; raise this if either changes), and well within the error-rate watch
/// after a swap (20 batches).
const HEALTHY_BATCHES: u64 = 8;

impl Plugin for Flaky {
    fn manifest() -> Manifest {
        let mut manifest = Enrich::manifest();
        manifest.version = env!("CARGO_PKG_VERSION").into();
        manifest
    }
    fn init(config: &str) -> Result<(Self, Plan), String> {
        Enrich::init(config).map(|(inner, plan)| (Flaky { inner, batches: 0 }, plan))
    }
    fn process(&mut self, event: &Event) -> Outcome {
        self.inner.process(event)
    }
    fn process_batch(&mut self, batch: &Batch) -> Output {
        self.batches += 1;
        if self.batches > HEALTHY_BATCHES && self.batches.is_multiple_of(2) {
            panic!("enrich 0.3.0 has a bug: batch {} failed", self.batches);
        }
        self.inner.process_batch(batch)
    }
}
export_plugin!(Flaky);
