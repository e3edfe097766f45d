//! `skyweave-plan-bench`: how long `Planner::plan` takes on the shipped
//! catalog, for one job (exact enumeration) and for a batch of 1,000 (the
//! HiGHS MILP), with quotas, private capacity and commitments that bind.
//!
//! The workload is generated from a seed (see `workload.rs`), so runs are
//! comparable. `--write-jobs` and `--write-estate` write the largest batch
//! as the files `skyweave plan --estate E JOBS` reads, to time the CLI end
//! to end (`bench/plan.sh`); both are parsed back and compared first.

mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use skyweave_compute::catalog::Catalog;
use skyweave_compute::job::parse_jobs;
use skyweave_compute::plan::{Plan, Planner};

use workload::{estate_toml, generate, jobs_toml, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "skyweave-plan-bench",
    about = "Times the skyweave planner on generated jobs over the shipped catalog"
)]
struct Cli {
    /// Jobs per batch; repeat for several sizes.
    #[arg(long = "jobs", default_values_t = [1, 1000])]
    jobs: Vec<usize>,
    /// Timed runs of the planner per size (0: only write the files).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seed of the generated workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the largest batch's jobs as a job file here.
    #[arg(long, value_name = "PATH")]
    write_jobs: Option<PathBuf>,
    /// Write the largest batch's quotas, private offerings and commitments
    /// as an estate file here.
    #[arg(long, value_name = "PATH")]
    write_estate: Option<PathBuf>,
    /// The median wall time the largest batch (1,000 jobs if measured) should
    /// stay under, in seconds.
    #[arg(long, default_value_t = 1.0)]
    target_seconds: f64,
    /// Plan the largest batch once more, untimed, and write its program
    /// (the MILP HiGHS searches) here in MPS format.
    #[arg(long, value_name = "PATH")]
    write_program: Option<PathBuf>,
}

