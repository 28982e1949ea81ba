//! The results and how they are shown: the terminal table (median time per operation, its
//! spread over the rounds, throughput, and ratios to the limit and to vm-memory), and the JSON
//! document for machines.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::cases::{size_label, Group, Unit};
use super::targets::{Status, TargetResult};
use super::timing::{paired_ratio, Measured, Plan};
use super::BenchError;

/// What was measured of one case.
#[derive(Clone, Debug)]
pub(crate) struct CaseResult {
    /// `group/param`.
    pub(crate) id: String,
    /// The group.
    pub(crate) group: Group,
    /// Its parameter.
    pub(crate) param: u64,
    /// The parameter as printed.
    pub(crate) label: String,
    /// What one operation moves.
    pub(crate) unit: Unit,
    /// How it was measured.
    pub(crate) plan: Plan,
    /// Each contender, in the order they were built.
    pub(crate) contenders: Vec<Measured>,
    /// What else the case observed (printed under its table).
    pub(crate) notes: Vec<String>,
}

impl CaseResult {
    /// The contender named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Measured> {
        self.contenders.iter().find(|c| c.name == name)
    }

    /// Median nanoseconds per operation of contender `name`.
    pub(crate) fn median(&self, name: &str) -> Option<f64> {
        self.get(name).map(|c| c.stats.median)
    }

    /// Time of `name` over time of `reference`, compared round by round (the median of the
    /// per-round ratios; see [`paired_ratio`]).
    pub(crate) fn time_ratio(&self, name: &str, reference: &str) -> Option<f64> {
        paired_ratio(
            &self.get(name)?.samples_ns,
            &self.get(reference)?.samples_ns,
        )
    }
}

/// Throughput in GiB/s of `ns` nanoseconds per operation of `unit`, if it moves bytes.
pub(crate) fn gib_per_s(unit: Unit, ns: f64) -> Option<f64> {
    match unit {
        Unit::Bytes(b) if ns > 0.0 => Some(b as f64 / ns * 1e9 / (1u64 << 30) as f64),
        _ => None,
    }
}

/// Which way a ratio is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RatioKind {
    /// Throughput of the contender over the reference's (higher is better).
    Throughput,
    /// Time of the contender over the reference's (lower is better).
    Time,
}

/// A ratio column: each contender against the reference that `reference` names for it.
pub(crate) struct RatioSpec {
    /// Column header.
    pub(crate) header: &'static str,
    /// Throughput or time.
    pub(crate) kind: RatioKind,
    /// The reference contender for a contender (None: no ratio for it).
    pub(crate) reference: fn(&str) -> Option<String>,
}

/// The part of `name` after `", "` (`1 thread` of `vdma, 1 thread`).
fn suffix(name: &str) -> &str {
    name.split_once(", ").map_or("", |(_, s)| s)
}

/// The ratio columns of a group.
pub(crate) fn ratio_specs(group: Group) -> Vec<RatioSpec> {
    use super::{copy, tracking};
    let to_memcpy = RatioSpec {
        header: "thrpt/memcpy",
        kind: RatioKind::Throughput,
        reference: |_| Some(copy::MEMCPY.into()),
    };
    let to_vm = RatioSpec {
        header: "time/vm-memory",
        kind: RatioKind::Time,
        reference: |_| Some(copy::VM_MEMORY.into()),
    };
    match group {
        Group::CopyRead | Group::CopyWrite | Group::LookupRandom => vec![to_memcpy, to_vm],
        Group::LookupHot => vec![
            RatioSpec {
                header: "time/vm-memory",
                kind: RatioKind::Time,
                reference: |n| Some(format!("{}, {}", copy::VM_MEMORY, suffix(n))),
            },
            RatioSpec {
                header: "time/1 mapping",
                kind: RatioKind::Time,
                reference: |n| n.split_once(", ").map(|(k, _)| format!("{k}, 1 mapping")),
            },
        ],
        Group::Threads => vec![
            RatioSpec {
                header: "thrpt/memcpy",
                kind: RatioKind::Throughput,
                reference: |n| Some(format!("memcpy, {}", suffix(n))),
            },
            RatioSpec {
                header: "thrpt/1 thread",
                kind: RatioKind::Throughput,
                reference: |n| n.split_once(", ").map(|(k, _)| format!("{k}, 1 thread")),
            },
        ],
        Group::DirtyWrite => vec![RatioSpec {
            header: "thrpt/off",
            kind: RatioKind::Throughput,
            reference: |_| Some(tracking::TRACKING_OFF.into()),
        }],
        Group::DirtyReport => vec![RatioSpec {
            header: "thrpt/memcpy",
            kind: RatioKind::Throughput,
            reference: |_| Some(tracking::BITMAP_MEMCPY.into()),
        }],
        Group::PinUnpin | Group::RegionWrite => Vec::new(),
    }
}

