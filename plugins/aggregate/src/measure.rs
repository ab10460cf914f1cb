//! Measures and their accumulators: count, sum, min, max, distinct count (exact up to a bound, then
//! HyperLogLog), first and last by event time.

use std::borrow::Cow;
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
/// of these per measure, so no variant holds more than 8 bytes inline: 16 bytes each in the plugin's wasm32
/// build (24 natively), where a variant of two numbers and a flag made every one of them 24. What is rare or
/// large is boxed. Snapshots keep the form of 0.2.1 and before (see [`Wire`]), so they read both ways.
#[derive(Debug, Clone)]
pub enum Acc {
    Count(u64),
    /// A sum that has seen integers only.
    Sum(i64),
    /// A sum that has seen a float: the integers' sum and the floats' sum, kept apart as before.
    FloatSum(Box<(i64, f64)>),
    /// NaN until a value comes.
    Min(f64),
    /// NaN until a value comes.
    Max(f64),
    /// An exact distinct count's values while there are few (most windows of a page or a user see one or
    /// two): their JSON texts in one allocation, each followed by [`VALUE_END`]. A vector of boxed texts cost
    /// three allocations for one value, and a hash set's smallest table is ~100 bytes.
    Few(Box<str>),
    /// An exact distinct count's values beyond [`FEW`].
    Many(Box<HashSet<Box<str>, MapHash>>),
    /// Past [`EXACT_DISTINCT_LIMIT`] values, HyperLogLog registers.
    Hll(Box<[u8]>),
    First(Option<Box<Kept>>),
    Last(Option<Box<Kept>>),
}

/// A first or last value: (event time, arrival order, value as JSON text).
pub type Kept = (i64, u64, String);

/// Ends each value in [`Acc::Few`]: JSON texts never hold it raw.
const VALUE_END: char = '\u{1f}';

/// Values an [`Acc::Few`] keeps before it becomes a hash set.
const FEW: usize = 16;

fn few_values(values: &str) -> impl Iterator<Item = &str> {
    values.split_terminator(VALUE_END)
}

fn few_len(values: &str) -> usize {
    values.bytes().filter(|&b| b == VALUE_END as u8).count()
}

fn hll_of<'a>(values: impl Iterator<Item = &'a str>) -> Acc {
    let mut registers = vec![0u8; HLL_REGISTERS];
    values.for_each(|v| hll_add(&mut registers, v));
    Acc::Hll(registers.into())
}

/// An accumulator in the form snapshots hold it, which is the form `Acc` had up to aggregate 0.2.1: a
/// snapshot written by this version restores in 0.2.1 (a rollback), and the other way round. Written
/// borrowing from the accumulator, read back owned.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Acc")]
enum Wire<'a> {
    Count(u64),
    Sum {
        int: i64,
        float: f64,
        any_float: bool,
    },
    Min(Option<f64>),
    Max(Option<f64>),
    Exact(WireValues<'a>),
    Hll(Cow<'a, [u8]>),
    First(Option<(i64, u64, Cow<'a, str>)>),
    Last(Option<(i64, u64, Cow<'a, str>)>),
}

/// A distinct count's values, as the sequence of texts they always were.
enum WireValues<'a> {
    Few(&'a str),
    Many(&'a HashSet<Box<str>, MapHash>),
    Read(Vec<Box<str>>),
}

impl Serialize for WireValues<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WireValues::Few(values) => {
                // With its length first: postcard writes it before the values.
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(Some(few_len(values)))?;
                few_values(values).try_for_each(|v| seq.serialize_element(v))?;
                seq.end()
            }
            WireValues::Many(set) => s.collect_seq(set.iter().map(|v| &**v)),
            WireValues::Read(values) => s.collect_seq(values),
        }
    }
}

impl<'de> Deserialize<'de> for WireValues<'_> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::deserialize(d).map(WireValues::Read)
    }
}

impl Serialize for Acc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn kept(slot: &Option<Box<Kept>>) -> Option<(i64, u64, Cow<'_, str>)> {
            slot.as_ref()
                .map(|k| (k.0, k.1, Cow::Borrowed(k.2.as_str())))
        }
        let wire = match self {
            Acc::Count(n) => Wire::Count(*n),
            Acc::Sum(int) => Wire::Sum {
                int: *int,
                float: 0.0,
                any_float: false,
            },
            Acc::FloatSum(sum) => Wire::Sum {
                int: sum.0,
                float: sum.1,
                any_float: true,
            },
            Acc::Min(m) => Wire::Min((!m.is_nan()).then_some(*m)),
            Acc::Max(m) => Wire::Max((!m.is_nan()).then_some(*m)),
            Acc::Few(values) => Wire::Exact(WireValues::Few(values)),
            Acc::Many(set) => Wire::Exact(WireValues::Many(set)),
            Acc::Hll(registers) => Wire::Hll(Cow::Borrowed(registers)),
            Acc::First(slot) => Wire::First(kept(slot)),
            Acc::Last(slot) => Wire::Last(kept(slot)),
        };
        wire.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Acc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn kept(slot: Option<(i64, u64, Cow<'_, str>)>) -> Option<Box<Kept>> {
            slot.map(|(time, seq, text)| Box::new((time, seq, text.into_owned())))
        }
        Ok(match Wire::deserialize(d)? {
            Wire::Count(n) => Acc::Count(n),
            Wire::Sum {
                int,
                float,
                any_float,
            } => {
                if any_float {
                    Acc::FloatSum(Box::new((int, float)))
                } else {
                    Acc::Sum(int)
                }
            }
            Wire::Min(m) => Acc::Min(m.unwrap_or(f64::NAN)),
            Wire::Max(m) => Acc::Max(m.unwrap_or(f64::NAN)),
            Wire::Exact(values) => {
                let mut acc = Acc::new(Op::DistinctCount);
                if let WireValues::Read(values) = values {
                    values.iter().for_each(|v| acc.add_distinct(v));
                }
                acc
            }
            Wire::Hll(registers) => Acc::Hll(registers.into_owned().into()),
            Wire::First(slot) => Acc::First(kept(slot)),
            Wire::Last(slot) => Acc::Last(kept(slot)),
        })
    }
}

