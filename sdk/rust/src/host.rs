//! The host's capabilities: keyed state, log, metrics and clock. In a component they call the host; in a
//! native build (unit tests) they are served in memory by this module, per thread.

#[cfg(target_arch = "wasm32")]
use crate::bindings::weir::transform as wit;

/// Keyed state kept by the host, private to the plugin. Writes take effect when the current call succeeds.
pub mod state {
    #[cfg(not(target_arch = "wasm32"))]
    use super::native;
    #[cfg(target_arch = "wasm32")]
    use super::wit::state as imp;

    /// An entry for [`set_many`].
    pub struct Entry<'a> {
        pub key: &'a str,
        pub value: &'a [u8],
        pub ttl_ms: Option<u64>,
    }

    pub fn get(key: &str) -> Option<Vec<u8>> {
        #[cfg(target_arch = "wasm32")]
        return imp::get(key);
        #[cfg(not(target_arch = "wasm32"))]
        native::with(|n| n.get(key))
    }

    /// One host call for a whole batch of keys.
    pub fn get_many(keys: &[&str]) -> Vec<Option<Vec<u8>>> {
        #[cfg(target_arch = "wasm32")]
        return imp::get_many(keys);
        #[cfg(not(target_arch = "wasm32"))]
        native::with(|n| keys.iter().map(|k| n.get(k)).collect())
    }

    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
        #[cfg(target_arch = "wasm32")]
        return imp::set(key, value, ttl_ms);
        #[cfg(not(target_arch = "wasm32"))]
        native::with(|n| n.set(key, value.to_vec(), ttl_ms))
    }

    /// One host call for a whole batch of entries.
    pub fn set_many(entries: &[Entry<'_>]) {
        #[cfg(target_arch = "wasm32")]
        return imp::set_many(
            &entries
                .iter()
                .map(|e| imp::Entry {
                    key: e.key,
                    value: e.value,
                    ttl_ms: e.ttl_ms,
                })
                .collect::<Vec<_>>(),
        );
        #[cfg(not(target_arch = "wasm32"))]
        native::with(|n| {
            entries
                .iter()
                .for_each(|e| n.set(e.key, e.value.to_vec(), e.ttl_ms))
        })
    }

    pub fn delete(key: &str) {
        #[cfg(target_arch = "wasm32")]
        return imp::delete(key);
        #[cfg(not(target_arch = "wasm32"))]
        native::with(|n| n.delete(key))
    }

    pub fn delete_many(keys: &[&str]) {
        #[cfg(target_arch = "wasm32")]
        return imp::delete_many(keys);
        #[cfg(not(target_arch = "wasm32"))]
        native::with(|n| keys.iter().for_each(|k| n.delete(k)))
    }
}

/// Log lines, shown in the host log under the plugin's name.
pub mod log {
    fn emit(level: u8, message: &str) {
        #[cfg(target_arch = "wasm32")]
        {
            use super::wit::log::{Level, log};
            let level = [
                Level::Trace,
                Level::Debug,
                Level::Info,
                Level::Warn,
                Level::Error,
            ][level as usize];
            log(level, message);
        }
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!(
            "[{}] {message}",
            ["trace", "debug", "info", "warn", "error"][level as usize]
        );
    }

    pub fn trace(message: &str) {
        emit(0, message)
    }
    pub fn debug(message: &str) {
        emit(1, message)
    }
    pub fn info(message: &str) {
        emit(2, message)
    }
    pub fn warn(message: &str) {
        emit(3, message)
    }
    pub fn error(message: &str) {
        emit(4, message)
    }
}

/// Counters and gauges, exported by the host with the plugin's name as a label.
pub mod metrics {
    #[cfg(not(target_arch = "wasm32"))]
    use super::native;

    pub fn counter(name: &str, delta: u64) {
        #[cfg(target_arch = "wasm32")]
        return super::wit::metrics::counter_add(name, delta);
        #[cfg(not(target_arch = "wasm32"))]
        native::with(|n| *n.counters.entry(name.to_string()).or_default() += delta)
    }

    pub fn gauge(name: &str, value: f64) {
        #[cfg(target_arch = "wasm32")]
        return super::wit::metrics::gauge_set(name, value);
        #[cfg(not(target_arch = "wasm32"))]
        native::with(|n| {
            n.gauges.insert(name.to_string(), value);
        })
    }

    /// Native builds only: the counters reported so far on this thread.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn counter_value(name: &str) -> u64 {
        native::with(|n| n.counters.get(name).copied().unwrap_or(0))
    }

    /// Native builds only: the last value of a gauge on this thread.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn gauge_value(name: &str) -> Option<f64> {
        native::with(|n| n.gauges.get(name).copied())
    }
}

/// The host's wall clock.
pub mod clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms() -> i64 {
        #[cfg(target_arch = "wasm32")]
        return super::wit::clock::now_ms();
        #[cfg(not(target_arch = "wasm32"))]
        super::native::with(|n| {
            n.now_ms.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            })
        })
    }

    /// Native builds only: pins the clock on this thread (`None` returns to the system clock).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn set_now_ms(now: Option<i64>) {
        super::native::with(|n| n.now_ms = now)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native {
    use std::cell::RefCell;

    use foldhash::HashMap;

    #[derive(Default)]
    pub struct Host {
        state: HashMap<String, (Vec<u8>, Option<i64>)>,
        pub counters: HashMap<String, u64>,
        pub gauges: HashMap<String, f64>,
        pub now_ms: Option<i64>,
    }

    impl Host {
        fn now(&self) -> i64 {
            self.now_ms.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            })
        }

        pub fn get(&self, key: &str) -> Option<Vec<u8>> {
            let now = self.now();
            self.state
                .get(key)
                .filter(|(_, exp)| exp.is_none_or(|e| e > now))
                .map(|(v, _)| v.clone())
        }

        pub fn set(&mut self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) {
            let expiry = ttl_ms.map(|t| self.now().saturating_add(t as i64));
            self.state.insert(key.to_string(), (value, expiry));
        }

        pub fn delete(&mut self, key: &str) {
            self.state.remove(key);
        }
    }

    thread_local! {
        static HOST: RefCell<Host> = RefCell::new(Host::default());
    }

    /// Forgets the state and metrics of this thread (keeps the pinned clock).
    pub fn reset() {
        with(|h| {
            let now_ms = h.now_ms;
            *h = Host {
                now_ms,
                ..Host::default()
            };
        })
    }

    pub fn with<R>(f: impl FnOnce(&mut Host) -> R) -> R {
        HOST.with(|h| f(&mut h.borrow_mut()))
    }
}
