//! Measures and their accumulators: count, sum, min, max, distinct count (exact up to a bound, then
//! HyperLogLog), first and last by event time.

use std::collections::HashSet;
use std::hash::Hasher;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use weir_sdk::{Value, ValueRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Count,
    Sum,
    Min,
    Max,
    DistinctCount,
    First,
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sign {
    Positive,
    Negative,
}

/// Only events whose value at `path` equals `equals` count towards the measure (`count` with a filter is the
/// usual count-if).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub path: String,
    pub equals: Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    /// The output column.
    pub name: String,
    pub op: Op,
    /// The value measured; not needed for `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// For `sum`: add only positive (or only negative) values, e.g. bytes added and bytes removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,
}

/// Distinct values are counted exactly up to this many, then estimated with HyperLogLog (~1.6 % error).
pub const EXACT_DISTINCT_LIMIT: usize = 10_000;
const HLL_BITS: u32 = 12;
const HLL_REGISTERS: usize = 1 << HLL_BITS;

/// One measure's running value. An aggregate over pages holds hundreds of thousands of windows, each with one
/// of these per measure, so the rare large variants are boxed: 24 bytes each instead of 48. Boxes serialize
/// as what they hold, so snapshots keep their format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Acc {
    Count(u64),
    Sum {
        int: i64,
        float: f64,
        any_float: bool,
    },
    Min(Option<f64>),
    Max(Option<f64>),
    Exact(Box<Distinct>),
    Hll(Box<[u8]>),
    /// (event time, arrival order, value as JSON text)
    First(Option<Box<(i64, u64, String)>>),
    Last(Option<Box<(i64, u64, String)>>),
}

/// The distinct values of an exact distinct count: a short list while there are few (most windows of a
/// page or a user see one or two values, and a hash set's smallest table is ~100 bytes), a hash set beyond.
/// Serialized as a sequence of values, as the hash set it replaced was.
#[derive(Debug, Clone)]
pub enum Distinct {
    Few(Vec<Box<str>>),
    Many(HashSet<Box<str>, MapHash>),
}

/// Values a [`Distinct`] keeps in a list before it becomes a hash set.
const FEW: usize = 16;

impl Distinct {
    fn contains(&self, value: &str) -> bool {
        match self {
            Distinct::Few(values) => values.iter().any(|v| &**v == value),
            Distinct::Many(set) => set.contains(value),
        }
    }

    /// Adds a value known not to be there.
    fn insert_new(&mut self, value: Box<str>) {
        match self {
            Distinct::Few(values) if values.len() < FEW => values.push(value),
            Distinct::Few(values) => {
                let mut set: HashSet<Box<str>, MapHash> =
                    std::mem::take(values).into_iter().collect();
                set.insert(value);
                *self = Distinct::Many(set);
            }
            Distinct::Many(set) => {
                set.insert(value);
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Distinct::Few(values) => values.len(),
            Distinct::Many(set) => set.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Distinct::Few(values) => Box::new(values.iter().map(|v| &**v)),
            Distinct::Many(set) => Box::new(set.iter().map(|v| &**v)),
        }
    }

    fn into_values(self) -> Vec<Box<str>> {
        match self {
            Distinct::Few(values) => values,
            Distinct::Many(set) => set.into_iter().collect(),
        }
    }
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Few(Vec::new())
    }
}

impl PartialEq for Distinct {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|v| other.contains(v))
    }
}

impl Serialize for Distinct {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Distinct {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut distinct = Distinct::default();
        for value in Vec::<Box<str>>::deserialize(d)? {
            if !distinct.contains(&value) {
                distinct.insert_new(value);
            }
        }
        Ok(distinct)
    }
}

impl Acc {
    pub fn new(op: Op) -> Acc {
        match op {
            Op::Count => Acc::Count(0),
            Op::Sum => Acc::Sum {
                int: 0,
                float: 0.0,
                any_float: false,
            },
            Op::Min => Acc::Min(None),
            Op::Max => Acc::Max(None),
            Op::DistinctCount => Acc::Exact(Box::default()),
            Op::First => Acc::First(None),
            Op::Last => Acc::Last(None),
        }
    }

