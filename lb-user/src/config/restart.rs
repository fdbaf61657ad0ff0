//! The global fields a running daemon cannot change: they name what it is
//! attached to, where its state and sockets live, how big its maps are and
//! how it hashes, all fixed when it starts. Listed once, here, for both the
//! reload report (what changed) and the reload itself (what it keeps).

use super::Config;

/// One restart-only field: its name in the file, and how to compare and
/// copy it.
struct RestartOnly {
    name: &'static str,
    differs: fn(&Config, &Config) -> bool,
    keep: fn(&mut Config, &Config),
}

/// Builds the table from the field names, so a field's name, comparison and
/// copy cannot disagree.
macro_rules! restart_only {
    ($($field:ident),* $(,)?) => {
        [$(RestartOnly {
            name: stringify!($field),
            differs: |old, new| old.$field != new.$field,
            keep: |new, running| new.$field.clone_from(&running.$field),
        }),*]
    };
}

/// In the order the reload report lists them.
const RESTART_ONLY: [RestartOnly; 8] = restart_only!(
    interface,
    xdp_mode,
    pin_path,
    control_socket,
    metrics_listen,
    affinity_capacity,
    hash_seed,
    sync,
);

impl Config {
    /// The restart-only fields whose values differ in `new`, by name.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        RESTART_ONLY
            .iter()
            .filter(|f| (f.differs)(self, new))
            .map(|f| f.name)
            .collect()
    }

    /// Sets every restart-only field to its value in `running`, so that a
    /// reload applies the rest of a file and leaves these for a restart.
    pub fn keep_restart_only_fields(&mut self, running: &Config) {
        for f in &RESTART_ONLY {
            (f.keep)(self, running);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{XdpModeSetting, testutil::*};

    type Change = fn(&mut Config);

    /// Each restart-only field with a change to it. Destructuring `Config`
    /// without `..` makes a new field fail to compile here until someone
    /// decides whether a reload can apply it.
    fn changes() -> Vec<(&'static str, Change)> {
        let Config {
            interface: _,
            xdp_mode: _,
            pin_path: _,
            control_socket: _,
            metrics_listen: _,
            affinity_capacity: _,
            hash_seed: _,
            sync: _,
            // Applied by a reload.
            announce: _,
            health: _,
            tunnel: _,
            vips: _,
        } = parse(MINIMAL);
        vec![
            ("interface", |c| c.interface = "eth1".into()),
            ("xdp_mode", |c| c.xdp_mode = XdpModeSetting::Skb),
            ("pin_path", |c| c.pin_path = "/sys/fs/bpf/other".into()),
            ("control_socket", |c| {
                c.control_socket = "/run/other.sock".into();
            }),
            ("metrics_listen", |c| c.metrics_listen = None),
            ("affinity_capacity", |c| c.affinity_capacity *= 2),
            ("hash_seed", |c| c.hash_seed ^= 1),
            ("sync", |c| {
                c.sync = Some(crate::config::SyncConfig {
                    listen: "10.0.0.1:7946".parse().unwrap(),
                    peers: vec![],
                    key_file: "/k".into(),
                    max_rate: 1,
                    max_queue: 1,
                    batch: 1,
                    flush_interval: std::time::Duration::from_millis(1),
                    refresh_interval: std::time::Duration::from_secs(1),
                    join_timeout: std::time::Duration::from_secs(1),
                });
            }),
        ]
    }

    #[test]
    fn every_restart_only_field_is_listed_in_order() {
        let names: Vec<&str> = RESTART_ONLY.iter().map(|f| f.name).collect();
        let expected: Vec<&str> = changes().iter().map(|(name, _)| *name).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn each_field_is_detected_alone() {
        let running = parse(MINIMAL);
        assert_eq!(running.restart_only_changes(&running), Vec::<&str>::new());
        for (name, change) in changes() {
            let mut new = running.clone();
            change(&mut new);
            assert_ne!(new, running, "{name}: the change must change something");
            assert_eq!(running.restart_only_changes(&new), [name]);
            assert_eq!(new.restart_only_changes(&running), [name]);
        }
    }

    #[test]
    fn reloadable_changes_are_not_restart_only() {
        let running = parse(MINIMAL);
        let mut new = running.clone();
        new.health.rise += 1;
        new.vips[0].backends[0].weight = 7;
        new.vips[0].name = "renamed".into();
        assert_eq!(running.restart_only_changes(&new), Vec::<&str>::new());
    }

    #[test]
    fn keep_copies_every_field_and_nothing_else() {
        let running = parse(MINIMAL);
        let mut new = running.clone();
        for (_, change) in changes() {
            change(&mut new);
        }
        new.vips[0].backends[0].weight = 7;
        new.health.rise += 1;
        assert_eq!(running.restart_only_changes(&new).len(), RESTART_ONLY.len());

        let mut kept = new.clone();
        kept.keep_restart_only_fields(&running);
        // The running globals, and what a reload applies from the new file.
        let expected = Config {
            health: new.health.clone(),
            vips: new.vips.clone(),
            ..running.clone()
        };
        assert_eq!(kept, expected);
    }
}
