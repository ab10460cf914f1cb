//! `weir serve-sse`: a local SSE server in Wikimedia's wire format, for demos on offline machines, tests and
//! benchmarks. It serves a file of events or the generator, honours `Last-Event-ID` and `?since=`, can cut the
//! connection every N events or after N bytes, and runs at a given rate or as fast as possible.
//!
//! The wire format is EventStreams': an `:ok` comment first, then per event `event: message`, an `id:` holding
//! a JSON array of per-topic positions, and one `data:` line. A position is an offset or, as the live stream
//! sends them, a time ([`Ids`]); a client resuming from a time gets every event from the first one at or after
//! it, in the log's order, as Kafka looks up a time: events out of time order after that point come again, and
//! those before it with a later time do not.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use serde_json::Value;

use super::generate::{Generated, Generator};

/// What to serve.
pub enum Events {
    /// The lines of a file (NDJSON): event `i` is line `i`. Build with [`Events::lines`].
    Lines(Vec<Line>),
    /// The generator; `count` events, or without end.
    Generated {
        generator: Generator,
        count: Option<u64>,
    },
}

/// A line served as an event, with its event time.
pub struct Line {
    data: String,
    time_ms: i64,
}

impl Events {
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read events from {}", path.display()))?;
        Ok(Events::lines(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect(),
        ))
    }

    /// Lines served as they are. An event's time is its `meta.dt`; a line without one (not JSON, as a capture
    /// may hold to test what the pipeline does with such lines) takes the time of the nearest line before it
    /// that has one, so that the id it is served with, in the shape of [`Ids::Timestamps`], resumes a client
    /// right after it rather than from the start of the file.
    pub fn lines(lines: Vec<String>) -> Self {
        let mut last = 0;
        Events::Lines(
            lines
                .into_iter()
                .map(|data| {
                    last = time_of_line(&data).unwrap_or(last);
                    Line {
                        data,
                        time_ms: last,
                    }
                })
                .collect(),
        )
    }

    fn len(&self) -> Option<u64> {
        match self {
            Events::Lines(lines) => Some(lines.len() as u64),
            Events::Generated { count, .. } => *count,
        }
    }

    fn get(&self, i: u64) -> Generated {
        match self {
            Events::Lines(lines) => {
                let line = &lines[i as usize];
                Generated {
                    offset: i,
                    data: line.data.clone(),
                    time_ms: line.time_ms,
                }
            }
            Events::Generated { generator, .. } => generator.event(i),
        }
    }

    /// The first offset whose event time is at or after `since_ms` (the end when there is none): where Kafka
    /// starts a consumer asked for a time.
    fn first_since(&self, since_ms: i64) -> u64 {
        let generator = match self {
            Events::Lines(lines) => {
                return lines
                    .iter()
                    .position(|l| l.time_ms >= since_ms)
                    .unwrap_or(lines.len()) as u64;
            }
            Events::Generated { generator, .. } => generator,
        };
        // Generated times rise with the offset but for a jitter and a delay of up to `disorder_ms`, so a binary
        // search lands within that span of the answer, and a look back over it makes the answer exact. No event
        // past the first whose time, less all of that, is at or after `since_ms` can be the answer.
        let (interval, disorder) = (generator.interval_ms(), generator.config().disorder_ms);
        let bound = (((since_ms as f64 - generator.config().start_ms as f64 + disorder as f64)
            / interval)
            .max(0.0) as u64)
            .saturating_add(2);
        let end = self.len().unwrap_or(u64::MAX).min(bound);
        let (mut lo, mut hi) = (0, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if generator.time_ms(mid) < since_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let span = (disorder as f64 / interval).ceil() as u64 + 2;
        (lo.saturating_sub(span)..lo)
            .find(|&i| generator.time_ms(i) >= since_ms)
            .unwrap_or(lo)
    }
}

