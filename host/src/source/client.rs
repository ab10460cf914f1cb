//! The HTTP side of an SSE source: connecting with the headers a public stream expects, reading with an idle
//! timeout, and reconnecting with jittered exponential backoff and `Last-Event-ID`.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::sse::{Limits, SseItem, SseParser};

/// How to reach an SSE source. Defaults fit Wikimedia EventStreams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseConfig {
    /// The stream URL.
    pub url: String,
    /// Sent as `User-Agent`. Wikimedia refuses generic agents (HTTP 403): say who runs this and how to reach
    /// them.
    pub user_agent: String,
    /// No bytes for this long (servers send comments as keep-alives) means a dead connection: reconnect.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// First reconnection delay; doubled on every failure up to `max_backoff`, with full jitter. A `retry`
    /// field from the server replaces it.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The delay after HTTP 429 (too many requests), when the server gives no `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub rate_limited_backoff: Duration,
    /// A connection that stayed up this long resets the backoff.
    #[serde(with = "humantime_serde")]
    pub healthy_after: Duration,
    /// Start from this time when there is no saved position (`?since=`: milliseconds or an ISO 8601 date).
    pub since: Option<String>,
    /// When the position sent back names times (the live stream's ids carry a `timestamp` per topic), resume
    /// this much earlier. The source resumes at the first event at or after that time, and consecutive events
    /// carry times out of order: sent back unchanged, a position skips the events that followed it with an
    /// earlier time. What comes again is dropped by the stream's duplicate window, so this must be shorter
    /// than `stream.duplicate_window`; `0s` sends positions back unchanged. Default: 60s, or half the
    /// duplicate window when that is shorter (see [`SseConfig::resume_overlap`]).
    #[serde(default, with = "humantime_serde")]
    pub resume_overlap: Option<Duration>,
    /// Largest event accepted, in bytes; larger ones are skipped to quarantine as `oversize`.
    pub max_event_bytes: usize,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            url: "https://stream.wikimedia.org/v2/stream/recentchange".into(),
            user_agent: format!(
                "Weir/{} (https://github.com/weir-dev/weir; set source.user_agent to your contact)",
                env!("CARGO_PKG_VERSION")
            ),
            idle_timeout: Duration::from_secs(60),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            rate_limited_backoff: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
            since: None,
            resume_overlap: None,
            max_event_bytes: 1 << 20,
        }
    }
}

impl SseConfig {
    /// `resume_overlap` as set, else 60s or half the stream's `duplicate_window` when that is shorter.
    pub fn resume_overlap(&self, duplicate_window: Duration) -> Duration {
        self.resume_overlap
            .unwrap_or((duplicate_window / 2).min(Duration::from_secs(60)))
    }

