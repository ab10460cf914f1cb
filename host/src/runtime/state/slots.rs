//! The committed entries of a keyed state, packed for size: a plugin like dedupe keeps an entry per event for
//! a day (about 3 million for Wikimedia's recentchange), so bytes per entry decide how much memory it costs.
//!
//! Entries live in dense 24-byte slots (key hash, expiry, up to 3 value bytes inline) in fixed-size chunks,
//! found through a hash table of 4-byte slot numbers. That is about 32 bytes per entry at the table's usual
//! load, where a map of text keys cost ~100 (the key's allocation plus a 24-byte bucket at a power-of-two
//! capacity). Chunks grow one at a time, so growing never copies the whole state; only the small index does.
//! Longer values are kept aside in an ordinary map.
//!
//! A slot holds its expiry as milliseconds after the state's base time, in 32 bits (49 days). An expiry outside
//! that range is kept aside, exact, and the next sweep moves the base to the sweep's time, so a state that
//! lives for months keeps its expiries in its slots. Nothing is rounded: an entry expires at its millisecond.
//! TTLs longer than 49 days put their entries aside for good (a map entry each, on top of the slot), and
//! every sweep then makes a second pass to move the base: this layout is for the days-long TTLs of dedupes.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::Key;

/// The expiry of an entry that never expires.
pub const NEVER: i64 = i64::MAX;

/// Slots per chunk (1.5 MiB of slots).
const CHUNK: usize = 1 << 16;

/// Value bytes kept in the slot itself; longer values are in [`Slots::large`], at the cost of a map entry and
/// an allocation each. A dedupe stores one byte; a fourth would make slots 28 bytes.
const INLINE: usize = 3;

/// `Slot::len` of a value kept in [`Slots::large`].
const SPILLED: u8 = u8::MAX;

/// `Slot::expires` of an entry that never expires.
const NEVER_CODE: u32 = u32::MAX;

/// `Slot::expires` of an entry whose expiry is out of the slots' range, kept in [`Slots::far`].
const FAR: u32 = u32::MAX - 1;

/// How far before the first expiry it sees the state puts its base: entries may expire up to ~24 days
/// before or after the first one and still fit their slots.
const HALF_RANGE_MS: i64 = 1 << 31;

#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    /// Milliseconds after [`Slots::base_ms`], or [`NEVER_CODE`], or [`FAR`].
    expires: u32,
    len: u8,
    inline: [u8; INLINE],
}

const _: () = assert!(std::mem::size_of::<Slot>() == 24);

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
    /// What slot expiries count from; set by the first entry that expires, moved by sweeps.
    base_ms: Option<i64>,
    /// Expiries that do not fit a slot (see [`FAR`]).
    far: foldhash::HashMap<Key, i64>,
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

    fn expiry(&self, slot: &Slot) -> i64 {
        match slot.expires {
            NEVER_CODE => NEVER,
            FAR => self.far[&slot.key],
            after => self.base_ms.expect("a slot that expires has a base") + i64::from(after),
        }
    }

    /// The entry's expiry and value.
    pub fn get(&self, key: &Key) -> Option<(i64, &[u8])> {
        let slot = self.slot(self.position(key)?);
        Some((self.expiry(slot), self.value(slot)))
    }

    /// Sets the entry, replacing any before it in place.
    pub fn insert(&mut self, key: Key, expires_at_ms: i64, value: &[u8]) {
        let hash = self.hash(&key);
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        // One probe finds the entry or the place for it (most writes, a dedupe's, are of new keys).
        let replaced = match self.index.entry(
            hash,
            |&at| slot_in(chunks, at as usize).key == key,
            |&at| hasher.hash_one(slot_in(chunks, at as usize).key),
        ) {
            Entry::Occupied(found) => Some(*found.get() as usize),
            Entry::Vacant(place) => {
                let at = u32::try_from(self.len).expect("fewer than 4 billion entries per plugin");
                place.insert(at);
                None
            }
        };
        if let Some(at) = replaced {
            let old = *self.slot(at);
            self.forget(&old);
        }
        if expires_at_ms != NEVER && self.base_ms.is_none() {
            self.base_ms = Some(expires_at_ms.saturating_sub(HALF_RANGE_MS));
        }
        let mut slot = Slot {
            key,
            expires: code(self.base_ms, expires_at_ms),
            len: SPILLED,
            inline: [0; INLINE],
        };
        if slot.expires == FAR {
            self.far.insert(key, expires_at_ms);
        }
        if value.len() <= INLINE {
            slot.len = value.len() as u8;
            slot.inline[..value.len()].copy_from_slice(value);
        } else {
            self.large.insert(key, value.into());
        }
        self.value_bytes += value.len();
        match replaced {
            Some(at) => *self.slot_mut(at) = slot,
            None => self.push_slot(slot),
        }
    }

    /// Drops what a slot that is being replaced or removed keeps aside, and counts its value out.
    fn forget(&mut self, slot: &Slot) {
        self.value_bytes -= if slot.len == SPILLED {
            self.large.remove(&slot.key).map_or(0, |v| v.len())
        } else {
            slot.len as usize
        };
        if slot.expires == FAR {
            self.far.remove(&slot.key);
        }
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
        self.forget(&removed);
    }

    fn pop_last(&mut self) {
        self.len -= 1;
        let chunk = self.len / CHUNK;
        self.chunks[chunk].pop();
        // One emptied chunk is kept as a spare, so a state whose size hovers at a chunk boundary does not
        // allocate and free a chunk over and over.
        let keep = if self.chunks[chunk].is_empty() {
            chunk + 1
        } else {
            chunk + 2
        };
        self.chunks.truncate(keep);
    }

    /// Keeps the entries `keep` approves, removing the others in place (no second copy of the state, and
    /// nothing to do but a scan when nothing expired).
    fn retain(&mut self, mut keep: impl FnMut(&Key, i64) -> bool) {
        let mut at = 0;
        while at < self.len {
            let slot = self.slot(at);
            if keep(&slot.key, self.expiry(slot)) {
                at += 1;
            } else {
                // The last slot moves here: look at `at` again.
                self.remove_at(at);
            }
        }
    }

    /// Removes the entries expired at `now_ms`. Expiries kept aside then move into their slots: every entry
    /// left expires after `now_ms`, so the base moves up to it.
    pub fn sweep(&mut self, now_ms: i64) {
        self.retain(|_, expires| expires > now_ms);
        if !self.far.is_empty() {
            self.rebase(now_ms);
        }
    }

    /// Counts slot expiries from `base_ms`: each slot is coded again, and goes aside or comes back.
    fn rebase(&mut self, base_ms: i64) {
        for at in 0..self.len {
            let slot = *self.slot(at);
            if slot.expires == NEVER_CODE {
                continue;
            }
            let expires = self.expiry(&slot);
            let recoded = code(Some(base_ms), expires);
            match (slot.expires == FAR, recoded == FAR) {
                (true, false) => {
                    self.far.remove(&slot.key);
                }
                (false, true) => {
                    self.far.insert(slot.key, expires);
                }
                _ => {}
            }
            self.slot_mut(at).expires = recoded;
        }
        self.base_ms = Some(base_ms);
    }

    /// Every entry: key, expiry, value.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, i64, &[u8])> {
        self.chunks
            .iter()
            .flatten()
            .map(|slot| (&slot.key, self.expiry(slot), self.value(slot)))
    }
}

