//! The cluster changes under the proxy: a node is added and given slots, the
//! slots move away again and the node is removed, a dead master comes back.
//! All picked up without restarting Envoy, with no client errors while
//! slots move.

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A client loop writing and reading back keys through the proxy while
/// something happens; returns every error it saw.
fn with_load(port: u16, f: impl FnOnce()) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let h = {
        let (stop, errors) = (stop.clone(), errors.clone());
        thread::spawn(move || {
            let mut c = RawClient::connect(port);
            c.set_timeout(Duration::from_secs(10));
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load:{}", i % 500);
                let v = i.to_string();
                let r = c.cmd(&["SET", &key, &v]);
                if r != Resp::ok() {
                    errors.lock().unwrap().push(format!("SET {key}: {r:?}"));
                }
                let r = c.cmd(&["GET", &key]);
                if r != Resp::bulk(&v) {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("GET {key}: {r:?} (wrote {v})"));
                }
                i += 1;
            }
        })
    };
    f();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    let e = errors.lock().unwrap().clone();
    e
}

#[test]
fn added_node_moved_slots_removed_node_and_returning_master() {
    let mut cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "3s" })));
    let a = cluster.master_ports()[0];
    let a_id = cluster.node_id(a);

    // 1. A new node joins and gets 1500 slots under load.
    let n = cluster.add_master();
    let n_id = cluster.node_id(n);
    let errors = with_load(envoy.port(), || reshard(a, &a_id, &n_id, 1500));
    assert!(
        errors.is_empty(),
        "errors while slots moved to the new node: {:?}",
        &errors[..errors.len().min(5)]
    );
    // Keys of the new node's slots are served through the proxy, from it.
    let mut c = RawClient::connect(envoy.port());
    let on_new = (0..2000)
        .map(|i| format!("new:{i}"))
        .find(|k| cluster.node_for_key(k.as_bytes()) == n)
        .expect("a key in the new node's slots");
    assert_eq!(c.cmd(&["SET", &on_new, "here"]), Resp::ok());
    assert_eq!(
        RawClient::connect(n).cmd(&["GET", &on_new]),
        Resp::bulk("here")
    );

    // 2. The slots go back and the node is removed from the cluster.
    let errors = with_load(envoy.port(), || reshard(n, &n_id, &a_id, 1500));
    assert!(
        errors.is_empty(),
        "errors while slots left the node: {:?}",
        &errors[..errors.len().min(5)]
    );
    let out = redis_cli(&["--cluster", "del-node", &format!("127.0.0.1:{a}"), &n_id]);
    assert!(out.success, "del-node failed: {}{}", out.stdout, out.stderr);
    assert_eq!(
        c.cmd(&["GET", &on_new]),
        Resp::bulk("here"),
        "key lost with the removed node"
    );
    let errors = with_load(envoy.port(), || thread::sleep(Duration::from_secs(2)));
    assert!(
        errors.is_empty(),
        "errors after the node was removed: {errors:?}"
    );

    // 3. A master dies (no replica: its slots are down) and comes back.
    let b = cluster.master_ports()[1];
    let key = (0..2000)
        .map(|i| format!("back:{i}"))
        .find(|k| cluster.node_for_key(k.as_bytes()) == b)
        .unwrap();
    assert_eq!(c.cmd(&["SET", &key, "1"]), Resp::ok());
    cluster.kill_node(b);
    assert!(
        c.cmd(&["GET", &key]).is_error(),
        "dead master's slot answered"
    );
    cluster.restart_node(b);
    let back = wait_until(Duration::from_secs(20), || {
        c.cmd(&["SET", &key, "2"]) == Resp::ok()
    });
    assert!(back, "the returning master was not used again");
    assert_eq!(c.cmd(&["GET", &key]), Resp::bulk("2"));
}

