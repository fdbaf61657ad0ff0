//! What a reload changes: the running configuration against the file's.

use std::{fmt, net::Ipv4Addr};

use super::{BackendConfig, Config, VipConfig};

/// What a reload must do to go from one configuration to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Global fields that changed and only take effect on a restart.
    pub global_changed: Vec<String>,
    /// Names, in the new file's order.
    pub vips_added: Vec<String>,
    /// Names, in the old file's order.
    pub vips_removed: Vec<String>,
    pub vips_changed: Vec<VipChange>,
}

/// How one VIP (same name in both configurations) changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipChange {
    pub name: String,
    /// Any of `"address/port/protocol"`, `"affinity_timeout"`, `"table_size"`,
    /// `"forwarding"`.
    pub settings_changed: Vec<String>,
    pub backends_added: Vec<(Ipv4Addr, u16)>,
    pub backends_removed: Vec<(Ipv4Addr, u16)>,
    /// Same (address, port), different weight, MAC or health check.
    pub backends_changed: Vec<(Ipv4Addr, u16)>,
}

/// Compares two configurations. Pass the running one as `old` — including
/// changes made live with the CLI — so that a reload brings the data path
/// back to exactly what the file says.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff {
        global_changed: old
            .restart_only_changes(new)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        ..ConfigDiff::default()
    };
    for nv in &new.vips {
        match old.vip(&nv.name) {
            None => d.vips_added.push(nv.name.clone()),
            Some(ov) => {
                let change = diff_vip(ov, nv);
                if !change.is_empty() {
                    d.vips_changed.push(change);
                }
            }
        }
    }
    d.vips_removed = old
        .vips
        .iter()
        .filter(|ov| new.vip(&ov.name).is_none())
        .map(|ov| ov.name.clone())
        .collect();
    d
}

fn diff_vip(old: &VipConfig, new: &VipConfig) -> VipChange {
    let mut c = VipChange {
        name: new.name.clone(),
        ..VipChange::default()
    };
    let settings = [
        (
            "address/port/protocol",
            (old.address, old.port, old.protocol) != (new.address, new.port, new.protocol),
        ),
        (
            "affinity_timeout",
            old.affinity_timeout != new.affinity_timeout,
        ),
        ("table_size", old.table_size != new.table_size),
        ("forwarding", old.forwarding != new.forwarding),
    ];
    c.settings_changed = settings
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| (*name).to_owned())
        .collect();
    // The VIP's own health is only the default its backends inherit; a
    // change that matters shows up in the backends' resolved health.
    let find = |list: &'_ [BackendConfig], key| list.iter().find(|b| b.key() == key).cloned();
    for nb in &new.backends {
        match find(&old.backends, nb.key()) {
            None => c.backends_added.push(nb.key()),
            Some(ob) if ob != *nb => c.backends_changed.push(nb.key()),
            Some(_) => {}
        }
    }
    c.backends_removed = old
        .backends
        .iter()
        .filter(|ob| find(&new.backends, ob.key()).is_none())
        .map(BackendConfig::key)
        .collect();
    c
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.global_changed.is_empty()
            && self.vips_added.is_empty()
            && self.vips_removed.is_empty()
            && self.vips_changed.is_empty()
    }

    /// Whether some changes are left for a restart.
    pub fn needs_restart(&self) -> bool {
        !self.global_changed.is_empty()
    }
}

impl VipChange {
    pub fn is_empty(&self) -> bool {
        self.settings_changed.is_empty()
            && self.backends_added.is_empty()
            && self.backends_removed.is_empty()
            && self.backends_changed.is_empty()
    }
}

