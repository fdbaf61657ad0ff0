//! Backend MACs from the kernel's IPv4 neighbour table. The health checks'
//! own connections make the kernel resolve every backend, so reading the
//! table once a second finds new and changed MACs without a netlink socket.

use std::{collections::HashMap, net::Ipv4Addr};

/// ATF_COM: the entry is complete (resolved).
const ATF_COM: u32 = 0x2;

/// Complete entries on `device`, from `/proc/net/arp`'s text.
pub fn parse_proc_net_arp(text: &str, device: &str) -> HashMap<Ipv4Addr, [u8; 6]> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [ip, _hw_type, flags, mac, _mask, dev] = f[..] else {
                return None;
            };
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if dev != device || flags & ATF_COM == 0 {
                return None;
            }
            Some((ip.parse().ok()?, crate::config::parse_mac(mac).ok()?))
        })
        .collect()
}

/// The complete neighbour entries on `device` (empty if unreadable).
pub fn read(device: &str) -> HashMap<Ipv4Addr, [u8; 6]> {
    std::fs::read_to_string("/proc/net/arp")
        .map(|t| parse_proc_net_arp(&t, device))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_entries_of_one_device() {
        let text = "\
IP address       HW type     Flags       HW address            Mask     Device
10.0.0.11        0x1         0x2         02:be:00:00:00:01     *        lb0
10.0.0.12        0x1         0x0         00:00:00:00:00:00     *        lb0
10.0.0.13        0x1         0x6         02:be:00:00:00:03     *        lb0
10.0.0.14        0x1         0x2         02:be:00:00:00:04     *        eth9
garbage line
";
        let m = parse_proc_net_arp(text, "lb0");
        assert_eq!(m.len(), 2);
        assert_eq!(m[&Ipv4Addr::new(10, 0, 0, 11)], [2, 0xbe, 0, 0, 0, 1]);
        assert_eq!(m[&Ipv4Addr::new(10, 0, 0, 13)], [2, 0xbe, 0, 0, 0, 3]);
    }
}
