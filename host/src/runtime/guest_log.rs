//! Guest stdout and stderr, forwarded line by line to the host log under the plugin's name.
//!
//! A plugin may write at most `Limits::log_bytes_per_call` bytes per call to each stream (stderr's budget also
//! covers the messages of the `log` import); the rest is dropped and counted so a plugin that prints in a loop
//! cannot flood the host log or its memory. Writes never fail, because a Rust guest panics when `println!`
//! fails and that would turn chatter into a trap.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept; longer lines are cut so one giant write cannot hold the whole budget in one log record.
const MAX_LINE: usize = 4096;

#[derive(Clone)]
pub struct GuestLog {
    inner: Arc<Mutex<Sink>>,
}

struct Sink {
    plugin: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
    budget: usize,
    budget_per_call: usize,
    dropped_bytes: u64,
}

impl GuestLog {
    pub fn new(plugin: Arc<str>, stream: &'static str, budget_per_call: usize) -> Self {
        GuestLog {
            inner: Arc::new(Mutex::new(Sink {
                plugin,
                stream,
                line: Vec::new(),
                budget: budget_per_call,
                budget_per_call,
                dropped_bytes: 0,
            })),
        }
    }

    /// Called after every call into the plugin: logs an unfinished line, restores the budget and returns the
    /// number of bytes dropped since the last call.
    pub fn end_call(&self) -> u64 {
        let mut sink = self.inner.lock().expect("guest log lock");
        sink.flush_line();
        sink.budget = sink.budget_per_call;
        std::mem::take(&mut sink.dropped_bytes)
    }

    /// Takes `bytes` of this call's budget for a message the plugin logs through the `log` import, which
    /// shares stderr's budget; `false` (the message is dropped, and counted) when too little is left.
    pub fn charge(&self, bytes: usize) -> bool {
        let mut sink = self.inner.lock().expect("guest log lock");
        if bytes > sink.budget {
            sink.dropped_bytes += bytes as u64;
            return false;
        }
        sink.budget -= bytes;
        true
    }

    fn write(&self, bytes: &[u8]) {
        let mut sink = self.inner.lock().expect("guest log lock");
        let kept = bytes.len().min(sink.budget);
        sink.budget -= kept;
        sink.dropped_bytes += (bytes.len() - kept) as u64;
        for &byte in &bytes[..kept] {
            if byte == b'\n' {
                sink.flush_line();
            } else if sink.line.len() < MAX_LINE {
                sink.line.push(byte);
            }
        }
    }
}

impl Sink {
    fn flush_line(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(target: "weir::plugin", plugin = %self.plugin, stream = self.stream, "{}", text.trim_end());
        self.line.clear();
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestLog::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        GuestLog::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
