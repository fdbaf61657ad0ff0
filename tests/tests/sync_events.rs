//! The XDP program's sync events (`SLB_SYNC_EVENTS`), driven by
//! BPF_PROG_TEST_RUN on the real object: which frames write an event, of
//! which kind, with which fields; that a hit writes none; that a full ring
//! costs an event, counted, never the frame. Needs root.

use std::{os::fd::AsRawFd, time::Duration};

use lb_common::{SyncEvent, coarse_secs, global_counter as gc, sync_kind};
use lb_user::dataplane::SyncEvents;
use stickylb_tests::{Rig, client, frame};

const XDP_TX: u32 = 3;

fn drain(events: &mut SyncEvents) -> Vec<SyncEvent> {
    let mut out = Vec::new();
    while events.drain(&mut out, 1024) == 1024 {}
    out
}

/// Whether the reader's fd polls readable right now.
fn readable(events: &SyncEvents) -> bool {
    poll_in(events.as_raw_fd(), 0)
}

/// Whether `fd` polls readable within `timeout_ms`.
fn poll_in(fd: std::os::fd::RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// A rig with sync on (refresh after `refresh`) and its reader.
fn rig(refresh: Duration) -> (Rig, SyncEvents) {
    let mut rig = Rig::new(3);
    let events = rig.dp.sync_events().expect("the ring's reader");
    rig.dp.set_sync(true, refresh).unwrap();
    (rig, events)
}

/// Sends a data segment of `c` (which pins a new client); its action.
fn data(rig: &mut Rig, c: [u8; 4]) -> u32 {
    rig.run(&frame::tcp_data(c, 40000)).0
}

#[test]
fn sync_off_writes_no_event() {
    let mut rig = Rig::new(3);
    let mut events = rig.dp.sync_events().unwrap();
    assert_eq!(rig.dp.sync_settings().unwrap().enabled, 0, "off at load");
    for i in 0..20 {
        assert_eq!(data(&mut rig, client(i)), XDP_TX);
    }
    assert_eq!(rig.counters().vip.new_clients, 20);
    assert!(drain(&mut events).is_empty());
    // Turned on, then off again.
    rig.dp.set_sync(true, Duration::from_secs(1)).unwrap();
    rig.dp.set_sync(false, Duration::from_secs(1)).unwrap();
    assert_eq!(data(&mut rig, client(100)), XDP_TX);
    assert!(drain(&mut events).is_empty());
    let again = rig.dp.sync_events().map(|_| ()).unwrap_err().to_string();
    assert!(again.contains("taken already"), "{again}");
}

#[test]
fn a_new_client_writes_one_new_event_and_hits_write_none() {
    let (mut rig, mut events) = rig(Duration::from_secs(30));
    // A bare SYN pins nothing, so announces nothing.
    let c = client(7);
    assert_eq!(rig.run(&frame::to_vip(c, 40000)).0, XDP_TX);
    assert!(drain(&mut events).is_empty());
    assert!(!readable(&events));

    let want = rig.predict(c).unwrap();
    // The program commits without waking the reader (BPF_RB_NO_WAKEUP: a
    // wake-up costs the packet's CPU µs), so a reader asleep on the fd
    // sleeps on until its timeout; the event is there for whoever looks.
    let fd = events.as_raw_fd();
    let sleeper = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        (poll_in(fd, 1500), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(data(&mut rig, c), XDP_TX);
    assert!(readable(&events), "the event is in the ring");
    let (seen, slept) = sleeper.join().unwrap();
    assert!(seen, "readable at the sleeper's timeout");
    assert!(
        slept >= Duration::from_millis(1400),
        "a reader asleep on the fd was woken after {slept:?}"
    );
    let got = drain(&mut events);
    let entry = rig.dp.affinity(&rig.affinity_key(c)).unwrap().unwrap();
    assert_eq!(
        got,
        vec![SyncEvent {
            key: rig.affinity_key(c),
            backend_id: want,
            kind: sync_kind::NEW,
            created_ns: entry.created_ns,
            last_seen_ns: entry.created_ns,
        }]
    );
    assert_eq!(entry.last_seen_ns, entry.created_ns);
    assert_eq!(entry.synced_s, coarse_secs(entry.created_ns), "announced");
    let now = stickylb_tests::monotonic_ns();
    assert!(entry.created_ns <= now && now - entry.created_ns < 5_000_000_000);

    for sport in 0..50 {
        assert_eq!(rig.run(&frame::tcp_data(c, 41000 + sport)).0, XDP_TX);
    }
    assert_eq!(rig.counters().vip.affinity_hits, 50);
    assert!(drain(&mut events).is_empty(), "a hit announces nothing");
    assert_eq!(rig.counters().global[gc::SYNC_EVENTS_LOST as usize], 0);
}

#[test]
fn a_repick_after_the_backend_died_writes_a_repick_event() {
    let (mut rig, mut events) = rig(Duration::from_secs(30));
    let c = client(9);
    assert_eq!(data(&mut rig, c), XDP_TX);
    let first = drain(&mut events);
    assert_eq!(first.len(), 1);
    let old = first[0].backend_id;
    rig.set_alive(old, false);
    assert_eq!(data(&mut rig, c), XDP_TX);
    assert_eq!(rig.counters().vip.repick_dead, 1);
    let got = drain(&mut events);
    let entry = rig.dp.affinity(&rig.affinity_key(c)).unwrap().unwrap();
    assert_ne!(entry.backend_id, old);
    assert_eq!(
        got,
        vec![SyncEvent {
            key: rig.affinity_key(c),
            backend_id: entry.backend_id,
            kind: sync_kind::REPICK,
            created_ns: entry.created_ns,
            last_seen_ns: entry.last_seen_ns,
        }]
    );
}

#[test]
fn a_busy_pin_is_refreshed_once_per_interval() {
    let (mut rig, mut events) = rig(Duration::from_secs(1));
    let c = client(11);
    assert_eq!(data(&mut rig, c), XDP_TX);
    let new = drain(&mut events);
    assert_eq!(new.len(), 1);
    // Past the coarse refresh (1 s) and the sync refresh (1 s).
    std::thread::sleep(Duration::from_millis(1300));
    for sport in 0..20 {
        assert_eq!(rig.run(&frame::tcp_data(c, 42000 + sport)).0, XDP_TX);
    }
    let got = drain(&mut events);
    let entry = rig.dp.affinity(&rig.affinity_key(c)).unwrap().unwrap();
    assert_eq!(
        got,
        vec![SyncEvent {
            key: rig.affinity_key(c),
            backend_id: new[0].backend_id,
            kind: sync_kind::REFRESH,
            created_ns: new[0].created_ns,
            last_seen_ns: entry.last_seen_ns,
        }],
        "exactly one refresh"
    );
    assert!(entry.last_seen_ns > new[0].last_seen_ns + 1_000_000_000);
    assert_eq!(entry.synced_s, coarse_secs(entry.last_seen_ns));

    // A refresh interval longer than the coarse one: the entry's last_seen
    // is refreshed after 1 s, but not announced again before 3 s.
    rig.dp.set_sync(true, Duration::from_secs(3)).unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(data(&mut rig, c), XDP_TX);
    let refreshed = rig.dp.affinity(&rig.affinity_key(c)).unwrap().unwrap();
    assert!(refreshed.last_seen_ns > entry.last_seen_ns);
    assert!(drain(&mut events).is_empty(), "announced less than 3 s ago");
}

#[test]
fn a_full_ring_counts_the_lost_event_and_forwards_the_frame() {
    let (mut rig, mut events) = rig(Duration::from_secs(30));
    // 40 bytes an event in the ring: a few more clients than fit.
    let fit = lb_common::SYNC_RING_BYTES / 40;
    let sent = fit + 100;
    for i in 0..sent {
        assert_eq!(data(&mut rig, client(1000 + i)), XDP_TX, "client {i}");
    }
    let c = rig.counters();
    assert_eq!(c.vip.new_clients, u64::from(sent), "every client pinned");
    assert_eq!(c.vip.packets, u64::from(sent), "every frame forwarded");
    let lost = c.global[gc::SYNC_EVENTS_LOST as usize];
    let got = drain(&mut events);
    println!(
        "ring of {} bytes: {} events read, {lost} lost",
        lb_common::SYNC_RING_BYTES,
        got.len()
    );
    assert_eq!(got.len() as u64 + lost, u64::from(sent));
    assert!(lost >= 100, "lost {lost}");
    assert!(got.iter().all(|e| e.kind == sync_kind::NEW));
    // An entry whose event was lost is not marked as announced, so that its
    // first refresh announces it.
    let last = rig
        .dp
        .affinity(&rig.affinity_key(client(1000 + sent - 1)))
        .unwrap()
        .unwrap();
    assert_eq!(last.synced_s, 0);
    // Drained, the ring takes events again.
    assert_eq!(data(&mut rig, client(999)), XDP_TX);
    assert_eq!(drain(&mut events).len(), 1);
}

/// Creates a map with the bpf(2) syscall and pins it at `path`, as a build
/// of another shape would have left it.
fn pin_raw_map(path: &std::path::Path, kind: u32, key: u32, value: u32, max_entries: u32) {
    // BPF_MAP_CREATE's attributes: type, key size, value size, max entries
    // (the rest zero).
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[kind, key, value, max_entries]);
    // SAFETY: a zero-padded bpf_attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, // BPF_MAP_CREATE
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(fd >= 0, "map create: {}", std::io::Error::last_os_error());
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // BPF_OBJ_PIN's attributes: the path's address, then the fd.
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    attr[1] = fd as u64;
    // SAFETY: as above; cpath outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6, // BPF_OBJ_PIN
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(rc, 0, "pin: {}", std::io::Error::last_os_error());
    // SAFETY: our fd; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn pins_of_a_build_without_sync_are_refused_with_fresh() {
    use lb_user::dataplane::{Dataplane, LoadOptions};
    stickylb_tests::require_root();
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/slb-sync-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    // The earlier build's global counters: a per-CPU array of 9.
    pin_raw_map(
        &dir.join(lb_common::map_names::GLOBAL_STATS),
        lb_common::map_shapes::kind::PERCPU_ARRAY,
        4,
        8,
        9,
    );
    let err = Dataplane::load(&LoadOptions {
        affinity_capacity: 4096,
        pin_dir: Some(dir.clone()),
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    println!("refused: {err}");
    assert!(
        err.contains("SLB_GLOBAL")
            && err.contains(&format!("9 entries instead of {}", gc::COUNT))
            && err.contains("--fresh"),
        "{err}"
    );
    assert!(
        !dir.join(lb_common::map_names::SYNC_EVENTS).exists(),
        "refused before anything was created"
    );
}
