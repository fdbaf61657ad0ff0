//! Affinity entries as stickylb nodes exchange them (the LB tier's "session
//! clustering"): by identity — the VIP's (address, port, protocol) and the
//! backend's address — never by local id, since two nodes' ids may differ.
//!
//! CONTRACT (issue #10, shared by the data-path and transport work): the
//! names and signatures below are what other modules call. Bodies marked
//! `todo!` are filled in by the data-path work.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{AffinityKey, AffinityValue, VipKey};

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
    /// This node's pin won: to be sent back to the sender so it converges.
    pub kept_local: Vec<SyncEntry>,
    /// Not applied: no such VIP here.
    pub unknown_vip: u64,
    /// Not applied: the VIP has no such backend here.
    pub unknown_backend: u64,
    /// Not applied: the backend is not alive in this node's view.
    pub dead_backend: u64,
}

/// The data path's ids → identities, copied out of the books so that a
/// reader thread or task can translate without the `Lb`. Stale once ids are
/// reused: take a new one whenever `Lb::id_epoch` moves.
#[derive(Clone, Debug, Default)]
pub struct Identities {}

impl Identities {
    /// The entry an affinity-table entry stands for, `now_ns` being the data
    /// path's clock (CLOCK_MONOTONIC); `None` for an id not in the books.
    pub fn entry(&self, _key: &AffinityKey, _value: &AffinityValue, _now_ns: u64) -> Option<SyncEntry> {
        todo!()
    }

    /// The entry a data-path sync event stands for.
    pub fn event(&self, _ev: &lb_common::SyncEvent, _now_ns: u64) -> Option<SyncEntry> {
        todo!()
    }
}

impl<M: Maps> Lb<M> {
    /// A copy of the id → identity books.
    pub fn identities(&self) -> Identities {
        todo!()
    }

    /// Applies entries received from a peer, each by the rule of `resolve`.
    pub fn apply_remote(&mut self, _entries: &[SyncEntry], _now_ns: u64) -> Result<SyncApplied> {
        todo!()
    }
}
