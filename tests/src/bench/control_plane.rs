//! Control plane and stickiness quality: how long tables take to build and
//! write, how evenly clients spread, how many move when a backend changes
//! (against the ideal and against naive modulo hashing), and end-to-end
//! failover time at two health-check settings.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_common::{DEFAULT_HASH_SEED, client_hash, maglev};
use lb_user::{
    api::BackendState,
    dataplane::{Dataplane, LoadOptions},
};
use serde_json::json;

use super::{Ctx, Plot, Section, Table, median, plot, progress};
use crate::{
    daemon::{Daemon, PinGuard},
    netns::{Topology, TopologyOptions, wait_for},
    traffic::sweep,
};

const M: u32 = 65_537;

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:80", 1 + i / 65536, (i / 256) % 256, i % 256))
        .collect()
}

fn members(names: &[String]) -> Vec<maglev::Member<'_>> {
    names
        .iter()
        .map(|n| maglev::Member {
            identity: n.as_bytes(),
            weight: 1,
            in_service: true,
        })
        .collect()
}

/// Deterministic pseudo-random client addresses.
fn clients(n: usize) -> Vec<[u8; 4]> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u32).to_be_bytes()
        })
        .collect()
}

/// Backend index of each client under a table whose slots hold member
/// indices (identities compared, so tables over different member lists
/// compare).
fn assign<'a>(table: &[u32], m: &[maglev::Member<'a>], cs: &[[u8; 4]]) -> Vec<&'a [u8]> {
    cs.iter()
        .map(|c| m[table[(client_hash(*c, DEFAULT_HASH_SEED) % M) as usize] as usize].identity)
        .collect()
}

