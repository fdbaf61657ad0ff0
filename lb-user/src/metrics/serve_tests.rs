//! The metrics listener over real sockets: scrapes answered, idle and
//! surplus connections closed, the daemon's own errors rendered.

use std::{sync::atomic::Ordering, time::Instant};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::*;

async fn start() -> SocketAddr {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<String>>(4);
    tokio::spawn(serve(listener, tx));
    tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let _ = reply.send("stickylb_up 1\n".to_owned());
        }
    });
    addr
}

/// Reads until the server closes; what it sent.
async fn read_all(s: &mut TcpStream) -> String {
    let mut text = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text)).await;
    text
}

#[tokio::test]
async fn surplus_connections_are_closed_at_once_and_idle_ones_soon() {
    let addr = start().await;
    let mut idle = Vec::new();
    for _ in 0..MAX_METRICS_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the server accept them all before the surplus one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = REFUSED.load(Ordering::Relaxed);
    let mut surplus = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    let _ = surplus.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await;
    assert_eq!(read_all(&mut surplus).await, "");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(REFUSED.load(Ordering::Relaxed), before + 1);

    // The idle ones are let go after REQUEST_TIMEOUT, and then a scrape
    // is served again.
    let t = Instant::now();
    assert_eq!(read_all(&mut idle[0]).await, "");
    let waited = t.elapsed();
    assert!(
        waited < REQUEST_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
    drop(idle);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let text = read_all(&mut s).await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && text.ends_with("stickylb_up 1\n"),
        "{text}"
    );
}

#[test]
fn local_errors_are_rendered() {
    let mut out = String::new();
    render_local_errors(
        &mut out,
        &LocalErrors {
            checks: 5,
            last_check_error: Some("Too many open files (os error 24)".into()),
            refused_metrics: 7,
            refused_control: 1,
        },
    );
    let series: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        series,
        [
            "stickylb_local_check_errors_total{} 5",
            "stickylb_refused_connections_total{listener=\"metrics\"} 7",
            "stickylb_refused_connections_total{listener=\"control\"} 1",
        ]
    );
}