    /// Refuses a `resume_overlap` the stream's duplicate window does not cover.
    pub fn check_overlap(&self, duplicate_window: Duration) -> Result<(), String> {
        match self.resume_overlap {
            Some(overlap) if !overlap.is_zero() && overlap >= duplicate_window => Err(format!(
                "source.resume_overlap {overlap:?} must be shorter than stream.duplicate_window \
                 {duplicate_window:?}: what a resume sends again is dropped only within that window"
            )),
            _ => Ok(()),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("source.url {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("source.url {:?} must be http or https", self.url));
        }
        if self.user_agent.trim().is_empty() {
            return Err(
                "source.user_agent must not be empty: public streams refuse anonymous clients"
                    .into(),
            );
        }
        if self.idle_timeout.is_zero() {
            return Err("source.idle_timeout must be positive".into());
        }
        // Zero would reconnect to a source that refuses as fast as the machine can.
        if self.min_backoff.is_zero() {
            return Err("source.min_backoff must be positive".into());
        }
        if self.max_backoff < self.min_backoff {
            return Err(format!(
                "source.max_backoff {:?} must be at least source.min_backoff {:?}",
                self.max_backoff, self.min_backoff
            ));
        }
        if self.healthy_after.is_zero() {
            return Err(
                "source.healthy_after must be positive: a connection up that long resets the backoff"
                    .into(),
            );
        }
        if let Some(since) = &self.since
            && since.parse::<i64>().is_err()
            && !iso_8601(since)
        {
            return Err(format!(
                "source.since {since:?} must be milliseconds since 1970 or an ISO 8601 time \
                 (2026-01-31T00:00:00Z, or 2026-01-31)"
            ));
        }
        if self.rate_limited_backoff.is_zero() {
            return Err(
                "source.rate_limited_backoff must be positive: it is the wait after a 429 without \
                 Retry-After"
                    .into(),
            );
        }
        if self.max_event_bytes < 1024 {
            return Err("source.max_event_bytes must be at least 1024".into());
        }
        Ok(())
    }
}

/// `id` (Wikimedia's: a JSON array of per-topic positions) resuming from `by` before its latest time, the
/// earliest time an event not yet read can carry when times are out of order by less than `by`:
/// - a topic whose `timestamp` is later than that point resumes from it; one quiet since before it (the other
///   data centre's, after a canary) stays where it is, or it would send its last events again at every
///   resume, long after the stream's duplicate window;
/// - a topic named by offset is read from that point too: `-1` (not read from yet, which the source starts at
///   its end), so that what reached it meanwhile (a switch of data centres) comes too; or an offset the source
///   resolved an earlier time to, which means something on one cluster only.
///
/// The topic the position's event came from is safe with any `by` of a millisecond or more: its `timestamp`
/// is that event's time plus one, and the source starts at the first event at or after the time sent, so at
/// that event or before. `by` is for the other topics, and for telling when the source is past the position.
///
/// Returns the id to send and the times `id` names; `None` when it names no time, or is not such an array.
pub fn rewind(id: &str, by: Duration) -> Option<(String, Times)> {
    let mut entries: Vec<serde_json::Value> = serde_json::from_str(id).ok()?;
    let times = Times::from_entries(&entries)?;
    let from = times.latest().saturating_sub(by.as_millis() as i64).max(0);
    for entry in entries.iter_mut().filter_map(|e| e.as_object_mut()) {
        if let Some(ms) = entry.get("timestamp").and_then(|t| t.as_i64()) {
            // An entry with both is dropped by the source (KafkaSSE resolves entries with a timestamp and no
            // offset, and keeps those with an offset and no timestamp).
            entry.remove("offset");
            entry.insert("timestamp".into(), ms.min(from).into());
        } else if entry.remove("offset").is_some() {
            entry.insert("timestamp".into(), from.into());
        }
    }
    Some((serde_json::to_string(&entries).ok()?, times))
}

/// The per-topic times an SSE id names (Wikimedia's), to tell whose position an id is.
#[derive(Debug)]
pub struct Times(Vec<(String, i64, i64)>);

impl Times {
    /// (topic, partition, timestamp) of each entry with a time; `None` when there is none.
    pub fn of(id: &str) -> Option<Times> {
        Times::from_entries(&serde_json::from_str::<Vec<serde_json::Value>>(id).ok()?)
    }

    fn from_entries(entries: &[serde_json::Value]) -> Option<Times> {
        let times: Vec<_> = entries
            .iter()
            .filter_map(|e| {
                let topic = e["topic"].as_str().unwrap_or_default().to_string();
                Some((
                    topic,
                    e["partition"].as_i64().unwrap_or(0),
                    e["timestamp"].as_i64()?,
                ))
            })
            .collect();
        (!times.is_empty()).then_some(Times(times))
    }

    /// The latest of them (there is at least one).
    pub fn latest(&self) -> i64 {
        self.0.iter().map(|t| t.2).max().unwrap_or(i64::MIN)
    }

