//! The clock's work: parked requests retried, timeouts, busy probes.

use super::{Request, UpstreamIo};
use crate::codec;
use std::time::Instant;

impl UpstreamIo {
    /// Something waits on a clock: a reply, a connect, a parked retry, a
    /// connection named for a look. A blocked command may wait for hours:
    /// its connection needs no polling ([`Self::expire_blocked`] runs at the
    /// helper's housekeeping wakes, and a client leaving wakes the worker).
    pub(super) fn needs_ticks(&self) -> bool {
        !self.parked.is_empty()
            || self.busy.any_busy()
            || !self.active.is_empty()
            || !self.attend.is_empty()
            || !self.desk.is_empty()
            || !self.unblock_recheck.is_empty()
    }

    /// The clock's work: retries, timeouts, busy probes; then write what
    /// all of it queued. Its cost follows the connections with work, not
    /// all of them (see `clock`).
    pub(super) fn tick(&mut self, now: Instant) {
        self.refresh_views();
        self.attend_named(now);
        self.retry_parked(now);
        self.check_timeouts(now);
        self.check_busy(now);
        self.prune_active();
        self.flush_dirty();
    }

    /// Drop from `active` the connections with nothing left for the clock:
    /// connected, and owing nothing, or only a blocked command's reply, or
    /// a stream's (`MONITOR`, a subscriber link: no deadline).
    fn prune_active(&mut self) {
        let conns = &self.conns;
        self.active.retain(|i| {
            conns.get(i).and_then(|c| c.as_ref()).is_some_and(|c| {
                let waits = !c.pipe.is_idle() && !c.is_blocking() && !c.pipe.is_streaming();
                !c.connected || waits
            })
        });
    }

    pub(super) fn park(&mut self, mut req: Request, why: &str) {
        if req.mirror {
            return self.drop_mirror(req.cluster);
        }
        let view = &self.clusters[req.cluster];
        req.target.after_wait();
        req.wait_gen = Some(view.gen);
        view.topo.request_refresh(why);
        self.parked.push(req);
    }

    pub(super) fn retry_parked(&mut self, now: Instant) {
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

    /// Probe the nodes whose shared connections wait behind a long script
    /// (see `busy`), and take in the probes' answers.
    pub(super) fn check_busy(&mut self, now: Instant) {
        self.busy.collect();
        let op_timeout = self.settings.op_timeout;
        let mut probe: Vec<(usize, String, bool)> = Vec::new();
        // Only a connection owing replies can wait behind a script: those
        // are all in `active`.
        for i in self.active.members() {
            let Some(c) = self.conns.get(i).and_then(|c| c.as_ref()) else {
                continue;
            };
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

    /// Connect timeouts, and replies overdue past `op_timeout`: on the
    /// connections in `active`, and on the blocking connections whose
    /// command is past its own timeout plus `op_timeout`.
    pub(super) fn check_timeouts(&mut self, now: Instant) {
        let members = self.active.members();
        let connect_timeouts: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| {
                self.conns.get(i).and_then(|c| c.as_ref()).is_some_and(|c| {
                    let limit = self.clusters[c.cluster].cfg.connect_timeout;
                    !c.connected && now.duration_since(c.opened) > limit
                })
            })
            .collect();
        for i in connect_timeouts {
            self.fail_conn(i, "connect timeout");
        }
        let mut stuck = Vec::new();
        for i in members {
            if self.expire(i, now) {
                stuck.push(i);
            }
        }
        self.expire_blocked(now, &mut stuck);
        self.recheck_unblocks(now);
        // A transaction whose command timed out is in a state its client
        // cannot know (the node may still queue or run it): close its
        // connection, so the node drops it and later commands of it fail.
        // A blocking connection silent past its command's timeout is
        // closed the same way.
        for i in stuck {
            self.close_pinned(i);
        }
    }

    /// The blocking connections whose command's deadline has passed.
    fn expire_blocked(&mut self, now: Instant, stuck: &mut Vec<usize>) {
        while let Some(i) = self.blocked_until.pop_due(now) {
            if self.expire(i, now) && !stuck.contains(&i) {
                stuck.push(i);
            }
        }
    }

    /// Answer with a timeout error the commands on connection `i` whose
    /// deadline has passed: true when that left a dedicated connection
    /// (transaction, blocking) in an unknown state.
    fn expire(&mut self, i: usize, now: Instant) -> bool {
        let Some(conn) = self.conns.get_mut(i).and_then(|c| c.as_mut()) else {
            return false;
        };
        let op_ms = self.settings.op_timeout.as_millis();
        let stats = &self.stats;
        let (cluster, addr) = (conn.cluster, &conn.addr);
        let mut expired = false;
        conn.pipe.expire(now, |req| {
            stats.inc(stats.cluster(cluster).upstream_rq_timeout);
            let msg = format!("ERR upstream timeout: no reply from {addr} within {op_ms} ms");
            req.respond(codec::error(&msg));
            expired = true;
        });
        expired && conn.pin.is_some()
    }
}
