//! How a case is timed: each contender's batch size is calibrated once, then every round runs
//! every contender of the case in turn (starting one further each round, each batch after an
//! untimed quarter batch that warms the caches up again), so drift on a noisy machine hits all
//! alike; the figure is the median over rounds of the time per operation of a batch, with its
//! spread, and two contenders are compared by the median of their per-round ratios.

use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Serialize;

use super::BenchError;

/// Runs `iters` operations and returns the time they took (only the timed part, for contenders
/// that prepare each operation untimed).
pub(crate) type RunFn<'f> = Box<dyn FnMut(u64) -> Result<Duration, BenchError> + 'f>;

/// One side of a comparison.
pub(crate) struct Contender<'f> {
    /// Its name in the report.
    pub(crate) name: String,
    /// Runs a batch.
    pub(crate) run: RunFn<'f>,
}

impl<'f> Contender<'f> {
    /// A contender named `name` that runs batches with `run`.
    pub(crate) fn new(
        name: impl Into<String>,
        run: impl FnMut(u64) -> Result<Duration, BenchError> + 'f,
    ) -> Contender<'f> {
        Contender {
            name: name.into(),
            run: Box::new(run),
        }
    }

    /// A contender whose operation is `op`, run `iters` times under one clock reading.
    pub(crate) fn looped(
        name: impl Into<String>,
        mut op: impl FnMut() -> Result<(), BenchError> + 'f,
    ) -> Contender<'f> {
        Contender::new(name, move |iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                op()?;
            }
            Ok(t0.elapsed())
        })
    }
}

/// How long and how often a case is measured.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Plan {
    /// Rounds; each runs one batch of every contender.
    pub(crate) rounds: usize,
    /// The time one batch should take (batch sizes are calibrated to it).
    #[serde(serialize_with = "as_ms")]
    pub(crate) batch: Duration,
    /// The fewest operations in a batch (for batches with a fixed cost outside the
    /// operations, such as threads starting at slightly different times).
    pub(crate) min_iters: u64,
    /// The most operations in a batch (for contenders whose untimed preparation is long).
    pub(crate) max_iters: u64,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// Median and spread of a contender's samples (nanoseconds per operation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct Stats {
    /// The median.
    pub(crate) median: f64,
    /// The smallest sample.
    pub(crate) min: f64,
    /// The largest sample.
    pub(crate) max: f64,
    /// The first quartile.
    pub(crate) q1: f64,
    /// The third quartile.
    pub(crate) q3: f64,
}

impl Stats {
    /// The statistics of `samples`; `None` if there are none or one is not finite.
    pub(crate) fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Stats {
            median: quantile(&sorted, 0.5),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
        })
    }
}

/// The median over rounds of `a[i] / b[i]`: two contenders of a case compared round by round
/// (each round runs them back to back, so drift across rounds cancels). `None` if the sample
/// counts differ or a sample is not positive.
pub(crate) fn paired_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.iter().chain(b).any(|&x| x <= 0.0) {
        return None;
    }
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    Stats::of(&ratios).map(|s| s.median)
}

/// The `q` quantile of sorted, non-empty `sorted`, interpolated linearly between the two
/// nearest ranks (so the median of an even count is the mean of the middle two).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// What was measured of one contender.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Measured {
    /// The contender's name.
    pub(crate) name: String,
    /// Operations per batch.
    pub(crate) batch: u64,
    /// Nanoseconds per operation, one per round, in round order.
    pub(crate) samples_ns: Vec<f64>,
    /// Their statistics.
    pub(crate) stats: Stats,
}

/// The batch size that makes one batch of `run` take about `target` (at most `max_iters`):
/// grows the batch until it takes a tenth of the target, then scales it from the fastest of
/// three batches of that size.
pub(crate) fn calibrate(
    run: &mut RunFn<'_>,
    target: Duration,
    max_iters: u64,
) -> Result<u64, BenchError> {
    let max_iters = max_iters.max(1);
    // A first call outside any measurement (first touches, lazy set-up of the callee).
    run(1)?;
    let mut iters = 1u64;
    loop {
        let took = run(iters)?;
        if iters >= max_iters {
            return Ok(max_iters);
        }
        if took >= target / 10 {
            // Scale from the fastest of three tries: one batch slowed down by the rest of the
            // machine would otherwise make every batch of the case too short.
            let mut fastest = took;
            for _ in 0..2 {
                fastest = fastest.min(run(iters)?);
            }
            return Ok(scale(iters, fastest, target).clamp(1, max_iters));
        }
        // Too short to scale from: grow ten-fold (or to the target if it is already near).
        iters = if took.is_zero() {
            iters.saturating_mul(10)
        } else {
            scale(iters, took, target).min(iters.saturating_mul(10))
        }
        .clamp(iters + 1, max_iters);
    }
}

/// `iters` scaled from taking `took` to taking `target`.
fn scale(iters: u64, took: Duration, target: Duration) -> u64 {
    let per = took.as_secs_f64() / iters as f64;
    if per <= 0.0 {
        return iters.saturating_mul(10);
    }
    (target.as_secs_f64() / per)
        .ceil()
        .min(u64::MAX as f64 / 2.0) as u64
}

