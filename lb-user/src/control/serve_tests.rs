//! The control listener's bounds: connections over the cap closed at once,
//! a client that sends nothing let go soon.

use std::{sync::atomic::Ordering, time::Instant};

use tokio::{io::AsyncReadExt as _, net::UnixStream};

use super::*;

#[tokio::test]
async fn surplus_connections_are_closed_at_once_and_silent_ones_soon() {
    let dir = std::env::temp_dir().join(format!("stickylb-ctl-cap-{}", std::process::id()));
    let sock = dir.join("s.sock");
    let listener = bind(&sock).unwrap();
    let (tx, _rx) = mpsc::channel::<Envelope>(4);
    tokio::spawn(serve(listener, tx));

    let mut silent = Vec::new();
    for _ in 0..MAX_CONTROL_CONNECTIONS {
        silent.push(UnixStream::connect(&sock).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = REFUSED.load(Ordering::Relaxed);
    let mut surplus = UnixStream::connect(&sock).await.unwrap();
    let t = Instant::now();
    let mut text = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), surplus.read_to_string(&mut text)).await;
    assert_eq!(text, "");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(REFUSED.load(Ordering::Relaxed), before + 1);

    let t = Instant::now();
    let mut text = String::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(10), silent[0].read_to_string(&mut text)).await;
    assert!(text.contains("no request received"), "{text:?}");
    assert!(
        t.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    drop(silent);
    std::fs::remove_dir_all(&dir).unwrap();
}
