//! Affinity entries as stickylb nodes exchange them (the LB tier's "session
//! clustering"): by identity — the VIP's (address, port, protocol) and the
//! backend's address — never by local id, since two nodes' ids may differ.
//!
//! Which pin of a client wins is decided by `resolve`, the same pure rule on
//! every node: the earliest live pin, that is the smaller `pinned_ms`, ties
//! to the lower backend address:port. The earliest pin is the one the
//! client's established connections use: a node that re-picked the client
//! during the sync lag (its pin had not arrived yet) must not move it
//! everywhere. The order is total and every node compares exactly the
//! values that were exchanged (`pinned_ms` survives its trip through the
//! data path's clock unchanged, see `clock`), so two nodes that see the same
//! two pins choose the same one; two pins of one backend are the same pin,
//! and a node takes the earlier `pinned_ms` of the two, so that nodes that
//! pinned a client to one backend independently end with one pin.
//!
//! A node's pin of a client only ever moves down that order (while it stays
//! live, to a backend alive here), and it answers a received pin only with a
//! pin of its own that is strictly smaller (a correction). The answer to a
//! correction is then either nothing or a still smaller pin, so an exchange
//! ends after at most as many rounds as there are distinct pins. A pin whose
//! backend is dead or unknown in this node's view is neither applied nor
//! answered: the nodes' health views may differ, and answering would let
//! them trade the same two pins forever.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use lb_common::{AffinityKey, AffinityValue, VipKey, coarse_secs};

use super::{Lb, Maps, Result};

/// One client's pin as it travels between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyncEntry {
    pub vip: VipKey,
    pub client: Ipv4Addr,
    pub backend: SocketAddrV4,
    /// When the client was pinned to `backend`: ms since the Unix epoch on
    /// the clock of the node that pinned it. With `backend`, the order of
    /// two pins of one client (see `resolve`).
    pub pinned_ms: u64,
    /// How long the client had been idle, on the sending node, when sent.
    pub idle_ms: u32,
}

/// What applying a batch of received entries did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncApplied {
    /// Written: a client new to this node, or one whose pin lost to this one.
    pub inserted: u64,
    /// Same pin as here: only its last-seen time moved forward.
    pub refreshed: u64,
    /// Same backend as here, pinned earlier: this node's pin took the
    /// earlier `pinned_ms` (and its last-seen time moved forward).
    pub lowered: u64,
    /// Not applied, this node's pin won: to be sent back to the sender so
    /// it converges (a correction).
    pub kept_local: Vec<SyncEntry>,
    /// Not applied: no such VIP here.
    pub unknown_vip: u64,
    /// Not applied: the VIP has no such backend here.
    pub unknown_backend: u64,
    /// Not applied: the backend is not alive in this node's view.
    pub dead_backend: u64,
    /// Not applied: idle for the VIP's whole affinity timeout already, so
    /// it would pin nothing here either.
    pub expired: u64,
}

impl SyncApplied {
    /// Entries written or refreshed here.
    pub fn applied(&self) -> u64 {
        self.inserted + self.refreshed + self.lowered
    }

    /// Entries not applied, a correction (`kept_local`) included: with
    /// `applied`, every entry received.
    pub fn not_applied(&self) -> u64 {
        self.unknown_vip
            + self.unknown_backend
            + self.dead_backend
            + self.expired
            + self.kept_local.len() as u64
    }
}

/// A pin as `resolve` compares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    pub backend: SocketAddrV4,
    pub pinned_ms: u64,
}

impl Pin {
    /// The rule's order: earlier pins win; of two at the same ms, the one
    /// to the lower backend (address, then port).
    fn beats(&self, other: &Pin) -> bool {
        (self.pinned_ms, self.backend) < (other.pinned_ms, other.backend)
    }
}

/// What to do with a received pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Write it: the client is new here, or the received pin wins.
    Insert,
    /// The same pin as here: move the local entry's last-seen time forward.
    Refresh,
    /// Same backend as here, pinned earlier: take its `pinned_ms` (and move
    /// last-seen forward).
    Lower,
    /// This node's pin wins: send it back (after moving last-seen forward,
    /// when it is the same backend's).
    KeepLocal,
    /// Its backend is not alive here: neither applied nor answered.
    DeadBackend,
}

