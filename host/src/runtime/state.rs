//! Keyed state that the host keeps for each plugin (the `weir:transform/state` import).
//!
//! Writes made during a call are staged and applied only when the call succeeds: a batch that traps and is
//! retried (bisection) never sees its own half-applied writes, so dedupe and similar plugins stay exact.
//! The state lives outside the wasm instance, so it survives traps, instance replacement and hot swaps.

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    // As one byte string, not a sequence of numbers: the same postcard encoding, written as one copy.
    // A boxed slice, not a Vec: 8 bytes less per entry, and a dedupe state holds millions.
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
    // Boxed keys, 8 bytes less per entry than `String` (the table's slots dominate a large state).
    committed: HashMap<Box<str>, Entry>,
    /// `None` stages a delete.
    staged: HashMap<String, Option<Entry>>,
    /// Entry count after the last sweep of expired entries; the next sweep runs when the map has doubled.
    swept_len: usize,
    /// Bytes of keys and values committed, for metrics and quotas.
    bytes: usize,
    /// Keys changed since the last [`KeyedState::take_delta`]: a lake commit saves only those.
    dirty: foldhash::HashSet<Box<str>>,
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
        let entry = match self.staged.get(key) {
            Some(staged) => staged.as_ref(),
            None => self.committed.get(key),
        };
        entry.filter(|e| e.live(now_ms)).map(|e| &*e.value)
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

    /// Applies the staged writes of a call that succeeded.
    pub fn commit(&mut self, now_ms: i64) {
        for (key, staged) in self.staged.drain() {
            let key = key.into_boxed_str();
            if !self.dirty.contains(&key) {
                self.dirty.insert(key.clone());
            }
            if let Some(old) = self.committed.remove(&key) {
                self.bytes -= key.len() + old.value.len();
            }
            if let Some(entry) = staged {
                self.bytes += key.len() + entry.value.len();
                self.committed.insert(key, entry);
            }
        }
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
        self.committed.retain(|key, entry| {
            let live = entry.live(now_ms);
            if !live {
                freed += key.len() + entry.value.len();
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
                .filter(|(_, e)| e.live(now_ms))
                .map(|(k, e)| (k.clone(), Some(e.clone())))
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
                    let entry = self.committed.get(&k).cloned();
                    (k, entry)
                })
                .collect(),
        )
    }

    /// Applies a delta (restoring from the lake: the last full checkpoint, then the deltas after it).
    pub fn apply(&mut self, delta: Delta) {
        for (key, entry) in delta.0 {
            if let Some(old) = self.committed.remove(&key) {
                self.bytes -= key.len() + old.value.len();
            }
            if let Some(entry) = entry {
                self.bytes += key.len() + entry.value.len();
                self.committed.insert(key, entry);
            }
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
