//! The standard dedupe plugin: drops an event whose key was already seen within a time to live. Seen keys live
//! in the host's keyed state, so they survive restarts and hot swaps, and the state of a batch that fails is
//! never half-applied. One `get-many` and one `set-many` per batch, however large.
//!
//! Config: `{"key": "meta.id", "ttl_ms": 86400000, "on_missing": "keep"}`. Use `"key": "revision.new"` for
//! revision-level dedupe. Duplicates are dropped as `duplicate` (and counted); events without the key are kept
//! (counted as `missing_key`) or quarantined with reason `missing_dedupe_key`.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use weir_sdk::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Dotted JSON path of the key.
    pub key: String,
    /// How long a key is remembered, in milliseconds.
    pub ttl_ms: u64,
    /// What to do with events that have no key (absent or null).
    pub on_missing: OnMissing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    Keep,
    Quarantine,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            key: "meta.id".into(),
            ttl_ms: 24 * 60 * 60 * 1000,
            on_missing: OnMissing::Keep,
        }
    }
}

pub struct Dedupe {
    ttl_ms: u64,
    on_missing: OnMissing,
}

/// The state key of a dedupe key. Namespaced so a dedupe can share state with nothing else by accident.
fn key_text(value: ValueRef<'_>) -> Option<Cow<'_, str>> {
    match value {
        ValueRef::Null => None,
        ValueRef::Text(s) | ValueRef::Json(s) => Some(Cow::Borrowed(s)),
        ValueRef::Integer(n) => Some(Cow::Owned(n.to_string())),
        ValueRef::Float(f) => Some(Cow::Owned(f.to_string())),
        ValueRef::Boolean(b) => Some(Cow::Owned(b.to_string())),
    }
}

impl Plugin for Dedupe {
    fn manifest() -> Manifest {
        Manifest::new(
            "dedupe",
            env!("CARGO_PKG_VERSION"),
            Kind::Dedupe,
            "Drops events whose key was seen within a TTL",
        )
    }

    fn init(config: &str) -> Result<(Self, Plan), String> {
        let config: Config = parse_config(config)?;
        if config.key.is_empty() || config.key.split('.').any(str::is_empty) {
            return Err(format!("`key` {:?} is not a dotted JSON path", config.key));
        }
        if config.ttl_ms == 0 {
            return Err("`ttl_ms` must be positive".into());
        }
        let plan = Plan::new().reads([config.key]).keyed_state();
        Ok((
            Dedupe {
                ttl_ms: config.ttl_ms,
                on_missing: config.on_missing,
            },
            plan,
        ))
    }

    fn process(&mut self, event: &Event) -> Outcome {
        self.decide(&[*event]).pop().expect("one outcome per event")
    }

    fn process_batch(&mut self, batch: &Batch) -> Output {
        let events: Vec<Event> = batch.events().collect();
        self.decide(&events).into_iter().collect()
    }
}

impl Dedupe {
    /// One state lookup and one state write for the whole batch; a key seen earlier in the same batch is a
    /// duplicate too. Keys are the values' text, borrowed from the batch (state is private to the plugin, so
    /// they need no prefix).
    fn decide(&mut self, events: &[Event]) -> Vec<Outcome> {
        let keys: Vec<Option<Cow<str>>> = events
            .iter()
            .map(|e| e.value(0).and_then(key_text))
            .collect();
        let lookups: Vec<&str> = keys.iter().flatten().map(|k| &**k).collect();
        let seen = state::get_many(&lookups);
        let mut in_batch = HashSet::with_capacity(lookups.len());
        let mut fresh = Vec::new();
        let (mut duplicates, mut missing) = (0, 0);
        let mut lookup = 0;
        let outcomes = keys
            .iter()
            .map(|key| match key {
                None => {
                    missing += 1;
                    match self.on_missing {
                        OnMissing::Keep => Outcome::keep(),
                        OnMissing::Quarantine => {
                            Outcome::quarantine("missing_dedupe_key", vec!["key".into()])
                        }
                    }
                }
                Some(key) => {
                    let stored = seen[lookup].is_some();
                    lookup += 1;
                    if stored || !in_batch.insert(&**key) {
                        duplicates += 1;
                        Outcome::drop("duplicate")
                    } else {
                        fresh.push(state::Entry {
                            key,
                            value: &[1],
                            ttl_ms: Some(self.ttl_ms),
                        });
                        Outcome::keep()
                    }
                }
            })
            .collect();
        state::set_many(&fresh);
        if duplicates > 0 {
            metrics::counter("duplicates", duplicates);
        }
        if missing > 0 {
            metrics::counter("missing_key", missing);
        }
        outcomes
    }
}

export_plugin!(Dedupe);
