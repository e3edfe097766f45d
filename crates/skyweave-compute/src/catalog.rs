//! Accelerator offerings, read from CSV files in the SkyPilot catalog v8
//! format (`catalogs/v8/<cloud>/vms.csv`), plus the estate's private
//! offerings.
//!
//! Columns are found by their header names, so the AWS, Azure and GCP
//! layouts (which order them differently, and only AWS and GCP have
//! `AvailabilityZone`) are read by one parser. Required: `InstanceType`,
//! `AcceleratorName`, `AcceleratorCount`, `Price`, `SpotPrice`, `Region`.
//!
//! GCP prices the host VM and the accelerator on separate rows of the same
//! zone: a host row has an instance type and no accelerator, an accelerator
//! row an accelerator and no instance type. An offering is a host row plus
//! the accelerator row that the machine type carries (`a3-highgpu-8g` carries
//! 8 H100), and its price is their sum. TPU rows stand alone: the TPU VM's
//! price is included in the accelerator row.
//!
//! Rows that cannot be offered (no accelerator, no price at all, a GPU row
//! with no host in its zone) are skipped and counted, because the published
//! catalogs contain them; rows that are malformed (a field that is not a
//! number, a negative price) are errors naming the file, line and column.
//!
//! Two known errors of the published data are corrected on load (see
//! [`ERRATA`]); each correction is listed in [`Catalog::notes`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use skyweave_core::compute::{PrivateKind, PrivateOffering};
use skyweave_core::config::{ConfigError, ConfigErrors};

/// The catalog shipped with skyweave (see `catalog/SOURCE.md`).
pub const SHIPPED: [(&str, &str); 3] = [
    ("aws", include_str!("../catalog/aws.csv")),
    ("azure", include_str!("../catalog/azure.csv")),
    ("gcp", include_str!("../catalog/gcp.csv")),
];

/// Corrections to the published data: (cloud, instance type, accelerator,
/// accelerators per node, why).
pub const ERRATA: [(&str, &str, &str, u32, &str); 2] = [
    (
        "azure",
        "Standard_ND96isr_H100_v5",
        "H100",
        8,
        "the catalog says 12 H100; the VM has 8 (Azure ND H100 v5 series documentation)",
    ),
    (
        "aws",
        "trn2.48xlarge",
        "Trainium2",
        16,
        "the catalog leaves the accelerator empty; the instance has 16 Trainium2 chips \
         (AWS Trn2 documentation)",
    ),
];

/// Where an offering's row is (for explanations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Capacity the estate declared, with its count of nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Private {
    pub name: String,
    pub kind: PrivateKind,
    pub nodes: u32,
}

/// One node type that can be bought in one zone (or region, where the
/// catalog has no zones).
#[derive(Debug, Clone, PartialEq)]
pub struct Offering {
    pub cloud: String,
    pub region: String,
    pub zone: Option<String>,
    pub instance_type: String,
    pub accelerator: String,
    /// Accelerators per node.
    pub accelerator_count: u32,
    pub vcpus: Option<f64>,
    pub memory_gib: Option<f64>,
    /// USD per node-hour, on demand (or the private price).
    pub on_demand: Option<f64>,
    /// USD per node-hour, spot.
    pub spot: Option<f64>,
    pub private: Option<Private>,
    pub origin: Origin,
}

impl Offering {
    /// The zone, or the region where the catalog has no zones.
    pub fn place(&self) -> &str {
        self.zone.as_deref().unwrap_or(&self.region)
    }
}

/// A row that was read but offers nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub origin: Origin,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub offerings: Vec<Offering>,
    pub skipped: Vec<Skipped>,
    /// Corrections applied to the source data.
    pub notes: Vec<String>,
    /// Every accelerator name seen (lower case -> as written), priced or not.
    names: BTreeMap<String, String>,
    /// Every (name, count) seen, priced or not.
    shapes: BTreeSet<(String, u32)>,
    /// (lower-case name, count) -> indices into `offerings`.
    index: HashMap<(String, u32), Vec<usize>>,
}

