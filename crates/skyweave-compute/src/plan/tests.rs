use proptest::prelude::*;
use skyweave_core::compute::{
    Commitment, DiscountTier, PrivateKind, PrivateOffering, Quota, QuotaPurchase,
};

use super::*;
use crate::catalog::CatalogFile;
use crate::job::{Alternative, Dataset};

const HEADER: &str =
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,Arch\n";

/// (cloud, instance, accelerator, count, region, zone, price, spot).
type Row<'a> = (&'a str, &'a str, &'a str, u32, &'a str, &'a str, f64, Option<f64>);

/// (nodes, hours, spot, alternatives (accelerator, count, speed), data
/// (cloud, GB), deadline hours).
type RandomJob = (u32, f64, bool, Vec<(usize, u32, f64)>, Option<(usize, f64)>, Option<f64>);

fn catalog(rows: &[Row]) -> Catalog {
    let mut by_cloud: BTreeMap<&str, String> = BTreeMap::new();
    for (cloud, instance, accelerator, count, region, zone, price, spot) in rows {
        let spot = spot.map_or(String::new(), |s| s.to_string());
        by_cloud.entry(cloud).or_insert_with(|| HEADER.to_string()).push_str(&format!(
            "{instance},{accelerator},{count},8,64,,{price},{spot},{region},{zone},x86_64\n"
        ));
    }
    let files: Vec<CatalogFile> = by_cloud
        .into_iter()
        .map(|(cloud, text)| CatalogFile {
            cloud: cloud.into(),
            name: format!("{cloud}.csv"),
            text,
        })
        .collect();
    Catalog::parse(&files).unwrap()
}

fn small() -> Catalog {
    catalog(&[
        ("aws", "p5.48xlarge", "H100", 8, "us-east-1", "use1-az1", 50.0, Some(20.0)),
        ("aws", "p5.48xlarge", "H100", 8, "us-east-1", "use1-az2", 50.0, Some(15.0)),
        ("aws", "p5.48xlarge", "H100", 8, "eu-west-1", "euw1-az1", 52.0, None),
        ("gcp", "a3-highgpu-8g", "H100", 8, "us-central1", "us-central1-a", 44.0, Some(25.0)),
        ("gcp", "a3-highgpu-8g", "H100", 8, "europe-west4", "europe-west4-a", 46.0, None),
        ("azure", "ND96isr", "H100", 8, "eastus", "eastus", 48.0, None),
        ("gcp", "a3-ultragpu-8g", "H200", 8, "us-central1", "us-central1-b", 60.0, None),
        ("aws", "p5e.48xlarge", "H200", 8, "us-east-1", "use1-az1", 70.0, Some(30.0)),
    ])
}

fn job(name: &str, nodes: u32, hours: f64, accelerators: &[(&str, u32, f64)]) -> Job {
    Job {
        name: name.into(),
        nodes,
        hours,
        spot: false,
        deadline_hours: None,
        clouds: vec![],
        regions: vec![],
        accelerators: accelerators
            .iter()
            .map(|(n, c, s)| Alternative { name: n.to_string(), count: *c, speed: *s })
            .collect(),
        data: vec![],
    }
}

fn planner(catalog: Catalog) -> Planner {
    Planner::new(catalog, vec![], vec![])
}

