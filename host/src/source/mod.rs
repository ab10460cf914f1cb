//! Where events come from: Server-Sent Events streams (Wikimedia EventStreams first), read exactly as the
//! WHATWG spec says, and the offline stand-ins for demos, tests and load.
//!
//! - [`sse`]: the event-stream parser (chunk-split invariant, bounded memory).
//! - [`client`]: connecting, idle timeouts, backoff and `Last-Event-ID` resume.
//! - [`generate`]: a realistic, seeded generator of `recentchange` events.
//! - [`serve`]: `weir serve-sse`, a local server in Wikimedia's wire format.

pub mod client;
pub mod generate;
pub mod serve;
pub mod sse;
