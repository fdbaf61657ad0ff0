//! Reporting must never hold up health checking: with a million affinity
//! entries, failover under a loop of metrics scrapes and `status` calls
//! takes as long as without them, and `flows` replies stay bounded. Needs
//! root (CI is root).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use lb_common::{AffinityKey, AffinityValue, VipInfo, VipKey, map_names};
use lb_user::{api::BackendState, control::Request, util::monotonic_ns};
use stickylb_tests::{
    daemon::{Daemon, topology_with_pin, with_affinity_capacity},
    netns::{Topology, backend_addr, enter_path, wait_for},
    traffic::sweep,
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";

/// Affinity entries written straight into the pinned map.
const ENTRIES: u32 = 1_000_000;
/// Room for them and the test's real clients, so that the LRU evicts none.
const CAPACITY: u32 = 1_200_000;
/// Scraping loops on /metrics, and on `status`.
const METRICS_LOOPS: usize = 12;
const STATUS_LOOPS: usize = 4;
/// How much slower failover may be while scraped (a correctness bound: a
/// delay of many seconds, as when scrapes walked the table on the daemon's
/// thread, is the defect; CPU contention on a small shared machine is not).
const SLACK: Duration = Duration::from_secs(4);
/// The most read of a `flows` reply: far more than a bounded reply, far
/// less than the whole table's (158 MB for a million entries).
const FLOWS_READ_CAP: usize = 16 << 20;
/// The longest a failover is waited for.
const FAILOVER_WAIT: Duration = Duration::from_secs(12);

fn pinned<K: aya::Pod, V: aya::Pod>(pin: &Path, name: &str) -> HashMap<MapData, K, V> {
    let data = MapData::from_pin(pin.join(name)).expect("open the pinned map");
    let map = Map::from_map_data(data).expect("a known map type");
    HashMap::try_from(map).expect("the map's key and value types")
}

/// Writes `ENTRIES` live entries for VIP `vip_id`, spread over `backends`,
/// for clients 10.128.0.0 upward (none of them the test's real clients).
fn fill(pin: &Path, vip_id: u32, backends: &[u32]) -> Duration {
    let mut affinity: HashMap<MapData, AffinityKey, AffinityValue> =
        pinned(pin, map_names::AFFINITY);
    let t0 = Instant::now();
    let now = monotonic_ns();
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    for i in 0..ENTRIES {
        let key = AffinityKey {
            vip_id,
            client: (base + i).to_be_bytes(),
        };
        let value = AffinityValue {
            backend_id: backends[i as usize % backends.len()],
            synced_s: 0,
            created_ns: now,
            last_seen_ns: now,
        };
        affinity
            .insert(key, value, 0)
            .expect("insert an affinity entry");
    }
    t0.elapsed()
}

/// Kills backend `victim`'s server; how long until the daemon has it down
/// (None: not within `FAILOVER_WAIT`). Timed from the daemon's own status,
/// not by sweeps of the clients, which the scraping threads of this very
/// process slow down; then, untimed, every client pinned to it must be
/// answered by another backend.
fn failover(
    topo: &mut Topology,
    d: &Daemon,
    clients: &[Ipv4Addr],
    victim: usize,
) -> Option<Duration> {
    let before = sweep(topo, clients);
    let theirs: Vec<Ipv4Addr> = clients
        .iter()
        .zip(&before)
        .filter(|(_, b)| **b == Some(victim))
        .map(|(c, _)| *c)
        .collect();
    assert!(
        !theirs.is_empty(),
        "no client on backend {victim}: {before:?}"
    );
    let addr = backend_addr(victim);
    let t0 = Instant::now();
    topo.kill_server(victim);
    let down = wait_for(FAILOVER_WAIT, || {
        d.vips().is_ok_and(|v| {
            v[0].backends
                .iter()
                .any(|b| *b.address.ip() == addr && b.state == BackendState::Down)
        })
    });
    let took = t0.elapsed();
    if down {
        let moved = wait_for(FAILOVER_WAIT, || {
            sweep(topo, &theirs)
                .iter()
                .all(|b| b.is_some_and(|b| b != victim))
        });
        assert!(
            moved,
            "backend {victim} is down but its clients are not all answered elsewhere"
        );
    }
    down.then_some(took)
}

/// Restarts backend `victim`'s server and waits until it is up again.
fn restore(topo: &mut Topology, d: &Daemon, victim: usize) {
    topo.start_server(victim).unwrap();
    assert!(
        d.wait_backends(Duration::from_secs(20), |s, _| s == BackendState::Up),
        "backend {victim} back up:\n{}",
        d.log_text()
    );
}

/// One GET /metrics; its length.
fn scrape() -> std::io::Result<usize> {
    let mut s = TcpStream::connect("127.0.0.1:9321")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out.len())
}

