//! Module-owned upstream I/O: one [`UpstreamIo`] per Envoy worker, run
//! on the worker itself ([`WorkerIo`]).
//!
//! The network-filter ABI gives a module no upstream client and no timers, so
//! each worker owns non-blocking, pipelined TCP connections to the Redis
//! nodes of every configured cluster. It routes each command by its slot,
//! writes it to the node, matches replies to commands in order (Redis
//! answers a connection's commands in order), follows `MOVED`/`ASK`,
//! enforces `op_timeout`, and delivers each reply to the client's
//! [`ClientShared`] mailbox. A helper thread per worker only waits for
//! readiness and deadlines and wakes the worker (`worker`, `wake`).
//!
//! Nothing here touches Envoy: the only link is the [`Notify`] trait.

mod attend;
mod blocking;
mod busy;
mod clock;
mod conn;
mod deadlines;
mod dispatch;
mod identity;
mod mailbox;
mod pipeline;
mod policy;
mod pool;
mod replies;
mod wake;
mod worker;

pub use mailbox::{ClientShared, Delivery, Notify, Part, WHOLE};
pub use worker::{HelperHandle, WorkerIo};

use crate::codec;
use crate::config::{ClusterConfig, ReadPolicy, Settings};
use crate::scripts::ScriptCache;
use crate::stats::Stats;
use crate::topology::SlotMap;
use crate::topology_refresh::ClusterTopology;
pub use blocking::{Blocking, TimeoutUnit};
use busy::BusyNodes;
pub use busy::SharedBusy;
pub use identity::Credentials;
use mio::net::TcpStream;
use mio::Registry;
use pipeline::Pipeline;
use pool::SharedConns;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a command must go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The shard owning `slot`; `read` commands may use replicas per policy.
    Slot { slot: u16, read: bool },
    /// Any master (keyless commands whose answer does not depend on the node).
    AnyMaster,
    /// A node named by the sender (cluster-wide commands, probes, admin).
    Node {
        addr: String,
        slot: u16,
        asking: bool,
    },
    /// The node a `MOVED`/`ASK` named for `slot`, for this attempt only: a
    /// request that has to wait (node down, connection lost) is routed by
    /// its slot again, on the fresher map the wait brings — the named node
    /// may be dead for good (killed, then replaced by its replica).
    Redirected {
        addr: String,
        slot: u16,
        asking: bool,
        read: bool,
    },
}

impl Target {
    /// Where a request goes once it has waited: a redirection's node is
    /// forgotten, the slot map decides again.
    fn after_wait(&mut self) {
        if let Target::Redirected { slot, read, .. } = *self {
            *self = Target::Slot { slot, read };
        }
    }

    /// A read command (replicas may serve it, safe to send again).
    fn is_read(&self) -> bool {
        matches!(
            self,
            Target::Slot { read: true, .. } | Target::Redirected { read: true, .. }
        )
    }
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
    /// Run as this user (the client's `AUTH`), on connections that
    /// authenticated as it; `None`: as the cluster's configured user.
    user: Option<Arc<Credentials>>,
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
    /// A command for the nodes: `data` (RESP) for `target` in cluster
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
            user: None,
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

    /// Run as the client's user `user` (`None`: the cluster's configured
    /// user).
    pub fn user(mut self, user: Option<Arc<Credentials>>) -> Request {
        self.user = user;
        self
    }

