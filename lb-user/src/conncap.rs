//! A cap on the connections a listener (metrics, control socket) serves at
//! once, so that clients holding connections open cannot take the file
//! descriptors the health checks need.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::util::Every;

/// Over-the-cap messages are logged at most this often per listener.
const WARNING_EVERY: Duration = Duration::from_secs(10);

/// Bounds the connections one listener serves at once: a connection over
/// the cap is closed at once, and counted in `refused`.
pub(crate) struct ConnectionCap {
    what: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    refused: &'static AtomicU64,
    warning: Every,
}

impl ConnectionCap {
    pub(crate) fn new(what: &'static str, max: usize, refused: &'static AtomicU64) -> Self {
        Self {
            what,
            max,
            slots: Arc::new(Semaphore::new(max)),
            refused,
            warning: Every::new(WARNING_EVERY),
        }
    }

    /// A slot for a connection just accepted, held until it is dropped;
    /// `None` when all are taken: then the caller closes the connection.
    pub(crate) fn admit(&mut self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Some(permit);
        }
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warning.due() {
            log::warn!(
                "{}: {} connections open, the most served at once; closing new ones at once \
                 ({refused} so far). A client is holding connections open: find it with \
                 `ss -tnp` or `ss -xp`",
                self.what,
                self.max
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_cap_and_counts_the_rest() {
        static REFUSED: AtomicU64 = AtomicU64::new(0);
        let mut cap = ConnectionCap::new("test", 2, &REFUSED);
        let a = cap.admit().expect("first");
        let b = cap.admit().expect("second");
        assert!(cap.admit().is_none());
        assert!(cap.admit().is_none());
        assert_eq!(REFUSED.load(Ordering::Relaxed), 2);
        drop(a);
        let c = cap.admit().expect("a slot freed by a closed connection");
        assert!(cap.admit().is_none());
        assert_eq!(REFUSED.load(Ordering::Relaxed), 3);
        drop((b, c));
    }
}
