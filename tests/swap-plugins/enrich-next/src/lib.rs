//! The standard enrich plugin released as 0.2.0: what a good hot swap deploys in the tests, so that lineage
//! (`_chain` in silver) shows which version produced each row.

use weir_plugin_enrich::Enrich;
use weir_sdk::prelude::*;

pub struct Next(Enrich);

impl Plugin for Next {
    fn manifest() -> Manifest {
        let mut manifest = Enrich::manifest();
        manifest.version = env!("CARGO_PKG_VERSION").into();
        manifest
    }
    fn init(config: &str) -> Result<(Self, Plan), String> {
        Enrich::init(config).map(|(e, plan)| (Next(e), plan))
    }
    fn process(&mut self, event: &Event) -> Outcome {
        self.0.process(event)
    }
    fn process_batch(&mut self, batch: &Batch) -> Output {
        self.0.process_batch(batch)
    }
}
export_plugin!(Next);
