//! A plugin may wait on the monotonic clock (a sleep, a poll with a timeout) only within its call's deadline:
//! asking for a wait that ends past it is a timeout at once, as a loop that ran that long would be. Epoch
//! interruption (see `sandbox`) stops a plugin only while its own code runs, not while the host waits on its
//! behalf in `wasi:io/poll`: without this, a plugin that sleeps for a year would hold the pipeline's thread
//! for a year.
//!
//! The clock's other functions, and every other pollable a plugin can get (its stdout and stderr, always
//! ready; an empty stdin), are WASI's own.

use std::time::{Duration, Instant};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::context::PluginCtx;

/// The interface `wasmtime_wasi::p2::add_to_linker_sync` defines (guests importing an older 0.2 version are
/// linked to it too).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces the monotonic clock's `subscribe-duration` and `subscribe-instant` with ones that refuse a wait
/// past the current call's deadline. Call after linking WASI.
pub fn bound_by_deadline(linker: &mut Linker<PluginCtx>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: StoreContextMut<'_, PluginCtx>, (ns,): (u64,)| {
            Ok((wait(store.data_mut(), Duration::from_nanos(ns))?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: StoreContextMut<'_, PluginCtx>, (when,): (u64,)| {
            let ctx = store.data_mut();
            let now = monotonic_now(ctx)?;
            Ok((wait(ctx, Duration::from_nanos(when.saturating_sub(now)))?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The guest's monotonic clock, as `monotonic-clock.now` reads it.
fn monotonic_now(ctx: &mut PluginCtx) -> wasmtime::Result<u64> {
    let view = WasiView::ctx(ctx);
    let mut clocks = WasiClocksCtxView {
        ctx: view.ctx.clocks(),
        table: view.table,
    };
    monotonic_clock::Host::now(&mut clocks)
}

/// A pollable ready after `duration`; a timeout at once when that is past the call's deadline. Cutting the
/// wait at the deadline would not do: the epoch ticks behind the wall clock on a busy machine, so the plugin
/// could run on from there and finish its call.
fn wait(ctx: &mut PluginCtx, duration: Duration) -> wasmtime::Result<Resource<DynPollable>> {
    let until = match Instant::now().checked_add(duration) {
        Some(until) if until <= ctx.deadline => until,
        _ => return Err(wasmtime::Trap::Interrupt.into()),
    };
    let table = WasiView::ctx(ctx).table;
    let wake = table.push(Wake(tokio::time::Instant::from_std(until)))?;
    subscribe(table, wake)
}

struct Wake(tokio::time::Instant);

#[async_trait::async_trait]
impl Pollable for Wake {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.0).await;
    }
}
