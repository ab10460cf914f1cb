//! `weir serve-sse`: a local SSE server in Wikimedia's wire format (a file of events, or the generator).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use super::generate::GenOptions;
use crate::source::generate::Generator;
use crate::source::serve::{Cut, Events, Ids, ServeConfig, serve};

#[derive(Args)]
pub struct ServeSseArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8093")]
    listen: String,
    /// Serve the events of this NDJSON file (default: the generator).
    #[arg(long)]
    file: Option<PathBuf>,
    /// With the generator: stop after this many events (default: without end).
    #[arg(long, conflicts_with = "file")]
    events: Option<u64>,
    /// Events per second, up to 10 million (default: as fast as the client reads).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// The SSE ids: `timestamps` as the live stream sends them (a resume starts at the first event at or after
    /// the time sent back, so a client that sends it back unchanged skips events out of time order), or
    /// `offsets` (a resume goes on right after the event).
    #[arg(long, value_enum, default_value_t = IdShape::Timestamps)]
    ids: IdShape,
    /// Close each connection after this many events (clients resume with Last-Event-ID).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    cut_every: Option<u64>,
    /// Close each connection after this many bytes, even mid-event.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    cut_after_bytes: Option<u64>,
    /// After the last event, keep connections open with keep-alive comments.
    #[arg(long)]
    hold_open: bool,
    #[command(flatten)]
    generator: GenOptions,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IdShape {
    Timestamps,
    Offsets,
}

/// A rate the server can pace: positive, and an interval between events of at least 100 ns.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 1e7 => Ok(rate),
        Ok(_) => Err("the rate must be more than 0 and at most 10000000 events per second".into()),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

pub fn run(args: ServeSseArgs) -> Result<ExitCode> {
    let events = match &args.file {
        Some(path) => Events::from_file(path)?,
        None => Events::Generated {
            generator: Generator::new(args.generator.config()?),
            count: args.events,
        },
    };
    let config = ServeConfig {
        rate: args.rate,
        ids: match args.ids {
            IdShape::Timestamps => Ids::Timestamps,
            IdShape::Offsets => Ids::Offsets,
        },
        cut_every: args.cut_every,
        cut: match args.cut_after_bytes {
            Some(bytes) => Cut::Every(bytes),
            None => Cut::Never,
        },
        hold_open: args.hold_open,
        ..ServeConfig::new(events)
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!(
            "serving SSE on http://{}/v2/stream/recentchange",
            listener.local_addr()?
        );
        tokio::select! {
            result = serve(listener, Arc::new(config)) => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
