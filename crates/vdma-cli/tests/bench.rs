//! `vdma bench` end to end through the library: a whole `--quick` run (every case, every
//! contender, the JSON and the SVG), a filtered run of one tiny case, and a filter that
//! matches nothing. Timings are never asserted, only that they are there and consistent.
//!
//! The peer process is this test binary again, running only `peer_entry` with
//! `VDMA_BENCH_PEER` set.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use vdma_cli::bench::{run_with, BenchArgs, BenchError, PeerCommand};

const PEER_ENV: &str = "VDMA_BENCH_PEER";

/// The peer's side: when started by a bench run, serve memory until the bench is done.
#[test]
fn peer_entry() {
    if std::env::var_os(PEER_ENV).is_some() {
        vdma_cli::bench::peer_main();
    }
}

fn peer() -> PeerCommand {
    PeerCommand {
        program: std::env::current_exe().expect("current_exe"),
        args: ["peer_entry", "--exact", "--nocapture", "--test-threads=1"]
            .map(Into::into)
            .to_vec(),
        envs: vec![(PEER_ENV.into(), "1".into())],
    }
}

/// A fresh path in the temporary directory, removed at the end.
struct TempFile(PathBuf);

impl TempFile {
    fn new(ext: &str) -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempFile(
            std::env::temp_dir().join(format!("vdma-bench-test-{}-{n}.{ext}", std::process::id())),
        )
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every case of a quick run, in order.
const QUICK_CASES: [&str; 17] = [
    "copy_read/8B",
    "copy_read/4KiB",
    "copy_read/64KiB",
    "copy_read/1MiB",
    "copy_write/8B",
    "copy_write/4KiB",
    "copy_write/64KiB",
    "copy_write/1MiB",
    "lookup_random/1",
    "lookup_random/65535",
    "lookup_hot/8B",
    "threads/4KiB",
    "dirty_write/4KiB",
    "dirty_report/64GiB",
    "pin_unpin/1",
    "pin_unpin/512",
    "region_write/4B",
];

const COPY_CONTENDERS: [&str; 6] = [
    "memcpy",
    "vm-memory",
    "vdma-copy",
    "vdma fd",
    "vdma process",
    "vdma messages",
];

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

fn samples(contender: &Value) -> Vec<f64> {
    contender["samples_ns"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| s.as_f64().expect("sample"))
        .collect()
}

fn names(case: &Value) -> Vec<String> {
    case["contenders"]
        .as_array()
        .expect("contenders")
        .iter()
        .map(|c| c["name"].as_str().expect("name").to_string())
        .collect()
}

/// Every contender's figures are there, positive and consistent.
fn check_figures(case: &Value) {
    let rounds = case["plan"]["rounds"].as_u64().expect("rounds");
    let bytes = case["unit"]["bytes"].as_u64();
    for c in case["contenders"].as_array().expect("contenders") {
        let (min, med, max) = (num(c, "min_ns"), num(c, "median_ns"), num(c, "max_ns"));
        let (q1, q3) = (num(c, "q1_ns"), num(c, "q3_ns"));
        assert!(min > 0.0, "{c}");
        assert!(min <= q1 && q1 <= med && med <= q3 && q3 <= max, "{c}");
        assert!(c["batch"].as_u64().expect("batch") >= 1);
        let samples = c["samples_ns"].as_array().expect("samples");
        assert_eq!(samples.len() as u64, rounds, "{c}");
        assert!(samples.iter().all(|s| s.as_f64().is_some_and(|s| s > 0.0)));
        match bytes {
            Some(b) => {
                let gib = num(c, "throughput_gib_s");
                let expect = b as f64 / med * 1e9 / (1u64 << 30) as f64;
                assert!((gib - expect).abs() <= expect * 1e-9, "{c}");
            }
            None => assert!(num(c, "per_page_ns") > 0.0, "{c}"),
        }
    }
}

#[test]
fn a_quick_run_reports_every_case_and_contender_and_plots_them() {
    let json = TempFile::new("json");
    let svg = TempFile::new("svg");
    let args = BenchArgs {
        quick: true,
        json: Some(json.0.clone()),
        plot: Some(svg.0.clone()),
        ..BenchArgs::default()
    };
    run_with(&args, &peer()).expect("quick run");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json.0).expect("json written"))
        .expect("valid JSON");
    assert_eq!(doc["quick"], Value::Bool(true));
    assert_eq!(
        doc["skipped"].as_array().map(Vec::len),
        Some(0),
        "{}",
        doc["skipped"]
    );
    assert!(num(&doc, "wall_s") > 0.0);
    let cases = doc["cases"].as_array().expect("cases");
    let ids: Vec<&str> = cases
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, QUICK_CASES);

    for case in cases {
        check_figures(case);
        let id = case["id"].as_str().expect("id");
        let got = names(case);
        let expect: Vec<&str> = match case["group"].as_str().expect("group") {
            "copy_read" | "copy_write" => COPY_CONTENDERS.to_vec(),
            "lookup_random" => vec!["memcpy", "vm-memory", "vdma"],
            "lookup_hot" => vec![
                "vm-memory, 1 mapping",
                "vdma, 1 mapping",
                "vm-memory, 65535 mappings",
                "vdma, 65535 mappings",
            ],
            "threads" => vec![
                "memcpy, 1 thread",
                "memcpy, 2 threads",
                "vdma, 1 thread",
                "vdma, 2 threads",
                "vdma + mapper, 1 thread",
                "vdma + mapper, 2 threads",
            ],
            "dirty_write" => vec!["tracking off", "tracking on"],
            "dirty_report" => vec!["memcpy of the bitmap", "vdma report + clear"],
            "pin_unpin" => vec!["vdma (mlock)", "vdma (no mlock)"],
            "region_write" => vec!["vfio-user client"],
            other => panic!("unknown group {other}"),
        };
        assert_eq!(got, expect, "{id}");
        // The mapper's work is reported for both of its contenders, and only there.
        let notes = case["notes"].as_array().expect("notes");
        if id.starts_with("threads/") {
            assert_eq!(notes.len(), 2, "{notes:?}");
            assert!(notes.iter().all(|n| n
                .as_str()
                .is_some_and(|n| n.contains("map + unmap calls per second"))));
        } else {
            assert!(notes.is_empty(), "{id}: {notes:?}");
        }
        // The ratio columns: vdma fd against memcpy and vm-memory in every copy case, each
        // the median of the per-round ratios.
        if id.starts_with("copy_") {
            let fd = &case["contenders"][2];
            let expect = |reference: usize, invert: bool| {
                let mut r: Vec<f64> = samples(fd)
                    .iter()
                    .zip(samples(&case["contenders"][reference]))
                    .map(|(f, m)| if invert { m / f } else { f / m })
                    .collect();
                r.sort_by(f64::total_cmp);
                r[r.len() / 2]
            };
            let t = num(&fd["ratios"], "thrpt/memcpy");
            assert!((t - expect(0, true)).abs() < 1e-9, "{id}");
            let t = num(&fd["ratios"], "time/vm-memory");
            assert!((t - expect(1, false)).abs() < 1e-9, "{id}");
        }
    }

    // Every target was evaluated: met or missed, none left out.
    let targets = doc["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 13);
    for t in targets {
        let status = t["status"].as_str().expect("status");
        assert!(status == "met" || status == "missed", "{t}");
        assert!(num(t, "measured") > 0.0, "{t}");
    }

    // The plot: one line per copy contender, each through the four quick sizes, and a legend
    // entry for each.
    let text = std::fs::read_to_string(&svg.0).expect("svg written");
    assert!(text.starts_with("<svg"), "an SVG document");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\""))
        .collect();
    assert_eq!(lines.len(), COPY_CONTENDERS.len(), "{lines:#?}");
    let colors: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.split("stroke=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(colors.len(), COPY_CONTENDERS.len(), "one color per line");
    for l in &lines {
        let points = l
            .split("points=\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .expect("points");
        assert_eq!(points.split_whitespace().count(), 4, "{l}");
    }
    let labels: Vec<&str> = text.lines().map(str::trim).collect();
    for name in COPY_CONTENDERS {
        assert!(labels.contains(&name), "legend entry {name}");
    }
}

#[test]
fn a_filtered_run_measures_only_its_case() {
    let json = TempFile::new("json");
    let args = BenchArgs {
        quick: true,
        json: Some(json.0.clone()),
        filter: Some("region_write/4B".into()),
        ..BenchArgs::default()
    };
    run_with(&args, &peer()).expect("filtered run");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json.0).expect("json written"))
        .expect("valid JSON");
    let cases = doc["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0]["id"], "region_write/4B");
    assert_eq!(names(&cases[0]), ["vfio-user client"]);
    check_figures(&cases[0]);
    assert_eq!(doc["filter"], "region_write/4B");
    let targets = doc["targets"].as_array().expect("targets");
    assert!(targets
        .iter()
        .all(|t| t["status"] == "not_run" && t["measured"].is_null()));
}

#[test]
fn a_filter_that_matches_nothing_names_the_cases() {
    let args = BenchArgs {
        quick: true,
        filter: Some("no-such-case".into()),
        ..BenchArgs::default()
    };
    match run_with(&args, &peer()) {
        Err(e @ BenchError::NoMatch { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("no-such-case") && text.contains("copy_read/8B"),
                "{text}"
            );
        }
        other => panic!("expected NoMatch, got {other:?}"),
    }
}

#[test]
fn a_cpu_the_process_may_not_use_is_refused() {
    let args = BenchArgs {
        quick: true,
        filter: Some("region_write".into()),
        cpu: Some(100_000),
        ..BenchArgs::default()
    };
    assert!(matches!(
        run_with(&args, &peer()),
        Err(BenchError::Cpu { cpu: 100_000, .. })
    ));
}
