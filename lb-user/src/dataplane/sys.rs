//! The bpf(2) commands aya 0.14 does not offer: batch lookups
//! (BPF_MAP_LOOKUP_BATCH) and the per-type part of a link's info (its XDP
//! interface). aya's `LinkInfo` has the link type and program id but not
//! the union behind them, and `PinnedLink` does not lend its fd, so the
//! pinned link is opened and read here. Layouts and command numbers come
//! from aya-obj's generated uapi bindings.

use std::{
    io,
    ops::ControlFlow,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type};

/// A `bpf_attr` of zeros: what the kernel requires of every byte the
/// command does not use.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of integer fields (and arrays and unions
    // of them), for which all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The bpf(2) syscall; its non-negative result.
///
/// # Safety
/// Every pointer in `attr` must be valid for what `cmd` reads or writes
/// through it, for the duration of the call.
unsafe fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a whole bpf_attr of the size passed; the caller vouches
    // for the pointers in it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// What to do after one BPF_MAP_LOOKUP_BATCH call.
#[derive(Debug, PartialEq, Eq)]
enum BatchStep {
    /// A bucket holds more entries than fit: the same call with more room.
    Grow,
    /// Keep the first `got` entries; `done` if the map has no more.
    Take { got: usize, done: bool },
    /// The call failed.
    Fail,
}

/// The step after a call that returned `errno` (None: success) and reported
/// `got` entries copied, into buffers of `chunk`.
fn batch_step(errno: Option<i32>, got: usize, chunk: usize) -> BatchStep {
    match errno {
        // The kernel says ENOSPC only when not even the first bucket fits.
        Some(libc::ENOSPC) if got == 0 => BatchStep::Grow,
        // ENOENT: the end of the map, with the last entries copied.
        None | Some(libc::ENOENT) => BatchStep::Take {
            got: got.min(chunk),
            done: errno.is_some(),
        },
        _ => BatchStep::Fail,
    }
}

/// The batch lookup failed in a way that says this kernel (or this map
/// type) has none, so that entries must be read one by one.
pub(super) fn batch_unsupported(e: &io::Error) -> bool {
    /// The kernel's internal ENOTSUPP, which some paths let out.
    const ENOTSUPP: i32 = 524;
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOTSUP | ENOTSUPP)
    )
}

/// Entries of a hash map of `K` → `V` by BPF_MAP_LOOKUP_BATCH, a batch of
/// up to thousands at a time, handed to `visit` (which may stop the walk),
/// so that a walk of millions of entries needs memory for one batch only.
/// The caller guarantees the map's key and value sizes are those of `K`
/// and `V`.
pub(super) fn lookup_batch_each<K: bytemuck::Pod, V: bytemuck::Pod>(
    fd: BorrowedFd<'_>,
    mut visit: impl FnMut(&[K], &[V]) -> ControlFlow<()>,
) -> io::Result<()> {
    let mut chunk = 4096usize;
    let mut keys = vec![K::zeroed(); chunk];
    let mut values = vec![V::zeroed(); chunk];
    // The hash map's batch token is a bucket index (u32); room for more.
    let mut in_batch = 0u64;
    let mut out_batch = 0u64;
    let mut first = true;
    loop {
        let mut attr = zeroed_attr();
        // Field by field: a struct assigned whole would copy its padding
        // too, and the kernel refuses an attr with stray bytes. A null
        // in_batch starts from the beginning of the map.
        attr.batch.in_batch = if first {
            0
        } else {
            std::ptr::from_ref(&in_batch) as u64
        };
        attr.batch.out_batch = std::ptr::from_mut(&mut out_batch) as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = values.as_mut_ptr() as u64;
        attr.batch.count = u32::try_from(chunk).map_err(io::Error::other)?;
        attr.batch.map_fd = fd.as_raw_fd() as u32;
        // SAFETY: the kernel writes at most `count` keys and values into
        // buffers of that many elements of the map's sizes, and one token
        // into out_batch; all outlive the call.
        let err = unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        // SAFETY: the batch member is the one written above; the kernel
        // writes back how many it copied, also with ENOENT.
        let got = unsafe { attr.batch.count } as usize;
        match batch_step(err.as_ref().and_then(io::Error::raw_os_error), got, chunk) {
            BatchStep::Grow => {
                chunk *= 4;
                keys = vec![K::zeroed(); chunk];
                values = vec![V::zeroed(); chunk];
            }
            BatchStep::Take { got, done } => {
                if visit(&keys[..got], &values[..got]).is_break() || done {
                    return Ok(());
                }
                in_batch = out_batch;
                first = false;
            }
            BatchStep::Fail => return Err(err.expect("a failed call has an error")),
        }
    }
}

