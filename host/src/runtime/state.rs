//! Keyed state that the host keeps for each plugin (the `weir:transform/state` import).
//!
//! Writes made during a call are staged and applied only when the call succeeds: a batch that traps and is
//! retried (bisection) never sees its own half-applied writes, so dedupe and similar plugins stay exact.
//! The state lives outside the wasm instance, so it survives traps, instance replacement and hot swaps.

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

/// An entry as a call stages it and a lake commit saves it (committed entries are kept packed, see
/// [`Packed`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    // As one byte string, not a sequence of numbers: the same postcard encoding, written as one copy.
    #[serde(with = "serde_bytes")]
    value: Box<[u8]>,
    /// Absolute expiry in host milliseconds; `None` never expires.
    expires_at_ms: Option<i64>,
}

impl Entry {
    fn live(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }
}

/// A plugin's keyed state: committed entries plus the writes staged by the call in progress.
#[derive(Debug, Default)]
pub struct KeyedState {
    /// Committed entries, key and value in one allocation, with their expiry ([`NEVER`]: none). A dedupe
    /// state holds an id per event for a day: one allocation and a 24-byte slot per entry, not two
    /// allocations and a 48-byte slot, is most of what it costs.
    committed: HashMap<Packed, i64>,
    /// `None` stages a delete.
    staged: HashMap<String, Option<Entry>>,
    /// Entry count after the last sweep of expired entries; the next sweep runs when the map has doubled.
    swept_len: usize,
    /// Bytes of keys and values committed, for metrics and quotas.
    bytes: usize,
    /// Keys changed since the last [`KeyedState::take_delta`]: a lake commit saves only those.
    dirty: foldhash::HashSet<Box<str>>,
}

/// The expiry of an entry that never expires.
const NEVER: i64 = i64::MAX;

/// A committed key and its value in one allocation: `[key length, u32 LE][key][value]`. Hashed and compared
/// by its key, and borrowed as it, so the map is looked up by `&str`.
struct Packed(Box<[u8]>);

impl Packed {
    fn new(key: &str, value: &[u8]) -> Self {
        let len = u32::try_from(key.len()).expect("state keys are far shorter than 4 GiB");
        let mut bytes = Vec::with_capacity(4 + key.len() + value.len());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(value);
        Packed(bytes.into_boxed_slice())
    }

    fn key_len(&self) -> usize {
        u32::from_le_bytes(self.0[..4].try_into().expect("4 bytes")) as usize
    }

    fn key(&self) -> &str {
        // SAFETY: `new` wrote these bytes from a `&str`, and nothing changes them after.
        unsafe { std::str::from_utf8_unchecked(&self.0[4..4 + self.key_len()]) }
    }

    fn value(&self) -> &[u8] {
        &self.0[4 + self.key_len()..]
    }

    /// The entry as lake commits save it.
    fn entry(&self, expires_at_ms: i64) -> Entry {
        Entry {
            value: self.value().into(),
            expires_at_ms: (expires_at_ms != NEVER).then_some(expires_at_ms),
        }
    }
}

impl std::hash::Hash for Packed {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl PartialEq for Packed {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Packed {}

impl std::borrow::Borrow<str> for Packed {
    fn borrow(&self) -> &str {
        self.key()
    }
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}={:?}", self.key(), self.value())
    }
}

/// The changes to a keyed state between two lake commits (`None`: deleted).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta(Vec<(Box<str>, Option<Entry>)>);

impl Delta {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl KeyedState {
    pub fn get(&self, key: &str, now_ms: i64) -> Option<&[u8]> {
        match self.staged.get(key) {
            Some(staged) => staged
                .as_ref()
                .filter(|e| e.live(now_ms))
                .map(|e| &*e.value),
            None => self
                .committed
                .get_key_value(key)
                .filter(|(_, expires)| **expires > now_ms)
                .map(|(packed, _)| packed.value()),
        }
    }

    pub fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>, now_ms: i64) {
        let expires_at_ms =
            ttl_ms.map(|ttl| now_ms.saturating_add(ttl.min(i64::MAX as u64) as i64));
        self.staged.insert(
            key,
            Some(Entry {
                value: value.into_boxed_slice(),
                expires_at_ms,
            }),
        );
    }

    pub fn delete(&mut self, key: String) {
        self.staged.insert(key, None);
    }

    /// Replaces (or with `None` removes) a committed entry, keeping the byte count.
    fn put(&mut self, key: &str, entry: Option<&Entry>) {
        if let Some((old, _)) = self.committed.remove_entry(key) {
            self.bytes -= key.len() + old.value().len();
        }
        if let Some(entry) = entry {
            self.bytes += key.len() + entry.value.len();
            self.committed.insert(
                Packed::new(key, &entry.value),
                entry.expires_at_ms.unwrap_or(NEVER),
            );
        }
    }