/// One line for the reload log.
impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let mut parts = Vec::new();
        if !self.vips_added.is_empty() {
            parts.push(format!("VIPs added: {}", self.vips_added.join(", ")));
        }
        if !self.vips_removed.is_empty() {
            parts.push(format!("VIPs removed: {}", self.vips_removed.join(", ")));
        }
        for c in &self.vips_changed {
            let mut what = c.settings_changed.clone();
            for (sign, keys) in [
                ('+', &c.backends_added),
                ('-', &c.backends_removed),
                ('~', &c.backends_changed),
            ] {
                what.extend(keys.iter().map(|(a, p)| format!("{sign}{a}:{p}")));
            }
            parts.push(format!("VIP {} changed: {}", c.name, what.join(" ")));
        }
        if !self.global_changed.is_empty() {
            parts.push(format!(
                "needs a restart to apply: {}",
                self.global_changed.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::*;

    const TWO_VIPS: &str = r#"
interface = "eth0"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80

[[vip.backend]]
address = "10.0.0.11"
port = 80

[[vip.backend]]
address = "10.0.0.12"
port = 80

[[vip]]
name = "dns"
address = "192.0.2.10"
port = 53
protocol = "udp"

[[vip.backend]]
address = "10.0.0.21"
port = 53
"#;

    fn diff_of(old: &str, new: &str) -> ConfigDiff {
        diff(&parse(old), &parse(new))
    }

    fn web_change(d: &ConfigDiff) -> &VipChange {
        assert_eq!(d.vips_changed.len(), 1, "{d:#?}");
        assert_eq!(d.vips_changed[0].name, "web");
        &d.vips_changed[0]
    }

    const B11: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 0, 11), 80);
    const B12: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 0, 12), 80);

    #[test]
    fn diff_of_equal_configs_is_empty() {
        let d = diff_of(TWO_VIPS, TWO_VIPS);
        assert!(d.is_empty(), "{d:#?}");
        assert_eq!(d.to_string(), "no changes");
        // Order in the file is not a change.
        let reordered = TWO_VIPS
            .replace("10.0.0.11", "10.0.0.99")
            .replace("10.0.0.12", "10.0.0.11")
            .replace("10.0.0.99", "10.0.0.12");
        assert!(diff_of(TWO_VIPS, &reordered).is_empty());
    }

    #[test]
    fn diff_weight_change_is_a_backend_change() {
        let new = TWO_VIPS.replacen(
            "port = 80\n\n[[vip.backend]]\naddress = \"10.0.0.12\"",
            "port = 80\nweight = 3\n\n[[vip.backend]]\naddress = \"10.0.0.12\"",
            1,
        );
        let d = diff_of(TWO_VIPS, &new);
        let c = web_change(&d);
        assert_eq!(c.backends_changed, vec![B11]);
        assert!(c.settings_changed.is_empty() && c.backends_added.is_empty());
        assert!(c.backends_removed.is_empty());
        assert!(d.global_changed.is_empty() && !d.needs_restart());
    }

    #[test]
    fn diff_health_change_reaches_the_backends() {
        let new = TWO_VIPS.replace(
            "interface = \"eth0\"\n",
            "interface = \"eth0\"\n[health]\nrise = 4\n",
        );
        let d = diff_of(TWO_VIPS, &new);
        assert_eq!(d.vips_changed.len(), 2);
        assert_eq!(d.vips_changed[0].backends_changed, vec![B11, B12]);
        assert!(d.global_changed.is_empty());
    }

    #[test]
    fn diff_backend_added_and_removed() {
        let new = TWO_VIPS.replace("10.0.0.12", "10.0.0.13");
        let d = diff_of(TWO_VIPS, &new);
        let c = web_change(&d);
        assert_eq!(c.backends_added, vec![(Ipv4Addr::new(10, 0, 0, 13), 80)]);
        assert_eq!(c.backends_removed, vec![B12]);
        assert!(c.backends_changed.is_empty());
        assert_eq!(
            d.to_string(),
            "VIP web changed: +10.0.0.13:80 -10.0.0.12:80"
        );
    }

    #[test]
    fn diff_vip_added_and_removed() {
        let new = TWO_VIPS.replace("\"dns\"", "\"dns2\"");
        let d = diff_of(TWO_VIPS, &new);
        assert_eq!(d.vips_added, vec!["dns2"]);
        assert_eq!(d.vips_removed, vec!["dns"]);
        assert!(d.vips_changed.is_empty());
        let d = diff_of(TWO_VIPS, MINIMAL);
        assert_eq!(d.vips_removed, vec!["dns"]);
        assert!(d.vips_added.is_empty());
    }

    #[test]
    fn diff_vip_settings() {
        let new = TWO_VIPS.replacen(
            "port = 80\n",
            "port = 8080\ntable_size = 251\naffinity_timeout = \"1m\"\n",
            1,
        );
        let d = diff_of(TWO_VIPS, &new);
        assert_eq!(
            web_change(&d).settings_changed,
            ["address/port/protocol", "affinity_timeout", "table_size"]
        );
        let new = TWO_VIPS.replacen("port = 80\n", "port = 80\ntable_size = 251\n", 1);
        assert_eq!(
            web_change(&diff_of(TWO_VIPS, &new)).settings_changed,
            ["table_size"]
        );
    }

    #[test]
    fn diff_global_changes_need_a_restart() {
        let new = TWO_VIPS.replace(
            "\"eth0\"",
            "\"eth1\"\nhash_seed = 1\nmetrics_listen = \"off\"",
        );
        let d = diff_of(TWO_VIPS, &new);
        assert_eq!(
            d.global_changed,
            ["interface", "metrics_listen", "hash_seed"]
        );
        assert!(d.needs_restart());
        assert!(d.vips_changed.is_empty() && !d.is_empty());
        assert_eq!(
            d.to_string(),
            "needs a restart to apply: interface, metrics_listen, hash_seed"
        );
    }
}
