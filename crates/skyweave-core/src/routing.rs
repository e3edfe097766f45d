//! Choosing a deployment among the eligible candidates.
//!
//! The gateway first filters the model's deployments (circuit open, out of
//! capacity, outside what the caller may use, already tried) and hands the
//! rest to [`choose`], which knows nothing of wire formats or IO.
//!
//! Rules common to every strategy:
//! 1. Only the best `priority` tier present is considered (lower is better);
//!    a worse tier is used only when no deployment of a better one is eligible.
//! 2. Within the tier, on failover, deployments on a cloud that has not failed
//!    yet for this request are preferred over the clouds that have.
//!
//! Then, within the tier:
//! - `priority`: the first deployment in estate order (active/passive).
//! - `weighted`: random, proportional to `weight`.
//! - `latency`: power of two choices on the latency score
//!   `(latency_ewma + rtt) * (in_flight + 1) / weight`.
//! - `cost`: the cheapest blended price; deployments within 1% of it are
//!   split by power of two choices on the latency score.
//! - `balanced` (default): power of two choices on
//!   `latency_score * sqrt(price / cheapest_price)`: a deployment that costs
//!   four times as much must answer twice as fast to win.
//!
//! `latency_ewma` is the deployment's peak-sensitive EWMA of the latency that
//! matters to the request: time to first token for a stream, total time for
//! a non-streaming request (each falls back to the other when a deployment
//! has only seen one kind). A deployment with no observation yet borrows the
//! best observed one, so new or recovered deployments get traffic. `rtt` is the estimated round trip
//! from the caller's region to the deployment's region (50 ms when either
//! region is unknown). Power of two choices picks two candidates at random and
//! keeps the better: traffic leans to the best deployment without herding on it.

use rand::Rng;
use serde::Deserialize;

use crate::estate::DeploymentId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Priority,
    Weighted,
    Latency,
    Cost,
    #[default]
    Balanced,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::Weighted => "weighted",
            Strategy::Latency => "latency",
            Strategy::Cost => "cost",
            Strategy::Balanced => "balanced",
        }
    }
}

/// What the router knows about one eligible deployment.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub id: DeploymentId,
    pub cloud: &'a str,
    pub priority: u32,
    pub weight: f64,
    /// Blended USD per million tokens.
    pub price_per_mtok: f64,
    /// The latency that matters for this request, as the deployment's EWMA:
    /// time to first token for a stream, total time otherwise.
    pub latency_ewma_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub in_flight: u32,
}

const UNKNOWN_RTT_MS: f64 = 50.0;
const UNKNOWN_TTFT_MS: f64 = 100.0;

/// Picks one of `candidates` (returns its index), or `None` if there are none.
/// `failed_clouds` are the clouds already tried for this request.
pub fn choose<R: Rng + ?Sized>(
    strategy: Strategy,
    candidates: &[Candidate<'_>],
    failed_clouds: &[&str],
    rng: &mut R,
) -> Option<usize> {
    let best_priority = candidates.iter().map(|c| c.priority).min()?;
    let tier: Vec<usize> =
        (0..candidates.len()).filter(|&i| candidates[i].priority == best_priority).collect();
    let fresh_cloud = |i: &usize| !failed_clouds.contains(&candidates[*i].cloud);
    let tier: Vec<usize> = if tier.iter().any(fresh_cloud) {
        tier.into_iter().filter(fresh_cloud).collect()
    } else {
        tier
    };

    let best_ttft = candidates
        .iter()
        .filter_map(|c| c.latency_ewma_ms)
        .fold(None, |best: Option<f64>, t| Some(best.map_or(t, |b| b.min(t))));
    let latency_score = |c: &Candidate<'_>| {
        let ttft = c.latency_ewma_ms.or(best_ttft).unwrap_or(UNKNOWN_TTFT_MS);
        let rtt = c.rtt_ms.unwrap_or(UNKNOWN_RTT_MS);
        (ttft + rtt) * f64::from(c.in_flight + 1) / c.weight.max(f64::MIN_POSITIVE)
    };

    Some(match strategy {
        Strategy::Priority => tier[0],
        Strategy::Weighted => {
            let total: f64 = tier.iter().map(|&i| candidates[i].weight).sum();
            let mut point = rng.gen::<f64>() * total;
            let mut chosen = *tier.last()?;
            for &i in &tier {
                if point < candidates[i].weight {
                    chosen = i;
                    break;
                }
                point -= candidates[i].weight;
            }
            chosen
        }
        Strategy::Latency => two_choices(&tier, rng, |i| latency_score(&candidates[i])),
        Strategy::Cost => {
            let cheapest =
                tier.iter().map(|&i| candidates[i].price_per_mtok).fold(f64::MAX, f64::min);
            let cheap: Vec<usize> = tier
                .into_iter()
                .filter(|&i| candidates[i].price_per_mtok <= cheapest * 1.01 + 1e-12)
                .collect();
            two_choices(&cheap, rng, |i| latency_score(&candidates[i]))
        }
        Strategy::Balanced => {
            let cheapest = tier
                .iter()
                .map(|&i| candidates[i].price_per_mtok)
                .filter(|p| *p > 0.0)
                .fold(f64::MAX, f64::min);
            let price_factor = |c: &Candidate<'_>| {
                if cheapest == f64::MAX || c.price_per_mtok <= 0.0 {
                    1.0
                } else {
                    (c.price_per_mtok / cheapest).sqrt()
                }
            };
            two_choices(&tier, rng, |i| {
                latency_score(&candidates[i]) * price_factor(&candidates[i])
            })
        }
    })
}

