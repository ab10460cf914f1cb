//! The pipeline's pull from its durable consumer, against a real nats-server: when a quiet pull counts as
//! stalled (and is opened anew) and when quiet is just quiet.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use weir::bus::NatsServer;
use weir::pipeline::runner::stalled;

use crate::harness::runtime;

#[test]
fn a_quiet_pull_is_stalled_only_while_deliverable_messages_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path(), None).unwrap();
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: "QUIET".into(),
                subjects: vec!["quiet".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("quiet".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: 5,
                ..Default::default()
            })
            .await
            .unwrap();

        // An empty stream: nothing to wait for.
        assert_eq!(stalled(&consumer).await, None);

        for i in 0..8 {
            js.publish("quiet", format!("{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // Messages wait and the server may deliver them: a pull that brings none is stuck.
        assert_eq!(stalled(&consumer).await, Some(8));

        // Five delivered, none acked: at the ack-pending limit the server holds the rest back, and quiet
        // is what a healthy pull sees too.
        let mut held = Vec::new();
        let mut batch = consumer.fetch().max_messages(5).messages().await.unwrap();
        while let Some(m) = batch.next().await {
            held.push(m.unwrap());
        }
        assert_eq!(held.len(), 5);
        assert_eq!(stalled(&consumer).await, None);

        // Acked, the rest can come again.
        for m in &held {
            m.ack().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stalled(&consumer).await, Some(3));
    });
}