fn placed(plan: &Plan, j: usize) -> (&str, &str, Purchase) {
    let p =
        plan.jobs[j].placement.as_ref().unwrap_or_else(|| panic!("job {j} unplaced: {plan:#?}"));
    (p.cloud.as_str(), p.zone.as_deref().unwrap_or(&p.region), p.purchase)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn one_job_takes_the_cheapest_on_demand_offering_and_ranks_the_rest() {
    let plan = planner(small()).plan(&[job("a", 2, 10.0, &[("H100", 8, 1.0)])]).unwrap();
    assert_eq!(placed(&plan, 0), ("gcp", "us-central1-a", Purchase::OnDemand));
    let p = plan.jobs[0].placement.as_ref().unwrap();
    assert!(close(p.compute_usd, 2.0 * 44.0 * 10.0));
    assert!(close(p.usd_per_hour, 88.0));
    let failover: Vec<(&str, &str)> = plan.jobs[0]
        .failover
        .iter()
        .map(|p| (p.cloud.as_str(), p.zone.as_deref().unwrap_or(&p.region)))
        .collect();
    assert_eq!(
        failover,
        [
            ("gcp", "europe-west4-a"),
            ("azure", "eastus"),
            ("aws", "use1-az1"),
            ("aws", "use1-az2"),
            ("aws", "euw1-az1")
        ]
    );
    let ranks: Vec<usize> = plan.jobs[0].failover.iter().map(|p| p.rank).collect();
    assert_eq!(ranks, [2, 3, 4, 5, 6]);
    assert!(plan.jobs[0].failover[0].why.contains("another region of gcp (europe-west4): +40 USD"));
    assert!(plan.jobs[0].failover[1].why.starts_with("another cloud (azure)"));
}

#[test]
fn spot_is_used_only_when_allowed() {
    let mut j = job("a", 1, 10.0, &[("H100", 8, 1.0)]);
    j.spot = true;
    let plan = planner(small()).plan(&[j]).unwrap();
    assert_eq!(placed(&plan, 0), ("aws", "use1-az2", Purchase::Spot));
    assert!(close(plan.total_usd, 150.0));
}

#[test]
fn a_faster_accelerator_wins_when_it_costs_less_per_job() {
    // H200 at 60 $/h and 1.5x: 10 h of work take 6.67 h = 400 USD < 440 USD.
    let plan =
        planner(small()).plan(&[job("a", 1, 10.0, &[("H100", 8, 1.0), ("H200", 8, 1.5)])]).unwrap();
    let p = plan.jobs[0].placement.as_ref().unwrap();
    assert_eq!((p.accelerator.as_str(), p.instance_type.as_str()), ("H200", "a3-ultragpu-8g"));
    assert!(close(p.wall_hours, 10.0 / 1.5));
    assert!(close(p.total_usd, 400.0));
}

#[test]
fn egress_moves_the_job_to_its_data() {
    let mut j = job("a", 1, 10.0, &[("H100", 8, 1.0)]);
    // 1 TB in aws us-east-1: to gcp 0.09 $/GB = 90 USD, more than the 60 USD
    // compute saving.
    j.data = vec![Dataset {
        name: "weights".into(),
        size_gb: 1000.0,
        locations: vec![("aws".into(), "us-east-1".into())],
    }];
    let plan = planner(small()).plan(std::slice::from_ref(&j)).unwrap();
    assert_eq!(placed(&plan, 0), ("aws", "use1-az1", Purchase::OnDemand));
    assert!(close(plan.egress_usd, 0.0));
    // With a replica in gcp us-central1 the data is read there: free.
    j.data[0].locations.push(("gcp".into(), "us-central1".into()));
    let plan = planner(small()).plan(&[j]).unwrap();
    let p = plan.jobs[0].placement.as_ref().unwrap();
    assert_eq!((p.cloud.as_str(), p.egress[0].from.as_str()), ("gcp", "gcp:us-central1"));
    assert!(close(p.egress_usd, 0.0));
}

#[test]
fn residency_holds_for_the_placement_and_every_failover() {
    let mut j = job("a", 1, 10.0, &[("H100", 8, 1.0)]);
    j.regions = vec!["eu-west-1".into(), "europe-west4".into()];
    let plan = planner(small()).plan(&[j]).unwrap();
    assert_eq!(placed(&plan, 0), ("gcp", "europe-west4-a", Purchase::OnDemand));
    let regions: Vec<&str> = plan.jobs[0].failover.iter().map(|p| p.region.as_str()).collect();
    assert_eq!(regions, ["eu-west-1"]);
}

#[test]
fn infeasibility_names_the_binding_constraint() {
    let cases: Vec<(Job, &str, &str)> = vec![
        (
            Job { regions: vec!["ap-south-1".into()], ..job("r", 1, 1.0, &[("H100", 8, 1.0)]) },
            "residency",
            "residency: 9 are outside the allowed regions ap-south-1",
        ),
        (
            Job { deadline_hours: Some(5.0), ..job("d", 1, 10.0, &[("H100", 8, 1.0)]) },
            "deadline",
            "deadline: on H100:8 the job takes 10.0 h, more than deadline_hours = 5",
        ),
    ];
    for (j, binding, reason) in cases {
        let plan = planner(small()).plan(&[j]).unwrap();
        let unplaced = plan.jobs[0].unplaced.as_ref().expect("unplaced");
        assert_eq!(unplaced.binding, [binding]);
        assert!(unplaced.reasons.iter().any(|r| r == reason), "{:?}", unplaced.reasons);
        assert_eq!((plan.placed, plan.unplaced), (0, 1));
    }
    // A deadline no alternative meets binds alone, even with a residency
    // rule that rejects most offerings too.
    let j = Job {
        regions: vec!["us-east-1".into()],
        deadline_hours: Some(5.0),
        ..job("rd", 1, 10.0, &[("H100", 8, 1.0)])
    };
    let plan = planner(small()).plan(&[j]).unwrap();
    assert_eq!(plan.jobs[0].unplaced.as_ref().unwrap().binding, ["deadline"]);
    // A shape the catalog lists without a price.
    let mut unpriced = small();
    for offering in &mut unpriced.offerings {
        if offering.accelerator == "H200" {
            offering.on_demand = None;
            offering.spot = None;
        }
    }
    let plan = planner(unpriced).plan(&[job("u", 1, 1.0, &[("H200", 8, 1.0)])]).unwrap();
    let unplaced = plan.jobs[0].unplaced.as_ref().unwrap();
    assert_eq!(unplaced.binding, ["catalog"]);
    assert!(unplaced.reasons[0].starts_with("no priced offering of H200:8"), "{unplaced:?}");
    // Only spot capacity in the allowed region, spot not allowed.
    let mut j = job("s", 1, 1.0, &[("H200", 8, 1.0)]);
    j.clouds = vec!["aws".into()];
    let only_spot = catalog(&[("aws", "p5e", "H200", 8, "us-east-1", "use1-az1", 1.0, None)]);
    let mut catalog_spot = only_spot.clone();
    catalog_spot.offerings[0].on_demand = None;
    catalog_spot.offerings[0].spot = Some(3.0);
    let plan = planner(catalog_spot).plan(&[j]).unwrap();
    assert_eq!(plan.jobs[0].unplaced.as_ref().unwrap().binding, ["spot"]);
}

fn quota(cloud: &str, region: Option<&str>, accelerators: &[&str], max: u32) -> Quota {
    Quota {
        name: format!("{cloud}/{}", region.unwrap_or("*")),
        cloud: cloud.into(),
        region: region.map(str::to_string),
        accelerators: accelerators.iter().map(|a| a.to_string()).collect(),
        purchase: QuotaPurchase::Any,
        max_accelerators: max,
    }
}

#[test]
fn a_quota_too_small_for_the_job_moves_it_and_can_make_it_infeasible() {
    let j = job("a", 2, 10.0, &[("H100", 8, 1.0)]);
    let mut p = planner(small());
    p.quotas = vec![quota("gcp", None, &["H100"], 8)];
    let plan = p.plan(std::slice::from_ref(&j)).unwrap();
    assert_eq!(placed(&plan, 0), ("azure", "eastus", Purchase::OnDemand));
    p.quotas = vec![
        quota("gcp", None, &[], 8),
        quota("aws", None, &[], 8),
        quota("azure", Some("eastus"), &["h100"], 0),
    ];
    let plan = p.plan(&[j]).unwrap();
    let unplaced = plan.jobs[0].unplaced.as_ref().unwrap();
    assert_eq!(unplaced.binding, ["quota"]);
    assert!(unplaced
        .reasons
        .contains(&"quota: `gcp/*` allows 8 accelerators; the job needs 16".into()));
}

/// Two jobs that both prefer gcp us-central1 (44 $/h), whose quota fits one.
fn quota_batch() -> (Planner, [Job; 2]) {
    let jobs =
        [job("short", 1, 10.0, &[("H100", 8, 1.0)]), job("long", 1, 100.0, &[("H100", 8, 1.0)])];
    let mut p = planner(small());
    p.quotas = vec![quota("gcp", Some("us-central1"), &["H100"], 8)];
    (p, jobs)
}

#[test]
fn a_batch_shares_a_quota_at_least_total_cost() {
    // The exact optimum puts the longer job in the quota.
    let (p, jobs) = quota_batch();
    let plan = p.plan(&jobs).unwrap();
    assert_eq!(plan.solver.method, "milp (HiGHS)");
    assert_eq!(placed(&plan, 1), ("gcp", "us-central1-a", Purchase::OnDemand));
    assert_eq!(placed(&plan, 0), ("gcp", "europe-west4-a", Purchase::OnDemand));
    assert!(close(plan.total_usd, 4400.0 + 460.0));
    let why = &plan.jobs[0].placement.as_ref().unwrap().why;
    assert!(
        why.contains(
            "the cheapest alone (gcp us-central1-a) does not fit beside the other jobs: quota \
             `gcp/us-central1` (8 accelerators) has 8 in use by long"
        ),
        "{why}"
    );
    // Its failover list shows the cheaper place, and why it is not used.
    let cheaper = &plan.jobs[0].failover[0];
    assert_eq!(cheaper.zone.as_deref(), Some("us-central1-a"));
    assert!(cheaper.why.contains("; cheaper, but quota `gcp/us-central1`"), "{}", cheaper.why);
}

#[test]
fn private_capacity_goes_where_it_saves_most_and_a_job_left_out_explains_itself() {
    let mut catalog = small();
    catalog.add_private(&[PrivateOffering {
        name: "reserved-h100".into(),
        kind: PrivateKind::Reserved,
        cloud: "aws".into(),
        region: "us-east-1".into(),
        zone: Some("use1-az1".into()),
        instance_type: "p5.48xlarge".into(),
        accelerator: "H100".into(),
        accelerator_count: 8,
        price_per_hour: 10.0,
        nodes: 3,
    }]);
    let mut p = planner(catalog);
    p.quotas = vec![quota("aws", None, &[], 0)];
    let jobs = [job("a", 4, 10.0, &[("H100", 8, 1.0)]), job("b", 2, 100.0, &[("H100", 8, 1.0)])];
    let plan = p.plan(&jobs).unwrap();
    // b saves (44 - 10) * 2 * 100 on the reservation; a would save 34 * 4 * 10.
    assert_eq!(placed(&plan, 1), ("aws", "use1-az1", Purchase::Private));
    assert_eq!(placed(&plan, 0), ("gcp", "us-central1-a", Purchase::OnDemand));
    // c and d may only use aws, whose quota is 0: only the reservation, which
    // fits one of them. Placing the most jobs comes first, so b moves to
    // gcp; c is cheaper than d, so d is left out.
    let only_aws = |name: &str, hours: f64| Job {
        clouds: vec!["aws".into()],
        ..job(name, 2, hours, &[("H100", 8, 1.0)])
    };
    let jobs = [job("b", 2, 100.0, &[("H100", 8, 1.0)]), only_aws("c", 10.0), only_aws("d", 20.0)];
    let plan = p.plan(&jobs).unwrap();
    assert_eq!((plan.placed, plan.unplaced), (2, 1));
    assert_eq!(placed(&plan, 0).0, "gcp");
    assert_eq!(placed(&plan, 1), ("aws", "use1-az1", Purchase::Private));
    let unplaced = plan.jobs[2].unplaced.as_ref().expect("d is unplaced");
    assert_eq!(unplaced.binding, ["capacity"]);
    assert!(
        unplaced.reasons.iter().any(|r| r
            == "capacity: private offering `reserved-h100` has 3 nodes; 2 are used by c"),
        "{:?}",
        unplaced.reasons
    );
    // Alone, a job larger than the reservation cannot use it.
    let plan = p.plan(&[job("big", 5, 1.0, &[("H100", 8, 1.0)])]).unwrap();
    assert_ne!(placed(&plan, 0).2, Purchase::Private);
}

fn commitment(cloud: &str, remaining: f64, discount: f64, weight: f64) -> Commitment {
    Commitment {
        cloud: cloud.into(),
        total_usd: remaining + 100.0,
        start: "2026-01-01".into(),
        end: "2026-12-31".into(),
        discount_tiers: vec![DiscountTier { above_usd: 0.0, discount }],
        spent_usd: 100.0,
        burn_down_weight: weight,
    }
}

#[test]
fn commitments_discount_their_cloud_and_can_be_preferred() {
    let j = job("a", 1, 10.0, &[("H100", 8, 1.0)]);
    // 10% off azure (48 -> 43.2) beats gcp's 44.
    let mut p = planner(small());
    p.commitments = vec![commitment("azure", 1e6, 0.10, 0.0)];
    let plan = p.plan(std::slice::from_ref(&j)).unwrap();
    assert_eq!(placed(&plan, 0), ("azure", "eastus", Purchase::OnDemand));
    assert!(close(plan.total_usd, 432.0));
    assert_eq!(plan.commitments[0].planned_usd, 432.0);
    // No discount, but burning the commitment down is preferred: aws
    // (50 $/h) valued at half price beats gcp.
    p.commitments = vec![commitment("aws", 1e6, 0.0, 0.5)];
    let plan = p.plan(std::slice::from_ref(&j)).unwrap();
    assert_eq!(placed(&plan, 0).0, "aws");
    assert!(close(plan.objective_usd, 250.0));
    // Beyond the remaining commitment, spend is valued in full again.
    p.commitments = vec![commitment("aws", 100.0, 0.0, 0.5)];
    let plan = p.plan(&[j]).unwrap();
    assert_eq!(placed(&plan, 0).0, "gcp");
}

#[test]
fn gcp_split_prices_add_up_in_the_plan() {
    let catalog = Catalog::shipped();
    let mut j = job("a", 1, 10.0, &[("H100", 8, 1.0)]);
    j.regions = vec!["us-central1".into()];
    let plan = planner(catalog).plan(&[j]).unwrap();
    let p = plan.jobs[0].placement.as_ref().unwrap();
    assert_eq!(p.cloud, "gcp");
    // Host 9.46006 + 8 x H100 33.60609 per hour, 10 hours.
    assert!(close(p.compute_usd, (9.46006 + 33.60609) * 10.0), "{}", p.compute_usd);
}

// ---------------------------------------------------------------------------
// The MILP against brute force on small random instances.

/// cloud, region, accelerator filter, purchase (0 any, 1 on demand, 2 spot), max
type RandomQuota = (usize, Option<usize>, Option<usize>, usize, u32);

#[derive(Debug, Clone)]
struct Instance {
    /// cloud, region, accelerator (0: GPU, 1: TPU), count, price, spot
    offerings: Vec<(usize, usize, usize, u32, f64, Option<f64>)>,
    /// cloud (3: on premises), region, nodes, price
    private: Vec<(usize, usize, u32, f64)>,
    quotas: Vec<RandomQuota>,
    /// cloud, remaining, discount, weight
    commitments: Vec<(usize, f64, f64, f64)>,
    jobs: Vec<RandomJob>,
}

const CLOUDS: [&str; 3] = ["aws", "gcp", "azure"];
const REGIONS: [&str; 3] = ["us-east-1", "us-central1", "westeurope"];

const ACCELERATORS: [&str; 2] = ["GPU", "TPU"];

fn instance() -> impl Strategy<Value = Instance> {
    let offering = (
        0..3usize,
        0..3usize,
        0..2usize,
        prop::sample::select(vec![4u32, 8]),
        1.0..50.0f64,
        prop::option::of(1.0..30.0f64),
    );
    let private = (0..4usize, 0..3usize, 1..6u32, 0.0..20.0f64);
    let quota = (
        0..3usize,
        prop::option::of(0..3usize),
        prop::option::of(0..2usize),
        0..3usize,
        prop::sample::select(vec![0u32, 8, 16, 24, 32]),
    );
    let commitment = (
        0..3usize,
        0.0..3000.0f64,
        prop::sample::select(vec![0.0, 0.1, 0.3]),
        prop::sample::select(vec![0.0, 0.5, 1.0]),
    );
    let alternative =
        (0..2usize, prop::sample::select(vec![4u32, 8]), prop::sample::select(vec![0.8, 1.0, 1.3]));
    let job = (
        1..4u32,
        1.0..40.0f64,
        any::<bool>(),
        prop::collection::vec(alternative, 1..3),
        prop::option::of((0..3usize, 0.0..2000.0f64)),
        prop::option::of(5.0..50.0f64),
    );
    (
        prop::collection::vec(offering, 1..6),
        prop::collection::vec(private, 0..2),
        prop::collection::vec(quota, 0..3),
        prop::collection::vec(commitment, 0..2),
        prop::collection::vec(job, 2..5),
    )
        .prop_map(|(offerings, private, quotas, commitments, jobs)| Instance {
            offerings,
            private,
            quotas,
            commitments,
            jobs,
        })
}

fn build(instance: &Instance) -> (Planner, Vec<Job>) {
    let names: Vec<(String, String, String)> = instance
        .offerings
        .iter()
        .enumerate()
        .map(|(i, &(cloud, region, ..))| {
            let region = REGIONS[(region + cloud) % 3];
            (format!("i{i}"), region.to_string(), format!("{region}-z{i}"))
        })
        .collect();
    let borrowed: Vec<Row> = instance
        .offerings
        .iter()
        .zip(&names)
        .map(|(&(cloud, _, accelerator, count, price, spot), (instance, region, zone))| {
            let accelerator = ACCELERATORS[accelerator];
            (
                CLOUDS[cloud],
                instance.as_str(),
                accelerator,
                count,
                region.as_str(),
                zone.as_str(),
                price,
                spot,
            )
        })
        .collect();
    let mut catalog = catalog(&borrowed);
    let private: Vec<PrivateOffering> = instance
        .private
        .iter()
        .enumerate()
        .map(|(i, &(cloud, region, nodes, price))| PrivateOffering {
            name: format!("private-{i}"),
            kind: PrivateKind::Reserved,
            cloud: if cloud == 3 { "onprem".into() } else { CLOUDS[cloud].into() },
            region: REGIONS[region].into(),
            zone: None,
            instance_type: format!("rack-{i}"),
            accelerator: "GPU".into(),
            accelerator_count: 8,
            price_per_hour: price,
            nodes,
        })
        .collect();
    catalog.add_private(&private);
    let quotas = instance
        .quotas
        .iter()
        .map(|&(cloud, region, accelerator, purchase, max)| Quota {
            purchase: [QuotaPurchase::Any, QuotaPurchase::OnDemand, QuotaPurchase::Spot][purchase],
            ..quota(
                CLOUDS[cloud],
                region.map(|r| REGIONS[r]),
                &accelerator.map(|a| vec![ACCELERATORS[a]]).unwrap_or_default(),
                max,
            )
        })
        .collect();
    let mut seen = BTreeSet::new();
    let commitments = instance
        .commitments
        .iter()
        .filter(|c| seen.insert(c.0))
        .map(|&(cloud, remaining, discount, weight)| {
            commitment(CLOUDS[cloud], remaining, discount, weight)
        })
        .collect();
    let jobs = instance
        .jobs
        .iter()
        .enumerate()
        .map(|(i, (nodes, hours, spot, alternatives, data, deadline))| Job {
            name: format!("job{i}"),
            nodes: *nodes,
            hours: *hours,
            spot: *spot,
            deadline_hours: *deadline,
            clouds: vec![],
            regions: vec![],
            accelerators: alternatives
                .iter()
                .map(|&(accelerator, count, speed)| Alternative {
                    name: ACCELERATORS[accelerator].into(),
                    count,
                    speed,
                })
                .collect(),
            data: data
                .iter()
                .map(|&(cloud, size)| Dataset {
                    name: "d".into(),
                    size_gb: size,
                    locations: vec![(CLOUDS[cloud].into(), REGIONS[cloud].into())],
                })
                .collect(),
        })
        .collect();
    (Planner::new(catalog, quotas, commitments), jobs)
}

/// (unplaced jobs, objective) of the best assignment, by trying them all.
fn brute_force(planner: &Planner, jobs: &[Job]) -> (usize, f64) {
    let all: Vec<Vec<Candidate>> = jobs.iter().map(|j| planner.candidates(j).0).collect();
    let mut best = (usize::MAX, f64::INFINITY);
    let mut choice = vec![0usize; jobs.len()];
    loop {
        let chosen: Vec<Option<&Candidate>> = choice
            .iter()
            .zip(&all)
            .map(|(&k, c)| if k == 0 { None } else { Some(&c[k - 1]) })
            .collect();
        if feasible(planner, jobs, &chosen) {
            let unplaced = chosen.iter().filter(|c| c.is_none()).count();
            let value = planner.objective(&chosen);
            if unplaced < best.0 || (unplaced == best.0 && value < best.1) {
                best = (unplaced, value);
            }
        }
        // Next combination.
        let mut j = 0;
        loop {
            if j == jobs.len() {
                return best;
            }
            choice[j] += 1;
            if choice[j] <= all[j].len() {
                break;
            }
            choice[j] = 0;
            j += 1;
        }
    }
}

fn feasible(planner: &Planner, jobs: &[Job], chosen: &[Option<&Candidate>]) -> bool {
    let mut quota_use = vec![0u32; planner.quotas.len()];
    let mut private_use: HashMap<usize, u32> = HashMap::new();
    for (j, c) in chosen.iter().enumerate() {
        let Some(c) = c else { continue };
        for &q in &c.quotas {
            quota_use[q] += c.accelerators;
        }
        if c.purchase == Purchase::Private {
            *private_use.entry(c.offering).or_default() += jobs[j].nodes;
        }
    }
    quota_use.iter().zip(&planner.quotas).all(|(used, q)| *used <= q.max_accelerators)
        && private_use.iter().all(|(&o, &used)| {
            used <= planner.catalog.offerings[o].private.as_ref().map_or(0, |p| p.nodes)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_milp_finds_the_brute_force_optimum(instance in instance()) {
        let (planner, jobs) = build(&instance);
        let combinations: f64 =
            jobs.iter().map(|j| (planner.candidates(j).0.len() + 1) as f64).product();
        prop_assume!(combinations <= 200_000.0);
        let plan = planner.plan(&jobs).unwrap();
        let (unplaced, objective) = brute_force(&planner, &jobs);
        prop_assert_eq!(plan.unplaced, unplaced);
        prop_assert!(
            close(plan.objective_usd, objective),
            "milp {} vs brute force {}", plan.objective_usd, objective
        );
        // The plan itself respects every shared constraint.
        let all: Vec<Vec<Candidate>> = jobs.iter().map(|j| planner.candidates(j).0).collect();
        let chosen: Vec<Option<&Candidate>> = plan
            .jobs
            .iter()
            .zip(&all)
            .map(|(jp, candidates)| {
                jp.placement.as_ref().map(|p| {
                    candidates
                        .iter()
                        .find(|c| {
                            let o = &planner.catalog.offerings[c.offering];
                            o.instance_type == p.instance_type
                                && c.purchase == p.purchase
                                && close(c.cost(), p.total_usd)
                        })
                        .expect("the placement is one of the job's candidates")
                })
            })
            .collect();
        prop_assert!(feasible(&planner, &jobs, &chosen));
        prop_assert!(close(planner.objective(&chosen), plan.objective_usd));
    }
}

#[test]
fn an_empty_batch_and_a_batch_of_infeasible_jobs_are_plans_not_errors() {
    let plan = planner(small()).plan(&[]).unwrap();
    assert_eq!((plan.placed, plan.unplaced, plan.jobs.len()), (0, 0, 0));
    let nowhere = |name: &str| Job {
        regions: vec!["ap-south-1".into()],
        ..job(name, 1, 1.0, &[("H100", 8, 1.0)])
    };
    let plan = planner(small()).plan(&[nowhere("a"), nowhere("b")]).unwrap();
    assert_eq!((plan.placed, plan.unplaced), (0, 2));
    assert!(plan.jobs.iter().all(|j| j.unplaced.as_ref().unwrap().binding == ["residency"]));
}

#[test]
fn the_batch_program_can_be_written_for_other_solvers_and_the_plan_is_unchanged() {
    let (mut p, jobs) = quota_batch();
    let expected = p.plan(&jobs).unwrap();
    let path = std::env::temp_dir().join(format!(
        "skyweave-plan-program-{}-{}.mps",
        std::process::id(),
        line!()
    ));
    // A stale file in the way is replaced, not taken for the program.
    std::fs::write(&path, "stale").unwrap();
    p.write_program = Some(path.clone());
    let plan = p.plan(&jobs).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(plan.jobs.len(), expected.jobs.len());
    assert!(close(plan.total_usd, expected.total_usd));
    assert_eq!(placed(&plan, 1), placed(&expected, 1));
    // MPS: the job rows, the quota row, and one column per candidate kept.
    assert!(text.starts_with("NAME"), "{text}");
    for section in ["ROWS", "COLUMNS", "RHS", "BOUNDS", "ENDATA"] {
        assert!(text.lines().any(|l| l.trim() == section), "no {section} in {text}");
    }
    let rows = text.lines().skip_while(|l| l.trim() != "ROWS").skip(1);
    let rows = rows.take_while(|l| l.starts_with(' ')).filter(|l| !l.contains("Obj")).count();
    assert_eq!(rows, plan.solver.constraints, "{text}");
    let marker = text.lines().position(|l| l.trim() == "COLUMNS").unwrap();
    let columns: BTreeSet<&str> = text
        .lines()
        .skip(marker + 1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with('c'))
        .collect();
    assert_eq!(columns.len(), plan.solver.variables, "{text}");
}
