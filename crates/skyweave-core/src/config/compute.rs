//! The compute sections of the estate file: `[[offering]]`, `[[quota]]` and
//! `[[commitment]]`.

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use crate::compute::{
    Commitment, DiscountTier, PrivateKind, PrivateOffering, Quota, QuotaPurchase,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOffering {
    name: Spanned<String>,
    kind: Spanned<String>,
    cloud: Spanned<String>,
    region: Spanned<String>,
    zone: Option<String>,
    instance_type: Option<String>,
    accelerator: Spanned<String>,
    accelerator_count: Spanned<i64>,
    price_per_hour: Spanned<f64>,
    nodes: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuota {
    name: Option<String>,
    cloud: Spanned<String>,
    region: Option<String>,
    #[serde(default)]
    accelerators: Vec<String>,
    purchase: Option<Spanned<String>>,
    max_accelerators: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommitment {
    cloud: Spanned<String>,
    total_usd: Spanned<f64>,
    period: Spanned<RawPeriod>,
    #[serde(default)]
    discount_tiers: Vec<Spanned<RawTier>>,
    spent_usd: Option<Spanned<f64>>,
    burn_down_weight: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeriod {
    start: RawDate,
    end: RawDate,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDate {
    Text(String),
    Date(toml::value::Datetime),
}

impl RawDate {
    fn text(&self) -> String {
        match self {
            RawDate::Text(text) => text.clone(),
            RawDate::Date(date) => date.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    above_usd: f64,
    discount: f64,
}

pub(super) fn validate_offerings(
    raw: Vec<Spanned<RawOffering>>,
    check: &mut Checker<'_>,
) -> Vec<PrivateOffering> {
    let mut names = HashSet::new();
    let mut offerings = Vec::new();
    for raw in raw {
        let raw = raw.into_inner();
        let name = raw.name.get_ref().clone();
        let mut ok = true;
        if !names.insert(name.clone()) {
            check.fail(
                raw.name.span(),
                format!("[[offering]] name `{name}` is used twice"),
                "give every [[offering]] a unique name",
            );
            ok = false;
        }
        let kind = match raw.kind.get_ref().as_str() {
            "reserved" => PrivateKind::Reserved,
            "capacity_block" => PrivateKind::CapacityBlock,
            "on_premises" => PrivateKind::OnPremises,
            other => {
                check.fail(
                    raw.kind.span(),
                    format!("[[offering]] `{name}`: unknown kind `{other}`"),
                    "use one of: reserved, capacity_block, on_premises",
                );
                ok = false;
                PrivateKind::Reserved
            }
        };
        for (field, value) in
            [("cloud", &raw.cloud), ("region", &raw.region), ("accelerator", &raw.accelerator)]
        {
            if value.get_ref().trim().is_empty() {
                check.fail(
                    value.span(),
                    format!("[[offering]] `{name}`: `{field}` is empty"),
                    format!("name the offering's {field}"),
                );
                ok = false;
            }
        }
        let count = *raw.accelerator_count.get_ref();
        if !(1..=4096).contains(&count) {
            check.fail(
                raw.accelerator_count.span(),
                format!("[[offering]] `{name}`: accelerator_count {count} is out of range"),
                "give the accelerators per node, 1 to 4096",
            );
            ok = false;
        }
        let price = *raw.price_per_hour.get_ref();
        if !(price.is_finite() && price >= 0.0) {
            check.fail(
                raw.price_per_hour.span(),
                format!("[[offering]] `{name}`: price_per_hour {price} is not a price"),
                "give USD per node-hour, 0 or more (0 for capacity already paid for)",
            );
            ok = false;
        }
        let nodes = *raw.nodes.get_ref();
        if !(1..=1_000_000).contains(&nodes) {
            check.fail(
                raw.nodes.span(),
                format!("[[offering]] `{name}`: nodes {nodes} is out of range"),
                "give how many nodes of this offering exist, at least 1",
            );
            ok = false;
        }
        if ok {
            offerings.push(PrivateOffering {
                instance_type: raw.instance_type.unwrap_or_else(|| name.clone()),
                name,
                kind,
                cloud: raw.cloud.into_inner(),
                region: raw.region.into_inner(),
                zone: raw.zone,
                accelerator: raw.accelerator.into_inner(),
                accelerator_count: count as u32,
                price_per_hour: price,
                nodes: nodes as u32,
            });
        }
    }
    offerings
}

pub(super) fn validate_quotas(raw: Vec<Spanned<RawQuota>>, check: &mut Checker<'_>) -> Vec<Quota> {
    let mut quotas = Vec::new();
    for raw in raw {
        let span = raw.span();
        let raw = raw.into_inner();
        let cloud = raw.cloud.get_ref().clone();
        let name = raw.name.clone().unwrap_or_else(|| {
            let scope = raw.region.as_deref().unwrap_or("all regions");
            let accelerators = if raw.accelerators.is_empty() {
                "all accelerators".to_string()
            } else {
                raw.accelerators.join("+")
            };
            format!("{cloud}/{scope}/{accelerators}")
        });
        let mut ok = true;
        if cloud.trim().is_empty() {
            check.fail(raw.cloud.span(), "[[quota]]: `cloud` is empty".into(), "name the cloud");
            ok = false;
        }
        let purchase = match raw.purchase.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("any") => QuotaPurchase::Any,
            Some("on_demand") => QuotaPurchase::OnDemand,
            Some("spot") => QuotaPurchase::Spot,
            Some(other) => {
                check.fail(
                    raw.purchase.as_ref().map_or(span.clone(), |p| p.span()),
                    format!("[[quota]] `{name}`: unknown purchase `{other}`"),
                    "use one of: any, on_demand, spot",
                );
                ok = false;
                QuotaPurchase::Any
            }
        };
        let max = *raw.max_accelerators.get_ref();
        if !(0..=10_000_000).contains(&max) {
            check.fail(
                raw.max_accelerators.span(),
                format!("[[quota]] `{name}`: max_accelerators {max} is out of range"),
                "give the quota in accelerators, 0 or more",
            );
            ok = false;
        }
        if ok {
            quotas.push(Quota {
                name,
                cloud,
                region: raw.region,
                accelerators: raw.accelerators,
                purchase,
                max_accelerators: max as u32,
            });
        }
    }
    quotas
}

pub(super) fn validate_commitments(
    raw: Vec<Spanned<RawCommitment>>,
    check: &mut Checker<'_>,
) -> Vec<Commitment> {
    let mut clouds = HashSet::new();
    let mut commitments = Vec::new();
    for raw in raw {
        let raw = raw.into_inner();
        let cloud = raw.cloud.get_ref().clone();
        let mut ok = true;
        if !clouds.insert(cloud.clone()) {
            check.fail(
                raw.cloud.span(),
                format!("[[commitment]] for `{cloud}` is declared twice"),
                "declare one commitment per cloud",
            );
            ok = false;
        }
        let total = *raw.total_usd.get_ref();
        if !(total.is_finite() && total >= 0.0) {
            check.fail(
                raw.total_usd.span(),
                format!("[[commitment]] `{cloud}`: total_usd {total} is not an amount"),
                "give the committed spend in USD, 0 or more",
            );
            ok = false;
        }
        let (start, end) = (raw.period.get_ref().start.text(), raw.period.get_ref().end.text());
        if !is_iso_date(&start) || !is_iso_date(&end) || start > end {
            check.fail(
                raw.period.span(),
                format!("[[commitment]] `{cloud}`: period {start} .. {end} is not a date range"),
                "write period = { start = \"YYYY-MM-DD\", end = \"YYYY-MM-DD\" } with start <= end",
            );
            ok = false;
        }
        let mut tiers = Vec::new();
        for tier in &raw.discount_tiers {
            let t = tier.get_ref();
            let valid = t.above_usd.is_finite()
                && t.above_usd >= 0.0
                && (0.0..1.0).contains(&t.discount)
                && tiers.last().is_none_or(|last: &DiscountTier| t.above_usd > last.above_usd);
            if !valid {
                check.fail(
                    tier.span(),
                    format!("[[commitment]] `{cloud}`: discount tier is invalid"),
                    "tiers need above_usd >= 0 in increasing order and a discount in 0..1 \
                     (0.08 is 8%)",
                );
                ok = false;
            }
            tiers.push(DiscountTier { above_usd: t.above_usd, discount: t.discount });
        }
        if tiers.first().is_none_or(|t| t.above_usd > 0.0) {
            tiers.insert(0, DiscountTier { above_usd: 0.0, discount: 0.0 });
        }
        let spent = raw.spent_usd.as_ref().map_or(0.0, |s| *s.get_ref());
        if !(spent.is_finite() && spent >= 0.0) {
            let span = raw.spent_usd.as_ref().map(|s| s.span()).unwrap_or_default();
            check.fail(
                span,
                format!("[[commitment]] `{cloud}`: spent_usd {spent} is not an amount"),
                "give the spend to date in USD, 0 or more",
            );
            ok = false;
        }
        let weight = raw.burn_down_weight.as_ref().map_or(0.0, |w| *w.get_ref());
        if !(0.0..=1.0).contains(&weight) {
            let span = raw.burn_down_weight.as_ref().map(|s| s.span()).unwrap_or_default();
            check.fail(
                span,
                format!("[[commitment]] `{cloud}`: burn_down_weight {weight} is out of range"),
                "0 values committed spend at its discounted price, 1 treats it as already paid",
            );
            ok = false;
        }
        if ok {
            commitments.push(Commitment {
                cloud,
                total_usd: total,
                start,
                end,
                discount_tiers: tiers,
                spent_usd: spent,
                burn_down_weight: weight,
            });
        }
    }
    commitments
}

fn is_iso_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes.iter().enumerate().all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit())
        && (1..=12).contains(&text[5..7].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&text[8..10].parse::<u32>().unwrap_or(0))
}
