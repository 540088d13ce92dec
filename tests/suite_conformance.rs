//! What Redis's own test suite (scripts/redis-suite.sh) found the proxy
//! answering unlike one Redis, end to end (real Redis Cluster, real Envoy):
//! INFO as one server, CONFIG GET/SET, FUNCTION LIST from masters that list
//! in different orders, PING's arity, XREAD/XREADGROUP without BLOCK and the
//! XGROUP/XINFO HELP replies. Where a standalone Redis can answer the same
//! command, its reply is the expected one.
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

fn start(cluster: &Cluster, settings: serde_json::Value) -> Envoy {
    let envoy = Envoy::start(module_config(cluster, settings));
    // Keyed commands wait for the first topology; begin once it is there.
    assert_eq!(envoy.raw_client().cmd(&["EXISTS", "warm-up"]), Resp::Int(0));
    envoy
}

/// `field:value` of an INFO text, every occurrence.
fn info_values(info: &str, field: &str) -> Vec<String> {
    info.lines()
        .filter_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim_end().to_string())
        .collect()
}

fn info_one(info: &str, field: &str) -> String {
    let v = info_values(info, field);
    assert_eq!(v.len(), 1, "{field} should appear once:\n{info}");
    v[0].clone()
}

// Direct node queries go through RawClient: redis-rs sends CLIENT SETINFO on
// connect, an error on Redis 7.0 that would count in the nodes' errorstats.
fn node_info(port: u16, section: &str) -> String {
    RawClient::connect(port)
        .cmd(&["INFO", section])
        .text()
        .expect("INFO on a node")
}

