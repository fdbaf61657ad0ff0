//! The affinity sync between stickylb nodes: the transport. Every new or
//! changed pin of this node goes, batched and rate-bounded, to every
//! configured peer over an authenticated TCP channel (`wire`); what peers
//! send comes back to the daemon's main loop (`Inbound`), which applies it
//! to the `Lb` and hands corrections back. A node with peers and a new
//! table pulls one peer's whole table (a snapshot) before it is ready to
//! announce; one that adopted its table (a restart) is ready at once and
//! pulls in the background to catch up. Only a ready node serves its table:
//! a joiner refused by one peer asks the next.
//!
//! Entries are not forwarded on: every node must list every other node as
//! a peer (a full mesh).
//!
//! The module knows nothing of the `Lb` or the data path: the table walk
//! and the data path's events come in through the `Snapshot`,
//! `EventReader` and `Translate` traits, so that all of it runs in tests
//! with fakes, over loopback.

pub mod limits;
pub mod wire;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    net::{SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use log::{info, warn};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinHandle,
};

use self::{
    limits::{Queue, TokenBucket},
    wire::{HELLO_LEN, Hello, Key, MAC_LEN, Message, Opener, Reject, Role, Sealer},
};
use crate::{
    api::{PeerState, PeerStatus, SyncStatus},
    config::SyncConfig,
    lb::sync::{Identities, SyncApplied, SyncEntry},
    util::Every,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection that has not proven itself by then is dropped: an
/// unauthenticated client must not hold a handshake slot for long (a peer
/// answers in a round trip or two).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Connections still in their handshake, at most; more are closed at once.
const MAX_HANDSHAKES: usize = 64;
/// Of those, from one address at most: a peer has one or two at a time, so
/// one address cannot take the slots the other peers need.
const MAX_HANDSHAKES_PER_SOURCE: usize = 4;
/// A peer that refused this node its table is not asked again for this
/// long (it has not joined yet either).
const REFUSED_RETRY: Duration = Duration::from_millis(500);
/// Lag samples kept per peer for its percentiles.
pub const LAG_SAMPLES: usize = 1024;
/// Events drained from the data path at a time, before others get a turn.
const EVENT_BURST: usize = 4096;
/// Received entries waiting for the main loop, in batches: a full channel
/// stops reading from the peers (TCP pushes back) instead of growing.
pub const INBOUND_DEPTH: usize = 64;
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);
/// A connection with nothing to send sends an empty batch this often...
pub const KEEPALIVE: Duration = Duration::from_secs(2);
/// ...so that one with nothing received for this long has lost its peer (a
/// cut link or a frozen host close nothing).
pub const DEAD_AFTER: Duration = Duration::from_secs(10);

/// What the transport runs with: `[sync]` and its key.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddrV4,
    pub peers: Vec<SocketAddrV4>,
    pub key: Key,
    pub max_rate: u32,
    pub max_queue: usize,
    pub batch: usize,
    pub flush: Duration,
    pub join_timeout: Duration,
    /// `KEEPALIVE` and `DEAD_AFTER` (shorter in tests).
    pub keepalive: Duration,
    pub dead_after: Duration,
    /// This node's table survived its restart (the data path was adopted):
    /// it is ready at once, and pulls a peer's table only to catch up.
    pub ready_at_start: bool,
}

impl Settings {
    pub fn new(c: &SyncConfig, key: Key) -> Self {
        Self {
            listen: c.listen,
            peers: c.peers.clone(),
            key,
            max_rate: c.max_rate,
            max_queue: c.max_queue as usize,
            batch: (c.batch as usize).clamp(1, wire::MAX_ENTRIES_PER_FRAME),
            flush: c.flush_interval,
            join_timeout: c.join_timeout,
            keepalive: KEEPALIVE,
            dead_after: DEAD_AFTER,
            ready_at_start: false,
        }
    }
}

/// What the transport hands the main loop. `peer`: an index into
/// `Settings::peers`.
#[derive(Debug)]
pub enum Inbound {
    /// Entries to apply (`Lb::apply_remote`), then report with
    /// `Cluster::applied`.
    Entries {
        peer: usize,
        /// The sender's wall clock when it sent them (ms since the epoch).
        sent_ms: u64,
        kind: EntriesKind,
        entries: Vec<SyncEntry>,
    },
    /// The snapshot from `peer` is complete: every chunk of it came before.
    /// Tell the transport with `Cluster::snapshot_applied` once applied.
    SnapshotEnd { peer: usize, total: u64 },
}

/// What received entries are; only batches are timed for the lag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntriesKind {
    /// The peer's new or changed pins, sent as its data path made them.
    Batch,
    /// The peer's pins that won over pins this node sent it: they answer
    /// this node's entries, and say nothing of the lag.
    Correction,
    /// Part of a snapshot this node asked for: it carries long-idle
    /// clients too.
    Snapshot,
}

