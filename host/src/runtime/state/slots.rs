//! The committed entries of a keyed state, packed for size: a plugin like dedupe keeps an entry per event for
//! a day (about 3 million for Wikimedia's recentchange), so bytes per entry decide how much memory it costs.
//!
//! Entries live in dense 32-byte slots (key hash, expiry, up to 7 value bytes inline) in fixed-size chunks,
//! found through a hash table of 4-byte slot numbers. That is about 40 bytes per entry at the table's usual
//! load, where a map of text keys cost ~100 (the key's allocation plus a 24-byte bucket at a power-of-two
//! capacity). Chunks grow one at a time, so growing never copies the whole state; only the small index does.
//! Longer values are kept aside in an ordinary map.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::Key;

/// The expiry of an entry that never expires.
pub const NEVER: i64 = i64::MAX;

/// Slots per chunk (2 MiB of slots).
const CHUNK: usize = 1 << 16;

/// Value bytes kept in the slot itself; longer values (8-byte numbers among them) are in [`Slots::large`], at
/// the cost of a map entry and an allocation each: an eighth byte would make slots 40 bytes.
const INLINE: usize = 7;

/// `Slot::len` of a value kept in [`Slots::large`].
const SPILLED: u8 = u8::MAX;

#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    expires_at_ms: i64,
    len: u8,
    inline: [u8; INLINE],
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

#[derive(Default)]
pub struct Slots {
    /// Slot numbers, hashed by their slot's key with a per-process seed (keys come from event data, and a
    /// fixed hash would let someone who knows it pile keys into one bucket).
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    chunks: Vec<Vec<Slot>>,
    len: usize,
    large: foldhash::HashMap<Key, Box<[u8]>>,
    /// Bytes of values held (inline and aside).
    value_bytes: usize,
}

impl Slots {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn value_bytes(&self) -> usize {
        self.value_bytes
    }

    fn slot(&self, at: usize) -> &Slot {
        slot_in(&self.chunks, at)
    }

    fn slot_mut(&mut self, at: usize) -> &mut Slot {
        &mut self.chunks[at / CHUNK][at % CHUNK]
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    fn position(&self, key: &Key) -> Option<usize> {
        let chunks = &self.chunks;
        self.index
            .find(self.hash(key), |&at| {
                slot_in(chunks, at as usize).key == *key
            })
            .map(|&at| at as usize)
    }

    fn value<'a>(&'a self, slot: &'a Slot) -> &'a [u8] {
        if slot.len == SPILLED {
            &self.large[&slot.key]
        } else {
            &slot.inline[..slot.len as usize]
        }
    }

    /// The entry's expiry and value.
    pub fn get(&self, key: &Key) -> Option<(i64, &[u8])> {
        let slot = self.slot(self.position(key)?);
        Some((slot.expires_at_ms, self.value(slot)))
    }

    /// Sets the entry, replacing any before it in place.
    pub fn insert(&mut self, key: Key, expires_at_ms: i64, value: &[u8]) {
        let mut slot = Slot {
            key,
            expires_at_ms,
            len: SPILLED,
            inline: [0; INLINE],
        };
        if value.len() <= INLINE {
            slot.len = value.len() as u8;
            slot.inline[..value.len()].copy_from_slice(value);
        }
        let hash = self.hash(&key);
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        // One probe finds the entry or the place for it (most writes, a dedupe's, are of new keys).
        match self.index.entry(
            hash,
            |&at| slot_in(chunks, at as usize).key == key,
            |&at| hasher.hash_one(slot_in(chunks, at as usize).key),
        ) {
            Entry::Occupied(found) => {
                let at = *found.get() as usize;
                let old = std::mem::replace(self.slot_mut(at), slot);
                self.forget_value(&old);
            }
            Entry::Vacant(place) => {
                let at = u32::try_from(self.len).expect("fewer than 4 billion entries per plugin");
                place.insert(at);
                self.push_slot(slot);
            }
        }
        if slot.len == SPILLED {
            self.large.insert(key, value.into());
        }
        self.value_bytes += value.len();
    }

    /// Drops the value of a slot that is being replaced or removed.
    fn forget_value(&mut self, slot: &Slot) {
        self.value_bytes -= if slot.len == SPILLED {
            self.large.remove(&slot.key).map_or(0, |v| v.len())
        } else {
            slot.len as usize
        };
    }

    /// Appends a slot (the caller has indexed it).
    fn push_slot(&mut self, slot: Slot) {
        let chunk = self.len / CHUNK;
        if chunk == self.chunks.len() {
            // The first chunk grows as it fills, so a small state stays small; later ones come whole.
            self.chunks.push(if chunk == 0 {
                Vec::new()
            } else {
                Vec::with_capacity(CHUNK)
            });
        }
        self.chunks[chunk].push(slot);
        self.len += 1;
    }

    /// Removes the entry.
    pub fn remove(&mut self, key: &Key) -> bool {
        match self.position(key) {
            Some(at) => {
                self.remove_at(at);
                true
            }
            None => false,
        }
    }

    /// Removes the entry in slot `at`; the last slot moves into its place, so slots stay dense.
    fn remove_at(&mut self, at: usize) {
        let removed = *self.slot(at);
        let hash = self.hash(&removed.key);
        self.index
            .find_entry(hash, |&n| n as usize == at)
            .expect("every slot is indexed")
            .remove();
        let last = self.len - 1;
        if at != last {
            let moved = *self.slot(last);
            *self.slot_mut(at) = moved;
            let hash = self.hash(&moved.key);
            let number = self
                .index
                .find_mut(hash, |&n| n as usize == last)
                .expect("every slot is indexed");
            *number = at as u32;
        }
        self.pop_last();
        self.forget_value(&removed);
    }

    fn pop_last(&mut self) {
        self.len -= 1;
        let chunk = self.len / CHUNK;
        self.chunks[chunk].pop();
        // One emptied chunk is kept as a spare, so a state whose size hovers at a chunk boundary does not
        // allocate and free 2 MiB over and over.
        let keep = if self.chunks[chunk].is_empty() {
            chunk + 1
        } else {
            chunk + 2
        };
        self.chunks.truncate(keep);
    }

    /// Keeps the entries `keep` approves, removing the others in place (no second copy of the state, and
    /// nothing to do but a scan when nothing expired).
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, i64) -> bool) {
        let mut at = 0;
        while at < self.len {
            let slot = self.slot(at);
            if keep(&slot.key, slot.expires_at_ms) {
                at += 1;
            } else {
                // The last slot moves here: look at `at` again.
                self.remove_at(at);
            }
        }
    }

    /// Every entry: key, expiry, value.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, i64, &[u8])> {
        self.chunks
            .iter()
            .flatten()
            .map(|slot| (&slot.key, slot.expires_at_ms, self.value(slot)))
    }
}

