//! The reply FIFO: one slot per command, in the order the client sent them.
//!
//! Every command gets a sequence number and a slot; replies (from the
//! upstream loop, in any order across nodes) fill their slots, and only the
//! contiguous filled prefix leaves, so a client always gets its replies in
//! the order it sent the commands. The FIFO also counts unanswered commands
//! per kind of connection ([`Waiting`], see [`super::ordering`]).

use super::ordering::{Lane, Waiting};
use std::collections::VecDeque;
use std::time::Instant;

/// A reply slot: filled when the reply is known, written in order.
struct Slot {
    reply: Option<Vec<u8>>,
    /// `CLIENT REPLY OFF|SKIP`: the command runs, its reply is not written.
    silent: bool,
    /// Command table index (`None`: not a known command).
    cmd: Option<usize>,
    start: Instant,
    /// The kind of connection the command took.
    lane: Lane,
}

/// A reply that left the FIFO, with what statistics need of its command.
pub struct Ready {
    pub reply: Vec<u8>,
    pub silent: bool,
    pub cmd: Option<usize>,
    pub start: Instant,
}

/// Reply slots for commands `head_seq ..`, in order.
#[derive(Default)]
pub struct Replies {
    slots: VecDeque<Slot>,
    head_seq: u64,
    waiting: Waiting,
}

impl Replies {
    /// A slot for the next command; returns its sequence number.
    pub fn push(&mut self, silent: bool, cmd: Option<usize>, start: Instant, lane: Lane) -> u64 {
        let seq = self.head_seq + self.slots.len() as u64;
        self.slots.push_back(Slot {
            reply: None,
            silent,
            cmd,
            start,
            lane,
        });
        self.waiting.add(lane);
        seq
    }

    /// The reply of command `seq` (a later one replaces it; one for a slot
    /// already gone is dropped).
    pub fn fill(&mut self, seq: u64, reply: Vec<u8>) {
        let Some(i) = seq.checked_sub(self.head_seq) else {
            return;
        };
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| self.slots.get_mut(i)) {
            if slot.reply.is_none() {
                self.waiting.answered(slot.lane);
            }
            slot.reply = Some(reply);
        }
    }

    /// The oldest reply, if it is in.
    pub fn pop_ready(&mut self) -> Option<Ready> {
        self.slots.front()?.reply.as_ref()?;
        let slot = self.slots.pop_front()?;
        self.head_seq += 1;
        Some(Ready {
            reply: slot.reply.unwrap_or_default(),
            silent: slot.silent,
            cmd: slot.cmd,
            start: slot.start,
        })
    }

    /// Command `seq` has its reply (or has left already).
    pub fn answered(&self, seq: u64) -> bool {
        match seq.checked_sub(self.head_seq) {
            None => true,
            Some(i) => usize::try_from(i)
                .ok()
                .and_then(|i| self.slots.get(i))
                .is_some_and(|s| s.reply.is_some()),
        }
    }

    /// When command `seq` arrived (`None`: no such slot).
    pub fn start_of(&self, seq: u64) -> Option<Instant> {
        let i = seq.checked_sub(self.head_seq)?;
        self.slots.get(usize::try_from(i).ok()?).map(|s| s.start)
    }

    /// When the oldest command not written yet arrived.
    pub fn oldest_start(&self) -> Option<Instant> {
        self.slots.front().map(|s| s.start)
    }

    /// The sequence number of the oldest command not written yet.
    pub fn head_seq(&self) -> u64 {
        self.head_seq
    }

    /// Commands not written yet.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Unanswered commands per lane.
    pub fn waiting(&self) -> &Waiting {
        &self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_leave_in_order_as_a_filled_prefix() {
        let now = Instant::now();
        let mut r = Replies::default();
        let a = r.push(false, Some(1), now, Lane::Shared);
        let b = r.push(false, None, now, Lane::Shared);
        let c = r.push(false, None, now, Lane::Shared);
        assert_eq!((a, b, c), (0, 1, 2));
        r.fill(c, b"c".to_vec());
        r.fill(b, b"b".to_vec());
        assert!(r.pop_ready().is_none(), "the head is not answered yet");
        assert!(r.answered(b) && !r.answered(a));
        r.fill(a, b"a".to_vec());
        let out: Vec<Vec<u8>> = std::iter::from_fn(|| r.pop_ready().map(|x| x.reply)).collect();
        assert_eq!(out, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(r.is_empty());
        assert_eq!(r.head_seq(), 3);
        // Gone commands count as answered; a late reply for one is dropped.
        assert!(r.answered(a));
        r.fill(a, b"late".to_vec());
        assert!(r.pop_ready().is_none());
        assert_eq!(r.push(false, None, now, Lane::Shared), 3);
    }

    #[test]
    fn silent_replies_and_stats_fields_are_kept() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(5);
        let mut r = Replies::default();
        let a = r.push(true, Some(7), t0, Lane::Shared);
        let b = r.push(false, None, t1, Lane::Shared);
        assert_eq!(r.oldest_start(), Some(t0));
        assert_eq!(r.start_of(b), Some(t1));
        assert_eq!(r.start_of(9), None);
        r.fill(a, b"+OK\r\n".to_vec());
        let ready = r.pop_ready().unwrap();
        assert!(ready.silent);
        assert_eq!((ready.cmd, ready.start), (Some(7), t0));
        assert_eq!(r.oldest_start(), Some(t1));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn waiting_counts_unanswered_commands_per_lane() {
        let now = Instant::now();
        let mut r = Replies::default();
        let s = r.push(false, None, now, Lane::Shared);
        let t = r.push(false, None, now, Lane::Txn);
        let f = r.push(false, None, now, Lane::Free);
        assert_eq!((r.waiting().shared, r.waiting().txn), (1, 1));
        r.fill(t, Vec::new());
        // A second reply to the same slot is not counted twice.
        r.fill(t, Vec::new());
        assert_eq!((r.waiting().shared, r.waiting().txn), (1, 0));
        r.fill(f, Vec::new());
        r.fill(s, Vec::new());
        assert_eq!(*r.waiting(), Waiting::default());
    }
}