/// Measures `contenders` with `plan`: calibrates each, then runs `plan.rounds` rounds of one
/// batch of each (after an untimed quarter batch), rotating the order every round. Ticks
/// `progress` once for the calibration and once per round.
pub(crate) fn measure(
    contenders: &mut [Contender<'_>],
    plan: &Plan,
    progress: &ProgressBar,
) -> Result<Vec<Measured>, BenchError> {
    let mut batches = Vec::with_capacity(contenders.len());
    for c in contenders.iter_mut() {
        let iters = calibrate(&mut c.run, plan.batch, plan.max_iters)?;
        batches.push(iters.max(plan.min_iters.min(plan.max_iters)));
    }
    progress.inc(1);
    let n = contenders.len();
    let mut samples = vec![Vec::with_capacity(plan.rounds); n];
    for round in 0..plan.rounds {
        for k in 0..n {
            let i = (round + k) % n;
            // A quarter batch untimed first: the previous contender's data left the caches
            // cold for this one, and the timed batch should see the steady state.
            let warm = batches[i] / 4;
            if warm > 0 {
                (contenders[i].run)(warm)?;
            }
            let took = (contenders[i].run)(batches[i])?;
            samples[i].push(took.as_nanos() as f64 / batches[i] as f64);
        }
        progress.inc(1);
    }
    let mut out = Vec::with_capacity(n);
    for ((c, batch), samples_ns) in contenders.iter().zip(batches).zip(samples) {
        let stats = Stats::of(&samples_ns).ok_or_else(|| BenchError::Check {
            what: c.name.clone(),
            reason: "no usable sample (zero rounds?)".into(),
        })?;
        out.push(Measured {
            name: c.name.clone(),
            batch,
            samples_ns,
            stats,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Stats::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!((s.min, s.max), (1.0, 4.0));
    }

    #[test]
    fn quartiles_interpolate_and_ignore_an_outlier() {
        // 1..=9 and one wild sample: the median and quartiles barely move, the max shows it.
        let mut v: Vec<f64> = (1..=9).map(f64::from).collect();
        v.push(1000.0);
        let s = Stats::of(&v).unwrap();
        assert_eq!(s.median, 5.5);
        assert_eq!(s.q1, 3.25);
        assert_eq!(s.q3, 7.75);
        assert_eq!(s.max, 1000.0);
    }

    #[test]
    fn one_sample_and_no_sample() {
        let s = Stats::of(&[7.0]).unwrap();
        assert_eq!(
            (s.median, s.min, s.max, s.q1, s.q3),
            (7.0, 7.0, 7.0, 7.0, 7.0)
        );
        assert!(Stats::of(&[]).is_none());
        assert!(Stats::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn paired_ratios_cancel_drift() {
        // The machine slowed down ten-fold in round 2 for both: round by round, a is half of b
        // twice, so the paired median is 0.5, where the ratio of medians would be 0.4.
        let a = [10.0, 100.0, 12.0];
        let b = [20.0, 200.0, 30.0];
        assert_eq!(paired_ratio(&a, &b), Some(0.5));
        let (ma, mb) = (Stats::of(&a).unwrap().median, Stats::of(&b).unwrap().median);
        assert!((ma / mb - 0.4).abs() < 1e-12);
        assert_eq!(paired_ratio(&a, &b[..2]), None);
        assert_eq!(paired_ratio(&[1.0], &[0.0]), None);
    }

    /// A fake contender whose operations cost `ns_per_op` of fake time, recording batch sizes.
    fn fake(ns_per_op: u64, log: Rc<RefCell<Vec<u64>>>) -> RunFn<'static> {
        Box::new(move |iters| {
            log.borrow_mut().push(iters);
            Ok(Duration::from_nanos(iters * ns_per_op))
        })
    }

    #[test]
    fn calibration_reaches_the_target_and_respects_the_cap() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut run = fake(10, log.clone());
        let iters = calibrate(&mut run, Duration::from_millis(1), u64::MAX).unwrap();
        assert_eq!(iters, 100_000, "1 ms of 10 ns operations");
        let mut run = fake(10, log.clone());
        assert_eq!(
            calibrate(&mut run, Duration::from_millis(1), 64).unwrap(),
            64
        );
        let mut run = fake(5_000_000, log);
        assert_eq!(
            calibrate(&mut run, Duration::from_millis(1), 1000).unwrap(),
            1
        );
    }

    #[test]
    fn rounds_interleave_contenders_and_report_per_op_time() {
        let order = Rc::new(RefCell::new(Vec::new()));
        let mk = |name: &'static str, ns: u64| {
            let order = order.clone();
            Contender::new(name, move |iters| {
                order.borrow_mut().push(name);
                Ok(Duration::from_nanos(iters * ns))
            })
        };
        let mut cs = vec![mk("a", 10), mk("b", 40)];
        let plan = Plan {
            rounds: 3,
            batch: Duration::from_micros(100),
            min_iters: 1,
            max_iters: u64::MAX,
        };
        let m = measure(&mut cs, &plan, &ProgressBar::hidden()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].samples_ns, vec![10.0; 3]);
        assert_eq!(m[1].stats.median, 40.0);
        assert_eq!(m[0].batch, 10_000);
        assert_eq!(m[1].batch, 2_500);
        // After calibration: rounds a,b then b,a then a,b, each batch after its warm-up.
        let order = order.borrow();
        let rounds = &order[order.len() - 12..];
        assert_eq!(
            rounds,
            ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
        );
    }
}
