//! The standard filter: ordered rules over JSON paths. A `drop` rule drops the events its condition matches;
//! an `allow` rule drops the events it does not match (allow-lists). Every drop is counted under the rule's
//! name; nothing is dropped silently. Canary events (`meta.domain == "canary"`) are dropped by default.
//!
//! ```json
//! {
//!   "drop_canary": true,
//!   "rules": [
//!     {"name": "wikis", "path": "wiki", "when": {"op": "in", "values": ["enwiki", "dewiki"]}, "action": "allow"},
//!     {"name": "bots", "path": "bot", "when": {"op": "equals", "value": true}, "action": "drop"},
//!     {"name": "talk", "path": "namespace", "when": {"op": "in", "values": [1, 3, 5]}, "action": "drop"},
//!     {"name": "big", "path": "length.new", "when": {"op": "gt", "value": 100000}, "action": "drop"},
//!     {"name": "sandbox", "path": "title", "when": {"op": "regex", "pattern": "(?i)sandbox"}, "action": "drop"}
//!   ]
//! }
//! ```
//!
//! Conditions: `equals`, `in`, `not_in` (JSON values), `exists`, `missing` (the path is absent or null), `gt`,
//! `gte`, `lt`, `lte` (numbers; a non-number never matches) and `regex` (text; a non-text never matches).

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use weir_sdk::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Drop Wikimedia canary events (`meta.domain == "canary"`) before any rule, counted as `canary`.
    pub drop_canary: bool,
    /// Rules, applied in order; the first that drops an event names the drop.
    pub rules: Vec<Rule>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            drop_canary: true,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Counted with every event this rule drops.
    pub name: String,
    /// Dotted JSON path the condition looks at.
    pub path: String,
    pub when: Condition,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Drop events that match.
    Drop,
    /// Drop events that do not match.
    Allow,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    Equals { value: Json },
    In { values: Vec<Json> },
    NotIn { values: Vec<Json> },
    Exists,
    Missing,
    Gt { value: f64 },
    Gte { value: f64 },
    Lt { value: f64 },
    Lte { value: f64 },
    Regex { pattern: String },
}

/// The example configuration, written to `example-config.json` by the tests (`WEIR_BLESS=1` regenerates it):
/// keep three wikis, drop bots and talk namespaces.
pub fn example_config() -> Config {
    let rule = |name: &str, path: &str, when: Condition, action| Rule {
        name: name.into(),
        path: path.into(),
        when,
        action,
    };
    let wikis = ["enwiki", "wikidatawiki", "commonswiki"]
        .map(Json::from)
        .to_vec();
    Config {
        drop_canary: true,
        rules: vec![
            rule(
                "wikis",
                "wiki",
                Condition::In { values: wikis },
                Action::Allow,
            ),
            rule(
                "bots",
                "bot",
                Condition::Equals {
                    value: Json::Bool(true),
                },
                Action::Drop,
            ),
            rule(
                "talk",
                "namespace",
                Condition::In {
                    values: [1, 3, 5].map(Json::from).to_vec(),
                },
                Action::Drop,
            ),
        ],
    }
}

/// A rule ready to run: its field index and compiled condition.
struct Compiled {
    name: String,
    field: usize,
    test: Test,
    action: Action,
}

enum Test {
    OneOf(Vec<Value>),
    NoneOf(Vec<Value>),
    Exists,
    Missing,
    Compare(fn(f64, f64) -> bool, f64),
    Regex(regex_lite::Regex),
}

impl Test {
    fn matches(&self, value: Option<ValueRef<'_>>) -> bool {
        match self {
            Test::OneOf(values) => value.is_some_and(|v| values.iter().any(|c| same(c, v))),
            Test::NoneOf(values) => !value.is_some_and(|v| values.iter().any(|c| same(c, v))),
            Test::Exists => !matches!(value, None | Some(ValueRef::Null)),
            Test::Missing => matches!(value, None | Some(ValueRef::Null)),
            Test::Compare(cmp, bound) => match value {
                Some(ValueRef::Integer(n)) => cmp(n as f64, *bound),
                Some(ValueRef::Float(f)) => cmp(f, *bound),
                _ => false,
            },
            Test::Regex(re) => matches!(value, Some(ValueRef::Text(s)) if re.is_match(s)),
        }
    }
}

/// Equality across the int/float split: `1` in the config equals `1.0` in an event.
fn same(a: &Value, b: ValueRef<'_>) -> bool {
    match (a.as_value_ref(), b) {
        (ValueRef::Integer(x), ValueRef::Float(y)) | (ValueRef::Float(y), ValueRef::Integer(x)) => {
            (x as f64) == y
        }
        (a, b) => a == b,
    }
}

pub struct Filter {
    drop_canary: bool,
    rules: Vec<Compiled>,
}

impl Filter {
    pub fn from_config(config: Config) -> Result<(Self, Plan), String> {
        let mut reads: Vec<String> = vec!["meta.domain".into()];
        let mut rules = Vec::new();
        for (i, rule) in config.rules.into_iter().enumerate() {
            let at = format!("rules[{i}] ({:?})", rule.name);
            if rule.name.is_empty() {
                return Err(format!("{at}: `name` must not be empty"));
            }
            if rule.path.is_empty() || rule.path.split('.').any(str::is_empty) {
                return Err(format!(
                    "{at}: `path` {:?} is not a dotted JSON path",
                    rule.path
                ));
            }
            let field = match reads.iter().position(|p| *p == rule.path) {
                Some(i) => i,
                None => {
                    reads.push(rule.path.clone());
                    reads.len() - 1
                }
            };
            let test = match rule.when {
                Condition::Equals { value } => Test::OneOf(vec![Value::from(&value)]),
                Condition::In { values } => Test::OneOf(values.iter().map(Value::from).collect()),
                Condition::NotIn { values } => {
                    Test::NoneOf(values.iter().map(Value::from).collect())
                }
                Condition::Exists => Test::Exists,
                Condition::Missing => Test::Missing,
                Condition::Gt { value } => Test::Compare(|a, b| a > b, value),
                Condition::Gte { value } => Test::Compare(|a, b| a >= b, value),
                Condition::Lt { value } => Test::Compare(|a, b| a < b, value),
                Condition::Lte { value } => Test::Compare(|a, b| a <= b, value),
                Condition::Regex { pattern } => Test::Regex(
                    regex_lite::Regex::new(&pattern)
                        .map_err(|e| format!("{at}: bad regex {pattern:?}: {e}"))?,
                ),
            };
            rules.push(Compiled {
                name: rule.name,
                field,
                test,
                action: rule.action,
            });
        }
        Ok((
            Filter {
                drop_canary: config.drop_canary,
                rules,
            },
            Plan::new().reads(reads),
        ))
    }
}

impl Plugin for Filter {
    fn manifest() -> Manifest {
        Manifest::new(
            "filter",
            env!("CARGO_PKG_VERSION"),
            Kind::Filter,
            "Rules over JSON paths; drops canaries",
        )
    }

    fn init(config: &str) -> Result<(Self, Plan), String> {
        Filter::from_config(parse_config(config)?)
    }

    fn process(&mut self, event: &Event) -> Outcome {
        if self.drop_canary && event.str(0) == Some("canary") {
            return Outcome::drop("canary");
        }
        for rule in &self.rules {
            let matched = rule.test.matches(event.value(rule.field));
            if matched == (rule.action == Action::Drop) {
                return Outcome::drop(rule.name.as_str());
            }
        }
        Outcome::keep()
    }
}

export_plugin!(Filter);
