//! Nodes busy with a long script.
//!
//! A script (or function) that runs past the node's `busy-reply-threshold`
//! makes Redis answer every other client `-BUSY …` until it ends or is
//! killed. Through the proxy, the other clients' commands for that node
//! would instead queue behind the script on the shared connection and wait
//! for `op_timeout`. So when the oldest command on a shared connection is a
//! script that has been running a while, the worker asks the node on a
//! connection of its own (a `PING`, sent like `SCRIPT KILL`); if the node
//! answers `-BUSY`, new commands for it get that same reply at once, as
//! direct clients do, until the node answers anything else.

use super::{ClientShared, Delivery, Notify, Request, Target, WHOLE};
use crate::codec;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A script older than this at the head of a connection gets its node probed.
const PROBE_AFTER: Duration = Duration::from_millis(100);
/// At most one probe per node this often; a busy node is probed on until it
/// answers something else.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A probe waits this long for the node (Redis answers it only once the
/// script passes its busy-reply-threshold, 5 s by default).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// How far down a connection's owed commands to look for a script: one
/// pipelined read's worth; deeper, a slow node is the likelier cause.
const SCRIPT_WITHIN: usize = 64;

/// Node identity: (cluster index, address).
type Node = (usize, String);

pub(super) struct NoWake;
impl Notify for NoWake {
    fn notify(&self) {}
}

/// What every worker of a proxy knows of busy nodes. Each Envoy worker has
/// its own connections; a script started through one keeps its node busy
/// for the clients of all, whose commands would otherwise wait `op_timeout`
/// on their own worker's connections.
#[derive(Default)]
pub struct SharedBusy {
    /// Some node is busy (fast check for every command).
    any_busy: AtomicBool,
    /// Some node is busy or some worker has a probe in flight: replies on
    /// shared connections matter then.
    watching: AtomicBool,
    inner: Mutex<SharedInner>,
}

#[derive(Default)]
struct SharedInner {
    /// Busy nodes and the `-BUSY` reply they gave.
    busy: HashMap<Node, Vec<u8>>,
    /// When the node last answered something other than `-BUSY`: an older
    /// probe's `-BUSY` is stale then.
    cleared: HashMap<Node, Instant>,
    probes_in_flight: usize,
}

impl SharedBusy {
    /// Some busy node's `-BUSY` reply, if any node is busy.
    pub fn any(&self) -> Option<Vec<u8>> {
        if !self.any_busy.load(Ordering::Acquire) {
            return None;
        }
        self.inner.lock().busy.values().next().cloned()
    }

    fn publish(&self, inner: &mut SharedInner) {
        if inner.busy.is_empty() && inner.probes_in_flight == 0 {
            inner.cleared.clear();
        }
        self.any_busy
            .store(!inner.busy.is_empty(), Ordering::Release);
        self.watching.store(
            !inner.busy.is_empty() || inner.probes_in_flight > 0,
            Ordering::Release,
        );
    }
}

/// One worker's probes of nodes that may be busy, and its view of
/// [`SharedBusy`].
pub struct BusyNodes {
    shared: Arc<SharedBusy>,
    /// Probes in flight, by their sequence number, with when they were sent.
    probes: HashMap<u64, (Node, Instant)>,
    last_probe: HashMap<Node, Instant>,
    next_seq: u64,
    /// Probe replies land here (the worker reads them; nobody is woken).
    mailbox: Arc<ClientShared>,
    delivered: Vec<Delivery>,
}

impl Default for BusyNodes {
    fn default() -> Self {
        BusyNodes::new(Arc::default())
    }
}

