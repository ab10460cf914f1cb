//! `weir gen`: realistic `recentchange` events as NDJSON, reproducible by seed.

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::source::generate::{GenConfig, Generator};

#[derive(Args)]
pub struct GenArgs {
    /// How many events.
    #[arg(long, short = 'n', default_value_t = 1000)]
    count: u64,
    #[command(flatten)]
    options: GenOptions,
}

/// The generator's knobs (shared with `weir serve-sse`).
#[derive(Args)]
pub struct GenOptions {
    /// The seed: the same seed gives the same events, byte for byte.
    #[arg(long, default_value_t = GenConfig::default().seed)]
    seed: u64,
    /// Event time of the first event (RFC 3339 or ms since the epoch); default 2026-01-01T00:00:00Z.
    #[arg(long, value_parser = super::parse_time)]
    start: Option<i64>,
    /// Events per second of event time (the live stream averages ~35).
    #[arg(long, default_value_t = GenConfig::default().events_per_s)]
    event_rate: f64,
    /// Share of duplicate deliveries (0-1).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Share of malformed JSON lines (0-1).
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    /// Share of events 1-3 hours late (0-1).
    #[arg(long, default_value_t = 0.0)]
    late: f64,
    /// Share of events 1-30 days in the future (0-1).
    #[arg(long, default_value_t = 0.0)]
    future: f64,
    /// Share of canary events (0-1).
    #[arg(long, default_value_t = 0.0)]
    canary: f64,
    /// Events reach the log up to this many ms after their time, so neighbours carry times out of order (as
    /// on the live stream).
    #[arg(long, default_value_t = 0)]
    disorder_ms: u64,
}

impl GenOptions {
    pub fn config(&self) -> Result<GenConfig> {
        for (name, rate) in [
            ("--duplicates", self.duplicates),
            ("--malformed", self.malformed),
            ("--late", self.late),
            ("--future", self.future),
            ("--canary", self.canary),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                anyhow::bail!("{name} {rate} is not a share between 0 and 1");
            }
        }
        if self.event_rate <= 0.0 {
            anyhow::bail!("--event-rate must be positive");
        }
        Ok(GenConfig {
            seed: self.seed,
            start_ms: self.start.unwrap_or(GenConfig::default().start_ms),
            events_per_s: self.event_rate,
            duplicates: self.duplicates,
            malformed: self.malformed,
            late: self.late,
            future: self.future,
            canary: self.canary,
            disorder_ms: self.disorder_ms,
        })
    }
}

pub fn run(args: GenArgs) -> Result<ExitCode> {
    let generator = Generator::new(args.options.config()?);
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    for i in 0..args.count {
        out.write_all(generator.event(i).data.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
