//! One integration binary, a module per area (as wasmtime's `tests/all`).

mod bad_plugins;
mod cli;
mod ingest;
mod loading;
mod polyglot;
mod standard_plugins;
mod state;
mod support;
