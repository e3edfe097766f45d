//! `skyweave offerings`: accelerator offerings across clouds, cheapest per
//! accelerator-hour first.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;
use skyweave_compute::catalog::Offering;

use crate::cli::OfferingsArgs;

#[derive(Serialize)]
struct Row<'a> {
    cloud: &'a str,
    region: &'a str,
    zone: Option<&'a str>,
    instance_type: &'a str,
    accelerator: &'a str,
    accelerators_per_node: u32,
    usd_per_hour: Option<f64>,
    spot_usd_per_hour: Option<f64>,
    usd_per_accelerator_hour: Option<f64>,
    spot_usd_per_accelerator_hour: Option<f64>,
    private: Option<&'a str>,
}

pub fn run(args: &OfferingsArgs) -> anyhow::Result<ExitCode> {
    let planner = match super::plan::load_planner(&args.catalog)? {
        Ok(planner) => planner,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let catalog = &planner.catalog;
    if let Some(name) = &args.accelerator {
        if catalog.canonical_name(name).is_none() {
            let known: Vec<&str> = catalog.accelerator_names().collect();
            eprintln!(
                "error: no offering has the accelerator `{name}`\n    fix: use one of: {}",
                known.join(", ")
            );
            return Ok(ExitCode::from(2));
        }
    }
    let per_accelerator =
        |price: Option<f64>, o: &Offering| price.map(|p| p / f64::from(o.accelerator_count));
    let mut rows: Vec<Row> = catalog
        .offerings
        .iter()
        .filter(|o| args.accelerator.as_ref().is_none_or(|a| o.accelerator.eq_ignore_ascii_case(a)))
        .filter(|o| args.count.is_none_or(|c| o.accelerator_count == c))
        .filter(|o| args.cloud.as_ref().is_none_or(|c| &o.cloud == c))
        .filter(|o| args.region.as_ref().is_none_or(|r| &o.region == r))
        .filter(|o| if args.spot { o.spot.is_some() } else { o.on_demand.is_some() })
        .map(|o| Row {
            cloud: &o.cloud,
            region: &o.region,
            zone: o.zone.as_deref(),
            instance_type: &o.instance_type,
            accelerator: &o.accelerator,
            accelerators_per_node: o.accelerator_count,
            usd_per_hour: o.on_demand,
            spot_usd_per_hour: o.spot,
            usd_per_accelerator_hour: per_accelerator(o.on_demand, o),
            spot_usd_per_accelerator_hour: per_accelerator(o.spot, o),
            private: o.private.as_ref().map(|p| p.name.as_str()),
        })
        .collect();
    let key = |row: &Row| {
        if args.spot { row.spot_usd_per_accelerator_hour } else { row.usd_per_accelerator_hour }
            .unwrap_or(f64::INFINITY)
    };
    rows.sort_by(|a, b| {
        key(a)
            .total_cmp(&key(b))
            .then_with(|| a.cloud.cmp(b.cloud))
            .then_with(|| a.region.cmp(b.region))
            .then_with(|| a.zone.cmp(&b.zone))
            .then_with(|| a.instance_type.cmp(b.instance_type))
    });
    if let Some(limit) = args.limit {
        rows.truncate(limit);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<16} {:<20} {:<26} {:<14} {:>10} {:>10} {:>10} {:>10}",
        "cloud",
        "region",
        "zone",
        "instance",
        "accelerators",
        "$/h",
        "$/acc-h",
        "spot $/h",
        "spot/acc-h"
    );
    let money = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for row in &rows {
        let instance = match row.private {
            Some(name) => format!("{} [{name}]", row.instance_type),
            None => row.instance_type.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<6} {:<16} {:<20} {:<26} {:<14} {:>10} {:>10} {:>10} {:>10}",
            row.cloud,
            row.region,
            row.zone.unwrap_or("-"),
            instance,
            format!("{} x{}", row.accelerator, row.accelerators_per_node),
            money(row.usd_per_hour),
            money(row.usd_per_accelerator_hour),
            money(row.spot_usd_per_hour),
            money(row.spot_usd_per_accelerator_hour),
        );
    }
    let _ = writeln!(out, "\n{} offerings", rows.len());
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
