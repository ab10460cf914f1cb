//! How a plugin call can fail, and the quarantine reason each failure becomes.

use std::fmt;

use serde::Serialize;

/// The kind of a plugin failure. Each maps to the reason recorded on the quarantined event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The call ran past `Limits::call_timeout_ms`.
    Timeout,
    /// The plugin tried to grow its memory past `Limits::memory_bytes`.
    Oom,
    /// The plugin trapped: a panic, `unreachable`, a stack overflow, an out-of-bounds access, or a host call it
    /// used wrongly (a state value over the limit, say).
    Trap,
    /// The call returned, but with output the contract forbids: a wrong number of outcomes, a write to a
    /// field it did not declare, a row for a table it does not emit, or more output than the limits allow.
    BadOutput,
}

impl FailureKind {
    /// The quarantine reason code.
    pub fn reason(self) -> &'static str {
        match self {
            FailureKind::Timeout => "plugin_timeout",
            FailureKind::Oom => "plugin_oom",
            FailureKind::Trap => "plugin_trap",
            FailureKind::BadOutput => "plugin_bad_output",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// A failed plugin call: the kind, and a detail for humans (the trap message, which limit was hit).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct PluginFailure {
    pub kind: FailureKind,
    pub detail: String,
}

impl PluginFailure {
    pub fn bad_output(detail: impl Into<String>) -> Self {
        PluginFailure {
            kind: FailureKind::BadOutput,
            detail: detail.into(),
        }
    }

    /// Classifies an error returned by wasmtime for a call. `hit_memory_cap` is what the store's limiter saw.
    pub fn from_call_error(error: &wasmtime::Error, hit_memory_cap: bool) -> Self {
        if hit_memory_cap {
            return PluginFailure {
                kind: FailureKind::Oom,
                detail: format!("{error:#}"),
            };
        }
        let kind = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => FailureKind::Timeout,
            _ => FailureKind::Trap,
        };
        let detail = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => "call exceeded its CPU deadline".to_string(),
            Some(wasmtime::Trap::StackOverflow) => {
                "stack overflow (recursion too deep)".to_string()
            }
            // The root cause is the most useful line; wasmtime puts the wasm backtrace in the context chain.
            _ => error.root_cause().to_string(),
        };
        PluginFailure { kind, detail }
    }
}
