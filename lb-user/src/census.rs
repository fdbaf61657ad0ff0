//! The census of the affinity table. The table holds up to millions of
//! entries, and a walk of it takes a good fraction of a second: done on the
//! daemon's main loop for every metrics scrape or `status`, it held up
//! health checks and map updates (failover took seconds longer under a
//! scraping loop). So a thread of its own walks the table, with its own
//! handles on the maps: it counts each backend's live clients in the
//! background, and answers `flows`. The main loop only reads the last
//! counts, which say how old they are, and hands `flows` requests over.
//!
//! The walks are paced: the thread runs at a low priority and rests after
//! each batch as long as the batch took, so that it never takes more than
//! half a CPU from the data path and the main loop.

use std::{
    collections::{HashMap, VecDeque},
    ops::ControlFlow,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use lb_common::{AffinityKey, AffinityValue, MAX_BACKENDS};
use log::{error, info, warn};
use tokio::sync::oneshot;

use crate::{
    api::ClientsCounted,
    control::Reply,
    dataplane::{DataplaneError, TableReader},
    lb::FlowsQuery,
    util::monotonic_ns,
};

/// Between two counts while they are read (status, metrics): how stale a
/// count can be, besides the walk itself.
const REFRESH: Duration = Duration::from_secs(1);
/// Between two counts while nobody reads them.
const IDLE_REFRESH: Duration = Duration::from_secs(10);
/// `flows` requests waiting for the thread; more are refused, so that a
/// loop of them cannot queue walks without end.
const MAX_QUEUED_FLOWS: usize = 8;
/// The longest rest after a batch (a batch held up by a busy machine must
/// not make the next one wait as long).
const MAX_REST: Duration = Duration::from_millis(20);

/// The live clients of each (VIP id, backend id), as one walk counted them.
#[derive(Debug)]
pub struct Counts {
    pub clients: HashMap<(u32, u32), usize>,
    /// Entries seen, live or not, of every VIP.
    pub entries: u64,
    /// When the walk ended.
    pub at: Instant,
    /// How long it took.
    pub took: Duration,
    /// The id epoch when the walk began (see `Lb::id_epoch`): counts keyed
    /// by ids are the old backends' once an id is freed and reused.
    pub epoch: u64,
}

impl Counts {
    /// The live clients of `backend` on `vip`.
    pub fn clients(&self, vip: u32, backend: u32) -> usize {
        self.clients.get(&(vip, backend)).copied().unwrap_or(0)
    }

    /// What status and metrics say of them.
    pub fn report(&self) -> ClientsCounted {
        ClientsCounted {
            age_ms: millis(self.at.elapsed()),
            walk_ms: millis(self.took),
            entries: self.entries,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A `flows` request, and where to send its reply.
pub struct FlowsJob {
    pub query: FlowsQuery,
    pub reply: oneshot::Sender<Reply>,
}

/// The census thread, stopped (and waited for) on drop.
pub struct Census {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
    /// The Lb's id epoch.
    epoch: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    latest: Option<Arc<Counts>>,
    /// The counts were read since the last walk began: count again soon.
    wanted: bool,
    jobs: VecDeque<FlowsJob>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it:
        // every change is a single assignment or push.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Census {
    /// Starts the thread; its first walk begins at once.
    /// `epoch`: the Lb's id epoch (`Lb::id_epoch`).
    pub fn start(reader: TableReader, epoch: Arc<AtomicU64>) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            epoch,
        });
        let theirs = shared.clone();
        let thread = thread::Builder::new()
            .name("census".into())
            .spawn(move || supervise(&theirs, &reader))
            .map_err(|e| anyhow::anyhow!("cannot start the affinity table census thread: {e}"))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The last counts (None until the first walk ends, or while the last
    /// one began before an id was freed), and a request for fresh ones.
    /// Never waits for a walk.
    pub fn counts(&self) -> Option<Arc<Counts>> {
        let mut st = self.shared.lock();
        st.wanted = true;
        self.shared.wake.notify_one();
        let epoch = self.shared.epoch.load(Ordering::Relaxed);
        current(st.latest.as_ref(), epoch).cloned()
    }

    /// Queues a `flows` request; the census thread sends its reply.
    pub fn flows(&self, job: FlowsJob) {
        let mut st = self.shared.lock();
        if st.jobs.len() >= MAX_QUEUED_FLOWS {
            drop(st);
            let _ = job.reply.send(Reply::err(format!(
                "{MAX_QUEUED_FLOWS} flows requests are waiting for a walk of the affinity \
                 table already; try again when they are answered"
            )));
            return;
        }
        st.jobs.push_back(job);
        self.shared.wake.notify_one();
    }
}

impl Drop for Census {
    fn drop(&mut self) {
        {
            // Under the lock: the walker checks `stop` with it held until it
            // waits, so it cannot miss the wake-up and sleep on.
            let _st = self.shared.lock();
            self.shared.stop.store(true, Ordering::Relaxed);
        }
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `latest` if it was counted in `epoch`: counts of an earlier epoch may
/// give a freed id's clients to the backend that took the id since.
fn current(latest: Option<&Arc<Counts>>, epoch: u64) -> Option<&Arc<Counts>> {
    latest.filter(|c| c.epoch == epoch)
}

enum Work {
    Count,
    Flows(FlowsJob),
}

/// Runs the walker until stopped; a walker that panics (a bug) is logged
/// and started again, so counts and `flows` never stop for good. The
/// request it was answering gets an error (its reply is dropped).
fn supervise(shared: &Shared, reader: &TableReader) {
    loop {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| walker(shared, reader)));
        if run.is_ok() {
            return;
        }
        error!(
            "the affinity table census failed (a bug in stickylb: please report it with the \
             message above); it starts again in a second, until then client counts get older"
        );
        thread::sleep(Duration::from_secs(1));
    }
}

fn walker(shared: &Shared, reader: &TableReader) {
    lower_priority();
    // When the last count ended (None: none yet).
    let mut last: Option<Instant> = None;
    let mut failing = false;
    loop {
        let work = {
            let mut st = shared.lock();
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(job) = st.jobs.pop_front() {
                    break Work::Flows(job);
                }
                let gap = if st.wanted { REFRESH } else { IDLE_REFRESH };
                let wait = last.map_or(Duration::ZERO, |t| gap.saturating_sub(t.elapsed()));
                if wait.is_zero() {
                    st.wanted = false;
                    break Work::Count;
                }
                st = shared
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        match work {
            Work::Flows(job) => {
                let reply = flows(reader, &job.query, &shared.stop, &shared.epoch);
                let _ = job.reply.send(reply);
            }
            Work::Count => {
                match count(reader, &shared.stop, &shared.epoch) {
                    Ok(Some(counts)) => {
                        if failing {
                            info!("counting clients in the affinity table works again");
                        }
                        failing = false;
                        shared.lock().latest = Some(Arc::new(counts));
                    }
                    Ok(None) => return,
                    Err(e) => {
                        if !failing {
                            error!(
                                "cannot count the clients in the affinity table: {:#}; status \
                                 and metrics show the last counts, with their age, until it \
                                 works again",
                                anyhow::Error::from(e)
                            );
                        }
                        failing = true;
                    }
                }
                last = Some(Instant::now());
            }
        }
    }
}

/// Gives the walks a lower CPU priority than the main loop's work.
fn lower_priority() {
    // SAFETY: setpriority(2) with no pointers; on Linux, PRIO_PROCESS with
    // who = 0 sets the nice value of the calling thread only.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if rc != 0 {
        warn!(
            "cannot lower the priority of the affinity table census: {}; it runs at the daemon's",
            std::io::Error::last_os_error()
        );
    }
}

/// Hands the affinity table to `visit` a batch at a time, resting after
/// each batch as long as it took. Ok(false): stopped on the way.
fn paced_walk(
    reader: &TableReader,
    stop: &AtomicBool,
    mut visit: impl FnMut(&[AffinityKey], &[AffinityValue]),
) -> Result<bool, DataplaneError> {
    let mut stopped = false;
    let mut t = Instant::now();
    reader.affinity_batches(|keys, values| {
        visit(keys, values);
        if stop.load(Ordering::Relaxed) {
            stopped = true;
            return ControlFlow::Break(());
        }
        thread::sleep(t.elapsed().min(MAX_REST));
        t = Instant::now();
        ControlFlow::Continue(())
    })?;
    Ok(!stopped)
}

/// One count; None if stopped on the way.
fn count(
    reader: &TableReader,
    stop: &AtomicBool,
    epoch: &AtomicU64,
) -> Result<Option<Counts>, DataplaneError> {
    let t0 = Instant::now();
    let epoch = epoch.load(Ordering::Relaxed);
    // The timeouts the data path applies, read from its map.
    let timeouts = reader
        .vips()?
        .into_iter()
        .map(|(_, info)| (info.vip_id, info.affinity_timeout_ns))
        .collect();
    let mut tally = Tally::new(timeouts);
    let done = paced_walk(reader, stop, |keys, values| {
        tally.add(monotonic_ns(), keys, values);
    })?;
    Ok(done.then(|| Counts {
        clients: tally.clients(),
        entries: tally.entries,
        at: Instant::now(),
        took: t0.elapsed(),
        epoch,
    }))
}

/// Counts live entries per (VIP id, backend id). Looked up per entry of
/// millions: a short list of VIPs and counts indexed by backend id, no
/// hashing.
struct Tally {
    /// (VIP id, affinity timeout, live entries by backend id): entries of
    /// other VIP ids are not counted.
    vips: Vec<(u32, u64, Vec<usize>)>,
    entries: u64,
}

impl Tally {
    fn new(timeouts: HashMap<u32, u64>) -> Self {
        Self {
            vips: timeouts
                .into_iter()
                .map(|(id, t)| (id, t, vec![0; MAX_BACKENDS as usize]))
                .collect(),
            entries: 0,
        }
    }

    fn add(&mut self, now: u64, keys: &[AffinityKey], values: &[AffinityValue]) {
        self.entries += keys.len() as u64;
        for (k, e) in keys.iter().zip(values) {
            let Some((_, timeout, counts)) = self.vips.iter_mut().find(|v| v.0 == k.vip_id) else {
                continue;
            };
            if e.is_live(now, *timeout)
                && let Some(n) = counts.get_mut(e.backend_id as usize)
            {
                *n += 1;
            }
        }
    }

    /// The counts by (VIP id, backend id), those above zero.
    fn clients(&self) -> HashMap<(u32, u32), usize> {
        self.vips
            .iter()
            .flat_map(|(vip, _, counts)| {
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(id, n)| ((*vip, id as u32), *n))
            })
            .collect()
    }
}

fn flows(reader: &TableReader, query: &FlowsQuery, stop: &AtomicBool, epoch: &AtomicU64) -> Reply {
    // Made while it waited in the queue, or during the walk: an id it names
    // may belong to another backend since.
    let stale = || {
        (epoch.load(Ordering::Relaxed) != query.epoch).then(|| {
            Reply::err(
                "the backends changed (a reload or live change freed backend ids) while this \
                 flows request waited; run it again",
            )
        })
    };
    if let Some(r) = stale() {
        return r;
    }
    let mut found = query.collect(monotonic_ns());
    let walked = paced_walk(reader, stop, |keys, values| {
        for (k, e) in keys.iter().zip(values) {
            found.add(k, e);
        }
    });
    if let Some(r) = stale() {
        return r;
    }
    match walked {
        Ok(true) => Reply::ok(found.finish()),
        Ok(false) => Reply::err("the daemon is shutting down"),
        Err(e) => Reply::err(format!(
            "cannot read the affinity table: {:#}",
            anyhow::Error::from(e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        vip_id: u32,
        client: u8,
        backend_id: u32,
        last_seen_ns: u64,
    ) -> (AffinityKey, AffinityValue) {
        (
            AffinityKey {
                vip_id,
                client: [10, 0, 0, client],
            },
            AffinityValue {
                backend_id,
                synced_s: 0,
                created_ns: 0,
                last_seen_ns,
            },
        )
    }

    #[test]
    fn counts_from_before_an_id_was_freed_are_not_reported() {
        let counts = Arc::new(Counts {
            clients: HashMap::from([((1, 7), 5)]),
            entries: 5,
            at: Instant::now(),
            took: Duration::ZERO,
            epoch: 3,
        });
        assert!(current(Some(&counts), 3).is_some());
        // Id 7 may be another backend's since: its 5 clients are not.
        assert!(current(Some(&counts), 4).is_none());
    }

    #[test]
    fn only_live_entries_of_known_vips_are_counted() {
        let now = 100_000;
        // VIP 1: timeout 1000 ns; VIP 2: 0 (never sticky); VIP 3 unknown.
        let mut t = Tally::new(HashMap::from([(1, 1000), (2, 0)]));
        let (keys, values): (Vec<_>, Vec<_>) = [
            entry(1, 1, 7, now - 10),
            entry(1, 2, 7, now - 999),
            entry(1, 3, 8, now - 10),
            entry(1, 4, 8, now - 1000),
            entry(2, 5, 7, now),
            entry(3, 6, 7, now),
        ]
        .into_iter()
        .unzip();
        t.add(now, &keys[..3], &values[..3]);
        t.add(now, &keys[3..], &values[3..]);
        assert_eq!(t.entries, 6);
        assert_eq!(t.clients(), HashMap::from([((1, 7), 2), ((1, 8), 1)]));
    }
}
