//! The standard data-quality plugin: declarative checks, each with a name and a severity. An event that fails
//! an `error` check is quarantined with reason `quality_failed` and the names of every check it failed; a
//! failed `warn` check is counted (`warn.<check>`) and the event kept. Each batch reports its pass rate as the
//! gauge `pass_rate` and an `alert_level` gauge (0 ok, 1 warning, 2 critical) from the configured thresholds.
//!
//! Check kinds: `not_null`, `type` (`boolean`, `integer`, `number`, `string`, `object`, `array`), `enum`,
//! `range` (`min`/`max`, inclusive), `regex`, `max_length` (characters), `freshness` (the time at `path` is
//! no older than `max_age_ms` against the host clock, which in a replay reads when the batch was ingested; a
//! missing or unreadable time fails), `not_future` (not later than the host clock plus `skew_ms`), and
//! `requires` (when `path` equals `equals`, `then` must be present). Checks other than `not_null`, `requires`, `freshness` and `not_future` pass when the value is
//! absent or null: pair them with `not_null` where presence matters.
//!
//! The default checks are the bronze/silver gates for Wikimedia `recentchange` (see `Config::default`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use weir_sdk::prelude::*;
use weir_sdk::time::parse_rfc3339_ms;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub checks: Vec<Check>,
    /// `alert_level` is 1 (warning) when a batch's pass rate is below this.
    pub warning_below: f64,
    /// `alert_level` is 2 (critical) when a batch's pass rate is below this.
    pub critical_below: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    /// Dotted JSON path the check looks at (for `requires`, the path of the condition).
    pub path: String,
    #[serde(default)]
    pub severity: Severity,
    pub rule: Rule,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Quarantine the event.
    #[default]
    Error,
    /// Count it and keep the event.
    Warn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonType {
    Boolean,
    Integer,
    Number,
    String,
    Object,
    Array,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    NotNull,
    Type { r#type: JsonType },
    Enum { values: Vec<Json> },
    Range { min: Option<f64>, max: Option<f64> },
    Regex { pattern: String },
    MaxLength { max: usize },
    Freshness { max_age_ms: i64 },
    NotFuture { skew_ms: i64 },
    Requires { equals: Json, then: String },
}

impl Default for Config {
    fn default() -> Self {
        let check = |name: &str, path: &str, rule| Check {
            name: name.into(),
            path: path.into(),
            severity: Severity::Error,
            rule,
        };
        let types = ["edit", "new", "log", "categorize", "external"]
            .map(Json::from)
            .to_vec();
        Config {
            checks: vec![
                check("event_id_present", "meta.id", Rule::NotNull),
                check("event_time_present", "meta.dt", Rule::NotNull),
                check("event_data_present", "type", Rule::NotNull),
                check("type_valid", "type", Rule::Enum { values: types }),
                check(
                    "namespace_is_integer",
                    "namespace",
                    Rule::Type {
                        r#type: JsonType::Integer,
                    },
                ),
                check(
                    "rc_id_positive",
                    "id",
                    Rule::Range {
                        min: Some(1.0),
                        max: None,
                    },
                ),
                check(
                    "revision_new_positive",
                    "revision.new",
                    Rule::Range {
                        min: Some(1.0),
                        max: None,
                    },
                ),
                check(
                    "edit_has_revision",
                    "type",
                    Rule::Requires {
                        equals: "edit".into(),
                        then: "revision.new".into(),
                    },
                ),
                // Older than the live stream's history (about a week): no backlog read after an outage
                // (`Last-Event-ID`, `?since=`) is that old, so such an event is a replay from elsewhere. An
                // hour, as it was, sent every event of an outage longer than that to quarantine.
                check(
                    "timestamp_fresh",
                    "meta.dt",
                    Rule::Freshness {
                        max_age_ms: 8 * 24 * 3_600_000,
                    },
                ),
                check(
                    "timestamp_not_future",
                    "meta.dt",
                    Rule::NotFuture { skew_ms: 300_000 },
                ),
            ],
            warning_below: 0.95,
            critical_below: 0.80,
        }
    }
}

/// A check ready to run: the index of its field(s) and the compiled rule.
struct Compiled {
    name: String,
    field: usize,
    severity: Severity,
    test: Test,
}

enum Test {
    NotNull,
    Type(JsonType),
    Enum(Vec<Value>),
    Range(Option<f64>, Option<f64>),
    Regex(regex_lite::Regex),
    MaxLength(usize),
    Freshness(i64),
    NotFuture(i64),
    Requires(Value, usize),
}

pub struct Quality {
    checks: Vec<Compiled>,
    warning_below: f64,
    critical_below: f64,
}

fn number(v: ValueRef<'_>) -> Option<f64> {
    match v {
        ValueRef::Integer(n) => Some(n as f64),
        ValueRef::Float(f) => Some(f),
        _ => None,
    }
}

fn same(a: &Value, b: ValueRef<'_>) -> bool {
    let a = a.as_value_ref();
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

impl Compiled {
    /// `parsed` remembers the last time read (field, value): freshness and not-future checks usually read
    /// the same field, and parsing a timestamp is the costliest part of most checks.
    fn passes(
        &self,
        event: &Event,
        now_ms: i64,
        parsed: &mut Option<(usize, Option<i64>)>,
    ) -> bool {
        let value = event
            .value(self.field)
            .filter(|v| !matches!(v, ValueRef::Null));
        let mut time = || match *parsed {
            Some((field, time)) if field == self.field => time,
            _ => {
                let time = value.and_then(|v| match v {
                    ValueRef::Text(s) => parse_rfc3339_ms(s),
                    ValueRef::Integer(ms) => Some(ms),
                    _ => None,
                });
                *parsed = Some((self.field, time));
                time
            }
        };
        match &self.test {
            Test::NotNull => value.is_some(),
            Test::Freshness(max_age) => time().is_some_and(|t| now_ms - t <= *max_age),
            Test::NotFuture(skew) => time().is_some_and(|t| t <= now_ms + skew),
            Test::Requires(equals, then) => {
                !value.is_some_and(|v| same(equals, v)) || !event.is_null_or_missing(*then)
            }
            _ => value.is_none_or(|v| self.passes_present(v)),
        }
    }

    fn passes_present(&self, value: ValueRef<'_>) -> bool {
        match (&self.test, value) {
            // JSON Schema's integer is any number without a fraction: `1.0` and `-0` too, and every whole
            // number a JavaScript plugin writes.
            (Test::Type(t), v) => {
                matches!(
                    (t, v),
                    (JsonType::Boolean, ValueRef::Boolean(_))
                        | (JsonType::Integer, ValueRef::Integer(_))
                        | (JsonType::Number, ValueRef::Integer(_) | ValueRef::Float(_))
                        | (JsonType::String, ValueRef::Text(_))
                ) || matches!((t, v), (JsonType::Integer, ValueRef::Float(f)) if f.fract() == 0.0)
                    || matches!((t, v), (JsonType::Object, ValueRef::Json(j)) if j.starts_with('{'))
                    || matches!((t, v), (JsonType::Array, ValueRef::Json(j)) if j.starts_with('['))
            }
            (Test::Enum(values), v) => values.iter().any(|c| same(c, v)),
            (Test::Range(min, max), v) => {
                number(v).is_some_and(|n| min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m))
            }
            (Test::Regex(re), ValueRef::Text(s)) => re.is_match(s),
            (Test::Regex(_), _) => false,
            (Test::MaxLength(max), ValueRef::Text(s)) => {
                s.len() <= *max || s.chars().count() <= *max
            }
            (Test::MaxLength(_), _) => true,
            _ => true,
        }
    }
}

impl Quality {
    pub fn from_config(config: Config) -> Result<(Self, Plan), String> {
        let mut reads: Vec<String> = Vec::new();
        let mut field_of = |path: &str, at: &str| -> Result<usize, String> {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(format!("{at}: path {path:?} is not a dotted JSON path"));
            }
            Ok(reads.iter().position(|p| p == path).unwrap_or_else(|| {
                reads.push(path.to_string());
                reads.len() - 1
            }))
        };
        if !(0.0..=1.0).contains(&config.warning_below)
            || !(0.0..=1.0).contains(&config.critical_below)
        {
            return Err(
                "`warning_below` and `critical_below` are pass rates between 0 and 1".into(),
            );
        }
        let mut checks = Vec::new();
        for (i, check) in config.checks.into_iter().enumerate() {
            let at = format!("checks[{i}] ({:?})", check.name);
            if check.name.is_empty() {
                return Err(format!("{at}: `name` must not be empty"));
            }
            let field = field_of(&check.path, &at)?;
            let test = match check.rule {
                Rule::NotNull => Test::NotNull,
                Rule::Type { r#type } => Test::Type(r#type),
                Rule::Enum { values } => Test::Enum(values.iter().map(Value::from).collect()),
                Rule::Range { min, max } => {
                    if min.is_none() && max.is_none() {
                        return Err(format!("{at}: a range needs `min`, `max` or both"));
                    }
                    Test::Range(min, max)
                }
                Rule::Regex { pattern } => Test::Regex(
                    regex_lite::Regex::new(&pattern)
                        .map_err(|e| format!("{at}: bad regex {pattern:?}: {e}"))?,
                ),
                Rule::MaxLength { max } => Test::MaxLength(max),
                Rule::Freshness { max_age_ms } => Test::Freshness(max_age_ms),
                Rule::NotFuture { skew_ms } => Test::NotFuture(skew_ms),
                Rule::Requires { equals, then } => {
                    Test::Requires(Value::from(&equals), field_of(&then, &at)?)
                }
            };
            checks.push(Compiled {
                name: check.name,
                field,
                severity: check.severity,
                test,
            });
        }
        if checks.is_empty() {
            return Err("`checks` is empty: nothing to check".into());
        }
        let quality = Quality {
            checks,
            warning_below: config.warning_below,
            critical_below: config.critical_below,
        };
        Ok((quality, Plan::new().reads(reads)))
    }

    /// The names of the failed checks, errors first, and whether any error check failed.
    fn failures(&self, event: &Event, now_ms: i64) -> (Vec<String>, bool) {
        let mut failed = Vec::new();
        let mut error = false;
        let mut parsed = None;
        for severity in [Severity::Error, Severity::Warn] {
            for check in self.checks.iter().filter(|c| c.severity == severity) {
                if !check.passes(event, now_ms, &mut parsed) {
                    error |= severity == Severity::Error;
                    failed.push(check.name.clone());
                }
            }
        }
        (failed, error)
    }
}

impl Plugin for Quality {
    fn manifest() -> Manifest {
        Manifest::new(
            "quality",
            env!("CARGO_PKG_VERSION"),
            Kind::Quality,
            "Declarative data-quality checks",
        )
    }

    fn init(config: &str) -> Result<(Self, Plan), String> {
        Quality::from_config(parse_config(config)?)
    }

    fn process(&mut self, event: &Event) -> Outcome {
        let mut warnings = BTreeMap::new();
        let outcome = self.decide(event, clock::now_ms(), &mut warnings);
        report_warnings(warnings);
        outcome
    }

    fn process_batch(&mut self, batch: &Batch) -> Output {
        // One clock reading per batch: a batch is checked against one "now".
        let now = clock::now_ms();
        let mut warnings = BTreeMap::new();
        let mut output = OutputBuilder::with_capacity(batch.len());
        let mut passed = 0;
        for event in batch.events() {
            let outcome = self.decide(&event, now, &mut warnings);
            passed += usize::from(outcome.is_keep());
            output.push(outcome);
        }
        report_warnings(warnings);
        if !batch.is_empty() {
            let rate = passed as f64 / batch.len() as f64;
            let level = if rate < self.critical_below {
                2.0
            } else if rate < self.warning_below {
                1.0
            } else {
                0.0
            };
            metrics::gauge("pass_rate", rate);
            metrics::gauge("alert_level", level);
            metrics::counter("checked", batch.len() as u64);
            metrics::counter("failed", (batch.len() - passed) as u64);
        }
        output.finish()
    }
}

impl Quality {
    /// Quarantines an event that fails an error check; counts the warning checks it fails.
    fn decide<'a>(
        &'a self,
        event: &Event,
        now_ms: i64,
        warnings: &mut BTreeMap<&'a str, u64>,
    ) -> Outcome {
        let (failed, error) = self.failures(event, now_ms);
        if error {
            return Outcome::quarantine("quality_failed", failed);
        }
        for name in failed {
            if let Some(check) = self.checks.iter().find(|c| c.name == name) {
                *warnings.entry(check.name.as_str()).or_default() += 1;
            }
        }
        Outcome::keep()
    }
}

/// Warning checks are counted per batch (`warn.<check>`), not reported one host call per event.
fn report_warnings(warnings: BTreeMap<&str, u64>) {
    for (name, count) in warnings {
        metrics::counter(&format!("warn.{name}"), count);
    }
}

export_plugin!(Quality);
