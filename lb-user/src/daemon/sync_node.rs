//! The daemon's side of the affinity sync (`crate::sync`): it starts the
//! transport with the data path's events and a table walker, applies what
//! peers send on the main loop, and keeps the transport's ids → identities
//! current.

use std::{
    ops::ControlFlow,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
};

use anyhow::Context as _;
use log::{error, info};
use tokio::sync::{mpsc, watch};

use super::Daemon;
pub(super) use crate::sync::Inbound;
use crate::{
    config::{SyncConfig, load_sync_key},
    control::Request,
    dataplane::TableReader,
    lb::{Lb, sync::Identities, sync::SyncEntry},
    sync::{Cluster, INBOUND_DEPTH, Settings, Snapshot},
    util::{Every, monotonic_ns},
};

/// The running sync.
pub(super) struct NodeSync {
    pub(super) cluster: Cluster,
    ids: watch::Sender<Identities>,
    /// The id epoch the transport's identities were taken in.
    epoch: u64,
    apply_errors: Every,
    /// The transport was told it may pull a peer's table.
    pull_allowed: bool,
    /// `Lb::rewarmed` when last looked at.
    rewarmed: u64,
    /// While a catch-up after a re-warm runs: the addresses announced when
    /// it began. The others (the VIP that re-warmed among them) wait for it,
    /// so that the router sends them nothing this node would answer from
    /// the pins it made while going dark.
    held: Option<Vec<std::net::Ipv4Addr>>,
}

/// Starts the sync of `cfg`: the data path's events on first (so that
/// nothing pinned while the table is pulled is missed), then the transport,
/// which pulls a peer's table. Received entries come out of the receiver.
///
/// `adopted`: the data path and its table survived from the last run (a
/// restart, not `--fresh`): the node is ready at once, so that a restart
/// never withdraws the routes of a node that forwarded all along, and it
/// pulls a peer's table in the background to catch up with what it missed.
pub(super) async fn start(
    lb: &mut Lb,
    cfg: &SyncConfig,
    adopted: bool,
) -> anyhow::Result<(NodeSync, mpsc::Receiver<Inbound>)> {
    let key = load_sync_key(&cfg.key_file).map_err(anyhow::Error::msg)?;
    lb.maps_mut()
        .set_sync(true, cfg.refresh_interval)
        .context("cannot turn the data path's sync events on")?;
    let events = lb
        .maps_mut()
        .sync_events()
        .context("cannot open the data path's sync events")?;
    let epoch = lb.id_epoch().load(Ordering::Relaxed);
    let (ids, ids_rx) = watch::channel(lb.identities());
    let snapshot = Arc::new(TableSnapshot {
        reader: Mutex::new(lb.maps().table_reader()?),
        ids: ids_rx.clone(),
    });
    let (tx, rx) = mpsc::channel(INBOUND_DEPTH);
    let settings = Settings {
        ready_at_start: adopted,
        ..Settings::new(cfg, key)
    };
    let mut cluster = Cluster::start(settings, snapshot, tx).await?;
    cluster.spawn_events(events, ids_rx);
    if !cluster.ready() {
        info!(
            "sync: pulling a peer's table before announcing (at most {} without an answer)",
            crate::fmt::fmt_duration(cfg.join_timeout)
        );
    } else if !cfg.peers.is_empty() {
        info!("sync: the table was adopted: ready now, catching up with a peer's table");
    }
    Ok((
        NodeSync {
            cluster,
            ids,
            epoch,
            apply_errors: Every::new(std::time::Duration::from_secs(10)),
            pull_allowed: false,
            rewarmed: lb.rewarmed(),
            held: None,
        },
        rx,
    ))
}

/// Walks the affinity table for a peer, on the transport's blocking thread.
struct TableSnapshot {
    reader: Mutex<TableReader>,
    ids: watch::Receiver<Identities>,
}

