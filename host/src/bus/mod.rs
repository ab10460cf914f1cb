//! NATS JetStream: where ingested events land (one stream, exactly once per source event) and where the
//! pipeline reads them from. Weir never runs its own broker: a NATS server (or cluster) does that work.
//!
//! - [`server`]: a local `nats-server` Weir starts itself (embedded default, tests).
//! - [`stream`]: the stream's settings, created or updated from configuration.
//! - [`publish`]: an ordered publisher with a bounded number of acks in flight and a durable position.
//! - [`lease`]: the lease that lets one host alone read a pipeline's stream (exclusive mode).
//! - [`deploys`]: the plugin version each stage runs, as the last deploy or rollback on any host left it.
//! - [`pause`]: whether the pipeline takes events, as the last pause or resume on any host left it.

pub mod deploys;
pub mod lease;
pub mod pause;
pub mod publish;
pub mod server;
pub mod stream;

pub use publish::{Positions, PublishStats, Publisher};
pub use server::NatsServer;
pub use stream::StreamConfig;

/// How long Weir waits for the server to confirm what it sent (the pipeline's acks, the ingest's last
/// publishes at a stop) before it goes on without: long enough to ride out a broker restart, short enough
/// that a stop whose server went away first still ends. Nothing unconfirmed is lost: an ack comes again as a
/// redelivery, skipped as committed; an event is read from the source again, and the stream's duplicate
/// window drops what it did store.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Headers Weir sets on every message it publishes.
pub mod headers {
    /// The id of the SSE message that carried the event (Wikimedia: a JSON array of per-topic offsets).
    pub const SSE_ID: &str = "Weir-Sse-Id";
    /// When the host received the event, in ms since the epoch.
    pub const INGEST_MS: &str = "Weir-Ingest-Ms";
    /// The event could not be read as JSON (the reason); it is in the stream anyway: bronze keeps everything.
    /// `oversize`: too big to keep, the message holds its start only (see `REJECTED_DETAIL`).
    pub const REJECTED: &str = "Weir-Rejected";
    /// Why, for the quarantine's `failed_checks` (an oversize event's size and the limit it passed).
    pub const REJECTED_DETAIL: &str = "Weir-Rejected-Detail";
    /// Some bytes were not UTF-8 and were replaced before the event was published.
    pub const INVALID_UTF8: &str = "Weir-Invalid-Utf8";
    /// The source the event came from (the configured source name).
    pub const SOURCE: &str = "Weir-Source";
    /// Set by a replay from bronze, which stages events in a stream of its own: the sequence the event had
    /// in the stream it first came through, which its rows in the lake are keyed by.
    pub const ORIGINAL_SEQ: &str = "Weir-Original-Seq";
    /// Set with `ORIGINAL_SEQ`: the event's source id (`Nats-Msg-Id` then names the staged copy).
    pub const SOURCE_ID: &str = "Weir-Source-Id";
    /// A tick, not an event: a pipeline whose stream went quiet put it there to move its watermark to this
    /// event time (ms since the epoch: the newest event's time plus the quiet since; see
    /// `events.idle_close`). It has no payload.
    pub const TICK_MS: &str = "Weir-Tick-Ms";
}

/// A key-value key for `name` (a source, a pipeline): keys allow `[-/_=\.a-zA-Z0-9]`, and anything else
/// becomes `_` (dots too: they would make the key hierarchical).
pub(crate) fn kv_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Connects to NATS with the options Weir uses everywhere: a name that shows in server monitoring, and
/// reconnection without a cap (a restarted server is waited for, not given up on).
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let servers = server_addrs(url).map_err(anyhow::Error::msg)?;
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(servers)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))
}

/// The servers of a NATS URL: one (`nats://host:4222`, `tls://`, `ws://`, `wss://`, or `host:port`), or a
/// comma-separated list of them (the seed servers of a cluster).
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|server| {
            server.parse::<async_nats::ServerAddr>().map_err(|e| {
                format!(
                    "NATS server {server:?}: {e} (use nats://host:4222, tls://, ws:// or wss://, several \
                     separated by commas)"
                )
            })
        })
        .collect()
}

/// Opens the key-value bucket `config` names, creating it when missing.
pub(crate) async fn key_value(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    use anyhow::Context;
    match js.get_key_value(&config.bucket).await {
        Ok(kv) => Ok(kv),
        Err(_) => {
            let bucket = config.bucket.clone();
            js.create_key_value(config)
                .await
                .with_context(|| cannot_create("key-value bucket", &bucket, "KV"))
        }
    }
}

pub(crate) fn cannot_create(what: &str, bucket: &str, prefix: &str) -> String {
    format!(
        "cannot create the {what} {bucket} (stream {prefix}_{bucket}); the NATS account needs JetStream \
         rights to create and use it"
    )
}
