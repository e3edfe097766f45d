//! Compute capacity declared in the estate file, beside the public catalogs:
//! private offerings (reserved capacity, capacity blocks, on-premises
//! clusters) and quotas. The planner in `skyweave-compute` reads these.

/// What kind of capacity a private offering is. It changes nothing in the
/// optimisation (price and count say everything); it is shown in plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateKind {
    Reserved,
    CapacityBlock,
    OnPremises,
}

impl PrivateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrivateKind::Reserved => "reserved",
            PrivateKind::CapacityBlock => "capacity_block",
            PrivateKind::OnPremises => "on_premises",
        }
    }
}

/// Nodes the estate can use at a known price, up to a known count.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateOffering {
    pub name: String,
    pub kind: PrivateKind,
    pub cloud: String,
    pub region: String,
    pub zone: Option<String>,
    pub instance_type: String,
    pub accelerator: String,
    /// Accelerators per node.
    pub accelerator_count: u32,
    /// USD per node-hour.
    pub price_per_hour: f64,
    /// How many nodes exist.
    pub nodes: u32,
}

/// Which purchases a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPurchase {
    Any,
    OnDemand,
    Spot,
}

/// A cloud quota: at most `max_accelerators` accelerators of the listed
/// kinds running at once in a cloud (optionally one region). Quotas limit
/// catalog purchases (on-demand and spot); private offerings have their own
/// node count.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    pub name: String,
    pub cloud: String,
    pub region: Option<String>,
    /// Accelerator names (case-insensitive); empty means every accelerator.
    pub accelerators: Vec<String>,
    pub purchase: QuotaPurchase,
    pub max_accelerators: u32,
}

impl Quota {
    /// Does a purchase of `accelerator` in `cloud`/`region` count against it?
    pub fn covers(&self, cloud: &str, region: &str, accelerator: &str, spot: bool) -> bool {
        self.cloud == cloud
            && self.region.as_deref().is_none_or(|r| r == region)
            && (self.accelerators.is_empty()
                || self.accelerators.iter().any(|a| a.eq_ignore_ascii_case(accelerator)))
            && match self.purchase {
                QuotaPurchase::Any => true,
                QuotaPurchase::OnDemand => !spot,
                QuotaPurchase::Spot => spot,
            }
    }
}

/// A spend commitment with one cloud (e.g. an enterprise discount program).
#[derive(Debug, Clone, PartialEq)]
pub struct Commitment {
    pub cloud: String,
    pub total_usd: f64,
    /// ISO dates, inclusive.
    pub start: String,
    pub end: String,
    /// Sorted by `above_usd`; the first starts at 0.
    pub discount_tiers: Vec<DiscountTier>,
    /// Spend already counted against the commitment in this period. Until the
    /// ledger provides it, the estate file states it.
    pub spent_usd: f64,
    /// How much the planner prefers burning the remaining commitment down:
    /// 0 values committed spend at its discounted price, 1 treats it as
    /// already paid (take-or-pay), values between interpolate.
    pub burn_down_weight: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiscountTier {
    pub above_usd: f64,
    pub discount: f64,
}

impl Commitment {
    /// The discount of the tier that spend to date has reached.
    pub fn current_discount(&self) -> f64 {
        self.discount_tiers
            .iter()
            .rev()
            .find(|tier| self.spent_usd >= tier.above_usd)
            .map_or(0.0, |tier| tier.discount)
    }

    /// Whether `date` (YYYY-MM-DD) falls in the commitment's period.
    pub fn active_on(&self, date: &str) -> bool {
        self.start.as_str() <= date && date <= self.end.as_str()
    }

    /// What is left to spend before the commitment is met.
    pub fn remaining_usd(&self) -> f64 {
        (self.total_usd - self.spent_usd).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commitment(spent: f64) -> Commitment {
        Commitment {
            cloud: "aws".into(),
            total_usd: 1000.0,
            start: "2026-01-01".into(),
            end: "2026-12-31".into(),
            discount_tiers: vec![
                DiscountTier { above_usd: 0.0, discount: 0.0 },
                DiscountTier { above_usd: 500.0, discount: 0.08 },
            ],
            spent_usd: spent,
            burn_down_weight: 0.0,
        }
    }

    #[test]
    fn tiers_and_remaining_follow_spend() {
        assert_eq!(commitment(0.0).current_discount(), 0.0);
        assert_eq!(commitment(499.0).current_discount(), 0.0);
        assert_eq!(commitment(500.0).current_discount(), 0.08);
        assert_eq!(commitment(200.0).remaining_usd(), 800.0);
        assert_eq!(commitment(1200.0).remaining_usd(), 0.0);
        assert!(commitment(0.0).active_on("2026-01-01") && commitment(0.0).active_on("2026-12-31"));
        assert!(
            !commitment(0.0).active_on("2027-01-01") && !commitment(0.0).active_on("2025-12-31")
        );
    }

    #[test]
    fn quota_scope() {
        let quota = Quota {
            name: "p".into(),
            cloud: "aws".into(),
            region: Some("us-east-1".into()),
            accelerators: vec!["H100".into(), "H200".into()],
            purchase: QuotaPurchase::OnDemand,
            max_accelerators: 64,
        };
        assert!(quota.covers("aws", "us-east-1", "h100", false));
        assert!(!quota.covers("aws", "us-east-1", "H100", true));
        assert!(!quota.covers("aws", "us-west-2", "H100", false));
        assert!(!quota.covers("gcp", "us-east-1", "H100", false));
        assert!(!quota.covers("aws", "us-east-1", "A100", false));
    }
}
