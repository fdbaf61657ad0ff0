//! Maglev lookup-table population (Eisenbud et al., NSDI'16), with weights
//! and with exact minimal disruption for backends that go out of service.
//!
//! Each backend's permutation of the table's slots is derived from its
//! identity (e.g. `"10.0.0.12:80"`), and backends take turns in the order of
//! their identities, so every node given the same set of backends builds the
//! same table, whatever order its configuration lists them in.
//!
//! A table is built in two passes:
//! 1. the *base* table: plain Maglev over every configured backend with a
//!    non-zero weight, in or out of service;
//! 2. the slots of backends that are out of service (dead or draining) are
//!    emptied and refilled by the in-service backends, each continuing along
//!    its own permutation, taking turns by weight.
//!
//! So a backend going down moves exactly its own slots and nothing else, and
//! coming back moves exactly those slots back. Adding or removing a backend
//! from the configuration changes the base table, which (as in the paper)
//! moves slightly more than the ideal 1/N; stickylb's affinity table keeps
//! live clients where they are in either case.

use alloc::vec;
use alloc::vec::Vec;

use crate::hash::murmur3_32;

/// Slot value of a table with no backend in service.
pub const EMPTY: u32 = u32::MAX;

const OFFSET_SEED: u32 = 0x6d61_676c; // "magl"
const SKIP_SEED: u32 = 0x6576_3031; // "ev01"

/// One backend as the table builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// Stable identity that seeds the permutation (address:port).
    pub identity: &'a [u8],
    /// Relative share of slots; 0 keeps the backend out of the table entirely.
    pub weight: u32,
    /// In service (alive and not draining). Out-of-service members keep their
    /// place in the base table, so their return moves only their own slots.
    pub in_service: bool,
}

/// Problems that make a table impossible to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The size must be a prime, or the permutations do not cover the table.
    SizeNotPrime(u32),
    /// Two members share an identity, so their permutations would coincide.
    DuplicateIdentity(usize, usize),
}

impl core::fmt::Display for MaglevError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::SizeNotPrime(n) => write!(f, "Maglev table size {n} is not a prime"),
            Self::DuplicateIdentity(a, b) => {
                write!(f, "backends #{a} and #{b} have the same identity")
            }
        }
    }
}

/// Whether `n` is prime (trial division; table sizes are small).
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d * d <= n as u64 {
        if (n as u64).is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Smallest prime `>= n`.
pub fn next_prime(mut n: u32) -> u32 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

struct Walker {
    member: usize,
    offset: u64,
    skip: u64,
    /// Position in the member's permutation.
    next: u64,
    weight: u64,
    credit: u64,
}

impl Walker {
    fn new(member: usize, identity: &[u8], weight: u32, size: u64) -> Self {
        Self {
            member,
            offset: u64::from(murmur3_32(identity, OFFSET_SEED)) % size,
            skip: u64::from(murmur3_32(identity, SKIP_SEED)) % (size - 1) + 1,
            next: 0,
            weight: u64::from(weight),
            credit: 0,
        }
    }

    /// Claims the member's most preferred empty slot.
    fn claim(&mut self, table: &mut [u32], size: u64) {
        loop {
            let slot = ((self.offset + self.next * self.skip) % size) as usize;
            self.next += 1;
            if table[slot] == EMPTY {
                table[slot] = self.member as u32;
                return;
            }
        }
    }
}

/// Fills every `EMPTY` slot of `table` with the walkers, in weighted turns.
fn populate(table: &mut [u32], walkers: &mut [Walker]) {
    let size = table.len() as u64;
    let mut empty = table.iter().filter(|&&s| s == EMPTY).count();
    let max_weight = walkers.iter().map(|w| w.weight).max().unwrap_or(0);
    if max_weight == 0 {
        return;
    }
    // A walker with weight w gets w turns for every max_weight turns of the
    // heaviest one, so shares of the freshly filled slots follow weights.
    while empty > 0 {
        for w in walkers.iter_mut() {
            w.credit += w.weight;
            if w.credit < max_weight {
                continue;
            }
            w.credit -= max_weight;
            w.claim(table, size);
            empty -= 1;
            if empty == 0 {
                break;
            }
        }
    }
}

/// Builds a table of `size` slots; each slot holds an index into `members`,
/// or [`EMPTY`] when no member is in service.
pub fn build(members: &[Member<'_>], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime(size));
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by(|&a, &b| members[a].identity.cmp(members[b].identity));
    for pair in order.windows(2) {
        if members[pair[0]].identity == members[pair[1]].identity {
            let (a, b) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
            return Err(MaglevError::DuplicateIdentity(a, b));
        }
    }
    let size64 = u64::from(size);
    let walkers = |keep: &dyn Fn(&Member<'_>) -> bool| -> Vec<Walker> {
        order
            .iter()
            .filter(|&&i| members[i].weight > 0 && keep(&members[i]))
            .map(|&i| Walker::new(i, members[i].identity, members[i].weight, size64))
            .collect()
    };

    let mut table = vec![EMPTY; size as usize];
    populate(&mut table, &mut walkers(&|_| true));

    let mut vacated = false;
    for slot in table.iter_mut() {
        if *slot != EMPTY && !members[*slot as usize].in_service {
            *slot = EMPTY;
            vacated = true;
        }
    }
    if vacated {
        populate(&mut table, &mut walkers(&|m| m.in_service));
    }
    Ok(table)
}

/// Slots whose value differs between two tables of the same size, with the
/// new value: what the daemon writes to move from `old` to `new`.
pub fn changed_slots<'a>(old: &'a [u32], new: &'a [u32]) -> impl Iterator<Item = (u32, u32)> + 'a {
    debug_assert_eq!(old.len(), new.len());
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (o, n))| o != n)
        .map(|(i, (_, &n))| (i as u32, n))
}