/// Scraping loops (metrics from the LB namespace's loopback, `status` over
/// the control socket) until stopped; each records how long its calls took.
struct Scrapers {
    stop: Arc<AtomicBool>,
    handles: Vec<thread::JoinHandle<()>>,
    metrics: Arc<Mutex<Vec<Duration>>>,
    status: Arc<Mutex<Vec<Duration>>>,
}

impl Scrapers {
    fn start(topo: &Topology, d: &Daemon) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for _ in 0..METRICS_LOOPS {
            let (stop, times, ns) = (stop.clone(), metrics.clone(), topo.lb.path());
            handles.push(thread::spawn(move || {
                enter_path(&ns);
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    if scrape().is_ok() {
                        times.lock().unwrap().push(t0.elapsed());
                    }
                }
            }));
        }
        for _ in 0..STATUS_LOOPS {
            let (stop, times, sock) = (stop.clone(), status.clone(), d.socket.clone());
            handles.push(thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    if lb_user::control::call(&sock, &Request::Status).is_ok() {
                        times.lock().unwrap().push(t0.elapsed());
                    }
                }
            }));
        }
        Self {
            stop,
            handles,
            metrics,
            status,
        }
    }

    /// Stops the loops; (calls made, mean time) of metrics and of status.
    fn stop(self) -> ((usize, Duration), (usize, Duration)) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        let mean = |t: &Mutex<Vec<Duration>>| {
            let t = t.lock().unwrap();
            let n = t.len();
            (
                n,
                t.iter().sum::<Duration>() / u32::try_from(n.max(1)).unwrap(),
            )
        };
        (mean(&self.metrics), mean(&self.status))
    }
}

/// A `flows` request as a raw line, read up to `FLOWS_READ_CAP`: the
/// reply's size (capped), and the reply if it was read whole.
fn raw_flows(d: &Daemon) -> (usize, Option<serde_json::Value>) {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"{\"cmd\":\"flows\",\"vip\":null,\"backend\":null}\n")
        .unwrap();
    let mut line = Vec::new();
    let n = BufReader::new(s)
        .take(FLOWS_READ_CAP as u64)
        .read_until(b'\n', &mut line)
        .unwrap_or(0);
    let whole = line.ends_with(b"\n");
    (n, whole.then(|| serde_json::from_slice(&line).unwrap()))
}

