//! Single-key linearizability through topology changes, checked on a
//! recorded history (see `linearizability/checker.rs` for the rules).
//!
//! Several writer connections each own a set of keys and write increasing
//! values to them, pipelined (one write per key in flight); reader
//! connections pipeline GETs across all keys. Every operation is logged with
//! its invoke and complete times. Each scenario changes the cluster under
//! that load, then the history is checked: no stale read, no read of a value
//! never written, no value un-done, no acknowledged write lost — except
//! losses that Redis's asynchronous replication explains on `kill -9` of a
//! master, which are counted apart.
//!
//! Each test prints one `LINEARIZABILITY scenario=…` line; `scripts/stress.sh`
//! runs every scenario many times and sums those lines.

#[path = "linearizability/checker.rs"]
mod checker;
mod common;

use checker::{Kill, Read, Report, Write};
use common::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const KEYS: usize = 240;
const WRITERS: usize = 4;
const READERS: usize = 4;
const READ_BATCH: usize = 24;

fn key_name(k: usize) -> String {
    format!("lin:{k}")
}

#[derive(Default)]
struct Log {
    writes: Vec<Write>,
    reads: Vec<Read>,
}

/// Writers and readers running against `port` until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    log: Arc<Mutex<Log>>,
}

fn parse_value(r: &Resp) -> Option<u64> {
    match r {
        Resp::Nil => Some(0),
        Resp::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Log>> = Arc::default();
        let mut threads = Vec::new();
        for w in 0..WRITERS {
            let (stop, log) = (stop.clone(), log.clone());
            threads.push(thread::spawn(move || {
                let keys: Vec<usize> = (0..KEYS).filter(|k| k % WRITERS == w).collect();
                let mut next = vec![1u64; keys.len()];
                let mut c = RawClient::connect(port);
                c.set_timeout(Duration::from_secs(30));
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let invoke = Instant::now();
                    for (i, &k) in keys.iter().enumerate() {
                        c.send_cmd(&["SET", &key_name(k), &next[i].to_string()]);
                    }
                    for (i, &k) in keys.iter().enumerate() {
                        let r = c.read_reply();
                        mine.push(Write {
                            key: k,
                            value: next[i],
                            invoke,
                            complete: Instant::now(),
                            error: (r != Resp::ok()).then(|| format!("{r:?}")),
                        });
                        next[i] += 1;
                    }
                }
                log.lock().unwrap().writes.extend(mine);
            }));
        }
        for rd in 0..READERS {
            let (stop, log) = (stop.clone(), log.clone());
            threads.push(thread::spawn(move || {
                let mut c = RawClient::connect(port);
                c.set_timeout(Duration::from_secs(30));
                let mut mine = Vec::new();
                let mut errors = 0usize;
                let mut start = rd * 7;
                while !stop.load(Ordering::Relaxed) {
                    let keys: Vec<usize> =
                        (0..READ_BATCH).map(|i| (start + i * 11) % KEYS).collect();
                    start = (start + 1) % KEYS;
                    let invoke = Instant::now();
                    for &k in &keys {
                        c.send_cmd(&["GET", &key_name(k)]);
                    }
                    for &k in &keys {
                        let r = c.read_reply();
                        let complete = Instant::now();
                        match parse_value(&r) {
                            Some(value) => mine.push(Read {
                                key: k,
                                value,
                                invoke,
                                complete,
                            }),
                            None => errors += 1,
                        }
                    }
                }
                if errors > 0 {
                    eprintln!("reader {rd}: {errors} GETs answered errors (not checked)");
                }
                log.lock().unwrap().reads.extend(mine);
            }));
        }
        Load { stop, threads, log }
    }

    fn finish(self) -> Log {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread panicked");
        }
        Arc::try_unwrap(self.log)
            .map_err(|_| ())
            .expect("load threads are gone")
            .into_inner()
            .unwrap()
    }
}

/// Every key's value through the proxy once the cluster has settled.
fn final_values(port: u16) -> HashMap<usize, u64> {
    let mut c = RawClient::connect(port);
    c.set_timeout(Duration::from_secs(30));
    let mut out = HashMap::new();
    for k in 0..KEYS {
        let mut last = Resp::Nil;
        let ok = wait_until(Duration::from_secs(20), || {
            last = c.cmd(&["GET", &key_name(k)]);
            parse_value(&last).is_some()
        });
        assert!(ok, "final GET {} keeps failing: {last:?}", key_name(k));
        out.insert(k, parse_value(&last).unwrap_or(0));
    }
    out
}

