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

use crate::codec::{self, Scan};
use crate::command::Fanout;
use crate::command::{self, Dispatch};
use crate::config::{MirrorPolicy, ReadPolicy};
use crate::local::{self, ConnState};
use crate::proxy::Proxy;
use crate::slot;
use crate::splitter::{self, Gather, Merge};
use crate::upstream::{ClientShared, Delivery, Request, Target, WHOLE};

/// Part number marking the probe of a command deferred until the first
/// topology (never a real part: splits have far fewer parts).
const DEFERRED: u32 = u32::MAX - 1;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use crate::upstream::Notify;

mod admin;

/// What a session needs from the downstream connection.
pub trait Downstream {
    fn write(&mut self, data: &[u8]);
    /// Close, flushing pending writes first when `flush`.
    fn close(&mut self, flush: bool);
    fn read_disable(&mut self, disable: bool);
    /// Record a histogram value (Envoy requires its worker thread).
    fn record_histogram(&mut self, _id: usize, _value: u64) {}
}

/// Where a keyed command goes: (cluster, slot, bytes to send).
type Located = (usize, u16, Vec<u8>);

/// A reply slot: filled when the reply is known, written in order.
struct Slot {
    reply: Option<Vec<u8>>,
    /// Command table index (usize::MAX: not a known command).
    cmd: usize,
    start: Instant,
}

/// A transaction in progress (WATCH and/or MULTI).
struct Txn {
    /// Id of the dedicated upstream connection.
    pin: u64,
    cluster: Option<usize>,
    slot: Option<u16>,
    multi: bool,
    watched: bool,
    /// An error while queueing: EXEC answers EXECABORT.
    aborted: bool,
    queued: Vec<u8>,
    count: u32,
}

impl Txn {
    fn new() -> Txn {
        Txn {
            pin: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cluster: None,
            slot: None,
            multi: false,
            watched: false,
            aborted: false,
            queued: Vec::new(),
            count: 0,
        }
    }

    /// Routing facts only (for sending WATCH without moving the queue).
    fn clone_header(&self) -> Txn {
        Txn {
            pin: self.pin,
            cluster: self.cluster,
            slot: self.slot,
            multi: self.multi,
            watched: self.watched,
            aborted: self.aborted,
            queued: Vec::new(),
            count: self.count,
        }
    }
}

/// Connection ids for CLIENT ID, unique per process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct Session {
    proxy: Arc<Proxy>,
    worker: usize,
    client: Arc<ClientShared>,
    /// Unparsed bytes (a partial request, or input held back while paused).
    inbuf: Vec<u8>,
    /// Don't rescan `inbuf` until it holds this many bytes.
    need: usize,
    /// Reply slots for commands `head_seq ..`, in order.
    slots: VecDeque<Slot>,
    /// Command being handled (index in the command table) and when it
    /// arrived: every reply slot is stamped with them for statistics.
    current: (usize, Instant),
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
    /// Parsing waits for this command's reply (EXEC ordering).
    barrier: Option<u64>,
    /// Commands waiting for the first topology, by their reply slot.
    deferred: HashMap<u64, Vec<u8>>,
    /// Set while re-handling a deferred command: its existing reply slot.
    reuse_seq: Option<u64>,
    args: Vec<Range<usize>>,
    keys: Vec<usize>,
    /// Close once every pending reply is written (QUIT, protocol error, FIN).
    closing: bool,
    /// The client sent FIN: close once everything it sent is answered.
    end_stream: bool,
    closed: bool,
    write_blocked: bool,
    read_disabled: bool,
    rng: u64,
}

impl Session {
    pub fn new(proxy: Arc<Proxy>, worker: usize, notifier: Box<dyn Notify>) -> Session {
        let open = proxy.config.downstream_auth_passwords.is_empty();
        let stats = &proxy.stats;
        stats.inc(stats.downstream_cx_total);
        stats.gauge_add(stats.downstream_cx_active, 1);
        Session {
            proxy,
            worker,
            client: ClientShared::new(notifier),
            inbuf: Vec::new(),
            need: 0,
            slots: VecDeque::new(),
            current: (usize::MAX, Instant::now()),
            reported_buffered: 0,
            head_seq: 0,
            out: Vec::new(),
            batch: Vec::new(),
            delivered: Vec::new(),
            gathers: HashMap::new(),
            txn: None,
            barrier: None,
            deferred: HashMap::new(),
            reuse_seq: None,
            state: ConnState {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                authenticated: open,
                ..ConnState::default()
            },
            args: Vec::new(),
            keys: Vec::new(),
            closing: false,
            end_stream: false,
            closed: false,
            write_blocked: false,
            read_disabled: false,
            rng: seed(),
        }
    }

