//! Where a session reads the time.
//!
//! In Envoy a session uses the system clock. Tests and the session fuzz
//! target use a [`ManualClock`] they move themselves, so they can step past
//! `op_timeout` at once and check what every command got by its deadline.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub enum Clock {
    /// `Instant::now()`.
    #[default]
    System,
    /// A clock that moves only when told to.
    Manual(Arc<ManualClock>),
}

impl Clock {
    pub fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(m) => m.now(),
        }
    }
}

/// A clock that starts at the instant it was made and moves only by
/// [`ManualClock::advance`].
pub struct ManualClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        })
    }

    pub fn now(&self) -> Instant {
        self.start + *self.elapsed.lock()
    }

    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock() += by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let m = ManualClock::new();
        let clock = Clock::Manual(m.clone());
        let t0 = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.now(), t0);
        m.advance(Duration::from_secs(3));
        assert_eq!(clock.now(), t0 + Duration::from_secs(3));
    }
}
