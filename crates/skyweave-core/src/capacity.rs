//! Local accounting of a deployment's capacity: requests and tokens per
//! minute, concurrent requests, and Retry-After pauses the upstream asked for.
//!
//! The per-minute windows slide with one-second granularity: a request counts
//! against the limit for the 60 whole seconds that follow the second it was
//! admitted in. Tokens are reserved up front from an estimate and settled
//! with the real usage when the response (or stream) ends.

use std::time::{Duration, Instant};

use crate::estate::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityRefusal {
    RequestsPerMinute {
        limit: u32,
    },
    TokensPerMinute {
        limit: u32,
    },
    Concurrency {
        limit: u32,
    },
    /// The upstream said to come back later (Retry-After on a 429).
    Paused {
        retry_in: Duration,
    },
}

impl std::fmt::Display for CapacityRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CapacityRefusal::RequestsPerMinute { limit } => {
                write!(f, "at its limit of {limit} requests per minute")
            }
            CapacityRefusal::TokensPerMinute { limit } => {
                write!(f, "at its limit of {limit} tokens per minute")
            }
            CapacityRefusal::Concurrency { limit } => {
                write!(f, "at its limit of {limit} concurrent requests")
            }
            CapacityRefusal::Paused { retry_in } => {
                write!(f, "rate limited upstream, retry in {} ms", retry_in.as_millis())
            }
        }
    }
}

/// Proof that capacity was reserved; hand it back to [`Capacity::settle`].
#[derive(Debug)]
#[must_use = "a reservation holds a concurrency slot until settled"]
pub struct Reservation {
    estimated_tokens: u32,
    second: u64,
}

#[derive(Debug, Clone)]
pub struct Capacity {
    limits: Limits,
    epoch: Instant,
    requests: MinuteWindow,
    tokens: MinuteWindow,
    in_flight: u32,
    paused_until: Option<Instant>,
}

