//! The counters of the per-CPU stats maps, each described once.
//!
//! A counter struct (`VipStats`, `BackendStats`) is defined by
//! `counter_struct!` together with its table of [`Counter`] descriptors:
//! field name, help text, status label, accessor and how metrics export it.
//! Summing per-CPU values, deltas, the Prometheus families, the status line
//! and the tests' counter checks all walk that table, so a new counter is one
//! entry in the macro call (plus the size assertion of the struct, which is
//! the kernel/user-space contract) and a line in the XDP program that counts
//! it.

use core::fmt;

/// A metric family several counters report into, one `reason` each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// Metric name without the `stickylb_` prefix.
    pub name: &'static str,
    /// `# HELP` text.
    pub help: &'static str,
}

/// How a counter is exported to Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// A family of its own, with this name (without the `stickylb_` prefix)
    /// and the counter's help.
    Own(&'static str),
    /// The series `reason="<reason>"` of a shared family.
    Reason(&'static Family, &'static str),
}

/// One counter of the counter struct `S`.
pub struct Counter<S: 'static> {
    /// The field's name, which is also its key in JSON replies.
    pub name: &'static str,
    /// What it counts, in one sentence: the field's doc and, for a family of
    /// its own, the metric's help.
    pub help: &'static str,
    /// Its label in `stickylb status`. `group: label` shares the group word
    /// with the counters of the same group listed right before it
    /// ("re-picked: expired 1 dead 2").
    pub label: &'static str,
    pub get: fn(&S) -> u64,
    /// Every series the counter is exported as (one counter can be both a
    /// family of its own and one reason of a shared family).
    pub metrics: &'static [Metric],
}

/// A counter struct and its table.
pub trait CounterTable: Sized + 'static {
    /// Every field, in field order (which is the layout in the map value).
    const COUNTERS: &'static [Counter<Self>];

    /// `label value` of every counter, as `stickylb status` prints them.
    fn status_line(&self) -> StatusLine<'_, Self> {
        StatusLine(self)
    }
}

/// See [`CounterTable::status_line`].
pub struct StatusLine<'a, S>(&'a S);

impl<S: CounterTable> fmt::Display for StatusLine<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut group = None;
        for (i, c) in S::COUNTERS.iter().enumerate() {
            let value = (c.get)(self.0);
            let (g, label) = match c.label.split_once(": ") {
                Some((g, label)) => (Some(g), label),
                None => (None, c.label),
            };
            if i > 0 {
                f.write_str(if g.is_some() && g == group { " " } else { "  " })?;
            }
            match g {
                Some(g) if group != Some(g) => write!(f, "{g}: {label} {value}")?,
                _ => write!(f, "{label} {value}")?,
            }
            group = g;
        }
        Ok(())
    }
}

/// Defines a counter struct: `#[repr(C)]`, one `u64` per entry in the given
/// order (the layout of the per-CPU map value), `add`, `since`, and its
/// [`CounterTable`] impl. A compile-time assertion checks that entry `i` is
/// the field at byte `8 * i` and that nothing else is in the struct.
macro_rules! counter_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident {
                    label: $label:literal,
                    help: $help:literal,
                    metrics: [$($metric:expr),* $(,)?] $(,)?
                }
            )*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
        #[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
        pub struct $name {
            $(
                #[doc = $help]
                $(#[doc = $doc])*
                pub $field: u64,
            )*
        }

        impl $name {
            /// Adds `o`'s counts to these (summing per-CPU values).
            pub fn add(&mut self, o: &Self) {
                $(self.$field += o.$field;)*
            }

            /// Counts since `before` (a snapshot of the same counters).
            pub fn since(&self, before: &Self) -> Self {
                Self {
                    $($field: self.$field - before.$field,)*
                }
            }
        }

        impl $crate::counters::CounterTable for $name {
            const COUNTERS: &'static [$crate::counters::Counter<Self>] = &[
                $(
                    $crate::counters::Counter {
                        name: stringify!($field),
                        help: $help,
                        label: $label,
                        get: |s| s.$field,
                        metrics: &[$($metric),*],
                    },
                )*
            ];
        }

        const _: () = {
            let mut i = 0;
            $(
                assert!(core::mem::offset_of!($name, $field) == 8 * i);
                i += 1;
            )*
            assert!(size_of::<$name>() == 8 * i);
        };
    };
}

pub(crate) use counter_struct;

#[cfg(test)]
mod tests {
    use std::{format, string::ToString, vec::Vec};

    use super::*;
    use crate::{BackendStats, VipStats};

    #[test]
    fn each_entry_reads_its_own_field() {
        // Every field set to a distinct value: each accessor must return its
        // field's, and `since`/`add` must treat every field.
        let vip: VipStats = bytemuck::cast(core::array::from_fn::<u64, 18, _>(|i| 10 + i as u64));
        for (i, c) in VipStats::COUNTERS.iter().enumerate() {
            assert_eq!((c.get)(&vip), 10 + i as u64, "{}", c.name);
        }
        let mut sum = vip;
        sum.add(&vip);
        assert_eq!(sum.since(&vip), vip);
        let be: BackendStats = bytemuck::cast([7u64, 8, 9]);
        let got: Vec<u64> = BackendStats::COUNTERS
            .iter()
            .map(|c| (c.get)(&be))
            .collect();
        assert_eq!(got, [7, 8, 9]);
    }

    #[test]
    fn every_counter_is_exported_and_families_agree() {
        for c in VipStats::COUNTERS {
            assert!(!c.metrics.is_empty(), "{} has no metric", c.name);
        }
        for c in BackendStats::COUNTERS {
            assert!(!c.metrics.is_empty(), "{} has no metric", c.name);
        }
        // A shared family is one const, so its help cannot disagree; its
        // reasons must be distinct.
        let reasons: Vec<(&str, &str)> = VipStats::COUNTERS
            .iter()
            .flat_map(|c| c.metrics)
            .filter_map(|m| match m {
                Metric::Reason(f, r) => Some((f.name, *r)),
                Metric::Own(_) => None,
            })
            .collect();
        for (i, r) in reasons.iter().enumerate() {
            assert!(!reasons[..i].contains(r), "{r:?} twice");
        }
    }

    #[test]
    fn status_line_groups_labels() {
        let v = VipStats {
            packets: 1,
            bytes: 2,
            new_clients: 3,
            affinity_hits: 4,
            repick_expired: 5,
            repick_dead: 6,
            probed: 7,
            drop_no_backend: 8,
            drop_fragment: 9,
            drop_loop: 10,
            not_pinned_syn: 11,
            not_pinned_udp_budget: 12,
            drop_no_neigh: 13,
            drop_no_route: 14,
            too_big_icmp: 15,
            drop_too_big: 16,
            icmp_forwarded: 17,
            icmp_relayed: 18,
        };
        assert_eq!(
            v.status_line().to_string(),
            "packets 1  bytes 2  new clients 3  affinity hits 4  re-picked: expired 5 dead 6  \
             probed 7  dropped: no backend 8 fragment 9 loop 10  not pinned: syn 11 udp budget 12  \
             tunnel dropped: no neighbour 13 no route 14  too big: icmp sent 15 dropped 16  \
             icmp: forwarded 17 relayed 18"
        );
        let b = BackendStats {
            packets: 1,
            bytes: 2,
            new_clients: 3,
        };
        assert_eq!(
            format!("{}", b.status_line()),
            "packets 1  bytes 2  new clients 3"
        );
    }
}