/// The whole table, walked on a blocking thread for a peer that joins.
pub trait Snapshot: Send + Sync + 'static {
    /// Hands the table to `chunk` in pieces of at most `max` entries, until
    /// it returns false (the peer went away).
    fn walk(&self, max: usize, chunk: &mut dyn FnMut(Vec<SyncEntry>) -> bool)
    -> anyhow::Result<()>;
}

/// The data path's event ring, as the events task reads it. The data path
/// wakes no reader (see `drain_interval`), so the task polls it.
pub trait EventReader: Send + 'static {
    fn drain(&mut self, out: &mut Vec<lb_common::SyncEvent>, max: usize) -> usize;
}

impl EventReader for crate::dataplane::SyncEvents {
    fn drain(&mut self, out: &mut Vec<lb_common::SyncEvent>, max: usize) -> usize {
        crate::dataplane::SyncEvents::drain(self, out, max)
    }
}

/// How often the events task drains the data path's ring: half the flush
/// interval, within 1..=10 ms (10 ms with the default 20 ms flush).
///
/// The XDP program commits its events with `BPF_RB_NO_WAKEUP`: a wake-up
/// costs the packet's CPU an irq_work whenever the ring goes from empty to
/// not empty, which is nearly every new client for a reader that keeps up
/// (measured: ~7 µs against ~40 ns for the event itself). So the ring is
/// polled instead of waited on. An event then waits in the ring at most one
/// interval before it is queued, where its batch may wait `flush_interval`
/// anyway: the drain adds at most half of the lag the operator already
/// accepted for batching, and nothing while a batch fills faster than that.
/// A poll that finds the ring empty is two loads from its mapped pages.
/// The ring (`SYNC_RING_BYTES`, 40 bytes a record) holds ~52k events, so
/// between two drains 10 ms apart it absorbs more than 5M new pins a
/// second; beyond that the data path counts what it could not write.
pub fn drain_interval(flush: Duration) -> Duration {
    (flush / 2).clamp(Duration::from_millis(1), Duration::from_millis(10))
}

/// Ids → identities for the data path's events.
pub trait Translate: Send + Sync + 'static {
    fn event(&self, ev: &lb_common::SyncEvent, now_ns: u64) -> Option<SyncEntry>;
}

impl Translate for Identities {
    fn event(&self, ev: &lb_common::SyncEvent, now_ns: u64) -> Option<SyncEntry> {
        Identities::event(self, ev, now_ns)
    }
}

/// Ms since the Unix epoch: the clock of `pinned_ms` and of the lag.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is a few assignments: a panic cannot
    // leave them half-done in a way that matters.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Peer {
    addr: SocketAddrV4,
    queue: Mutex<Queue>,
    /// This node's pins to send back to it (sent before the queue).
    corrections: Mutex<Queue>,
    wake: Notify,
    stats: Mutex<PeerStats>,
}

struct PeerStats {
    state: PeerState,
    since: Instant,
    sent: u64,
    corrections_sent: u64,
    received: u64,
    applied: u64,
    rejected: u64,
    last_error: Option<String>,
    lags: VecDeque<u64>,
    lag_count: u64,
    lag_sum_ms: u64,
}

#[derive(Default)]
struct Join {
    /// This node may announce: it has its cluster's table.
    ready: bool,
    /// The pull is over: a peer's table applied, or none in sight within
    /// the join timeout.
    pulled: bool,
    joined_from: Option<usize>,
    /// The peer whose table is being pulled, and when it last sent a part.
    pulling: Option<(usize, Instant)>,
    /// Entries of that table applied or counted so far.
    pull_entries: u64,
    /// Peers that refused their table (not joined yet), and when.
    refused: BTreeMap<usize, Instant>,
    /// The daemon knows its backends' health (no VIP warming up): a table
    /// pulled before would find every backend dead and apply nothing.
    pull_allowed: bool,
}

struct Shared {
    listen: SocketAddrV4,
    key: Key,
    max_rate: u32,
    batch: usize,
    flush: Duration,
    join_timeout: Duration,
    keepalive: Duration,
    dead_after: Duration,
    peers: Vec<Peer>,
    join: Mutex<Join>,
    rejected: Mutex<BTreeMap<Reject, u64>>,
    reject_log: Mutex<(Every, u64)>,
    untranslated: AtomicU64,
    from_unknown_address: AtomicU64,
    inbound: mpsc::Sender<Inbound>,
    snapshot: Arc<dyn Snapshot>,
    handshakes: Arc<Semaphore>,
    /// Connections in their handshake, by source address.
    handshaking: Mutex<BTreeMap<std::net::IpAddr, usize>>,
    /// Wakes the join timer once pulling is allowed.
    pull_gate: Notify,
}

