//! Transactions: `WATCH`, `MULTI` … `EXEC`, `DISCARD`, `UNWATCH`.
//!
//! A transaction runs on a connection of its own (pinned, opened on first
//! use) to the master of its slot, so the node keeps its `WATCH`es and its
//! `MULTI` state exactly as for a client of its own. Its slot (and cluster)
//! is fixed by its first key: `WATCH`'s, or the first keyed command inside
//! `MULTI`; a key of another slot or cluster later is refused by the proxy.
//!
//! Forwarded live, like a client talking to the node itself: from the moment
//! the slot is known, every command inside `MULTI` goes to the node at once
//! and the node's answer (`+QUEUED`, or its queue-time refusal such as `OOM`
//! under `maxmemory`) is the client's. `MULTI` itself is answered `+OK` by
//! the proxy (a node's `MULTI` cannot fail) and goes, its reply swallowed,
//! in front of the first command sent after it. The keyless commands allowed
//! inside `MULTI` (`PING`, `ECHO` …) that come before the slot is known are
//! answered `+QUEUED` by the proxy and held the same way (the one difference
//! from a node: one under `OOM` refuses every command inside `MULTI`). An
//! `EXEC` with no key at all sends the held commands as one `MULTI … EXEC`
//! to any master.
//!
//! The proxy's own refusals inside `MULTI` (unknown command, arity, keys in
//! another slot or cluster, commands that cannot run through the proxy)
//! mark the transaction aborted as a node would: `EXEC` answers `EXECABORT`
//! and the node's `MULTI` is discarded (with its connection).
//!
//! Lost nodes and moved slots abort, never replay. When the node answers
//! `MOVED`/`ASK` to a transaction's command, it has flagged the transaction
//! itself (Redis does, at queue time) and `EXEC` would answer `EXECABORT`
//! (at `EXEC`, it discards it): the client gets a clear error naming the
//! slot instead of a redirection it cannot follow, the loop refreshes its
//! slot map, and the client's next attempt goes to the new owner. When the
//! connection breaks or one of its commands times out, the node drops the
//! transaction with the connection; the transaction's later commands, and
//! its `EXEC`, get an error and are never sent on a fresh connection, where
//! they would run outside `MULTI` and `WATCH`. Replaying `MULTI` and the
//! queue on the new owner was not chosen: `WATCH` cannot move between nodes
//! (a key migrated away was deleted on its old node, which counts as a
//! change anyway), and a client that saw `+QUEUED` must not see a
//! different answer from the replay.

use super::{key_routes, keys, Session, NEXT_ID};
use crate::codec;
use crate::command;
use crate::upstream::{Part, Target};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Where a keyed command goes: (cluster, slot, bytes to send).
type Located = (usize, u16, Vec<u8>);

/// What the transaction's node has seen so far on its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    /// Nothing: the connection is not opened yet.
    Unused,
    /// `WATCH`es, no `MULTI`.
    Watching,
    /// `MULTI` and the commands queued since.
    Multi,
}

/// A transaction in progress (`WATCH` and/or `MULTI`).
pub(super) struct Txn {
    /// Id of the dedicated upstream connection.
    pin: u64,
    cluster: Option<usize>,
    slot: Option<u16>,
    pub(super) multi: bool,
    watched: bool,
    /// The proxy refused a command while queueing: EXEC answers EXECABORT.
    aborted: bool,
    node: NodeState,
    /// Bytes for the node not sent yet, which go in front of the next
    /// command sent: `MULTI`, then the keyless commands queued before the
    /// slot was known (the client already has their `+QUEUED`).
    held: Vec<u8>,
    /// Replies `held` will get (swallowed).
    held_replies: u32,
    /// Commands queued since `MULTI` (held or sent).
    count: u32,
    /// `PUBLISH`es queued, by index: `EXEC`'s reply gets the proxy's
    /// counts of receivers.
    publishes: Vec<(u32, super::publish::QueuedPublish)>,
}

