//! Plugin state as the lake keeps it with each commit: per stage, the keyed state (whole, or what changed
//! since the previous commit) and the in-memory snapshot. Restoring applies the last whole state, then every
//! later change, so a restart resumes with exactly the state that matches the committed data.
//!
//! A blob is postcard in a zstd frame: window groups are text, and compress several times. Blobs written
//! before compression are bare postcard, which starts with a bool and so never with zstd's magic number.
//! Since keyed state names keys by hash, a blob starts with its format, [`FORMAT`]; the older format (keys as
//! text) starts with the bool `full` (0 or 1) and is still read. From format 3 each stage's snapshot is the
//! compressed form the host holds it in ([`Snapshot::packed`]), saved as it is; format 2 saved it raw.

use std::borrow::Cow;
use std::io::Write;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::chain::Chain;
use crate::runtime::Snapshot;
use crate::runtime::state::{Delta, TextDelta};

/// The first byte of a blob with hashed state keys and packed snapshots.
const FORMAT: u8 = 3;
/// The format with hashed state keys and raw snapshots.
const FORMAT_RAW_SNAPSHOTS: u8 = 2;

/// One commit's state. `capture` writes it borrowing the stages' snapshots; `restore` reads it back.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Blob<'a, K = Delta> {
    full: bool,
    #[serde(borrow)]
    stages: Vec<StageState<'a, K>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StageState<'a, K = Delta> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    keyed: K,
    // As one byte string (same postcard encoding as a sequence of u8, which serde would otherwise write a
    // byte at a time: a large window state made that a visible part of each commit).
    #[serde(with = "serde_bytes", borrow)]
    snapshot: Option<Cow<'a, [u8]>>,
}

/// The state of every stage, for a commit: whole when `full`, else the changes since the last call.
pub fn capture(chain: &mut Chain, names: &[String], full: bool, now_ms: i64) -> Result<Vec<u8>> {
    let mut keyed = Vec::with_capacity(names.len());
    for (stage, name) in chain.stages_mut().iter_mut().zip(names) {
        let plugin = stage.plugin_mut();
        keyed.push(if full {
            plugin.state_mut().full(now_ms)
        } else {
            plugin.state_mut().take_delta()
        });
        refresh_snapshot(plugin, name)?;
    }
    let stages = chain
        .stages_mut()
        .iter_mut()
        .zip(names)
        .zip(keyed)
        .map(|((stage, name), keyed)| StageState {
            name: Cow::Borrowed(name),
            keyed,
            snapshot: stage
                .plugin_mut()
                .last_snapshot()
                .map(|s| Cow::Borrowed(s.packed())),
        })
        .collect();
    // Serialized straight into the compressor: a whole state is tens of MB raw, and holding it beside its
    // compressed form showed in the pipeline's peak memory at commits.
    let mut encoder =
        zstd::stream::write::Encoder::new(Vec::new(), 1).context("compressing the plugin state")?;
    encoder
        .write_all(&[FORMAT])
        .context("compressing the plugin state")?;
    let writer = postcard::to_io(&Blob { full, stages }, std::io::BufWriter::new(encoder))
        .context("serializing the plugin state")?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|encoder| encoder.finish())
        .context("compressing the plugin state")
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// A whole state with nothing in it: restored, every stage starts empty (an adopted host's, see
/// `pipeline::adopt`).
pub fn empty() -> Result<Vec<u8>> {
    let mut raw = vec![FORMAT];
    raw.extend(
        postcard::to_allocvec(&Blob::<Delta> {
            full: true,
            stages: Vec::new(),
        })
        .context("serializing the plugin state")?,
    );
    zstd::stream::encode_all(&raw[..], 1).context("compressing the plugin state")
}

/// Brings the stage's snapshot up to date. A failed snapshot replaces the instance, which comes back up to
/// date (last snapshot, then its journal), so one more try normally succeeds; a commit never goes ahead with
/// a stale state.
fn refresh_snapshot(plugin: &mut crate::runtime::Plugin, stage: &str) -> Result<()> {
    if plugin.update_snapshot().is_ok() {
        return Ok(());
    }
    tracing::warn!(
        stage,
        "snapshot for the commit failed; retrying on the replacement instance"
    );
    plugin.update_snapshot().map_err(|f| {
        anyhow::anyhow!("stage {stage}: cannot snapshot its state for the commit: {f}")
    })?;
    Ok(())
}

/// A blob's stages, keyed state under hashed keys whatever the blob's format, and whether its snapshots are
/// packed.
fn decode(bytes: &[u8]) -> Result<(Blob<'_>, bool)> {
    match bytes.first() {
        Some(&FORMAT) => return Ok((postcard::from_bytes(&bytes[1..])?, true)),
        Some(&FORMAT_RAW_SNAPSHOTS) => return Ok((postcard::from_bytes(&bytes[1..])?, false)),
        // The older format, whose first byte is the bool `full`.
        Some(0 | 1) => {}
        Some(format) => anyhow::bail!(
            "state format {format} is newer than this weir (which reads {FORMAT} and older): run a newer weir"
        ),
        None => anyhow::bail!("the state is empty"),
    }
    let text: Blob<TextDelta> = postcard::from_bytes(bytes)?;
    let blob = Blob {
        full: text.full,
        stages: text
            .stages
            .into_iter()
            .map(|stage| StageState {
                name: stage.name,
                keyed: stage.keyed.into(),
                snapshot: stage.snapshot,
            })
            .collect(),
    };
    Ok((blob, false))
}

