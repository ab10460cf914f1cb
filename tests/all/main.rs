//! One integration binary, a module per area (as wasmtime's `tests/all`).

mod api;
mod bad_plugins;
mod cli;
mod consumer;
mod exclusive;
mod harness;
mod hosts;
mod ingest;
mod lake;
mod lease;
mod loading;
mod polyglot;
mod self_test;
mod service;
mod standard_plugins;
mod state;
mod support;