/// The shape of the SSE ids served. A `Last-Event-ID` of either shape is honoured, whichever is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ids {
    /// The live stream's older form, `[{eqiad, offset: N}, {codfw, offset: -1}]`: a resume goes on right after
    /// event N, exactly.
    Offsets,
    /// The live stream's: `[{eqiad, timestamp: T + 1}, {codfw, offset: -1}]`, T the event's time. A resume
    /// starts at the first event at or after the time sent back (see the module's documentation).
    Timestamps,
}

impl Ids {
    /// Event `offset`'s SSE id.
    pub fn format(self, offset: u64, time_ms: i64) -> String {
        match self {
            Ids::Offsets => format!(
                r#"[{{"topic":"eqiad.mediawiki.recentchange","partition":0,"offset":{offset}}},{{"topic":"codfw.mediawiki.recentchange","partition":0,"offset":-1}}]"#
            ),
            Ids::Timestamps => format!(
                r#"[{{"topic":"eqiad.mediawiki.recentchange","partition":0,"timestamp":{}}},{{"topic":"codfw.mediawiki.recentchange","partition":0,"offset":-1}}]"#,
                time_ms + 1
            ),
        }
    }
}

/// Where a `Last-Event-ID` says to resume.
#[derive(Debug, PartialEq, Eq)]
enum Resume {
    /// Right after this offset.
    After(u64),
    /// At the first event at or after this time.
    At(i64),
}

/// The eqiad entry of an SSE id of either shape (or Wikimedia's): its offset, or else its time.
fn resume_point(id: &str) -> Option<Resume> {
    let entries: Vec<Value> = serde_json::from_str(id).ok()?;
    let eqiad = entries
        .iter()
        .find(|e| e["topic"].as_str().is_some_and(|t| t.starts_with("eqiad.")))?;
    match (eqiad["offset"].as_u64(), eqiad["timestamp"].as_i64()) {
        (Some(offset), _) => Some(Resume::After(offset)),
        (None, Some(ms)) => Some(Resume::At(ms)),
        (None, None) => None,
    }
}

fn time_of_line(line: &str) -> Option<i64> {
    let doc: serde_json::Value = serde_json::from_str(line).ok()?;
    crate::event::parse_time_ms(doc.get("meta")?.get("dt")?)
}

/// How to serve.
pub struct ServeConfig {
    pub events: Events,
    /// Events per second; `None` is as fast as the client reads.
    pub rate: Option<f64>,
    /// The shape of the SSE ids.
    pub ids: Ids,
    /// Close each connection after this many events (clients reconnect with `Last-Event-ID`).
    pub cut_every: Option<u64>,
    /// Where to cut connections, in bytes from their start, even mid-event (tests of cut points).
    pub cut: Cut,
    /// After the last event, keep the connection open with keep-alive comments instead of closing it.
    pub hold_open: bool,
    /// Keep-alive comment interval while idle.
    pub keepalive: Duration,
    /// Connections served so far.
    pub connections: std::sync::atomic::AtomicU64,
}

impl ServeConfig {
    pub fn new(events: Events) -> Self {
        ServeConfig {
            events,
            rate: None,
            ids: Ids::Offsets,
            cut_every: None,
            cut: Cut::Never,
            hold_open: false,
            keepalive: Duration::from_secs(15),
            connections: Default::default(),
        }
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    since: Option<String>,
}

/// Where connections are cut, in bytes from the start of each connection.
#[derive(Debug)]
pub enum Cut {
    Never,
    /// Every connection after this many bytes.
    Every(u64),
    /// Only the first connection, after this many bytes.
    First(u64),
    /// Each connection after a random number of bytes up to `max` (reproducible from `seed`).
    Random {
        max: u64,
        seed: u64,
    },
}

impl Cut {
    fn for_connection(&self, n: u64) -> Option<u64> {
        match *self {
            Cut::Never => None,
            Cut::Every(b) => Some(b),
            Cut::First(b) => (n == 0).then_some(b),
            Cut::Random { max, seed } => {
                use rand::{Rng, SeedableRng};
                let mut rng =
                    rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9));
                Some(rng.random_range(1..=max.max(1)))
            }
        }
    }
}

