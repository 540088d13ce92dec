//! A node's replies matched to their requests, and what each means
//! (deliver, redirect, retry, reload a script); connections closed or lost.

use super::{
    pipeline::Next, pipeline::Unanswered, policy, policy::Outcome, Request, UpstreamIo, READ_CHUNK,
};
use crate::codec;
use crate::envoy::Level;
use crate::log;
use crate::topology::Redirect;
use std::sync::Arc;
use std::time::Instant;

impl UpstreamIo {
    pub(super) fn on_readable(&mut self, idx: usize) {
        let mut redo: Vec<Request> = Vec::new();
        let mut reload: Vec<(Request, Arc<[u8]>)> = Vec::new();
        let mut failure: Option<String> = None;
        let mut refused: Option<Vec<u8>> = None;
        let mut release = false;
        let mut tls_flush = false;
        let mut id_known = false;
        {
            let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                return;
            };
            match conn.read_available(&mut self.scratch) {
                Ok(flush) => tls_flush = flush,
                Err(e) => failure = Some(e),
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
                        match conn.auth_pending {
                            Some(0) => {
                                // The AUTH as the client's user: nothing
                                // after it was written; refused, nothing
                                // will be.
                                conn.auth_pending = None;
                                if codec::error_text(reply).is_some() {
                                    refused = Some(reply.to_vec());
                                    break;
                                }
                                conn.pipe.release();
                                tls_flush = true;
                                continue;
                            }
                            Some(n) => conn.auth_pending = Some(n - 1),
                            None => {}
                        }
                        if conn.node_id == super::blocking::NodeId::Asked {
                            // CLIENT ID's integer, or its refusal; the
                            // setup's replies before it (`+OK` to AUTH,
                            // HELLO's map) are neither.
                            if let Some(id) = codec::integer_value(reply) {
                                conn.node_id = super::blocking::NodeId::Known(id);
                                id_known = true;
                            } else if codec::error_text(reply).is_some() {
                                conn.node_id = super::blocking::NodeId::Refused;
                                id_known = true;
                            }
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
        if let Some(error) = refused {
            self.refuse_conn(idx, &error);
        } else if let Some(why) = failure {
            self.fail_conn(idx, &why);
        } else if release {
            self.close_pinned(idx);
        } else if tls_flush {
            // Handshake messages or alerts rustls wants to send.
            self.flush(idx);
        }
        self.blocking_answered(idx);
        if id_known {
            self.node_id_known(idx);
        }
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

    /// Take connection `idx` out of every table that knows it (poller,
    /// pins or the shared pool, blocking pool, clock, its client), leaving
    /// its slot free; the caller decides what its owed replies become.
    pub(super) fn take_conn(&mut self, idx: usize) -> Option<super::Conn> {
        let mut conn = self.conns.get_mut(idx).and_then(|c| c.take())?;
        let _ = self.registry.deregister(&mut conn.stream);
        match conn.pin {
            Some(pin) => {
                self.pinned.remove(&pin);
            }
            None => {
                self.shared.remove(&conn.addr, &conn.purpose());
            }
        }
        self.blocking_closed(&conn, idx);
        self.forget_conn(idx, conn.owner.as_ref());
        self.free.push(idx);
        Some(conn)
    }

    /// Close a transaction's dedicated connection (its WATCHes die with it).
    pub(super) fn close_pinned(&mut self, idx: usize) {
        let Some(mut conn) = self.take_conn(idx) else {
            return;
        };
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
    pub(super) fn fail_conn(&mut self, idx: usize, why: &str) {
        let Some(mut conn) = self.take_conn(idx) else {
            return;
        };
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
}
