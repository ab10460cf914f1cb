//! Weir: runs sandboxed WebAssembly plugins over live event streams.
//!
//! Data flows one way: `source` → `bus` → `pipeline` → `lake`, with the API reading state. This crate holds:
//! - [`source`]: Server-Sent Events (parser, client), the event generator and the local SSE server;
//! - [`bus`]: NATS JetStream (the stream, ordered publishing, a supervised local nats-server);
//! - [`ingest`]: a source into the stream, exactly once;
//! - [`lake`]: bronze, silver, gold and quarantine tables as Parquet on any object store, committed exactly once;
//! - [`runtime`]: wasmtime, the sandbox policy, the contract's host imports and plugin failure handling;
//! - [`event`]: events parsed once, projected per plugin, written back once;
//! - [`pipeline`]: chains of plugins over batches of events;
//! - [`cli`]: the `weir` command line.

pub mod api;
pub mod bus;
pub mod cli;
pub mod config;
pub mod event;
pub mod ingest;
pub mod lake;
pub mod pipeline;
pub mod runtime;
pub mod source;
mod tls;
