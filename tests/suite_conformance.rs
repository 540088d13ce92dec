//! What Redis's own test suite (scripts/redis-suite.sh) found the proxy
//! answering unlike one Redis, end to end (real Redis Cluster, real Envoy):
//! CONFIG GET/SET. Where a standalone Redis can answer the same command, its
//! reply is the expected one.
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use serde_json::json;

fn start(cluster: &Cluster, settings: serde_json::Value) -> Envoy {
    let envoy = Envoy::start(module_config(cluster, settings));
    // Keyed commands wait for the first topology; begin once it is there.
    assert_eq!(envoy.raw_client().cmd(&["EXISTS", "warm-up"]), Resp::Int(0));
    envoy
}

// Direct node queries go through RawClient: redis-rs sends CLIENT SETINFO on
// connect, an error on Redis 7.0 that would count in the nodes' errorstats.
fn node_config(port: u16, name: &str) -> String {
    match RawClient::connect(port).cmd(&["CONFIG", "GET", name]) {
        Resp::Array(v) => v.get(1).and_then(Resp::text).unwrap_or_default(),
        other => panic!("CONFIG GET {name} on {port}: {other:?}"),
    }
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
    ] {
        match c.cmd(&cmd) {
            Resp::Error(e) => assert!(
                e.starts_with("ERR CONFIG") && e.contains("allow_admin_commands"),
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

    // RESETSTAT clears every node's counters.
    for k in keys("reset", 30) {
        assert_eq!(c.cmd(&["SET", &k, "v"]), Resp::ok());
    }
    assert!(cluster.master_ports().iter().any(|&p| calls(p, "set") > 0));
    assert_eq!(c.cmd(&["CONFIG", "RESETSTAT"]), Resp::ok());
    for p in cluster.ports() {
        assert_eq!(calls(p, "set"), 0, "node {p}");
    }
}