/// The ratio `spec` gives contender `name` of `case`, round by round (None for the reference
/// itself, or when the reference did not run).
pub(crate) fn ratio(case: &CaseResult, spec: &RatioSpec, name: &str) -> Option<f64> {
    let reference = (spec.reference)(name)?;
    if reference == name {
        return None;
    }
    match spec.kind {
        RatioKind::Throughput => case.time_ratio(&reference, name),
        RatioKind::Time => case.time_ratio(name, &reference),
    }
}

/// Nanoseconds as `3.27 ns`, `50.6 ns`, `1.16 µs`, `23.7 ms`.
pub(crate) fn time_label(ns: f64) -> String {
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{} {unit}", three_digits(v))
}

/// `v` with about three significant digits (scientific below 0.01).
fn three_digits(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 || v == 0.0 {
        format!("{v:.2}")
    } else if v >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

/// Everything a run produced, and where it ran.
#[derive(Debug)]
pub(crate) struct Report {
    /// `vdma bench`.
    pub(crate) tool: &'static str,
    /// The crate's version.
    pub(crate) version: &'static str,
    /// A `--quick` run.
    pub(crate) quick: bool,
    /// The `--filter` given.
    pub(crate) filter: Option<String>,
    /// The CPUs the process could use.
    pub(crate) cpus: Vec<usize>,
    /// The CPU the measuring thread was pinned to.
    pub(crate) pinned_cpu: Option<usize>,
    /// `/proc/loadavg`'s 1, 5 and 15-minute averages before the run.
    pub(crate) load_before: Option<[f64; 3]>,
    /// And after.
    pub(crate) load_after: Option<[f64; 3]>,
    /// Wall time of the whole run, set-up included, in seconds.
    pub(crate) wall_s: f64,
    /// Contenders or cases left out, and why.
    pub(crate) skipped: Vec<String>,
    /// Every case run.
    pub(crate) cases: Vec<CaseResult>,
    /// The targets, met or missed.
    pub(crate) targets: Vec<TargetResult>,
}

/// A simple aligned text table.
struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    fn new(header: Vec<String>, right: Vec<bool>) -> Table {
        Table {
            rows: vec![header],
            right,
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn render(&self, out: &mut String) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, row) in self.rows.iter().enumerate() {
            let mut line = String::from("  ");
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c].saturating_sub(cell.chars().count());
                if self.right.get(c).copied().unwrap_or(false) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
                line.push_str("  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                let total: usize = widths.iter().sum::<usize>() + 2 * widths.len();
                out.push_str("  ");
                out.push_str(&"-".repeat(total.saturating_sub(2)));
                out.push('\n');
            }
        }
    }
}

