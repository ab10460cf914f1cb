//! `weir config check FILE`: validates a pipeline configuration as `weir run` would, without starting.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use crate::config::Config;
use crate::runtime::{Clock, Loader, Plugin};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a pipeline file: keys, types, plugins (loaded and initialized with their configs), columns.
    Check { file: PathBuf },
}

pub fn run(cmd: ConfigCommand) -> Result<ExitCode> {
    let ConfigCommand::Check { file } = cmd;
    let config = Config::load(&file)?;
    let loader = Loader::with_default_cache();
    let (mut names, mut plugins) = (Vec::new(), Vec::new());
    for stage in config.stages()? {
        let at = || config.stage_at(&stage.name);
        let loaded = loader
            .load(&stage.path)
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", at()))?;
        let plugin = Plugin::start(loaded, &stage.config, stage.limits, Clock::System)
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", at()))?;
        println!("stage {:<10} {}", stage.name, plugin.label());
        names.push(stage.name);
        plugins.push(plugin);
    }
    crate::pipeline::chain::check_emits(names.iter().map(String::as_str).zip(&plugins))
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.stage_at(&e.stage)))?;
    let extra = config
        .silver
        .columns
        .iter()
        .map(|c| crate::event::JsonPath::parse(&c.path).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let chain = crate::pipeline::chain::Chain::with_shape(
        crate::pipeline::runner::shape(&config)?,
        plugins,
        extra,
    )?;
    crate::lake::rows::SilverColumns::new(config.silver.columns.clone(), chain.layout())
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!(
        "{}: ok ({} stages, {} silver columns, lake {})",
        file.display(),
        config.stages.len(),
        config.silver.columns.len(),
        config.lake_config().url
    );
    Ok(ExitCode::SUCCESS)
}
