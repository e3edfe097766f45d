//! Job specifications: the TOML a user hands to `skyweave plan`.
//!
//! ```toml
//! [[job]]
//! name = "pretrain-70b"
//! nodes = 4                  # nodes, all in one zone
//! hours = 300                # hours of work at speed 1.0
//! spot = false               # may it run on spot capacity?
//! deadline_hours = 400       # optional: wall-clock limit
//! clouds = ["aws", "gcp"]    # optional: allowed clouds
//! regions = ["us-east-1"]    # optional: allowed regions (residency)
//! accelerators = ["H100:8", { name = "H200", count = 8, speed = 1.3 }]
//!
//! [[job.data]]
//! name = "tokens"
//! size_gb = 2000
//! locations = ["aws:us-east-1", "azure:eastus"]   # replicas; the cheapest is used
//! ```

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;

use serde::Deserialize;
use skyweave_core::config::{ConfigError, ConfigErrors};
use skyweave_core::region::Proximity;
use toml::Spanned;

use crate::catalog::Catalog;

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub nodes: u32,
    /// Hours of work at speed 1.0.
    pub hours: f64,
    pub spot: bool,
    pub deadline_hours: Option<f64>,
    /// Allowed clouds; empty allows every cloud.
    pub clouds: Vec<String>,
    /// Allowed regions; empty allows every region.
    pub regions: Vec<String>,
    pub accelerators: Vec<Alternative>,
    pub data: Vec<Dataset>,
}

impl Job {
    pub fn allows(&self, cloud: &str, region: &str) -> bool {
        (self.clouds.is_empty() || self.clouds.iter().any(|c| c == cloud))
            && (self.regions.is_empty() || self.regions.iter().any(|r| r == region))
    }
}