    /// Whether `other` names each of these times: the same event's position, though the source may name the
    /// topics not read from since in another way (an offset it resolved a time to).
    pub fn within(&self, other: &Times) -> bool {
        self.0.iter().all(|t| other.0.contains(t))
    }
}

/// Whether `text` reads as an ISO 8601 date or time, as the source's `?since=` takes them: with an offset or
/// not, with or without seconds.
fn iso_8601(text: &str) -> bool {
    let local = text.strip_suffix('Z').unwrap_or(text);
    chrono::DateTime::parse_from_rfc3339(text).is_ok()
        || chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
        || ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .any(|format| chrono::NaiveDateTime::parse_from_str(local, format).is_ok())
}

/// Jittered exponential backoff ("full jitter": a random delay between zero and the current ceiling).
#[derive(Debug)]
pub struct Backoff {
    /// `source.min_backoff`: the server's `retry` field cannot take the base below it.
    min: Duration,
    base: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            min: base,
            base,
            max,
            ceiling: base,
        }
    }

    /// The next delay, and a higher ceiling for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    /// Back to the first delay (after a healthy period).
    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }

    /// The server's `retry` field: the new base delay, within `min_backoff..=max_backoff` (a `retry: 0`
    /// would have made every reconnect immediate for good). The ceiling reached so far stays: a server that
    /// sends the field on every connection, then drops it, is still backed off from.
    pub fn set_base(&mut self, base: Duration) {
        self.base = base.clamp(self.min, self.max);
        self.ceiling = self.ceiling.max(self.base);
    }
}

/// Why a connection attempt or a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("HTTP {status} from {url}{detail}")]
    Status {
        status: reqwest::StatusCode,
        url: String,
        retry_after: Option<Duration>,
        /// What the server said (the start of its answer) and what to check: `: ...`, or empty.
        detail: String,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    #[error("no bytes from the source for {0:?}")]
    Idle(Duration),
    #[error("the connection broke: {0}")]
    Broken(reqwest::Error),
}

/// An HTTP client for one SSE source.
pub struct SseClient {
    http: reqwest::Client,
    config: SseConfig,
}

/// An open connection, parsed as it is read.
pub struct Connection {
    response: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: SseParser,
    idle_timeout: Duration,
    opened: Instant,
    /// Bytes read on this connection.
    pub bytes: u64,
}

impl SseClient {
    pub fn new(config: SseConfig) -> Result<Self> {
        crate::tls::install_default_provider();
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(Duration::from_secs(15))
            .build()?;
        Ok(SseClient { http, config })
    }

    pub fn config(&self) -> &SseConfig {
        &self.config
    }

