//! The `weir` command line.

mod config;
mod generate;
mod health;
mod ingest;
mod lake;
mod plugin;
mod replay;
mod run;
mod serve_sse;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Runs sandboxed WebAssembly plugins over live event streams"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: source, stream, plugins, lake and API, as one service.
    Run(run::RunArgs),
    /// Check a pipeline configuration without starting it.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Inspect a lake: its tables, its consistency, its rows.
    #[command(subcommand)]
    Lake(lake::LakeCommand),
    /// Check, run and scaffold plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Compute silver and gold again from the stream (from a sequence or time, with new plugin versions if
    /// wanted) into a new table version.
    Replay(replay::ReplayArgs),
    /// Read an SSE stream into JetStream, each event exactly once (resumes where it left off).
    Ingest(ingest::IngestArgs),
    /// Write realistic Wikimedia recentchange events as NDJSON (reproducible by seed).
    Gen(generate::GenArgs),
    /// Serve a file of events, or generated ones, as a local SSE stream in Wikimedia's format.
    ServeSse(serve_sse::ServeSseArgs),
    /// Ask a running pipeline's API whether it is alive (or, with --ready, ready): exit 0 when it is. For
    /// container health checks.
    Health(health::HealthArgs),
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Config(cmd) => config::run(cmd),
        Command::Lake(cmd) => lake::run(cmd),
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Replay(args) => replay::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Gen(args) => generate::run(args),
        Command::ServeSse(args) => serve_sse::run(args),
        Command::Health(args) => health::run(args),
    };
    match result {
        Ok(code) => code,
        // What reads the output stopped reading (`weir lake query … | head`): done, as for any Unix tool.
        Err(e) if closed_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether a command failed because its output's reader went away.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("warn,weir=info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// A time on the command line: milliseconds since the epoch, or RFC 3339.
fn parse_time(text: &str) -> Result<i64, String> {
    text.parse::<i64>().or_else(|_| {
        crate::event::parse_rfc3339_ms(text)
            .ok_or_else(|| format!("{text:?} is neither milliseconds nor an RFC 3339 time"))
    })
}

/// Listens for SIGINT (Ctrl-C) and SIGTERM from the moment it is called, and resolves on the first one.
///
/// Call it as soon as the runtime exists: a signal that arrives while the service is still starting is then a
/// clean stop once start-up is done, not the default action (which kills the process mid-commit).
fn shutdown_signal(runtime: &tokio::runtime::Runtime) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let _runtime = runtime.enter();
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        // A second signal while the stop waits (on a store that does not answer, say) ends the process at
        // once: nothing unacked is lost, it comes again to the next run and is skipped if committed.
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!(
                "weir: a second signal, stopping at once; what the last commit would have acked comes \
                 again to the next run"
            );
            std::process::exit(130);
        });
    }
}
