//! `vdma bench`: the performance report. One process runs the whole suite side by side:
//! plain memcpy (the limit), rust-vmm's vm-memory 0.18, and vdma's `dma_rw` over a memfd,
//! over another process's memory and over memory served through vfio-user messages, at 8 B to
//! 1 MiB; lookup over 1 to 65,535 mappings; 1 and 2 reader threads with and without a
//! concurrent mapper; dirty tracking off and on; dirty report + clear; pin + unpin; the
//! vfio-user REGION_WRITE round trip.
//!
//! Every case calibrates a batch size per contender once, then runs rounds in which each of its
//! contenders runs one batch in turn, so drift on a noisy machine hits all of them alike; the
//! report gives the median time per operation over the rounds with its spread, throughput,
//! ratios to memcpy and to vm-memory, and the project's targets, met or missed.
//!
//! ```no_run
//! use vdma_cli::bench::{run, BenchArgs};
//! run(&BenchArgs { quick: true, ..BenchArgs::default() })?;
//! # Ok::<(), vdma_cli::bench::BenchError>(())
//! ```
//!
//! The "another process" contender starts this program again with the hidden subcommand
//! [`PEER_SUBCOMMAND`], which must call [`peer_main`]; [`run_with`] takes another command.

mod buffer;
mod cases;
mod copy;
mod guest;
mod lookup;
mod peer;
mod pins;
mod plot;
mod raw;
mod report;
mod targets;
mod threads;
mod timing;
mod tracking;
mod vfio_user;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vdma::{Direction, Iova, Prot};

pub use peer::{peer_main, PeerCommand};

use cases::{Group, Spec};
use guest::{vdma_err, Guest};
use lookup::Lookup;
use peer::{Peer, PEER_LEN};
use report::{CaseResult, Report};
use timing::{Contender, Plan};
use vfio_user::Session;

/// The hidden subcommand that runs [`peer_main`] (`vdma bench-peer`).
pub const PEER_SUBCOMMAND: &str = "bench-peer";

/// The page size everything here uses.
pub(crate) const PAGE: usize = 4096;

/// IOVA of the peer's memory in the guest address space.
const PEER_IOVA: u64 = 0x2_0000_0000;

/// The arguments of `vdma bench`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct BenchArgs {
    /// A short run, under 30 seconds: fewer sizes and rounds, shorter batches.
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw read throughput against transfer size, one line per contender, as SVG to FILE.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Run only the cases whose id contains one of these comma-separated strings (see --list).
    #[arg(long, value_name = "STR")]
    pub filter: Option<String>,
    /// Pin the measuring thread to CPU N (the first reader thread of the threads case too).
    #[arg(long, value_name = "N")]
    pub cpu: Option<usize>,
    /// Print the case ids (those the filter selects) and exit.
    #[arg(long)]
    pub list: bool,
}

