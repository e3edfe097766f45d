//! A deterministic planning workload over the shipped catalog: jobs, and the
//! estate's quotas, private offerings and commitments sized to them.
//!
//! Jobs are drawn from one seeded stream, so the first `n` jobs of a larger
//! workload are the jobs of the smaller one. The estate is drawn from a
//! second stream and sized from the jobs, so that quotas and private
//! capacity bind for some of them whatever `n` is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use skyweave_compute::catalog::Catalog;
use skyweave_compute::job::{Alternative, Dataset, Job};
use skyweave_core::compute::{
    Commitment, DiscountTier, PrivateKind, PrivateOffering, Quota, QuotaPurchase,
};

pub struct Workload {
    pub jobs: Vec<Job>,
    pub offerings: Vec<PrivateOffering>,
    pub quotas: Vec<Quota>,
    pub commitments: Vec<Commitment>,
}

/// Accelerator families that quotas are written for, as clouds group them.
const FAMILIES: [(&str, &[&str]); 4] = [
    ("hopper", &["H100", "H100-MEGA", "H200"]),
    ("blackwell", &["B200"]),
    ("ampere", &["A100", "A100-80GB"]),
    ("inference", &["L4", "L40S", "A10G", "A10"]),
];

/// Node counts, drawn uniformly: most jobs are small, a few span 16 nodes.
const NODES: [u32; 10] = [1, 1, 1, 2, 2, 2, 4, 4, 8, 16];

pub fn generate(catalog: &Catalog, jobs: usize, seed: u64) -> Workload {
    let shapes = Shapes::of(catalog);
    let mut rng = SmallRng::seed_from_u64(seed);
    let jobs: Vec<Job> = (0..jobs).map(|i| job(i, &shapes, &mut rng)).collect();
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_e57a_7e00_0000);
    let offerings = private_offerings(catalog, &jobs);
    let quotas = quotas(catalog, &jobs, &mut rng);
    let commitments = commitments(&jobs);
    Workload { jobs, offerings, quotas, commitments }
}

/// Every (accelerator, per-node count) that some offering prices, split
/// into GPUs and the rest (TPUs, Trainium, Inferentia), with the regions
/// that sell each.
struct Shapes {
    gpus: Vec<(String, u32)>,
    others: Vec<(String, u32)>,
    /// (cloud, region) pairs that sell each shape.
    sellers: BTreeMap<(String, u32), Vec<(String, String)>>,
    /// Every (cloud, region) of the catalog.
    places: Vec<(String, String)>,
    clouds: Vec<String>,
}

impl Shapes {
    fn of(catalog: &Catalog) -> Shapes {
        let mut shapes = Shapes {
            gpus: Vec::new(),
            others: Vec::new(),
            sellers: BTreeMap::new(),
            places: Vec::new(),
            clouds: Vec::new(),
        };
        for name in catalog.accelerator_names() {
            for count in catalog.counts(name) {
                let sellers: BTreeSet<(String, String)> = catalog
                    .matching(name, count)
                    .iter()
                    .map(|&i| &catalog.offerings[i])
                    .filter(|o| o.private.is_none() && (o.on_demand.is_some() || o.spot.is_some()))
                    .map(|o| (o.cloud.clone(), o.region.clone()))
                    .collect();
                if sellers.is_empty() {
                    continue;
                }
                let shape = (name.to_string(), count);
                if family_of(name).is_some() {
                    shapes.gpus.push(shape.clone());
                } else {
                    shapes.others.push(shape.clone());
                }
                shapes.sellers.insert(shape, sellers.into_iter().collect());
            }
        }
        let places: BTreeSet<(String, String)> =
            catalog.offerings.iter().map(|o| (o.cloud.clone(), o.region.clone())).collect();
        shapes.clouds =
            places.iter().map(|(c, _)| c.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        shapes.places = places.into_iter().collect();
        shapes
    }
}

fn family_of(accelerator: &str) -> Option<usize> {
    FAMILIES.iter().position(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(accelerator)))
}