    /// Opens the stream, resuming after `last_event_id` (sent verbatim) when there is one, else from
    /// `since` when configured.
    pub async fn connect(&self, last_event_id: Option<&str>) -> Result<Connection, SourceError> {
        let mut url = reqwest::Url::parse(&self.config.url).expect("validated");
        if last_event_id.is_none()
            && let Some(since) = &self.config.since
        {
            url.query_pairs_mut().append_pair("since", since);
        }
        let mut request = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(reqwest::header::CACHE_CONTROL, "no-cache");
        if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
            request = request.header("Last-Event-ID", id);
        }
        // A proxy that takes the connection and never answers would hold it for ever: the idle timeout
        // covers the wait for the response's headers too.
        let response = tokio::time::timeout(self.config.idle_timeout, request.send())
            .await
            .map_err(|_| SourceError::Idle(self.config.idle_timeout))?
            .map_err(|source| SourceError::Connect {
                url: url.to_string(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let said = tokio::time::timeout(Duration::from_secs(5), answer_start(response))
                .await
                .unwrap_or_default();
            let hint = match status.as_u16() {
                403 => Some(
                    "public streams refuse a generic client: set source.user_agent to one naming the tool \
                     and a contact",
                ),
                400 | 416 if last_event_id.is_some_and(|id| !id.is_empty()) => Some(
                    "the position sent back (Last-Event-ID) may be what it refuses: it is saved in the KV \
                     bucket weir_positions under ingest.name (`nats kv del weir_positions <name>` starts \
                     from source.since, or now)",
                ),
                _ => None,
            };
            let detail = [Some(said.as_str()).filter(|s| !s.is_empty()), hint]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            return Err(SourceError::Status {
                status,
                url: url.to_string(),
                retry_after,
                detail: if detail.is_empty() {
                    detail
                } else {
                    format!(": {detail}")
                },
            });
        }
        let limits = Limits {
            max_line: self.config.max_event_bytes,
            max_event: self.config.max_event_bytes,
        };
        Ok(Connection {
            response: Box::pin(response.bytes_stream()),
            parser: SseParser::new(limits).with_last_event_id(last_event_id.unwrap_or("")),
            idle_timeout: self.config.idle_timeout,
            opened: Instant::now(),
            bytes: 0,
        })
    }
}

/// The start of a refusal's body, on one line: where a server says why (Wikimedia names the User-Agent
/// policy, a proxy its rule). At most 300 characters, read from at most the first 4 KiB.
async fn answer_start(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while body.len() < 4096
        && let Some(Ok(chunk)) = chunks.next().await
    {
        body.extend_from_slice(&chunk);
    }
    body.truncate(4096);
    let text = String::from_utf8_lossy(&body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line,
    }
}

impl Connection {
    /// The id events carry until the source sends one: the position resumed from, when the id sent back was
    /// moved back from it (so that an event without an id of its own is named the same at every resume).
    pub fn after(mut self, last_event_id: &str) -> Self {
        self.parser.set_last_event_id(last_event_id);
        self
    }

    /// Reads the next chunk and pushes what it completes to `out`. `Ok(false)` at the end of the stream.
    pub async fn read(&mut self, out: &mut Vec<SseItem>) -> Result<bool, SourceError> {
        match tokio::time::timeout(self.idle_timeout, self.response.next()).await {
            Err(_) => Err(SourceError::Idle(self.idle_timeout)),
            Ok(None) => {
                self.parser.finish(out);
                Ok(false)
            }
            Ok(Some(Err(e))) => Err(SourceError::Broken(e)),
            Ok(Some(Ok(chunk))) => {
                self.bytes += chunk.len() as u64;
                self.parser.feed(&chunk, out);
                Ok(true)
            }
        }
    }

    /// How long the connection has been open.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id [`rewind`] sends.
    fn sent(id: &str, by: Duration) -> Option<String> {
        rewind(id, by).map(|(sent, _)| sent)
    }

    fn latest_time(id: &str) -> Option<i64> {
        Times::of(id).map(|t| t.latest())
    }

