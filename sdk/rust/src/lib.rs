//! Write Weir plugins in Rust.
//!
//! Implement [`Plugin`] and call [`export_plugin!`]; build with `cargo build --target wasm32-wasip2`. A whole
//! filter:
//!
//! ```ignore
//! use weir_sdk::prelude::*;
//!
//! struct DropBots;
//!
//! impl Plugin for DropBots {
//!     fn manifest() -> Manifest {
//!         Manifest::new("drop-bots", "0.1.0", Kind::Filter, "Drops edits made by bots")
//!     }
//!     fn init(_config: &str) -> Result<(Self, Plan), String> {
//!         Ok((DropBots, Plan::new().reads(["bot"])))
//!     }
//!     fn process(&mut self, event: &Event) -> Outcome {
//!         if event.bool(0) == Some(true) { Outcome::drop("bot") } else { Outcome::keep() }
//!     }
//! }
//!
//! export_plugin!(DropBots);
//! ```
//!
//! The host parses each event once and sends only the fields the plan reads, in plan order: `event.str(0)` is
//! the first path of `reads`. Field writes name a path of `writes` by its index. Batches cross the sandbox
//! column-wise (see `wit/weir.wit`); [`Event`] is a view of one event over those columns, so nothing is copied
//! per event. The same code compiles natively, where the host imports (state, log, metrics, clock) are served
//! in memory so plugins can be unit-tested with `cargo test` (see [`testing`]).

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "weir:transform/plugin",
        pub_export_macro: true,
        // Imports take borrowed arguments (`&[&str]` rather than `&[String]`): a dedupe passes every key of a
        // batch to `state::get_many` without copying them.
        ownership: Borrowing { duplicate_if_necessary: false },
        export_macro_name: "__export_weir_plugin",
        default_bindings_module: "weir_sdk::bindings",
    });
}

mod batch;
mod host;
mod output;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod time;
mod types;

pub use batch::{Batch, BatchBuilder, Column, Event, Texts, ValueRef, kind};
pub use bindings::weir::transform::types::{
    Kind, Output, Plan, PluginManifest as Manifest, Quarantine, Row, StateNeeds, Value, Verdict,
};
pub use host::{clock, log, metrics, state};
pub use output::{FieldWrite, Outcome, OutputBuilder};

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::{
        Batch, Event, Kind, Manifest, Outcome, Output, OutputBuilder, Plan, Plugin, Row, Value,
        ValueRef, Verdict, clock, export_plugin, log, metrics, parse_config, state,
    };
}

/// A Weir plugin. Only `manifest`, `init` and `process` are required.
/// Rows from `on-watermark` that make the host call again with the same watermark (see the WIT contract): a
/// plugin closing more than this returns it in parts, so its instance never holds the whole closing as rows
/// at once (linear memory never shrinks).
pub const WATERMARK_PART_ROWS: usize = 8192;

pub trait Plugin: Sized + 'static {
    /// Static facts about the plugin; the host reads them before sending any event.
    fn manifest() -> Manifest;

    /// Builds the plugin from its configuration (JSON text, `{}` when none) and says what it reads and writes.
    /// Return an error that names the bad key or value; [`parse_config`] does that for serde types.
    fn init(config: &str) -> Result<(Self, Plan), String>;

    /// Decides the fate of one event.
    fn process(&mut self, event: &Event<'_>) -> Outcome;

    /// Decides a whole batch. Override it to batch host calls (a dedupe asks the state for every key of the
    /// batch in one `state::get_many`), to emit rows, or to write fields without building an [`Outcome`] per
    /// event (see [`OutputBuilder`]).
    fn process_batch(&mut self, batch: &Batch) -> Output {
        batch.events().map(|e| self.process(&e)).collect()
    }

    /// Event time reached `watermark_ms`: return the rows of every window that closes. A large closing may
    /// come in parts of [`WATERMARK_PART_ROWS`] rows: a call that returns that many or more is followed by
    /// another with the same watermark.
    fn on_watermark(&mut self, _watermark_ms: i64) -> Vec<Row> {
        Vec::new()
    }

    /// Serializes in-memory state (plans with `snapshot_state()` only).
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Restores what `snapshot` returned, possibly from the previous version of the plugin.
    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Parses a JSON configuration into `T`; the error names the line, column and problem, and unknown keys are
/// errors when `T` has `#[serde(deny_unknown_fields)]`.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, String> {
    let config = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    serde_json::from_str(config).map_err(|e| format!("invalid configuration: {e}"))
}

/// Exports a [`Plugin`] implementation as the component's `weir:transform/transform` interface.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            use $crate::bindings::exports::weir::transform::transform::Guest;

            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<::std::option::Option<$plugin>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            fn with<R>(f: impl FnOnce(&mut $plugin) -> R) -> R {
                INSTANCE.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    f(slot
                        .as_mut()
                        .expect("the host calls init before anything else"))
                })
            }

            #[allow(dead_code)]
            pub struct WeirExport;

            impl Guest for WeirExport {
                fn manifest() -> $crate::Manifest {
                    <$plugin as $crate::Plugin>::manifest()
                }
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::Plan, ::std::string::String> {
                    let (plugin, plan) = <$plugin as $crate::Plugin>::init(&config)?;
                    INSTANCE.with(|cell| *cell.borrow_mut() = ::std::option::Option::Some(plugin));
                    ::std::result::Result::Ok(plan)
                }
                fn process(
                    batch: $crate::bindings::weir::transform::types::Batch,
                ) -> $crate::Output {
                    let batch = $crate::Batch::from(batch);
                    with(|p| $crate::Plugin::process_batch(p, &batch))
                }
                fn on_watermark(watermark_ms: i64) -> ::std::vec::Vec<$crate::Row> {
                    with(|p| $crate::Plugin::on_watermark(p, watermark_ms))
                }
                fn snapshot() -> ::std::vec::Vec<u8> {
                    with(|p| $crate::Plugin::snapshot(p))
                }
                fn restore(
                    snapshot: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    with(|p| $crate::Plugin::restore(p, &snapshot))
                }
            }

            // Only a component exports the contract; native builds (unit tests) would otherwise export symbols
            // whose names the native linker rejects.
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::__export_weir_plugin!(WeirExport with_types_in $crate::bindings);
        };
    };
}
