//! Harness for the integration tests: loopback Redis Clusters, Envoy processes
//! and a raw RESP client.
//!
//! Everything here runs real programs: `redis-server` and `redis-cli` from
//! PATH, and Envoy from `$ENVOY_BIN` (else `scripts/envoy-bin.sh`). Every test
//! owns its processes: [`Cluster`] and [`Envoy`] kill exactly the PIDs they
//! started when dropped, also when the test panics.
//!
//! # Main API
//! - [`Cluster::start`]`(masters, replicas_per_master)`: a fresh Redis Cluster on
//!   free loopback ports, ready (every node `cluster_state:ok`, same slot map
//!   with replicas on every node). [`Cluster::ports`], [`Cluster::master_ports`],
//!   [`Cluster::node_for_slot`], [`Cluster::node_for_key`], [`Cluster::client`],
//!   [`Cluster::kill_node`], [`Cluster::restart_node`], [`Cluster::pause_node`],
//!   [`Cluster::redis_cli`].
//! - [`Envoy::start`]`(filter_config)`: Envoy with the `envoy_redis_cluster`
//!   module (from `$MODULE_DIR`, default `target/debug`) and the given JSON as
//!   its filter config. [`Envoy::start_builtin_redis_proxy`]`(&cluster)`: Envoy's
//!   own `redis_proxy` filter in front of the same cluster, for comparison and
//!   to check the tests themselves. [`Envoy::validate`] runs `--mode validate`.
//! - [`start_proxy`]: the proxy *under test* — the module, or the built-in
//!   filter when `PROXY_UNDER_TEST=builtin` (same JSON, translated).
//! - [`RawClient`]: a TcpStream client that writes raw bytes and reads RESP
//!   replies with a deadline, so a hang fails the test instead of hanging it.
//!
//! # Environment
//! - `ENVOY_BIN`: the bare Envoy binary (scripts/test.sh sets it).
//! - `MODULE_DIR`: directory holding `libenvoy_redis_cluster.so`.
//! - `PROXY_UNDER_TEST`: `module` (default) or `builtin`.
//! - `KEEP_TEST_DIRS=1`: keep the temp dirs (configs, logs) under `target/tmp`;
//!   a failing test keeps its own anyway and prints where they are.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

/// Name of the module (`lib<name>.so`) and of its filter.
pub const MODULE_NAME: &str = "envoy_redis_cluster";
pub const FILTER_NAME: &str = "redis_cluster";

/// The cluster bus of a node listening on `port` is on `port + BUS_OFFSET`.
pub const BUS_OFFSET: u16 = 50;

