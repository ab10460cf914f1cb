//! `weir plugin run A.wasm [B.wasm ...] --input events.ndjson`: the plugin author's local test harness.
//!
//! Kept events go to stdout as NDJSON (with the chain's writes applied), a JSON summary to stderr, and, when
//! asked, quarantined events and emitted rows to files. Every input line is accounted for in the summary:
//! `in = kept + dropped + quarantined`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::{SandboxArgs, read_config};
use crate::event::{Event, EventShape, JsonPath};
use crate::pipeline::chain::{Chain, ChainOutput, EmittedRow};
use crate::runtime::{Plugin, PluginStats};

#[derive(Args)]
pub struct RunArgs {
    /// The plugins to chain, in order.
    #[arg(required = true)]
    plugins: Vec<PathBuf>,
    /// Configuration for each plugin, in the same order (JSON text or @FILE); missing ones are `{}`.
    #[arg(long = "config")]
    configs: Vec<String>,
    /// NDJSON events to read; standard input when absent.
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Write quarantined events with their reasons here, as NDJSON.
    #[arg(long)]
    quarantine: Option<PathBuf>,
    /// Write rows emitted by aggregates here, as NDJSON.
    #[arg(long)]
    rows: Option<PathBuf>,
    /// Write the summary here instead of standard error.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Events per call into each plugin.
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// JSON path of the event id.
    #[arg(long, default_value = "meta.id")]
    id_path: String,
    /// JSON path of the event time (RFC 3339 text or milliseconds).
    #[arg(long, default_value = "meta.dt")]
    time_path: String,
    /// JSON path of the partition key.
    #[arg(long)]
    key_path: Option<String>,
    /// The watermark trails the newest event time by this much; windows close behind it. At the end of the
    /// input every window is closed.
    #[arg(long, default_value_t = 60_000)]
    watermark_delay_ms: i64,
    /// Do not write kept events to stdout (benchmarks, or when only the summary matters).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

#[derive(Default, Serialize)]
struct Summary {
    #[serde(rename = "in")]
    events_in: u64,
    kept: u64,
    dropped: u64,
    quarantined: u64,
    /// Kept events an aggregate could not count (late): in `kept` and in the quarantine file.
    not_aggregated: u64,
    rows: u64,
    /// `plugin/rule` → count.
    dropped_by_rule: BTreeMap<String, u64>,
    /// reason → count, parse failures included.
    quarantined_by_reason: BTreeMap<String, u64>,
    elapsed_ms: f64,
    events_per_s: f64,
    plugins: Vec<PluginSummary>,
}

#[derive(Serialize)]
struct PluginSummary {
    plugin: String,
    sha256: String,
    #[serde(flatten)]
    stats: PluginStats,
}

struct Sinks {
    kept: Option<BufWriter<std::io::StdoutLock<'static>>>,
    quarantine: Option<BufWriter<File>>,
    rows: Option<BufWriter<File>>,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.configs.len() > args.plugins.len() {
        bail!(
            "{} --config values for {} plugins",
            args.configs.len(),
            args.plugins.len()
        );
    }
    let loader = args.sandbox.loader();
    let clock = args.sandbox.clock();
    let mut plugins = Vec::new();
    for (i, path) in args.plugins.iter().enumerate() {
        let config = read_config(args.configs.get(i).map_or("{}", String::as_str))?;
        let loaded = loader.load(path)?;
        plugins.push(Plugin::start(
            loaded,
            &config,
            args.sandbox.limits(),
            clock.clone(),
        )?);
    }
    let shape = EventShape {
        id: JsonPath::parse(&args.id_path).map_err(|e| anyhow::anyhow!("--id-path: {e}"))?,
        time: JsonPath::parse(&args.time_path).map_err(|e| anyhow::anyhow!("--time-path: {e}"))?,
        key: args
            .key_path
            .as_deref()
            .map(JsonPath::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--key-path: {e}"))?,
    };
    let mut chain = Chain::with_shape(shape, plugins, Vec::new())?;
    let parser = chain.parser();
    let input: Box<dyn BufRead> = match &args.input {
        Some(path) => {
            Box::new(BufReader::new(File::open(path).with_context(|| {
                format!("cannot open input {}", path.display())
            })?))
        }
        None => Box::new(BufReader::new(std::io::stdin())),
    };
    let create = |p: &Option<PathBuf>| -> Result<Option<BufWriter<File>>> {
        p.as_ref()
            .map(|p| {
                File::create(p)
                    .map(BufWriter::new)
                    .with_context(|| format!("cannot create {}", p.display()))
            })
            .transpose()
    };
    let mut sinks = Sinks {
        kept: (!args.quiet).then(|| BufWriter::new(std::io::stdout().lock())),
        quarantine: create(&args.quarantine)?,
        rows: create(&args.rows)?,
    };

    let started = Instant::now();
    let mut summary = Summary::default();
    let mut batch: Vec<Event> = Vec::with_capacity(args.batch_size);
    let mut max_time = i64::MIN;
    for (index, line) in input.split(b'\n').enumerate() {
        let mut line = line.context("cannot read input")?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.events_in += 1;
        let line_no = index + 1;
        let line = bytes::Bytes::from(line);
        match parser.parse(line.clone(), clock.now_ms()) {
            Ok(mut event) => {
                event
                    .attributes
                    .push(("input.line".into(), line_no.to_string()));
                max_time = max_time.max(event.time_ms);
                batch.push(event);
            }
            Err(rejected) => {
                summary.quarantined += 1;
                *summary
                    .quarantined_by_reason
                    .entry(rejected.reason.into())
                    .or_default() += 1;
                if let Some(out) = &mut sinks.quarantine {
                    let record = json!({
                        "line": line_no, "stage": "parse", "reason": rejected.reason,
                        "failed_checks": [rejected.detail], "data": String::from_utf8_lossy(&line),
                    });
                    writeln!(out, "{record}")?;
                }
            }
        }
        if batch.len() == args.batch_size {
            let output = chain.run(std::mem::take(&mut batch));
            record(&mut summary, &mut sinks, output)?;
            let (rows, _) = chain.on_watermark(max_time.saturating_sub(args.watermark_delay_ms));
            write_rows(&mut summary, &mut sinks, rows)?;
        }
    }
    if !batch.is_empty() {
        let output = chain.run(batch);
        record(&mut summary, &mut sinks, output)?;
    }
    // End of input: close every window.
    let (rows, failures) = chain.on_watermark(i64::MAX);
    write_rows(&mut summary, &mut sinks, rows)?;
    for (plugin, failure) in failures {
        tracing::error!(plugin, "final watermark failed: {failure}");
    }
    for sink in [sinks.quarantine.as_mut(), sinks.rows.as_mut()]
        .into_iter()
        .flatten()
    {
        sink.flush()?;
    }
    if let Some(out) = &mut sinks.kept {
        out.flush()?;
    }

    let elapsed = started.elapsed().as_secs_f64();
    summary.elapsed_ms = elapsed * 1e3;
    summary.events_per_s = if elapsed > 0.0 {
        summary.events_in as f64 / elapsed
    } else {
        0.0
    };
    summary.plugins = chain
        .stages()
        .iter()
        .map(|s| PluginSummary {
            plugin: s.plugin().label(),
            sha256: s.plugin().loaded().sha256.clone(),
            stats: s.plugin().stats().clone(),
        })
        .collect();
    let text = serde_json::to_string_pretty(&summary)?;
    match &args.summary {
        Some(path) => std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => eprintln!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn record(summary: &mut Summary, sinks: &mut Sinks, output: ChainOutput) -> Result<()> {
    summary.kept += output.kept.len() as u64;
    summary.dropped += output.dropped.len() as u64;
    let gold = output.quarantined.iter().filter(|q| q.gold).count() as u64;
    summary.quarantined += output.quarantined.len() as u64 - gold;
    summary.not_aggregated += gold;
    for d in &output.dropped {
        let name = d.plugin.split('@').next().unwrap_or(&d.plugin);
        *summary
            .dropped_by_rule
            .entry(format!("{name}/{}", d.rule))
            .or_default() += 1;
    }
    for q in &output.quarantined {
        *summary
            .quarantined_by_reason
            .entry(q.reason.clone())
            .or_default() += 1;
        if let Some(out) = &mut sinks.quarantine {
            let line = q
                .event
                .attributes
                .iter()
                .find(|(k, _)| k == "input.line")
                .map(|(_, v)| v.as_str());
            let record = json!({
                "line": line.and_then(|l| l.parse::<u64>().ok()), "id": q.event.id, "stage": "plugin",
                "plugin": q.plugin, "reason": q.reason, "failed_checks": q.failed_checks, "data": q.event.raw(),
            });
            writeln!(out, "{record}")?;
        }
    }
    if let Some(out) = &mut sinks.kept {
        for event in &output.kept {
            out.write_all(event.to_json_text().as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    write_rows(summary, sinks, output.rows)
}

fn write_rows(summary: &mut Summary, sinks: &mut Sinks, rows: Vec<EmittedRow>) -> Result<()> {
    summary.rows += rows.len() as u64;
    if let Some(out) = &mut sinks.rows {
        for emitted in rows {
            let mut columns = serde_json::Map::new();
            for (name, value) in emitted.row.columns {
                let value = crate::event::from_wit_value(value).unwrap_or(serde_json::Value::Null);
                columns.insert(name, value);
            }
            let record =
                json!({"plugin": emitted.plugin, "table": emitted.row.table, "row": columns});
            writeln!(out, "{record}")?;
        }
    }
    Ok(())
}
