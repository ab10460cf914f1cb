//! A plugin's in-memory state as its `snapshot()` returned it, kept compressed while the host holds it.
//!
//! The host keeps each snapshot plugin's last snapshot as its restore point (a trapped instance is replaced
//! and given it back) and saves it with every commit. An aggregate's snapshot is tens of MB of window
//! groups at a million events, mostly text that zstd shrinks several times, and the host held it raw: the
//! restore points were one of the largest parts of the pipeline's peak memory (two of them while a new one
//! was lifted). Compressed once when taken, the same bytes go into the commit as they are.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

/// zstd's level for snapshots: the fastest of the normal levels. A snapshot is taken every few batches, so
/// its compression is on the hot path; higher levels cost more time than the memory they save is worth.
const LEVEL: i32 = 1;

/// The smallest snapshot whose packing ratio sizes the next one's buffer.
const RATIO_FROM: usize = 64 << 10;

/// A compressed snapshot: one zstd frame that records its content size and checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    packed: Box<[u8]>,
    len: usize,
}

impl Snapshot {
    /// Compresses a snapshot the plugin returned.
    pub fn pack(raw: &[u8]) -> Snapshot {
        Snapshot::pack_into(raw, 0)
    }

    /// Room for the packed form of a snapshot of `raw_len` bytes, if it packs as well as `last` (the same
    /// plugin's last one) did, with an eighth to spare; never more than zstd's worst case. A last snapshot
    /// under [`RATIO_FROM`] says nothing: zstd's frame overhead sets its ratio.
    fn room(raw_len: usize, last: Option<&Snapshot>) -> usize {
        match last {
            Some(last) if last.len >= RATIO_FROM => {
                let expected = last.packed.len() as u128 * raw_len as u128 / last.len as u128;
                (expected as usize / 8 * 9 + 4096).min(zstd::zstd_safe::compress_bound(raw_len))
            }
            _ => 0,
        }
    }

    /// Compresses into a buffer with `room` bytes to start with. zstd's one-shot call wants room for the worst
    /// case, as large as the raw snapshot, which the transient peak of each snapshot would then pay for; a
    /// buffer that grows from nothing doubles, holding its old and new bytes while it copies (gold_entity's
    /// ~3 MB packed snapshot took up to ~9 MB at a commit, with its neighbours').
    fn pack_into(raw: &[u8], room: usize) -> Snapshot {
        let packed = (|| {
            let mut encoder = zstd::stream::write::Encoder::new(Vec::with_capacity(room), LEVEL)?;
            encoder.set_pledged_src_size(Some(raw.len() as u64))?;
            encoder.include_contentsize(true)?;
            encoder.include_checksum(true)?;
            encoder.write_all(raw)?;
            encoder.finish()
        })()
        .expect("zstd compresses into memory");
        Snapshot {
            packed: packed.into_boxed_slice(),
            len: raw.len(),
        }
    }

    /// A snapshot saved by [`Snapshot::packed`], checked to be a zstd frame that states its size.
    pub fn from_packed(packed: &[u8]) -> Result<Snapshot> {
        let len = match zstd::zstd_safe::get_frame_content_size(packed) {
            Ok(Some(len)) => len,
            Ok(None) => bail!("the saved snapshot does not state its size"),
            Err(_) => bail!("the saved snapshot is not a zstd frame"),
        };
        // A plugin's memory is 32-bit: a larger size is a damaged frame, not a size to allocate for.
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= u32::MAX as usize)
            .context("the saved snapshot is corrupt: its frame states a size no plugin can hold")?;
        Ok(Snapshot {
            packed: packed.into(),
            len,
        })
    }

    /// The compressed form, as commits save it.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The size of the snapshot as the plugin returned it.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The snapshot as the plugin returned it, to give back to a plugin. zstd checks the frame's checksum and
    /// its stated size.
    pub fn unpack(&self) -> Result<Vec<u8>> {
        zstd::bulk::decompress(&self.packed, self.len).context("the saved snapshot is corrupt")
    }
}

/// Snapshots at least this large are packed on a helper thread (smaller ones pack in less time than a thread
/// takes to start).
const PACK_APART: usize = 1 << 20;

