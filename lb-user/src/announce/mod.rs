//! Announcing the VIPs: a /32 blackhole route per VIP address this node can
//! serve, in the `[announce]` table and marked with its protocol number,
//! which the node's BGP daemon learns and exports (docs/scale-out.md). The
//! table routes nothing here: no `ip rule` points at it.
//!
//! The announcer keeps what it believes the table holds, and changes only
//! the routes whose wanted state differs: a daemon that restarts and adopts
//! the data path finds its routes in the table and leaves them be.

mod gate;
mod maintenance;
pub mod netlink;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::Ipv4Addr,
    time::Duration,
};

use log::{error, info, warn};

pub use gate::{GateInputs, NotAnnounced, decide};
pub use maintenance::{MAINTENANCE_DIR, Maintenance};
use netlink::{Op, Route, Socket};

use crate::{api::SettingChange, config::AnnounceConfig, fmt::fmt_duration, util::Every};

/// How often the same failure to change a route is logged.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// What one VIP address should be: announced, or why not, with the names of
/// the VIPs on it (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub state: Result<(), NotAnnounced>,
    pub vips: Vec<String>,
    /// Alive backends over the VIPs on the address, for the log.
    pub alive_backends: usize,
}

/// The wanted state of each address, from each VIP's own decision: an
/// address carrying several VIPs (ports, protocols) is announced while any
/// of them can be served, and otherwise not, for the first VIP's reason.
pub fn wanted_by_address<'a>(
    vips: impl IntoIterator<Item = (&'a str, Ipv4Addr, usize, Result<(), NotAnnounced>)>,
) -> BTreeMap<Ipv4Addr, Wanted> {
    let mut out: BTreeMap<Ipv4Addr, Wanted> = BTreeMap::new();
    for (name, addr, alive, state) in vips {
        let w = out.entry(addr).or_insert_with(|| Wanted {
            state,
            vips: Vec::new(),
            alive_backends: 0,
        });
        if state.is_ok() {
            w.state = Ok(());
        }
        w.vips.push(name.to_owned());
        w.alive_backends += alive;
    }
    out
}

/// The routes of this node's VIPs, as installed.
pub struct Announcer {
    cfg: Option<AnnounceConfig>,
    /// Addresses whose route is in the table, as last read or written.
    installed: BTreeSet<Ipv4Addr>,
    errors: Every,
}

fn route(cfg: &AnnounceConfig, dst: Ipv4Addr, prefix_len: u8) -> Route {
    Route {
        dst,
        prefix_len,
        table: cfg.table,
        protocol: cfg.protocol_number(),
    }
}

/// Removes every route of `cfg`'s protocol from its table: what a `--fresh`
/// start does before it replaces the data path, and what a start does with
/// routes that are not /32s (no version of stickylb made them). The routes
/// removed.
pub fn withdraw_table(cfg: &AnnounceConfig) -> io::Result<Vec<Route>> {
    let mut sock = Socket::open()?;
    let routes = sock.routes(cfg.table, cfg.protocol_number())?;
    for r in &routes {
        match sock.route(Op::Delete, r) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => return Err(e),
            _ => {}
        }
    }
    Ok(routes)
}

/// Whether the table has our protocol's /32 route to `addr`.
fn ours_already(sock: &mut Socket, cfg: &AnnounceConfig, addr: Ipv4Addr) -> bool {
    sock.routes(cfg.table, cfg.protocol_number())
        .is_ok_and(|routes| routes.iter().any(|r| r.dst == addr && r.prefix_len == 32))
}

impl Announcer {
    /// Announces nothing until `adopt`.
    pub fn new(cfg: Option<AnnounceConfig>) -> Self {
        Self {
            cfg,
            installed: BTreeSet::new(),
            errors: Every::new(ERROR_LOG_EVERY),
        }
    }

    pub fn config(&self) -> Option<&AnnounceConfig> {
        self.cfg.as_ref()
    }

    /// Whether `addr`'s route is in the table.
    pub fn is_announced(&self, addr: Ipv4Addr) -> bool {
        self.installed.contains(&addr)
    }

