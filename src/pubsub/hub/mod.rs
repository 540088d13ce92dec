//! One Envoy worker's shared upstream subscriptions.
//!
//! Every channel, pattern or shard channel any client of the worker
//! subscribes to is subscribed once upstream, on a subscriber connection
//! per node (a pinned, streaming connection of the worker's upstream I/O:
//! every frame the node sends on it lands in the link's mailbox), and
//! reference-counted across the worker's clients. Classic channels and
//! patterns are subscribed on the master owning the name's slot (Redis
//! Cluster broadcasts `PUBLISH` to every node, so any node would do; the
//! slot owner spreads them); shard channels on the master owning the slot.
//!
//! The hub runs on its worker only, from the sessions: a frame arriving in
//! a link's mailbox wakes one subscribed session, whose `pump` reads every
//! link, fans messages out to the subscribers' feeds (waking them), and
//! sends what must be sent again: a link that broke (node death, failover)
//! or a shard channel whose slot moved (the node's `sunsubscribe`) is
//! subscribed again on the node the current topology names, after a short
//! delay that lets the topology refresh. Clients see none of it.

mod frames;
mod placement;

pub use super::feed::{Feed, Taken};
use super::pace::Pace;
use super::Kind;
use crate::config::ReadPolicy;
use crate::stats::Stats;
use crate::upstream::{ClientShared, Credentials, Notify, Request};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pins for subscriber connections, apart from the sessions' (from 1), the
/// blocking pool's (from 1 << 62) and the busy probes' (from 1 << 63).
static NEXT_PIN: AtomicU64 = AtomicU64::new(1 << 61);

/// Wait before subscribing again after a loss, so that the topology the
/// loss asked for can arrive first.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(100);

/// How subscriptions lost on link `lost` are sent again: after
/// [`RESUBSCRIBE_DELAY`] (`wait`), to `to` when a `MOVED` named it.
struct Again {
    lost: u64,
    wait: bool,
    to: Option<String>,
}

/// A subscription as the node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SubKey {
    pub kind: Kind,
    pub cluster: usize,
    /// On the node (a prefix route's `remove_prefix` applied).
    pub name: Vec<u8>,
    /// The Redis user it is subscribed as (`None`: the cluster's
    /// configured one): clients that authenticated as a user of the
    /// cluster share links and subscriptions only with clients of that
    /// user, so the nodes apply its channel permissions.
    pub user: Option<Arc<Credentials>>,
}

/// Where a subscription lives: its slot's shard, on the node the read
/// policy picks there (shard channels: a replica serves `SSUBSCRIBE` for its
/// master's slots and gets the shard's messages; classic channels and
/// patterns always live on masters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub slot: u16,
    pub policy: ReadPolicy,
}

/// What the environment tells the hub: the time, the topology, where
/// requests go.
pub struct Env<'a> {
    pub now: Instant,
    pub op_timeout: Duration,
    /// The master owning `slot` of `cluster` now, if known.
    pub owner: &'a dyn Fn(usize, u16) -> Option<String>,
    /// The node of `slot`'s shard in `cluster` that `policy` picks now.
    pub reader: &'a dyn Fn(usize, u16, ReadPolicy) -> Option<String>,
    /// Ask `cluster`'s refresher for a new topology.
    pub refresh: &'a dyn Fn(usize),
    /// The masters of `cluster` now.
    pub masters: &'a dyn Fn(usize) -> Vec<String>,
    /// Requests for the worker's upstream I/O.
    pub out: &'a mut Vec<Request>,
}

struct Sub {
    /// Subscribed clients, each with the name as it subscribed.
    clients: Vec<(u64, Vec<u8>)>,
    /// The links carrying it: one (its slot's owner), or every master
    /// for keyspace notifications, the first then being the one whose
    /// broadcast messages are passed on.
    links: Vec<u64>,
    /// The links whose node confirmed it.
    confirmed: Vec<u64>,
    slot: u16,
    policy: ReadPolicy,
    /// On every master ([`super::cluster_wide`]).
    everywhere: bool,
    /// Acknowledgements may go: every link confirmed once, or a link
    /// failed (it is subscribed again in the background).
    ready: bool,
    /// A node refused it (`NOPERM`: the user's ACL channel rules): its
    /// clients answer with this error instead of an acknowledgement and
    /// drop it; it is never sent again.
    refused: Option<Vec<u8>>,
}

