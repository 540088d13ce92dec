//! Where a subscription lives and how it is sent there: the link (one
//! subscriber connection per node and user) of its slot's owner, of the
//! node the read policy picks, or of every master; subscribing again after
//! a loss, leaving masters a failover demoted, unsubscribing the last
//! client.

use super::{Again, Env, Hub, Inner, Link, LinkNotify, SubKey, NEXT_PIN, RESUBSCRIBE_DELAY};
use crate::codec;
use crate::config::ReadPolicy;
use crate::upstream::{ClientShared, Part, Request, Target};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Hub {
    /// Subscribe `keys` again off link `lost`: on the node the topology
    /// names now (every master that lacks it, for a cluster-wide one).
    pub(super) fn resubscribe(
        &self,
        inner: &mut Inner,
        keys: Vec<SubKey>,
        again: Again,
        env: &mut Env<'_>,
    ) {
        let Again { lost, wait, to } = again;
        let at = wait.then_some(env.now + RESUBSCRIBE_DELAY);
        for key in keys {
            let Some(s) = inner.subs.get_mut(&key) else {
                continue;
            };
            s.links.retain(|l| *l != lost);
            s.confirmed.retain(|l| *l != lost);
            // Its clients are not kept waiting for a node that may be
            // down for a while.
            s.ready = true;
            for (id, _) in &s.clients {
                if let Some(f) = inner.feeds.get(id) {
                    f.client.wake();
                }
            }
            self.stats
                .inc(self.stats.cluster(key.cluster).pubsub_resubscribes);
            self.place(inner, &key, at, to.clone(), env);
        }
    }

    /// Subscribe `key` where it is missing: its slot's owner, or every
    /// master for a cluster-wide one (no sooner than `at`).
    pub(super) fn place(
        &self,
        inner: &mut Inner,
        key: &SubKey,
        at: Option<Instant>,
        to: Option<String>,
        env: &mut Env<'_>,
    ) {
        let Some(s) = inner.subs.get(key) else {
            return;
        };
        if s.refused.is_some() {
            return;
        }
        let (slot, everywhere, policy) = (s.slot, s.everywhere, s.policy);
        let word = key.kind.subscribe_word();
        if !everywhere {
            if s.links.is_empty() {
                // A node's `MOVED` names the owner before our map does; a
                // read policy other than MASTER picks a node of the shard.
                let node = to.or_else(|| match policy {
                    ReadPolicy::Master => None,
                    _ => (env.reader)(key.cluster, slot, policy),
                });
                let (addr, target) = match node {
                    Some(a) => (
                        Some(a.clone()),
                        Target::Node {
                            addr: a,
                            slot,
                            asking: false,
                        },
                    ),
                    None => (
                        (env.owner)(key.cluster, slot),
                        Target::Slot { slot, read: false },
                    ),
                };
                let link = self.link_to(inner, key, addr);
                if let Some(s) = inner.subs.get_mut(key) {
                    s.links.push(link);
                }
                self.send(inner, link, word, key, target, at, env);
            }
            return;
        }
        let have: Vec<Option<String>> = s
            .links
            .iter()
            .map(|l| inner.links.get(l).and_then(|l| l.addr.clone()))
            .collect();
        // The owner of the subscription's slot first: its link passes the
        // broadcast messages on, in order with the other subscriptions'.
        let home = (env.owner)(key.cluster, slot);
        let mut masters = (env.masters)(key.cluster);
        masters.sort_by_key(|m| Some(m) != home.as_ref());
        for addr in masters {
            if have.contains(&Some(addr.clone())) {
                continue;
            }
            let link = self.link_to(inner, key, Some(addr.clone()));
            if let Some(s) = inner.subs.get_mut(key) {
                s.links.push(link);
            }
            let target = Target::Node {
                addr,
                slot,
                asking: false,
            };
            self.send(inner, link, word, key, target, at, env);
        }
    }

    /// Cluster-wide subscriptions reach masters that joined since.
    pub(super) fn follow_masters(&self, inner: &mut Inner, env: &mut Env<'_>) {
        let keys: Vec<SubKey> = inner
            .subs
            .iter()
            .filter(|(_, s)| s.everywhere)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.leave_demoted(inner, &key, env);
            self.place(inner, &key, None, None, env);
        }
    }

    /// A cluster-wide subscription leaves nodes that are no longer masters
    /// (a failover demoted them): a replica fires the keyspace events of
    /// the writes it replicates, which the shard's new master sends too.
    pub(super) fn leave_demoted(&self, inner: &mut Inner, key: &SubKey, env: &mut Env<'_>) {
        let masters = (env.masters)(key.cluster);
        let Some(s) = inner.subs.get_mut(key) else {
            return;
        };
        // No topology (yet): nothing to compare with.
        if masters.is_empty() {
            return;
        }
        let links = &inner.links;
        let demoted: Vec<u64> = s
            .links
            .iter()
            .copied()
            .filter(|l| {
                links
                    .get(l)
                    .and_then(|l| l.addr.as_ref())
                    .is_some_and(|a| !masters.contains(a))
            })
            .collect();
        if demoted.is_empty() {
            return;
        }
        s.links.retain(|l| !demoted.contains(l));
        s.confirmed.retain(|l| !demoted.contains(l));
        let target = Target::Slot {
            slot: s.slot,
            read: false,
        };
        let word = key.kind.unsubscribe_word();
        for link in demoted {
            crate::log!(
                crate::envoy::Level::Debug,
                "redis_cluster: pubsub: link {link} is no longer on a master: leaving it"
            );
            self.send(inner, link, word, key, target.clone(), None, env);
        }
    }

    pub(super) fn drop_client(&self, inner: &mut Inner, id: u64, key: &SubKey, env: &mut Env<'_>) {
        let Some(sub) = inner.subs.get_mut(key) else {
            return;
        };
        sub.clients.retain(|(c, _)| *c != id);
        if !sub.clients.is_empty() {
            return;
        }
        let (links, slot, policy) = (sub.links.clone(), sub.slot, sub.policy);
        inner.subs.remove(key);
        let cs = self.stats.cluster(key.cluster);
        self.stats.gauge_sub(cs.pubsub_upstream_subscriptions, 1);
        if policy == ReadPolicy::Master {
            self.registry.remove_upstream(key.kind, &key.name);
        }
        // Sent even when nothing else is left on a link (which stays open
        // for the next subscription): with no client left on this worker,
        // nothing would run the upstream walk that closes connections.
        let word = key.kind.unsubscribe_word();
        for link in links {
            let target = Target::Slot { slot, read: false };
            self.send(inner, link, word, key, target, None, env);
        }
    }

    /// The live link to `addr` for `key`'s cluster and user, opened when
    /// there is none (or the address is not known yet).
    pub(super) fn link_to(&self, inner: &mut Inner, key: &SubKey, addr: Option<String>) -> u64 {
        let cluster = key.cluster;
        if let Some((&pin, _)) = inner.links.iter().find(|(_, l)| {
            l.cluster == cluster && addr.is_some() && l.addr == addr && l.user == key.user
        }) {
            return pin;
        }
        let pin = NEXT_PIN.fetch_add(1, Ordering::Relaxed);
        let mailbox = ClientShared::new(Box::new(LinkNotify(self.members.clone())));
        inner.links.insert(
            pin,
            Link {
                cluster,
                addr,
                user: key.user.clone(),
                mailbox,
                opened: false,
                unanswered: VecDeque::new(),
            },
        );
        pin
    }

    /// `word key.name` on link `pin` (no sooner than `at`); `target` places
    /// it when it opens the link's connection.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send(
        &self,
        inner: &mut Inner,
        pin: u64,
        word: &[u8],
        key: &SubKey,
        target: Target,
        at: Option<Instant>,
        env: &mut Env<'_>,
    ) {
        crate::log!(
            crate::envoy::Level::Debug,
            "redis_cluster: pubsub: {} {} on link {pin}",
            String::from_utf8_lossy(word),
            String::from_utf8_lossy(&key.name)
        );
        let Some(link) = inner.links.get_mut(&pin) else {
            return;
        };
        let start = at.unwrap_or(env.now);
        let mut req = Request::new(
            link.mailbox.clone(),
            0,
            Part::Whole,
            key.cluster,
            target,
            codec::command(&[word, &key.name]),
            start + env.op_timeout,
        )
        .user(link.user.clone())
        .pinned(pin, false, 0)
        .streaming();
        if link.opened {
            req = req.continues_pin();
        }
        link.opened = true;
        if word == key.kind.subscribe_word() {
            link.unanswered.push_back(key.clone());
        }
        if let Some(at) = at {
            req = req.not_before(at);
        }
        env.out.push(req);
    }
}
