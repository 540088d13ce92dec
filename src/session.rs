//! One client connection, as the Envoy worker sees it.
//!
//! A session turns the client's byte stream into commands ([`codec`]),
//! answers the ones a proxy must answer itself (PING, ECHO, SELECT 0, QUIT,
//! errors for what cannot work through a cluster), and hands the rest to its
//! worker's upstream loop in one batch per read. Every command gets a
//! sequence number and a reply slot in a FIFO (`replies`); replies (from
//! the loop, in any order across nodes) fill their slots, and the contiguous
//! ready prefix is written to the client in one `write` — so a client always
//! gets its replies in the order it sent the commands.
//!
//! The session is the shell: it parses, applies backpressure and writes.
//! What to do with a command is decided by `plan` (a pure function) and
//! carried out by `dispatch`; `route` sends what leaves the proxy,
//! `transaction` and `blocking` own their connection modes.
//!
//! Memory is bounded: past `max_pending_requests_per_connection` outstanding
//! commands, or while Envoy's write buffer is above its high watermark, the
//! session stops parsing and asks Envoy to stop reading (backpressure).

use crate::clock::Clock;
use crate::codec::{self, Scan};
use crate::command;
use crate::key_routing as keys;
use crate::local::ConnState;
use crate::proxy::Proxy;
use crate::splitter::Gather;
use crate::upstream::{ClientShared, Delivery, Part, Request, WHOLE};

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use crate::upstream::Notify;

mod admin;
mod blocking;
mod clients;
mod dispatch;
mod identity;
mod monitor;
mod ordering;
mod pause;
mod plan;
mod ports;
mod publish;
mod replies;
mod route;
mod subscription;
mod transaction;

use ordering::{Lane, Waiting};
pub use ports::{Downstream, Upstream};
use replies::Replies;
use route::key_routes;
use transaction::Txn;

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
    /// Reply slots, in the order the client sent the commands.
    replies: Replies,
    /// Command being handled (index in the command table) and when it
    /// arrived: every reply slot is stamped with them for statistics.
    current: (Option<usize>, Instant),
    /// Buffered bytes last reported to the gauge.
    reported_buffered: u64,
    out: Vec<u8>,
    batch: Vec<Request>,
    delivered: Vec<Delivery>,
    /// Split commands waiting for their parts, by sequence number.
    gathers: HashMap<u64, Gather>,
    state: ConnState,
    txn: Option<Txn>,
    /// Parsing waits for this command's reply (EXEC, blocking commands).
    barrier: Option<u64>,
    /// Commands held behind a command waiting for masters are due no later
    /// than it: each would otherwise wait `op_timeout` of its own, one
    /// after the other, when no master ever comes.
    held_until: Option<Instant>,
    /// A blocking command waiting for earlier replies or blocked.
    block: Option<blocking::Held>,
    /// Parsing stopped at a command that must wait for the other kind of
    /// connection ([`ordering`]).
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
    /// This hook fanned Pub/Sub messages out (see `pubsub::pace`).
    pubsub_fanned: bool,
    /// The connection's output watermark was lowered for Pub/Sub.
    pubsub_watermark: bool,
    rng: u64,
    /// The script body this client last sent, remembered in the cache's
    /// generation `last_script_gen` (a flush since means remember again;
    /// `None`: nothing sent yet).
    last_script: Vec<u8>,
    last_script_gen: Option<u64>,
    /// This client in the proxy's registry (`CLIENT LIST`, `CLIENT KILL`).
    entry: Arc<crate::clients::ClientEntry>,
    /// `CLIENT PAUSE` holds the next command: parsing waits.
    pause_held: bool,
    /// The open transaction queued a command `CLIENT PAUSE WRITE` holds.
    multi_writes: bool,
    /// A `CLIENT PAUSE` queued in the open transaction: starts at `EXEC`.
    queued_pause: Option<(crate::clients::PauseMode, std::time::Duration)>,
    /// The masters' share of that pause, once `EXEC` has run ([`pause`]).
    pause_after_exec: Option<std::time::Duration>,
    /// In `MONITOR` mode: the lines waiting for this client.
    monitor: Option<Arc<crate::clients::MonitorFeed>>,
    /// The nodes' own `MONITOR` streams (for the commands scripts run
    /// inside them), and which node has confirmed yet.
    node_monitors: Option<(Arc<ClientShared>, Vec<bool>)>,
    /// The Redis user the client authenticated as through the cluster
    /// (`None`: the cluster's configured user; see [`identity`]).
    user: Option<Arc<crate::upstream::Credentials>>,
    /// Its `AUTH` waiting for the cluster's answer.
    pending_auth: Option<identity::PendingAuth>,
    /// The worker's shared upstream subscriptions.
    hub: Arc<crate::pubsub::hub::Hub>,
    /// This client's subscriptions, once it subscribed.
    pubsub: Option<Box<subscription::Subscribed>>,
    /// `PUBLISH`es on their way, by reply slot: the proxy's receivers and
    /// the node's receivers that are the proxy's own subscriptions.
    published: HashMap<u64, (usize, usize)>,
    /// `EXEC`s on their way with `PUBLISH`es inside, by reply slot: each
    /// one's index in the reply and counts as in `published`.
    exec_published: HashMap<u64, publish::ExecPublishes>,
}

