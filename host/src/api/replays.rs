//! Replays started from the API: each runs `weir replay` (the same binary) as a child process, so a replay
//! never competes with the live pipeline's thread or memory, and can be followed in its own log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What the API needs to start a replay of the running pipeline.
#[derive(Clone, Debug)]
pub struct ReplayContext {
    pub config_file: PathBuf,
    pub nats_url: String,
    /// The live lake's URL (versions go to `<lake>/_versions/<version>`).
    pub lake: String,
    /// Where replay logs go.
    pub log_dir: PathBuf,
}

/// `POST /api/v1/pipeline/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub version: String,
    pub from_seq: Option<u64>,
    /// RFC 3339 or ms since the epoch.
    pub from_time: Option<String>,
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

impl Replays {
    pub fn start(
        &self,
        context: &ReplayContext,
        request: ReplayRequest,
    ) -> Result<ReplayStatus, String> {
        let replay = crate::pipeline::replay::Replay {
            version: request.version.clone(),
            start: crate::pipeline::replay::ReplayStart::Sequence(1),
            until: request.to_seq,
            bronze: request.from_bronze.then(|| context.lake.clone()),
            in_place: None,
        };
        replay.validate()?;
        let mut jobs = self.jobs.lock().expect("not poisoned");
        if let Some(job) = jobs.get_mut(&request.version)
            && job.child.try_wait().ok().flatten().is_none()
        {
            return Err(format!("replay {} is running already", request.version));
        }
        let lake = replay.lake_url(&context.lake);
        std::fs::create_dir_all(&context.log_dir).map_err(|e| e.to_string())?;
        let log = context
            .log_dir
            .join(format!("replay-{}.log", request.version));
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        command
            .arg("replay")
            .arg("--config")
            .arg(&context.config_file)
            .args(["--version", &request.version])
            .args(["--nats", &context.nats_url])
            .args(["--lake", &lake]);
        if let Some(seq) = request.from_seq {
            command.args(["--from-seq", &seq.to_string()]);
        }
        if let Some(time) = &request.from_time {
            command.args(["--from-time", time]);
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
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start weir replay: {e}"))?;
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
