//! Named crash points in the commit protocol. `WEIR_CRASH_AT=<point>` (or `<point>:<n>`, the n-th time the
//! point is reached) makes the process abort there, as `kill -9` would: the crash tests run `weir run` once
//! per point and check that a restart leaves every table exactly right.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every crash point, in commit order.
pub const POINTS: [&str; 5] = [
    "commit.start",
    "commit.after_files",
    "commit.after_record",
    "commit.after_publish",
    "commit.after_ack",
];

/// The crash points of a replay in place (see `lake::replace`), in order.
pub const REPLACE_POINTS: [&str; 3] = [
    "replace.after_files",
    "replace.after_record",
    "replace.after_moves",
];

/// The crash points of a compaction (see `lake::compact`), in order: its swap ends as a replay in place's
/// does, in the same step.
pub const COMPACT_POINTS: [&str; 3] = [
    "compact.after_files",
    "compact.after_record",
    "replace.after_moves",
];

fn target() -> Option<&'static (String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let spec = std::env::var("WEIR_CRASH_AT").ok()?;
            let (point, nth) = match spec.split_once(':') {
                Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            assert!(
                [&POINTS[..], &REPLACE_POINTS, &COMPACT_POINTS]
                    .iter()
                    .any(|points| points.contains(&point.as_str())),
                "WEIR_CRASH_AT={point}: not a crash point (one of {POINTS:?} {REPLACE_POINTS:?} \
                 {COMPACT_POINTS:?})"
            );
            Some((point, nth))
        })
        .as_ref()
}

/// Aborts the process if `WEIR_CRASH_AT` names this point (and this is its n-th visit).
pub fn point(name: &str) {
    static VISITS: AtomicU64 = AtomicU64::new(0);
    if let Some((point, nth)) = target()
        && point == name
        && VISITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth
    {
        eprintln!("weir: crashing at {name} (WEIR_CRASH_AT)");
        std::process::abort();
    }
}
