//! Whether a map pinned by an earlier run may be adopted.
//!
//! Adopting a pinned map of another shape would go wrong silently: aya
//! reuses it as it is, so a larger value than ours would be copied past the
//! end of our buffers, another map type behaves differently, and a changed
//! `affinity_capacity` would simply not apply. So every pinned map is
//! compared with what this build creates before anything is loaded.

use std::path::Path;

use aya::maps::MapInfo;
use lb_common::map_shapes::{self, MapShape};

use super::{DataplaneError, Result};

/// The shape of the map pinned at `path`, as the kernel reports it.
pub fn pinned_shape(name: &'static str, path: &Path) -> Result<MapShape> {
    let info = MapInfo::from_pin(path).map_err(|e| DataplaneError::PinnedInfo {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    Ok(MapShape {
        name,
        kind: info.map_type().map_or(u32::MAX, |t| t as u32),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: Some(info.max_entries()),
        flags: info.map_flags(),
    })
}

/// How a found map differs from the one wanted.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Mismatch {
    /// Every difference, found first.
    pub detail: String,
    /// What else than `--fresh` would make it match, if anything.
    pub hint: &'static str,
}

/// How `have` differs from `want`, the shape-table entry whose open capacity
/// (the affinity table's) is `affinity_capacity`; None if it may be adopted.
pub(super) fn mismatch(
    want: &MapShape,
    affinity_capacity: u32,
    have: &MapShape,
) -> Option<Mismatch> {
    let want_max = want.max_entries.unwrap_or(affinity_capacity);
    let mut detail = Vec::new();
    let mut hint = "";
    if have.kind != want.kind {
        detail.push(format!("map type {} instead of {}", have.kind, want.kind));
    }
    if have.key_size != want.key_size {
        detail.push(format!(
            "{}-byte keys instead of {}",
            have.key_size, want.key_size
        ));
    }
    if have.value_size != want.value_size {
        detail.push(format!(
            "{}-byte values instead of {}",
            have.value_size, want.value_size
        ));
    }
    if have.max_entries != Some(want_max) {
        detail.push(format!(
            "{} entries instead of {want_max}",
            have.max_entries.unwrap_or(0)
        ));
        if want.max_entries.is_none() {
            hint = ", or set affinity_capacity back to the pinned table's size";
        }
    }
    if have.flags != want.flags {
        detail.push(format!(
            "flags {:#x} instead of {:#x}",
            have.flags, want.flags
        ));
    }
    (!detail.is_empty()).then(|| Mismatch {
        detail: detail.join(", "),
        hint,
    })
}

/// Every map pinned in `dir` is one this build would create with
/// `affinity_capacity`; the first that is not is the error.
pub(super) fn check_pinned(dir: &Path, affinity_capacity: u32) -> Result<()> {
    for want in map_shapes::ALL {
        let path = dir.join(want.name);
        if !path.exists() {
            continue;
        }
        let have = pinned_shape(want.name, &path)?;
        if let Some(Mismatch { detail, hint }) = mismatch(&want, affinity_capacity, &have) {
            return Err(DataplaneError::PinnedShape { path, detail, hint });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::map_names;

    use super::*;

    fn wanted(name: &str) -> MapShape {
        map_shapes::ALL
            .into_iter()
            .find(|s| s.name == name)
            .expect("in the shape table")
    }

    /// What the kernel reports for a map created from `want`.
    fn as_created(want: MapShape, affinity_capacity: u32) -> MapShape {
        MapShape {
            max_entries: Some(want.max_entries.unwrap_or(affinity_capacity)),
            ..want
        }
    }

    #[test]
    fn every_map_as_created_matches() {
        for want in map_shapes::ALL {
            assert_eq!(
                mismatch(&want, 4096, &as_created(want, 4096)),
                None,
                "{}",
                want.name
            );
        }
    }

    #[test]
    fn another_map_type_is_a_mismatch() {
        let want = wanted(map_names::VIPS);
        let have = MapShape {
            kind: map_shapes::kind::LRU_HASH,
            ..as_created(want, 4096)
        };
        let m = mismatch(&want, 4096, &have).expect("mismatch");
        assert_eq!(
            m.detail,
            format!(
                "map type {} instead of {}",
                map_shapes::kind::LRU_HASH,
                want.kind
            )
        );
        assert_eq!(m.hint, "");
    }

    #[test]
    fn other_key_or_value_sizes_are_mismatches() {
        let want = wanted(map_names::BACKENDS);
        let have = MapShape {
            key_size: want.key_size + 4,
            ..as_created(want, 4096)
        };
        assert_eq!(
            mismatch(&want, 4096, &have).expect("mismatch").detail,
            format!(
                "{}-byte keys instead of {}",
                want.key_size + 4,
                want.key_size
            )
        );
        let have = MapShape {
            value_size: want.value_size - 8,
            ..as_created(want, 4096)
        };
        assert_eq!(
            mismatch(&want, 4096, &have).expect("mismatch").detail,
            format!(
                "{}-byte values instead of {}",
                want.value_size - 8,
                want.value_size
            )
        );
    }

    #[test]
    fn other_flags_are_a_mismatch() {
        let want = wanted(map_names::RING);
        assert_eq!(want.flags, map_shapes::F_MMAPABLE);
        let have = MapShape {
            flags: 0,
            ..as_created(want, 4096)
        };
        assert_eq!(
            mismatch(&want, 4096, &have).expect("mismatch").detail,
            format!("flags 0x0 instead of {:#x}", map_shapes::F_MMAPABLE)
        );
    }

    #[test]
    fn a_fixed_capacity_mismatch_has_no_hint() {
        let want = wanted(map_names::RING);
        let fixed = want.max_entries.expect("a fixed capacity");
        let have = MapShape {
            max_entries: Some(fixed / 2),
            ..want
        };
        let m = mismatch(&want, 4096, &have).expect("mismatch");
        assert_eq!(
            m.detail,
            format!("{} entries instead of {fixed}", fixed / 2)
        );
        // affinity_capacity has nothing to do with this map.
        assert_eq!(m.hint, "");
    }

    #[test]
    fn another_affinity_capacity_hints_at_the_setting() {
        let want = wanted(map_names::AFFINITY);
        assert_eq!(want.max_entries, None);
        let have = as_created(want, 4096);
        let m = mismatch(&want, 8192, &have).expect("mismatch");
        assert_eq!(m.detail, "4096 entries instead of 8192");
        assert_eq!(
            m.hint,
            ", or set affinity_capacity back to the pinned table's size"
        );
        // The capacity the table was created with adopts it.
        assert_eq!(mismatch(&want, 4096, &have), None);
    }

    #[test]
    fn every_difference_is_listed_in_order() {
        let want = wanted(map_names::AFFINITY);
        let have = MapShape {
            name: want.name,
            kind: map_shapes::kind::HASH,
            key_size: want.key_size * 2,
            value_size: want.value_size * 2,
            max_entries: Some(10),
            flags: 1,
        };
        let m = mismatch(&want, 20, &have).expect("mismatch");
        assert_eq!(
            m.detail,
            format!(
                "map type {} instead of {}, {}-byte keys instead of {}, \
                 {}-byte values instead of {}, 10 entries instead of 20, \
                 flags 0x1 instead of {:#x}",
                map_shapes::kind::HASH,
                want.kind,
                want.key_size * 2,
                want.key_size,
                want.value_size * 2,
                want.value_size,
                want.flags
            )
        );
        assert!(m.hint.contains("affinity_capacity"));
    }

    #[test]
    fn pins_from_before_sync_are_refused() {
        // The global counters of a build without sync events: 9, fewer
        // than today, so every pinned set of that build is refused as a
        // whole (the sync maps it lacks would otherwise just be created).
        let want = wanted(map_names::GLOBAL_STATS);
        let have = MapShape {
            max_entries: Some(9),
            ..want
        };
        let m = mismatch(&want, 4096, &have).expect("mismatch");
        assert_eq!(
            m.detail,
            format!("9 entries instead of {}", lb_common::global_counter::COUNT)
        );
        assert_eq!(m.hint, "");
        // The ring buffer's capacity is its size in bytes.
        let ring = wanted(map_names::SYNC_EVENTS);
        let have = MapShape {
            max_entries: Some(lb_common::SYNC_RING_BYTES / 2),
            ..ring
        };
        assert_eq!(
            mismatch(&ring, 4096, &have).expect("mismatch").detail,
            format!(
                "{} entries instead of {}",
                lb_common::SYNC_RING_BYTES / 2,
                lb_common::SYNC_RING_BYTES
            )
        );
    }

    #[test]
    fn the_error_message_is_unchanged() {
        let want = wanted(map_names::AFFINITY);
        let Mismatch { detail, hint } =
            mismatch(&want, 8192, &as_created(want, 4096)).expect("mismatch");
        let err = DataplaneError::PinnedShape {
            path: "/sys/fs/bpf/stickylb/SLB_AFFINITY".into(),
            detail,
            hint,
        };
        assert_eq!(
            err.to_string(),
            "the map pinned at /sys/fs/bpf/stickylb/SLB_AFFINITY is not what this stickylb \
             creates (4096 entries instead of 8192): it comes from another version or \
             configuration. Start with --fresh to replace the pinned state (every client is \
             re-pinned), or set affinity_capacity back to the pinned table's size"
        );
    }
}