impl Session {
    /// A session of worker `worker`, whose requests go to that worker's
    /// upstream loop.
    pub fn new(proxy: Arc<Proxy>, worker: usize, notifier: Box<dyn Notify>) -> Session {
        let upstream = proxy.upstream_for(worker);
        let hub = proxy.hub_for(worker);
        let mut s = Session::with_upstream(proxy, notifier, upstream, Clock::System);
        s.hub = hub;
        s
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
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let client = ClientShared::new(notifier);
        let entry = crate::clients::ClientEntry::new(id, client.clone(), now);
        proxy.clients.register(entry.clone());
        Session {
            proxy: proxy.clone(),
            upstream,
            clock,
            client,
            inbuf: Vec::new(),
            need: 0,
            replies: Replies::default(),
            current: (None, now),
            reported_buffered: 0,
            out: Vec::new(),
            batch: Vec::new(),
            delivered: Vec::new(),
            gathers: HashMap::new(),
            txn: None,
            barrier: None,
            held_until: None,
            block: None,
            lane: Lane::Free,
            gated: false,
            deferred: HashMap::new(),
            reuse_seq: None,
            state: ConnState {
                id,
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
            pubsub_fanned: false,
            pubsub_watermark: false,
            rng: seed(),
            last_script: Vec::new(),
            last_script_gen: None,
            entry,
            pause_held: false,
            multi_writes: false,
            queued_pause: None,
            pause_after_exec: None,
            monitor: None,
            node_monitors: None,
            user: None,
            pending_auth: None,
            hub: proxy.hub_for(0),
            pubsub: None,
            published: HashMap::new(),
            exec_published: HashMap::new(),
        }
    }

    /// When the oldest command whose reply the client has not been sent yet
    /// arrived (its deadline is `op_timeout` later); `None` when every
    /// command so far is answered.
    pub fn oldest_unanswered(&self) -> Option<Instant> {
        self.replies.oldest_start()
    }

    fn paused(&self) -> bool {
        self.pause_held
            || self.barrier.is_some()
            || self.gated
            || self.write_blocked
            || self.replies.len()
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
        if self.close_if_killed(conn) || self.closing || self.closed {
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
                    if *self.replies.waiting() != Waiting::default() {
                        let name = args.first().map(|r| {
                            let raw = &frame[r.clone()];
                            if frame.first() == Some(&b'*') {
                                std::borrow::Cow::Borrowed(raw)
                            } else {
                                std::borrow::Cow::Owned(codec::inline_word(raw))
                            }
                        });
                        if self
                            .replies
                            .waiting()
                            .must_wait(self.lane_of(name.as_deref()))
                        {
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
                        self.handled(&words, now);
                    } else {
                        // Inline (telnet-style): quotes and escapes decoded.
                        let owned: Vec<Vec<u8>> = args
                            .iter()
                            .map(|r| codec::inline_word(&frame[r.clone()]))
                            .collect();
                        let words: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
                        self.handle(frame, &words, now);
                        self.handled(&words, now);
                    }
                    if self.pause_held {
                        // Parsed again when the pause ends.
                        self.args = args;
                        break;
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
        if self.barrier.is_none() {
            // What was held behind a wait for masters is parsed now.
            self.held_until = None;
        }
        pos
    }

    /// A request's deadline: `op_timeout` after `now`, but no later than
    /// the wait for masters that held its command back (`held_until`).
    fn deadline_from(&self, now: Instant) -> Instant {
        let d = now + self.proxy.config.settings.op_timeout;
        self.held_until.map_or(d, |h| d.min(h.max(now)))
    }

    /// After `handle`: unless a pause holds the command, show it in
    /// `CLIENT LIST` and to the monitors.
    fn handled(&mut self, words: &[&[u8]], now: Instant) {
        if !self.pause_held {
            self.sync_view(words, now);
            self.feed_monitors(words);
        }
    }

    /// The lane of the command named `name` (see [`ordering`]). Cheap when
    /// no transaction is open: only its first command can change lanes.
    fn lane_of(&self, name: Option<&[u8]>) -> Lane {
        if self.txn.is_none() && self.replies.waiting().txn == 0 {
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
        let (cmd, start) = self.current;
        self.replies.push(self.silent, cmd, start, self.lane)
    }

    fn fill(&mut self, seq: u64, reply: Vec<u8>) {
        self.replies.fill(seq, reply);
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
        // One search of the table gives the command and its index.
        let indexed = command::lookup_indexed(name);
        let found = indexed.map(|(_, c)| c);
        let ctx = plan::Ctx {
            authenticated: self.state.authenticated,
            in_multi: self.in_multi(),
        };
        let mut keys = std::mem::take(&mut self.keys);
        let plan = plan::plan(found, args, ctx, &mut keys);
        self.execute(indexed, plan, frame, args, &keys, now);
        self.keys = keys;
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
        self.drain_monitor(conn);
        self.drain_pubsub(conn);
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
            if want_disabled {
                // Reading paused cancels a resumption asked through it.
                self.hub.hand_off(self.state.id);
            }
        }
        // `CLIENT UNBLOCK` from other clients asks the registry.
        self.entry.set_blocked(self.blocked_upstream());
        self.settle_pubsub_pace(conn);
    }

    /// EXEC's reply is in: commands after it may go.
    fn release_barrier(&mut self) {
        if let Some(b) = self.barrier {
            let done = self.replies.answered(b);
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
        while let Some(slot) = self.replies.pop_ready() {
            let reply = slot.reply;
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
            n += 1;
        }
        stats.add(stats.downstream_rq_total, n);
        if !self.out.is_empty() && !self.closed {
            stats.add(stats.downstream_cx_tx_bytes_total, self.out.len() as u64);
            conn.write(&self.out);
        }
        self.out.clear();
        if self.closing && self.replies.is_empty() && !self.closed {
            self.closed = true;
            self.client.detach();
            conn.close(true);
        }
    }

    /// A reply for part `part` of command `seq`.
    fn apply(&mut self, seq: u64, part: Part, reply: Vec<u8>) {
        match part {
            Part::Probe => self.resume_deferred(seq, reply),
            Part::Whole => {
                let reply = self.auth_answered(seq, reply);
                let reply = self.receivers(seq, reply);
                self.fill(seq, reply)
            }
            Part::Split(i) => {
                if let Some(g) = self.gathers.get_mut(&seq) {
                    if let Some(merged) = g.add(i, reply) {
                        self.gathers.remove(&seq);
                        self.fill(seq, merged);
                    }
                }
            }
            Part::Queued => self.fill(seq, transaction::node_reply(part, reply)),
            Part::Exec => {
                let reply = self.exec_receivers(seq, transaction::node_reply(part, reply));
                self.fill(seq, reply);
                self.exec_answered(self.clock.now());
            }
            Part::Discard => {}
        }
    }

    /// Replies arrived from the upstream loop.
    pub fn on_scheduled(&mut self, conn: &mut dyn Downstream) {
        if self.close_if_killed(conn) {
            return;
        }
        self.pause_recheck();
        self.take_node_monitors();
        self.apply_unblock();
        let mut delivered = std::mem::take(&mut self.delivered);
        self.client.take(&mut delivered);
        for d in delivered.drain(..) {
            self.apply(d.seq, d.part, d.reply);
        }
        self.delivered = delivered;
        self.pubsub_scheduled();
        self.release_barrier();
        self.flush(conn);
        // Room again: parse input held back while paused.
        if !self.paused() && !self.inbuf.is_empty() && !self.closing {
            self.process_inbuf();
        }
        self.finish(conn);
    }

    /// A blocking command is held or on its node: it is bounded by its own
    /// timeout (which the node enforces), not by `op_timeout`.
    pub fn blocked(&self) -> bool {
        self.block.is_some()
    }

    /// The client sent FIN: answer what it asked, then close.
    pub fn on_end_stream(&mut self, conn: &mut dyn Downstream) {
        self.end_stream = true;
        if self.blocked_upstream() {
            // As Redis frees a blocked client that closes, rather than
            // block it for nobody: the node unblocks it (`CLIENT UNBLOCK`,
            // race-free: an element it already popped still comes, the
            // timeout's nil otherwise), then the session closes as after
            // any FIN. Nothing after the blocking command can be owed.
            self.client
                .cancel_blocking(crate::clients::UnblockMode::Timeout);
            if let Some(u) = &self.upstream {
                u.wake();
            }
        }
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
        let laddr = clients::format_addr(&ip, port);
        self.entry.update(|v| v.laddr = laddr);
        self.state.local_addr = Some((ip, port));
    }

    /// How other threads run this session (pause, `CLIENT KILL`, monitor
    /// lines) when its mailbox's notifier works only on its own worker.
    pub fn set_waker(&mut self, notifier: Box<dyn Notify>) {
        self.entry
            .set_waker(crate::clients::Waker::Own(Arc::from(notifier)));
    }

    /// The client's address (`CLIENT LIST` `addr`, `CLIENT KILL ADDR`).
    pub fn set_peer_address(&mut self, ip: &str, port: u16) {
        let addr = clients::format_addr(ip, port);
        self.entry.update(|v| v.addr = addr);
    }

    pub fn on_close(&mut self) {
        self.closed = true;
        self.client.detach();
        self.stop_monitor();
        self.end_pubsub();
        self.proxy.clients.unregister(self.state.id);
        self.entry.detach();
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
        self.stop_monitor();
        self.end_pubsub();
        self.proxy.clients.unregister(self.state.id);
        self.entry.detach();
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

    /// CLIENT PAUSE WRITE: a read goes at once, a write waits unparsed with
    /// the client's later commands behind it (counted as blocked), then
    /// runs when the pause ends; killed, the session closes when woken.
    #[test]
    fn pause_holds_a_write_and_what_follows_until_unpause() {
        let (mut s, proxy, rec, clock) = recorded(ONE_CLUSTER);
        proxy.publish_topology(0, three_masters());
        let clients = proxy.clients.clone();
        clients.pause(
            crate::clients::PauseMode::Write,
            clock.now() + Duration::from_secs(60),
        );
        let mut c = Client::default();
        s.on_data(b"GET k\r\nSET k v\r\nPING\r\n", &mut c);
        let get = rec.take();
        let sent: Vec<Vec<String>> = get.iter().map(|r| words(&r.data)).collect();
        assert_eq!(sent, vec![vec!["GET".to_string(), "k".to_string()]]);
        reply(&get[0], b"$1\r\nv\r\n");
        assert_eq!(clients.blocked(), 1);
        // Woken while the pause lasts: held again.
        s.on_scheduled(&mut c);
        assert!(rec.take().is_empty());
        assert_eq!(clients.blocked(), 1);
        clients.unpause();
        assert_eq!(clients.blocked(), 0);
        s.on_scheduled(&mut c);
        let set = rec.take();
        assert_eq!(set.len(), 1);
        assert_eq!(words(&set[0].data)[0], "SET");
        reply(&set[0], b"+OK\r\n");
        s.on_scheduled(&mut c);
        assert_eq!(c.out, b"$1\r\nv\r\n+OK\r\n+PONG\r\n".to_vec());
        // CLIENT KILL from another client: the session closes when woken.
        let (n, _) = clients.kill(0, &crate::clients::KillFilter::default());
        assert_eq!(n, 1);
        s.on_scheduled(&mut c);
        assert!(c.closed);
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

    /// A command pipelined after a cluster-wide one that waits for masters
    /// waits too: sent at once, it would run first (found with `FUNCTION
    /// LOAD`, `FCALL` sent before the first topology: the `FCALL` ran
    /// before the library existed).
    #[test]
    fn commands_after_a_deferred_cluster_wide_command_keep_their_order() {
        let (mut s, proxy, rec, _) = recorded(ONE_CLUSTER);
        proxy.publish_topology(0, crate::topology::SlotMap::empty());
        let mut c = Client::default();
        s.on_data(b"DBSIZE\r\nGET k\r\n", &mut c);
        let probe = rec.take();
        assert_eq!(probe.len(), 1, "only the probe goes before masters exist");
        proxy.publish_topology(0, three_masters());
        reply(&probe[0], b"+PONG\r\n");
        s.on_scheduled(&mut c);
        let parts = rec.take();
        assert_eq!(parts.len(), 3, "DBSIZE to every master, GET still held");
        for p in &parts {
            assert_eq!(words(&p.data), vec!["DBSIZE"]);
            reply(p, b":2\r\n");
        }
        s.on_scheduled(&mut c);
        let get = rec.take();
        assert_eq!(get.len(), 1);
        assert_eq!(words(&get[0].data), vec!["GET", "k"]);
        reply(&get[0], b"$1\r\nv\r\n");
        s.on_scheduled(&mut c);
        assert_eq!(c.out, b":6\r\n$1\r\nv\r\n".to_vec());
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
