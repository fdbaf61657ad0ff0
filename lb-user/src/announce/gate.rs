//! Whether a VIP is announced: one pure function of what the daemon knows,
//! with the reason when it is not.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What the decision for one VIP looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateInputs {
    /// The XDP program is attached (by this daemon or adopted).
    pub attached: bool,
    /// `stickylb unload` has begun: the VIPs are withdrawn before the
    /// program goes.
    pub unloading: bool,
    /// The node is in maintenance (`stickylb maintenance on`).
    pub maintenance: bool,
    /// `Daemon::cluster_ready`: the node has what it needs from its peers.
    pub cluster_ready: bool,
    /// The VIP waits for its backends' first checks.
    pub warming: bool,
    /// Backends alive in the data path.
    pub alive_backends: usize,
}

/// Why a VIP is not announced. JSON: snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotAnnounced {
    NotAttached,
    Unloading,
    Maintenance,
    ClusterNotReady,
    WarmingUp,
    NoAliveBackend,
}

impl fmt::Display for NotAnnounced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::NotAttached => "the XDP program is not attached",
            Self::Unloading => "unloading",
            Self::Maintenance => "the node is in maintenance",
            Self::ClusterNotReady => "waiting for the cluster (the sync's pull from a peer)",
            Self::WarmingUp => "warming up (waiting for the backends' first checks)",
            Self::NoAliveBackend => "no alive backend",
        })
    }
}

/// Announced, or the first reason not to, in this order: the node's own
/// state (attached, unloading, maintenance, cluster) before the VIP's.
pub fn decide(i: &GateInputs) -> Result<(), NotAnnounced> {
    if !i.attached {
        Err(NotAnnounced::NotAttached)
    } else if i.unloading {
        Err(NotAnnounced::Unloading)
    } else if i.maintenance {
        Err(NotAnnounced::Maintenance)
    } else if !i.cluster_ready {
        Err(NotAnnounced::ClusterNotReady)
    } else if i.warming {
        Err(NotAnnounced::WarmingUp)
    } else if i.alive_backends == 0 {
        Err(NotAnnounced::NoAliveBackend)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of the inputs, against the rule written out once
    /// more as a table of conditions in order.
    #[test]
    fn every_combination() {
        let mut announced = 0;
        for bits in 0..64u32 {
            let bit = |n: u32| bits & (1 << n) != 0;
            let i = GateInputs {
                attached: bit(0),
                unloading: bit(1),
                maintenance: bit(2),
                cluster_ready: bit(3),
                warming: bit(4),
                alive_backends: if bit(5) { 2 } else { 0 },
            };
            let rules = [
                (!i.attached, NotAnnounced::NotAttached),
                (i.unloading, NotAnnounced::Unloading),
                (i.maintenance, NotAnnounced::Maintenance),
                (!i.cluster_ready, NotAnnounced::ClusterNotReady),
                (i.warming, NotAnnounced::WarmingUp),
                (i.alive_backends == 0, NotAnnounced::NoAliveBackend),
            ];
            let want = rules.iter().find(|(c, _)| *c).map(|(_, r)| *r);
            assert_eq!(decide(&i).err(), want, "{i:?}");
            announced += usize::from(decide(&i).is_ok());
        }
        assert_eq!(announced, 1, "exactly one combination announces");
    }

    #[test]
    fn one_alive_backend_is_enough() {
        let i = GateInputs {
            attached: true,
            cluster_ready: true,
            alive_backends: 1,
            ..GateInputs::default()
        };
        assert_eq!(decide(&i), Ok(()));
    }

    #[test]
    fn reasons_serialize_as_snake_case() {
        assert_eq!(
            serde_json::to_value(NotAnnounced::NoAliveBackend).unwrap(),
            "no_alive_backend"
        );
        assert_eq!(
            NotAnnounced::Maintenance.to_string(),
            "the node is in maintenance"
        );
    }
}