/// Default deadline for one reply in [`RawClient`] and for `redis` connections.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Paths, temp dirs
// ---------------------------------------------------------------------------

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<target>/tmp`, as cargo tells integration tests.
fn target_tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new, empty directory `target/tmp/<tag>-<pid>-<n>`.
pub fn new_temp_dir(tag: &str) -> PathBuf {
    let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = target_tmp().join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn keep_dirs() -> bool {
    std::env::var("KEEP_TEST_DIRS").is_ok_and(|v| v == "1")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------
//
// Ports come from 10000..32700 (below Linux's ephemeral range, so the source
// port of some client connection cannot take a node's port between our check
// and the node's bind). The range is cut in blocks of 100: the first 50 ports
// of a block are handed out, the next 50 are their cluster-bus twins
// (port + 50), so a handed-out port never collides with another one's bus.
// Each process starts at a block derived from its PID and counts up, and every
// candidate is checked by binding both it and its twin.

const PORT_LOW: u32 = 10000;
const PORT_BLOCKS: u32 = 227; // 10000 + 227*100 = 32700
const PORT_SLOTS: u32 = PORT_BLOCKS * 50;

static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);

fn port_for_slot(slot: u32) -> u16 {
    let slot = slot % PORT_SLOTS;
    (PORT_LOW + (slot / 50) * 100 + slot % 50) as u16
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A loopback port that is free now, and whose `port + 50` is free too.
pub fn alloc_port() -> u16 {
    let start = (std::process::id() % PORT_BLOCKS) * 50;
    for _ in 0..PORT_SLOTS {
        let n = PORT_COUNTER.fetch_add(1, Ordering::SeqCst);
        let port = port_for_slot(start + n);
        if bindable(port) && bindable(port + BUS_OFFSET) {
            return port;
        }
    }
    panic!("no free loopback port pair found");
}

pub fn alloc_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| alloc_port()).collect()
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

fn have_setpriv() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        Command::new("setpriv")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A command for `program` that, when `setpriv` exists, is started through
/// `setpriv --pdeathsig KILL` (which execs, so the PID is the program's): if
/// the test process dies without running destructors (SIGKILL, abort), the
/// kernel kills the child too instead of leaking it.
fn command(program: &Path) -> Command {
    if have_setpriv() {
        let mut c = Command::new("setpriv");
        c.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log file"),
    )
}

/// Send a signal with the `kill` program (no libc needed), only to a
/// `redis-server` or `envoy` process. PIDs wrap quickly on a busy machine
/// (pid_max 32768 here) and thread ids share their space: a stale PID can
/// name another test's thread, and a stray SIGSTOP/SIGCONT there makes its
/// socket reads fail with EINTR.
pub fn signal(pid: u32, sig: &str) {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim();
    if !(comm.starts_with("redis-server") || comm.starts_with("envoy")) {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SIGCONT first: a SIGSTOPped process still dies of SIGKILL, but
        // this keeps the order of events simple to reason about.
        signal(child.id(), "CONT");
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Key slots (Redis Cluster's CRC16/XMODEM, with hash tags)
// ---------------------------------------------------------------------------

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a key, computed locally (cross-checked against
/// `CLUSTER KEYSLOT` in tests/harness.rs).
pub fn key_slot(key: &[u8]) -> u16 {
    let mut k = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                k = &key[open + 1..open + 1 + len];
            }
        }
    }
    crc16(k) % 16384
}

// ---------------------------------------------------------------------------
// Redis Cluster
// ---------------------------------------------------------------------------

/// One slot range of `CLUSTER SLOTS`: `[start, end]`, its master and replicas.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: u16,
    /// Sorted, so that two nodes' views compare equal.
    pub replicas: Vec<u16>,
}

struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A Redis Cluster of loopback `redis-server` processes that this test owns.
pub struct Cluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    masters: usize,
    replicas: usize,
}

pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Cluster {
    /// Start `masters` masters (at least 3, as `redis-cli --cluster create`
    /// needs) with `replicas_per_master` replicas each, and wait until the
    /// cluster is fully up (see [`Cluster::wait_healthy`]).
    pub fn start(masters: usize, replicas_per_master: usize) -> Cluster {
        assert!(masters >= 3, "redis-cli --cluster create needs 3 masters");
        let cluster = Cluster::launch(masters, replicas_per_master);
        let ports = cluster.ports();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend([
            "--cluster-replicas".into(),
            replicas_per_master.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = cluster.redis_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.success,
            "cluster create failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        cluster.wait_healthy(Duration::from_secs(60));
        cluster
    }

    /// Start the nodes of a cluster-to-be (each answers PING) without
    /// forming it: every node is alone and owns no slot.
    fn launch(masters: usize, replicas_per_master: usize) -> Cluster {
        let dir = new_temp_dir("cluster");
        let n = masters * (1 + replicas_per_master);
        let ports = alloc_ports(n);
        let mut cluster = Cluster {
            dir: dir.clone(),
            nodes: ports
                .iter()
                .map(|&port| Node {
                    port,
                    dir: dir.join(port.to_string()),
                    child: None,
                })
                .collect(),
            masters,
            replicas: replicas_per_master,
        };
        for i in 0..n {
            cluster.write_conf(i);
            cluster.spawn_node(i);
        }
        for &p in &ports {
            assert!(
                wait_until(Duration::from_secs(10), || ping(p)),
                "redis node {p} does not answer PING; log:\n{}",
                tail(&cluster.node(p).dir.join("redis.log"), 20)
            );
        }
        cluster
    }

    /// `n` cluster-enabled masters whose slots are not assigned yet (no
    /// `--cluster create`): each knows only itself and its `CLUSTER SLOTS`
    /// is empty. [`Cluster::assign_slots`] makes them a cluster.
    pub fn start_unassigned(n: usize) -> Cluster {
        let cluster = Cluster::launch(n, 0);
        for p in cluster.ports() {
            let slots = cluster.slot_map_of(p).expect("CLUSTER SLOTS");
            assert!(slots.is_empty(), "node {p} already owns slots: {slots:?}");
        }
        cluster
    }

    /// Split the 16384 slots in equal ranges over the nodes (`CLUSTER
    /// ADDSLOTSRANGE` on each) and introduce them to the first one
    /// (`CLUSTER MEET`). Returns without waiting for the cluster to
    /// converge.
    pub fn assign_slots(&self) {
        let ports = self.ports();
        let n = ports.len();
        for (i, &p) in ports.iter().enumerate() {
            let start = i * 16384 / n;
            let end = (i + 1) * 16384 / n - 1;
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(start)
                .arg(end)
                .query(&mut connect(p))
                .unwrap_or_else(|e| panic!("ADDSLOTSRANGE {start} {end} on {p}: {e}"));
        }
        for &p in &ports[1..] {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(p)
                .arg(p + BUS_OFFSET)
                .query(&mut connect(ports[0]))
                .unwrap_or_else(|e| panic!("CLUSTER MEET {p}: {e}"));
        }
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    fn index(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    fn write_conf(&self, i: usize) {
        let node = &self.nodes[i];
        fs::create_dir_all(&node.dir).unwrap();
        let d = node.dir.display();
        let conf = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             protected-mode no\n\
             cluster-enabled yes\n\
             cluster-port {bus}\n\
             cluster-config-file {d}/nodes.conf\n\
             cluster-node-timeout 2000\n\
             cluster-require-full-coverage no\n\
             repl-ping-replica-period 1\n\
             repl-diskless-sync-delay 0\n\
             save \"\"\n\
             appendonly no\n\
             dir {d}\n\
             logfile {d}/redis.log\n\
             daemonize no\n",
            port = node.port,
            bus = node.port + BUS_OFFSET,
        );
        fs::write(node.dir.join("redis.conf"), conf).unwrap();
    }

    fn spawn_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = command(Path::new("redis-server"))
            .arg(node.dir.join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(log_file(&node.dir.join("stdout.log")))
            .stderr(log_file(&node.dir.join("stdout.log")))
            .spawn()
            .expect("spawn redis-server (run scripts/install.sh)");
        node.child = Some(child);
    }

    /// Every node's port, masters and replicas (in start order).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `127.0.0.1:<port>` of the first three nodes (good seeds).
    pub fn seeds(&self) -> Vec<String> {
        self.ports()
            .iter()
            .take(3)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// Ports of nodes that are running (not killed, paused ones included).
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    pub fn pid(&self, port: u16) -> u32 {
        self.node(port)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {port} is not running"))
            .id()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A plain (non-cluster) connection straight to one node.
    pub fn client(&self, port: u16) -> redis::Connection {
        connect(port)
    }

    /// The slot map as one running node sees it.
    pub fn slot_map_of(&self, port: u16) -> redis::RedisResult<Vec<SlotRange>> {
        let mut con = try_connect(port)?;
        let v: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
        Ok(parse_cluster_slots(&v))
    }

    /// The slot map according to the first running node that answers.
    pub fn slot_map(&self) -> Vec<SlotRange> {
        for p in self.live_ports() {
            if let Ok(m) = self.slot_map_of(p) {
                if !m.is_empty() {
                    return m;
                }
            }
        }
        panic!("no node answers CLUSTER SLOTS");
    }

    /// Ports of the masters that own slots, in slot order.
    pub fn master_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = Vec::new();
        for r in self.slot_map() {
            if !v.contains(&r.master) {
                v.push(r.master);
            }
        }
        v
    }

    /// Port of the master that owns `slot`.
    pub fn node_for_slot(&self, slot: u16) -> u16 {
        self.slot_map()
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .unwrap_or_else(|| panic!("slot {slot} is not covered"))
            .master
    }

    /// Port of the master that owns `key` (slot computed locally).
    pub fn node_for_key(&self, key: &[u8]) -> u16 {
        self.node_for_slot(key_slot(key))
    }

    /// `CLUSTER KEYSLOT key`, asked of a running node.
    pub fn keyslot(&self, key: &[u8]) -> u16 {
        let mut con = self.client(self.live_ports()[0]);
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query::<u16>(&mut con)
            .expect("CLUSTER KEYSLOT")
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> String {
        let mut con = self.client(port);
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query::<String>(&mut con)
            .expect("CLUSTER MYID")
    }

    /// Wait until every running node says `cluster_state:ok` and all of them
    /// report the same slot map, listing every running node (so replicas are
    /// visible everywhere). Panics after `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) {
        let want_nodes = self.live_ports().len();
        let ok = wait_until(timeout, || self.is_healthy(want_nodes));
        if !ok {
            let views: Vec<String> = self
                .live_ports()
                .iter()
                .map(|&p| format!("{p}: {:?}", self.slot_map_of(p)))
                .collect();
            panic!(
                "cluster not healthy after {timeout:?}; views:\n{}",
                views.join("\n")
            );
        }
    }

    fn is_healthy(&self, want_nodes: usize) -> bool {
        let mut reference: Option<Vec<SlotRange>> = None;
        for p in self.live_ports() {
            let Ok(mut con) = try_connect(p) else {
                return false;
            };
            let info: String = match redis::cmd("CLUSTER").arg("INFO").query(&mut con) {
                Ok(s) => s,
                Err(_) => return false,
            };
            if !info.contains("cluster_state:ok") {
                return false;
            }
            let Ok(map) = self.slot_map_of(p) else {
                return false;
            };
            let mut seen: Vec<u16> = map
                .iter()
                .flat_map(|r| std::iter::once(r.master).chain(r.replicas.iter().copied()))
                .collect();
            seen.sort();
            seen.dedup();
            if seen.len() != want_nodes {
                return false;
            }
            match &reference {
                None => reference = Some(map),
                Some(r) if *r != map => return false,
                _ => {}
            }
        }
        reference.is_some()
    }

    /// Move `slot` from master `from` to master `to` as `redis-cli --cluster
    /// reshard` does: IMPORTING/MIGRATING, MIGRATE of its keys, then SETSLOT
    /// NODE on both and on every other master.
    pub fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let slot = slot.to_string();
        let mut src = RawClient::connect(from);
        let mut dst = RawClient::connect(to);
        assert_eq!(
            dst.cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]),
            Resp::ok()
        );
        assert_eq!(
            src.cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]),
            Resp::ok()
        );
        loop {
            let Resp::Array(keys) = src.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]) else {
                panic!("GETKEYSINSLOT")
            };
            if keys.is_empty() {
                break;
            }
            let mut cmd: Vec<String> = ["MIGRATE", "127.0.0.1", &to.to_string(), "", "0", "5000"]
                .map(String::from)
                .to_vec();
            cmd.push("KEYS".into());
            cmd.extend(keys.iter().filter_map(Resp::text));
            assert_eq!(src.cmd(&cmd), Resp::ok(), "MIGRATE");
        }
        assert_eq!(
            dst.cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
            Resp::ok()
        );
        assert_eq!(
            src.cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
            Resp::ok()
        );
        for p in self.master_ports() {
            if p != from && p != to {
                let r = RawClient::connect(p).cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
                assert_eq!(r, Resp::ok(), "SETSLOT NODE on {p}");
            }
        }
    }

    /// SIGKILL one node and reap it.
    pub fn kill_node(&mut self, port: u16) {
        let i = self.index(port);
        if let Some(mut c) = self.nodes[i].child.take() {
            stop_child(&mut c);
        }
    }

    /// Start a killed node again with its old config and nodes.conf (it
    /// rejoins the cluster) and wait until it answers PING.
    pub fn restart_node(&mut self, port: u16) {
        let i = self.index(port);
        if let Some(mut c) = self.nodes[i].child.take() {
            stop_child(&mut c);
        }
        self.spawn_node(i);
        assert!(
            wait_until(Duration::from_secs(10), || ping(port)),
            "restarted node {port} does not answer PING"
        );
    }

    /// SIGSTOP a node; it gets SIGCONT when the guard is dropped (and the
    /// cluster's own Drop kills it anyway).
    pub fn pause_node(&self, port: u16) -> PausedNode {
        let pid = self.pid(port);
        signal(pid, "STOP");
        PausedNode { pid }
    }

    /// Run the real `redis-cli` with these arguments.
    pub fn redis_cli(&self, args: &[&str]) -> CliOutput {
        redis_cli(args)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                stop_child(&mut c);
            }
        }
        if thread::panicking() {
            // Kept for a look at the nodes' logs.
            eprintln!("--- cluster dir (kept): {}", self.dir.display());
        } else if !keep_dirs() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A SIGSTOPped node; SIGCONT on drop.
