//! session, timed: one client connection against a model of its upstream
//! loop, on a clock the check moves itself.
//!
//! The model keeps the loop's contract and nothing more: every request
//! that is not a mirrored copy is answered exactly once, at a moment the
//! fuzzer picks, and at the latest at its deadline (with the loop's timeout
//! error). Topologies come and go (none, no master, one, three masters).
//! The invariant: no command stays unanswered once its deadline
//! (arrival + `op_timeout`) has passed, and in the end every request gets
//! its reply, in order.

use super::{chunk_len, frames, limit_of, quiet, replies, Client, NoopNotify, CONFIGS};
use envoy_redis_cluster::clock::{Clock, ManualClock};
use envoy_redis_cluster::codec::{self, Scan};
use envoy_redis_cluster::config::Config;
use envoy_redis_cluster::proxy::Proxy;
use envoy_redis_cluster::session::{Session, Upstream};
use envoy_redis_cluster::stats::Stats;
use envoy_redis_cluster::topology::{self, SlotMap};
use envoy_redis_cluster::upstream::Request;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The upstream loop's contract, with the fuzzer deciding when.
#[derive(Default)]
struct Model {
    inbox: Mutex<Vec<Request>>,
}

impl Upstream for Model {
    fn submit(&self, batch: &mut Vec<Request>) {
        match self.inbox.lock() {
            Ok(mut inbox) => inbox.append(batch),
            Err(_) => panic!("model inbox poisoned"),
        }
    }
}

/// Replies the model gives, by the low 3 bits of a schedule byte.
const REPLIES: [&[u8]; 8] = [
    b"+OK\r\n",
    b":1\r\n",
    b"$-1\r\n",
    b"$1\r\nv\r\n",
    b"*1\r\n$1\r\nv\r\n",
    b"-ERR model error\r\n",
    b"*2\r\n$1\r\n0\r\n*0\r\n",
    b"+PONG\r\n",
];

/// Topologies, in the order the schedule cycles through them (built once
/// per process).
fn topologies() -> &'static [SlotMap; 3] {
    static MAPS: OnceLock<[SlotMap; 3]> = OnceLock::new();
    MAPS.get_or_init(build_topologies)
}

fn build_topologies() -> [SlotMap; 3] {
    let three = b"*3\r\n\
        *3\r\n:0\r\n:5460\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n\
        *3\r\n:5461\r\n:10922\r\n*2\r\n$9\r\n127.0.0.1\r\n:7002\r\n\
        *3\r\n:10923\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7003\r\n";
    let three = match topology::parse_cluster_slots(three, "127.0.0.1:7001") {
        Ok(m) => m,
        Err(e) => panic!("model topology: {e:?}"),
    };
    [
        // Slots not assigned yet: CLUSTER SLOTS is empty.
        SlotMap::empty(),
        three,
        SlotMap::single_node("127.0.0.1:7001"),
    ]
}

struct Run {
    proxy: Arc<Proxy>,
    clusters: usize,
    model: Arc<Model>,
    clock: Arc<ManualClock>,
    op_timeout: Duration,
    session: Session,
    client: Client,
    /// Requests taken from the model's inbox, not answered yet.
    pending: Vec<Request>,
    topology: usize,
}

impl Run {
    /// Move submitted requests to `pending`; mirrored copies need no reply.
    fn collect(&mut self) {
        let batch = match self.model.inbox.lock() {
            Ok(mut inbox) => std::mem::take(&mut *inbox),
            Err(_) => panic!("model inbox poisoned"),
        };
        for r in batch {
            // Whatever the session sends a node is whole commands.
            let mut pos = 0;
            let mut ranges = Vec::new();
            while pos < r.data.len() {
                match codec::scan_request(&r.data[pos..], &mut ranges) {
                    Ok(Scan::Complete(n)) => pos += n,
                    other => panic!(
                        "request to a node is not whole commands: {other:?}: {:?}",
                        String::from_utf8_lossy(&r.data)
                    ),
                }
            }
            // A request held back until later (a subscription sent again
            // after a lost link) has op_timeout from then.
            let start = r
                .earliest()
                .map_or(self.clock.now(), |t| t.max(self.clock.now()));
            assert!(
                r.deadline <= start + self.op_timeout,
                "a request's deadline is later than op_timeout from when it may go: {:?} {:?}",
                String::from_utf8_lossy(&r.data),
                r.deadline.saturating_duration_since(self.clock.now())
            );
            if !r.is_mirror() {
                self.pending.push(r);
            }
        }
    }

    fn answer(&mut self, i: usize, reply: &[u8]) {
        if i < self.pending.len() {
            let r = self.pending.remove(i);
            r.client.deliver(r.seq, r.part, reply.to_vec());
        }
    }

