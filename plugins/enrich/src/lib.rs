//! The standard enrich plugin: adds derived fields to each event. Every derived field is null, never an error,
//! when its source is absent: in the live stream almost everything but `meta` is optional.
//!
//! | field | from | value |
//! |---|---|---|
//! | `is_bot` | `bot` | the flag as a boolean |
//! | `is_anonymous` | `user` | whether the user is an IPv4 or IPv6 address or a temporary account (`~…`): edits without an account |
//! | `bytes_changed` | `length.new`, `length.old` | `new − old` (`new` alone for a page creation); null without `length.new` (log, categorize) |
//! | `event_time_ms` | `meta.dt` | event time in ms since the epoch; whole-second and millisecond forms |
//! | `processing_lag_ms` | `meta.dt`, host clock | host clock − event time, in ms |
//! | `project` | `server_name` | `en.wikipedia.org` → `wikipedia`; `commons.wikimedia.org` → `commons` |
//! | `language` | `server_name` | `en.wikipedia.org` → `en`; null for wikis that are not per language |
//! | `is_talk_namespace` | `namespace` | whether the namespace is a talk namespace (odd numbers) |
//!
//! Config: `{"fields": [...], "prefix": ""}`; by default every field, written at the top level of the event.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;
use weir_sdk::time::parse_rfc3339_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Derived {
    IsBot,
    IsAnonymous,
    BytesChanged,
    EventTimeMs,
    ProcessingLagMs,
    Project,
    Language,
    IsTalkNamespace,
}

impl Derived {
    pub const ALL: [Derived; 8] = [
        Derived::IsBot,
        Derived::IsAnonymous,
        Derived::BytesChanged,
        Derived::EventTimeMs,
        Derived::ProcessingLagMs,
        Derived::Project,
        Derived::Language,
        Derived::IsTalkNamespace,
    ];

    fn name(self) -> &'static str {
        match self {
            Derived::IsBot => "is_bot",
            Derived::IsAnonymous => "is_anonymous",
            Derived::BytesChanged => "bytes_changed",
            Derived::EventTimeMs => "event_time_ms",
            Derived::ProcessingLagMs => "processing_lag_ms",
            Derived::Project => "project",
            Derived::Language => "language",
            Derived::IsTalkNamespace => "is_talk_namespace",
        }
    }
}

/// The source fields, always read in this order.
const READS: [&str; 6] = [
    "bot",
    "user",
    "length.new",
    "length.old",
    "meta.dt",
    "server_name",
];
const NAMESPACE: usize = 6;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The fields to add, in the table's names.
    pub fields: Vec<Derived>,
    /// Prepended to every written field name (`"enriched."` nests them under an `enriched` object).
    pub prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fields: Derived::ALL.to_vec(),
            prefix: String::new(),
        }
    }
}

pub struct Enrich {
    fields: Vec<Derived>,
}

impl Plugin for Enrich {
    fn manifest() -> Manifest {
        Manifest::new(
            "enrich",
            env!("CARGO_PKG_VERSION"),
            Kind::Enrich,
            "Derived fields for recentchange events",
        )
    }

    fn init(config: &str) -> Result<(Self, Plan), String> {
        let config: Config = parse_config(config)?;
        if config.fields.is_empty() {
            return Err("`fields` is empty: list at least one derived field".into());
        }
        let writes: Vec<String> = config
            .fields
            .iter()
            .map(|f| format!("{}{}", config.prefix, f.name()))
            .collect();
        if writes.iter().any(|w| w.split('.').any(str::is_empty)) {
            return Err(format!(
                "`prefix` {:?} does not make dotted JSON paths",
                config.prefix
            ));
        }
        let reads = READS.iter().copied().chain(["namespace"]);
        Ok((
            Enrich {
                fields: config.fields,
            },
            Plan::new().reads(reads).writes(writes),
        ))
    }

    fn process(&mut self, event: &Event) -> Outcome {
        let mut out = OutputBuilder::with_capacity(1);
        self.enrich(event, clock::now_ms(), &mut out);
        out.keep();
        out.finish().outcomes().remove(0)
    }