/// Where a client's acknowledgement of a subscription stands.
#[derive(Debug, PartialEq, Eq)]
pub enum AckState {
    /// The node has not confirmed it yet.
    Waiting,
    Ready,
    /// Refused with this error reply (as the node wrote it).
    Refused(Vec<u8>),
}

struct Link {
    cluster: usize,
    addr: Option<String>,
    user: Option<Arc<Credentials>>,
    mailbox: Arc<ClientShared>,
    /// A request went out on it: later ones must follow it on the same
    /// connection, never open another.
    opened: bool,
    /// Subscribes sent on it and not answered yet, in order: the node
    /// answers each (confirmation or error) in the order sent.
    unanswered: VecDeque<SubKey>,
}

/// The subscribed sessions of the worker (client id, mailbox).
type Members = Arc<Mutex<Vec<(u64, Arc<ClientShared>)>>>;

/// Wakes a subscribed session of the worker when a link has frames.
struct LinkNotify(Members);

impl Notify for LinkNotify {
    fn notify(&self) {
        let members = self.0.lock();
        if let Some((_, c)) = members.iter().find(|(_, c)| !c.is_detached()) {
            c.wake();
        }
    }
}

#[derive(Default)]
struct Inner {
    subs: HashMap<SubKey, Sub>,
    links: HashMap<u64, Link>,
    feeds: HashMap<u64, Arc<Feed>>,
    pace: Pace,
}

/// One worker's subscriptions.
pub struct Hub {
    inner: Mutex<Inner>,
    members: Members,
    stats: Arc<Stats>,
    registry: Arc<super::registry::Registry>,
}

impl Hub {
    pub fn new(stats: Arc<Stats>, registry: Arc<super::registry::Registry>) -> Hub {
        Hub {
            inner: Mutex::default(),
            members: Arc::default(),
            stats,
            registry,
        }
    }

    /// Client `id` subscribes to `key` (as `visible`), placed at `at`.
    /// True when frames waiting for the first subscriber were fanned out
    /// (see [`Hub::owes_yield`]).
    pub fn subscribe(
        &self,
        id: u64,
        feed: &Arc<Feed>,
        key: SubKey,
        visible: &[u8],
        at: Place,
        env: &mut Env<'_>,
    ) -> bool {
        let Place { slot, policy } = at;
        let mut inner = self.inner.lock();
        let mut fanned = false;
        if let std::collections::hash_map::Entry::Vacant(e) = inner.feeds.entry(id) {
            e.insert(feed.clone());
            self.members.lock().push((id, feed.client.clone()));
            // Frames that came while no session was subscribed woke no one
            // (and a mailbox notifies once until read): read them now.
            fanned = self.pump_links(&mut inner, env);
        }
        if let Some(sub) = inner.subs.get_mut(&key) {
            if !sub.clients.iter().any(|(c, _)| *c == id) {
                sub.clients.push((id, visible.to_vec()));
            }
            return fanned;
        }
        let cs = self.stats.cluster(key.cluster);
        self.stats.gauge_add(cs.pubsub_upstream_subscriptions, 1);
        let policy = if key.kind == Kind::Shard {
            policy
        } else {
            ReadPolicy::Master
        };
        // The registry corrects PUBLISH counts for the subscriptions the
        // proxy holds on masters, where publishes go.
        if policy == ReadPolicy::Master {
            self.registry.add_upstream(key.kind, &key.name, slot);
        }
        let everywhere = super::cluster_wide(key.kind, &key.name);
        let sub = Sub {
            clients: vec![(id, visible.to_vec())],
            links: Vec::new(),
            confirmed: Vec::new(),
            slot,
            policy,
            everywhere,
            ready: false,
            refused: None,
        };
        inner.subs.insert(key.clone(), sub);
        self.place(&mut inner, &key, None, None, env);
        fanned
    }

