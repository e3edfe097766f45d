//! `[[tenant]]` tables.

use std::collections::{BTreeSet, HashSet};

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use crate::estate::{Deployment, Model};
use crate::region::Proximity;
use crate::tenant::{Budget, Tenant};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    name: Spanned<String>,
    models: Option<Vec<Spanned<String>>>,
    clouds: Option<Vec<Spanned<String>>>,
    regions: Option<Vec<Spanned<String>>>,
    rpm: Option<Spanned<u32>>,
    tpm: Option<Spanned<u32>>,
    max_concurrency: Option<Spanned<u32>>,
    budget: Option<Spanned<RawBudget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    monthly_usd: f64,
    mode: Option<String>,
}

pub(super) fn validate_tenants(
    raw: Vec<Spanned<RawTenant>>,
    models: &[Model],
    deployments: &[Deployment],
    proximity: &Proximity,
    check: &mut Checker<'_>,
) -> Vec<Tenant> {
    let clouds: BTreeSet<&str> = deployments.iter().map(|d| d.cloud.as_str()).collect();
    let regions: HashSet<&str> = deployments.iter().map(|d| d.region.as_str()).collect();
    let mut names = HashSet::new();
    let mut tenants = Vec::new();
    for raw in raw {
        let raw = raw.into_inner();
        let name = raw.name.get_ref().trim().to_string();
        let before = check.errors.len();
        if name.is_empty() {
            check.fail(raw.name.span(), "[[tenant]] name is empty".into(), "name the tenant");
        } else if !names.insert(name.clone()) {
            check.fail(
                raw.name.span(),
                format!("[[tenant]] `{name}` is declared twice"),
                "give every tenant a unique name",
            );
        }
        for model in raw.models.iter().flatten() {
            if !models.iter().any(|m| &m.name == model.get_ref()) {
                check.fail(
                    model.span(),
                    format!(
                        "[[tenant]] `{name}`: no deployment serves model `{}`",
                        model.get_ref()
                    ),
                    format!(
                        "use one of the estate's models: {}",
                        models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
        for cloud in raw.clouds.iter().flatten() {
            if !clouds.contains(cloud.get_ref().as_str()) {
                check.warn(
                    cloud.span(),
                    format!("[[tenant]] `{name}`: no deployment is on cloud `{}`", cloud.get_ref()),
                    format!(
                        "the estate's clouds are {}",
                        clouds.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
        // A misspelt region would silently narrow residency to nothing:
        // it must be a region the estate or the shipped table knows.
        for region in raw.regions.iter().flatten() {
            let region_name = region.get_ref().as_str();
            if !regions.contains(region_name) && !proximity.knows(region_name) {
                check.fail(
                    region.span(),
                    format!("[[tenant]] `{name}`: unknown region `{region_name}`"),
                    "write the region as its cloud does (westeurope, eu-central-1, europe-west4)",
                );
            }
        }
        for (field, value) in
            [("rpm", &raw.rpm), ("tpm", &raw.tpm), ("max_concurrency", &raw.max_concurrency)]
        {
            if let Some(value) = value {
                if *value.get_ref() == 0 {
                    check.fail(
                        value.span(),
                        format!("[[tenant]] `{name}`: {field} = 0 admits nothing"),
                        format!("give {field} at least 1, or remove it for no limit"),
                    );
                }
            }
        }
        let budget = raw.budget.as_ref().and_then(|budget| {
            let b = budget.get_ref();
            let hard = match b.mode.as_deref() {
                None | Some("hard") => true,
                Some("soft") => false,
                Some(other) => {
                    check.fail(
                        budget.span(),
                        format!("[[tenant]] `{name}`: unknown budget mode `{other}`"),
                        "use mode = \"hard\" (refuse once reached) or \"soft\" (alert only)",
                    );
                    return None;
                }
            };
            if !(b.monthly_usd.is_finite() && b.monthly_usd > 0.0) {
                check.fail(
                    budget.span(),
                    format!("[[tenant]] `{name}`: monthly_usd {:?} is not a budget", b.monthly_usd),
                    "give the monthly budget in USD, more than 0",
                );
                return None;
            }
            Some(Budget { monthly_usd: b.monthly_usd, hard })
        });
        if check.errors.len() == before {
            let list = |values: Option<Vec<Spanned<String>>>| {
                values.map(|values| values.into_iter().map(Spanned::into_inner).collect())
            };
            tenants.push(Tenant {
                name,
                models: list(raw.models),
                clouds: list(raw.clouds),
                regions: list(raw.regions),
                rpm: raw.rpm.map(Spanned::into_inner),
                tpm: raw.tpm.map(Spanned::into_inner),
                max_concurrency: raw.max_concurrency.map(Spanned::into_inner),
                budget,
            });
        }
    }
    tenants
}