/// The running transport; its tasks end when it is dropped.
pub struct Cluster {
    shared: Arc<Shared>,
    local: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    /// Binds `listen` and starts connecting to every peer; received
    /// entries go to `inbound`, snapshots for peers come from `snapshot`.
    pub async fn start(
        s: Settings,
        snapshot: Arc<dyn Snapshot>,
        inbound: mpsc::Sender<Inbound>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(s.listen).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen for sync peers on {}: {e}", s.listen),
            )
        })?;
        let local = listener.local_addr()?;
        let now = Instant::now();
        let peers = s
            .peers
            .iter()
            .map(|&addr| Peer {
                addr,
                queue: Mutex::new(Queue::new(s.max_queue)),
                corrections: Mutex::new(Queue::new(s.max_queue)),
                wake: Notify::new(),
                stats: Mutex::new(PeerStats {
                    state: PeerState::Connecting,
                    since: now,
                    sent: 0,
                    corrections_sent: 0,
                    received: 0,
                    applied: 0,
                    rejected: 0,
                    last_error: None,
                    lags: VecDeque::new(),
                    lag_count: 0,
                    lag_sum_ms: 0,
                }),
            })
            .collect::<Vec<_>>();
        let alone = peers.is_empty();
        let shared = Arc::new(Shared {
            listen: s.listen,
            key: s.key,
            max_rate: s.max_rate,
            batch: s.batch,
            flush: s.flush,
            join_timeout: s.join_timeout,
            keepalive: s.keepalive,
            dead_after: s.dead_after,
            peers,
            join: Mutex::new(Join {
                ready: alone || s.ready_at_start,
                pulled: alone,
                ..Join::default()
            }),
            rejected: Mutex::default(),
            reject_log: Mutex::new((Every::new(REJECT_LOG_EVERY), 0)),
            untranslated: AtomicU64::new(0),
            from_unknown_address: AtomicU64::new(0),
            inbound,
            snapshot,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            handshaking: Mutex::default(),
            pull_gate: Notify::new(),
        });
        let mut tasks = vec![tokio::spawn(accept(shared.clone(), listener))];
        for i in 0..shared.peers.len() {
            tasks.push(tokio::spawn(outgoing(shared.clone(), i)));
        }
        if !alone {
            tasks.push(tokio::spawn(join_deadline(shared.clone())));
        }
        info!(
            "sync: listening on {local}, peers {}",
            if alone {
                "none (a cluster of one)".to_owned()
            } else {
                s.peers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        Ok(Self {
            shared,
            local,
            tasks,
        })
    }

    /// The address it listens on (the bound port when `listen` said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether this node has its cluster's table: adopted at the start,
    /// pulled from a peer, or no peer answered within the join timeout, or
    /// it has no peers.
    pub fn ready(&self) -> bool {
        lock(&self.shared.join).ready
    }

    /// Lets the join begin: call once this node knows its backends' health
    /// (a pulled entry whose backend is not alive here is not applied). The
    /// join timeout runs from here.
    pub fn allow_pull(&self) {
        let mut j = lock(&self.shared.join);
        if !j.pull_allowed {
            j.pull_allowed = true;
            self.shared.pull_gate.notify_one();
        }
    }

    /// Pulls a peer's table again, in the background: this node stays ready
    /// and keeps serving. For a node whose own view of a VIP was wrong for a
    /// while (every backend down here only): the pins it made then lose to
    /// the peers' earlier ones, but it hears of those only from a pull (the
    /// corrections it got meanwhile named backends it thought dead). Nothing
    /// when a pull is already due or under way; a pull from no peer ends
    /// after the join timeout, as at the start.
    pub fn catch_up(&self) {
        {
            let mut j = lock(&self.shared.join);
            if !j.ready || !j.pulled || self.shared.peers.is_empty() {
                return;
            }
            j.pulled = false;
            j.pulling = None;
            j.pull_allowed = true;
            j.refused.clear();
        }
        info!("sync: pulling a peer's table again to catch up");
        self.shared.pull_gate.notify_one();
        // Not kept with the others: it ends by itself within two join
        // timeouts, also when the transport is gone.
        tokio::spawn(join_deadline(self.shared.clone()));
    }

    /// Whether no pull is due or under way (the join, or a catch-up).
    pub fn caught_up(&self) -> bool {
        let j = lock(&self.shared.join);
        j.ready && j.pulled
    }

    /// Queues this node's own new or changed pins for every peer.
    pub fn publish(&self, entries: &[SyncEntry]) {
        self.shared.publish(entries);
    }

    /// What applying `entries` from `peer` did (`Lb::apply_remote`): counted,
    /// and the pins of this node that won are sent back to it.
    ///
    /// Entries whose apply failed are not reported: a snapshot with any of
    /// those does not add up to its total, and does not complete the join.
    pub fn applied(
        &self,
        peer: usize,
        sent_ms: u64,
        kind: EntriesKind,
        entries: &[SyncEntry],
        applied: &SyncApplied,
    ) {
        let Some(p) = self.shared.peers.get(peer) else {
            return;
        };
        if kind == EntriesKind::Snapshot {
            let mut j = lock(&self.shared.join);
            if j.pulling.is_some_and(|(p, _)| p == peer) {
                j.pull_entries += entries.len() as u64;
            }
        }
        let now = wall_ms();
        {
            let mut st = lock(&p.stats);
            st.applied += applied.applied();
            st.rejected += applied.not_applied();
            if kind == EntriesKind::Batch {
                for e in entries {
                    let lag = wire::lag_ms(now, sent_ms, e);
                    if st.lags.len() == LAG_SAMPLES {
                        st.lags.pop_front();
                    }
                    st.lags.push_back(lag);
                    st.lag_count += 1;
                    st.lag_sum_ms = st.lag_sum_ms.saturating_add(lag);
                }
            }
        }
        if !applied.kept_local.is_empty() {
            self.shared.correct(peer, &applied.kept_local);
        }
    }

    /// The snapshot `peer` sent has been applied: this node has joined, if
    /// every one of its `total` entries was applied or counted.
    pub fn snapshot_applied(&self, peer: usize, total: u64) {
        let mut j = lock(&self.shared.join);
        if j.pulling.is_none_or(|(p, _)| p != peer) {
            return;
        }
        j.pulling = None;
        let addr = self.shared.peers[peer].addr;
        if j.pull_entries != total {
            warn!(
                "sync: the table of {addr} came incomplete ({} of {total} entries applied); \
                 pulling again",
                j.pull_entries
            );
            return;
        }
        j.pulled = true;
        j.joined_from = Some(peer);
        if j.ready {
            info!("sync: caught up with the table of {addr} ({total} entries)");
        } else {
            j.ready = true;
            info!("sync: joined the cluster with the table of {addr} ({total} entries)");
        }
    }

    /// Starts the task that moves the data path's events to every peer,
    /// translated by the latest `ids`.
    pub fn spawn_events<R: EventReader, T: Translate>(
        &mut self,
        reader: R,
        ids: watch::Receiver<T>,
    ) {
        let every = drain_interval(self.shared.flush);
        self.tasks.push(tokio::spawn(events(
            self.shared.clone(),
            reader,
            ids,
            every,
        )));
    }

    pub fn status(&self) -> SyncStatus {
        let sh = &self.shared;
        let j = lock(&sh.join);
        SyncStatus {
            listen: sh.listen,
            ready: j.ready,
            joined_from: j.joined_from.map(|i| sh.peers[i].addr),
            rejected: lock(&sh.rejected)
                .iter()
                .map(|(r, n)| (r.name().to_owned(), *n))
                .collect(),
            untranslated: sh.untranslated.load(Ordering::Relaxed),
            from_unknown_address: sh.from_unknown_address.load(Ordering::Relaxed),
            peers: sh
                .peers
                .iter()
                .map(|p| {
                    let q = lock(&p.queue);
                    let st = lock(&p.stats);
                    let mut lags: Vec<u64> = st.lags.iter().copied().collect();
                    lags.sort_unstable();
                    PeerStatus {
                        address: p.addr,
                        state: st.state,
                        since_s: st.since.elapsed().as_secs(),
                        sent: st.sent,
                        corrections_sent: st.corrections_sent,
                        received: st.received,
                        applied: st.applied,
                        rejected: st.rejected,
                        dropped: q.dropped,
                        queued: q.len() as u64,
                        last_error: st.last_error.clone(),
                        lag_p50_ms: percentile(&lags, 50),
                        lag_p99_ms: percentile(&lags, 99),
                        lag_count: st.lag_count,
                        lag_sum_ms: st.lag_sum_ms,
                    }
                })
                .collect(),
        }
    }
}

