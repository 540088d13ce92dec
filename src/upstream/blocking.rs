//! Blocking commands (`BLPOP`, `BZPOPMIN`, `XREAD … BLOCK`, …) on
//! connections of their own.
//!
//! A blocked command holds its connection until the node answers, so it can
//! never share one: it takes an idle connection from this worker's pool of
//! blocking connections to the node (opening one when none is idle), and the
//! connection goes back to the pool once the reply is in whole. At most
//! `max_blocking_connections` exist per worker (idle ones to other nodes are
//! closed to make room); beyond that the command gets an error.
//!
//! The node enforces the command's own timeout; `op_timeout` only bounds
//! getting the command to a node. While blocked, the connection belongs to
//! its client: when the client goes away it is closed at once, so the node
//! unblocks it and pops nothing for nobody. When the node answers `MOVED`,
//! `ASK`, `-UNBLOCKED` (it became a replica) or the connection is lost, the
//! command is sent again, to the owner a fresh topology names, with the
//! time it has left.

use super::{pipeline::Pipeline, ClientShared, Conn, Request, Role, UpstreamIo};
use crate::clients::UnblockMode;
use crate::codec::{self, Scan};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The unit of a blocking command's timeout argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutUnit {
    /// `BLPOP k 1.5`: seconds, fractions allowed.
    Seconds,
    /// `XREAD BLOCK 1500`: whole milliseconds.
    Millis,
}

/// What the upstream I/O must know about a blocking command.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocking {
    /// Index (in the command's arguments, 0 = its name) of the timeout.
    pub timeout_arg: usize,
    pub unit: TimeoutUnit,
    /// How long it may block; `None`: forever (timeout 0).
    pub timeout: Option<Duration>,
    /// When the node stops blocking it (set when it is first sent).
    ends: Option<Instant>,
    /// Sent to a node before: the timeout argument is rewritten to what is
    /// left of it when sent again.
    sent: bool,
}

impl Blocking {
    pub fn new(timeout_arg: usize, unit: TimeoutUnit, timeout: Option<Duration>) -> Blocking {
        Blocking {
            timeout_arg,
            unit,
            timeout,
            ends: None,
            sent: false,
        }
    }
}

impl Blocking {
    /// Its client has already closed: pop only what is there now (the
    /// shortest timeout), as Redis serves a command it read before the
    /// close and then frees the client rather than block it.
    pub fn only_what_is_there(&mut self, now: Instant) {
        self.sent = true;
        self.ends = Some(now);
    }
}

/// A blocking connection's id on its node (`CLIENT ID`, asked first thing
/// on connect), which `CLIENT UNBLOCK` needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NodeId {
    /// Not a blocking connection.
    NotAsked,
    /// Asked; the reply has not come yet.
    Asked,
    Known(i64),
    /// The node refused `CLIENT ID` (an ACL, say): such a connection is
    /// closed instead of unblocked.
    Refused,
}

const CLIENT_ID: &[u8] = b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n";

/// The shortest timeout sent again: 0 would mean "forever".
const MIN_LEFT: Duration = Duration::from_millis(1);
/// The upstream deadline of a request blocked forever (timeout 0).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A pool key: connections are per node and per protocol.
/// Cluster, node, RESP3, the client's user.
type NodeKey = (
    usize,
    String,
    bool,
    Option<std::sync::Arc<super::Credentials>>,
);

/// A worker's blocking connections.
#[derive(Default)]
pub(super) struct BlockingPool {
    /// Idle connections by node, most recently used last.
    idle: HashMap<NodeKey, Vec<usize>>,
    /// Connections holding a blocked command.
    in_use: HashSet<usize>,
    /// Ids for the `pin` field that keeps these connections out of the
    /// shared pool.
    next_id: u64,
}

impl BlockingPool {
    pub(super) fn new() -> BlockingPool {
        BlockingPool {
            // Apart from the sessions' transaction pins (counting up from
            // 1) and the busy probes (from 1 << 63).
            next_id: 1 << 62,
            ..BlockingPool::default()
        }
    }

    fn total(&self) -> usize {
        self.in_use.len() + self.idle.values().map(Vec::len).sum::<usize>()
    }