#[test]
fn reporting_does_not_delay_failover_on_a_million_entries() {
    let (mut topo, pin) = topology_with_pin(3, 60, BACKEND.as_ref()).unwrap();
    let config = with_affinity_capacity(
        &topo.config(&pin.0, HEALTH, "affinity_timeout = \"300s\""),
        CAPACITY,
    );
    let d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    assert!(
        d.wait_backends(Duration::from_secs(10), |s, _| s == BackendState::Up),
        "backends up:\n{}",
        d.log_text()
    );
    let vips: Vec<(VipKey, VipInfo)> = pinned::<VipKey, VipInfo>(&pin.0, map_names::VIPS)
        .iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(vips.len(), 1);
    let vip_id = vips[0].1.vip_id;
    let ids: Vec<u32> = d.vips().unwrap()[0].backends.iter().map(|b| b.id).collect();
    let filled = fill(&pin.0, vip_id, &ids);
    eprintln!(
        "reporting: {ENTRIES} affinity entries written in {} ms",
        filled.as_millis()
    );

    let clients = topo.clients.clone();
    let quiet = failover(&mut topo, &d, &clients, 0)
        .unwrap_or_else(|| panic!("no failover without scraping:\n{}", d.log_text()));
    eprintln!(
        "reporting: failover without scraping: {} ms",
        quiet.as_millis()
    );
    restore(&mut topo, &d, 0);

    let ns = topo.lb.path();
    let single = thread::spawn(move || {
        enter_path(&ns);
        let t0 = Instant::now();
        for _ in 0..3 {
            scrape().unwrap();
        }
        t0.elapsed() / 3
    })
    .join()
    .unwrap();
    eprintln!(
        "reporting: one scrape alone takes {:.1} ms",
        single.as_secs_f64() * 1000.0
    );

    let scrapers = Scrapers::start(&topo, &d);
    thread::sleep(Duration::from_millis(1000));
    let loaded = failover(&mut topo, &d, &clients, 1);
    let ((scrapes, scrape_time), (statuses, status_time)) = scrapers.stop();
    eprintln!(
        "reporting: failover with {METRICS_LOOPS} metrics and {STATUS_LOOPS} status loops: {} \
         ({scrapes} scrapes of {} ms on average, {statuses} status calls of {} ms)",
        loaded.map_or(format!("none within {FAILOVER_WAIT:?}"), |t| format!(
            "{} ms",
            t.as_millis()
        )),
        scrape_time.as_millis(),
        status_time.as_millis()
    );

    let t0 = Instant::now();
    let (flows_size, flows) = raw_flows(&d);
    eprintln!(
        "reporting: flows reply of {}{flows_size} bytes in {} ms",
        if flows.is_none() { "more than " } else { "" },
        t0.elapsed().as_millis()
    );

    assert!(
        loaded.is_some_and(|t| t <= quiet + SLACK),
        "failover took {loaded:?} while scraped, {quiet:?} without:\n{}",
        d.log_text()
    );
    assert!(
        flows_size < 1 << 20,
        "the flows reply is {flows_size} bytes or more"
    );
    let flows = flows.unwrap();
    assert_eq!(flows["result"]["truncated"], true, "{flows}");
    assert_eq!(flows["result"]["limit"], 1000);
    assert_eq!(
        flows["result"]["flows"].as_array().map(Vec::len),
        Some(1000)
    );
    let total = flows["result"]["total"].as_u64().unwrap();
    assert!(total >= u64::from(ENTRIES), "{total} flows");

    // The CLI's `flows --json` is as bounded, and `--limit 0` only counts.
    let (code, out, err) = d.cli(&["--json", "flows"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("reporting: flows --json printed {} bytes", out.len());
    assert!(
        out.len() < 1 << 20,
        "flows --json printed {} bytes",
        out.len()
    );
    let (code, out, err) = d.cli(&["flows", "--limit", "0"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    // "0 of N entries ...": N is every entry, counted.
    let words: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(words.get(..2), Some(&["0", "of"][..]), "{out}");
    let total: u64 = words[2].parse().unwrap_or_else(|_| panic!("{out}"));
    assert!(total >= u64::from(ENTRIES), "{out}");

    // The counts come from the background walk, which says how old they
    // are: a million clients spread over the three backends.
    let counted = wait_for(Duration::from_secs(10), || {
        let s = d.call(&Request::Status).unwrap();
        let clients: u64 = s["vips"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["clients"].as_u64().unwrap())
            .sum();
        s["clients_counted"]["entries"].as_u64() >= Some(u64::from(ENTRIES))
            && clients >= u64::from(ENTRIES)
    });
    let s = d.call(&Request::Status).unwrap();
    eprintln!("reporting: status says {}", s["clients_counted"]);
    assert!(counted, "{s}");
}