/// The router: every GET path serves the stream (`/v2/stream/recentchange` like Wikimedia, or `/`).
pub fn router(config: Arc<ServeConfig>) -> Router {
    Router::new().fallback(stream).with_state(config)
}

/// Serves on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, config: Arc<ServeConfig>) -> Result<()> {
    axum::serve(listener, router(config))
        .await
        .context("the SSE server stopped")
}

/// Serves on a free loopback port in the background; returns the stream URL and the server task (tests,
/// benchmarks, the offline fallback of `weir run`).
pub async fn spawn_local(
    config: Arc<ServeConfig>,
) -> Result<(String, tokio::task::JoinHandle<Result<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v2/stream/recentchange", listener.local_addr()?);
    Ok((url, tokio::spawn(serve(listener, config))))
}

async fn stream(
    State(config): State<Arc<ServeConfig>>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let start = match (resume, &query.since) {
        (Some(id), _) => match resume_point(id) {
            Some(Resume::After(offset)) => offset + 1,
            Some(Resume::At(ms)) => config.events.first_since(ms),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("Last-Event-ID {id:?} holds no eqiad offset or timestamp"),
                )
                    .into_response();
            }
        },
        (None, Some(since)) => match parse_since(since) {
            Some(ms) => config.events.first_since(ms),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("since={since:?} is neither milliseconds nor an ISO 8601 date"),
                )
                    .into_response();
            }
        },
        (None, None) => 0,
    };
    let connection = config
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cut = config.cut.for_connection(connection);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(produce(config, start, cut, tx));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(tokio_stream_from(rx)))
        .expect("a valid response")
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn parse_since(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().or_else(|| {
        crate::event::parse_rfc3339_ms(text).or_else(|| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp_millis())
        })
    })
}

