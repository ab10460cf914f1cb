//! The lake's side of adopting a departed host (see `pipeline::adopt`): reading the plugin state a host
//! left, and committing, in that host's name, the rows of the windows its state held open together with an
//! empty state in place of its own.
//!
//! The commit log keeps the two hosts apart without any lock: epochs are numbered without gaps and each
//! record is created once, so whichever of the adoption and a commit of the returning host comes second
//! steps over the first and gives up. An adoption that finds a record of its host after the state it read
//! commits nothing; a host that finds itself adopted commits nothing more and is restarted, restoring the
//! empty state.

use anyhow::Result;
use bytes::Bytes;

use super::{Commit, Epoch, EpochFiles, Lake, Ranges, log, now_ms, retry_log};
use object_store::ObjectStoreExt;

/// The plugin state a host left in the lake.
#[derive(Debug)]
pub struct Departed {
    pub host: String,
    /// Its last whole state, then each later commit's changes (apply them in order).
    pub state: Vec<Bytes>,
    /// The newest stream sequence it committed: the adoption's gold files are named by it, so that a replay
    /// in place of the range holding it replaces them too.
    last_seq: u64,
    /// The newest epoch of the log when the state was read: a record of the host after it means it is back.
    read_through: u64,
    /// Names the adoption's staging directory and files: the host's name, then a dot, which no host name
    /// has, so no host takes the directory for its own staging (see `staged_first`), then the time and the
    /// adopting host (see [`abandoned`]).
    tag: String,
    /// When the adoption started (the time in `tag`).
    started_ms: i64,
    /// Where event time had got to at its last commit: the adoption's record keeps it, so that the host, if
    /// it comes back, carries its ticks on from there.
    event_clock: Option<log::EventClock>,
}

/// A commit written for another host (see [`Lake::start_adoption`]).
#[derive(Debug)]
pub(super) struct Adopting {
    /// The adopting host.
    pub by: String,
    /// The staging directory's name.
    pub staging: String,
    /// The newest epoch when the host's state was read (see [`Departed`]).
    pub read_through: u64,
}

/// Why a host whose state another host adopted may not commit.
pub(super) fn adopted_away(host: &str, by: &str) -> String {
    format!(
        "host {by} adopted this host's plugin state ({host} sent no report for consumer.adopt_after, so it \
         was taken for gone): stopping without committing; a restart carries on from the lake's state"
    )
}

/// Whether `staging` (a directory's name) is an adoption's that never committed: any host removes it after
/// [`ABANDONED_AFTER_MS`]. At [`Lake::open`], which runs this, every committed record has had its files moved
/// out of staging already (those since the checkpoint just now, earlier ones before a checkpoint passed
/// them), so what is left is an adoption that lost its race or whose host stopped before its record; the
/// age keeps one still under way.
pub(super) fn abandoned(staging: &str) -> bool {
    staging
        .rsplit_once(".adopted-")
        .and_then(|(_, rest)| rest.split('.').next()?.parse::<i64>().ok())
        .is_some_and(|ms| now_ms() - ms > ABANDONED_AFTER_MS)
}

const ABANDONED_AFTER_MS: i64 = 3_600_000;

/// An adoption writes its record only this soon after it started (a store away that long holds it up):
/// well before [`ABANDONED_AFTER_MS`], when another host may remove its staged files as abandoned.
const RECORD_WITHIN_MS: i64 = 45 * 60_000;

impl Lake {
    /// Every other host with plugin state in the lake, with the epoch of its last whole state (which changes
    /// when it commits again, or is adopted).
    pub fn others_with_state(&self) -> Vec<(String, u64)> {
        self.bases
            .iter()
            .filter(|(host, _)| **host != self.host)
            .map(|(host, epoch)| (host.clone(), *epoch))
            .collect()
    }

    /// The plugin state `host` left, unless there is none to adopt: it has none, or it was adopted and
    /// has not committed since (a host that restores an adoption's empty state saves its whole state at its
    /// first commit, so its last whole state is then no longer the adoption's).
    pub async fn departed(&self, host: &str) -> Result<Option<Departed>> {
        let Some(&base) = self.bases.get(host) else {
            return Ok(None);
        };
        let base_record =
            retry_log("reading the commit log", || log::record(&self.store, base)).await?;
        if base_record.adopted_by.is_some() {
            return Ok(None);
        }
        let records = retry_log("reading the commit log", || {
            log::records_after(&self.store, base.saturating_sub(1))
        })
        .await?;
        let read_through = records.iter().map(|r| r.epoch).max().unwrap_or(base);
        let own: Vec<&log::CommitRecord> = records.iter().filter(|r| r.host == host).collect();
        if own.last().is_none_or(|r| r.adopted_by.is_some()) {
            return Ok(None); // adopted meanwhile
        }
        let mut state = Vec::new();
        for record in &own {
            let Some(path) = &record.state else { continue };
            if record.state_full {
                state.clear();
            }
            state.push(self.read_state(record, path).await?);
        }
        let last_seq = own.iter().filter_map(|r| r.sequences.max()).max();
        let event_clock = own.iter().rev().find_map(|r| r.event_clock);
        Ok(Some(Departed {
            host: host.to_string(),
            state,
            last_seq: last_seq.unwrap_or(0),
            read_through,
            // The adopter's name too: two adopters that read the state in the same millisecond stage apart.
            tag: format!("{host}.adopted-{}.{}", now_ms(), self.host),
            started_ms: now_ms(),
            event_clock,
        }))
    }

