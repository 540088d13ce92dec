//! A client's subscriptions: the session's side of Pub/Sub.
//!
//! The session keeps what this client subscribes to (with Redis's counts),
//! synthesizes its acknowledgements, and asks its worker's
//! [`Hub`](crate::pubsub::hub::Hub) for the shared upstream subscriptions.
//! An acknowledgement of a new upstream subscription waits in its reply
//! slot until the node confirms it, so a message published after the
//! client saw its acknowledgement reaches it. Messages wait in the
//! client's feed and are written only when no reply is pending, so they
//! fall between replies, never inside one. A RESP2 client that subscribes
//! is in subscribed mode (only the subscription commands, `PING`, `QUIT`
//! and `RESET`) until it holds no subscription.

use super::{Downstream, Session};
use crate::codec;
use crate::config::ReadPolicy;
use crate::pubsub::hub::{AckState, Env, Feed, Place, SubKey, Taken};
use crate::pubsub::registry::Registry;
use crate::pubsub::{self, Kind};
use crate::slot;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Spreads shard channel subscriptions over a shard's replicas.
static READER_RR: AtomicUsize = AtomicUsize::new(0);

/// The output watermark of a subscriber's connection: at most this many
/// bytes of messages wait in Envoy for a subscriber (per connection, not
/// shared), the rest in its feed (shared).
const PUBSUB_WATERMARK: u32 = 32 * 1024;

/// Where classic channels and patterns are subscribed and published.
const HOME_SLOT: u16 = 0;

/// What a subscribed client holds.
pub(super) struct Subscribed {
    feed: Arc<Feed>,
    /// Its subscriptions, in the order it made them: kind, name as the
    /// client gave it, and the upstream subscription.
    subs: Vec<(Kind, Vec<u8>, SubKey)>,
    /// Acknowledgements waiting for the node.
    acks: Vec<PendingAck>,
    /// Redis's `CLIENT_PUBSUB`: set by a subscribe, cleared when an
    /// unsubscribe leaves nothing.
    mode: bool,
    /// Counted in `pubsub_subscribers_active`.
    counted: bool,
    /// Subscriptions not yet counted in the proxy's `PUBSUB` registry:
    /// their upstream subscription waits for the node. `PUBSUB NUMSUB`
    /// counts a client once a `PUBLISH` would reach it, as in Redis.
    unregistered: Vec<(Kind, Vec<u8>)>,
}

impl Subscribed {
    /// `name` of `kind` is dropped: out of the registry, if it got there.
    fn unregister(&mut self, registry: &Registry, kind: Kind, name: &[u8]) {
        match self
            .unregistered
            .iter()
            .position(|(k, n)| *k == kind && n == name)
        {
            Some(i) => {
                self.unregistered.remove(i);
            }
            None => registry.remove(kind, name),
        }
    }
}

/// A (un)subscribe's acknowledgements waiting for the nodes, or behind
/// one that waits (a refusal before it changes its counts).
struct PendingAck {
    seq: u64,
    /// The upstream subscriptions it waits for.
    wait: Vec<SubKey>,
    kind: Kind,
    subscribe: bool,
    resp3: bool,
    /// Each name (`None`: an unsubscribe-all's nil) and the client's count
    /// after it, when the command ran.
    items: Vec<(Option<Vec<u8>>, usize)>,
    /// Names counted in `items` that an earlier command's refusal dropped.
    discount: usize,
    /// What the command added (kind, name as given, upstream key): all
    /// dropped again when a node refuses one of its names, as Redis
    /// refuses the whole command.
    added: Vec<(Kind, Vec<u8>, SubKey)>,
}

impl PendingAck {
    fn bytes(&self) -> Vec<u8> {
        let word = if self.subscribe {
            self.kind.subscribe_word()
        } else {
            self.kind.unsubscribe_word()
        };
        let mut out = Vec::new();
        for (name, count) in &self.items {
            let n = count.saturating_sub(self.discount);
            pubsub::ack(&mut out, self.resp3, word, name.as_deref(), n);
        }
        out
    }
}

/// Subscriptions counted together in acknowledgements: shard channels,
/// or channels and patterns.
fn class(kind: Kind) -> usize {
    usize::from(kind == Kind::Shard)
}

impl Subscribed {
    fn count(&self, kind: Kind) -> usize {
        self.subs
            .iter()
            .filter(|(k, _, _)| match kind {
                Kind::Shard => *k == Kind::Shard,
                _ => *k != Kind::Shard,
            })
            .count()
    }

