//! Placement: which offering each job runs on, at what cost, and where it
//! goes if that capacity is missing.
//!
//! For every job the planner lists its *candidates*: each (accelerator
//! alternative, offering, purchase) that the job's policy (clouds, regions),
//! spot setting, deadline, quotas and private capacity allow on their own.
//! A candidate costs
//!
//! ```text
//! compute = nodes * price per node-hour * hours / speed * (1 - commitment discount)
//! egress  = sum over datasets of size_gb * cheapest per-GB price from a replica
//! ```
//!
//! One job is planned exactly by enumeration. A batch competes for quotas,
//! private capacity and commitments, so it is solved as a mixed-integer
//! program (HiGHS; proven optimal to within 0.01 USD):
//!
//! ```text
//! min  sum_jk c_jk x_jk + sum_c w_c z_c + P * sum_j u_j
//! s.t. sum_k x_jk + u_j = 1                         every job j
//!      sum_jk a_jk x_jk <= quota_q                   every quota q (accelerators)
//!      sum_jk n_j x_jk  <= nodes_p                   every private offering p
//!      sum_{jk on c} s_jk x_jk - z_c <= remaining_c  every commitment c
//!      z_c >= 0, x binary
//! ```
//!
//! where `c_jk` is the candidate's egress plus its compute (when its cloud
//! has no commitment) or `(1 - w_c) s_jk` (on a committed cloud), `s_jk` its
//! discounted compute on a committed cloud, `w_c` the commitment's burn-down
//! weight (committed spend is valued at `(1 - w_c)` of its price, spend
//! beyond the commitment at full price: for spend `S` and remaining `R` that
//! is `(1 - w) min(S, R) + max(S - R, 0) = (1 - w) S + w max(S - R, 0)`, so
//! `z_c` is the spend beyond the commitment, costing `w_c` more), and
//! `u_j` marks a job left unplaced (these columns exist only when the program
//! without them, where every job that fits alone must be placed, is
//! infeasible). `P` exceeds the cost of every job's
//! dearest candidate together, so the optimum places as many jobs as
//! possible and, among those placements, costs least.
//!
//! Before the search, the program's LP relaxation and a plan rounded from
//! it fix candidates whose reduced cost proves them absent from every plan
//! as good as the rounded one (see `solve_model`), and the rounded plan is
//! handed to HiGHS as its first incumbent.
//!
//! Before solving, each job's candidates are reduced without changing the
//! optimum: a candidate is dropped when another candidate of the same job
//! uses no more of any shared constraint (same quotas or a subset, no more
//! accelerators, the same private offering or none, the same commitment)
//! and is worth at least as much at every point of the commitment's
//! valuation (see `reduce`); swapping them never makes a plan infeasible
//! or dearer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use skyweave_core::compute::{Commitment, Quota};
use skyweave_core::egress::EgressPrices;

use crate::catalog::{Catalog, Offering};
use crate::job::Job;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the optimizer failed: {0}")]
    Solver(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purchase {
    OnDemand,
    Spot,
    Private,
}

/// One way to run one job.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub offering: usize,
    pub alternative: usize,
    pub purchase: Purchase,
    /// USD per node-hour, list price.
    pub node_price: f64,
    pub wall_hours: f64,
    /// At list price.
    pub list_compute_usd: f64,
    /// After the commitment discount.
    pub compute_usd: f64,
    pub discount: f64,
    pub egress_usd: f64,
    /// Per dataset: the replica it is read from and what moving it costs.
    pub egress: Vec<EgressLeg>,
    /// Accelerators in use (nodes x per node).
    pub accelerators: u32,
    /// Indices of the quotas it counts against.
    pub quotas: Vec<usize>,
    /// The committed cloud's commitment index.
    pub commitment: Option<usize>,
}

impl Candidate {
    pub fn cost(&self) -> f64 {
        self.compute_usd + self.egress_usd
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EgressLeg {
    pub dataset: String,
    pub from: String,
    pub usd: f64,
}

/// What keeps an offering from being a candidate of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Filter {
    Residency,
    Deadline,
    Spot,
    Quota,
    Capacity,
}

impl Filter {
    pub fn as_str(self) -> &'static str {
        match self {
            Filter::Residency => "residency",
            Filter::Deadline => "deadline",
            Filter::Spot => "spot",
            Filter::Quota => "quota",
            Filter::Capacity => "capacity",
        }
    }
}

