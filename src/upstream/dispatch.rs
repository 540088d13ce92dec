//! Routing a request to a node and queueing it on that node's connection;
//! nodes that are down.

use super::{
    pool::Purpose, Down, Request, Role, Target, UpstreamIo, ASKING, BACKOFF_MAX, BACKOFF_MIN,
    MIRROR_LOG_EVERY, MIRROR_QUEUE_MAX,
};
use crate::codec;
use crate::config::ReadPolicy;
use crate::envoy::Level;
use crate::log;
use crate::routing;
use std::borrow::Cow;
use std::time::Instant;

impl Down {
    /// A node first found unreachable at `now`.
    fn new(now: Instant) -> Down {
        Down {
            since: now,
            next_attempt: now,
            backoff: BACKOFF_MIN / 2,
        }
    }

    /// Another failure at `now`: the next attempt waits twice as long as
    /// the last, from `BACKOFF_MIN` up to `BACKOFF_MAX`.
    fn failed(&mut self, now: Instant) {
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.next_attempt = now + self.backoff;
    }
}

impl UpstreamIo {
    /// Route a batch of new requests and queue them on their connections;
    /// true when some are left to write ([`Self::flush_dirty`]).
    pub(super) fn dispatch_batch(&mut self, batch: &mut Vec<Request>) -> bool {
        let now = Instant::now();
        self.refresh_views();
        for req in batch.drain(..) {
            self.dispatch(req, now);
        }
        !self.dirty.is_empty()
    }

    /// Route a request to a node and queue it on that node's connection.
    pub(super) fn dispatch(&mut self, req: Request, now: Instant) {
        if !req.mirror && req.client.is_detached() {
            return;
        }
        if req.retry_at.is_some_and(|t| now < t) {
            // Waits its turn in the parked requests (`not_before`).
            self.parked.push(req);
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
        // Borrowed from the map (an Arc of our own), not copied per command.
        let (addr, asking, role): (Cow<'_, str>, bool, Role) = match &req.target {
            Target::Node { addr, asking, .. } | Target::Redirected { addr, asking, .. } => {
                (Cow::Owned(addr.clone()), *asking, Role::Master)
            }
            Target::AnyMaster => match map.shards.first() {
                Some(s) => (Cow::Borrowed(&s.master), false, Role::Master),
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
                    down.is_empty()
                        || down
                            .get(&(cluster, a.to_string()))
                            .is_none_or(|d| now >= d.next_attempt)
                };
                self.rr = self.rr.wrapping_add(1);
                match routing::pick_node(shard, policy, healthy, self.rr) {
                    Ok(a) if a == shard.master => (Cow::Borrowed(a), false, Role::Master),
                    Ok(a) => (Cow::Borrowed(a), false, Role::ReplicaRead),
                    Err(msg) => {
                        return req.respond(codec::error(&msg));
                    }
                }
            }
        };
        self.send_to(req, &addr, asking, role, now);
    }

    pub(super) fn send_to(
        &mut self,
        req: Request,
        addr: &str,
        asking: bool,
        role: Role,
        now: Instant,
    ) {
        let cluster = req.cluster;
        // No node down is the usual case: no lookup (nor key) then.
        let down = match self.down.is_empty() {
            true => None,
            false => self.down.get(&(cluster, addr.to_string())),
        };
        if let Some(d) = down {
            if now < d.next_attempt {
                // Down for longer than op_timeout with no failover: fail fast
                // rather than make every command wait its full timeout.
                if now.duration_since(d.since) > self.settings.op_timeout {
                    let msg = format!("ERR node {addr} is unreachable");
                    return req.respond(codec::error(&msg));
                }
                return self.park(req, "node down");
            }
        }
        if req.pin.is_none() {
            if let Some(reply) = self.busy.reply_for(cluster, addr) {
                if req.mirror {
                    return self.drop_mirror(req.cluster);
                }
                return req.respond(reply);
            }
        }
        if req.blocking.is_some() {
            return self.send_blocking(req, addr.to_string(), asking, now);
        }
        let resp3 = req.resp3;
        let user = req.user.clone();
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
                let purpose = Purpose {
                    cluster,
                    resp3,
                    role,
                    user: user.clone(),
                };
                self.shared.get(addr, &purpose)
            }
        };
        let idx = match existing {
            Some(i) => i,
            None => match self.connect(cluster, addr, resp3, user, role, req.pin, now) {
                Ok(i) => i,
                Err(e) => {
                    self.mark_down(cluster, addr, now);
                    self.stats
                        .inc(self.stats.cluster(cluster).upstream_cx_connect_fail);
                    log!(
                        Level::Debug,
                        "redis_cluster: connect to {} failed: {e}",
                        addr
                    );
                    if req.pin.is_some() {
                        let msg = format!("ERR cannot connect to {addr} for the transaction");
                        return req.respond(codec::error(&msg));
                    }
                    return self.park(req, "connect failed");
                }
            },
        };
        if let Some(pin) = req.pin {
            self.pinned.insert(pin, idx);
            self.set_owner(idx, &req.client);
        }
        self.enqueue(idx, req, asking);
    }

    /// Append a request to a connection's output and in-flight queue.
    pub(super) fn enqueue(&mut self, idx: usize, req: Request, asking: bool) {
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
        self.active.insert(idx);
    }

    /// A mirrored command that could not be sent at once is dropped; drops
    /// are counted and logged at most every few seconds.
    pub(super) fn drop_mirror(&mut self, cluster: usize) {
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

    pub(super) fn mark_down(&mut self, cluster: usize, addr: &str, now: Instant) {
        self.down
            .entry((cluster, addr.to_string()))
            .or_insert_with(|| Down::new(now))
            .failed(now);
        self.clusters[cluster]
            .topo
            .request_refresh("node unreachable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reconnect_backoff_doubles_up_to_its_cap_and_keeps_since() {
        let t0 = Instant::now();
        let mut d = Down::new(t0);
        d.failed(t0);
        assert_eq!(d.next_attempt, t0 + BACKOFF_MIN);
        let mut waits = Vec::new();
        for i in 1..10u32 {
            let now = t0 + Duration::from_secs(i.into());
            d.failed(now);
            waits.push(d.next_attempt - now);
        }
        assert_eq!(waits[0], BACKOFF_MIN * 2);
        assert_eq!(waits[1], BACKOFF_MIN * 4);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        assert_eq!(d.since, t0, "down since the first failure");
    }
}