    /// The loop's timeout: every request past its deadline is answered.
    fn expire(&mut self) {
        let now = self.clock.now();
        let ms = self.op_timeout.as_millis();
        let msg = format!("-ERR upstream timeout: no reply within {ms} ms\r\n");
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].deadline <= now {
                self.answer(i, msg.as_bytes());
            } else {
                i += 1;
            }
        }
    }

    /// After every event: hand replies over, take new requests, check.
    fn settle(&mut self) {
        self.collect();
        self.session.on_scheduled(&mut self.client);
        self.collect();
        // A blocking command is bounded by its own timeout, which the node
        // enforces (the commands after it are not parsed until it is
        // answered, so their time starts then).
        if let Some(arrived) = self
            .session
            .oldest_unanswered()
            .filter(|_| !self.session.blocked())
        {
            let late = self.clock.now().saturating_duration_since(arrived);
            assert!(
                late < self.op_timeout,
                "a command is unanswered {late:?} after it arrived (op_timeout {:?}); \
                 requests in flight: {}",
                self.op_timeout,
                self.pending.len()
            );
        }
    }

    fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        self.expire();
        self.settle();
    }

    /// Publish topology `t` (of [`topologies`]) for every cluster.
    fn set_topology(&mut self, t: usize) {
        let maps = topologies();
        self.topology = t % maps.len();
        for c in 0..self.clusters {
            self.proxy.publish_topology(c, maps[self.topology].clone());
        }
    }
}

/// `mode` bits 4-5: the topology at the start (none yet, no master, three
/// masters, one). Each schedule byte: chunk length (low 5 bits) and what
/// happens after the chunk (high 3 bits): nothing, answer the oldest or the
/// newest request in flight, let a third of op_timeout or all of it pass,
/// switch topology, answer everything, toggle the write-buffer watermark.
pub fn check(mode: u8, schedule: &[u8], payload: &[u8]) {
    let config = usize::from(mode & 3);
    let parsed = Config::from_json(CONFIGS[config].as_bytes()).expect("fuzz config parses");
    let op_timeout = parsed.settings.op_timeout;
    let clusters = parsed.clusters.len();
    let proxy = Proxy::inert(parsed, Arc::new(Stats::disabled(clusters)));
    let model = Arc::new(Model::default());
    let clock = ManualClock::new();
    let session = Session::with_upstream(
        proxy.clone(),
        Box::new(NoopNotify),
        Some(model.clone() as Arc<dyn Upstream>),
        Clock::Manual(clock.clone()),
    );
    let mut run = Run {
        proxy,
        clusters,
        model,
        clock,
        op_timeout,
        session,
        client: Client::default(),
        pending: Vec::new(),
        topology: 0,
    };
    match (mode >> 4) & 3 {
        0 => {}
        n => run.set_topology(usize::from(n) - 1),
    }

    let mut blocked = false;
    let mut pos = 0;
    let mut step = 0;
    while pos < payload.len() {
        let s = schedule[step % schedule.len()];
        step += 1;
        let end = payload.len().min(pos + chunk_len(s));
        run.session.on_data(&payload[pos..end], &mut run.client);
        pos = end;
        run.settle();
        let reply = REPLIES[usize::from(s & 7)];
        match s >> 5 {
            1 => run.answer(0, reply),
            2 => run.answer(run.pending.len().saturating_sub(1), reply),
            3 => run.advance(op_timeout / 3),
            4 => run.advance(op_timeout),
            5 => run.set_topology(run.topology + 1),
            6 => {
                while !run.pending.is_empty() {
                    run.answer(0, reply);
                }
            }
            7 => {
                blocked = !blocked;
                run.session.on_write_watermark(blocked, &mut run.client);
            }
            _ => {}
        }
        run.settle();
    }
    if blocked {
        run.session.on_write_watermark(false, &mut run.client);
    }
    run.session.on_end_stream(&mut run.client);
    run.settle();
    // Time passes, nothing else happens: everything is answered, and no
    // later than op_timeout after the last command arrived.
    let mut rounds = 0;
    while run.client.closes == 0 {
        rounds += 1;
        assert!(
            rounds <= 4 * (payload.len() + 2),
            "not closed after FIN: {} requests in flight, oldest command {:?} old",
            run.pending.len(),
            run.session
                .oldest_unanswered()
                .map(|t| run.clock.now().saturating_duration_since(t))
        );
        run.advance(op_timeout / 3);
    }
    run.session.on_close();
    run.session.on_destroy();

    let got = replies(&run.client.out);
    let (names, error_at_end) = frames(payload, limit_of(config));
    let owed = names.len() + usize::from(error_at_end);
    if got.len() != owed && !(got.len() < owed && quiet(payload)) {
        // Only QUIT ends a connection before every request is answered, or
        // a FIN while a blocking command waits on its node (Redis frees a
        // blocked client that closes).
        let last = got.len().checked_sub(1).and_then(|i| names.get(i));
        let blocked_at_fin = names.get(got.len()).is_some_and(|n| may_block(n));
        assert!(
            got.len() < owed && (last.is_some_and(|n| n == b"quit") || blocked_at_fin),
            "timed: {} replies for {owed} requests; last request {:?}",
            got.len(),
            last.map(|n| String::from_utf8_lossy(n).into_owned())
        );
    }
}

/// Commands that may wait on their node past `op_timeout` (`XREAD` and
/// `XREADGROUP` only with `BLOCK`, which the name alone does not tell).
fn may_block(name: &[u8]) -> bool {
    [
        "blpop",
        "brpop",
        "brpoplpush",
        "blmove",
        "blmpop",
        "bzpopmin",
        "bzpopmax",
        "bzmpop",
        "xread",
        "xreadgroup",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}