    fn next_seq(&self) -> u64 {
        self.head_seq + self.slots.len() as u64
    }

    fn paused(&self) -> bool {
        self.barrier.is_some()
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
        let now = Instant::now();
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
                    let words: Vec<&[u8]> = args.iter().map(|r| &frame[r.clone()]).collect();
                    self.handle(frame, &words, now);
                    pos += n;
                    self.need = 0;
                }
                Ok(Scan::Empty(n)) => pos += n,
                Ok(Scan::Incomplete { need }) => {
                    if need > limit {
                        self.proxy
                            .stats
                            .inc(self.proxy.stats.downstream_cx_protocol_error);
                        self.current = (usize::MAX, now);
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
                    self.current = (usize::MAX, now);
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

    fn push_slot(&mut self) -> u64 {
        if let Some(seq) = self.reuse_seq.take() {
            return seq;
        }
        let seq = self.next_seq();
        let (cmd, start) = self.current;
        self.slots.push_back(Slot {
            reply: None,
            cmd,
            start,
        });
        seq
    }

    fn fill(&mut self, seq: u64, reply: Vec<u8>) {
        let Some(i) = seq.checked_sub(self.head_seq) else {
            return;
        };
        if let Some(slot) = self.slots.get_mut(i as usize) {
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
        let found = command::lookup(name);
        self.current = (found.map_or(usize::MAX, command::index_of), now);
        let Some(cmd) = found else {
            self.abort_multi();
            return self.reply_now(unknown_command(args));
        };
        if !command::arity_ok(cmd, args.len()) {
            self.abort_multi();
            let msg = format!("ERR wrong number of arguments for '{}' command", cmd.name);
            return self.reply_now(codec::error(&msg));
        }
        if !self.state.authenticated && !matches!(cmd.name, "auth" | "hello" | "quit") {
            return self.reply_now(codec::error("NOAUTH Authentication required."));
        }
        if matches!(cmd.name, "multi" | "exec" | "discard" | "watch" | "unwatch") {
            let reply = self.transaction(cmd, args, now);
            if let Err(e) = reply {
                self.reply_now(e);
            }
            return;
        }
        if self.txn.as_ref().is_some_and(|t| t.multi) {
            if let Err(e) = self.queue_in_multi(cmd, frame, args) {
                self.abort_multi();
                self.reply_now(e);
            }
            return;
        }
        if let Some(reply) = self.local_reply(cmd, args) {
            // QUIT: answer, then close once earlier replies are out.
            self.closing |= cmd.name == "quit";
            return self.reply_now(reply);
        }
        if command::is_blocking(cmd, args) || cmd.has(command::PUBSUB) {
            let msg = format!(
                "ERR '{}' is not supported through this proxy yet (blocking and pub/sub commands)",
                cmd.name
            );
            return self.reply_now(codec::error(&msg));
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
            "reset" => {
                self.state.resp3 = false;
                self.state.name = None;
                codec::simple("RESET")
            }
            _ => return None,
        })
    }

    fn keyless(
        &mut self,
        cmd: &command::Command,
        frame: &[u8],
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let cluster = self.proxy.default_cluster().ok_or_else(no_route)?;
        let data = encode(frame, args);
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
        if needs_masters && self.proxy.topology(cluster).is_none() {
            // Like keyed commands, wait (within op_timeout) for the first
            // topology: a PING parked in the loop until then tells us.
            let seq = self.push_slot();
            self.deferred.insert(seq, data);
            let ping = codec::command(&[b"PING"]);
            self.send(
                seq,
                DEFERRED,
                cluster,
                &[],
                Target::AnyMaster,
                ReadPolicy::Master,
                ping,
                now,
            );
            return Ok(());
        }
        match cmd.name {
            // Same answer from any node.
            "command" | "time" | "publish" | "lolwut" | "lastsave" | "eval" | "evalsha"
            | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" | "xgroup" | "xinfo" | "object"
            | "pfselftest" => {
                let seq = self.push_slot();
                let target = Target::AnyMaster;
                self.send(
                    seq,
                    WHOLE,
                    cluster,
                    &[],
                    target,
                    ReadPolicy::Master,
                    data,
                    now,
                );
                Ok(())
            }
            "dbsize" => self.broadcast(cluster, data, |_| Merge::Sum, now),
            "keys" => self.broadcast(cluster, data, |_| Merge::Concat, now),
            "flushall" | "flushdb" => self.broadcast(cluster, data, |_| Merge::AllOk, now),
            "script" | "function" => self.broadcast(cluster, data, |_| Merge::Same, now),
            "wait" => self.broadcast(cluster, data, |_| Merge::Min, now),
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

    /// The first topology arrived (or the wait failed): handle the deferred
    /// command now, into the reply slot it already has.
    fn resume_deferred(&mut self, seq: u64, probe_reply: Vec<u8>) {
        let Some(data) = self.deferred.remove(&seq) else {
            return;
        };
        if codec::error_text(&probe_reply).is_some() {
            return self.fill(seq, probe_reply);
        }
        let mut ranges = Vec::new();
        if !matches!(
            codec::scan_request(&data, &mut ranges),
            Ok(Scan::Complete(_))
        ) {
            return self.fill(seq, codec::error("ERR internal: deferred command lost"));
        }
        let args: Vec<&[u8]> = ranges.iter().map(|r| &data[r.clone()]).collect();
        let Some(cmd) = args.first().and_then(|n| command::lookup(n)) else {
            return;
        };
        self.reuse_seq = Some(seq);
        let result = match self
            .proxy
            .topology(self.proxy.default_cluster().unwrap_or(0))
        {
            Some(_) => self.keyless(cmd, &data, &args, Instant::now()),
            None => Err(codec::error(
                "CLUSTERDOWN the proxy has no cluster topology",
            )),
        };
        if let Err(reply) = result {
            let seq = self.push_slot();
            self.fill(seq, reply);
        }
        self.reuse_seq = None;
    }

    /// Masters of a cluster, ordered by the first slot they own (stable
    /// across failovers, which matters for SCAN cursors).
    fn masters(&self, cluster: usize) -> Result<Vec<String>, Vec<u8>> {
        let map = self.proxy.topology(cluster).ok_or_else(|| {
            codec::error("CLUSTERDOWN the proxy has not fetched the cluster topology yet")
        })?;
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
        let seq = self.push_slot();
        self.gathers
            .insert(seq, Gather::new(merge(&masters), masters.len()));
        for (i, addr) in masters.into_iter().enumerate() {
            let target = Target::Node {
                addr,
                slot: 0,
                asking: false,
            };
            let d = data.clone();
            self.send(
                seq,
                i as u32,
                cluster,
                &[],
                target,
                ReadPolicy::Master,
                d,
                now,
            );
        }
        Ok(())
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
        self.send(seq, 0, cluster, &[], target, ReadPolicy::Master, data, now);
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
        let first_key = args.get(keys[0]).copied().unwrap_or_default();
        let proxy = self.proxy.clone();
        let route = proxy.route(first_key).ok_or_else(no_route)?;
        let hashtags = proxy.config.settings.enable_hashtagging;
        let slots = key_slots(args, keys, route.strip, hashtags);
        let read = command::effective_flags(cmd, args) & command::READONLY != 0;
        let same_slot = slots.windows(2).all(|w| w[0] == w[1]);
        if !same_slot {
            let Dispatch::Fanout(kind) = &cmd.dispatch else {
                return Err(codec::error(
                    "CROSSSLOT Keys in request don't hash to the same slot",
                ));
            };
            return self.fanout(kind, args, keys, &slots, &route, read, now);
        }
        let slot = slots.first().copied().unwrap_or(0);
        let data = encode_keyed(frame, args, keys, route.strip);
        let seq = self.push_slot();
        let target = Target::Slot { slot, read };
        self.send(
            seq,
            WHOLE,
            route.cluster,
            route.mirrors,
            target,
            route.read_policy,
            data,
            now,
        );
        Ok(())
    }

    /// Split a cross-slot multi-key command into one command per slot.
    #[allow(clippy::too_many_arguments)]
    fn fanout(
        &mut self,
        kind: &Fanout,
        args: &[&[u8]],
        keys: &[usize],
        slots: &[u16],
        route: &crate::proxy::Route<'_>,
        read: bool,
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        // Arguments that travel with each key: MSET's value.
        let width = if matches!(kind, Fanout::Mset) { 2 } else { 1 };
        let mut groups: Vec<(u16, Vec<&[u8]>)> = Vec::new();
        let mut order = Vec::with_capacity(keys.len());
        for (n, &k) in keys.iter().enumerate() {
            let slot = slots[n];
            let g = match groups.iter().position(|(s, _)| *s == slot) {
                Some(g) => g,
                None => {
                    groups.push((slot, vec![args[0]]));
                    groups.len() - 1
                }
            };
            let words = &mut groups[g].1;
            order.push((g as u32, ((words.len() - 1) / width) as u32));
            for a in args.get(k..k + width).unwrap_or_default() {
                words.push(a);
            }
        }
        let merge = match kind {
            Fanout::Mget => Merge::Mget { order },
            Fanout::Mset => Merge::AllOk,
            Fanout::SumIntegers => Merge::Sum,
        };
        let seq = self.push_slot();
        self.gathers.insert(seq, Gather::new(merge, groups.len()));
        for (i, (slot, words)) in groups.into_iter().enumerate() {
            let keys: Vec<usize> = (1..words.len()).step_by(width).collect();
            let data = encode_keyed(&[], &words, &keys, route.strip);
            let target = Target::Slot { slot, read };
            self.send(
                seq,
                i as u32,
                route.cluster,
                route.mirrors,
                target,
                route.read_policy,
                data,
                now,
            );
        }
        Ok(())
    }

    fn abort_multi(&mut self) {
        if let Some(t) = self.txn.as_mut() {
            if t.multi {
                t.aborted = true;
            }
        }
    }

    /// The slot and cluster of a command's keys, with the bytes to send.
    fn locate(
        &self,
        cmd: &command::Command,
        frame: &[u8],
        args: &[&[u8]],
    ) -> Result<Option<Located>, Vec<u8>> {
        let mut keys = Vec::new();
        command::key_indices(cmd, args, &mut keys).map_err(|m| codec::error(&m))?;
        let Some(&first) = keys.first() else {
            return Ok(None);
        };
        let route = self
            .proxy
            .route(args.get(first).copied().unwrap_or_default())
            .ok_or_else(no_route)?;
        let hashtags = self.proxy.config.settings.enable_hashtagging;
        let slots = key_slots(args, &keys, route.strip, hashtags);
        if slots.windows(2).any(|w| w[0] != w[1]) {
            return Err(codec::error(
                "CROSSSLOT Keys in request don't hash to the same slot",
            ));
        }
        let data = encode_keyed(frame, args, &keys, route.strip);
        Ok(Some((route.cluster, slots[0], data)))
    }

    /// MULTI / EXEC / DISCARD / WATCH / UNWATCH. A transaction runs on a
    /// connection of its own to the master of its slot, so WATCH really
    /// guards EXEC; the queued commands are held here and sent as one
    /// MULTI … EXEC batch, whose EXEC reply is the client's.
    fn transaction(
        &mut self,
        cmd: &command::Command,
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let in_multi = self.txn.as_ref().is_some_and(|t| t.multi);
        match cmd.name {
            "multi" => {
                if in_multi {
                    return Err(codec::error("ERR MULTI calls can not be nested"));
                }
                self.txn.get_or_insert_with(Txn::new).multi = true;
                self.reply_now(codec::simple("OK"));
            }
            "discard" => {
                if !in_multi {
                    return Err(codec::error("ERR DISCARD without MULTI"));
                }
                self.end_txn(now);
                self.reply_now(codec::simple("OK"));
            }
            "exec" => {
                let Some(t) = self.txn.as_ref().filter(|t| t.multi) else {
                    return Err(codec::error("ERR EXEC without MULTI"));
                };
                if t.aborted {
                    self.end_txn(now);
                    return Err(codec::error(
                        "EXECABORT Transaction discarded because of previous errors.",
                    ));
                }
                if t.count == 0 && !t.watched {
                    self.txn = None;
                    self.reply_now(b"*0\r\n".to_vec());
                    return Ok(());
                }
                let Some(t) = self.txn.take() else {
                    return Ok(());
                };
                let mut data = codec::command(&[b"MULTI"]);
                data.extend_from_slice(&t.queued);
                data.extend(codec::command(&[b"EXEC"]));
                let seq = self.push_slot();
                self.send_pinned(seq, &t, data, t.count + 1, true, now);
                // Later commands travel on shared connections and could
                // overtake EXEC on its own connection: hold them until
                // EXEC's reply is in.
                self.barrier = Some(seq);
            }
            "watch" => {
                if in_multi {
                    return Err(codec::error("ERR WATCH inside MULTI is not allowed"));
                }
                let Some((cluster, slot, data)) = self.locate(cmd, &[], args)? else {
                    return Err(codec::error(
                        "ERR wrong number of arguments for 'watch' command",
                    ));
                };
                let t = self.txn.get_or_insert_with(Txn::new);
                if t.slot.is_some_and(|s| s != slot) || t.cluster.is_some_and(|c| c != cluster) {
                    return Err(codec::error(
                        "CROSSSLOT Keys in request don't hash to the same slot (a transaction's keys must share one slot)",
                    ));
                }
                t.slot = Some(slot);
                t.cluster = Some(cluster);
                t.watched = true;
                let t = t.clone_header();
                let seq = self.push_slot();
                self.send_pinned(seq, &t, data, 0, false, now);
            }
            _ => {
                // UNWATCH outside MULTI: forget the watches with the connection.
                if self.txn.as_ref().is_some_and(|t| t.watched) {
                    self.end_txn(now);
                } else {
                    self.txn = None;
                }
                self.reply_now(codec::simple("OK"));
            }
        }
        Ok(())
    }

    /// Inside MULTI: check and hold a command, answer +QUEUED.
    fn queue_in_multi(
        &mut self,
        cmd: &command::Command,
        frame: &[u8],
        args: &[&[u8]],
    ) -> Result<(), Vec<u8>> {
        if cmd.flags & command::PUBSUB != 0 {
            return Err(codec::error(&format!(
                "ERR '{}' is not allowed in a transaction",
                cmd.name
            )));
        }
        let located = self.locate(cmd, frame, args)?;
        let Some(t) = self.txn.as_mut() else {
            return Ok(());
        };
        match located {
            Some((cluster, slot, data)) => {
                if t.slot.is_some_and(|s| s != slot) || t.cluster.is_some_and(|c| c != cluster) {
                    return Err(codec::error(
                        "CROSSSLOT Keys in request don't hash to the same slot (a transaction's keys must share one slot)",
                    ));
                }
                t.slot = Some(slot);
                t.cluster = Some(cluster);
                t.queued.extend_from_slice(&data);
            }
            None => {
                // Keyless commands whose answer is the same on any node.
                if !matches!(cmd.name, "ping" | "echo" | "time" | "publish" | "lastsave") {
                    return Err(codec::error(&format!(
                        "ERR '{}' cannot be used inside a transaction through the proxy",
                        cmd.name
                    )));
                }
                t.queued.extend(encode(frame, args));
            }
        }
        t.count += 1;
        self.reply_now(codec::simple("QUEUED"));
        Ok(())
    }

    /// Drop the transaction; a WATCH connection is released (an UNWATCH
    /// whose reply nobody waits for closes it).
    fn end_txn(&mut self, now: Instant) {
        if let Some(t) = self.txn.take() {
            if t.watched {
                let data = codec::command(&[b"UNWATCH"]);
                self.send_pinned(u64::MAX, &t, data, 0, true, now);
            }
        }
    }

    fn send_pinned(
        &mut self,
        seq: u64,
        t: &Txn,
        data: Vec<u8>,
        swallow: u32,
        release: bool,
        now: Instant,
    ) {
        let cluster = t
            .cluster
            .or_else(|| self.proxy.default_cluster())
            .unwrap_or(0);
        let target = match t.slot {
            Some(slot) => Target::Slot { slot, read: false },
            None => Target::AnyMaster,
        };
        self.batch.push(Request {
            client: self.client.clone(),
            seq,
            part: WHOLE,
            cluster,
            target,
            policy: ReadPolicy::Master,
            data,
            deadline: now + self.proxy.config.settings.op_timeout,
            redirects: 0,
            retry_at: None,
            wait_gen: None,
            mirror: false,
            resp3: self.state.resp3,
            pin: Some(t.pin),
            release_pin: release,
            swallow,
        });
    }

    /// Queue a command (and its mirrored copies) for the upstream loop.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        seq: u64,
        part: u32,
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
            self.batch.push(Request {
                client: self.client.clone(),
                seq,
                part,
                cluster: mirror_cluster,
                target: target.clone(),
                policy: ReadPolicy::Master,
                data: data.clone(),
                deadline,
                redirects: 0,
                retry_at: None,
                wait_gen: None,
                mirror: true,
                resp3: self.state.resp3,
                pin: None,
                release_pin: false,
                swallow: 0,
            });
        }
        self.batch.push(Request {
            client: self.client.clone(),
            seq,
            part,
            cluster,
            target,
            policy,
            data,
            deadline,
            redirects: 0,
            retry_at: None,
            wait_gen: None,
            mirror: false,
            resp3: self.state.resp3,
            pin: None,
            release_pin: false,
            swallow: 0,
        });
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
                match self.proxy.loop_for(self.worker) {
                    Some(l) => l.submit(&mut self.batch),
                    None => {
                        let reqs = std::mem::take(&mut self.batch);
                        for r in reqs {
                            self.fill(
                                r.seq,
                                codec::error("ERR proxy is not running (validation mode)"),
                            );
                        }
                    }
                }
            }
            self.release_barrier();
            self.flush(conn);
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
        let want_disabled = self.paused();
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
        let now = Instant::now();
        let mut n = 0;
        while self.slots.front().is_some_and(|s| s.reply.is_some()) {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            let reply = slot.reply.unwrap_or_default();
            if command_stats {
                let cs = stats.command(slot.cmd);
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
            self.out.extend_from_slice(&reply);
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

    /// Replies arrived from the upstream loop.
    pub fn on_scheduled(&mut self, conn: &mut dyn Downstream) {
        let mut delivered = std::mem::take(&mut self.delivered);
        self.client.take(&mut delivered);
        for d in delivered.drain(..) {
            if d.part == DEFERRED {
                self.resume_deferred(d.seq, d.reply);
            } else if d.part == WHOLE {
                self.fill(d.seq, d.reply);
            } else if let Some(g) = self.gathers.get_mut(&d.seq) {
                if let Some(merged) = g.add(d.part, d.reply) {
                    self.gathers.remove(&d.seq);
                    self.fill(d.seq, merged);
                }
            }
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
    }

    pub fn on_destroy(&mut self) {
        self.closed = true;
        self.client.detach();
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

/// `key` without the first `strip` bytes (a route's `remove_prefix`).
fn strip_prefix(key: &[u8], strip: usize) -> &[u8] {
    key.get(strip.min(key.len())..).unwrap_or_default()
}

/// The slot of each key argument, after prefix removal.
fn key_slots(args: &[&[u8]], keys: &[usize], strip: usize, hashtags: bool) -> Vec<u16> {
    keys.iter()
        .map(|&k| {
            let key = args.get(k).copied().unwrap_or_default();
            slot::key_slot(strip_prefix(key, strip), hashtags)
        })
        .collect()
}

/// The bytes to send for a keyed command: the client's own frame, or, when
/// the route removes a prefix, the command re-encoded with stripped keys.
fn encode_keyed(frame: &[u8], args: &[&[u8]], keys: &[usize], strip: usize) -> Vec<u8> {
    if strip == 0 {
        return encode(frame, args);
    }
    let words: Vec<&[u8]> = args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if keys.contains(&i) {
                strip_prefix(a, strip)
            } else {
                a
            }
        })
        .collect();
    codec::command(&words)
}

/// The raw frame when it is multibulk; inline commands are re-encoded.
fn encode(frame: &[u8], args: &[&[u8]]) -> Vec<u8> {
    if frame.first() == Some(&b'*') {
        frame.to_vec()
    } else {
        codec::command(args)
    }
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

    // `Session` logs through Envoy only once Envoy loaded the module, but
    // the code still references these imports: define them for the test
    // binary.
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_log_enabled(_level: i32) -> bool {
        false
    }

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_log(
        _level: i32,
        _msg: crate::envoy::ffi::ModuleBuffer,
    ) {
    }

    struct NoNotify;

    impl Notify for NoNotify {
        fn notify(&self) {}
    }

    #[derive(Default)]
    struct Client {
        out: Vec<u8>,
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
        assert!(
            text.starts_with("+OK\r\n+QUEUED\r\n-ERR proxy is not running")
                && text.ends_with("+PONG\r\n+PONG\r\n+PONG\r\n"),
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
}