/// Why a job's offerings were not candidates.
#[derive(Debug, Clone, Default)]
pub struct Rejections {
    /// (offering, purchase) pairs of the job's accelerator shapes.
    pub options: usize,
    /// Pairs each filter rejects (a pair may fail several).
    pub failed: BTreeMap<Filter, usize>,
    /// Pairs that this filter alone rejects: relaxing it would admit them.
    pub only: BTreeMap<Filter, usize>,
    /// (alternative, wall hours) that miss the deadline.
    pub deadline: Vec<(String, f64)>,
    /// Quota name -> (limit, needed).
    pub quota: BTreeMap<String, (u32, u32)>,
    /// Private offering name -> nodes it has.
    pub capacity: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub jobs: Vec<JobPlan>,
    pub placed: usize,
    pub unplaced: usize,
    /// Charged compute plus egress of every placed job.
    pub total_usd: f64,
    pub compute_usd: f64,
    pub egress_usd: f64,
    /// What the optimizer minimised (committed spend weighted by its
    /// burn-down weight), without the unplaced-job penalty.
    pub objective_usd: f64,
    pub commitments: Vec<CommitmentUse>,
    pub solver: SolverInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct SolverInfo {
    pub method: &'static str,
    pub candidates: usize,
    pub variables: usize,
    pub constraints: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommitmentUse {
    pub cloud: String,
    pub discount: f64,
    pub remaining_before_usd: f64,
    pub planned_usd: f64,
    pub remaining_after_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobPlan {
    pub job: String,
    pub placement: Option<Placement>,
    /// Next best places, best first, one per zone.
    pub failover: Vec<Placement>,
    pub unplaced: Option<Unplaced>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unplaced {
    /// The constraints that bind: residency, spot, deadline, quota, capacity.
    pub binding: Vec<String>,
    pub reasons: Vec<String>,
}

/// Everything a launcher needs to start the job there.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub rank: usize,
    pub cloud: String,
    pub region: String,
    pub zone: Option<String>,
    pub instance_type: String,
    pub accelerator: String,
    pub accelerators_per_node: u32,
    pub nodes: u32,
    pub purchase: Purchase,
    pub private_offering: Option<String>,
    pub speed: f64,
    pub wall_hours: f64,
    /// All nodes, charged (after discount).
    pub usd_per_hour: f64,
    pub compute_usd: f64,
    pub list_compute_usd: f64,
    pub discount: f64,
    pub egress_usd: f64,
    pub egress: Vec<EgressLeg>,
    pub total_usd: f64,
    pub why: String,
}

pub struct Planner {
    pub catalog: Catalog,
    pub quotas: Vec<Quota>,
    pub commitments: Vec<Commitment>,
    pub egress: EgressPrices,
    /// Failover places listed per job.
    pub failover_depth: usize,
    /// When set, each batch program searched is also written to this file
    /// (the last one wins) in MPS format, as built (before reduced-cost
    /// fixing), for experiments with solvers outside the planner
    /// (`bench/plan_program.sh`). Column `cN` is the program's N-th column:
    /// candidates by job, then the commitments' excess columns.
    pub write_program: Option<PathBuf>,
}

impl Planner {
    pub fn new(catalog: Catalog, quotas: Vec<Quota>, commitments: Vec<Commitment>) -> Planner {
        Planner {
            catalog,
            quotas,
            commitments,
            egress: EgressPrices::shipped(),
            failover_depth: 5,
            write_program: None,
        }
    }

    /// Estate entries that name a cloud or accelerator the catalog does not
    /// have, and so limit nothing.
    pub fn estate_warnings(&self) -> Vec<String> {
        let clouds: BTreeSet<&str> =
            self.catalog.offerings.iter().map(|o| o.cloud.as_str()).collect();
        let mut warnings = Vec::new();
        for quota in &self.quotas {
            if !clouds.contains(quota.cloud.as_str()) {
                warnings.push(format!(
                    "[[quota]] `{}`: no offering is in cloud `{}`, so it limits nothing",
                    quota.name, quota.cloud
                ));
            }
            for accelerator in &quota.accelerators {
                if self.catalog.canonical_name(accelerator).is_none() {
                    warnings.push(format!(
                        "[[quota]] `{}`: no offering has the accelerator `{accelerator}`",
                        quota.name
                    ));
                }
            }
        }
        for commitment in &self.commitments {
            if !clouds.contains(commitment.cloud.as_str()) {
                warnings.push(format!(
                    "[[commitment]] `{}`: no offering is in this cloud, so it changes nothing",
                    commitment.cloud
                ));
            }
        }
        warnings
    }

    /// Every candidate of a job, and why the other offerings were not.
    pub fn candidates(&self, job: &Job) -> (Vec<Candidate>, Rejections) {
        let mut rejections = Rejections::default();
        let mut candidates = Vec::new();
        let mut egress_cache: HashMap<(&str, &str), (f64, Vec<EgressLeg>)> = HashMap::new();
        for (alternative_index, alternative) in job.accelerators.iter().enumerate() {
            let wall_hours = job.hours / alternative.speed;
            let deadline_ok = job.deadline_hours.is_none_or(|d| wall_hours <= d + 1e-9);
            if !deadline_ok {
                rejections
                    .deadline
                    .push((format!("{}:{}", alternative.name, alternative.count), wall_hours));
            }
            let accelerators = job.nodes.saturating_mul(alternative.count);
            for &index in self.catalog.matching(&alternative.name, alternative.count) {
                let offering = &self.catalog.offerings[index];
                let allowed = job.allows(&offering.cloud, &offering.region);
                let mut options: Vec<(Purchase, f64)> = Vec::with_capacity(2);
                if offering.private.is_some() {
                    options.extend(offering.on_demand.map(|p| (Purchase::Private, p)));
                } else {
                    options.extend(offering.on_demand.map(|p| (Purchase::OnDemand, p)));
                    options.extend(offering.spot.map(|p| (Purchase::Spot, p)));
                }
                let commitment = self.commitments.iter().position(|c| c.cloud == offering.cloud);
                let discount = commitment.map_or(0.0, |c| self.commitments[c].current_discount());
                for (purchase, node_price) in options {
                    let mut failed: Vec<Filter> = Vec::new();
                    if !allowed {
                        failed.push(Filter::Residency);
                    }
                    if !deadline_ok {
                        failed.push(Filter::Deadline);
                    }
                    if purchase == Purchase::Spot && !job.spot {
                        failed.push(Filter::Spot);
                    }
                    if let Some(private) = &offering.private {
                        if private.nodes < job.nodes {
                            failed.push(Filter::Capacity);
                            rejections.capacity.insert(private.name.clone(), private.nodes);
                        }
                    }
                    let mut quotas = Vec::new();
                    if purchase != Purchase::Private {
                        for (q, quota) in self.quotas.iter().enumerate() {
                            if quota.covers(
                                &offering.cloud,
                                &offering.region,
                                &offering.accelerator,
                                purchase == Purchase::Spot,
                            ) {
                                if quota.max_accelerators < accelerators {
                                    if !failed.contains(&Filter::Quota) {
                                        failed.push(Filter::Quota);
                                    }
                                    rejections.quota.insert(
                                        quota.name.clone(),
                                        (quota.max_accelerators, accelerators),
                                    );
                                }
                                quotas.push(q);
                            }
                        }
                    }
                    rejections.options += 1;
                    let list_compute_usd = f64::from(job.nodes) * node_price * wall_hours;
                    if !list_compute_usd.is_finite() {
                        continue;
                    }
                    if !failed.is_empty() {
                        for filter in &failed {
                            *rejections.failed.entry(*filter).or_default() += 1;
                        }
                        if let [only] = failed.as_slice() {
                            *rejections.only.entry(*only).or_default() += 1;
                        }
                        continue;
                    }
                    let (egress_usd, egress) = egress_cache
                        .entry((offering.cloud.as_str(), offering.region.as_str()))
                        .or_insert_with(|| self.egress_for(job, offering))
                        .clone();
                    candidates.push(Candidate {
                        offering: index,
                        alternative: alternative_index,
                        purchase,
                        node_price,
                        wall_hours,
                        list_compute_usd,
                        compute_usd: list_compute_usd * (1.0 - discount),
                        discount,
                        egress_usd,
                        egress,
                        accelerators,
                        quotas,
                        commitment,
                    });
                }
            }
        }
        (candidates, rejections)
    }

    fn egress_for(&self, job: &Job, offering: &Offering) -> (f64, Vec<EgressLeg>) {
        let mut total = 0.0;
        let mut legs = Vec::new();
        for dataset in &job.data {
            let cheapest = dataset
                .locations
                .iter()
                .map(|(cloud, region)| {
                    let (per_gb, _) =
                        self.egress.usd_per_gb(cloud, region, &offering.cloud, &offering.region);
                    (per_gb * dataset.size_gb, format!("{cloud}:{region}"))
                })
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((usd, from)) = cheapest {
                total += usd;
                legs.push(EgressLeg { dataset: dataset.name.clone(), from, usd });
            }
        }
        (total, legs)
    }

    /// The objective of a set of choices (one per job, `None` = unplaced),
    /// without the unplaced penalty. Used to rank one job's candidates and
    /// by the tests' brute force.
    pub fn objective(&self, chosen: &[Option<&Candidate>]) -> f64 {
        let mut spend = vec![0.0; self.commitments.len()];
        let mut total = 0.0;
        for candidate in chosen.iter().flatten() {
            total += candidate.egress_usd;
            match candidate.commitment {
                Some(c) => spend[c] += candidate.compute_usd,
                None => total += candidate.compute_usd,
            }
        }
        for (c, commitment) in self.commitments.iter().enumerate() {
            total += committed_value(commitment, spend[c]);
        }
        total
    }

    /// Plans jobs together; one job is planned by enumeration.
    pub fn plan(&self, jobs: &[Job]) -> Result<Plan, PlanError> {
        let started = Instant::now();
        let generated: Vec<(Vec<Candidate>, Rejections)> =
            jobs.iter().map(|job| self.candidates(job)).collect();
        let total_candidates = generated.iter().map(|(c, _)| c.len()).sum();
        let (choices, method, variables, constraints) = if jobs.len() == 1 {
            let best = rank_alone(self, &generated[0].0).first().copied();
            (vec![best], "enumeration", generated[0].0.len(), 0)
        } else {
            let solved = self.solve(&generated)?;
            (solved.choices, "milp (HiGHS)", solved.variables, solved.constraints)
        };
        let mut plan_jobs = Vec::with_capacity(jobs.len());
        let chosen: Vec<Option<&Candidate>> = choices
            .iter()
            .zip(&generated)
            .map(|(choice, (candidates, _))| choice.map(|k| &candidates[k]))
            .collect();
        for (j, job) in jobs.iter().enumerate() {
            let (candidates, rejections) = &generated[j];
            let ranked = rank_alone(self, candidates);
            let value = |k: usize| self.objective(&[Some(&candidates[k])]);
            let placement = choices[j].map(|k| {
                let best = ranked[0];
                let why = if value(k) <= value(best) + 1e-6 * (1.0 + value(best).abs()) {
                    "cheapest feasible placement".to_string()
                } else {
                    let what = self.describe_place(&candidates[best]);
                    match self.blocked(jobs, j, &candidates[best], &chosen) {
                        Some(block) => format!(
                            "cheapest for the batch: the cheapest alone ({what}) does not fit \
                             beside the other jobs: {block}"
                        ),
                        None => format!(
                            "cheapest for the batch: the cheapest alone ({what}) would cost the \
                             batch more through the commitments' valuation of the other jobs' \
                             spend"
                        ),
                    }
                };
                self.placement(job, &candidates[k], 1, why)
            });
            let failover = self.failover(jobs, j, candidates, &ranked, choices[j], &chosen);
            let unplaced = if choices[j].is_none() {
                Some(self.explain(jobs, j, candidates, rejections, &chosen))
            } else {
                None
            };
            plan_jobs.push(JobPlan { job: job.name.clone(), placement, failover, unplaced });
        }
        // Folded from +0.0: an empty f64 sum is -0.0, printed as "-0.00".
        let compute_usd = chosen.iter().flatten().fold(0.0, |sum, c| sum + c.compute_usd);
        let egress_usd = chosen.iter().flatten().fold(0.0, |sum, c| sum + c.egress_usd);
        let commitments = self
            .commitments
            .iter()
            .enumerate()
            .map(|(index, commitment)| {
                let planned = chosen
                    .iter()
                    .flatten()
                    .filter(|c| c.commitment == Some(index))
                    .fold(0.0, |sum, c| sum + c.compute_usd);
                CommitmentUse {
                    cloud: commitment.cloud.clone(),
                    discount: commitment.current_discount(),
                    remaining_before_usd: commitment.remaining_usd(),
                    planned_usd: planned,
                    remaining_after_usd: (commitment.remaining_usd() - planned).max(0.0),
                }
            })
            .collect();
        let placed = chosen.iter().flatten().count();
        Ok(Plan {
            placed,
            unplaced: jobs.len() - placed,
            total_usd: compute_usd + egress_usd,
            compute_usd,
            egress_usd,
            objective_usd: self.objective(&chosen),
            commitments,
            jobs: plan_jobs,
            solver: SolverInfo {
                method,
                candidates: total_candidates,
                variables,
                constraints,
                seconds: started.elapsed().as_secs_f64(),
            },
        })
    }

    fn placement(&self, job: &Job, candidate: &Candidate, rank: usize, why: String) -> Placement {
        let offering = &self.catalog.offerings[candidate.offering];
        let alternative = &job.accelerators[candidate.alternative];
        Placement {
            rank,
            cloud: offering.cloud.clone(),
            region: offering.region.clone(),
            zone: offering.zone.clone(),
            instance_type: offering.instance_type.clone(),
            accelerator: offering.accelerator.clone(),
            accelerators_per_node: offering.accelerator_count,
            nodes: job.nodes,
            purchase: candidate.purchase,
            private_offering: offering.private.as_ref().map(|p| p.name.clone()),
            speed: alternative.speed,
            wall_hours: candidate.wall_hours,
            usd_per_hour: f64::from(job.nodes) * candidate.node_price * (1.0 - candidate.discount),
            compute_usd: candidate.compute_usd,
            list_compute_usd: candidate.list_compute_usd,
            discount: candidate.discount,
            egress_usd: candidate.egress_usd,
            egress: candidate.egress.clone(),
            total_usd: candidate.cost(),
            why,
        }
    }

    /// The next best zones, regions and clouds after the chosen one.
    fn failover(
        &self,
        jobs: &[Job],
        j: usize,
        candidates: &[Candidate],
        ranked: &[usize],
        chosen_k: Option<usize>,
        chosen: &[Option<&Candidate>],
    ) -> Vec<Placement> {
        let job = &jobs[j];
        let place_of = |k: usize| {
            let o = &self.catalog.offerings[candidates[k].offering];
            (o.cloud.as_str(), o.place(), o.private.as_ref().map(|p| p.name.as_str()))
        };
        let mut seen = BTreeSet::new();
        if let Some(k) = chosen_k {
            seen.insert(place_of(k));
        }
        let first_rank = if chosen_k.is_some() { 2 } else { 1 };
        let mut list = Vec::new();
        for &k in ranked {
            if list.len() >= self.failover_depth {
                break;
            }
            if !seen.insert(place_of(k)) {
                continue;
            }
            let why = match chosen_k {
                Some(first) => {
                    let mut why = self.compare(&candidates[first], &candidates[k], job);
                    let (v_first, v_k) = (
                        self.objective(&[Some(&candidates[first])]),
                        self.objective(&[Some(&candidates[k])]),
                    );
                    if v_k < v_first - 1e-6 * (1.0 + v_first.abs()) {
                        match self.blocked(jobs, j, &candidates[k], chosen) {
                            Some(block) => why.push_str(&format!("; cheaper, but {block}")),
                            None => why.push_str(
                                "; cheaper alone, dearer for the batch through the commitments",
                            ),
                        }
                    }
                    why
                }
                None => match self.blocked(jobs, j, &candidates[k], chosen) {
                    Some(block) => format!("feasible alone; in this plan {block}"),
                    None => "feasible alone".into(),
                },
            };
            list.push(self.placement(job, &candidates[k], list.len() + first_rank, why));
        }
        list
    }

    /// "aws use1-az2" or "private offering `reserved-h100`".
    fn describe_place(&self, candidate: &Candidate) -> String {
        let offering = &self.catalog.offerings[candidate.offering];
        match &offering.private {
            Some(private) => format!("private offering `{}`", private.name),
            None => format!("{} {}", offering.cloud, offering.place()),
        }
    }

    /// Which shared constraint a candidate of job `j` would overflow beside
    /// the other jobs' choices, if any.
    fn blocked(
        &self,
        jobs: &[Job],
        j: usize,
        candidate: &Candidate,
        chosen: &[Option<&Candidate>],
    ) -> Option<String> {
        for &q in &candidate.quotas {
            let users: Vec<(usize, u32)> = chosen
                .iter()
                .enumerate()
                .filter(|(i, c)| *i != j && c.is_some_and(|c| c.quotas.contains(&q)))
                .map(|(i, c)| (i, c.map_or(0, |c| c.accelerators)))
                .collect();
            let used: u32 = users.iter().map(|(_, a)| a).sum();
            let quota = &self.quotas[q];
            if used + candidate.accelerators > quota.max_accelerators {
                let names: Vec<&str> = users.iter().map(|(i, _)| jobs[*i].name.as_str()).collect();
                return Some(format!(
                    "quota `{}` ({} accelerators) has {used} in use by {}",
                    quota.name,
                    quota.max_accelerators,
                    name_some(&names)
                ));
            }
        }
        if candidate.purchase == Purchase::Private {
            let offering = &self.catalog.offerings[candidate.offering];
            let private = offering.private.as_ref()?;
            let users: Vec<usize> = chosen
                .iter()
                .enumerate()
                .filter(|(i, c)| {
                    *i != j
                        && c.is_some_and(|c| {
                            c.purchase == Purchase::Private && c.offering == candidate.offering
                        })
                })
                .map(|(i, _)| i)
                .collect();
            let used: u32 = users.iter().map(|&i| jobs[i].nodes).sum();
            if used + jobs[j].nodes > private.nodes {
                let names: Vec<&str> = users.iter().map(|&i| jobs[i].name.as_str()).collect();
                return Some(format!(
                    "private offering `{}` ({} nodes) has {used} in use by {}",
                    private.name,
                    private.nodes,
                    name_some(&names)
                ));
            }
        }
        None
    }

    fn compare(&self, first: &Candidate, other: &Candidate, job: &Job) -> String {
        let a = &self.catalog.offerings[first.offering];
        let b = &self.catalog.offerings[other.offering];
        let scope = if a.cloud != b.cloud {
            format!("another cloud ({})", b.cloud)
        } else if a.region != b.region {
            format!("another region of {} ({})", b.cloud, b.region)
        } else {
            format!("another zone of {}", b.region)
        };
        let delta = other.cost() - first.cost();
        let percent = if first.cost() > 0.0 { 100.0 * delta / first.cost() } else { 0.0 };
        let mut why = format!("{scope}: {:+.0} USD ({percent:+.1}%)", delta);
        if other.alternative != first.alternative {
            let alt = &job.accelerators[other.alternative];
            why.push_str(&format!("; {}:{} at {}x", alt.name, alt.count, alt.speed));
        }
        if other.purchase != first.purchase {
            why.push_str(match other.purchase {
                Purchase::Spot => "; spot (may be preempted)",
                Purchase::OnDemand => "; on demand",
                Purchase::Private => "; private capacity",
            });
        }
        if (other.egress_usd - first.egress_usd).abs() >= 0.5 {
            why.push_str(&format!("; egress {:.0} USD", other.egress_usd));
        }
        why
    }

    /// Why a job has no placement: what filtered its offerings out, or
    /// which shared constraints other jobs filled.
    fn explain(
        &self,
        jobs: &[Job],
        j: usize,
        candidates: &[Candidate],
        rejections: &Rejections,
        chosen: &[Option<&Candidate>],
    ) -> Unplaced {
        let job = &jobs[j];
        let mut binding = BTreeSet::new();
        let mut reasons = Vec::new();
        if candidates.is_empty() {
            let shapes: Vec<String> =
                job.accelerators.iter().map(|a| format!("{}:{}", a.name, a.count)).collect();
            if rejections.options == 0 {
                binding.insert("catalog");
                reasons.push(format!(
                    "no priced offering of {} in the catalog (the shape is listed without a \
                     price, or only in rows that were skipped)",
                    shapes.join(" or ")
                ));
                return Unplaced {
                    binding: binding.into_iter().map(str::to_string).collect(),
                    reasons,
                };
            }
            reasons.push(format!(
                "{} offerings of {} (counting on-demand and spot apart) exist; none is feasible",
                rejections.options,
                shapes.join(" or ")
            ));
            // A filter binds when relaxing it alone would admit an offering;
            // where every offering fails several, all of them are named.
            let binds = |filter: Filter| {
                rejections.failed.contains_key(&filter)
                    && (rejections.only.contains_key(&filter) || rejections.only.is_empty())
            };
            let count = |filter: Filter| rejections.failed.get(&filter).copied().unwrap_or(0);
            if binds(Filter::Residency) {
                binding.insert("residency");
                let mut allowed = Vec::new();
                if !job.clouds.is_empty() {
                    allowed.push(format!("clouds {}", job.clouds.join(", ")));
                }
                if !job.regions.is_empty() {
                    allowed.push(format!("regions {}", job.regions.join(", ")));
                }
                reasons.push(format!(
                    "residency: {} are outside the allowed {}",
                    count(Filter::Residency),
                    allowed.join(" and ")
                ));
            }
            if binds(Filter::Spot) {
                binding.insert("spot");
                reasons.push(format!(
                    "spot: {} are spot capacity and the job has spot = false",
                    count(Filter::Spot)
                ));
            }
            if binds(Filter::Deadline) {
                binding.insert("deadline");
                for (shape, hours) in &rejections.deadline {
                    reasons.push(format!(
                        "deadline: on {shape} the job takes {hours:.1} h, more than \
                         deadline_hours = {}",
                        job.deadline_hours.unwrap_or_default()
                    ));
                }
            }
            if binds(Filter::Quota) {
                binding.insert("quota");
                for (quota, (limit, needed)) in &rejections.quota {
                    reasons.push(format!(
                        "quota: `{quota}` allows {limit} accelerators; the job needs {needed}"
                    ));
                }
            }
            if binds(Filter::Capacity) {
                binding.insert("capacity");
                for (name, nodes) in &rejections.capacity {
                    reasons.push(format!(
                        "capacity: private offering `{name}` has {nodes} nodes; the job needs {}",
                        job.nodes
                    ));
                }
            }
        } else {
            // Feasible alone, left out in the batch: name the shared
            // constraints its candidates would overflow.
            let mut quota_use: HashMap<usize, (u32, Vec<&str>)> = HashMap::new();
            let mut private_use: HashMap<usize, (u32, Vec<&str>)> = HashMap::new();
            for (i, choice) in chosen.iter().enumerate() {
                let Some(c) = choice else { continue };
                for &q in &c.quotas {
                    let entry = quota_use.entry(q).or_default();
                    entry.0 += c.accelerators;
                    entry.1.push(jobs[i].name.as_str());
                }
                if c.purchase == Purchase::Private {
                    let entry = private_use.entry(c.offering).or_default();
                    entry.0 +=
                        c.accelerators / self.catalog.offerings[c.offering].accelerator_count;
                    entry.1.push(jobs[i].name.as_str());
                }
            }
            let mut seen_quota = BTreeSet::new();
            let mut seen_private = BTreeSet::new();
            for c in candidates {
                for &q in &c.quotas {
                    let (used, users) = quota_use.get(&q).cloned().unwrap_or_default();
                    if used + c.accelerators > self.quotas[q].max_accelerators
                        && seen_quota.insert(q)
                    {
                        binding.insert("quota");
                        reasons.push(format!(
                            "quota: `{}` allows {} accelerators; {used} are used by {}; this job \
                             needs {}",
                            self.quotas[q].name,
                            self.quotas[q].max_accelerators,
                            name_some(&users),
                            c.accelerators
                        ));
                    }
                }
                if c.purchase == Purchase::Private && seen_private.insert(c.offering) {
                    let offering = &self.catalog.offerings[c.offering];
                    let (used, users) = private_use.get(&c.offering).cloned().unwrap_or_default();
                    if let Some(private) = &offering.private {
                        binding.insert("capacity");
                        reasons.push(format!(
                            "capacity: private offering `{}` has {} nodes; {used} are used by {}",
                            private.name,
                            private.nodes,
                            name_some(&users)
                        ));
                    }
                }
            }
            reasons.insert(
                0,
                format!(
                    "job {} has {} feasible places, all filled by other jobs of the batch",
                    job.name,
                    candidates.len()
                ),
            );
        }
        Unplaced { binding: binding.into_iter().map(str::to_string).collect(), reasons }
    }
}

/// "a, b, c and 4 more".
fn name_some(names: &[&str]) -> String {
    match names.len() {
        0 => "no job".into(),
        n if n <= 3 => names.join(", "),
        n => format!("{} and {} more", names[..3].join(", "), n - 3),
    }
}

/// The value the optimizer gives `spend` (discounted) on a committed cloud.
pub fn committed_value(commitment: &Commitment, spend: f64) -> f64 {
    let remaining = commitment.remaining_usd();
    let committed = spend.min(remaining);
    (1.0 - commitment.burn_down_weight) * committed + (spend - committed).max(0.0)
}

/// One job's candidates, best first, by their value alone.
fn rank_alone(planner: &Planner, candidates: &[Candidate]) -> Vec<usize> {
    let value: Vec<f64> = candidates.iter().map(|c| planner.objective(&[Some(c)])).collect();
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        let (oa, ob) =
            (&planner.catalog.offerings[ca.offering], &planner.catalog.offerings[cb.offering]);
        value[a]
            .total_cmp(&value[b])
            .then(ca.cost().total_cmp(&cb.cost()))
            .then_with(|| oa.cloud.cmp(&ob.cloud))
            .then_with(|| oa.region.cmp(&ob.region))
            .then_with(|| oa.place().cmp(ob.place()))
            .then_with(|| oa.instance_type.cmp(&ob.instance_type))
            .then(ca.purchase.cmp(&cb.purchase))
    });
    order
}

/// How far from the optimum a batch plan may be, in USD.
pub const MIP_ABS_GAP_USD: f64 = 0.01;

/// Costs enter the program in thousands of USD, which keeps its
/// coefficients and bounds within the ranges HiGHS handles best (in USD it
/// warns of excessively large costs and bounds, and solves slower).
const SCALE: f64 = 1e-3;

struct Solved {
    choices: Vec<Option<usize>>,
    variables: usize,
    constraints: usize,
}

impl Planner {
    /// The batch MILP (see the module documentation).
    fn solve(&self, generated: &[(Vec<Candidate>, Rejections)]) -> Result<Solved, PlanError> {
        // Reduce each job's candidates to those that can be optimal.
        let kept: Vec<Vec<usize>> =
            generated.iter().map(|(candidates, _)| reduce(self, candidates)).collect();
        // A job without candidates is unplaced whatever the others do; it
        // stays out of the program (its penalty would only be a constant).
        let active: Vec<usize> = (0..kept.len()).filter(|&j| !kept[j].is_empty()).collect();
        if active.is_empty() {
            return Ok(Solved { choices: vec![None; kept.len()], variables: 0, constraints: 0 });
        }
        // Usually every job that fits alone fits in the batch: solve that
        // program first, without the unplaced markers and their large
        // penalty (which weaken the relaxation and the numerics). Only if it
        // is infeasible, solve the one that may leave jobs out.
        match self.solve_model(generated, &kept, &active, false)? {
            Some(solved) => Ok(solved),
            None => self.solve_model(generated, &kept, &active, true)?.ok_or_else(|| {
                PlanError::Solver("the program with unplaced jobs allowed is infeasible".into())
            }),
        }
    }

