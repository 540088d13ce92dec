//! The clock's work: parked requests retried, timeouts, busy probes.

use super::{Request, UpstreamIo};
use crate::codec;
use std::time::Instant;

impl UpstreamIo {
    /// Something waits on a clock: a reply, a connect, a parked retry.
    pub(super) fn needs_ticks(&self) -> bool {
        !self.parked.is_empty()
            || self.busy.any_busy()
            || self
                .conns
                .iter()
                .flatten()
                // A blocked command may wait for hours, a stream forever: no
                // need to poll for their replies (a client leaving wakes the
                // worker).
                .any(|c| {
                    let waits = !c.pipe.is_idle() && !c.is_blocking() && !c.pipe.is_streaming();
                    waits || !c.connected
                })
    }

    /// The clock's work: retries, timeouts, busy probes; then write what
    /// all of it queued.
    pub(super) fn tick(&mut self, now: Instant) {
        self.refresh_views();
        self.retry_parked(now);
        self.check_timeouts(now);
        self.check_busy(now);
        self.flush_dirty();
    }

    pub(super) fn park(&mut self, mut req: Request, why: &str) {
        if req.mirror {
            return self.drop_mirror(req.cluster);
        }
        let view = &self.clusters[req.cluster];
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

    /// Close the dedicated connections among `candidates` whose client has
    /// gone away.
    pub(super) fn close_orphans(&mut self, candidates: Vec<usize>) {
        for i in candidates {
            let gone = self
                .conns
                .get(i)
                .and_then(|c| c.as_ref())
                .and_then(|c| c.owner.as_ref())
                .is_some_and(|o| o.is_detached());
            if gone {
                self.close_pinned(i);
            }
        }
    }

    pub(super) fn check_timeouts(&mut self, now: Instant) {
        self.close_orphaned_blocking();
        self.unblock_cancelled(now);
        let pinned: Vec<usize> = self.pinned.values().copied().collect();
        self.close_orphans(pinned);
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