    /// Client `id` no longer subscribes to `key`; the last one out ends the
    /// upstream subscription.
    pub fn unsubscribe(&self, id: u64, key: &SubKey, env: &mut Env<'_>) {
        let mut inner = self.inner.lock();
        self.drop_client(&mut inner, id, key, env);
    }

    /// Client `id` is gone (or `RESET`): every subscription it held.
    pub fn leave(&self, id: u64, env: &mut Env<'_>) {
        let mut inner = self.inner.lock();
        let keys: Vec<SubKey> = inner
            .subs
            .iter()
            .filter(|(_, s)| s.clients.iter().any(|(c, _)| *c == id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.drop_client(&mut inner, id, &k, env);
        }
        inner.feeds.remove(&id);
        self.members.lock().retain(|(c, _)| *c != id);
        Self::take_over(&mut inner, &self.members, id);
    }

    /// Client `id`'s session can no longer be run from the next turn (its
    /// reading is paused): if it held the yield, another session pumps.
    pub fn hand_off(&self, id: u64) {
        Self::take_over(&mut self.inner.lock(), &self.members, id);
    }

    fn take_over(inner: &mut Inner, members: &Members, id: u64) {
        if inner.pace.left(id) {
            // It was to run the next fan-out: another subscribed session
            // does (frames may be waiting in the links meanwhile).
            LinkNotify(members.clone()).notify();
        }
    }

    /// A fan-out ran in this turn of the event loop: the session running
    /// now must arrange to be run from the next turn ([`Hub::yielding`])
    /// or give up ([`Hub::give_up`]) before its hook returns.
    pub fn owes_yield(&self) -> bool {
        self.inner.lock().pace.owed()
    }

    /// Client `id`'s session will be run from the next turn.
    pub fn yielding(&self, id: u64) {
        self.inner.lock().pace.yielding(id);
    }

    /// No session could arrange the next turn: fan out whenever asked.
    pub fn give_up(&self) {
        self.inner.lock().pace.give_up();
    }

    /// Client `id`'s session runs in a new turn of the event loop: if it
    /// held the yield, fan-outs may run again.
    pub fn resumed(&self, id: u64) {
        self.inner.lock().pace.resumed(id);
    }

    /// Acknowledgements for `key` may go.
    pub fn ready(&self, key: &SubKey) -> bool {
        self.ack_state(key) == AckState::Ready
    }

    /// Where acknowledgements for `key` stand.
    pub fn ack_state(&self, key: &SubKey) -> AckState {
        match self.inner.lock().subs.get(key) {
            Some(Sub {
                refused: Some(e), ..
            }) => AckState::Refused(e.clone()),
            Some(s) if !s.ready => AckState::Waiting,
            _ => AckState::Ready,
        }
    }

    /// Upstream subscriptions now (for tests).
    pub fn upstream_count(&self) -> usize {
        self.inner.lock().subs.len()
    }

    /// Read every link's frames: fan messages out, take confirmations,
    /// subscribe again what was lost. True when messages were fanned out
    /// (see [`Hub::owes_yield`]).
    pub fn pump(&self, env: &mut Env<'_>) -> bool {
        let mut inner = self.inner.lock();
        self.pump_links(&mut inner, env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Part;

    struct Quiet;
    impl Notify for Quiet {
        fn notify(&self) {}
    }

    const HOME: Place = Place {
        slot: 0,
        policy: ReadPolicy::Master,
    };

    fn key(name: &[u8]) -> SubKey {
        SubKey {
            kind: Kind::Channel,
            cluster: 0,
            name: name.to_vec(),
            user: None,
        }
    }

    /// Runs `f` with an environment whose topology has one master.
    fn with_env<R>(out: &mut Vec<Request>, f: impl FnOnce(&mut Env<'_>) -> R) -> R {
        let owner = |_: usize, _: u16| Some("127.0.0.1:7000".to_string());
        let reader = |_: usize, _: u16, _: ReadPolicy| Some("127.0.0.1:7000".to_string());
        let refresh = |_: usize| {};
        let masters = |_: usize| vec!["127.0.0.1:7000".to_string()];
        let mut env = Env {
            now: Instant::now(),
            op_timeout: Duration::from_secs(1),
            owner: &owner,
            reader: &reader,
            refresh: &refresh,
            masters: &masters,
            out,
        };
        f(&mut env)
    }

    fn words(r: &Request) -> String {
        String::from_utf8_lossy(&r.data).replace("\r\n", " ")
    }

    #[test]
    fn one_upstream_subscription_shared_and_released_by_the_last_client() {
        let hub = Hub::new(Arc::new(Stats::disabled(1)), Arc::default());
        let feeds: Vec<Arc<Feed>> = (0..2)
            .map(|_| Feed::new(ClientShared::new(Box::new(Quiet)), false, 1 << 20))
            .collect();
        let mut out = Vec::new();
        with_env(&mut out, |env| {
            hub.subscribe(1, &feeds[0], key(b"ch"), b"ch", HOME, env);
            hub.subscribe(2, &feeds[1], key(b"ch"), b"ch", HOME, env);
        });
        assert_eq!(out.len(), 1, "one upstream SUBSCRIBE for two clients");
        assert_eq!(words(&out[0]), "*2 $9 subscribe $2 ch ");
        assert!(!hub.ready(&key(b"ch")), "acks wait for the node");
        let link = out[0].client.clone();
        link.deliver(
            0,
            Part::Whole,
            b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n".to_vec(),
        );
        link.deliver(
            0,
            Part::Whole,
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n".to_vec(),
        );
        out.clear();
        with_env(&mut out, |env| hub.pump(env));
        assert!(hub.ready(&key(b"ch")));
        for f in &feeds {
            assert_eq!(
                f.take().concat().as_deref(),
                Some(&b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"[..])
            );
        }
        with_env(&mut out, |env| hub.unsubscribe(1, &key(b"ch"), env));
        assert!(out.is_empty(), "another client still holds it");
        with_env(&mut out, |env| hub.unsubscribe(2, &key(b"ch"), env));
        assert_eq!(out.len(), 1);
        assert_eq!(words(&out[0]), "*2 $11 unsubscribe $2 ch ");
        assert_eq!(hub.upstream_count(), 0);
    }

    #[test]
    fn a_refusal_answers_the_oldest_unanswered_subscribe() {
        let hub = Hub::new(Arc::new(Stats::disabled(1)), Arc::default());
        let feed = Feed::new(ClientShared::new(Box::new(Quiet)), false, 1 << 20);
        let mut out = Vec::new();
        with_env(&mut out, |env| {
            hub.subscribe(1, &feed, key(b"no"), b"no", HOME, env);
            hub.subscribe(1, &feed, key(b"yes"), b"yes", HOME, env);
        });
        assert_eq!(out.len(), 2, "one SUBSCRIBE each, on one link");
        let link = out[0].client.clone();
        let noperm = b"-NOPERM this user has no permissions\r\n".to_vec();
        link.deliver(0, Part::Whole, noperm.clone());
        link.deliver(
            0,
            Part::Whole,
            b"*3\r\n$9\r\nsubscribe\r\n$3\r\nyes\r\n:1\r\n".to_vec(),
        );
        out.clear();
        with_env(&mut out, |env| hub.pump(env));
        assert_eq!(hub.ack_state(&key(b"no")), AckState::Refused(noperm));
        assert_eq!(hub.ack_state(&key(b"yes")), AckState::Ready);
        assert!(out.is_empty(), "a refused one is not sent again");
        with_env(&mut out, |env| hub.unsubscribe(1, &key(b"no"), env));
        assert_eq!(hub.upstream_count(), 1, "the refused one is gone");
    }

    #[test]
    fn a_lost_link_is_subscribed_again_on_a_new_one() {
        let hub = Hub::new(Arc::new(Stats::disabled(1)), Arc::default());
        let feed = Feed::new(ClientShared::new(Box::new(Quiet)), true, 1 << 20);
        let mut out = Vec::new();
        with_env(&mut out, |env| {
            hub.subscribe(1, &feed, key(b"ch"), b"ch", HOME, env)
        });
        let first = out.remove(0);
        first
            .client
            .deliver(0, Part::Whole, b"-ERR connection to x lost\r\n".to_vec());
        with_env(&mut out, |env| hub.pump(env));
        assert_eq!(out.len(), 1, "subscribed again");
        assert_eq!(words(&out[0]), "*2 $9 subscribe $2 ch ");
        assert!(first.client.is_detached(), "the old link is dropped");
        assert!(!Arc::ptr_eq(&first.client, &out[0].client), "on a new link");
        assert!(hub.ready(&key(b"ch")), "the client is not kept waiting");
        // RESP3 pushes; over the budget the feed reports it.
        out[0].client.deliver(
            0,
            Part::Whole,
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n".to_vec(),
        );
        let mut more = Vec::new();
        with_env(&mut more, |env| hub.pump(env));
        assert_eq!(
            feed.take().concat().as_deref(),
            Some(&b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"[..])
        );
    }

    fn msg(ch: &str, payload: &str) -> Vec<u8> {
        format!(
            "*3\r\n$7\r\nmessage\r\n${}\r\n{ch}\r\n${}\r\n{payload}\r\n",
            ch.len(),
            payload.len()
        )
        .into_bytes()
    }

    #[test]
    fn one_fan_out_per_turn_in_the_nodes_order() {
        let hub = Hub::new(Arc::new(Stats::disabled(1)), Arc::default());
        let feed = Feed::new(ClientShared::new(Box::new(Quiet)), false, 1 << 20);
        let other = Feed::new(ClientShared::new(Box::new(Quiet)), false, 1 << 20);
        let mut out = Vec::new();
        with_env(&mut out, |env| {
            hub.subscribe(1, &feed, key(b"a"), b"a", HOME, env);
            hub.subscribe(1, &feed, key(b"b"), b"b", HOME, env);
            hub.subscribe(2, &other, key(b"a"), b"a", HOME, env);
        });
        assert_eq!(out.len(), 2, "two upstream subscriptions, one link");
        let link = out[0].client.clone();
        for frame in [msg("a", "1"), msg("b", "2"), msg("a", "3")] {
            link.deliver(0, Part::Whole, frame);
        }
        out.clear();
        assert!(with_env(&mut out, |env| hub.pump(env)), "fanned out");
        let both = [msg("a", "1"), msg("b", "2"), msg("a", "3")].concat();
        assert_eq!(feed.take().concat(), Some(both), "interleaved as sent");
        assert_eq!(
            other.take().concat(),
            Some([msg("a", "1"), msg("a", "3")].concat())
        );
        // Until a session runs from the next turn, nothing more goes out.
        assert!(hub.owes_yield());
        hub.yielding(1);
        link.deliver(0, Part::Whole, msg("a", "4"));
        link.deliver(0, Part::Whole, msg("a", "5"));
        assert!(!with_env(&mut out, |env| hub.pump(env)), "held");
        assert_eq!(other.take().concat(), Some(Vec::new()));
        hub.resumed(2);
        assert!(!with_env(&mut out, |env| hub.pump(env)), "not its yield");
        hub.resumed(1);
        assert!(with_env(&mut out, |env| hub.pump(env)));
        match other.take() {
            Taken::Chunks(c) => assert_eq!(
                c.concat(),
                [msg("a", "4"), msg("a", "5")].concat(),
                "the held messages as one chunk"
            ),
            Taken::Overflow => panic!("overflow"),
        }
        // Its session left while holding the yield: another one pumps.
        hub.yielding(1);
        with_env(&mut out, |env| hub.leave(1, env));
        link.deliver(0, Part::Whole, msg("a", "6"));
        assert!(with_env(&mut out, |env| hub.pump(env)));
        assert_eq!(other.take().concat(), Some(msg("a", "6")));
    }
}
