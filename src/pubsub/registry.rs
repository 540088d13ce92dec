//! The proxy's own subscribers, process-wide (every worker), by what the
//! client subscribed to as the client named it: what `PUBSUB CHANNELS`,
//! `NUMSUB`, `NUMPAT`, `SHARDCHANNELS` and `SHARDNUMSUB` answer. The
//! proxy stands for one Redis to its clients, so these count the proxy's
//! clients, not the nodes' (whose subscribers are the proxy's shared
//! upstream subscriptions, one per worker).

use super::{glob_match, Kind};
use parking_lot::Mutex;
use std::collections::HashMap;

/// Names of a kind, each with a count (and, upstream, its placing slot).
type Names<V> = Mutex<HashMap<(Kind, Vec<u8>), V>>;

#[derive(Default)]
pub struct Registry {
    counts: Names<usize>,
    /// The workers' upstream subscriptions by name on the node: how many
    /// (one per worker) and the slot that placed them.
    upstream: Names<(usize, u16)>,
}

impl Registry {
    pub fn add(&self, kind: Kind, name: &[u8]) {
        *self.counts.lock().entry((kind, name.to_vec())).or_default() += 1;
    }

    pub fn remove(&self, kind: Kind, name: &[u8]) {
        let mut m = self.counts.lock();
        let key = (kind, name.to_vec());
        if let Some(n) = m.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&key);
            }
        }
    }

    /// A worker subscribed to `name` upstream, on the owner of `slot`.
    pub fn add_upstream(&self, kind: Kind, name: &[u8], slot: u16) {
        let mut m = self.upstream.lock();
        let e = m.entry((kind, name.to_vec())).or_insert((0, slot));
        e.0 += 1;
    }

    pub fn remove_upstream(&self, kind: Kind, name: &[u8]) {
        let mut m = self.upstream.lock();
        let key = (kind, name.to_vec());
        if let Some(e) = m.get_mut(&key) {
            e.0 -= 1;
            if e.0 == 0 {
                m.remove(&key);
            }
        }
    }

    /// For a `PUBLISH` (`kind` Channel) or `SPUBLISH` (Shard) to `channel`
    /// (`node_name` on the node): the proxy's clients that receive it, and
    /// the proxy's own upstream subscriptions among the receivers the node
    /// counts (`same_node`: a slot's owner is the node published to).
    pub fn receivers(
        &self,
        kind: Kind,
        channel: &[u8],
        node_name: &[u8],
        same_node: impl Fn(u16) -> bool,
    ) -> (usize, usize) {
        let counts = self.counts.lock();
        let upstream = self.upstream.lock();
        let own = |k: Kind, n: &[u8]| counts.get(&(k, n.to_vec())).copied().unwrap_or(0);
        let ours = |k: Kind, n: &[u8]| upstream.get(&(k, n.to_vec())).map_or(0, |e| e.0);
        if kind == Kind::Shard {
            return (own(Kind::Shard, channel), ours(Kind::Shard, node_name));
        }
        let mut clients = own(Kind::Channel, channel);
        for ((k, p), n) in counts.iter() {
            if *k == Kind::Pattern && glob_match(p, channel) {
                clients += n;
            }
        }
        let mut links = ours(Kind::Channel, node_name);
        for ((k, p), (n, slot)) in upstream.iter() {
            if *k == Kind::Pattern && glob_match(p, node_name) && same_node(*slot) {
                links += n;
            }
        }
        (clients, links)
    }

    /// Subscribers of `name`.
    pub fn count(&self, kind: Kind, name: &[u8]) -> usize {
        self.counts
            .lock()
            .get(&(kind, name.to_vec()))
            .copied()
            .unwrap_or(0)
    }

    /// Names of `kind` with a subscriber, matching `pattern` when given.
    pub fn names(&self, kind: Kind, pattern: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self
            .counts
            .lock()
            .keys()
            .filter(|(k, n)| *k == kind && pattern.is_none_or(|p| glob_match(p, n)))
            .map(|(_, n)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Distinct patterns subscribed (`PUBSUB NUMPAT`).
    pub fn patterns(&self) -> usize {
        self.counts
            .lock()
            .keys()
            .filter(|(k, _)| *k == Kind::Pattern)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_subscribers() {
        let r = Registry::default();
        r.add(Kind::Channel, b"a");
        r.add(Kind::Channel, b"a");
        r.add(Kind::Pattern, b"a*");
        r.add(Kind::Shard, b"s");
        assert_eq!(r.count(Kind::Channel, b"a"), 2);
        assert_eq!(r.count(Kind::Shard, b"a"), 0);
        assert_eq!(r.names(Kind::Channel, Some(b"a*")), vec![b"a".to_vec()]);
        assert_eq!(r.patterns(), 1);
        r.add_upstream(Kind::Channel, b"a", 1);
        r.add_upstream(Kind::Pattern, b"a*", 2);
        r.add_upstream(Kind::Pattern, b"a*", 2);
        assert_eq!(r.receivers(Kind::Channel, b"a", b"a", |s| s == 2), (3, 3));
        assert_eq!(r.receivers(Kind::Channel, b"a", b"a", |s| s == 1), (3, 1));
        r.remove_upstream(Kind::Pattern, b"a*");
        assert_eq!(r.receivers(Kind::Channel, b"a", b"a", |_| true), (3, 2));
        assert_eq!(r.receivers(Kind::Shard, b"s", b"s", |_| true), (1, 0));
        r.remove(Kind::Channel, b"a");
        r.remove(Kind::Channel, b"a");
        assert!(r.names(Kind::Channel, None).is_empty());
    }
}
