//! The cases of the suite: which groups there are, their parameters in a full and a quick run,
//! their ids (what `--filter` matches) and what one operation of each moves.

use serde::Serialize;

/// A family of cases that share contenders and columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Group {
    /// Hot reads of one size at one address: memcpy, vm-memory, vdma over each memory kind.
    CopyRead,
    /// Hot writes, likewise.
    CopyWrite,
    /// 8-byte reads at random addresses over n mappings of 4 KiB.
    LookupRandom,
    /// 8-byte reads at one address with 1 and with 65,535 mappings present.
    LookupHot,
    /// 4 KiB hot reads by 1 and 2 threads, with and without a concurrent mapper.
    Threads,
    /// 4 KiB writes with dirty tracking off and on.
    DirtyWrite,
    /// Dirty report + clear of a large mapping against a memcpy of its bitmap.
    DirtyReport,
    /// pin + unpin of n pages.
    PinUnpin,
    /// vfio-user REGION_WRITE round trips.
    RegionWrite,
}

impl Group {
    /// Every group, in the order they run.
    pub(crate) const ALL: [Group; 9] = [
        Group::CopyRead,
        Group::CopyWrite,
        Group::LookupRandom,
        Group::LookupHot,
        Group::Threads,
        Group::DirtyWrite,
        Group::DirtyReport,
        Group::PinUnpin,
        Group::RegionWrite,
    ];

    /// The group's name in case ids.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Group::CopyRead => "copy_read",
            Group::CopyWrite => "copy_write",
            Group::LookupRandom => "lookup_random",
            Group::LookupHot => "lookup_hot",
            Group::Threads => "threads",
            Group::DirtyWrite => "dirty_write",
            Group::DirtyReport => "dirty_report",
            Group::PinUnpin => "pin_unpin",
            Group::RegionWrite => "region_write",
        }
    }

    /// One line on what the group measures, for the report.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Group::CopyRead => "hot reads (same address), time per call",
            Group::CopyWrite => "hot writes (same address), time per call",
            Group::LookupRandom => "8 B reads at random addresses over n mappings of 4 KiB",
            Group::LookupHot => "8 B reads at one address, 1 and 65,535 mappings present",
            Group::Threads => "4 KiB hot reads, time per read over all readers",
            Group::DirtyWrite => {
                "4 KiB hot writes, dirty tracking off and on (pages already dirty)"
            }
            Group::DirtyReport => {
                "report + clear of every page dirty, against memcpy of the bitmap"
            }
            Group::PinUnpin => "pin + unpin of n pages (OwnedMemory), time per call",
            Group::RegionWrite => {
                "vfio-user REGION_WRITE round trip (in-process server, socketpair)"
            }
        }
    }

    /// The name of its parameter, for the report's first column.
    pub(crate) fn param_name(self) -> &'static str {
        match self {
            Group::CopyRead | Group::CopyWrite | Group::RegionWrite => "size",
            Group::LookupRandom => "mappings",
            Group::LookupHot | Group::Threads | Group::DirtyWrite => "size",
            Group::DirtyReport => "mapping",
            Group::PinUnpin => "pages",
        }
    }

    /// The group's parameters in a full or a quick run.
    fn params(self, quick: bool) -> &'static [u64] {
        const K: u64 = 1 << 10;
        const M: u64 = 1 << 20;
        const G: u64 = 1 << 30;
        match (self, quick) {
            (Group::CopyRead | Group::CopyWrite, false) => {
                &[8, 64, 512, 4 * K, 16 * K, 64 * K, 256 * K, M]
            }
            (Group::CopyRead | Group::CopyWrite, true) => &[8, 4 * K, 64 * K, M],
            (Group::LookupRandom, false) => &[1, 1024, 65535],
            (Group::LookupRandom, true) => &[1, 65535],
            (Group::LookupHot, _) => &[8],
            (Group::Threads | Group::DirtyWrite, _) => &[4 * K],
            (Group::DirtyReport, _) => &[64 * G],
            (Group::PinUnpin, _) => &[1, 512],
            (Group::RegionWrite, false) => &[4, 4 * K],
            (Group::RegionWrite, true) => &[4],
        }
    }

    /// Whether the parameter is a size in bytes (printed as `4 KiB`) or a count.
    fn param_is_size(self) -> bool {
        !matches!(self, Group::LookupRandom | Group::PinUnpin)
    }
}

