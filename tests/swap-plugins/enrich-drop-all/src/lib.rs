//! A broken enrich release: a rule gone wrong drops every event. No call fails, so neither the self-test's
//! failed calls nor the error-rate watch would stop it; the self-test's comparison with the serving version
//! (`plugins.self_test_min_kept`) must refuse it.

use weir_plugin_enrich::Enrich;
use weir_sdk::prelude::*;

pub struct DropAll;

impl Plugin for DropAll {
    fn manifest() -> Manifest {
        let mut manifest = Enrich::manifest();
        manifest.version = env!("CARGO_PKG_VERSION").into();
        manifest
    }
    fn init(config: &str) -> Result<(Self, Plan), String> {
        Enrich::init(config).map(|(_, plan)| (DropAll, plan))
    }
    fn process(&mut self, _event: &Event) -> Outcome {
        Outcome::drop("everything")
    }
}
export_plugin!(DropAll);
