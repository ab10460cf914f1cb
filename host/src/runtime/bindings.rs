//! Host bindings generated from `wit/weir.wit`. Imports are trappable so a host function can stop a plugin that
//! breaks a limit (a state value that is too large, say).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "weir:transform/plugin",
    imports: { default: trappable },
});

pub use self::exports::weir::transform::transform;

/// The contract's types, as generated from the WIT, and the borrowed value the host reads columns with.
pub mod types {
    pub use super::super::columns::ValueRef;
    pub use super::weir::transform::types::*;
}

/// The contract's package, as plugins import it.
pub const PACKAGE: &str = "weir:transform";
/// The interface every plugin exports.
pub const EXPORT: &str = "weir:transform/transform@0.2.0";

/// The lowercase name of a plugin kind, as shown to people and in metrics labels.
pub fn kind_name(kind: types::Kind) -> &'static str {
    match kind {
        types::Kind::Filter => "filter",
        types::Kind::Enrich => "enrich",
        types::Kind::Dedupe => "dedupe",
        types::Kind::Quality => "quality",
        types::Kind::Aggregate => "aggregate",
        types::Kind::Transform => "transform",
    }
}
