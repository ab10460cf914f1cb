//! `weir plugin ...`: the plugin author's tools.

mod check;
mod deploy;
mod new;
mod run;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::runtime::{Clock, Limits, Loader};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Validate a component against the contract; print its manifest, plan, imports and limits.
    Check(check::CheckArgs),
    /// Run a chain of plugins over NDJSON events: kept events to stdout, a JSON summary to stderr.
    Run(run::RunArgs),
    /// Create a working plugin project from a template.
    New(new::NewArgs),
    /// Hot-swap a stage of a running pipeline to this component (through its API).
    Deploy(deploy::DeployArgs),
    /// Put a stage of a running pipeline back on its previous version.
    Rollback(deploy::RollbackArgs),
}

pub fn run(cmd: PluginCommand) -> Result<std::process::ExitCode> {
    match cmd {
        PluginCommand::Check(args) => check::run(args),
        PluginCommand::Run(args) => run::run(args),
        PluginCommand::New(args) => new::run(args),
        PluginCommand::Deploy(args) => deploy::deploy(args),
        PluginCommand::Rollback(args) => deploy::rollback(args),
    }
}

/// Options shared by the commands that start plugins.
#[derive(Args, Clone)]
pub struct SandboxArgs {
    /// CPU deadline per call, in milliseconds.
    #[arg(long, default_value_t = Limits::default().call_timeout_ms)]
    timeout_ms: u64,
    /// Linear memory cap per plugin, in MiB (at most 4 GiB: a 32-bit Wasm memory cannot grow past it).
    #[arg(long, default_value_t = Limits::default().memory_bytes >> 20,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    memory_mib: u64,
    /// Pin the clock plugins see (milliseconds since the epoch, or RFC 3339), for reproducible runs.
    #[arg(long, value_parser = super::parse_time)]
    now: Option<i64>,
    /// Directory of precompiled components (`off` disables it); default `$WEIR_CACHE_DIR` or `~/.cache/weir`.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl SandboxArgs {
    fn limits(&self) -> Limits {
        Limits {
            call_timeout_ms: self.timeout_ms,
            memory_bytes: self.memory_mib << 20,
            ..Limits::default()
        }
    }

    fn clock(&self) -> Clock {
        self.now.map_or(Clock::System, Clock::Fixed)
    }

    fn loader(&self) -> Loader {
        match &self.cache_dir {
            Some(dir) if dir.as_os_str() == "off" => Loader::new(None),
            Some(dir) => Loader::new(Some(dir.clone())),
            None => Loader::with_default_cache(),
        }
    }
}

/// A plugin configuration given on the command line: JSON text, or `@FILE`.
fn read_config(arg: &str) -> Result<String> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {path}"))?,
        None => arg.to_string(),
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .with_context(|| format!("plugin config is not valid JSON: {arg}"))?;
    Ok(text)
}