/// One accelerator shape the job can use, and how fast it runs on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alternative {
    /// As the catalog writes it.
    pub name: String,
    /// Accelerators per node.
    pub count: u32,
    /// Relative speed; the job takes `hours / speed` wall-clock hours.
    pub speed: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub size_gb: f64,
    /// (cloud, region) of each replica.
    pub locations: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    job: Vec<Spanned<RawJob>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Spanned<String>,
    nodes: Option<Spanned<i64>>,
    hours: Spanned<f64>,
    #[serde(default)]
    spot: bool,
    deadline_hours: Option<Spanned<f64>>,
    #[serde(default)]
    clouds: Vec<Spanned<String>>,
    #[serde(default)]
    regions: Vec<Spanned<String>>,
    accelerators: Spanned<Vec<Spanned<RawAlternative>>>,
    #[serde(default)]
    data: Vec<Spanned<RawDataset>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAlternative {
    Short(String),
    Full(RawAlternativeTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlternativeTable {
    name: String,
    count: i64,
    speed: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    name: Option<String>,
    size_gb: f64,
    locations: Vec<Spanned<String>>,
}

struct Check<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn fail(&mut self, span: Range<usize>, message: String, fix: impl Into<String>) {
        self.errors.push(ConfigError::at(self.text, self.file, span, message, fix));
    }
}

/// Longest job, deadline and largest dataset accepted: beyond these, costs
/// stop being meaningful numbers.
const MAX_HOURS: f64 = 1e6;
const MAX_DATA_GB: f64 = 1e9;
const MIN_SPEED: f64 = 1e-3;
const MAX_SPEED: f64 = 1e3;

/// Parses a job file against a catalog (accelerator names and regions are
/// checked against it). Every problem is reported at once.
pub fn parse_jobs(text: &str, file: &str, catalog: &Catalog) -> Result<Vec<Job>, ConfigErrors> {
    let raw: RawFile = toml::from_str(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim().to_string();
        let fix = if message.contains("expected a sequence") {
            "write each job as [[job]] (an array of tables), even when there is one"
        } else if message.starts_with("unknown field") {
            "correct or remove the key; the keys a job accepts are listed in README.md \
             (Compute plane)"
        } else if message.contains("untagged enum RawAlternative") {
            "write an accelerator as \"H100:8\" or { name = \"H100\", count = 8, speed = 1.0 }"
        } else {
            "correct the TOML at this position"
        };
        ConfigErrors(vec![ConfigError::at(text, file, span, message, fix)])
    })?;
    let mut check = Check { text, file, errors: Vec::new() };
    if raw.job.is_empty() {
        check.fail(0..0, "the file has no [[job]]".into(), "add a [[job]] table (see README.md)");
    }
    let known_regions: HashSet<(&str, &str)> =
        catalog.offerings.iter().map(|o| (o.cloud.as_str(), o.region.as_str())).collect();
    let shipped_regions = Proximity::shipped();
    let known_clouds: BTreeSet<&str> = known_regions.iter().map(|(c, _)| *c).collect();
    let mut names = HashSet::new();
    let mut jobs = Vec::new();
    for raw_job in raw.job {
        let job_span = raw_job.span();
        let raw_job = raw_job.into_inner();
        let name = raw_job.name.get_ref().trim().to_string();
        let before = check.errors.len();
        if name.is_empty() {
            check.fail(raw_job.name.span(), "the job's name is empty".into(), "name the job");
        } else if !names.insert(name.clone()) {
            check.fail(
                raw_job.name.span(),
                format!("job name `{name}` is used twice"),
                "give every [[job]] a unique name",
            );
        }
        let nodes = raw_job.nodes.as_ref().map_or(1, |n| *n.get_ref());
        if !(1..=100_000).contains(&nodes) {
            let span = raw_job.nodes.as_ref().map_or(job_span.clone(), |n| n.span());
            check.fail(
                span,
                format!("job `{name}`: nodes = {nodes} is out of range"),
                "give the number of nodes, 1 to 100000",
            );
        }
        let hours = *raw_job.hours.get_ref();
        if !(hours > 0.0 && hours <= MAX_HOURS) {
            check.fail(
                raw_job.hours.span(),
                format!("job `{name}`: hours = {hours:?} is not a duration"),
                "give the hours of work at speed 1.0, more than 0 and at most 1000000",
            );
        }
        let deadline = raw_job.deadline_hours.as_ref().map(|d| (*d.get_ref(), d.span()));
        if let Some((deadline, span)) = &deadline {
            if !(*deadline > 0.0 && *deadline <= MAX_HOURS) {
                check.fail(
                    span.clone(),
                    format!("job `{name}`: deadline_hours = {deadline:?} is not a duration"),
                    "give the wall-clock hours the job may take, more than 0 and at most 1000000",
                );
            }
        }
        for cloud in &raw_job.clouds {
            if !known_clouds.contains(cloud.get_ref().as_str()) {
                check.fail(
                    cloud.span(),
                    format!("job `{name}`: the catalog has no cloud `{}`", cloud.get_ref()),
                    format!(
                        "use one of: {}",
                        known_clouds.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
        for region in &raw_job.regions {
            let region_name = region.get_ref().as_str();
            // A region the catalog sells nothing in is fine (residency lists
            // often name such regions) if it is a real region name.
            if !known_regions.iter().any(|(_, r)| *r == region_name)
                && !shipped_regions.knows(region_name)
            {
                check.fail(
                    region.span(),
                    format!("job `{name}`: unknown region `{region_name}`"),
                    "use a region name as the catalog writes it (e.g. us-east-1, eastus, \
                     us-central1); `skyweave offerings` lists them",
                );
            }
        }
        let mut accelerators = Vec::new();
        if raw_job.accelerators.get_ref().is_empty() {
            check.fail(
                raw_job.accelerators.span(),
                format!("job `{name}`: accelerators is empty"),
                "list at least one accelerator, e.g. accelerators = [\"H100:8\"]",
            );
        }
        for alternative in raw_job.accelerators.get_ref() {
            let span = alternative.span();
            let (given, count, speed) = match alternative.get_ref() {
                RawAlternative::Short(text) => {
                    let Some((given, count)) = text.rsplit_once(':') else {
                        check.fail(
                            span,
                            format!("job `{name}`: accelerator `{text}` has no count"),
                            "write NAME:COUNT, e.g. \"H100:8\"",
                        );
                        continue;
                    };
                    match count.trim().parse::<i64>() {
                        Ok(count) => (given.trim().to_string(), count, 1.0),
                        Err(_) => {
                            check.fail(
                                span,
                                format!("job `{name}`: `{count}` in `{text}` is not a count"),
                                "write NAME:COUNT with a whole number, e.g. \"H100:8\"",
                            );
                            continue;
                        }
                    }
                }
                RawAlternative::Full(table) => {
                    (table.name.trim().to_string(), table.count, table.speed.unwrap_or(1.0))
                }
            };
            let Some(canonical) = catalog.canonical_name(&given) else {
                let lower = given.to_ascii_lowercase();
                let mut similar: Vec<&str> = catalog
                    .accelerator_names()
                    .filter(|known| {
                        let known = known.to_ascii_lowercase();
                        !lower.is_empty()
                            && (known.contains(&lower)
                                || lower.contains(&known)
                                || known.get(..3) == lower.get(..3))
                    })
                    .collect();
                if similar.is_empty() {
                    similar = catalog.accelerator_names().collect();
                }
                check.fail(
                    span,
                    format!("job `{name}`: unknown accelerator `{given}`"),
                    format!("use an accelerator the catalog sells, e.g. {}", similar.join(", ")),
                );
                continue;
            };
            let counts = catalog.counts(canonical);
            let Some(count) = u32::try_from(count).ok().filter(|c| counts.contains(c)) else {
                let sold: Vec<String> = counts.iter().map(u32::to_string).collect();
                check.fail(
                    span,
                    format!("job `{name}`: no instance has {count} {canonical} per node"),
                    format!("{canonical} is sold {} per node", sold.join(", ")),
                );
                continue;
            };
            if !(MIN_SPEED..=MAX_SPEED).contains(&speed) {
                check.fail(
                    span,
                    format!("job `{name}`: speed {speed:?} for {canonical} is not a speed"),
                    "give the speed relative to 1.0, from 0.001 to 1000 (1.3 is 30% faster)",
                );
                continue;
            }
            accelerators.push(Alternative { name: canonical.to_string(), count, speed });
        }
        let mut data = Vec::new();
        for (index, dataset) in raw_job.data.iter().enumerate() {
            let span = dataset.span();
            let dataset = dataset.get_ref();
            let data_name = dataset.name.clone().unwrap_or_else(|| format!("data[{index}]"));
            if !(dataset.size_gb >= 0.0 && dataset.size_gb <= MAX_DATA_GB) {
                check.fail(
                    span.clone(),
                    format!(
                        "job `{name}`: {data_name}: size_gb {:?} is not a size",
                        dataset.size_gb
                    ),
                    "give the size in GB, 0 to 1000000000",
                );
            }
            if dataset.locations.is_empty() {
                check.fail(
                    span.clone(),
                    format!("job `{name}`: {data_name} has no locations"),
                    "list where the data is, e.g. locations = [\"aws:us-east-1\"]",
                );
            }
            let mut locations = Vec::new();
            for location in &dataset.locations {
                match location.get_ref().split_once(':') {
                    Some((cloud, region)) if !cloud.is_empty() && !region.is_empty() => {
                        if !known_clouds.contains(cloud) {
                            check.fail(
                                location.span(),
                                format!(
                                    "job `{name}`: data location `{}`: unknown cloud `{cloud}`",
                                    location.get_ref()
                                ),
                                format!(
                                    "use a cloud the catalog or the estate has, in lower case: {}",
                                    known_clouds.iter().copied().collect::<Vec<_>>().join(", ")
                                ),
                            );
                        } else if !known_regions.contains(&(cloud, region))
                            && !shipped_regions.knows(region)
                        {
                            check.fail(
                                location.span(),
                                format!(
                                    "job `{name}`: data location `{}`: unknown region `{region}`",
                                    location.get_ref()
                                ),
                                "use a region name as the cloud writes it, e.g. aws:us-east-1, \
                                 azure:eastus, gcp:us-central1",
                            );
                        }
                        locations.push((cloud.to_string(), region.to_string()));
                    }
                    _ => check.fail(
                        location.span(),
                        format!(
                            "job `{name}`: data location `{}` is not CLOUD:REGION",
                            location.get_ref()
                        ),
                        "write the cloud and region, e.g. \"aws:us-east-1\" or \"azure:eastus\"",
                    ),
                }
            }
            data.push(Dataset { name: data_name, size_gb: dataset.size_gb, locations });
        }
        if check.errors.len() == before {
            jobs.push(Job {
                name,
                nodes: nodes as u32,
                hours,
                spot: raw_job.spot,
                deadline_hours: deadline.map(|(d, _)| d),
                clouds: raw_job.clouds.into_iter().map(Spanned::into_inner).collect(),
                regions: raw_job.regions.into_iter().map(Spanned::into_inner).collect(),
                accelerators,
                data,
            });
        }
    }
    if check.errors.is_empty() {
        Ok(jobs)
    } else {
        Err(ConfigErrors(check.errors))
    }
}

#[cfg(test)]
mod tests;