    /// Applies the staged writes of a call that succeeded.
    pub fn commit(&mut self, now_ms: i64) {
        let mut staged = std::mem::take(&mut self.staged);
        for (key, entry) in staged.drain() {
            self.put(&key, entry.as_ref());
            if !self.dirty.contains(key.as_str()) {
                self.dirty.insert(key.into_boxed_str());
            }
        }
        // The emptied map keeps its table for the next call.
        self.staged = staged;
        if self.committed.len() > 1024 && self.committed.len() >= self.swept_len * 2 {
            self.sweep(now_ms);
        }
    }

    /// Forgets the staged writes of a call that failed.
    pub fn rollback(&mut self) {
        self.staged.clear();
    }

    fn sweep(&mut self, now_ms: i64) {
        let mut freed = 0;
        self.committed.retain(|packed, expires| {
            let live = *expires > now_ms;
            if !live {
                freed += packed.key().len() + packed.value().len();
            }
            live
        });
        self.bytes -= freed;
        self.swept_len = self.committed.len();
    }

    pub fn len(&self) -> usize {
        self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every committed entry, as a delta from nothing (a full checkpoint); clears the change tracking.
    pub fn full(&mut self, now_ms: i64) -> Delta {
        self.dirty.clear();
        Delta(
            self.committed
                .iter()
                .filter(|(_, expires)| **expires > now_ms)
                .map(|(packed, expires)| (packed.key().into(), Some(packed.entry(*expires))))
                .collect(),
        )
    }

    /// What changed since the last call (or the last [`KeyedState::full`]).
    pub fn take_delta(&mut self) -> Delta {
        let dirty = std::mem::take(&mut self.dirty);
        Delta(
            dirty
                .into_iter()
                .map(|k| {
                    let entry = self
                        .committed
                        .get_key_value(&*k)
                        .map(|(packed, expires)| packed.entry(*expires));
                    (k, entry)
                })
                .collect(),
        )
    }

    /// Applies a delta (restoring from the lake: the last full checkpoint, then the deltas after it).
    pub fn apply(&mut self, delta: Delta) {
        for (key, entry) in delta.0 {
            self.put(&key, entry.as_ref());
        }
        self.swept_len = self.committed.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_the_encoding_of_lakes_written_before_they_were_byte_strings() {
        let entry = Entry {
            value: vec![1, 2, 250].into(),
            expires_at_ms: Some(7),
        };
        #[derive(Serialize)]
        struct Before {
            value: Vec<u8>,
            expires_at_ms: Option<i64>,
        }
        let before = Before {
            value: entry.value.to_vec(),
            expires_at_ms: entry.expires_at_ms,
        };
        let bytes = postcard::to_allocvec(&entry).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
        assert_eq!(postcard::from_bytes::<Entry>(&bytes).unwrap(), entry);
    }

    #[test]
    fn staged_writes_are_visible_to_the_call_and_dropped_on_rollback() {
        let mut state = KeyedState::default();
        state.set("a".into(), b"1".to_vec(), None, 0);
        assert_eq!(state.get("a", 0), Some(&b"1"[..]));
        state.rollback();
        assert_eq!(state.get("a", 0), None);
        state.set("a".into(), b"2".to_vec(), None, 0);
        state.commit(0);
        state.delete("a".into());
        assert_eq!(state.get("a", 0), None);
        state.rollback();
        assert_eq!(state.get("a", 0), Some(&b"2"[..]));
        assert_eq!(state.bytes(), 2);
    }

    #[test]
    fn packed_entries_give_back_key_and_value() {
        for (key, value) in [
            ("", &b""[..]),
            ("ключ-🔑", &b"\x00v"[..]),
            ("id", &[1u8][..]),
        ] {
            let packed = Packed::new(key, value);
            assert_eq!((packed.key(), packed.value()), (key, value));
            assert_eq!(packed.entry(NEVER).expires_at_ms, None);
            assert_eq!(packed.entry(7).expires_at_ms, Some(7));
        }
        let mut state = KeyedState::default();
        state.set("k".into(), b"v".to_vec(), None, 0);
        state.commit(0);
        assert_eq!(state.get("k", i64::MAX - 1), Some(&b"v"[..]));
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let mut state = KeyedState::default();
        state.set("k".into(), vec![1], Some(1000), 5_000);
        state.commit(5_000);
        assert!(state.get("k", 5_999).is_some());
        assert!(state.get("k", 6_000).is_none());
    }

    #[test]
    fn full_state_and_deltas_restore_the_same_state() {
        let mut state = KeyedState::default();
        state.set("a".into(), vec![1, 2], Some(10), 0);
        state.set("b".into(), vec![3], None, 0);
        state.commit(0);
        let base = state.full(0);
        state.set("c".into(), vec![4], None, 0);
        state.delete("a".into());
        state.commit(0);
        let delta = state.take_delta();
        assert_eq!(delta.len(), 2);
        assert!(state.take_delta().is_empty());
        let mut back = KeyedState::default();
        back.apply(base);
        back.apply(delta);
        assert_eq!(back.get("a", 5), None);
        assert_eq!(back.get("b", 5), Some(&[3u8][..]));
        assert_eq!(back.get("c", 5), Some(&[4u8][..]));
        assert_eq!(back.bytes(), 4);
    }
}