/// The conflict rule. `local`: this node's live pin of the client whose
/// backend is alive here (an expired entry, or one to a dead backend, is
/// `None`: it would not send the client anywhere). `remote_alive`: whether
/// the received pin's backend is alive here.
pub fn resolve(local: Option<Pin>, remote: Pin, remote_alive: bool) -> Resolution {
    if !remote_alive {
        return Resolution::DeadBackend;
    }
    let Some(l) = local else {
        return Resolution::Insert;
    };
    if l.backend == remote.backend {
        return match remote.pinned_ms.cmp(&l.pinned_ms) {
            std::cmp::Ordering::Less => Resolution::Lower,
            std::cmp::Ordering::Equal => Resolution::Refresh,
            std::cmp::Ordering::Greater => Resolution::KeepLocal,
        };
    }
    if remote.beats(&l) {
        Resolution::Insert
    } else {
        Resolution::KeepLocal
    }
}

/// The mapping between the data path's clock (CLOCK_MONOTONIC ns, which
/// `bpf_ktime_get_coarse_ns` reads at tick resolution) and wall-clock ms.
/// Taken once per process, so that it is one fixed integer offset: a
/// received `pinned_ms` stored as `created_ns` reads back as exactly the
/// same `pinned_ms`, which the conflict rule compares with the peers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Wall-clock ns minus monotonic ns at the moment it was taken.
    offset_ns: i128,
}

impl Clock {
    fn now() -> Self {
        let mono = crate::util::monotonic_ns();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            offset_ns: wall as i128 - i128::from(mono),
        }
    }

    /// Wall-clock ms of a data-path time.
    pub fn wall_ms(&self, mono_ns: u64) -> u64 {
        let wall = i128::from(mono_ns) + self.offset_ns;
        u64::try_from(wall.div_euclid(1_000_000)).unwrap_or(0)
    }

    /// The data-path time of a wall-clock ms: the first ns of that ms, so
    /// `wall_ms(mono_ns(ms)) == ms`. A time before this host's boot (a
    /// client pinned elsewhere before it) is boot itself, 0; its
    /// `pinned_ms` then reads back later, which only matters against
    /// another backend's pin of the same client made before this boot.
    pub fn mono_ns(&self, wall_ms: u64) -> u64 {
        let mono = i128::from(wall_ms) * 1_000_000 - self.offset_ns;
        u64::try_from(mono.max(0)).unwrap_or(u64::MAX)
    }
}

/// This process's clock mapping (taken at the first call).
pub fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(Clock::now)
}

fn idle_ms(now_ns: u64, last_seen_ns: u64) -> u32 {
    u32::try_from(now_ns.saturating_sub(last_seen_ns) / 1_000_000).unwrap_or(u32::MAX)
}

/// The data path's ids → identities, copied out of the books so that a
/// reader thread or task can translate without the `Lb`. Stale once ids are
/// reused: take a new one whenever `Lb::id_epoch` moves.
#[derive(Clone, Debug, Default)]
pub struct Identities {
    /// VIP id → its key.
    vips: std::collections::HashMap<u32, VipKey>,
    /// Backend id → (its VIP's id, its address).
    backends: std::collections::HashMap<u32, (u32, SocketAddrV4)>,
}

impl Identities {
    /// The entry an affinity-table entry stands for, `now_ns` being the data
    /// path's clock (CLOCK_MONOTONIC); `None` for an id not in the books.
    pub fn entry(
        &self,
        key: &AffinityKey,
        value: &AffinityValue,
        now_ns: u64,
    ) -> Option<SyncEntry> {
        self.translate(
            key,
            value.backend_id,
            value.created_ns,
            value.last_seen_ns,
            now_ns,
        )
    }

    /// The entry a data-path sync event stands for.
    pub fn event(&self, ev: &lb_common::SyncEvent, now_ns: u64) -> Option<SyncEntry> {
        self.translate(
            &ev.key,
            ev.backend_id,
            ev.created_ns,
            ev.last_seen_ns,
            now_ns,
        )
    }

    fn translate(
        &self,
        key: &AffinityKey,
        backend_id: u32,
        created_ns: u64,
        last_seen_ns: u64,
        now_ns: u64,
    ) -> Option<SyncEntry> {
        let vip = *self.vips.get(&key.vip_id)?;
        let &(vip_id, backend) = self.backends.get(&backend_id)?;
        // An id reused by another VIP's backend is not this client's.
        if vip_id != key.vip_id {
            return None;
        }
        Some(SyncEntry {
            vip,
            client: Ipv4Addr::from(key.client),
            backend,
            pinned_ms: clock().wall_ms(created_ns),
            idle_ms: idle_ms(now_ns, last_seen_ns),
        })
    }
}

