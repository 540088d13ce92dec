//! The proxy's own subscribers, process-wide (every worker), by what the
//! client subscribed to as the client named it: what `PUBSUB CHANNELS`,
//! `NUMSUB`, `NUMPAT`, `SHARDCHANNELS` and `SHARDNUMSUB` answer. The
//! proxy stands for one Redis to its clients, so these count the proxy's
//! clients, not the nodes' (whose subscribers are the proxy's shared
//! upstream subscriptions, one per worker).

use super::{glob_match, Kind};
use parking_lot::Mutex;
use std::collections::HashMap;

#[derive(Default)]
pub struct Registry {
    counts: Mutex<HashMap<(Kind, Vec<u8>), usize>>,
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
        r.remove(Kind::Channel, b"a");
        r.remove(Kind::Channel, b"a");
        assert!(r.names(Kind::Channel, None).is_empty());
    }
}