/// One catalog file: the cloud it describes, a name for errors, its text.
#[derive(Debug, Clone)]
pub struct CatalogFile {
    pub cloud: String,
    pub name: String,
    pub text: String,
}

impl Catalog {
    /// The shipped catalog. Its files are checked by tests, so failing to
    /// parse them is a build defect.
    pub fn shipped() -> Catalog {
        let files: Vec<CatalogFile> = SHIPPED
            .iter()
            .map(|(cloud, text)| CatalogFile {
                cloud: cloud.to_string(),
                name: format!("<shipped catalog>/{cloud}.csv"),
                text: text.to_string(),
            })
            .collect();
        Catalog::parse(&files).expect("the shipped catalog parses")
    }

    /// Reads catalog files; every malformed row of every file is reported.
    pub fn parse(files: &[CatalogFile]) -> Result<Catalog, ConfigErrors> {
        let mut catalog = Catalog::default();
        let mut errors = Vec::new();
        for file in files {
            parse_file(file, &mut catalog, &mut errors);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        catalog.dedupe();
        catalog.reindex();
        Ok(catalog)
    }

    /// Adds the estate's private offerings.
    pub fn add_private(&mut self, offerings: &[PrivateOffering]) {
        for private in offerings {
            self.names
                .entry(private.accelerator.to_ascii_lowercase())
                .or_insert_with(|| private.accelerator.clone());
            self.shapes
                .insert((private.accelerator.to_ascii_lowercase(), private.accelerator_count));
            self.offerings.push(Offering {
                cloud: private.cloud.clone(),
                region: private.region.clone(),
                zone: private.zone.clone(),
                instance_type: private.instance_type.clone(),
                accelerator: private.accelerator.clone(),
                accelerator_count: private.accelerator_count,
                vcpus: None,
                memory_gib: None,
                on_demand: Some(private.price_per_hour),
                spot: None,
                private: Some(Private {
                    name: private.name.clone(),
                    kind: private.kind,
                    nodes: private.nodes,
                }),
                origin: Origin { file: Arc::from("estate [[offering]]"), line: 0 },
            });
        }
        self.reindex();
    }

    /// Offerings of `count` accelerators named `name` (case-insensitive) per node.
    pub fn matching(&self, name: &str, count: u32) -> &[usize] {
        self.index.get(&(name.to_ascii_lowercase(), count)).map_or(&[], Vec::as_slice)
    }

    /// The accelerator's name as the catalog writes it, if any row names it.
    pub fn canonical_name(&self, name: &str) -> Option<&str> {
        self.names.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// Every accelerator name, as written.
    pub fn accelerator_names(&self) -> impl Iterator<Item = &str> {
        self.names.values().map(String::as_str)
    }

    /// The per-node counts in which an accelerator is sold.
    pub fn counts(&self, name: &str) -> Vec<u32> {
        let name = name.to_ascii_lowercase();
        self.shapes.iter().filter(|(n, _)| *n == name).map(|(_, c)| *c).collect()
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (i, offering) in self.offerings.iter().enumerate() {
            self.index
                .entry((offering.accelerator.to_ascii_lowercase(), offering.accelerator_count))
                .or_default()
                .push(i);
        }
    }

    /// The published catalogs list some zones twice; keep the first row.
    fn dedupe(&mut self) {
        let mut seen = HashSet::new();
        let before = std::mem::take(&mut self.offerings);
        for offering in before {
            let key = (
                offering.cloud.clone(),
                offering.place().to_string(),
                offering.instance_type.clone(),
                offering.accelerator.clone(),
                offering.accelerator_count,
            );
            if seen.insert(key) {
                self.offerings.push(offering);
            } else {
                self.skipped.push(Skipped {
                    origin: offering.origin.clone(),
                    reason: "the same instance in the same zone is listed earlier".into(),
                });
            }
        }
    }
}

const REQUIRED: [&str; 6] =
    ["InstanceType", "AcceleratorName", "AcceleratorCount", "Price", "SpotPrice", "Region"];

struct Columns {
    instance: usize,
    accelerator: usize,
    count: usize,
    price: usize,
    spot: usize,
    region: usize,
    zone: Option<usize>,
    vcpus: Option<usize>,
    memory: Option<usize>,
}

/// A GCP host row, waiting for its accelerator row.
struct Host {
    instance_type: String,
    vcpus: Option<f64>,
    memory_gib: Option<f64>,
    price: Option<f64>,
    spot: Option<f64>,
}

/// A GCP accelerator row, waiting for its host.
struct AcceleratorRow {
    region: String,
    zone: Option<String>,
    name: String,
    count: u32,
    price: Option<f64>,
    spot: Option<f64>,
    origin: Origin,
}

fn parse_file(file: &CatalogFile, catalog: &mut Catalog, errors: &mut Vec<ConfigError>) {
    let file_name: Arc<str> = Arc::from(file.name.as_str());
    let at = |offset: usize, message: String, fix: &str| {
        ConfigError::at(&file.text, &file.name, offset..offset, message, fix)
    };
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(file.text.as_bytes());
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(error) => {
            errors.push(at(0, format!("unreadable header: {error}"), "give a CSV header line"));
            return;
        }
    };
    let find = |name: &str| headers.iter().position(|h| h.trim() == name);
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|name| find(name).is_none()).collect();
    if !missing.is_empty() {
        errors.push(at(
            0,
            format!("the header lacks {}", missing.join(", ")),
            "use a SkyPilot catalog v8 vms.csv (header InstanceType,AcceleratorName,\
             AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,...)",
        ));
        return;
    }
    let columns = Columns {
        instance: find("InstanceType").unwrap_or_default(),
        accelerator: find("AcceleratorName").unwrap_or_default(),
        count: find("AcceleratorCount").unwrap_or_default(),
        price: find("Price").unwrap_or_default(),
        spot: find("SpotPrice").unwrap_or_default(),
        region: find("Region").unwrap_or_default(),
        zone: find("AvailabilityZone"),
        vcpus: find("vCPUs"),
        memory: find("MemoryGiB"),
    };

