//! `stickylb decap` for real: a backend namespace whose eth0 runs the decap
//! program, and a load balancer's namespace on the same link sending it
//! IP-in-IP and GUE frames (built here: this kernel has no tunnel
//! modules). Attach, status, update in place, end to end delivery to a UDP
//! socket on the VIP, the spoofed source that reaches no socket, check,
//! detach. Needs root (CI is root).
//!
//! ```text
//!   <id>-lb eth0 10.78.0.1/24 (an accepted LB)  ---veth---  <id>-be eth0 10.78.0.2/24
//!              10.78.0.66/24 (a stranger)                  lo: VIP 10.78.100.1/32
//! ```

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use stickylb_tests::{
    decap::inner_udp,
    netns::{Netns, Reaper, vip_on_loopback},
    require_root,
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");

const LB: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 66);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 78, 100, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const VIP_PORT: u16 = 5353;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The two namespaces and a pin folder, all removed on drop (and by the
/// reaper if this process dies first).
struct Bed {
    lb: Netns,
    be: Netns,
    pin_dir: PathBuf,
    _reaper: Reaper,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Unlinking the link's pin detaches the program.
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

impl Bed {
    fn up() -> Self {
        require_root();
        let id = format!(
            "dc{}-{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/slb-test-{id}"));
        let reaper = Reaper::spawn(&id, &[&pin_dir]).unwrap();
        let lb = Netns::new(&format!("{id}-lb")).unwrap();
        let be = Netns::new(&format!("{id}-be")).unwrap();
        let bed = Self {
            lb,
            be,
            pin_dir,
            _reaper: reaper,
        };
        bed.lb.add_veth("eth0", &bed.be, "eth0").unwrap();
        for a in [LB, STRANGER] {
            bed.lb
                .ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"])
                .unwrap();
        }
        bed.be
            .ip(&["addr", "add", &format!("{BACKEND}/24"), "dev", "eth0"])
            .unwrap();
        bed.lb.ip(&["link", "set", "eth0", "up"]).unwrap();
        bed.be.ip(&["link", "set", "eth0", "up"]).unwrap();
        // The way back to clients, as a backend has (and what a strict
        // rp_filter looks at).
        bed.be
            .ip(&["route", "add", "default", "via", &LB.to_string()])
            .unwrap();
        bed
    }

    /// `stickylb decap <args> --pin-dir <ours>` in the backend namespace:
    /// exit code, stdout, stderr.
    fn decap(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .be
            .command(STICKYLB)
            .arg("decap")
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn decap_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.decap(args);
        assert_eq!(code, 0, "stickylb decap {args:?}: {out}{err}");
        out
    }

    fn attach(&self, allow: &[&str]) -> String {
        let mut args = vec!["attach", "--interface", "eth0"];
        for a in allow {
            args.extend(["--allow", a]);
        }
        self.decap_ok(&args)
    }

    /// `status --json` of eth0.
    fn status(&self) -> serde_json::Value {
        let out = self.decap_ok(&["status", "--interface", "eth0", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["interfaces"][0].clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap()
    }

    fn pins(&self) -> PathBuf {
        self.pin_dir.join("eth0")
    }

    /// Whether the backend's eth0 has an XDP program.
    fn xdp_on_backend(&self) -> bool {
        self.be
            .ip(&["link", "show", "eth0"])
            .unwrap()
            .contains("xdp")
    }

    /// A UDP socket on VIP:5353 in the backend namespace.
    fn vip_socket(&self) -> UdpSocket {
        self.be.enter(|| {
            let s = UdpSocket::bind(SocketAddrV4::new(VIP, VIP_PORT)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
    }

    /// Sends the client's datagram `payload` to the VIP, IP-in-IP from
    /// `src` (an address of the LB namespace) to the backend.
    fn send_ipip(&self, src: Ipv4Addr, payload: &[u8]) {
        let inner = inner_udp(CLIENT, VIP, VIP_PORT, payload);
        self.lb.enter(move || {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(4))).unwrap();
            s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())
                .unwrap();
            s.send_to(
                &inner,
                &SocketAddr::V4(SocketAddrV4::new(BACKEND, 0)).into(),
            )
            .unwrap();
        });
    }

    /// The same as GUE (variant 1: the inner packet right after UDP) to
    /// the backend's port 6080.
    fn send_gue(&self, src: Ipv4Addr, payload: &[u8]) {
        let inner = inner_udp(CLIENT, VIP, VIP_PORT, payload);
        self.lb.enter(move || {
            let s = UdpSocket::bind(SocketAddrV4::new(src, 0)).unwrap();
            s.send_to(&inner, SocketAddrV4::new(BACKEND, 6080)).unwrap();
        });
    }
}

/// Datagrams that reach `sock` within its timeout, until one does not.
fn received(sock: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        out.push((buf[..n].to_vec(), from));
    }
    out
}

fn from_client(payload: &[u8]) -> Vec<(Vec<u8>, SocketAddr)> {
    vec![(
        payload.to_vec(),
        SocketAddr::V4(SocketAddrV4::new(CLIENT, 40000)),
    )]
}

#[test]
fn attach_status_update_in_place_and_detach() {
    let bed = Bed::up();
    let out = bed.attach(&[&LB.to_string()]);
    assert!(
        out.starts_with("attached the decap program on eth0"),
        "{out}"
    );
    assert!(bed.xdp_on_backend());
    let pins: Vec<String> = fs::read_dir(bed.pins())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        pins,
        ["SLB_DECAP_CFG", "SLB_DECAP_SRC", "SLB_DECAP_STATS", "link"]
    );

    let text = bed.decap_ok(&["status"]);
    assert!(text.contains("eth0: attached in "), "{text}");
    assert!(
        text.contains("accepts:  ip-in-ip, gue on UDP port 6080 to 10.78.0.2"),
        "{text}"
    );
    assert!(text.contains("from:     10.78.0.1/32"), "{text}");
    let st = bed.status();
    assert_eq!(st["attached"], true);
    assert_eq!(st["settings"]["address"], BACKEND.to_string());
    assert_eq!(
        st["settings"]["sources"],
        serde_json::json!(["10.78.0.1/32"])
    );
    assert_eq!(st["settings"]["gue_port"], 6080);
    let link_id = st["link_id"].as_u64().unwrap();
    let program_id = st["program_id"].as_u64().unwrap();

    // Another LB: rewritten in place, the same link and program.
    let out = bed.attach(&["10.78.0.0/28", "192.0.2.1"]);
    assert!(
        out.starts_with("updated in place the decap program on eth0"),
        "{out}"
    );
    let st = bed.status();
    assert_eq!(st["link_id"].as_u64(), Some(link_id));
    assert_eq!(st["program_id"].as_u64(), Some(program_id));
    assert_eq!(
        st["settings"]["sources"],
        serde_json::json!(["10.78.0.0/28", "192.0.2.1/32"])
    );
    // And the settings: GUE off now.
    bed.decap_ok(&["attach", "-i", "eth0", "--allow", "10.78.0.1", "--no-gue"]);
    let st = bed.status();
    assert_eq!(st["link_id"].as_u64(), Some(link_id));
    assert_eq!(st["settings"]["gue_port"], serde_json::Value::Null);
    assert_eq!(
        st["settings"]["sources"],
        serde_json::json!(["10.78.0.1/32"])
    );

    let out = bed.decap_ok(&["detach", "--interface", "eth0"]);
    assert!(
        out.starts_with("detached the decap program from eth0; removed 4 pins"),
        "{out}"
    );
    assert!(!bed.xdp_on_backend());
    assert!(!bed.pins().exists());
    assert!(
        !bed.pin_dir.exists(),
        "the emptied pin folder is removed too"
    );
    // Nothing attached: said, and no failure.
    let out = bed.decap_ok(&["detach", "--interface", "eth0"]);
    assert!(out.starts_with("not attached to eth0"), "{out}");
    let st = bed.status();
    assert_eq!(st["attached"], false);
}

/// What an upgrade looks like: the pinned link runs another program (here
/// the load balancer's, standing in for an older build's decap). `attach`
/// puts this build's into the same link, on the same maps.
#[test]
fn attach_puts_this_builds_program_into_the_pinned_link() {
    use aya::programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    };
    let bed = Bed::up();
    vip_on_loopback(&bed.be, VIP).unwrap();
    bed.attach(&[&LB.to_string()]);
    let link_id = bed.status()["link_id"].as_u64().unwrap();
    let mut other = aya::EbpfLoader::new()
        .map_max_entries(lb_common::map_names::AFFINITY, 1024)
        .load(lb_user::XDP_OBJECT)
        .unwrap();
    let prog: &mut Xdp = other
        .program_mut(lb_common::PROGRAM_NAME)
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    let pinned = PinnedLink::from_pin(bed.pins().join("link")).unwrap();
    let id = prog
        .attach_to_link(XdpLink::try_from(FdLink::from(pinned)).unwrap())
        .unwrap();
    drop(prog.take_link(id));
    let name_of = |id: u64| {
        aya::programs::loaded_programs()
            .flatten()
            .find(|p| u64::from(p.id()) == id)
            .and_then(|p| p.name_as_str().map(str::to_owned))
    };
    let st = bed.status();
    assert_eq!(st["attached"], true);
    assert_eq!(
        name_of(st["program_id"].as_u64().unwrap()).as_deref(),
        Some("stickylb")
    );

    let (code, out, err) = bed.decap(&["attach", "-i", "eth0", "--allow", &LB.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("updated in place"), "{out}");
    assert!(
        err.contains("replaced by this one's in the same link"),
        "{err}"
    );
    let st = bed.status();
    assert_eq!(st["link_id"].as_u64(), Some(link_id));
    assert_eq!(
        name_of(st["program_id"].as_u64().unwrap()).as_deref(),
        Some("stickylb_decap")
    );
    // On the same maps: what the status reads is what the program uses.
    let sock = bed.vip_socket();
    bed.send_ipip(LB, b"after the upgrade");
    assert_eq!(received(&sock), from_client(b"after the upgrade"));
    assert_eq!(bed.counter("decap_ipip"), 1);

    // The same build again: nothing to replace.
    let (_, _, err) = bed.decap(&["attach", "-i", "eth0", "--allow", &LB.to_string()]);
    assert!(!err.contains("replaced"), "{err}");
}

#[test]
fn attach_refuses_an_interface_with_another_xdp_program() {
    let bed = Bed::up();
    // The load balancer's own program, attached by hand.
    let pin = bed.pin_dir.join("lb-link");
    fs::create_dir_all(&bed.pin_dir).unwrap();
    let path = bed.be.path();
    let pin2 = pin.clone();
    std::thread::spawn(move || {
        stickylb_tests::netns::enter_path(&path);
        let mut dp = lb_user::dataplane::Dataplane::load(&Default::default()).unwrap();
        dp.attach_pinned("eth0", lb_user::dataplane::AttachMode::Skb, None, &pin2)
            .unwrap();
    })
    .join()
    .unwrap();
    let (code, out, err) = bed.decap(&["attach", "-i", "eth0", "--allow", "10.78.0.1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("eth0 already has an XDP program attached in skb mode"),
        "{err}"
    );
    assert!(err.contains("stickylb's load balancer"), "{err}");
    assert!(!bed.pins().exists(), "a refused attach pins nothing");
    fs::remove_file(&pin).unwrap();
}

/// Both namespaces have an eth0: pins made for one are not taken for the
/// other's, whatever the interface indices.
#[test]
fn pins_of_another_namespaces_interface_are_not_adopted() {
    let bed = Bed::up();
    bed.attach(&[&LB.to_string()]);
    let in_lb = |args: &[&str]| {
        let out = bed
            .lb
            .command(STICKYLB)
            .arg("decap")
            .args(args)
            .arg("--pin-dir")
            .arg(&bed.pin_dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = in_lb(&["attach", "-i", "eth0", "--allow", "10.78.0.2"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("not to eth0 here"), "{err}");
    let (code, out, err) = in_lb(&["detach", "-i", "eth0"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let (code, out, _) = in_lb(&["status", "-i", "eth0"]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("eth0: not attached (the pinned link is attached to interface #"),
        "{out}"
    );
    // The backend's is untouched.
    let st = bed.status();
    assert_eq!(st["attached"], true);
    assert_eq!(
        st["settings"]["sources"],
        serde_json::json!(["10.78.0.1/32"])
    );
    assert!(
        !bed.lb
            .ip(&["link", "show", "eth0"])
            .unwrap()
            .contains("xdp")
    );
}

#[test]
fn ipip_and_gue_from_a_load_balancer_reach_the_vip_socket() {
    delivered_in("driver");
}

/// Generic XDP hands the stack the skb the program shortened: the same.
#[test]
fn ipip_and_gue_reach_the_vip_socket_in_skb_mode_too() {
    delivered_in("skb");
}

fn delivered_in(mode: &str) {
    let bed = Bed::up();
    vip_on_loopback(&bed.be, VIP).unwrap();
    bed.decap_ok(&[
        "attach",
        "-i",
        "eth0",
        "--allow",
        &LB.to_string(),
        "--xdp-mode",
        mode,
    ]);
    assert_eq!(bed.status()["mode"], mode);
    let sock = bed.vip_socket();

    bed.send_ipip(LB, b"through ip-in-ip");
    assert_eq!(received(&sock), from_client(b"through ip-in-ip"));
    assert_eq!(bed.counter("decap_ipip"), 1);

    bed.send_gue(LB, b"through gue");
    assert_eq!(received(&sock), from_client(b"through gue"));
    assert_eq!(bed.counter("decap_gue"), 1);
    assert_eq!(bed.counter("reject_source"), 0);
}

/// The issue's "a spoofed tunnel packet from a non-LB address reaches no
/// backend socket": the same frames from an address that is not an
/// accepted load balancer are dropped and counted, and the socket on the
/// VIP gets nothing; from the LB the next one still arrives.
#[test]
fn a_spoofed_tunnel_packet_from_a_non_lb_address_reaches_no_backend_socket() {
    let bed = Bed::up();
    vip_on_loopback(&bed.be, VIP).unwrap();
    bed.attach(&[&LB.to_string()]);
    let sock = bed.vip_socket();

    bed.send_ipip(STRANGER, b"spoofed ip-in-ip");
    bed.send_gue(STRANGER, b"spoofed gue");
    assert_eq!(received(&sock), []);
    assert_eq!(bed.counter("reject_source"), 2);
    assert_eq!(bed.counter("decap_ipip") + bed.counter("decap_gue"), 0);

    bed.send_ipip(LB, b"genuine");
    assert_eq!(received(&sock), from_client(b"genuine"));
}

#[test]
fn check_names_each_missing_prerequisite_with_its_fix() {
    let bed = Bed::up();
    let check = |vip: &str| bed.decap(&["check", "--interface", "eth0", "--vip", vip]);
    // Nothing set up yet.
    let (code, out, _) = check(&VIP.to_string());
    assert_eq!(code, 1, "{out}");
    for want in [
        "FAIL  decap: the decap program is not attached to eth0",
        "FAIL  vip 10.78.100.1 on lo",
        "fix: ip addr add 10.78.100.1/32 dev lo",
        "fix: sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1",
        "fix: sysctl -w net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.eth0.arp_announce=2",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }

    vip_on_loopback(&bed.be, VIP).unwrap();
    bed.attach(&[&LB.to_string()]);
    let (code, out, _) = check(&VIP.to_string());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("backend ready for tunnelled traffic\n"),
        "{out}"
    );

    // A second VIP that is not on lo: only it fails, with its fix.
    let (code, out, _) = check("10.78.100.2");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("fix: ip addr add 10.78.100.2/32 dev lo"),
        "{out}"
    );
    assert!(out.ends_with("1 check failed\n"), "{out}");
    let out = bed
        .decap(&["check", "-i", "eth0", "--vip", "10.78.100.2", "--json"])
        .1;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    let failed: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "fail")
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["vip 10.78.100.2 on lo"]);
}