    /// Adds one event's value (`None` when the path is absent or null; `count` ignores it).
    /// `scratch` is a reusable buffer, so counting an already-seen distinct value allocates nothing.
    pub fn add(
        &mut self,
        value: Option<ValueRef<'_>>,
        sign: Option<Sign>,
        time_ms: i64,
        seq: u64,
        scratch: &mut String,
    ) {
        match self {
            Acc::Count(n) => *n += 1,
            Acc::Sum {
                int,
                float,
                any_float,
            } => match value {
                Some(ValueRef::Integer(v)) if sign_ok(v as f64, sign) => {
                    *int = int.saturating_add(v)
                }
                Some(ValueRef::Float(v)) if sign_ok(v, sign) => {
                    *float += v;
                    *any_float = true;
                }
                _ => {}
            },
            Acc::Min(m) => {
                if let Some(v) = value.and_then(number) {
                    *m = Some(m.map_or(v, |m| m.min(v)));
                }
            }
            Acc::Max(m) => {
                if let Some(v) = value.and_then(number) {
                    *m = Some(m.map_or(v, |m| m.max(v)));
                }
            }
            Acc::Exact(set) => {
                if let Some(v) = value {
                    scratch.clear();
                    write_text(scratch, v);
                    if !set.contains(scratch.as_str()) {
                        set.insert_new(scratch.as_str().into());
                    }
                    if set.len() > EXACT_DISTINCT_LIMIT {
                        let mut registers = vec![0u8; HLL_REGISTERS];
                        set.iter().for_each(|v| hll_add(&mut registers, v));
                        *self = Acc::Hll(registers.into());
                    }
                }
            }
            Acc::Hll(registers) => {
                if let Some(v) = value.map(text) {
                    hll_add(registers, &v);
                }
            }
            Acc::First(slot) => {
                if let Some(v) = value
                    && slot
                        .as_ref()
                        .is_none_or(|first| (time_ms, seq) < (first.0, first.1))
                {
                    replace_slot(slot, time_ms, seq, v);
                }
            }
            Acc::Last(slot) => {
                if let Some(v) = value
                    && slot
                        .as_ref()
                        .is_none_or(|last| (time_ms, seq) > (last.0, last.1))
                {
                    replace_slot(slot, time_ms, seq, v);
                }
            }
        }
    }

    pub fn result(&self) -> Value {
        match self {
            Acc::Count(n) => Value::Integer(*n as i64),
            Acc::Sum {
                int,
                float,
                any_float,
            } => {
                if *any_float {
                    Value::Float(*int as f64 + float)
                } else {
                    Value::Integer(*int)
                }
            }
            Acc::Min(m) | Acc::Max(m) => m.map_or(Value::Null, float_or_int),
            Acc::Exact(set) => Value::Integer(set.len() as i64),
            Acc::Hll(registers) => Value::Integer(hll_estimate(registers).round() as i64),
            Acc::First(slot) | Acc::Last(slot) => match slot {
                Some(kept) => from_text(&kept.2),
                None => Value::Null,
            },
        }
    }
}

/// Combines two accumulators of the same measure (two session windows that an event bridged).
pub fn merge(a: Acc, b: Acc) -> Acc {
    fn pick<T>(x: Option<T>, y: Option<T>, keep_x: impl Fn(&T, &T) -> bool) -> Option<T> {
        match (x, y) {
            (Some(x), Some(y)) => Some(if keep_x(&x, &y) { x } else { y }),
            (x, y) => x.or(y),
        }
    }
    match (a, b) {
        (Acc::Count(x), Acc::Count(y)) => Acc::Count(x + y),
        (
            Acc::Sum {
                int: i1,
                float: f1,
                any_float: a1,
            },
            Acc::Sum {
                int: i2,
                float: f2,
                any_float: a2,
            },
        ) => Acc::Sum {
            int: i1.saturating_add(i2),
            float: f1 + f2,
            any_float: a1 || a2,
        },
        (Acc::Min(x), Acc::Min(y)) => Acc::Min(pick(x, y, |x, y| x <= y)),
        (Acc::Max(x), Acc::Max(y)) => Acc::Max(pick(x, y, |x, y| x >= y)),
        (Acc::Exact(x), Acc::Exact(y)) => {
            // Into the larger set: a session merges a one-event window into its own on every event, and
            // copying the session's set each time would make a long session quadratic.
            let (mut x, y) = if x.len() >= y.len() { (x, y) } else { (y, x) };
            for value in y.into_values() {
                if !x.contains(&value) {
                    x.insert_new(value);
                }
            }
            if x.len() > EXACT_DISTINCT_LIMIT {
                let mut registers = vec![0u8; HLL_REGISTERS];
                x.iter().for_each(|v| hll_add(&mut registers, v));
                Acc::Hll(registers.into())
            } else {
                Acc::Exact(x)
            }
        }
        (Acc::Hll(mut r), Acc::Hll(s)) => {
            r.iter_mut().zip(s).for_each(|(a, b)| *a = (*a).max(b));
            Acc::Hll(r)
        }
        (Acc::Hll(mut r), Acc::Exact(set)) | (Acc::Exact(set), Acc::Hll(mut r)) => {
            set.iter().for_each(|v| hll_add(&mut r, v));
            Acc::Hll(r)
        }
        (Acc::First(x), Acc::First(y)) => Acc::First(pick(x, y, |x, y| (x.0, x.1) <= (y.0, y.1))),
        (Acc::Last(x), Acc::Last(y)) => Acc::Last(pick(x, y, |x, y| (x.0, x.1) >= (y.0, y.1))),
        // Both sides come from the same measure, so the kinds always match.
        (a, _) => a,
    }
}

