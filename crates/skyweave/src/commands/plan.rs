//! `skyweave plan`: place jobs on accelerator offerings.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use skyweave_compute::catalog::{Catalog, CatalogFile};
use skyweave_compute::job::parse_jobs;
use skyweave_compute::plan::{Placement, Plan, Planner, Purchase};

use crate::cli::{CatalogArgs, PlanArgs};

pub fn run(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let mut planner = match load_planner(&args.catalog)? {
        Ok(planner) => planner,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    planner.failover_depth = args.failover;
    let text = std::fs::read_to_string(&args.jobs)
        .with_context(|| format!("cannot read the job file {}", args.jobs.display()))?;
    let jobs = match parse_jobs(&text, &args.jobs.display().to_string(), &planner.catalog) {
        Ok(jobs) => jobs,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let plan = planner.plan(&jobs)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", table(&plan, &planner.catalog));
    }
    Ok(if plan.unplaced == 0 { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// The catalog (files or the shipped one) plus the estate's compute
/// sections. Validation failures come back as `Ok(Err(text))`.
pub fn load_planner(args: &CatalogArgs) -> anyhow::Result<Result<Planner, String>> {
    let mut catalog = if args.catalogs.is_empty() {
        Catalog::shipped()
    } else {
        let mut files = Vec::new();
        for path in &args.catalogs {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the catalog {}", path.display()))?;
            files.push(CatalogFile {
                cloud: cloud_of(path),
                name: path.display().to_string(),
                text,
            });
        }
        match Catalog::parse(&files) {
            Ok(catalog) => catalog,
            Err(errors) => return Ok(Err(errors.to_string())),
        }
    };
    let (quotas, mut commitments) = match &args.estate {
        None => (Vec::new(), Vec::new()),
        Some(path) => match super::load_estate(path)? {
            Ok(loaded) => {
                catalog.add_private(&loaded.estate.offerings);
                (loaded.estate.quotas, loaded.estate.commitments)
            }
            Err(errors) => return Ok(Err(errors)),
        },
    };
    // A commitment outside its period gives no discount and needs no
    // burning down.
    let today = super::today_utc();
    commitments.retain(|commitment| {
        let active = commitment.active_on(&today);
        if !active {
            eprintln!(
                "warning: [[commitment]] `{}` runs {} to {}; today ({today}) is outside it, so \
                 the plan ignores it",
                commitment.cloud, commitment.start, commitment.end
            );
        }
        active
    });
    let planner = Planner::new(catalog, quotas, commitments);
    for warning in planner.estate_warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(Ok(planner))
}

/// `aws.csv` and `catalogs/v8/aws/vms.csv` both describe aws.
fn cloud_of(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if stem == "vms" {
        if let Some(parent) = path.parent().and_then(|p| p.file_name()).and_then(|p| p.to_str()) {
            return parent.to_string();
        }
    }
    stem.to_string()
}

fn table(plan: &Plan, catalog: &Catalog) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>4}  {:<6} {:<16} {:<40} {:>5}  {:>10} {:>12} {:>10} {:>12}  why",
        "job",
        "rank",
        "cloud",
        "region",
        "instance (zone)",
        "nodes",
        "$/h",
        "job cost",
        "egress",
        "total"
    );
    for job in &plan.jobs {
        if let Some(placement) = &job.placement {
            row(&mut out, &job.job, placement);
            for placement in &job.failover {
                row(&mut out, "", placement);
            }
        }
        if let Some(unplaced) = &job.unplaced {
            let _ = writeln!(
                out,
                "{:<20} {:>4}  not placed (binding: {})",
                job.job,
                "-",
                unplaced.binding.join(", ")
            );
            for reason in &unplaced.reasons {
                let _ = writeln!(out, "{:<26}{reason}", "");
            }
            if !job.failover.is_empty() {
                let _ = writeln!(out, "{:<26}places to try once capacity frees:", "");
                for placement in &job.failover {
                    row(&mut out, "", placement);
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} of {} jobs placed; compute {:.2} USD + egress {:.2} USD = {:.2} USD",
        plan.placed,
        plan.placed + plan.unplaced,
        plan.compute_usd,
        plan.egress_usd,
        plan.total_usd
    );
    for commitment in &plan.commitments {
        let _ = writeln!(
            out,
            "commitment {}: discount {:.1}%, {:.2} USD of {:.2} USD remaining planned here",
            commitment.cloud,
            commitment.discount * 100.0,
            commitment.planned_usd,
            commitment.remaining_before_usd
        );
    }
    let _ = writeln!(
        out,
        "catalog: {} offerings; {} rows skipped (no price, no accelerator, no host row); {} \
         corrections of the published data",
        catalog.offerings.len(),
        catalog.skipped.len(),
        catalog.notes.len()
    );
    let _ = writeln!(
        out,
        "solved by {} over {} candidates ({} variables, {} constraints) in {:.3} s",
        plan.solver.method,
        plan.solver.candidates,
        plan.solver.variables,
        plan.solver.constraints,
        plan.solver.seconds
    );
    out
}

fn row(out: &mut String, job: &str, p: &Placement) {
    let purchase = match p.purchase {
        Purchase::OnDemand => String::new(),
        Purchase::Spot => " spot".into(),
        Purchase::Private => format!(" {}", p.private_offering.as_deref().unwrap_or("private")),
    };
    let instance = match &p.zone {
        Some(zone) => format!("{}{purchase} ({zone})", p.instance_type),
        None => format!("{}{purchase}", p.instance_type),
    };
    let _ = writeln!(
        out,
        "{job:<20} {:>4}  {:<6} {:<16} {:<40} {:>5}  {:>10.2} {:>12.2} {:>10.2} {:>12.2}  {}",
        p.rank,
        p.cloud,
        p.region,
        instance,
        p.nodes,
        p.usd_per_hour,
        p.compute_usd,
        p.egress_usd,
        p.total_usd,
        p.why
    );
}