    /// Reads which of our routes the table holds (an earlier run's): they
    /// stay while wanted, and the next `sync` removes the others. Routes of
    /// our protocol that are not /32s are no VIP's: removed now.
    pub fn adopt(&mut self) -> io::Result<()> {
        self.installed.clear();
        let Some(cfg) = &self.cfg else {
            return Ok(());
        };
        let mut sock = Socket::open()?;
        for r in sock.routes(cfg.table, cfg.protocol_number())? {
            if r.prefix_len == 32 {
                self.installed.insert(r.dst);
            } else {
                info!(
                    "removing the route {}/{} from table {} (protocol {}): a route of \
                     stickylb's protocol but no VIP's",
                    r.dst, r.prefix_len, cfg.table, cfg.protocol
                );
                if let Err(e) = sock.route(Op::Delete, &r) {
                    warn!("cannot remove the route {}/{}: {e}", r.dst, r.prefix_len);
                }
            }
        }
        if !self.installed.is_empty() {
            info!(
                "announce: found {} route(s) in table {} (protocol {}): kept while wanted",
                self.installed.len(),
                cfg.table,
                cfg.protocol
            );
        }
        Ok(())
    }

    /// Adds and removes routes so that exactly the addresses `wanted` says
    /// are announced are in the table; logs each change once, with why. A
    /// change that fails is logged (at most every `ERROR_LOG_EVERY`) and
    /// tried again at the next call.
    pub fn sync(&mut self, wanted: &BTreeMap<Ipv4Addr, Wanted>) {
        let Some(cfg) = self.cfg.clone() else {
            return;
        };
        let add: Vec<Ipv4Addr> = wanted
            .iter()
            .filter(|(a, w)| w.state.is_ok() && !self.installed.contains(a))
            .map(|(a, _)| *a)
            .collect();
        let remove: Vec<Ipv4Addr> = self
            .installed
            .iter()
            .filter(|a| wanted.get(a).is_none_or(|w| w.state.is_err()))
            .copied()
            .collect();
        if add.is_empty() && remove.is_empty() {
            return;
        }
        let mut sock = match Socket::open() {
            Ok(s) => s,
            Err(e) => {
                self.failed(&format!("cannot open an rtnetlink socket: {e}"));
                return;
            }
        };
        for addr in remove {
            let why = match wanted.get(&addr) {
                Some(w) => format!(
                    "VIP {}: {}",
                    w.vips.join(", "),
                    w.state.err().map(|r| r.to_string()).unwrap_or_default()
                ),
                None => "no VIP has this address any more".to_owned(),
            };
            match sock.route(Op::Delete, &route(&cfg, addr, 32)) {
                Ok(()) => {}
                // Removed by someone else: gone all the same.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    self.failed(&format!(
                        "cannot withdraw {addr} from table {} ({why}): {e}",
                        cfg.table
                    ));
                    continue;
                }
            }
            self.installed.remove(&addr);
            info!("withdrew {addr} (table {}): {why}", cfg.table);
        }
        for addr in add {
            let w = &wanted[&addr];
            match sock.route(Op::Add, &route(&cfg, addr, 32)) {
                Ok(()) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EEXIST)
                        && ours_already(&mut sock, &cfg, addr) =>
                {
                    // Ours, though not known to be (the table could not be
                    // read at start): kept as it is.
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    self.failed(&format!(
                        "cannot announce {addr} (VIP {}): table {} has a route to it already \
                         that is not stickylb's (not protocol {}); remove it (`ip route del \
                         {addr}/32 table {}`) and stickylb adds its own",
                        w.vips.join(", "),
                        cfg.table,
                        cfg.protocol,
                        cfg.table
                    ));
                    continue;
                }
                Err(e) => {
                    self.failed(&format!(
                        "cannot announce {addr} (VIP {}) in table {}: {e}",
                        w.vips.join(", "),
                        cfg.table
                    ));
                    continue;
                }
            }
            self.installed.insert(addr);
            info!(
                "announced {addr} (table {}): VIP {} is served, {} alive backend(s)",
                cfg.table,
                w.vips.join(", "),
                w.alive_backends
            );
        }
    }

    fn failed(&mut self, what: &str) {
        if self.errors.due() {
            error!("{what}; trying again every second");
        }
    }

    /// Withdraws every route this announcer installed (`unload`). The
    /// addresses withdrawn.
    pub fn withdraw_all(&mut self, why: &str) -> Vec<Ipv4Addr> {
        let Some(cfg) = self.cfg.clone() else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        let mut sock = match Socket::open() {
            Ok(s) => s,
            Err(e) => {
                error!("cannot withdraw the VIPs ({why}): cannot open an rtnetlink socket: {e}");
                return gone;
            }
        };
        for addr in std::mem::take(&mut self.installed) {
            match sock.route(Op::Delete, &route(&cfg, addr, 32)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    error!(
                        "cannot withdraw {addr} from table {} ({why}): {e}",
                        cfg.table
                    );
                    self.installed.insert(addr);
                    continue;
                }
            }
            info!("withdrew {addr} (table {}): {why}", cfg.table);
            gone.push(addr);
        }
        gone
    }

    /// Takes a reloaded `[announce]`: a new table or protocol moves the
    /// routes (withdrawn from the old, added to the new at the next `sync`);
    /// the changes, as the reload reports them.
    pub fn reconfigure(&mut self, new: Option<AnnounceConfig>) -> Vec<SettingChange> {
        let changes = changes(self.cfg.as_ref(), new.as_ref());
        let moved = match (&self.cfg, &new) {
            (Some(old), Some(new)) => (old.table, old.protocol) != (new.table, new.protocol),
            (None, None) => false,
            _ => true,
        };
        if moved {
            self.withdraw_all("reload: the [announce] table or protocol changed");
            self.cfg = new;
            if let Err(e) = self.adopt() {
                error!("reload: cannot read the announce table: {e}");
            }
        } else {
            self.cfg = new;
        }
        changes
    }
}

