//! When to log a failure that repeats.
//!
//! A refresher that cannot reach its cluster retries every 100 ms at start-up
//! and after every MOVED; logging each attempt at `warn` floods Envoy's log
//! with identical lines, and whoever carries the pager then misses the line
//! that matters. A [`FailureStreak`] says which attempts to log: the first
//! failure of a streak, then one summary every [`FailureStreak::every`]
//! while it lasts, and the recovery (with how many attempts failed).

use std::time::{Duration, Instant};

/// What to log for one attempt's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Nothing: a repeat inside the quiet period, or a success after success.
    Quiet,
    /// The first failure after a success (or at start).
    Failed,
    /// Still failing: `attempts` failures so far in this streak.
    StillFailing { attempts: u64 },
    /// A success ending a streak of `attempts` failures.
    Recovered { attempts: u64 },
}

#[derive(Debug)]
pub struct FailureStreak {
    every: Duration,
    attempts: u64,
    last_logged: Option<Instant>,
}

impl FailureStreak {
    pub fn new(every: Duration) -> FailureStreak {
        FailureStreak {
            every,
            attempts: 0,
            last_logged: None,
        }
    }

    /// How long a streak stays quiet between two summaries.
    pub fn every(&self) -> Duration {
        self.every
    }

    pub fn failure(&mut self, now: Instant) -> Report {
        self.attempts += 1;
        match self.last_logged {
            Some(t) if self.attempts > 1 && now.saturating_duration_since(t) < self.every => {
                Report::Quiet
            }
            _ => {
                self.last_logged = Some(now);
                if self.attempts == 1 {
                    Report::Failed
                } else {
                    Report::StillFailing {
                        attempts: self.attempts,
                    }
                }
            }
        }
    }

    pub fn success(&mut self) -> Report {
        let attempts = std::mem::take(&mut self.attempts);
        self.last_logged = None;
        if attempts == 0 {
            Report::Quiet
        } else {
            Report::Recovered { attempts }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_logs_its_start_then_one_summary_per_period_then_recovery() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = FailureStreak::new(Duration::from_secs(10));
        assert_eq!(s.success(), Report::Quiet);
        assert_eq!(s.failure(t0), Report::Failed);
        // 100 ms retries for 9.9 s: nothing.
        for i in 1..100 {
            assert_eq!(s.failure(t0 + ms(100 * i)), Report::Quiet, "attempt {i}");
        }
        assert_eq!(
            s.failure(t0 + ms(10_000)),
            Report::StillFailing { attempts: 101 }
        );
        assert_eq!(s.failure(t0 + ms(10_100)), Report::Quiet);
        assert_eq!(s.success(), Report::Recovered { attempts: 102 });
        assert_eq!(s.success(), Report::Quiet);
        // A new streak logs its first failure at once.
        assert_eq!(s.failure(t0 + ms(10_200)), Report::Failed);
    }
}
