//! `weir lake`: what a lake holds, whether it is consistent, and rows of a table for a time range.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::lake::log::CachedLog;
use crate::lake::store::Store;
use crate::lake::{LakeConfig, compact, read};

#[derive(Args, Clone)]
pub struct LakeArgs {
    /// The lake (`./lake`, `s3://bucket/prefix`, ...); default: the `--config` pipeline's, else `./lake`.
    #[arg(long, env = "WEIR_LAKE_URL")]
    lake: Option<String>,
    /// Take the lake and its store options from this pipeline configuration.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// S3-compatible stores: the endpoint.
    #[arg(long, env = "WEIR_LAKE_ENDPOINT")]
    endpoint: Option<String>,
    /// Allow plain HTTP to the endpoint.
    #[arg(long)]
    allow_http: bool,
}

impl LakeArgs {
    /// The lake's settings: the `--config` pipeline's, else the defaults.
    fn config(&self) -> Result<LakeConfig> {
        Ok(match &self.config {
            Some(file) => Config::load_settings(file)?.lake_config(),
            None => LakeConfig::default(),
        })
    }

    fn store(&self) -> Result<Store> {
        let mut store = self.config()?.store();
        if let Some(lake) = self.lake.as_ref().filter(|l| !l.is_empty()) {
            store.url = lake.clone();
        }
        if let Some(endpoint) = self.endpoint.as_ref().filter(|e| !e.is_empty()) {
            // As `weir run` takes it (`Config::set_lake_endpoint`).
            store.allow_http |= endpoint.starts_with("http://");
            store.endpoint = Some(endpoint.clone());
        }
        store.allow_http |= self.allow_http;
        Store::open(&store)
    }
}

