//! The HTTP API (axum): health and readiness, Prometheus metrics, plugins (list, deploy, rollback), pipeline
//! control (pause, resume), queries over recent data, and an OpenAPI document (`/openapi.json`).
//!
//! Control endpoints require `Authorization: Bearer <token>` when a token is configured; uploads are capped
//! at `api.max_upload_bytes`. Queries about recent data answer from memory (no store round trip); gold
//! queries can also read the committed tables (`source=lake`).

mod gold;
mod metrics;
mod openapi;
mod replays;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::lake::store::Store;
use crate::pipeline::shared::{Control, Shared};
use crate::runtime::Loader;
pub use replays::ReplayContext;
use replays::{ReplayRequest, Replays};

pub struct ApiOptions {
    pub token: Option<String>,
    pub max_upload_bytes: usize,
    pub loader: Loader,
    /// Replays from the API (`None`: not offered, e.g. in a replay itself).
    pub replay: Option<ReplayContext>,
    /// The lake the pipeline commits to, for queries beyond the rows kept in memory.
    pub lake: Option<Store>,
    /// Its commit log, as the pipeline keeps reading it (see `CachedLog::keep_up`).
    pub log: Arc<crate::lake::log::CachedLog>,
    /// The cluster's record of deploys, for what each host of the pipeline runs.
    pub deploys: Option<crate::bus::deploys::Deploys>,
    /// Which hosts a pause or resume asked here reaches.
    pub pause: crate::pipeline::pause::Scope,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    loader: Loader,
    token: Option<Arc<str>>,
    replay: Option<Arc<ReplayContext>>,
    replays: Arc<Replays>,
    lake: Option<Store>,
    /// The lake's commit log as queries last read it.
    log: Arc<crate::lake::log::CachedLog>,
    deploys: Option<crate::bus::deploys::Deploys>,
    pause: crate::pipeline::pause::Scope,
}

pub fn router(shared: Arc<Shared>, options: ApiOptions) -> Router {
    let state = AppState {
        shared,
        loader: options.loader,
        token: options.token.map(Into::into),
        replay: options.replay.map(Arc::new),
        replays: Arc::default(),
        lake: options.lake,
        log: options.log,
        deploys: options.deploys,
        pause: options.pause,
    };
    let control = Router::new()
        .route("/api/v1/plugins/{stage}", post(deploy_upload))
        .route("/api/v1/plugins/{stage}/rollback", post(rollback))
        .route("/api/v1/pipeline/pause", post(pause))
        .route("/api/v1/pipeline/resume", post(resume))
        .route("/api/v1/pipeline/replay", post(start_replay))
        .layer(DefaultBodyLimit::max(options.max_upload_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::document))
        .route("/api/v1/plugins", get(plugins))
        .route("/api/v1/pipeline", get(pipeline))
        .route("/api/v1/events/latest", get(latest_events))
        .route("/api/v1/gold/{table}", get(gold::gold))
        .route("/api/v1/quarantine/reasons", get(quarantine_reasons))
        .route("/api/v1/pipeline/replays", get(list_replays))
        .merge(control)
        .with_state(state)
}

/// What a control request hears when the pipeline stops before answering it.
pub const STOPPING: &str = "the pipeline is stopping";

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        // The scheme's name is case-insensitive (RFC 9110); the token is compared in constant time, so
        // timing tells nothing about how much of a guess was right.
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, given)| given.trim());
        if !given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "control endpoints need `Authorization: Bearer <token>` (api.token or WEIR_API_TOKEN)",
            );
        }
    }
    next.run(request).await
}

