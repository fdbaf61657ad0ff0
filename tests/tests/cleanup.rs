//! A test network whose owner dies without unwinding (Ctrl-C, kill -9) is
//! removed anyway: namespaces, the processes in them, pinned programs and
//! maps, the scratch folder. `slb-netns hold` builds the network (daemon
//! included) and handles no signal, so only the topology's cleanup watcher
//! can remove it.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use stickylb_tests::{
    netns::{TopologyPaths, namespaces_of, pids_in, remove_leftovers, wait_for},
    require_root,
};

const NETNS: &str = env!("CARGO_BIN_EXE_slb-netns");

/// Everything a held network leaves behind if nobody cleans up.
struct Leftovers {
    id: String,
    paths: Vec<PathBuf>,
}

impl Leftovers {
    fn new(id: &str) -> Self {
        let TopologyPaths {
            peer_pin,
            daemon_pin,
            tmp,
            daemon_record,
        } = TopologyPaths::of(id);
        Self {
            id: id.into(),
            paths: vec![daemon_pin, peer_pin, tmp, daemon_record],
        }
    }

    fn present(&self) -> (Vec<String>, Vec<&PathBuf>) {
        (
            namespaces_of(&self.id).expect("ip netns list"),
            self.paths.iter().filter(|p| p.exists()).collect(),
        )
    }
}

/// If the watcher failed, the test still leaves nothing behind.
impl Drop for Leftovers {
    fn drop(&mut self) {
        let paths: Vec<&Path> = self.paths.iter().map(PathBuf::as_path).collect();
        remove_leftovers(&self.id, &paths);
    }
}

fn held_network_is_removed_when_its_owner_dies(signal: i32, name: &str) {
    let mut child = Command::new(NETNS)
        .arg("hold")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start slb-netns hold");
    let mut line = String::new();
    // Kept open until the end: a closed pipe would make its next print fail,
    // and it would exit by itself, tidily, before the signal.
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    out.read_line(&mut line)
        .expect("read slb-netns hold's output");
    let Some(id) = line.trim().strip_prefix("ready ") else {
        let _ = child.kill();
        let status = child.wait();
        panic!("slb-netns hold did not bring the network up ({status:?}): {line:?}");
    };
    let left = Leftovers::new(id);
    let (namespaces, paths) = left.present();
    assert!(
        namespaces.len() >= 6,
        "{id}: expected bridge, client, LB and 3 backend namespaces, found {namespaces:?}"
    );
    assert_eq!(
        paths.len(),
        left.paths.len(),
        "daemon pins, peer pins, scratch folder and the daemon's runtime record should exist: \
         {paths:?}"
    );
    // The daemon, the backends' servers: what must not outlive the network.
    let pids: Vec<u32> = namespaces
        .iter()
        .flat_map(|n| pids_in(n).expect("ip netns pids"))
        .collect();
    assert!(
        pids.len() >= 4,
        "{id}: expected the daemon and 3 backend servers, found pids {pids:?}"
    );

    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let status = child.wait().expect("wait for slb-netns hold");
    assert_eq!(
        status.signal(),
        Some(signal),
        "slb-netns hold should have been ended by {name}, not {status}"
    );
    let t0 = Instant::now();
    // A killed process stays a zombie until whoever adopted it reaps it,
    // which is not this test's business: zombies count as gone.
    let alive = |pids: &[u32]| -> Vec<u32> {
        pids.iter()
            .copied()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
                })
            })
            .collect()
    };
    let gone = wait_for(Duration::from_secs(15), || {
        let (n, p) = left.present();
        n.is_empty() && p.is_empty() && alive(&pids).is_empty()
    });
    println!(
        "cleanup after {name}: {} namespaces, {} processes in them, {} pinned/scratch \
         folders and records of {id} removed {} ms after its owner died",
        namespaces.len(),
        pids.len(),
        paths.len(),
        t0.elapsed().as_millis()
    );
    assert!(
        gone,
        "left behind after {name}: {:?}, processes {:?}",
        left.present(),
        alive(&pids)
    );
    drop(out);
}

#[test]
fn network_is_removed_after_ctrl_c_and_kill_9() {
    require_root();
    held_network_is_removed_when_its_owner_dies(libc::SIGINT, "SIGINT (Ctrl-C)");
    held_network_is_removed_when_its_owner_dies(libc::SIGKILL, "SIGKILL");
}
