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

/// Checks that a new key for `tenant` only narrows its rights, and that
/// the models it names exist.
pub fn check_narrowing(
    estate: &crate::estate::Estate,
    tenant: &str,
    models: &Option<Vec<String>>,
    clouds: &Option<Vec<String>>,
    regions: &Option<Vec<String>>,
) -> Result<(), String> {
    let Some(t) = estate.tenants.iter().find(|t| t.name == tenant) else {
        let known: Vec<&str> = estate.tenants.iter().map(|t| t.name.as_str()).collect();
        return Err(format!(
            "the estate has no tenant `{tenant}`; use one of: {}",
            if known.is_empty() { "(none: add a [[tenant]])".into() } else { known.join(", ") }
        ));
    };
    let within = |what: &str, asked: &Option<Vec<String>>, allowed: &Option<Vec<String>>| {
        for item in asked.iter().flatten() {
            if allowed.as_ref().is_some_and(|allowed| !allowed.contains(item)) {
                return Err(format!(
                    "tenant `{tenant}` may not use {what} `{item}`, so its keys may not either; \
                     list only {what}s of the tenant's: {}",
                    allowed.as_ref().map(|a| a.join(", ")).unwrap_or_default()
                ));
            }
        }
        Ok(())
    };
    within("model", models, &t.models)?;
    within("cloud", clouds, &t.clouds)?;
    within("region", regions, &t.regions)?;
    for model in models.iter().flatten() {
        if estate.model(model).is_none() {
            return Err(format!("the estate has no model `{model}`"));
        }
    }
    Ok(())
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