/// Slot number `at` of the chunks (a free function, so index closures can use it while the index is borrowed).
fn slot_in(chunks: &[Vec<Slot>], at: usize) -> &Slot {
    &chunks[at / CHUNK][at % CHUNK]
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("len", &self.len)
            .field("value_bytes", &self.value_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        Key::of(&n.to_string())
    }

    /// Checked against a plain map through inserts, replacements (short and long values), removals that
    /// move the last slot, and a sweep, across several chunks.
    #[test]
    fn behaves_like_a_map() {
        let mut slots = Slots::default();
        let mut model = std::collections::HashMap::new();
        let n = (CHUNK * 2 + 100) as u64;
        for i in 0..n {
            let value = if i % 5 == 0 {
                vec![i as u8; 20]
            } else {
                vec![i as u8; (i % 8) as usize]
            };
            slots.insert(key(i), i as i64, &value);
            model.insert(key(i), (i as i64, value));
        }
        for i in (0..n).step_by(3) {
            assert!(slots.remove(&key(i)));
            model.remove(&key(i));
        }
        assert!(!slots.remove(&key(0)));
        for i in (1..n).step_by(7) {
            slots.insert(key(i), -1, b"replaced value!");
            model.insert(key(i), (-1, b"replaced value!".to_vec()));
        }
        for i in (2..n).step_by(11) {
            slots.insert(key(i), 3, b"ab");
            model.insert(key(i), (3, b"ab".to_vec()));
        }
        slots.retain(|_, expires| expires % 2 != 0);
        model.retain(|_, (expires, _)| *expires % 2 != 0);
        assert_eq!(slots.len(), model.len());
        assert_eq!(
            slots.value_bytes(),
            model.values().map(|(_, v)| v.len()).sum::<usize>()
        );
        for i in 0..n {
            let expected = model.get(&key(i)).map(|(e, v)| (*e, v.as_slice()));
            assert_eq!(slots.get(&key(i)), expected, "key {i}");
        }
        assert_eq!(slots.iter().count(), model.len());
        for (key, expires, value) in slots.iter() {
            assert_eq!(model[key], (expires, value.to_vec()));
        }
    }

    #[test]
    fn a_state_at_a_chunk_boundary_keeps_one_spare_chunk() {
        let mut slots = Slots::default();
        for i in 0..CHUNK as u64 {
            slots.insert(key(i), 0, b"");
        }
        for round in 0..3 {
            slots.insert(key(u64::MAX), 0, b"");
            assert_eq!(slots.chunks.len(), 2);
            assert!(slots.remove(&key(u64::MAX)));
            assert_eq!(
                slots.chunks.len(),
                2,
                "round {round}: the emptied chunk stays"
            );
        }
        for i in 0..CHUNK as u64 {
            assert!(slots.remove(&key(i)));
        }
        assert_eq!((slots.len(), slots.chunks.len()), (0, 1));
        assert_eq!(slots.get(&key(0)), None);
    }
}
