//! Where a VIP sits in `SLB_VIP_INDEX`: open addressing over a power-of-two
//! array, a short fixed window of slots from a multiplicative hash of the
//! key. The window is short so that the XDP program's probe is a few
//! unrolled loads; a VIP that finds its window full stays out of the index
//! and is found in `SLB_VIPS`, which always holds every VIP.

use crate::MAX_VIPS;

/// Slots in `SLB_VIP_INDEX`: eight per VIP at most, so that windows rarely
/// fill.
pub const SLOTS: u32 = 512;
/// Slots a VIP may sit in, from its home slot on.
pub const PROBES: u32 = 4;

const _: () = assert!(SLOTS.is_power_of_two() && SLOTS >= 8 * MAX_VIPS);

/// The home slot of a key word (`VipKey::word`): Fibonacci hashing, whose
/// top bits spread keys that differ only in a few bytes (one port, one
/// address) over the whole array.
#[inline(always)]
pub const fn home(word: u64) -> u32 {
    (word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS.trailing_zeros())) as u32
}

/// The `probe`th slot of the window starting at `home`.
#[inline(always)]
pub const fn slot(home: u32, probe: u32) -> u32 {
    (home + probe) & (SLOTS - 1)
}

/// Whether `index` is in the window of the key word `word`.
pub const fn in_window(word: u64, index: u32) -> bool {
    (index.wrapping_sub(home(word)) & (SLOTS - 1)) < PROBES
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;
    use crate::{VipKey, proto};

    #[test]
    fn home_is_in_range_and_spreads_neighbouring_keys() {
        let mut seen = [0u32; SLOTS as usize];
        for port in 0..64u16 {
            let k = VipKey::new(Ipv4Addr::new(10, 0, 0, 1), 8000 + port, proto::TCP);
            let h = home(k.word());
            assert!(h < SLOTS);
            seen[h as usize] += 1;
        }
        // 64 consecutive ports: no home slot shared by more than two.
        assert!(seen.iter().all(|&n| n <= 2), "{seen:?}");
    }

    #[test]
    fn window_wraps_around_the_end() {
        let home_last = SLOTS - 1;
        assert_eq!(slot(home_last, 0), SLOTS - 1);
        assert_eq!(slot(home_last, 1), 0);
        assert_eq!(slot(home_last, PROBES - 1), PROBES - 2);
        let k = VipKey::new(Ipv4Addr::new(192, 0, 2, 7), 53, proto::UDP);
        let h = home(k.word());
        for p in 0..PROBES {
            assert!(in_window(k.word(), slot(h, p)));
        }
        assert!(!in_window(k.word(), slot(h, PROBES)));
        assert!(!in_window(k.word(), slot(h, SLOTS - 1)));
    }
}
