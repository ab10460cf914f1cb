//! Replays in place: a replayed table version put in place of the live tables' rows for the stream
//! sequences it covers, in one commit of the live log.
//!
//! A replay in place runs like any replay, into its own version (`_versions/<name>`, where an interrupted
//! run resumes), but over a range the live tables can give up whole: [`plan`] widens the range asked for
//! until no live file and no commit straddles either end, and reads the plugin state the live pipeline had
//! just before it, which the replay starts from (dedupe keys and open windows carry on as they were; windows
//! still open at the end are left to the live pipeline, which emits them). When the version holds every
//! sequence of the range, [`put_in_place`] copies its files into the live lake's staging under names of
//! their own and creates one commit record that lists them and the live files they replace: the swap is
//! that one conditional put. The files are then moved in and the replaced ones deleted, so readers of the
//! directories alone (DuckDB, pyarrow) see it too; anyone redoes those idempotent steps after a crash (the
//! live pipeline when it opens the lake, or the replay run again).
//!
//! Bronze is never replaced: it is what came in. The live pipeline runs on meanwhile: the swap's record
//! consumes no sequences, and the live pipeline's later commits hold later sequences.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use arrow_array::{Array, StringArray, TimestampMicrosecondArray, UInt64Array};
use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;

use super::log::{self, CommitRecord, FileEntry, Ranges};
use super::store::Store;
use super::{crash, read, retry, retry_log};

/// The range a replay in place covers, and where it starts from.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The first and last sequence of the range (widened to the live files' and commits' edges).
    pub from: u64,
    pub until: u64,
    /// The committed sequences of the range: the replay handles these and skips any other.
    pub sequences: Ranges,
    /// The plugin state just before `from` (a whole state, then later changes; empty at the stream's
    /// start), and the commit it is from.
    pub state: Vec<Bytes>,
    pub state_of: Option<(String, u64)>,
}

/// Plans a replay in place of `from..=until` (default: everything committed from `from` on) over the live
/// lake's commit `records` (all of them, as `log::all_records` gives them).
pub async fn plan(
    live: &Store,
    records: &[CommitRecord],
    from: u64,
    until: Option<u64>,
) -> Result<Plan> {
    let committed = log::committed(records);
    let Some(last) = committed.max() else {
        bail!(
            "the lake at {} has nothing committed: there is nothing to replay in place",
            live.url
        )
    };
    let (mut lo, mut hi) = (from.max(1), until.unwrap_or(last).min(last));
    if hi < lo {
        bail!("nothing committed in {from}..={hi} to replay (the lake's last sequence is {last})");
    }
    // Spans that must be replaced whole or not at all: every visible file of a table a replay writes, and
    // every commit (its state is the only one there is between its sequences).
    let replaced = log::replaced_paths(records);
    let mut spans: Vec<(u64, u64)> = visible_outputs(records, &replaced)
        .map(|(_, f)| (f.min_seq, f.max_seq))
        .collect();
    spans.extend(records.iter().filter_map(|r| {
        let first = r.sequences.0.first()?.0;
        Some((first, r.sequences.max()?))
    }));
    loop {
        let (before, after) = (lo, hi);
        for &(a, b) in &spans {
            if a < lo && lo <= b {
                lo = a;
            }
            if a <= hi && hi < b {
                hi = b;
            }
        }
        if (lo, hi) == (before, after) {
            break;
        }
    }
    // The state the live pipeline had after the last commit before the range.
    let before = records
        .iter()
        .filter(|r| r.sequences.max().is_some_and(|m| m < lo))
        .max_by_key(|r| r.sequences.max());
    let (state, state_of) = match before {
        Some(r) => (
            state_chain(live, records, &r.host, r.epoch).await?,
            Some((r.host.clone(), r.epoch)),
        ),
        None => (Vec::new(), None),
    };
    Ok(Plan {
        from: lo,
        until: hi,
        sequences: committed.within(lo, hi),
        state,
        state_of,
    })
}