fn two_choices<R: Rng + ?Sized>(
    pool: &[usize],
    rng: &mut R,
    score: impl Fn(usize) -> f64,
) -> usize {
    if pool.len() == 1 {
        return pool[0];
    }
    let a = rng.gen_range(0..pool.len());
    let mut b = rng.gen_range(0..pool.len() - 1);
    if b >= a {
        b += 1;
    }
    let (a, b) = (pool[a], pool[b]);
    if score(b) < score(a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn candidate(id: usize, cloud: &'static str) -> Candidate<'static> {
        Candidate {
            id: DeploymentId(id),
            cloud,
            priority: 0,
            weight: 1.0,
            price_per_mtok: 1.0,
            latency_ewma_ms: Some(100.0),
            rtt_ms: Some(10.0),
            in_flight: 0,
        }
    }

    /// How often each candidate is chosen over `rounds` picks.
    fn shares(strategy: Strategy, candidates: &[Candidate<'_>], failed: &[&str]) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0; candidates.len()];
        for _ in 0..10_000 {
            counts[choose(strategy, candidates, failed, &mut rng).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn empty_pool_chooses_nothing() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(choose(Strategy::Balanced, &[], &[], &mut rng), None);
    }

    #[test]
    fn priority_outranks_cloud_diversity() {
        let mut candidates = vec![candidate(0, "aws"), candidate(1, "azure")];
        candidates[1].priority = 1;
        assert_eq!(shares(Strategy::Latency, &candidates, &["aws"]), vec![10_000, 0]);
    }

    #[test]
    fn priority_is_active_passive() {
        let mut candidates = vec![candidate(0, "aws"), candidate(1, "azure"), candidate(2, "gcp")];
        candidates[0].priority = 1;
        assert_eq!(shares(Strategy::Priority, &candidates, &[]), vec![0, 10_000, 0]);
    }

    #[test]
    fn weighted_follows_weights() {
        let mut candidates = vec![candidate(0, "aws"), candidate(1, "azure")];
        candidates[0].weight = 3.0;
        let counts = shares(Strategy::Weighted, &candidates, &[]);
        assert!((7_200..7_800).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn latency_prefers_fast_and_near_without_herding() {
        let mut candidates = vec![candidate(0, "aws"), candidate(1, "azure"), candidate(2, "gcp")];
        candidates[0].latency_ewma_ms = Some(50.0);
        candidates[2].rtt_ms = Some(120.0);
        let counts = shares(Strategy::Latency, &candidates, &[]);
        // Two choices: the best wins every draw it is in (2/3), the worst none.
        assert!((6_300..7_000).contains(&counts[0]), "{counts:?}");
        assert!(counts[1] > 3_000 - 400 && counts[2] == 0, "{counts:?}");
    }

    #[test]
    fn load_spreads_traffic() {
        let mut candidates = vec![candidate(0, "aws"), candidate(1, "azure")];
        candidates[0].latency_ewma_ms = Some(50.0);
        candidates[0].in_flight = 4;
        assert_eq!(shares(Strategy::Latency, &candidates, &[])[1], 10_000);
    }

    #[test]
    fn cost_prefers_cheapest_then_latency() {
        let mut candidates = vec![candidate(0, "aws"), candidate(1, "azure"), candidate(2, "gcp")];
        candidates[0].price_per_mtok = 2.0;
        candidates[2].latency_ewma_ms = Some(500.0);
        assert_eq!(shares(Strategy::Cost, &candidates, &[]), vec![0, 10_000, 0]);
    }

    #[test]
    fn balanced_trades_price_for_speed() {
        // Four times the price but more than twice as fast: it wins.
        let mut candidates = vec![candidate(0, "aws"), candidate(1, "azure")];
        candidates[0].price_per_mtok = 4.0;
        candidates[0].latency_ewma_ms = Some(30.0);
        candidates[0].rtt_ms = Some(10.0);
        assert_eq!(shares(Strategy::Balanced, &candidates, &[]), vec![10_000, 0]);
        candidates[0].latency_ewma_ms = Some(80.0);
        assert_eq!(shares(Strategy::Balanced, &candidates, &[]), vec![0, 10_000]);
    }

    #[test]
    fn failover_prefers_another_cloud_then_falls_back() {
        let mut candidates = vec![candidate(0, "aws"), candidate(1, "aws"), candidate(2, "gcp")];
        candidates[2].latency_ewma_ms = Some(1_000.0);
        assert_eq!(shares(Strategy::Latency, &candidates, &["aws"]), vec![0, 0, 10_000]);
        let counts = shares(Strategy::Latency, &candidates[..2], &["aws"]);
        assert_eq!(counts.iter().sum::<usize>(), 10_000);
    }

    #[test]
    fn unobserved_deployment_borrows_best_observation() {
        let mut candidates = vec![candidate(0, "aws"), candidate(1, "azure"), candidate(2, "gcp")];
        candidates[0].latency_ewma_ms = Some(400.0);
        candidates[1].latency_ewma_ms = Some(50.0);
        candidates[2].latency_ewma_ms = None;
        let counts = shares(Strategy::Latency, &candidates, &[]);
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[2] > 4_000, "{counts:?}");
    }
}
