//! The measuring half of the benchmark: configuration, timing loop,
//! statistics and the report. It knows nothing about protocols.
//!
//! Every benchmark is a `setup` that builds one iteration's inputs (not
//! timed) and a `routine` that consumes them (timed). Outputs are kept until
//! the benchmark ends, so freeing a large aux info is never timed.

use std::io::Write;
use std::time::{Duration, Instant};

/// Multiplies every default iteration count (`0.1` for a smoke run, `3` for
/// tighter figures). Each benchmark still runs at least once.
pub const ITERATIONS_ENV: &str = "CUSTOS_BENCH_ITERS";
/// Comma-separated substrings; a benchmark runs if its name contains one.
pub const FILTER_ENV: &str = "CUSTOS_BENCH_FILTER";

/// A progress line is printed after an iteration when at least this long
/// has passed since the previous one, so slow benchmarks show every
/// iteration and fast ones do not flood stderr.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// What the user asked for, from the environment and the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// Factor applied to every default iteration count.
    pub iteration_scale: f64,
    /// Name substrings that select benchmarks; empty selects all.
    pub filters: Vec<String>,
}

impl Config {
    /// Reads [`ITERATIONS_ENV`], [`FILTER_ENV`] and the arguments. Cargo
    /// passes `--bench` to a custom harness: it and any other flag are
    /// ignored; a bare argument is a filter, as with libtest
    /// (`cargo bench ... -- ecdsa`).
    pub fn from_env_and_args() -> Result<Self, String> {
        let iteration_scale = match std::env::var(ITERATIONS_ENV) {
            Ok(value) => match value.trim().parse::<f64>() {
                Ok(scale) if scale.is_finite() && scale >= 0.0 => scale,
                _ => {
                    return Err(format!(
                        "{ITERATIONS_ENV}={value:?}: expected a non-negative number"
                    ))
                }
            },
            Err(_) => 1.0,
        };
        let mut filters: Vec<String> = std::env::var(FILTER_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|filter| !filter.is_empty())
            .map(String::from)
            .collect();
        for argument in std::env::args().skip(1) {
            if argument.starts_with('-') {
                if argument != "--bench" {
                    eprintln!("note: ignoring argument {argument:?}");
                }
            } else {
                filters.push(argument);
            }
        }
        Ok(Self {
            iteration_scale,
            filters,
        })
    }
}

/// How often a benchmark runs before [`Config::iteration_scale`] applies.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Timed iterations.
    pub iterations: usize,
    /// Untimed iterations first, to warm caches and the allocator. Zero for
    /// the multi-second protocols, where one more run costs too much and
    /// warming changes nothing measurable.
    pub warmups: usize,
}

impl Plan {
    /// A protocol that takes seconds: no warm-up.
    pub const fn slow(iterations: usize) -> Self {
        Self {
            iterations,
            warmups: 0,
        }
    }

    /// A protocol that takes milliseconds: a few warm-up runs.
    pub const fn fast(iterations: usize) -> Self {
        Self {
            iterations,
            warmups: 5,
        }
    }
}

/// The timing figures of one benchmark, in milliseconds.
#[derive(Clone, Debug)]
pub struct Summary {
    pub name: String,
    pub iterations: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Mean CPU time of this process per iteration (every party, the
    /// network tasks), if the system reports it. Unlike wall time it does
    /// not grow when other work competes for the cores.
    pub cpu_mean_ms: Option<f64>,
}

impl Summary {
    fn from_samples(name: &str, samples: &[Duration], cpu_total: Option<Duration>) -> Self {
        let mut sorted_ms: Vec<f64> = samples
            .iter()
            .map(|sample| sample.as_secs_f64() * 1e3)
            .collect();
        sorted_ms.sort_by(f64::total_cmp);
        let count = sorted_ms.len();
        let at = |position: usize| sorted_ms.get(position).copied().unwrap_or(f64::NAN);
        let median_ms = if count % 2 == 1 {
            at(count / 2)
        } else {
            (at(count / 2 - 1) + at(count / 2)) / 2.0
        };
        // Nearest-rank percentile: the smallest sample with at least 90 % of
        // the samples at or below it (the maximum when there are few).
        let p90_rank = (count * 9).div_ceil(10).max(1);
        Self {
            name: name.to_string(),
            iterations: count,
            median_ms,
            p90_ms: at(p90_rank - 1),
            min_ms: at(0),
            max_ms: at(count - 1),
            cpu_mean_ms: cpu_total.map(|total| total.as_secs_f64() * 1e3 / count.max(1) as f64),
        }
    }
}

/// A size figure, in bytes.
#[derive(Clone, Debug)]
pub struct Size {
    pub name: String,
    pub bytes: usize,
}

/// Runs benchmarks, collects their figures and prints them.
pub struct Harness {
    config: Config,
    started: Instant,
    timings: Vec<Summary>,
    sizes: Vec<Size>,
    skipped: Vec<(String, String)>,
}

impl Harness {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            started: Instant::now(),
            timings: Vec::new(),
            sizes: Vec::new(),
            skipped: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the filters select the benchmark `name`.
    pub fn selects(&self, name: &str) -> bool {
        self.config.filters.is_empty()
            || self
                .config
                .filters
                .iter()
                .any(|filter| name.contains(filter.as_str()))
    }

