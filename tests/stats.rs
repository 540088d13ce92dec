//! Statistics reach Envoy's admin endpoint (`/stats`, `/stats/prometheus`)
//! and move as traffic flows.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const P: &str = "dynamicmodulescustom.redis.redis.";

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(&format!("{P}{name}")).unwrap_or(0)
}

/// Per-command stats are off by default, as in Envoy's redis_proxy.
#[test]
fn command_stats_are_opt_in() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut c = RawClient::connect(envoy.port());
    assert_eq!(c.cmd(&["SET", "k", "v"]), Resp::ok());
    assert!(wait_until(Duration::from_secs(3), || stat(
        &envoy,
        "downstream_rq_total"
    ) >= 1));
    assert_eq!(stat(&envoy, "command.set.total"), 0);
}

/// Counters bumped on the module's own threads (topology refresh, upstream
/// loops) and on Envoy's workers all reach Envoy while a client is active.
/// In the smoke set of every Envoy version: on 1.38, which has no
/// config-level metric callbacks, the workers deliver them through the
/// connection; on 1.39+ module threads update Envoy directly.
#[test]
fn stats_from_module_threads_reach_envoy_with_traffic() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(
        &cluster,
        json!({ "enable_command_stats": true }),
    ));
    let mut c = RawClient::connect(envoy.port());
    for i in 0..20 {
        assert_eq!(c.cmd(&["SET", &format!("t{i}"), "v"]), Resp::ok());
        assert_eq!(c.cmd(&["GET", &format!("t{i}")]), Resp::bulk("v"));
    }
    // Module threads: the refresher and the upstream loops.
    assert!(wait_until(Duration::from_secs(3), || stat(
        &envoy,
        "cluster.main.upstream_rq_total"
    ) >= 40));
    assert_eq!(stat(&envoy, "cluster.main.slots_covered"), 16384);
    assert!(stat(&envoy, "cluster.main.topology_refresh_success") >= 1);
    // Workers.
    assert_eq!(stat(&envoy, "command.get.total"), 20);
    assert_eq!(stat(&envoy, "command.set.success"), 20);
    // Envoy::start's readiness probe is a connection too.
    assert!(stat(&envoy, "downstream_cx_total") >= 1);
    assert!(stat(&envoy, "downstream_cx_active") >= 1);
    assert!(stat(&envoy, "downstream_rq_total") >= 40);
}

/// `(major, minor)` of the Envoy under test, from `envoy --version`.
fn envoy_version() -> (u32, u32) {
    let out = std::process::Command::new(envoy_bin())
        .arg("--version")
        .output()
        .expect("run envoy --version");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // `envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`
    text.split('/')
        .find_map(|part| {
            let mut n = part.split('.').map(|x| x.parse::<u32>().ok());
            match (n.next(), n.next(), n.next(), n.next()) {
                (Some(Some(a)), Some(Some(b)), Some(Some(_)), None) => Some((a, b)),
                _ => None,
            }
        })
        .unwrap_or_else(|| panic!("no version in `envoy --version`: {text:?}"))
}

/// What the README says of each version: from 1.39 an update made away from
/// client traffic (here a connection's close) reaches Envoy at once; 1.38
/// takes updates only through a connection, so it waits for the next
/// activity of any client of the listener.
#[test]
fn a_close_shows_at_once_from_1_39_and_with_the_next_traffic_on_1_38() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let pong = Resp::Simple("PONG".into());
    let mut c = RawClient::connect(envoy.port());
    let mut d = RawClient::connect(envoy.port());
    assert_eq!(c.cmd(&["PING"]), pong);
    // Exactly the two clients (Envoy::start's probe connection has gone).
    assert!(wait_until(Duration::from_secs(5), || {
        assert_eq!(d.cmd(&["PING"]), pong);
        stat(&envoy, "downstream_cx_active") == 2
    }));

    drop(c);
    if envoy_version() >= (1, 39) {
        assert!(wait_until(Duration::from_secs(3), || stat(
            &envoy,
            "downstream_cx_active"
        ) == 1));
    } else {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            stat(&envoy, "downstream_cx_active"),
            2,
            "1.38 delivered early"
        );
        assert_eq!(d.cmd(&["PING"]), pong);
        assert!(wait_until(Duration::from_secs(3), || stat(
            &envoy,
            "downstream_cx_active"
        ) == 1));
    }
}

