//! The targets the report shows next to the figures, each met, missed, or not run (its cases
//! were filtered out).

use serde::Serialize;

use super::cases::Group;
use super::copy::{MEMCPY, VDMA_FD, VM_MEMORY};
use super::pins::MLOCK;
use super::report::CaseResult;
use super::tracking::{BITMAP_MEMCPY, REPORT, TRACKING_OFF, TRACKING_ON};

/// Met, missed or not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// The measurement meets the goal.
    Met,
    /// It does not.
    Missed,
    /// The cases it needs did not run.
    NotRun,
}

/// One target and how it fared.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TargetResult {
    /// What is compared.
    pub(crate) name: String,
    /// The goal, as printed (`>= 0.95`, `< 100 ns`).
    pub(crate) goal: String,
    /// The measured ratio (or nanoseconds, for time goals).
    pub(crate) measured: Option<f64>,
    /// The measurement as printed.
    pub(crate) shown: String,
    /// Met, missed or not run.
    pub(crate) status: Status,
}

/// A goal.
#[derive(Clone, Copy, Debug)]
enum Goal {
    /// A ratio at least this.
    AtLeast(f64),
    /// A ratio at most this.
    AtMost(f64),
    /// Nanoseconds below this.
    BelowNs(f64),
}

impl Goal {
    fn met(self, v: f64) -> bool {
        match self {
            Goal::AtLeast(g) => v >= g,
            Goal::AtMost(g) => v <= g,
            Goal::BelowNs(g) => v < g,
        }
    }

    fn label(self) -> String {
        match self {
            Goal::AtLeast(g) => format!(">= {g:.2}"),
            Goal::AtMost(g) => format!("<= {g:.2}"),
            Goal::BelowNs(g) => format!("< {g:.0} ns"),
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Goal::BelowNs(_) => format!("{v:.1} ns"),
            // Three decimals: 0.979 against a goal of 0.98 must not read as 0.98.
            _ => format!("{v:.3}"),
        }
    }
}

/// The case `group`/`param`.
fn case(cases: &[CaseResult], group: Group, param: u64) -> Option<&CaseResult> {
    cases.iter().find(|c| c.group == group && c.param == param)
}

fn target(name: impl Into<String>, goal: Goal, measured: Option<f64>) -> TargetResult {
    TargetResult {
        name: name.into(),
        goal: goal.label(),
        measured,
        shown: measured.map_or("-".into(), |v| goal.show(v)),
        status: match measured {
            None => Status::NotRun,
            Some(v) if goal.met(v) => Status::Met,
            Some(_) => Status::Missed,
        },
    }
}