/// A plugin's restore point: its last snapshot, packed on a helper thread when large. The pipeline thread
/// is the one that bounds throughput, and zstd at ~400 MB/s on a million events' restore points (~500 MB)
/// took it ~1 s; on a helper thread the host's other core does it. The raw snapshot lives until it is packed.
pub struct RestorePoint {
    ready: Option<Snapshot>,
    /// Set while the snapshot is packed apart; `ready` is then `None`.
    apart: Option<std::thread::JoinHandle<Snapshot>>,
}

impl RestorePoint {
    /// Packs a snapshot the plugin returned (apart when large and a thread can be had); `last` is the
    /// plugin's restore point before it, whose packing tells how much room this one needs.
    pub fn pack(raw: Arc<Vec<u8>>, last: Option<&Snapshot>) -> RestorePoint {
        let room = Snapshot::room(raw.len(), last);
        if raw.len() < PACK_APART {
            return RestorePoint::from(Snapshot::pack_into(&raw, room));
        }
        let apart = Arc::clone(&raw);
        match std::thread::Builder::new()
            .name("weir-snapshot".into())
            .spawn(move || Snapshot::pack_into(&apart, room))
        {
            Ok(handle) => RestorePoint {
                ready: None,
                apart: Some(handle),
            },
            Err(_) => RestorePoint::from(Snapshot::pack_into(&raw, room)),
        }
    }

    /// The packed snapshot, waiting for its packing if need be.
    pub fn get(&mut self) -> &Snapshot {
        if let Some(handle) = self.apart.take() {
            let packed = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            self.ready = Some(packed);
        }
        self.ready
            .as_ref()
            .expect("a restore point is packed or being packed")
    }
}

impl From<Snapshot> for RestorePoint {
    fn from(snapshot: Snapshot) -> Self {
        RestorePoint {
            ready: Some(snapshot),
            apart: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_packed_form() {
        let raw: Vec<u8> = b"group\x1fpage-1\x1f".repeat(10_000);
        let snapshot = Snapshot::pack(&raw);
        assert!(snapshot.packed().len() * 10 < raw.len());
        assert_eq!(snapshot.len(), raw.len());
        let saved = Snapshot::from_packed(snapshot.packed()).unwrap();
        assert_eq!(saved, snapshot);
        assert_eq!(saved.unpack().unwrap(), raw);
        assert_eq!(Snapshot::pack(&[]).unpack().unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn room_follows_the_last_ratio_within_the_worst_case() {
        let tiny = Snapshot::pack(&[1; 8]);
        assert_eq!(
            Snapshot::room(1 << 30, Some(&tiny)),
            0,
            "a tiny snapshot says nothing"
        );
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..RATIO_FROM)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let incompressible = Snapshot::pack(&noise);
        assert!(incompressible.packed().len() > noise.len());
        let room = Snapshot::room(1 << 20, Some(&incompressible));
        assert_eq!(room, zstd::zstd_safe::compress_bound(1 << 20));
        let text = Snapshot::pack(&b"group\x1fpage-1\x1f".repeat(10_000));
        let room = Snapshot::room(1 << 20, Some(&text));
        assert!(room < (1 << 20) / 10, "{room}");
    }

    #[test]
    fn refuses_what_is_not_a_packed_snapshot() {
        let error = Snapshot::from_packed(b"WAGG2 raw state").unwrap_err();
        assert!(error.to_string().contains("not a zstd frame"), "{error}");
        let mut packed = Snapshot::pack(&[7; 1000]).packed().to_vec();
        let end = packed.len() - 1;
        packed[end] ^= 0xff;
        let snapshot = Snapshot::from_packed(&packed).unwrap();
        assert!(snapshot.unpack().is_err());
    }

    #[test]
    fn restore_points_pack_small_and_large_snapshots_alike() {
        for len in [10, PACK_APART + 10] {
            let raw: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut point = RestorePoint::pack(Arc::new(raw.clone()), None);
            assert_eq!(point.get().unpack().unwrap(), raw);
            assert_eq!(point.get(), &Snapshot::pack(&raw));
            // Packed again with room from the first: the same bytes.
            let last = point.get().clone();
            let mut next = RestorePoint::pack(Arc::new(raw.clone()), Some(&last));
            assert_eq!(next.get(), &last);
        }
    }
}
