//! `weir plugin check FILE.wasm`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::{SandboxArgs, read_config};
use crate::runtime::Plugin;
use crate::runtime::bindings::kind_name;

#[derive(Args)]
pub struct CheckArgs {
    /// The component to check.
    file: PathBuf,
    /// Configuration to initialize it with: JSON text or @FILE.
    #[arg(long, default_value = "{}")]
    config: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    let config = read_config(&args.config)?;
    let loaded = args.sandbox.loader().load(&args.file)?;
    let plugin = Plugin::start(
        loaded.clone(),
        &config,
        args.sandbox.limits(),
        args.sandbox.clock(),
    )?;
    let (m, plan, limits) = (plugin.manifest(), plugin.plan(), plugin.limits());
    let report = json!({
        "file": args.file.display().to_string(),
        "sha256": loaded.sha256,
        "size_bytes": loaded.size_bytes,
        "compile_ms": loaded.compile_ms,
        "from_cache": loaded.from_cache,
        "manifest": {
            "name": m.name, "version": m.version, "kind": kind_name(m.kind),
            "description": m.description,
        },
        "plan": {
            "reads": plan.reads, "writes": plan.writes, "emits": plan.emits,
            "needs_payload": plan.needs_payload, "needs_attributes": plan.needs_attributes,
            "keyed_state": plan.state.keyed, "snapshot_state": plan.state.snapshot,
        },
        "imports": loaded.imports,
        "limits": limits,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("ok: {} is a valid Weir plugin", args.file.display());
    println!(
        "  name         {} {} ({})",
        m.name,
        m.version,
        kind_name(m.kind)
    );
    println!("  description  {}", m.description);
    println!("  sha256       {}", loaded.sha256);
    println!(
        "  compiled     {:.1} ms{}",
        loaded.compile_ms,
        if loaded.from_cache {
            " (precompiled, from cache)"
        } else {
            ""
        }
    );
    println!("  reads        {}", list(&plan.reads));
    println!("  writes       {}", list(&plan.writes));
    println!("  emits        {}", list(&plan.emits));
    println!(
        "  needs        payload={} attributes={} keyed_state={} snapshot_state={}",
        plan.needs_payload, plan.needs_attributes, plan.state.keyed, plan.state.snapshot
    );
    println!("  imports      {}", list(&loaded.imports));
    println!(
        "  limits       timeout {} ms, memory {} MiB, output {} MiB, {} rows/call",
        limits.call_timeout_ms,
        limits.memory_bytes >> 20,
        limits.output_bytes >> 20,
        limits.max_rows
    );
    Ok(ExitCode::SUCCESS)
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}