fn job(index: usize, shapes: &Shapes, rng: &mut SmallRng) -> Job {
    // Four in five jobs want GPUs; the rest TPUs, Trainium or Inferentia.
    let pool = if rng.gen_bool(0.8) { &shapes.gpus } else { &shapes.others };
    let primary = pool.choose(rng).expect("the catalog sells accelerators").clone();
    let mut accelerators =
        vec![Alternative { name: primary.0.clone(), count: primary.1, speed: 1.0 }];
    for _ in 0..rng.gen_range(0..=2) {
        let (name, count) = pool.choose(rng).expect("non-empty").clone();
        if accelerators.iter().any(|a| a.name == name && a.count == count) {
            continue;
        }
        // Relative speed, in hundredths: 0.50x to 2.00x.
        let speed = f64::from(rng.gen_range(50..=200u32)) / 100.0;
        accelerators.push(Alternative { name, count, speed });
    }
    let hours = f64::from(rng.gen_range(10..=500u32));
    let deadline_hours = rng
        .gen_bool(0.25)
        .then(|| (hours * f64::from(rng.gen_range(70..=150u32)) / 100.0).round().max(1.0));
    // Policy: a cloud that sells the first choice, sometimes with another
    // cloud; residency in regions that sell it, sometimes with any other
    // region of the catalog. Alternatives may fall outside either.
    let sellers = &shapes.sellers[&primary];
    let clouds = if rng.gen_bool(0.2) {
        let mut clouds = vec![sellers.choose(rng).expect("sellers").0.clone()];
        if rng.gen_bool(0.5) {
            clouds.push(shapes.clouds.choose(rng).expect("clouds").clone());
        }
        clouds.sort();
        clouds.dedup();
        clouds
    } else {
        Vec::new()
    };
    let regions = if rng.gen_bool(0.1) {
        let count = rng.gen_range(1..=3);
        let mut regions: Vec<String> =
            sellers.choose_multiple(rng, count).map(|(_, region)| region.clone()).collect();
        if rng.gen_bool(0.3) {
            regions.push(shapes.places.choose(rng).expect("places").1.clone());
        }
        regions.sort();
        regions.dedup();
        regions
    } else {
        Vec::new()
    };
    let datasets = if rng.gen_bool(0.6) { rng.gen_range(1..=2) } else { 0 };
    let data = (0..datasets)
        .map(|d| {
            // 10 GB to 10 TB, log-uniform.
            let size_gb = (10f64 * 1000f64.powf(rng.gen::<f64>())).round();
            let replicas = rng.gen_range(1..=2);
            let locations = shapes.places.choose_multiple(rng, replicas).cloned().collect();
            Dataset { name: format!("data-{d}"), size_gb, locations }
        })
        .collect();
    Job {
        name: format!("job-{index:05}"),
        nodes: *NODES.choose(rng).expect("nodes"),
        hours,
        spot: rng.gen_bool(0.3),
        deadline_hours,
        clouds,
        regions,
        accelerators,
        data,
    }
}

/// Accelerators the jobs ask for, by family (of their first choice).
fn demand(jobs: &[Job]) -> [u32; FAMILIES.len()] {
    let mut demand = [0; FAMILIES.len()];
    for job in jobs {
        let first = &job.accelerators[0];
        if let Some(f) = family_of(&first.name) {
            demand[f] += job.nodes * first.count;
        }
    }
    demand
}

/// A factor of 0.75 to 1.25.
fn jitter(rng: &mut SmallRng) -> f64 {
    f64::from(rng.gen_range(75..=125u32)) / 100.0
}

/// Rounds up to a multiple of 8 accelerators, at least 8.
fn accelerators(value: f64) -> u32 {
    ((value / 8.0).ceil().max(1.0) as u32) * 8
}