pub struct PausedNode {
    pid: u32,
}

impl PausedNode {
    pub fn resume(self) {}
}

impl Drop for PausedNode {
    fn drop(&mut self) {
        signal(self.pid, "CONT");
    }
}

/// Run the real `redis-cli`.
pub fn redis_cli(args: &[&str]) -> CliOutput {
    redis_cli_stdin(args, None)
}

/// Run the real `redis-cli`, feeding `stdin` to it.
pub fn redis_cli_stdin(args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    let mut child = Command::new("redis-cli")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redis-cli (run scripts/install.sh)");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(input).unwrap();
    }
    let out: Output = child.wait_with_output().expect("redis-cli");
    CliOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut c) = RawClient::try_connect(port, Duration::from_millis(500)) else {
        return false;
    };
    c.set_timeout(Duration::from_millis(500));
    c.send(b"PING\r\n").is_ok() && matches!(c.try_read_reply(), Ok(Resp::Simple(s)) if s == "PONG")
}

fn answers_noauth(port: u16) -> bool {
    let Ok(mut c) = RawClient::try_connect(port, Duration::from_millis(500)) else {
        return false;
    };
    c.set_timeout(Duration::from_millis(500));
    c.send(b"PING\r\n").is_ok()
        && matches!(c.try_read_reply(), Ok(Resp::Error(e)) if e.starts_with("NOAUTH"))
}

