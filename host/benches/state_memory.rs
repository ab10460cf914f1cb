//! Memory and time per entry of the host's keyed state, filled the way the dedupe stage fills it: one
//! `get-many` and one `set-many` of event ids per batch of 256, an entry per event with a 24-hour TTL. The
//! default, 3 million ids, is a day of Wikimedia's `recentchange` (about 35 events/s), which a dedupe over
//! `meta.id` holds at all times.
//!
//! Baseline in the same process: the same work on a `HashMap<String, (Vec<u8>, Option<i64>)>`, the map one
//! would write first. Memory is what the global allocator has handed out and not taken back: live bytes at
//! the end, and the peak while filling (a table that doubles holds its old and new buckets at once).
//!
//! Run with `cargo bench -p weir --bench state_memory`; `WEIR_BENCH_EVENTS` sets the number of ids.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use weir::runtime::KeyedState;

/// mimalloc (the `weir` binary's allocator), counting live and peak bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BATCH: usize = 256;
/// Batches between lake commits: 100k events, as in the pipeline benchmark.
const COMMIT_EVERY: usize = 400;
const TTL_MS: u64 = 24 * 60 * 60 * 1000;
const NOW_MS: i64 = 1_700_000_000_000;

/// Ids shaped like `meta.id` (a UUID), distinct and in no order.
fn ids(n: usize) -> Vec<String> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                x >> 32,
                (x >> 16) & 0xffff,
                i & 0xfff,
                0x8000 | (x & 0x3fff),
                (i as u64) << 8 ^ (x & 0xff)
            )
        })
        .collect()
}

struct Figures {
    seconds: f64,
    live: usize,
    peak: usize,
}

/// Runs `fill` from a clean count; `fill` returns what it built, so it is measured while still alive.
fn measure<T>(fill: impl FnOnce() -> T) -> (Figures, T) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let built = fill();
    let seconds = started.elapsed().as_secs_f64();
    let figures = Figures {
        seconds,
        live: LIVE.load(Ordering::Relaxed) - base,
        peak: PEAK.load(Ordering::Relaxed) - base,
    };
    (figures, built)
}

fn main() {
    let n: usize = std::env::var("WEIR_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000_000);
    let ids = ids(n);

    let (weir, state) = measure(|| {
        let mut state = KeyedState::default();
        for (i, batch) in ids.chunks(BATCH).enumerate() {
            let seen = batch
                .iter()
                .filter(|id| state.get(id, NOW_MS).is_some())
                .count();
            assert_eq!(seen, 0, "the ids are distinct");
            for id in batch {
                state.set(id, vec![1], Some(TTL_MS), NOW_MS);
            }
            state.commit(NOW_MS);
            // A lake commit takes what changed (the pipeline commits every few seconds).
            if (i + 1) % COMMIT_EVERY == 0 {
                state.take_delta();
            }
        }
        state
    });
    assert_eq!(state.len(), n);
    drop(state);

    let (map, baseline) = measure(|| {
        let mut map: HashMap<String, (Vec<u8>, Option<i64>)> = HashMap::new();
        for batch in ids.chunks(BATCH) {
            let seen = batch.iter().filter(|id| map.contains_key(*id)).count();
            assert_eq!(seen, 0, "the ids are distinct");
            for id in batch {
                map.insert(id.clone(), (vec![1], Some(NOW_MS + TTL_MS as i64)));
            }
        }
        map
    });
    assert_eq!(baseline.len(), n);
    drop(baseline);

    let per = |bytes: usize| bytes as f64 / n as f64;
    let mb = |bytes: usize| bytes as f64 / 1e6;
    println!("keyed state, {n} ids (36-byte UUIDs, 1-byte values, 24 h TTL), batches of {BATCH}:");
    for (name, f) in [("weir KeyedState", &weir), ("HashMap<String, _>", &map)] {
        println!(
            "  {name:<20} {:>6.1} bytes/entry live ({:>6.1} MB), peak {:>6.1} MB, {:>5.0} ns per get+set",
            per(f.live),
            mb(f.live),
            mb(f.peak),
            f.seconds * 1e9 / n as f64,
        );
    }
    println!(
        "  ratio (weir / baseline): live {:.2}, peak {:.2}",
        weir.live as f64 / map.live as f64,
        weir.peak as f64 / map.peak as f64
    );
}
