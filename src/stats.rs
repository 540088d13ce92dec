//! Statistics, exported through Envoy's stats system (`/stats`,
//! `/stats/prometheus`) with names modelled on Envoy's `redis_proxy`, under
//! `redis.<stat_prefix>.` (Envoy adds its dynamic-module namespace in front,
//! `dynamicmodulescustom.` unless `metrics_namespace` says otherwise).
//!
//! Metrics are defined once, when Envoy loads the filter config; the ids are
//! then plain numbers any thread may bump. Where Envoy takes updates from any
//! thread (1.39 and later) they go straight to it; on Envoy 1.38, whose only
//! update callbacks go through a connection, they wait in the module until
//! a worker hook delivers them ([`Stats::flush`]). Histograms are always
//! recorded on an Envoy worker (see
//! [`crate::session::Downstream::record_histogram`]).

use crate::command;
use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

/// Updates of defined metrics, by id.
pub trait MetricUpdates {
    fn counter_add(&self, id: usize, v: u64);
    fn gauge_add(&self, id: usize, v: u64);
    fn gauge_sub(&self, id: usize, v: u64);
    fn gauge_set(&self, id: usize, v: u64);
}

/// Envoy's metric store for one filter config, as the module sees it.
pub trait MetricsSink: Send + Sync {
    fn define_counter(&self, name: &str) -> Option<usize>;
    fn define_gauge(&self, name: &str) -> Option<usize>;
    fn define_histogram(&self, name: &str) -> Option<usize>;
    /// Updates any thread may make, if this Envoy has them; without them
    /// updates reach Envoy only through a connection ([`Stats::flush`]).
    fn any_thread_updates(&self) -> Option<&dyn MetricUpdates>;
}

/// A defined metric (None when defining failed or in unit tests).
pub type Id = Option<usize>;

/// Per-command statistics: `command.<name>.{total,success,error,latency}`.
#[derive(Default, Clone, Copy)]
pub struct CommandStats {
    pub total: Id,
    pub success: Id,
    pub error: Id,
    /// Microseconds from the command's arrival to its reply leaving.
    pub latency: Id,
}

/// Per-cluster statistics: `cluster.<name>.…`.
#[derive(Default)]
pub struct ClusterStats {
    pub upstream_rq_total: Id,
    pub upstream_rq_error: Id,
    pub upstream_rq_timeout: Id,
    pub upstream_cx_connect_fail: Id,
    pub upstream_cx_lost: Id,
    pub redirections_moved: Id,
    pub redirections_ask: Id,
    pub topology_refresh_success: Id,
    pub topology_refresh_failure: Id,
    pub topology_changes: Id,
    pub slots_covered: Id,
    pub mirror_rq_total: Id,
    pub mirror_rq_dropped: Id,
    /// Blocking commands on their node now.
    pub blocked_rq_active: Id,
    /// Idle blocking connections in the pools.
    pub blocking_cx_idle: Id,
    /// Blocking commands refused: `max_blocking_connections` reached.
    pub blocking_cx_overflow: Id,
    /// Upstream subscriptions (channels, patterns, shard channels), shared
    /// by the clients of a worker: one per worker and name.
    pub pubsub_upstream_subscriptions: Id,
    /// Messages handed to subscribed clients.
    pub pubsub_messages_fanned_out: Id,
    /// Subscriptions sent again after a lost link or a moved slot.
    pub pubsub_resubscribes: Id,
}

#[derive(Default)]
pub struct Stats {
    sink: Option<Arc<dyn MetricsSink>>,
    /// Updates waiting for a connection (when the sink has no any-thread
    /// updates).
    pending: Option<Pending>,
    pub downstream_cx_total: Id,
    pub downstream_cx_active: Id,
    pub downstream_cx_protocol_error: Id,
    pub downstream_rq_total: Id,
    pub downstream_cx_rx_bytes_total: Id,
    pub downstream_cx_tx_bytes_total: Id,
    pub downstream_cx_buffered_bytes: Id,
    /// Clients subscribed to at least one channel, pattern or shard channel.
    pub pubsub_subscribers_active: Id,
    /// Subscribers closed for falling `pubsub_output_limit` bytes behind.
    pub pubsub_slow_disconnects: Id,
    /// Indexed like [`command::all`].
    pub commands: Vec<CommandStats>,
    /// Indexed like the proxy's clusters.
    pub clusters: Vec<ClusterStats>,
}