/// Why the bench could not run or report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A vdma call failed.
    #[error("{what}: {source}")]
    Vdma {
        /// What was being done.
        what: String,
        /// The error.
        source: vdma::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// vm-memory failed.
    #[error("vm-memory: {0}")]
    VmMemory(String),
    /// The vfio-user server or client failed.
    #[error("vfio-user: {0}")]
    VfioUser(String),
    /// The peer process failed.
    #[error("peer process: {0}")]
    Peer(String),
    /// A contender did not do what it should (wrong bytes, wrong counts).
    #[error("{what}: {reason}")]
    Check {
        /// The contender or fixture.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// The filter selects no case.
    #[error("no case matches `{filter}`; the cases are: {cases}")]
    NoMatch {
        /// The filter.
        filter: String,
        /// Every case id.
        cases: String,
    },
    /// `--cpu` names a CPU this process may not use.
    #[error("--cpu {cpu}: not one of the CPUs this process may use ({allowed})")]
    Cpu {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs allowed.
        allowed: String,
    },
    /// The JSON or SVG file could not be written.
    #[error("{}: {reason}", path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// How long a case is measured: many short rounds, so that contenders compared round by round
/// ran close together in time (on a shared machine the speed of a CPU changes within
/// milliseconds, when another process lands on it or its sibling hyperthread).
fn plan(quick: bool, group: Group) -> Plan {
    let (rounds, batch, thread_reads) = if quick {
        (15, Duration::from_millis(2), 100_000)
    } else {
        (101, Duration::from_millis(4), 200_000)
    };
    Plan {
        // A report round dirties 64 GiB first (untimed): fewer of them.
        rounds: if group == Group::DirtyReport {
            rounds.min(41)
        } else {
            rounds
        },
        batch,
        // Reader threads start a little apart: enough reads that this does not count.
        min_iters: if group == Group::Threads {
            thread_reads
        } else {
            1
        },
        // One report per batch, each after its untimed dirtying.
        max_iters: if group == Group::DirtyReport {
            1
        } else {
            u64::MAX
        },
    }
}

/// Runs the suite as `args` asks, starting the peer process as this program's
/// [`PEER_SUBCOMMAND`]; prints the table to standard output and a progress bar to standard
/// error (on a terminal).
pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    run_with(args, &PeerCommand::current_exe()?)
}

/// [`run`], starting the peer process with `peer`.
pub fn run_with(args: &BenchArgs, peer: &PeerCommand) -> Result<(), BenchError> {
    let started = Instant::now();
    let filter = args.filter.as_deref();
    let specs: Vec<Spec> = cases::all(args.quick)
        .into_iter()
        .filter(|s| s.matches(filter))
        .collect();
    if args.list {
        for s in &specs {
            println!("{}", s.id());
        }
        return Ok(());
    }
    if specs.is_empty() {
        return Err(BenchError::NoMatch {
            filter: filter.unwrap_or_default().to_string(),
            cases: cases::all(args.quick)
                .iter()
                .map(Spec::id)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let cpus = raw::cpus().map_err(|source| BenchError::Io {
        what: "sched_getaffinity".into(),
        source,
    })?;
    let first_cpu = match args.cpu {
        Some(cpu) => cpus
            .iter()
            .position(|&c| c == cpu)
            .ok_or_else(|| BenchError::Cpu {
                cpu,
                allowed: format!("{cpus:?}"),
            })?,
        None => 0,
    };
    let load_before = load_average();

    let total: u64 = specs
        .iter()
        .map(|s| 1 + plan(args.quick, s.group).rounds as u64)
        .sum();
    let progress = progress_bar(total, specs.len());
    progress.set_message("setting up");
    let mut skipped = Vec::new();
    let fixtures = Fixtures::prepare(&specs, peer, &mut skipped, &progress)?;
    if let Some(cpu) = args.cpu {
        raw::set_affinity(&[cpu]).map_err(|source| BenchError::Io {
            what: format!("pin to CPU {cpu}"),
            source,
        })?;
    }

    let mut results = Vec::new();
    for spec in &specs {
        progress.set_message(spec.id());
        let plan = plan(args.quick, spec.group);
        if let Some(result) = measure_case(
            spec,
            &plan,
            &fixtures,
            &cpus,
            first_cpu,
            &progress,
            &mut skipped,
        )? {
            results.push(result);
        } else {
            progress.inc(1 + plan.rounds as u64);
        }
    }
    progress.finish_and_clear();
    drop(fixtures);

    let targets = targets::evaluate(&results);
    let report = Report {
        tool: "vdma bench",
        version: env!("CARGO_PKG_VERSION"),
        quick: args.quick,
        filter: args.filter.clone(),
        cpus,
        pinned_cpu: args.cpu,
        load_before,
        load_after: load_average(),
        wall_s: started.elapsed().as_secs_f64(),
        skipped,
        cases: results,
        targets,
    };
    print!("{}", report::table(&report));
    if let Some(path) = &args.json {
        report::write_json(&report, path)?;
    }
    if let Some(path) = &args.plot {
        let subtitle = format!(
            "{}; load average before {}",
            if report.quick { "--quick" } else { "full run" },
            report
                .load_before
                .map_or("unknown".into(), |l| format!("{:.2}", l[0]))
        );
        plot::write_svg(path, &report.cases, &subtitle)?;
    }
    Ok(())
}

/// A progress bar on standard error, drawn only on a terminal (elsewhere one line says what is
/// running).
fn progress_bar(total: u64, cases: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        let s = if cases == 1 { "" } else { "s" };
        eprintln!("vdma bench: running {cases} case{s}; the table follows when done");
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{elapsed:>4} [{bar:40}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `/proc/loadavg`'s three averages.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// What the selected cases share, made before anything is measured (and before the measuring
/// thread is pinned, so the server's and client's threads and the peer keep every CPU).
struct Fixtures {
    guest: Option<Guest>,
    /// The peer, its memory mapped at [`PEER_IOVA`] of the guest space.
    peer: Option<Peer>,
    session: Option<Session>,
    lookups: Vec<Lookup>,
}

impl Fixtures {
    fn prepare(
        specs: &[Spec],
        peer_command: &PeerCommand,
        skipped: &mut Vec<String>,
        progress: &ProgressBar,
    ) -> Result<Fixtures, BenchError> {
        let any = |f: &dyn Fn(&Spec) -> bool| specs.iter().any(f);
        let copies = any(&|s| matches!(s.group, Group::CopyRead | Group::CopyWrite));
        let needs_guest = copies
            || any(&|s| {
                matches!(
                    s.group,
                    Group::LookupRandom | Group::LookupHot | Group::Threads
                )
            });
        let mut fx = Fixtures {
            guest: None,
            peer: None,
            session: None,
            lookups: Vec::new(),
        };
        if needs_guest {
            progress.set_message("setting up: guest memory");
            fx.guest = Some(Guest::new()?);
        }
        if let (true, Some(guest)) = (copies, &fx.guest) {
            progress.set_message("setting up: peer process");
            match Peer::spawn(peer_command) {
                Ok(peer) => {
                    guest
                        .space
                        .map(
                            Iova(PEER_IOVA),
                            PEER_LEN,
                            vdma::Backing::memory(peer.memory.clone(), peer.addr),
                            Prot::READ_WRITE,
                        )
                        .map_err(vdma_err("map the peer's memory"))?;
                    fx.peer = Some(peer);
                }
                Err(e) => skipped.push(format!("{}: {e}", copy::VDMA_PROCESS)),
            }
        }
        if copies || any(&|s| s.group == Group::RegionWrite) {
            progress.set_message("setting up: vfio-user session");
            match Session::new() {
                Ok(session) => fx.session = Some(session),
                Err(e) => skipped.push(format!("{} and region_write: {e}", copy::VDMA_MESSAGES)),
            }
        }
        let mut counts: Vec<usize> = specs
            .iter()
            .flat_map(|s| match s.group {
                Group::LookupRandom => vec![s.param as usize],
                Group::LookupHot => vec![1, 65535],
                _ => vec![],
            })
            .collect();
        counts.sort_unstable();
        counts.dedup();
        if let Some(guest) = &fx.guest {
            for n in counts {
                progress.set_message(format!("setting up: {n} lookup mappings"));
                fx.lookups.push(Lookup::new(guest, n)?);
            }
        }
        Ok(fx)
    }

    fn guest(&self) -> Result<&Guest, BenchError> {
        self.guest.as_ref().ok_or_else(|| missing("guest memory"))
    }

    fn lookup(&self, n: usize) -> Result<&Lookup, BenchError> {
        self.lookups
            .iter()
            .find(|l| l.n == n)
            .ok_or_else(|| missing("lookup mappings"))
    }
}

fn missing(what: &str) -> BenchError {
    BenchError::Check {
        what: what.into(),
        reason: "not set up".into(),
    }
}

/// Builds the contenders of `spec` and measures them; `None` if the case cannot run here
/// (noted in `skipped`).
fn measure_case(
    spec: &Spec,
    plan: &Plan,
    fx: &Fixtures,
    cpus: &[usize],
    first_cpu: usize,
    progress: &ProgressBar,
    skipped: &mut Vec<String>,
) -> Result<Option<CaseResult>, BenchError> {
    // Per-case state that lives while the case runs.
    let mapper_stats = threads::MapperStats::default();
    let writes;
    let report;
    let pins;
    let mut contenders: Vec<Contender<'_>> = match spec.group {
        Group::CopyRead | Group::CopyWrite => copy::contenders(
            fx.guest()?,
            fx.peer.as_ref().map(|_| PEER_IOVA),
            fx.session.as_ref(),
            spec.param as usize,
            if spec.group == Group::CopyRead {
                Direction::Read
            } else {
                Direction::Write
            },
        )?,
        Group::LookupRandom => lookup::random(fx.guest()?, fx.lookup(spec.param as usize)?),
        Group::LookupHot => lookup::hot(&[fx.lookup(1)?, fx.lookup(65535)?]),
        Group::Threads => threads::contenders(fx.guest()?, cpus, first_cpu, &mapper_stats),
        Group::DirtyWrite => {
            writes = tracking::Writes::new()?;
            writes.contenders()
        }
        Group::DirtyReport => {
            report = tracking::Report::new(spec.param)?;
            report.contenders()
        }
        Group::PinUnpin => {
            pins = pins::Pins::new()?;
            pins.contenders(spec.param as usize)
        }
        Group::RegionWrite => match &fx.session {
            Some(session) => vec![vfio_user::region_write(session, spec.param)?],
            None => {
                skipped.push(format!("{}: no vfio-user session", spec.id()));
                return Ok(None);
            }
        },
    };
    let measured = timing::measure(&mut contenders, plan, progress)?;
    drop(contenders);
    Ok(Some(CaseResult {
        notes: mapper_stats.notes(),
        id: spec.id(),
        group: spec.group,
        param: spec.param,
        label: spec.label(),
        unit: spec.unit(),
        plan: *plan,
        contenders: measured,
    }))
}
