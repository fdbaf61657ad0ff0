//! The transport end to end over loopback, with an in-memory table in place
//! of the `Lb` and a socket pair in place of the data path's ring buffer.

use std::{
    collections::{HashMap, VecDeque},
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_common::VipKey;
use tokio::{io::AsyncWriteExt as _, sync::mpsc};

use super::*;

const SECRET: [u8; 32] = [42; 32];

fn entry(i: u32, backend: u16, pinned_ms: u64) -> SyncEntry {
    SyncEntry {
        vip: VipKey::new(Ipv4Addr::new(192, 0, 2, 10), 80, lb_common::proto::TCP),
        client: Ipv4Addr::from(0x0a00_0000 + i),
        backend: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), backend),
        pinned_ms,
        idle_ms: 0,
    }
}

type Table = Arc<Mutex<HashMap<(VipKey, Ipv4Addr), SyncEntry>>>;

/// `Lb::apply_remote` for the fake: the real rule (`resolve`), every
/// backend alive but port 9999's, which this node does not know.
fn apply(table: &Table, entries: &[SyncEntry]) -> SyncApplied {
    use crate::lb::sync::{Pin, Resolution, resolve};
    let mut t = table.lock().unwrap();
    let mut out = SyncApplied::default();
    for e in entries {
        if e.backend.port() == 9999 {
            out.unknown_backend += 1;
            continue;
        }
        let pin = |e: &SyncEntry| Pin {
            backend: e.backend,
            pinned_ms: e.pinned_ms,
        };
        let mine = t.get(&(e.vip, e.client)).copied();
        match resolve(mine.as_ref().map(pin), pin(e), true) {
            Resolution::Insert => {
                out.inserted += 1;
                t.insert((e.vip, e.client), *e);
            }
            Resolution::Lower => {
                out.lowered += 1;
                t.insert((e.vip, e.client), *e);
            }
            Resolution::Refresh => out.refreshed += 1,
            Resolution::KeepLocal => out.kept_local.push(mine.expect("a local pin")),
            Resolution::DeadBackend => out.dead_backend += 1,
        }
    }
    out
}

struct FakeSnapshot(Table);

impl Snapshot for FakeSnapshot {
    fn walk(
        &self,
        max: usize,
        chunk: &mut dyn FnMut(Vec<SyncEntry>) -> bool,
    ) -> anyhow::Result<()> {
        let all: Vec<SyncEntry> = self.0.lock().unwrap().values().copied().collect();
        for c in all.chunks(max) {
            if !chunk(c.to_vec()) {
                break;
            }
        }
        Ok(())
    }
}

/// One node: its transport, its table, and the main loop that applies.
struct Node {
    cluster: Arc<Cluster>,
    table: Table,
    _main: tokio::task::JoinHandle<()>,
}

/// A port free now, for a node that binds it later. Not one the kernel
/// hands out (port 0, or the source port of a connection): between the
/// check and the bind, any test's connect could take an ephemeral port
/// (32768–60999 by default), and the node would find it in use. Each test
/// process walks its own part of 10000–31999, from its pid, so that
/// parallel tests and test runs do not try the same ports first.
fn free_port() -> SocketAddrV4 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(997) % COUNT,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
        let port = u16::try_from(FIRST + n).unwrap();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

fn settings(listen: SocketAddrV4, peers: &[SocketAddrV4], secret: [u8; 32]) -> Settings {
    Settings {
        listen,
        peers: peers.to_vec(),
        key: Key::new(secret.to_vec()).unwrap(),
        max_rate: 1_000_000,
        max_queue: 100_000,
        batch: 256,
        flush: Duration::from_millis(5),
        join_timeout: Duration::from_millis(500),
        keepalive: Duration::from_millis(50),
        dead_after: Duration::from_millis(400),
        ready_at_start: false,
    }
}

async fn node(s: Settings, table: Table) -> Node {
    node_with(s, table, |_| {}).await
}