/// The terminal report.
pub(crate) fn table(report: &Report) -> String {
    let mut out = String::new();
    let rounds = report.cases.first().map_or(0, |c| c.plan.rounds);
    let _ = writeln!(
        out,
        "vdma bench{}: {} case{}, {rounds} rounds each (every round runs each contender of a \
         case in turn); {:.1} s",
        if report.quick { " --quick" } else { "" },
        report.cases.len(),
        if report.cases.len() == 1 { "" } else { "s" },
        report.wall_s
    );
    let _ = writeln!(
        out,
        "CPUs {:?}, measuring thread {}; load average (1/5/15 min) before {}, after {}",
        report.cpus,
        report
            .pinned_cpu
            .map_or("not pinned".to_string(), |c| format!("pinned to CPU {c}")),
        load_label(report.load_before),
        load_label(report.load_after),
    );
    let _ = writeln!(
        out,
        "time: median per operation over the rounds [min - max]; thrpt/X: throughput over X's \
         (higher is better), time/X: time over X's (lower is better), both the median of the \
         per-round ratios"
    );
    let busy = [report.load_before, report.load_after]
        .iter()
        .flatten()
        .map(|l| l[0])
        .fold(0.0, f64::max);
    if busy > report.cpus.len() as f64 * 0.5 {
        let _ = writeln!(
            out,
            "note: the machine was busy (load average up to {busy:.2} on {} CPUs): expect noise, \
             see the spreads",
            report.cpus.len()
        );
    }
    for note in &report.skipped {
        let _ = writeln!(out, "skipped: {note}");
    }
    for group in Group::ALL {
        let cases: Vec<&CaseResult> = report.cases.iter().filter(|c| c.group == group).collect();
        if cases.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}: {}", group.name(), group.title());
        let specs = ratio_specs(group);
        let per_page = matches!(cases[0].unit, Unit::Pages(_));
        let mut header = vec![
            group.param_name().to_string(),
            "contender".into(),
            "time".into(),
            "[min - max]".into(),
            if per_page { "per page" } else { "GiB/s" }.into(),
        ];
        header.extend(specs.iter().map(|s| s.header.to_string()));
        let mut right = vec![false, false, true, true, true];
        right.extend(specs.iter().map(|_| true));
        let mut t = Table::new(header, right);
        for case in &cases {
            for (i, c) in case.contenders.iter().enumerate() {
                let s = c.stats;
                let rate = match case.unit {
                    Unit::Pages(p) => time_label(s.median / p as f64),
                    unit => gib_per_s(unit, s.median).map_or("-".into(), three_digits),
                };
                let mut row = vec![
                    if i == 0 {
                        case.label.clone()
                    } else {
                        String::new()
                    },
                    c.name.clone(),
                    time_label(s.median),
                    format!("[{} - {}]", time_label(s.min), time_label(s.max)),
                    rate,
                ];
                for spec in &specs {
                    row.push(ratio(case, spec, &c.name).map_or("-".into(), ratio_label));
                }
                t.push(row);
            }
        }
        t.render(&mut out);
        for note in cases.iter().flat_map(|c| &c.notes) {
            let _ = writeln!(out, "  {note}");
        }
    }
    let not_run = report
        .targets
        .iter()
        .filter(|t| t.status == Status::NotRun)
        .count();
    if not_run < report.targets.len() {
        let _ = writeln!(out, "\ntargets");
        let mut t = Table::new(
            vec![
                "target".into(),
                "measured".into(),
                "goal".into(),
                "result".into(),
            ],
            vec![false, true, true, false],
        );
        for target in report.targets.iter().filter(|t| t.status != Status::NotRun) {
            t.push(vec![
                target.name.clone(),
                target.shown.clone(),
                target.goal.clone(),
                if target.status == Status::Met {
                    "met"
                } else {
                    "MISSED"
                }
                .into(),
            ]);
        }
        t.render(&mut out);
    }
    if not_run > 0 {
        let _ = writeln!(
            out,
            "{}{not_run} of {} targets not evaluated: their cases did not run",
            if not_run < report.targets.len() {
                ""
            } else {
                "\n"
            },
            report.targets.len()
        );
    }
    out
}

/// A ratio: two decimals, fewer for large ones.
fn ratio_label(r: f64) -> String {
    if r >= 10.0 {
        three_digits(r)
    } else {
        format!("{r:.2}")
    }
}

fn load_label(load: Option<[f64; 3]>) -> String {
    load.map_or("unknown".into(), |l| {
        format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
    })
}

/// One contender in the JSON document: its measurements and the figures derived from them.
#[derive(Serialize)]
struct JsonContender<'a> {
    name: &'a str,
    batch: u64,
    rounds: usize,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
    q1_ns: f64,
    q3_ns: f64,
    samples_ns: &'a [f64],
    /// GiB/s at the median, for cases that move bytes.
    throughput_gib_s: Option<f64>,
    /// Nanoseconds per page at the median, for cases counted in pages.
    per_page_ns: Option<f64>,
    /// The ratio columns of the table, by header.
    ratios: std::collections::BTreeMap<&'static str, f64>,
}

