//! Module-owned upstream I/O: one [`UpstreamLoop`] per Envoy worker.
//!
//! The network-filter ABI gives a module no upstream client and no timers, so
//! each loop owns non-blocking, pipelined TCP connections to the Redis nodes
//! of every configured cluster. It routes each command by its slot, writes
//! it to the node, matches replies to commands in order (Redis answers a
//! connection's commands in order), follows `MOVED`/`ASK`, enforces
//! `op_timeout`, and delivers each reply to the client's [`ClientShared`]
//! mailbox. Where it runs is `settings.upstream_io`:
//!
//! - `loop`: on a thread of its own (mio); a worker's sessions hand it their
//!   commands in batches ([`LoopShared::submit`]) and each client's mailbox
//!   wakes the client's worker through Envoy's scheduler once per burst;
//! - `worker`: on the Envoy worker itself ([`WorkerIo`]), woken by a helper
//!   thread that only waits for readiness and deadlines (`worker`, `wake`).
//!
//! Nothing here touches Envoy: the only link is the [`Notify`] trait.

mod blocking;
mod busy;
mod pipeline;
mod policy;
mod wake;
mod worker;

pub use worker::WorkerIo;

use crate::clients::UnblockMode;
use crate::codec;
use crate::config::{ClusterConfig, ReadPolicy, Settings};
use crate::envoy::Level;
use crate::log;
use crate::routing;
use crate::scripts::ScriptCache;
use crate::stats::Stats;
use crate::topology::{Redirect, SlotMap};
use crate::topology_refresh::ClusterTopology;
pub use blocking::{Blocking, TimeoutUnit};
use busy::BusyNodes;
pub use busy::SharedBusy;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use parking_lot::Mutex;
use pipeline::{Next, Pipeline, Unanswered};
use policy::Outcome;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wakes the worker that owns a client connection (Envoy's scheduler in
/// production, a channel in tests). Called from loop threads.
pub trait Notify: Send + Sync {
    fn notify(&self);
}

/// A node's reply to (part of) a client command.
pub struct Delivery {
    pub seq: u64,
    /// Which part of the client's command this reply answers.
    pub part: Part,
    pub reply: Vec<u8>,
}

/// The part number of a command that was not split.
pub const WHOLE: Part = Part::Whole;

/// What a request is to the session that sent it; the loop only carries it
/// back with the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The client's whole command.
    Whole,
    /// Part `i` of a command the session split (MGET across slots, …).
    Split(u32),
    /// A request the session sends to learn when it may go on (e.g. a
    /// `PING` that waits for a topology with masters).
    Probe,
    /// A request whose reply nobody waits for (the `UNWATCH` that releases
    /// a transaction's connection).
    Discard,
    /// `WATCH` or a command inside `MULTI`, on a transaction's connection:
    /// the session reads the node's answer before passing it on.
    Queued,
    /// A transaction's `EXEC`, on its connection.
    Exec,
}

/// The part of a client connection that loop threads may touch.
pub struct ClientShared {
    mailbox: Mutex<Mailbox>,
    /// Unblock this client's blocking command on its node (it closed its
    /// sending side, or `CLIENT UNBLOCK`): what it got is still delivered.
    cancel_blocking: Mutex<Option<UnblockMode>>,
}

struct Mailbox {
    replies: Vec<Delivery>,
    /// `None` once the client is gone: replies are then dropped.
    notifier: Option<Box<dyn Notify>>,
    /// A notify is outstanding; coalesces wake-ups to one per burst.
    pending: bool,
}

impl ClientShared {
    pub fn new(notifier: Box<dyn Notify>) -> Arc<Self> {
        Arc::new(ClientShared {
            mailbox: Mutex::new(Mailbox {
                replies: Vec::new(),
                notifier: Some(notifier),
                pending: false,
            }),
            cancel_blocking: Mutex::new(None),
        })
    }

    /// Hand the reply for part `part` of command `seq` to the client's worker.
    pub fn deliver(&self, seq: u64, part: Part, reply: Vec<u8>) {
        let mut mb = self.mailbox.lock();
        let Some(notifier) = mb.notifier.as_ref() else {
            return;
        };
        let first = !mb.pending;
        if first {
            notifier.notify();
        }
        mb.pending = true;
        mb.replies.push(Delivery { seq, part, reply });
    }

    /// Run the client's session soon with nothing delivered (a pause
    /// ended, the client was killed).
    pub fn wake(&self) {
        let mut mb = self.mailbox.lock();
        if let (Some(n), false) = (mb.notifier.as_ref(), mb.pending) {
            n.notify();
            mb.pending = true;
        }
    }

    /// Take every delivered reply (worker side).
    pub fn take(&self, out: &mut Vec<Delivery>) {
        let mut mb = self.mailbox.lock();
        mb.pending = false;
        if out.is_empty() {
            std::mem::swap(out, &mut mb.replies);
        } else {
            out.append(&mut mb.replies);
        }
    }

    /// The client is gone: drop the notifier (Envoy's scheduler) under the
    /// lock, so no loop thread can use it afterwards.
    pub fn detach(&self) {
        let notifier = {
            let mut mb = self.mailbox.lock();
            mb.replies.clear();
            mb.notifier.take()
        };
        drop(notifier);
    }

    pub fn is_detached(&self) -> bool {
        self.mailbox.lock().notifier.is_none()
    }