/// A node whose daemon does not know its backends' health yet.
async fn node_not_pulling(s: Settings, table: Table) -> (Arc<Cluster>, Table) {
    let (tx, rx) = mpsc::channel(INBOUND_DEPTH);
    let cluster = Cluster::start(s, Arc::new(FakeSnapshot(table.clone())), tx)
        .await
        .unwrap();
    // Nothing is applied: the test looks only at the join.
    std::mem::forget(rx);
    (Arc::new(cluster), table)
}

async fn node_with(s: Settings, table: Table, before: impl FnOnce(&mut Cluster)) -> Node {
    let (tx, mut rx) = mpsc::channel(INBOUND_DEPTH);
    let mut cluster = Cluster::start(s, Arc::new(FakeSnapshot(table.clone())), tx)
        .await
        .unwrap();
    before(&mut cluster);
    cluster.allow_pull();
    let cluster = Arc::new(cluster);
    let (c, t) = (cluster.clone(), table.clone());
    let main = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            match m {
                Inbound::Entries {
                    peer,
                    sent_ms,
                    kind,
                    entries,
                } => {
                    let applied = apply(&t, &entries);
                    c.applied(peer, sent_ms, kind, &entries, &applied);
                }
                Inbound::SnapshotEnd { peer, total } => c.snapshot_applied(peer, total),
            }
        }
    });
    Node {
        cluster,
        table,
        _main: main,
    }
}

fn table_of(entries: impl IntoIterator<Item = SyncEntry>) -> Table {
    Arc::new(Mutex::new(
        entries
            .into_iter()
            .map(|e| ((e.vip, e.client), e))
            .collect(),
    ))
}

