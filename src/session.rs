//! One client connection, as the Envoy worker sees it.
//!
//! A session turns the client's byte stream into commands ([`codec`]),
//! answers the ones a proxy must answer itself (PING, ECHO, SELECT 0, QUIT,
//! errors for what cannot work through a cluster), and hands the rest to its
//! worker's upstream loop in one batch per read. Every command gets a
//! sequence number and a reply slot in a FIFO; replies (from the loop, in any
//! order across nodes) fill their slots, and the contiguous ready prefix is
//! written to the client in one `write` — so a client always gets its replies
//! in the order it sent the commands.
//!
//! Memory is bounded: past `max_pending_requests_per_connection` outstanding
//! commands, or while Envoy's write buffer is above its high watermark, the
//! session stops parsing and asks Envoy to stop reading (backpressure).

use crate::clock::Clock;
use crate::codec::{self, Scan};
use crate::command::{self, Dispatch};
use crate::config::{MirrorPolicy, ReadPolicy};
use crate::key_routing::{self as keys, KeyRoutes, SingleError};
use crate::local::{self, ConnState};
use crate::proxy::Proxy;
use crate::splitter::{self, Gather, Merge};
use crate::upstream::{ClientShared, Delivery, Part, Request, Target, WorkerIo, WHOLE};

/// Part number marking the probe of a command deferred until a topology
/// with masters (never a real part: splits have far fewer parts).
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use crate::upstream::Notify;

mod admin;
mod blocking;
mod ordering;
mod transaction;

use ordering::{Lane, Waiting};
use transaction::Txn;

/// What a session needs from the downstream connection.
pub trait Downstream {
    fn write(&mut self, data: &[u8]);
    /// Close, flushing pending writes first when `flush`.
    fn close(&mut self, flush: bool);
    fn read_disable(&mut self, disable: bool);
    /// Record a histogram value (Envoy requires its worker thread).
    fn record_histogram(&mut self, _id: usize, _value: u64) {}
}

/// Where a session's requests go: its worker's upstream loop in Envoy, a
/// model of one in tests and fuzzing.
///
/// The contract a session relies on: every request that is not a mirrored
/// copy gets exactly one reply, delivered to its client's mailbox, by its
/// deadline (the loop answers a timeout error then).
pub trait Upstream {
    /// Take every request of `batch`, leaving it empty.
    fn submit(&self, batch: &mut Vec<Request>);
    /// A node's `-BUSY` reply while one is busy with a long script.
    fn busy_reply(&self) -> Option<Vec<u8>> {
        None
    }
    /// Look at the clients again now (one left while blocked).
    fn wake(&self) {}
}

impl Upstream for WorkerIo {
    fn submit(&self, batch: &mut Vec<Request>) {
        WorkerIo::submit(self, batch)
    }
    fn busy_reply(&self) -> Option<Vec<u8>> {
        WorkerIo::busy_reply(self)
    }
    fn wake(&self) {
        WorkerIo::wake(self)
    }
}

/// A reply slot: filled when the reply is known, written in order.
struct Slot {
    reply: Option<Vec<u8>>,
    /// `CLIENT REPLY OFF|SKIP`: the command runs, its reply is not written.
    silent: bool,
    /// Command table index (`None`: not a known command).
    cmd: Option<usize>,
    start: Instant,
    /// The kind of connection the command took ([`ordering`]).
    lane: Lane,
}

/// `CLIENT REPLY` mode: whether replies are written to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    /// The next command's reply is dropped, then back to `On`.
    Skip,
}

/// Connection ids for CLIENT ID, unique per process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct Session {
    proxy: Arc<Proxy>,
    /// `None` in validation mode (no upstream loop runs).
    upstream: Option<Arc<dyn Upstream>>,
    clock: Clock,
    client: Arc<ClientShared>,
    /// Unparsed bytes (a partial request, or input held back while paused).
    inbuf: Vec<u8>,
    /// Don't rescan `inbuf` until it holds this many bytes.
    need: usize,
    /// Reply slots for commands `head_seq ..`, in order.
    slots: VecDeque<Slot>,
    /// Command being handled (index in the command table) and when it
    /// arrived: every reply slot is stamped with them for statistics.
    current: (Option<usize>, Instant),
    /// Buffered bytes last reported to the gauge.
    reported_buffered: u64,
    head_seq: u64,
    out: Vec<u8>,
    batch: Vec<Request>,
    delivered: Vec<Delivery>,
    /// Split commands waiting for their parts, by sequence number.
    gathers: HashMap<u64, Gather>,
    state: ConnState,
    txn: Option<Txn>,
    /// Parsing waits for this command's reply (EXEC, blocking commands).
    barrier: Option<u64>,
    /// A blocking command waiting for earlier replies or blocked.
    block: Option<blocking::Held>,
    /// Unanswered commands per kind of connection, and whether parsing
    /// stopped at a command that must wait for the other kind
    /// ([`ordering`]).
    waiting: Waiting,
    lane: Lane,
    gated: bool,
    /// Cluster-wide commands waiting for a topology with masters, by their
    /// reply slot.
    deferred: HashMap<u64, Vec<u8>>,
    /// Set while re-handling a deferred command: its existing reply slot.
    reuse_seq: Option<u64>,
    args: Vec<Range<usize>>,
    keys: Vec<usize>,
    reply_mode: ReplyMode,
    /// The command being handled is not answered (`CLIENT REPLY`).
    silent: bool,
    /// Close once every pending reply is written (QUIT, protocol error, FIN).
    closing: bool,
    /// The client sent FIN: close once everything it sent is answered.
    end_stream: bool,
    closed: bool,
    write_blocked: bool,
    read_disabled: bool,
    rng: u64,
    /// The script body this client last sent, remembered in the cache's
    /// generation `last_script_gen` (a flush since means remember again;
    /// `None`: nothing sent yet).
    last_script: Vec<u8>,
    last_script_gen: Option<u64>,
}

impl Session {
    /// A session of worker `worker`, whose requests go to that worker's
    /// upstream loop.
    pub fn new(proxy: Arc<Proxy>, worker: usize, notifier: Box<dyn Notify>) -> Session {
        let upstream = proxy.upstream_for(worker);
        Session::with_upstream(proxy, notifier, upstream, Clock::System)
    }

    /// A session whose requests go to `upstream` (`None`: validation mode,
    /// every request fails at once) and which reads the time from `clock`.
    pub fn with_upstream(
        proxy: Arc<Proxy>,
        notifier: Box<dyn Notify>,
        upstream: Option<Arc<dyn Upstream>>,
        clock: Clock,
    ) -> Session {
        let open = proxy.config.downstream_auth_passwords.is_empty();
        let stats = &proxy.stats;
        stats.inc(stats.downstream_cx_total);
        stats.gauge_add(stats.downstream_cx_active, 1);
        let now = clock.now();
        Session {
            proxy,
            upstream,
            clock,
            client: ClientShared::new(notifier),
            inbuf: Vec::new(),
            need: 0,
            slots: VecDeque::new(),
            current: (None, now),
            reported_buffered: 0,
            head_seq: 0,
            out: Vec::new(),
            batch: Vec::new(),
            delivered: Vec::new(),
            gathers: HashMap::new(),
            txn: None,
            barrier: None,
            block: None,
            waiting: Waiting::default(),
            lane: Lane::Free,
            gated: false,
            deferred: HashMap::new(),
            reuse_seq: None,
            state: ConnState {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                authenticated: open,
                ..ConnState::default()
            },
            args: Vec::new(),
            keys: Vec::new(),
            reply_mode: ReplyMode::On,
            silent: false,
            closing: false,
            end_stream: false,
            closed: false,
            write_blocked: false,
            read_disabled: false,
            rng: seed(),
            last_script: Vec::new(),
            last_script_gen: None,
        }
    }

