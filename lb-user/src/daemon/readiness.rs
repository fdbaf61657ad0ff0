//! What the daemon tells systemd (`Type=notify`): ready once every VIP's
//! first health-check round has decided it (serving, or known to have no
//! alive backend), a one-line status an operator sees in `systemctl
//! status`, reloads and the stop.

use std::time::{Duration, Instant};

use log::warn;

use super::Daemon;
use crate::notify::Notifier;

/// The longest a start waits for the VIPs' first checks before it reports
/// ready anyway (saying which VIPs are still undecided): a VIP's warm-up
/// has its own, shorter, deadline (3.6 s at the default checks), and this
/// is a backstop far under systemd's default start timeout of 90 s, so a
/// start never hangs on a checker that cannot run.
pub(super) const READY_WITHIN: Duration = Duration::from_secs(20);

/// How soon a READY=1 that could not be sent is sent again.
const RETRY_READY: Duration = Duration::from_secs(1);

/// Where the daemon is in telling systemd it is ready.
#[derive(Debug)]
pub(super) struct Readiness {
    pub(super) notifier: Notifier,
    /// Since when the daemon serves its loop (VIPs warming up counted from
    /// here); `None` once READY=1 has been sent.
    waiting_since: Option<Instant>,
    /// Why the last reload failed, shown before the VIPs in the status
    /// until a reload succeeds: the file on disk is not what runs.
    reload_failed: Option<String>,
    /// When to try a READY=1 that could not be sent again, so that a past
    /// backstop does not wake the loop without pause.
    retry_at: Option<Instant>,
    /// Reloads since the start that succeeded, and that failed (metrics).
    reloads_ok: u64,
    reloads_failed: u64,
}

impl Readiness {
    pub(super) fn new(notifier: Notifier) -> Self {
        Self {
            notifier,
            waiting_since: Some(Instant::now()),
            reload_failed: None,
            retry_at: None,
            reloads_ok: 0,
            reloads_failed: 0,
        }
    }

    pub(super) fn is_ready(&self) -> bool {
        self.waiting_since.is_none()
    }

    /// Reloads that succeeded, that failed, and whether the last one failed.
    pub(super) fn reloads(&self) -> (u64, u64, bool) {
        (
            self.reloads_ok,
            self.reloads_failed,
            self.reload_failed.is_some(),
        )
    }
}

/// One VIP as the status line shows it.
struct VipLine {
    name: String,
    warming: bool,
    alive: usize,
    backends: usize,
}

/// The status line of `vips`, and whether every VIP is decided (none warming
/// up). `maintenance`: the node is in maintenance (nothing announced).
fn summarize(vips: &[VipLine], maintenance: bool) -> (bool, String) {
    let decided = vips.iter().all(|v| !v.warming);
    let serving = vips.iter().filter(|v| !v.warming && v.alive > 0).count();
    let mut parts: Vec<String> = vips
        .iter()
        .map(|v| {
            if v.warming {
                format!("{}: waiting for its backends' first checks", v.name)
            } else if v.alive == 0 {
                format!("{}: NO ALIVE BACKEND (0 of {})", v.name, v.backends)
            } else {
                format!("{} {}/{} backends up", v.name, v.alive, v.backends)
            }
        })
        .collect();
    if vips.is_empty() {
        parts.push("no VIP configured".into());
    }
    let mut line = format!(
        "serving {serving} of {} VIP{}: {}",
        vips.len(),
        if vips.len() == 1 { "" } else { "s" },
        parts.join("; ")
    );
    if maintenance {
        line.push_str(" (in maintenance: nothing announced)");
    }
    (decided, line)
}

/// What `notify_state` sends.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// READY=1: every VIP is decided.
    Ready,
    /// READY=1 at the backstop, some VIP still undecided.
    ReadyUndecided,
    /// Only the status (not ready yet, or ready already).
    Status,
}

fn step(waiting_since: Option<Instant>, decided: bool, now: Instant) -> Step {
    match waiting_since {
        None => Step::Status,
        Some(_) if decided => Step::Ready,
        Some(since) if now.saturating_duration_since(since) >= READY_WITHIN => Step::ReadyUndecided,
        Some(_) => Step::Status,
    }
}

impl Daemon {
    /// Every VIP's state in one line, and whether each is decided.
    fn service_status(&self) -> (bool, String) {
        let vips: Vec<VipLine> = self
            .lb
            .vips()
            .iter()
            .map(|v| VipLine {
                name: v.name.clone(),
                warming: v.warming_up.is_some(),
                alive: v.backends.iter().filter(|b| b.alive()).count(),
                backends: v.backends.len(),
            })
            .collect();
        let (decided, line) = summarize(&vips, self.maintenance.is_on());
        match &self.readiness.reload_failed {
            Some(why) => (
                decided,
                format!("reload failed ({why}), running the config as before; {line}"),
            ),
            None => (decided, line),
        }
    }