pub fn try_connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// A plain `redis::Connection` to 127.0.0.1:port with read/write timeouts.
pub fn connect(port: u16) -> redis::Connection {
    try_connect(port).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

fn value_port(v: &redis::Value) -> Option<u16> {
    match v {
        redis::Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    }
}

/// Parse a `CLUSTER SLOTS` reply.
pub fn parse_cluster_slots(v: &redis::Value) -> Vec<SlotRange> {
    let mut out = Vec::new();
    let redis::Value::Array(ranges) = v else {
        return out;
    };
    for r in ranges {
        let redis::Value::Array(items) = r else {
            continue;
        };
        if items.len() < 3 {
            continue;
        }
        let (Some(start), Some(end)) = (value_port(&items[0]), value_port(&items[1])) else {
            continue;
        };
        let ports: Vec<u16> = items[2..]
            .iter()
            .filter_map(|n| match n {
                redis::Value::Array(f) if f.len() >= 2 => value_port(&f[1]),
                _ => None,
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let mut replicas = ports[1..].to_vec();
        replicas.sort();
        out.push(SlotRange {
            start,
            end,
            master: ports[0],
            replicas,
        });
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Envoy
// ---------------------------------------------------------------------------

/// The bare Envoy binary: `$ENVOY_BIN`, else the output of scripts/envoy-bin.sh.
pub fn envoy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(b) = std::env::var("ENVOY_BIN") {
            if !b.is_empty() {
                return PathBuf::from(b);
            }
        }
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/envoy-bin.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/envoy-bin.sh");
        assert!(out.status.success(), "scripts/envoy-bin.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// Directory of `libenvoy_redis_cluster.so`: `$MODULE_DIR`, else the debug
/// build dir (`target/debug`). Panics with a clear message when the module is
/// not built: every test that uses it depends on `cargo build` succeeding.
pub fn module_dir() -> PathBuf {
    let dir = match std::env::var("MODULE_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => target_tmp().parent().expect("target dir").join("debug"),
    };
    let so = dir.join(format!("lib{MODULE_NAME}.so"));
    assert!(
        so.exists(),
        "MODULE-DEPENDENT TEST: {} does not exist; build the module first (cargo build)",
        so.display()
    );
    dir
}

/// Which proxy [`start_proxy`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// Our dynamic module (the default).
    Module,
    /// Envoy's built-in `envoy.filters.network.redis_proxy` with an
    /// `envoy.clusters.redis` cluster: for checking the tests themselves.
    Builtin,
}

/// `PROXY_UNDER_TEST=builtin` selects the built-in proxy, anything else the module.
pub fn proxy_under_test() -> ProxyKind {
    match std::env::var("PROXY_UNDER_TEST").as_deref() {
        Ok("builtin") => ProxyKind::Builtin,
        _ => ProxyKind::Module,
    }
}

/// The module's filter config for `cluster`, as in envoy-config/standalone:
/// one cluster "main" seeded with the first three nodes, one catch-all route.
/// `settings` entries replace the defaults (`op_timeout: 5s`, redirection and
/// hash tags on, `read_policy: MASTER`).
pub fn module_config(cluster: &Cluster, settings: Json) -> Json {
    let mut s = json!({
        "op_timeout": "5s",
        "enable_redirection": true,
        "enable_hashtagging": true,
        "read_policy": "MASTER",
    });
    if let (Some(base), Json::Object(extra)) = (s.as_object_mut(), settings) {
        for (k, v) in extra {
            base.insert(k, v);
        }
    }
    json!({
        "stat_prefix": "redis",
        "settings": s,
        "clusters": {
            "main": {
                "seeds": cluster.seeds(),
                "cluster_refresh_rate": "5s",
                "cluster_refresh_timeout": "3s",
            }
        },
        "prefix_routes": { "catch_all_route": { "cluster": "main" } },
    })
}

/// Start the proxy under test ([`proxy_under_test`]) with this filter config
/// (module-shaped JSON; translated for the built-in filter).
pub fn start_proxy(filter_config: Json) -> Envoy {
    match proxy_under_test() {
        ProxyKind::Module => Envoy::start(filter_config),
        ProxyKind::Builtin => Envoy::start_builtin(filter_config),
    }
}

/// An Envoy process that this test owns.
pub struct Envoy {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    admin_port: u16,
    log_path: PathBuf,
    pub kind: ProxyKind,
}

fn listener(name: &str, port: u16, filter: Json) -> Json {
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [ { "filters": [ filter ] } ],
    })
}

fn admin(port: u16) -> Json {
    json!({ "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } })
}

/// The listener filter entry that loads our module with `filter_config`.
pub fn module_filter(filter_config: Json) -> Json {
    json!({
        "name": "envoy.filters.network.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.dynamic_modules.v3.DynamicModuleNetworkFilter",
            "dynamic_module_config": { "name": MODULE_NAME },
            "filter_name": FILTER_NAME,
            "terminal_filter": true,
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.Struct",
                "value": filter_config,
            },
        },
    })
}

/// A whole bootstrap: admin on `admin_port`, one listener on `port` whose
/// only filter is the module with `filter_config`.
pub fn module_bootstrap(filter_config: Json, port: u16, admin_port: u16) -> Json {
    json!({
        "admin": admin(admin_port),
        "static_resources": {
            "listeners": [ listener("redis", port, module_filter(filter_config)) ],
        },
    })
}

/// "200ms" / "1.5s" / "2m" → protobuf JSON's seconds form ("0.200s").
fn proto_duration(t: &str) -> String {
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        return t.to_string();
    };
    match num.trim().parse::<f64>() {
        Ok(v) => format!("{:.3}s", v * scale),
        Err(_) => t.to_string(),
    }
}

/// The built-in `redis_proxy` equivalent of a module filter config: the same
/// settings and routes, each module cluster becoming an `envoy.clusters.redis`
/// cluster whose endpoints are the seeds.
pub fn builtin_bootstrap(filter_config: &Json, port: u16, admin_port: u16) -> Json {
    let mut settings = filter_config["settings"].clone();
    if settings.is_null() {
        settings = json!({ "op_timeout": "5s" });
    }
    if let Some(t) = settings.get("op_timeout").and_then(Json::as_str) {
        settings["op_timeout"] = json!(proto_duration(t));
    }
    let mut clusters = Vec::new();
    if let Some(map) = filter_config["clusters"].as_object() {
        for (name, c) in map {
            let endpoints: Vec<Json> = c["seeds"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let s = s.as_str().expect("seed is a string");
                    let (host, port) = s.rsplit_once(':').expect("seed is host:port");
                    json!({ "endpoint": { "address": { "socket_address": {
                        "address": host, "port_value": port.parse::<u16>().unwrap() } } } })
                })
                .collect();
            let mut redis_cfg = json!({
                "@type": "type.googleapis.com/envoy.extensions.clusters.redis.v3.RedisClusterConfig",
            });
            for k in ["cluster_refresh_rate", "cluster_refresh_timeout"] {
                if let Some(t) = c[k].as_str() {
                    redis_cfg[k] = json!(proto_duration(t));
                }
            }
            clusters.push(json!({
                "name": name,
                "connect_timeout": "1s",
                "lb_policy": "CLUSTER_PROVIDED",
                "cluster_type": { "name": "envoy.clusters.redis", "typed_config": redis_cfg },
                "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": endpoints } ] },
            }));
        }
    }
    let filter = json!({
        "name": "envoy.filters.network.redis_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
            "stat_prefix": filter_config["stat_prefix"].as_str().unwrap_or("redis"),
            "settings": settings,
            "prefix_routes": filter_config["prefix_routes"].clone(),
        },
    });
    json!({
        "admin": admin(admin_port),
        "static_resources": {
            "listeners": [ listener("redis", port, filter) ],
            "clusters": clusters,
        },
    })
}

