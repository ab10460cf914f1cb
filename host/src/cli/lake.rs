//! `weir lake`: what a lake holds, whether it is consistent, and rows of a table for a time range.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::lake::read;
use crate::lake::store::{Store, StoreConfig};

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
    fn store(&self) -> Result<Store> {
        let mut store = match &self.config {
            Some(file) => Config::load(file)?.lake_config().store(),
            None => StoreConfig::default(),
        };
        if let Some(lake) = self.lake.as_ref().filter(|l| !l.is_empty()) {
            store.url = lake.clone();
        }
        if self.endpoint.is_some() {
            store.endpoint = self.endpoint.clone();
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
        /// Also open every file and compare its row count with its commit's.
        #[arg(long)]
        deep: bool,
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
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

pub fn run(cmd: LakeCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cmd {
            LakeCommand::Ls { lake, json } => {
                let store = lake.store()?;
                let summary = read::summarize(&read::records(&store).await?);
                if json {
                    println!("{}", serde_json::to_string_pretty(&summary)?);
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{}: {} commits, {} events",
                    store.url, summary.commits, summary.events
                );
                println!(
                    "{:<22} {:>7} {:>12} {:>14}",
                    "table", "files", "rows", "bytes"
                );
                for (table, t) in &summary.tables {
                    println!("{table:<22} {:>7} {:>12} {:>14}", t.files, t.rows, t.bytes);
                }
                for (rule, n) in &summary.dropped {
                    println!("dropped  {rule:<30} {n:>10}");
                }
                for (reason, n) in &summary.quarantined {
                    println!("quarantined {reason:<27} {n:>10}");
                }
                Ok(ExitCode::SUCCESS)
            }
            LakeCommand::Verify { lake, deep } => {
                let store = lake.store()?;
                let problems = read::verify(&store, deep).await?;
                println!("{}", serde_json::to_string_pretty(&problems)?);
                Ok(if problems.is_clean() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            LakeCommand::Query {
                table,
                lake,
                from,
                to,
                limit,
            } => {
                let store = lake.store()?;
                let stdout = std::io::stdout();
                let mut writer = arrow_json::LineDelimitedWriter::new(stdout.lock());
                read::query(
                    &store,
                    &table,
                    from.unwrap_or(i64::MIN),
                    to.unwrap_or(i64::MAX),
                    limit,
                    |batch| Ok(writer.write(batch)?),
                )
                .await?;
                writer.finish()?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