fn sign_ok(v: f64, sign: Option<Sign>) -> bool {
    match sign {
        None => true,
        Some(Sign::Positive) => v > 0.0,
        Some(Sign::Negative) => v < 0.0,
    }
}

fn number(v: ValueRef<'_>) -> Option<f64> {
    match v {
        ValueRef::Integer(n) => Some(n as f64),
        ValueRef::Float(f) => Some(f),
        _ => None,
    }
}

fn float_or_int(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::Integer(v as i64)
    } else {
        Value::Float(v)
    }
}

/// Sets a first/last slot, reusing its box and text buffer: `last` over a busy group replaces its value on
/// nearly every event, and two allocations per event were a visible share of an aggregate's time.
fn replace_slot(
    slot: &mut Option<Box<(i64, u64, String)>>,
    time_ms: i64,
    seq: u64,
    v: ValueRef<'_>,
) {
    match slot {
        Some(held) => {
            held.0 = time_ms;
            held.1 = seq;
            held.2.clear();
            write_text(&mut held.2, v);
        }
        None => *slot = Some(Box::new((time_ms, seq, text(v)))),
    }
}

/// A value as JSON text, the identity used for distinct counts and first/last.
pub fn text(v: ValueRef<'_>) -> String {
    let mut out = String::new();
    write_text(&mut out, v);
    out
}

/// Appends a value's JSON text to `out` (the hot path: no allocation for plain strings and numbers).
pub fn write_text(out: &mut String, v: ValueRef<'_>) {
    use std::fmt::Write;
    match v {
        ValueRef::Null => out.push_str("null"),
        ValueRef::Boolean(b) => out.push_str(if b { "true" } else { "false" }),
        ValueRef::Integer(n) => {
            let _ = write!(out, "{n}");
        }
        ValueRef::Float(f) => match serde_json::Number::from_f64(f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        },
        ValueRef::Text(s)
            if !s
                .bytes()
                .any(|c| c == b'"' || c == b'\\' || c < 0x20 || c == 0x7f) =>
        {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        ValueRef::Text(s) => out.push_str(&Json::String(s.to_string()).to_string()),
        ValueRef::Json(j) => out.push_str(j),
    }
}

/// A value back from the JSON text [`write_text`] made of it. Every row of a closed window reads its group
/// values back this way, so the two common forms skip the JSON parser.
pub fn from_text(text: &str) -> Value {
    if let Some(plain) = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains(['\\', '"']))
    {
        return Value::Text(plain.to_string());
    }
    if let Ok(n) = text.parse::<i64>() {
        return Value::Integer(n);
    }
    serde_json::from_str::<Json>(text)
        .map(|j| Value::from(&j))
        .unwrap_or(Value::Null)
}

/// FNV-1a with a splitmix64 finalizer: fixed forever, so HyperLogLog registers in a snapshot stay valid across
/// plugin versions and compilers (std's hasher makes no such promise).
fn hash64(value: &str) -> u64 {
    let mut h = FnvHasher::default();
    h.write(value.as_bytes());
    h.finish()
}

/// Hashes for the plugin's maps and sets: deterministic (the same on every run and platform, unlike std's
/// seeded hasher) and, reading eight bytes at a time, several times faster than a byte-at-a-time hash on
/// the 20-60 byte keys of groups (`wiki` + `title`) that every event looks up. Keys are group values and
/// distinct values, which a sender could choose to collide; a collision costs time, never correctness.
/// Nothing persisted depends on it: snapshots hold entries, not tables, and rows leave in key order.
pub type MapHash = foldhash::fast::FixedState;

/// HyperLogLog's hash, fixed forever (see [`hash64`]).
struct FnvHasher(u64);