/// `EVAL*`, `EVALSHA*`, `FCALL*`: commands that can keep a node busy.
pub fn is_script(data: &[u8]) -> bool {
    let mut args = Vec::new();
    if codec::scan_request(data, &mut args).is_err() {
        return false;
    }
    let Some(name) = args.first().and_then(|r| data.get(r.clone())) else {
        return false;
    };
    [
        b"eval".as_slice(),
        b"evalsha",
        b"eval_ro",
        b"evalsha_ro",
        b"fcall",
        b"fcall_ro",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

impl BusyNodes {
    pub fn new(shared: Arc<SharedBusy>) -> BusyNodes {
        BusyNodes {
            shared,
            probes: HashMap::new(),
            last_probe: HashMap::new(),
            next_seq: 0,
            mailbox: ClientShared::new(Box::new(NoWake)),
            delivered: Vec::new(),
        }
    }

    /// Whether any node is busy (then the worker keeps ticking, to probe it).
    pub fn any_busy(&self) -> bool {
        self.shared.any_busy.load(Ordering::Acquire)
    }

    /// The `-BUSY` reply for a command to this node, if it is busy.
    pub fn reply_for(&self, cluster: usize, addr: &str) -> Option<Vec<u8>> {
        if !self.shared.any_busy.load(Ordering::Acquire) {
            return None;
        }
        let inner = self.shared.inner.lock();
        inner.busy.get(&(cluster, addr.to_string())).cloned()
    }

    /// A reply from the node on a shared connection tells whether it is
    /// busy now.
    pub fn saw_reply(&mut self, cluster: usize, addr: &str, reply: &[u8], now: Instant) {
        let busy_reply = reply.starts_with(b"-BUSY");
        if !busy_reply && !self.shared.watching.load(Ordering::Acquire) {
            return;
        }
        let node = (cluster, addr.to_string());
        let mut inner = self.shared.inner.lock();
        if busy_reply {
            inner.busy.insert(node, reply.to_vec());
        } else {
            inner.busy.remove(&node);
            inner.cleared.insert(node, now);
        }
        self.shared.publish(&mut inner);
    }

    /// Should the node be probed, given the commands owed a reply on one
    /// of its shared connections, oldest first (`arrived` is when the
    /// oldest arrived)? The script need not be the oldest: Redis holds back
    /// the replies of the commands pipelined before it on the same
    /// connection until the script ends.
    pub fn wants_probe<'a>(
        &self,
        cluster: usize,
        addr: &str,
        owed: impl Iterator<Item = &'a Request>,
        arrived: Instant,
        now: Instant,
    ) -> bool {
        now.duration_since(arrived) >= PROBE_AFTER
            && self.may_probe(&(cluster, addr.to_string()), now)
            && owed.take(SCRIPT_WITHIN).any(|r| is_script(&r.data))
    }

    fn may_probe(&self, node: &Node, now: Instant) -> bool {
        !self.probes.values().any(|(n, _)| n == node)
            && self
                .last_probe
                .get(node)
                .is_none_or(|t| now.duration_since(*t) >= PROBE_EVERY)
    }

    /// Busy nodes due for another probe from this worker (to see them free
    /// again).
    pub fn due(&self, now: Instant) -> Vec<Node> {
        if !self.shared.any_busy.load(Ordering::Acquire) {
            return Vec::new();
        }
        let inner = self.shared.inner.lock();
        inner
            .busy
            .keys()
            .filter(|n| self.may_probe(n, now))
            .cloned()
            .collect()
    }

    /// A `PING` for the node on a connection of its own.
    pub fn probe(
        &mut self,
        cluster: usize,
        addr: &str,
        pin: u64,
        resp3: bool,
        now: Instant,
    ) -> Request {
        self.next_seq += 1;
        let node = (cluster, addr.to_string());
        self.last_probe.insert(node.clone(), now);
        self.probes.insert(self.next_seq, (node, now));
        {
            let mut inner = self.shared.inner.lock();
            inner.probes_in_flight += 1;
            self.shared.publish(&mut inner);
        }
        let target = Target::Node {
            addr: addr.to_string(),
            slot: 0,
            asking: false,
        };
        let data = codec::command(&[b"PING"]);
        Request::new(
            self.mailbox.clone(),
            self.next_seq,
            WHOLE,
            cluster,
            target,
            data,
            now + PROBE_TIMEOUT,
        )
        .resp3(resp3)
        .pinned(pin, true, 0)
    }

    /// Take in the answers to probes.
    pub fn collect(&mut self) {
        if self.probes.is_empty() {
            if !self.shared.any_busy.load(Ordering::Acquire) {
                self.last_probe.clear();
            }
            return;
        }
        self.mailbox.take(&mut self.delivered);
        if self.delivered.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.shared.inner.lock();
        for d in self.delivered.drain(..) {
            let Some((node, sent)) = self.probes.remove(&d.seq) else {
                continue;
            };
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            if !d.reply.starts_with(b"-BUSY") {
                inner.busy.remove(&node);
                inner.cleared.insert(node, now);
            } else if inner.cleared.get(&node).is_none_or(|c| *c < sent) {
                inner.busy.insert(node, d.reply);
            }
        }
        self.shared.publish(&mut inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_recognised_by_name() {
        assert!(is_script(&codec::command(&[b"EVAL", b"x", b"0"])));
        assert!(is_script(&codec::command(&[b"fcall_ro", b"f", b"0"])));
        assert!(!is_script(&codec::command(&[b"GET", b"k"])));
        assert!(!is_script(b"garbage"));
    }

    #[test]
    fn busy_until_the_node_answers_otherwise() {
        let mut b = BusyNodes::default();
        assert!(b.reply_for(0, "n:1").is_none());
        let busy = b"-BUSY Redis is busy running a script.\r\n";
        let now = Instant::now();
        let p = b.probe(0, "n:1", 1, false, now);
        p.client.deliver(p.seq, WHOLE, busy.to_vec());
        b.collect();
        assert_eq!(b.reply_for(0, "n:1").as_deref(), Some(&busy[..]));
        assert!(b.reply_for(0, "n:2").is_none());
        assert!(b.reply_for(1, "n:1").is_none());
        assert!(b.due(now).is_empty(), "probed just now");
        assert_eq!(b.due(now + PROBE_EVERY), vec![(0, "n:1".to_string())]);
        b.saw_reply(0, "n:1", b"+OK\r\n", now);
        assert!(b.reply_for(0, "n:1").is_none());
        b.saw_reply(0, "n:2", busy, now);
        assert!(
            b.reply_for(0, "n:2").is_some(),
            "a -BUSY on a shared connection"
        );
    }

    #[test]
    fn every_worker_sees_what_one_found() {
        let shared = Arc::new(SharedBusy::default());
        let (mut a, mut b) = (
            BusyNodes::new(shared.clone()),
            BusyNodes::new(shared.clone()),
        );
        let now = Instant::now();
        let p = a.probe(0, "n:1", 1, false, now);
        p.client.deliver(p.seq, WHOLE, b"-BUSY busy\r\n".to_vec());
        a.collect();
        assert!(b.reply_for(0, "n:1").is_some(), "the other worker");
        assert_eq!(shared.any().as_deref(), Some(&b"-BUSY busy\r\n"[..]));
        assert_eq!(b.due(now), vec![(0, "n:1".to_string())], "b probes too");
        b.saw_reply(0, "n:1", b"+OK\r\n", now);
        assert!(a.reply_for(0, "n:1").is_none());
        assert!(shared.any().is_none());
    }

    #[test]
    fn probes_go_to_old_scripts_one_at_a_time() {
        let mut b = BusyNodes::default();
        let now = Instant::now();
        let old = now - Duration::from_secs(1);
        let mut script = BusyNodes::default().probe(0, "n:1", 1, false, now);
        script.data = codec::command(&[b"EVAL", b"while true do end", b"0"]);
        let get = BusyNodes::default().probe(0, "n:1", 1, false, now);
        let one = |r| std::iter::once(r);
        assert!(b.wants_probe(0, "n:1", one(&script), old, now));
        assert!(
            b.wants_probe(0, "n:1", [&get, &script].into_iter(), old, now),
            "a script behind a command whose reply the node holds back"
        );
        assert!(!b.wants_probe(0, "n:1", one(&get), old, now), "no script");
        assert!(
            !b.wants_probe(0, "n:1", one(&script), now, now),
            "too young"
        );
        let p = b.probe(0, "n:1", 7, false, now);
        assert_eq!(p.pin, Some(7));
        assert!(
            !b.wants_probe(0, "n:1", one(&script), old, now),
            "probe in flight"
        );
        p.client.deliver(p.seq, WHOLE, b"-BUSY busy\r\n".to_vec());
        b.collect();
        assert!(b.reply_for(0, "n:1").is_some());
        assert!(
            !b.wants_probe(0, "n:1", one(&script), old, now),
            "probed just now"
        );
        let p = b.probe(0, "n:1", 9, false, now);
        p.client.deliver(p.seq, WHOLE, b"+PONG\r\n".to_vec());
        b.collect();
        assert!(b.reply_for(0, "n:1").is_none());
    }

    #[test]
    fn a_busy_answer_older_than_the_node_being_free_is_ignored() {
        let mut b = BusyNodes::default();
        let sent = Instant::now();
        let p = b.probe(0, "n:1", 1, false, sent);
        // The script ended (its reply came) before the probe's answer.
        b.saw_reply(
            0,
            "n:1",
            b"-ERR script killed\r\n",
            sent + Duration::from_millis(5),
        );
        p.client.deliver(p.seq, WHOLE, b"-BUSY busy\r\n".to_vec());
        b.collect();
        assert!(b.reply_for(0, "n:1").is_none());
    }
}