    /// The client's user it runs as (`None`: the cluster's configured one).
    pub fn run_as(&self) -> Option<&Credentials> {
        self.user.as_deref()
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

    /// A command that may block: it runs on a connection of its own
    /// (see `upstream/blocking.rs`).
    pub fn blocking(mut self, b: Blocking) -> Request {
        self.blocking = Some(Box::new(b));
        self
    }

    /// A command after which the node streams (`MONITOR`), on a pinned
    /// connection: the reply and every frame after it go to the client,
    /// with no deadline, until the client goes away (which closes it).
    pub fn streaming(mut self) -> Request {
        self.stream = true;
        self
    }

    /// Not dispatched before `at` (a subscription sent again after a loss
    /// waits for the topology that loss asked for).
    pub fn not_before(mut self, at: Instant) -> Request {
        self.retry_at = Some(at);
        self
    }

    /// The instant it may be dispatched from, if later than now; its
    /// deadline counts from then.
    pub fn earliest(&self) -> Option<Instant> {
        self.retry_at
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

struct Conn {
    cluster: usize,
    addr: String,
    resp3: bool,
    /// The client's user it authenticated as (see [`identity`]).
    user: Option<Arc<Credentials>>,
    /// Its `AUTH` as `user` is not answered yet (after this many of the
    /// proxy's own replies): nothing after it is written.
    auth_pending: Option<u32>,
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
    /// The `CLIENT UNBLOCK` sent for the command it holds now: how, and
    /// where its answer lands (see [`blocking`]'s `recheck_unblocks`).
    unblock_answer: Option<(crate::clients::UnblockMode, Arc<ClientShared>)>,
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

/// One Envoy worker's upstream state: its connections to the nodes and the
/// requests on them. Only the worker touches it ([`WorkerIo`]).
pub struct UpstreamIo {
    /// Where the connections' sockets are registered (the helper thread
    /// waits on the poll).
    registry: Registry,
    settings: Settings,
    clusters: Vec<ClusterView>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Shared connections by node and what they are for.
    shared: SharedConns,
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
    /// Pin ids for the worker's own one-off connections (busy probes), apart
    /// from the sessions' ids, which count up from 1.
    next_pin: u64,
    blocking: blocking::BlockingPool,
    /// Connections that connect or owe replies other than a blocked
    /// command's: what each tick looks at for timeouts and busy nodes.
    active: clock::ConnSet,
    /// Blocking connections by when their command times out (the node's
    /// timeout plus `op_timeout`, [`blocking`]).
    blocked_until: clock::DeadlineQueue<usize>,
    /// Blocking connections whose `CLIENT UNBLOCK` answer is to be looked
    /// at (see [`blocking`]).
    unblock_recheck: clock::DeadlineQueue<usize>,
    /// Where sessions name the connections whose client left or asked to
    /// unblock ([`attend`]).
    desk: Arc<mailbox::Attention>,
    /// Connections the worker itself found need a look at the next tick.
    attend: Vec<usize>,
}

impl UpstreamIo {
    /// A worker's upstream state, its sockets registered with `registry`.
    fn new(
        registry: Registry,
        settings: Settings,
        clusters: &[Arc<ClusterTopology>],
        stats: Arc<Stats>,
        scripts: Arc<ScriptCache>,
        busy: Arc<SharedBusy>,
        desk: Arc<mailbox::Attention>,
    ) -> UpstreamIo {
        let clusters = clusters
            .iter()
            .map(|t| ClusterView {
                topo: t.clone(),
                gen: 0,
                map: None,
                cfg: t.config().clone(),
            })
            .collect();
        UpstreamIo {
            registry,
            settings,
            clusters,
            conns: Vec::new(),
            free: Vec::new(),
            shared: SharedConns::default(),
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
            active: clock::ConnSet::default(),
            blocked_until: clock::DeadlineQueue::default(),
            unblock_recheck: clock::DeadlineQueue::default(),
            desk,
            attend: Vec::new(),
        }
    }

    /// A connection's socket is ready.
    pub(super) fn on_ready(&mut self, idx: usize, readable: bool, writable: bool) {
        if writable {
            self.on_writable(idx);
        }
        if readable {
            self.on_readable(idx);
        }
    }

    /// Pick up new topology generations published by the refreshers.
    pub(super) fn refresh_views(&mut self) {
        for v in &mut self.clusters {
            let gen = v.topo.generation();
            if gen != v.gen {
                v.gen = gen;
                v.map = v.topo.current();
            }
        }
    }
}
