//! Bookkeeping that keeps a worker's wake from walking every connection
//! (pure logic): the connections that may have clock work ([`ConnSet`]),
//! and deadlines by key ([`DeadlineQueue`]).
//!
//! With many clients blocked, each on a connection of its own, a walk over
//! every connection on each wake made every other client's command pay for
//! the blocked ones (issue #12). Each wake now looks only at what these
//! name.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// A set of connection indexes, each listed once however often it is
/// added: O(1) to add (on every request queued), O(len) to prune.
#[derive(Default)]
pub(super) struct ConnSet {
    listed: Vec<bool>,
    list: Vec<usize>,
}

impl ConnSet {
    pub(super) fn insert(&mut self, idx: usize) {
        if self.listed.len() <= idx {
            self.listed.resize(idx + 1, false);
        }
        if !self.listed[idx] {
            self.listed[idx] = true;
            self.list.push(idx);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The members, in the order they were added (a copy: the caller may
    /// change connections while going through them).
    pub(super) fn members(&self) -> Vec<usize> {
        self.list.clone()
    }

    /// Keep only the members for which `keep` holds.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let listed = &mut self.listed;
        self.list.retain(|&i| {
            let k = keep(i);
            if !k {
                listed[i] = false;
            }
            k
        });
    }
}

/// At most one deadline per key, soonest first. Setting a key's deadline
/// again replaces it.
pub(super) struct DeadlineQueue<K> {
    by_time: BTreeSet<(Instant, K)>,
    by_key: HashMap<K, Instant>,
}

impl<K> Default for DeadlineQueue<K> {
    fn default() -> Self {
        DeadlineQueue {
            by_time: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Copy + Ord + Hash> DeadlineQueue<K> {
    /// `key` is due at `at` (instead of any deadline it had).
    pub(super) fn set(&mut self, key: K, at: Instant) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.by_time.remove(&(old, key));
        }
        self.by_time.insert((at, key));
    }

    /// `key` is no longer due.
    pub(super) fn cancel(&mut self, key: K) {
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key));
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The next key due at or before `now`, removed; `None` when none is.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let &(at, key) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.pop_first();
        self.by_key.remove(&key);
        Some(key)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_member_is_listed_once_until_pruned() {
        let mut s = ConnSet::default();
        assert!(s.is_empty());
        s.insert(3);
        s.insert(0);
        s.insert(3);
        assert_eq!(s.members(), vec![3, 0]);
        s.retain(|i| i != 3);
        assert_eq!(s.members(), vec![0]);
        // Pruned: it can be listed again.
        s.insert(3);
        s.insert(3);
        assert_eq!(s.members(), vec![0, 3]);
        s.retain(|_| false);
        assert!(s.is_empty());
    }

    #[test]
    fn keys_come_out_soonest_first_and_only_when_due() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = DeadlineQueue::default();
        q.set(1usize, t0 + ms(30));
        q.set(2, t0 + ms(10));
        q.set(3, t0 + ms(20));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(q.pop_due(t0 + ms(25)), Some(2));
        assert_eq!(q.pop_due(t0 + ms(25)), Some(3));
        assert_eq!(q.pop_due(t0 + ms(25)), None);
        assert_eq!(q.pop_due(t0 + ms(30)), Some(1));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn setting_again_replaces_and_cancel_removes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = DeadlineQueue::default();
        q.set(7usize, t0 + ms(10));
        q.set(7, t0 + ms(50));
        assert_eq!(q.len(), 1, "one deadline per key");
        assert_eq!(q.pop_due(t0 + ms(20)), None, "the old deadline is gone");
        assert_eq!(q.pop_due(t0 + ms(50)), Some(7));
        q.set(8, t0);
        q.set(9, t0);
        q.cancel(8);
        q.cancel(8);
        assert_eq!(q.pop_due(t0 + ms(1)), Some(9));
        assert_eq!(q.pop_due(t0 + ms(1)), None);
        assert_eq!(q.len(), 0);
    }
}
