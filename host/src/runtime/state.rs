//! Keyed state that the host keeps for each plugin (the `weir:transform/state` import).
//!
//! Writes made during a call are staged and applied only when the call succeeds: a batch that traps and is
//! retried (bisection) never sees its own half-applied writes, so dedupe and similar plugins stay exact.
//! The state lives outside the wasm instance, so it survives traps, instance replacement and hot swaps.

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    value: Vec<u8>,
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
    committed: HashMap<String, Entry>,
    /// `None` stages a delete.
    staged: HashMap<String, Option<Entry>>,
    /// Entry count after the last sweep of expired entries; the next sweep runs when the map has doubled.
    swept_len: usize,
    /// Bytes of keys and values committed, for metrics and quotas.
    bytes: usize,
}

impl KeyedState {
    pub fn get(&self, key: &str, now_ms: i64) -> Option<&[u8]> {
        let entry = match self.staged.get(key) {
            Some(staged) => staged.as_ref(),
            None => self.committed.get(key),
        };
        entry.filter(|e| e.live(now_ms)).map(|e| e.value.as_slice())
    }

    pub fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>, now_ms: i64) {
        let expires_at_ms =
            ttl_ms.map(|ttl| now_ms.saturating_add(ttl.min(i64::MAX as u64) as i64));
        self.staged.insert(
            key,
            Some(Entry {
                value,
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

    /// The committed entries, for checkpoints (the lake commits them with the data they produced).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.committed).expect("state entries serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let committed: HashMap<String, Entry> = serde_json::from_slice(bytes)?;
        let bytes = committed.iter().map(|(k, e)| k.len() + e.value.len()).sum();
        Ok(KeyedState {
            swept_len: committed.len(),
            committed,
            bytes,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn round_trips_through_bytes() {
        let mut state = KeyedState::default();
        state.set("k".into(), vec![1, 2], Some(10), 0);
        state.commit(0);
        let back = KeyedState::from_bytes(&state.to_bytes()).unwrap();
        assert_eq!(back.get("k", 5), Some(&[1u8, 2][..]));
        assert_eq!(back.bytes(), 3);
    }
}