/// Bytes for a transaction's connection and how to send them.
#[derive(Debug, PartialEq)]
pub(super) struct Outbound {
    pin: u64,
    cluster: Option<usize>,
    slot: Option<u16>,
    data: Vec<u8>,
    /// Replies before the command's own that are the held commands'.
    swallow: u32,
    /// The first request of the connection (opens it); every later one
    /// must find it open.
    opens: bool,
}

/// What `EXEC` does.
#[derive(Debug, PartialEq)]
pub(super) enum ExecPlan {
    NotInMulti,
    /// The proxy refused a queued command: `EXECABORT`.
    Abort,
    /// Nothing queued, nothing watched: an empty array.
    Empty,
    /// Send (the held commands and) `EXEC`; the node's reply is the client's.
    Send(Outbound),
}

/// Why a key cannot join the transaction.
#[derive(Debug, PartialEq)]
pub(super) enum Conflict {
    /// The transaction's keys are in this other cluster.
    Cluster(usize),
    /// Another slot.
    Slot,
}

impl Txn {
    pub(super) fn new(pin: u64) -> Txn {
        Txn {
            pin,
            cluster: None,
            slot: None,
            multi: false,
            watched: false,
            aborted: false,
            node: NodeState::Unused,
            held: Vec::new(),
            held_replies: 0,
            count: 0,
            publishes: Vec::new(),
        }
    }

    fn begin_multi(&mut self) {
        self.multi = true;
        self.held.extend(codec::command(&[b"MULTI"]));
        self.held_replies += 1;
    }

    /// A key of `cluster`/`slot` may join (and then fixes where the
    /// transaction runs)?
    fn conflict(&self, cluster: usize, slot: u16) -> Option<Conflict> {
        if let Some(c) = self.cluster.filter(|&c| c != cluster) {
            return Some(Conflict::Cluster(c));
        }
        self.slot.filter(|&s| s != slot).map(|_| Conflict::Slot)
    }

    fn settle(&mut self, cluster: usize, slot: u16) {
        self.cluster = Some(cluster);
        self.slot = Some(slot);
    }

    /// `data` (after whatever is held) for the node.
    fn for_node(&mut self, data: &[u8]) -> Outbound {
        let mut bytes = std::mem::take(&mut self.held);
        bytes.extend_from_slice(data);
        let opens = self.node == NodeState::Unused;
        self.node = if self.multi {
            NodeState::Multi
        } else {
            NodeState::Watching
        };
        Outbound {
            pin: self.pin,
            cluster: self.cluster,
            slot: self.slot,
            data: bytes,
            swallow: std::mem::take(&mut self.held_replies),
            opens,
        }
    }

    /// A command queued inside MULTI: sent now when the slot is known,
    /// else held (`None`: the proxy answers `+QUEUED`).
    fn queue(&mut self, data: &[u8]) -> Option<Outbound> {
        self.count += 1;
        if self.slot.is_some() {
            return Some(self.for_node(data));
        }
        self.held.extend_from_slice(data);
        self.held_replies += 1;
        None
    }

    fn exec_plan(&mut self) -> ExecPlan {
        if !self.multi {
            ExecPlan::NotInMulti
        } else if self.aborted {
            ExecPlan::Abort
        } else if self.count == 0 && self.node == NodeState::Unused {
            ExecPlan::Empty
        } else {
            ExecPlan::Send(self.for_node(&codec::command(&[b"EXEC"])))
        }
    }

    /// What to send, on dropping the transaction, to a node that has seen
    /// some of it (the connection closes after its reply).
    fn release(&mut self) -> Option<Outbound> {
        let cmd: &[u8] = match self.node {
            NodeState::Unused => return None,
            NodeState::Watching => b"UNWATCH",
            NodeState::Multi => b"DISCARD",
        };
        self.held.clear();
        self.held_replies = 0;
        Some(self.for_node(&codec::command(&[cmd])))
    }
}

