//! The exclusive reader's lease against a real nats-server: one holder at a time, a live holder refused
//! by name, an earlier run of the same host that was killed taken over at once (but not a holder of the same
//! name in another process namespace), a released lease taken at once, and a holder that loses its lease
//! told so. `service::` checks that `weir run` stops without committing when its lease is taken.

use std::time::Duration;

use async_nats::jetstream;
use weir::bus::lease::{BUCKET, Lease};

use crate::harness::{nats_server, runtime};

/// A process that has exited: its pid names no running process.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A lease entry as a run of `host` with process `pid` in `pid_namespace` on this machine writes it.
fn holder(host: &str, pid: u32, pid_namespace: &str) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    serde_json::json!({
        "host": host,
        "pid": pid,
        "since_ms": 0,
        "boot": boot.trim(),
        "pid_namespace": pid_namespace,
    })
    .to_string()
}

fn my_pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Runs `test` against a nats-server of its own.
fn on_a_server<F: std::future::Future<Output = ()>>(test: impl FnOnce(jetstream::Context) -> F) {
    let dir = tempfile::tempdir().unwrap();
    let server = nats_server(dir.path());
    runtime().block_on(async {
        let client = weir::bus::connect(&server.url(), "lease-test")
            .await
            .unwrap();
        test(jetstream::new(client)).await
    });
}

#[test]
fn one_host_at_a_time_holds_the_lease() {
    on_a_server(|js| async move {
        let a = Lease::acquire(&js, "wiki", "host-a", Duration::ZERO, 1)
            .await
            .unwrap();
        // Another host is refused, with the holder named, once its wait is over.
        let refused = Lease::acquire(&js, "wiki", "host-b", Duration::from_secs(1), 1)
            .await
            .err()
            .expect("a second host is refused");
        let message = format!("{refused:#}");
        assert!(
            message.contains("host host-a") && message.contains("reads pipeline wiki alone"),
            "{message}"
        );
        // What a host that would share the stream checks first.
        let holder = weir::bus::lease::holder(&js, "wiki").await.unwrap();
        assert!(holder.is_some_and(|h| h.contains("host-a")));
        // Other pipelines have leases of their own.
        let other = Lease::acquire(&js, "other", "host-b", Duration::ZERO, 1)
            .await
            .unwrap();
        other.release().await;

        // A released lease is taken at once.
        a.release().await;
        assert_eq!(weir::bus::lease::holder(&js, "wiki").await.unwrap(), None);
        let b = Lease::acquire(&js, "wiki", "host-b", Duration::ZERO, 1)
            .await
            .unwrap();

        // Taken from under its holder (as when it ran out while the holder was stalled): the holder is told
        // at its next renewal, and names who has it now.
        let kv = js.get_key_value(BUCKET).await.unwrap();
        let usurper = serde_json::json!({"host": "host-c", "pid": 1, "since_ms": 0});
        kv.put("wiki", usurper.to_string().into()).await.unwrap();
        let mut keeper = b.keep();
        tokio::time::timeout(Duration::from_secs(30), keeper.ended())
            .await
            .expect("the renewal notices within a third of the lease's life");
        let lost = format!("{:#}", keeper.finish().await.unwrap_err());
        assert!(lost.contains("taken over by host host-c"), "{lost}");
    });
}

#[test]
fn a_killed_run_of_this_host_is_taken_over_at_once_and_a_live_holder_is_kept() {
    on_a_server(|js| async move {
        // Create the bucket, then leave a lease as a killed run of "edge-1" would.
        Lease::acquire(&js, "wiki", "setup", Duration::ZERO, 1)
            .await
            .unwrap()
            .release()
            .await;
        let kv = js.get_key_value(BUCKET).await.unwrap();

        // The same host name in another process namespace (a container with host networking, say): its
        // process ids say nothing here, so it is waited for, not taken over.
        let elsewhere = holder("edge-1", dead_pid(), "pid:[1]");
        kv.put("wiki", elsewhere.into()).await.unwrap();
        let refused = Lease::acquire(&js, "wiki", "edge-1", Duration::from_secs(1), 1).await;
        assert!(
            refused.is_err(),
            "a holder in another namespace was taken over"
        );

        let killed = holder("edge-1", dead_pid(), &my_pid_namespace());
        kv.put("wiki", killed.into()).await.unwrap();

        let started = std::time::Instant::now();
        let lease = Lease::acquire(&js, "wiki", "edge-1", Duration::from_secs(60), 1)
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}: an earlier run that is gone is not waited for",
            started.elapsed()
        );

        // Kept by renewals well past the lease's life: nobody else gets it meanwhile.
        let keeper = lease.keep();
        let past_its_life = weir::bus::lease::TTL + Duration::from_secs(3);
        let refused = Lease::acquire(&js, "wiki", "edge-2", past_its_life, 1).await;
        assert!(refused.is_err(), "a renewed lease does not run out");
        keeper.finish().await.unwrap();
    });
}
