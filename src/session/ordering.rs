//! Keeping a client's commands in order across two kinds of connection.
//!
//! A client's ordinary commands travel on connections the proxy shares among
//! clients; a transaction (`WATCH`, `MULTI` … `EXEC`) travels on a connection
//! of its own, so that `WATCH` guards exactly this client's `EXEC`. Two
//! connections to one node are two queues: the node may read the second
//! before the first. Redis promises a client that its commands run in the
//! order it sent them, so a command may only leave on one kind of connection
//! once every earlier command sent on the other kind has been answered:
//!
//! ```text
//! SET k 1        shared ─────────────┐ answered
//! MULTI / GET k  own connection      └─▶ only now sent: GET sees 1
//! ```
//!
//! and likewise a `SET` pipelined after `WATCH` waits for `WATCH`'s reply,
//! so that it does abort the `EXEC`. Commands on the same kind of connection
//! keep their order by themselves (one pipelined connection per node), so a
//! pipelined transaction or a pipeline of ordinary commands never waits.

/// Which kind of connection a command's request takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Shared connections (and local answers outside a transaction).
    Shared,
    /// The transaction's own connection.
    Txn,
    /// Never waits: it resets the client, whatever is in flight.
    Free,
}

/// The lane of a command (its table name; `None`: unknown), given whether a
/// transaction is open (`WATCH` or `MULTI`) and whether inside `MULTI`.
pub fn lane(name: Option<&str>, txn_open: bool, in_multi: bool) -> Lane {
    match name {
        None => Lane::Free,
        Some("reset") => Lane::Free,
        Some("multi" | "exec" | "discard" | "watch") => Lane::Txn,
        Some("unwatch") if txn_open => Lane::Txn,
        Some(_) if in_multi => Lane::Txn,
        Some(_) => Lane::Shared,
    }
}

/// Whether a command name opens a transaction (the only commands that
/// change lanes while none is open). No table lookup: this runs for every
/// command of a pipeline.
pub fn opens_txn(name: &[u8]) -> bool {
    ["multi", "exec", "discard", "watch"]
        .iter()
        .any(|t| name.eq_ignore_ascii_case(t.as_bytes()))
}

/// Unanswered commands per lane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    pub shared: u32,
    pub txn: u32,
}

impl Waiting {
    pub fn add(&mut self, lane: Lane) {
        match lane {
            Lane::Shared => self.shared += 1,
            Lane::Txn => self.txn += 1,
            Lane::Free => {}
        }
    }

    pub fn answered(&mut self, lane: Lane) {
        match lane {
            Lane::Shared => self.shared = self.shared.saturating_sub(1),
            Lane::Txn => self.txn = self.txn.saturating_sub(1),
            Lane::Free => {}
        }
    }

    /// Whether a command of `lane` must wait before it is handled.
    pub fn must_wait(&self, lane: Lane) -> bool {
        match lane {
            Lane::Shared => self.txn > 0,
            Lane::Txn => self.shared > 0,
            Lane::Free => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes() {
        assert_eq!(lane(Some("get"), false, false), Lane::Shared);
        assert_eq!(lane(Some("get"), true, false), Lane::Shared); // after WATCH
        assert_eq!(lane(Some("get"), true, true), Lane::Txn);
        assert_eq!(lane(Some("watch"), false, false), Lane::Txn);
        assert_eq!(lane(Some("multi"), false, false), Lane::Txn);
        assert_eq!(lane(Some("unwatch"), false, false), Lane::Shared);
        assert_eq!(lane(Some("unwatch"), true, false), Lane::Txn);
        assert_eq!(lane(Some("reset"), true, true), Lane::Free);
        assert_eq!(lane(None, true, true), Lane::Free);
        assert!(opens_txn(b"MULTI") && opens_txn(b"watch") && opens_txn(b"Exec"));
        assert!(!opens_txn(b"get") && !opens_txn(b"unwatch"));
    }

    #[test]
    fn a_lane_waits_only_for_the_other() {
        let mut w = Waiting::default();
        assert!(!w.must_wait(Lane::Shared) && !w.must_wait(Lane::Txn));
        w.add(Lane::Shared);
        w.add(Lane::Shared);
        assert!(
            !w.must_wait(Lane::Shared),
            "a pipeline never waits for itself"
        );
        assert!(w.must_wait(Lane::Txn));
        w.answered(Lane::Shared);
        assert!(w.must_wait(Lane::Txn));
        w.answered(Lane::Shared);
        assert!(!w.must_wait(Lane::Txn));
        w.add(Lane::Txn);
        assert!(w.must_wait(Lane::Shared) && !w.must_wait(Lane::Txn));
        assert!(!w.must_wait(Lane::Free));
        w.answered(Lane::Txn);
        assert_eq!(w, Waiting::default());
    }
}