impl Envoy {
    /// Envoy with our module in front of whatever `filter_config` names.
    /// MODULE-DEPENDENT.
    pub fn start(filter_config: Json) -> Envoy {
        let (port, admin_port) = (alloc_port(), alloc_port());
        let bootstrap = module_bootstrap(filter_config, port, admin_port);
        Envoy::start_bootstrap(ProxyKind::Module, &bootstrap, port, admin_port)
    }

    /// Envoy's built-in redis_proxy configured from module-shaped JSON.
    pub fn start_builtin(filter_config: Json) -> Envoy {
        let (port, admin_port) = (alloc_port(), alloc_port());
        let bootstrap = builtin_bootstrap(&filter_config, port, admin_port);
        Envoy::start_bootstrap(ProxyKind::Builtin, &bootstrap, port, admin_port)
    }

    /// Envoy's built-in redis_proxy in front of `cluster`, with the same
    /// settings as the standalone demo config.
    pub fn start_builtin_redis_proxy(cluster: &Cluster) -> Envoy {
        Envoy::start_builtin(module_config(cluster, json!({})))
    }

    /// Start Envoy with a whole bootstrap whose listener is on `port` and
    /// admin on `admin_port`; wait until the listener answers PING.
    pub fn start_bootstrap(kind: ProxyKind, bootstrap: &Json, port: u16, admin_port: u16) -> Envoy {
        let dir = new_temp_dir("envoy");
        let config = dir.join("envoy.yaml");
        // JSON is valid YAML; Envoy picks the parser by the file extension.
        fs::write(&config, serde_json::to_string_pretty(bootstrap).unwrap()).unwrap();
        let log_path = dir.join("envoy.log");
        let mut cmd = command(&envoy_bin());
        cmd.arg("-c")
            .arg(&config)
            .args([
                "--disable-hot-restart",
                "-l",
                &std::env::var("ENVOY_LOG_LEVEL").unwrap_or("warning".into()),
                "--concurrency",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(log_file(&log_path))
            .stderr(log_file(&log_path));
        if kind == ProxyKind::Module {
            cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir());
        }
        let child = cmd.spawn().expect("spawn envoy");
        let mut envoy = Envoy {
            child: Some(child),
            dir,
            port,
            admin_port,
            log_path,
            kind,
        };
        envoy.wait_ready(Duration::from_secs(20));
        envoy
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let port = self.port;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "envoy exited during start-up ({status}); log:\n{}",
                        tail(&self.log_path, 40)
                    );
                }
            }
            // PONG, or NOAUTH when the config requires clients to AUTH:
            // either way the proxy is serving.
            if ping(port) || answers_noauth(port) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "envoy's listener 127.0.0.1:{port} did not answer PING within {timeout:?}; log:\n{}",
                    tail(&self.log_path, 40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Validate a bootstrap with `envoy --mode validate` (loads the module
    /// and runs its config hook; needs no Redis). Returns (accepted, output).
    /// MODULE-DEPENDENT when the bootstrap uses the module.
    pub fn validate(bootstrap_yaml: &str) -> (bool, String) {
        let dir = new_temp_dir("validate");
        let config = dir.join("envoy.yaml");
        fs::write(&config, bootstrap_yaml).unwrap();
        let out = Command::new(envoy_bin())
            .arg("--mode")
            .arg("validate")
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "-l", "warning"])
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir())
            .stdin(Stdio::null())
            .output()
            .expect("run envoy --mode validate");
        if !keep_dirs() {
            let _ = fs::remove_dir_all(&dir);
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// The listener port (where Redis clients connect).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("envoy running").id()
    }

    /// Is the Envoy process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// GET /stats from the admin interface.
    pub fn stats(&self) -> String {
        self.admin_get("/stats")
    }

    /// The value of one counter or gauge from /stats (exact name).
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats().lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// An HTTP/1.1 GET (Connection: close) against the admin interface; the body.
    pub fn admin_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.admin_port)).expect("connect admin");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("read admin reply");
        let Some(split) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
            return String::from_utf8_lossy(&resp).into_owned();
        };
        let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
        let body = &resp[split + 4..];
        if head.contains("transfer-encoding: chunked") {
            String::from_utf8_lossy(&dechunk(body)).into_owned()
        } else {
            String::from_utf8_lossy(body).into_owned()
        }
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// A new raw client connected to the listener.
    pub fn raw_client(&self) -> RawClient {
        RawClient::connect(self.port)
    }

    /// A new plain `redis::Connection` to the listener.
    pub fn client(&self) -> redis::Connection {
        connect(self.port)
    }

    /// Stop Envoy now (SIGKILL) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

