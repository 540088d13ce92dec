//! Where a command that leaves the proxy goes: to the node of its keys'
//! slot or split per slot ([`Plan::Keyed`](super::plan::Plan::Keyed)), to
//! any master, to every master with replies merged, `SCAN` across masters
//! ([`Keyless`]); a cluster-wide command waits for a topology with masters
//! (deferred). Requests are queued for the upstream loop with their
//! mirrored copies.

use super::plan::{self, Keyless};
use super::{Session, NEXT_ID};
use crate::codec::{self, Scan};
use crate::command::{self, Dispatch};
use crate::config::{MirrorPolicy, ReadPolicy};
use crate::key_routing::{self as keys, KeyRoutes, SingleError};
use crate::proxy::Proxy;
use crate::splitter::{self, Gather, Merge};
use crate::upstream::{Part, Request, Target, WHOLE};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Session {
    /// Send a command without keys where `how` says.
    pub(super) fn keyless(
        &mut self,
        cmd: &command::Command,
        how: Keyless,
        frame: &[u8],
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let cluster = self.proxy.default_cluster().ok_or_else(no_route)?;
        let data = keys::encode(frame, args);
        if how.needs_masters() && !self.has_masters(cluster) {
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
            // Later commands wait for it: sent now, they would reach the
            // nodes first (`FUNCTION LOAD` then `FCALL` must run in order).
            self.barrier = Some(seq);
            self.held_until = Some(self.deadline_from(now));
            return Ok(());
        }
        match how {
            Keyless::AnyMaster => {
                let seq = self.push_slot();
                let target = Target::AnyMaster;
                self.send_keyless(seq, WHOLE, cluster, target, data, now);
                Ok(())
            }
            Keyless::Broadcast(merge) => self.broadcast(cluster, data, |_| merge, now),
            Keyless::Dedicated(merge) => self.broadcast_dedicated(cluster, data, merge, now),
            Keyless::ScriptFlush => {
                self.proxy.scripts.flush();
                self.broadcast(cluster, data, |_| Merge::Same, now)
            }
            Keyless::Wait => {
                let data = self.wait_timeout(args).unwrap_or(data);
                self.broadcast(cluster, data, |_| Merge::Min, now)
            }
            Keyless::RandomKey => {
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
            Keyless::Info => self.info(cluster, args, now),
            Keyless::Config => self.config(cluster, args, data, now),
            Keyless::Persist => self.persist(cluster, cmd.name, data, now),
            Keyless::Acl => self.acl_nodes(cluster, args, data, now),
            Keyless::Scan => self.scan(cluster, args, now),
            Keyless::Unsupported => Err(codec::error(&format!(
                "ERR '{}' is not supported through this proxy (keyless command)",
                cmd.name
            ))),
        }
    }

    /// A master serves slots (a cluster whose slots are not assigned yet
    /// publishes an empty map).
    pub(super) fn has_masters(&self, cluster: usize) -> bool {
        self.proxy
            .topology(cluster)
            .is_some_and(|m| !m.shards.is_empty())
    }

    pub(super) fn no_masters(&self, cluster: usize) -> Vec<u8> {
        codec::error(&format!(
            "CLUSTERDOWN Hash slot not served: cluster '{}' has no master serving slots",
            self.proxy.cluster_name(cluster)
        ))
    }

    /// The wait for masters is over (the probe got a reply, or timed out):
    /// handle the deferred command now, into the reply slot it already has,
    /// within the deadline it had from its arrival.
    pub(super) fn resume_deferred(&mut self, seq: u64, probe_reply: Vec<u8>) {
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
        let arrived = self
            .replies
            .start_of(seq)
            .unwrap_or_else(|| self.clock.now());
        self.reuse_seq = Some(seq);
        let how = plan::keyless(cmd, &args);
        let result = self.keyless(cmd, how, &data, &args, arrived);
        if let Err(reply) = result {
            let seq = self.push_slot();
            self.fill(seq, reply);
        }
        self.reuse_seq = None;
    }

    /// Masters of a cluster, ordered by the first slot they own (stable
    /// across failovers, which matters for SCAN cursors); an error when
    /// there is none.
    pub(super) fn masters(&self, cluster: usize) -> Result<Vec<String>, Vec<u8>> {
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
    pub(super) fn broadcast(
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
    pub(super) fn broadcast_dedicated(
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
    pub(super) fn fan_out(
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
                let deadline = self.deadline_from(now);
                let pin = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let req = self
                    .request(seq, part, (cluster, target), data.clone(), deadline)
                    .pinned(pin, true, 0);
                self.batch.push(req);
            } else {
                let d = data.clone();
                self.send_keyless(seq, part, cluster, target, d, now);
            }
        }
    }

    /// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]` across all masters.
    pub(super) fn scan(
        &mut self,
        cluster: usize,
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
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

    /// Send a command with keys (`keys`: their positions in `args`) to
    /// the node of their slot, or split per slot when the command can be
    /// and the keys are in more than one place.
    pub(super) fn keyed(
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
    pub(super) fn single_error(&self, command: &str, e: SingleError) -> Vec<u8> {
        match e {
            SingleError::CrossSlot => {
                codec::error("CROSSSLOT Keys in request don't hash to the same slot")
            }
            SingleError::CrossCluster { first, other } => self.cross_cluster(command, first, other),
        }
    }

    pub(super) fn cross_cluster(&self, command: &str, first: usize, other: usize) -> Vec<u8> {
        codec::error(&format!(
            "CROSSSLOT Keys in request map to different clusters: '{command}' has keys in clusters '{}' and '{}' (prefix routes) and cannot be split",
            self.proxy.cluster_name(first),
            self.proxy.cluster_name(other)
        ))
    }

    /// Queue a command that belongs to no route (no mirrors; a node's
    /// master connection).
    pub(super) fn send_keyless(
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
    pub(super) fn send(
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
        let deadline = self.deadline_from(now);
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
            let copy = self.request(
                seq,
                part,
                (mirror_cluster, target.clone()),
                data.clone(),
                deadline,
            );
            self.batch.push(copy.mirrored());
        }
        let req = self
            .request(seq, part, (cluster, target), data, deadline)
            .read_policy(policy);
        self.batch.push(req);
    }

    /// A request on behalf of this client: its mailbox, its protocol and
    /// its Redis user. Client commands go upstream only through here, so
    /// that none runs as another user (the proxy's own requests, such as
    /// an `AUTH` being checked or a node `MONITOR`, are built apart).
    pub(super) fn request(
        &self,
        seq: u64,
        part: Part,
        at: (usize, Target),
        data: Vec<u8>,
        deadline: Instant,
    ) -> Request {
        let (cluster, target) = at;
        Request::new(
            self.client.clone(),
            seq,
            part,
            cluster,
            target,
            data,
            deadline,
        )
        .resp3(self.state.resp3)
        .user(self.user.clone())
    }

    /// xorshift64*: cheap, good enough to sample mirrored commands.
    pub(super) fn next_random(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
}

/// Each key's route; an error when one has none.
pub(super) fn key_routes<'p>(
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

pub(super) fn no_route() -> Vec<u8> {
    codec::error(
        "ERR no route for this key: no prefix route matches and there is no catch_all_route",
    )
}