    let mut hosts: HashMap<String, Vec<Host>> = HashMap::new();
    let mut pending: Vec<AcceleratorRow> = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                let offset = error.position().map_or(0, |p| p.byte() as usize);
                errors.push(at(
                    offset,
                    format!("malformed row: {error}"),
                    "every row needs as many fields as the header; quote fields with commas",
                ));
                continue;
            }
        };
        let position = record.position().map_or(0, |p| p.byte() as usize);
        let line = record.position().map_or(0, |p| p.line() as usize);
        let origin = Origin { file: file_name.clone(), line };
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        let field_at = |i: usize| field_offset(&file.text, position, i);
        let mut row_ok = true;
        let mut number = |i: Option<usize>, what: &str, price: bool| -> Option<f64> {
            let i = i?;
            let text = field(i);
            if text.is_empty() {
                return None;
            }
            match text.parse::<f64>() {
                Ok(value) if value.is_finite() && (!price || value >= 0.0) => Some(value),
                Ok(value) if price => {
                    errors.push(at(
                        field_at(i),
                        format!("{what} {value} is not a price"),
                        "prices are USD per hour, 0 or more; leave the field empty if unknown",
                    ));
                    row_ok = false;
                    None
                }
                _ => {
                    errors.push(at(
                        field_at(i),
                        format!("{what} `{text}` is not a number"),
                        "write a decimal number, or leave the field empty",
                    ));
                    row_ok = false;
                    None
                }
            }
        };
        let price = number(Some(columns.price), "Price", true);
        let spot = number(Some(columns.spot), "SpotPrice", true);
        let count_value = number(Some(columns.count), "AcceleratorCount", false);
        let vcpus = number(columns.vcpus, "vCPUs", false);
        let memory_gib = number(columns.memory, "MemoryGiB", false);
        let mut fractional = false;
        let mut count = match count_value {
            None => None,
            Some(c) if c >= 1.0 && c.fract() == 0.0 && c <= 65536.0 => Some(c as u32),
            // Published catalogs list shares of one GPU (Azure NVads A10 v5:
            // 1/6, 1/3, 1/2): real offerings, but not whole accelerators.
            Some(c) if c > 0.0 && c <= 65536.0 => {
                fractional = true;
                None
            }
            Some(c) => {
                errors.push(at(
                    field_at(columns.count),
                    format!("AcceleratorCount {c} is not a number of accelerators"),
                    "write the accelerators per instance, more than 0 (8 or 8.0)",
                ));
                row_ok = false;
                None
            }
        };
        if !row_ok {
            continue;
        }
        if fractional {
            catalog.skipped.push(Skipped {
                origin: Origin { file: file_name.clone(), line },
                reason: format!(
                    "{}: a fraction of an accelerator ({}) is not planned",
                    field(columns.instance),
                    field(columns.count)
                ),
            });
            continue;
        }
        let instance_type = field(columns.instance).to_string();
        let mut accelerator = field(columns.accelerator).to_string();
        let region = field(columns.region).to_string();
        let zone = columns.zone.map(field).filter(|z| !z.is_empty()).map(str::to_string);
        if region.is_empty() {
            errors.push(at(
                field_at(columns.region),
                "Region is empty".into(),
                "every row needs the region it is sold in",
            ));
            continue;
        }
        for (cloud, instance, name, fixed, why) in ERRATA {
            if cloud == file.cloud && instance == instance_type {
                if accelerator != name || count != Some(fixed) {
                    let note = format!("{origin}: {instance} corrected to {name} x{fixed}: {why}");
                    if !catalog.notes.contains(&note) {
                        catalog.notes.push(note);
                    }
                }
                accelerator = name.to_string();
                count = Some(fixed);
            }
        }

        if !accelerator.is_empty() {
            catalog.names.entry(accelerator.to_ascii_lowercase()).or_insert(accelerator.clone());
            if let Some(count) = count {
                catalog.shapes.insert((accelerator.to_ascii_lowercase(), count));
            }
        }
        match (instance_type.is_empty(), accelerator.is_empty()) {
            (false, false) => {
                let Some(count) = count else {
                    catalog.skipped.push(Skipped {
                        origin,
                        reason: format!("{instance_type}: no AcceleratorCount"),
                    });
                    continue;
                };
                if price.is_none() && spot.is_none() {
                    catalog.skipped.push(Skipped {
                        origin,
                        reason: format!("{instance_type}: neither Price nor SpotPrice"),
                    });
                    continue;
                }
                catalog.offerings.push(Offering {
                    cloud: file.cloud.clone(),
                    region,
                    zone,
                    instance_type,
                    accelerator,
                    accelerator_count: count,
                    vcpus,
                    memory_gib,
                    on_demand: price,
                    spot,
                    private: None,
                    origin,
                });
            }
            (false, true) => {
                if gpu_of_host(&instance_type).is_some() {
                    let key = zone.clone().unwrap_or_else(|| region.clone());
                    hosts.entry(key).or_default().push(Host {
                        instance_type,
                        vcpus,
                        memory_gib,
                        price,
                        spot,
                    });
                } else {
                    catalog.skipped.push(Skipped {
                        origin,
                        reason: format!("{instance_type}: no accelerator"),
                    });
                }
            }
            (true, false) => {
                let Some(count) = count else {
                    catalog.skipped.push(Skipped {
                        origin,
                        reason: format!("{accelerator}: no AcceleratorCount"),
                    });
                    continue;
                };
                pending.push(AcceleratorRow {
                    region,
                    zone,
                    name: accelerator,
                    count,
                    price,
                    spot,
                    origin,
                });
            }
            (true, true) => {
                errors.push(at(
                    position,
                    "the row has neither InstanceType nor AcceleratorName".into(),
                    "name the instance type, the accelerator, or both",
                ));
            }
        }
    }

    // Pair accelerator rows with their hosts.
    for row in pending {
        let sum = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        if row.name.to_ascii_lowercase().starts_with("tpu-") {
            if row.price.is_none() && row.spot.is_none() {
                catalog.skipped.push(Skipped {
                    origin: row.origin,
                    reason: format!("{}: neither Price nor SpotPrice", row.name),
                });
                continue;
            }
            catalog.offerings.push(Offering {
                cloud: file.cloud.clone(),
                region: row.region,
                zone: row.zone,
                instance_type: row.name.clone(),
                accelerator: row.name,
                accelerator_count: row.count,
                vcpus: None,
                memory_gib: None,
                on_demand: row.price,
                spot: row.spot,
                private: None,
                origin: row.origin,
            });
            continue;
        }
        let key = row.zone.clone().unwrap_or_else(|| row.region.clone());
        let matching: Vec<&Host> = hosts
            .get(&key)
            .map(|hosts| {
                hosts
                    .iter()
                    .filter(|host| {
                        gpu_of_host(&host.instance_type).is_some_and(|(name, count)| {
                            name.eq_ignore_ascii_case(&row.name) && count == row.count
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        if matching.is_empty() {
            catalog.skipped.push(Skipped {
                origin: row.origin,
                reason: format!("{} x{}: no host VM row in {key}", row.name, row.count),
            });
            continue;
        }
        for host in matching {
            let (on_demand, spot) = (sum(host.price, row.price), sum(host.spot, row.spot));
            if on_demand.is_none() && spot.is_none() {
                catalog.skipped.push(Skipped {
                    origin: row.origin.clone(),
                    reason: format!("{} + {}: no complete price", host.instance_type, row.name),
                });
                continue;
            }
            catalog.offerings.push(Offering {
                cloud: file.cloud.clone(),
                region: row.region.clone(),
                zone: row.zone.clone(),
                instance_type: host.instance_type.clone(),
                accelerator: row.name.clone(),
                accelerator_count: row.count,
                vcpus: host.vcpus,
                memory_gib: host.memory_gib,
                on_demand,
                spot,
                private: None,
                origin: row.origin.clone(),
            });
        }
    }
}

/// The byte offset of field `index` of the CSV record starting at `start`
/// (`csv` reports record positions, not field positions).
fn field_offset(text: &str, start: usize, index: usize) -> usize {
    let mut field = 0;
    let mut quoted = false;
    for (offset, byte) in text.as_bytes().iter().enumerate().skip(start) {
        if field == index {
            return offset;
        }
        match byte {
            b'"' => quoted = !quoted,
            b',' if !quoted => field += 1,
            b'\n' if !quoted => break,
            _ => {}
        }
    }
    start
}

/// The GPUs a GCP accelerator-optimized or G2 machine type carries, from
/// Google's machine-type documentation.
pub fn gpu_of_host(machine_type: &str) -> Option<(&'static str, u32)> {
    let per_suffix = |rest: &str| -> Option<u32> { rest.strip_suffix('g')?.parse().ok() };
    let base = machine_type.strip_suffix("-nolssd").unwrap_or(machine_type);
    if let Some(rest) = base.strip_prefix("a2-highgpu-") {
        return Some(("A100", per_suffix(rest)?));
    }
    if let Some(rest) = base.strip_prefix("a2-megagpu-") {
        return Some(("A100", per_suffix(rest)?));
    }
    if let Some(rest) = base.strip_prefix("a2-ultragpu-") {
        return Some(("A100-80GB", per_suffix(rest)?));
    }
    if let Some(rest) = base.strip_prefix("a3-highgpu-") {
        return Some(("H100", per_suffix(rest)?));
    }
    if let Some(rest) = base.strip_prefix("a3-edgegpu-") {
        return Some(("H100", per_suffix(rest)?));
    }
    if let Some(rest) = base.strip_prefix("a3-megagpu-") {
        return Some(("H100-MEGA", per_suffix(rest)?));
    }
    if let Some(rest) = base.strip_prefix("a3-ultragpu-") {
        return Some(("H200", per_suffix(rest)?));
    }
    if let Some(rest) = base.strip_prefix("a4-highgpu-") {
        return Some(("B200", per_suffix(rest)?));
    }
    if let Some(rest) = base.strip_prefix("g2-standard-") {
        let count = match rest.parse::<u32>().ok()? {
            4 | 8 | 12 | 16 | 32 => 1,
            24 => 2,
            48 => 4,
            96 => 8,
            _ => return None,
        };
        return Some(("L4", count));
    }
    None
}

#[cfg(test)]
mod tests;
