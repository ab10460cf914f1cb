//! The self-test a new plugin version passes before it is swapped in: run alone on recent events, it must
//! fail no call, and keep at least a share of what the serving version keeps of them.

use std::collections::VecDeque;

use bytes::Bytes;

use super::chain::Chain;
use crate::event::EventShape;
use crate::runtime::Plugin;

/// Recent events, as raw text, for self-tests: a few from each batch, so that the sample spans many batches
/// (a live stream's batch holds a handful of events) at the cost of a few copies per batch.
#[derive(Default)]
pub struct Sample {
    events: VecDeque<Bytes>,
}

impl Sample {
    /// The most events a sample holds.
    const EVENTS: usize = 1024;
    /// The most events taken from one batch.
    const PER_BATCH: usize = 32;

    /// Takes a few of a batch's parsed events, spread over it. Copies: a payload slices the connection's read
    /// buffer, which a slice held here would keep whole.
    pub fn add(&mut self, batch: &[Bytes]) {
        let step = batch.len().div_ceil(Self::PER_BATCH).max(1);
        for raw in batch.iter().step_by(step) {
            if self.events.len() == Self::EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(Bytes::copy_from_slice(raw));
        }
    }

    pub fn events(&self) -> Vec<Bytes> {
        self.events.iter().cloned().collect()
    }
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
}

impl SelfTest {
    /// Runs the candidate on the sample: any failed call refuses it, and so does keeping less than
    /// `min_kept` of what the serving version keeps of it. A version whose rule drops everything, or whose
    /// check quarantines everything, fails no call, and the error-rate watch after the swap would let it
    /// through. The serving version (started by `serving`) runs only when the candidate keeps so little of
    /// the sample that it could fall short, and judges it only when it keeps enough for the share to be at
    /// least one event: on a handful of events, dropping them all may be right.
    pub fn run(
        self,
        candidate: Plugin,
        serving: impl FnOnce() -> Result<Plugin, String>,
    ) -> Result<(), String> {
        let label = candidate.label();
        let (n, kept) = self.try_on(candidate)?;
        if n == 0 {
            tracing::warn!(plugin = %label, "self-test on no events: none has come since the start");
        }
        let short_of = |of: usize| {
            let least = self.min_kept * of as f64;
            least >= 1.0 && (kept as f64) < least
        };
        if short_of(n) {
            // The serving version not starting, or failing on the sample, says nothing of the candidate.
            match serving().and_then(|serving| {
                let serving_label = serving.label();
                self.try_on(serving).map(|(_, kept)| (serving_label, kept))
            }) {
                Ok((serving_label, kept_now)) if short_of(kept_now) => {
                    return Err(format!(
                        "{label} failed its self-test: it kept {kept} of {n} recent events, of which \
                         {serving_label} (serving now) keeps {kept_now}, below `plugins.self_test_min_kept` \
                         ({}) of them. Fix its rules, or lower that share (0 turns the check off) for a \
                         version meant to drop so much",
                        self.min_kept
                    ));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    plugin = %label,
                    "self-test: the serving version could not be run on the sample to compare ({e}); \
                     passing the new version on its failed calls alone"
                ),
            }
        }
        tracing::info!(plugin = %label, events = n, kept, "self-test passed");
        Ok(())
    }

    /// Runs `plugin` alone on the sample: the events, and those it kept. Any failed call is an error.
    fn try_on(&self, plugin: Plugin) -> Result<(usize, usize), String> {
        let label = plugin.label();
        let mut chain = Chain::with_shape(self.shape.clone(), vec![plugin], Vec::new())
            .map_err(|e| format!("{label}: {e:#}"))?;
        let parser = chain.parser();
        let now = chrono::Utc::now().timestamp_millis();
        let events: Vec<_> = self
            .sample
            .iter()
            .filter_map(|raw| parser.parse(raw.clone(), now).ok())
            .collect();
        let n = events.len();
        let mut kept = 0;
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let batch: Vec<_> = events.by_ref().take(self.batch.max(1)).collect();
            kept += chain.run(batch).kept.len();
        }
        let stats = chain.stages()[0].plugin().stats();
        let failures: u64 = stats.failures.values().sum();
        if failures > 0 {
            return Err(format!(
                "{label} failed its self-test: {failures} failed calls on {n} recent events ({:?})",
                stats.failures
            ));
        }
        Ok((n, kept))
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
        sample.add(&batch(0, 3));
        assert_eq!(sample.events(), batch(0, 3), "a small batch is taken whole");
        sample.add(&batch(3, 256));
        let events = sample.events();
        assert_eq!(events.len(), 3 + 32, "32 of a batch of 256, spread over it");
        assert_eq!(events[3], Bytes::from("3"));
        assert_eq!(events[4], Bytes::from("11"));
        for from in (1000..).step_by(256).take(40) {
            sample.add(&batch(from, 256));
        }
        let events = sample.events();
        assert_eq!(events.len(), Sample::EVENTS);
        assert_eq!(
            events.last(),
            Some(&Bytes::from((1000 + 39 * 256 + 248).to_string()))
        );
    }
}
