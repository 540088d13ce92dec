//! When and where an Envoy worker is woken for its upstream I/O (pure logic).
//!
//! Envoy's scheduler is per connection, so a worker is woken through one of
//! its client connections, the *anchor* (here the oldest live one). The
//! helper thread asks for a wake whenever a socket becomes ready or a
//! deadline passes; at most one wake is outstanding (one scheduler event per
//! burst, whatever the number of sockets and clients). An event committed to
//! a connection that then closes is never delivered, so when the anchor goes
//! while a wake is outstanding the wake is committed again on the next
//! anchor; with no connection at all, the wake waits for the next one.

use std::collections::BTreeMap;

/// A connection whose socket is ready, and for what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub conn: usize,
    pub readable: bool,
    pub writable: bool,
}

/// The wake state shared by a worker and its helper thread (behind a lock).
/// `T` is what a wake is committed on (Envoy's scheduler in production).
pub struct Wakes<T> {
    /// Candidate anchors by key; keys only grow, so the first is the oldest.
    anchors: BTreeMap<u64, T>,
    /// Something is waiting for the worker (readiness, a deadline).
    wanted: bool,
    /// A wake is committed on the current anchor and has not run yet.
    pending: bool,
    ready: Vec<Ready>,
}

impl<T> Default for Wakes<T> {
    fn default() -> Self {
        Wakes {
            anchors: BTreeMap::new(),
            wanted: false,
            pending: false,
            ready: Vec::new(),
        }
    }
}

impl<T> Wakes<T> {
    /// Sockets became ready (or, with none, a deadline passed): returns the
    /// anchor to commit a wake on, when one is due now.
    pub fn want(&mut self, ready: impl IntoIterator<Item = Ready>) -> Option<&T> {
        self.ready.extend(ready);
        self.wanted = true;
        self.commit_due()
    }

    fn commit_due(&mut self) -> Option<&T> {
        if self.pending || !self.wanted {
            return None;
        }
        let anchor = self.anchors.values().next()?;
        self.pending = true;
        Some(anchor)
    }

    /// A wake is committed and has not run yet.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// The worker runs a wake: everything asked for so far is its to do
    /// (`out` gets the ready sockets, each once).
    pub fn begin(&mut self, out: &mut Vec<Ready>) {
        self.pending = false;
        self.wanted = false;
        out.clear();
        for r in self.ready.drain(..) {
            match out.iter_mut().find(|o| o.conn == r.conn) {
                Some(o) => {
                    o.readable |= r.readable;
                    o.writable |= r.writable;
                }
                None => out.push(r),
            }
        }
    }

    /// A new connection: returns it when a wake waited for an anchor.
    pub fn add_anchor(&mut self, key: u64, anchor: T) -> Option<&T> {
        self.anchors.insert(key, anchor);
        self.commit_due()
    }

    /// A connection is closing: returns its handle (drop it after the
    /// lock), and the new anchor when an outstanding wake must be committed
    /// again there.
    pub fn remove_anchor(&mut self, key: u64) -> (Option<T>, Option<&T>) {
        let was_anchor = self.anchors.keys().next() == Some(&key);
        let removed = self.anchors.remove(&key);
        if was_anchor && self.pending {
            self.pending = false;
            return (removed, self.commit_due());
        }
        (removed, None)
    }

    #[cfg(test)]
    pub fn anchors(&self) -> usize {
        self.anchors.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(conn: usize) -> Ready {
        Ready {
            conn,
            readable: true,
            writable: false,
        }
    }

    #[test]
    fn one_commit_per_burst_until_the_worker_runs_it() {
        let mut w = Wakes::default();
        assert!(w.add_anchor(1, "a").is_none());
        assert_eq!(w.want([r(0)]), Some(&"a"));
        // More readiness before the worker ran: no second event.
        assert!(w.want([r(1)]).is_none());
        assert!(w.want([r(0)]).is_none());
        let mut out = Vec::new();
        w.begin(&mut out);
        assert_eq!(out, vec![r(0), r(1)], "each socket once, in order");
        // After the worker ran, the next readiness commits again.
        assert_eq!(w.want([r(2)]), Some(&"a"));
    }

    #[test]
    fn readable_and_writable_of_one_socket_merge() {
        let mut w: Wakes<()> = Wakes::default();
        let wr = Ready {
            conn: 3,
            readable: false,
            writable: true,
        };
        w.want([wr, r(3)]);
        let mut out = Vec::new();
        w.begin(&mut out);
        assert_eq!(
            out,
            vec![Ready {
                conn: 3,
                readable: true,
                writable: true
            }]
        );
    }

    #[test]
    fn the_oldest_connection_is_the_anchor() {
        let mut w = Wakes::default();
        w.add_anchor(5, "old");
        w.add_anchor(9, "new");
        assert_eq!(w.want([r(0)]), Some(&"old"));
    }

    #[test]
    fn closing_the_anchor_with_a_wake_outstanding_commits_on_the_next() {
        let mut w = Wakes::default();
        w.add_anchor(1, "a");
        w.add_anchor(2, "b");
        assert_eq!(w.want([r(0)]), Some(&"a"));
        let (gone, again) = w.remove_anchor(1);
        assert_eq!(gone, Some("a"));
        assert_eq!(again, Some(&"b"));
        // Still one outstanding wake: more readiness adds no event.
        assert!(w.want([r(1)]).is_none());
    }

    #[test]
    fn closing_another_connection_or_an_idle_anchor_commits_nothing() {
        let mut w = Wakes::default();
        w.add_anchor(1, "a");
        w.add_anchor(2, "b");
        assert_eq!(w.remove_anchor(1), (Some("a"), None), "no wake outstanding");
        assert_eq!(w.want([r(0)]), Some(&"b"));
        w.add_anchor(3, "c");
        assert_eq!(w.remove_anchor(3), (Some("c"), None), "not the anchor");
        assert_eq!(w.anchors(), 1);
    }

    #[test]
    fn a_wake_with_no_connection_waits_for_the_next_one() {
        let mut w = Wakes::default();
        assert!(w.want([r(0)]).is_none());
        assert_eq!(w.add_anchor(7, "late"), Some(&"late"));
        assert!(w.add_anchor(8, "later").is_none(), "already committed");
        let (_, again) = w.remove_anchor(7);
        assert_eq!(again, Some(&"later"));
        w.remove_anchor(8);
        // Every anchor gone with a wake outstanding: the next one gets it.
        assert_eq!(w.add_anchor(9, "next"), Some(&"next"));
    }
}
