//! What it costs to move data out of a cloud region, per GB.
//!
//! The shipped table (`data/egress.csv`) carries published list prices; its
//! source and date are in `crates/skyweave-compute/catalog/SOURCE.md`. The
//! source cloud bills the transfer, so the price depends on where the data
//! is and on the scope of the move:
//!
//! - the same region: free (AWS bills cross-zone traffic separately; that is
//!   not modelled);
//! - another region of the same cloud: on GCP the price depends on the
//!   source's area (us, europe, asia) and on whether the destination is on
//!   the same continent; AWS and Azure charge one inter-region price within a
//!   continent;
//! - another cloud (internet egress).
//!
//! Where the table has no row for a case, the closest published row is used
//! and the choice is stated here: AWS regions outside the US use the US
//! prices; GCP regions outside us/europe use the asia prices (the highest
//! listed); Azure traffic between continents, which the table does not list,
//! is priced as internet egress. Clouds the table does not know (an
//! on-premises cluster) cost nothing to move data out of.

use std::collections::HashMap;

const SHIPPED: &str = include_str!("../data/egress.csv");

/// How far a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    SameRegion,
    SameCloudSameContinent,
    SameCloudOtherContinent,
    OtherCloud,
}

impl Scope {
    pub fn describe(self) -> &'static str {
        match self {
            Scope::SameRegion => "same region",
            Scope::SameCloudSameContinent => "another region of the same cloud",
            Scope::SameCloudOtherContinent => "another continent of the same cloud",
            Scope::OtherCloud => "another cloud",
        }
    }
}

/// Per-GB egress prices.
#[derive(Debug, Clone)]
pub struct EgressPrices {
    /// (cloud, area, scope column of the CSV) -> USD per GB.
    rows: HashMap<(String, String, String), f64>,
}