    fn next_seq(&self) -> u64 {
        self.head_seq + self.slots.len() as u64
    }

    /// When the oldest command whose reply the client has not been sent yet
    /// arrived (its deadline is `op_timeout` later); `None` when every
    /// command so far is answered.
    pub fn oldest_unanswered(&self) -> Option<Instant> {
        self.slots.front().map(|s| s.start)
    }

    fn paused(&self) -> bool {
        self.barrier.is_some()
            || self.gated
            || self.write_blocked
            || self.slots.len()
                >= self
                    .proxy
                    .config
                    .settings
                    .max_pending_requests_per_connection as usize
    }

    /// New bytes from the client. Always takes all of them (the caller
    /// drains Envoy's buffer); what is not a whole request yet is kept.
    pub fn on_data(&mut self, data: &[u8], conn: &mut dyn Downstream) -> usize {
        let stats = &self.proxy.stats;
        stats.add(stats.downstream_cx_rx_bytes_total, data.len() as u64);
        if self.closing || self.closed {
            return data.len();
        }
        if self.inbuf.is_empty() && !self.paused() {
            let used = self.process(data);
            self.inbuf.extend_from_slice(&data[used..]);
        } else {
            self.inbuf.extend_from_slice(data);
            if self.inbuf.len() >= self.need {
                self.process_inbuf();
            }
        }
        self.finish(conn);
        data.len()
    }

    fn process_inbuf(&mut self) {
        let buf = std::mem::take(&mut self.inbuf);
        let used = self.process(&buf);
        self.inbuf = buf;
        self.inbuf.drain(..used);
    }

    /// Parse and handle whole requests from `buf`; returns bytes used.
    fn process(&mut self, buf: &[u8]) -> usize {
        let mut pos = 0;
        let now = self.clock.now();
        let limit = self.proxy.config.settings.max_buffered_bytes_per_connection;
        while pos < buf.len() && !self.closing && !self.paused() {
            let mut args = std::mem::take(&mut self.args);
            let scanned = match codec::scan_request(&buf[pos..], &mut args) {
                // Refused however it arrived: whole in one read, as below
                // when it arrives in pieces.
                Ok(Scan::Complete(n)) if n > limit => Ok(Scan::Incomplete { need: n }),
                other => other,
            };
            match scanned {
                Ok(Scan::Complete(n)) => {
                    let frame = &buf[pos..pos + n];
                    if self.waiting.shared > 0 || self.waiting.txn > 0 {
                        let name = args.first().map(|r| {
                            let raw = &frame[r.clone()];
                            if frame.first() == Some(&b'*') {
                                std::borrow::Cow::Borrowed(raw)
                            } else {
                                std::borrow::Cow::Owned(codec::inline_word(raw))
                            }
                        });
                        if self.waiting.must_wait(self.lane_of(name.as_deref())) {
                            // Handled once the other kind of connection
                            // has answered everything sent before it.
                            self.gated = true;
                            self.args = args;
                            break;
                        }
                    }
                    if frame.first() == Some(&b'*') {
                        let words: Vec<&[u8]> = args.iter().map(|r| &frame[r.clone()]).collect();
                        self.handle(frame, &words, now);
                    } else {
                        // Inline (telnet-style): quotes and escapes decoded.
                        let owned: Vec<Vec<u8>> = args
                            .iter()
                            .map(|r| codec::inline_word(&frame[r.clone()]))
                            .collect();
                        let words: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
                        self.handle(frame, &words, now);
                    }
                    pos += n;
                    self.need = 0;
                }
                Ok(Scan::Empty(n)) => pos += n,
                Ok(Scan::Incomplete { need }) => {
                    if need > limit {
                        self.proxy
                            .stats
                            .inc(self.proxy.stats.downstream_cx_protocol_error);
                        self.current = (None, now);
                        // Not a command: shown unless replies are off (CLIENT REPLY).
                        self.silent = self.reply_mode != ReplyMode::On;
                        let seq = self.push_slot();
                        let msg = format!("ERR Protocol error: request larger than max_buffered_bytes_per_connection ({limit} bytes)");
                        self.fill(seq, codec::error(&msg));
                        self.closing = true;
                        pos = buf.len();
                        self.args = args;
                        break;
                    }
                    self.need = need;
                    self.args = args;
                    break;
                }
                Err(e) => {
                    self.proxy
                        .stats
                        .inc(self.proxy.stats.downstream_cx_protocol_error);
                    self.current = (None, now);
                    // Not a command: shown unless replies are off (CLIENT REPLY).
                    self.silent = self.reply_mode != ReplyMode::On;
                    let seq = self.push_slot();
                    self.fill(seq, codec::error(&format!("ERR Protocol error: {}", e.0)));
                    self.closing = true;
                    pos = buf.len();
                }
            }
            self.args = args;
        }
        pos
    }

    /// The lane of the command named `name` (see [`ordering`]). Cheap when
    /// no transaction is open: only its first command can change lanes.
    fn lane_of(&self, name: Option<&[u8]>) -> Lane {
        if self.txn.is_none() && self.waiting.txn == 0 {
            return match name {
                Some(n) if ordering::opens_txn(n) => Lane::Txn,
                _ => Lane::Shared,
            };
        }
        let cmd = name.and_then(command::lookup).map(|c| c.name);
        ordering::lane(cmd, self.txn.is_some(), self.in_multi())
    }

    fn push_slot(&mut self) -> u64 {
        if let Some(seq) = self.reuse_seq.take() {
            return seq;
        }
        let seq = self.next_seq();
        let (cmd, start) = self.current;
        self.slots.push_back(Slot {
            reply: None,
            silent: self.silent,
            cmd,
            start,
            lane: self.lane,
        });
        self.waiting.add(self.lane);
        seq
    }

    fn fill(&mut self, seq: u64, reply: Vec<u8>) {
        let Some(i) = seq.checked_sub(self.head_seq) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(i as usize) {
            if slot.reply.is_none() {
                self.waiting.answered(slot.lane);
            }
            slot.reply = Some(reply);
        }
    }

    fn reply_now(&mut self, reply: Vec<u8>) {
        let seq = self.push_slot();
        self.fill(seq, reply);
    }

