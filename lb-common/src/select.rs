//! Which backend a new client gets. The XDP program calls this with closures
//! that read its maps; user space calls it with closures over its own copy of
//! the table to predict and explain the program's choice (`stickylb lookup`).
//! One definition keeps the two from drifting apart.

use crate::{MAX_PROBES, NO_BACKEND, client_hash};

/// A new client's pick from a Maglev table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick<B> {
    /// Slot the client's hash falls in.
    pub slot: u32,
    /// Slots skipped because their backend was not alive (0 normally).
    pub probes: u32,
    pub backend_id: u32,
    pub backend: B,
}

/// Picks the backend for `client` from a table of `size` slots. `slot_value`
/// reads a slot (a backend id or `NO_BACKEND`); `alive` returns the backend
/// if it may take new clients. If the client's own slot names a backend that
/// is not alive (marked dead, table not yet rewritten), up to `MAX_PROBES`
/// following slots are tried.
#[inline(always)]
pub fn maglev_pick<B>(
    client: [u8; 4],
    seed: u32,
    size: u32,
    slot_value: impl Fn(u32) -> Option<u32>,
    alive: impl Fn(u32) -> Option<B>,
) -> Option<Pick<B>> {
    if size == 0 {
        return None;
    }
    let home = client_hash(client, seed) % size;
    let mut slot = home;
    for probes in 0..MAX_PROBES {
        let backend_id = slot_value(slot)?;
        if backend_id == NO_BACKEND {
            return None;
        }
        if let Some(backend) = alive(backend_id) {
            return Some(Pick {
                slot: home,
                probes,
                backend_id,
                backend,
            });
        }
        slot += 1;
        if slot == size {
            slot = 0;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_home_slot_or_the_next_alive_one() {
        let table = [0u32, 1, 2, 0, 1, 2, 2];
        let size = table.len() as u32;
        let client = [203, 0, 113, 7];
        let home = client_hash(client, 1) % size;
        let get = |s: u32| table.get(s as usize).copied();
        let p = maglev_pick(client, 1, size, get, Some).unwrap();
        assert_eq!(
            (p.slot, p.probes, p.backend_id),
            (home, 0, table[home as usize])
        );
        // The home backend dead: the next slot with another backend wins.
        let dead = table[home as usize];
        let p = maglev_pick(client, 1, size, get, |b| (b != dead).then_some(b)).unwrap();
        assert_ne!(p.backend_id, dead);
        assert!(p.probes >= 1);
        // Nobody alive, empty table, or no table: no pick.
        assert!(maglev_pick(client, 1, size, get, |_| None::<u32>).is_none());
        assert!(maglev_pick(client, 1, 3, |_| Some(NO_BACKEND), Some).is_none());
        assert!(maglev_pick(client, 1, 0, get, Some).is_none());
    }

    /// The probing rule, stated on its own: with slot s holding backend s,
    /// the pick after k dead slots is slot home + k (mod size), and no pick
    /// once MAX_PROBES slots in a row are dead.
    #[test]
    fn probing_takes_the_following_slots_in_order_and_wraps() {
        const SIZE: u32 = 7;
        let get = |s: u32| (s < SIZE).then_some(s);
        let home_of = |c: [u8; 4]| client_hash(c, 9) % SIZE;
        // A client whose home is the last slot, so probing wraps to 0.
        let client = (0..=255u8)
            .map(|i| [198, 51, 100, i])
            .find(|&c| home_of(c) == SIZE - 1)
            .expect("some client hashes to the last slot");
        for dead in 1..=3u32 {
            let is_dead = |b: u32| (0..dead).any(|k| (SIZE - 1 + k) % SIZE == b);
            let p = maglev_pick(client, 9, SIZE, get, |b| (!is_dead(b)).then_some(b)).unwrap();
            assert_eq!((p.slot, p.probes), (SIZE - 1, dead));
            assert_eq!(p.backend_id, (SIZE - 1 + dead) % SIZE, "{dead} dead");
        }
        // MAX_PROBES dead slots in a row: nothing, even if later ones live.
        let big = MAX_PROBES * 2 + 1;
        let get = |s: u32| (s < big).then_some(s);
        let client = [198, 51, 100, 1];
        let home = client_hash(client, 9) % big;
        let far = |b: u32| (b + big - home) % big >= MAX_PROBES;
        assert!(maglev_pick(client, 9, big, get, |b| far(b).then_some(b)).is_none());
        let near = |b: u32| (b + big - home) % big >= MAX_PROBES - 1;
        let p = maglev_pick(client, 9, big, get, |b| near(b).then_some(b)).unwrap();
        assert_eq!(p.backend_id, (home + MAX_PROBES - 1) % big);
    }
}