impl Stats {
    /// Stats that record nothing (unit tests, or no sink).
    pub fn disabled(clusters: usize) -> Stats {
        Stats {
            clusters: (0..clusters).map(|_| ClusterStats::default()).collect(),
            ..Stats::default()
        }
    }

    /// Define every metric (only possible while Envoy loads the config).
    /// Per-command metrics (4 per command of the table, ~900 in all) only
    /// when `command_stats` is on: Envoy keeps every defined metric in
    /// memory and in `/stats` whether it moves or not.
    pub fn define(
        sink: Arc<dyn MetricsSink>,
        stat_prefix: &str,
        clusters: &[String],
        command_stats: bool,
    ) -> Stats {
        let p = format!("redis.{stat_prefix}.");
        // The largest ids seen, to size the pending updates.
        let (counters, gauges) = (Cell::new(0), Cell::new(0));
        let seen = |max: &Cell<usize>, id: Id| {
            max.set(max.get().max(id.unwrap_or(0)));
            id
        };
        let c = |n: &str| seen(&counters, sink.define_counter(&format!("{p}{n}")));
        let g = |n: &str| seen(&gauges, sink.define_gauge(&format!("{p}{n}")));
        let h = |n: &str| sink.define_histogram(&format!("{p}{n}"));
        let all_commands: &[command::Command] = if command_stats { command::all() } else { &[] };
        let commands = all_commands
            .iter()
            .map(|cmd| CommandStats {
                total: c(&format!("command.{}.total", cmd.name)),
                success: c(&format!("command.{}.success", cmd.name)),
                error: c(&format!("command.{}.error", cmd.name)),
                latency: h(&format!("command.{}.latency", cmd.name)),
            })
            .collect();
        let clusters = clusters
            .iter()
            .map(|name| {
                let cc = |n: &str| c(&format!("cluster.{name}.{n}"));
                ClusterStats {
                    upstream_rq_total: cc("upstream_rq_total"),
                    upstream_rq_error: cc("upstream_rq_error"),
                    upstream_rq_timeout: cc("upstream_rq_timeout"),
                    upstream_cx_connect_fail: cc("upstream_cx_connect_fail"),
                    upstream_cx_lost: cc("upstream_cx_lost"),
                    redirections_moved: cc("redirections_moved"),
                    redirections_ask: cc("redirections_ask"),
                    topology_refresh_success: cc("topology_refresh_success"),
                    topology_refresh_failure: cc("topology_refresh_failure"),
                    topology_changes: cc("topology_changes"),
                    slots_covered: g(&format!("cluster.{name}.slots_covered")),
                    mirror_rq_total: cc("mirror_rq_total"),
                    mirror_rq_dropped: cc("mirror_rq_dropped"),
                    blocked_rq_active: g(&format!("cluster.{name}.blocked_rq_active")),
                    blocking_cx_idle: g(&format!("cluster.{name}.blocking_cx_idle")),
                    blocking_cx_overflow: cc("blocking_cx_overflow"),
                    pubsub_upstream_subscriptions: g(&format!(
                        "cluster.{name}.pubsub_upstream_subscriptions"
                    )),
                    pubsub_messages_fanned_out: cc("pubsub_messages_fanned_out"),
                    pubsub_resubscribes: cc("pubsub_resubscribes"),
                }
            })
            .collect();
        let mut stats = Stats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_cx_buffered_bytes: g("downstream_cx_buffered_bytes"),
            pubsub_subscribers_active: g("pubsub_subscribers_active"),
            pubsub_slow_disconnects: c("pubsub_slow_disconnects"),
            commands,
            clusters,
            pending: None,
            sink: None,
        };
        if sink.any_thread_updates().is_none() {
            stats.pending = Some(Pending::new(counters.get(), gauges.get()));
        }
        stats.sink = Some(sink);
        stats
    }

    /// Where an update goes now: pending, straight to Envoy, or nowhere.
    fn route(&self) -> Route<'_> {
        match (&self.pending, &self.sink) {
            (Some(p), _) => Route::Pending(p),
            (None, Some(sink)) => sink
                .any_thread_updates()
                .map_or(Route::Nowhere, Route::Envoy),
            (None, None) => Route::Nowhere,
        }
    }

    pub fn add(&self, id: Id, v: u64) {
        let Some(id) = id else { return };
        if v == 0 {
            return;
        }
        match self.route() {
            Route::Pending(p) => p.counter_add(id, v),
            Route::Envoy(u) => u.counter_add(id, v),
            Route::Nowhere => {}
        }
    }

    pub fn inc(&self, id: Id) {
        self.add(id, 1);
    }

    pub fn gauge_add(&self, id: Id, v: u64) {
        let Some(id) = id else { return };
        match self.route() {
            Route::Pending(p) => p.gauge_add(id, v),
            Route::Envoy(u) => u.gauge_add(id, v),
            Route::Nowhere => {}
        }
    }

    pub fn gauge_sub(&self, id: Id, v: u64) {
        let Some(id) = id else { return };
        match self.route() {
            Route::Pending(p) => p.gauge_sub(id, v),
            Route::Envoy(u) => u.gauge_sub(id, v),
            Route::Nowhere => {}
        }
    }

    pub fn gauge_set(&self, id: Id, v: u64) {
        let Some(id) = id else { return };
        match self.route() {
            Route::Pending(p) => p.gauge_set(id, v),
            Route::Envoy(u) => u.gauge_set(id, v),
            Route::Nowhere => {}
        }
    }

    /// Deliver pending updates through `conn`, a connection of this config
    /// on its worker (called after each of its hooks). Nothing to do when
    /// Envoy takes updates from any thread.
    pub fn flush(&self, conn: &dyn MetricUpdates) {
        if let Some(p) = &self.pending {
            p.drain(conn);
        }
    }

    pub fn command(&self, index: usize) -> CommandStats {
        self.commands.get(index).copied().unwrap_or_default()
    }

    pub fn cluster(&self, index: usize) -> &ClusterStats {
        static NONE: ClusterStats = ClusterStats {
            upstream_rq_total: None,
            upstream_rq_error: None,
            upstream_rq_timeout: None,
            upstream_cx_connect_fail: None,
            upstream_cx_lost: None,
            redirections_moved: None,
            redirections_ask: None,
            topology_refresh_success: None,
            topology_refresh_failure: None,
            topology_changes: None,
            slots_covered: None,
            mirror_rq_total: None,
            mirror_rq_dropped: None,
            blocked_rq_active: None,
            blocking_cx_idle: None,
            blocking_cx_overflow: None,
            pubsub_upstream_subscriptions: None,
            pubsub_messages_fanned_out: None,
            pubsub_resubscribes: None,
        };
        self.clusters.get(index).unwrap_or(&NONE)
    }
}