/// Whether two secrets are equal, in time that depends on their lengths only.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && given
            .iter()
            .zip(secret)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<AppState>) -> Response {
    let h = &state.shared.health;
    // Once, so that the status and the body agree.
    let ready = state.shared.is_ready();
    let body = json!({
        "ready": ready,
        "nats_connected": h.nats_connected(),
        "store_reachable": h.store_reachable(),
        "plugins_loaded": h.plugins_loaded.load(Ordering::Relaxed),
        "paused": h.paused.load(Ordering::Relaxed),
        "stopping": h.stopping.load(Ordering::Relaxed),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// This host's plugins, and what each host of the pipeline runs (`hosts`, from their reports; a host that
/// stopped drops out within half a minute).
async fn plugins(State(state): State<AppState>) -> Response {
    let mut body = json!({ "plugins": *state.shared.plugins.load_full() });
    if let Some(deploys) = &state.deploys {
        match tokio::time::timeout(std::time::Duration::from_secs(2), deploys.hosts()).await {
            Ok(Ok(hosts)) => body["hosts"] = json!(hosts),
            Ok(Err(e)) => body["hosts_error"] = json!(format!("{e:#}")),
            Err(_) => body["hosts_error"] = json!("NATS did not answer within 2 s"),
        }
    }
    Json(body).into_response()
}

async fn pipeline(State(state): State<AppState>) -> Response {
    let c = &state.shared.counters;
    let (swaps, p50, p99) = state.shared.pauses.summary();
    Json(json!({
        "pipeline": state.shared.pipeline,
        "stages": state.shared.stages,
        "paused": state.shared.health.paused.load(Ordering::Relaxed),
        "received": c.received.load(Ordering::Relaxed),
        "silver": c.silver.load(Ordering::Relaxed),
        "dropped": c.dropped.load(Ordering::Relaxed),
        "quarantined": c.quarantined.load(Ordering::Relaxed),
        "commits": c.commits.load(Ordering::Relaxed),
        "committed_events": c.committed_events.load(Ordering::Relaxed),
        "last_commit_ms": c.last_commit_ms.load(Ordering::Relaxed),
        "swap_pauses": { "count": swaps, "p50_us": p50, "p99_us": p99 },
        "lake": state.shared.lake.url,
        "source": source(&state),
    }))
    .into_response()
}

/// The ingest of this process, when it runs one: whether it is connected, and what ended the last
/// connection that failed, or the ingest itself (kept once connected again, with its time, so that a
/// flapping source shows).
fn source(state: &AppState) -> serde_json::Value {
    let ingest = state.shared.ingest.load_full();
    let Some(ingest) = ingest.as_ref() else {
        return serde_json::Value::Null;
    };
    let last_failure = ingest.last_failure.lock().expect("not poisoned").clone();
    json!({
        "connected": ingest.connected.load(Ordering::Relaxed),
        "received": ingest.received.load(Ordering::Relaxed),
        "reconnects": ingest.reconnects.load(Ordering::Relaxed),
        "lag_ms": ingest.lag_ms(),
        "last_failure": last_failure,
    })
}

/// Compiles a component off the async threads, checks it against the contract and asks the pipeline to
/// swap it in (after its self-test). Shared by the API, the watched directory and the following of other
/// hosts' deploys; `announce` says whether the other hosts of the pipeline follow this one (not when it came
/// from them).
pub async fn deploy(
    shared: &Shared,
    loader: &Loader,
    stage: &str,
    path: &Path,
    bytes: Option<Bytes>,
    announce: bool,
) -> Result<String, String> {
    if !shared.stages.iter().any(|s| s == stage) {
        return Err(format!(
            "no stage named {stage:?} (stages: {})",
            shared.stages.join(", ")
        ));
    }
    let bytes = match bytes {
        Some(bytes) => bytes,
        None => tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read plugin {}: {e}", path.display()))?
            .into(),
    };
    let (loader, path, component) = (loader.clone(), path.to_path_buf(), bytes.clone());
    let loaded = tokio::task::spawn_blocking(move || loader.load_bytes(&path, &component))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e:#}"))?;
    ask(shared, |reply| Control::Deploy {
        stage: stage.to_string(),
        plugin: loaded,
        bytes,
        announce,
        reply,
    })
    .await
}

/// Rolls a stage back to its version before the last deploy, if that one's SHA-256 is `to` (when given);
/// `announce` as for [`deploy`].
pub async fn roll_back(
    shared: &Shared,
    stage: &str,
    announce: bool,
    to: Option<&str>,
) -> Result<String, String> {
    ask(shared, |reply| Control::Rollback {
        stage: stage.to_string(),
        announce,
        to: to.map(str::to_string),
        reply,
    })
    .await
}

/// Sends the pipeline a control request and waits for its answer; [`STOPPING`] when it stops meanwhile.
async fn ask(
    shared: &Shared,
    request: impl FnOnce(tokio::sync::oneshot::Sender<Result<String, String>>) -> Control,
) -> Result<String, String> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    shared
        .control
        .send(request(reply))
        .await
        .map_err(|_| STOPPING.to_string())?;
    answer.await.map_err(|_| STOPPING.to_string())?
}

async fn deploy_upload(
    State(state): State<AppState>,
    UrlPath(stage): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Some(unknown) = unknown_stage(&state, &stage) {
        return unknown;
    }
    if body.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be the plugin's .wasm component",
        );
    }
    let name = format!("upload:{stage}.wasm");
    match deploy(
        &state.shared,
        &state.loader,
        &stage,
        Path::new(&name),
        Some(body),
        true,
    )
    .await
    {
        Ok(label) => Json(json!({ "stage": stage, "deployed": label })).into_response(),
        Err(e) if e == STOPPING => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

/// 404 naming the pipeline's stages when `stage` is none of them.
fn unknown_stage(state: &AppState, stage: &str) -> Option<Response> {
    let plugins = state.shared.plugins.load();
    if plugins.iter().any(|p| p.stage == stage) {
        return None;
    }
    let stages: Vec<&str> = plugins.iter().map(|p| p.stage.as_str()).collect();
    Some(error(
        StatusCode::NOT_FOUND,
        format!(
            "the pipeline has no stage {stage:?}; its stages: {}",
            stages.join(", ")
        ),
    ))
}

async fn rollback(State(state): State<AppState>, UrlPath(stage): UrlPath<String>) -> Response {
    if let Some(unknown) = unknown_stage(&state, &stage) {
        return unknown;
    }
    match roll_back(&state.shared, &stage, true, None).await {
        Ok(label) => Json(json!({ "stage": stage, "running": label })).into_response(),
        Err(e) if e == STOPPING => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

async fn pause(State(state): State<AppState>) -> Response {
    pause_or_resume(&state, true).await
}

async fn resume(State(state): State<AppState>) -> Response {
    pause_or_resume(&state, false).await
}

/// 200 once every host of the pipeline follows (or this one is the whole pipeline: a replay); 202 when this
/// host follows now and the others once NATS takes the word (this host sees to it); 503 when the others
/// never will (the cluster's record could not be opened at start).
async fn pause_or_resume(state: &AppState, paused: bool) -> Response {
    use crate::pipeline::pause::{Reach, ask};
    match ask(&state.shared, &state.pause, paused).await {
        Ok(Reach::All) => Json(json!({ "paused": paused, "hosts": "all" })).into_response(),
        Ok(Reach::Alone) => Json(json!({ "paused": paused, "hosts": "this one" })).into_response(),
        Ok(Reach::ThisHostForNow(note)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "paused": paused, "hosts": "this one for now", "note": note })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "paused": paused, "hosts": "this one", "error": e })),
        )
            .into_response(),
    }
}

