//! A flood of spoofed SYNs must not evict real clients from the affinity
//! table. Real clients are pinned, a backend is drained (so its clients are
//! held by their entries alone: the table now sends newcomers elsewhere),
//! then SYNs from far more spoofed sources than the table holds, each sent
//! twice, are written from the client namespace as raw frames. Every real
//! client must still reach its backend. Needs root (CI is root).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use lb_user::control::Request;
use stickylb_tests::{
    daemon::{Daemon, topology_with_pin, with_affinity_capacity},
    netns::{Netns, VIP, backend_addr},
    traffic::sweep,
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 2";
/// The smallest table the daemon accepts; the flood has four times as many
/// sources.
const CAPACITY: u32 = 1024;
const SPOOFED: u32 = 4 * CAPACITY;

fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", dev]).unwrap();
    let text = out
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out:?}"));
    lb_user::config::parse_mac(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A SYN from a spoofed source (198.18.0.0/15, which nothing here routes)
/// to the VIP.
fn spoofed_syn(src_mac: [u8; 6], dst_mac: [u8; 6], i: u32) -> Vec<u8> {
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i);
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), VIP.octets(), 64)
        .tcp(40000 + (i % 20000) as u16, 80, i, 64240)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// Writes `frames` out of `dev` through a packet socket, in small bursts
/// so that no queue on the way (veth, bridge backlog) overflows.
fn send_raw(dev: &str, frames: &[Vec<u8>]) -> usize {
    let cdev = std::ffi::CString::new(dev).unwrap();
    // SAFETY: plain syscalls on a socket this function owns; the address
    // and frame buffers outlive each call.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        );
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = libc::if_nametoindex(cdev.as_ptr()) as i32;
        addr.sll_halen = 6;
        let mut sent = 0;
        for (n, f) in frames.iter().enumerate() {
            let r = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            if r == f.len() as isize {
                sent += 1;
            }
            if n % 32 == 31 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        libc::close(fd);
        sent
    }
}

#[test]
fn spoofed_syn_flood_moves_no_pinned_client() {
    let (topo, pin) = topology_with_pin(3, 50, BACKEND.as_ref()).unwrap();
    let config = with_affinity_capacity(
        &topo.config(
            &pin.0,
            HEALTH,
            "affinity_timeout = \"300s\"\ntable_size = 1021",
        ),
        CAPACITY,
    );
    let d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    let clients = topo.clients.clone();
    let first = sweep(&topo, &clients);
    assert!(first.iter().all(Option::is_some), "unanswered: {first:?}");

    // Drain backend 0: its clients stay, held only by their entries.
    let drained = 0;
    let backend = SocketAddr::V4(SocketAddrV4::new(backend_addr(drained), 80));
    d.call(&Request::BackendDrain {
        vip: "web".into(),
        backend,
        drained: true,
    })
    .unwrap();
    let held = first.iter().filter(|b| **b == Some(drained)).count();
    assert!(held > 0, "no client on backend {drained}: {first:?}");
    assert_eq!(sweep(&topo, &clients), first, "the drain moved clients");

    // The flood: each spoofed source twice in a row.
    let src_mac = mac_of(&topo.client, "eth0");
    let lb_mac = mac_of(&topo.lb, "eth0");
    let frames: Vec<Vec<u8>> = (0..SPOOFED)
        .flat_map(|i| {
            let f = spoofed_syn(src_mac, lb_mac, i);
            [f.clone(), f]
        })
        .collect();
    let before = d.vips().unwrap()[0].counters;
    let t = Instant::now();
    let sent = topo.client.enter(move || send_raw("eth0", &frames));
    let took = t.elapsed();
    // Let the last frames drain through the veths.
    std::thread::sleep(Duration::from_millis(200));
    let c = d.vips().unwrap()[0].counters.since(&before);
    let seen = c.packets + c.drop_no_backend;

    let after = sweep(&topo, &clients);
    let moved = first.iter().zip(&after).filter(|(a, b)| a != b).count();
    let moved_drained = first
        .iter()
        .zip(&after)
        .filter(|(a, b)| **a == Some(drained) && a != b)
        .count();
    println!(
        "flood: {sent} spoofed SYNs ({SPOOFED} sources × 2) in {} ms; the program forwarded \
         {} of them ({} new clients pinned) into an affinity table of {CAPACITY}; \
         real clients moved: {moved}/{} ({moved_drained}/{held} of the drained backend)",
        took.as_millis(),
        c.packets,
        c.new_clients,
        clients.len()
    );
    // Most of the flood must have reached the program for the test to mean
    // anything: more than the table holds.
    assert!(
        seen > u64::from(2 * CAPACITY),
        "only {seen} flood frames reached the program"
    );
    assert!(after.iter().all(Option::is_some), "unanswered: {after:?}");
    assert_eq!(moved, 0, "before {first:?}\nafter  {after:?}");
}
