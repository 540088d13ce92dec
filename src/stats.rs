//! Statistics, exported through Envoy's stats system (`/stats`,
//! `/stats/prometheus`) with names modelled on Envoy's `redis_proxy`, under
//! `redis.<stat_prefix>.` (Envoy adds its dynamic-module namespace in front,
//! `dynamicmodulescustom.` unless `metrics_namespace` says otherwise).
//!
//! Metrics are defined once, when Envoy loads the filter config; the ids are
//! then plain numbers any thread may bump through a [`MetricsSink`]. Only
//! histograms must be recorded on an Envoy worker (see
//! [`crate::session::Downstream::record_histogram`]).

use crate::command;
use std::sync::Arc;

/// Envoy's metric store as the module sees it (config-level, any thread).
pub trait MetricsSink: Send + Sync {
    fn define_counter(&self, name: &str) -> Option<usize>;
    fn define_gauge(&self, name: &str) -> Option<usize>;
    fn define_histogram(&self, name: &str) -> Option<usize>;
    fn counter_add(&self, id: usize, v: u64);
    fn gauge_add(&self, id: usize, v: u64);
    fn gauge_sub(&self, id: usize, v: u64);
    fn gauge_set(&self, id: usize, v: u64);
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
}

#[derive(Default)]
pub struct Stats {
    sink: Option<Arc<dyn MetricsSink>>,
    pub downstream_cx_total: Id,
    pub downstream_cx_active: Id,
    pub downstream_cx_protocol_error: Id,
    pub downstream_rq_total: Id,
    pub downstream_cx_rx_bytes_total: Id,
    pub downstream_cx_tx_bytes_total: Id,
    pub downstream_cx_buffered_bytes: Id,
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
    pub fn define(sink: Arc<dyn MetricsSink>, stat_prefix: &str, clusters: &[String]) -> Stats {
        let p = format!("redis.{stat_prefix}.");
        let c = |n: &str| sink.define_counter(&format!("{p}{n}"));
        let g = |n: &str| sink.define_gauge(&format!("{p}{n}"));
        let h = |n: &str| sink.define_histogram(&format!("{p}{n}"));
        let commands = command::all()
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
                }
            })
            .collect();
        Stats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_cx_buffered_bytes: g("downstream_cx_buffered_bytes"),
            commands,
            clusters,
            sink: Some(sink),
        }
    }

    pub fn add(&self, id: Id, v: u64) {
        if let (Some(sink), Some(id)) = (&self.sink, id) {
            if v > 0 {
                sink.counter_add(id, v);
            }
        }
    }

    pub fn inc(&self, id: Id) {
        self.add(id, 1);
    }

    pub fn gauge_add(&self, id: Id, v: u64) {
        if let (Some(sink), Some(id)) = (&self.sink, id) {
            sink.gauge_add(id, v);
        }
    }

    pub fn gauge_sub(&self, id: Id, v: u64) {
        if let (Some(sink), Some(id)) = (&self.sink, id) {
            sink.gauge_sub(id, v);
        }
    }

    pub fn gauge_set(&self, id: Id, v: u64) {
        if let (Some(sink), Some(id)) = (&self.sink, id) {
            sink.gauge_set(id, v);
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
        };
        self.clusters.get(index).unwrap_or(&NONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder {
        names: Mutex<Vec<String>>,
        adds: Mutex<Vec<(usize, u64)>>,
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
        fn counter_add(&self, id: usize, v: u64) {
            self.adds.lock().push((id, v));
        }
        fn gauge_add(&self, _: usize, _: u64) {}
        fn gauge_sub(&self, _: usize, _: u64) {}
        fn gauge_set(&self, _: usize, _: u64) {}
    }

    #[test]
    fn names_follow_redis_proxy_and_ids_reach_the_sink() {
        let rec = Arc::new(Recorder::default());
        let stats = Stats::define(rec.clone(), "edge", &["main".to_string()]);
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
}
