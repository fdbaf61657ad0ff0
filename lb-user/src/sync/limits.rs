//! What bounds one peer's stream: its queue (memory) and its token bucket
//! (rate). Pure, with the clock passed in, so both are tested exactly.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::lb::sync::SyncEntry;

/// Entries waiting for one peer, at most `cap`. When full the OLDEST goes:
/// the newest pins are the clients that may move to another node right now,
/// while an old one is the likeliest to have been superseded by a newer
/// entry of the same client already queued, and a busy client's pin is sent
/// again at the next refresh anyway.
#[derive(Debug)]
pub struct Queue {
    items: VecDeque<(SyncEntry, Instant)>,
    cap: usize,
    pub dropped: u64,
}

impl Queue {
    pub fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    /// Queues `e` (queued at `now`); the entries it pushed out.
    pub fn push(&mut self, e: SyncEntry, now: Instant) -> u64 {
        let mut out = 0;
        while self.items.len() >= self.cap {
            self.items.pop_front();
            out += 1;
        }
        self.items.push_back((e, now));
        self.dropped += out;
        out
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// When the oldest entry was queued.
    pub fn oldest(&self) -> Option<Instant> {
        self.items.front().map(|(_, t)| *t)
    }

    /// Takes up to `n` entries, oldest first, each with its idle time grown
    /// by its wait here (an entry's idle_ms is as of when it is sent).
    pub fn take(&mut self, n: usize, now: Instant) -> Vec<SyncEntry> {
        let n = n.min(self.items.len());
        self.items
            .drain(..n)
            .map(|(mut e, at)| {
                let waited = u32::try_from(now.saturating_duration_since(at).as_millis())
                    .unwrap_or(u32::MAX);
                e.idle_ms = e.idle_ms.saturating_add(waited);
                e
            })
            .collect()
    }
}

/// At most `rate` entries a second, in bursts of at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes up to `want` tokens; how many it took (0: wait `wait` first).
    pub fn take(&mut self, want: usize, now: Instant) -> usize {
        self.refill(now);
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }

    /// Takes `n` tokens if the bucket holds them all (`n` at most a
    /// burst): a batch goes whole or waits, `wait_for` its tokens.
    pub fn take_all(&mut self, n: usize, now: Instant) -> bool {
        self.refill(now);
        let n = (n as f64).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// How long until the bucket holds `n` tokens (at most a burst).
    pub fn wait_for(&mut self, n: usize, now: Instant) -> Duration {
        self.refill(now);
        let n = (n as f64).min(self.burst);
        if self.tokens >= n {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.tokens) / self.rate)
        }
    }

    /// How long until a token is there.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_common::VipKey;

    use super::*;

    fn entry(i: u32) -> SyncEntry {
        SyncEntry {
            vip: VipKey::new(Ipv4Addr::new(192, 0, 2, 10), 80, lb_common::proto::TCP),
            client: Ipv4Addr::from(0x0a00_0000 + i),
            backend: "10.1.0.1:80".parse().unwrap(),
            pinned_ms: 1,
            idle_ms: 5,
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts_them() {
        let now = Instant::now();
        let mut q = Queue::new(3);
        for i in 0..5 {
            q.push(entry(i), now);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped, 2);
        let got: Vec<Ipv4Addr> = q.take(10, now).iter().map(|e| e.client).collect();
        assert_eq!(got, [entry(2).client, entry(3).client, entry(4).client]);
        assert!(q.is_empty());
    }

    #[test]
    fn an_entry_is_as_idle_as_its_wait_when_sent() {
        let t0 = Instant::now();
        let mut q = Queue::new(8);
        q.push(entry(1), t0);
        let got = q.take(1, t0 + Duration::from_millis(250));
        assert_eq!(got[0].idle_ms, 5 + 250);
    }

    #[test]
    fn a_batch_waits_for_all_its_tokens() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert!(b.take_all(100, t0));
        // 30 tokens after 30 ms: not enough for a batch of 50, and none
        // are taken meanwhile.
        let t1 = t0 + Duration::from_millis(30);
        assert!(!b.take_all(50, t1));
        let wait = b.wait_for(50, t1);
        assert!(
            (Duration::from_millis(19)..=Duration::from_millis(21)).contains(&wait),
            "{wait:?}"
        );
        assert!(b.take_all(50, t1 + wait));
        assert!(!b.take_all(1, t1 + wait));
    }

    #[test]
    fn the_bucket_lets_through_its_rate_and_no_more() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert_eq!(b.take(500, t0), 100, "one burst at once");
        assert_eq!(b.take(500, t0), 0, "then nothing");
        assert!(b.wait(t0) > Duration::ZERO);
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(b.take(500, t1), 50, "50 ms at 1000/s");
        // Over ten seconds, never more than rate × time + one burst.
        let mut sent = 0;
        let mut t = t1;
        for _ in 0..10_000 {
            t += Duration::from_millis(1);
            sent += b.take(1000, t);
        }
        assert!((9_900..=10_000).contains(&sent), "{sent}");
        let t2 = t + Duration::from_secs(60);
        assert_eq!(
            b.take(usize::MAX, t2),
            100,
            "idle time saves one burst only"
        );
    }
}
