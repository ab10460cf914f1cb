//! `weir health`: asks a running `weir run`'s API whether it is alive (`/health`) or ready (`/ready`), for
//! container health checks where no HTTP client is installed (the image has none).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct HealthArgs {
    /// The API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Ask `/ready` (NATS and the store reachable, plugins loaded, not stopping) instead of `/health`.
    #[arg(long)]
    ready: bool,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Exit 0 when the endpoint answers 200, 1 otherwise; its body goes to stdout either way.
pub fn run(args: HealthArgs) -> Result<ExitCode> {
    let path = if args.ready { "ready" } else { "health" };
    let url = format!("{}/{path}", args.url.trim_end_matches('/'));
    crate::tls::install_default_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(args.timeout).build()?;
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("{url} did not answer"))?;
        let status = response.status();
        anyhow::Ok((status, response.text().await.unwrap_or_default()))
    })?;
    println!("{body}");
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{url} answered {status}");
        Ok(ExitCode::FAILURE)
    }
}