    #[test]
    fn a_position_of_times_is_moved_back() {
        let live = r#"[{"topic":"eqiad.mediawiki.recentchange","partition":0,"timestamp":1746030241001},{"topic":"codfw.mediawiki.recentchange","partition":0,"offset":-1}]"#;
        let back: serde_json::Value =
            serde_json::from_str(&sent(live, Duration::from_secs(60)).unwrap()).unwrap();
        assert_eq!(
            back,
            serde_json::json!([
                {"topic": "eqiad.mediawiki.recentchange", "partition": 0, "timestamp": 1_746_030_181_001i64},
                // The other data centre's topic, never read from: from the same time, not from its end.
                {"topic": "codfw.mediawiki.recentchange", "partition": 0, "timestamp": 1_746_030_181_001i64},
            ])
        );
        assert_eq!(latest_time(live), Some(1_746_030_241_001));
        // A topic quiet since long before the latest time goes back no further than that time less `by`.
        let three =
            r#"[{"timestamp":5000,"offset":3},{"timestamp":7000},{"timestamp":900},{"offset":12}]"#;
        assert_eq!(
            sent(three, Duration::from_secs(1)).unwrap(),
            r#"[{"timestamp":5000},{"timestamp":6000},{"timestamp":900},{"timestamp":6000}]"#
        );
        assert_eq!(
            sent(three, Duration::from_secs(3)).unwrap(),
            r#"[{"timestamp":4000},{"timestamp":4000},{"timestamp":900},{"timestamp":4000}]"#
        );
        assert_eq!(latest_time(three), Some(7000));
        // The same event's position, though the source named the topic it had not read from by an offset.
        let position = Times::of(live).unwrap();
        let again = live.replace(r#""offset":-1"#, r#""offset":5210"#);
        assert!(position.within(&Times::of(&again).unwrap()));
        let other = live.replace("241001", "241002");
        assert!(!position.within(&Times::of(&other).unwrap()));
        assert!(Times::of(r#"[{"topic":"t","partition":0,"offset":4}]"#).is_none());
        assert_eq!(
            sent(r#"[{"timestamp":10}]"#, Duration::from_secs(1)).unwrap(),
            r#"[{"timestamp":0}]"#,
            "not before 1970"
        );
        for unchanged in [
            r#"[{"topic":"eqiad.mediawiki.recentchange","partition":0,"offset":42}]"#,
            r#"[{"topic":"eqiad.mediawiki.recentchange","partition":0,"offset":-1}]"#,
            "42",
            "not json \"timestamp\":5",
        ] {
            assert_eq!(sent(unchanged, Duration::from_secs(1)), None, "{unchanged}");
        }
    }

    /// A refusal names what the server said and what to check.
    #[test]
    fn a_refusal_says_why() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/stream", listener.local_addr().unwrap());
            tokio::spawn(async move {
                loop {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let body = "Please set a user-agent\n  and respect our robot policy";
                    let answer = format!(
                        "HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    socket.write_all(answer.as_bytes()).await.unwrap();
                }
            });
            let client = SseClient::new(SseConfig {
                url,
                ..SseConfig::default()
            })
            .unwrap();
            let err = client.connect(None).await.err().unwrap().to_string();
            assert!(
                err.contains("HTTP 403 Forbidden")
                    && err.contains("Please set a user-agent and respect our robot policy")
                    && err.contains("source.user_agent"),
                "{err}"
            );
        });
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert!((50..=100).contains(&delays[0]), "{delays:?}");
        assert!((100..=200).contains(&delays[1]), "{delays:?}");
        assert!(
            delays[5..].iter().all(|&d| (500..=1000).contains(&d)),
            "{delays:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        // The server's `retry` field moves the base, within min_backoff..=max_backoff: `retry: 0` does not
        // make reconnects immediate.
        b.set_base(Duration::ZERO);
        assert!(b.next_delay() >= Duration::from_millis(50));
        b.set_base(Duration::from_secs(5));
        let d = b.next_delay().as_millis();
        assert!((500..=1000).contains(&d), "{d}");
    }

    #[test]
    fn since_takes_what_the_source_takes() {
        for ok in [
            "1767225600000",
            "2026-01-31",
            "2026-01-31T00:00:00Z",
            "2026-01-31T00:00:00+02:00",
            "2026-01-31T00:00:00",
            "2026-01-31T00:00Z",
            "2026-01-31T00:00:00.250Z",
        ] {
            let config = SseConfig {
                since: Some(ok.into()),
                ..SseConfig::default()
            };
            assert_eq!(config.validate(), Ok(()), "{ok}");
        }
        for bad in ["yesterday", "2026-31-01", "31/01/2026"] {
            assert!(!iso_8601(bad), "{bad}");
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let mut c = SseConfig {
            url: "ftp://x".into(),
            ..SseConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("source.url"));
        c.url = "http://localhost:1/x".into();
        c.user_agent = " ".into();
        assert!(c.validate().unwrap_err().contains("user_agent"));
    }
}