    /// Handle one request. `frame` is its raw bytes, `args[0]` its name.
    fn handle(&mut self, frame: &[u8], args: &[&[u8]], now: Instant) {
        let Some(name) = args.first() else { return };
        if self.proxy.test_hooks && name.eq_ignore_ascii_case(b"DEBUG-PANIC") {
            panic!("DEBUG-PANIC test hook");
        }
        let indexed = command::lookup_indexed(name);
        let found = indexed.map(|(_, c)| c);
        self.current = (indexed.map(|(i, _)| i), now);
        self.lane = ordering::lane(found.map(|c| c.name), self.txn.is_some(), self.in_multi());
        self.silent = match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                true
            }
        };
        let Some(cmd) = found else {
            self.abort_multi();
            return self.reply_now(unknown_command(args));
        };
        if !command::arity_ok(cmd, args.len()) {
            self.abort_multi();
            let msg = format!("ERR wrong number of arguments for '{}' command", cmd.name);
            return self.reply_now(codec::error(&msg));
        }
        if !self.state.authenticated && !matches!(cmd.name, "auth" | "hello" | "quit" | "reset") {
            return self.reply_now(codec::error("NOAUTH Authentication required."));
        }
        // RESET always resets, inside MULTI too.
        if cmd.name == "reset" {
            return self.reset(now);
        }
        let in_multi = self.in_multi();
        if matches!(cmd.name, "multi" | "exec" | "discard" | "watch")
            || (cmd.name == "unwatch" && !in_multi)
        {
            let reply = self.transaction(cmd, args, now);
            if let Err(e) = reply {
                self.reply_now(e);
            }
            return;
        }
        if in_multi {
            if let Err(e) = self.queue_in_multi(cmd, frame, args, now) {
                self.abort_multi();
                self.reply_now(e);
            }
            return;
        }
        if cmd.name == "client"
            && args
                .get(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"reply"))
        {
            let reply = self.client_reply(args);
            return self.reply_now(reply);
        }
        if let Some(reply) = self.local_reply(cmd, args) {
            // QUIT: answer, then close once earlier replies are out.
            self.closing |= cmd.name == "quit";
            return self.reply_now(reply);
        }
        if command::is_blocking(cmd, args) {
            if let Err(e) = self.blocking(cmd, frame, args, now) {
                self.reply_now(e);
            }
            return;
        }
        if cmd.has(command::PUBSUB) {
            let msg = format!(
                "ERR '{}' is not supported through this proxy yet (pub/sub commands)",
                cmd.name
            );
            return self.reply_now(codec::error(&msg));
        }
        // Bodies the upstream loops may need to load where a node lacks them.
        let body = match cmd.name {
            "eval" | "eval_ro" => args.get(1),
            "script" if args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"load")) => args.get(2),
            _ => None,
        };
        // Clients repeat the same script (rate limiters, locks): skip the
        // SHA1 and the shared lock when it is the one this client sent last.
        if let Some(body) = body {
            let generation = self.proxy.scripts.generation();
            if **body != self.last_script[..] || Some(generation) != self.last_script_gen {
                self.proxy.scripts.remember(body);
                self.last_script.clear();
                self.last_script.extend_from_slice(body);
                self.last_script_gen = Some(generation);
            }
        }
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        let outcome = command::key_indices(cmd, args, &mut keys);
        let result = match outcome {
            Err(msg) => Err(codec::error(&msg)),
            Ok(()) if keys.is_empty() => self.keyless(cmd, frame, args, now),
            Ok(()) => self.keyed(cmd, frame, args, &keys, now),
        };
        self.keys = keys;
        if let Err(reply) = result {
            self.reply_now(reply);
        }
    }

    /// Commands the proxy answers itself, like the single Redis the client
    /// believes it talks to.
    fn local_reply(&mut self, cmd: &command::Command, args: &[&[u8]]) -> Option<Vec<u8>> {
        Some(match cmd.name {
            // Like a Redis busy with a script: the proxy stands for all
            // the masters, and one of them is.
            "ping"
                if args.len() <= 2
                    && self
                        .upstream
                        .as_ref()
                        .is_some_and(|u| u.busy_reply().is_some()) =>
            {
                self.upstream.as_ref().and_then(|u| u.busy_reply())?
            }
            "ping" => match args {
                [_] => codec::simple("PONG"),
                [_, msg] => codec::bulk(msg),
                _ => codec::error(&command::arity_error(cmd.name)),
            },
            "echo" => codec::bulk(args.get(1)?),
            "quit" => codec::simple("OK"),
            "select" => {
                if args.get(1).is_some_and(|db| *db == b"0") {
                    codec::simple("OK")
                } else {
                    codec::error(
                        "ERR DB index is out of range: a Redis Cluster has only database 0",
                    )
                }
            }
            "asking" | "readonly" | "readwrite" => codec::simple("OK"),
            "hello" => local::hello(&mut self.state, &self.proxy.auth(), args),
            "auth" => local::auth(&mut self.state, &self.proxy.auth(), args),
            "client" => local::client(&mut self.state, args),
            "cluster" => local::cluster(
                &self.state,
                args,
                self.proxy.config.settings.enable_hashtagging,
            ),
            _ => return None,
        })
    }

    /// `RESET`: back to a new connection's state — no transaction (its
    /// WATCH connection released), RESP2, no name, replies on, and
    /// unauthenticated again when downstream auth is configured.
    fn reset(&mut self, now: Instant) {
        self.end_txn(now);
        self.state.resp3 = false;
        self.state.name = None;
        self.state.authenticated = !self.proxy.auth().required();
        self.reply_mode = ReplyMode::On;
        self.silent = false;
        self.reply_now(codec::simple("RESET"));
    }

    /// `CLIENT REPLY ON|OFF|SKIP`, kept by the proxy: the commands still
    /// run, only their replies are dropped before they reach the client.
    fn client_reply(&mut self, args: &[&[u8]]) -> Vec<u8> {
        if args.len() != 3 {
            return codec::error("ERR wrong number of arguments for 'client|reply' command");
        }
        let mode = args[2];
        if mode.eq_ignore_ascii_case(b"on") {
            self.reply_mode = ReplyMode::On;
            self.silent = false;
        } else if mode.eq_ignore_ascii_case(b"off") {
            self.reply_mode = ReplyMode::Off;
            self.silent = true;
        } else if mode.eq_ignore_ascii_case(b"skip") {
            // As in Redis, SKIP does nothing while replies are off.
            if self.reply_mode != ReplyMode::Off {
                self.reply_mode = ReplyMode::Skip;
            }
            self.silent = true;
        } else {
            return codec::error("ERR syntax error");
        }
        codec::simple("OK")
    }

    fn keyless(
        &mut self,
        cmd: &command::Command,
        frame: &[u8],
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let cluster = self.proxy.default_cluster().ok_or_else(no_route)?;
        let data = keys::encode(frame, args);
        let needs_masters = matches!(
            cmd.name,
            "dbsize"
                | "keys"
                | "flushall"
                | "flushdb"
                | "script"
                | "function"
                | "wait"
                | "randomkey"
                | "info"
                | "scan"
                | "config"
                | "save"
                | "bgsave"
                | "bgrewriteaof"
        );
        if needs_masters && !self.has_masters(cluster) {
            if self.reuse_seq.is_some() {
                // Handling a deferred command again: its wait is over.
                return Err(self.no_masters(cluster));
            }
            // Like keyed commands, wait (within op_timeout) for a topology
            // with masters (the first one, or one where slots are assigned
            // at last): a PING to any master, parked in the loop until one
            // exists, tells us.
            let seq = self.push_slot();
            self.deferred.insert(seq, data);
            let ping = codec::command(&[b"PING"]);
            self.send_keyless(seq, Part::Probe, cluster, Target::AnyMaster, ping, now);
            return Ok(());
        }
        match cmd.name {
            // Same answer from any node.
            "command" | "time" | "publish" | "lolwut" | "lastsave" | "eval" | "evalsha"
            | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" | "xgroup" | "xinfo" | "object"
            | "pfselftest" => {
                let seq = self.push_slot();
                let target = Target::AnyMaster;
                self.send_keyless(seq, WHOLE, cluster, target, data, now);
                Ok(())
            }
            "dbsize" => self.broadcast(cluster, data, |_| Merge::Sum, now),
            "keys" => self.broadcast(cluster, data, |_| Merge::Concat, now),
            "flushall" | "flushdb" => self.broadcast(cluster, data, |_| Merge::AllOk, now),
            "script" | "function"
                if args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"kill")) =>
            {
                self.broadcast_dedicated(cluster, data, Merge::Kill, now)
            }
            "function"
                if args
                    .get(1)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"stats")) =>
            {
                self.broadcast_dedicated(cluster, data, Merge::FunctionStats, now)
            }
            "script"
                if args
                    .get(1)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"flush")) =>
            {
                self.proxy.scripts.flush();
                self.broadcast(cluster, data, |_| Merge::Same, now)
            }
            "script" | "function" => self.broadcast(cluster, data, |_| Merge::Same, now),
            "wait" => {
                let data = self.wait_timeout(args).unwrap_or(data);
                self.broadcast(cluster, data, |_| Merge::Min, now)
            }
            "randomkey" => {
                let start = self.next_random();
                self.broadcast(
                    cluster,
                    data,
                    |n| Merge::FirstNonNil {
                        start: start % n.len().max(1) as u32,
                    },
                    now,
                )
            }
            "info" => self.info(cluster, args, now),
            "config" => self.config(cluster, args, data, now),
            "save" | "bgsave" | "bgrewriteaof" => self.persist(cluster, cmd.name, data, now),
            "scan" => self.scan(cluster, args, now),
            _ => Err(codec::error(&format!(
                "ERR '{}' is not supported through this proxy (keyless command)",
                cmd.name
            ))),
        }
    }

    /// A master serves slots (a cluster whose slots are not assigned yet
    /// publishes an empty map).
    fn has_masters(&self, cluster: usize) -> bool {
        self.proxy
            .topology(cluster)
            .is_some_and(|m| !m.shards.is_empty())
    }

    fn no_masters(&self, cluster: usize) -> Vec<u8> {
        codec::error(&format!(
            "CLUSTERDOWN Hash slot not served: cluster '{}' has no master serving slots",
            self.proxy.cluster_name(cluster)
        ))
    }

    /// The wait for masters is over (the probe got a reply, or timed out):
    /// handle the deferred command now, into the reply slot it already has,
    /// within the deadline it had from its arrival.
    fn resume_deferred(&mut self, seq: u64, probe_reply: Vec<u8>) {
        let Some(data) = self.deferred.remove(&seq) else {
            return;
        };
        let cluster = self.proxy.default_cluster().unwrap_or(0);
        if codec::error_text(&probe_reply).is_some() {
            // Timed out: say why when the map is there but has no master.
            let reply = match self.proxy.topology(cluster) {
                Some(m) if m.shards.is_empty() => self.no_masters(cluster),
                _ => probe_reply,
            };
            return self.fill(seq, reply);
        }
        let mut ranges = Vec::new();
        let parsed = matches!(
            codec::scan_request(&data, &mut ranges),
            Ok(Scan::Complete(_))
        );
        let args: Vec<&[u8]> = ranges.iter().map(|r| &data[r.clone()]).collect();
        let Some(cmd) = args
            .first()
            .and_then(|n| command::lookup(n))
            .filter(|_| parsed)
        else {
            return self.fill(seq, codec::error("ERR internal: deferred command lost"));
        };
        let arrived = self.slot_start(seq).unwrap_or_else(|| self.clock.now());
        self.reuse_seq = Some(seq);
        let result = self.keyless(cmd, &data, &args, arrived);
        if let Err(reply) = result {
            let seq = self.push_slot();
            self.fill(seq, reply);
        }
        self.reuse_seq = None;
    }

    /// When the command of reply slot `seq` arrived.
    fn slot_start(&self, seq: u64) -> Option<Instant> {
        let i = seq.checked_sub(self.head_seq)?;
        self.slots.get(usize::try_from(i).ok()?).map(|s| s.start)
    }

    /// Masters of a cluster, ordered by the first slot they own (stable
    /// across failovers, which matters for SCAN cursors); an error when
    /// there is none.
    fn masters(&self, cluster: usize) -> Result<Vec<String>, Vec<u8>> {
        let map = self
            .proxy
            .topology(cluster)
            .filter(|m| !m.shards.is_empty())
            .ok_or_else(|| self.no_masters(cluster))?;
        let mut first: Vec<Option<u16>> = vec![None; map.shards.len()];
        for slot in 0..crate::slot::SLOT_COUNT {
            if let Some(i) = map.shard_index(slot) {
                if let Some(f) = first.get_mut(i) {
                    f.get_or_insert(slot);
                }
            }
        }
        let mut order: Vec<(u16, String)> = map
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((first.get(i).copied().flatten()?, s.master.clone())))
            .collect();
        order.sort();
        if order.is_empty() {
            // A gather of zero parts would never complete.
            return Err(self.no_masters(cluster));
        }
        Ok(order.into_iter().map(|(_, m)| m).collect())
    }

    /// Send `data` to every master and merge the replies.
    fn broadcast(
        &mut self,
        cluster: usize,
        data: Vec<u8>,
        merge: impl FnOnce(&[String]) -> Merge,
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let masters = self.masters(cluster)?;
        let merge = merge(&masters);
        self.fan_out(cluster, masters, data, merge, false, now);
        Ok(())
    }

    /// `SCRIPT KILL`, `FUNCTION KILL`, `FUNCTION STATS`: the shared
    /// connection to a node running a long script waits behind it, so each
    /// master is asked on a connection of its own, closed once it has
    /// answered (Redis serves these commands while a script is busy).
    fn broadcast_dedicated(
        &mut self,
        cluster: usize,
        data: Vec<u8>,
        merge: Merge,
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let masters = self.masters(cluster)?;
        self.fan_out(cluster, masters, data, merge, true, now);
        Ok(())
    }

    /// Send `data` to each of `nodes` as one part of a command whose
    /// replies `merge` combines; with `dedicated`, each on a connection of
    /// its own that closes once it has answered.
    fn fan_out(
        &mut self,
        cluster: usize,
        nodes: Vec<String>,
        data: Vec<u8>,
        merge: Merge,
        dedicated: bool,
        now: Instant,
    ) {
        if nodes.is_empty() {
            // A gather of nothing would never be filled.
            return self.reply_now(self.no_masters(cluster));
        }
        let seq = self.push_slot();
        self.gathers.insert(seq, Gather::new(merge, nodes.len()));
        for (i, addr) in nodes.into_iter().enumerate() {
            let target = Target::Node {
                addr,
                slot: 0,
                asking: false,
            };
            let part = Part::Split(i as u32);
            if dedicated {
                let deadline = now + self.proxy.config.settings.op_timeout;
                let pin = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let req = Request::new(
                    self.client.clone(),
                    seq,
                    part,
                    cluster,
                    target,
                    data.clone(),
                    deadline,
                )
                .resp3(self.state.resp3)
                .pinned(pin, true, 0);
                self.batch.push(req);
            } else {
                let d = data.clone();
                self.send_keyless(seq, part, cluster, target, d, now);
            }
        }
    }

    /// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]` across all masters.
    fn scan(&mut self, cluster: usize, args: &[&[u8]], now: Instant) -> Result<(), Vec<u8>> {
        let cursor: u64 = std::str::from_utf8(args.get(1).copied().unwrap_or_default())
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| codec::error("ERR invalid cursor"))?;
        let masters = self.masters(cluster)?;
        let (shard, upstream) = splitter::decode_scan_cursor(cursor);
        let addr = masters
            .get(shard as usize)
            .cloned()
            .ok_or_else(|| codec::error("ERR invalid cursor"))?;
        let upstream = upstream.to_string();
        let mut sub: Vec<&[u8]> = vec![b"SCAN", upstream.as_bytes()];
        sub.extend_from_slice(args.get(2..).unwrap_or_default());
        let seq = self.push_slot();
        let merge = Merge::Scan {
            shard,
            shards: masters.len() as u32,
        };
        self.gathers.insert(seq, Gather::new(merge, 1));
        let target = Target::Node {
            addr,
            slot: 0,
            asking: false,
        };
        let data = codec::command(&sub);
        self.send_keyless(seq, Part::Split(0), cluster, target, data, now);
        Ok(())
    }

    fn keyed(
        &mut self,
        cmd: &command::Command,
        frame: &[u8],
        args: &[&[u8]],
        keys: &[usize],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let proxy = self.proxy.clone();
        let routes = key_routes(&proxy, args, keys)?;
        let hashtags = proxy.config.settings.enable_hashtagging;
        let slots = keys::key_slots(args, keys, &routes, hashtags);
        let read = command::effective_flags(cmd, args) & command::READONLY != 0;
        let one_place =
            matches!(routes, KeyRoutes::One(_)) && slots.windows(2).all(|w| w[0] == w[1]);
        if let (Dispatch::Fanout(kind), false) = (cmd.dispatch, one_place) {
            let (parts, merge) = keys::split(kind, args, keys, &routes, &slots);
            let seq = self.push_slot();
            self.gathers.insert(seq, Gather::new(merge, parts.len()));
            for (i, p) in parts.into_iter().enumerate() {
                let target = Target::Slot { slot: p.slot, read };
                self.send(
                    seq,
                    Part::Split(i as u32),
                    p.cluster,
                    p.mirrors,
                    target,
                    p.read_policy,
                    p.data,
                    now,
                );
            }
            return Ok(());
        }
        let one = keys::single(&routes, &slots).map_err(|e| self.single_error(cmd.name, e))?;
        let data = keys::encode_keyed(frame, args, keys, &routes);
        let seq = self.push_slot();
        let target = Target::Slot {
            slot: one.slot,
            read,
        };
        self.send(
            seq,
            WHOLE,
            one.cluster,
            &one.mirrors,
            target,
            one.read_policy,
            data,
            now,
        );
        Ok(())
    }

    /// The reply to a command that cannot go to one node as it is.
    fn single_error(&self, command: &str, e: SingleError) -> Vec<u8> {
        match e {
            SingleError::CrossSlot => {
                codec::error("CROSSSLOT Keys in request don't hash to the same slot")
            }
            SingleError::CrossCluster { first, other } => self.cross_cluster(command, first, other),
        }
    }

    fn cross_cluster(&self, command: &str, first: usize, other: usize) -> Vec<u8> {
        codec::error(&format!(
            "CROSSSLOT Keys in request map to different clusters: '{command}' has keys in clusters '{}' and '{}' (prefix routes) and cannot be split",
            self.proxy.cluster_name(first),
            self.proxy.cluster_name(other)
        ))
    }

    /// Queue a command that belongs to no route (no mirrors; a node's
    /// master connection).
    fn send_keyless(
        &mut self,
        seq: u64,
        part: Part,
        cluster: usize,
        target: Target,
        data: Vec<u8>,
        now: Instant,
    ) {
        self.send(
            seq,
            part,
            cluster,
            &[],
            target,
            ReadPolicy::Master,
            data,
            now,
        );
    }

    /// Queue a command (and its mirrored copies) for the upstream loop.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        seq: u64,
        part: Part,
        cluster: usize,
        mirrors: &[MirrorPolicy],
        target: Target,
        policy: ReadPolicy,
        data: Vec<u8>,
        now: Instant,
    ) {
        let deadline = now + self.proxy.config.settings.op_timeout;
        let read = matches!(target, Target::Slot { read: true, .. });
        for m in mirrors {
            if m.exclude_read_commands && read {
                continue;
            }
            if let Some(f) = &m.runtime_fraction {
                if !f.sampled(self.next_random()) {
                    continue;
                }
            }
            let Some(mirror_cluster) = self.proxy.cluster_index(&m.cluster) else {
                continue;
            };
            // Fire and forget: the loop drops the reply.
            let copy = Request::new(
                self.client.clone(),
                seq,
                part,
                mirror_cluster,
                target.clone(),
                data.clone(),
                deadline,
            );
            self.batch.push(copy.resp3(self.state.resp3).mirrored());
        }
        let req = Request::new(
            self.client.clone(),
            seq,
            part,
            cluster,
            target,
            data,
            deadline,
        )
        .read_policy(policy)
        .resp3(self.state.resp3);
        self.batch.push(req);
    }

    /// xorshift64*: cheap, good enough to sample mirrored commands.
    fn next_random(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// After handling input or replies: submit, write, apply backpressure.
    fn finish(&mut self, conn: &mut dyn Downstream) {
        loop {
            if !self.batch.is_empty() {
                match self.upstream.as_ref() {
                    Some(u) => u.submit(&mut self.batch),
                    None => {
                        // Answered like replies from a loop, so split and
                        // deferred commands are completed and forgotten.
                        let reqs = std::mem::take(&mut self.batch);
                        for r in reqs.into_iter().filter(|r| !r.is_mirror()) {
                            let reply = codec::error("ERR proxy is not running (validation mode)");
                            self.apply(r.seq, r.part, reply);
                        }
                    }
                }
            }
            self.release_barrier();
            // Retry a command that waited for the other kind of connection.
            self.gated = false;
            self.flush(conn);
            if self.launch_blocking() {
                // Every earlier reply is out: the blocking command goes.
                continue;
            }
            // Replies made here (local commands, validation mode) free their
            // slots with no upstream wake-up to follow: parse the input held
            // back by the pause now, or nothing ever would.
            if self.paused()
                || self.closing
                || self.closed
                || self.inbuf.is_empty()
                || self.inbuf.len() < self.need
            {
                break;
            }
            let before = self.inbuf.len();
            self.process_inbuf();
            if self.inbuf.len() == before {
                break;
            }
        }
        // After FIN, input held back while paused is still answered: close
        // only once everything the client sent has been parsed.
        if self.end_stream && !self.closing && !self.paused() {
            self.closing = true;
            self.flush(conn);
        }
        let buffered = self.inbuf.len() as u64;
        if buffered != self.reported_buffered {
            let stats = &self.proxy.stats;
            if buffered > self.reported_buffered {
                stats.gauge_add(
                    stats.downstream_cx_buffered_bytes,
                    buffered - self.reported_buffered,
                );
            } else {
                stats.gauge_sub(
                    stats.downstream_cx_buffered_bytes,
                    self.reported_buffered - buffered,
                );
            }
            self.reported_buffered = buffered;
        }
        // A blocked client is still read (a little), so that its leaving
        // is seen and its blocked command released at once.
        let want_disabled = self.paused() && !self.read_while_blocked();
        if want_disabled != self.read_disabled && !self.closed {
            self.read_disabled = want_disabled;
            crate::log!(
                crate::envoy::Level::Debug,
                "redis_cluster: client {} reading {}",
                self.state.id,
                if want_disabled { "paused" } else { "resumed" }
            );
            conn.read_disable(want_disabled);
        }
    }

    /// EXEC's reply is in: commands after it may go.
    fn release_barrier(&mut self) {
        if let Some(b) = self.barrier {
            let done = b < self.head_seq
                || self
                    .slots
                    .get((b - self.head_seq) as usize)
                    .is_some_and(|s| s.reply.is_some());
            if done {
                self.barrier = None;
            }
        }
    }

    fn flush(&mut self, conn: &mut dyn Downstream) {
        let stats = &self.proxy.stats;
        let command_stats = self.proxy.config.settings.enable_command_stats;
        let now = self.clock.now();
        let mut n = 0;
        while self.slots.front().is_some_and(|s| s.reply.is_some()) {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            let reply = slot.reply.unwrap_or_default();
            if command_stats {
                let cs = slot.cmd.map(|i| stats.command(i)).unwrap_or_default();
                stats.inc(cs.total);
                stats.inc(if codec::error_text(&reply).is_some() {
                    cs.error
                } else {
                    cs.success
                });
                if let Some(h) = cs.latency {
                    conn.record_histogram(h, now.duration_since(slot.start).as_micros() as u64);
                }
            }
            if !slot.silent {
                self.out.extend_from_slice(&reply);
            }
            self.head_seq += 1;
            n += 1;
        }
        stats.add(stats.downstream_rq_total, n);
        if !self.out.is_empty() && !self.closed {
            stats.add(stats.downstream_cx_tx_bytes_total, self.out.len() as u64);
            conn.write(&self.out);
        }
        self.out.clear();
        if self.closing && self.slots.is_empty() && !self.closed {
            self.closed = true;
            self.client.detach();
            conn.close(true);
        }
    }

    /// A reply for part `part` of command `seq`.
    fn apply(&mut self, seq: u64, part: Part, reply: Vec<u8>) {
        match part {
            Part::Probe => self.resume_deferred(seq, reply),
            Part::Whole => self.fill(seq, reply),
            Part::Split(i) => {
                if let Some(g) = self.gathers.get_mut(&seq) {
                    if let Some(merged) = g.add(i, reply) {
                        self.gathers.remove(&seq);
                        self.fill(seq, merged);
                    }
                }
            }
            Part::Queued | Part::Exec => self.fill(seq, transaction::node_reply(part, reply)),
            Part::Discard => {}
        }
    }

    /// Replies arrived from the upstream loop.
    pub fn on_scheduled(&mut self, conn: &mut dyn Downstream) {
        let mut delivered = std::mem::take(&mut self.delivered);
        self.client.take(&mut delivered);
        for d in delivered.drain(..) {
            self.apply(d.seq, d.part, d.reply);
        }
        self.delivered = delivered;
        self.release_barrier();
        self.flush(conn);
        // Room again: parse input held back while paused.
        if !self.paused() && !self.inbuf.is_empty() && !self.closing {
            self.process_inbuf();
        }
        self.finish(conn);
    }

    /// The client sent FIN: answer what it asked, then close.
    pub fn on_end_stream(&mut self, conn: &mut dyn Downstream) {
        if self.blocked_upstream() {
            // As Redis frees a blocked client that closes: nothing after
            // the blocking command can be owed, nothing before it is. The
            // blocked upstream connection is released by `on_destroy`, once
            // this connection no longer anchors the worker's wakes (a wake
            // asked for now could be committed on it and never run).
            self.closed = true;
            self.client.detach();
            conn.close(true);
            return;
        }
        self.end_stream = true;
        self.finish(conn);
    }

    pub fn on_write_watermark(&mut self, above: bool, conn: &mut dyn Downstream) {
        crate::log!(
            crate::envoy::Level::Debug,
            "redis_cluster: client {} write buffer {} high watermark",
            self.state.id,
            if above { "above" } else { "below" }
        );
        self.write_blocked = above;
        if !above && !self.inbuf.is_empty() && !self.closing {
            self.process_inbuf();
        }
        self.finish(conn);
    }

    /// The proxy's listener address as this client reached it (for the
    /// CLUSTER replies that name the proxy as the only node).
    pub fn set_local_address(&mut self, ip: String, port: u16) {
        self.state.local_addr = Some((ip, port));
    }

    pub fn on_close(&mut self) {
        self.closed = true;
        self.client.detach();
        self.release_blocked();
    }

    /// The client left while blocked: the loop closes that connection now
    /// (so the node pops nothing for it), not at its next timer tick.
    fn release_blocked(&mut self) {
        if self.blocked_upstream() {
            self.block = None;
            if let Some(u) = &self.upstream {
                u.wake();
            }
        }
    }

    pub fn on_destroy(&mut self) {
        self.closed = true;
        self.client.detach();
        self.release_blocked();
        let stats = &self.proxy.stats;
        stats.gauge_sub(stats.downstream_cx_active, 1);
        stats.gauge_sub(stats.downstream_cx_buffered_bytes, self.reported_buffered);
        self.reported_buffered = 0;
    }
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9E37_79B9_7F4A_7C15);
    h.finish() | 1
}

