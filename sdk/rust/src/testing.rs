//! Helpers for native unit tests of plugins (native builds only): project real JSON events exactly as the host does, and run them
//! through a plugin without building a component.

use crate::time::parse_rfc3339_ms;
use crate::{Batch, BatchBuilder, Outcome, Plan, Plugin, ValueRef};

/// Reads a dotted path (`meta.domain`, `log_params.0`) the way the host does.
pub fn get<'a>(doc: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(doc, |node, seg| match node {
        serde_json::Value::Object(map) => map.get(seg),
        serde_json::Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Projects JSON events for `plan` into a batch, as the host would (id from `meta.id`, time from `meta.dt`).
pub fn batch(docs: &[serde_json::Value], plan: &Plan) -> Batch {
    timed_batch(
        docs.iter().map(|doc| {
            let time_ms = get(doc, "meta.dt")
                .and_then(|v| v.as_str())
                .and_then(parse_rfc3339_ms)
                .unwrap_or(0);
            (time_ms, doc)
        }),
        plan,
    )
}

/// Like [`batch`], with the event times given.
pub fn timed_batch<'a>(
    events: impl IntoIterator<Item = (i64, &'a serde_json::Value)>,
    plan: &Plan,
) -> Batch {
    let mut builder = BatchBuilder::new(plan.reads.len());
    for (time_ms, doc) in events {
        let id = get(doc, "meta.id")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let nested: Vec<Option<String>> = plan
            .reads
            .iter()
            .map(|p| {
                get(doc, p)
                    .filter(|v| v.is_object() || v.is_array())
                    .map(|v| v.to_string())
            })
            .collect();
        let fields: Vec<Option<ValueRef<'_>>> = plan
            .reads
            .iter()
            .zip(&nested)
            .map(|(p, text)| match text {
                Some(json) => Some(ValueRef::Json(json)),
                None => get(doc, p).map(ValueRef::from),
            })
            .collect();
        builder.push(id, time_ms, &fields);
        if plan.needs_payload {
            builder.payload(&doc.to_string());
        }
    }
    builder.build()
}

/// Forgets the keyed state and metrics the in-memory host holds for this thread, as a fresh host would.
pub fn reset_host() {
    crate::host::native::reset();
}

/// Builds the plugin from `config` on a fresh in-memory host and runs every JSON event through
/// `process_batch`.
pub fn run<P: Plugin>(
    config: &str,
    docs: &[serde_json::Value],
) -> Result<(P, Vec<Outcome>), String> {
    reset_host();
    let (mut plugin, plan) = P::init(config)?;
    let output = plugin.process_batch(&batch(docs, &plan));
    Ok((plugin, output.outcomes()))
}

/// A file of the shared fixtures (`shared/fixtures/...` beside the checkout), found from the crate under test.
pub fn fixture(relative: &str) -> std::path::PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    start
        .ancestors()
        .map(|dir| dir.join("shared/fixtures").join(relative))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("fixture {relative} not found: shared/fixtures must sit beside the checkout")
        })
}

/// Every line of an NDJSON fixture, parsed.
pub fn ndjson(relative: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture(relative)).expect("read fixture");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line is JSON"))
        .collect()
}

/// The real Wikimedia `recentchange` events of the fixtures.
pub fn recentchange() -> Vec<serde_json::Value> {
    ndjson("wikimedia/events/recentchange.verbatim.ndjson")
}

/// Checks that a generated file (an example config, say) matches what the code generates now; with
/// `WEIR_BLESS=1` in the environment, rewrites it instead.
pub fn check_generated(path: &str, generated: &str) {
    let generated = format!("{}\n", generated.trim_end());
    if std::env::var_os("WEIR_BLESS").is_some() {
        std::fs::write(path, &generated).expect("write generated file");
        return;
    }
    let current = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        current == generated,
        "{path} is out of date: run the tests with WEIR_BLESS=1 to regenerate it"
    );
}