#[cfg(test)]
mod tests {
    use alloc::collections::BTreeMap;
    use alloc::format;
    use alloc::string::String;

    use super::*;

    const M: u32 = 65_537;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256))
            .collect()
    }

    fn members(names: &[String]) -> Vec<Member<'_>> {
        names
            .iter()
            .map(|n| Member {
                identity: n.as_bytes(),
                weight: 1,
                in_service: true,
            })
            .collect()
    }

    /// Table as identities, so tables from differently ordered inputs compare.
    fn by_identity<'a>(m: &[Member<'a>], table: &[u32]) -> Vec<&'a [u8]> {
        table.iter().map(|&s| m[s as usize].identity).collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0usize; n];
        for &s in table {
            c[s as usize] += 1;
        }
        c
    }

    #[test]
    fn primes() {
        assert!(is_prime(2) && is_prime(3) && is_prime(65_537) && is_prime(655_373));
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(65_536) && !is_prime(65_535));
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(build(&[], 65_536), Err(MaglevError::SizeNotPrime(65_536)));
    }

    #[test]
    fn balance() {
        // The paper's figure: with M >> N every backend owns M/N slots within
        // a few percent. Bounds are loose enough for any hash, tight enough
        // to catch a broken turn order.
        for (n, bound) in [(3usize, 1.01), (10, 1.02), (100, 1.1)] {
            let nm = names(n);
            let m = members(&nm);
            let t = build(&m, M).unwrap();
            assert!(t.iter().all(|&s| s != EMPTY));
            let c = counts(&t, n);
            let max = *c.iter().max().unwrap() as f64;
            let avg = f64::from(M) / n as f64;
            assert!(max / avg <= bound, "N={n}: max/avg {:.4}", max / avg);
        }
    }

    #[test]
    fn order_does_not_matter() {
        let nm = names(10);
        let m = members(&nm);
        let mut rev = m.clone();
        rev.reverse();
        let mut rot = m.clone();
        rot.rotate_left(3);
        let a = by_identity(&m, &build(&m, M).unwrap());
        assert_eq!(a, by_identity(&rev, &build(&rev, M).unwrap()));
        assert_eq!(a, by_identity(&rot, &build(&rot, M).unwrap()));
    }

    #[test]
    fn going_out_of_service_moves_exactly_its_own_slots() {
        for n in [3usize, 10, 100] {
            let nm = names(n);
            let m = members(&nm);
            let before = build(&m, M).unwrap();
            let gone = n / 2;
            let mut after_m = m.clone();
            after_m[gone].in_service = false;
            let after = build(&after_m, M).unwrap();
            let moved: Vec<u32> = changed_slots(&before, &after).map(|(s, _)| s).collect();
            let owned: Vec<u32> = (0..M)
                .filter(|&s| before[s as usize] == gone as u32)
                .collect();
            // Exactly the slots the backend owned move, and no other.
            assert_eq!(moved, owned, "N={n}");
            assert!(after.iter().all(|&s| s != gone as u32 && s != EMPTY));
            // They are spread over the survivors, not dumped on one.
            let c = counts(&after, n);
            let max = *c.iter().max().unwrap() as f64;
            let avg = f64::from(M) / (n - 1) as f64;
            assert!(
                max / avg < 1.1,
                "N={n}: max/avg after refill {:.3}",
                max / avg
            );
        }
    }

    #[test]
    fn coming_back_moves_about_one_nth_and_only_to_it() {
        for n in [3usize, 10, 100] {
            let nm = names(n);
            let mut m = members(&nm);
            let back = n - 1;
            m[back].in_service = false;
            let before = build(&m, M).unwrap();
            m[back].in_service = true;
            let after = build(&m, M).unwrap();
            let changes: Vec<(u32, u32)> = changed_slots(&before, &after).collect();
            assert!(changes.iter().all(|&(_, v)| v == back as u32), "N={n}");
            let frac = changes.len() as f64 / f64::from(M);
            let ideal = 1.0 / n as f64;
            assert!(
                (frac - ideal).abs() / ideal < 0.1,
                "N={n}: moved {frac:.4}, ideal {ideal:.4}"
            );
        }
    }

    #[test]
    fn new_backend_in_config_takes_about_one_nth() {
        // A configuration change rebuilds the base table: the new backend gets
        // ~1/(N+1) of the slots; as in the paper a few more slots than that
        // change hands, which the affinity table absorbs for live clients.
        for n in [3usize, 10, 100] {
            let nm = names(n + 1);
            let all = members(&nm);
            let before = build(&all[..n], M).unwrap();
            let after = build(&all, M).unwrap();
            let to_new = after.iter().filter(|&&s| s == n as u32).count();
            let moved = changed_slots(&before, &after).count();
            let ideal = f64::from(M) / (n + 1) as f64;
            assert!(
                (to_new as f64 - ideal).abs() / ideal < 0.1,
                "N={n}: {to_new} vs {ideal}"
            );
            assert!(
                (moved as f64) < ideal * 1.6,
                "N={n}: {moved} slots changed, ideal {ideal}"
            );
        }
    }

    #[test]
    fn weights_are_proportional() {
        let nm = names(4);
        let mut m = members(&nm);
        for (i, w) in [1u32, 2, 3, 4].into_iter().enumerate() {
            m[i].weight = w;
        }
        let t = build(&m, M).unwrap();
        let c = counts(&t, 4);
        for (i, w) in [1.0f64, 2.0, 3.0, 4.0].into_iter().enumerate() {
            let share = c[i] as f64 / f64::from(M);
            assert!(
                (share - w / 10.0).abs() < 0.01,
                "weight {w}: share {share:.4}"
            );
        }
        // Weight 0 takes no slot at all.
        m[0].weight = 0;
        let t = build(&m, M).unwrap();
        assert!(t.iter().all(|&s| s != 0 && s != EMPTY));
    }

    #[test]
    fn nobody_in_service_leaves_the_table_empty() {
        let nm = names(3);
        let mut m = members(&nm);
        for x in &mut m {
            x.in_service = false;
        }
        assert!(build(&m, 7).unwrap().iter().all(|&s| s == EMPTY));
        assert!(build(&[], 7).unwrap().iter().all(|&s| s == EMPTY));
    }

    #[test]
    fn duplicate_identities_are_rejected() {
        let nm = [
            String::from("a:1"),
            String::from("b:1"),
            String::from("a:1"),
        ];
        assert_eq!(
            build(&members(&nm), 7),
            Err(MaglevError::DuplicateIdentity(0, 2))
        );
    }

    #[test]
    fn exact_slots_of_a_small_table() {
        // Pin the algorithm: any change to hashing or turn order shows here
        // (and would make nodes of different versions disagree).
        let nm = names(3);
        let m = members(&nm);
        let t = build(&m, 13).unwrap();
        let mut per: BTreeMap<u32, usize> = BTreeMap::new();
        for &s in &t {
            *per.entry(s).or_default() += 1;
        }
        assert_eq!(per.values().sum::<usize>(), 13);
        assert!(per.values().all(|&c| (4..=5).contains(&c)), "{per:?}");
        assert_eq!(t, [0, 1, 2, 0, 1, 2, 2, 2, 1, 0, 0, 0, 1]);
    }
}