    /// Builds and solves one program; `Ok(None)` when it is infeasible and
    /// jobs may not be left out.
    fn solve_model(
        &self,
        generated: &[(Vec<Candidate>, Rejections)],
        kept: &[Vec<usize>],
        active: &[usize],
        allow_unplaced: bool,
    ) -> Result<Option<Solved>, PlanError> {
        use highs::{ColProblem, HighsModelStatus, Sense};

        // The commitment's valuation below, `(1 - w) S + w max(S - R, 0)`,
        // is bounded only for weights in [0, 1] (the estate checks this; a
        // library caller may not have).
        if let Some(bad) =
            self.commitments.iter().find(|c| !(0.0..=1.0).contains(&c.burn_down_weight))
        {
            return Err(PlanError::Solver(format!(
                "a commitment's burn_down_weight must be within 0..=1, not {}",
                bad.burn_down_weight
            )));
        }

        let penalty = 1.0
            + 2.0
                * active
                    .iter()
                    .map(|&j| kept[j].iter().map(|&k| generated[j].0[k].cost()).fold(0.0, f64::max))
                    .sum::<f64>();

        let mut problem = ColProblem::default();
        let mut rows = Rows::default();
        let job_rows: HashMap<usize, _> =
            active.iter().map(|&j| (j, rows.add(&mut problem, 1.0, true))).collect();
        let mut quota_rows = HashMap::new();
        let mut private_rows = HashMap::new();
        // Ordered, so that the excess columns below (and with them the whole
        // program HiGHS sees) come out the same in every run.
        let mut commitment_rows = BTreeMap::new();
        for &j in active {
            for &k in &kept[j] {
                let c = &generated[j].0[k];
                for &q in &c.quotas {
                    quota_rows.entry(q).or_insert_with(|| {
                        let cap = f64::from(self.quotas[q].max_accelerators);
                        rows.add(&mut problem, cap, false)
                    });
                }
                if c.purchase == Purchase::Private {
                    private_rows.entry(c.offering).or_insert_with(|| {
                        let nodes = self.catalog.offerings[c.offering]
                            .private
                            .as_ref()
                            .map_or(0, |p| p.nodes);
                        rows.add(&mut problem, f64::from(nodes), false)
                    });
                }
                if let Some(m) = c.commitment {
                    commitment_rows.entry(m).or_insert_with(|| {
                        let remaining = self.commitments[m].remaining_usd() * SCALE;
                        rows.add(&mut problem, remaining, false)
                    });
                }
            }
        }
        let constraints = rows.rhs.len();
        // (column index, job, candidate) of every candidate column.
        let mut columns: Vec<(usize, usize, usize)> = Vec::new();
        // (cost, upper bound, integer, entries) of every column.
        type Spec = (f64, Option<f64>, bool, Vec<(highs::Row, f64)>);
        let mut specs: Vec<Spec> = Vec::new();
        let mut unplaced_columns: HashMap<usize, usize> = HashMap::new();
        for &j in active {
            for &k in &kept[j] {
                let c = &generated[j].0[k];
                let mut entries = vec![(job_rows[&j], 1.0)];
                for &q in &c.quotas {
                    entries.push((quota_rows[&q], f64::from(c.accelerators)));
                }
                if c.purchase == Purchase::Private {
                    let per_node = self.catalog.offerings[c.offering].accelerator_count.max(1);
                    entries.push((private_rows[&c.offering], f64::from(c.accelerators / per_node)));
                }
                let cost = match c.commitment {
                    Some(m) => {
                        entries.push((commitment_rows[&m], c.compute_usd * SCALE));
                        c.egress_usd + (1.0 - self.commitments[m].burn_down_weight) * c.compute_usd
                    }
                    None => c.cost(),
                };
                columns.push((specs.len(), j, k));
                specs.push((cost * SCALE, Some(1.0), true, entries));
            }
            if allow_unplaced {
                unplaced_columns.insert(j, specs.len());
                specs.push((penalty * SCALE, Some(1.0), false, vec![(job_rows[&j], 1.0)]));
            }
        }
        let mut excess_columns = Vec::new();
        for (&m, &row) in &commitment_rows {
            excess_columns.push((m, row, specs.len()));
            specs.push((self.commitments[m].burn_down_weight, None, false, vec![(row, -1.0)]));
        }
        let variables = specs.len();
        let build = |relaxed: bool, fixed: &[bool]| {
            let mut p = problem.clone();
            for (i, (cost, upper, integer, entries)) in specs.iter().enumerate() {
                let integer = *integer && !relaxed;
                match upper {
                    Some(u) => {
                        let u = if fixed.get(i).copied().unwrap_or(false) { 0.0 } else { *u };
                        p.add_column_with_integrality(*cost, 0.0..=u, entries, integer)
                    }
                    None => p.add_column_with_integrality(*cost, 0.0.., entries, integer),
                }
            }
            p
        };
        // Reduced-cost fixing before the search. Take any row prices `y`
        // that are free on the job rows and `<= 0` on the `<=` rows, and
        // the reduced costs `d = cost - A^T y` computed from them. For every
        // plan x (Ax = b on job rows, Ax <= b elsewhere, x within bounds):
        // `cost(x) = y.Ax + d.x >= y.b + sum_{d_k < 0} d_k u_k +
        // sum_{d_k > 0} d_k x_k`. Call `L` the first two terms (it needs
        // `d >= 0` on the unbounded excess columns, which the clipping of
        // `y` below ensures). A candidate k with `d_k > 0` is then in no
        // plan cheaper than `L + d_k`; a rounded plan of value U bounds the
        // optimum from above, so when `L + d_k > U` no optimal plan uses k
        // and fixing it to 0 keeps the optimum (and every optimal plan).
        // The relaxation's duals only make `L` strong; the bound holds for
        // the clipped prices whatever their accuracy, since `d` is
        // recomputed from them here.
        let mut fixed = vec![false; variables];
        let mut start: Option<Vec<f64>> = None;
        {
            let mut lp = build(true, &[])
                .try_optimise(Sense::Minimise)
                .map_err(|status| PlanError::Solver(format!("{status:?}")))?;
            lp.make_quiet();
            lp.set_option("threads", 1);
            let lp = lp.try_solve().map_err(|status| PlanError::Solver(format!("{status:?}")))?;
            if lp.status() == HighsModelStatus::Optimal {
                let solution = lp.get_solution();
                let values = solution.columns();
                let row_duals = solution.dual_rows();
                // Dual values made feasible: `<=` rows at most 0, and a
                // commitment row at least `-w` (the excess column's cost),
                // so that every reduced cost below is exact for these duals.
                let mut y: Vec<f64> = rows
                    .rhs
                    .iter()
                    .zip(row_duals)
                    .map(|(&(_, equality), &dual)| if equality { dual } else { dual.min(0.0) })
                    .collect();
                let mut valid = true;
                for &(m, row, _) in &excess_columns {
                    let index = rows.index[&row];
                    let weight = self.commitments[m].burn_down_weight;
                    // Outside [0, 1] the prices cannot be clipped both ways.
                    valid &= (0.0..=1.0).contains(&weight);
                    y[index] = y[index].max(-weight);
                }
                let reduced: Vec<f64> = specs
                    .iter()
                    .map(|(cost, _, _, entries)| {
                        cost - entries.iter().map(|(row, a)| a * y[rows.index[row]]).sum::<f64>()
                    })
                    .collect();
                let mut bound: f64 = rows.rhs.iter().zip(&y).map(|(&(b, _), y)| y * b).sum();
                for ((_, upper, _, _), &d) in specs.iter().zip(&reduced) {
                    if d < 0.0 {
                        match upper {
                            Some(u) => bound += d * u,
                            None => valid = false,
                        }
                    }
                }
                let rounded = self.round(
                    generated,
                    active,
                    &columns,
                    Relaxation {
                        cost: &specs.iter().map(|spec| spec.0).collect::<Vec<_>>(),
                        reduced: &reduced,
                        values,
                    },
                    allow_unplaced.then_some(penalty * SCALE),
                );
                if let (true, Some(picks)) = (valid, rounded) {
                    let mut x = vec![0.0; variables];
                    let mut spend = vec![0.0; self.commitments.len()];
                    let mut value = 0.0;
                    for (&j, pick) in active.iter().zip(&picks) {
                        let column = match pick {
                            Some(p) => {
                                let (column, _, k) = columns[*p];
                                if let Some(m) = generated[j].0[k].commitment {
                                    spend[m] += generated[j].0[k].compute_usd * SCALE;
                                }
                                column
                            }
                            None => unplaced_columns[&j],
                        };
                        x[column] = 1.0;
                        value += specs[column].0;
                    }
                    for &(m, _, column) in &excess_columns {
                        let excess =
                            (spend[m] - self.commitments[m].remaining_usd() * SCALE).max(0.0);
                        x[column] = excess;
                        value += self.commitments[m].burn_down_weight * excess;
                    }
                    // Room for rounding in the sums above.
                    let margin = 1e-6 + 1e-9 * (bound.abs() + value.abs());
                    for &(column, _, _) in &columns {
                        if reduced[column] > 0.0 && bound + reduced[column] > value + margin {
                            fixed[column] = true;
                        }
                    }
                    start = Some(x);
                }
            } else if lp.status() == HighsModelStatus::Infeasible && !allow_unplaced {
                // No fractional plan places every job, so no plan does.
                return Ok(None);
            }
        }
        if let Some(path) = &self.write_program {
            write_program(build(false, &[]), path)?;
        }
        let problem = build(false, &fixed);

        let mut model = problem
            .try_optimise(Sense::Minimise)
            .map_err(|status| PlanError::Solver(format!("{status:?}")))?;
        model.make_quiet();
        // Exact to the cent: the search stops only when the best plan is
        // proven within 0.01 USD of the optimum.
        model.set_option("mip_rel_gap", 0.0);
        model.set_option("mip_abs_gap", MIP_ABS_GAP_USD * SCALE);
        model.set_option("threads", 1);
        // HiGHS's large-neighbourhood and feasibility-jump heuristics cost
        // more time here than they save: its root reduced-cost heuristic
        // (kept) already finds a near-optimal plan after the first cut
        // round. Heuristics only supply incumbents; turning them off does
        // not change what is proven.
        model.set_option("mip_heuristic_run_rins", false);
        model.set_option("mip_heuristic_run_rens", false);
        model.set_option("mip_heuristic_run_feasibility_jump", false);
        // The rounded plan as the first incumbent: HiGHS prunes with it from
        // the start (it checks the plan's feasibility itself).
        if let Some(x) = &start {
            model
                .try_set_solution(Some(x), None, None, None)
                .map_err(|status| PlanError::Solver(format!("{status:?}")))?;
        }
        let solved =
            model.try_solve().map_err(|status| PlanError::Solver(format!("{status:?}")))?;
        match solved.status() {
            HighsModelStatus::Optimal => {}
            HighsModelStatus::Infeasible if !allow_unplaced => return Ok(None),
            status => {
                return Err(PlanError::Solver(format!(
                    "HiGHS ended with status {status:?} on {variables} variables and \
                     {constraints} constraints"
                )))
            }
        }
        let solution = solved.get_solution();
        let values = solution.columns();
        let mut choices = vec![None; generated.len()];
        for &(column, j, k) in &columns {
            if values[column] > 0.5 {
                choices[j] = Some(k);
            }
        }
        Ok(Some(Solved { choices, variables, constraints }))
    }
}

/// The program's rows, for the dual bound in `solve_model`: each row's
/// right-hand side and whether it is an equality (a job's `= 1`; the others
/// are `<=`), in row order, and each row's index by its handle.
#[derive(Default)]
struct Rows {
    rhs: Vec<(f64, bool)>,
    index: HashMap<highs::Row, usize>,
}

impl Rows {
    fn add(&mut self, problem: &mut highs::ColProblem, rhs: f64, equality: bool) -> highs::Row {
        let row = if equality { problem.add_row(rhs..=rhs) } else { problem.add_row(..=rhs) };
        self.index.insert(row, self.rhs.len());
        self.rhs.push((rhs, equality));
        row
    }
}

/// Writes `problem` to `path` in MPS format. HiGHS writes the model when
/// asked to solve it with `write_model_to_file` set, and then stops without
/// solving; the planner solves its own copy.
fn write_program(problem: highs::ColProblem, path: &Path) -> Result<(), PlanError> {
    let mut model = problem
        .try_optimise(highs::Sense::Minimise)
        .map_err(|status| PlanError::Solver(format!("{status:?}")))?;
    model.make_quiet();
    // A file left from before must not pass for this program.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PlanError::Solver(format!("cannot replace {}: {e}", path.display()))),
    }
    model.set_option("write_model_to_file", true);
    model.set_option("write_model_file", path.to_string_lossy().as_ref());
    // The status says nothing about the file; its presence does.
    let _ = model.try_solve();
    if !path.is_file() {
        return Err(PlanError::Solver(format!(
            "HiGHS did not write the program to {}",
            path.display()
        )));
    }
    Ok(())
}

