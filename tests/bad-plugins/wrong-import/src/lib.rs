//! A plugin that imports `test:evil/net`, a capability Weir does not grant. The host must refuse it at load,
//! naming the import.

wit_bindgen::generate!({ path: "wit", world: "test:evil/evil", generate_all });

use exports::weir::transform::transform::Guest;
use weir::transform::types::{Batch, Kind, Output, Plan, PluginManifest, Row, StateNeeds, Verdict};

struct Evil;

impl Guest for Evil {
    fn manifest() -> PluginManifest {
        PluginManifest {
            name: "wrong-import".into(),
            version: "0.1.0".into(),
            kind: Kind::Transform,
            description: "imports a network API".into(),
        }
    }
    fn init(_: String) -> Result<Plan, String> {
        Ok(Plan {
            reads: vec![],
            writes: vec![],
            needs_payload: true,
            needs_attributes: false,
            state: StateNeeds {
                keyed: false,
                snapshot: false,
            },
            emits: vec![],
        })
    }
    fn process(batch: Batch) -> Output {
        let payloads = String::from_utf8_lossy(&batch.payloads.bytes).into_owned();
        test::evil::net::connect(&payloads);
        Output {
            verdicts: batch.times.iter().map(|_| Verdict::Keep).collect(),
            writes: vec![],
            rows: vec![],
        }
    }
    fn on_watermark(_: i64) -> Vec<Row> {
        vec![]
    }
    fn snapshot() -> Vec<u8> {
        vec![]
    }
    fn restore(_: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

export!(Evil);
