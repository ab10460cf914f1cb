//! The plugin runtime: wasmtime with the component model, the sandbox policy, the contract's host imports,
//! the precompiled-component cache and the failure handling that keeps one bad plugin from hurting the host.

pub mod bindings;
pub mod columns;
pub mod context;
pub mod failure;
pub mod guest_log;
mod journal;
pub mod loader;
pub mod plugin;
pub mod sandbox;
pub mod snapshot;
pub mod state;
pub mod stats;
mod waits;

pub use bindings::types;
pub use context::Clock;
pub use failure::{FailureKind, PluginFailure};
pub use loader::{LoadedPlugin, Loader, component_sha256};
pub use plugin::{BatchResult, HandOver, Plugin, WriteChunk};
pub use sandbox::Limits;
pub use snapshot::Snapshot;
pub use state::KeyedState;
pub use stats::PluginStats;
