//! The bounded queue of micro-batches from the fetch task to the processor thread, which keeps the messages
//! waiting in it from being delivered again.
//!
//! The server starts a message's `ack_wait` when it delivers it. A processor held up for longer than that (a
//! commit waiting on an unreachable store, a slow plugin) leaves the batches in this queue unacked and
//! unextended: the server would deliver them again, to another host sharing the consumer (whose commit then
//! makes this host's commit of the same sequences refuse its epoch) or to this one, using up their
//! deliveries until they go to quarantine as poison. So the queue records the reply subjects of the batches
//! it holds and of those queued to go in after them ([`Sender::queue`]), and a [`Keeper`] extends their ack
//! deadline every quarter of `ack_wait` until the processor takes them; from then on the processor's epoch
//! keeps them (see `Processor::extend_open_epoch`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::Message;

/// The reply subjects of the batches in the queue, oldest first, and whether the processor has gone.
#[derive(Default)]
struct Waiting {
    batches: Mutex<VecDeque<Vec<Subject>>>,
    receiver_gone: std::sync::atomic::AtomicBool,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Vec<Subject>>> {
        self.batches.lock().expect("not poisoned")
    }
}

/// A queue of `capacity` batches.
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let waiting = Arc::new(Waiting::default());
    (
        Sender {
            tx,
            waiting: waiting.clone(),
        },
        Receiver { rx, waiting },
    )
}

/// Batches queued for the processor and kept meanwhile, sent in order by [`Sender::send_queued`].
#[derive(Default)]
pub struct Queued(VecDeque<Vec<Message>>);

impl Queued {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The processor has gone.
#[derive(Debug)]
pub struct Closed;

pub struct Sender {
    tx: tokio::sync::mpsc::Sender<Vec<Message>>,
    waiting: Arc<Waiting>,
}

impl Sender {
    /// Queues `messages` for the processor in micro-batches of `batch`, each kept from now until the
    /// processor takes it (send them with [`Sender::send_queued`]): a batch only registered when its turn
    /// to be sent came would wait unextended behind the ones before it.
    pub fn queue(&self, queued: &mut Queued, mut messages: Vec<Message>, batch: usize) {
        let mut waiting = self.waiting.lock();
        while !messages.is_empty() {
            let rest = messages.split_off(messages.len().min(batch.max(1)));
            // In the order they will be sent, so that the receiver, taking batches in the same order,
            // always finds the one it took at the front.
            waiting.push_back(messages.iter().filter_map(|m| m.reply.clone()).collect());
            queued.0.push_back(messages);
            messages = rest;
        }
    }

    /// Sends the first of the queued batches once the processor has room for it; `Err` when the processor
    /// is gone. Cancel-safe: a batch is taken from the queue only when it is sent.
    pub async fn send_queued(&self, queued: &mut Queued) -> Result<(), Closed> {
        if queued.0.is_empty() {
            return Ok(());
        }
        let permit = self.tx.reserve().await.map_err(|_| Closed)?;
        permit.send(queued.0.pop_front().expect("not empty"));
        Ok(())
    }

    /// Takes the batches `queued` still holds out of the queue, unsent and no longer kept: to be handed
    /// back, or held by whoever takes them.
    pub fn unqueue(&self, queued: &mut Queued) -> Vec<Message> {
        let mut waiting = self.waiting.lock();
        // The unsent batches are the last ones queued: every earlier one was sent before these were queued.
        let kept = waiting.len().saturating_sub(queued.0.len());
        waiting.truncate(kept);
        queued.0.drain(..).flatten().collect()
    }

    /// What keeps the waiting messages (see [`Keeper::run`]); it does not hold the queue open.
    pub fn keeper(&self) -> Keeper {
        Keeper {
            tx: self.tx.downgrade(),
            waiting: self.waiting.clone(),
        }
    }
}

pub struct Keeper {
    tx: tokio::sync::mpsc::WeakSender<Vec<Message>>,
    waiting: Arc<Waiting>,
}

impl Keeper {
    /// Extends the ack deadline of the messages waiting in the queue every `every` until the processor has
    /// gone, or the fetch task has and the processor has taken every batch. For a consumer that acks (shared
    /// mode); run on the I/O runtime.
    pub async fn run(self, client: async_nats::Client, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            // A stop during an outage: the fetch task has gone, and the batches it queued wait for a processor
            // held up by the store, for longer than `ack_wait`.
            let receiver_gone = self.waiting.receiver_gone.load(Ordering::Relaxed);
            if receiver_gone || (self.tx.upgrade().is_none() && self.waiting.lock().is_empty()) {
                return;
            }
            let replies: Vec<Subject> = self.waiting.lock().iter().flatten().cloned().collect();
            if !replies.is_empty() {
                tracing::debug!(
                    messages = replies.len(),
                    "extended the ack deadline of messages waiting for the processor"
                );
                // Bounded by a round: with NATS away the client's buffer fills and a publish waits, and the
                // exit checks above must still come round.
                let _ = tokio::time::timeout(every, super::runner::extend(&client, &replies)).await;
            }
        }
    }
}

pub struct Receiver {
    rx: tokio::sync::mpsc::Receiver<Vec<Message>>,
    waiting: Arc<Waiting>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.waiting.receiver_gone.store(true, Ordering::Relaxed);
    }
}

impl Receiver {
    /// The next batch; `None` once the fetch task has stopped and the queue is empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Vec<Message>> {
        let batch = self.rx.recv().await?;
        self.waiting.lock().pop_front();
        Some(batch)
    }
}
