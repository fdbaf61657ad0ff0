//! The checker's supervisor: a checker that dies is counted and started
//! again from the state it had reached, and no duration makes it panic.

use super::*;

use std::sync::atomic::AtomicUsize;

use tokio::time::timeout;

fn spec(interval: Duration, timeout: Duration) -> CheckSpec {
    CheckSpec {
        probe: Probe::Tcp,
        interval,
        timeout,
        rise: 1,
        fall: 1,
        tunnel: None,
    }
}

/// A target nothing listens on: the probes below never reach it.
fn nowhere() -> SocketAddr {
    "192.0.2.1:9".parse().unwrap()
}

/// A probe that panics on the calls `panics_on` lists (counted from 1) and
/// passes on the others; how many times it was called.
fn probe_that_panics(panics_on: &'static [usize]) -> (ProbeFn, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let probe: ProbeFn = Arc::new(move |_, _, _| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            assert!(!panics_on.contains(&n), "probe {n} fails on purpose");
            Outcome {
                ok: true,
                latency: Duration::from_millis(1),
                detail: "connected".to_owned(),
                local: false,
            }
        })
    });
    (probe, calls)
}

async fn next_event<K>(rx: &mut mpsc::Receiver<Event<K>>) -> Event<K> {
    timeout(Duration::from_secs(3), rx.recv())
        .await
        .expect("no event within 3s")
        .expect("checker stopped")
}

#[tokio::test]
async fn a_checker_whose_probe_panics_is_restarted_and_counted() {
    let (probe, calls) = probe_that_panics(&[1]);
    let (tx, mut rx) = mpsc::channel(16);
    let handle = spawn_with(
        "web",
        "web: backend 192.0.2.1:9".to_owned(),
        nowhere(),
        spec(Duration::from_millis(20), Duration::from_millis(10)),
        None,
        tx,
        probe,
    );
    // The first probe panicked: the result comes from the restarted checker.
    let first = next_event(&mut rx).await;
    assert_eq!(first.key, "web");
    assert_eq!(first.state, Some(State::Up));
    assert!(first.transition.is_some());
    assert_eq!(handle.restarts(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // And it keeps checking.
    next_event(&mut rx).await;
    assert_eq!(handle.restarts(), 1);
    assert!(!handle.is_finished());
}

#[tokio::test]
async fn a_restarted_checker_starts_from_the_state_it_had_reached() {
    // Up at the first probe; the third panics; the restarted checker must
    // not report the backend's first result again (no flap, no transition).
    let (probe, _) = probe_that_panics(&[3]);
    let (tx, mut rx) = mpsc::channel(16);
    let handle = spawn_with(
        "web",
        "web".to_owned(),
        nowhere(),
        spec(Duration::from_millis(20), Duration::from_millis(10)),
        None,
        tx,
        probe,
    );
    assert!(next_event(&mut rx).await.transition.is_some());
    assert!(next_event(&mut rx).await.transition.is_none());
    let after = next_event(&mut rx).await;
    assert_eq!(handle.restarts(), 1);
    assert_eq!(after.state, Some(State::Up));
    assert_eq!(after.transition, None, "{after:?}");
}

#[tokio::test]
async fn a_crash_looping_checker_backs_off_and_stops_with_its_receiver() {
    let (probe, calls) = probe_that_panics(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let (tx, rx) = mpsc::channel(16);
    let handle = spawn_with(
        "web",
        "web".to_owned(),
        nowhere(),
        spec(Duration::from_millis(10), Duration::from_millis(5)),
        None,
        tx,
        probe,
    );
    // Backoffs of 100, 200, 400 ms: 3 or 4 deaths in 600 ms, not dozens.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let restarts = handle.restarts();
    assert!((2..=4).contains(&restarts), "{restarts} restarts");
    // The restarted checker may not have probed yet.
    let calls = calls.load(Ordering::SeqCst) as u64;
    assert!(calls == restarts || calls == restarts + 1, "{calls} probes");
    drop(rx);
    timeout(Duration::from_secs(3), async {
        while !handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the supervisor stops once its receiver is gone");
}

#[tokio::test]
async fn no_interval_or_timeout_makes_a_checker_panic() {
    // Validation refuses such values; the checker must survive them anyway.
    for d in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        let (probe, _) = probe_that_panics(&[]);
        let (tx, mut rx) = mpsc::channel(16);
        let handle = spawn_with(
            "web",
            "web".to_owned(),
            nowhere(),
            spec(d, d),
            None,
            tx,
            probe,
        );
        let first = next_event(&mut rx).await;
        assert_eq!(first.state, Some(State::Up));
        // The next probe is due in ages: nothing comes, nothing dies.
        assert!(
            timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err()
        );
        assert_eq!(handle.restarts(), 0, "interval {d:?}");
    }
}

#[test]
fn first_results_are_due_within_the_spread_plus_the_timeout() {
    let ms = Duration::from_millis;
    assert_eq!(first_result_within(ms(1000), ms(500)), ms(600));
    assert_eq!(first_result_within(ms(50), ms(20)), ms(70));
    assert_eq!(
        first_result_within(Duration::MAX, Duration::MAX),
        Duration::MAX
    );
}

/// The value of the report, with a real probe: the old checker panicked
/// when it scheduled its second probe, before sending its first result.
#[tokio::test]
async fn the_reported_interval_does_not_kill_a_checker() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let interval = Duration::from_secs(500_000_000_000 * 31_557_600);
    let (tx, mut rx) = mpsc::channel(16);
    let handle = spawn(
        (),
        addr,
        spec(interval, Duration::from_millis(500)),
        None,
        tx,
    );
    let first = next_event(&mut rx).await;
    assert_eq!(first.state, Some(State::Up), "{first:?}");
    assert_eq!(handle.restarts(), 0);
    drop(listener);
}