impl Capacity {
    pub fn new(limits: Limits, epoch: Instant) -> Capacity {
        Capacity {
            limits,
            epoch,
            requests: MinuteWindow::default(),
            tokens: MinuteWindow::default(),
            in_flight: 0,
            paused_until: None,
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    pub fn check(&self, now: Instant, estimated_tokens: u32) -> Result<(), CapacityRefusal> {
        if let Some(until) = self.paused_until {
            if now < until {
                return Err(CapacityRefusal::Paused { retry_in: until - now });
            }
        }
        if let Some(limit) = self.limits.max_concurrency {
            if self.in_flight >= limit {
                return Err(CapacityRefusal::Concurrency { limit });
            }
        }
        let second = self.second(now);
        if let Some(limit) = self.limits.requests_per_minute {
            if self.requests.total(second) + 1 > i64::from(limit) {
                return Err(CapacityRefusal::RequestsPerMinute { limit });
            }
        }
        if let Some(limit) = self.limits.tokens_per_minute {
            let used = self.tokens.total(second);
            // A request larger than the whole budget is admitted into an
            // empty window, or it could never be served.
            if used > 0 && used + i64::from(estimated_tokens) > i64::from(limit) {
                return Err(CapacityRefusal::TokensPerMinute { limit });
            }
        }
        Ok(())
    }

    pub fn reserve(
        &mut self,
        now: Instant,
        estimated_tokens: u32,
    ) -> Result<Reservation, CapacityRefusal> {
        self.check(now, estimated_tokens)?;
        // One request never holds more than the whole per-minute budget.
        let estimated_tokens =
            self.limits.tokens_per_minute.map_or(estimated_tokens, |l| estimated_tokens.min(l));
        let second = self.second(now);
        self.requests.add(second, 1);
        self.tokens.add(second, i64::from(estimated_tokens));
        self.in_flight += 1;
        Ok(Reservation { estimated_tokens, second })
    }

    /// Releases the concurrency slot and corrects the token count with what
    /// the request really used (`None` when unknown: the estimate stands).
    /// The correction lands in the second the reservation was made, while
    /// that second is still in the window; after that only extra use counts.
    pub fn settle(&mut self, now: Instant, reservation: Reservation, actual_tokens: Option<u64>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(actual) = actual_tokens else { return };
        let actual = i64::try_from(actual).unwrap_or(i64::MAX / 2).min(i64::MAX / 2);
        let delta = actual - i64::from(reservation.estimated_tokens);
        let second = self.second(now);
        if self.tokens.holds(reservation.second, second) {
            self.tokens.add(reservation.second, delta);
        } else if delta > 0 {
            self.tokens.add(second, delta);
        }
    }

    /// When a request refused for `refusal` may be admitted: when the
    /// oldest second still counted leaves the minute window (rate limits),
    /// or in a second (concurrency: a slot frees when a request ends).
    pub fn retry_in(&self, now: Instant, refusal: CapacityRefusal) -> Duration {
        let window = match refusal {
            CapacityRefusal::Paused { retry_in } => return retry_in,
            CapacityRefusal::Concurrency { .. } => return Duration::from_secs(1),
            CapacityRefusal::RequestsPerMinute { .. } => &self.requests,
            CapacityRefusal::TokensPerMinute { .. } => &self.tokens,
        };
        let second = self.second(now);
        match window.oldest(second) {
            Some(oldest) => {
                let frees = self.epoch + Duration::from_secs(oldest + SECONDS as u64);
                frees.saturating_duration_since(now).max(Duration::from_millis(1))
            }
            None => Duration::from_secs(1),
        }
    }

    pub fn pause_until(&mut self, until: Instant) {
        if self.paused_until.is_none_or(|current| current < until) {
            self.paused_until = Some(until);
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }
}

const SECONDS: usize = 60;

#[derive(Debug, Clone)]
struct MinuteWindow {
    counts: [i64; SECONDS],
    stamps: [u64; SECONDS],
}

impl Default for MinuteWindow {
    fn default() -> Self {
        MinuteWindow { counts: [0; SECONDS], stamps: [0; SECONDS] }
    }
}

impl MinuteWindow {
    fn add(&mut self, second: u64, amount: i64) {
        let slot = (second % SECONDS as u64) as usize;
        if self.stamps[slot] != second {
            self.stamps[slot] = second;
            self.counts[slot] = 0;
        }
        self.counts[slot] += amount;
    }

    /// Is `slot_second` still counted in the window ending at `second`?
    fn holds(&self, slot_second: u64, second: u64) -> bool {
        slot_second + (SECONDS as u64) > second
            && self.stamps[(slot_second % SECONDS as u64) as usize] == slot_second
    }

    /// The oldest second in the window ending at `second` with a count.
    fn oldest(&self, second: u64) -> Option<u64> {
        let oldest = second.saturating_sub(SECONDS as u64 - 1);
        self.stamps
            .iter()
            .zip(self.counts.iter())
            .filter(|(stamp, count)| **stamp >= oldest && **stamp <= second && **count > 0)
            .map(|(stamp, _)| *stamp)
            .min()
    }

    fn total(&self, second: u64) -> i64 {
        let oldest = second.saturating_sub(SECONDS as u64 - 1);
        let sum: i64 = self
            .stamps
            .iter()
            .zip(self.counts.iter())
            .filter(|(stamp, _)| **stamp >= oldest && **stamp <= second)
            .map(|(_, count)| *count)
            .sum();
        sum.max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u32>, tpm: Option<u32>, concurrency: Option<u32>) -> Limits {
        Limits { requests_per_minute: rpm, tokens_per_minute: tpm, max_concurrency: concurrency }
    }

    #[test]
    fn requests_per_minute_is_exact_and_slides() {
        let epoch = Instant::now();
        let mut capacity = Capacity::new(limits(Some(3), None, None), epoch);
        for _ in 0..3 {
            let reservation = capacity.reserve(epoch, 1).unwrap();
            capacity.settle(epoch, reservation, None);
        }
        assert_eq!(capacity.check(epoch, 1), Err(CapacityRefusal::RequestsPerMinute { limit: 3 }));
        assert!(capacity.check(epoch + Duration::from_secs(59), 1).is_err());
        assert!(capacity.check(epoch + Duration::from_secs(60), 1).is_ok());
    }

    #[test]
    fn retry_in_says_when_the_window_frees() {
        let epoch = Instant::now();
        let mut capacity = Capacity::new(limits(Some(2), None, Some(5)), epoch);
        let a = capacity.reserve(epoch + Duration::from_secs(3), 1).unwrap();
        let b = capacity.reserve(epoch + Duration::from_secs(10), 1).unwrap();
        capacity.settle(epoch + Duration::from_secs(10), a, None);
        capacity.settle(epoch + Duration::from_secs(10), b, None);
        let now = epoch + Duration::from_millis(20_500);
        let refusal = capacity.check(now, 1).unwrap_err();
        assert_eq!(refusal, CapacityRefusal::RequestsPerMinute { limit: 2 });
        // The request of second 3 leaves the window at second 63.
        assert_eq!(capacity.retry_in(now, refusal), Duration::from_millis(42_500));
        assert!(capacity.check(epoch + Duration::from_secs(63), 1).is_ok());
    }

    #[test]
    fn tokens_are_settled_with_real_usage() {
        let epoch = Instant::now();
        let mut capacity = Capacity::new(limits(None, Some(1000), None), epoch);
        let reservation = capacity.reserve(epoch, 900).unwrap();
        assert!(capacity.check(epoch, 200).is_err());
        capacity.settle(epoch, reservation, Some(100));
        assert!(capacity.check(epoch, 200).is_ok());
        assert!(capacity.check(epoch, 950).is_err());
    }

    #[test]
    fn late_settlement_does_not_erase_other_usage() {
        let epoch = Instant::now();
        let mut capacity = Capacity::new(limits(None, Some(1000), None), epoch);
        let long = capacity.reserve(epoch, 500).unwrap();
        let later = epoch + Duration::from_secs(70);
        let other = capacity.reserve(later, 600).unwrap();
        // The long stream used less than estimated, but its reservation has
        // left the window: the other request's tokens must stay counted.
        capacity.settle(later, long, Some(10));
        assert!(capacity.check(later, 500).is_err());
        capacity.settle(later, other, Some(600));
    }

    #[test]
    fn a_failed_huge_estimate_does_not_block_the_minute() {
        let epoch = Instant::now();
        let mut capacity = Capacity::new(limits(None, Some(1000), None), epoch);
        let huge = capacity.reserve(epoch, u32::MAX).unwrap();
        capacity.settle(epoch, huge, Some(0));
        assert!(capacity.check(epoch, 900).is_ok());
    }

    #[test]
    fn oversized_request_fits_an_empty_window() {
        let epoch = Instant::now();
        let capacity = Capacity::new(limits(None, Some(10), None), epoch);
        assert!(capacity.check(epoch, 50).is_ok());
    }

    #[test]
    fn concurrency_slots_are_released() {
        let epoch = Instant::now();
        let mut capacity = Capacity::new(limits(None, None, Some(1)), epoch);
        let first = capacity.reserve(epoch, 1).unwrap();
        assert_eq!(capacity.check(epoch, 1), Err(CapacityRefusal::Concurrency { limit: 1 }));
        capacity.settle(epoch, first, Some(1));
        assert_eq!(capacity.in_flight(), 0);
        assert!(capacity.check(epoch, 1).is_ok());
    }

    #[test]
    fn pause_from_retry_after() {
        let epoch = Instant::now();
        let mut capacity = Capacity::new(Limits::default(), epoch);
        capacity.pause_until(epoch + Duration::from_secs(2));
        capacity.pause_until(epoch + Duration::from_secs(1));
        assert_eq!(
            capacity.check(epoch, 1),
            Err(CapacityRefusal::Paused { retry_in: Duration::from_secs(2) })
        );
        assert!(capacity.check(epoch + Duration::from_secs(2), 1).is_ok());
    }
}
