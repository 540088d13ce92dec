//! Keeping a cluster's slot map fresh.
//!
//! One refresher thread per configured cluster asks nodes for `CLUSTER
//! SLOTS` every `cluster_refresh_rate`, and at once (coalesced: one refresh
//! in flight, requests meanwhile fold into the next) when a loop reports a
//! MOVED, a cluster error or an unreachable node. It asks nodes in the order
//! known masters, known replicas, then the configured seeds (each once),
//! until three have answered, and keeps the majority view
//! ([`topology::choose_view`]), so one node with a stale view cannot make
//! the map flip-flop. The result is published as an immutable
//! `Arc<SlotMap>` plus a generation number: loops read the generation with
//! one atomic load per iteration and clone the `Arc` only when it changed.

use crate::codec;
use crate::config::ClusterConfig;
use crate::envoy::Level;
use crate::failure_streak::{FailureStreak, Report};
use crate::log;
use crate::stats::Stats;
use crate::tls::TlsSettings;
use crate::topology::{self, SlotMap, TopologyError};
use crate::upstream::HelperHandle;
use parking_lot::{Condvar, Mutex, RwLock};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Refreshes never run closer together than this, however many loops ask.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How many nodes one refresh asks (majority among their answers).
const VIEWS_PER_REFRESH: usize = 3;
/// While refreshes keep failing, one warning per this period.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);
/// Largest CLUSTER SLOTS reply accepted.
const MAX_REPLY: usize = 64 * 1024 * 1024;

pub struct ClusterTopology {
    name: String,
    cfg: ClusterConfig,
    map: RwLock<Option<Arc<SlotMap>>>,
    generation: AtomicU64,
    requested: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
    listeners: Mutex<Vec<Arc<HelperHandle>>>,
    stats: Arc<Stats>,
    index: usize,
    /// TLS to the nodes, if configured. An error here (e.g. the CA file
    /// vanished since validation) fails every connection rather than
    /// silently falling back to plain TCP.
    tls: Option<Result<Arc<TlsSettings>, String>>,
}