/// The BPF object pinned at `path`, opened.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut attr = zeroed_attr();
    // One field, not the whole struct: its trailing padding would be
    // copied in too (see lookup_batch_each).
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    // SAFETY: the path outlives the call.
    let fd = unsafe { sys_bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) }?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the XDP link pinned at `path` is: the id of the program it runs and
/// the interface index it is attached to (0 once that interface is gone).
pub(super) fn pinned_xdp_link(path: &Path) -> io::Result<(u32, u32)> {
    let fd = obj_get(path)?;
    // SAFETY: bpf_link_info is integers and unions of them, all zeros valid.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_link_info>() as u32;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    // SAFETY: info is as large as announced and outlives the call.
    unsafe { sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    if info.type_ != bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
        return Err(io::Error::other(format!(
            "{} is not an XDP link",
            path.display()
        )));
    }
    // SAFETY: an XDP link's info is the union's xdp member.
    let ifindex = unsafe { info.__bindgen_anon_1.xdp.ifindex };
    Ok((info.prog_id, ifindex))
}

#[cfg(test)]
mod tests {
    use aya_obj::generated::{
        bpf_attr__bindgen_ty_3 as BatchAttr, bpf_attr__bindgen_ty_9 as InfoAttr,
    };

    use super::*;

    #[test]
    fn a_full_call_is_taken_and_continued() {
        assert_eq!(
            batch_step(None, 4096, 4096),
            BatchStep::Take {
                got: 4096,
                done: false
            }
        );
    }

    #[test]
    fn enoent_takes_the_last_entries_and_ends() {
        assert_eq!(
            batch_step(Some(libc::ENOENT), 17, 4096),
            BatchStep::Take {
                got: 17,
                done: true
            }
        );
        assert_eq!(
            batch_step(Some(libc::ENOENT), 0, 4096),
            BatchStep::Take { got: 0, done: true }
        );
    }

    #[test]
    fn a_count_beyond_the_buffers_is_clamped() {
        assert_eq!(
            batch_step(None, 9000, 4096),
            BatchStep::Take {
                got: 4096,
                done: false
            }
        );
    }

    #[test]
    fn enospc_grows_only_when_nothing_was_copied() {
        assert_eq!(batch_step(Some(libc::ENOSPC), 0, 4096), BatchStep::Grow);
        assert_eq!(batch_step(Some(libc::ENOSPC), 3, 4096), BatchStep::Fail);
        assert_eq!(batch_step(Some(libc::EPERM), 0, 4096), BatchStep::Fail);
    }

    #[test]
    fn kernels_without_batch_lookup_fall_back() {
        for errno in [libc::EINVAL, libc::ENOTSUP, 524] {
            assert!(
                batch_unsupported(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [libc::EPERM, libc::ENOMEM, libc::EFAULT] {
            assert!(
                !batch_unsupported(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }

    #[test]
    fn the_generated_layouts_are_the_kernels() {
        // Offsets the uapi fixes: a wrong binding would be read silently.
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(InfoAttr, info), 8);
        assert_eq!(std::mem::offset_of!(bpf_link_info, prog_id), 8);
        assert_eq!(std::mem::offset_of!(bpf_link_info, __bindgen_anon_1), 16);
        assert_eq!(bpf_cmd::BPF_MAP_LOOKUP_BATCH as u32, 24);
    }
}