    /// Writes straight into the output columns: no allocation per event. The host clock is read once per
    /// batch, so `processing_lag_ms` is the lag at the moment the batch is processed.
    fn process_batch(&mut self, batch: &Batch) -> Output {
        let now = clock::now_ms();
        let mut out = OutputBuilder::with_capacity(batch.len());
        for event in batch.events() {
            self.enrich(&event, now, &mut out);
            out.keep();
        }
        out.finish()
    }
}

impl Enrich {
    fn enrich(&self, event: &Event, now_ms: i64, out: &mut OutputBuilder) {
        let time_ms = event.str(4).and_then(parse_rfc3339_ms);
        let (project, language) = event.str(5).map(split_server_name).unwrap_or((None, None));
        for (i, field) in self.fields.iter().enumerate() {
            let value = match field {
                Derived::IsBot => event.bool(0).map(ValueRef::Boolean),
                Derived::IsAnonymous => event.str(1).map(|u| ValueRef::Boolean(is_anonymous(u))),
                // A page creation (`new`) has no old length: all its bytes are added.
                Derived::BytesChanged => event
                    .i64(2)
                    .map(|new| ValueRef::Integer(new - event.i64(3).unwrap_or(0))),
                Derived::EventTimeMs => time_ms.map(ValueRef::Integer),
                Derived::ProcessingLagMs => time_ms.map(|t| ValueRef::Integer(now_ms - t)),
                Derived::Project => project.map(ValueRef::Text),
                Derived::Language => language.map(ValueRef::Text),
                Derived::IsTalkNamespace => event
                    .i64(NAMESPACE)
                    .map(|ns| ValueRef::Boolean(ns > 0 && ns % 2 == 1)),
            };
            out.set(i as u32, value.unwrap_or(ValueRef::Null));
        }
    }
}

/// Whether an edit was made without an account: under the editor's IP address, or (wikis with temporary
/// accounts, from 2025) under a temporary account's name, which starts with `~` (`~2025-12345-67`).
pub fn is_anonymous(user: &str) -> bool {
    user.starts_with('~') || is_ip(user)
}

/// Whether a user name is an IP address: MediaWiki records edits without an account under the editor's IP.
pub fn is_ip(user: &str) -> bool {
    // Most names are neither: an IPv4 address starts with a digit, an IPv6 one holds a colon.
    let plausible =
        user.as_bytes().first().is_some_and(u8::is_ascii_hexdigit) || user.contains(':');
    plausible && user.parse::<IpAddr>().is_ok()
}

/// Hosts whose first label is not a language.
const NOT_LANGUAGE: [&str; 5] = ["www", "m", "test", "test2", "api"];

/// `en.wikipedia.org` → (wikipedia, en); `commons.wikimedia.org` → (commons, none);
/// `www.wikidata.org` → (wikidata, none); `en.m.wikipedia.org` → (wikipedia, en).
pub fn split_server_name(server: &str) -> (Option<&str>, Option<&str>) {
    // One pass over the bytes: the first label, the second-to-last label, and no empty label anywhere.
    let b = server.as_bytes();
    let (Some(first_dot), Some(last_dot)) = (
        b.iter().position(|&c| c == b'.'),
        b.iter().rposition(|&c| c == b'.'),
    ) else {
        return (None, None);
    };
    let project_start = b[..last_dot]
        .iter()
        .rposition(|&c| c == b'.')
        .map_or(0, |p| p + 1);
    if first_dot == last_dot
        || first_dot == 0
        || last_dot + 1 == b.len()
        || b.windows(2).any(|w| w == b"..")
    {
        return (None, None);
    }
    let first = &server[..first_dot];
    let project = &server[project_start..last_dot];
    if project == "wikimedia" {
        return (Some(first), None);
    }
    let language = (!NOT_LANGUAGE.contains(&first)).then_some(first);
    (Some(project), language)
}

// Without the `component` feature the crate is a library other plugins build on (the hot-swap tests wrap it).
#[cfg(feature = "component")]
export_plugin!(Enrich);