    /// Whether the filters select any of `names`: for inputs that several
    /// benchmarks share and that are worth building only once.
    pub fn selects_any(&self, names: &[&str]) -> bool {
        names.iter().any(|name| self.selects(name))
    }

    /// Times `routine` on inputs from `setup` (called with the iteration
    /// number, warm-ups included), if the filters select `name`. Prints
    /// progress on stderr and the `BENCH` line on stdout as soon as it is
    /// done. Returns the outputs of the timed iterations (none if the
    /// benchmark did not run), for a caller that can reuse an expensive one.
    pub fn bench<Input, Output>(
        &mut self,
        name: &str,
        plan: Plan,
        mut setup: impl FnMut(usize) -> Input,
        routine: impl FnMut(Input) -> Output,
    ) -> Vec<Output> {
        let mut outputs =
            self.bench_interleaved(&[name], plan, |_, iteration| setup(iteration), routine);
        outputs.pop().unwrap_or_default()
    }

    /// Times one `routine` on the inputs of several variants, which
    /// `setup(variant, iteration)` builds (`variant` indexes `names`), taking
    /// turns every iteration: a, b, a, b... On a shared machine a change of
    /// load then hits every variant alike, which keeps an A/B comparison
    /// fair. Only the variants the filters select run. Returns the outputs of
    /// each variant's timed iterations, in the order of `names`.
    pub fn bench_interleaved<Input, Output>(
        &mut self,
        names: &[&str],
        plan: Plan,
        mut setup: impl FnMut(usize, usize) -> Input,
        mut routine: impl FnMut(Input) -> Output,
    ) -> Vec<Vec<Output>> {
        let mut outputs: Vec<Vec<Output>> = names.iter().map(|_| Vec::new()).collect();
        let selected: Vec<usize> = (0..names.len())
            .filter(|&variant| self.selects(names[variant]))
            .collect();
        if selected.is_empty() {
            return outputs;
        }
        let iterations = self.scaled(plan.iterations);
        let label = selected
            .iter()
            .map(|&variant| names[variant])
            .collect::<Vec<_>>()
            .join(" / ");
        eprintln!(
            "[{:>6.1} s] {label}: {iterations} iteration(s) after {} warm-up(s)",
            self.started.elapsed().as_secs_f64(),
            plan.warmups
        );
        let bench_started = Instant::now();
        let mut last_progress = Instant::now();
        let mut samples: Vec<Vec<Duration>> = names.iter().map(|_| Vec::new()).collect();
        // None as soon as one reading fails: a partial sum would mislead.
        let mut cpu_totals: Vec<Option<Duration>> =
            names.iter().map(|_| Some(Duration::ZERO)).collect();
        for iteration in 0..plan.warmups + iterations {
            let is_warmup = iteration < plan.warmups;
            for &variant in &selected {
                let input = setup(variant, iteration);
                let cpu_before = process_cpu_time();
                let started = Instant::now();
                let output = std::hint::black_box(routine(input));
                let elapsed = started.elapsed();
                let cpu_after = process_cpu_time();
                if !is_warmup {
                    samples[variant].push(elapsed);
                    outputs[variant].push(output);
                    cpu_totals[variant] = match (cpu_totals[variant], cpu_before, cpu_after) {
                        (Some(total), Some(before), Some(after)) => {
                            Some(total + after.saturating_sub(before))
                        }
                        _ => None,
                    };
                }
                if last_progress.elapsed() >= PROGRESS_INTERVAL {
                    let (stage, done, total) = if is_warmup {
                        ("warm-up", iteration + 1, plan.warmups)
                    } else {
                        ("iteration", iteration + 1 - plan.warmups, iterations)
                    };
                    eprintln!(
                        "           {}: {stage} {done}/{total} took {:.1} ms",
                        names[variant],
                        elapsed.as_secs_f64() * 1e3
                    );
                    last_progress = Instant::now();
                }
            }
        }
        for &variant in &selected {
            let summary =
                Summary::from_samples(names[variant], &samples[variant], cpu_totals[variant]);
            eprintln!(
                "           {}: median {:.3} ms",
                summary.name, summary.median_ms
            );
            emit_bench_line(serde_json::json!({
                "name": summary.name,
                "unit": "ms",
                "median": round_to_microseconds(summary.median_ms),
                "p90": round_to_microseconds(summary.p90_ms),
                "min": round_to_microseconds(summary.min_ms),
                "max": round_to_microseconds(summary.max_ms),
                "cpu_mean": summary.cpu_mean_ms.map(round_to_microseconds),
                "iterations": summary.iterations,
            }));
            self.timings.push(summary);
        }
        eprintln!(
            "           {label}: {:.1} s in all",
            bench_started.elapsed().as_secs_f64()
        );
        outputs
    }