    /// Ask the loop to unblock this client's blocking command on its node
    /// (see [`blocking`]); its reply, a pop or the timeout's nil, still
    /// comes.
    pub fn cancel_blocking(&self, mode: UnblockMode) {
        *self.cancel_blocking.lock() = Some(mode);
    }

    /// An unblock asked for and not yet sent (taken by the loop).
    fn take_cancel(&self) -> Option<UnblockMode> {
        self.cancel_blocking.lock().take()
    }
}

/// Where a command must go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The shard owning `slot`; `read` commands may use replicas per policy.
    Slot { slot: u16, read: bool },
    /// Any master (keyless commands whose answer does not depend on the node).
    AnyMaster,
    /// A node named by a redirection.
    Node {
        addr: String,
        slot: u16,
        asking: bool,
    },
}

/// One command on its way to a node.
pub struct Request {
    pub client: Arc<ClientShared>,
    pub seq: u64,
    pub part: Part,
    pub cluster: usize,
    pub target: Target,
    policy: ReadPolicy,
    /// The command, encoded as RESP.
    pub data: Vec<u8>,
    pub deadline: Instant,
    redirects: u32,
    /// Not before this instant (TRYAGAIN backoff).
    retry_at: Option<Instant>,
    /// Waiting for a topology newer than this generation.
    wait_gen: Option<u64>,
    /// A mirrored copy: its reply is discarded, and it is dropped rather
    /// than ever delaying anything (no parking, bounded queue).
    mirror: bool,
    /// The client speaks RESP3: use connections that did `HELLO 3`.
    resp3: bool,
    /// Transactions: run on the client's own dedicated connection `pin`
    /// (WATCH state lives on a connection), never retried elsewhere.
    pin: Option<u64>,
    /// Close the pinned connection once this command's reply is in.
    release_pin: bool,
    /// Replies before this command's own that belong to it and are
    /// swallowed (MULTI's +OK and each +QUEUED of an EXEC batch).
    swallow: u32,
    /// `pin` must be open already (a transaction's later command): a new
    /// connection would run it outside the node's MULTI and WATCH.
    pin_continues: bool,
    /// An `EVALSHA` already sent again after loading its script on the node
    /// (a second `NOSCRIPT` goes to the client).
    script_reloaded: bool,
    /// `MONITOR` on a pinned connection: every later frame the node sends
    /// is delivered to the client too, until the connection closes.
    stream: bool,
    /// A blocking command: sent on a blocking connection of its own.
    blocking: Option<Box<Blocking>>,
}

impl Request {
    /// A command for the loop: `data` (RESP) for `target` in cluster
    /// `cluster`, answered to `client` as part `part` of its command `seq`
    /// by `deadline`. A write to the master, on a shared RESP2 connection,
    /// unless the builder methods below say otherwise.
    pub fn new(
        client: Arc<ClientShared>,
        seq: u64,
        part: Part,
        cluster: usize,
        target: Target,
        data: Vec<u8>,
        deadline: Instant,
    ) -> Request {
        Request {
            client,
            seq,
            part,
            cluster,
            target,
            policy: ReadPolicy::Master,
            data,
            deadline,
            redirects: 0,
            retry_at: None,
            wait_gen: None,
            mirror: false,
            resp3: false,
            pin: None,
            release_pin: false,
            swallow: 0,
            pin_continues: false,
            script_reloaded: false,
            stream: false,
            blocking: None,
        }
    }

    /// Where reads may go (writes always go to the master).
    pub fn read_policy(mut self, policy: ReadPolicy) -> Request {
        self.policy = policy;
        self
    }

    /// The client speaks RESP3: use connections that did `HELLO 3`.
    pub fn resp3(mut self, on: bool) -> Request {
        self.resp3 = on;
        self
    }

    /// A mirrored copy: its reply is discarded.
    pub fn mirrored(mut self) -> Request {
        self.mirror = true;
        self
    }

    /// Is this a mirrored copy (nobody waits for its reply)?
    pub fn is_mirror(&self) -> bool {
        self.mirror
    }

    /// Run on dedicated connection `pin` (opened on first use), closed once
    /// this command's reply is in when `release`; the `swallow` replies
    /// before this command's own are dropped.
    pub fn pinned(mut self, pin: u64, release: bool, swallow: u32) -> Request {
        self.pin = Some(pin);
        self.release_pin = release;
        self.swallow = swallow;
        self
    }

    /// Only on pinned connection `pin` as already opened by an earlier
    /// request: queued behind that request while it waits to be sent, an
    /// error once the connection is gone (never a fresh connection).
    pub fn continues_pin(mut self) -> Request {
        self.pin_continues = true;
        self
    }

    /// A command after which the node streams (`MONITOR`), on a pinned
    /// connection: the reply and every frame after it go to the client,
    /// with no deadline, until the client goes away (which closes it).
    pub fn streaming(mut self) -> Request {
        self.stream = true;
        self
    }

    /// A command that may block: it runs on a connection of its own
    /// ([`blocking`]).
    pub fn blocking(mut self, b: Blocking) -> Request {
        self.blocking = Some(Box::new(b));
        self
    }

    /// A blocking command's facts, to change before it is sent.
    pub fn blocking_mut(&mut self) -> Option<&mut Blocking> {
        self.blocking.as_deref_mut()
    }

    /// Answer the client (mirrored copies have no one to answer).
    fn respond(&self, reply: Vec<u8>) {
        if !self.mirror {
            self.client.deliver(self.seq, self.part, reply);
        }
    }
}