    /// After anything that may change a VIP's state: READY=1 once every VIP
    /// is decided (or `READY_WITHIN` has passed), then the status whenever
    /// it changes.
    pub(super) fn notify_state(&mut self) {
        // Called after every event: once ready, with no service manager to
        // hear the status, building it would be work for nothing.
        if self.readiness.is_ready() && !self.readiness.notifier.enabled() {
            return;
        }
        let (decided, status) = self.service_status();
        let now = Instant::now();
        match step(self.readiness.waiting_since, decided, now) {
            // Not ready until systemd has heard it: a READY=1 that could
            // not be sent is sent again at the next look.
            Step::Ready => {
                if self.readiness.notifier.ready(&status) {
                    let since = self.readiness.waiting_since.take().unwrap_or(now);
                    log::info!(
                        "ready after {} ms: {status}",
                        now.saturating_duration_since(since).as_millis()
                    );
                } else {
                    self.readiness.retry_at = Some(now + RETRY_READY);
                }
            }
            Step::ReadyUndecided => {
                if self.readiness.notifier.ready(&status) {
                    self.readiness.waiting_since = None;
                    warn!(
                        "reporting ready although not every VIP is decided after {} s: {status}",
                        READY_WITHIN.as_secs()
                    );
                } else {
                    self.readiness.retry_at = Some(now + RETRY_READY);
                }
            }
            Step::Status => self.readiness.notifier.status(&status),
        }
    }

    /// When `notify_state` must look again even if nothing happens: at the
    /// ready backstop while waiting.
    pub(super) fn ready_deadline(&self) -> Option<Instant> {
        let r = &self.readiness;
        r.waiting_since.map(|t| match r.retry_at {
            Some(retry) => retry,
            None => t + READY_WITHIN,
        })
    }

    /// `reload`, between RELOADING=1 and READY=1 (only once the daemon has
    /// reported ready: a reload while it starts is part of the start).
    pub(super) fn reload_notified(&mut self) -> anyhow::Result<crate::api::ReloadReply> {
        let ready = self.readiness.is_ready();
        if ready {
            self.readiness.notifier.reloading();
        }
        let result = self.reload();
        self.readiness.reload_failed = result.as_ref().err().map(|e| format!("{e:#}"));
        match &result {
            Ok(_) => self.readiness.reloads_ok += 1,
            Err(_) => self.readiness.reloads_failed += 1,
        }
        if ready {
            let (_, status) = self.service_status();
            if !self.readiness.notifier.ready(&status) {
                // systemd holds the unit in "reloading" until it hears
                // READY=1: try again as at a start.
                self.readiness.waiting_since = Some(Instant::now());
                self.readiness.retry_at = Some(Instant::now() + RETRY_READY);
            }
        }
        result
    }

    /// STOPPING=1, saying the data path stays.
    pub(super) fn notify_stopping(&mut self, signal: &str) {
        let status = format!(
            "stopping on {signal}; the XDP program keeps forwarding on {} (state pinned at {})",
            self.cfg.interface,
            self.cfg.pin_path.display()
        );
        self.readiness.notifier.stopping(&status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(name: &str, warming: bool, alive: usize, backends: usize) -> VipLine {
        VipLine {
            name: name.into(),
            warming,
            alive,
            backends,
        }
    }

    #[test]
    fn every_vip_decided_serving_or_not_is_ready() {
        let (decided, line) = summarize(&[vip("web", false, 3, 3)], false);
        assert!(decided);
        assert_eq!(line, "serving 1 of 1 VIP: web 3/3 backends up");
        let (decided, line) = summarize(&[vip("web", false, 2, 3), vip("api", false, 0, 2)], false);
        assert!(decided, "a VIP with no alive backend is decided too");
        assert_eq!(
            line,
            "serving 1 of 2 VIPs: web 2/3 backends up; api: NO ALIVE BACKEND (0 of 2)"
        );
    }

    #[test]
    fn ready_once_decided_or_at_the_backstop_and_only_once() {
        let t0 = Instant::now();
        let soon = t0 + Duration::from_millis(300);
        assert_eq!(step(Some(t0), false, soon), Step::Status);
        assert_eq!(step(Some(t0), true, soon), Step::Ready);
        let late = t0 + READY_WITHIN;
        assert_eq!(step(Some(t0), false, late), Step::ReadyUndecided);
        assert_eq!(step(Some(t0), true, late), Step::Ready);
        assert_eq!(step(None, true, late), Step::Status, "ready twice");
        assert_eq!(step(None, false, soon), Step::Status);
        assert!(
            READY_WITHIN < Duration::from_secs(60),
            "under the unit's TimeoutStartSec"
        );
    }

    #[test]
    fn a_vip_warming_up_is_not_decided() {
        let (decided, line) = summarize(&[vip("web", false, 3, 3), vip("api", true, 0, 2)], true);
        assert!(!decided);
        assert_eq!(
            line,
            "serving 1 of 2 VIPs: web 3/3 backends up; api: waiting for its backends' first \
             checks (in maintenance: nothing announced)"
        );
        let (decided, line) = summarize(&[], false);
        assert!(decided);
        assert_eq!(line, "serving 0 of 0 VIPs: no VIP configured");
    }
}
