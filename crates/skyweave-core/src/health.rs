//! Deployment health: a circuit breaker and latency EWMAs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::estate::BreakerSettings;

/// What the breaker says about sending a request to its deployment now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The breaker is half-open: this request is the probe.
    Probe,
    Denied {
        retry_in: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A circuit breaker. Opens after `consecutive_failures` failures in a row,
/// or when more than `failure_rate` of the results in the last `window` were
/// failures (once the window holds `min_requests`). After a cool-down one
/// probe request is let through (half-open); its success closes the breaker,
/// its failure opens it again for twice the previous cool-down, up to
/// `max_cooldown`.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: State,
    consecutive_failures: u32,
    /// (when, succeeded) for results within the window; bounded.
    recent: VecDeque<(Instant, bool)>,
    last_failure: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant, cooldown: Duration },
    HalfOpen { cooldown: Duration, probe_started: Option<Instant> },
}

const MAX_RECENT: usize = 4096;

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            state: State::Closed,
            consecutive_failures: 0,
            recent: VecDeque::new(),
            last_failure: None,
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { until, .. } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Would a request be admitted now? Does not change the state.
    pub fn check(&self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Allowed,
            State::Open { until, .. } if now < until => Admission::Denied { retry_in: until - now },
            State::Open { .. } => Admission::Probe,
            State::HalfOpen { cooldown, probe_started } => match probe_started {
                // A probe that never reported (its client went away) does
                // not hold the breaker half-open forever.
                Some(started) if now < started + cooldown => {
                    Admission::Denied { retry_in: started + cooldown - now }
                }
                _ => Admission::Probe,
            },
        }
    }

    /// Records that a request is being sent; claims the probe when half-open.
    pub fn on_attempt(&mut self, now: Instant) -> Admission {
        let admission = self.check(now);
        if admission == Admission::Probe {
            let cooldown = match self.state {
                State::Open { cooldown, .. } | State::HalfOpen { cooldown, .. } => cooldown,
                State::Closed => self.settings.cooldown,
            };
            self.state = State::HalfOpen { cooldown, probe_started: Some(now) };
        }
        admission
    }

    /// Lets one request through even though the breaker is open: used when
    /// every deployment of a model is open, so that the least recently
    /// failed one is tried rather than failing without trying. Only one
    /// such probe is in flight at a time; returns whether this is it.
    pub fn force_probe(&mut self, now: Instant) -> bool {
        let cooldown = match self.state {
            State::HalfOpen { cooldown, probe_started: Some(started) } => {
                if now < started + cooldown {
                    return false;
                }
                cooldown
            }
            State::Open { cooldown, .. } | State::HalfOpen { cooldown, .. } => cooldown,
            State::Closed => return true,
        };
        self.state = State::HalfOpen { cooldown, probe_started: Some(now) };
        true
    }

    /// A request succeeded. Only the probe's success closes a breaker that
    /// is not closed: a slow request admitted before the breaker opened says
    /// nothing about the deployment now.
    pub fn on_success(&mut self, now: Instant, was_probe: bool) {
        match self.state {
            State::Closed => {
                self.consecutive_failures = 0;
                self.record(now, true);
            }
            _ if was_probe => {
                self.consecutive_failures = 0;
                self.state = State::Closed;
                self.recent.clear();
            }
            _ => {}
        }
    }

    /// A request failed. Once the breaker is not closed, only the probe's
    /// failure moves it: it re-opens with a doubled cool-down.
    pub fn on_failure(&mut self, now: Instant, was_probe: bool) {
        self.last_failure = Some(now);
        match self.state {
            State::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.record(now, false);
                if self.should_open() {
                    self.open(now, self.settings.cooldown);
                }
            }
            State::HalfOpen { cooldown, .. } | State::Open { cooldown, .. } if was_probe => {
                let next = (cooldown * 2).min(self.settings.max_cooldown);
                self.open(now, next);
            }
            State::HalfOpen { .. } | State::Open { .. } => {}
        }
    }

    pub fn last_failure(&self) -> Option<Instant> {
        self.last_failure
    }

    fn open(&mut self, now: Instant, cooldown: Duration) {
        self.state = State::Open { until: now + cooldown, cooldown };
    }

    fn should_open(&self) -> bool {
        if self.consecutive_failures >= self.settings.consecutive_failures {
            return true;
        }
        let total = self.recent.len() as u32;
        if total < self.settings.min_requests {
            return false;
        }
        let failures = self.recent.iter().filter(|(_, ok)| !ok).count() as f64;
        failures / total as f64 > self.settings.failure_rate
    }

    fn record(&mut self, now: Instant, ok: bool) {
        while let Some((when, _)) = self.recent.front() {
            if now.duration_since(*when) > self.settings.window || self.recent.len() >= MAX_RECENT {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back((now, ok));
    }
}

/// An exponentially weighted moving average over time: a sample's weight
/// halves every `half_life`. Peak-sensitive, as in linkerd's balancer: a
/// sample above the average replaces it at once, so a deployment that slows
/// down is noticed on its first slow answer and forgiven gradually. Read
/// with [`Ewma::get`], the value also decays toward zero while no sample
/// arrives, so a deployment that lost every routing choice is tried again
/// after a few half-lives instead of being starved forever.
#[derive(Debug, Clone, Copy)]
pub struct Ewma {
    value: Option<f64>,
    updated: Option<Instant>,
    half_life: Duration,
}

impl Ewma {
    pub fn new(half_life: Duration) -> Ewma {
        Ewma { value: None, updated: None, half_life }
    }

    pub fn get(&self, now: Instant) -> Option<f64> {
        let value = self.value?;
        let updated = self.updated?;
        Some(value * self.keep(now.saturating_duration_since(updated)))
    }

    fn keep(&self, elapsed: Duration) -> f64 {
        0.5f64.powf(elapsed.as_secs_f64() / self.half_life.as_secs_f64().max(1e-9))
    }

    pub fn observe(&mut self, now: Instant, sample: f64) {
        let value = match (self.value, self.updated) {
            (Some(value), _) if sample >= value => sample,
            (Some(value), Some(updated)) => {
                // At least a small step even for back-to-back samples.
                let keep = self.keep(now.saturating_duration_since(updated)).min(0.9);
                value * keep + sample * (1.0 - keep)
            }
            _ => sample,
        };
        self.value = Some(value);
        self.updated = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
        }
    }

    #[test]
    fn opens_on_consecutive_failures_then_probes_and_closes() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings());
        for _ in 0..2 {
            breaker.on_failure(start, false);
        }
        assert_eq!(breaker.check(start), Admission::Allowed);
        breaker.on_failure(start, false);
        assert_eq!(breaker.state(start), BreakerState::Open);
        assert_eq!(breaker.check(start), Admission::Denied { retry_in: Duration::from_secs(1) });

        let later = start + Duration::from_secs(1);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        assert_eq!(breaker.on_attempt(later), Admission::Probe);
        // Only one probe at a time.
        assert!(matches!(breaker.on_attempt(later), Admission::Denied { .. }));
        breaker.on_success(later, true);
        assert_eq!(breaker.state(later), BreakerState::Closed);
        assert_eq!(breaker.check(later), Admission::Allowed);
    }

    #[test]
    fn cooldown_doubles_on_failed_probe_up_to_the_cap() {
        let mut now = Instant::now();
        let mut breaker = Breaker::new(settings());
        for _ in 0..3 {
            breaker.on_failure(now, false);
        }
        let mut cooldowns = Vec::new();
        for _ in 0..4 {
            let Admission::Denied { retry_in } = breaker.check(now) else { panic!("not open") };
            cooldowns.push(retry_in.as_secs());
            now += retry_in;
            assert_eq!(breaker.on_attempt(now), Admission::Probe);
            breaker.on_failure(now, true);
        }
        assert_eq!(cooldowns, vec![1, 2, 4, 4]);
    }

    #[test]
    fn opens_on_failure_rate_over_the_window() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        // Alternate so there are never three failures in a row: 6 of 11 fail.
        for i in 0..11 {
            if i % 2 == 0 {
                breaker.on_failure(now, false);
            } else {
                breaker.on_success(now, false);
            }
        }
        assert_eq!(breaker.state(now), BreakerState::Open);
    }

    #[test]
    fn old_results_leave_the_window() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        for _ in 0..9 {
            breaker.on_success(now, false);
            breaker.on_failure(now, false);
        }
        let later = now + Duration::from_secs(11);
        breaker.on_failure(later, false);
        breaker.on_success(later, false);
        assert_eq!(breaker.state(later), BreakerState::Closed);
    }

    #[test]
    fn abandoned_probe_is_replaced_after_a_cooldown() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        for _ in 0..3 {
            breaker.on_failure(now, false);
        }
        let probe_time = now + Duration::from_secs(1);
        assert_eq!(breaker.on_attempt(probe_time), Admission::Probe);
        let after = probe_time + Duration::from_secs(1);
        assert_eq!(breaker.on_attempt(after), Admission::Probe);
    }

    #[test]
    fn only_the_probe_moves_an_open_breaker() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        for _ in 0..3 {
            breaker.on_failure(now, false);
        }
        // A request admitted before the breaker opened finishes late.
        breaker.on_success(now, false);
        assert_eq!(breaker.state(now), BreakerState::Open);
        let later = now + Duration::from_secs(1);
        assert_eq!(breaker.on_attempt(later), Admission::Probe);
        breaker.on_failure(later, false);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen, "not the probe: no re-open");
        breaker.on_success(later, true);
        assert_eq!(breaker.state(later), BreakerState::Closed);
    }

    #[test]
    fn one_forced_probe_at_a_time() {
        let now = Instant::now();
        let mut breaker = Breaker::new(settings());
        for _ in 0..3 {
            breaker.on_failure(now, false);
        }
        assert!(breaker.force_probe(now));
        assert!(!breaker.force_probe(now));
        breaker.on_failure(now, true);
        assert!(breaker.force_probe(now), "the probe reported: the next may go");
    }

    #[test]
    fn ewma_is_peak_sensitive_and_decays() {
        let now = Instant::now();
        let mut ewma = Ewma::new(Duration::from_secs(10));
        ewma.observe(now, 100.0);
        ewma.observe(now, 500.0);
        assert_eq!(ewma.get(now), Some(500.0));
        let later = now + Duration::from_secs(10);
        assert_eq!(ewma.get(later), Some(250.0), "decays while idle");
        ewma.observe(later, 100.0);
        let value = ewma.get(later).unwrap();
        assert!((value - 300.0).abs() < 1e-6, "{value}");
        ewma.observe(later, 100.0);
        assert!(ewma.get(later).unwrap() < value);
    }
}