impl<M: Maps> Lb<M> {
    /// A copy of the id → identity books.
    pub fn identities(&self) -> Identities {
        let mut ids = Identities::default();
        for v in &self.vips {
            ids.vips.insert(v.id, v.key);
            for b in &v.backends {
                ids.backends.insert(b.id, (v.id, b.addr));
            }
        }
        ids
    }

    /// Applies entries received from a peer, each by the rule of `resolve`.
    /// `now_ns` is the data path's clock.
    pub fn apply_remote(&mut self, entries: &[SyncEntry], now_ns: u64) -> Result<SyncApplied> {
        let mut out = SyncApplied::default();
        let clock = clock();
        let now_s = coarse_secs(now_ns);
        for e in entries {
            let Some(vip) = self.vips.iter().find(|v| v.key == e.vip) else {
                out.unknown_vip += 1;
                continue;
            };
            let Some(remote_be) = vip.backends.iter().find(|b| b.addr == e.backend) else {
                out.unknown_backend += 1;
                continue;
            };
            let timeout_ns = vip.info.affinity_timeout_ns;
            let key = AffinityKey {
                vip_id: vip.id,
                client: e.client.octets(),
            };
            let stored = self.maps.affinity(&key)?;
            // A local entry counts only if it would send the client
            // somewhere: live, to an alive backend of this VIP.
            let local = stored.and_then(|v| {
                if !v.is_live(now_ns, timeout_ns) {
                    return None;
                }
                let b = vip
                    .backends
                    .iter()
                    .find(|b| b.id == v.backend_id && b.alive())?;
                Some((v, b.addr))
            });
            let remote = Pin {
                backend: e.backend,
                pinned_ms: e.pinned_ms,
            };
            let local_pin = local.map(|(v, backend)| Pin {
                backend,
                pinned_ms: clock.wall_ms(v.created_ns),
            });
            let remote_last_seen = now_ns.saturating_sub(u64::from(e.idle_ms) * 1_000_000);
            match resolve(local_pin, remote, remote_be.alive()) {
                Resolution::DeadBackend => out.dead_backend += 1,
                Resolution::KeepLocal => {
                    let (v, backend) = local.expect("KeepLocal only with a local pin");
                    // The same backend's pin, made later there: the client
                    // was busy there all the same.
                    let same = backend == e.backend;
                    let last_seen = if same {
                        v.last_seen_ns.max(remote_last_seen)
                    } else {
                        v.last_seen_ns
                    };
                    if last_seen > v.last_seen_ns {
                        self.maps.set_affinity(
                            key,
                            AffinityValue {
                                last_seen_ns: last_seen,
                                synced_s: now_s,
                                ..v
                            },
                        )?;
                    }
                    out.kept_local.push(SyncEntry {
                        vip: e.vip,
                        client: e.client,
                        backend,
                        pinned_ms: clock.wall_ms(v.created_ns),
                        idle_ms: idle_ms(now_ns, last_seen),
                    });
                }
                Resolution::Refresh => {
                    let (v, _) = local.expect("Refresh only with a local pin");
                    if remote_last_seen > v.last_seen_ns {
                        self.maps.set_affinity(
                            key,
                            AffinityValue {
                                last_seen_ns: remote_last_seen,
                                synced_s: now_s,
                                ..v
                            },
                        )?;
                    }
                    out.refreshed += 1;
                }
                Resolution::Lower => {
                    let (v, _) = local.expect("Lower only with a local pin");
                    self.maps.set_affinity(
                        key,
                        AffinityValue {
                            created_ns: clock.mono_ns(e.pinned_ms),
                            last_seen_ns: v.last_seen_ns.max(remote_last_seen),
                            synced_s: now_s,
                            ..v
                        },
                    )?;
                    out.lowered += 1;
                }
                Resolution::Insert => {
                    if now_ns.saturating_sub(remote_last_seen) >= timeout_ns {
                        out.expired += 1;
                        continue;
                    }
                    let id = remote_be.id;
                    self.maps.set_affinity(
                        key,
                        AffinityValue {
                            backend_id: id,
                            // Announced just now (by the sender): this node
                            // does not echo it back as a refresh.
                            synced_s: now_s,
                            created_ns: clock.mono_ns(e.pinned_ms),
                            last_seen_ns: remote_last_seen,
                        },
                    )?;
                    out.inserted += 1;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