async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn get(t: &Table, e: &SyncEntry) -> Option<SyncEntry> {
    t.lock().unwrap().get(&(e.vip, e.client)).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_join_exchange_and_converge() {
    let (a_addr, b_addr) = (free_port(), free_port());
    // A holds 5000 pins and starts alone: B is not up within its timeout.
    let a = node(
        settings(a_addr, &[b_addr], SECRET),
        table_of((0..5000).map(|i| entry(i, 80, 1_000))),
    )
    .await;
    assert!(!a.cluster.ready(), "not ready before the join timeout");
    until("A ready alone", Duration::from_secs(5), || {
        a.cluster.ready()
    })
    .await;
    assert_eq!(a.cluster.status().joined_from, None);

    // B joins: it is ready only once it holds A's table.
    let b = node(settings(b_addr, &[a_addr], SECRET), table_of([])).await;
    until("B joined", Duration::from_secs(10), || b.cluster.ready()).await;
    assert_eq!(b.cluster.status().joined_from, Some(a_addr));
    assert_eq!(b.table.lock().unwrap().len(), 5000, "the whole table");
    assert_eq!(
        get(&b.table, &entry(17, 80, 1_000)),
        Some(entry(17, 80, 1_000))
    );

    // A's new pins reach B, batched.
    let fresh: Vec<SyncEntry> = (10_000..10_600).map(|i| entry(i, 81, 2_000)).collect();
    a.cluster.publish(&fresh);
    until("A's new pins on B", Duration::from_secs(5), || {
        fresh.iter().all(|e| get(&b.table, e).is_some())
    })
    .await;

    // Both nodes pinned client 20000 at once, differently: the earlier pin
    // (A's) wins on both, whichever way the entries cross.
    let mine = entry(20_000, 82, 5_000);
    let theirs = entry(20_000, 83, 6_000);
    a.table
        .lock()
        .unwrap()
        .insert((mine.vip, mine.client), mine);
    b.table
        .lock()
        .unwrap()
        .insert((theirs.vip, theirs.client), theirs);
    a.cluster.publish(&[mine]);
    b.cluster.publish(&[theirs]);
    until(
        "one backend for client 20000",
        Duration::from_secs(5),
        || {
            get(&a.table, &mine).map(|e| e.backend) == Some(mine.backend)
                && get(&b.table, &mine).map(|e| e.backend) == Some(mine.backend)
        },
    )
    .await;

    // An entry the receiver cannot apply is counted, not applied.
    a.cluster.publish(&[entry(30_000, 9999, 7_000)]);
    until("not applied counted", Duration::from_secs(5), || {
        b.cluster.status().peers[0].rejected == 1
    })
    .await;
    assert_eq!(get(&b.table, &entry(30_000, 9999, 7_000)), None);

    let sa = a.cluster.status();
    let sb = b.cluster.status();
    assert_eq!(sa.peers[0].state, PeerState::Up);
    assert_eq!(sb.peers[0].state, PeerState::Up);
    assert!(sa.peers[0].sent >= 602, "{:?}", sa.peers[0]);
    assert!(sb.peers[0].received >= 5000 + 602, "{:?}", sb.peers[0]);
    assert!(sb.peers[0].applied >= 5000 + 600, "{:?}", sb.peers[0]);
    assert!(sb.peers[0].lag_p99_ms.is_some(), "batches are timed");
    assert!(
        sb.peers[0].lag_count >= 600 && sb.peers[0].lag_count < 5000,
        "not the snapshot"
    );
    assert!(
        sa.rejected.is_empty() && sb.rejected.is_empty(),
        "{sa:?} {sb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_waits_until_the_daemon_allows_the_pull() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let a = node(
        settings(a_addr, &[b_addr], SECRET),
        table_of([entry(1, 80, 1)]),
    )
    .await;
    let (b, _) = node_not_pulling(settings(b_addr, &[a_addr], SECRET), table_of([])).await;
    until("B connected", Duration::from_secs(5), || {
        b.status().peers[0].state == PeerState::Up
    })
    .await;
    // Longer than the join timeout: it runs from the pull being allowed.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !b.ready(),
        "B must not join (or give up) before it may pull"
    );
    assert_eq!(b.status().peers[0].received, 0, "nothing pulled yet");
    b.allow_pull();
    until("B pulled", Duration::from_secs(5), || {
        b.status().peers[0].received == 1
    })
    .await;
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_key_is_rejected_and_nothing_it_sends_applies() {
    let (a_addr, c_addr) = (free_port(), free_port());
    let a = node(settings(a_addr, &[c_addr], SECRET), table_of([])).await;
    let c = node(
        settings(c_addr, &[a_addr], [7; 32]),
        table_of([entry(1, 80, 1)]),
    )
    .await;
    c.cluster.publish(&[entry(2, 80, 1)]);
    until("A rejects C's handshake", Duration::from_secs(5), || {
        a.cluster
            .status()
            .rejected
            .get("handshake")
            .copied()
            .unwrap_or(0)
            >= 1
    })
    .await;
    until("A gives up joining", Duration::from_secs(5), || {
        a.cluster.ready()
    })
    .await;
    assert_eq!(
        a.cluster.status().joined_from,
        None,
        "C's table was not taken"
    );
    assert!(a.table.lock().unwrap().is_empty());
    assert!(c.table.lock().unwrap().len() == 1);
    let sc = c.cluster.status();
    assert_ne!(sc.peers[0].state, PeerState::Up, "{sc:?}");
    assert!(
        sc.rejected.get("handshake").copied().unwrap_or(0) >= 1,
        "C refuses A's proof too: {sc:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_broken_connections_are_counted_by_reason() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let a = node(settings(a_addr, &[b_addr], SECRET), table_of([])).await;
    let rejected = |why: &str| a.cluster.status().rejected.get(why).copied().unwrap_or(0);

    // Not our protocol.
    let mut s = tokio::net::TcpStream::connect(a_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
        .await
        .unwrap();
    until("magic", Duration::from_secs(5), || rejected("magic") == 1).await;

    // A hello cut short.
    let mut s = tokio::net::TcpStream::connect(a_addr).await.unwrap();
    let hello = Hello::new(b_addr).unwrap().encode();
    s.write_all(&hello[..10]).await.unwrap();
    drop(s);
    until("truncated", Duration::from_secs(5), || {
        rejected("truncated") == 1
    })
    .await;

    // Another version.
    let mut s = tokio::net::TcpStream::connect(a_addr).await.unwrap();
    let mut old = hello;
    old[4] = wire::VERSION + 1;
    s.write_all(&old).await.unwrap();
    until("version", Duration::from_secs(5), || {
        rejected("version") == 1
    })
    .await;

    // The key, but not one of A's peers.
    let stranger = free_port();
    let _c = node(settings(stranger, &[a_addr], SECRET), table_of([])).await;
    until("unknown peer", Duration::from_secs(5), || {
        rejected("unknown_peer") >= 1
    })
    .await;

    // A peer whose frames are forged after an honest handshake: made by
    // hand, with the session's sealer of another key for the frames.
    let mut s = std::net::TcpStream::connect(a_addr).unwrap();
    let key = Key::new(SECRET.to_vec()).unwrap();
    let mine = Hello::new(b_addr).unwrap();
    s.write_all(&mine.encode()).unwrap();
    let mut theirs = [0; wire::HELLO_LEN];
    s.read_exact(&mut theirs).unwrap();
    let theirs = Hello::decode(&theirs).unwrap();
    let mut tag = [0; wire::MAC_LEN];
    s.read_exact(&mut tag).unwrap();
    wire::check_proof(&key, Role::Server, &mine, &theirs, &tag).unwrap();
    s.write_all(&wire::proof(&key, Role::Client, &mine, &theirs))
        .unwrap();
    let (mut good, _) = wire::session_keys(&key, &mine, &theirs);
    let other = Key::new(vec![9; 32]).unwrap();
    let (mut forger, _) = wire::session_keys(&other, &mine, &theirs);
    let batch = |i| Message::Batch {
        sent_ms: wall_ms(),
        entries: vec![entry(i, 80, 1)],
    };
    s.write_all(&good.seal(&batch(1))).unwrap();
    s.write_all(&forger.seal(&batch(2))).unwrap();
    until("frame_mac", Duration::from_secs(5), || {
        rejected("frame_mac") == 1
    })
    .await;
    assert!(
        get(&a.table, &entry(1, 80, 1)).is_some(),
        "the genuine frame"
    );
    assert!(
        get(&a.table, &entry(2, 80, 1)).is_none(),
        "not the forged one"
    );

    // A frame longer than the protocol allows drops the connection before
    // it is read.
    let mut s = std::net::TcpStream::connect(a_addr).unwrap();
    let mine = Hello::new(b_addr).unwrap();
    s.write_all(&mine.encode()).unwrap();
    let mut theirs = [0; wire::HELLO_LEN + wire::MAC_LEN];
    s.read_exact(&mut theirs).unwrap();
    let theirs = Hello::decode(theirs[..wire::HELLO_LEN].try_into().unwrap()).unwrap();
    s.write_all(&wire::proof(&key, Role::Client, &mine, &theirs))
        .unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    until("oversize", Duration::from_secs(5), || {
        rejected("oversize") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_queue_is_bounded_and_its_rate_limited() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let mut s = settings(a_addr, &[b_addr], SECRET);
    s.max_queue = 1000;
    s.max_rate = 2000;
    s.batch = 100;
    let a = node(s, table_of([])).await;
    // B is down: the queue keeps its newest 1000.
    let all: Vec<SyncEntry> = (0..1500).map(|i| entry(i, 80, 1)).collect();
    a.cluster.publish(&all);
    let st = a.cluster.status();
    assert_eq!((st.peers[0].queued, st.peers[0].dropped), (1000, 500));

    let b = node(settings(b_addr, &[a_addr], SECRET), table_of([])).await;
    until("B has entries", Duration::from_secs(5), || {
        !b.table.lock().unwrap().is_empty()
    })
    .await;
    let t0 = Instant::now();
    until("B has all 1000", Duration::from_secs(10), || {
        b.table.lock().unwrap().len() == 1000
    })
    .await;
    // 1000 entries at 2000/s, less one burst of 100 sent at once: ~0.45 s.
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "faster than the rate: {:?}",
        t0.elapsed()
    );
    assert!(
        get(&b.table, &all[499]).is_none(),
        "the oldest were dropped"
    );
    assert!(get(&b.table, &all[500]).is_some() && get(&b.table, &all[1499]).is_some());
}

/// A ring buffer stand-in: a queue, polled like the ring.
struct FakeEvents {
    events: Arc<Mutex<VecDeque<lb_common::SyncEvent>>>,
}

impl EventReader for FakeEvents {
    fn drain(&mut self, out: &mut Vec<lb_common::SyncEvent>, max: usize) -> usize {
        let mut q = self.events.lock().unwrap();
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        n
    }
}

/// Backend id → port 80 + id; id 0 is not in the books.
struct FakeIds;

impl Translate for FakeIds {
    fn event(&self, ev: &lb_common::SyncEvent, _now_ns: u64) -> Option<SyncEntry> {
        (ev.backend_id != 0).then(|| {
            entry(
                u32::from_be_bytes(ev.key.client) - 0x0a00_0000,
                80 + ev.backend_id as u16,
                ev.created_ns,
            )
        })
    }
}

#[test]
fn the_ring_is_drained_within_half_the_flush_interval_and_at_most_10_ms_apart() {
    let ms = Duration::from_millis;
    assert_eq!(drain_interval(ms(20)), ms(10), "the default flush");
    assert_eq!(drain_interval(ms(8)), ms(4));
    assert_eq!(drain_interval(ms(1)), ms(1));
    assert_eq!(drain_interval(Duration::from_secs(1)), ms(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_path_events_reach_the_peers() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let events = Arc::new(Mutex::new(VecDeque::new()));
    let reader = FakeEvents {
        events: events.clone(),
    };
    let (_ids_tx, ids_rx) = watch::channel(FakeIds);
    let a = node_with(settings(a_addr, &[b_addr], SECRET), table_of([]), |c| {
        c.spawn_events(reader, ids_rx);
    })
    .await;
    let b = node(settings(b_addr, &[a_addr], SECRET), table_of([])).await;
    let ev = |client: u32, backend_id: u32| lb_common::SyncEvent {
        key: lb_common::AffinityKey {
            vip_id: 1,
            client: (0x0a00_0000 + client).to_be_bytes(),
        },
        backend_id,
        kind: lb_common::sync_kind::NEW,
        created_ns: 77,
        last_seen_ns: 77,
    };
    // More than one burst, and one the books do not know.
    events.lock().unwrap().extend(
        (1..=EVENT_BURST as u32 + 10)
            .map(|i| ev(i, 1))
            .chain([ev(0, 0)]),
    );
    until("every event on B", Duration::from_secs(10), || {
        b.table.lock().unwrap().len() == EVENT_BURST + 10
    })
    .await;
    // The entry as the event made it; its idle time is the time it spent
    // queued on A (the sender adds it), which a loaded machine makes
    // nonzero, bounded by the wait above.
    let got = get(&b.table, &entry(5, 81, 77)).expect("client 5 on B");
    assert_eq!(SyncEntry { idle_ms: 0, ..got }, entry(5, 81, 77));
    assert!(got.idle_ms < 10_000, "{got:?}");
    assert_eq!(a.cluster.status().untranslated, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_stay_up_and_a_silent_peer_is_dropped() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let a = node(settings(a_addr, &[b_addr], SECRET), table_of([])).await;
    let b = node(settings(b_addr, &[a_addr], SECRET), table_of([])).await;
    until("both up", Duration::from_secs(5), || {
        a.cluster.status().peers[0].state == PeerState::Up
            && b.cluster.status().peers[0].state == PeerState::Up
    })
    .await;
    let since = a.cluster.status().peers[0].since_s;
    // Longer than dead_after with nothing to send: keepalives hold it up.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let st = a.cluster.status().peers[0].clone();
    assert_eq!(st.state, PeerState::Up, "{st:?}");
    assert!(st.since_s > since, "not reconnected meanwhile: {st:?}");
    assert_eq!((st.sent, st.received), (0, 0), "keepalives are not entries");
    drop(b);

    // A peer that proves itself and then says nothing (a frozen host) is
    // dropped after dead_after: the server's side of it closes.
    let key = Key::new(SECRET.to_vec()).unwrap();
    let mut s = std::net::TcpStream::connect(a_addr).unwrap();
    let mine = Hello::new(b_addr).unwrap();
    s.write_all(&mine.encode()).unwrap();
    let mut theirs = [0; wire::HELLO_LEN + wire::MAC_LEN];
    s.read_exact(&mut theirs).unwrap();
    let theirs = Hello::decode(theirs[..wire::HELLO_LEN].try_into().unwrap()).unwrap();
    s.write_all(&wire::proof(&key, Role::Client, &mine, &theirs))
        .unwrap();
    let t0 = Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0; 4096];
        // Keepalives come, then the end.
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap();
    assert!(closed, "a silent peer was kept");
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t0.elapsed()
    );
}

/// A node as `node`, whose daemon ready itself at the start (its table was
/// adopted).
fn adopted(mut s: Settings) -> Settings {
    s.ready_at_start = true;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_node_is_ready_at_once_and_catches_up_in_the_background() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let a = node(
        settings(a_addr, &[b_addr], SECRET),
        table_of((0..100).map(|i| entry(i, 80, 1_000))),
    )
    .await;
    until("A ready alone", Duration::from_secs(5), || {
        a.cluster.ready()
    })
    .await;
    // B restarted with its table: ready before any peer answered, so that
    // its routes never go; A's table still arrives.
    let b = node(
        adopted(settings(b_addr, &[a_addr], SECRET)),
        table_of([entry(500, 81, 1_000)]),
    )
    .await;
    assert!(b.cluster.ready(), "an adopted node waits for nothing");
    until("B caught up", Duration::from_secs(5), || {
        b.cluster.status().joined_from == Some(a_addr)
    })
    .await;
    assert_eq!(b.table.lock().unwrap().len(), 101);
    assert!(b.cluster.ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_node_catches_up_again_on_demand() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let a = node(
        adopted(settings(a_addr, &[b_addr], SECRET)),
        table_of((0..10).map(|i| entry(i, 80, 1_000))),
    )
    .await;
    let b = node(settings(b_addr, &[a_addr], SECRET), table_of([])).await;
    until("B joined", Duration::from_secs(5), || {
        b.cluster.status().joined_from == Some(a_addr)
    })
    .await;
    assert_eq!(b.table.lock().unwrap().len(), 10);
    // A learns pins B never hears of as they are made (as when B thought
    // their backends dead and refused them): only a new pull brings them.
    a.table.lock().unwrap().extend(
        (10..25)
            .map(|i| entry(i, 80, 1_000))
            .map(|e| ((e.vip, e.client), e)),
    );
    b.cluster.catch_up();
    assert!(b.cluster.ready(), "catching up never stops serving");
    until("B caught up", Duration::from_secs(5), || {
        b.table.lock().unwrap().len() == 25
    })
    .await;
    until("the pull is over", Duration::from_secs(5), || {
        lock(&b.cluster.shared.join).pulled
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_joined_refuses_its_table_and_the_joiner_asks_another() {
    let (c_addr, c2_addr, n_addr, r_addr) = (free_port(), free_port(), free_port(), free_port());
    // N has not joined (its daemon does not let it pull yet): its partial
    // table must not become C's.
    let (n, _) = node_not_pulling(
        settings(n_addr, &[c_addr, c2_addr], SECRET),
        table_of((0..5).map(|i| entry(i, 80, 1))),
    )
    .await;
    // With N its only peer, C refuses N's table and ends up ready alone,
    // as the first node of a cluster.
    let c = node(settings(c_addr, &[n_addr], SECRET), table_of([])).await;
    until("C ready alone", Duration::from_secs(5), || {
        c.cluster.ready()
    })
    .await;
    assert_eq!(c.cluster.status().joined_from, None);
    assert!(c.table.lock().unwrap().is_empty(), "N's table was taken");
    drop(c);

    // With N and a ready R, C joins with R's table whichever it asked first.
    let r = node(
        adopted(settings(r_addr, &[c2_addr], SECRET)),
        table_of((100..150).map(|i| entry(i, 81, 1))),
    )
    .await;
    let c = node(settings(c2_addr, &[n_addr, r_addr], SECRET), table_of([])).await;
    until("C joined", Duration::from_secs(5), || {
        c.cluster.status().joined_from.is_some()
    })
    .await;
    assert_eq!(c.cluster.status().joined_from, Some(r_addr));
    assert_eq!(c.table.lock().unwrap().len(), 50);
    assert!(!n.ready());
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_add_up_does_not_complete_the_join() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let a = node(
        adopted(settings(a_addr, &[b_addr], SECRET)),
        table_of((0..300).map(|i| entry(i, 80, 1))),
    )
    .await;
    // B's main loop fails to apply the first part of the first table it
    // gets (a map error): that table is not a join; it pulls again.
    let (tx, mut rx) = mpsc::channel(INBOUND_DEPTH);
    let table = table_of([]);
    let cluster = Cluster::start(
        settings(b_addr, &[a_addr], SECRET),
        Arc::new(FakeSnapshot(table.clone())),
        tx,
    )
    .await
    .unwrap();
    cluster.allow_pull();
    let b = Arc::new(cluster);
    let (c, t) = (b.clone(), table.clone());
    let _main = tokio::spawn(async move {
        let mut failed = false;
        while let Some(m) = rx.recv().await {
            match m {
                Inbound::Entries {
                    peer,
                    sent_ms,
                    kind,
                    entries,
                } => {
                    if kind == EntriesKind::Snapshot && !failed {
                        failed = true;
                        continue;
                    }
                    let applied = apply(&t, &entries);
                    c.applied(peer, sent_ms, kind, &entries, &applied);
                }
                Inbound::SnapshotEnd { peer, total } => c.snapshot_applied(peer, total),
            }
        }
    });
    until("B joined", Duration::from_secs(5), || b.ready()).await;
    let st = b.status();
    assert_eq!(st.joined_from, Some(a_addr));
    assert_eq!(st.peers[0].received, 600, "the table twice: {st:?}");
    assert_eq!(table.lock().unwrap().len(), 300);
    drop(a);
}

/// A connection to `to` from `from_ip`, held open.
async fn connect_from(from_ip: Ipv4Addr, to: SocketAddrV4) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddrV4::new(from_ip, 0).into()).unwrap();
    s.connect(to.into()).await.unwrap()
}

/// How long until `s` is closed by the other side (None: not within 3 s).
async fn closed_after(mut s: tokio::net::TcpStream) -> Option<Duration> {
    use tokio::io::AsyncReadExt as _;
    let t0 = Instant::now();
    let mut buf = [0; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_hold_the_handshake_slots() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let a = node(settings(a_addr, &[b_addr], SECRET), table_of([])).await;
    let rejected = |why: &str| a.cluster.status().rejected.get(why).copied().unwrap_or(0);
    // More connections from an address no peer has than there are slots:
    // each is closed at once, before a hello.
    let stranger = Ipv4Addr::new(127, 0, 0, 3);
    let mut held = Vec::new();
    for _ in 0..(MAX_HANDSHAKES + 16) {
        held.push(connect_from(stranger, a_addr).await);
    }
    for s in held {
        let after = closed_after(s).await;
        assert!(
            after.is_some_and(|d| d < Duration::from_millis(500)),
            "a stranger's connection held: {after:?}"
        );
    }
    assert_eq!(rejected("unknown_address"), MAX_HANDSHAKES as u64 + 16);
    assert_eq!(
        a.cluster.status().from_unknown_address,
        MAX_HANDSHAKES as u64 + 16
    );

    // From a peer's address, silent: a few may wait in their handshake,
    // for the handshake timeout; the rest are closed at once.
    let peer_ip = *b_addr.ip();
    let mut held = Vec::new();
    for _ in 0..(MAX_HANDSHAKES_PER_SOURCE + 6) {
        held.push(connect_from(peer_ip, a_addr).await);
    }
    // All read at once, timed from one start.
    let waits: Vec<_> = held
        .into_iter()
        .map(|s| tokio::spawn(closed_after(s)))
        .collect();
    let mut times = Vec::new();
    for w in waits {
        times.push(w.await.unwrap().expect("closed within 3 s"));
    }
    times.sort();
    let quick = times
        .iter()
        .filter(|d| **d < Duration::from_millis(500))
        .count();
    assert_eq!(quick, 6, "{times:?}");
    assert!(
        times[6..].iter().all(|d| *d < Duration::from_millis(1500)),
        "{times:?}"
    );
    until("too many counted", Duration::from_secs(2), || {
        rejected("too_many_handshakes") == 6
    })
    .await;

    // The real peer gets in.
    let b = node(settings(b_addr, &[a_addr], SECRET), table_of([])).await;
    until("A and B up", Duration::from_secs(5), || {
        a.cluster.status().peers[0].state == PeerState::Up
            && b.cluster.status().peers[0].state == PeerState::Up
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_are_counted_and_not_timed() {
    let (a_addr, b_addr) = (free_port(), free_port());
    let early = entry(1, 82, 5_000);
    let a = node(adopted(settings(a_addr, &[b_addr], SECRET)), table_of([])).await;
    let b = node(
        adopted(settings(b_addr, &[a_addr], SECRET)),
        table_of([early]),
    )
    .await;
    until("both caught up", Duration::from_secs(5), || {
        a.cluster.status().joined_from.is_some() && b.cluster.status().joined_from.is_some()
    })
    .await;
    // The two pulls race: when A has applied B's table before it walks its
    // own for B, B gets `early` back in it (a refresh). So what follows is
    // counted from here.
    let (a0, b0) = (
        a.cluster.status().peers[0].clone(),
        b.cluster.status().peers[0].clone(),
    );
    assert_eq!((a0.rejected, b0.rejected), (0, 0), "{a0:?} {b0:?}");
    // A re-picked client 1 later: B answers with its earlier pin.
    let late = entry(1, 83, 9_000);
    a.table
        .lock()
        .unwrap()
        .insert((late.vip, late.client), late);
    a.cluster.publish(&[late]);
    // The pin lands in A's table before A's main loop counts it: wait for
    // the count.
    until("A corrected", Duration::from_secs(5), || {
        a.cluster.status().peers[0].applied > a0.applied
    })
    .await;
    assert_eq!(get(&a.table, &late), Some(early));
    let (sa, sb) = (a.cluster.status(), b.cluster.status());
    let (pa, pb) = (&sa.peers[0], &sb.peers[0]);
    // Received, applied, rejected, corrections sent since the join.
    let since = |now: &PeerStatus, then: &PeerStatus| {
        (
            now.received - then.received,
            now.applied - then.applied,
            now.rejected - then.rejected,
            now.corrections_sent - then.corrections_sent,
        )
    };
    // B kept its pin and sent it back...
    assert_eq!(since(pb, &b0), (1, 0, 1, 1), "{pb:?}");
    // ...which A took, with nothing sent back again.
    assert_eq!(since(pa, &a0), (1, 1, 0, 0), "{pa:?}");
    // Every entry received is either applied or not.
    assert_eq!(pb.received, pb.applied + pb.rejected, "{pb:?}");
    assert_eq!(pa.received, pa.applied + pa.rejected, "{pa:?}");
    // A's lag is of B's batches only: B sent a snapshot and a correction.
    assert_eq!(pa.lag_count, 0, "{pa:?}");
    // B's is of A's batch, not of A's snapshot.
    assert_eq!(pb.lag_count, 1, "{pb:?}");
}