impl EgressPrices {
    /// The shipped table.
    pub fn shipped() -> EgressPrices {
        let mut rows = HashMap::new();
        for line in SHIPPED.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            // The shipped file is checked by a test below.
            if let [cloud, area, scope, price, ..] = fields.as_slice() {
                if let Ok(price) = price.parse::<f64>() {
                    rows.insert((cloud.to_string(), area.to_string(), scope.to_string()), price);
                }
            }
        }
        EgressPrices { rows }
    }

    /// USD per GB to move data from one region to another.
    pub fn usd_per_gb(
        &self,
        from_cloud: &str,
        from_region: &str,
        to_cloud: &str,
        to_region: &str,
    ) -> (f64, Scope) {
        let same_continent = continent(from_region) == continent(to_region)
            && continent(from_region) != Continent::Unknown;
        let scope = if from_cloud != to_cloud {
            Scope::OtherCloud
        } else if from_region == to_region {
            return (0.0, Scope::SameRegion);
        } else if same_continent {
            Scope::SameCloudSameContinent
        } else {
            Scope::SameCloudOtherContinent
        };
        let price = match from_cloud {
            "aws" => match scope {
                Scope::OtherCloud => self.get("aws", "us", "other_cloud_or_internet"),
                _ => self.get("aws", "us", "same_cloud_other_region"),
            },
            "gcp" => match scope {
                Scope::OtherCloud => self.get("gcp", "any", "other_cloud_or_internet"),
                Scope::SameCloudOtherContinent => {
                    self.get("gcp", "any", "same_cloud_other_continent")
                }
                _ => {
                    let area = match continent(from_region) {
                        Continent::NorthAmerica => "us",
                        Continent::Europe => "europe",
                        _ => "asia",
                    };
                    self.get("gcp", area, "same_cloud_other_region_same_continent")
                }
            },
            "azure" => match scope {
                Scope::SameCloudSameContinent => {
                    self.get("azure", "us_or_europe", "same_cloud_other_region_same_continent")
                }
                _ => self.get("azure", "us_or_europe", "other_cloud_or_internet"),
            },
            _ => 0.0,
        };
        (price, scope)
    }

    fn get(&self, cloud: &str, area: &str, scope: &str) -> f64 {
        self.rows
            .get(&(cloud.to_string(), area.to_string(), scope.to_string()))
            .copied()
            .unwrap_or(0.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continent {
    NorthAmerica,
    SouthAmerica,
    Europe,
    Asia,
    Oceania,
    MiddleEast,
    Africa,
    Unknown,
}

/// The continent of a region of AWS, Azure or GCP, from its name.
pub fn continent(region: &str) -> Continent {
    let r = region.to_ascii_lowercase();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| r.starts_with(p));
    let contains = |words: &[&str]| words.iter().any(|w| r.contains(w));
    // AWS and GCP name regions by area prefix.
    if starts(&["us-", "ca-", "northamerica-", "mx-"]) {
        return Continent::NorthAmerica;
    }
    if starts(&["eu-", "europe-"]) {
        return Continent::Europe;
    }
    if starts(&["sa-", "southamerica-"]) {
        return Continent::SouthAmerica;
    }
    if starts(&["ap-southeast-2", "ap-southeast-4", "australia-"]) {
        return Continent::Oceania;
    }
    if starts(&["ap-", "asia-"]) {
        return Continent::Asia;
    }
    if starts(&["me-", "il-"]) {
        return Continent::MiddleEast;
    }
    if starts(&["af-"]) {
        return Continent::Africa;
    }
    // Azure names regions by geography words.
    if contains(&["australia", "newzealand"]) {
        return Continent::Oceania;
    }
    if contains(&["brazil", "chile"]) {
        return Continent::SouthAmerica;
    }
    if contains(&["southafrica"]) {
        return Continent::Africa;
    }
    if contains(&["uae", "qatar", "israel", "saudi"]) {
        return Continent::MiddleEast;
    }
    if contains(&[
        "europe",
        "uk",
        "france",
        "germany",
        "sweden",
        "switzerland",
        "norway",
        "poland",
        "italy",
        "spain",
    ]) {
        return Continent::Europe;
    }
    if contains(&["asia", "japan", "korea", "india", "china", "taiwan", "indonesia", "malaysia"]) {
        return Continent::Asia;
    }
    if contains(&["us", "canada", "mexico"]) {
        return Continent::NorthAmerica;
    }
    Continent::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_row_parses() {
        let data_rows = SHIPPED.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
        assert_eq!(EgressPrices::shipped().rows.len(), data_rows);
        assert_eq!(data_rows, 10);
    }

    #[test]
    fn prices_follow_the_published_table() {
        let prices = EgressPrices::shipped();
        let cases = [
            ("aws", "us-east-1", "aws", "us-east-1", 0.0, Scope::SameRegion),
            ("aws", "us-east-1", "aws", "us-west-2", 0.02, Scope::SameCloudSameContinent),
            ("aws", "us-east-1", "aws", "eu-west-1", 0.02, Scope::SameCloudOtherContinent),
            ("aws", "us-east-1", "gcp", "us-east4", 0.09, Scope::OtherCloud),
            ("gcp", "us-central1", "gcp", "us-east4", 0.01, Scope::SameCloudSameContinent),
            ("gcp", "europe-west4", "gcp", "europe-west1", 0.02, Scope::SameCloudSameContinent),
            ("gcp", "asia-east1", "gcp", "asia-northeast1", 0.05, Scope::SameCloudSameContinent),
            ("gcp", "us-central1", "gcp", "europe-west4", 0.08, Scope::SameCloudOtherContinent),
            ("gcp", "us-central1", "azure", "eastus", 0.12, Scope::OtherCloud),
            ("azure", "eastus", "azure", "westus3", 0.02, Scope::SameCloudSameContinent),
            ("azure", "eastus", "aws", "us-east-1", 0.0875, Scope::OtherCloud),
            ("onprem", "dc1", "aws", "us-east-1", 0.0, Scope::OtherCloud),
        ];
        for (fc, fr, tc, tr, price, scope) in cases {
            let (got, got_scope) = prices.usd_per_gb(fc, fr, tc, tr);
            assert_eq!((got, got_scope), (price, scope), "{fc}:{fr} -> {tc}:{tr}");
        }
    }

    #[test]
    fn continents_of_catalog_regions() {
        for (region, want) in [
            ("us-east-1", Continent::NorthAmerica),
            ("eastus2", Continent::NorthAmerica),
            ("northcentralus", Continent::NorthAmerica),
            ("westeurope", Continent::Europe),
            ("uksouth", Continent::Europe),
            ("eu-central-1", Continent::Europe),
            ("europe-west4", Continent::Europe),
            ("ap-northeast-1", Continent::Asia),
            ("ap-southeast-2", Continent::Oceania),
            ("asia-southeast1", Continent::Asia),
            ("japaneast", Continent::Asia),
            ("me-central-1", Continent::MiddleEast),
            ("southamerica-east1", Continent::SouthAmerica),
            ("brazilsouth", Continent::SouthAmerica),
        ] {
            assert_eq!(continent(region), want, "{region}");
        }
    }
}