/// Per column of the program: its cost, and its reduced cost and value in
/// the LP relaxation.
#[derive(Clone, Copy)]
struct Relaxation<'a> {
    cost: &'a [f64],
    reduced: &'a [f64],
    values: &'a [f64],
}

/// What a partial plan uses of the shared constraints, for [`Planner::round`].
struct Usage<'p> {
    planner: &'p Planner,
    /// Accelerators per quota.
    quotas: Vec<u32>,
    /// Nodes per private offering.
    private: HashMap<usize, u32>,
    /// Scaled discounted compute per commitment.
    spend: Vec<f64>,
}

impl<'p> Usage<'p> {
    fn new(planner: &'p Planner) -> Usage<'p> {
        Usage {
            planner,
            quotas: vec![0; planner.quotas.len()],
            private: HashMap::new(),
            spend: vec![0.0; planner.commitments.len()],
        }
    }

    fn nodes(&self, c: &Candidate) -> u32 {
        c.accelerators / self.planner.catalog.offerings[c.offering].accelerator_count.max(1)
    }

    /// Whether `c` fits beside what is used.
    fn fits(&self, c: &Candidate) -> bool {
        let planner = self.planner;
        c.quotas
            .iter()
            .all(|&q| self.quotas[q] + c.accelerators <= planner.quotas[q].max_accelerators)
            && (c.purchase != Purchase::Private || {
                let capacity =
                    planner.catalog.offerings[c.offering].private.as_ref().map_or(0, |p| p.nodes);
                self.private.get(&c.offering).copied().unwrap_or(0) + self.nodes(c) <= capacity
            })
    }

    fn take(&mut self, c: &Candidate) {
        if let Some(m) = c.commitment {
            self.spend[m] += c.compute_usd * SCALE;
        }
        for &q in &c.quotas {
            self.quotas[q] += c.accelerators;
        }
        if c.purchase == Purchase::Private {
            let nodes = self.nodes(c);
            *self.private.entry(c.offering).or_default() += nodes;
        }
    }

    /// Undoes [`Usage::take`] of the same candidate.
    fn give_back(&mut self, c: &Candidate) {
        if let Some(m) = c.commitment {
            self.spend[m] -= c.compute_usd * SCALE;
        }
        for &q in &c.quotas {
            self.quotas[q] -= c.accelerators;
        }
        if c.purchase == Purchase::Private {
            let nodes = self.nodes(c);
            *self.private.entry(c.offering).or_default() -= nodes;
        }
    }

    /// What taking `c`, whose column costs `cost`, adds to the objective:
    /// the cost plus the commitment's weight on what it spends beyond what
    /// remains (the program's excess column).
    fn marginal(&self, cost: f64, c: &Candidate) -> f64 {
        cost + c.commitment.map_or(0.0, |m| {
            let commitment = &self.planner.commitments[m];
            let remaining = commitment.remaining_usd() * SCALE;
            let (before, s) = (self.spend[m], c.compute_usd * SCALE);
            commitment.burn_down_weight
                * ((before + s - remaining).max(0.0) - (before - remaining).max(0.0))
        })
    }
}

impl Planner {
    /// A plan from the LP relaxation's values, for `solve_model`'s
    /// reduced-cost fixing: per job (in `active`'s order) the index into
    /// `columns` of its candidate, or `None` when it is left unplaced.
    /// Jobs the relaxation places whole keep that candidate; the others
    /// take their cheapest candidate that still fits, then every job moves
    /// to a cheaper candidate that fits, while one does. `None` when a job
    /// fits nowhere and jobs may not be left out.
    fn round(
        &self,
        generated: &[(Vec<Candidate>, Rejections)],
        active: &[usize],
        columns: &[(usize, usize, usize)],
        relaxation: Relaxation<'_>,
        unplaced_cost: Option<f64>,
    ) -> Option<Vec<Option<usize>>> {
        let Relaxation { cost, reduced, values } = relaxation;
        let mut of_job: HashMap<usize, Vec<usize>> = HashMap::new();
        for (p, &(_, j, _)) in columns.iter().enumerate() {
            of_job.entry(j).or_default().push(p);
        }
        for list in of_job.values_mut() {
            list.sort_by(|&a, &b| cost[columns[a].0].total_cmp(&cost[columns[b].0]));
        }
        let candidate = |p: usize| {
            let (_, j, k) = columns[p];
            &generated[j].0[k]
        };
        let mut usage = Usage::new(self);
        let marginal = |usage: &Usage, p: usize| usage.marginal(cost[columns[p].0], candidate(p));
        let mut picks: Vec<Option<usize>> = vec![None; active.len()];
        for (i, j) in active.iter().enumerate() {
            // Checked to fit as well: the relaxation holds its rows only
            // within HiGHS's tolerance, and an upper bound from a plan that
            // overruns a cap could cut the optimum.
            if let Some(&p) = of_job[j]
                .iter()
                .find(|&&p| values[columns[p].0] > 1.0 - 1e-6 && usage.fits(candidate(p)))
            {
                picks[i] = Some(p);
                usage.take(candidate(p));
            }
        }
        for (i, j) in active.iter().enumerate() {
            if picks[i].is_some() {
                continue;
            }
            // By reduced cost: the relaxation's prices of the shared
            // constraints steer the job away from what others need more.
            let mut order = of_job[j].clone();
            order.sort_by(|&a, &b| reduced[columns[a].0].total_cmp(&reduced[columns[b].0]));
            match order.iter().find(|&&p| usage.fits(candidate(p))) {
                Some(&p) => {
                    picks[i] = Some(p);
                    usage.take(candidate(p));
                }
                None if unplaced_cost.is_some() => {}
                None => return None,
            }
        }
        let mut improved = true;
        let mut passes = 0;
        while improved && passes < 20 {
            passes += 1;
            improved = false;
            for (i, j) in active.iter().enumerate() {
                let Some(current) = picks[i] else { continue };
                usage.give_back(candidate(current));
                let now = marginal(&usage, current);
                let better = of_job[j]
                    .iter()
                    .filter(|&&p| usage.fits(candidate(p)))
                    .map(|&p| (p, marginal(&usage, p)))
                    .filter(|&(_, value)| value < now - 1e-9)
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(p, _)| p);
                let chosen = better.unwrap_or(current);
                improved |= better.is_some();
                picks[i] = Some(chosen);
                usage.take(candidate(chosen));
            }
            if improved {
                continue;
            }
            // Pairs: job i1 takes a cheaper candidate `p` that does not fit
            // because of job i2, which moves elsewhere for less than i1 saves.
            for i1 in 0..active.len() {
                // An unplaced job (possible only with `allow_unplaced`)
                // saves its penalty when placed.
                let now1 = match picks[i1] {
                    Some(p1) => {
                        usage.give_back(candidate(p1));
                        marginal(&usage, p1)
                    }
                    None => unplaced_cost.unwrap_or(0.0),
                };
                let targets: Vec<(usize, f64)> = of_job[&active[i1]]
                    .iter()
                    .filter(|&&p| Some(p) != picks[i1])
                    .map(|&p| (p, marginal(&usage, p)))
                    .filter(|&(_, value)| value < now1 - 1e-9)
                    .collect();
                let mut moved = false;
                'targets: for (p, value) in targets {
                    let cp = candidate(p);
                    for i2 in 0..active.len() {
                        let Some(p2) = picks[i2] else { continue };
                        let c2 = candidate(p2);
                        let shares = c2.quotas.iter().any(|q| cp.quotas.contains(q))
                            || (cp.purchase == Purchase::Private
                                && c2.purchase == Purchase::Private
                                && c2.offering == cp.offering);
                        if i2 == i1 || !shares {
                            continue;
                        }
                        usage.give_back(c2);
                        if usage.fits(cp) {
                            usage.take(cp);
                            let now2 = marginal(&usage, p2);
                            let best = of_job[&active[i2]]
                                .iter()
                                .filter(|&&q| q != p2 && usage.fits(candidate(q)))
                                .map(|&q| (q, marginal(&usage, q)))
                                .min_by(|a, b| a.1.total_cmp(&b.1));
                            if let Some((q, v2)) = best {
                                if (now1 - value) - (v2 - now2) > 1e-9 {
                                    usage.take(candidate(q));
                                    picks[i1] = Some(p);
                                    picks[i2] = Some(q);
                                    moved = true;
                                    break 'targets;
                                }
                            }
                            usage.give_back(cp);
                        }
                        usage.take(c2);
                    }
                }
                if let (false, Some(p1)) = (moved, picks[i1]) {
                    usage.take(candidate(p1));
                }
                improved |= moved;
            }
        }
        Some(picks)
    }
}

