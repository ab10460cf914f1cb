//! The self-test a new plugin version passes before it is swapped in: run alone on recent events (and, for
//! an aggregate, a watermark that closes every window they opened), it must fail no call, and keep at least
//! a share of what the serving version keeps of them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::chain::Chain;
use crate::event::EventShape;
use crate::runtime::{Clock, FailureKind, Limits, LoadedPlugin, Plugin};

/// Recent events, as raw text, for self-tests: a few from each batch, so that the sample spans many batches
/// (a live stream's batch holds a handful of events) at the cost of a few copies per batch.
#[derive(Default)]
pub struct Sample {
    events: VecDeque<Bytes>,
    bytes: usize,
}

impl Sample {
    /// The most events a sample holds (the swap test's flaky fixture counts on it), and the most bytes.
    const EVENTS: usize = 1024;
    const BYTES: usize = 4 << 20;
    /// The most events taken from one batch.
    const PER_BATCH: usize = 32;

    /// Takes a few of a batch's parsed events (their raw text), spread over it. Copies: a payload slices the
    /// connection's read buffer, which a slice held here would keep whole.
    pub fn add<'a>(&mut self, batch: impl ExactSizeIterator<Item = &'a [u8]>) {
        let step = batch.len().div_ceil(Self::PER_BATCH).max(1);
        for raw in batch.step_by(step) {
            self.bytes += raw.len();
            self.events.push_back(Bytes::copy_from_slice(raw));
            while self.events.len() > Self::EVENTS
                || (self.bytes > Self::BYTES && self.events.len() > 1)
            {
                let oldest = self.events.pop_front().expect("not empty");
                self.bytes -= oldest.len();
            }
        }
    }

    pub fn events(&self) -> Vec<Bytes> {
        self.events.iter().cloned().collect()
    }
}

/// What a plugin version is started from: its component, configuration and limits.
pub struct StageSpec {
    pub loaded: Arc<LoadedPlugin>,
    pub config: String,
    pub limits: Limits,
}

/// A new version's self-test, on recent events parsed as the pipeline parses them.
pub struct SelfTest {
    pub shape: EventShape,
    pub sample: Vec<Bytes>,
    /// The share of the sample events the serving version keeps that the candidate must keep (0: any;
    /// `plugins.self_test_min_kept`).
    pub min_kept: f64,
    /// Events per call (`consumer.batch`): the instances under test take batches no larger than live ones,
    /// so they grow no more memory than the pipeline's do.
    pub batch: usize,
    pub clock: Clock,
    /// The stages before the one tested, the version serving it now, and the new one.
    pub before: Vec<StageSpec>,
    pub serving: StageSpec,
    pub candidate: StageSpec,
}

/// How a version did on the sample.
struct Trial {
    events: usize,
    /// Events kept through the whole chain of the trial.
    kept: usize,
    /// The tested version's failed calls, by kind.
    failures: BTreeMap<FailureKind, u64>,
    /// The events it failed on (a batch failing on most events fails them together after a few calls).
    failed_events: u64,
}

impl Trial {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

impl SelfTest {
    /// Runs the candidate on the sample, alone (each in an instance of its own, so the test leaves no
    /// state). It is refused when:
    /// - it fails calls, more than the serving version does on the same events (an event the serving
    ///   version fails on too, which its stage's `on_error` handles live, does not block a deploy, a fix
    ///   least of all);
    /// - it keeps less than `min_kept` of what the serving version keeps of the events as they reach the
    ///   stage live (through fresh instances of the stages before it), when that share is one event or more.
    ///   A rule that drops everything, or a check that quarantines everything, fails no call, and the
    ///   error-rate watch after the swap would let it through. An aggregate passes every event on: this
    ///   part judges filters and checks.
    ///
    /// The serving version, and the stages before, start only when the candidate fails calls or keeps so
    /// little of the sample that it could fall short. Returns a fresh instance of the candidate, to serve.
    pub fn run(self) -> Result<Plugin, String> {
        let candidate = self.start(&self.candidate)?;
        let label = candidate.label();
        let alone = self.trial(Vec::new(), candidate)?;
        if alone.events == 0 {
            tracing::warn!(plugin = %label, "self-test on no events: none has come since the start");
        }
        if alone.failed() > 0 {
            let (tolerated, tolerated_events) = self
                .start(&self.serving)
                .and_then(|serving| self.trial(Vec::new(), serving))
                .map_or((0, 0), |serving| (serving.failed(), serving.failed_events));
            if alone.failed() > tolerated || alone.failed_events > tolerated_events {
                return Err(format!(
                    "{label} failed its self-test: {} failed calls, failing {} of {} recent events ({:?}); \
                     the serving version failed {tolerated} calls, failing {tolerated_events} events",
                    alone.failed(),
                    alone.failed_events,
                    alone.events,
                    alone.failures
                ));
            }
            tracing::warn!(plugin = %label, failed = alone.failed(), "self-test: calls failed, on events the serving version fails on too");
        }
        let short_of = |kept: usize, of: usize| {
            let least = self.min_kept * of as f64;
            least >= 1.0 && (kept as f64) < least
        };
        if short_of(alone.kept, alone.events) {
            match self.in_place(&self.candidate).and_then(|candidate| {
                let serving = self.in_place(&self.serving)?;
                Ok((candidate, serving))
            }) {
                Ok((candidate, serving)) if short_of(candidate.kept, serving.kept) => {
                    return Err(format!(
                        "{label} failed its self-test: of {} recent events, the pipeline up to it would keep \
                         {}, and {} with the serving version: below `plugins.self_test_min_kept` ({}). Fix \
                         its rules, or lower that share (0 turns the check off) for a version meant to drop \
                         so much",
                        candidate.events, candidate.kept, serving.kept, self.min_kept
                    ));
                }
                Ok(_) => {}
                // The serving version, or a stage before, not running says nothing of the candidate.
                Err(e) => tracing::warn!(
                    plugin = %label,
                    "self-test: the serving version could not be run on the sample to compare ({e}); \
                     passing the new version on its calls alone"
                ),
            }
        }
        tracing::info!(plugin = %label, events = alone.events, kept = alone.kept, "self-test passed");
        self.start(&self.candidate)
    }

