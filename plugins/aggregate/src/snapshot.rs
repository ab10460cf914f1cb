//! The state's form in snapshots, every version's: the host saves a snapshot with every commit and hands it
//! to the next instance on a restart, a hot swap or a rollback, so a version must read what every earlier one
//! wrote, and should write what the one before it reads.
//!
//! - `WAGG2` + postcard (0.2.0 on): every tumbling or sliding window a [`Window`] with its start and end.
//!   Written from the state in place; accumulators in the form of 0.2.1 (see `measure::Wire`). Since 0.2.4
//!   the state is followed by the closed sessions still remembered (`State::closed_sessions`, postcard),
//!   when there are any: versions before read the state and stop there, and one without reads as none.
//! - `WAGG1` + postcard (0.1.0): each window also held its group's values ([`WindowV1`]).
//! - JSON (0.1.0 before the binary form): the same as `WAGG1`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::measure::{Acc, MapHash};
use crate::{Groups, State, Window, group_values};

/// Starts a binary (postcard) snapshot; a JSON one starts with `{`.
const SNAPSHOT_MAGIC: &[u8] = b"WAGG2";
/// Starts a binary snapshot of 0.1.0, whose windows also held their group's values (see [`WindowV1`]).
const SNAPSHOT_MAGIC_V1: &[u8] = b"WAGG1";

/// Counts the bytes written to it (to size a snapshot before writing it).
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A window as snapshots of 0.1.0 hold it, with its group's values (JSON snapshots too; `default` lets them
/// be read whichever form wrote them).
#[derive(Debug, Default, Serialize, Deserialize)]
struct WindowV1 {
    start: i64,
    end: i64,
    #[serde(default)]
    group: Vec<String>,
    accs: Vec<Acc>,
}

impl From<WindowV1> for Window {
    fn from(w: WindowV1) -> Window {
        Window {
            start: w.start,
            end: w.end,
            accs: w.accs,
        }
    }
}

/// Serializes a map with non-string keys as a list of entries (JSON objects only take string keys).
mod entries {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// A time range's windows as snapshots hold them, by group key.
type SnapshotGroups<W> = HashMap<Box<str>, Box<W>, MapHash>;

/// [`State`] as snapshots hold it, every tumbling or sliding window a [`Window`] with its start and end
/// (`W`: [`WindowV1`] to read older snapshots). Written from the state in place (see `impl Serialize for
/// State`), read back whole, then converted.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename = "State")]
pub(crate) struct Snapshot<W = Window> {
    watermark: Option<i64>,
    seq: u64,
    #[serde(with = "entries")]
    windows: BTreeMap<(i64, i64), SnapshotGroups<W>>,
    sessions: BTreeMap<String, Vec<W>>,
    history: BTreeMap<String, VecDeque<f64>>,
}

impl Serialize for State {
    /// The bytes a [`Snapshot`] of the same windows writes, without building one.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename = "Window")]
        struct WindowRef<'a> {
            start: i64,
            end: i64,
            accs: &'a [Acc],
        }
        struct GroupsRef<'a>((i64, i64), &'a Groups);
        impl Serialize for GroupsRef<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let GroupsRef((end, start), groups) = *self;
                s.collect_map(groups.iter().map(|(key, accs)| {
                    let window = WindowRef { start, end, accs };
                    (key, window)
                }))
            }
        }
        struct WindowsRef<'a>(&'a BTreeMap<(i64, i64), Groups>);
        impl Serialize for WindowsRef<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(
                    self.0
                        .iter()
                        .map(|(range, groups)| (range, GroupsRef(*range, groups))),
                )
            }
        }
        #[derive(Serialize)]
        #[serde(rename = "State")]
        struct StateRef<'a> {
            watermark: Option<i64>,
            seq: u64,
            windows: WindowsRef<'a>,
            sessions: &'a BTreeMap<String, Vec<Window>>,
            history: &'a BTreeMap<String, VecDeque<f64>>,
        }
        StateRef {
            watermark: self.watermark,
            seq: self.seq,
            windows: WindowsRef(&self.windows),
            sessions: &self.sessions,
            history: &self.history,
        }
        .serialize(s)
    }
}