/// Keeps, among candidates that touch the same shared constraints with the
/// same usage, only those that can be optimal.
///
/// Within such a group, candidate A may replace candidate B in any plan
/// without changing feasibility. The objective changes by
/// `f(S - cB + cA) - f(S) + eA - eB`, where `c` is the discounted compute, `e`
/// the egress and `f` the committed cloud's valuation of its spend `S`
/// (convex, slope at least `1 - w`; `f(S) = S` without a commitment). With
/// `cA <= cB` that change is at most `eA - eB - (1 - w) (cB - cA)`, so B can
/// be dropped whenever that is `<= 0` for some kept A. Without a commitment
/// (`w = 0`, `f(S) = S`) one candidate per group remains.
pub(crate) fn reduce(planner: &Planner, candidates: &[Candidate]) -> Vec<usize> {
    type Key = (Option<usize>, Option<usize>, Vec<usize>, u32);
    let mut groups: HashMap<Key, Vec<usize>> = HashMap::new();
    for (k, c) in candidates.iter().enumerate() {
        let private = (c.purchase == Purchase::Private).then_some(c.offering);
        let usage = if c.quotas.is_empty() { 0 } else { c.accelerators };
        groups.entry((c.commitment, private, c.quotas.clone(), usage)).or_default().push(k);
    }
    let order = rank_alone(planner, candidates);
    let position: HashMap<usize, usize> = order.iter().enumerate().map(|(i, &k)| (k, i)).collect();
    let mut kept = Vec::new();
    for ((commitment, ..), mut members) in groups {
        let min_slope = commitment.map_or(1.0, |m| 1.0 - planner.commitments[m].burn_down_weight);
        members.sort_by(|&a, &b| {
            candidates[a]
                .compute_usd
                .total_cmp(&candidates[b].compute_usd)
                .then(candidates[a].egress_usd.total_cmp(&candidates[b].egress_usd))
                .then(position[&a].cmp(&position[&b]))
        });
        let mut group_kept: Vec<usize> = Vec::new();
        for b in members {
            let (cb, eb) = (candidates[b].compute_usd, candidates[b].egress_usd);
            let dominated = group_kept.iter().any(|&a| {
                let (ca, ea) = (candidates[a].compute_usd, candidates[a].egress_usd);
                ea - eb <= min_slope * (cb - ca)
            });
            if !dominated {
                group_kept.push(b);
            }
        }
        // A dearer A may replace B too: the change is then at most
        // `(cA - cB) + eA - eB` (slope at most 1), so B goes if A's total is
        // lower.
        let total = |k: usize| candidates[k].cost();
        let survivors: Vec<usize> = group_kept
            .iter()
            .copied()
            .filter(|&b| {
                !group_kept.iter().any(|&a| {
                    a != b
                        && total(a) < total(b)
                        && candidates[a].compute_usd > candidates[b].compute_usd
                })
            })
            .collect();
        kept.extend(survivors);
    }
    // Across groups: A may also replace B when A uses no more of any shared
    // constraint than B (its quotas a subset of B's, no more accelerators,
    // the same private offering or none) on the same commitment, and the
    // value test above holds. Such a swap keeps every plan feasible.
    let uses_no_more = |a: &Candidate, b: &Candidate| {
        a.commitment == b.commitment
            && (a.quotas.is_empty()
                || (a.accelerators <= b.accelerators
                    && a.quotas.iter().all(|q| b.quotas.contains(q))))
            && (a.purchase != Purchase::Private
                || (b.purchase == Purchase::Private && a.offering == b.offering))
    };
    let slope =
        |c: &Candidate| c.commitment.map_or(1.0, |m| 1.0 - planner.commitments[m].burn_down_weight);
    let replaces = |a: &Candidate, b: &Candidate| {
        if a.compute_usd <= b.compute_usd {
            a.egress_usd - b.egress_usd <= slope(b) * (b.compute_usd - a.compute_usd)
        } else {
            a.cost() <= b.cost()
        }
    };
    let survivors: Vec<usize> = kept
        .iter()
        .copied()
        .filter(|&b| {
            let cb = &candidates[b];
            !kept.iter().any(|&a| {
                let ca = &candidates[a];
                // Equal usage is one group, handled above; here A must use
                // strictly less somewhere, so A and B cannot remove each other.
                a != b && uses_no_more(ca, cb) && !uses_no_more(cb, ca) && replaces(ca, cb)
            })
        })
        .collect();
    let mut kept = survivors;
    kept.sort_by_key(|k| position[k]);
    kept
}

#[cfg(test)]
mod tests;
