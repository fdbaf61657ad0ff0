//! Network interfaces by name and by index, as the kernel knows them in the
//! current network namespace. Asks the kernel rather than /sys/class/net,
//! which shows the namespace sysfs was mounted in (not ours when the daemon
//! was moved into a network namespace with `nsenter --net`).

use std::ffi::{CStr, CString};

/// The index of the interface with this name; `None` when there is none.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// The name of the interface with this index, or "#index" when it has none
/// (any more), so a message can always say which interface it means.
pub fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{index}");
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_both_ways() {
        let lo = ifindex("lo").expect("every network namespace has lo");
        assert_eq!(ifname(lo), "lo");
    }

    #[test]
    fn missing_interfaces_are_none_or_numbered() {
        assert_eq!(ifindex("nosuchnic0"), None);
        assert_eq!(ifindex("bad\0name"), None);
        assert_eq!(ifindex(""), None);
        assert_eq!(ifname(u32::MAX), format!("#{}", u32::MAX));
    }
}