    fn holds(&self, kind: Kind, name: &[u8]) -> Option<usize> {
        self.subs
            .iter()
            .position(|(k, n, _)| *k == kind && n == name)
    }
}

impl Session {
    /// Show this client's subscriptions in `CLIENT LIST` / `CLIENT INFO`.
    fn show_subscriptions(&self) {
        let (counts, mode) = match self.pubsub.as_ref() {
            Some(ps) => {
                let n = |kind: Kind| ps.subs.iter().filter(|(k, _, _)| *k == kind).count();
                (
                    [n(Kind::Channel), n(Kind::Pattern), n(Kind::Shard)],
                    ps.mode,
                )
            }
            None => ([0; 3], false),
        };
        self.entry.update(|v| {
            v.subscriptions = counts;
            v.pubsub = mode;
        });
    }

    /// RESP2 subscribed mode: Redis's gate on what may run.
    pub(super) fn subscribed_mode(&self) -> bool {
        !self.state.resp3 && self.pubsub.as_ref().is_some_and(|p| p.mode)
    }

    /// The hub's view of this session's world, for one call.
    fn with_env<R>(&mut self, now: Instant, f: impl FnOnce(&mut Env<'_>) -> R) -> R {
        let proxy = self.proxy.clone();
        let reader = |cluster: usize, slot: u16, policy: ReadPolicy| {
            let map = proxy.topology(cluster)?;
            let shard = map.shard_for_slot(slot)?;
            // Spread over the shard's candidates; a pick that fails is
            // replaced by the next one.
            let rr = READER_RR.fetch_add(1, Ordering::Relaxed);
            crate::routing::pick_node(shard, policy, |_| true, rr)
                .ok()
                .map(str::to_string)
        };
        let owner = |cluster: usize, slot: u16| {
            proxy
                .topology(cluster)?
                .master_for_slot(slot)
                .map(str::to_string)
        };
        let refresh = |cluster: usize| proxy.request_refresh(cluster, "pub/sub link lost or moved");
        let masters = |cluster: usize| -> Vec<String> {
            proxy
                .topology(cluster)
                .map(|m| m.shards.iter().map(|s| s.master.clone()).collect())
                .unwrap_or_default()
        };
        let mut env = Env {
            now,
            op_timeout: self.proxy.config.settings.op_timeout,
            owner: &owner,
            reader: &reader,
            refresh: &refresh,
            masters: &masters,
            out: &mut self.batch,
        };
        f(&mut env)
    }

    /// `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE` and their unsubscribes.
    pub(super) fn subscription(&mut self, name: &str, args: &[&[u8]], now: Instant) {
        let Some((kind, subscribe)) = Kind::of_command(name) else {
            return;
        };
        let names: Vec<&[u8]> = args.iter().skip(1).copied().collect();
        // Acknowledgements are pushes: Redis sends them whatever CLIENT
        // REPLY says.
        self.silent = false;
        if subscribe {
            self.subscribe(kind, &names, now)
        } else {
            self.unsubscribe(kind, &names, now)
        }
    }

    /// Where `name` of `kind` lives: its upstream key and slot; an error
    /// reply when it has no route.
    pub(super) fn place(&self, kind: Kind, name: &[u8]) -> Result<(SubKey, Place), Vec<u8>> {
        let hashtags = self.proxy.config.settings.enable_hashtagging;
        let (cluster, node_name, policy) = match kind {
            Kind::Shard => {
                let r = self
                    .proxy
                    .route(name)
                    .ok_or_else(|| codec::error("ERR no route for this shard channel"))?;
                (
                    r.cluster,
                    name.get(r.strip..).unwrap_or_default(),
                    r.read_policy,
                )
            }
            _ => (
                self.proxy
                    .default_cluster()
                    .ok_or_else(|| codec::error("ERR no route for pub/sub"))?,
                name,
                ReadPolicy::Master,
            ),
        };
        // Classic channels and patterns all live on one node, the owner of
        // slot 0, where PUBLISH goes too: a publisher's messages then reach
        // a client in the order published, whichever channel or pattern
        // they match (Redis Cluster broadcasts them to every node anyway).
        let slot = match kind {
            Kind::Shard => slot::key_slot(node_name, hashtags),
            _ => HOME_SLOT,
        };
        let key = SubKey {
            kind,
            cluster,
            name: node_name.to_vec(),
            user: self.user.clone(),
        };
        Ok((key, Place { slot, policy }))
    }

    fn subscribe(&mut self, kind: Kind, names: &[&[u8]], now: Instant) {
        if self.upstream.is_none() {
            // Config validation mode: no nodes, no links; answered like
            // every command sent upstream then.
            return self.reply_now(codec::error("ERR proxy is not running (validation mode)"));
        }
        let mut placed = Vec::with_capacity(names.len());
        for n in names {
            match self.place(kind, n) {
                Ok(p) => placed.push(p),
                Err(e) => return self.reply_now(e),
            }
        }
        if kind == Kind::Shard {
            let first = placed.first().map(|(k, p)| (k.cluster, p.slot));
            if placed
                .iter()
                .any(|(k, p)| Some((k.cluster, p.slot)) != first)
            {
                return self.reply_now(codec::error(
                    "CROSSSLOT Keys in request don't hash to the same slot",
                ));
            }
        }
        let resp3 = self.state.resp3;
        let limit = self.proxy.config.settings.pubsub_output_limit;
        if self.pubsub.is_none() {
            let feed = Feed::new(self.client.clone(), resp3, limit);
            self.pubsub = Some(Box::new(Subscribed {
                feed,
                subs: Vec::new(),
                acks: Vec::new(),
                mode: false,
                counted: false,
                unregistered: Vec::new(),
            }));
        }
        let hub = self.hub.clone();
        let id = self.state.id;
        let mut items = Vec::new();
        let mut wait = Vec::new();
        let mut added = Vec::new();
        for ((key, at), visible) in placed.into_iter().zip(names) {
            let Some(ps) = self.pubsub.as_mut() else {
                return;
            };
            if ps.holds(kind, visible).is_none() {
                ps.subs.push((kind, visible.to_vec(), key.clone()));
                added.push((kind, visible.to_vec(), key.clone()));
                let feed = ps.feed.clone();
                let fanned = self.with_env(now, |env| {
                    hub.subscribe(id, &feed, key.clone(), visible, at, env)
                });
                self.pubsub_fanned |= fanned;
                match self.pubsub.as_mut() {
                    Some(ps) if !hub.ready(&key) => ps.unregistered.push((kind, visible.to_vec())),
                    _ => self.proxy.pubsub.add(kind, visible),
                }
            }
            if !hub.ready(&key) {
                wait.push(key);
            }
            let Some(ps) = self.pubsub.as_ref() else {
                return;
            };
            items.push((Some(visible.to_vec()), ps.count(kind)));
        }
        if let Some(ps) = self.pubsub.as_mut() {
            ps.mode = true;
            ps.feed.set_resp3(resp3);
        }
        self.count_subscriber();
        self.show_subscriptions();
        let ack = PendingAck {
            seq: self.push_slot(),
            wait,
            kind,
            subscribe: true,
            resp3,
            items,
            discount: 0,
            added,
        };
        let seq = ack.seq;
        self.acknowledge(ack, now);
        // What the client sends next is read once the nodes answered: a
        // refusal (not subscribed after all) then leaves a RESP2 client's
        // later commands ungated and is not listed by a later
        // unsubscribe-all, as in Redis.
        let waiting = self
            .pubsub
            .as_ref()
            .is_some_and(|ps| ps.acks.iter().any(|a| a.seq == seq));
        if waiting {
            self.barrier = Some(seq);
        }
    }

    /// Send `ack` now, or keep it until the nodes answer (and those
    /// before it are sent).
    fn acknowledge(&mut self, ack: PendingAck, now: Instant) {
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        if ack.wait.is_empty() && ps.acks.is_empty() {
            return self.fill(ack.seq, ack.bytes());
        }
        ps.acks.push(ack);
        // A subscription refused before this command joined it wakes no
        // one again.
        self.release_acks(now);
    }

    fn unsubscribe(&mut self, kind: Kind, names: &[&[u8]], now: Instant) {
        let resp3 = self.state.resp3;
        let word = kind.unsubscribe_word();
        let mut out = Vec::new();
        let Some(ps) = self.pubsub.as_mut() else {
            // Subscribed to nothing, ever.
            if names.is_empty() {
                pubsub::ack(&mut out, resp3, word, None, 0);
            }
            for n in names {
                pubsub::ack(&mut out, resp3, word, Some(n), 0);
            }
            return self.reply_now(out);
        };
        let targets: Vec<Vec<u8>> = if names.is_empty() {
            ps.subs
                .iter()
                .filter(|(k, _, _)| *k == kind)
                .map(|(_, n, _)| n.clone())
                .collect()
        } else {
            names.iter().map(|n| n.to_vec()).collect()
        };
        let mut dropped = Vec::new();
        let mut items = Vec::new();
        for n in &targets {
            if let Some(i) = ps.holds(kind, n) {
                let (_, _, key) = ps.subs.remove(i);
                dropped.push(key);
                ps.unregister(&self.proxy.pubsub, kind, n);
            }
            items.push((Some(n.clone()), ps.count(kind)));
        }
        if targets.is_empty() {
            items.push((None, ps.count(kind)));
        }
        if ps.subs.is_empty() {
            ps.mode = false;
        }
        let hub = self.hub.clone();
        let id = self.state.id;
        for key in dropped {
            self.with_env(now, |env| hub.unsubscribe(id, &key, env));
        }
        self.show_subscriptions();
        self.count_subscriber();
        let ack = PendingAck {
            seq: self.push_slot(),
            wait: Vec::new(),
            kind,
            subscribe: false,
            resp3,
            items,
            discount: 0,
            added: Vec::new(),
        };
        self.acknowledge(ack, now);
    }

    /// `pubsub_subscribers_active` counts the clients subscribed to
    /// something.
    fn count_subscriber(&mut self) {
        let stats = &self.proxy.stats;
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        let now = !ps.subs.is_empty();
        if now != ps.counted {
            ps.counted = now;
            if now {
                stats.gauge_add(stats.pubsub_subscribers_active, 1);
            } else {
                stats.gauge_sub(stats.pubsub_subscribers_active, 1);
            }
        }
    }

    /// The session was woken: read the worker's links (any subscribed
    /// session may; one does the work for all), then release the
    /// acknowledgements whose subscriptions the nodes confirmed.
    pub(super) fn pubsub_scheduled(&mut self) {
        if self.pubsub.is_none() {
            return;
        }
        let hub = self.hub.clone();
        let now = self.clock.now();
        self.pubsub_fanned |= self.with_env(now, |env| hub.pump(env));
        self.release_acks(now);
    }

    /// This hook fanned messages out: be run again from the next turn of
    /// Envoy's event loop, so that the subscribers' output is written
    /// before the next fan-out (see `pubsub::pace`); a session that cannot
    /// (closing, reading paused, no way to ask) gives the turn up.
    pub(super) fn settle_pubsub_pace(&mut self, conn: &mut dyn Downstream) {
        if !std::mem::take(&mut self.pubsub_fanned) || !self.hub.owes_yield() {
            return;
        }
        let able = !(self.closed || self.closing || self.end_stream || self.read_disabled);
        if able && conn.resume_later() {
            self.hub.yielding(self.state.id);
        } else {
            self.hub.give_up();
        }
    }

    /// The resumption `resume_later` promised cannot be arranged after
    /// all: another subscribed session takes over.
    pub fn resume_failed(&mut self) {
        self.hub.hand_off(self.state.id);
    }

    /// Run from a new turn of the event loop, as `settle_pubsub_pace`
    /// asked: fan-outs may run again.
    pub fn on_resume(&mut self, conn: &mut dyn Downstream) {
        self.hub.resumed(self.state.id);
        self.on_scheduled(conn);
    }

    /// Answer the subscribes whose subscriptions the nodes confirmed, or
    /// refused: a refused one's reply is the node's error, and what the
    /// command added is dropped (the client's counts as before it).
    fn release_acks(&mut self, now: Instant) {
        let hub = self.hub.clone();
        let Some(ps) = self.pubsub.as_mut() else {
            return;
        };
        let mut done = Vec::new();
        let mut refused = Vec::new();
        // Names a refusal drops, by class: counted in every later ack.
        let mut dropping = [0usize; 2];
        // An earlier ack still waits: later ones wait behind it.
        let mut behind = false;
        let registry = self.proxy.pubsub.clone();
        let Subscribed {
            acks,
            subs,
            unregistered,
            ..
        } = &mut **ps;
        // Every state is read before anything is dropped: a later command
        // waiting for the same refused subscription is refused too.
        acks.retain_mut(|a| {
            a.discount += dropping[class(a.kind)];
            let mut error = None;
            a.wait.retain(|k| match hub.ack_state(k) {
                AckState::Waiting => true,
                AckState::Ready => false,
                AckState::Refused(e) => {
                    error.get_or_insert(e);
                    false
                }
            });
            if let Some(e) = error {
                for (k, n, _) in &a.added {
                    if subs.iter().any(|(k2, n2, _)| k2 == k && n2 == n) {
                        dropping[class(*k)] += 1;
                    }
                }
                refused.extend(std::mem::take(&mut a.added));
                done.push((a.seq, e));
                false
            } else if a.wait.is_empty() && !behind {
                // Confirmed: counted by `PUBSUB` from now on.
                for (k, n, _) in &a.added {
                    if let Some(i) = unregistered.iter().position(|(k2, n2)| k2 == k && n2 == n) {
                        unregistered.remove(i);
                        registry.add(*k, n);
                    }
                }
                done.push((a.seq, a.bytes()));
                false
            } else {
                behind = true;
                true
            }
        });
        for (kind, name, _) in &refused {
            if let Some(i) = ps.holds(*kind, name) {
                ps.subs.remove(i);
                ps.unregister(&registry, *kind, name);
            }
        }
        if !refused.is_empty() && ps.subs.is_empty() {
            ps.mode = false;
        }
        let id = self.state.id;
        if !refused.is_empty() {
            for (_, _, key) in refused {
                self.with_env(now, |env| hub.unsubscribe(id, &key, env));
            }
            self.show_subscriptions();
            self.count_subscriber();
        }
        for (seq, bytes) in done {
            self.fill(seq, bytes);
        }
    }

    /// Write the messages waiting, once no reply is pending (a message
    /// never cuts into a reply); close a client too far behind.
    pub(super) fn drain_pubsub(&mut self, conn: &mut dyn Downstream) {
        let Some(ps) = self.pubsub.as_ref() else {
            return;
        };
        if self.closed {
            return;
        }
        // Messages from now on in the protocol the client speaks now
        // (`HELLO` may have changed it).
        ps.feed.set_resp3(self.state.resp3);
        if !self.pubsub_watermark {
            // Messages a subscriber has not read wait in its feed, where
            // they are shared with the channel's other subscribers, rather
            // than in Envoy's buffer, where each has its own copy: so
            // Envoy's buffer stops taking them (its high watermark) early.
            // It stays lowered after an unsubscribe (replies then pause
            // reading at this size too, which is harmless).
            self.pubsub_watermark = true;
            conn.limit_output(PUBSUB_WATERMARK);
        }
        // Above Envoy's write watermark messages wait in the feed, which
        // counts them against the budget.
        let behind = ps.feed.overflowed();
        if !behind && (!self.replies.is_empty() || self.write_blocked) {
            return;
        }
        // Past the watermark Envoy stops us (`write_blocked`) until the
        // subscriber has read half of it: write just past it, so that the
        // event that lets us go on comes.
        match ps.feed.take_upto(PUBSUB_WATERMARK as usize + 1) {
            Taken::Chunks(chunks) => {
                let stats = &self.proxy.stats;
                let n: usize = chunks.iter().map(|c| c.len()).sum();
                stats.add(stats.downstream_cx_tx_bytes_total, n as u64);
                match chunks.as_slice() {
                    [] => {}
                    [one] => conn.write(one),
                    // One write into Envoy, not one per chunk.
                    many => conn.write(&many.concat()),
                }
            }
            Taken::Overflow => {
                let stats = &self.proxy.stats;
                stats.inc(stats.pubsub_slow_disconnects);
                crate::log!(
                    crate::envoy::Level::Info,
                    "redis_cluster: client {} closed: more than pubsub_output_limit ({} bytes) of messages behind",
                    self.state.id,
                    self.proxy.config.settings.pubsub_output_limit
                );
                self.closed = true;
                self.client.detach();
                self.end_pubsub();
                conn.close(false);
            }
        }
    }

    /// `RESET`, or the client is gone: every subscription dropped.
    pub(super) fn end_pubsub(&mut self) {
        // Whatever it held, it can run no fan-out any more.
        self.hub.hand_off(self.state.id);
        let Some(mut ps) = self.pubsub.take() else {
            return;
        };
        self.show_subscriptions();
        let subs = std::mem::take(&mut ps.subs);
        for (kind, name, _) in &subs {
            ps.unregister(&self.proxy.pubsub, *kind, name);
        }
        if ps.counted {
            let stats = &self.proxy.stats;
            stats.gauge_sub(stats.pubsub_subscribers_active, 1);
        }
        let hub = self.hub.clone();
        let id = self.state.id;
        let now = self.clock.now();
        self.with_env(now, |env| hub.leave(id, env));
        // Unsubscribes go now: nothing else may ever submit for this
        // session again.
        if !self.batch.is_empty() {
            if let Some(u) = self.upstream.as_ref() {
                u.submit(&mut self.batch);
            }
        }
        // Acknowledgements still waiting: their slots are answered by the
        // reset or dropped with the connection.
        for a in ps.acks {
            self.fill(a.seq, a.bytes());
        }
    }
}
