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

/// Gateways of the default routes, from `/proc/net/route`'s text.
pub fn parse_default_gateways(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [
                _iface,
                dest,
                gateway,
                _flags,
                _refcnt,
                _use,
                _metric,
                mask,
                ..,
            ] = f[..]
            else {
                return None;
            };
            if dest != "00000000" || mask != "00000000" {
                return None;
            }
            // The kernel prints the address's bytes as a host-order number.
            let gw = u32::from_str_radix(gateway, 16).ok()?;
            let gw = Ipv4Addr::from(gw.to_ne_bytes());
            (!gw.is_unspecified()).then_some(gw)
        })
        .collect()
}

/// The gateways of this namespace's default routes (empty if unreadable).
pub fn default_gateways() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_default_gateways(&t))
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

    #[test]
    fn parses_default_gateways() {
        // 10.77.0.254 as a little-endian host prints it.
        let gw = u32::from_ne_bytes([10, 77, 0, 254]);
        let text = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t{gw:08X}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t00004D0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
        );
        assert_eq!(
            parse_default_gateways(&text),
            vec![Ipv4Addr::new(10, 77, 0, 254)]
        );
    }
}
