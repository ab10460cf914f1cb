//! Keyed state that the host keeps for each plugin (the `weir:transform/state` import).
//!
//! Writes made during a call are staged and applied only when the call succeeds: a batch that traps and is
//! retried (bisection) never sees its own half-applied writes, so dedupe and similar plugins stay exact.
//! The state lives outside the wasm instance, so it survives traps, instance replacement and hot swaps.

mod slots;

use foldhash::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use slots::{NEVER, Slots};

/// A state key as the host keeps it: the first 128 bits of the SHA-256 of its text. Fixed-size keys are what
/// let [`Slots`] pack an entry into 24 bytes; nobody can make two keys share them, by chance or on purpose
/// (that would take ~2^64 hashes), so a dedupe never mistakes one id for another.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key([u8; 16]);

impl Key {
    pub fn of(text: &str) -> Key {
        let digest = Sha256::digest(text.as_bytes());
        Key(digest[..16].try_into().expect("SHA-256 has 32 bytes"))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// An entry as a call stages it and a lake commit saves it (committed entries are kept packed, see
/// [`Slots`]).
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

    fn new(value: &[u8], expires_at_ms: i64) -> Entry {
        Entry {
            value: value.into(),
            expires_at_ms: (expires_at_ms != NEVER).then_some(expires_at_ms),
        }
    }
}

/// A plugin's keyed state: committed entries plus the writes staged by the call in progress.
#[derive(Debug, Default)]
pub struct KeyedState {
    committed: Slots,
    /// `None` stages a delete.
    staged: HashMap<Key, Option<Entry>>,
    /// Entry count after the last sweep of expired entries; the next sweep runs when it has grown by a quarter,
    /// so while writes go on, expired entries take at most about a fifth of the state (a dedupe with a day's
    /// TTL, sweeping only when the state doubled, held up to two days of ids). A sweep is one pass over dense
    /// slots (~1 ns each), and a second when expiries were put aside (see [`Slots`]).
    swept_len: usize,
    /// When the last sweep ran: a state that stops growing (values rewritten in place) is swept every
    /// [`SWEEP_EVERY_MS`] of plugin time too, so its expired entries go as well.
    swept_at_ms: i64,
    /// Keys changed since the last [`KeyedState::take_delta`]: a lake commit saves only those.
    dirty: HashSet<Key>,
    /// What the call under way's writes add to [`KeyedState::bytes`] (less when they overwrite with smaller
    /// values or delete).
    staged_bytes: isize,
}

/// Plugin time between sweeps of a state that does not grow.
const SWEEP_EVERY_MS: i64 = 10 * 60 * 1000;

/// The changes to a keyed state between two lake commits (`None`: deleted).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta(Vec<(Key, Option<Entry>)>);

impl Delta {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A delta as lakes saved it before keys were hashed: keys as text. Restoring such a lake hashes them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TextDelta(pub Vec<(Box<str>, Option<Entry>)>);

impl From<TextDelta> for Delta {
    fn from(text: TextDelta) -> Delta {
        Delta(
            text.0
                .into_iter()
                .map(|(key, entry)| (Key::of(&key), entry))
                .collect(),
        )
    }
}

impl KeyedState {
    pub fn get(&self, key: &str, now_ms: i64) -> Option<&[u8]> {
        let key = Key::of(key);
        match self.staged.get(&key) {
            Some(staged) => staged
                .as_ref()
                .filter(|e| e.live(now_ms))
                .map(|e| &*e.value),
            None => self
                .committed
                .get(&key)
                .filter(|(expires, _)| *expires > now_ms)
                .map(|(_, value)| value),
        }
    }

    pub fn set(&mut self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>, now_ms: i64) {
        let _ = self.try_set(key, value, ttl_ms, now_ms, usize::MAX);
    }