#[derive(Subcommand)]
pub enum LakeCommand {
    /// Tables with their files, rows and bytes; drops by rule; quarantine by reason (from the commit log).
    Ls {
        #[command(flatten)]
        lake: LakeArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the commit log against the files: missing, orphaned, duplicate sequences (exit 1 on problems).
    Verify {
        #[command(flatten)]
        lake: LakeArgs,
        /// Also read every file's footer and compare its row count with its commit's.
        #[arg(long)]
        deep: bool,
    },
    /// Merge the small files of partitions whose hour has passed into large ones, in one commit (the rows
    /// stay as they are; a running pipeline carries on). Finishes an interrupted run first.
    Compact {
        #[command(flatten)]
        lake: LakeArgs,
        /// Only partitions whose hour ended at least this long ago (late events still land in recent ones).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        min_age: std::time::Duration,
        /// Also partitions whose hour is not over yet (after a backfill; files added to them later are
        /// merged by a later run).
        #[arg(long)]
        include_current: bool,
        /// The fewest small files of a partition worth merging.
        #[arg(long, default_value_t = 4)]
        min_files: usize,
        /// The size of the merged files; default: the lake's `max_file_bytes`.
        #[arg(long)]
        target_bytes: Option<u64>,
        /// Only this table (repeat for several); default: all.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print rows of a table in a time range, as JSON lines.
    Query {
        /// The table: bronze, silver, gold_<name>, quarantine_bronze, quarantine_silver, quarantine_gold, drops.
        table: String,
        #[command(flatten)]
        lake: LakeArgs,
        /// From this time (RFC 3339 or ms), inclusive.
        #[arg(long, value_parser = super::parse_time)]
        from: Option<i64>,
        /// To this time (RFC 3339 or ms), exclusive.
        #[arg(long, value_parser = super::parse_time)]
        to: Option<i64>,
        /// Print at most this many rows; a note on stderr says when more match.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

pub fn run(cmd: LakeCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    // Written through, not `println!`, so that a reader gone (`weir lake query … | head`) ends the command
    // with an error `cli::main` takes for a quiet stop, not a panic.
    let out = &mut std::io::stdout().lock();
    runtime.block_on(async move {
        match cmd {
            LakeCommand::Ls { lake, json } => {
                let store = lake.store()?;
                // The log as the fold a running pipeline saved (see `log::CachedLog`) and the records after
                // it, not a request per record: a pipeline commits every few seconds for months. So does
                // `query`; `verify` checks every record.
                let summary = read::summarize(&CachedLog::read_only().records(&store).await?);
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
                    return Ok(ExitCode::SUCCESS);
                }
                writeln!(
                    out,
                    "{}: {} commits, {} events",
                    store.url, summary.commits, summary.events
                )?;
                writeln!(
                    out,
                    "{:<22} {:>7} {:>12} {:>14}",
                    "table", "files", "rows", "bytes"
                )?;
                for (table, t) in &summary.tables {
                    writeln!(out, "{table:<22} {:>7} {:>12} {:>14}", t.files, t.rows, t.bytes)?;
                }
                for (rule, n) in &summary.dropped {
                    writeln!(out, "dropped  {rule:<30} {n:>10}")?;
                }
                for (reason, n) in &summary.quarantined {
                    writeln!(out, "quarantined {reason:<27} {n:>10}")?;
                }
                Ok(ExitCode::SUCCESS)
            }
            LakeCommand::Verify { lake, deep } => {
                let store = lake.store()?;
                let problems = read::verify(&store, deep).await?;
                writeln!(out, "{}", serde_json::to_string_pretty(&problems)?)?;
                Ok(if problems.is_clean() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            LakeCommand::Compact {
                lake,
                min_age,
                include_current,
                min_files,
                target_bytes,
                tables,
                json,
            } => {
                let config = lake.config()?;
                let options = compact::Options {
                    min_age,
                    include_current,
                    min_files,
                    target_bytes: target_bytes.unwrap_or(config.max_file_bytes as u64),
                    tables,
                    concurrency: config.upload_concurrency,
                };
                let store = lake.store()?;
                let report = compact::compact(&store, &options, &mut Default::default()).await?;
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
                    return Ok(ExitCode::SUCCESS);
                }
                if report.finished > 0 {
                    writeln!(out, "finished {} interrupted compaction(s)", report.finished)?;
                }
                let Some(epoch) = report.epoch else {
                    writeln!(out, "{}: nothing to compact", store.url)?;
                    return Ok(ExitCode::SUCCESS);
                };
                writeln!(
                    out,
                    "{:<60} {:>6} {:>10} {:>12} {:>12}",
                    "merged file", "files", "rows", "bytes before", "bytes after"
                )?;
                for m in &report.merged {
                    writeln!(
                        out,
                        "{:<60} {:>6} {:>10} {:>12} {:>12}",
                        m.path, m.files, m.rows, m.bytes_before, m.bytes_after
                    )?;
                }
                let files: usize = report.merged.iter().map(|m| m.files).sum();
                writeln!(
                    out,
                    "{}: {files} files merged into {} in epoch {epoch}",
                    store.url,
                    report.merged.len()
                )?;
                Ok(ExitCode::SUCCESS)
            }
            LakeCommand::Query {
                table,
                lake,
                from,
                to,
                limit,
            } => {
                if let (Some(from), Some(to)) = (from, to)
                    && from >= to
                {
                    anyhow::bail!("--from {from} is not before --to {to}: no row is timed in that range");
                }
                let store = lake.store()?;
                let log = CachedLog::read_only();
                let records = log.records(&store).await?;
                if !records.iter().any(|r| r.tables.contains_key(&table)) {
                    // Nothing to print: say why, so that a misspelt table is not taken for an empty one.
                    let with_rows: std::collections::BTreeSet<&str> = records
                        .iter()
                        .flat_map(|r| r.tables.keys().map(String::as_str))
                        .collect();
                    let with_rows = match with_rows.into_iter().collect::<Vec<_>>().join(", ") {
                        none if none.is_empty() => "none".to_string(),
                        some => some,
                    };
                    if !is_table_name(&table) {
                        anyhow::bail!(
                            "no table {table:?} in {}: tables are bronze, silver, gold_<name>, \
                             quarantine_bronze, quarantine_silver, quarantine_gold and drops (this lake has rows \
                             in: {with_rows})",
                            store.url
                        );
                    }
                    if records.is_empty() {
                        eprintln!(
                            "{} holds no commits yet (nothing under {}/): if you expected rows, check the \
                             lake's URL",
                            store.url,
                            crate::lake::log::LOG_DIR
                        );
                    } else {
                        eprintln!(
                            "no rows of {table} are committed in {} (it has rows in: {with_rows})",
                            store.url
                        );
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                let mut writer = arrow_json::LineDelimitedWriter::new(&mut *out);
                let mut records = records;
                let (mut printed, mut more) = (0, false);
                for attempt in 1.. {
                    // One row past the limit, to tell whether more match.
                    let read = read::query(
                        &store,
                        &records,
                        &table,
                        from.unwrap_or(i64::MIN),
                        to.unwrap_or(i64::MAX),
                        limit.saturating_add(1),
                        |batch| {
                            let take = batch.num_rows().min(limit - printed);
                            more |= take < batch.num_rows();
                            if take > 0 {
                                writer.write(&batch.slice(0, take))?;
                                printed += take;
                            }
                            Ok(true)
                        },
                    )
                    .await;
                    match read {
                        Ok(_) => break,
                        // A file the log named is neither in place nor staged: replaced by a compaction since
                        // the log was read. Read afresh, unless rows are out already (read again, they would
                        // come twice).
                        Err(e) if read::is_not_found(&e) && printed == 0 && attempt < 5 => {
                            tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                            records = log.records(&store).await?;
                        }
                        // Every row asked for is out; the file replaced was read only to tell whether more match.
                        Err(e) if read::is_not_found(&e) && printed == limit => {
                            more = true;
                            break;
                        }
                        Err(e) if read::is_not_found(&e) && printed > 0 => {
                            return Err(e.context(
                                "a file of the table was replaced while its rows were being printed (a \
                                 compaction): the rows above are incomplete; run the query again",
                            ));
                        }
                        Err(e) => return Err(e),
                    }
                }
                writer.finish()?;
                if more {
                    eprintln!(
                        "printed the first {limit} rows of {table}; more may match: raise --limit or narrow \
                         --from/--to"
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Whether `table` names one of the lake's tables (a gold table by its prefix), committed yet or not.
fn is_table_name(table: &str) -> bool {
    use crate::lake::schema::Layer;
    matches!(table, "bronze" | "silver" | "drops")
        || [Layer::Bronze, Layer::Silver, Layer::Gold]
            .iter()
            .any(|layer| layer.quarantine_table() == table)
        || table
            .strip_prefix("gold_")
            .is_some_and(|name| !name.is_empty())
}