impl Default for FnvHasher {
    fn default() -> Self {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// FNV-1a with a splitmix64 finalizer, so the high bits (HyperLogLog's index) are well mixed.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
}

fn hll_add(registers: &mut [u8], value: &str) {
    let hash = hash64(value);
    let index = (hash >> (64 - HLL_BITS)) as usize;
    let rank = ((hash << HLL_BITS) | (1 << (HLL_BITS - 1))).leading_zeros() as u8 + 1;
    registers[index] = registers[index].max(rank);
}

fn hll_estimate(registers: &[u8]) -> f64 {
    let m = registers.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|&r| 2f64.powi(-(r as i32))).sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|&&r| r == 0).count();
    if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_switches_to_hyperloglog_within_two_percent() {
        let mut acc = Acc::new(Op::DistinctCount);
        for i in 0..50_000 {
            acc.add(
                Some(ValueRef::Text(&format!("user-{i}"))),
                None,
                0,
                i,
                &mut String::new(),
            );
            acc.add(
                Some(ValueRef::Text(&format!("user-{i}"))),
                None,
                0,
                i,
                &mut String::new(),
            );
        }
        assert!(matches!(acc, Acc::Hll(_)));
        let Value::Integer(n) = acc.result() else {
            panic!()
        };
        assert!((n - 50_000).abs() < 1_000, "estimate {n}");
    }

    #[test]
    fn accumulators_stay_small_and_snapshots_keep_their_format() {
        assert_eq!(std::mem::size_of::<Acc>(), 24);
        // The form before the boxes and the short list: a hash set, plain tuples.
        #[derive(Serialize)]
        enum Before {
            _Count(u64),
            _Sum {
                int: i64,
                float: f64,
                any_float: bool,
            },
            _Min(Option<f64>),
            _Max(Option<f64>),
            Exact(Vec<String>),
            _Hll(Vec<u8>),
            _First(Option<(i64, u64, String)>),
            Last(Option<(i64, u64, String)>),
        }
        let mut distinct = Acc::new(Op::DistinctCount);
        let mut last = Acc::new(Op::Last);
        for (i, user) in ["a", "b", "a"].iter().enumerate() {
            distinct.add(
                Some(ValueRef::Text(user)),
                None,
                0,
                i as u64,
                &mut String::new(),
            );
            last.add(
                Some(ValueRef::Text(user)),
                None,
                5,
                i as u64,
                &mut String::new(),
            );
        }
        let old =
            postcard::to_allocvec(&Before::Exact(vec!["\"a\"".into(), "\"b\"".into()])).unwrap();
        assert_eq!(postcard::to_allocvec(&distinct).unwrap(), old);
        assert_eq!(postcard::from_bytes::<Acc>(&old).unwrap(), distinct);
        let old = postcard::to_allocvec(&Before::Last(Some((5, 2, "\"a\"".into())))).unwrap();
        assert_eq!(postcard::to_allocvec(&last).unwrap(), old);
        // Past the short list, a set; merged, still exact.
        let mut many = Acc::new(Op::DistinctCount);
        for i in 0..100 {
            many.add(
                Some(ValueRef::Integer(i % 40)),
                None,
                0,
                i as u64,
                &mut String::new(),
            );
        }
        assert_eq!(merge(many, distinct).result(), Value::Integer(42));
    }

    #[test]
    fn sums_keep_integers_and_signs() {
        let mut added = Acc::new(Op::Sum);
        let mut removed = Acc::new(Op::Sum);
        for v in [5, -3, 7, 0, -10] {
            added.add(
                Some(ValueRef::Integer(v)),
                Some(Sign::Positive),
                0,
                0,
                &mut String::new(),
            );
            removed.add(
                Some(ValueRef::Integer(v)),
                Some(Sign::Negative),
                0,
                0,
                &mut String::new(),
            );
        }
        assert_eq!(added.result(), Value::Integer(12));
        assert_eq!(removed.result(), Value::Integer(-13));
    }

    /// Group values go into keys as JSON text and come back out for rows: the fast paths must read back
    /// exactly what the JSON parser would.
    #[test]
    fn values_come_back_from_their_text() {
        let values = [
            ValueRef::Text("enwiki"),
            ValueRef::Text(""),
            ValueRef::Text("say \"hi\" \\ there\n"),
            ValueRef::Text("Zürich – 東京"),
            ValueRef::Integer(-42),
            ValueRef::Integer(i64::MAX),
            ValueRef::Float(2.5),
            ValueRef::Float(1e300),
            ValueRef::Boolean(true),
            ValueRef::Null,
            ValueRef::Json("{\"a\":[1,2]}"),
        ];
        for v in values {
            let mut text = String::new();
            write_text(&mut text, v);
            let parsed = serde_json::from_str::<Json>(&text)
                .map(|j| Value::from(&j))
                .unwrap();
            assert_eq!(from_text(&text), parsed, "{text}");
        }
    }
}