impl Acc {
    pub fn new(op: Op) -> Acc {
        match op {
            Op::Count => Acc::Count(0),
            Op::Sum => Acc::Sum(0),
            Op::Min => Acc::Min(f64::NAN),
            Op::Max => Acc::Max(f64::NAN),
            Op::DistinctCount => Acc::Few(Box::default()),
            Op::First => Acc::First(None),
            Op::Last => Acc::Last(None),
        }
    }

    /// The operation this accumulator serves (a restored snapshot's must match the configuration's).
    pub fn op(&self) -> Op {
        match self {
            Acc::Count(_) => Op::Count,
            Acc::Sum(_) | Acc::FloatSum(_) => Op::Sum,
            Acc::Min(_) => Op::Min,
            Acc::Max(_) => Op::Max,
            Acc::Few(_) | Acc::Many(_) | Acc::Hll(_) => Op::DistinctCount,
            Acc::First(_) => Op::First,
            Acc::Last(_) => Op::Last,
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
            Acc::Sum(int) => match value {
                Some(ValueRef::Integer(v)) if sign_ok(v as f64, sign) => {
                    *int = int.saturating_add(v)
                }
                Some(ValueRef::Float(v)) if sign_ok(v, sign) => {
                    *self = Acc::FloatSum(Box::new((*int, v)));
                }
                _ => {}
            },
            Acc::FloatSum(sum) => match value {
                Some(ValueRef::Integer(v)) if sign_ok(v as f64, sign) => {
                    sum.0 = sum.0.saturating_add(v)
                }
                Some(ValueRef::Float(v)) if sign_ok(v, sign) => sum.1 += v,
                _ => {}
            },
            // f64::min and max return the other operand when one is NaN (no value yet).
            Acc::Min(m) => {
                if let Some(v) = value.and_then(number) {
                    *m = m.min(v);
                }
            }
            Acc::Max(m) => {
                if let Some(v) = value.and_then(number) {
                    *m = m.max(v);
                }
            }
            Acc::Few(_) | Acc::Many(_) | Acc::Hll(_) => {
                if let Some(v) = value {
                    scratch.clear();
                    write_text(scratch, v);
                    self.add_distinct(scratch);
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

    /// Adds a value's JSON text to a distinct count: a short list, then a set, then HyperLogLog.
    fn add_distinct(&mut self, text: &str) {
        match self {
            Acc::Few(values) => {
                if few_values(values).any(|v| v == text) {
                    return;
                }
                if few_len(values) < FEW {
                    let mut grown = String::with_capacity(values.len() + text.len() + 1);
                    grown.push_str(values);
                    grown.push_str(text);
                    grown.push(VALUE_END);
                    *values = grown.into_boxed_str();
                } else {
                    let mut set: HashSet<Box<str>, MapHash> =
                        few_values(values).map(Box::from).collect();
                    set.insert(text.into());
                    *self = Acc::Many(Box::new(set));
                }
            }
            Acc::Many(set) if !set.contains(text) => {
                set.insert(text.into());
                if set.len() > EXACT_DISTINCT_LIMIT {
                    *self = hll_of(set.iter().map(|v| &**v));
                }
            }
            Acc::Hll(registers) => hll_add(registers, text),
            _ => {}
        }
    }

    /// The values of an exact distinct count (none for other accumulators).
    fn distinct_values(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Acc::Few(values) => Box::new(few_values(values)),
            Acc::Many(set) => Box::new(set.iter().map(|v| &**v)),
            _ => Box::new(std::iter::empty()),
        }
    }

    fn distinct_len(&self) -> usize {
        match self {
            Acc::Few(values) => few_len(values),
            Acc::Many(set) => set.len(),
            _ => 0,
        }
    }

    pub fn result(&self) -> Value {
        match self {
            Acc::Count(n) => Value::Integer(*n as i64),
            Acc::Sum(int) => Value::Integer(*int),
            Acc::FloatSum(sum) => Value::Float(sum.0 as f64 + sum.1),
            Acc::Min(m) | Acc::Max(m) if m.is_nan() => Value::Null,
            Acc::Min(m) | Acc::Max(m) => float_or_int(*m),
            Acc::Few(_) | Acc::Many(_) => Value::Integer(self.distinct_len() as i64),
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
    // f64::min and max return the other operand when one is NaN (no value yet).
    match (a, b) {
        (Acc::Count(x), Acc::Count(y)) => Acc::Count(x + y),
        (Acc::Sum(x), Acc::Sum(y)) => Acc::Sum(x.saturating_add(y)),
        (Acc::FloatSum(mut x), Acc::FloatSum(y)) => {
            x.0 = x.0.saturating_add(y.0);
            x.1 += y.1;
            Acc::FloatSum(x)
        }
        (Acc::FloatSum(mut x), Acc::Sum(y)) | (Acc::Sum(y), Acc::FloatSum(mut x)) => {
            x.0 = x.0.saturating_add(y);
            Acc::FloatSum(x)
        }
        (Acc::Min(x), Acc::Min(y)) => Acc::Min(x.min(y)),
        (Acc::Max(x), Acc::Max(y)) => Acc::Max(x.max(y)),
        (Acc::Hll(mut r), Acc::Hll(s)) => {
            r.iter_mut().zip(s).for_each(|(a, b)| *a = (*a).max(b));
            Acc::Hll(r)
        }
        (Acc::Hll(r), exact @ (Acc::Few(_) | Acc::Many(_)))
        | (exact @ (Acc::Few(_) | Acc::Many(_)), Acc::Hll(r)) => {
            let mut hll = Acc::Hll(r);
            exact.distinct_values().for_each(|v| hll.add_distinct(v));
            hll
        }
        (x @ (Acc::Few(_) | Acc::Many(_)), y @ (Acc::Few(_) | Acc::Many(_))) => {
            // Into the larger set: a session merges a one-event window into its own on every event, and
            // copying the session's set each time would make a long session quadratic.
            let (mut x, y) = if x.distinct_len() >= y.distinct_len() {
                (x, y)
            } else {
                (y, x)
            };
            y.distinct_values().for_each(|v| x.add_distinct(v));
            x
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
fn replace_slot(slot: &mut Option<Box<Kept>>, time_ms: i64, seq: u64, v: ValueRef<'_>) {
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

    /// Every accumulator is a tag and at most two words (16 bytes in the plugin's wasm32 build), and is
    /// written in snapshots exactly as the accumulators of 0.2.1 and before were.
    #[test]
    fn accumulators_stay_small_and_snapshots_keep_their_format() {
        assert_eq!(
            std::mem::size_of::<Acc>(),
            8 + 2 * std::mem::size_of::<usize>()
        );
        // The form of 0.2.1 and before: plain tuples, every sum with both parts and a flag.
        #[derive(Serialize)]
        enum Before {
            Count(u64),
            Sum {
                int: i64,
                float: f64,
                any_float: bool,
            },
            Min(Option<f64>),
            Max(Option<f64>),
            Exact(Vec<String>),
            Hll(Vec<u8>),
            First(Option<(i64, u64, String)>),
            Last(Option<(i64, u64, String)>),
        }
        let add = |acc: &mut Acc, values: &[ValueRef<'_>], sign: Option<Sign>| {
            for (i, v) in values.iter().enumerate() {
                acc.add(Some(*v), sign, 5, i as u64, &mut String::new());
            }
        };
        let (a, b) = (ValueRef::Text("a"), ValueRef::Text("b"));
        let mut cases: Vec<(Acc, Before)> = Vec::new();
        let mut count = Acc::new(Op::Count);
        add(&mut count, &[a, b], None);
        cases.push((count, Before::Count(2)));
        let mut distinct = Acc::new(Op::DistinctCount);
        add(&mut distinct, &[a, b, a], None);
        let texts = vec!["\"a\"".to_string(), "\"b\"".to_string()];
        cases.push((distinct, Before::Exact(texts)));
        let mut last = Acc::new(Op::Last);
        add(&mut last, &[a, b, a], None);
        cases.push((last, Before::Last(Some((5, 2, "\"a\"".into())))));
        let mut first = Acc::new(Op::First);
        add(&mut first, &[a, b], None);
        cases.push((first, Before::First(Some((5, 0, "\"a\"".into())))));
        cases.push((Acc::new(Op::Last), Before::Last(None)));
        let mut sum = Acc::new(Op::Sum);
        add(
            &mut sum,
            &[ValueRef::Integer(3), ValueRef::Integer(4)],
            None,
        );
        cases.push((
            sum,
            Before::Sum {
                int: 7,
                float: 0.0,
                any_float: false,
            },
        ));
        let mut float_sum = Acc::new(Op::Sum);
        let mixed = [
            ValueRef::Integer(3),
            ValueRef::Float(0.5),
            ValueRef::Integer(4),
        ];
        add(&mut float_sum, &mixed, None);
        assert_eq!(float_sum.result(), Value::Float(7.5));
        cases.push((
            float_sum,
            Before::Sum {
                int: 7,
                float: 0.5,
                any_float: true,
            },
        ));
        let mut min = Acc::new(Op::Min);
        add(
            &mut min,
            &[ValueRef::Integer(3), ValueRef::Float(-1.5)],
            None,
        );
        cases.push((min, Before::Min(Some(-1.5))));
        cases.push((Acc::new(Op::Max), Before::Max(None)));
        let mut hll = Acc::new(Op::DistinctCount);
        for i in 0..=EXACT_DISTINCT_LIMIT as i64 {
            add(&mut hll, &[ValueRef::Integer(i)], None);
        }
        let Acc::Hll(registers) = &hll else {
            panic!("past the limit, HyperLogLog")
        };
        cases.push((hll.clone(), Before::Hll(registers.to_vec())));
        for (acc, before) in cases {
            let old = postcard::to_allocvec(&before).unwrap();
            assert_eq!(postcard::to_allocvec(&acc).unwrap(), old, "{acc:?}");
            let read = postcard::from_bytes::<Acc>(&old).unwrap();
            assert_eq!(read.result(), acc.result(), "{acc:?}");
            assert_eq!(postcard::to_allocvec(&read).unwrap(), old, "{acc:?}");
            let json = serde_json::to_string(&before).unwrap();
            assert_eq!(serde_json::to_string(&acc).unwrap(), json);
            assert_eq!(
                serde_json::from_str::<Acc>(&json).unwrap().result(),
                acc.result()
            );
        }
        // Past the short list, a set; merged, still exact.
        let mut many = Acc::new(Op::DistinctCount);
        for i in 0..100 {
            add(&mut many, &[ValueRef::Integer(i % 40)], None);
        }
        assert!(matches!(many, Acc::Many(_)));
        let mut two = Acc::new(Op::DistinctCount);
        add(&mut two, &[a, b, ValueRef::Integer(7)], None);
        assert_eq!(
            merge(two.clone(), many.clone()).result(),
            Value::Integer(42)
        );
        assert_eq!(merge(many, two).result(), Value::Integer(42));
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
