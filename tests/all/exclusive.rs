//! Exclusive mode (`consumer.mode = "exclusive"`): one host reads the stream through an ordered consumer
//! without acks, the lake's commit log its only cursor. The same promise as shared mode, checked the same
//! way: killed at every crash point of the commit protocol and at random moments, restarted, every stream
//! sequence is in the lake exactly once (Parquet read back). A second reader, exclusive or shared, is refused
//! while the first runs; a run killed with its lease in hand is followed at once by the next run of the same
//! host.
//! (`service::` runs it through broker crashes too.)

use std::time::Duration;

use crate::harness::{Harness, LakeAt, realistic};
use crate::lake::{crash_and_recover_with, sigkill_at_random_moments};
use crate::support::{get_json, http};

/// Sets `consumer.mode = "exclusive"`.
pub fn exclusive(t: &mut toml::Table) {
    t["consumer"]
        .as_table_mut()
        .unwrap()
        .insert("mode".into(), "exclusive".into());
}

macro_rules! crash_tests {
    ($($name:ident => $point:literal,)*) => {$(
        #[test]
        fn $name() {
            crash_and_recover_with(LakeAt::Local, $point, 600 + line!() as u64, exclusive);
        }
    )*};
}

crash_tests! {
    exclusive_crash_at_commit_start => "commit.start",
    exclusive_crash_after_files_are_staged => "commit.after_files",
    exclusive_crash_after_the_commit_record => "commit.after_record",
    exclusive_crash_after_files_are_published => "commit.after_publish",
    exclusive_crash_after_the_commit => "commit.after_ack",
}

#[test]
fn exclusive_sigkill_at_random_moments_loses_and_duplicates_nothing() {
    sigkill_at_random_moments(exclusive);
}

#[test]
fn a_second_reader_is_refused_and_a_killed_one_is_followed_at_once() {
    const EVENTS: u64 = 3000;
    let h = Harness::new(LakeAt::Local, exclusive);
    let last = h.prefill(realistic(17, EVENTS, Duration::from_secs(50 * 60)), EVENTS);
    let mut first = h.weir(&[]);
    h.wait_committed(&mut first, 1, Duration::from_secs(120));

    // The same pipeline under the same host name, as when `weir run` is started twice on one machine:
    // refused before it opens the lake, naming the holder.
    let mut second = h.weir(&[]);
    let status = second.wait(Duration::from_secs(120));
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(!status.success(), "a second reader ran:\n{log}");
    assert!(
        log.contains("reads pipeline wikimedia alone") && log.contains("pid"),
        "{log}"
    );
    // Refused before it opened the lake (which would clean up staging under its host name: the first one's).
    assert!(!log.contains("reading the stream alone"), "{log}");
    // A host that would share the stream is refused too, at once.
    let mut shared = h.weir(&[("WEIR_CONSUMER_MODE", "shared")]);
    let status = shared.wait(Duration::from_secs(60));
    let log = std::fs::read_to_string(&shared.log).unwrap();
    assert!(
        !status.success(),
        "a shared reader ran beside the exclusive one:\n{log}"
    );
    assert!(log.contains("is read alone by host"), "{log}");

    // Killed with its lease in hand: the next run of this host does not wait for the lease to run out.
    first.kill();
    let mut again = h.weir(&[]);
    h.finish(&mut again, last);
    let log = std::fs::read_to_string(&again.log).unwrap();
    assert!(log.contains("took over the exclusive lease"), "{log}");
    assert!(!log.contains("waiting up to"), "{log}");

    // Stopped cleanly, it let go: the next run takes the lease as new.
    let mut third = h.weir(&[]);
    third.api(Duration::from_secs(60));
    third.stop();
    let log = std::fs::read_to_string(&third.log).unwrap();
    assert!(
        !log.contains("took over") && !log.contains("waiting up to"),
        "{log}"
    );

    h.verify();
    h.read_back().assert_exactly_once(last);
}

/// A paused exclusive reader takes nothing more (its pull is closed meanwhile), and resumed it goes on
/// after the last message it took: every event lands exactly once.
#[test]
fn a_paused_exclusive_reader_goes_on_after_the_last_message_it_took() {
    const EVENTS: u64 = 1500;
    let h = Harness::new(LakeAt::Local, exclusive);
    let mut weir = h.weir_as("box-a");
    let api = weir.api(Duration::from_secs(60));
    let span = Duration::from_secs(20 * 60);
    let first = h.prefill(realistic(33, EVENTS, span), EVENTS);
    h.wait_committed(&mut weir, first, Duration::from_secs(180));
    let control = |what: &str| {
        let (code, answer) = http("POST", &format!("{api}/api/v1/pipeline/{what}"), None, None);
        assert_eq!(code, 200, "{what}: {answer}");
    };
    control("pause");
    let received = || {
        get_json(&api, "/api/v1/pipeline")["received"]
            .as_u64()
            .unwrap()
    };
    let before = received();
    let last = h.prefill(realistic(34, EVENTS, span), EVENTS);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(received(), before, "a paused reader took events");
    control("resume");
    h.finish(&mut weir, last);
    h.verify();
    h.read_back().assert_exactly_once(last);
}

/// A host that comes back under another name (a container created anew gets a new hostname) carries on
/// from the plugin state the last host committed: the windows open when the first host stopped close
/// whole, as gold_wiki against silver shows, and dedupe keys and sessions go on.
#[test]
fn a_host_under_a_new_name_carries_on_from_the_last_state() {
    const EVENTS: u64 = 1500;
    let h = Harness::new(LakeAt::Local, exclusive);
    let half = Duration::from_secs(25 * 60);
    // The first run's events end 26 minutes ago, the second's go on from there: windows straddle the two.
    let mut early = realistic(31, EVENTS, half);
    early.start_ms -= half.as_millis() as i64;
    let last = h.prefill(early, EVENTS);
    let mut first = h.weir_as("box-a");
    h.finish(&mut first, last);

    let last = h.prefill(realistic(32, EVENTS, half), EVENTS);
    let mut second = h.weir_as("box-b");
    h.finish(&mut second, last);
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(
        log.contains("carrying on from the plugin state host box-a committed last"),
        "{log}"
    );
    h.verify();
    h.read_back().assert_exactly_once(last);
}
