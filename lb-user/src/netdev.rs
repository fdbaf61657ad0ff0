//! Network interfaces by name and by index, as the kernel knows them in the
//! current network namespace. Asks the kernel rather than /sys/class/net,
//! which shows the namespace sysfs was mounted in (not ours when the daemon
//! was moved into a network namespace with `nsenter --net`).

use std::{
    collections::HashMap,
    ffi::{CStr, CString},
    net::Ipv4Addr,
};

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

/// The IPv4 addresses and MAC addresses of this namespace's interfaces.
#[derive(Debug, Default)]
pub struct Addresses {
    /// (interface, address), every interface's.
    pub ipv4: Vec<(String, Ipv4Addr)>,
    /// Interface → its MAC (Ethernet-like interfaces only).
    pub macs: HashMap<String, [u8; 6]>,
}

impl Addresses {
    /// Whether `iface` holds `addr`.
    pub fn holds(&self, iface: &str, addr: Ipv4Addr) -> bool {
        self.ipv4.iter().any(|(i, a)| i == iface && *a == addr)
    }
}

/// Every interface's addresses, from getifaddrs(3) (empty if it fails).
pub fn addresses() -> Addresses {
    let mut out = Addresses::default();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: head is a valid out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is an element of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points to a sockaddr whose
        // family says which larger type it is.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.ipv4
                    .push((name, Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            }
            libc::AF_PACKET => {
                // SAFETY: an AF_PACKET address is a sockaddr_ll.
                let sll = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_ll>() };
                if sll.sll_halen == 6 {
                    let mut mac = [0; 6];
                    mac.copy_from_slice(&sll.sll_addr[..6]);
                    out.macs.insert(name, mac);
                }
            }
            _ => {}
        }
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
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
    fn loopback_holds_127_0_0_1() {
        let a = addresses();
        assert!(a.holds("lo", Ipv4Addr::LOCALHOST), "{a:?}");
        assert!(!a.holds("lo", Ipv4Addr::new(192, 0, 2, 254)));
    }

    #[test]
    fn missing_interfaces_are_none_or_numbered() {
        assert_eq!(ifindex("nosuchnic0"), None);
        assert_eq!(ifindex("bad\0name"), None);
        assert_eq!(ifindex(""), None);
        assert_eq!(ifname(u32::MAX), format!("#{}", u32::MAX));
    }
}