/// The submission side of a loop, shared with the sessions of one worker.
pub struct LoopShared {
    inbox: Mutex<Vec<Request>>,
    waker: Waker,
    wake_pending: AtomicBool,
    stop: AtomicBool,
    /// Nodes busy with a script, as every loop of the proxy sees them.
    busy: Arc<SharedBusy>,
}

impl LoopShared {
    /// A busy node's `-BUSY` reply, while one is busy with a long script.
    pub fn busy_reply(&self) -> Option<Vec<u8>> {
        self.busy.any()
    }

    /// Queue a batch of requests (emptying `batch`) and wake the loop.
    pub fn submit(&self, batch: &mut Vec<Request>) {
        if batch.is_empty() {
            return;
        }
        {
            let mut inbox = self.inbox.lock();
            if inbox.is_empty() {
                std::mem::swap(&mut *inbox, batch);
            } else {
                inbox.append(batch);
            }
        }
        self.wake();
    }

    /// Wake the loop (coalesced: one eventfd write per sleep).
    pub fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

const WAKER: Token = Token(0);
const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";
const READONLY: &[u8] = b"*1\r\n$8\r\nREADONLY\r\n";
const READ_CHUNK: usize = 64 * 1024;
/// Most commands in flight on one connection before mirrored copies to it
/// are dropped (a slow mirror must never grow memory without bound).
const MIRROR_QUEUE_MAX: usize = 10_000;
const MIRROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// Reconnect backoff to a node that refused or dropped us.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// What a shared connection is for. Replica reads need `READONLY` on the
/// connection; every other connection must not have it, because a node we
/// still believe is a master may have become a replica (failover, or a
/// master that gave away its last slot), and with `READONLY` it would answer
/// reads from its lagging copy instead of redirecting us to the real owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    /// Commands meant for the slot's master: redirected if it is not one.
    Master,
    /// Reads sent to a replica on purpose (read policy): `READONLY`.
    ReplicaRead,
}

/// A shared connection's identity: RESP3 clients and replica reads get
/// connections of their own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    cluster: usize,
    addr: String,
    resp3: bool,
    role: Role,
}

struct Conn {
    cluster: usize,
    addr: String,
    resp3: bool,
    role: Role,
    /// A client's dedicated connection (transactions), not shared.
    pin: Option<u64>,
    /// The client owning a pinned connection: closed when it goes away.
    owner: Option<Arc<ClientShared>>,
    /// A blocking command's connection ([`blocking`]; `pin` set too).
    blocking: bool,
    /// A blocking connection's id on its node, to `CLIENT UNBLOCK` it; and
    /// whether that was sent for the command it holds now.
    node_id: blocking::NodeId,
    unblock_sent: bool,
    stream: TcpStream,
    connected: bool,
    opened: Instant,
    /// Bytes to write and replies owed, in order.
    pipe: Pipeline,
    inbuf: Vec<u8>,
    in_start: usize,
    /// Progress through the reply at `in_start` when it is not whole yet.
    framer: codec::ReplyFramer,
    /// TLS session over `stream`, when the cluster uses TLS: `out` is then
    /// plaintext handed to it, and `inbuf` receives its plaintext.
    tls: Option<Box<rustls::ClientConnection>>,
}

struct Down {
    since: Instant,
    next_attempt: Instant,
    backoff: Duration,
}

struct ClusterView {
    topo: Arc<ClusterTopology>,
    gen: u64,
    map: Option<Arc<SlotMap>>,
    cfg: ClusterConfig,
}

/// A loop's thread state.
pub struct UpstreamLoop {
    /// Taken by whoever waits on it: [`UpstreamLoop::run`], or the helper
    /// thread of `upstream_io: worker`.
    poll: Option<Poll>,
    registry: Registry,
    shared: Arc<LoopShared>,
    settings: Settings,
    clusters: Vec<ClusterView>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Shared connections by what they are for.
    by_addr: HashMap<PoolKey, usize>,
    /// Pinned (transaction) connections by pin id.
    pinned: HashMap<u64, usize>,
    down: HashMap<(usize, String), Down>,
    parked: Vec<Request>,
    dirty: Vec<usize>,
    rr: usize,
    mirror_dropped: u64,
    mirror_logged: Instant,
    stats: Arc<Stats>,
    /// Socket reads land here first (READ_CHUNK bytes).
    scratch: Vec<u8>,
    scripts: Arc<ScriptCache>,
    busy: BusyNodes,
    /// Pin ids for the loop's own one-off connections (busy probes), apart
    /// from the sessions' ids, which count up from 1.
    next_pin: u64,
    blocking: blocking::BlockingPool,
}