async fn latest_events(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(refused) = repeated_parameter(raw.as_deref()) {
        return refused;
    }
    const KEPT: usize = crate::pipeline::shared::Recent::EVENTS;
    if let Some(other) = q.keys().find(|k| *k != "limit") {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{other:?} is not a parameter of this query: it takes `limit` alone"),
        );
    }
    // Not `query_limit`: its cap and advice are a gold query's.
    let limit = match q.get("limit").map(|v| (v, v.parse::<usize>())) {
        None => 20,
        Some((_, Ok(limit))) if limit <= KEPT => limit,
        Some((_, Ok(limit))) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "limit={limit}: memory keeps the newest {KEPT} events, ask for {KEPT} or fewer"
                ),
            );
        }
        Some((v, Err(_))) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("limit={v:?} is not a whole number of events"),
            );
        }
    };
    // Copied out (the raw text is shared, not copied), then made JSON without the lock the pipeline's
    // thread takes every batch.
    let events: Vec<crate::event::Event> = {
        let recent = state.shared.recent.lock().expect("not poisoned");
        recent.events.iter().rev().take(limit).cloned().collect()
    };
    let events: Vec<serde_json::Value> = events.iter().map(|e| e.to_json()).collect();
    Json(json!({ "events": events })).into_response()
}