/// The `pct`th percentile of sorted `v` (nearest rank).
fn percentile(v: &[u64], pct: usize) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let rank = (v.len() * pct).div_ceil(100).max(1);
    Some(v[rank - 1])
}

impl Shared {
    fn publish(&self, entries: &[SyncEntry]) {
        for i in 0..self.peers.len() {
            self.queue_for(i, entries);
        }
    }

    fn queue_for(&self, peer: usize, entries: &[SyncEntry]) {
        self.push(peer, &self.peers[peer].queue, entries);
    }

    /// Queues this node's winning pins to go back to `peer`.
    fn correct(&self, peer: usize, entries: &[SyncEntry]) {
        self.push(peer, &self.peers[peer].corrections, entries);
    }

    fn push(&self, peer: usize, queue: &Mutex<Queue>, entries: &[SyncEntry]) {
        let now = Instant::now();
        {
            let mut q = lock(queue);
            for e in entries {
                q.push(*e, now);
            }
        }
        self.peers[peer].wake.notify_one();
    }

    fn set_state(&self, peer: usize, state: PeerState, error: Option<String>) {
        let mut st = lock(&self.peers[peer].stats);
        if st.state != state {
            st.state = state;
            st.since = Instant::now();
        }
        if error.is_some() {
            st.last_error = error;
        }
    }

