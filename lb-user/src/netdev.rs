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

    /// The primary IPv4 address of `iface`: the first it lists (the kernel
    /// keeps an interface's primary addresses before its secondary ones, in
    /// the order they were added, as `ip -4 addr show dev IFACE` prints them).
    pub fn primary_ipv4(&self, iface: &str) -> Option<Ipv4Addr> {
        self.ipv4.iter().find(|(i, _)| i == iface).map(|(_, a)| *a)
    }
}

/// `net.ipv4.conf.<iface>.forwarding` in this network namespace: `None` if
/// it cannot be read (no such interface).
pub fn ipv4_forwarding(iface: &str) -> Option<bool> {
    // /proc/sys/net shows the namespace of the process that reads it, not the
    // one procfs was mounted in.
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim() != "0")
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

/// Why a VLAN tag could reach `name` outside the frame, where an XDP
/// program in driver mode cannot see it (and `XDP_TX` drops it): the NIC's
/// `rx-vlan-offload` is on, or the interface is a veth (whose peer hands
/// over the tag it kept in metadata, whatever this side's offloads).
/// `None`: tags stay in the frame. Errors are the ethtool ioctl's.
pub fn hidden_vlan_tags(name: &str) -> std::io::Result<Option<&'static str>> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x03;
    const ETHTOOL_GFLAGS: u32 = 0x25;
    const ETH_FLAG_RXVLAN: u32 = 1 << 8;
    /// `struct ethtool_drvinfo` up to the driver name (the kernel writes the
    /// whole struct, 196 bytes).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct Value {
        cmd: u32,
        data: u32,
    }
    fn ioctl<T>(name: &str, data: &mut T) -> std::io::Result<()> {
        // SAFETY: the command reads and writes `data`, a struct of its layout.
        unsafe {
            ifreq_ioctl(name, SIOCETHTOOL, |ifr| {
                ifr.ifr_ifru.ifru_data = (data as *mut T).cast()
            })
        }
        .map(drop)
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // Not every device has a driver to name (loopback has none).
    match ioctl(name, &mut info) {
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
        r => r?,
    }
    if info.driver.starts_with(b"veth\0") {
        return Ok(Some(
            "it is a veth, whose peer can hand it tags in metadata",
        ));
    }
    let mut flags = Value {
        cmd: ETHTOOL_GFLAGS,
        data: 0,
    };
    ioctl(name, &mut flags)?;
    Ok((flags.data & ETH_FLAG_RXVLAN != 0).then_some("its rx-vlan-offload is on"))
}

/// The MAC address of interface `name`; `None` if it has none (not an
/// Ethernet device, or all zero, like loopback's).
pub fn mac(name: &str) -> std::io::Result<Option<[u8; 6]>> {
    const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
    const ARPHRD_ETHER: libc::sa_family_t = 1;
    // SAFETY: SIOCGIFHWADDR writes only the ifreq's hardware address.
    let ifr = unsafe { ifreq_ioctl(name, SIOCGIFHWADDR, |_| {})? };
    // SAFETY: the kernel filled the union's hwaddr member.
    let addr = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(addr.sa_data) {
        *m = b as u8;
    }
    Ok((addr.sa_family == ARPHRD_ETHER && mac != [0; 6]).then_some(mac))
}

/// Runs interface ioctl `request` on an `ifreq` naming `name`, after `fill`
/// has set the rest; the `ifreq` as the kernel left it.
///
/// # Safety
/// What `fill` leaves in the `ifreq` must be what `request` expects (a
/// pointer in it must point at memory of the layout the request writes).
unsafe fn ifreq_ioctl(
    name: &str,
    request: libc::c_ulong,
    fill: impl FnOnce(&mut libc::ifreq),
) -> std::io::Result<libc::ifreq> {
    // SAFETY: a zeroed ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() || name.contains('\0') {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    fill(&mut ifr);
    // SAFETY: plain socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifr names the interface and holds what the caller vouched for.
    let r = unsafe { libc::ioctl(fd, request as _, &mut ifr) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    if r < 0 { Err(err) } else { Ok(ifr) }
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
    fn loopback_hides_no_vlan_tags_and_a_missing_interface_is_an_error() {
        assert_eq!(hidden_vlan_tags("lo").unwrap(), None);
        assert!(hidden_vlan_tags("nosuchnic0").is_err());
    }

    #[test]
    fn loopback_has_no_mac_and_a_missing_interface_is_an_error() {
        assert_eq!(mac("lo").unwrap(), None);
        assert!(mac("nosuchnic0").is_err());
    }

    #[test]
    fn missing_interfaces_are_none_or_numbered() {
        assert_eq!(ifindex("nosuchnic0"), None);
        assert_eq!(ifindex("bad\0name"), None);
        assert_eq!(ifindex(""), None);
        assert_eq!(ifname(u32::MAX), format!("#{}", u32::MAX));
    }
}
