//! The UDP check: one datagram out, one back.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

use super::{Failure, io_failure};

/// Larger replies are cut here (a datagram cannot be read in parts), which
/// only matters if `expect` lies beyond: a health reply is small.
pub(super) const MAX_REPLY: usize = 4096;

/// Sends `payload` from a socket connected to `target` and waits for one
/// reply. Connected, so the kernel reports the backend's ICMP port
/// unreachable as ECONNREFUSED on the receive instead of the probe timing out.
pub(super) async fn exchange(
    target: SocketAddr,
    payload: &[u8],
    expect: Option<&[u8]>,
) -> Result<String, Failure> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).await.map_err(io_failure)?;
    socket.connect(target).await.map_err(io_failure)?;
    socket.send(payload).await.map_err(io_failure)?;
    let mut buf = vec![0u8; MAX_REPLY];
    let n = socket.recv(&mut buf).await.map_err(|e| {
        let refused = e.kind() == std::io::ErrorKind::ConnectionRefused;
        let mut f = io_failure(e);
        if refused {
            f.detail = "connection refused (ICMP port unreachable: nothing listens)".to_owned();
        }
        f
    })?;
    let reply = &buf[..n];
    match expect {
        Some(want) if !contains(reply, want) => Err(format!(
            "reply without {:?} ({n} bytes: {:?})",
            String::from_utf8_lossy(want),
            preview(reply)
        )
        .into()),
        _ => Ok(format!("reply ({n} bytes)")),
    }
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The start of a reply, printable, for the check's detail.
pub(super) fn preview(reply: &[u8]) -> String {
    const SHOWN: usize = 40;
    let mut s: String = String::from_utf8_lossy(&reply[..reply.len().min(SHOWN)])
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    if reply.len() > SHOWN {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Probe, probe_once};
    use super::*;

    fn probe(payload: &str, expect: Option<&str>) -> Probe {
        Probe::Udp {
            payload: payload.as_bytes().to_vec(),
            expect: expect.map(|e| e.as_bytes().to_vec()),
        }
    }

    /// A UDP server that answers every datagram with "pong " + datagram.
    async fn echo() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let mut reply = b"pong ".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_reply_passes_and_expect_is_searched_in_it() {
        let addr = echo().await;
        let t = Duration::from_secs(2);
        let o = probe_once(addr, &probe("ping", None), t).await;
        assert!(o.ok && !o.local, "{o:?}");
        assert_eq!(o.detail, "reply (9 bytes)");
        let o = probe_once(addr, &probe("ping", Some("ong pi")), t).await;
        assert!(o.ok, "{o:?}");
        let o = probe_once(addr, &probe("ping\n", Some("ready")), t).await;
        assert!(!o.ok && !o.local, "{o:?}");
        assert_eq!(
            o.detail,
            "reply without \"ready\" (10 bytes: \"pong ping.\")"
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_at_once() {
        // Bound and dropped: nothing listens there now.
        let addr = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let o = probe_once(addr, &probe("ping", None), Duration::from_secs(5)).await;
        assert!(!o.ok && !o.local, "{o:?}");
        assert!(o.detail.starts_with("connection refused"), "{o:?}");
        assert!(o.latency < Duration::from_secs(1), "not timed out: {o:?}");
    }

    #[tokio::test]
    async fn silence_times_out() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let o = probe_once(addr, &probe("ping", None), Duration::from_millis(100)).await;
        assert!(!o.ok && !o.local, "{o:?}");
        assert_eq!(o.detail, "timed out after 100ms");
        drop(socket);
    }
}
