//! The ring pool: which slots a request may touch, and the pool's memory,
//! mapped into ours so a table rewrite is plain stores instead of a syscall
//! per slot.

use std::ops::Range;

use aya::maps::{Array, MapData};
use lb_common::RING_POOL_SIZE;

use super::{DataplaneError, Result};

/// The pool slots of `len` slots from `base`.
pub(super) fn span(base: u32, len: u32) -> Result<Range<u32>> {
    let end = base
        .checked_add(len)
        .filter(|&e| e <= RING_POOL_SIZE)
        .ok_or(DataplaneError::RingRange { base, len })?;
    Ok(base..end)
}

/// The pool slot of `slot` in the table starting at `base`. Checked: a
/// wrapped index would land in another VIP's table.
pub(super) fn index(base: u32, slot: u32) -> Result<u32> {
    base.checked_add(slot)
        .filter(|&i| i < RING_POOL_SIZE)
        .ok_or(DataplaneError::RingRange {
            base,
            len: slot.saturating_add(1),
        })
}

/// Bytes between two slots of an array map of u32 values.
const STRIDE: usize = size_of::<u32>().next_multiple_of(8);

/// Where slot `index` starts in a mapping of `slots` slots, if it has it.
fn offset(index: u32, slots: usize) -> Option<usize> {
    let i = index as usize;
    (i < slots).then(|| i * STRIDE)
}

/// The ring pool's memory, shared with the XDP program (the map is created
/// with BPF_F_MMAPABLE). The kernel lays array elements out every
/// `round_up(value_size, 8)` bytes, so slot `i` is the u32 at byte `8 * i`.
/// Slots are aligned u32s, so each store is seen whole by the program.
pub(super) struct RingMem {
    ptr: std::ptr::NonNull<u32>,
    slots: usize,
}

impl RingMem {
    fn bytes(slots: usize) -> usize {
        slots * STRIDE
    }

    /// The pool of `ring` mapped into our memory; None (and a warning) if
    /// the kernel refuses.
    pub(super) fn map(ring: &Array<MapData, u32>) -> Option<Self> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let slots = RING_POOL_SIZE as usize;
        let fd = aya::maps::IterableMap::map(ring).fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array map's fd, shared, for its exact size;
        // the kernel refuses (MAP_FAILED) if the map is not mmapable.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::bytes(slots),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            log::warn!(
                "cannot mmap the ring map ({}); writing slots through syscalls",
                std::io::Error::last_os_error()
            );
            return None;
        }
        std::ptr::NonNull::new(p.cast()).map(|ptr| Self { ptr, slots })
    }

    fn slot(&self, index: u32) -> Option<*mut u32> {
        // SAFETY: in bounds of the live mapping (checked by `offset`).
        offset(index, self.slots).map(|at| unsafe { self.ptr.as_ptr().byte_add(at) })
    }

    pub(super) fn set(&self, index: u32, value: u32) -> Option<()> {
        // SAFETY: a slot of the live mapping; volatile because the XDP
        // program reads the same memory concurrently.
        self.slot(index).map(|p| unsafe { p.write_volatile(value) })
    }

    pub(super) fn get(&self, index: u32) -> Option<u32> {
        // SAFETY: as in `set`.
        self.slot(index).map(|p| unsafe { p.read_volatile() })
    }
}

impl Drop for RingMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), Self::bytes(self.slots)) };
    }
}

// SAFETY: the mapping is plain shared memory, owned by this handle alone.
unsafe impl Send for RingMem {}

#[cfg(test)]
mod tests {
    use super::*;

    fn range_err(r: Result<impl std::fmt::Debug>) -> (u32, u32) {
        match r {
            Err(DataplaneError::RingRange { base, len }) => (base, len),
            other => panic!("expected a RingRange error, got {other:?}"),
        }
    }

    #[test]
    fn span_covers_exactly_the_requested_slots() {
        assert_eq!(span(0, 0).unwrap(), 0..0);
        assert_eq!(span(10, 7).unwrap(), 10..17);
        // Up to the pool's last slot, inclusive.
        assert_eq!(
            span(RING_POOL_SIZE - 5, 5).unwrap(),
            RING_POOL_SIZE - 5..RING_POOL_SIZE
        );
        assert_eq!(
            span(RING_POOL_SIZE, 0).unwrap(),
            RING_POOL_SIZE..RING_POOL_SIZE
        );
    }

    #[test]
    fn span_past_the_pool_or_wrapping_is_refused() {
        assert_eq!(
            range_err(span(RING_POOL_SIZE - 5, 6)),
            (RING_POOL_SIZE - 5, 6)
        );
        assert_eq!(
            range_err(span(RING_POOL_SIZE + 1, 0)),
            (RING_POOL_SIZE + 1, 0)
        );
        // base + len wraps u32: must not come out as a small valid span.
        assert_eq!(range_err(span(u32::MAX, 2)), (u32::MAX, 2));
    }

    #[test]
    fn index_stays_inside_the_pool() {
        assert_eq!(index(0, 0).unwrap(), 0);
        assert_eq!(index(100, 20).unwrap(), 120);
        assert_eq!(index(RING_POOL_SIZE - 1, 0).unwrap(), RING_POOL_SIZE - 1);
        // The error names the slots from base up to the offending one.
        assert_eq!(
            range_err(index(RING_POOL_SIZE - 1, 1)),
            (RING_POOL_SIZE - 1, 2)
        );
        // A wrapped index would be another VIP's slot.
        assert_eq!(range_err(index(u32::MAX, 1)), (u32::MAX, 2));
        assert_eq!(range_err(index(1, u32::MAX)), (1, u32::MAX));
    }

    #[test]
    fn slots_are_eight_bytes_apart_and_bounded() {
        // The kernel's array element stride for 4-byte values.
        assert_eq!(STRIDE, 8);
        assert_eq!(offset(0, 4), Some(0));
        assert_eq!(offset(3, 4), Some(24));
        assert_eq!(offset(4, 4), None);
        assert_eq!(offset(u32::MAX, RING_POOL_SIZE as usize), None);
        assert_eq!(
            RingMem::bytes(RING_POOL_SIZE as usize),
            RING_POOL_SIZE as usize * 8
        );
    }
}
