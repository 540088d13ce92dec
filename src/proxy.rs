//! The filter config's runtime: clusters, their refreshers, each worker's
//! upstream I/O, and route lookup. One `Proxy` per filter config, shared by every
//! connection of every worker.

use crate::clients::Clients;
use crate::config::{Config, MirrorPolicy, ReadPolicy};
use crate::envoy::Level;
use crate::log;
use crate::scripts::ScriptCache;
use crate::session::Upstream;
use crate::stats::Stats;
use crate::topology_refresh::ClusterTopology;
use crate::upstream::{HelperHandle, SharedBusy, WorkerIo};
use parking_lot::Mutex;
use std::sync::Arc;
use std::thread::JoinHandle;

pub struct Proxy {
    pub config: Config,
    pub stats: Arc<Stats>,
    /// `ENVOY_REDIS_CLUSTER_TEST_HOOKS=1` in Envoy's environment enables the
    /// `DEBUG-PANIC` command, which panics inside the module: the tests use
    /// it to prove a panic closes one connection and never Envoy.
    pub test_hooks: bool,
    /// Script bodies seen, for `EVALSHA` on nodes without them.
    pub scripts: Arc<ScriptCache>,
    /// Every client connection, and `CLIENT PAUSE`.
    pub clients: Arc<Clients>,
    /// Functions that declare `no-writes` (for `CLIENT PAUSE WRITE`).
    pub functions: crate::functions::FunctionFlags,
    /// The proxy's subscribers, for `PUBSUB` (every worker).
    pub pubsub: Arc<crate::pubsub::registry::Registry>,
    /// Each worker's shared upstream subscriptions (one in validation mode).
    hubs: Vec<Arc<crate::pubsub::hub::Hub>>,
    names: Vec<String>,
    clusters: Vec<Arc<ClusterTopology>>,
    helpers: Vec<Arc<HelperHandle>>,
    /// Each worker's own upstream state.
    worker_io: Vec<Arc<WorkerIo>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Where a key goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route<'a> {
    pub cluster: usize,
    pub read_policy: ReadPolicy,
    /// Bytes to strip from the front of every key (`remove_prefix`).
    pub strip: usize,
    /// Where copies of the command go (fire and forget).
    pub mirrors: &'a [MirrorPolicy],
}