impl<W: Into<Window>> From<Snapshot<W>> for State {
    fn from(old: Snapshot<W>) -> State {
        State {
            watermark: old.watermark,
            seq: old.seq,
            windows: old
                .windows
                .into_iter()
                .map(|(range, groups)| {
                    let groups = groups
                        .into_iter()
                        .map(|(key, w)| (key, Into::<Window>::into(*w).accs.into_boxed_slice()))
                        .collect();
                    (range, groups)
                })
                .collect(),
            sessions: old
                .sessions
                .into_iter()
                .map(|(key, open)| (key, open.into_iter().map(Into::into).collect()))
                .collect(),
            history: old.history,
            expiries: BTreeSet::new(),
            closed_sessions: BTreeMap::new(),
            closed_order: BTreeSet::new(),
        }
    }
}

/// The state as a snapshot.
pub(crate) fn write(state: &State) -> Vec<u8> {
    // Binary: the host saves this with every commit, and for a dense stream it holds hundreds of
    // thousands of open windows (JSON was several times larger and slower).
    // Sized first, then written once: a buffer that doubles as it fills holds up to three times the
    // snapshot while it grows, and that transient set this instance's memory high-water mark (linear
    // memory never shrinks).
    let size = postcard::to_io(state, ByteCount(0))
        .expect("state serializes")
        .0;
    // Only when there are any: a snapshot without is byte for byte what 0.2.1 to 0.2.3 wrote.
    let closed = if state.closed_sessions.is_empty() {
        Vec::new()
    } else {
        postcard::to_allocvec(&state.closed_sessions).expect("closed sessions serialize")
    };
    let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + size + closed.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    postcard::to_io(state, &mut out).expect("state serializes");
    out.extend_from_slice(&closed);
    out
}

/// The state a snapshot of any version holds (its session expiries not yet rebuilt).
pub(crate) fn read(snapshot: &[u8]) -> Result<State, String> {
    let unreadable = |e: &dyn std::fmt::Display| format!("unreadable aggregate snapshot: {e}");
    Ok(
        if let Some(binary) = snapshot.strip_prefix(SNAPSHOT_MAGIC) {
            let (snapshot, rest) =
                postcard::take_from_bytes::<Snapshot>(binary).map_err(|e| unreadable(&e))?;
            let mut state: State = snapshot.into();
            if !rest.is_empty() {
                state.closed_sessions = postcard::from_bytes(rest).map_err(|e| unreadable(&e))?;
            }
            state
        } else if let Some(binary) = snapshot.strip_prefix(SNAPSHOT_MAGIC_V1) {
            postcard::from_bytes::<Snapshot<WindowV1>>(binary)
                .map_err(|e| unreadable(&e))?
                .into()
        } else {
            // Snapshots of 0.1.0 before the binary form were JSON; lakes keep them in their commits.
            serde_json::from_slice::<Snapshot<WindowV1>>(snapshot)
                .map_err(|e| unreadable(&e))?
                .into()
        },
    )
}

/// The state as 0.1.0 wrote it, binary (tests check such snapshots restore).
pub(crate) fn write_v1(state: &State, group_columns: usize) -> Vec<u8> {
    let mut out = SNAPSHOT_MAGIC_V1.to_vec();
    postcard::to_io(&v1_state(state, group_columns), &mut out).expect("state serializes");
    out
}

/// The state as 0.1.0 wrote it before its snapshots were binary.
pub(crate) fn write_v1_json(state: &State, group_columns: usize) -> Vec<u8> {
    serde_json::to_vec(&v1_state(state, group_columns)).expect("state serializes")
}

fn v1_state(state: &State, group_columns: usize) -> Snapshot<WindowV1> {
    let v1 = |key: &str, start: i64, end: i64, accs: &[Acc]| WindowV1 {
        start,
        end,
        group: group_values(key, group_columns)
            .map(str::to_string)
            .collect(),
        accs: accs.to_vec(),
    };
    Snapshot {
        watermark: state.watermark,
        seq: state.seq,
        windows: state
            .windows
            .iter()
            .map(|(&(end, start), groups)| {
                let groups = groups
                    .iter()
                    .map(|(key, accs)| (key.clone(), Box::new(v1(key, start, end, accs))))
                    .collect();
                ((end, start), groups)
            })
            .collect(),
        sessions: state
            .sessions
            .iter()
            .map(|(key, open)| {
                let open = open.iter().map(|w| v1(key, w.start, w.end, &w.accs));
                (key.clone(), open.collect())
            })
            .collect(),
        history: state.history.clone(),
    }
}