/// What one operation of a case moves, for throughput and per-unit figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unit {
    /// Bytes per operation: throughput is reported.
    Bytes(u64),
    /// Pages per operation: time per page is reported.
    Pages(u64),
}

/// One case: a group at one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// The group.
    pub(crate) group: Group,
    /// Its parameter (a size in bytes, a number of mappings or pages).
    pub(crate) param: u64,
}

impl Spec {
    /// The parameter as printed (`4 KiB`, `65535`).
    pub(crate) fn label(&self) -> String {
        if self.group.param_is_size() {
            size_label(self.param)
        } else {
            self.param.to_string()
        }
    }

    /// `group/label` without spaces: what `--filter` matches.
    pub(crate) fn id(&self) -> String {
        format!("{}/{}", self.group.name(), self.label().replace(' ', ""))
    }

    /// What one operation moves.
    pub(crate) fn unit(&self) -> Unit {
        match self.group {
            Group::LookupRandom | Group::LookupHot => Unit::Bytes(8),
            Group::DirtyReport => Unit::Bytes(bitmap_bytes(self.param)),
            Group::PinUnpin => Unit::Pages(self.param),
            _ => Unit::Bytes(self.param),
        }
    }

    /// Whether `filter` (comma-separated substrings of the id; none: everything) selects this
    /// case.
    pub(crate) fn matches(&self, filter: Option<&str>) -> bool {
        let Some(filter) = filter else { return true };
        let id = self.id();
        let mut parts = filter.split(',').map(str::trim).filter(|f| !f.is_empty());
        let mut any = false;
        parts.any(|f| {
            any = true;
            id.contains(f)
        }) || !any
    }
}

/// Every case of a full or quick run, in the order they run.
pub(crate) fn all(quick: bool) -> Vec<Spec> {
    Group::ALL
        .iter()
        .flat_map(|&group| {
            group
                .params(quick)
                .iter()
                .map(move |&param| Spec { group, param })
        })
        .collect()
}

/// The dirty bitmap of a mapping of `size` bytes at 4 KiB pages, in bytes.
pub(crate) fn bitmap_bytes(size: u64) -> u64 {
    size / super::PAGE as u64 / 8
}

/// `n` bytes as `8 B`, `4 KiB`, `1 MiB`, `64 GiB` (exact multiples; else plain bytes).
pub(crate) fn size_label(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_filters_select_by_substring() {
        let full = all(false);
        let mut ids: Vec<String> = full.iter().map(Spec::id).collect();
        assert!(ids.contains(&"copy_read/4KiB".to_string()));
        assert!(ids.contains(&"lookup_random/65535".to_string()));
        assert!(ids.contains(&"dirty_report/64GiB".to_string()));
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);

        let s = Spec {
            group: Group::CopyRead,
            param: 8,
        };
        assert!(s.matches(None));
        assert!(s.matches(Some("copy_read/8B")));
        assert!(s.matches(Some("nothing, copy_read")));
        assert!(!s.matches(Some("copy_write")));
        assert!(s.matches(Some(" , ")));
    }

    #[test]
    fn quick_is_a_subset_of_full() {
        let full = all(false);
        for s in all(true) {
            assert!(full.contains(&s), "{}", s.id());
        }
        assert!(all(true).len() < full.len());
    }

    #[test]
    fn labels_and_units() {
        assert_eq!(size_label(8), "8 B");
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(1 << 20), "1 MiB");
        assert_eq!(size_label(64 << 30), "64 GiB");
        assert_eq!(size_label(1536), "1536 B");
        let r = Spec {
            group: Group::DirtyReport,
            param: 64 << 30,
        };
        assert_eq!(r.unit(), Unit::Bytes(2 << 20));
        let p = Spec {
            group: Group::PinUnpin,
            param: 512,
        };
        assert_eq!((p.unit(), p.label()), (Unit::Pages(512), "512".to_string()));
    }
}