    /// An idle connection to `key`, now in use.
    fn take_idle(&mut self, key: &NodeKey) -> Option<usize> {
        let v = self.idle.get_mut(key)?;
        let idx = v.pop();
        if v.is_empty() {
            self.idle.remove(key);
        }
        idx
    }

    /// Forget connection `idx` (it was closed): whether it was idle.
    fn forget(&mut self, idx: usize) -> bool {
        if self.in_use.remove(&idx) {
            return false;
        }
        for v in self.idle.values_mut() {
            v.retain(|&i| i != idx);
        }
        self.idle.retain(|_, v| !v.is_empty());
        true
    }
}

/// `data` with its timeout argument replaced by what is left of it.
fn with_timeout_left(data: &[u8], b: &Blocking, left: Option<Duration>) -> Option<Vec<u8>> {
    let mut ranges = Vec::new();
    if !matches!(
        codec::scan_request(data, &mut ranges),
        Ok(Scan::Complete(_))
    ) {
        return None;
    }
    let text = match left {
        None => "0".to_string(),
        Some(d) => {
            let d = d.max(MIN_LEFT);
            match b.unit {
                TimeoutUnit::Seconds => format!("{:.3}", d.as_secs_f64()),
                TimeoutUnit::Millis => d.as_millis().to_string(),
            }
        }
    };
    let mut args: Vec<&[u8]> = ranges.iter().map(|r| &data[r.clone()]).collect();
    *args.get_mut(b.timeout_arg)? = text.as_bytes();
    Some(codec::command(&args))
}

impl Conn {
    /// A connection holding (or pooled for) a blocking command.
    pub(super) fn is_blocking(&self) -> bool {
        self.blocking
    }
}

impl UpstreamIo {
    /// Send blocking request `req` to `addr` on a blocking connection.
    pub(super) fn send_blocking(
        &mut self,
        mut req: Request,
        addr: String,
        asking: bool,
        now: Instant,
    ) {
        let key: NodeKey = (req.cluster, addr, req.resp3, req.user.clone());
        let idx = match self.blocking.take_idle(&key) {
            Some(i) => {
                let cs = self.stats.cluster(req.cluster);
                self.stats.gauge_sub(cs.blocking_cx_idle, 1);
                i
            }
            None => {
                let max = self.settings.max_blocking_connections as usize;
                if self.blocking.total() >= max && !self.close_idle_blocking() {
                    let cs = self.stats.cluster(req.cluster);
                    self.stats.inc(cs.blocking_cx_overflow);
                    return req.respond(codec::error(&format!(
                        "ERR too many blocked clients through this proxy (max_blocking_connections = {max} per worker)"
                    )));
                }
                self.blocking.next_id += 1;
                let id = self.blocking.next_id;
                match self.connect(
                    key.0,
                    &key.1,
                    key.2,
                    key.3.clone(),
                    Role::Master,
                    Some(id),
                    now,
                ) {
                    Ok(i) => {
                        let cfg = &self.clusters[key.0].cfg;
                        let as_user = key.3.as_deref().map(|u| {
                            let proxy = super::conn::setup_commands(cfg, key.2, None, Role::Master);
                            let user =
                                super::conn::setup_commands(cfg, key.2, Some(u), Role::Master);
                            (proxy, user)
                        });
                        if let Some(c) = self.conns[i].as_mut() {
                            c.blocking = true;
                            if let Some((proxy, user)) = as_user {
                                // A client's user may not be allowed CLIENT
                                // ID: asked as the proxy's user first, then
                                // AUTH as the client's (nothing written yet).
                                c.pipe = Pipeline::default();
                                for cmd in &proxy {
                                    c.pipe.push_internal(cmd);
                                }
                                c.pipe.push_internal(CLIENT_ID);
                                for (n, cmd) in user.iter().enumerate() {
                                    c.pipe.push_internal(cmd);
                                    if n == 0 {
                                        c.pipe.hold_here();
                                    }
                                }
                                c.auth_pending = Some(proxy.len() as u32 + 1);
                            } else {
                                // Its id on the node, to CLIENT UNBLOCK it.
                                c.pipe.push_internal(CLIENT_ID);
                            }
                            c.node_id = NodeId::Asked;
                        }
                        i
                    }
                    Err(e) => {
                        self.mark_down(key.0, &key.1, now);
                        self.stats
                            .inc(self.stats.cluster(key.0).upstream_cx_connect_fail);
                        crate::log!(
                            crate::envoy::Level::Debug,
                            "redis_cluster: connect to {} failed: {e}",
                            key.1
                        );
                        return self.park(req, "connect failed");
                    }
                }
            }
        };
        self.blocking.in_use.insert(idx);
        if let Some(b) = req.blocking.as_mut() {
            if b.sent {
                let left = b.ends.map(|e| e.saturating_duration_since(now));
                if let Some(data) = with_timeout_left(&req.data, b, left) {
                    req.data = data;
                }
            } else {
                b.sent = true;
                b.ends = b.timeout.map(|t| now + t);
            }
            // From here the node's timeout governs; the worker only gives up
            // on a connection that stays silent op_timeout past it.
            let grace = self.settings.op_timeout;
            req.deadline = match b.ends {
                Some(e) => e + grace,
                None => now + FOREVER,
            };
        }
        if let Some(c) = self.conns[idx].as_mut() {
            c.unblock_sent = false;
            c.unblock_answer = None;
        }
        self.unblock_recheck.cancel(idx);
        self.set_owner(idx, &req.client);
        self.blocked_until.set(idx, req.deadline);
        let cs = self.stats.cluster(req.cluster);
        self.stats.gauge_add(cs.blocked_rq_active, 1);
        self.enqueue(idx, req, asking);
    }