/// Decode an HTTP/1.1 chunked body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let crashed = match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status),
            _ => None,
        };
        self.stop();
        if thread::panicking() || crashed.is_some() {
            eprintln!(
                "--- envoy ({:?}, listener {}, admin {}{}) log tail, {}:\n{}\n--- end of envoy log",
                self.kind,
                self.port,
                self.admin_port,
                crashed
                    .map(|s| format!(", EXITED: {s}"))
                    .unwrap_or_default(),
                self.log_path.display(),
                tail(&self.log_path, 60)
            );
        }
        if !keep_dirs() && !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Raw RESP client
// ---------------------------------------------------------------------------

/// A RESP reply (RESP2, plus the RESP3 scalars a test might see).
#[derive(Clone, Debug, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// `$-1` or RESP3 `_`.
    Nil,
    Array(Vec<Resp>),
    /// `*-1`.
    NilArray,
    Double(String),
    Bool(bool),
    /// RESP3 `%` map, as key/value pairs.
    Map(Vec<(Resp, Resp)>),
}

impl Resp {
    pub fn is_error(&self) -> bool {
        matches!(self, Resp::Error(_))
    }

    /// Bulk or simple string contents, lossy UTF-8.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Simple(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn bulk(s: impl AsRef<[u8]>) -> Resp {
        Resp::Bulk(s.as_ref().to_vec())
    }

    pub fn ok() -> Resp {
        Resp::Simple("OK".into())
    }
}

/// Parse one reply from the front of `buf`. `Ok(None)`: incomplete.
pub fn parse_resp(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
        let rel = buf[from..].windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[from..from + rel], from + rel + 2))
    }
    fn int(b: &[u8]) -> Result<i64, String> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad integer {:?}", String::from_utf8_lossy(b)))
    }
    fn one(buf: &[u8], at: usize) -> Result<Option<(Resp, usize)>, String> {
        if at >= buf.len() {
            return Ok(None);
        }
        let Some((l, next)) = line(buf, at + 1) else {
            return Ok(None);
        };
        let text = || String::from_utf8_lossy(l).into_owned();
        let v = match buf[at] {
            b'+' => (Resp::Simple(text()), next),
            b'-' => (Resp::Error(text()), next),
            b':' => (Resp::Int(int(l)?), next),
            b',' => (Resp::Double(text()), next),
            b'_' => (Resp::Nil, next),
            b'#' => (Resp::Bool(l == b"t"), next),
            b'$' | b'=' | b'!' => {
                let n = int(l)?;
                if n < 0 {
                    (Resp::Nil, next)
                } else {
                    let n = n as usize;
                    if buf.len() < next + n + 2 {
                        return Ok(None);
                    }
                    if &buf[next + n..next + n + 2] != b"\r\n" {
                        return Err("bulk string not followed by CRLF".into());
                    }
                    let data = buf[next..next + n].to_vec();
                    let v = if buf[at] == b'!' {
                        Resp::Error(String::from_utf8_lossy(&data).into_owned())
                    } else {
                        Resp::Bulk(data)
                    };
                    (v, next + n + 2)
                }
            }
            b'*' | b'~' | b'>' | b'%' => {
                let n = int(l)?;
                if n < 0 {
                    (Resp::NilArray, next)
                } else {
                    let count = if buf[at] == b'%' { 2 * n } else { n };
                    let mut items = Vec::with_capacity(count as usize);
                    let mut pos = next;
                    for _ in 0..count {
                        match one(buf, pos)? {
                            Some((v, p)) => {
                                items.push(v);
                                pos = p;
                            }
                            None => return Ok(None),
                        }
                    }
                    if buf[at] == b'%' {
                        let mut pairs = Vec::new();
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            pairs.push((k, v));
                        }
                        (Resp::Map(pairs), pos)
                    } else {
                        (Resp::Array(items), pos)
                    }
                }
            }
            other => return Err(format!("unexpected reply type byte {other:#04x}")),
        };
        Ok(Some(v))
    }
    one(buf, 0)
}

