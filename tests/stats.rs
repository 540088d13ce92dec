//! Statistics reach Envoy's admin endpoint (`/stats`, `/stats/prometheus`)
//! and move as traffic flows; with the stats_tags the standalone bootstraps
//! ship, Prometheus sees the cluster and the command as labels.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const P: &str = "dynamicmodulescustom.redis.redis.";

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(&format!("{P}{name}")).unwrap_or(0)
}

/// Per-command stats are off by default, as in Envoy's redis_proxy, and then
/// not defined at all.
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
    // Not even defined: ~900 idle metrics would sit in Envoy's memory and /stats.
    assert_eq!(envoy.stat(&format!("{P}command.set.total")), None);
    assert!(
        !envoy.stats().contains(".command."),
        "a per-command metric is defined"
    );
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

/// The `(tag_name, regex)` pairs of the `stats_config.stats_tags` shipped in
/// `rel` (read from the file, so the test cannot drift from what users get).
fn shipped_stats_tags(rel: &str) -> Vec<(String, String)> {
    let path = repo_root().join(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        let line = line.strip_prefix("- ").unwrap_or(line);
        if let Some(v) = line.strip_prefix("tag_name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("regex:") {
            let quoted = v.trim();
            let re = quoted
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| panic!("{rel}: regex not in single quotes: {quoted}"))
                .replace("''", "'");
            let tag = name
                .take()
                .unwrap_or_else(|| panic!("{rel}: regex before tag_name"));
            out.push((tag, re));
        }
    }
    assert!(!out.is_empty(), "{rel} has no stats_tags");
    out
}

/// A Prometheus sample line: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn prometheus_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let labels = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        out.push((name.to_string(), labels, value));
    }
    out
}

/// The value of the sample named `name` whose labels are exactly `labels`.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| *v)
}

/// The stats_tags shipped in envoy-config/standalone/ make the stat_prefix,
/// the cluster name and the command Prometheus labels instead of parts of
/// metric names.
#[test]
fn shipped_stats_tags_turn_cluster_and_command_into_prometheus_labels() {
    let tags = shipped_stats_tags("envoy-config/standalone/envoy.yaml");
    assert_eq!(
        tags,
        shipped_stats_tags("envoy-config/standalone/envoy-rw-split-mirror.yaml"),
        "the two standalone bootstraps ship different stats_tags"
    );
    let cluster = Cluster::start(3, 0);
    let (port, admin) = (alloc_port(), alloc_port());
    let mut bootstrap = module_bootstrap(
        module_config(&cluster, json!({ "enable_command_stats": true })),
        port,
        admin,
    );
    let stats_tags: Vec<_> = tags
        .iter()
        .map(|(tag, re)| json!({ "tag_name": tag, "regex": re }))
        .collect();
    bootstrap["stats_config"] = json!({ "stats_tags": stats_tags });
    let envoy = Envoy::start_bootstrap(ProxyKind::Module, &bootstrap, port, admin);

    let mut c = RawClient::connect(envoy.port());
    for i in 0..20 {
        assert_eq!(c.cmd(&["SET", &format!("p{i}"), "v"]), Resp::ok());
        assert_eq!(c.cmd(&["GET", &format!("p{i}")]), Resp::bulk("v"));
    }
    assert!(wait_until(Duration::from_secs(3), || stat(
        &envoy,
        "command.get.total"
    ) >= 20));

    // Histograms reach the admin output at Envoy's stats flush (every 5 s).
    let mut text = String::new();
    let flushed = wait_until(Duration::from_secs(15), || {
        text = envoy.admin_get("/stats/prometheus");
        let samples = prometheus_samples(&text);
        ["get", "set"].iter().all(|cmd| {
            sample(
                &samples,
                "envoy_dynamicmodulescustom_redis_command_latency_count",
                &[("redis_command", cmd), ("redis_stat_prefix", "redis")],
            ) == Some(20.0)
        })
    });
    let redis_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("dynamicmodulescustom_redis"))
        .filter(|l| !l.contains("redis_command=") || l.contains("\"get\"") || l.contains("\"set\""))
        .collect();
    println!("{}", redis_lines.join("\n"));
    assert!(flushed, "no latency histograms labelled with the command");
    let samples = prometheus_samples(&text);
    let prefix = ("redis_stat_prefix", "redis");
    let main = ("redis_cluster_name", "main");
    let rq = sample(
        &samples,
        "envoy_dynamicmodulescustom_redis_cluster_upstream_rq_total",
        &[main, prefix],
    );
    assert!(
        rq.is_some_and(|v| v >= 40.0),
        "no upstream_rq_total >= 40 labelled with the cluster: {rq:?}"
    );
    let slots = sample(
        &samples,
        "envoy_dynamicmodulescustom_redis_cluster_slots_covered",
        &[main, prefix],
    );
    assert_eq!(
        slots,
        Some(16384.0),
        "slots_covered gauge with the cluster label"
    );
    for (cmd, want) in [("get", 20.0), ("set", 20.0)] {
        let labels = [("redis_command", cmd), prefix];
        let total = sample(
            &samples,
            "envoy_dynamicmodulescustom_redis_command_total",
            &labels,
        );
        assert_eq!(total, Some(want), "command_total for {cmd}");
        let latency = sample(
            &samples,
            "envoy_dynamicmodulescustom_redis_command_latency_count",
            &labels,
        );
        assert_eq!(latency, Some(want), "latency histogram count for {cmd}");
    }
    let rx = sample(
        &samples,
        "envoy_dynamicmodulescustom_redis_downstream_rq_total",
        &[prefix],
    );
    assert!(rx.is_some_and(|v| v >= 40.0), "downstream_rq_total: {rx:?}");
    // Nothing left with the cluster or command inside its name.
    let leftover: Vec<_> = samples
        .iter()
        .filter(|(n, _, _)| {
            n.starts_with("envoy_dynamicmodulescustom_redis_")
                && (n.contains("_main_") || n.contains("_redis_redis_") || n.contains("_get_"))
        })
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert!(
        leftover.is_empty(),
        "names still carry labels: {leftover:?}"
    );
}