impl UpstreamLoop {
    /// Create a loop (no thread yet) and its shared submission handle.
    pub fn new(
        settings: Settings,
        clusters: &[Arc<ClusterTopology>],
        stats: Arc<Stats>,
        scripts: Arc<ScriptCache>,
        busy: Arc<SharedBusy>,
    ) -> io::Result<(UpstreamLoop, Arc<LoopShared>)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let registry = poll.registry().try_clone()?;
        let shared = Arc::new(LoopShared {
            inbox: Mutex::new(Vec::new()),
            waker,
            wake_pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            busy: busy.clone(),
        });
        let clusters = clusters
            .iter()
            .map(|t| ClusterView {
                topo: t.clone(),
                gen: 0,
                map: None,
                cfg: t.config().clone(),
            })
            .collect();
        let lp = UpstreamLoop {
            poll: Some(poll),
            registry,
            shared: shared.clone(),
            settings,
            clusters,
            conns: Vec::new(),
            free: Vec::new(),
            by_addr: HashMap::new(),
            pinned: HashMap::new(),
            down: HashMap::new(),
            parked: Vec::new(),
            dirty: Vec::new(),
            rr: 0,
            mirror_dropped: 0,
            mirror_logged: Instant::now() - MIRROR_LOG_EVERY,
            stats,
            scratch: vec![0; READ_CHUNK],
            scripts,
            busy: BusyNodes::new(busy),
            next_pin: 1 << 63,
            blocking: blocking::BlockingPool::new(),
        };
        Ok((lp, shared))
    }

    /// The thread body: runs until [`LoopShared::stop`].
    pub fn run(mut self) {
        let Some(mut poll) = self.poll.take() else {
            return;
        };
        let mut events = Events::with_capacity(256);
        let mut batch = Vec::new();
        while !self.shared.stop.load(Ordering::Acquire) {
            let timeout = if self.needs_ticks() {
                Some(Duration::from_millis(5))
            } else {
                Some(Duration::from_millis(250))
            };
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log!(Level::Error, "redis_cluster: upstream poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for ev in events.iter() {
                let tok = ev.token();
                if tok == WAKER {
                    continue;
                }
                self.on_ready(
                    tok.0 - 1,
                    ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    ev.is_writable(),
                );
            }
            // New requests from the sessions.
            self.shared.wake_pending.store(false, Ordering::Release);
            std::mem::swap(&mut batch, &mut *self.shared.inbox.lock());
            let now = Instant::now();
            self.refresh_views();
            for req in batch.drain(..) {
                self.dispatch(req, now);
            }
            self.tick(now);
        }
        // Shutdown: fail what is left so no reply slot stays empty.
        for c in self.conns.iter_mut().flatten() {
            for u in c.pipe.unanswered() {
                u.req.respond(codec::error("ERR proxy is shutting down"));
            }
        }
        for r in self.parked.drain(..) {
            r.respond(codec::error("ERR proxy is shutting down"));
        }
    }

    /// Something waits on a clock: a reply, a connect, a parked retry.
    fn needs_ticks(&self) -> bool {
        !self.parked.is_empty()
            || self.busy.any_busy()
            || self
                .conns
                .iter()
                .flatten()
                // A blocked command may wait for hours: no need to poll for
                // its reply (a client leaving wakes the loop).
                .any(|c| (!c.pipe.is_idle() && !c.is_blocking()) || !c.connected)
    }

    /// A connection's socket is ready.
    fn on_ready(&mut self, idx: usize, readable: bool, writable: bool) {
        if writable {
            self.on_writable(idx);
        }
        if readable {
            self.on_readable(idx);
        }
    }

    /// Route a batch of new requests and queue them on their connections;
    /// true when some are left to write ([`Self::flush_dirty`]).
    fn dispatch_batch(&mut self, batch: &mut Vec<Request>) -> bool {
        let now = Instant::now();
        self.refresh_views();
        for req in batch.drain(..) {
            self.dispatch(req, now);
        }
        !self.dirty.is_empty()
    }

    /// The clock's work: retries, timeouts, busy probes; then write what
    /// all of it queued.
    fn tick(&mut self, now: Instant) {
        self.refresh_views();
        self.retry_parked(now);
        self.check_timeouts(now);
        self.check_busy(now);
        self.flush_dirty();
    }

    /// Pick up new topology generations published by the refreshers.
    fn refresh_views(&mut self) {
        for v in &mut self.clusters {
            let gen = v.topo.generation();
            if gen != v.gen {
                v.gen = gen;
                v.map = v.topo.current();
            }
        }
    }

    fn park(&mut self, mut req: Request, why: &str) {
        if req.mirror {
            return self.drop_mirror(req.cluster);
        }
        let view = &self.clusters[req.cluster];
        req.wait_gen = Some(view.gen);
        view.topo.request_refresh(why);
        self.parked.push(req);
    }

    fn retry_parked(&mut self, now: Instant) {
        if self.parked.is_empty() {
            return;
        }
        let parked = std::mem::take(&mut self.parked);
        for mut req in parked {
            if req.client.is_detached() {
                continue;
            }
            if now >= req.deadline {
                let msg = format!(
                    "ERR operation timed out after {} ms waiting for the cluster",
                    self.settings.op_timeout.as_millis()
                );
                req.respond(codec::error(&msg));
                continue;
            }
            let gen_ready = req
                .wait_gen
                .is_none_or(|g| self.clusters[req.cluster].gen > g);
            let time_ready = req.retry_at.is_none_or(|t| now >= t);
            if gen_ready && time_ready {
                req.wait_gen = None;
                req.retry_at = None;
                self.dispatch(req, now);
            } else {
                self.parked.push(req);
            }
        }
    }

    /// Route a request to a node and queue it on that node's connection.
    fn dispatch(&mut self, req: Request, now: Instant) {
        if !req.mirror && req.client.is_detached() {
            return;
        }
        if let Some(pin) = req.pin {
            if let Some(&idx) = self.pinned.get(&pin) {
                return self.enqueue(idx, req, false);
            }
            if req.pin_continues {
                if self.parked.iter().any(|r| r.pin == Some(pin)) {
                    // The request that opens it waits (no topology yet, node
                    // down): stay behind it, in order.
                    self.parked.push(req);
                    return;
                }
                return req.respond(codec::error(
                    "ERR transaction aborted: its connection to the node was lost (nothing of it ran)",
                ));
            }
        }
        let view = &self.clusters[req.cluster];
        let Some(map) = view.map.clone() else {
            // No topology yet (start-up): wait for the first refresh.
            return self.park(req, "no topology yet");
        };
        let (addr, asking, role) = match &req.target {
            Target::Node { addr, asking, .. } => (addr.clone(), *asking, Role::Master),
            Target::AnyMaster => match map.shards.first() {
                Some(s) => (s.master.clone(), false, Role::Master),
                None => return self.park(req, "empty topology"),
            },
            Target::Slot { slot, read } => {
                let Some(shard) = map.shard_for_slot(*slot) else {
                    return self.park(req, "slot not covered");
                };
                let policy = if *read {
                    req.policy
                } else {
                    ReadPolicy::Master
                };
                let cluster = req.cluster;
                let down = &self.down;
                // A down node becomes eligible again when its backoff ends,
                // so a recovered node is found even when a policy would
                // otherwise route around it forever.
                let healthy = |a: &str| {
                    down.get(&(cluster, a.to_string()))
                        .is_none_or(|d| now >= d.next_attempt)
                };
                self.rr = self.rr.wrapping_add(1);
                match routing::pick_node(shard, policy, healthy, self.rr) {
                    Ok(a) if a == shard.master => (a.to_string(), false, Role::Master),
                    Ok(a) => (a.to_string(), false, Role::ReplicaRead),
                    Err(msg) => {
                        return req.respond(codec::error(&msg));
                    }
                }
            }
        };
        self.send_to(req, addr, asking, role, now);
    }

    fn send_to(&mut self, req: Request, addr: String, asking: bool, role: Role, now: Instant) {
        let key = (req.cluster, addr);
        if let Some(d) = self.down.get(&key) {
            if now < d.next_attempt {
                // Down for longer than op_timeout with no failover: fail fast
                // rather than make every command wait its full timeout.
                if now.duration_since(d.since) > self.settings.op_timeout {
                    let msg = format!("ERR node {} is unreachable", key.1);
                    return req.respond(codec::error(&msg));
                }
                return self.park(req, "node down");
            }
        }
        if req.pin.is_none() {
            if let Some(reply) = self.busy.reply_for(key.0, &key.1) {
                if req.mirror {
                    return self.drop_mirror(req.cluster);
                }
                return req.respond(reply);
            }
        }
        if req.blocking.is_some() {
            return self.send_blocking(req, key.1, asking, now);
        }
        let resp3 = req.resp3;
        if req.pin.is_some()
            && self.pinned.len() >= self.settings.max_transaction_connections as usize
        {
            return req.respond(codec::error(
                "ERR too many concurrent transactions through this proxy (max_transaction_connections)",
            ));
        }
        let existing = match req.pin {
            Some(_) => None,
            None => {
                let pool = PoolKey {
                    cluster: key.0,
                    addr: key.1.clone(),
                    resp3,
                    role,
                };
                self.by_addr.get(&pool).copied()
            }
        };
        let idx = match existing {
            Some(i) => i,
            None => match self.connect(key.0, &key.1, resp3, role, req.pin, now) {
                Ok(i) => i,
                Err(e) => {
                    self.mark_down(key.0, &key.1, now);
                    self.stats
                        .inc(self.stats.cluster(key.0).upstream_cx_connect_fail);
                    log!(
                        Level::Debug,
                        "redis_cluster: connect to {} failed: {e}",
                        key.1
                    );
                    if req.pin.is_some() {
                        let msg = format!("ERR cannot connect to {} for the transaction", key.1);
                        return req.respond(codec::error(&msg));
                    }
                    return self.park(req, "connect failed");
                }
            },
        };
        if let Some(pin) = req.pin {
            self.pinned.insert(pin, idx);
            if let Some(c) = self.conns[idx].as_mut() {
                c.owner = Some(req.client.clone());
            }
        }
        self.enqueue(idx, req, asking);
    }

    /// Append a request to a connection's output and in-flight queue.
    fn enqueue(&mut self, idx: usize, req: Request, asking: bool) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        if req.mirror && conn.pipe.owed() >= MIRROR_QUEUE_MAX {
            return self.drop_mirror(req.cluster);
        }
        let cs = self.stats.cluster(req.cluster);
        self.stats.inc(if req.mirror {
            cs.mirror_rq_total
        } else {
            cs.upstream_rq_total
        });
        conn.pipe.push_request(req, asking.then_some(ASKING));
        if conn.connected && !self.dirty.contains(&idx) {
            self.dirty.push(idx);
        }
    }

    fn connect(
        &mut self,
        cluster: usize,
        addr: &str,
        resp3: bool,
        role: Role,
        pin: Option<u64>,
        now: Instant,
    ) -> io::Result<usize> {
        let sa = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let mut stream = TcpStream::connect(sa)?;
        let _ = stream.set_nodelay(true);
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.registry.register(
            &mut stream,
            Token(idx + 1),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut conn = Conn {
            cluster,
            addr: addr.to_string(),
            resp3,
            role,
            pin,
            owner: None,
            blocking: false,
            node_id: blocking::NodeId::NotAsked,
            unblock_sent: false,
            stream,
            connected: false,
            opened: now,
            pipe: Pipeline::default(),
            inbuf: Vec::new(),
            in_start: 0,
            framer: codec::ReplyFramer::default(),
            tls: None,
        };
        match self.clusters[cluster].topo.tls_session(addr) {
            Ok(t) => conn.tls = t.map(Box::new),
            Err(e) => {
                let _ = self.registry.deregister(&mut conn.stream);
                self.conns[idx] = None;
                self.free.push(idx);
                return Err(io::Error::other(e));
            }
        }
        // Every connection first authenticates (if configured); connections
        // for replica reads then send READONLY (see `Role`). The replies are
        // consumed here.
        let cfg = &self.clusters[cluster].cfg;
        let mut setup: Vec<&[u8]> = Vec::new();
        if resp3 {
            setup.extend_from_slice(&[b"HELLO", b"3"]);
            if let Some(pass) = &cfg.auth_password {
                let user = cfg.auth_username.as_deref().unwrap_or("default");
                setup.extend_from_slice(&[b"AUTH", user.as_bytes(), pass.as_bytes()]);
            }
        } else if let Some(pass) = &cfg.auth_password {
            setup.push(b"AUTH");
            if let Some(u) = &cfg.auth_username {
                setup.push(u.as_bytes());
            }
            setup.push(pass.as_bytes());
        }
        if !setup.is_empty() {
            conn.pipe.push_internal(&codec::command(&setup));
        }
        if role == Role::ReplicaRead {
            conn.pipe.push_internal(READONLY);
        }
        self.conns[idx] = Some(conn);
        if pin.is_none() {
            let pool = PoolKey {
                cluster,
                addr: addr.to_string(),
                resp3,
                role,
            };
            self.by_addr.insert(pool, idx);
        }
        Ok(idx)
    }

    /// A mirrored command that could not be sent at once is dropped; drops
    /// are counted and logged at most every few seconds.
    fn drop_mirror(&mut self, cluster: usize) {
        self.stats
            .inc(self.stats.cluster(cluster).mirror_rq_dropped);
        self.mirror_dropped += 1;
        let now = Instant::now();
        if now.duration_since(self.mirror_logged) >= MIRROR_LOG_EVERY {
            log!(
                Level::Warn,
                "redis_cluster: mirror unavailable or slow: {} mirrored commands dropped so far",
                self.mirror_dropped
            );
            self.mirror_logged = now;
        }
    }

    fn mark_down(&mut self, cluster: usize, addr: &str, now: Instant) {
        let d = self
            .down
            .entry((cluster, addr.to_string()))
            .or_insert(Down {
                since: now,
                next_attempt: now,
                backoff: BACKOFF_MIN / 2,
            });
        d.backoff = (d.backoff * 2).min(BACKOFF_MAX);
        d.next_attempt = now + d.backoff;
        self.clusters[cluster]
            .topo
            .request_refresh("node unreachable");
    }

    fn on_writable(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if !conn.connected {
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail_conn(idx, &format!("connect: {e}")),
            }
            match conn.stream.peer_addr() {
                Ok(_) => {
                    conn.connected = true;
                    let key = (conn.cluster, conn.addr.clone());
                    if self.down.remove(&key).is_some() {
                        log!(
                            Level::Info,
                            "redis_cluster: node {} is reachable again",
                            key.1
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail_conn(idx, &format!("connect: {e}")),
            }
        }
        self.flush(idx);
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for idx in &dirty {
            self.flush(*idx);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn flush(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if !conn.connected {
            return;
        }
        if let Some(tls) = conn.tls.as_mut() {
            // Plaintext goes into the TLS session (which buffers it until
            // the handshake is done), records go out as the socket allows.
            let plain = conn.pipe.unwritten();
            if !plain.is_empty() {
                if let Err(e) = tls.writer().write_all(plain) {
                    return self.fail_conn(idx, &format!("tls write: {e}"));
                }
                let n = plain.len();
                conn.pipe.wrote(n);
            }
            while tls.wants_write() {
                match tls.write_tls(&mut conn.stream) {
                    Ok(0) => return self.fail_conn(idx, "write returned 0"),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return self.fail_conn(idx, &format!("write: {e}")),
                }
            }
            return;
        }
        while !conn.pipe.unwritten().is_empty() {
            match conn.stream.write(conn.pipe.unwritten()) {
                Ok(0) => return self.fail_conn(idx, "write returned 0"),
                Ok(n) => conn.pipe.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail_conn(idx, &format!("write: {e}")),
            }
        }
    }

    fn on_readable(&mut self, idx: usize) {
        let mut redo: Vec<Request> = Vec::new();
        let mut reload: Vec<(Request, Arc<[u8]>)> = Vec::new();
        let mut failure: Option<String> = None;
        let mut release = false;
        let mut tls_flush = false;
        {
            let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                return;
            };
            if let Some(tls) = conn.tls.as_mut() {
                if let Err(e) = read_tls(tls, &mut conn.stream, &mut conn.inbuf) {
                    failure = Some(e);
                }
                tls_flush = tls.wants_write();
            }
            // Read through one reusable buffer: growing `inbuf` by a
            // zero-filled 64 KiB per read cost a memset per reply burst.
            while conn.tls.is_none() {
                match conn.stream.read(&mut self.scratch) {
                    Ok(0) => {
                        failure = Some("closed by node".into());
                        break;
                    }
                    Ok(n) => {
                        conn.inbuf.extend_from_slice(&self.scratch[..n]);
                        if n < READ_CHUNK {
                            break;
                        }
                    }
                    Err(e) => match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            failure = Some(format!("read: {e}"));
                            break;
                        }
                    },
                }
            }
            // Match complete replies to commands, in order.
            loop {
                let buf = &conn.inbuf[conn.in_start..];
                let n = match conn.framer.frame(buf) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                let Some(next) = conn.pipe.next_reply() else {
                    failure = Some("reply without a request".into());
                    break;
                };
                let reply = &buf[..n];
                conn.in_start += n;
                let mut req = match next {
                    Next::Stream(client, seq, part) => {
                        client.deliver(seq, part, reply.to_vec());
                        continue;
                    }
                    Next::Request(req) => req,
                    Next::TimedOut => continue,
                    Next::Internal => {
                        if conn.node_id == blocking::NodeId::Asked {
                            conn.node_id = match codec::integer_value(reply) {
                                Some(id) => blocking::NodeId::Known(id),
                                None => blocking::NodeId::Refused,
                            };
                        }
                        if let Some(err) = codec::error_text(reply) {
                            // READONLY on a standalone node errors; that is fine.
                            // On a pinned connection these are a transaction's
                            // queued commands: EXEC's reply tells the client.
                            if conn.pin.is_none()
                                && !err
                                    .starts_with(b"ERR This instance has cluster support disabled")
                            {
                                log!(
                                    Level::Warn,
                                    "redis_cluster: node {} refused setup command: {}",
                                    conn.addr,
                                    String::from_utf8_lossy(err)
                                );
                            }
                        }
                        continue;
                    }
                };
                if req.release_pin {
                    release = true;
                }
                if req.blocking.is_some() {
                    // Sent again from here (redirected, retried), getting
                    // it to a node is bounded by op_timeout again.
                    req.deadline = Instant::now() + self.settings.op_timeout;
                }
                if conn.pin.is_none() {
                    self.busy
                        .saw_reply(conn.cluster, &conn.addr, reply, Instant::now());
                }
                let outcome = if req.pin.is_some() {
                    // A transaction is never redirected piecemeal (the node
                    // has flagged it); the map is stale, so the client's
                    // next attempt must find the new owner.
                    if codec::error_text(reply)
                        .is_some_and(|e| e.starts_with(b"MOVED ") || e.starts_with(b"ASK "))
                    {
                        self.clusters[req.cluster]
                            .topo
                            .request_refresh("redirection inside a transaction");
                    }
                    Outcome::Deliver
                } else {
                    policy::classify(reply, &conn.addr, &self.settings, &req, &self.scripts)
                };
                match outcome {
                    Outcome::Reload(body) => reload.push((req, body)),
                    Outcome::Deliver => {
                        if codec::error_text(reply).is_some() {
                            self.stats
                                .inc(self.stats.cluster(req.cluster).upstream_rq_error);
                        }
                        req.respond(reply.to_vec())
                    }
                    Outcome::Redirect(r) => {
                        let cs = self.stats.cluster(req.cluster);
                        self.stats.inc(match r {
                            Redirect::Moved { .. } => cs.redirections_moved,
                            Redirect::Ask { .. } => cs.redirections_ask,
                        });
                        redo.push(policy::redirected(req, r))
                    }
                    Outcome::Retry { refresh, delay } => {
                        let mut req = req;
                        if refresh {
                            self.clusters[req.cluster]
                                .topo
                                .request_refresh("cluster error reply");
                            req.wait_gen = Some(self.clusters[req.cluster].gen);
                        }
                        // Bounded by the request's deadline (op_timeout).
                        req.retry_at = Some(Instant::now() + delay);
                        self.parked.push(req);
                    }
                }
            }
            if conn.in_start == conn.inbuf.len() {
                conn.inbuf.clear();
                conn.in_start = 0;
            } else if conn.in_start > READ_CHUNK {
                conn.inbuf.drain(..conn.in_start);
                conn.in_start = 0;
            }
        }
        if let Some(why) = failure {
            self.fail_conn(idx, &why);
        } else if release {
            self.close_pinned(idx);
        } else if tls_flush {
            // Handshake messages or alerts rustls wants to send.
            self.flush(idx);
        }
        self.blocking_answered(idx);
        for (mut req, body) in reload {
            // Load the script where it is missing, then run it there again.
            req.script_reloaded = true;
            if let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) {
                conn.pipe
                    .push_internal(&codec::command(&[b"SCRIPT", b"LOAD", &body]));
                self.enqueue(idx, req, false);
                self.flush(idx);
            } else {
                redo.push(req);
            }
        }
        let now = Instant::now();
        for req in redo {
            // MOVED means our map is stale; a run of ASKs means a slot is
            // migrating. Either way a (coalesced) refresh is due.
            self.clusters[req.cluster]
                .topo
                .request_refresh("redirection");
            self.dispatch(req, now);
        }
    }

    /// Close a transaction's dedicated connection (its WATCHes die with it).
    fn close_pinned(&mut self, idx: usize) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(|c| c.take()) else {
            return;
        };
        let _ = self.registry.deregister(&mut conn.stream);
        if let Some(pin) = conn.pin {
            self.pinned.remove(&pin);
        }
        self.blocking_closed(&conn, idx);
        self.free.push(idx);
        for u in conn.pipe.unanswered() {
            u.req
                .respond(codec::error("ERR transaction connection released"));
        }
    }

    /// Drop a broken connection. Commands that never reached the node whole,
    /// and reads, are safe to send again: they wait for a fresh topology.
    /// Writes that reached the node may have run: they are resent only when
    /// `retry_unanswered_writes` is on (at-least-once), else their clients
    /// get an error. Transactions are never resent.
    fn fail_conn(&mut self, idx: usize, why: &str) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(|c| c.take()) else {
            return;
        };
        let _ = self.registry.deregister(&mut conn.stream);
        match conn.pin {
            Some(pin) => {
                self.pinned.remove(&pin);
            }
            None => {
                self.by_addr.remove(&PoolKey {
                    cluster: conn.cluster,
                    addr: conn.addr.clone(),
                    resp3: conn.resp3,
                    role: conn.role,
                });
            }
        }
        self.blocking_closed(&conn, idx);
        self.free.push(idx);
        let now = Instant::now();
        self.mark_down(conn.cluster, &conn.addr, now);
        self.stats
            .inc(self.stats.cluster(conn.cluster).upstream_cx_lost);
        log!(
            Level::Info,
            "redis_cluster: connection to {} lost: {why}",
            conn.addr
        );
        for Unanswered {
            mut req,
            reached_node,
        } in conn.pipe.unanswered()
        {
            if req.blocking.is_some() {
                req.deadline = now + self.settings.op_timeout;
            }
            if policy::resend_after_loss(&req, reached_node, &self.settings) {
                self.park(req, "connection lost");
            } else {
                let msg = format!("ERR connection to {} lost: {why}", conn.addr);
                req.respond(codec::error(&msg));
            }
        }
    }

    /// Probe the nodes whose shared connections wait behind a long script
    /// (see `busy`), and take in the probes' answers.
    fn check_busy(&mut self, now: Instant) {
        self.busy.collect();
        let op_timeout = self.settings.op_timeout;
        let mut probe: Vec<(usize, String, bool)> = Vec::new();
        for c in self.conns.iter().flatten() {
            if c.pin.is_some() {
                continue;
            }
            let Some(oldest) = c.pipe.front_request() else {
                continue;
            };
            let arrived = oldest.deadline.checked_sub(op_timeout).unwrap_or(now);
            if self
                .busy
                .wants_probe(c.cluster, &c.addr, c.pipe.requests(), arrived, now)
                && !probe
                    .iter()
                    .any(|(cl, a, _)| *cl == c.cluster && *a == c.addr)
            {
                probe.push((c.cluster, c.addr.clone(), c.resp3));
            }
        }
        for (cluster, addr) in self.busy.due(now) {
            if !probe.iter().any(|(cl, a, _)| *cl == cluster && *a == addr) {
                probe.push((cluster, addr, false));
            }
        }
        for (cluster, addr, resp3) in probe {
            self.next_pin += 1;
            let req = self.busy.probe(cluster, &addr, self.next_pin, resp3, now);
            self.dispatch(req, now);
        }
    }

    fn check_timeouts(&mut self, now: Instant) {
        self.close_orphaned_blocking();
        self.unblock_cancelled(now);
        let orphans: Vec<usize> = self
            .pinned
            .values()
            .copied()
            .filter(|&i| {
                self.conns
                    .get(i)
                    .and_then(|c| c.as_ref())
                    .and_then(|c| c.owner.as_ref())
                    .is_some_and(|o| o.is_detached())
            })
            .collect();
        for i in orphans {
            self.close_pinned(i);
        }
        let connect_timeouts: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.as_ref()?;
                let limit = self.clusters[c.cluster].cfg.connect_timeout;
                (!c.connected && now.duration_since(c.opened) > limit).then_some(i)
            })
            .collect();
        for i in connect_timeouts {
            self.fail_conn(i, "connect timeout");
        }
        let op_ms = self.settings.op_timeout.as_millis();
        let stats = &self.stats;
        let mut stuck = Vec::new();
        for (i, conn) in self.conns.iter_mut().enumerate() {
            let Some(conn) = conn.as_mut() else { continue };
            let (cluster, addr) = (conn.cluster, &conn.addr);
            let mut expired = false;
            conn.pipe.expire(now, |req| {
                stats.inc(stats.cluster(cluster).upstream_rq_timeout);
                let msg = format!("ERR upstream timeout: no reply from {addr} within {op_ms} ms");
                req.respond(codec::error(&msg));
                expired = true;
            });
            if expired && conn.pin.is_some() {
                stuck.push(i);
            }
        }
        // A transaction whose command timed out is in a state its client
        // cannot know (the node may still queue or run it): close its
        // connection, so the node drops it and later commands of it fail.
        for i in stuck {
            self.close_pinned(i);
        }
    }
}

/// Read TLS records until the socket would block, appending plaintext to
/// `inbuf`. Errors (including a clean close by the node) are returned.
fn read_tls(
    tls: &mut rustls::ClientConnection,
    stream: &mut TcpStream,
    inbuf: &mut Vec<u8>,
) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tls.read_tls(stream) {
            Ok(0) => return Err("closed by node".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
        tls.process_new_packets().map_err(|e| format!("tls: {e}"))?;
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => return Err("closed by node (TLS close_notify)".into()),
                Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("tls read: {e}")),
            }
        }
    }
}