/// Encode a command as a RESP array of bulk strings.
pub fn encode_cmd<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What [`RawClient::read_outcome`] saw.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Reply(Resp),
    /// The peer closed the connection (EOF or reset) before a whole reply.
    Closed,
    /// Nothing (complete) arrived before the deadline.
    TimedOut,
}

/// A plain TCP client speaking raw RESP, with a read deadline.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        RawClient::try_connect(port, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
    }

    pub fn try_connect(port: u16, timeout: Duration) -> io::Result<RawClient> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
            timeout: IO_TIMEOUT,
        })
    }

    /// Deadline for each read_* call (default [`IO_TIMEOUT`]).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// A clone of the socket, e.g. for a writer thread.
    pub fn stream_clone(&self) -> TcpStream {
        self.stream.try_clone().expect("clone stream")
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Send one command as a RESP array.
    pub fn send_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        let b = encode_cmd(args);
        self.send(&b).expect("send command");
    }

    /// Send a command and read its reply (panics on timeout/close).
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Resp {
        self.send_cmd(args);
        self.read_reply()
    }

    /// Close our writing side (FIN), keep reading.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Read one reply, waiting at most the timeout. Closed and timed-out
    /// connections are errors.
    pub fn try_read_reply(&mut self) -> io::Result<Resp> {
        match self.read_outcome() {
            Outcome::Reply(r) => Ok(r),
            Outcome::Closed => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            )),
            Outcome::TimedOut => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply within {:?}", self.timeout),
            )),
        }
    }

    /// Read one reply; panics (failing the test) on timeout, close or a
    /// protocol error.
    pub fn read_reply(&mut self) -> Resp {
        match self.read_outcome() {
            Outcome::Reply(r) => r,
            other => panic!(
                "expected a reply, got {other:?} ({} unparsed bytes buffered)",
                self.buf.len()
            ),
        }
    }

    /// Read `n` replies.
    pub fn read_replies(&mut self, n: usize) -> Vec<Resp> {
        (0..n).map(|_| self.read_reply()).collect()
    }

    /// One reply, a close, or a timeout: never blocks past the deadline.
    /// A reply that does not parse panics.
    pub fn read_outcome(&mut self) -> Outcome {
        let deadline = Instant::now() + self.timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match parse_resp(&self.buf) {
                Ok(Some((v, used))) => {
                    self.buf.drain(..used);
                    return Outcome::Reply(v);
                }
                Ok(None) => {}
                Err(e) => panic!(
                    "unparsable reply ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                ),
            }
            let now = Instant::now();
            if now >= deadline {
                return Outcome::TimedOut;
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .expect("set_read_timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return Outcome::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Outcome::TimedOut
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Outcome::Closed,
            }
        }
    }

    /// After the peer should have closed: true when EOF/reset arrives within
    /// the timeout with no further bytes.
    pub fn is_closed(&mut self) -> bool {
        matches!(self.read_outcome(), Outcome::Closed)
    }
}

// ---------------------------------------------------------------------------
// Small helpers for tests
// ---------------------------------------------------------------------------

/// Keys spread over all slots: `"{prefix}:{i}"`.
pub fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i}")).collect()
}

/// Group keys by the master that owns them.
pub fn by_owner(cluster: &Cluster, keys: &[String]) -> BTreeMap<u16, Vec<String>> {
    let map = cluster.slot_map();
    let mut out: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for k in keys {
        let slot = key_slot(k.as_bytes());
        let owner = map
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .expect("slot covered")
            .master;
        out.entry(owner).or_default().push(k.clone());
    }
    out
}

// ===========================================================================
// Added for tests/differential.rs, tests/cluster_commands.rs, tests/clients.rs
// and tests/transactions.rs (new helpers only; nothing above is changed).
// ===========================================================================

/// A standalone (non-cluster) `redis-server` on a free loopback port that
/// this test owns: the reference a proxied cluster's replies are compared
/// with. Killed (by its own PID) on drop.
pub struct StandaloneRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl StandaloneRedis {
    /// Start it (no persistence) and wait until it answers PING.
    pub fn start() -> StandaloneRedis {
        let dir = new_temp_dir("standalone");
        let port = alloc_port();
        let d = dir.display();
        let conf = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             protected-mode no\n\
             save \"\"\n\
             appendonly no\n\
             dir {d}\n\
             logfile {d}/redis.log\n\
             daemonize no\n"
        );
        fs::write(dir.join("redis.conf"), conf).unwrap();
        let child = command(Path::new("redis-server"))
            .arg(dir.join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("stdout.log")))
            .stderr(log_file(&dir.join("stdout.log")))
            .spawn()
            .expect("spawn redis-server (run scripts/install.sh)");
        let r = StandaloneRedis {
            child: Some(child),
            port,
            dir,
        };
        assert!(
            wait_until(Duration::from_secs(10), || ping(port)),
            "standalone redis on {port} does not answer PING; log:\n{}",
            tail(&r.dir.join("redis.log"), 20)
        );
        r
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn raw_client(&self) -> RawClient {
        RawClient::connect(self.port)
    }

    pub fn client(&self) -> redis::Connection {
        connect(self.port)
    }
}