/// A stage's snapshot as a blob saved it: packed (format 3 on) or raw.
fn saved_snapshot(saved: &[u8], packed: bool) -> Result<Snapshot> {
    if packed {
        Snapshot::from_packed(saved)
    } else {
        Ok(Snapshot::pack(saved))
    }
}

/// Applies a commit chain's state to the stages (matched by name; a stage with no saved state starts empty).
pub fn restore(chain: &mut Chain, names: &[String], blobs: &[bytes::Bytes]) -> Result<()> {
    let mut snapshots: Vec<Option<Snapshot>> = vec![None; names.len()];
    for (i, bytes) in blobs.iter().enumerate() {
        let raw;
        let bytes: &[u8] = if bytes.starts_with(&ZSTD_MAGIC) {
            raw = zstd::stream::decode_all(&bytes[..])
                .with_context(|| format!("plugin state {i} is corrupt"))?;
            &raw
        } else {
            bytes
        };
        let (blob, packed) =
            decode(bytes).with_context(|| format!("plugin state {i} is corrupt"))?;
        for saved in blob.stages {
            let Some(index) = names.iter().position(|n| *n == saved.name) else {
                tracing::warn!(stage = %saved.name, "saved state for a stage the pipeline no longer has");
                continue;
            };
            chain.stages_mut()[index]
                .plugin_mut()
                .state_mut()
                .apply(saved.keyed);
            if let Some(snapshot) = saved.snapshot {
                snapshots[index] = Some(saved_snapshot(&snapshot, packed).with_context(|| {
                    format!("plugin state {i} is corrupt: stage {}", saved.name)
                })?);
            }
        }
    }
    for (index, snapshot) in snapshots.into_iter().enumerate() {
        if let Some(snapshot) = snapshot {
            chain.stages_mut()[index]
                .plugin_mut()
                .restore(&snapshot)
                .with_context(|| format!("stage {}: restoring its state", names[index]))?;
        }
    }
    // What was just restored is the baseline: the next commit's changes start here.
    for stage in chain.stages_mut() {
        stage.plugin_mut().state_mut().take_delta();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blobs from before compression are told apart by their first byte, the `full` flag.
    #[test]
    fn bare_postcard_blobs_never_look_like_zstd() {
        for full in [false, true] {
            let bare = postcard::to_allocvec(&Blob::<TextDelta> {
                full,
                stages: Vec::new(),
            })
            .unwrap();
            assert!(!bare.starts_with(&ZSTD_MAGIC));
        }
        let compressed = zstd::bulk::compress(b"state", 1).unwrap();
        assert!(compressed.starts_with(&ZSTD_MAGIC));
    }

    fn blob<K>(keyed: K) -> Blob<'static, K> {
        Blob {
            full: true,
            stages: vec![StageState {
                name: "dedupe".into(),
                keyed,
                snapshot: Some(Cow::Borrowed(b"windows")),
            }],
        }
    }

    /// Lakes written before keys were hashed, or before snapshots were packed, keep restoring: text keys are
    /// hashed as they are read, and raw snapshots packed.
    #[test]
    fn blobs_of_every_format_decode_with_hashed_keys() {
        let mut state = crate::runtime::KeyedState::default();
        state.set("id-1", vec![1], None, 0);
        state.commit(0);
        let delta = state.full(0);
        let current = [
            &[FORMAT][..],
            &postcard::to_allocvec(&blob(delta.clone())).unwrap(),
        ]
        .concat();
        let (decoded, packed) = decode(&current).unwrap();
        assert!(packed);
        assert_eq!(decoded.stages[0].keyed, delta);
        assert_eq!(decoded.stages[0].snapshot.as_deref(), Some(&b"windows"[..]));

        let raw_snapshots = [&[FORMAT_RAW_SNAPSHOTS][..], &current[1..]].concat();
        let (decoded, packed) = decode(&raw_snapshots).unwrap();
        assert!(!packed);
        assert_eq!(decoded.stages[0].keyed, delta);

        let text = TextDelta(vec![("id-1".into(), None)]);
        let older = postcard::to_allocvec(&blob(text.clone())).unwrap();
        assert!(matches!(older[0], 0 | 1));
        let (decoded, packed) = decode(&older).unwrap();
        assert!(!packed);
        assert_eq!(decoded.stages[0].keyed, Delta::from(text));

        let newer = [&[FORMAT + 1][..], &current[1..]].concat();
        let refused = decode(&newer).unwrap_err().to_string();
        assert!(refused.contains("newer than this weir"), "{refused}");
    }

    /// A raw snapshot (format 2 and older) and its packed form (format 3) restore the same state; what is
    /// not a packed snapshot is refused, not handed to the plugin.
    #[test]
    fn saved_snapshots_of_both_forms_give_the_same_state() {
        let raw = b"WAGG2 windows".repeat(100);
        let packed = Snapshot::pack(&raw);
        let from_raw = saved_snapshot(&raw, false).unwrap();
        let from_packed = saved_snapshot(packed.packed(), true).unwrap();
        assert_eq!(from_raw.unpack().unwrap(), raw);
        assert_eq!(from_packed.unpack().unwrap(), raw);
        assert!(saved_snapshot(&raw, true).is_err());
    }
}
