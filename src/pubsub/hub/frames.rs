//! What a node's subscriber connection sends, read in order: messages
//! fanned out to the clients in runs (consecutive messages of one
//! subscription, see `pubsub::fanout`), confirmations and refusals
//! of subscribes, `sunsubscribe` when a shard channel's slot moved, errors
//! and lost connections, which subscribe again.

use super::{Again, Env, Hub, Inner, SubKey};
use crate::pubsub::{node_event, Kind, Message, NodeEvent};
use crate::upstream::Delivery;

impl Hub {
    pub(super) fn pump_links(&self, inner: &mut Inner, env: &mut Env<'_>) -> bool {
        if !inner.pace.may_fan_out(env.now) {
            // The last fan-out's output goes out first (see `pace`): the
            // frames wait in the links' mailboxes, which notify no one
            // until taken, and the resumed session takes them.
            return false;
        }
        let pins: Vec<u64> = inner.links.keys().copied().collect();
        let mut frames: Vec<Delivery> = Vec::new();
        let mut handed = 0;
        for pin in pins {
            let Some(link) = inner.links.get(&pin) else {
                continue;
            };
            frames.clear();
            link.mailbox.take(&mut frames);
            if !frames.is_empty() {
                crate::log!(
                    crate::envoy::Level::Debug,
                    "redis_cluster: pubsub: link {pin}: {} frames, first {:?}",
                    frames.len(),
                    String::from_utf8_lossy(&frames[0].reply[..frames[0].reply.len().min(60)])
                );
            }
            handed += self.on_frames(inner, pin, &frames, env);
        }
        if handed > 0 {
            inner.pace.fanned_out(env.now);
        }
        self.follow_masters(inner, env);
        handed > 0
    }

    /// Link `pin`'s frames, in order: consecutive messages of one
    /// subscription are fanned out as one run. Returns the messages handed
    /// to clients.
    pub(super) fn on_frames(
        &self,
        inner: &mut Inner,
        pin: u64,
        frames: &[Delivery],
        env: &mut Env<'_>,
    ) -> u64 {
        let Some((cluster, user)) = inner.links.get(&pin).map(|l| (l.cluster, l.user.clone()))
        else {
            return 0;
        };
        let mut handed = 0;
        let mut run: Vec<Message<'_>> = Vec::new();
        let mut run_key: Option<SubKey> = None;
        for d in frames {
            if let NodeEvent::Message(m) = node_event(&d.reply) {
                let key = SubKey {
                    kind: m.kind,
                    cluster,
                    name: m.pattern.unwrap_or(m.channel).to_vec(),
                    user: user.clone(),
                };
                if !Self::passes_on(inner, pin, &key, &m) {
                    continue;
                }
                if run_key.as_ref() != Some(&key) {
                    handed += self.fan_out(inner, run_key.take(), &mut run);
                    run_key = Some(key);
                }
                run.push(m);
                continue;
            }
            handed += self.fan_out(inner, run_key.take(), &mut run);
            if !self.on_frame(inner, pin, &d.reply, env) {
                return handed;
            }
        }
        handed + self.fan_out(inner, run_key, &mut run)
    }

    /// Whether link `pin` passes message `m` of subscription `key` on to
    /// the clients.
    pub(super) fn passes_on(inner: &Inner, pin: u64, key: &SubKey, m: &Message<'_>) -> bool {
        let Some(sub) = inner.subs.get(key).filter(|s| s.links.contains(&pin)) else {
            return false;
        };
        // Broadcast messages reach every node: passed on from one link
        // only; keyspace notifications are each node's own.
        sub.links.first() == Some(&pin) || crate::pubsub::node_local(m.channel)
    }

