//! The bounded queue of micro-batches from the fetch task to the processor thread, which keeps the messages
//! waiting in it from being delivered again.
//!
//! The server starts a message's `ack_wait` when it delivers it. A processor held up for longer than that (a
//! commit waiting on an unreachable store, a slow plugin) leaves the batches in this queue unacked and
//! unextended: the server would deliver them again, to another host sharing the consumer (whose commit then
//! makes this host's commit of the same sequences refuse its epoch) or to this one, using up their
//! deliveries until they go to quarantine as poison. So the queue records the reply subjects of the batches
//! it holds, and a [`Keeper`] extends their ack deadline every quarter of `ack_wait` until the processor
//! takes them; from then on the processor's epoch keeps them (see `Processor::extend_open_epoch`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::Message;

/// The reply subjects of the batches in the queue, oldest first.
#[derive(Default)]
struct Waiting(Mutex<VecDeque<Vec<Subject>>>);

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Vec<Subject>>> {
        self.0.lock().expect("not poisoned")
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

pub struct Sender {
    tx: tokio::sync::mpsc::Sender<Vec<Message>>,
    waiting: Arc<Waiting>,
}

impl Sender {
    /// Hands a batch over, waiting for room. Its messages are kept from the call on, the wait for room
    /// included. Fails when the processor is gone.
    pub async fn send(&self, batch: Vec<Message>) -> Result<(), Vec<Message>> {
        let replies = batch.iter().filter_map(|m| m.reply.clone()).collect();
        // Pushed before the send, so that the receiver, taking batches in the same order, always finds the
        // one it took at the front.
        self.waiting.lock().push_back(replies);
        self.tx.send(batch).await.map_err(|e| e.0)
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
    /// Extends the ack deadline of the messages waiting in the queue every `every` until it is closed. For a
    /// consumer that acks (shared mode); run on the I/O runtime.
    pub async fn run(self, client: async_nats::Client, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            // Closed once the fetch task has stopped and the processor has gone.
            if self.tx.upgrade().is_none_or(|tx| tx.is_closed()) {
                return;
            }
            let replies: Vec<Subject> = self.waiting.lock().iter().flatten().cloned().collect();
            if !replies.is_empty() {
                tracing::debug!(
                    messages = replies.len(),
                    "extended the ack deadline of messages waiting for the processor"
                );
                super::runner::extend(&client, &replies).await;
            }
        }
    }
}

pub struct Receiver {
    rx: tokio::sync::mpsc::Receiver<Vec<Message>>,
    waiting: Arc<Waiting>,
}

impl Receiver {
    /// The next batch; `None` once the fetch task has stopped and the queue is empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Vec<Message>> {
        let batch = self.rx.recv().await?;
        self.waiting.lock().pop_front();
        Some(batch)
    }
}