fn moved_fraction<T: PartialEq>(a: &[T], b: &[T]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let mut sec = Section {
        title: "Control plane and stickiness quality".into(),
        method: "Table build: `lb_common::maglev::build` in user space, median of 5. Slot writes: \
                 the changed slots written to the real `SLB_RING` map by `Dataplane::write_ring`, as the \
                 daemon does it (through the map's memory-mapped view), when one of N backends goes out \
                 of service, median of 5. Balance and disruption: \
                 pseudo-random client addresses hashed with the data path's own hash into the table \
                 user space builds, exactly as the XDP program picks (no affinity table: this is what \
                 new clients see). Modulo: `hash % N`, what a naive sticky balancer does. Failover: \
                 the namespace test network with the real daemon, a backend's server killed; time \
                 until the daemon marks it down, and until each of its clients is answered by \
                 another backend."
            .into(),
        ..Default::default()
    };

    // Build and write times.
    let sizes: &[usize] = if ctx.quick {
        &[10, 100]
    } else {
        &[10, 100, 1000]
    };
    let mut dp = Dataplane::load(&LoadOptions {
        affinity_capacity: 1024,
        pin_dir: None,
    })
    .map_err(|e| format!("{e:#}"))?;
    let mut t = Table {
        title: format!("Maglev table of {M} slots"),
        headers: [
            "backends",
            "build (ms)",
            "slots changed by one backend down",
            "write changed slots (µs)",
            "ns per slot",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let mut build_json = Vec::new();
    for &n in sizes {
        progress(format!("control plane: Maglev build/write, N = {n}"));
        let nm = names(n);
        let m = members(&nm);
        let mut builds: Vec<f64> = (0..5)
            .map(|_| {
                let t0 = Instant::now();
                maglev::build(&m, M).expect("prime");
                t0.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let full = maglev::build(&m, M).unwrap();
        dp.write_ring(0, full.iter().enumerate().map(|(i, &v)| (i as u32, v)))
            .map_err(|e| format!("{e:#}"))?;
        let mut down = m.clone();
        down[n / 2].in_service = false;
        let less = maglev::build(&down, M).unwrap();
        let changed: Vec<(u32, u32)> = maglev::changed_slots(&full, &less).collect();
        let mut writes = Vec::new();
        for k in 0..5 {
            // Alternate so every write really changes the slots.
            let (from, to) = if k % 2 == 0 {
                (&full, &less)
            } else {
                (&less, &full)
            };
            let diff: Vec<(u32, u32)> = maglev::changed_slots(from, to).collect();
            let t0 = Instant::now();
            dp.write_ring(0, diff).map_err(|e| format!("{e:#}"))?;
            writes.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let b = median(&mut builds);
        let w = median(&mut writes);
        t.rows.push(vec![
            n.to_string(),
            format!("{b:.2}"),
            changed.len().to_string(),
            format!("{:.1}", w * 1e3),
            format!("{:.1}", w * 1e6 / changed.len() as f64),
        ]);
        build_json.push(
            json!({"backends": n, "build_ms": b, "changed_slots": changed.len(), "write_ms": w}),
        );
    }
    sec.tables.push(t);

    // Balance over many clients.
    let n_clients = if ctx.quick { 100_000 } else { 1_000_000 };
    let cs = clients(n_clients);
    let mut bal = Table {
        title: format!("Balance: {n_clients} random client addresses"),
        headers: [
            "backends",
            "max/avg clients per backend (Maglev)",
            "max/avg (modulo)",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let mut balance_json = Vec::new();
    for n in [10usize, 100] {
        let nm = names(n);
        let m = members(&nm);
        let table = maglev::build(&m, M).unwrap();
        let mut per = vec![0usize; n];
        let mut per_mod = vec![0usize; n];
        for c in &cs {
            let h = client_hash(*c, DEFAULT_HASH_SEED);
            per[table[(h % M) as usize] as usize] += 1;
            per_mod[h as usize % n] += 1;
        }
        let avg = n_clients as f64 / n as f64;
        let mx = *per.iter().max().unwrap() as f64 / avg;
        let mm = *per_mod.iter().max().unwrap() as f64 / avg;
        bal.rows
            .push(vec![n.to_string(), format!("{mx:.3}"), format!("{mm:.3}")]);
        balance_json.push(json!({"backends": n, "max_over_avg": mx, "modulo_max_over_avg": mm}));
    }
    sec.tables.push(bal);

    // Disruption.
    let mut dis = Table {
        title: "Clients moved by one backend change (no affinity table)".into(),
        headers: [
            "backends",
            "ideal (1/N)",
            "out of service (dead/drained)",
            "back in service",
            "removed from config",
            "added to config",
            "modulo: removed",
            "modulo: added",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let mut dis_json = Vec::new();
    let mut plot_data = Vec::new();
    for n in [10usize, 100] {
        progress(format!("control plane: disruption, N = {n}"));
        let nm = names(n + 1);
        let all = members(&nm);
        let base = &all[..n];
        let t_n = maglev::build(base, M).unwrap();
        let a_n = assign(&t_n, base, &cs);
        let mut out = base.to_vec();
        out[n / 2].in_service = false;
        let t_out = maglev::build(&out, M).unwrap();
        let a_out = assign(&t_out, &out, &cs);
        let removed: Vec<maglev::Member<'_>> = base
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != n / 2)
            .map(|(_, m)| m.clone())
            .collect();
        let t_rm = maglev::build(&removed, M).unwrap();
        let a_rm = assign(&t_rm, &removed, &cs);
        let t_add = maglev::build(&all, M).unwrap();
        let a_add = assign(&t_add, &all, &cs);
        let hashes: Vec<u32> = cs
            .iter()
            .map(|c| client_hash(*c, DEFAULT_HASH_SEED))
            .collect();
        // Modulo over the backend list with one removed (its neighbours shift).
        let idx_rm = |h: u32| {
            let i = h as usize % (n - 1);
            if i >= n / 2 { i + 1 } else { i }
        };
        let mod_n: Vec<usize> = hashes.iter().map(|&h| h as usize % n).collect();
        let mod_rm: Vec<usize> = hashes.iter().map(|&h| idx_rm(h)).collect();
        let mod_add: Vec<usize> = hashes.iter().map(|&h| h as usize % (n + 1)).collect();
        let f = |x: f64| format!("{:.2}%", x * 100.0);
        let ideal = 1.0 / n as f64;
        let row = [
            moved_fraction(&a_n, &a_out),
            moved_fraction(&a_out, &a_n),
            moved_fraction(&a_n, &a_rm),
            moved_fraction(&a_n, &a_add),
            moved_fraction(&mod_n, &mod_rm),
            moved_fraction(&mod_n, &mod_add),
        ];
        dis.rows.push(
            [n.to_string(), f(ideal)]
                .into_iter()
                .chain(row.iter().map(|&x| f(x)))
                .collect(),
        );
        plot_data.push((format!("N={n} ideal (1/N)"), ideal * 100.0));
        plot_data.push((format!("N={n} stickylb: backend down"), row[0] * 100.0));
        plot_data.push((
            format!("N={n} stickylb: removed from config"),
            row[2] * 100.0,
        ));
        plot_data.push((format!("N={n} modulo: one removed"), row[4] * 100.0));
        dis_json.push(json!({
            "backends": n, "ideal": ideal, "out_of_service": row[0], "back_in_service": row[1],
            "removed_from_config": row[2], "added_to_config": row[3],
            "modulo_removed": row[4], "modulo_added": row[5],
        }));
        if n == 100 {
            sec.headlines.push(format!(
                "Disruption (N=100, new clients): a backend going down moves {} of clients (ideal {}), naive modulo moves {}",
                f(row[0]),
                f(ideal),
                f(row[4])
            ));
        }
    }
    sec.tables.push(dis);
    sec.plots.push(Plot {
        file: "bench-disruption.svg".into(),
        svg: plot::bars("Clients moved by one backend change (%)", "%", &plot_data),
        caption: "Clients moved when one backend changes: stickylb's table vs naive modulo".into(),
    });

    // Failover, end to end.
    let settings: Vec<(&str, &str)> = vec![
        ("default (tcp, interval 1s, timeout 500ms, fall 3)", ""),
        (
            "aggressive (tcp, interval 100ms, timeout 50ms, fall 2)",
            "interval = \"100ms\"\ntimeout = \"50ms\"\nfall = 2\nrise = 2",
        ),
    ];
    let mut fo = Table {
        title: "Failover: a backend's server killed, 60 clients".into(),
        headers: [
            "health checks",
            "marked down after (ms)",
            "all its clients served elsewhere after (ms)",
            "other clients moved",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let mut fo_json = Vec::new();
    for (label, health) in settings {
        progress(format!("control plane: failover, {label}"));
        let (down, moved, others) = failover_once(ctx, health)?;
        fo.rows.push(vec![
            label.into(),
            down.to_string(),
            moved.to_string(),
            others.to_string(),
        ]);
        fo_json.push(json!({"health": label, "detect_ms": down, "clients_moved_ms": moved, "others_moved": others}));
        sec.headlines.push(format!("Failover at {label} health checks: marked down after {down} ms, clients served elsewhere after {moved} ms"));
    }
    sec.tables.push(fo);
    sec.json = json!({"build_write": build_json, "balance": balance_json, "disruption": dis_json, "failover": fo_json});
    Ok(sec)
}

/// One failover on a fresh test network: (ms to mark down, ms until every
/// client of the killed backend is served elsewhere, other clients moved).
fn failover_once(ctx: &Ctx, health: &str) -> Result<(u128, u128, usize), String> {
    let mut topo = Topology::up(
        &TopologyOptions {
            backends: 3,
            clients: 60,
            redis: None,
        },
        &ctx.backend_bin,
    )?;
    let pin = PinGuard(topo.daemon_pin());
    let config = topo.config(&pin.0, health, "");
    let mut d = Daemon::start(&topo, &ctx.stickylb_bin, &config, &[])?;
    if !d.wait_backends(Duration::from_secs(8), |s, _| s == BackendState::Up) {
        return Err(format!("backends not up:\n{}", d.log_text()));
    }
    let clients = topo.clients.clone();
    let before = sweep(&topo, &clients);
    let theirs: Vec<Ipv4Addr> = clients
        .iter()
        .zip(&before)
        .filter(|(_, b)| **b == Some(1))
        .map(|(c, _)| *c)
        .collect();
    let t0 = Instant::now();
    topo.kill_server(1);
    if !wait_for(Duration::from_secs(10), || {
        d.vips()
            .is_ok_and(|v| v[0].backends[1].state == BackendState::Down)
    }) {
        return Err("backend not marked down".into());
    }
    let down = t0.elapsed().as_millis();
    if !wait_for(Duration::from_secs(10), || {
        sweep(&topo, &theirs)
            .iter()
            .all(|b| b.is_some_and(|b| b != 1))
    }) {
        return Err("clients did not move".into());
    }
    let moved = t0.elapsed().as_millis();
    let after = sweep(&topo, &clients);
    let others = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != Some(1) && a != b)
        .count();
    d.stop()?;
    Ok((down, moved, others))
}