#[derive(Serialize)]
struct JsonCase<'a> {
    id: &'a str,
    group: &'static str,
    param: u64,
    label: &'a str,
    unit: Unit,
    plan: Plan,
    contenders: Vec<JsonContender<'a>>,
    notes: &'a [String],
}

#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    head: JsonHead<'a>,
    cases: Vec<JsonCase<'a>>,
    targets: &'a [TargetResult],
}

#[derive(Serialize)]
struct JsonHead<'a> {
    tool: &'static str,
    version: &'static str,
    quick: bool,
    filter: &'a Option<String>,
    cpus: &'a [usize],
    pinned_cpu: Option<usize>,
    load_before: Option<[f64; 3]>,
    load_after: Option<[f64; 3]>,
    wall_s: f64,
    skipped: &'a [String],
}

/// The JSON document.
pub(crate) fn json(report: &Report) -> Result<String, serde_json::Error> {
    let cases = report
        .cases
        .iter()
        .map(|case| {
            let specs = ratio_specs(case.group);
            JsonCase {
                id: &case.id,
                group: case.group.name(),
                param: case.param,
                label: &case.label,
                unit: case.unit,
                plan: case.plan,
                notes: &case.notes,
                contenders: case
                    .contenders
                    .iter()
                    .map(|c| JsonContender {
                        name: &c.name,
                        batch: c.batch,
                        rounds: c.samples_ns.len(),
                        median_ns: c.stats.median,
                        min_ns: c.stats.min,
                        max_ns: c.stats.max,
                        q1_ns: c.stats.q1,
                        q3_ns: c.stats.q3,
                        samples_ns: &c.samples_ns,
                        throughput_gib_s: gib_per_s(case.unit, c.stats.median),
                        per_page_ns: match case.unit {
                            Unit::Pages(p) => Some(c.stats.median / p as f64),
                            Unit::Bytes(_) => None,
                        },
                        ratios: specs
                            .iter()
                            .filter_map(|s| ratio(case, s, &c.name).map(|r| (s.header, r)))
                            .collect(),
                    })
                    .collect(),
            }
        })
        .collect();
    serde_json::to_string_pretty(&JsonReport {
        head: JsonHead {
            tool: report.tool,
            version: report.version,
            quick: report.quick,
            filter: &report.filter,
            cpus: &report.cpus,
            pinned_cpu: report.pinned_cpu,
            load_before: report.load_before,
            load_after: report.load_after,
            wall_s: report.wall_s,
            skipped: &report.skipped,
        },
        cases,
        targets: &report.targets,
    })
}