    /// Counts a dropped connection's reason, and says so in the log, at
    /// most every `REJECT_LOG_EVERY`.
    fn reject(&self, why: Reject, from: SocketAddr) {
        *lock(&self.rejected).entry(why).or_default() += 1;
        let mut log = lock(&self.reject_log);
        log.1 += 1;
        if log.0.due() {
            warn!(
                "sync: dropped a connection with {from}: {} ({} connections dropped since the \
                 last message; see `stickylb status`). Nothing it sent was applied; if it is \
                 a peer, check that it runs this version with the same key file",
                describe(why),
                log.1
            );
            log.1 = 0;
        }
    }

    /// Whether this connection to `peer` is to ask for its table now.
    fn claim_pull(&self, peer: usize) -> bool {
        let mut j = lock(&self.join);
        if j.pulled || !j.pull_allowed || j.pulling.is_some() {
            return false;
        }
        if j.refused
            .get(&peer)
            .is_some_and(|at| at.elapsed() < REFUSED_RETRY)
        {
            return false;
        }
        j.pulling = Some((peer, Instant::now()));
        j.pull_entries = 0;
        true
    }

    /// `peer` has no table to give yet: ask another.
    fn pull_refused(&self, peer: usize) {
        let mut j = lock(&self.join);
        if j.pulling.is_some_and(|(p, _)| p == peer) {
            j.pulling = None;
            // Said once a peer: it is asked again every REFUSED_RETRY.
            if j.refused.insert(peer, Instant::now()).is_none() {
                info!(
                    "sync: {} has not joined its cluster yet and refused its table: asking \
                     the other peers, and it again later",
                    self.peers[peer].addr
                );
            }
        }
    }

    /// Counts a connection from `ip` in its handshake; None (and the
    /// connection to be closed) when that address has too many already.
    fn handshake_slot(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<HandshakeSlot> {
        let mut m = lock(&self.handshaking);
        let n = m.entry(ip).or_default();
        if *n >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot {
            sh: self.clone(),
            ip,
        })
    }