/// How a reload report shows one `[announce]` field.
type Shown = fn(&AnnounceConfig) -> String;

/// What differs between two `[announce]` sections, field by field.
pub fn changes(old: Option<&AnnounceConfig>, new: Option<&AnnounceConfig>) -> Vec<SettingChange> {
    let show = |c: Option<&AnnounceConfig>, f: fn(&AnnounceConfig) -> String| {
        c.map_or_else(|| "off".to_owned(), f)
    };
    let fields: [(&str, Shown); 3] = [
        ("announce table", |c| c.table.to_string()),
        ("announce protocol", |c| c.protocol.to_string()),
        ("announce withdraw_delay", |c| {
            fmt_duration(c.withdraw_delay)
        }),
    ];
    fields
        .iter()
        .filter_map(|(name, f)| {
            let (from, to) = (show(old, *f), show(new, *f));
            (from != to).then(|| SettingChange {
                field: (*name).to_owned(),
                from,
                to,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

    #[test]
    fn an_address_is_wanted_while_any_of_its_vips_can_be_served() {
        let w = wanted_by_address([
            ("web", A, 0, Err(NotAnnounced::NoAliveBackend)),
            ("tls", A, 2, Ok(())),
            ("dns", B, 0, Err(NotAnnounced::WarmingUp)),
            ("dns2", B, 0, Err(NotAnnounced::NoAliveBackend)),
        ]);
        assert_eq!(w[&A].state, Ok(()));
        assert_eq!(w[&A].vips, ["web", "tls"]);
        assert_eq!(w[&A].alive_backends, 2);
        assert_eq!(
            w[&B].state,
            Err(NotAnnounced::WarmingUp),
            "the first VIP's reason"
        );
    }

    fn cfg(table: u32, protocol: u32, delay_ms: u64) -> AnnounceConfig {
        AnnounceConfig {
            table,
            protocol,
            withdraw_delay: Duration::from_millis(delay_ms),
        }
    }

    #[test]
    fn a_reload_reports_each_changed_field() {
        let c = |a, b| {
            changes(a, b)
                .into_iter()
                .map(|s| format!("{} {} -> {}", s.field, s.from, s.to))
                .collect::<Vec<_>>()
        };
        let old = cfg(200, 250, 2000);
        let new = cfg(201, 250, 500);
        assert!(c(Some(&old), Some(&old)).is_empty());
        assert!(c(None, None).is_empty());
        assert_eq!(
            c(Some(&old), Some(&new)),
            [
                "announce table 200 -> 201",
                "announce withdraw_delay 2s -> 500ms"
            ]
        );
        assert_eq!(
            c(None, Some(&old)),
            [
                "announce table off -> 200",
                "announce protocol off -> 250",
                "announce withdraw_delay off -> 2s"
            ]
        );
    }

    #[test]
    fn without_a_config_nothing_is_touched() {
        let mut a = Announcer::new(None);
        a.adopt().unwrap();
        a.sync(&wanted_by_address([("web", A, 1, Ok(()))]));
        assert!(!a.is_announced(A));
        assert!(a.withdraw_all("test").is_empty());
    }
}
