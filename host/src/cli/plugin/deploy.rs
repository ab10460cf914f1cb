//! `weir plugin deploy` and `weir plugin rollback`: hot-swap a stage of a running pipeline through its API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args)]
pub struct RemoteArgs {
    /// The running pipeline's API.
    #[arg(long, env = "WEIR_API", default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The bearer token, when the pipeline has one.
    #[arg(long, env = "WEIR_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The stage to change (its name in the pipeline configuration).
    #[arg(long)]
    stage: String,
}

#[derive(Args)]
pub struct DeployArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    /// The new component (`.wasm`). It is checked locally first, then compiled, checked against the
    /// contract and self-tested by the pipeline before it swaps in between two batches.
    file: PathBuf,
}

#[derive(Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    remote: RemoteArgs,
}

pub fn deploy(args: DeployArgs) -> Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    // Catch a wrong file here, with a local message, before uploading megabytes.
    crate::runtime::Loader::new(None)
        .load_bytes(&args.file, &bytes)
        .with_context(|| format!("{} is not a deployable plugin", args.file.display()))?;
    let url = format!(
        "{}/api/v1/plugins/{}",
        args.remote.api.trim_end_matches('/'),
        args.remote.stage
    );
    let answer = post(&args.remote, &url, bytes)?;
    println!(
        "stage {} now runs {}",
        args.remote.stage,
        answer["deployed"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(args: RollbackArgs) -> Result<ExitCode> {
    let url = format!(
        "{}/api/v1/plugins/{}/rollback",
        args.remote.api.trim_end_matches('/'),
        args.remote.stage
    );
    let answer = post(&args.remote, &url, Vec::new())?;
    println!(
        "stage {} rolled back to {}",
        args.remote.stage,
        answer["running"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

fn post(remote: &RemoteArgs, url: &str, body: Vec<u8>) -> Result<serde_json::Value> {
    crate::tls::install_default_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // A deploy compiles and self-tests the plugin before it answers: minutes at most.
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(300))
            .build()?;
        let mut request = client
            .post(url)
            .header("content-type", "application/wasm")
            .body(body);
        // Trimmed as the pipeline trims its own: a token read from a file ends in a newline, which is not
        // valid in a header.
        if let Some(token) = remote
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "no answer within its time"
            } else if e.is_connect() {
                "is `weir run` running? --api"
            } else {
                "the request could not be sent"
            };
            anyhow::anyhow!("cannot reach the pipeline's API at {url} ({why}): {e}")
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let message = json["error"].as_str().map(str::to_string).unwrap_or(text);
            bail!("{url}: {status}: {message}");
        }
        Ok(json)
    })
}