    fn start(&self, spec: &StageSpec) -> Result<Plugin, String> {
        Plugin::start(
            spec.loaded.clone(),
            &spec.config,
            spec.limits.clone(),
            self.clock.clone(),
        )
        .map_err(|e| format!("{e:#}"))
    }

    /// The version of `spec` behind fresh instances of the stages before it, as live.
    fn in_place(&self, spec: &StageSpec) -> Result<Trial, String> {
        let before = self
            .before
            .iter()
            .map(|stage| self.start(stage))
            .collect::<Result<Vec<_>, _>>()?;
        self.trial(before, self.start(spec)?)
    }

    /// Runs the sample through `before`, then `plugin`, in batches of live size.
    fn trial(&self, mut before: Vec<Plugin>, plugin: Plugin) -> Result<Trial, String> {
        let label = plugin.label();
        before.push(plugin);
        let mut chain = Chain::with_shape(self.shape.clone(), before, Vec::new())
            .map_err(|e| format!("{label}: {e:#}"))?;
        let parser = chain.parser();
        let now = chrono::Utc::now().timestamp_millis();
        let mut events = self
            .sample
            .iter()
            .filter_map(|raw| parser.parse(raw.clone(), now).ok())
            .peekable();
        let (mut n, mut kept) = (0, 0);
        while events.peek().is_some() {
            let batch: Vec<_> = events.by_ref().take(self.batch.max(1)).collect();
            n += batch.len();
            kept += chain.run(batch).kept.len();
        }
        // An aggregate's rows come from `on_watermark`: one a day past the clock closes every window the
        // sample opened, so a version that fails there fails its self-test, not the pipeline after the swap.
        let tested = chain
            .stages_mut()
            .last_mut()
            .expect("the tested stage")
            .plugin_mut();
        if !tested.plan().emits.is_empty() {
            // A failure is counted in the stats read below.
            let _ = tested.on_watermark(now + 24 * 3_600_000);
        }
        let last = chain.stages().last().expect("the tested stage");
        Ok(Trial {
            events: n,
            kept,
            failures: last.plugin().stats().failures.clone(),
            failed_events: last.plugin().stats().failed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_keeps_a_few_of_each_batch_and_the_newest_events() {
        let mut sample = Sample::default();
        let batch = |from: usize, n: usize| -> Vec<Bytes> {
            (from..from + n)
                .map(|i| Bytes::from(i.to_string()))
                .collect()
        };
        sample.add(batch(0, 3).iter().map(|b| &b[..]));
        assert_eq!(sample.events(), batch(0, 3), "a small batch is taken whole");
        sample.add(batch(3, 256).iter().map(|b| &b[..]));
        let events = sample.events();
        assert_eq!(events.len(), 3 + 32, "32 of a batch of 256, spread over it");
        assert_eq!(events[3], Bytes::from("3"));
        assert_eq!(events[4], Bytes::from("11"));
        for from in (1000..).step_by(256).take(40) {
            sample.add(batch(from, 256).iter().map(|b| &b[..]));
        }
        let events = sample.events();
        assert_eq!(events.len(), Sample::EVENTS);
        assert_eq!(
            events.last(),
            Some(&Bytes::from((1000 + 39 * 256 + 248).to_string()))
        );
    }
}