/// Writes the stream for one connection into `tx`, in chunks of up to 64 kB when running flat out.
async fn produce(
    config: Arc<ServeConfig>,
    start: u64,
    cut: Option<u64>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut sent_bytes: u64 = 0;
    let mut buf = BytesMut::with_capacity(64 << 10);
    buf.put_slice(b":ok\n\n");
    let interval = config
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let mut ticker = interval.map(|i| {
        let mut t = tokio::time::interval(i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let end = config.events.len();
    let mut sent_events = 0u64;
    let mut i = start;
    loop {
        if end.is_some_and(|end| i >= end) || config.cut_every.is_some_and(|n| sent_events >= n) {
            break;
        }
        if let Some(t) = &mut ticker {
            t.tick().await;
        }
        let event = config.events.get(i);
        buf.put_slice(b"event: message\nid: ");
        buf.put_slice(config.ids.format(event.offset, event.time_ms).as_bytes());
        buf.put_slice(b"\ndata: ");
        buf.put_slice(event.data.as_bytes());
        buf.put_slice(b"\n\n");
        i += 1;
        sent_events += 1;
        let flush = ticker.is_some() || buf.len() >= 60 << 10;
        if flush && !send(&tx, &mut buf, &mut sent_bytes, cut).await {
            return;
        }
    }
    if !send(&tx, &mut buf, &mut sent_bytes, cut).await {
        return;
    }
    let finished = end.is_some_and(|end| i >= end);
    if finished && config.hold_open {
        loop {
            tokio::time::sleep(config.keepalive).await;
            buf.put_slice(b":keep-alive\n\n");
            if !send(&tx, &mut buf, &mut sent_bytes, cut).await {
                return;
            }
        }
    }
}

/// Sends the buffer, cut at the byte limit; `false` when the connection is over (closed or cut).
async fn send(
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: &mut BytesMut,
    sent: &mut u64,
    cut_after: Option<u64>,
) -> bool {
    if buf.is_empty() {
        return true;
    }
    let mut chunk = buf.split().freeze();
    let mut cut = false;
    if let Some(limit) = cut_after {
        let room = limit.saturating_sub(*sent);
        if (chunk.len() as u64) >= room {
            chunk = chunk.slice(..room as usize);
            cut = true;
        }
    }
    *sent += chunk.len() as u64;
    if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
        return false;
    }
    if cut {
        // End the body abruptly, as a dropped connection would; first give the server a moment to put the
        // bytes before the cut on the wire (an erroring body aborts the connection with its buffers).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tx
            .send(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "cut by --cut-after-bytes",
            )))
            .await;
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::generate::GenConfig;

    #[test]
    fn either_shape_of_id_says_where_to_resume() {
        for ids in [Ids::Offsets, Ids::Timestamps] {
            let id = ids.format(7, 1_767_225_600_123);
            let expected = match ids {
                Ids::Offsets => Resume::After(7),
                Ids::Timestamps => Resume::At(1_767_225_600_124),
            };
            assert_eq!(resume_point(&id), Some(expected), "{id}");
        }
        // As the live stream sent it (shared/fixtures/wikimedia/raw-sse).
        let live = r#"[{"topic":"eqiad.mediawiki.recentchange","partition":0,"timestamp":1746030241001},{"topic":"codfw.mediawiki.recentchange","partition":0,"offset":-1}]"#;
        assert_eq!(resume_point(live), Some(Resume::At(1_746_030_241_001)));
        assert_eq!(resume_point("42"), None);
    }

    #[test]
    fn a_time_resumes_at_the_first_event_at_or_after_it_as_kafka_does() {
        let generator = Generator::new(GenConfig {
            disorder_ms: 3_000,
            ..GenConfig::default()
        });
        let times: Vec<i64> = (0..5_000).map(|i| generator.time_ms(i)).collect();
        assert!(
            times.windows(2).filter(|w| w[1] < w[0]).count() > 500,
            "neighbours out of time order"
        );
        let events = Events::Generated {
            generator,
            count: Some(5_000),
        };
        for i in (0..4_000).step_by(37) {
            let since = times[i] + 1;
            let expected = times.iter().position(|&t| t >= since).unwrap() as u64;
            assert_eq!(events.first_since(since), expected, "since {since}");
        }
        // Endless, as `weir run`'s offline source: the same answers, and none far along it overflows.
        let endless = Events::Generated {
            generator: Generator::new(GenConfig {
                disorder_ms: 3_000,
                ..GenConfig::default()
            }),
            count: None,
        };
        for i in (0..4_000).step_by(37) {
            let since = times[i] + 1;
            let expected = times.iter().position(|&t| t >= since).unwrap() as u64;
            assert_eq!(endless.first_since(since), expected, "since {since}");
        }
        assert!(endless.first_since(i64::MAX) > 1 << 40);
        assert_eq!(endless.first_since(i64::MIN), 0);
    }

    #[test]
    fn a_line_without_a_time_resumes_after_itself_not_from_the_start() {
        let event = |dt: &str| format!(r#"{{"meta":{{"dt":"{dt}"}}}}"#);
        let events = Events::lines(vec![
            "not json".into(),
            event("2026-01-01T00:00:01Z"),
            "{truncated".into(),
            event("2026-01-01T00:00:02Z"),
        ]);
        let times: Vec<i64> = (0..4).map(|i| events.get(i).time_ms).collect();
        let (one, two) = (1_767_225_601_000, 1_767_225_602_000);
        assert_eq!(times, [0, one, one, two]);
        // The id served with the line that is not JSON resumes at the next event, as that of the line before.
        let id = Ids::Timestamps.format(2, events.get(2).time_ms);
        let Some(Resume::At(at)) = resume_point(&id) else {
            panic!("{id} is a time")
        };
        assert_eq!(events.first_since(at), 3);
    }
}