    /// Records a size figure. A size is exact, so its median and p90 on the
    /// `BENCH` line are the same number (the line keeps one schema for all
    /// figures).
    pub fn record_size(&mut self, name: &str, bytes: usize) {
        emit_bench_line(serde_json::json!({
            "name": name,
            "unit": "bytes",
            "median": bytes,
            "p90": bytes,
            "iterations": 1,
        }));
        self.sizes.push(Size {
            name: name.to_string(),
            bytes,
        });
    }

    /// Records that a selected benchmark could not run, and why.
    pub fn skip(&mut self, name: &str, reason: &str) {
        if self.selects(name) {
            eprintln!("skipping {name}: {reason}");
            self.skipped.push((name.to_string(), reason.to_string()));
        }
    }

    /// The timing figures of `name`, if it ran.
    pub fn timing(&self, name: &str) -> Option<&Summary> {
        self.timings.iter().find(|summary| summary.name == name)
    }

    /// The size figure `name`, if it was recorded.
    pub fn size(&self, name: &str) -> Option<usize> {
        self.sizes
            .iter()
            .find(|size| size.name == name)
            .map(|size| size.bytes)
    }

    /// Prints the report tables on stdout.
    pub fn print_report(&self) {
        println!();
        println!(
            "{:<40} {:>6} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "benchmark", "iters", "median ms", "p90 ms", "min ms", "max ms", "cpu ms"
        );
        for summary in &self.timings {
            let cpu = summary
                .cpu_mean_ms
                .map_or_else(|| "-".to_string(), |cpu| format!("{cpu:.1}"));
            println!(
                "{:<40} {:>6} {:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>12}",
                summary.name,
                summary.iterations,
                summary.median_ms,
                summary.p90_ms,
                summary.min_ms,
                summary.max_ms,
                cpu
            );
        }
        println!(
            "(cpu ms: mean CPU time of this process per iteration, all parties and network \
             tasks together; read in 10 ms ticks, so only indicative for fast benchmarks)"
        );
        if !self.sizes.is_empty() {
            println!();
            println!("{:<40} {:>12} {:>12}", "size", "bytes", "KiB");
            for size in &self.sizes {
                println!(
                    "{:<40} {:>12} {:>12.1}",
                    size.name,
                    size.bytes,
                    size.bytes as f64 / 1024.0
                );
            }
        }
        for (name, reason) in &self.skipped {
            println!("SKIPPED {name}: {reason}");
        }
    }

    /// Time since the harness was created.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn scaled(&self, default_iterations: usize) -> usize {
        let scaled = (default_iterations as f64 * self.config.iteration_scale).round();
        (scaled as usize).max(1)
    }
}

fn round_to_microseconds(milliseconds: f64) -> f64 {
    (milliseconds * 1e3).round() / 1e3
}

/// One machine-readable line per figure: `BENCH ` and a JSON object.
fn emit_bench_line(figure: serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout only loses the line; the report goes the same way.
    let _ = writeln!(stdout, "BENCH {figure}");
    let _ = stdout.flush();
}

/// The one-minute load average, where the system reports it (Linux).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time this process has used so far, all threads together, where the
/// system reports it: Linux's `/proc/self/stat` (user and system time, in
/// clock ticks of 1/100 s; USER_HZ is 100 on every Linux architecture Custos
/// targets).
fn process_cpu_time() -> Option<Duration> {
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces;
    // fields 14 and 15 (utime, stime) are the 12th and 13th after it.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user_ticks: u64 = fields.next()?.parse().ok()?;
    let system_ticks: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (user_ticks + system_ticks) * 1000 / TICKS_PER_SECOND,
    ))
}