    /// One frame of link `pin`; false once the link is gone.
    pub(super) fn on_frame(
        &self,
        inner: &mut Inner,
        pin: u64,
        frame: &[u8],
        env: &mut Env<'_>,
    ) -> bool {
        let Some((cluster, user)) = inner.links.get(&pin).map(|l| (l.cluster, l.user.clone()))
        else {
            return false;
        };
        match node_event(frame) {
            NodeEvent::Subscribed(kind, name) => {
                let key = SubKey {
                    kind,
                    cluster,
                    name: name.to_vec(),
                    user: user.clone(),
                };
                if let Some(link) = inner.links.get_mut(&pin) {
                    if let Some(i) = link.unanswered.iter().position(|k| *k == key) {
                        link.unanswered.remove(i);
                    }
                }
                if let Some(s) = inner.subs.get_mut(&key).filter(|s| s.links.contains(&pin)) {
                    if !s.confirmed.contains(&pin) {
                        s.confirmed.push(pin);
                    }
                    let all = s.links.iter().all(|l| s.confirmed.contains(l));
                    if all && !s.ready {
                        s.ready = true;
                        for (id, _) in &s.clients {
                            if let Some(f) = inner.feeds.get(id) {
                                f.client.wake();
                            }
                        }
                    }
                }
            }
            NodeEvent::Unsubscribed(Kind::Shard, name) => {
                // Ours was dropped from the map before it was sent; a
                // confirmed one still here: its slot moved away.
                let key = SubKey {
                    kind: Kind::Shard,
                    cluster,
                    name: name.to_vec(),
                    user: user.clone(),
                };
                let moved = inner
                    .subs
                    .get(&key)
                    .is_some_and(|s| s.links.contains(&pin) && s.confirmed.contains(&pin));
                if moved {
                    crate::log!(
                        crate::envoy::Level::Debug,
                        "redis_cluster: pubsub: shard channel {} left its node: subscribing again",
                        String::from_utf8_lossy(name)
                    );
                    (env.refresh)(cluster);
                    // At once: the old owner's `MOVED` will name the new one.
                    let again = Again {
                        lost: pin,
                        wait: false,
                        to: None,
                    };
                    self.resubscribe(inner, vec![key], again, env);
                }
            }
            NodeEvent::Unsubscribed(..) | NodeEvent::Other => {}
            // Fanned out by `on_frames`.
            NodeEvent::Message(_) => {}
            NodeEvent::Error(e) if e.starts_with(b"NOPERM") => {
                // The client's user may not subscribe to it (its ACL
                // channel rules): the answer to the oldest subscribe
                // unanswered on this link. Its clients get the error, as
                // Redis would have answered them; subscribing again would
                // be refused again.
                crate::log!(
                    crate::envoy::Level::Debug,
                    "redis_cluster: pubsub: a node refused a subscription: {}",
                    String::from_utf8_lossy(e)
                );
                let Some(key) = inner
                    .links
                    .get_mut(&pin)
                    .and_then(|l| l.unanswered.pop_front())
                else {
                    return true;
                };
                let reply = frame.to_vec();
                if let Some(s) = inner.subs.get_mut(&key) {
                    if s.refused.is_none() {
                        s.refused = Some(reply);
                        s.ready = true;
                        for (id, _) in &s.clients {
                            if let Some(f) = inner.feeds.get(id) {
                                f.client.wake();
                            }
                        }
                    }
                }
            }
            NodeEvent::Error(e) => {
                let redirected = [&b"MOVED "[..], b"ASK ", b"TRYAGAIN", b"CLUSTERDOWN"]
                    .iter()
                    .any(|p| e.starts_with(p));
                (env.refresh)(cluster);
                crate::log!(
                    crate::envoy::Level::Debug,
                    "redis_cluster: pubsub: link {pin} error {}",
                    String::from_utf8_lossy(e)
                );
                if redirected {
                    // The link lives; what it has not confirmed goes where
                    // the topology says now.
                    let keys: Vec<SubKey> = inner
                        .subs
                        .iter()
                        .filter(|(_, s)| s.links.contains(&pin) && !s.confirmed.contains(&pin))
                        .map(|(k, _)| k.clone())
                        .collect();
                    if let Some(link) = inner.links.get_mut(&pin) {
                        link.unanswered.retain(|k| !keys.contains(k));
                    }
                    let contacted = inner.links.get(&pin).and_then(|l| l.addr.clone());
                    let to = crate::topology::parse_redirect(e, contacted.as_deref().unwrap_or(""))
                        .filter(|r| matches!(r, crate::topology::Redirect::Moved { .. }))
                        .map(|r| r.addr().to_string());
                    let again = Again {
                        lost: pin,
                        wait: to.is_none(),
                        to,
                    };
                    self.resubscribe(inner, keys, again, env);
                    return true;
                }
                crate::log!(
                    crate::envoy::Level::Info,
                    "redis_cluster: subscriber connection lost ({}): subscribing again",
                    String::from_utf8_lossy(e)
                );
                if let Some(link) = inner.links.remove(&pin) {
                    link.mailbox.detach();
                }
                let keys: Vec<SubKey> = inner
                    .subs
                    .iter()
                    .filter(|(_, s)| s.links.contains(&pin))
                    .map(|(k, _)| k.clone())
                    .collect();
                let again = Again {
                    lost: pin,
                    wait: true,
                    to: None,
                };
                self.resubscribe(inner, keys, again, env);
                return false;
            }
        }
        true
    }

    /// Hand `run` (messages of subscription `key`) to its clients, leaving
    /// it empty; returns the messages handed over.
    pub(super) fn fan_out(
        &self,
        inner: &Inner,
        key: Option<SubKey>,
        run: &mut Vec<Message<'_>>,
    ) -> u64 {
        let handed = match key.as_ref().and_then(|k| inner.subs.get(k)) {
            Some(sub) if !run.is_empty() => {
                let clients = sub
                    .clients
                    .iter()
                    .filter_map(|(id, visible)| Some((&**inner.feeds.get(id)?, &visible[..])));
                crate::pubsub::fanout::fan_out(run, clients)
            }
            _ => 0,
        };
        if let (Some(k), true) = (key, handed > 0) {
            let cs = self.stats.cluster(k.cluster);
            self.stats.add(cs.pubsub_messages_fanned_out, handed);
        }
        run.clear();
        handed
    }
}
