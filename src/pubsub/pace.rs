//! At most one fan-out per turn of Envoy's event loop.
//!
//! Envoy writes a connection's output to its socket in the *next* turn of
//! the worker's event loop (a write only schedules the socket write), while
//! a wake committed through the scheduler runs in the *current* turn. A
//! busy channel therefore starves its own subscribers: the wake for the
//! next messages arrives while the last fan-out's sessions are still being
//! run, runs in the same turn, fans out again, and so on; the turn never
//! ends and nothing is written (with 10,000 subscribers at 1,000 msg/s
//! Envoy buffered gigabytes and delivered almost nothing).
//!
//! So after a fan-out the hub holds further fan-outs until a subscribed
//! session is run again from the next turn (see
//! [`crate::session::Downstream::resume_later`]). Frames arriving meanwhile
//! wait in the links' mailboxes and go out together with the next fan-out,
//! one chunk per subscriber: the busier the channel, the larger the chunks
//! and the fewer the writes.

use std::time::{Duration, Instant};

/// A yield not resumed by then is given up on (the session meant to resume
/// it can no longer be run, in ways its leaving did not show).
pub const GIVE_UP: Duration = Duration::from_secs(1);

/// Where the hub stands between fan-outs.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Pace {
    /// A fan-out may run now.
    #[default]
    Free,
    /// A fan-out ran in this turn; the session that ran it arranges the
    /// resumption (or gives up) before its hook returns.
    Owed(Instant),
    /// Client `.0`'s session is run again from the next turn.
    Yielding(u64, Instant),
}

impl Pace {
    /// Whether a fan-out may run now.
    pub fn may_fan_out(&mut self, now: Instant) -> bool {
        match *self {
            Pace::Free => true,
            Pace::Owed(since) | Pace::Yielding(_, since) => {
                if now.saturating_duration_since(since) >= GIVE_UP {
                    *self = Pace::Free;
                    return true;
                }
                false
            }
        }
    }

    /// A fan-out ran.
    pub fn fanned_out(&mut self, now: Instant) {
        *self = Pace::Owed(now);
    }

    /// Whether a session must arrange the resumption now.
    pub fn owed(&self) -> bool {
        matches!(self, Pace::Owed(_))
    }

    /// Client `id`'s session will be run from the next turn.
    pub fn yielding(&mut self, id: u64) {
        if let Pace::Owed(since) = *self {
            *self = Pace::Yielding(id, since);
        }
    }

    /// No session could arrange it: fan out again whenever asked.
    pub fn give_up(&mut self) {
        if self.owed() {
            *self = Pace::Free;
        }
    }

    /// Client `id`'s session runs in a new turn (true: it held the yield).
    pub fn resumed(&mut self, id: u64) -> bool {
        if matches!(*self, Pace::Yielding(y, _) if y == id) {
            *self = Pace::Free;
            return true;
        }
        false
    }

    /// Client `id` leaves; true when it held the yield, which another
    /// session must now take up.
    pub fn left(&mut self, id: u64) -> bool {
        self.resumed(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fan_out_per_turn() {
        let t = Instant::now();
        let mut p = Pace::default();
        assert!(p.may_fan_out(t));
        p.fanned_out(t);
        assert!(p.owed());
        assert!(!p.may_fan_out(t), "held until resumed");
        p.yielding(7);
        assert!(!p.owed() && !p.may_fan_out(t));
        assert!(!p.resumed(8), "only the yielding session resumes it");
        assert!(p.resumed(7));
        assert!(p.may_fan_out(t));
    }

    #[test]
    fn a_yield_nobody_can_take_or_resume_is_released() {
        let t = Instant::now();
        let mut p = Pace::default();
        p.fanned_out(t);
        p.give_up();
        assert!(p.may_fan_out(t), "given up: fan out when asked");
        p.fanned_out(t);
        p.yielding(3);
        assert!(p.left(3), "its session left: another must pump");
        assert!(p.may_fan_out(t));
        p.fanned_out(t);
        p.yielding(3);
        assert!(!p.may_fan_out(t + GIVE_UP / 2));
        assert!(p.may_fan_out(t + GIVE_UP), "never resumed: given up");
    }
}