impl ClusterTopology {
    pub fn new(name: &str, cfg: ClusterConfig, stats: Arc<Stats>, index: usize) -> Arc<Self> {
        let cfg_tls = cfg.tls.as_ref().map(|t| TlsSettings::load(t).map(Arc::new));
        Arc::new(ClusterTopology {
            name: name.to_string(),
            cfg,
            map: RwLock::new(None),
            generation: AtomicU64::new(0),
            requested: Mutex::new(false),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            stats,
            index,
            tls: cfg_tls,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// A TLS session for `addr`, when the cluster uses TLS.
    pub fn tls_session(&self, addr: &str) -> Result<Option<rustls::ClientConnection>, String> {
        match &self.tls {
            None => Ok(None),
            Some(Ok(t)) => t.session(addr).map(Some),
            Some(Err(e)) => Err(format!("TLS configuration: {e}")),
        }
    }

    /// Bumped after every completed refresh (changed or not), so waiters
    /// can tell that a fresh view exists.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Option<Arc<SlotMap>> {
        self.map.read().clone()
    }

    /// Helper threads to wake when a new generation is published.
    pub fn add_listener(&self, l: Arc<HelperHandle>) {
        self.listeners.lock().push(l);
    }

    /// Ask for a refresh soon; cheap and coalesced.
    pub fn request_refresh(&self, why: &str) {
        let mut r = self.requested.lock();
        if !*r {
            *r = true;
            log!(
                Level::Debug,
                "redis_cluster: cluster {}: refresh requested ({why})",
                self.name
            );
            self.cv.notify_one();
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _guard = self.requested.lock();
        self.cv.notify_all();
    }

    /// Thread body.
    pub fn run(self: Arc<Self>) {
        let mut last = Instant::now() - MIN_INTERVAL;
        let mut first = true;
        let mut streak = FailureStreak::new(FAILURE_LOG_EVERY);
        while !self.stop.load(Ordering::Acquire) {
            if !first {
                let mut r = self.requested.lock();
                let due = last + self.cfg.cluster_refresh_rate;
                while !*r && !self.stop.load(Ordering::Acquire) && Instant::now() < due {
                    self.cv.wait_until(&mut r, due);
                }
                *r = false;
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let since = last.elapsed();
            if since < MIN_INTERVAL {
                std::thread::sleep(MIN_INTERVAL - since);
            }
            last = Instant::now();
            match self.refresh_once() {
                Ok(map) => {
                    if let Report::Recovered { attempts } = streak.success() {
                        log!(
                            Level::Info,
                            "redis_cluster: cluster {}: topology refresh succeeded after {attempts} failed attempts",
                            self.name
                        );
                    }
                    let s = self.stats.cluster(self.index);
                    self.stats.inc(s.topology_refresh_success);
                    self.stats
                        .gauge_set(s.slots_covered, map.covered_slots() as u64);
                    self.publish(map, first);
                    first = false;
                }
                Err(e) => {
                    self.stats
                        .inc(self.stats.cluster(self.index).topology_refresh_failure);
                    match streak.failure(Instant::now()) {
                        Report::Failed => log!(
                            Level::Warn,
                            "redis_cluster: cluster {}: topology refresh failed: {e}",
                            self.name
                        ),
                        Report::StillFailing { attempts } => log!(
                            Level::Warn,
                            "redis_cluster: cluster {}: topology refresh still failing ({attempts} attempts, one warning per {}s): {e}",
                            self.name,
                            streak.every().as_secs()
                        ),
                        Report::Quiet | Report::Recovered { .. } => log!(
                            Level::Debug,
                            "redis_cluster: cluster {}: topology refresh failed: {e}",
                            self.name
                        ),
                    }
                    // Still a completed attempt: lets waiting commands
                    // re-evaluate (and fail fast if the node stays down).
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.wake_listeners();
                    if first {
                        // Retry start-up quickly until the cluster answers.
                        *self.requested.lock() = true;
                    }
                }
            }
        }
    }

    /// Install a fetched map (also used by tests of an inert proxy).
    pub fn publish(&self, map: SlotMap, first: bool) {
        let changed = match self.map.read().as_ref() {
            Some(old) => !old.same_as(&map),
            None => true,
        };
        if changed {
            self.stats
                .inc(self.stats.cluster(self.index).topology_changes);
            let masters: Vec<&str> = map.shards.iter().map(|s| s.master.as_str()).collect();
            log!(
                Level::Info,
                "redis_cluster: cluster {}: {} topology: {} shards, {} of 16384 slots covered, masters {:?}",
                self.name,
                if first { "initial" } else { "new" },
                map.shards.len(),
                map.covered_slots(),
                masters
            );
            *self.map.write() = Some(Arc::new(map));
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake_listeners();
    }

    fn wake_listeners(&self) {
        for l in self.listeners.lock().iter() {
            l.wake();
        }
    }

    /// Ask up to three nodes; keep the majority view.
    fn refresh_once(&self) -> Result<SlotMap, String> {
        let mut candidates: Vec<String> = Vec::new();
        if let Some(m) = self.current() {
            for s in &m.shards {
                candidates.push(s.master.clone());
            }
            for s in &m.shards {
                candidates.extend(s.replicas.iter().cloned());
            }
        }
        candidates.extend(self.cfg.seeds.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|c| seen.insert(c.clone()));

        let mut views = Vec::new();
        let mut last_err = String::from("no node answered");
        for addr in candidates {
            match self.ask(&addr) {
                Ok(map) => {
                    views.push(map);
                    if views.len() >= VIEWS_PER_REFRESH {
                        break;
                    }
                }
                Err(FetchError::Standalone) => return Ok(SlotMap::single_node(&addr)),
                Err(FetchError::Other(e)) => last_err = format!("{addr}: {e}"),
            }
        }
        topology::choose_view(views).ok_or(last_err)
    }

    fn ask(&self, addr: &str) -> Result<SlotMap, FetchError> {
        let timeout = self.cfg.cluster_refresh_timeout;
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| FetchError::Other(format!("resolve: {e}")))?
            .next()
            .ok_or_else(|| FetchError::Other("resolve: no address".into()))?;
        let connect_timeout = self.cfg.connect_timeout.min(timeout);
        let s = TcpStream::connect_timeout(&sa, connect_timeout).map_err(other)?;
        s.set_read_timeout(Some(timeout)).map_err(other)?;
        s.set_write_timeout(Some(timeout)).map_err(other)?;
        let _ = s.set_nodelay(true);
        let mut s: Box<dyn ReadWrite> = match self.tls_session(addr).map_err(FetchError::Other)? {
            Some(session) => Box::new(rustls::StreamOwned::new(session, s)),
            None => Box::new(s),
        };
        let mut req = Vec::new();
        let mut expect = 1;
        if let Some(pass) = &self.cfg.auth_password {
            req = match &self.cfg.auth_username {
                Some(u) => codec::command(&[b"AUTH", u.as_bytes(), pass.as_bytes()]),
                None => codec::command(&[b"AUTH", pass.as_bytes()]),
            };
            expect = 2;
        }
        req.extend_from_slice(topology::CLUSTER_SLOTS_REQUEST);
        s.write_all(&req).map_err(other)?;
        let deadline = Instant::now() + timeout;
        let mut buf = Vec::new();
        let mut pos = 0;
        let mut chunk = [0u8; 16384];
        for i in 0..expect {
            let len = loop {
                if let Some(n) = codec::reply_len(&buf[pos..]).map_err(FetchError::Other)? {
                    break n;
                }
                if Instant::now() > deadline || buf.len() > MAX_REPLY {
                    return Err(FetchError::Other("timeout reading CLUSTER SLOTS".into()));
                }
                let n = s.read(&mut chunk).map_err(other)?;
                if n == 0 {
                    return Err(FetchError::Other("connection closed".into()));
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let reply = &buf[pos..pos + len];
            pos += len;
            if i + 1 < expect {
                if let Some(e) = codec::error_text(reply) {
                    return Err(FetchError::Other(format!(
                        "AUTH failed: {}",
                        String::from_utf8_lossy(e)
                    )));
                }
                continue;
            }
            return match topology::parse_cluster_slots(reply, addr) {
                Ok(m) => Ok(m),
                Err(TopologyError::ClusterDisabled) => Err(FetchError::Standalone),
                Err(e) => Err(FetchError::Other(format!("{e:?}"))),
            };
        }
        Err(FetchError::Other("no reply".into()))
    }
}

/// A blocking byte stream (plain TCP or TLS over it).
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

enum FetchError {
    /// The node is a standalone Redis (cluster support disabled).
    Standalone,
    Other(String),
}

fn other(e: std::io::Error) -> FetchError {
    FetchError::Other(e.to_string())
}
