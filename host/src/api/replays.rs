//! Replays started from the API: each runs `weir replay` (the same binary) as a child process, so a replay
//! never competes with the live pipeline's thread or memory, and can be followed in its own log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::pipeline::replay::{Replay, ReplayStart};

/// What the API needs to start a replay of the running pipeline.
#[derive(Clone, Debug)]
pub struct ReplayContext {
    pub config_file: PathBuf,
    pub nats_url: String,
    /// The live lake's URL (versions go to `<lake>/_versions/<version>`).
    pub lake: String,
    /// Its S3-compatible endpoint when the command line gave it (`weir run --lake-endpoint`): the replay
    /// process does not see the flag.
    pub lake_endpoint: Option<String>,
    /// Where replay logs go.
    pub log_dir: PathBuf,
}

/// `POST /api/v1/pipeline/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub version: String,
    pub from_seq: Option<u64>,
    /// RFC 3339 (a string) or ms since the epoch (a number or a string of digits).
    pub from_time: Option<serde_json::Value>,
    pub to_seq: Option<u64>,
    /// Read the events from the lake's bronze table instead of the stream (for events older than the
    /// stream keeps).
    #[serde(default)]
    pub from_bronze: bool,
    /// Put the replayed silver and gold in place of the live rows of the range once it is complete,
    /// instead of leaving them in a version beside the live tables.
    #[serde(default)]
    pub in_place: bool,
}

#[derive(Debug, Serialize)]
pub struct ReplayStatus {
    pub version: String,
    pub lake: String,
    pub log: PathBuf,
    /// `running`, `finished` or `failed`.
    pub state: &'static str,
    pub exit_code: Option<i32>,
}

struct Job {
    child: Child,
    lake: String,
    log: PathBuf,
}

#[derive(Default)]
pub struct Replays {
    jobs: Mutex<BTreeMap<String, Job>>,
}

impl ReplayRequest {
    /// The replay asked for, checked as `weir replay` checks its arguments.
    fn replay(&self, context: &ReplayContext) -> Result<Replay, String> {
        let start = match (self.from_seq, &self.from_time) {
            (Some(_), Some(_)) => return Err("give from_seq or from_time, not both".into()),
            (_, Some(time)) => ReplayStart::Time(
                time.as_str()
                    .and_then(|s| s.parse::<i64>().ok())
                    .or_else(|| crate::event::parse_time_ms(time))
                    .ok_or_else(|| {
                        format!("from_time {time} is neither milliseconds nor an RFC 3339 time")
                    })?,
            ),
            (seq, None) => ReplayStart::Sequence(seq.unwrap_or(1)),
        };
        let replay = Replay {
            version: self.version.clone(),
            start,
            until: self.to_seq,
            bronze: self.from_bronze.then(|| context.lake.clone()),
            in_place: None,
        };
        replay.validate()?;
        Ok(replay)
    }
}

impl Replays {
    /// Starts `weir replay` for `request`; the error comes with its HTTP status: 400 for a request that
    /// cannot be run, 409 when that version is running already.
    pub fn start(
        &self,
        context: &ReplayContext,
        request: ReplayRequest,
    ) -> Result<ReplayStatus, (StatusCode, String)> {
        let replay = request
            .replay(context)
            .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let failed = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
        let mut jobs = self.jobs.lock().expect("not poisoned");
        if let Some(job) = jobs.get_mut(&request.version)
            && job.child.try_wait().ok().flatten().is_none()
        {
            return Err((
                StatusCode::CONFLICT,
                format!("replay {} is running already", request.version),
            ));
        }
        let lake = replay.lake_url(&context.lake);
        std::fs::create_dir_all(&context.log_dir)
            .map_err(|e| failed(format!("{}: {e}", context.log_dir.display())))?;
        let log = context
            .log_dir
            .join(format!("replay-{}.log", request.version));
        let file =
            std::fs::File::create(&log).map_err(|e| failed(format!("{}: {e}", log.display())))?;
        let exe = std::env::current_exe().map_err(|e| failed(e.to_string()))?;
        let mut command = Command::new(exe);
        command
            .arg("replay")
            .arg("--config")
            .arg(&context.config_file)
            .args(["--version", &request.version])
            .args(["--nats", &context.nats_url])
            .args(["--lake", &lake]);
        match replay.start {
            ReplayStart::Sequence(seq) => command.args(["--from-seq", &seq.to_string()]),
            ReplayStart::Time(ms) => command.args(["--from-time", &ms.to_string()]),
        };
        if let Some(endpoint) = &context.lake_endpoint {
            command.args(["--lake-endpoint", endpoint]);
        }
        if let Some(seq) = request.to_seq {
            command.args(["--to-seq", &seq.to_string()]);
        }
        if let Some(bronze) = &replay.bronze {
            command.arg(format!("--from-bronze={bronze}"));
        }
        if request.in_place {
            // The live lake the version goes in place of.
            command
                .arg("--in-place")
                .env("WEIR_LAKE_URL", &context.lake);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(|e| failed(e.to_string()))?)
            .stderr(file)
            .spawn()
            .map_err(|e| failed(format!("cannot start weir replay: {e}")))?;
        tracing::info!(version = %request.version, log = %log.display(), "replay started");
        jobs.insert(
            request.version.clone(),
            Job {
                child,
                lake: lake.clone(),
                log: log.clone(),
            },
        );
        Ok(ReplayStatus {
            version: request.version,
            lake,
            log,
            state: "running",
            exit_code: None,
        })
    }

    pub fn list(&self) -> Vec<ReplayStatus> {
        let mut jobs = self.jobs.lock().expect("not poisoned");
        jobs.iter_mut()
            .map(|(version, job)| {
                let exit = job.child.try_wait().ok().flatten();
                ReplayStatus {
                    version: version.clone(),
                    lake: job.lake.clone(),
                    log: job.log.clone(),
                    state: match exit {
                        None => "running",
                        Some(s) if s.success() => "finished",
                        Some(_) => "failed",
                    },
                    exit_code: exit.and_then(|s| s.code()),
                }
            })
            .collect()
    }
}