    /// Close one idle blocking connection to make room; false if none.
    fn close_idle_blocking(&mut self) -> bool {
        let Some(idx) = self.blocking.idle.values_mut().find_map(|v| {
            if v.is_empty() {
                None
            } else {
                Some(v.remove(0))
            }
        }) else {
            return false;
        };
        self.close_pinned(idx);
        true
    }

    /// After replies were read on blocking connection `idx`: once it owes
    /// nothing it goes back to the pool.
    pub(super) fn blocking_answered(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if !c.is_blocking() || !c.pipe.is_idle() || c.owner.is_none() {
            return;
        }
        let key = (c.cluster, c.addr.clone(), c.resp3, c.user.clone());
        let cluster = c.cluster;
        self.clear_owner(idx);
        self.blocked_until.cancel(idx);
        self.blocking.in_use.remove(&idx);
        self.blocking.idle.entry(key).or_default().push(idx);
        let cs = self.stats.cluster(cluster);
        self.stats.gauge_sub(cs.blocked_rq_active, 1);
        self.stats.gauge_add(cs.blocking_cx_idle, 1);
    }

    /// A blocking connection is closing (lost, its client gone, stuck).
    pub(super) fn blocking_closed(&mut self, conn: &Conn, idx: usize) {
        if !conn.is_blocking() {
            return;
        }
        let was_idle = self.blocking.forget(idx);
        let cs = self.stats.cluster(conn.cluster);
        self.stats.gauge_sub(
            if was_idle {
                cs.blocking_cx_idle
            } else {
                cs.blocked_rq_active
            },
            1,
        );
    }

    /// A client that closed its sending side while blocked, or `CLIENT
    /// UNBLOCK`: unblock blocking connection `idx` on its node (from a
    /// shared connection). Either the node had already served it and its
    /// reply (a popped element) is on the way, or it answers the timeout's
    /// nil now; either reply reaches the client, which then closes. The
    /// node may also not have read the blocking command yet (it comes on
    /// another connection): it then answers `:0` and the unblock is sent
    /// again ([`Self::recheck_unblocks`]). Without the connection's id (the
    /// node refused it), it is closed; while the id is still to come, the
    /// unblock waits for it ([`Self::node_id_known`]).
    pub(super) fn unblock_if_asked(&mut self, idx: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if c.unblock_sent || c.node_id == NodeId::Asked {
            return;
        }
        let Some(mode) = c.owner.as_ref().and_then(|o| o.take_cancel()) else {
            return;
        };
        c.unblock_sent = true;
        self.send_unblock(idx, mode, now);
    }