enum Route<'a> {
    Pending(&'a Pending),
    Envoy(&'a dyn MetricUpdates),
    Nowhere,
}

/// A metric with updates waiting (its id).
#[derive(Clone, Copy)]
enum Waiting {
    Counter(usize),
    Gauge(usize),
}

#[derive(Default)]
struct PendingCounter {
    delta: AtomicU64,
    /// In `Pending::waiting` (at most once).
    listed: AtomicBool,
}

#[derive(Default)]
struct PendingGauge {
    delta: AtomicI64,
    /// A value set since the last delivery, applied before `delta`.
    set: Mutex<Option<u64>>,
    listed: AtomicBool,
}

/// Updates made on any thread, waiting for a worker to deliver them through
/// a connection (Envoy 1.38). Each metric with something to deliver is
/// listed once in `waiting`, so a delivery touches only those.
///
/// No update is lost: an updater changes the value, then lists the metric
/// unless it is listed; a delivery unlists it, then takes the value. With
/// sequentially consistent operations, an updater that saw "listed" changed
/// the value before the unlisting, so before the take.
struct Pending {
    counters: Vec<PendingCounter>,
    gauges: Vec<PendingGauge>,
    waiting: Mutex<Vec<Waiting>>,
}

/// Ids start at 1.
fn slot<T>(v: &[T], id: usize) -> Option<&T> {
    v.get(id.checked_sub(1)?)
}

impl Pending {
    fn new(counters: usize, gauges: usize) -> Pending {
        Pending {
            counters: (0..counters).map(|_| PendingCounter::default()).collect(),
            gauges: (0..gauges).map(|_| PendingGauge::default()).collect(),
            waiting: Mutex::new(Vec::new()),
        }
    }

    fn list(&self, listed: &AtomicBool, what: Waiting) {
        if !listed.load(SeqCst) && !listed.swap(true, SeqCst) {
            self.waiting.lock().push(what);
        }
    }

    fn counter_add(&self, id: usize, v: u64) {
        if let Some(c) = slot(&self.counters, id) {
            c.delta.fetch_add(v, SeqCst);
            self.list(&c.listed, Waiting::Counter(id));
        }
    }

    fn gauge_delta(&self, id: usize, d: i64) {
        if let Some(g) = slot(&self.gauges, id) {
            g.delta.fetch_add(d, SeqCst);
            self.list(&g.listed, Waiting::Gauge(id));
        }
    }

    fn gauge_add(&self, id: usize, v: u64) {
        self.gauge_delta(id, i64::try_from(v).unwrap_or(i64::MAX));
    }

    fn gauge_sub(&self, id: usize, v: u64) {
        self.gauge_delta(id, i64::try_from(v).map_or(i64::MIN, |v| -v));
    }

    fn gauge_set(&self, id: usize, v: u64) {
        if let Some(g) = slot(&self.gauges, id) {
            // A set replaces the deltas made before it.
            {
                let mut set = g.set.lock();
                g.delta.store(0, SeqCst);
                *set = Some(v);
            }
            self.list(&g.listed, Waiting::Gauge(id));
        }
    }

    fn drain(&self, to: &dyn MetricUpdates) {
        let mut waiting = self.waiting.lock();
        for what in waiting.drain(..) {
            match what {
                Waiting::Counter(id) => {
                    let Some(c) = slot(&self.counters, id) else {
                        continue;
                    };
                    c.listed.store(false, SeqCst);
                    let v = c.delta.swap(0, SeqCst);
                    if v > 0 {
                        to.counter_add(id, v);
                    }
                }
                Waiting::Gauge(id) => {
                    let Some(g) = slot(&self.gauges, id) else {
                        continue;
                    };
                    g.listed.store(false, SeqCst);
                    // Under the lock a set is taken with exactly the deltas
                    // made after it.
                    let (set, d) = {
                        let mut set = g.set.lock();
                        (set.take(), g.delta.swap(0, SeqCst))
                    };
                    if let Some(v) = set {
                        to.gauge_set(id, v);
                    }
                    if d > 0 {
                        to.gauge_add(id, d.unsigned_abs());
                    } else if d < 0 {
                        to.gauge_sub(id, d.unsigned_abs());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy's side: records definitions and the updates that reach it.
    #[derive(Default)]
    struct Recorder {
        names: Mutex<Vec<String>>,
        adds: Mutex<Vec<(usize, u64)>>,
        gauges: Mutex<Vec<(&'static str, usize, u64)>>,
        /// Envoy 1.39+: updates from any thread; else only via connections.
        any_thread: bool,
    }

    impl MetricsSink for Recorder {
        fn define_counter(&self, name: &str) -> Option<usize> {
            let mut n = self.names.lock();
            n.push(name.to_string());
            Some(n.len())
        }
        fn define_gauge(&self, name: &str) -> Option<usize> {
            self.define_counter(name)
        }
        fn define_histogram(&self, name: &str) -> Option<usize> {
            self.define_counter(name)
        }
        fn any_thread_updates(&self) -> Option<&dyn MetricUpdates> {
            self.any_thread.then_some(self as &dyn MetricUpdates)
        }
    }

    impl MetricUpdates for Recorder {
        fn counter_add(&self, id: usize, v: u64) {
            self.adds.lock().push((id, v));
        }
        fn gauge_add(&self, id: usize, v: u64) {
            self.gauges.lock().push(("add", id, v));
        }
        fn gauge_sub(&self, id: usize, v: u64) {
            self.gauges.lock().push(("sub", id, v));
        }
        fn gauge_set(&self, id: usize, v: u64) {
            self.gauges.lock().push(("set", id, v));
        }
    }

    fn recorder(any_thread: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            any_thread,
            ..Recorder::default()
        })
    }

    fn counter_total(rec: &Recorder, id: Id) -> u64 {
        let id = id.unwrap();
        rec.adds
            .lock()
            .iter()
            .filter(|a| a.0 == id)
            .map(|a| a.1)
            .sum()
    }

    #[test]
    fn names_follow_redis_proxy_and_ids_reach_the_sink() {
        let rec = recorder(true);
        let stats = Stats::define(rec.clone(), "edge", &["main".to_string()], true);
        let names = rec.names.lock().clone();
        for want in [
            "redis.edge.downstream_cx_total",
            "redis.edge.command.get.total",
            "redis.edge.command.get.latency",
            "redis.edge.cluster.main.redirections_moved",
            "redis.edge.cluster.main.slots_covered",
        ] {
            assert!(names.iter().any(|n| n == want), "missing {want}");
        }
        stats.inc(stats.downstream_rq_total);
        let id = stats.downstream_rq_total.unwrap();
        assert_eq!(rec.adds.lock().as_slice(), &[(id, 1)]);
        Stats::disabled(1).inc(None);
    }

    /// Envoy 1.38: updates from module threads wait until a connection's
    /// worker flushes them, then arrive summed, gauges in order.
    #[test]
    fn without_any_thread_updates_a_flush_delivers_them() {
        let rec = recorder(false);
        let conn = recorder(false); // what the connection's callbacks receive
        let stats = Arc::new(Stats::define(rec.clone(), "p", &["main".to_string()], true));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        stats.inc(stats.cluster(0).upstream_rq_total);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        stats.gauge_add(stats.downstream_cx_active, 3);
        stats.gauge_sub(stats.downstream_cx_active, 1);
        let slots = stats.cluster(0).slots_covered;
        stats.gauge_add(slots, 7); // replaced by the set below
        stats.gauge_set(slots, 16384);
        stats.gauge_sub(slots, 4);
        assert!(rec.adds.lock().is_empty() && rec.gauges.lock().is_empty());
        assert!(conn.adds.lock().is_empty(), "delivered before a flush");

        stats.flush(&*conn);
        assert!(rec.adds.lock().is_empty(), "went around the connection");
        assert_eq!(
            counter_total(&conn, stats.cluster(0).upstream_rq_total),
            4000
        );
        let (active, slots) = (stats.downstream_cx_active.unwrap(), slots.unwrap());
        let gauges = conn.gauges.lock().clone();
        assert!(gauges.contains(&("add", active, 2)), "{gauges:?}");
        let on_slots: Vec<_> = gauges.iter().filter(|g| g.1 == slots).collect();
        assert_eq!(on_slots, [&("set", slots, 16384), &("sub", slots, 4)]);

        // Nothing twice.
        let (n, g) = (conn.adds.lock().len(), conn.gauges.lock().len());
        stats.flush(&*conn);
        assert_eq!((conn.adds.lock().len(), conn.gauges.lock().len()), (n, g));
    }

    /// Flushes racing with updates neither lose nor duplicate any.
    #[test]
    fn flushes_concurrent_with_updates_lose_nothing() {
        let conn = recorder(false);
        let stats = Arc::new(Stats::define(
            recorder(false),
            "p",
            &["main".to_string()],
            true,
        ));
        let id = stats.cluster(0).upstream_rq_total;
        let updaters: Vec<_> = (0..3)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        stats.add(id, i % 3 + 1);
                    }
                })
            })
            .collect();
        let flusher = {
            let (stats, conn) = (stats.clone(), conn.clone());
            std::thread::spawn(move || {
                for _ in 0..2_000 {
                    stats.flush(&*conn);
                    std::thread::yield_now();
                }
            })
        };
        for t in updaters {
            t.join().unwrap();
        }
        flusher.join().unwrap();
        stats.flush(&*conn);
        let per_thread: u64 = (0..20_000u64).map(|i| i % 3 + 1).sum();
        assert_eq!(counter_total(&conn, id), 3 * per_thread);
    }
}