#[test]
fn counters_and_gauges_follow_traffic() {
    let mut cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(
        &cluster,
        json!({ "op_timeout": "500ms", "enable_command_stats": true }),
    ));
    assert!(wait_until(Duration::from_secs(5), || stat(
        &envoy,
        "cluster.main.slots_covered"
    ) == 16384));
    assert!(stat(&envoy, "cluster.main.topology_refresh_success") >= 1);

    let before_cx = stat(&envoy, "downstream_cx_total");
    let mut c = RawClient::connect(envoy.port());
    for i in 0..50 {
        assert_eq!(c.cmd(&["SET", &format!("s{i}"), "v"]), Resp::ok());
        assert_eq!(c.cmd(&["GET", &format!("s{i}")]), Resp::bulk("v"));
    }
    assert!(c.cmd(&["INCR", "s0"]).is_error()); // not an integer: an error reply
    let r = c.cmd(&["MGET", "s1", "s2", "s3", "s4"]);
    assert!(matches!(r, Resp::Array(ref a) if a.len() == 4));

    assert!(wait_until(Duration::from_secs(3), || stat(
        &envoy,
        "command.get.total"
    ) >= 50));
    assert_eq!(stat(&envoy, "command.set.total"), 50);
    assert_eq!(stat(&envoy, "command.set.success"), 50);
    assert_eq!(stat(&envoy, "command.incr.error"), 1);
    assert_eq!(stat(&envoy, "command.mget.total"), 1);
    assert!(stat(&envoy, "downstream_rq_total") >= 102);
    assert_eq!(stat(&envoy, "downstream_cx_total"), before_cx + 1);
    assert!(stat(&envoy, "downstream_cx_active") >= 1);
    assert!(stat(&envoy, "downstream_cx_rx_bytes_total") > 0);
    assert!(stat(&envoy, "downstream_cx_tx_bytes_total") > 0);
    // Each GET/SET is one upstream request; the cross-slot MGET several.
    assert!(stat(&envoy, "cluster.main.upstream_rq_total") >= 104);

    // A MOVED followed: move a slot behind the proxy's back.
    let key = "moved:key";
    let slot = cluster.keyslot(key.as_bytes());
    let from = cluster.node_for_slot(slot);
    let to = cluster
        .master_ports()
        .into_iter()
        .find(|&p| p != from)
        .unwrap();
    let to_id = cluster.node_id(to);
    for p in cluster.ports() {
        let mut n = RawClient::connect(p);
        n.cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &to_id]);
    }
    assert_eq!(c.cmd(&["SET", key, "x"]), Resp::ok());
    assert!(stat(&envoy, "cluster.main.redirections_moved") >= 1);

    // A timeout: a paused master.
    let tkey = "timeout:key";
    let owner = cluster.node_for_key(tkey.as_bytes());
    let paused = cluster.pause_node(owner);
    assert!(c.cmd(&["GET", tkey]).is_error());
    drop(paused);
    assert!(wait_until(Duration::from_secs(3), || stat(
        &envoy,
        "cluster.main.upstream_rq_timeout"
    ) >= 1));

    // Connections closing bring the active gauge back down.
    let active = stat(&envoy, "downstream_cx_active");
    drop(c);
    assert!(wait_until(Duration::from_secs(3), || stat(
        &envoy,
        "downstream_cx_active"
    ) < active));

    // The same stats in Prometheus format, with histograms.
    let prom = envoy.admin_get("/stats/prometheus");
    assert!(
        prom.contains("dynamicmodulescustom_redis_redis_command_get_total"),
        "prometheus lacks command counters"
    );
    let _ = &mut cluster;
}
