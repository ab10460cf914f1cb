//! Several hosts sharing one durable consumer and one lake, as `deploy/kubernetes/weir.yaml` runs them:
//! every event lands exactly once, and each host's gold answers hold the other hosts' rows.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Harness, LakeAt, realistic};
use crate::support::get_json;

#[test]
fn two_hosts_share_the_consumer_and_the_lake() {
    let h = Harness::new(LakeAt::Local, |_| {});
    // Both hosts up before the first event, so the consumer spreads the stream over the two.
    let mut a = h.weir_as("host-a");
    let mut b = h.weir_as("host-b");
    let api = a.api(Duration::from_secs(60));
    b.api(Duration::from_secs(60));
    let events = 12_000;
    let last = h.prefill(realistic(31, events, Duration::from_secs(25 * 60)), events);
    h.wait_committed(&mut a, last, Duration::from_secs(240));

    let store = h.store();
    let records = h.rt.block_on(weir::lake::log::all_records(&store)).unwrap();
    for host in ["host-a", "host-b"] {
        assert!(
            records
                .iter()
                .any(|r| r.host == host && r.sequences.count() > 0),
            "{host} committed nothing"
        );
    }
    // Host a's memory holds its own gold rows only: an answer with `from` reads the lake, which holds both
    // hosts' (each host emits its own rows for a window and group).
    let keys = |rows: &Value| {
        let mut keys: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{}/{}/{}", r["wiki"], r["window_start"], r["events"]))
            .collect();
        keys.sort();
        keys
    };
    let committed = get_json(&api, "/api/v1/gold/gold_wiki?source=lake&limit=100000");
    let every = get_json(&api, "/api/v1/gold/gold_wiki?from=0&limit=100000");
    assert_eq!(every["source"], "memory+lake", "{every}");
    assert_eq!(keys(&every["rows"]), keys(&committed["rows"]));
    a.stop();
    b.stop();

    h.verify();
    h.read_back().assert_exactly_once(last);
}