/// A 400 for a query parameter given twice (`?wiki=enwiki&wiki=dewiki`): the map the handlers read keeps
/// one of them, and the answer would quietly leave the other out.
fn repeated_parameter(raw: Option<&str>) -> Option<Response> {
    let url = reqwest::Url::parse(&format!("http://query/?{}", raw?)).ok()?;
    let mut seen = std::collections::HashSet::new();
    let twice = url
        .query_pairs()
        .map(|(k, _)| k.into_owned())
        .find(|k| !seen.insert(k.clone()))?;
    Some(error(
        StatusCode::BAD_REQUEST,
        format!("{twice:?} is given twice: give each parameter once (a filter takes one value)"),
    ))
}

/// The most rows one query answers with: an answer is built in memory.
const MAX_QUERY_ROWS: usize = 100_000;

/// `limit` in a query (`default` without one): a whole number up to [`MAX_QUERY_ROWS`], or an error that
/// says so.
fn query_limit(q: &HashMap<String, String>, default: usize) -> Result<usize, String> {
    let Some(v) = q.get("limit") else {
        return Ok(default);
    };
    match v.parse::<usize>() {
        Ok(limit) if limit <= MAX_QUERY_ROWS => Ok(limit),
        Ok(_) => Err(format!(
            "limit={v} is over {MAX_QUERY_ROWS} rows: ask for fewer windows with `from` and `to`"
        )),
        Err(_) => Err(format!("limit={v:?} is not a whole number of rows")),
    }
}

/// A time in a query: ms since the epoch, or RFC 3339. An offset's `+` arrives as a space when the client
/// did not encode it (`from=2025-01-01T00:00:00+02:00`): the last space is taken back as `+` when the time
/// does not read as given (where a space may stand between date and time).
fn query_time(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, String> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .or_else(|| crate::event::parse_rfc3339_ms(v))
            .or_else(|| {
                let (time, offset) = v.rsplit_once(' ')?;
                crate::event::parse_rfc3339_ms(&format!("{time}+{offset}"))
            })
            .map(Some)
            .ok_or_else(|| format!("{name}={v:?} is neither milliseconds nor an RFC 3339 time")),
    }
}

async fn quarantine_reasons(State(state): State<AppState>) -> Response {
    let recent = state.shared.recent.lock().expect("not poisoned");
    Json(json!({ "since_start": recent.quarantine_reasons })).into_response()
}

/// Starts a replay of the stream (from a sequence or a time) into a new table version, as a child
/// `weir replay` process; `GET /api/v1/pipeline/replays` follows it.
async fn start_replay(State(state): State<AppState>, body: Bytes) -> Response {
    let Some(context) = &state.replay else {
        return error(StatusCode::NOT_FOUND, "replays are not offered here");
    };
    let request: ReplayRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be JSON like {{\"version\": \"v2\", \"from_seq\": 1}} \
                     (version, from_seq or from_time, to_seq): {e}"
                ),
            );
        }
    };
    match state.replays.start(context, request) {
        Ok(status) => (StatusCode::ACCEPTED, Json(status)).into_response(),
        Err((status, e)) => error(status, e),
    }
}

async fn list_replays(State(state): State<AppState>) -> Response {
    Json(json!({ "replays": state.replays.list() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3crets", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }

    #[test]
    fn query_times_read_as_clients_send_them() {
        let at = |v: &str| super::query_time(&[("from".to_string(), v.to_string())].into(), "from");
        let midnight = Ok(Some(946_684_800_000));
        assert_eq!(at("946684800000"), midnight);
        assert_eq!(at("2000-01-01T00:00:00Z"), midnight);
        assert_eq!(at("2000-01-01 00:00:00Z"), midnight);
        // An offset's `+` left unencoded arrives as a space.
        assert_eq!(at("2000-01-01T02:00:00 02:00"), midnight);
        assert_eq!(at("2000-01-01 02:00:00 02:00"), midnight);
        assert!(at("yesterday").unwrap_err().contains("from=\"yesterday\""));
    }
}