    /// Stages the write unless it would take [`KeyedState::bytes_with_staged`] past `limit`; the error is
    /// the total it would have made. One hash of the key for the check and the write (a dedupe sets one
    /// key per event).
    pub fn try_set(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<(), usize> {
        let expires_at_ms =
            ttl_ms.map(|ttl| now_ms.saturating_add(ttl.min(i64::MAX as u64) as i64));
        let key = Key::of(key);
        let added = (std::mem::size_of::<Key>() + value.len()) as isize - self.held(&key);
        let total = self.bytes_with_staged().saturating_add_signed(added);
        if total > limit {
            return Err(total);
        }
        self.staged_bytes += added;
        self.staged.insert(
            key,
            Some(Entry {
                value: value.into_boxed_slice(),
                expires_at_ms,
            }),
        );
        Ok(())
    }

    pub fn delete(&mut self, key: &str) {
        let key = Key::of(key);
        self.staged_bytes -= self.held(&key);
        self.staged.insert(key, None);
    }

    /// The bytes `key` takes (16 and its value's) as of the writes staged so far; 0 when it has no value.
    #[cfg(test)]
    pub fn bytes_of(&self, key: &str) -> usize {
        self.held(&Key::of(key)) as usize
    }

    /// The bytes `key` takes as of the writes staged so far: its staged value, else its committed one.
    fn held(&self, key: &Key) -> isize {
        let value = match self.staged.get(key) {
            Some(staged) => staged.as_ref().map(|e| e.value.len()),
            None => self.committed.get(key).map(|(_, value)| value.len()),
        };
        value.map_or(0, |len| (std::mem::size_of::<Key>() + len) as isize)
    }

    /// Replaces (or with `None` removes) a committed entry.
    fn put(&mut self, key: Key, entry: Option<&Entry>) {
        match entry {
            Some(entry) => {
                self.committed
                    .insert(key, entry.expires_at_ms.unwrap_or(NEVER), &entry.value)
            }
            None => {
                self.committed.remove(&key);
            }
        }
    }

    /// Applies the staged writes of a call that succeeded.
    pub fn commit(&mut self, now_ms: i64) {
        let mut staged = std::mem::take(&mut self.staged);
        for (key, entry) in staged.drain() {
            self.put(key, entry.as_ref());
            self.dirty.insert(key);
        }
        // The emptied map keeps its table for the next call.
        self.staged = staged;
        self.staged_bytes = 0;
        let grown = self.committed.len() >= self.swept_len + self.swept_len / 4;
        let due = now_ms.saturating_sub(self.swept_at_ms) >= SWEEP_EVERY_MS;
        if self.committed.len() > 1024 && (grown || due) {
            self.sweep(now_ms);
        }
    }

    /// Forgets the staged writes of a call that failed.
    pub fn rollback(&mut self) {
        self.staged.clear();
        self.staged_bytes = 0;
    }

    fn sweep(&mut self, now_ms: i64) {
        self.committed.sweep(now_ms);
        self.swept_len = self.committed.len();
        self.swept_at_ms = now_ms;
    }

    pub fn len(&self) -> usize {
        self.committed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.committed.len() == 0
    }

    /// Bytes of keys (16 each) and values committed.
    pub fn bytes(&self) -> usize {
        self.committed.len() * std::mem::size_of::<Key>() + self.committed.value_bytes()
    }

    /// [`KeyedState::bytes`] with the writes the call under way has staged so far (see
    /// `Limits::state_bytes`).
    pub fn bytes_with_staged(&self) -> usize {
        self.bytes().saturating_add_signed(self.staged_bytes)
    }

    /// Every committed entry, as a delta from nothing (a full checkpoint); clears the change tracking.
    pub fn full(&mut self, now_ms: i64) -> Delta {
        self.dirty.clear();
        Delta(
            self.committed
                .iter()
                .filter(|(_, expires, _)| *expires > now_ms)
                .map(|(key, expires, value)| (*key, Some(Entry::new(value, expires))))
                .collect(),
        )
    }

    /// What changed since the last call (or the last [`KeyedState::full`]).
    pub fn take_delta(&mut self) -> Delta {
        let dirty = std::mem::take(&mut self.dirty);
        Delta(
            dirty
                .into_iter()
                .map(|key| {
                    let entry = self
                        .committed
                        .get(&key)
                        .map(|(expires, value)| Entry::new(value, expires));
                    (key, entry)
                })
                .collect(),
        )
    }

    /// Applies a delta (restoring from the lake: the last full checkpoint, then the deltas after it).
    pub fn apply(&mut self, delta: Delta) {
        for (key, entry) in delta.0 {
            self.put(key, entry.as_ref());
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

    /// What the limit on keyed state counts: an overwrite only what it adds, a delete takes off.
    #[test]
    fn staged_bytes_count_what_writes_add() {
        let mut state = KeyedState::default();
        state.set("a", vec![0; 100], None, 0);
        state.commit(0);
        assert_eq!(state.bytes_with_staged(), 116);
        for _ in 0..10 {
            state.set("a", vec![0; 100], None, 0);
        }
        assert_eq!(state.bytes_with_staged(), 116, "overwrites of one key");
        state.set("a", vec![0; 40], None, 0);
        state.set("b", vec![0; 4], None, 0);
        assert_eq!(state.bytes_with_staged(), 56 + 20);
        state.delete("a");
        assert_eq!(state.bytes_with_staged(), 20);
        assert_eq!(state.bytes_of("b"), 20);
        state.commit(0);
        assert_eq!(state.bytes_with_staged(), state.bytes());
        assert_eq!(state.bytes(), 20);
    }

    #[test]
    fn staged_writes_are_visible_to_the_call_and_dropped_on_rollback() {
        let mut state = KeyedState::default();
        state.set("a", b"1".to_vec(), None, 0);
        assert_eq!(state.get("a", 0), Some(&b"1"[..]));
        state.rollback();
        assert_eq!(state.get("a", 0), None);
        state.set("a", b"2".to_vec(), None, 0);
        state.commit(0);
        state.delete("a");
        assert_eq!(state.get("a", 0), None);
        state.rollback();
        assert_eq!(state.get("a", 0), Some(&b"2"[..]));
        assert_eq!(state.bytes(), 16 + 1);
    }

    #[test]
    fn entries_give_back_their_values_and_expiry() {
        let mut state = KeyedState::default();
        let long = [9u8; 100];
        for (key, value) in [
            ("", &b""[..]),
            ("ключ-🔑", &b"\x00v"[..]),
            ("id", &[1u8][..]),
            ("long", &long[..]),
        ] {
            state.set(key, value.to_vec(), None, 0);
            state.commit(0);
            assert_eq!(state.get(key, i64::MAX - 1), Some(value));
        }
        assert_eq!(Entry::new(b"v", NEVER).expires_at_ms, None);
        assert_eq!(Entry::new(b"v", 7).expires_at_ms, Some(7));
        assert_eq!(state.bytes(), 4 * 16 + 2 + 1 + 100);
    }

    /// The hash is part of the lake's format: saved states name keys by it.
    #[test]
    fn keys_are_the_first_half_of_their_sha256() {
        assert_eq!(
            format!("{:?}", Key::of("abc")),
            "ba7816bf8f01cfea414140de5dae2223"
        );
    }

    #[test]
    fn text_deltas_of_older_lakes_restore_under_hashed_keys() {
        let entry = Entry::new(&[1], 99);
        let text = TextDelta(vec![
            ("id-1".into(), Some(entry.clone())),
            ("id-2".into(), None),
        ]);
        let mut state = KeyedState::default();
        state.apply(text.into());
        assert_eq!(state.get("id-1", 5), Some(&[1u8][..]));
        assert_eq!(state.len(), 1);
    }

    /// A steady stream of keys with a TTL holds about a TTL's worth of entries, not up to twice that.
    #[test]
    fn expired_entries_are_swept_before_they_pile_up() {
        let mut state = KeyedState::default();
        // One key per ms, each kept for 10,000 ms.
        for t in 0..100_000i64 {
            state.set(&t.to_string(), vec![1], Some(10_000), t);
            state.commit(t);
            assert!(state.len() <= 12_500, "at {t} ms: {} entries", state.len());
        }
        assert!(state.get("99999", 100_000).is_some());
        assert!(state.get("89999", 100_000).is_none());
    }

    /// A state whose size stays put (its keys rewritten, each with a TTL) still loses its expired entries.
    #[test]
    fn a_state_that_stops_growing_is_swept_by_time() {
        let mut state = KeyedState::default();
        for i in 0..5_000 {
            state.set(&format!("old-{i}"), vec![1], Some(1_000), 0);
        }
        state.commit(0);
        // Later, the same few keys rewritten over and over: the state never grows by a quarter.
        for t in (1..=SWEEP_EVERY_MS + 1_000).step_by(60_000) {
            state.set("hot", vec![2], Some(1_000), t);
            state.commit(t);
        }
        assert_eq!(state.len(), 1, "the 5,000 expired entries were swept");
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let mut state = KeyedState::default();
        state.set("k", vec![1], Some(1000), 5_000);
        state.commit(5_000);
        assert!(state.get("k", 5_999).is_some());
        assert!(state.get("k", 6_000).is_none());
    }

    #[test]
    fn full_state_and_deltas_restore_the_same_state() {
        let mut state = KeyedState::default();
        state.set("a", vec![1, 2], Some(10), 0);
        state.set("b", vec![3], None, 0);
        state.commit(0);
        let base = state.full(0);
        state.set("c", vec![4], None, 0);
        state.delete("a");
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
        assert_eq!(back.bytes(), 2 * 16 + 2);
    }
}
