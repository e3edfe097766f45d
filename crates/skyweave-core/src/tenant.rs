//! Tenants: who may use which models, where their requests may be served
//! (data residency), how fast and how much.

/// A tenant as declared in the estate file.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: String,
    /// Models the tenant may use; `None`: every model.
    pub models: Option<Vec<String>>,
    /// Clouds its requests may be served from; `None`: any.
    pub clouds: Option<Vec<String>>,
    /// Regions its requests may be served from (residency); `None`: any.
    pub regions: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub budget: Option<Budget>,
}

/// A monthly spending limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub monthly_usd: f64,
    /// Hard: refuse requests once reached. Soft: alert only.
    pub hard: bool,
}

impl Tenant {
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|models| models.iter().any(|m| m == model))
    }

    /// May a request of this tenant be served from `cloud`/`region`?
    pub fn allows_place(&self, cloud: &str, region: &str) -> bool {
        self.clouds.as_ref().is_none_or(|clouds| clouds.iter().any(|c| c == cloud))
            && self.regions.as_ref().is_none_or(|regions| regions.iter().any(|r| r == region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_default_to_everything_and_narrow_when_listed() {
        let open = Tenant {
            name: "t".into(),
            models: None,
            clouds: None,
            regions: None,
            rpm: None,
            tpm: None,
            max_concurrency: None,
            budget: None,
        };
        assert!(open.allows_model("any") && open.allows_place("aws", "us-east-1"));
        let eu = Tenant {
            models: Some(vec!["gpt-4o".into()]),
            regions: Some(vec!["westeurope".into(), "europe-west4".into()]),
            ..open
        };
        assert!(eu.allows_model("gpt-4o") && !eu.allows_model("claude"));
        assert!(eu.allows_place("azure", "westeurope") && eu.allows_place("gcp", "europe-west4"));
        assert!(!eu.allows_place("azure", "eastus"));
    }
}