/// The first committed sequence ingested at or after `ms` (by bronze's ingest time, which is what
/// `--from-time` means for replays of the stream too: when the stream stored the message).
///
/// Reads only what can hold it: the bronze files of the hours from `ms` on, in sequence order, until the
/// next file starts above the best sequence found (usually one or two files); of those only the two columns
/// needed, and only the row groups whose ingest times reach `ms`.
pub async fn first_sequence_at(live: &Store, records: &[CommitRecord], ms: i64) -> Result<u64> {
    first_sequence_from(live, records, ms)
        .await?
        .with_context(|| {
            format!(
                "the lake at {} holds nothing ingested at or after {ms} ms since the epoch",
                live.url
            )
        })
}

/// [`first_sequence_at`], or `None` when nothing was ingested at or after `ms`.
pub async fn first_sequence_from(
    live: &Store,
    records: &[CommitRecord],
    ms: i64,
) -> Result<Option<u64>> {
    let mut files = read::files_in_range(records, "bronze", ms, i64::MAX);
    files.sort_by_key(|f| f.min_seq);
    let from_us = ms.saturating_mul(1000);
    let mut first: Option<u64> = None;
    for file in files {
        if first.is_some_and(|s| file.min_seq > s) {
            break;
        }
        let path = &file.path;
        let reaches = |g: &parquet::file::metadata::RowGroupMetaData| {
            read::i64_range(g, "ingest_time").is_none_or(|(_, max)| max >= from_us)
        };
        let mut batches =
            read::read_file_where(live, file, Some(&["_seq", "ingest_time"]), reaches).await?;
        while let Some(batch) = batches.next().await {
            let batch = batch.with_context(|| format!("reading bronze file {path}"))?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .with_context(|| format!("bronze file {path} has no column {name}"))
            };
            let (seqs, ingest) = (column("_seq")?, column("ingest_time")?);
            let seqs = seqs
                .as_any()
                .downcast_ref::<UInt64Array>()
                .context("bronze _seq is not UInt64")?;
            let ingest = ingest
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .context("bronze ingest_time is not a timestamp")?;
            for i in 0..batch.num_rows() {
                if ingest.value(i).div_euclid(1000) >= ms {
                    let seq = seqs.value(i);
                    first = Some(first.map_or(seq, |f| f.min(seq)));
                }
            }
        }
    }
    Ok(first)
}

/// The record that put `version` in place already, if one did.
pub fn done<'a>(records: &'a [CommitRecord], version: &str) -> Option<&'a CommitRecord> {
    records
        .iter()
        .find(|r| r.replay.as_deref() == Some(version))
}