/// The node's answer to a transaction's command as the client gets it: a
/// redirection (the node flagged or discarded the transaction) becomes an
/// error that says so.
pub(super) fn node_reply(part: Part, reply: Vec<u8>) -> Vec<u8> {
    let Some(slot) = codec::error_text(&reply).and_then(redirected_slot) else {
        return reply;
    };
    let msg = if part == Part::Exec {
        format!("EXECABORT Transaction discarded because slot {slot} moved to another node; run it again")
    } else {
        format!("ERR slot {slot} is moving to another node: this transaction cannot run (EXEC answers EXECABORT); run it again")
    };
    codec::error(&msg)
}

/// The slot of a `MOVED`/`ASK` error text.
fn redirected_slot(err: &[u8]) -> Option<u16> {
    let rest = err
        .strip_prefix(b"MOVED ")
        .or_else(|| err.strip_prefix(b"ASK "))?;
    let digits = rest.split(|&b| b == b' ').next()?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl Session {
    pub(super) fn in_multi(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.multi)
    }

    /// Commands queued since `MULTI` (`CLIENT LIST` `multi=`); `None`
    /// outside `MULTI`.
    pub(super) fn multi_count(&self) -> Option<u32> {
        self.txn.as_ref().filter(|t| t.multi).map(|t| t.count)
    }

    /// A refusal inside MULTI: EXEC will answer EXECABORT.
    pub(super) fn abort_multi(&mut self) {
        if let Some(t) = self.txn.as_mut().filter(|t| t.multi) {
            t.aborted = true;
        }
    }

    /// MULTI / EXEC / DISCARD / WATCH / UNWATCH.
    pub(super) fn transaction(
        &mut self,
        cmd: &command::Command,
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let in_multi = self.in_multi();
        match cmd.name {
            "multi" => {
                if in_multi {
                    return Err(codec::error("ERR MULTI calls can not be nested"));
                }
                self.txn_mut().begin_multi();
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
                let plan = match self.txn.as_mut() {
                    Some(t) => t.exec_plan(),
                    None => ExecPlan::NotInMulti,
                };
                match plan {
                    ExecPlan::NotInMulti => {
                        return Err(codec::error("ERR EXEC without MULTI"));
                    }
                    ExecPlan::Abort => {
                        self.end_txn(now);
                        return Err(codec::error(
                            "EXECABORT Transaction discarded because of previous errors.",
                        ));
                    }
                    ExecPlan::Empty => {
                        self.txn = None;
                        self.reply_now(b"*0\r\n".to_vec());
                    }
                    ExecPlan::Send(out) => {
                        let publishes = self.txn.take().map(|t| t.publishes).unwrap_or_default();
                        let seq = self.push_slot();
                        self.exec_publishes(seq, publishes, out.cluster, out.slot);
                        self.send_pinned(seq, Part::Exec, out, true, now);
                        // Later commands travel on shared connections and
                        // could overtake EXEC on its own connection: hold
                        // them until EXEC's reply is in.
                        self.barrier = Some(seq);
                    }
                }
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
                self.txn_conflict(cmd.name, cluster, slot)?;
                let t = self.txn_mut();
                t.settle(cluster, slot);
                t.watched = true;
                let out = t.for_node(&data);
                let seq = self.push_slot();
                self.send_pinned(seq, Part::Queued, out, false, now);
            }
            _ => {
                // UNWATCH (inside MULTI it is queued like any command):
                // forget the watches with the connection.
                self.end_txn(now);
                self.reply_now(codec::simple("OK"));
            }
        }
        Ok(())
    }

    fn txn_mut(&mut self) -> &mut Txn {
        self.txn
            .get_or_insert_with(|| Txn::new(NEXT_ID.fetch_add(1, Ordering::Relaxed)))
    }

    /// Inside MULTI: check a command, then send it to the node (whose
    /// answer is the client's) or hold it until the slot is known.
    pub(super) fn queue_in_multi(
        &mut self,
        cmd: &command::Command,
        frame: &[u8],
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        if cmd.flags & command::NO_MULTI != 0 {
            return Err(codec::error("ERR Command not allowed inside a transaction"));
        }
        // Publishing runs on the transaction's node like any write (the
        // cluster bus spreads it); subscribing cannot.
        if cmd.flags & command::PUBSUB != 0 && !matches!(cmd.name, "publish" | "spublish") {
            return Err(codec::error(&format!(
                "ERR '{}' is not allowed in a transaction",
                cmd.name
            )));
        }
        let data = match self.locate(cmd, frame, args)? {
            Some((cluster, slot, data)) => {
                self.txn_conflict(cmd.name, cluster, slot)?;
                self.txn_mut().settle(cluster, slot);
                data
            }
            // Keyless commands whose answer is the same on any node
            // (scripts and functions without keys run on any master).
            None if matches!(
                cmd.name,
                "ping"
                    | "echo"
                    | "time"
                    | "publish"
                    | "lastsave"
                    | "unwatch"
                    | "select"
                    | "eval"
                    | "eval_ro"
                    | "fcall"
                    | "fcall_ro"
            ) =>
            {
                keys::encode(frame, args)
            }
            None => {
                return Err(codec::error(&format!(
                    "ERR '{}' cannot be used inside a transaction through the proxy",
                    cmd.name
                )))
            }
        };
        if let Some(p) = self.queued_publish(cmd.name, args) {
            let t = self.txn_mut();
            t.publishes.push((t.count, p));
        }
        match self.txn_mut().queue(&data) {
            Some(out) => {
                let seq = self.push_slot();
                self.send_pinned(seq, Part::Queued, out, false, now);
            }
            None => self.reply_now(codec::simple("QUEUED")),
        }
        Ok(())
    }

    /// Drop the transaction; a node that has seen part of it gets DISCARD
    /// or UNWATCH (nobody waits for the reply), then its connection closes.
    pub(super) fn end_txn(&mut self, now: Instant) {
        if let Some(out) = self.txn.take().and_then(|mut t| t.release()) {
            self.send_pinned(0, Part::Discard, out, true, now);
        }
    }

    /// A transaction's keys must share one cluster and one slot.
    fn txn_conflict(&self, command: &str, cluster: usize, slot: u16) -> Result<(), Vec<u8>> {
        match self.txn.as_ref().and_then(|t| t.conflict(cluster, slot)) {
            None => Ok(()),
            Some(Conflict::Cluster(c)) => Err(self.cross_cluster(command, c, cluster)),
            Some(Conflict::Slot) => Err(codec::error(
                "CROSSSLOT Keys in request don't hash to the same slot (a transaction's keys must share one slot)",
            )),
        }
    }

    /// The slot and cluster of a command's keys, with the bytes to send.
    pub(super) fn locate(
        &self,
        cmd: &command::Command,
        frame: &[u8],
        args: &[&[u8]],
    ) -> Result<Option<Located>, Vec<u8>> {
        let mut key_args = Vec::new();
        command::key_indices(cmd, args, &mut key_args).map_err(|m| codec::error(&m))?;
        if key_args.is_empty() {
            return Ok(None);
        }
        let routes = key_routes(&self.proxy, args, &key_args)?;
        let hashtags = self.proxy.config.settings.enable_hashtagging;
        let slots = keys::key_slots(args, &key_args, &routes, hashtags);
        let one = keys::single(&routes, &slots).map_err(|e| self.single_error(cmd.name, e))?;
        let data = keys::encode_keyed(frame, args, &key_args, &routes);
        Ok(Some((one.cluster, one.slot, data)))
    }

    /// Queue `out` on the transaction's connection, closed after this
    /// reply when `release`.
    fn send_pinned(&mut self, seq: u64, part: Part, out: Outbound, release: bool, now: Instant) {
        let cluster = out
            .cluster
            .or_else(|| self.proxy.default_cluster())
            .unwrap_or(0);
        let target = match out.slot {
            Some(slot) => Target::Slot { slot, read: false },
            None => Target::AnyMaster,
        };
        let deadline = self.deadline_from(now);
        let mut req = self
            .request(seq, part, (cluster, target), out.data, deadline)
            .pinned(out.pin, release, out.swallow);
        if !out.opens {
            req = req.continues_pin();
        }
        self.batch.push(req);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Vec<u8> {
        let w: Vec<&[u8]> = words.iter().map(|s| s.as_bytes()).collect();
        codec::command(&w)
    }

    fn cat(parts: &[&[&str]]) -> Vec<u8> {
        parts.iter().flat_map(|p| cmd(p)).collect()
    }

    /// MULTI and keyless commands are held until the first key fixes the
    /// slot; they then go in front of it (replies swallowed), and every
    /// later command goes alone on the connection it opened.
    #[test]
    fn held_commands_go_in_front_of_the_first_keyed_one() {
        let mut t = Txn::new(9);
        t.begin_multi();
        assert_eq!(t.queue(&cmd(&["PING"])), None);
        assert_eq!(t.conflict(0, 5), None);
        t.settle(0, 5);
        let first = t.queue(&cmd(&["SET", "k", "v"])).unwrap();
        assert_eq!(
            first,
            Outbound {
                pin: 9,
                cluster: Some(0),
                slot: Some(5),
                data: cat(&[&["MULTI"], &["PING"], &["SET", "k", "v"]]),
                swallow: 2,
                opens: true,
            }
        );
        let next = t.queue(&cmd(&["PING"])).unwrap();
        assert_eq!(
            (next.data, next.swallow, next.opens),
            (cmd(&["PING"]), 0, false)
        );
        assert_eq!(t.conflict(0, 6), Some(Conflict::Slot));
        assert_eq!(t.conflict(1, 5), Some(Conflict::Cluster(0)));
        match t.exec_plan() {
            ExecPlan::Send(o) => {
                assert_eq!((o.data, o.swallow, o.opens), (cmd(&["EXEC"]), 0, false))
            }
            other => panic!("{other:?}"),
        }
    }

    /// After WATCH the slot is known: MULTI goes with the first command.
    #[test]
    fn after_watch_multi_goes_with_the_first_command_or_exec() {
        let mut t = Txn::new(1);
        t.settle(0, 7);
        t.watched = true;
        let w = t.for_node(&cmd(&["WATCH", "k"]));
        assert_eq!(
            (w.data, w.swallow, w.opens),
            (cmd(&["WATCH", "k"]), 0, true)
        );
        t.begin_multi();
        match t.exec_plan() {
            ExecPlan::Send(o) => {
                assert_eq!(
                    (o.data, o.swallow, o.opens),
                    (cat(&[&["MULTI"], &["EXEC"]]), 1, false)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exec_plans() {
        let mut t = Txn::new(1);
        assert_eq!(t.exec_plan(), ExecPlan::NotInMulti);
        t.begin_multi();
        assert_eq!(t.exec_plan(), ExecPlan::Empty);
        // Only keyless commands: one batch to any master.
        assert_eq!(t.queue(&cmd(&["ECHO", "a"])), None);
        match t.exec_plan() {
            ExecPlan::Send(o) => assert_eq!(
                o,
                Outbound {
                    pin: 1,
                    cluster: None,
                    slot: None,
                    data: cat(&[&["MULTI"], &["ECHO", "a"], &["EXEC"]]),
                    swallow: 2,
                    opens: true,
                }
            ),
            other => panic!("{other:?}"),
        }
        t.aborted = true;
        assert_eq!(t.exec_plan(), ExecPlan::Abort);
    }

    /// Dropping a transaction tells the node only what it has seen.
    #[test]
    fn release_matches_what_the_node_has_seen() {
        let mut t = Txn::new(1);
        t.begin_multi();
        t.queue(&cmd(&["PING"]));
        assert_eq!(t.release(), None, "nothing sent yet");
        let mut t = Txn::new(1);
        t.settle(0, 1);
        t.for_node(&cmd(&["WATCH", "k"]));
        let r = t.release().unwrap();
        assert_eq!((r.data, r.opens), (cmd(&["UNWATCH"]), false));
        let mut t = Txn::new(1);
        t.settle(0, 1);
        t.begin_multi();
        t.queue(&cmd(&["SET", "k", "v"]));
        t.queue(&cmd(&["GET", "k"]));
        let r = t.release().unwrap();
        assert_eq!((r.data, r.swallow, r.opens), (cmd(&["DISCARD"]), 0, false));
    }

    /// Through a session: a prefix route's transaction goes to its cluster
    /// with the prefix stripped, MULTI in front of the first command only;
    /// the node's answers are the client's, a redirection at EXEC becomes
    /// EXECABORT.
    #[test]
    fn a_session_forwards_queued_commands_with_their_route() {
        use crate::session::tests::{recorded, reply, Client, ROUTES};
        let (mut s, proxy, rec, _) = recorded(ROUTES);
        let b = proxy.cluster_index("b").unwrap();
        let mut c = Client::default();
        s.on_data(b"MULTI\r\nSET r:{x}a 1\r\nGET r:{x}a\r\n", &mut c);
        let reqs = rec.take();
        let sent: Vec<(usize, Part, Vec<u8>)> = reqs
            .iter()
            .map(|r| (r.cluster, r.part, r.data.clone()))
            .collect();
        assert_eq!(
            sent,
            vec![
                (b, Part::Queued, cat(&[&["MULTI"], &["SET", "{x}a", "1"]])),
                (b, Part::Queued, cmd(&["GET", "{x}a"])),
            ]
        );
        reply(&reqs[1], b"-OOM command not allowed\r\n");
        reply(&reqs[0], b"+QUEUED\r\n");
        s.on_scheduled(&mut c);
        assert_eq!(
            c.out,
            b"+OK\r\n+QUEUED\r\n-OOM command not allowed\r\n".to_vec()
        );
        s.on_data(b"EXEC\r\nPING\r\n", &mut c);
        let exec = rec.take();
        assert_eq!(exec.len(), 1);
        assert_eq!(
            (exec[0].part, exec[0].data.clone()),
            (Part::Exec, cmd(&["EXEC"]))
        );
        reply(&exec[0], b"-MOVED 5 127.0.0.1:7101\r\n");
        s.on_scheduled(&mut c);
        let text = String::from_utf8(c.out).unwrap();
        assert!(
            text.ends_with("-EXECABORT Transaction discarded because slot 5 moved to another node; run it again\r\n+PONG\r\n"),
            "{text}"
        );
    }

    #[test]
    fn redirections_become_transaction_errors() {
        let moved = b"-MOVED 3999 127.0.0.1:7002\r\n".to_vec();
        let q = node_reply(Part::Queued, moved.clone());
        assert!(q.starts_with(b"-ERR slot 3999 is moving"), "{q:?}");
        let e = node_reply(Part::Exec, b"-ASK 12 :7001\r\n".to_vec());
        assert!(
            e.starts_with(b"-EXECABORT Transaction discarded because slot 12"),
            "{e:?}"
        );
        for other in [
            &b"+QUEUED\r\n"[..],
            b"-OOM command not allowed\r\n",
            b"*0\r\n",
            b"-MOVEDX\r\n",
        ] {
            assert_eq!(node_reply(Part::Queued, other.to_vec()), other.to_vec());
        }
    }
}