/// Every target, evaluated on `cases`.
pub(crate) fn evaluate(cases: &[CaseResult]) -> Vec<TargetResult> {
    let mut out = Vec::new();
    // Both round by round (see `CaseResult::time_ratio`).
    let thrpt = |g, p, name: &str, reference: &str| case(cases, g, p)?.time_ratio(reference, name);
    let time = |g, p, name: &str, reference: &str| case(cases, g, p)?.time_ratio(name, reference);
    for (group, dir) in [(Group::CopyRead, "read"), (Group::CopyWrite, "write")] {
        out.push(target(
            format!("4 KiB {dir}: vdma fd / memcpy, throughput"),
            Goal::AtLeast(0.95),
            thrpt(group, 4096, VDMA_FD, MEMCPY),
        ));
        // The worst of the sizes from 64 KiB on.
        let large: Vec<(u64, f64)> = cases
            .iter()
            .filter(|c| c.group == group && c.param >= 64 << 10)
            .filter_map(|c| Some((c.param, thrpt(group, c.param, VDMA_FD, MEMCPY)?)))
            .collect();
        let worst = large.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
        out.push(target(
            format!(
                ">= 64 KiB {dir}: vdma fd / memcpy, throughput (worst size{})",
                worst.map_or(String::new(), |w| format!(
                    ": {}",
                    super::cases::size_label(w.0)
                ))
            ),
            Goal::AtLeast(0.98),
            worst.map(|w| w.1),
        ));
        out.push(target(
            format!("8 B {dir}: vdma fd / vm-memory, time"),
            Goal::AtMost(0.8),
            time(group, 8, VDMA_FD, VM_MEMORY),
        ));
    }
    out.push(target(
        "random 8 B over 65,535 mappings: vdma / vm-memory, time",
        Goal::AtMost(0.5),
        time(Group::LookupRandom, 65535, "vdma", VM_MEMORY),
    ));
    out.push(target(
        "hot 8 B, vdma: 65,535 mappings / 1 mapping, time",
        Goal::AtMost(1.5),
        time(
            Group::LookupHot,
            8,
            "vdma, 65535 mappings",
            "vdma, 1 mapping",
        ),
    ));
    out.push(target(
        "4 KiB writes: tracking on / off, throughput",
        Goal::AtLeast(0.95),
        thrpt(Group::DirtyWrite, 4096, TRACKING_ON, TRACKING_OFF),
    ));
    out.push(target(
        "report + clear (64 GiB at 4 KiB) / memcpy of its bitmap, bandwidth",
        Goal::AtLeast(0.5),
        thrpt(Group::DirtyReport, 64 << 30, REPORT, BITMAP_MEMCPY),
    ));
    out.push(target(
        "vdma 4 KiB reads: 2 threads / 1 thread, throughput",
        Goal::AtLeast(1.9),
        thrpt(Group::Threads, 4096, "vdma, 2 threads", "vdma, 1 thread"),
    ));
    for pages in [1u64, 512] {
        out.push(target(
            format!(
                "pin + unpin, {pages} page{} (mlock), per page",
                if pages == 1 { "" } else { "s" }
            ),
            Goal::BelowNs(100.0),
            case(cases, Group::PinUnpin, pages)
                .and_then(|c| c.median(MLOCK))
                .map(|m| m / pages as f64),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cases::Unit;
    use crate::bench::timing::{Measured, Plan, Stats};
    use std::time::Duration;

    fn result(group: Group, param: u64, cs: &[(&str, f64)]) -> CaseResult {
        CaseResult {
            id: String::new(),
            group,
            param,
            label: String::new(),
            unit: Unit::Bytes(param),
            plan: Plan {
                rounds: 1,
                batch: Duration::from_millis(1),
                min_iters: 1,
                max_iters: 1,
            },
            contenders: cs
                .iter()
                .map(|&(n, t)| Measured {
                    name: n.into(),
                    batch: 1,
                    samples_ns: vec![t],
                    stats: Stats::of(&[t]).unwrap(),
                })
                .collect(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn met_missed_and_not_run() {
        let cases = vec![
            result(Group::CopyRead, 4096, &[(MEMCPY, 46.0), (VDMA_FD, 48.0)]),
            result(
                Group::CopyRead,
                65536,
                &[(MEMCPY, 1000.0), (VDMA_FD, 1001.0)],
            ),
            result(
                Group::CopyRead,
                1 << 20,
                &[(MEMCPY, 20000.0), (VDMA_FD, 21000.0)],
            ),
            result(Group::CopyRead, 8, &[(VM_MEMORY, 8.0), (VDMA_FD, 6.0)]),
            result(Group::PinUnpin, 512, &[(MLOCK, 51200.0)]),
        ];
        let t = evaluate(&cases);
        let find = |prefix: &str| t.iter().find(|t| t.name.starts_with(prefix)).unwrap();
        let r = find("4 KiB read");
        assert_eq!(r.status, Status::Met, "46/48 = 0.958");
        let r = find(">= 64 KiB read");
        assert_eq!(r.status, Status::Missed, "1 MiB at 0.952 is the worst");
        assert!(r.name.contains("1 MiB"));
        assert_eq!(find("8 B read").status, Status::Met);
        assert_eq!(find("4 KiB write").status, Status::NotRun);
        let p = find("pin + unpin, 512");
        assert_eq!(
            (p.status, p.measured),
            (Status::Missed, Some(100.0)),
            "100 is not below 100"
        );
        assert_eq!(find("pin + unpin, 1 page").status, Status::NotRun);
    }
}
