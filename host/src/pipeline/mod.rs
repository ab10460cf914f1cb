//! Running plugins over events: chains of stages over batches, and the service that ties the stream, the
//! chain and the lake together (`weir run`).

pub mod adopt;
pub mod chain;
pub mod cluster;
pub mod deployed;
pub mod handover;
pub mod pause;
pub mod replay;
pub mod runner;
pub mod self_test;
pub mod service;
pub mod shared;
pub mod state;