/// Writes the JSON document to `path`.
pub(crate) fn write_json(report: &Report, path: &Path) -> Result<(), BenchError> {
    let text = json(report).map_err(|e| BenchError::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| BenchError::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A transfer size as the plot's axis prints it.
pub(crate) fn axis_size_label(bytes: f64) -> String {
    let n = bytes.round().max(1.0) as u64;
    // Round to a power of two: the axis's ticks are not exact multiples.
    size_label(n.next_power_of_two())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::timing::Stats;
    use std::time::Duration;

    fn measured(name: &str, ns: f64) -> Measured {
        Measured {
            name: name.into(),
            batch: 10,
            samples_ns: vec![ns],
            stats: Stats::of(&[ns]).unwrap(),
        }
    }

    fn case(group: Group, unit: Unit, cs: &[(&str, f64)]) -> CaseResult {
        CaseResult {
            id: format!("{}/x", group.name()),
            group,
            param: 4096,
            label: "4 KiB".into(),
            unit,
            plan: Plan {
                rounds: 1,
                batch: Duration::from_millis(1),
                min_iters: 1,
                max_iters: u64::MAX,
            },
            contenders: cs.iter().map(|&(n, t)| measured(n, t)).collect(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn ratios_follow_their_direction_and_references() {
        let c = case(
            Group::CopyRead,
            Unit::Bytes(4096),
            &[("memcpy", 40.0), ("vm-memory", 50.0), ("vdma fd", 45.0)],
        );
        let specs = ratio_specs(Group::CopyRead);
        assert!((ratio(&c, &specs[0], "vdma fd").unwrap() - 40.0 / 45.0).abs() < 1e-12);
        assert!((ratio(&c, &specs[1], "vdma fd").unwrap() - 45.0 / 50.0).abs() < 1e-12);
        assert_eq!(ratio(&c, &specs[0], "memcpy"), None);

        let t = case(
            Group::Threads,
            Unit::Bytes(4096),
            &[
                ("memcpy, 1 thread", 40.0),
                ("vdma, 1 thread", 50.0),
                ("vdma, 2 threads", 26.0),
            ],
        );
        let specs = ratio_specs(Group::Threads);
        assert!((ratio(&t, &specs[1], "vdma, 2 threads").unwrap() - 50.0 / 26.0).abs() < 1e-12);
        assert_eq!(
            ratio(&t, &specs[0], "vdma, 2 threads"),
            None,
            "no memcpy, 2 threads"
        );
    }

    #[test]
    fn the_table_has_a_row_per_contender_and_the_evaluated_targets() {
        let cases = vec![case(
            Group::CopyRead,
            Unit::Bytes(4096),
            &[("memcpy", 40.0), ("vm-memory", 50.0), ("vdma fd", 45.0)],
        )];
        let report = Report {
            tool: "vdma bench",
            version: "0",
            quick: true,
            filter: None,
            cpus: vec![0, 1],
            pinned_cpu: Some(1),
            load_before: Some([0.1, 0.2, 0.3]),
            load_after: Some([3.0, 0.2, 0.3]),
            wall_s: 1.5,
            skipped: vec!["vdma process: no peer".into()],
            targets: crate::bench::targets::evaluate(&cases),
            cases,
        };
        let text = table(&report);
        for name in ["memcpy", "vm-memory", "vdma fd"] {
            let rows: Vec<&str> = text.lines().filter(|l| l.contains(name)).collect();
            assert!(!rows.is_empty(), "{name}");
        }
        let fd = text
            .lines()
            .find(|l| l.trim_start().starts_with("vdma fd"))
            .unwrap();
        // 45 ns, 4096 B: 84.8 GiB/s; 40/45 of memcpy's throughput, 45/50 of vm-memory's time.
        assert!(fd.contains("45.0 ns") && fd.contains("84.8"), "{fd}");
        assert!(fd.contains("0.89") && fd.contains("0.90"), "{fd}");
        assert!(text.contains("pinned to CPU 1"));
        assert!(text.contains("skipped: vdma process: no peer"));
        assert!(text.contains("the machine was busy (load average up to 3.00 on 2 CPUs)"));
        // Only the 4 KiB read target ran (0.889: missed); the others are counted.
        let target = text
            .lines()
            .find(|l| l.contains("4 KiB read: vdma fd / memcpy"))
            .unwrap();
        assert!(
            target.contains("0.889") && target.contains("MISSED"),
            "{target}"
        );
        assert!(text.contains("12 of 13 targets not evaluated"));
        // And the JSON carries the same figures.
        let doc: serde_json::Value = serde_json::from_str(&json(&report).unwrap()).unwrap();
        let c = &doc["cases"][0]["contenders"][2];
        assert_eq!(c["name"], "vdma fd");
        assert!((c["ratios"]["thrpt/memcpy"].as_f64().unwrap() - 40.0 / 45.0).abs() < 1e-12);
        assert_eq!(doc["targets"][0]["status"], "missed");
    }

    #[test]
    fn labels() {
        assert_eq!(time_label(3.271), "3.27 ns");
        assert_eq!(time_label(50.64), "50.6 ns");
        assert_eq!(time_label(1160.0), "1.16 µs");
        assert_eq!(time_label(23_700_000.0), "23.7 ms");
        assert_eq!(three_digits(0.0335), "0.034");
        assert_eq!(three_digits(0.000335), "3.4e-4");
        assert_eq!(ratio_label(0.904), "0.90");
        assert_eq!(ratio_label(3324.89), "3325");
        assert_eq!(axis_size_label(8.0), "8 B");
        assert_eq!(axis_size_label(1023.7), "1 KiB");
        let g = gib_per_s(Unit::Bytes(1 << 30), 1e9).unwrap();
        assert!((g - 1.0).abs() < 1e-12);
        assert_eq!(gib_per_s(Unit::Pages(1), 10.0), None);
    }
}
