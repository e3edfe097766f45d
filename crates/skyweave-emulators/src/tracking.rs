//! Request accounting shared by every emulator: each API request is counted
//! once and ends up completed, cancelled or still in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::Stats;

/// The four request counters.
#[derive(Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    in_flight: AtomicU64,
}

impl Counters {
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    pub(crate) fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    pub(crate) fn cancelled(&self) -> u64 {
        self.cancelled.load(Ordering::Acquire)
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            requests: self.requests(),
            completed: self.completed(),
            cancelled: self.cancelled(),
            in_flight: self.in_flight(),
        }
    }

    /// Count a new request and track it until it ends.
    pub(crate) fn track(self: &Arc<Self>) -> Tracker {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Tracker { counters: Arc::clone(self), done: false }
    }
}

/// Lives as long as a request is being answered; its drop moves the request
/// from in-flight to completed (when [`Tracker::done`] was called) or
/// cancelled (the response future or body was dropped first, i.e. the client
/// went away).
pub(crate) struct Tracker {
    counters: Arc<Counters>,
    done: bool,
}

impl Tracker {
    pub(crate) fn done(&mut self) {
        self.done = true;
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if self.done {
            self.counters.completed.fetch_add(1, Ordering::AcqRel);
        } else {
            self.counters.cancelled.fetch_add(1, Ordering::AcqRel);
        }
        self.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