/// The proxy's clients on `port` (every connection but ours and the
/// replication links), as `CLIENT LIST` lines.
fn proxy_clients(port: u16) -> Vec<String> {
    let mut c = RawClient::connect(port);
    let Resp::Bulk(list) = c.cmd(&["CLIENT", "LIST"]) else {
        panic!("CLIENT LIST on {port} did not answer a bulk string");
    };
    String::from_utf8_lossy(&list)
        .lines()
        .filter(|l| !l.contains(" cmd=client|list ") && !l.contains(" cmd=cluster|slots "))
        .filter(|l| {
            let flags = l
                .split(' ')
                .find_map(|f| f.strip_prefix("flags="))
                .unwrap_or("");
            !flags.contains('S') && !flags.contains('M')
        })
        .map(str::to_string)
        .collect()
}

fn has_readonly_flag(line: &str) -> bool {
    line.split(' ')
        .find_map(|f| f.strip_prefix("flags="))
        .is_some_and(|f| f.contains('r'))
}

/// Found by `topology_changes` failing 1 run in 8: a master that gave away
/// its last slot turned itself into a replica (Redis does that), the proxy's
/// map still named it master, and because every upstream connection had
/// sent `READONLY` it answered a GET from its lagging copy instead of
/// redirecting: a stale read right after an acknowledged SET. Only
/// connections that carry replica reads on purpose may be `READONLY`.
#[test]
fn only_replica_read_connections_are_readonly() {
    let cluster = Cluster::start(3, 1);
    let masters = cluster.master_ports();
    let replicas = cluster.replica_ports();
    assert_eq!(replicas.len(), 3, "expected one replica per master");

    // Read policy MASTER: no connection anywhere may be READONLY.
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut c = envoy.raw_client();
    for i in 0..300 {
        let k = format!("ro:{i}");
        assert_eq!(c.cmd(&["SET", &k, "v"]), Resp::ok());
        assert_eq!(c.cmd(&["GET", &k]), Resp::bulk("v"));
    }
    for &p in &masters {
        let clients = proxy_clients(p);
        assert!(!clients.is_empty(), "no proxy connection on master {p}");
        for l in &clients {
            assert!(
                !has_readonly_flag(l),
                "READONLY connection on master {p}: {l}"
            );
        }
    }
    drop(c);
    drop(envoy);

    // Read policy REPLICA: the reads reach replicas on READONLY
    // connections; the writes' connections to masters stay plain.
    let envoy = Envoy::start(module_config(&cluster, json!({ "read_policy": "REPLICA" })));
    let mut c = envoy.raw_client();
    for i in 0..300 {
        let k = format!("ro:{i}");
        assert_eq!(c.cmd(&["SET", &k, "w"]), Resp::ok());
        let r = c.cmd(&["GET", &k]);
        assert!(
            r == Resp::bulk("w") || r == Resp::bulk("v"),
            "GET {k}: {r:?}"
        );
    }
    for &p in &masters {
        for l in proxy_clients(p) {
            assert!(
                !has_readonly_flag(&l),
                "READONLY connection on master {p}: {l}"
            );
        }
    }
    for &p in &replicas {
        let clients = proxy_clients(p);
        assert!(
            clients
                .iter()
                .any(|l| has_readonly_flag(l) && l.contains(" cmd=get ")),
            "no READONLY connection serving GETs on replica {p}: {clients:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Nodes whose slots are not assigned yet: no client waits forever.
// ---------------------------------------------------------------------------

/// The pipeline of the slot-assignment tests: cluster-wide and keyed
/// commands mixed, on one connection.
const PIPELINE: [&[&str]; 5] = [
    &["DBSIZE"],
    &["GET", "k"],
    &["INFO"],
    &["RANDOMKEY"],
    &["SET", "k", "v"],
];

/// Envoy in front of `cluster` once the proxy has fetched its (empty) slot
/// map, so the commands meet a map without masters, not a missing one.
fn proxy_on_empty_map(cluster: &Cluster, op_timeout: &str) -> Envoy {
    let envoy = Envoy::start(module_config(cluster, json!({ "op_timeout": op_timeout })));
    let stat = "dynamicmodulescustom.redis.redis.cluster.main.topology_refresh_success";
    assert!(
        wait_until(Duration::from_secs(10), || envoy
            .stat(stat)
            .is_some_and(|n| n >= 1)),
        "the proxy never fetched the slot map"
    );
    envoy
}

fn send_pipeline(c: &mut RawClient) {
    let mut bytes = Vec::new();
    for cmd in PIPELINE {
        bytes.extend(encode_cmd(cmd));
    }
    c.send(&bytes).unwrap();
}

/// Commands sent while no node owns a slot wait (within op_timeout); the
/// slots are assigned meanwhile, and every command is answered correctly,
/// in order.
#[test]
fn commands_sent_before_slots_are_assigned_are_answered_once_they_are() {
    let cluster = Cluster::start_unassigned(3);
    let envoy = proxy_on_empty_map(&cluster, "15s");
    let mut c = envoy.raw_client();
    c.set_timeout(Duration::from_millis(700));
    send_pipeline(&mut c);
    // Nothing can be answered yet, and nothing is: they wait.
    let early = c.read_outcome();
    assert_eq!(
        early,
        Outcome::TimedOut,
        "answered before any slot was assigned"
    );
    cluster.assign_slots();
    let assigned = Instant::now();
    c.set_timeout(Duration::from_secs(20));
    let replies = c.read_replies(PIPELINE.len());
    let waited = assigned.elapsed();
    assert!(waited < Duration::from_secs(15), "took {waited:?}");
    // Run in parallel on several nodes, SET may overtake DBSIZE and
    // RANDOMKEY (as on any cluster proxy), never GET k on the same node.
    assert!(
        matches!(replies[0], Resp::Int(0 | 1)),
        "DBSIZE: {:?}",
        replies[0]
    );
    assert_eq!(replies[1], Resp::Nil, "GET k");
    let info = replies[2].text().unwrap_or_default();
    assert!(
        info.contains("# Server") && info.contains("redis_version:"),
        "INFO: {:?}",
        replies[2]
    );
    assert!(
        matches!(&replies[3], Resp::Nil) || replies[3] == Resp::bulk("k"),
        "RANDOMKEY: {:?}",
        replies[3]
    );
    assert_eq!(replies[4], Resp::ok(), "SET k v");
    assert_eq!(c.cmd(&["GET", "k"]), Resp::bulk("v"));
    assert_eq!(c.cmd(&["DBSIZE"]), Resp::Int(1));
}

/// Slots are never assigned: every command gets an error within
/// op_timeout (cluster-wide ones say no master serves slots, keyed ones
/// that the wait timed out), in order, and the connection still works.
#[test]
fn commands_fail_within_op_timeout_when_slots_are_never_assigned() {
    let cluster = Cluster::start_unassigned(3);
    let op_timeout = Duration::from_millis(1500);
    let envoy = proxy_on_empty_map(&cluster, "1500ms");
    let mut c = envoy.raw_client();
    c.set_timeout(Duration::from_secs(10));
    let sent = Instant::now();
    send_pipeline(&mut c);
    let replies = c.read_replies(PIPELINE.len());
    let took = sent.elapsed();
    assert!(
        took < op_timeout + Duration::from_millis(700),
        "replies took {took:?} (op_timeout {op_timeout:?})"
    );
    for (cmd, r) in PIPELINE.iter().zip(&replies) {
        let Resp::Error(e) = r else {
            panic!("{cmd:?}: not an error: {r:?}")
        };
        let cluster_wide = cmd.len() == 1;
        let expect = if cluster_wide {
            "CLUSTERDOWN Hash slot not served: cluster 'main' has no master serving slots"
        } else {
            "ERR operation timed out after 1500 ms waiting for the cluster"
        };
        assert_eq!(e, expect, "{cmd:?}");
    }
    assert_eq!(c.cmd(&["PING"]), Resp::Simple("PONG".into()));
    assert_eq!(c.cmd(&["ECHO", "still"]), Resp::bulk("still"));
}