    /// A record's plugin state: in place, or still staged (its host stopped between the record and moving its
    /// files, which is how a host may well have left).
    async fn read_state(&self, record: &log::CommitRecord, path: &str) -> Result<Bytes> {
        let staged = record.staged("state.bin");
        retry_log("reading a departed host's plugin state", || async {
            // A move copies before it deletes: a third look at its path finds a state moved between the first
            // two (as `read::StoreFile` looks for committed files).
            for at in [path, &staged, path] {
                match self.store.store.get(&self.store.path(at)).await {
                    Ok(got) => return Ok(got.bytes().await?),
                    Err(object_store::Error::NotFound { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(log::Unrecoverable(format!(
                "the plugin state of epoch {} is missing: not at {path}, nor staged at {staged}",
                record.epoch
            ))
            .into())
        })
        .await
    }

    /// Starts the epoch of an adoption of `departed`: its rows only, no sequences.
    pub fn begin_adoption(&self, departed: &Departed, chain: Vec<String>) -> Epoch {
        let metadata = vec![
            ("weir.chain".to_string(), chain.join(",")),
            ("weir.host".to_string(), departed.host.clone()),
            ("weir.adopted_by".to_string(), self.host.clone()),
        ];
        Epoch {
            // On this thread: an adoption's rows are few.
            files: EpochFiles::new(&departed.tag, self.config.max_file_bytes, metadata),
            sequences: Ranges::default(),
            ticks: Vec::new(),
            event_clock: departed.event_clock,
            dropped: Default::default(),
            quarantined: Default::default(),
            chain,
            gold_types: self.gold_types.clone(),
            events: 0,
            started: std::time::Instant::now(),
            gold_seqs: Some((departed.last_seq, departed.last_seq)),
        }
    }

    /// Commits an adoption's epoch in the name of the departed host, with `state` (empty) as its whole
    /// state, unless that host committed since its state was read. Settle it with [`Lake::finish_commit`].
    pub fn start_adoption(&mut self, departed: &Departed, epoch: Epoch, state: Bytes) -> Commit {
        debug_assert_eq!(epoch.sequences, Ranges::default());
        let deadline = departed.started_ms + RECORD_WITHIN_MS;
        let fence: super::Fence = std::sync::Arc::new(move || {
            u64::try_from(deadline - now_ms())
                .ok()
                .filter(|&ms| ms > 0)
                .map(std::time::Duration::from_millis)
        });
        Commit {
            store: self.store.clone(),
            host: departed.host.clone(),
            upload_concurrency: self.config.upload_concurrency.max(1),
            // From no later than the state read: a record of the host after it is stepped over, and seen.
            last_epoch: self.last_epoch.min(departed.read_through),
            checkpoint: None,
            epoch,
            state: Some(state),
            state_full: true,
            fence: Some(fence),
            adopting: Some(Adopting {
                by: self.host.clone(),
                staging: departed.tag.clone(),
                read_through: departed.read_through,
            }),
            inherited_from: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::testing::{block_on, local_lake};
    use super::super::{CommitRecord, Lake, log, rows::GoldRow};
    use crate::runtime::bindings::types::Value;

    /// Commits `seq` on `lake` with `state`, whole or a change.
    async fn commit(
        lake: &mut Lake,
        seq: u64,
        state: &'static [u8],
        full: bool,
    ) -> anyhow::Result<CommitRecord> {
        let mut epoch = lake.begin(Vec::new());
        epoch.consume([seq]);
        lake.commit(epoch, Some(Bytes::from_static(state)), full)
            .await
    }

    /// Past a checkpoint, the exclusive heir reads the records of older whole states to tell an adoption's
    /// empty state from a host's own.
    #[test]
    fn the_heir_passes_over_an_adoption_older_than_the_checkpoint() {
        let (_dir, mut config) = local_lake();
        config.checkpoint_every = 1;
        block_on(async {
            let mut b = Lake::open(config.clone(), "host-b", false).await.unwrap();
            commit(&mut b, 1, b"b-whole", true).await.unwrap();
            let mut a = Lake::open(config.clone(), "host-a", false).await.unwrap();
            commit(&mut a, 2, b"a-whole", true).await.unwrap();
            let departed = a.departed("host-b").await.unwrap().unwrap();
            let epoch = a.begin_adoption(&departed, Vec::new());
            let done = a
                .start_adoption(&departed, epoch, Bytes::from_static(b"empty"))
                .run()
                .await
                .unwrap();
            let adoption = a.finish_commit(done).epoch;
            // A checkpoint past the adoption: its record is no longer among those read at open.
            commit(&mut a, 3, b"a-change", false).await.unwrap();
            let checkpoint = log::read(&a.store).await.unwrap().checkpoint;
            assert!(checkpoint.epoch > adoption, "{checkpoint:?}");
            let c = Lake::open(config.clone(), "host-c", true).await.unwrap();
            assert_eq!(
                c.state_chain(),
                [
                    Bytes::from_static(b"a-whole"),
                    Bytes::from_static(b"a-change")
                ]
            );
        });
    }

    /// The log keeps an adoption and the adopted host apart: an adoption finding a commit of its host after
    /// the state it read gives up; a host finding itself adopted commits nothing more; restarted, it starts
    /// from the adoption's empty state and saves a whole state of its own, which a later adoption takes.
    #[test]
    fn an_adoption_and_its_host_never_both_commit() {
        let (dir, config) = local_lake();
        block_on(async {
            let mut b = Lake::open(config.clone(), "host-b", false).await.unwrap();
            commit(&mut b, 1, b"b-whole", true).await.unwrap();
            let mut a = Lake::open(config.clone(), "host-a", false).await.unwrap();
            assert_eq!(a.others_with_state(), [("host-b".to_string(), 1)]);
            commit(&mut a, 10, b"a-whole", true).await.unwrap();
            let empty = Bytes::from_static(b"empty");
            let rows = [GoldRow {
                table: "edits".into(),
                plugin: "count@1.0.0".into(),
                columns: vec![
                    ("window_start".into(), Value::Integer(0)),
                    ("edits".into(), Value::Integer(3)),
                ],
            }];
            let adopt = async |a: &mut Lake, departed: &super::Departed| {
                let mut epoch = a.begin_adoption(departed, Vec::new());
                epoch.add_gold(&rows).unwrap();
                let done = a
                    .start_adoption(departed, epoch, empty.clone())
                    .run()
                    .await?;
                anyhow::Ok(a.finish_commit(done))
            };

            // Host b commits after its state was read: it is back.
            let stale = a.departed("host-b").await.unwrap().unwrap();
            commit(&mut b, 2, b"b-change", false).await.unwrap();
            let refused = adopt(&mut a, &stale).await.unwrap_err().to_string();
            assert!(refused.contains("it is back"), "{refused}");

            let departed = a.departed("host-b").await.unwrap().unwrap();
            assert_eq!(departed.state, [&b"b-whole"[..], b"b-change"]);
            assert_eq!(departed.last_seq, 2);
            let record = adopt(&mut a, &departed).await.unwrap();
            assert_eq!(record.host, "host-b");
            assert_eq!(record.adopted_by.as_deref(), Some("host-a"));
            let file = &record.tables["gold_edits"][0].path;
            assert!(file.contains("host-b.adopted-"), "{file}");
            assert!(
                dir.path().join(file).exists(),
                "{file} is in place: {record:#?}"
            );
            assert!(a.departed("host-b").await.unwrap().is_none(), "adopted");
            // An exclusive reader carries on from the newest state that is a host's own, not an adoption's.
            let c = Lake::open(config.clone(), "host-c", true).await.unwrap();
            assert_eq!(c.state_chain(), [Bytes::from_static(b"a-whole")]);

            // Host b, still running, learns of it at its next commit.
            let stopped = commit(&mut b, 3, b"b-change", false)
                .await
                .unwrap_err()
                .to_string();
            assert!(stopped.contains("host host-a adopted"), "{stopped}");
            assert!(!log::read(&a.store).await.unwrap().committed.contains(3));

            // Restarted, it starts empty and saves a whole state of its own first.
            let mut b = Lake::open(config.clone(), "host-b", false).await.unwrap();
            assert_eq!(b.state_chain(), std::slice::from_ref(&empty));
            assert!(b.wants_full_state());
            commit(&mut b, 3, b"b-again", true).await.unwrap();
            a.refresh().await.unwrap();
            let departed = a.departed("host-b").await.unwrap().unwrap();
            assert_eq!(departed.state, [&b"b-again"[..]]);
        });
    }
}