    fn send_unblock(&mut self, idx: usize, mode: UnblockMode, now: Instant) {
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        let NodeId::Known(id) = c.node_id else {
            return self.close_pinned(idx);
        };
        let (cluster, addr) = (c.cluster, c.addr.clone());
        let id = id.to_string();
        let how: &[u8] = match mode {
            UnblockMode::Timeout => b"TIMEOUT",
            UnblockMode::Error => b"ERROR",
        };
        let data = codec::command(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), how]);
        let target = super::Target::Node {
            addr,
            slot: 0,
            asking: false,
        };
        let deadline = now + self.settings.op_timeout;
        let answer = ClientShared::new(Box::new(super::busy::NoWake));
        c.unblock_answer = Some((mode, answer.clone()));
        let req = Request::new(
            answer,
            0,
            super::Part::Discard,
            cluster,
            target,
            data,
            deadline,
        );
        self.dispatch(req, now);
        self.unblock_recheck.set(idx, now + UNBLOCK_RECHECK);
    }

    /// Look at the `CLIENT UNBLOCK` answers due: `:0` while the command is
    /// still unanswered means the node had not read it yet: unblock again.
    pub(super) fn recheck_unblocks(&mut self, now: Instant) {
        while let Some(idx) = self.unblock_recheck.pop_due(now) {
            let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                continue;
            };
            let waiting = c.is_blocking() && c.owner.is_some() && c.pipe.owed() > 0;
            let Some((mode, answer)) = c.unblock_answer.take().filter(|_| waiting) else {
                continue;
            };
            let mut got = Vec::new();
            answer.take(&mut got);
            match got.first().map(|d| d.reply.as_slice()) {
                None => {
                    c.unblock_answer = Some((mode, answer));
                    self.unblock_recheck.set(idx, now + UNBLOCK_RECHECK);
                }
                Some(b":0\r\n") => self.send_unblock(idx, mode, now),
                Some(_) => {}
            }
        }
    }
}

/// How long after a `CLIENT UNBLOCK` its answer is looked at (and the
/// unblock sent again when the node had not read the command yet).
const UNBLOCK_RECHECK: Duration = Duration::from_millis(20);

/// Whether a reply to a blocking command means it did not run and must be
/// sent again (after a topology refresh): the node stopped being a master
/// while the client was blocked.
pub(super) fn unblocked_by_role_change(err: &[u8]) -> bool {
    err.starts_with(b"UNBLOCKED") && err.windows(14).any(|w| w == b"state changed ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_is_rewritten_to_what_is_left() {
        let data = codec::command(&[b"BLPOP", b"a", b"b", b"5"]);
        let b = Blocking::new(3, TimeoutUnit::Seconds, Some(Duration::from_secs(5)));
        let out = with_timeout_left(&data, &b, Some(Duration::from_millis(2500)));
        assert_eq!(out, Some(codec::command(&[b"BLPOP", b"a", b"b", b"2.500"])));
        let out = with_timeout_left(&data, &b, Some(Duration::ZERO));
        assert_eq!(
            out,
            Some(codec::command(&[b"BLPOP", b"a", b"b", b"0.001"])),
            "never 0, which would block forever"
        );
        let out = with_timeout_left(&data, &b, None);
        assert_eq!(out, Some(codec::command(&[b"BLPOP", b"a", b"b", b"0"])));
        let x = codec::command(&[b"XREAD", b"BLOCK", b"900", b"STREAMS", b"s", b"$"]);
        let b = Blocking::new(2, TimeoutUnit::Millis, Some(Duration::from_millis(900)));
        let out = with_timeout_left(&x, &b, Some(Duration::from_millis(400)));
        assert_eq!(
            out,
            Some(codec::command(&[
                b"XREAD", b"BLOCK", b"400", b"STREAMS", b"s", b"$"
            ]))
        );
    }

    #[test]
    fn only_a_role_change_unblocks_for_a_resend() {
        assert!(unblocked_by_role_change(
            b"UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)"
        ));
        assert!(!unblocked_by_role_change(
            b"UNBLOCKED client unblocked via CLIENT UNBLOCK"
        ));
    }
}