/// Puts the table version in `version` (named `name`, made by a replay of `plan`) in place of the live
/// rows of the range, or finishes doing so if a run before crashed after the swap. Returns the record.
pub async fn put_in_place(
    live: &Store,
    version: &Store,
    name: &str,
    plan: &Plan,
    concurrency: usize,
) -> Result<CommitRecord> {
    let records = log::all_records(live).await?;
    if let Some(record) = done(&records, name) {
        // Its files a later record replaced (a compaction) are gone for good: not to be moved again.
        super::republish(live, record, concurrency, &log::replaced_paths(&records)).await?;
        return Ok(record.clone());
    }
    let made = log::all_records(version).await?;
    let held = log::committed(&made);
    if !held.covers(&plan.sequences) {
        let missing = plan
            .sequences
            .0
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .find(|s| !held.contains(*s))
            .unwrap_or(plan.from);
        bail!(
            "version {name} lacks sequences of {}..={} (the first: {missing}): run the replay again to finish \
             it, with --from-bronze if the stream no longer holds them",
            plan.from,
            plan.until
        );
    }
    // Sequences of the range another host committed after the plan (in flight then) were not replayed:
    // replacing their files would lose their rows.
    if log::committed(&records).within(plan.from, plan.until) != plan.sequences {
        bail!(
            "sequences of {}..={} were committed after the replay was planned (another host had them in \
             flight): run the replay again, which plans afresh and replays them too",
            plan.from,
            plan.until
        );
    }
    let replaced = log::replaced_paths(&records);
    // A compaction since the plan may have merged files of the range with files outside it: replacing the
    // merged file would lose rows outside the range, keeping it would keep rows of the range twice.
    if let Some((_, f)) = visible_outputs(&records, &replaced).find(|(_, f)| {
        f.min_seq <= plan.until
            && f.max_seq >= plan.from
            && (f.min_seq < plan.from || f.max_seq > plan.until)
    }) {
        bail!(
            "{} holds sequences {}..={}, across the edge of the range {}..={} (a compaction merged files since \
             the replay was planned): run the replay again, which plans afresh",
            f.path,
            f.min_seq,
            f.max_seq,
            plan.from,
            plan.until
        );
    }
    let replaces: Vec<(&str, &FileEntry)> = visible_outputs(&records, &replaced)
        .filter(|(_, f)| f.min_seq >= plan.from && f.max_seq <= plan.until)
        .collect();
    let (replaced_dropped, replaced_quarantined) = count_replaced(live, &replaces).await?;

    // The version's files, copied into the live lake's staging under names of their own (the version's
    // name added), so they never collide with the files they replace.
    let staging = format!("_weir/staging/replay-{name}");
    let mut tables: BTreeMap<String, Vec<FileEntry>> = BTreeMap::new();
    let mut copies = Vec::new();
    for (table, files) in made.iter().flat_map(|r| &r.tables) {
        for f in files {
            if f.min_seq < plan.from || f.max_seq > plan.until {
                bail!(
                    "version {name} holds {} (sequences {}..={}), outside the range {}..={}: it was not made by \
                     this replay in place; replay into a new version",
                    f.path,
                    f.min_seq,
                    f.max_seq,
                    plan.from,
                    plan.until
                );
            }
            let path = match f.path.strip_suffix(".parquet") {
                Some(stem) => format!("{stem}-{name}.parquet"),
                None => format!("{}-{name}", f.path),
            };
            copies.push((f.path.clone(), format!("{staging}/{path}")));
            tables
                .entry(table.clone())
                .or_default()
                .push(FileEntry { path, ..f.clone() });
        }
    }
    futures::stream::iter(copies)
        .map(|(from, to)| async move {
            let (from, to) = (version.path(&from), live.path(&to));
            retry(&format!("copying {from} to {to}"), || async {
                let bytes = version.store.get(&from).await?.bytes().await?;
                live.store.put(&to, bytes.into()).await?;
                Ok(())
            })
            .await
        })
        // Each copy holds a whole file in memory: fewer at a time than the store would take.
        .buffer_unordered(concurrency.clamp(1, 8))
        .collect::<Vec<()>>()
        .await;
    crash::point("replace.after_files");

    let made_counts = read::summarize(&made);
    let mut chain: Vec<String> = Vec::new();
    for label in made.iter().flat_map(|r| &r.chain) {
        if !chain.contains(label) {
            chain.push(label.clone());
        }
    }
    // The live tables' gold columns, with any the version added (a restarting host takes them from the log).
    let mut gold_columns = BTreeMap::new();
    for r in records.iter().chain(&made) {
        log::merge_gold_columns(&mut gold_columns, &r.gold_columns);
    }
    let mut record = CommitRecord {
        format: CommitRecord::FORMAT,
        epoch: records.iter().map(|r| r.epoch).max().unwrap_or(0) + 1,
        host: format!("replay-{name}"),
        committed_at_ms: chrono::Utc::now().timestamp_millis(),
        sequences: Ranges::default(),
        tables,
        staging,
        state: None,
        state_full: false,
        chain,
        dropped: made_counts.dropped,
        quarantined: made_counts.quarantined,
        replaces: replaces.iter().map(|(_, f)| f.path.clone()).collect(),
        replay: Some(name.to_string()),
        replaced_dropped,
        replaced_quarantined,
        gold_columns,
        ticks: Vec::new(),
        // Not a host's: nothing restarts from it.
        event_clock: None,
        adopted_by: None,
        inherited_from: None,
        folded: None,
    };
    loop {
        match retry_log("writing the commit record", || log::create(live, &record)).await? {
            log::CreateOutcome::Created => break,
            log::CreateOutcome::Taken(existing) if *existing == record => break,
            log::CreateOutcome::Taken(existing) => {
                // The live pipeline committed this epoch number first (its files hold later sequences),
                // unless it is another replay in place of some of the same files.
                if existing
                    .replaces
                    .iter()
                    .any(|p| record.replaces.contains(p))
                {
                    bail!(
                        "epoch {} ({}) replaced files of the range {}..={} while this replay ran: run one \
                         replay in place of a range at a time",
                        existing.epoch,
                        existing.host,
                        plan.from,
                        plan.until
                    );
                }
                // As checked before the loop, for a commit that landed since: its sequences of the range
                // were not replayed, and replacing the range's files would lose their rows.
                if !existing
                    .sequences
                    .within(plan.from, plan.until)
                    .0
                    .is_empty()
                {
                    bail!(
                        "epoch {} ({}) committed sequences of {}..={} while this replay ran (the host had them \
                         in flight): run the replay again, which plans afresh and replays them too",
                        existing.epoch,
                        existing.host,
                        plan.from,
                        plan.until
                    );
                }
                record.epoch = existing.epoch + 1;
            }
        }
    }
    crash::point("replace.after_record");
    super::publish(live, &record, concurrency, &Default::default()).await?;
    Ok(record)
}