/// The slot code of an expiry: its offset from `base_ms` when it fits, else [`FAR`] (the caller keeps it in
/// [`Slots::far`]).
fn code(base_ms: Option<i64>, expires_at_ms: i64) -> u32 {
    if expires_at_ms == NEVER {
        return NEVER_CODE;
    }
    base_ms
        .and_then(|base| expires_at_ms.checked_sub(base))
        .and_then(|after| u32::try_from(after).ok())
        .filter(|&after| after < FAR)
        .unwrap_or(FAR)
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

    /// Expiries out of the slots' range are kept exact aside, and come back into slots once a sweep moves the
    /// base up.
    #[test]
    fn expiries_far_apart_stay_exact() {
        let day = 86_400_000i64;
        let expiries = [
            0,
            -1,
            i64::MIN,
            NEVER - 1,
            60 * day,
            400 * day,
            -400 * day,
            49 * day,
            50 * day,
        ];
        let mut slots = Slots::default();
        for (i, &expires) in expiries.iter().enumerate() {
            slots.insert(key(i as u64), expires, b"v");
        }
        slots.insert(key(100), NEVER, b"");
        let check = |slots: &Slots| {
            for (i, &expires) in expiries.iter().enumerate() {
                if let Some(found) = slots.get(&key(i as u64)) {
                    assert_eq!(found, (expires, &b"v"[..]), "entry {i}");
                }
            }
            assert_eq!(slots.get(&key(100)), Some((NEVER, &b""[..])));
        };
        check(&slots);
        assert_eq!(
            slots.far.len(),
            7,
            "all but 0, -1 and the one that never expires"
        );
        // A far entry replaced by a near one, and back.
        slots.insert(key(5), 1, b"w");
        assert_eq!(slots.get(&key(5)), Some((1, &b"w"[..])));
        assert_eq!(slots.far.len(), 6);
        slots.insert(key(5), 400 * day, b"v");
        check(&slots);

        slots.sweep(45 * day);
        assert_eq!(
            slots.len(),
            6,
            "49, 50, 60 and 400 days, the last millisecond, never"
        );
        check(&slots);
        assert_eq!(
            slots.far.len(),
            2,
            "400 days and the last millisecond are beyond 45 + 49.7 days"
        );
        assert!(slots.remove(&key(5)));
        assert!(slots.remove(&key(3)));
        assert!(slots.far.is_empty());
        check(&slots);
    }

    /// A dedupe running for months: the base follows the sweeps, so expiries stay in their slots.
    #[test]
    fn a_state_that_lives_for_months_keeps_its_expiries_in_slots() {
        let day = 86_400_000i64;
        let mut slots = Slots::default();
        for d in 0..120 {
            let now = d * day;
            slots.insert(key(d as u64), now + day, b"x");
            assert_eq!(slots.get(&key(d as u64)), Some((now + day, &b"x"[..])));
            slots.sweep(now);
            assert!(slots.far.is_empty(), "day {d}");
            assert_eq!(slots.len(), 1, "day {d}: yesterday's entry expired");
            assert_eq!(slots.get(&key(d as u64)), Some((now + day, &b"x"[..])));
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