    fn pull_progress(&self, peer: usize) -> bool {
        let mut j = lock(&self.join);
        match &mut j.pulling {
            Some((p, at)) if *p == peer => {
                *at = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// The connection to `peer` ended: a pull from it is over.
    fn release_pull(&self, peer: usize) {
        let mut j = lock(&self.join);
        if j.pulling.is_some_and(|(p, _)| p == peer) {
            j.pulling = None;
        }
    }
}

fn describe(why: Reject) -> &'static str {
    match why {
        Reject::Magic => "not a stickylb sync connection",
        Reject::Version => "another protocol version",
        Reject::Handshake => "it does not prove it knows the key (another key file?)",
        Reject::FrameMac => "a frame with a wrong HMAC (forged, altered or from another session)",
        Reject::Sequence => "a frame out of sequence (replayed or reordered)",
        Reject::Oversize => "a frame longer than the protocol allows",
        Reject::Truncated => "it ended inside a hello or a frame",
        Reject::Malformed => "an authenticated frame that does not parse",
        Reject::UnknownPeer => "it knows the key but is not one of sync.peers",
        Reject::UnknownAddress => "its address is no peer's (closed before its hello)",
        Reject::TooManyHandshakes => {
            "it already had as many connections in their handshake as one address may"
        }
    }
}

/// Ends the join when the timeout passes with no table in sight: no pull
/// under way, or one that has sent nothing for a whole timeout.
async fn join_deadline(sh: Arc<Shared>) {
    sh.pull_gate.notified().await;
    tokio::time::sleep(sh.join_timeout).await;
    loop {
        {
            let mut j = lock(&sh.join);
            if j.pulled {
                return;
            }
            let stalled = j
                .pulling
                .is_none_or(|(_, at)| at.elapsed() >= sh.join_timeout);
            if stalled && j.ready {
                // Adopted: its own table stands; peers' new pins still come.
                j.pulled = true;
                j.pulling = None;
                info!(
                    "sync: no peer sent its table within {}: going on with the adopted one",
                    crate::fmt::fmt_duration(sh.join_timeout)
                );
                return;
            }
            if stalled {
                j.ready = true;
                j.pulled = true;
                j.pulling = None;
                warn!(
                    "sync: no peer sent its table within {} ({}): ready alone, as the first \
                     node of a cluster. Clients pinned on other nodes may be re-picked here \
                     until their pins arrive",
                    crate::fmt::fmt_duration(sh.join_timeout),
                    sh.peers
                        .iter()
                        .map(|p| p.addr.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum ConnError {
    Io(io::Error),
    Reject(Reject),
    Timeout(&'static str),
    Closed,
    /// The main loop is gone (the daemon is exiting).
    Stopped,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Reject(r) => write!(f, "rejected: {}", describe(*r)),
            ConnError::Timeout(what) => write!(f, "timed out {what}"),
            ConnError::Closed => f.write_str("closed by the peer"),
            ConnError::Stopped => f.write_str("stopped"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ConnError::Reject(Reject::Truncated)
        } else {
            ConnError::Io(e)
        }
    }
}

impl From<Reject> for ConnError {
    fn from(r: Reject) -> Self {
        ConnError::Reject(r)
    }
}

async fn read_hello(rd: &mut TcpStream) -> Result<Hello, ConnError> {
    let mut b = [0; HELLO_LEN];
    rd.read_exact(&mut b).await?;
    Ok(Hello::decode(&b)?)
}

/// The connecting side's handshake with `peer`.
async fn handshake_client(
    sh: &Shared,
    s: &mut TcpStream,
    peer: SocketAddrV4,
) -> Result<(Sealer, Opener), ConnError> {
    let mine = Hello::new(sh.listen)?;
    s.write_all(&mine.encode()).await?;
    let theirs = read_hello(s).await?;
    let mut tag = [0; MAC_LEN];
    s.read_exact(&mut tag).await?;
    wire::check_proof(&sh.key, Role::Server, &mine, &theirs, &tag)?;
    if theirs.node != peer {
        return Err(Reject::UnknownPeer.into());
    }
    s.write_all(&wire::proof(&sh.key, Role::Client, &mine, &theirs))
        .await?;
    Ok(wire::session_keys(&sh.key, &mine, &theirs))
}

/// The accepting side's handshake; the peer's index.
async fn handshake_server(
    sh: &Shared,
    s: &mut TcpStream,
) -> Result<(Sealer, Opener, usize), ConnError> {
    let theirs = read_hello(s).await?;
    let mine = Hello::new(sh.listen)?;
    let mut out = mine.encode().to_vec();
    out.extend_from_slice(&wire::proof(&sh.key, Role::Server, &theirs, &mine));
    s.write_all(&out).await?;
    let mut tag = [0; MAC_LEN];
    s.read_exact(&mut tag).await?;
    wire::check_proof(&sh.key, Role::Client, &theirs, &mine, &tag)?;
    let peer = sh
        .peers
        .iter()
        .position(|p| p.addr == theirs.node)
        .ok_or(Reject::UnknownPeer)?;
    let (seal, open) = wire::session_keys_server(&sh.key, &theirs, &mine);
    Ok((seal, open, peer))
}

async fn read_message(rd: &mut OwnedReadHalf, open: &mut Opener) -> Result<Message, ConnError> {
    let mut prefix = [0; 4];
    // A clean end between frames is the peer closing, not a truncation.
    let n = rd.read(&mut prefix[..1]).await?;
    if n == 0 {
        return Err(ConnError::Closed);
    }
    rd.read_exact(&mut prefix[1..]).await?;
    let len = wire::frame_len(prefix)?;
    let mut body = vec![0; len];
    rd.read_exact(&mut body).await?;
    Ok(open.open(&body)?)
}

async fn write_frames(
    keepalive: Duration,
    mut wr: OwnedWriteHalf,
    mut seal: Sealer,
    mut rx: mpsc::Receiver<Message>,
) -> ConnError {
    loop {
        let m = match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => return ConnError::Stopped,
            Err(_) => Message::Batch {
                sent_ms: wall_ms(),
                entries: Vec::new(),
            },
        };
        if let Err(e) = wr.write_all(&seal.seal(&m)).await {
            return e.into();
        }
    }
}

/// One authenticated connection with `peer`, until it fails. Either side
/// may send anything; only the connecting side sends this node's batches
/// (so each entry goes to a peer once) and asks for snapshots.
async fn run_conn(
    sh: &Arc<Shared>,
    peer: usize,
    stream: TcpStream,
    seal: Sealer,
    mut open: Opener,
    outgoing: bool,
) -> ConnError {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Message>(8);
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = write_frames(sh.keepalive, wr, seal, rx);
    let reader = async {
        loop {
            let msg =
                match tokio::time::timeout(sh.dead_after, read_message(&mut rd, &mut open)).await {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => return e,
                    Err(_) => return ConnError::Timeout("waiting for the peer (no keepalive)"),
                };
            if let Err(e) = dispatch(sh, peer, msg, &tx, &serving).await {
                return e;
            }
        }
    };
    let sender = async {
        if outgoing {
            send_loop(sh, peer, &tx).await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        e = writer => e,
        e = reader => e,
        e = sender => e,
    }
}

async fn dispatch(
    sh: &Arc<Shared>,
    peer: usize,
    msg: Message,
    tx: &mpsc::Sender<Message>,
    serving: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), ConnError> {
    let inbound = |sent_ms, kind, entries: Vec<SyncEntry>| {
        lock(&sh.peers[peer].stats).received += entries.len() as u64;
        Inbound::Entries {
            peer,
            sent_ms,
            kind,
            entries,
        }
    };
    let forward = match msg {
        // An empty one is a keepalive.
        Message::Batch { entries, .. } | Message::Corrections { entries, .. }
            if entries.is_empty() =>
        {
            None
        }
        Message::Batch { sent_ms, entries } => Some(inbound(sent_ms, EntriesKind::Batch, entries)),
        Message::Corrections { sent_ms, entries } => {
            Some(inbound(sent_ms, EntriesKind::Correction, entries))
        }
        // Only the table this node asked for, from the peer it asked.
        Message::SnapshotChunk { sent_ms, entries } => sh
            .pull_progress(peer)
            .then(|| inbound(sent_ms, EntriesKind::Snapshot, entries)),
        Message::SnapshotEnd { total } => sh
            .pull_progress(peer)
            .then_some(Inbound::SnapshotEnd { peer, total }),
        Message::SnapshotRefused => {
            sh.pull_refused(peer);
            None
        }
        Message::SnapshotRequest => {
            // A node that has not joined has no table to give (it may be
            // empty or partial); and one snapshot at a time a connection.
            let ready = lock(&sh.join).ready;
            if ready && !serving.swap(true, Ordering::AcqRel) {
                serve_snapshot(sh, peer, tx.clone(), serving.clone());
            } else if tx.send(Message::SnapshotRefused).await.is_err() {
                return Err(ConnError::Stopped);
            }
            None
        }
    };
    if let Some(m) = forward {
        sh.inbound.send(m).await.map_err(|_| ConnError::Stopped)?;
    }
    Ok(())
}

/// Streams this node's table to `peer` from a blocking thread, paced by the
/// connection (a full channel waits for the socket).
fn serve_snapshot(
    sh: &Arc<Shared>,
    peer: usize,
    tx: mpsc::Sender<Message>,
    serving: Arc<std::sync::atomic::AtomicBool>,
) {
    let snapshot = sh.snapshot.clone();
    let addr = sh.peers[peer].addr;
    tokio::task::spawn_blocking(move || {
        struct Served(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Served {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _served = Served(serving);
        let mut total = 0u64;
        let walked = snapshot.walk(wire::MAX_ENTRIES_PER_FRAME, &mut |entries| {
            total += entries.len() as u64;
            tx.blocking_send(Message::SnapshotChunk {
                sent_ms: wall_ms(),
                entries,
            })
            .is_ok()
        });
        match walked {
            Ok(()) => {
                if tx.blocking_send(Message::SnapshotEnd { total }).is_ok() {
                    info!("sync: sent {addr} this node's table ({total} entries)");
                }
            }
            Err(e) => warn!("sync: cannot walk the table for {addr}: {e:#}"),
        }
    });
}

/// Sends `peer`'s corrections, then its queue: in batches of up to `batch`
/// entries, each waiting at most `flush` for its batch to fill, at most
/// `max_rate` a second (a batch waits for its tokens: no partial frames).
async fn send_loop(sh: &Arc<Shared>, peer: usize, tx: &mpsc::Sender<Message>) -> ConnError {
    let p = &sh.peers[peer];
    let mut bucket = TokenBucket::new(sh.max_rate, sh.batch as u32, Instant::now());
    // While joining, how often a connection checks whether it is to pull.
    let mut pull_tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        if sh.claim_pull(peer) && tx.send(Message::SnapshotRequest).await.is_err() {
            return ConnError::Stopped;
        }
        let corrections = lock(&p.corrections).len();
        let (len, oldest) = {
            let q = lock(&p.queue);
            (q.len(), q.oldest())
        };
        let now = Instant::now();
        let correcting = corrections > 0;
        if !correcting {
            let Some(oldest) = oldest else {
                tokio::select! {
                    () = p.wake.notified() => {}
                    _ = pull_tick.tick() => {}
                }
                continue;
            };
            let due = oldest + sh.flush;
            if len < sh.batch && now < due {
                tokio::select! {
                    () = p.wake.notified() => {}
                    () = tokio::time::sleep_until(due.into()) => {}
                }
                continue;
            }
        }
        let want = if correcting { corrections } else { len }.min(sh.batch);
        if !bucket.take_all(want, now) {
            tokio::time::sleep(bucket.wait_for(want, now)).await;
            continue;
        }
        let queue = if correcting { &p.corrections } else { &p.queue };
        let entries = lock(queue).take(want, Instant::now());
        let sent_ms = wall_ms();
        let msg = {
            let mut st = lock(&p.stats);
            st.sent += entries.len() as u64;
            if correcting {
                st.corrections_sent += entries.len() as u64;
                Message::Corrections { sent_ms, entries }
            } else {
                Message::Batch { sent_ms, entries }
            }
        };
        if tx.send(msg).await.is_err() {
            return ConnError::Stopped;
        }
    }
}

/// This node's connection to `peer`, made again whenever it fails.
async fn outgoing(sh: Arc<Shared>, peer: usize) {
    let addr = sh.peers[peer].addr;
    let mut backoff = MIN_BACKOFF;
    loop {
        sh.set_state(peer, PeerState::Connecting, None);
        let connected = async {
            let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| ConnError::Timeout("connecting"))??;
            s.set_nodelay(true)?;
            let (seal, open) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_client(&sh, &mut s, addr))
                    .await
                    .map_err(|_| ConnError::Timeout("in the handshake"))??;
            Ok::<_, ConnError>((s, seal, open))
        }
        .await;
        let e = match connected {
            Ok((s, seal, open)) => {
                sh.set_state(peer, PeerState::Up, None);
                info!("sync: connected to {addr}");
                backoff = MIN_BACKOFF;
                let e = run_conn(&sh, peer, s, seal, open, true).await;
                sh.release_pull(peer);
                if !matches!(e, ConnError::Stopped) {
                    warn!("sync: lost the connection to {addr} ({e}); reconnecting");
                }
                e
            }
            Err(e) => e,
        };
        if let ConnError::Reject(r) = e {
            sh.reject(r, SocketAddr::V4(addr));
        }
        sh.set_state(peer, PeerState::Down, Some(e.to_string()));
        // Jittered, so that nodes restarted together do not retry in step.
        let wait = backoff.mul_f64(0.5 + fastrand::f64());
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn accept(sh: Arc<Shared>, listener: TcpListener) {
    let mut errors = Every::new(REJECT_LOG_EVERY);
    // Owned here, so that they end with this task (when the `Cluster` goes).
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((s, from)) => {
                // Closed before the handshake: anyone who reaches the port
                // could otherwise keep the handshake slots full.
                if !sh
                    .peers
                    .iter()
                    .any(|p| std::net::IpAddr::V4(*p.addr.ip()) == from.ip())
                {
                    sh.from_unknown_address.fetch_add(1, Ordering::Relaxed);
                    sh.reject(Reject::UnknownAddress, from);
                    continue;
                }
                let Some(slot) = sh.handshake_slot(from.ip()) else {
                    sh.reject(Reject::TooManyHandshakes, from);
                    continue;
                };
                let Ok(permit) = sh.handshakes.clone().try_acquire_owned() else {
                    if errors.due() {
                        warn!(
                            "sync: {MAX_HANDSHAKES} connections are in their handshake already; \
                             closed one from {from}"
                        );
                    }
                    continue;
                };
                conns.spawn(incoming(sh.clone(), s, from, (permit, slot)));
            }
            Err(e) => {
                if errors.due() {
                    warn!("sync: cannot accept a connection: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn incoming(
    sh: Arc<Shared>,
    mut s: TcpStream,
    from: SocketAddr,
    permit: (tokio::sync::OwnedSemaphorePermit, HandshakeSlot),
) {
    let _ = s.set_nodelay(true);
    let shook = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_server(&sh, &mut s))
        .await
        .unwrap_or(Err(ConnError::Timeout("in the handshake")));
    drop(permit);
    let e = match shook {
        Ok((seal, open, peer)) => run_conn(&sh, peer, s, seal, open, false).await,
        Err(e) => e,
    };
    if let ConnError::Reject(r) = e {
        sh.reject(r, from);
    }
}

/// A connection's place among those in their handshake from its address.
struct HandshakeSlot {
    sh: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut m = lock(&self.sh.handshaking);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Moves the data path's events to every peer's queue, with the latest ids
/// → identities: every `every`, the ring is drained in bursts until one
/// comes back short, the rest of the daemon getting a turn between bursts.
/// So a ring that filled up between two drains is emptied in one go (what
/// it could not hold was counted by the data path).
async fn events<R: EventReader, T: Translate>(
    sh: Arc<Shared>,
    mut reader: R,
    ids: watch::Receiver<T>,
    every: Duration,
) {
    let mut raw = Vec::with_capacity(EVENT_BURST);
    let mut tick = tokio::time::interval(every);
    // A drain that took longer than the interval is followed by a whole
    // interval, not by a catch-up of missed ticks.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        while burst(&sh, &mut reader, &ids, &mut raw) {
            tokio::task::yield_now().await;
        }
    }
}

/// Drains up to `EVENT_BURST` events into the peers' queues; whether it was
/// a full burst (more may wait).
fn burst<R: EventReader, T: Translate>(
    sh: &Shared,
    reader: &mut R,
    ids: &watch::Receiver<T>,
    raw: &mut Vec<lb_common::SyncEvent>,
) -> bool {
    raw.clear();
    let n = reader.drain(raw, EVENT_BURST);
    if n == 0 {
        return false;
    }
    let now_ns = crate::util::monotonic_ns();
    let entries: Vec<SyncEntry> = {
        let ids = ids.borrow();
        raw.iter().filter_map(|ev| ids.event(ev, now_ns)).collect()
    };
    let lost = (raw.len() - entries.len()) as u64;
    if lost > 0 {
        sh.untranslated.fetch_add(lost, Ordering::Relaxed);
    }
    sh.publish(&entries);
    n >= EVENT_BURST
}