/// The visible files of every table a replay writes (all but bronze), with their tables.
fn visible_outputs<'a>(
    records: &'a [CommitRecord],
    replaced: &'a BTreeSet<&'a str>,
) -> impl Iterator<Item = (&'a str, &'a FileEntry)> + 'a {
    records
        .iter()
        .flat_map(|r| &r.tables)
        .filter(|(table, _)| table.as_str() != "bronze")
        .flat_map(|(table, files)| files.iter().map(move |f| (table.as_str(), f)))
        .filter(|(_, f)| !replaced.contains(f.path.as_str()))
}

/// The drops (by `stage/rule`) and quarantined events (by reason) in the files a replay in place replaces,
/// read from the files themselves (a range need not line up with whole commits' counts).
async fn count_replaced(
    live: &Store,
    files: &[(&str, &FileEntry)],
) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
    let mut dropped = BTreeMap::new();
    let mut quarantined = BTreeMap::new();
    for (table, f) in files {
        let (counts, keys): (&mut BTreeMap<String, u64>, &[&str]) = match *table {
            "drops" => (&mut dropped, &["stage", "rule"]),
            t if t.starts_with("quarantine") => (&mut quarantined, &["reason"]),
            _ => continue,
        };
        let mut batches = read::read_file(live, read::Committed::in_place(f)).await?;
        while let Some(batch) = batches.next().await {
            let batch = batch.with_context(|| format!("reading {}", f.path))?;
            let columns: Vec<&StringArray> = keys
                .iter()
                .map(|k| {
                    batch
                        .column_by_name(k)
                        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                        .with_context(|| format!("{}: no text column {k}", f.path))
                })
                .collect::<Result<_>>()?;
            for i in 0..batch.num_rows() {
                let key: Vec<&str> = columns
                    .iter()
                    .map(|c| if c.is_valid(i) { c.value(i) } else { "" })
                    .collect();
                *counts.entry(key.join("/")).or_default() += 1;
            }
        }
    }
    Ok((dropped, quarantined))
}