impl Proxy {
    fn build(config: Config, stats: Arc<Stats>) -> Proxy {
        let names: Vec<String> = config.clusters.keys().cloned().collect();
        let registry = Arc::new(crate::pubsub::registry::Registry::default());
        let clusters = config
            .clusters
            .iter()
            .enumerate()
            .map(|(i, (name, c))| ClusterTopology::new(name, c.clone(), stats.clone(), i))
            .collect();
        Proxy {
            config,
            stats: stats.clone(),
            test_hooks: std::env::var_os("ENVOY_REDIS_CLUSTER_TEST_HOOKS")
                .is_some_and(|v| v == "1"),
            scripts: Arc::default(),
            clients: Arc::default(),
            functions: Default::default(),
            pubsub: registry.clone(),
            hubs: vec![Arc::new(crate::pubsub::hub::Hub::new(
                stats.clone(),
                registry,
            ))],
            names,
            clusters,
            helpers: Vec::new(),
            worker_io: Vec::new(),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// A proxy that starts nothing (`envoy --mode validate`).
    pub fn inert(config: Config, stats: Arc<Stats>) -> Arc<Proxy> {
        Arc::new(Proxy::build(config, stats))
    }

    /// Start each Envoy worker's upstream state (and its helper thread) and
    /// one refresher per cluster.
    pub fn start(config: Config, stats: Arc<Stats>, workers: usize) -> Arc<Proxy> {
        let mut proxy = Proxy::build(config, stats);
        let mut threads = Vec::new();
        let busy = Arc::new(SharedBusy::default());
        for _ in 1..workers {
            let hub = crate::pubsub::hub::Hub::new(proxy.stats.clone(), proxy.pubsub.clone());
            proxy.hubs.push(Arc::new(hub));
        }
        for i in 0..workers {
            match WorkerIo::start(
                i,
                proxy.config.settings.clone(),
                &proxy.clusters,
                proxy.stats.clone(),
                proxy.scripts.clone(),
                busy.clone(),
            ) {
                Ok((io, helper, thread)) => {
                    for c in &proxy.clusters {
                        c.add_listener(helper.clone());
                    }
                    proxy.helpers.push(helper);
                    proxy.worker_io.push(io);
                    threads.push(thread);
                }
                Err(e) => log!(
                    Level::Error,
                    "redis_cluster: cannot start upstream helper thread: {e}"
                ),
            }
        }
        for c in &proxy.clusters {
            let c = c.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("redis-topo-{}", c.name()))
                .spawn(move || c.run());
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => log!(
                    Level::Error,
                    "redis_cluster: cannot start refresher thread: {e}"
                ),
            }
        }
        let clients = proxy.clients.clone();
        let spawned = std::thread::Builder::new()
            .name("redis-pause".to_string())
            .spawn(move || clients.run_timer());
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => log!(
                Level::Error,
                "redis_cluster: cannot start the CLIENT PAUSE timer thread: {e}"
            ),
        }
        *proxy.threads.get_mut() = threads;
        Arc::new(proxy)
    }

    /// Stop and join every module thread (config destroy, Envoy shutdown).
    pub fn shutdown(&self) {
        for h in &self.helpers {
            h.stop();
        }
        for c in &self.clusters {
            c.stop();
        }
        self.clients.stop();
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
    }

    /// Where worker `worker`'s sessions send their requests (`None` in
    /// validation mode).
    pub fn upstream_for(&self, worker: usize) -> Option<Arc<dyn Upstream>> {
        let io = self.worker_io(worker)?;
        Some(io.clone() as Arc<dyn Upstream>)
    }

    /// Worker `worker`'s own upstream state (`None` in validation mode).
    pub fn worker_io(&self, worker: usize) -> Option<&Arc<WorkerIo>> {
        if self.worker_io.is_empty() {
            return None;
        }
        self.worker_io.get(worker % self.worker_io.len())
    }

    /// Worker `worker`'s shared upstream subscriptions.
    pub fn hub_for(&self, worker: usize) -> Arc<crate::pubsub::hub::Hub> {
        self.hubs[worker % self.hubs.len()].clone()
    }

    /// Ask cluster `cluster`'s refresher for a new topology soon.
    pub fn request_refresh(&self, cluster: usize, why: &str) {
        if let Some(c) = self.clusters.get(cluster) {
            c.request_refresh(why);
        }
    }

    /// The cluster's current slot map, if one was fetched yet.
    pub fn topology(&self, cluster: usize) -> Option<Arc<crate::topology::SlotMap>> {
        self.clusters.get(cluster)?.current()
    }

    pub fn cluster_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The configured name of cluster `index` (for messages).
    pub fn cluster_name(&self, index: usize) -> &str {
        self.names.get(index).map_or("?", String::as_str)
    }

    /// Keys may go to different routes (there is at least one prefix
    /// route); without, every key follows the catch-all.
    pub fn has_prefix_routes(&self) -> bool {
        !self.config.prefix_routes.routes.is_empty()
    }

    /// Publish a slot map for a cluster as its refresher would. For tests
    /// and fuzzing of an inert proxy, which has no refresher running.
    pub fn publish_topology(&self, cluster: usize, map: crate::topology::SlotMap) {
        if let Some(c) = self.clusters.get(cluster) {
            c.publish(map, false);
        }
    }

    /// Downstream authentication settings.
    pub fn auth(&self) -> crate::local::Auth<'_> {
        crate::local::Auth {
            username: self.config.downstream_auth_username.as_deref(),
            passwords: &self.config.downstream_auth_passwords,
        }
    }

    /// The catch-all route's cluster, else the first cluster: where keyless
    /// commands with a node-independent answer go.
    pub fn default_cluster(&self) -> Option<usize> {
        self.route(b"")
            .map(|r| r.cluster)
            .or(if self.names.is_empty() { None } else { Some(0) })
    }

    /// Longest matching prefix route for `key`, else the catch-all.
    pub fn route(&self, key: &[u8]) -> Option<Route<'_>> {
        let r = self.config.prefix_routes.route_for(key)?;
        Some(Route {
            cluster: self.cluster_index(r.cluster)?,
            read_policy: r.read_policy.unwrap_or(self.config.settings.read_policy),
            strip: r.strip,
            mirrors: r.mirrors,
        })
    }
}