/// Per cloud and family: a cloud-wide quota for 40% of the family's demand
/// and, in the two regions that sell the family cheapest per accelerator-hour
/// (where every job would go first), a regional quota for 10% of it; plus a
/// spot quota per cloud. Each size is varied by up to ±25%.
fn quotas(catalog: &Catalog, jobs: &[Job], rng: &mut SmallRng) -> Vec<Quota> {
    let demand = demand(jobs);
    let spot_demand: u32 =
        jobs.iter().filter(|j| j.spot).map(|j| j.nodes * j.accelerators[0].count).sum();
    let clouds: BTreeSet<&str> = catalog.offerings.iter().map(|o| o.cloud.as_str()).collect();
    let mut quotas = Vec::new();
    for cloud in clouds {
        for (f, (family, names)) in FAMILIES.iter().enumerate() {
            // Cheapest on-demand USD per accelerator-hour in each region.
            let mut cheapest: BTreeMap<&str, f64> = BTreeMap::new();
            for o in &catalog.offerings {
                if o.cloud != cloud || o.private.is_some() || family_of(&o.accelerator) != Some(f) {
                    continue;
                }
                if let Some(price) = o.on_demand {
                    let per_accelerator = price / f64::from(o.accelerator_count);
                    let entry = cheapest.entry(o.region.as_str()).or_insert(f64::INFINITY);
                    *entry = entry.min(per_accelerator);
                }
            }
            if cheapest.is_empty() {
                continue;
            }
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let share = f64::from(demand[f]);
            quotas.push(Quota {
                name: format!("{cloud}-{family}"),
                cloud: cloud.to_string(),
                region: None,
                accelerators: names.clone(),
                purchase: QuotaPurchase::Any,
                max_accelerators: accelerators(0.4 * share * jitter(rng)),
            });
            let mut regions: Vec<(&str, f64)> = cheapest.into_iter().collect();
            regions.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
            for (region, _) in regions.iter().take(2) {
                quotas.push(Quota {
                    name: format!("{cloud}-{region}-{family}"),
                    cloud: cloud.to_string(),
                    region: Some(region.to_string()),
                    accelerators: names.clone(),
                    purchase: QuotaPurchase::OnDemand,
                    max_accelerators: accelerators(0.1 * share * jitter(rng)),
                });
            }
        }
        quotas.push(Quota {
            name: format!("{cloud}-spot"),
            cloud: cloud.to_string(),
            region: None,
            accelerators: Vec::new(),
            purchase: QuotaPurchase::Spot,
            max_accelerators: accelerators(0.15 * f64::from(spot_demand) * jitter(rng)),
        });
    }
    quotas
}

/// A reservation of AWS H100 nodes below list price and an on-premises
/// A100-80GB cluster, each with nodes for about one in twenty of the jobs
/// that ask for them.
fn private_offerings(catalog: &Catalog, jobs: &[Job]) -> Vec<PrivateOffering> {
    let nodes_wanting = |name: &str, count: u32| -> u32 {
        jobs.iter()
            .filter(|j| j.accelerators.iter().any(|a| a.name == name && a.count == count))
            .map(|j| j.nodes)
            .sum()
    };
    let list_price = catalog
        .matching("H100", 8)
        .iter()
        .map(|&i| &catalog.offerings[i])
        .filter(|o| o.cloud == "aws" && o.region == "us-east-1")
        .filter_map(|o| o.on_demand)
        .fold(f64::INFINITY, f64::min);
    let list_price = if list_price.is_finite() { list_price } else { 98.32 };
    vec![
        PrivateOffering {
            name: "reserved-h100".into(),
            kind: PrivateKind::Reserved,
            cloud: "aws".into(),
            region: "us-east-1".into(),
            zone: Some("use1-az4".into()),
            instance_type: "p5.48xlarge".into(),
            accelerator: "H100".into(),
            accelerator_count: 8,
            price_per_hour: (list_price * 0.6 * 100.0).round() / 100.0,
            nodes: (nodes_wanting("H100", 8) / 20).max(2),
        },
        PrivateOffering {
            name: "onprem-a100".into(),
            kind: PrivateKind::OnPremises,
            cloud: "onprem".into(),
            region: "dc1".into(),
            zone: None,
            instance_type: "dgx-a100-80".into(),
            accelerator: "A100-80GB".into(),
            accelerator_count: 8,
            price_per_hour: 9.5,
            nodes: (nodes_wanting("A100-80GB", 8) / 20).max(2),
        },
    ]
}

/// One commitment per cloud, its remaining amount scaled to the batch:
/// AWS at a 6% tier, GCP at 3%, Azure nearly spent and take-or-pay-ish.
fn commitments(jobs: &[Job]) -> Vec<Commitment> {
    let n = jobs.len() as f64;
    let commitment =
        |cloud: &str, spent: f64, remaining: f64, tiers: &[(f64, f64)], weight| Commitment {
            cloud: cloud.into(),
            total_usd: spent + remaining,
            start: "2026-01-01".into(),
            end: "2026-12-31".into(),
            discount_tiers: tiers
                .iter()
                .map(|&(above_usd, discount)| DiscountTier { above_usd, discount })
                .collect(),
            spent_usd: spent,
            burn_down_weight: weight,
        };
    vec![
        commitment(
            "aws",
            1_200_000.0,
            (4000.0 * n).round(),
            &[(0.0, 0.0), (1_000_000.0, 0.06), (3_000_000.0, 0.1)],
            0.3,
        ),
        commitment("azure", 900_000.0, (1000.0 * n).round(), &[(0.0, 0.1)], 0.8),
        commitment(
            "gcp",
            400_000.0,
            (2500.0 * n).round(),
            &[(0.0, 0.03), (1_000_000.0, 0.08)],
            0.5,
        ),
    ]
}