/// The plugin state `host` saved up to and including `epoch`: its last whole state, then each later change.
async fn state_chain(
    live: &Store,
    records: &[CommitRecord],
    host: &str,
    epoch: u64,
) -> Result<Vec<Bytes>> {
    let mine: Vec<&CommitRecord> = records
        .iter()
        .filter(|r| r.host == host && r.epoch <= epoch && r.state.is_some())
        .collect();
    let start = mine.iter().rposition(|r| r.state_full).unwrap_or(0);
    let mut chain = Vec::new();
    for r in &mine[start..] {
        let path = r.state.as_deref().expect("filtered on state");
        let bytes = live
            .store
            .get(&live.path(path))
            .await
            .with_context(|| format!("cannot read the plugin state {path} of epoch {}", r.epoch))?
            .bytes()
            .await?;
        chain.push(bytes);
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::ArrayRef;

    use super::*;
    use crate::lake::testing::{on_memory_store, parquet_bytes};

    /// A bronze file of `seqs` ingested at the minutes `minutes` of `hour` (2026-11-25), in row groups of two
    /// rows; written to the store unless `missing`, so that reading it fails.
    async fn bronze(
        store: &Store,
        hour: u32,
        seqs: &[u64],
        minutes: &[i64],
        missing: bool,
    ) -> FileEntry {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let start = day
            .and_hms_opt(hour, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        let times: Vec<i64> = minutes
            .iter()
            .map(|m| (start + m * 60_000) * 1000)
            .collect();
        let columns: [(&str, ArrayRef); 2] = [
            ("_seq", Arc::new(UInt64Array::from(seqs.to_vec()))),
            (
                "ingest_time",
                Arc::new(TimestampMicrosecondArray::from(times)),
            ),
        ];
        let bytes = parquet_bytes(columns, Some(2));
        let (a, b) = (seqs[0], seqs[seqs.len() - 1]);
        let path = format!("bronze/dt=2026-11-25/hour={hour:02}/{a:020}-{b:020}-h-000.parquet");
        if !missing {
            store
                .store
                .put(&store.path(&path), bytes.clone().into())
                .await
                .unwrap();
        }
        FileEntry {
            path,
            rows: seqs.len() as u64,
            bytes: bytes.len() as u64,
            min_seq: a,
            max_seq: b,
        }
    }

    /// The first sequence at a time is found in the file that holds it; files of earlier hours and files
    /// that start after the answer are never read (here they are missing from the store, so reading one
    /// would fail).
    #[test]
    fn the_first_sequence_at_a_time_reads_only_the_files_that_can_hold_it() {
        on_memory_store(|store| async move {
            let files = vec![
                bronze(&store, 9, &[1, 2], &[10, 20], true).await,
                bronze(&store, 10, &[3, 4, 5, 6], &[10, 20, 40, 50], false).await,
                bronze(&store, 11, &[7, 8], &[5, 6], false).await,
                bronze(&store, 12, &[9, 10], &[1, 2], true).await,
            ];
            let record = CommitRecord {
                format: CommitRecord::FORMAT,
                epoch: 1,
                host: "h".into(),
                tables: [("bronze".to_string(), files)].into(),
                ..CommitRecord::default()
            };
            let records = [record];
            let at = |hour: u32, minute: u32| {
                chrono::NaiveDate::from_ymd_opt(2026, 11, 25)
                    .unwrap()
                    .and_hms_opt(hour, minute, 0)
                    .unwrap()
                    .and_utc()
                    .timestamp_millis()
            };
            let first = |ms| first_sequence_at(&store, &records, ms);
            assert_eq!(first(at(10, 30)).await.unwrap(), 5);
            assert_eq!(first(at(10, 40)).await.unwrap(), 5);
            assert_eq!(first(at(10, 0)).await.unwrap(), 3);
            assert_eq!(first(at(10, 55)).await.unwrap(), 7);
            // Past the last readable file: the missing one of hour 12 is the only candidate.
            let error = first(at(11, 30)).await.unwrap_err();
            assert!(format!("{error:#}").contains("hour=12"), "{error:#}");
        });
    }
}