fn node_config(port: u16, name: &str) -> String {
    match RawClient::connect(port).cmd(&["CONFIG", "GET", name]) {
        Resp::Array(v) => v.get(1).and_then(Resp::text).unwrap_or_default(),
        other => panic!("CONFIG GET {name} on {port}: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// INFO
// ---------------------------------------------------------------------------

#[test]
fn info_is_one_server_with_counters_and_keyspace_summed() {
    let cluster = Cluster::start(3, 0);
    let envoy = start(&cluster, json!({}));
    let masters = cluster.master_ports();
    let all = keys("info", 60);
    let owners = by_owner(&cluster, &all);
    assert_eq!(owners.len(), 3, "the keys must land on every master");
    // Sections of one process are the first master's (by first slot).
    let map = cluster.slot_map();
    let first = map.iter().min_by_key(|r| r.start).unwrap().master;
    // Last, as later redis-rs connections would count CLIENT SETINFO errors.
    reset_stats(&masters);
    let mut c = envoy.raw_client();
    for (i, k) in all.iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(c.cmd(&["SET", k, "v", "EX", "1000"]), Resp::ok());
        } else {
            assert_eq!(c.cmd(&["SET", k, "v"]), Resp::ok());
        }
    }
    // One error per master: INCR of a non-number.
    for keys in owners.values() {
        assert!(c.cmd(&["INCR", &keys[0]]).is_error());
    }

    let info = c.cmd(&["INFO"]).text().expect("INFO is a bulk string");
    assert_eq!(info.matches("# Server").count(), 1, "{info}");
    assert_eq!(info_values(&info, "redis_version").len(), 1, "{info}");
    let db0 = info_one(&info, "db0");
    assert!(db0.starts_with("keys=60,expires=20,avg_ttl="), "{db0}");
    // avg_ttl: the masters' estimates (made by their expire cycles, 0
    // until the first one ran) weighted by their keys with a TTL.
    let node_ttl = |p: u16| -> i64 {
        let ks = node_info(p, "keyspace");
        let db0 = info_one(&ks, "db0");
        db0.rsplit('=').next().unwrap().parse().unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(10), || masters
            .iter()
            .all(|&p| node_ttl(p) > 0)),
        "the masters never estimated avg_ttl"
    );
    let info_ttl = c.cmd(&["INFO", "keyspace"]).text().unwrap();
    let db0 = info_one(&info_ttl, "db0");
    let ttl: i64 = db0.rsplit('=').next().unwrap().parse().unwrap();
    assert!(ttl > 990_000 && ttl <= 1_000_000, "avg_ttl {ttl} ms");
    assert_eq!(info_one(&info, "tcp_port"), first.to_string());
    assert!(
        info.contains("# Proxy\r\nproxy:envoy-redis-cluster\r\n"),
        "{info}"
    );
    assert_eq!(info_one(&info, "cluster_masters"), "3");

    let stats = c.cmd(&["INFO", "commandstats"]).text().unwrap();
    let set = info_one(&stats, "cmdstat_set");
    assert!(set.starts_with("calls=60,"), "{set}");
    let incr = info_one(&stats, "cmdstat_incr");
    assert!(incr.contains("failed_calls=3"), "{incr}");
    assert!(
        !stats.contains("# Proxy"),
        "a single section has no proxy section"
    );
    let errors = c.cmd(&["INFO", "errorstats"]).text().unwrap();
    assert_eq!(info_one(&errors, "errorstat_ERR"), "count=3");

    // Sizes are the sum over the masters, and *_human follows the sum.
    let memory = c.cmd(&["INFO", "memory"]).text().unwrap();
    let used: u64 = info_one(&memory, "used_memory").parse().unwrap();
    let on_nodes: u64 = masters
        .iter()
        .map(|&p| {
            info_one(&node_info(p, "memory"), "used_memory")
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    let one_node: u64 = info_one(&node_info(first, "memory"), "used_memory")
        .parse()
        .unwrap();
    assert!(
        used > one_node * 2 && used.abs_diff(on_nodes) < on_nodes / 5,
        "used_memory {used}: the nodes have {on_nodes} together"
    );
    let human = info_one(&memory, "used_memory_human");
    assert!(human.ends_with('M') || human.ends_with('K'), "{human}");
}

#[test]
fn info_keeps_resp3_verbatim_and_per_node_detail_on_request() {
    let cluster = Cluster::start(3, 0);
    let envoy = start(&cluster, json!({}));
    let mut c = envoy.raw_client();
    let nodes = c.cmd(&["INFO", "nodes"]).text().unwrap();
    assert!(nodes.starts_with("# Proxy"), "{nodes}");
    for p in cluster.master_ports() {
        let header = format!("# Node 127.0.0.1:{p}");
        assert_eq!(nodes.matches(&header).count(), 1, "{header} in:\n{nodes}");
    }
    // Sections after `nodes` are asked of each node.
    let servers = c.cmd(&["INFO", "nodes", "server"]).text().unwrap();
    assert_eq!(info_values(&servers, "tcp_port").len(), 3, "{servers}");
    assert!(info_values(&servers, "used_memory").is_empty(), "{servers}");

    // RESP3: a verbatim string, as from Redis.
    c.cmd(&["HELLO", "3"]);
    c.send_cmd(&["INFO", "keyspace"]);
    let raw = c.read_reply_bytes();
    assert!(raw.starts_with(b"="), "{}", show_resp(&raw));
    assert!(raw[raw.iter().position(|&b| b == b'\n').unwrap() + 1..].starts_with(b"txt:# Keyspace"));
}

// ---------------------------------------------------------------------------
// CONFIG
// ---------------------------------------------------------------------------

#[test]
fn config_get_is_answered_and_config_set_refused_by_default() {
    let cluster = Cluster::start(3, 0);
    let envoy = start(&cluster, json!({}));
    let reference = StandaloneRedis::start();
    let mut c = envoy.raw_client();
    let mut r = reference.raw_client();
    for cmd in [
        vec!["CONFIG", "GET", "maxmemory-policy"],
        vec!["CONFIG", "GET", "maxmemory*"],
        vec![
            "CONFIG",
            "GET",
            "hash-max-listpack-entries",
            "set-max-intset-entries",
        ],
        vec!["CONFIG", "GET", "no-such-setting"],
    ] {
        assert_eq!(
            sorted_resp(&c.cmd(&cmd)),
            sorted_resp(&r.cmd(&cmd)),
            "{cmd:?}"
        );
    }
    assert_eq!(c.cmd(&["CONFIG", "HELP"]), r.cmd(&["CONFIG", "HELP"]));

    for cmd in [
        vec!["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
        vec!["CONFIG", "RESETSTAT"],
        vec!["CONFIG", "REWRITE"],
        vec!["SAVE"],
        vec!["BGSAVE"],
        vec!["BGREWRITEAOF"],
    ] {
        match c.cmd(&cmd) {
            Resp::Error(e) => assert!(
                e.starts_with(&format!("ERR {}", cmd[0])) && e.contains("allow_admin_commands"),
                "{cmd:?}: {e}"
            ),
            other => panic!("{cmd:?}: expected a refusal, got {other:?}"),
        }
    }
    for p in cluster.master_ports() {
        assert_eq!(node_config(p, "maxmemory-policy"), "noeviction");
    }
}

#[test]
fn config_set_reaches_every_node_with_allow_admin_commands() {
    let cluster = Cluster::start(3, 1);
    let envoy = start(&cluster, json!({ "allow_admin_commands": true }));
    let mut c = envoy.raw_client();
    assert_eq!(
        c.cmd(&[
            "CONFIG",
            "SET",
            "maxmemory-policy",
            "allkeys-lru",
            "hz",
            "20"
        ]),
        Resp::ok()
    );
    // Masters and replicas alike.
    assert_eq!(cluster.ports().len(), 6);
    for p in cluster.ports() {
        assert_eq!(
            node_config(p, "maxmemory-policy"),
            "allkeys-lru",
            "node {p}"
        );
        assert_eq!(node_config(p, "hz"), "20", "node {p}");
    }
    assert_eq!(
        c.cmd(&["CONFIG", "GET", "maxmemory-policy"]),
        Resp::Array(vec![
            Resp::bulk("maxmemory-policy"),
            Resp::bulk("allkeys-lru")
        ])
    );
    // A value every node refuses: the node's own error, nothing changed.
    match c.cmd(&["CONFIG", "SET", "maxmemory-policy", "bogus"]) {
        Resp::Error(e) => assert!(e.contains("maxmemory-policy"), "{e}"),
        other => panic!("expected the node's error, got {other:?}"),
    }
    assert_eq!(
        node_config(cluster.ports()[0], "maxmemory-policy"),
        "allkeys-lru"
    );
    // A node's own setting (its port, its files) cannot be one value for all.
    for (name, value) in [
        ("port", "7000"),
        ("dir", "/tmp"),
        ("cluster-announce-port", "1"),
    ] {
        match c.cmd(&["CONFIG", "SET", "hz", "30", name, value]) {
            Resp::Error(e) => assert!(e.contains(name) && e.contains("each node's own"), "{e}"),
            other => panic!("CONFIG SET {name}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(
        node_config(cluster.ports()[0], "hz"),
        "20",
        "nothing was set"
    );

    // RESETSTAT clears every node's counters.
    for k in keys("reset", 30) {
        assert_eq!(c.cmd(&["SET", &k, "v"]), Resp::ok());
    }
    assert!(cluster.master_ports().iter().any(|&p| calls(p, "set") > 0));
    assert_eq!(c.cmd(&["CONFIG", "RESETSTAT"]), Resp::ok());
    for p in cluster.ports() {
        assert_eq!(calls(p, "set"), 0, "node {p}");
    }

    // REWRITE: every node's own config file gets the setting.
    assert_eq!(c.cmd(&["CONFIG", "REWRITE"]), Resp::ok());
    for p in cluster.ports() {
        let conf = std::fs::read_to_string(cluster.dir().join(p.to_string()).join("redis.conf"))
            .expect("node config file");
        assert!(
            conf.contains("maxmemory-policy allkeys-lru"),
            "node {p}:\n{conf}"
        );
    }

    // SAVE: every master writes its snapshot.
    let saves = |p: u16| -> u64 {
        let info = RawClient::connect(p)
            .cmd(&["INFO", "persistence"])
            .text()
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("rdb_saves:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("rdb_saves")
    };
    let before: Vec<u64> = cluster.master_ports().into_iter().map(saves).collect();
    assert_eq!(c.cmd(&["SAVE"]), Resp::ok());
    let after: Vec<u64> = cluster.master_ports().into_iter().map(saves).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            *a,
            b + 1,
            "every master saved once: {before:?} -> {after:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// FUNCTION LIST, PING, streams
// ---------------------------------------------------------------------------

/// Each master lists libraries (and their functions) in its own hash-table
/// order; the proxy answered "the masters answered differently".
#[test]
fn function_list_is_one_answer_whatever_order_the_masters_list_in() {
    let cluster = Cluster::start(3, 0);
    let envoy = start(&cluster, json!({}));
    let mut c = envoy.raw_client();
    for i in 0..16 {
        let code = format!(
            "#!lua name=lib{i}\nredis.register_function('f{i}a', function() return {i} end)\nredis.register_function('f{i}b', function() return 1 end)"
        );
        assert_eq!(
            c.cmd(&["FUNCTION", "LOAD", &code]),
            Resp::bulk(format!("lib{i}"))
        );
    }
    // The test only means something when the masters' orders differ.
    let orders: BTreeSet<Vec<u8>> = cluster
        .master_ports()
        .into_iter()
        .map(|p| {
            let mut n = RawClient::connect(p);
            n.send_cmd(&["FUNCTION", "LIST"]);
            n.read_reply_bytes()
        })
        .collect();
    assert!(
        orders.len() > 1,
        "all three masters listed 16 libraries in one order"
    );

    let list = c.cmd(&["FUNCTION", "LIST"]);
    let Resp::Array(libs) = &list else {
        panic!("FUNCTION LIST: {list:?}");
    };
    assert_eq!(libs.len(), 16);
    assert_eq!(c.cmd(&["FCALL", "f7a", "0"]), Resp::Int(7));
}

#[test]
fn ping_answers_like_redis_whatever_its_arguments() {
    let cluster = Cluster::start(3, 0);
    let envoy = start(&cluster, json!({}));
    let reference = StandaloneRedis::start();
    let mut c = envoy.raw_client();
    let mut r = reference.raw_client();
    for cmd in [
        vec!["PING"],
        vec!["PING", "hello"],
        vec!["PING", "x", "y"],
        vec!["PING", "x", "y", "z"],
    ] {
        assert_eq!(c.cmd(&cmd), r.cmd(&cmd), "{cmd:?}");
    }
    assert_eq!(c.cmd(&["PFSELFTEST"]), r.cmd(&["PFSELFTEST"]));
    assert_eq!(
        c.cmd(&["PING", "x", "y"]),
        Resp::Error("ERR wrong number of arguments for 'ping' command".into())
    );
}

#[test]
fn xread_and_xreadgroup_without_block_work_like_redis() {
    let cluster = Cluster::start(3, 0);
    let envoy = start(&cluster, json!({}));
    let reference = StandaloneRedis::start();
    let mut c = envoy.raw_client();
    let mut r = reference.raw_client();
    let script: Vec<Vec<&str>> = vec![
        vec!["XADD", "{s}1", "1-0", "f", "a"],
        vec!["XADD", "{s}1", "2-0", "f", "b"],
        vec!["XADD", "{s}2", "1-0", "g", "c"],
        vec!["XREAD", "STREAMS", "{s}1", "0"],
        vec!["XREAD", "COUNT", "1", "STREAMS", "{s}1", "{s}2", "0", "0"],
        vec!["XREAD", "STREAMS", "{s}1", "$"],
        vec!["XGROUP", "CREATE", "{s}1", "grp", "0"],
        vec![
            "XREADGROUP",
            "GROUP",
            "grp",
            "alice",
            "COUNT",
            "1",
            "STREAMS",
            "{s}1",
            ">",
        ],
        vec![
            "XREADGROUP",
            "GROUP",
            "grp",
            "bob",
            "NOACK",
            "STREAMS",
            "{s}1",
            ">",
        ],
        vec![
            "XREADGROUP",
            "GROUP",
            "grp",
            "alice",
            "STREAMS",
            "{s}1",
            "0",
        ],
        vec!["XACK", "{s}1", "grp", "1-0"],
        vec!["XPENDING", "{s}1", "grp"],
        vec!["XGROUP", "HELP"],
        vec!["XINFO", "HELP"],
        vec!["OBJECT", "HELP"],
        vec!["XGROUP", "NOSUCH"],
    ];
    for cmd in &script {
        assert_eq!(c.cmd(cmd), r.cmd(cmd), "{cmd:?}");
    }
    assert!(matches!(c.cmd(&["XGROUP", "HELP"]), Resp::Array(a) if a.len() > 5));
    // Streams in different slots: what a Redis Cluster node answers.
    let (a, b) = ("stream-a", "stream-b");
    assert_ne!(key_slot(a.as_bytes()), key_slot(b.as_bytes()));
    match c.cmd(&["XREAD", "STREAMS", a, b, "0", "0"]) {
        Resp::Error(e) => assert!(e.starts_with("CROSSSLOT"), "{e}"),
        other => panic!("expected CROSSSLOT, got {other:?}"),
    }
    // With BLOCK it blocks (tests/blocking.rs) and times out as Redis does.
    assert_eq!(
        c.cmd(&["XREAD", "BLOCK", "10", "STREAMS", "{s}1", "$"]),
        Resp::NilArray
    );
}