impl Snapshot for TableSnapshot {
    fn walk(
        &self,
        max: usize,
        chunk: &mut dyn FnMut(Vec<SyncEntry>) -> bool,
    ) -> anyhow::Result<()> {
        // One walk at a time: two joining peers share the table's reader.
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let ids = self.ids.borrow().clone();
        let now_ns = monotonic_ns();
        let mut out = Vec::with_capacity(max);
        let mut gone = false;
        reader.affinity_batches(|keys, values| {
            for (k, v) in keys.iter().zip(values) {
                if let Some(e) = ids.entry(k, v, now_ns) {
                    out.push(e);
                }
                if out.len() == max && !chunk(std::mem::replace(&mut out, Vec::with_capacity(max)))
                {
                    gone = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        if !gone && !out.is_empty() {
            chunk(out);
        }
        Ok(())
    }
}

/// Whether a request may change the VIPs or backends (and so the ids).
pub(super) fn may_change_ids(req: &Request) -> bool {
    !matches!(
        req,
        Request::Status | Request::Lookup { .. } | Request::Flows { .. }
    )
}

impl Daemon {
    /// Applies what a peer sent.
    pub(super) fn on_sync(&mut self, msg: Inbound) {
        let Some(s) = &mut self.sync else { return };
        match msg {
            Inbound::Entries {
                peer,
                sent_ms,
                kind,
                entries,
            } => match self.lb.apply_remote(&entries, monotonic_ns()) {
                Ok(applied) => s.cluster.applied(peer, sent_ms, kind, &entries, &applied),
                // Not reported to the transport: a snapshot part that did
                // not apply leaves the join incomplete (pulled again).
                Err(e) => {
                    if s.apply_errors.due() {
                        error!("sync: cannot apply {} received entries: {e}", entries.len());
                    }
                }
            },
            Inbound::SnapshotEnd { peer, total } => s.cluster.snapshot_applied(peer, total),
        }
    }

    /// Lets the transport pull a peer's table once no VIP is warming up:
    /// before, this node does not know which backends are alive, and would
    /// refuse every entry for a backend it has not seen pass a check yet.
    pub(super) fn allow_sync_pull_when_warm(&mut self) {
        let Some(s) = &mut self.sync else { return };
        if !s.pull_allowed && self.lb.warm_up_deadline().is_none() {
            s.pull_allowed = true;
            s.cluster.allow_pull();
        }
    }

    /// Pulls a peer's table again once a VIP serves after every backend was
    /// down here. Going dark one backend at a time, this node re-pinned
    /// clients to the backends it still saw; where its peers saw no change
    /// their earlier pins win, but the corrections they sent named backends
    /// this node thought dead, and were refused. Now that they are back, the
    /// peers' table brings this node's pins in line with theirs.
    pub(super) fn catch_up_after_rewarm(&mut self) {
        let n = self.lb.rewarmed();
        // The addresses are walked only when a re-warm ended, not on every
        // pass of the loop.
        let announced = self
            .sync
            .as_ref()
            .is_some_and(|s| s.rewarmed != n)
            .then(|| self.announced());
        let Some(s) = &mut self.sync else { return };
        if let Some(announced) = announced {
            s.rewarmed = n;
            s.cluster.catch_up();
            s.held = Some(announced);
        } else if s.held.is_some() && s.cluster.caught_up() {
            s.held = None;
        }
    }

    /// Whether the VIPs on `addr` wait for a catch-up before they are
    /// announced (see `catch_up_after_rewarm`).
    pub(super) fn held_for_catch_up(&self, addr: std::net::Ipv4Addr) -> bool {
        self.sync.as_ref().is_some_and(|s| {
            s.held
                .as_ref()
                .is_some_and(|was| !was.contains(&addr) && !s.cluster.caught_up())
        })
    }

    /// Hands the transport fresh identities: after anything that may have
    /// changed the VIPs or backends, or when an id was freed (`force`
    /// false: only if the id epoch moved).
    pub(super) fn refresh_sync_ids(&mut self, force: bool) {
        let Some(s) = &mut self.sync else { return };
        let epoch = self.lb.id_epoch().load(Ordering::Relaxed);
        if force || epoch != s.epoch {
            s.epoch = epoch;
            s.ids.send_replace(self.lb.identities());
        }
    }
}

/// The next message of the sync, or never without one.
pub(super) async fn recv(rx: &mut Option<mpsc::Receiver<Inbound>>) -> Option<Inbound> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