/// Each key's route; an error when one has none.
fn key_routes<'p>(
    proxy: &'p Proxy,
    args: &[&[u8]],
    keys: &[usize],
) -> Result<KeyRoutes<'p>, Vec<u8>> {
    let routes = if proxy.has_prefix_routes() {
        keys::key_routes(args, keys, |k| proxy.route(k))
    } else {
        // Every key follows the catch-all: no per-key lookup.
        proxy.route(b"").map(KeyRoutes::One)
    };
    routes.ok_or_else(no_route)
}

fn no_route() -> Vec<u8> {
    codec::error(
        "ERR no route for this key: no prefix route matches and there is no catch_all_route",
    )
}

/// Redis's wording for an unknown command.
fn unknown_command(args: &[&[u8]]) -> Vec<u8> {
    let name = String::from_utf8_lossy(args.first().copied().unwrap_or_default());
    let mut msg = format!("ERR unknown command '{name}', with args beginning with: ");
    for a in args.iter().skip(1).take(8) {
        msg.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    codec::error(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::stats::Stats;
    use std::time::Duration;

    struct NoNotify;

    impl Notify for NoNotify {
        fn notify(&self) {}
    }

    #[derive(Default)]
    pub(super) struct Client {
        pub(super) out: Vec<u8>,
        closed: bool,
    }

    impl Downstream for Client {
        fn write(&mut self, data: &[u8]) {
            assert!(!self.closed, "write after close");
            self.out.extend_from_slice(data);
        }
        fn close(&mut self, _flush: bool) {
            self.closed = true;
        }
        fn read_disable(&mut self, _disable: bool) {}
    }

    /// A session on a proxy that starts no upstream loop (validation mode).
    fn session(settings: &str) -> Session {
        let json = format!(
            r#"{{"settings":{{{settings}}},"clusters":{{"main":{{"seeds":["127.0.0.1:7000"]}}}},
               "prefix_routes":{{"catch_all_route":{{"cluster":"main"}}}}}}"#
        );
        let config = Config::from_json(json.as_bytes()).unwrap();
        let proxy = Proxy::inert(config, Arc::new(Stats::disabled(1)));
        Session::new(proxy, 0, Box::new(NoNotify))
    }

    /// Regression (fuzz/session): with more pipelined commands than
    /// max_pending_requests_per_connection, parsing paused at the limit;
    /// when the replies were made locally (PING, or any command in
    /// validation mode) the slots emptied at once, no upstream reply ever
    /// woke the session, and the rest of the pipeline waited forever.
    #[test]
    fn pipeline_longer_than_pending_limit_is_answered_in_full() {
        let mut s = session(r#""max_pending_requests_per_connection":3"#);
        let mut c = Client::default();
        s.on_data(&b"PING\r\n".repeat(10), &mut c);
        assert_eq!(c.out, b"+PONG\r\n".repeat(10));
        // Also across the EXEC barrier, and when reading resumes after the
        // write buffer drained.
        let mut c = Client::default();
        let mut s = session(r#""max_pending_requests_per_connection":2"#);
        s.on_write_watermark(true, &mut c);
        s.on_data(
            b"MULTI\r\nSET k v\r\nEXEC\r\nPING\r\nPING\r\nPING\r\n",
            &mut c,
        );
        assert!(c.out.is_empty());
        s.on_write_watermark(false, &mut c);
        let text = String::from_utf8(c.out).unwrap();
        // SET goes to the node at once (and so fails here, like EXEC).
        assert!(
            text.starts_with(
                "+OK\r\n-ERR proxy is not running (validation mode)\r\n-ERR proxy is not running"
            ) && text.ends_with("+PONG\r\n+PONG\r\n+PONG\r\n"),
            "{text:?}"
        );
        assert!(!c.closed);
    }

    /// Regression: a FIN arriving while parsing was paused (write buffer
    /// above its watermark, max_pending_requests_per_connection, EXEC's
    /// barrier) closed the connection once the replies in flight were out:
    /// the commands held back were never run nor answered, although
    /// half-close promises every reply (`cat cmds | nc -N`).
    #[test]
    fn fin_while_paused_still_answers_everything_sent() {
        let mut s = session(r#""max_pending_requests_per_connection":100"#);
        let mut c = Client::default();
        s.on_write_watermark(true, &mut c);
        s.on_data(b"PING\r\nECHO a\r\nPIN", &mut c);
        s.on_end_stream(&mut c);
        assert!(c.out.is_empty() && !c.closed);
        s.on_write_watermark(false, &mut c);
        assert_eq!(c.out, b"+PONG\r\n$1\r\na\r\n".to_vec());
        assert!(c.closed, "closed once answered; the partial PIN is dropped");
    }

    /// Regression (fuzz/session): a request over
    /// max_buffered_bytes_per_connection was refused when it arrived in
    /// pieces but accepted (and forwarded) when it arrived in one read.
    #[test]
    fn oversized_request_is_refused_whole_or_in_pieces() {
        let mut request = b"SET k ".to_vec();
        request.extend(vec![b'v'; 600]);
        request.extend_from_slice(b"\r\nPING\r\n");
        for piece in [request.len(), 100, 1] {
            let mut s = session(r#""max_buffered_bytes_per_connection":512"#);
            let mut c = Client::default();
            for chunk in request.chunks(piece) {
                s.on_data(chunk, &mut c);
            }
            let text = String::from_utf8(c.out).unwrap();
            assert_eq!(
                text,
                "-ERR Protocol error: request larger than max_buffered_bytes_per_connection (512 bytes)\r\n",
                "pieces of {piece}"
            );
            assert!(c.closed);
        }
    }

    /// Records what a session submits; the test answers by hand.
    #[derive(Default)]
    pub(super) struct Recorder {
        inbox: parking_lot::Mutex<Vec<Request>>,
    }

    impl Upstream for Recorder {
        fn submit(&self, batch: &mut Vec<Request>) {
            self.inbox.lock().append(batch);
        }
    }

    impl Recorder {
        pub(super) fn take(&self) -> Vec<Request> {
            std::mem::take(&mut *self.inbox.lock())
        }
    }

    pub(super) fn reply(r: &Request, bytes: &[u8]) {
        r.client.deliver(r.seq, r.part, bytes.to_vec());
    }

    fn words(data: &[u8]) -> Vec<String> {
        let mut ranges = Vec::new();
        assert_eq!(
            codec::scan_request(data, &mut ranges),
            Ok(Scan::Complete(data.len()))
        );
        ranges
            .iter()
            .map(|r| String::from_utf8_lossy(&data[r.clone()]).into_owned())
            .collect()
    }

    /// A session on an inert proxy whose requests go to a recorder, on a
    /// manual clock; `config` is the filter config.
    pub(super) fn recorded(
        config: &str,
    ) -> (
        Session,
        Arc<Proxy>,
        Arc<Recorder>,
        Arc<crate::clock::ManualClock>,
    ) {
        let config = Config::from_json(config.as_bytes()).unwrap();
        let n = config.clusters.len();
        let proxy = Proxy::inert(config, Arc::new(Stats::disabled(n)));
        let rec = Arc::new(Recorder::default());
        let clock = crate::clock::ManualClock::new();
        let s = Session::with_upstream(
            proxy.clone(),
            Box::new(NoNotify),
            Some(rec.clone() as Arc<dyn Upstream>),
            Clock::Manual(clock.clone()),
        );
        (s, proxy, rec, clock)
    }

    const ONE_CLUSTER: &str = r#"{"settings":{"op_timeout":"2s"},
        "clusters":{"main":{"seeds":["127.0.0.1:7000"]}},
        "prefix_routes":{"catch_all_route":{"cluster":"main"}}}"#;

    fn three_masters() -> crate::topology::SlotMap {
        let mut reply = b"*3\r\n".to_vec();
        for (a, b, port) in [(0, 5460, 7001), (5461, 10922, 7002), (10923, 16383, 7003)] {
            reply.extend(
                format!("*3\r\n:{a}\r\n:{b}\r\n*2\r\n$9\r\n127.0.0.1\r\n:{port}\r\n").as_bytes(),
            );
        }
        crate::topology::parse_cluster_slots(&reply, "127.0.0.1:7001").unwrap()
    }

    /// Regression: with a slot map that has no master (a cluster whose
    /// slots are not assigned yet publishes an empty CLUSTER SLOTS), DBSIZE
    /// registered a gather of zero parts that nothing ever completed, and
    /// every later reply on the connection waited behind it forever. Now
    /// it waits for masters until its deadline, then fails, in order.
    #[test]
    fn cluster_wide_command_without_masters_fails_at_its_deadline() {
        let (mut s, proxy, rec, clock) = recorded(ONE_CLUSTER);
        proxy.publish_topology(0, crate::topology::SlotMap::empty());
        let mut c = Client::default();
        let arrived = clock.now();
        s.on_data(b"DBSIZE\r\nPING\r\n", &mut c);
        assert!(c.out.is_empty(), "answered before the wait was over");
        let probe = rec.take();
        assert_eq!(probe.len(), 1, "one probe waits for masters in the loop");
        assert_eq!(probe[0].deadline, arrived + Duration::from_secs(2));
        // The loop's timeout answer to the probe.
        clock.advance(Duration::from_secs(2));
        reply(&probe[0], b"-ERR operation timed out\r\n");
        s.on_scheduled(&mut c);
        assert_eq!(
            String::from_utf8(c.out).unwrap(),
            "-CLUSTERDOWN Hash slot not served: cluster 'main' has no master serving slots\r\n+PONG\r\n"
        );
        assert!(rec.take().is_empty());
        assert_eq!(s.oldest_unanswered(), None);
    }

    /// Masters appear while DBSIZE waits: it is sent to each of them with
    /// the deadline it had from its arrival, and the counts are summed.
    #[test]
    fn cluster_wide_command_runs_once_masters_appear_within_its_deadline() {
        let (mut s, proxy, rec, clock) = recorded(ONE_CLUSTER);
        proxy.publish_topology(0, crate::topology::SlotMap::empty());
        let mut c = Client::default();
        let arrived = clock.now();
        s.on_data(b"DBSIZE\r\n", &mut c);
        let probe = rec.take();
        clock.advance(Duration::from_millis(1500));
        proxy.publish_topology(0, three_masters());
        reply(&probe[0], b"+PONG\r\n");
        s.on_scheduled(&mut c);
        let parts = rec.take();
        assert_eq!(parts.len(), 3);
        for p in &parts {
            assert_eq!(words(&p.data), vec!["DBSIZE"]);
            assert_eq!(p.deadline, arrived + Duration::from_secs(2));
            reply(p, b":2\r\n");
        }
        s.on_scheduled(&mut c);
        assert_eq!(c.out, b":6\r\n".to_vec());
    }

    pub(super) const ROUTES: &str = r#"{"clusters":{"a":{"seeds":["127.0.0.1:7000"]},"b":{"seeds":["127.0.0.1:7100"]},
          "m":{"seeds":["127.0.0.1:7200"]}},
        "prefix_routes":{"routes":[
          {"prefix":"r:","cluster":"b","remove_prefix":true},
          {"prefix":"b:","cluster":"b","request_mirror_policy":[{"cluster":"m"}]}],
          "catch_all_route":{"cluster":"a"}}}"#;

    /// Each key of a split command goes to its own route's cluster, its
    /// prefix stripped where that route says so, mirrored where that route
    /// mirrors; the replies come back in key order.
    #[test]
    fn split_commands_route_each_key_by_its_own_prefix() {
        let (mut s, proxy, rec, _) = recorded(ROUTES);
        let (a, b, m) = (
            proxy.cluster_index("a").unwrap(),
            proxy.cluster_index("b").unwrap(),
            proxy.cluster_index("m").unwrap(),
        );
        let mut c = Client::default();
        s.on_data(
            &codec::command(&[b"MGET", b"r:{x}t0", b"b:{x}m0", b"{x}c0", b"r:{x}t1"]),
            &mut c,
        );
        let reqs = rec.take();
        let seen: Vec<(usize, bool, Vec<String>)> = reqs
            .iter()
            .map(|r| (r.cluster, r.is_mirror(), words(&r.data)))
            .collect();
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            seen,
            vec![
                (b, false, w(&["MGET", "{x}t0", "{x}t1"])),
                (m, true, w(&["MGET", "b:{x}m0"])),
                (b, false, w(&["MGET", "b:{x}m0"])),
                (a, false, w(&["MGET", "{x}c0"])),
            ]
        );
        reply(&reqs[3], b"*1\r\n$2\r\nc0\r\n");
        reply(&reqs[0], b"*2\r\n$2\r\nt0\r\n$2\r\nt1\r\n");
        reply(&reqs[2], b"*1\r\n$2\r\nm0\r\n");
        s.on_scheduled(&mut c);
        assert_eq!(
            c.out,
            b"*4\r\n$2\r\nt0\r\n$2\r\nm0\r\n$2\r\nc0\r\n$2\r\nt1\r\n".to_vec()
        );
    }

    /// A command that cannot be split is refused when its keys are in two
    /// clusters (also inside MULTI), and sent whole with each key stripped
    /// by its own route when they share one.
    #[test]
    fn unsplittable_commands_stay_in_one_cluster() {
        let (mut s, proxy, rec, _) = recorded(ROUTES);
        let mut c = Client::default();
        s.on_data(
            b"MSETNX r:{x}a 1 {x}b 2\r\nRENAME {x}a b:{x}b\r\nEVAL s 2 r:{x}a {x}b\r\n",
            &mut c,
        );
        let text = String::from_utf8(std::mem::take(&mut c.out)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (line, (cmd, x, y)) in lines.iter().zip([
            ("msetnx", "b", "a"),
            ("rename", "a", "b"),
            ("eval", "b", "a"),
        ]) {
            assert!(
                line.starts_with("-CROSSSLOT")
                    && line.contains(&format!("'{cmd}' has keys in clusters '{x}' and '{y}'")),
                "{line}"
            );
        }
        assert!(rec.take().is_empty(), "nothing sent for refused commands");
        s.on_data(b"RENAME r:{x}a b:{x}b\r\n", &mut c);
        let reqs = rec.take();
        let b = proxy.cluster_index("b").unwrap();
        let sent: Vec<(usize, bool, Vec<String>)> = reqs
            .iter()
            .map(|r| (r.cluster, r.is_mirror(), words(&r.data)))
            .collect();
        assert!(sent.contains(&(
            b,
            false,
            vec!["RENAME".into(), "{x}a".into(), "b:{x}b".into()]
        )));
        assert!(sent.iter().any(|(_, mirror, _)| *mirror), "b: mirrors");
        for r in reqs.iter().filter(|r| !r.is_mirror()) {
            reply(r, b"+OK\r\n");
        }
        s.on_scheduled(&mut c);
        assert_eq!(std::mem::take(&mut c.out), b"+OK\r\n".to_vec());
        // In a transaction: a command whose keys are in another cluster
        // than the transaction's.
        s.on_data(b"MULTI\r\nSET {x}a 1\r\nSET r:{x}a 2\r\n", &mut c);
        // SET {x}a went to the node (MULTI in front): its +QUEUED is the client's.
        let queued = rec.take();
        assert_eq!(queued.len(), 1);
        let mut sent = codec::command(&[b"MULTI"]);
        sent.extend(codec::command(&[b"SET", b"{x}a", b"1"]));
        assert_eq!(queued[0].data, sent);
        reply(&queued[0], b"+QUEUED\r\n");
        s.on_scheduled(&mut c);
        let text = String::from_utf8(std::mem::take(&mut c.out)).unwrap();
        assert!(
            text.ends_with("+OK\r\n+QUEUED\r\n-CROSSSLOT Keys in request map to different clusters: 'set' has keys in clusters 'a' and 'b' (prefix routes) and cannot be split\r\n"),
            "{text}"
        );
    }
}