/// The jobs as a job file `skyweave plan` reads.
pub fn jobs_toml(jobs: &[Job]) -> String {
    let mut out = String::new();
    let list =
        |items: &[String]| items.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    for job in jobs {
        let _ = writeln!(out, "[[job]]\nname = {:?}\nnodes = {}", job.name, job.nodes);
        let _ = writeln!(out, "hours = {:?}\nspot = {}", job.hours, job.spot);
        if let Some(deadline) = job.deadline_hours {
            let _ = writeln!(out, "deadline_hours = {deadline:?}");
        }
        if !job.clouds.is_empty() {
            let _ = writeln!(out, "clouds = [{}]", list(&job.clouds));
        }
        if !job.regions.is_empty() {
            let _ = writeln!(out, "regions = [{}]", list(&job.regions));
        }
        let alternatives: Vec<String> = job
            .accelerators
            .iter()
            .map(|a| {
                format!("{{ name = {:?}, count = {}, speed = {:?} }}", a.name, a.count, a.speed)
            })
            .collect();
        let _ = writeln!(out, "accelerators = [{}]", alternatives.join(", "));
        for dataset in &job.data {
            let locations: Vec<String> =
                dataset.locations.iter().map(|(c, r)| format!("{c}:{r}")).collect();
            let _ = writeln!(
                out,
                "\n[[job.data]]\nname = {:?}\nsize_gb = {:?}\nlocations = [{}]",
                dataset.name,
                dataset.size_gb,
                list(&locations)
            );
        }
        out.push('\n');
    }
    out
}

/// The quotas, private offerings and commitments as an estate file.
pub fn estate_toml(workload: &Workload) -> String {
    let mut out =
        String::from("# Generated by skyweave-plan-bench: the compute sections of an estate.\n\n");
    for o in &workload.offerings {
        let _ = writeln!(
            out,
            "[[offering]]\nname = {:?}\nkind = {:?}\ncloud = {:?}\nregion = {:?}",
            o.name,
            o.kind.as_str(),
            o.cloud,
            o.region
        );
        if let Some(zone) = &o.zone {
            let _ = writeln!(out, "zone = {zone:?}");
        }
        let _ = writeln!(
            out,
            "instance_type = {:?}\naccelerator = {:?}\naccelerator_count = {}\n\
             price_per_hour = {:?}\nnodes = {}\n",
            o.instance_type, o.accelerator, o.accelerator_count, o.price_per_hour, o.nodes
        );
    }
    for q in &workload.quotas {
        let _ = writeln!(out, "[[quota]]\nname = {:?}\ncloud = {:?}", q.name, q.cloud);
        if let Some(region) = &q.region {
            let _ = writeln!(out, "region = {region:?}");
        }
        if !q.accelerators.is_empty() {
            let names: Vec<String> = q.accelerators.iter().map(|a| format!("{a:?}")).collect();
            let _ = writeln!(out, "accelerators = [{}]", names.join(", "));
        }
        let purchase = match q.purchase {
            QuotaPurchase::Any => "any",
            QuotaPurchase::OnDemand => "on_demand",
            QuotaPurchase::Spot => "spot",
        };
        let _ =
            writeln!(out, "purchase = {purchase:?}\nmax_accelerators = {}\n", q.max_accelerators);
    }
    for c in &workload.commitments {
        let tiers: Vec<String> = c
            .discount_tiers
            .iter()
            .map(|t| format!("{{ above_usd = {:?}, discount = {:?} }}", t.above_usd, t.discount))
            .collect();
        let _ = writeln!(
            out,
            "[[commitment]]\ncloud = {:?}\ntotal_usd = {:?}\nperiod = {{ start = {:?}, end = {:?} }}\n\
             discount_tiers = [{}]\nspent_usd = {:?}\nburn_down_weight = {:?}\n",
            c.cloud,
            c.total_usd,
            c.start,
            c.end,
            tiers.join(", "),
            c.spent_usd,
            c.burn_down_weight
        );
    }
    out
}