/// The planner over the shipped catalog with the workload's estate.
fn planner_for(catalog: &Catalog, workload: &Workload) -> Planner {
    let mut with_private = catalog.clone();
    with_private.add_private(&workload.offerings);
    Planner::new(with_private, workload.quotas.clone(), workload.commitments.clone())
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let catalog = Catalog::shipped();
    if cli.jobs.contains(&0) {
        bail!("--jobs 0: give batch sizes of at least 1 job");
    }
    let largest = cli.jobs.iter().copied().max().unwrap_or(1);
    if cli.write_jobs.is_some() || cli.write_estate.is_some() {
        write_files(&cli, &catalog, &generate(&catalog, largest, cli.seed))?;
    }
    if let Some(path) = &cli.write_program {
        let workload = generate(&catalog, largest, cli.seed);
        let mut planner = planner_for(&catalog, &workload);
        planner.write_program = Some(path.clone());
        planner.plan(&workload.jobs).context("the planner failed")?;
        println!("wrote the {largest}-job batch's program to {}", path.display());
    }
    if cli.runs == 0 {
        return Ok(ExitCode::SUCCESS);
    }

    println!(
        "shipped catalog: {} offerings; seed {}; {} timed runs per size; wall time of Planner::plan",
        catalog.offerings.len(),
        cli.seed,
        cli.runs
    );
    println!(
        "{:>6} {:>7} {:>7} {:>11}  {:<12} {:>10} {:>9} {:>11}  {:>6} {:>8}  {:>9} {:>9} {:>9}  {:>16}",
        "jobs",
        "quotas",
        "private",
        "commitments",
        "method",
        "candidates",
        "variables",
        "constraints",
        "placed",
        "unplaced",
        "min ms",
        "median ms",
        "cand. ms",
        "objective USD"
    );
    let mut medians = Vec::new();
    for &size in &cli.jobs {
        let workload = generate(&catalog, size, cli.seed);
        let planner = planner_for(&catalog, &workload);
        let mut times = Vec::with_capacity(cli.runs);
        let mut candidate_times = Vec::with_capacity(cli.runs);
        let mut plans: Vec<Plan> = Vec::with_capacity(cli.runs);
        for _ in 0..cli.runs {
            let started = Instant::now();
            let plan = planner.plan(&workload.jobs).context("the planner failed")?;
            times.push(started.elapsed());
            plans.push(plan);
            // The part of `plan` that lists candidates, for the split
            // between enumeration and the solver.
            let started = Instant::now();
            let listed: usize =
                workload.jobs.iter().map(|job| planner.candidates(job).0.len()).sum();
            candidate_times.push(started.elapsed());
            assert_eq!(listed, plans[0].solver.candidates);
        }
        let plan = &plans[0];
        if let Some(other) = plans.iter().find(|p| {
            (p.objective_usd - plan.objective_usd).abs() > 1e-6 * plan.objective_usd.abs().max(1.0)
        }) {
            bail!(
                "{size} jobs: the objective differs between runs ({} vs {})",
                plan.objective_usd,
                other.objective_usd
            );
        }
        times.sort();
        candidate_times.sort();
        let (min, median, listing) = (times[0], median(&times), median(&candidate_times));
        medians.push((size, median));
        println!(
            "{:>6} {:>7} {:>7} {:>11}  {:<12} {:>10} {:>9} {:>11}  {:>6} {:>8}  {:>9.3} {:>9.3} {:>9.3}  {:>16.2}",
            size,
            workload.quotas.len(),
            workload.offerings.len(),
            workload.commitments.len(),
            plan.solver.method,
            plan.solver.candidates,
            plan.solver.variables,
            plan.solver.constraints,
            plan.placed,
            plan.unplaced,
            milliseconds(min),
            milliseconds(median),
            milliseconds(listing),
            plan.objective_usd
        );
    }
    let (size, median) = medians
        .iter()
        .copied()
        .find(|(size, _)| *size == 1000)
        .or_else(|| medians.iter().copied().max_by_key(|(size, _)| *size))
        .expect("one size at least");
    let met = median.as_secs_f64() <= cli.target_seconds;
    println!(
        "{size} jobs: median {:.3} s against the {} s target: {}",
        median.as_secs_f64(),
        cli.target_seconds,
        if met {
            format!("met ({:.1}x headroom)", cli.target_seconds / median.as_secs_f64())
        } else {
            format!("MISSED ({:.1}x over)", median.as_secs_f64() / cli.target_seconds)
        }
    );
    Ok(if met { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

/// Writes the files and checks that they read back as the same workload,
/// so that timing the CLI on them times the same problem.
fn write_files(cli: &Cli, catalog: &Catalog, workload: &Workload) -> Result<()> {
    let mut with_private = catalog.clone();
    with_private.add_private(&workload.offerings);
    if let Some(path) = &cli.write_jobs {
        let text = jobs_toml(&workload.jobs);
        let read =
            parse_jobs(&text, &path.display().to_string(), &with_private).map_err(|errors| {
                anyhow::anyhow!("the generated job file does not parse:\n{errors}")
            })?;
        if read != workload.jobs {
            bail!("the generated job file reads back as other jobs");
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {} jobs to {}", workload.jobs.len(), path.display());
    }
    if let Some(path) = &cli.write_estate {
        let text = estate_toml(workload);
        let loaded = skyweave_core::config::parse_estate(&text, &path.display().to_string())
            .map_err(|errors| {
                anyhow::anyhow!("the generated estate file does not parse:\n{errors}")
            })?;
        let estate = loaded.estate;
        if estate.offerings != workload.offerings
            || estate.quotas != workload.quotas
            || estate.commitments != workload.commitments
        {
            bail!("the generated estate file reads back as another estate");
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "wrote {} quotas, {} private offerings and {} commitments to {}",
            workload.quotas.len(),
            workload.offerings.len(),
            workload.commitments.len(),
            path.display()
        );
    }
    Ok(())
}