/// Run `change` under load and check the history. `change` returns the
/// master it killed, if any.
fn scenario(
    name: &str,
    cluster: &mut Cluster,
    settings: serde_json::Value,
    change: impl FnOnce(&mut Cluster) -> Option<Kill>,
) -> Report {
    let envoy = Envoy::start(module_config(cluster, settings));
    let load = Load::start(envoy.port());
    thread::sleep(Duration::from_secs(1));
    let kill = change(cluster);
    thread::sleep(Duration::from_secs(2));
    let log = load.finish();
    let finals = final_values(envoy.port());
    let report = checker::check(&log.writes, &log.reads, &finals, kill.as_ref());
    println!("{}", report.summary(name));
    for v in report.redis_failover_loss.iter().take(5) {
        println!("  redis failover loss: {v}");
    }
    assert!(
        report.writes_acked > 1000 && report.reads > 1000,
        "too little load to check anything: {}",
        report.summary(name)
    );
    let show = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>();
    assert!(
        report.violations() == 0,
        "{}\nstale: {:?}\nfuture: {:?}\nlost: {:?}",
        report.summary(name),
        show(&report.stale_reads),
        show(&report.future_reads),
        show(&report.lost_writes)
    );
    report
}

fn role(port: u16) -> Option<String> {
    let mut c = RawClient::try_connect(port, Duration::from_millis(300)).ok()?;
    c.set_timeout(Duration::from_millis(500));
    let Resp::Bulk(b) = c.cmd(&["INFO", "replication"]) else {
        return None;
    };
    String::from_utf8_lossy(&b)
        .lines()
        .find_map(|l| l.strip_prefix("role:").map(|r| r.trim().to_string()))
}

fn keys_of_master(cluster: &Cluster, port: u16) -> HashSet<usize> {
    (0..KEYS)
        .filter(|&k| cluster.node_for_key(key_name(k).as_bytes()) == port)
        .collect()
}

#[test]
fn live_reshard_both_ways() {
    let mut cluster = Cluster::start(3, 0);
    scenario("reshard_both_ways", &mut cluster, json!({}), |cluster| {
        let [a, b] = [cluster.master_ports()[0], cluster.master_ports()[1]];
        let (a_id, b_id) = (cluster.node_id(a), cluster.node_id(b));
        reshard(a, &a_id, &b_id, 1500);
        reshard(b, &b_id, &a_id, 1500);
        None
    });
}

#[test]
fn node_added_given_slots_and_removed() {
    let mut cluster = Cluster::start(3, 0);
    scenario(
        "node_added_and_removed",
        &mut cluster,
        json!({}),
        |cluster| {
            let a = cluster.master_ports()[0];
            let a_id = cluster.node_id(a);
            let n = cluster.add_master();
            let n_id = cluster.node_id(n);
            reshard(a, &a_id, &n_id, 1500);
            // Giving its last slot away turns the node into a replica of the
            // receiver: the case that once produced stale reads.
            reshard(n, &n_id, &a_id, 1500);
            let out = redis_cli(&["--cluster", "del-node", &format!("127.0.0.1:{a}"), &n_id]);
            assert!(out.success, "del-node failed: {}{}", out.stdout, out.stderr);
            None
        },
    );
}

#[test]
fn master_killed_and_replica_promoted() {
    let mut cluster = Cluster::start(3, 1);
    scenario(
        "master_kill_promotion",
        &mut cluster,
        json!({ "op_timeout": "15s" }),
        |cluster| {
            let master = cluster.master_ports()[0];
            let replica = cluster
                .ports()
                .into_iter()
                .find(|&p| p != master && {
                    let mut c = RawClient::connect(p);
                    matches!(c.cmd(&["INFO", "replication"]),
                        Resp::Bulk(b) if String::from_utf8_lossy(&b).contains(&format!("master_port:{master}")))
                })
                .expect("a replica of the master");
            let keys = keys_of_master(cluster, master);
            let at = Instant::now();
            cluster.kill_node(master);
            assert!(
                wait_until(Duration::from_secs(20), || role(replica).as_deref()
                    == Some("master")),
                "replica {replica} was not promoted"
            );
            thread::sleep(Duration::from_secs(1));
            // The old master returns, as a replica of the promoted one.
            cluster.restart_node(master);
            thread::sleep(Duration::from_secs(2));
            Some(Kill { keys, at })
        },
    );
}

#[test]
fn replica_killed_and_restarted() {
    let mut cluster = Cluster::start(3, 1);
    scenario("replica_kill", &mut cluster, json!({}), |cluster| {
        let masters = cluster.master_ports();
        let replica = cluster
            .ports()
            .into_iter()
            .find(|p| !masters.contains(p))
            .expect("a replica");
        cluster.kill_node(replica);
        thread::sleep(Duration::from_secs(2));
        cluster.restart_node(replica);
        None
    });
}

#[test]
fn master_stalled_past_op_timeout() {
    let mut cluster = Cluster::start(3, 0);
    let report = scenario(
        "master_sigstop",
        &mut cluster,
        json!({ "op_timeout": "500ms" }),
        |cluster| {
            let master = cluster.master_ports()[1];
            // Under cluster-node-timeout (2 s): no failover, only timeouts.
            let paused = cluster.pause_node(master);
            thread::sleep(Duration::from_millis(1500));
            paused.resume();
            None
        },
    );
    assert!(
        report.writes_failed > 0,
        "a master stalled past op_timeout made no write time out: the scenario did not happen"
    );
}
