//! A plugin that imports `test:evil/net`, a capability Weir does not grant. The host must refuse it at load,
//! naming the import.

wit_bindgen::generate!({ path: "wit", world: "test:evil/evil", generate_all });

use exports::weir::transform::transform::Guest;
use weir::transform::types::{
    Event, Kind, Outcome, Output, Plan, PluginManifest, Row, StateNeeds, Verdict,
};

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
    fn process(events: Vec<Event>) -> Output {
        for e in &events {
            test::evil::net::connect(e.payload.as_deref().unwrap_or_default());
        }
        Output {
            outcomes: events
                .iter()
                .map(|_| Outcome {
                    verdict: Verdict::Keep,
                    writes: vec![],
                })
                .collect(),
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
