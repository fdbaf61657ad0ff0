//! Real client traffic from the client namespace: one-off sweeps (one
//! request per client) and background load that records who answered whom.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::{Netns, Topology, VIP, backend_of, http_get};

/// Per-request timeout: a client whose backend died sees at most this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// Parallel requesters (each a thread in the client namespace).
const THREADS: usize = 16;

/// One request from each client, in parallel: which backend answered each
/// (None: the request failed).
pub fn sweep(topo: &Topology, clients: &[Ipv4Addr]) -> Vec<Option<usize>> {
    sweep_in(&topo.client, VIP, clients)
}

/// `sweep` from the clients' namespace `ns` to `vip` (port 80), e.g. a
/// `Cluster`'s.
pub fn sweep_in(ns: &Netns, vip: Ipv4Addr, clients: &[Ipv4Addr]) -> Vec<Option<usize>> {
    let clients = clients.to_vec();
    ns.enter(move || {
        let per = clients.len().div_ceil(THREADS).max(1);
        let handles: Vec<_> = clients
            .chunks(per)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                thread::spawn(move || {
                    chunk
                        .iter()
                        .map(|&c| attempt(c, vip).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// One request: the backend that answered, or why none did.
fn attempt(c: Ipv4Addr, vip: Ipv4Addr) -> Result<usize, String> {
    let a = http_get(c, SocketAddrV4::new(vip, 80), "/", None, REQUEST_TIMEOUT)
        .map_err(|e| e.to_string())?;
    backend_of(&a).ok_or_else(|| format!("no backend name in {:?}", a.body))
}

/// One request's outcome under load.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Index into the client list the load was started with.
    pub client: usize,
    /// When the request started.
    pub at: Instant,
    pub backend: Option<usize>,
    /// How long it took (to its failure, if it failed).
    pub took: Duration,
    /// Why it failed (None: answered).
    pub error: Option<String>,
}

/// Background load: every client requests in turn, new connection each
/// time, until stopped (or `max` elapses, so a failed test cannot leave it
/// running).
pub struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(topo: &Topology, clients: &[Ipv4Addr], max: Duration) -> Self {
        Self::start_in(&topo.client, VIP, clients, max)
    }

    /// `start` from the clients' namespace `ns` to `vip` (port 80), e.g. a
    /// `Cluster`'s.
    pub fn start_in(ns: &Netns, vip: Ipv4Addr, clients: &[Ipv4Addr], max: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = clients.to_vec();
        let path = ns.path();
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            crate::netns::enter_path(&path);
            let end = Instant::now() + max;
            let per = clients.len().div_ceil(THREADS).max(1);
            let workers: Vec<_> = clients
                .chunks(per)
                .enumerate()
                .map(|(k, chunk)| {
                    let chunk = chunk.to_vec();
                    let flag = flag.clone();
                    thread::spawn(move || {
                        let mut out = Vec::new();
                        while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                            for (j, &c) in chunk.iter().enumerate() {
                                let at = Instant::now();
                                let r = attempt(c, vip);
                                out.push(Sample {
                                    client: k * per + j,
                                    at,
                                    took: at.elapsed(),
                                    backend: r.as_ref().ok().copied(),
                                    error: r.err(),
                                });
                            }
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the load; every sample, in no particular order.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What a stretch of load shows, against each client's backend before it.
#[derive(Debug, Default)]
pub struct LoadSummary {
    pub requests: usize,
    pub failed: usize,
    /// Clients answered at least once by a backend other than their old one.
    pub moved: Vec<usize>,
    /// Failed requests of clients whose backend was not in `victims`.
    pub failed_survivors: usize,
    /// Those requests themselves, to say what went wrong.
    pub survivor_failures: Vec<Sample>,
}

impl LoadSummary {
    /// Fails unless no request failed and no client moved: what a restart
    /// or an upgrade under load must show. `what` names it in the message.
    #[track_caller]
    pub fn assert_none_failed_or_moved(&self, what: &str) {
        assert_eq!(
            (self.failed, self.moved.len()),
            (0, 0),
            "{what}: failures {:?}",
            self.survivor_failures.iter().take(3).collect::<Vec<_>>()
        );
    }
}

pub fn summarize(samples: &[Sample], before: &[Option<usize>], victims: &[usize]) -> LoadSummary {
    let mut s = LoadSummary {
        requests: samples.len(),
        ..Default::default()
    };
    let mut moved = vec![false; before.len()];
    for x in samples {
        let old = before[x.client];
        match x.backend {
            None => {
                s.failed += 1;
                if !old.is_some_and(|b| victims.contains(&b)) {
                    s.failed_survivors += 1;
                    s.survivor_failures.push(x.clone());
                }
            }
            Some(b) if Some(b) != old => moved[x.client] = true,
            Some(_) => {}
        }
    }
    s.moved = (0..before.len()).filter(|&i| moved[i]).collect();
    s
}