impl Drop for StandaloneRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
        if !keep_dirs() && !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl RawClient {
    /// Read one reply and return its exact bytes as they came off the wire
    /// (for byte-for-byte comparisons). Panics on timeout or close.
    pub fn read_reply_bytes(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match parse_resp(&self.buf) {
                Ok(Some((_, used))) => return self.buf.drain(..used).collect(),
                Ok(None) => {}
                Err(e) => panic!(
                    "unparsable reply ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
                ),
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no complete reply within {:?} ({} bytes buffered: {:?})",
                self.timeout,
                self.buf.len(),
                String::from_utf8_lossy(&self.buf[..self.buf.len().min(200)])
            );
            self.stream
                .set_read_timeout(Some(deadline - now))
                .expect("set_read_timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("connection closed before a whole reply"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }
}

/// RESP bytes shown for humans: CRLF as `\r\n`, other control bytes escaped.
pub fn show_resp(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(600) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > 600 {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

/// A command shown for humans: its arguments joined by spaces.
pub fn show_cmd<A: AsRef<[u8]>>(args: &[A]) -> String {
    args.iter()
        .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A reply with the elements of every array/set sorted (and map pairs
/// sorted by key), recursively: for replies whose order Redis does not
/// define (SMEMBERS, KEYS, HKEYS of a hashtable-encoded hash ...).
pub fn sorted_resp(r: &Resp) -> Resp {
    fn key(r: &Resp) -> String {
        format!("{r:?}")
    }
    match r {
        Resp::Array(items) => {
            let mut v: Vec<Resp> = items.iter().map(sorted_resp).collect();
            v.sort_by_key(key);
            Resp::Array(v)
        }
        Resp::Map(pairs) => {
            let mut v: Vec<(Resp, Resp)> = pairs
                .iter()
                .map(|(k, v)| (sorted_resp(k), sorted_resp(v)))
                .collect();
            v.sort_by_key(|(k, v)| (key(k), key(v)));
            Resp::Map(v)
        }
        other => other.clone(),
    }
}

/// A raw RESP reply parsed (panics when it does not parse whole).
pub fn parse_whole(bytes: &[u8]) -> Resp {
    match parse_resp(bytes) {
        Ok(Some((r, used))) if used == bytes.len() => r,
        other => panic!("not one whole reply ({other:?}): {}", show_resp(bytes)),
    }
}

// ---------------------------------------------------------------------------
// Growing a cluster (topology-change tests).

impl Cluster {
    /// Start one more node, join it to the cluster as an empty master
    /// (`redis-cli --cluster add-node`) and wait until every node knows it.
    pub fn add_master(&mut self) -> u16 {
        let port = alloc_port();
        let dir = self.dir.join(port.to_string());
        self.nodes.push(Node {
            port,
            dir,
            child: None,
        });
        let i = self.nodes.len() - 1;
        self.write_conf(i);
        self.spawn_node(i);
        assert!(
            wait_until(Duration::from_secs(10), || ping(port)),
            "new node {port} does not answer PING"
        );
        let first = self.nodes[0].port;
        let out = redis_cli(&[
            "--cluster",
            "add-node",
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{first}"),
        ]);
        assert!(out.success, "add-node failed: {}{}", out.stdout, out.stderr);
        let id = self.node_id(port);
        let known = wait_until(Duration::from_secs(20), || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                redis_cli(&["-p", &n.port.to_string(), "cluster", "nodes"])
                    .stdout
                    .contains(&id)
            })
        });
        assert!(known, "not every node learned about {port}");
        let agreed = wait_until(Duration::from_secs(30), || {
            let out = redis_cli(&["--cluster", "check", &format!("127.0.0.1:{first}")]);
            out.success && !out.stdout.contains("don't agree")
        });
        assert!(agreed, "the cluster did not converge after adding {port}");
        let ok = wait_until(Duration::from_secs(30), || {
            redis_cli(&["-p", &port.to_string(), "cluster", "info"])
                .stdout
                .contains("cluster_state:ok")
        });
        assert!(ok, "new node {port} never reached cluster_state:ok");
        port
    }
}

// ---------------------------------------------------------------------------
// Per-node traffic counting (read-policy and mirroring tests).

/// `cmdstat_<cmd>` calls on one node (`INFO commandstats`).
pub fn calls(port: u16, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut connect(port))
        .unwrap_or_default();
    let needle = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `CONFIG RESETSTAT` on every node given.
pub fn reset_stats(ports: &[u16]) {
    for &p in ports {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut connect(p))
            .expect("CONFIG RESETSTAT");
    }
}

/// `redis-cli --cluster reshard`: move `slots` slots from node `from` to
/// node `to` (node ids), asking the node on `from_port`; panics on failure.
pub fn reshard(from_port: u16, from: &str, to: &str, slots: usize) {
    let out = redis_cli(&[
        "--cluster",
        "reshard",
        &format!("127.0.0.1:{from_port}"),
        "--cluster-from",
        from,
        "--cluster-to",
        to,
        "--cluster-slots",
        &slots.to_string(),
        "--cluster-yes",
    ]);
    assert!(out.success, "reshard failed: {}{}", out.stdout, out.stderr);
}

impl Cluster {
    /// The replicas' ports (every node that owns no slots).
    pub fn replica_ports(&self) -> Vec<u16> {
        let masters = self.master_ports();
        self.ports()
            .into_iter()
            .filter(|p| !masters.contains(p))
            .collect()
    }
}

/// Send each command to the proxy and to a standalone Redis, one at a
/// time, and require byte-identical replies.
pub fn same_as_redis(proxy: &mut RawClient, reference: &mut RawClient, script: &[Vec<&str>]) {
    for cmd in script {
        proxy.send_cmd(cmd);
        reference.send_cmd(cmd);
        let (p, r) = (proxy.read_reply_bytes(), reference.read_reply_bytes());
        assert_eq!(
            show_resp(&p),
            show_resp(&r),
            "{}: proxy (left) vs standalone Redis (right)",
            show_cmd(cmd)
        );
    }
}
