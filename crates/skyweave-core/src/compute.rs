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

/// Where a commitment stands on a day, from the spend recorded in its
/// period so far.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CommitmentStatus {
    pub cloud: String,
    pub start: String,
    pub end: String,
    pub total_usd: f64,
    /// Spend before the ledger (`spent_usd` in the estate) plus the ledger's.
    pub spent_usd: f64,
    /// What a straight line from 0 to the total would have spent by now.
    pub plan_usd: f64,
    /// `spent - plan`: negative is behind plan.
    pub ahead_usd: f64,
    /// The spend at the end of the period if it goes on at the rate so far.
    pub projected_usd: f64,
    /// The discount of the tier the spend has reached, and what list prices
    /// cost after it (1 - discount).
    pub discount: f64,
    pub effective_price_factor: f64,
    /// The spend at which the next tier starts, if any.
    pub next_tier_at_usd: Option<f64>,
}

impl Commitment {
    /// Its status on day `today` (days since 1970-01-01) with `recorded_usd`
    /// spent in the period according to the ledger.
    pub fn status(&self, today: i64, recorded_usd: f64) -> Option<CommitmentStatus> {
        let (start, end) = self.period_days()?;
        Some(self.status_in(start, end, today, recorded_usd))
    }

    /// The period as day numbers (days since 1970-01-01), both inclusive.
    pub fn period_days(&self) -> Option<(i64, i64)> {
        Some((
            crate::calendar::days_from_civil(&self.start)?,
            crate::calendar::days_from_civil(&self.end)?,
        ))
    }

    /// As `status`, for a period already turned into day numbers.
    pub fn status_in(
        &self,
        start: i64,
        end: i64,
        today: i64,
        recorded_usd: f64,
    ) -> CommitmentStatus {
        let length = (end - start + 1).max(1) as f64;
        let elapsed = (today - start + 1).clamp(0, end - start + 1) as f64;
        let spent = self.spent_usd + recorded_usd;
        let plan = self.total_usd * elapsed / length;
        let projected = if elapsed > 0.0 { spent * length / elapsed } else { spent };
        let tier_spend = Commitment { spent_usd: spent, ..self.clone() };
        let discount = tier_spend.current_discount();
        CommitmentStatus {
            cloud: self.cloud.clone(),
            start: self.start.clone(),
            end: self.end.clone(),
            total_usd: self.total_usd,
            spent_usd: spent,
            plan_usd: plan,
            ahead_usd: spent - plan,
            projected_usd: projected,
            discount,
            effective_price_factor: 1.0 - discount,
            next_tier_at_usd: self
                .discount_tiers
                .iter()
                .map(|t| t.above_usd)
                .find(|above| *above > spent),
        }
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
    fn status_against_a_straight_line_plan() {
        // 2026-01-01 .. 2026-12-31 is 365 days; 2026-04-10 is day 100.
        let c = Commitment { total_usd: 365_000.0, ..commitment(100.0) };
        let today = crate::calendar::days_from_civil("2026-04-10").unwrap();
        let s = c.status(today, 79_900.0).unwrap();
        assert_eq!(s.spent_usd, 80_000.0);
        assert!((s.plan_usd - 100_000.0).abs() < 1e-6);
        assert!((s.ahead_usd + 20_000.0).abs() < 1e-6);
        assert!((s.projected_usd - 292_000.0).abs() < 1e-6);
        assert_eq!((s.discount, s.effective_price_factor), (0.08, 0.92));
        assert_eq!(s.next_tier_at_usd, None);
        let early = c.status(today, 0.0).unwrap();
        assert_eq!((early.discount, early.next_tier_at_usd), (0.0, Some(500.0)));
        // Before the period nothing is planned; after it, all is.
        let before = crate::calendar::days_from_civil("2025-12-01").unwrap();
        assert_eq!(c.status(before, 0.0).unwrap().plan_usd, 0.0);
        let after = crate::calendar::days_from_civil("2027-03-01").unwrap();
        assert_eq!(c.status(after, 0.0).unwrap().plan_usd, 365_000.0);
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
