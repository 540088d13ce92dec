//! 1,000 clients blocked at once through the proxy (real Envoy, real Redis
//! Cluster): each holds an upstream connection of its own, the nodes see
//! 1,000 blocked clients, no Envoy worker stalls (another client's GET p99
//! against a baseline), and every client gets the element pushed for it.
//! Alone in its file so no other test shares the CPU while it measures.
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const STAT: &str = "dynamicmodulescustom.redis.redis.cluster.main.";
const BLOCKED: usize = 1000;
/// Sequential GETs per latency round.
const GETS: usize = 2000;

/// This process's soft limit on open files (`/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace();
    soft.into_iter().next()?.parse().ok()
}

fn info_sum(ports: &[u16], field: &str) -> i64 {
    ports
        .iter()
        .map(|&p| {
            let mut c = RawClient::connect(p);
            let Resp::Bulk(b) = c.cmd(&["INFO", "clients"]) else {
                panic!("INFO clients from {p}")
            };
            String::from_utf8_lossy(&b)
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or_else(|| panic!("{field} in INFO clients of {p}"))
        })
        .sum()
}

/// The median and 99th percentile of `GETS` sequential GETs, spread
/// round-robin over `clients` (connections that landed on both Envoy
/// workers).
fn get_latency(clients: &mut [(RawClient, String)]) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(GETS);
    for i in 0..GETS {
        let n = clients.len();
        let (c, key) = &mut clients[i % n];
        let t = Instant::now();
        let r = c.cmd(&["GET", key.as_str()]);
        took.push(t.elapsed());
        assert_eq!(r, Resp::bulk("v"), "GET {key}");
    }
    took.sort();
    (took[GETS / 2], took[GETS * 99 / 100])
}

/// The best median and p99 of five rounds: a burst of noise from a
/// neighbour on this shared machine does not decide the outcome; a cost
/// the blocked clients add is there in every round.
fn best_latency(clients: &mut [(RawClient, String)]) -> (Duration, Duration) {
    let rounds: Vec<_> = (0..5).map(|_| get_latency(clients)).collect();
    let p50 = rounds.iter().map(|r| r.0).min().unwrap_or(Duration::MAX);
    let p99 = rounds.iter().map(|r| r.1).min().unwrap_or(Duration::MAX);
    (p50, p99)
}

/// 1,000 clients blocked in `BLPOP … 0` on distinct keys over every
/// master: 1,000 blocked clients on the nodes, 1,000 more connections to
/// them, `blocked_rq_active` 1,000; another client's GET p99 stays within
/// 3× its baseline + 2 ms, and its median within 1.5× its baseline +
/// 150 µs. The p99 bound is loose for a 2-core machine shared with builds,
/// yet a worker that stalled on its blocked connections (a blocking read or
/// connect, a blocked command on the shared connection) would put more than
/// 1% of GETs far beyond it, or never answer them. The median bound holds
/// because a wake's work follows the connections with work, not all of
/// them (`upstream/clock.rs`): when each wake walked every connection, the
/// median grew by ~200-450 µs per GET at 1,000 blocked in the debug build
/// (a one-off observation, 2026-11-25, at ad95c77). Then one element per
/// key reaches each client, and all 1,000 connections go back to the
/// pool.
#[test]
fn a_thousand_blocked_clients_hold_a_thousand_connections_and_stall_no_worker() {
    // This process holds 1,000 client sockets; Envoy (which inherits the
    // limit) 1,000 downstream and 1,000 upstream ones.
    let limit = open_files_limit().expect("read the open-files limit from /proc/self/limits");
    assert!(
        limit >= 4096,
        "ulimit -n is {limit}: 1,000 blocked clients need at least 4096 open files \
         (1,000 client sockets here, 2,000+ in Envoy); raise it (ulimit -n 4096) and rerun"
    );
    let cluster = Cluster::start(3, 0);
    let masters = cluster.master_ports();
    for &p in &masters {
        assert_eq!(
            RawClient::connect(p).cmd(&["CONFIG", "SET", "maxclients", "4000"]),
            Resp::ok(),
            "maxclients 4000 on {p}"
        );
    }
    let envoy = Envoy::start(module_config(&cluster, json!({})));

    // Latency clients: keys on every master, connections on both workers.
    let mut setup = envoy.raw_client();
    let mut probes: Vec<(RawClient, String)> = (0..8)
        .map(|i| {
            let key = format!("lat:{i}");
            assert_eq!(setup.cmd(&["SET", key.as_str(), "v"]), Resp::ok());
            (envoy.raw_client(), key)
        })
        .collect();
    let _ = get_latency(&mut probes); // warm-up
    let (base_p50, baseline) = best_latency(&mut probes);
    let connected_before = info_sum(&masters, "connected_clients");

    let keys: Vec<String> = keys("bq", BLOCKED);
    let owners = by_owner(&cluster, &keys);
    assert_eq!(owners.len(), masters.len(), "keys on every master");
    let started = Instant::now();
    let mut blocked: Vec<RawClient> = keys
        .iter()
        .map(|k| {
            let mut c = envoy.raw_client();
            c.send_cmd(&["BLPOP", k.as_str(), "0"]);
            c
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || info_sum(
            &masters,
            "blocked_clients"
        ) == BLOCKED as i64),
        "{BLOCKED} clients blocked on the nodes (saw {}); Envoy log tail: {}",
        info_sum(&masters, "blocked_clients"),
        {
            let log = envoy.log();
            log[log.len().saturating_sub(2000)..].to_string()
        }
    );
    let blocked_in = started.elapsed();
    assert_eq!(
        envoy.stat(&format!("{STAT}blocked_rq_active")),
        Some(BLOCKED as u64)
    );
    assert_eq!(
        envoy
            .stat(&format!("{STAT}blocking_cx_overflow"))
            .unwrap_or(0),
        0
    );
    let connected = info_sum(&masters, "connected_clients") - connected_before;
    assert!(
        connected >= BLOCKED as i64,
        "{connected} more connections to the nodes for {BLOCKED} blocked clients"
    );

    let (loaded_p50, loaded) = best_latency(&mut probes);
    let bound = baseline * 3 + Duration::from_millis(2);
    let p50_bound = base_p50 * 3 / 2 + Duration::from_micros(150);
    eprintln!(
        "GET p50/p99: {base_p50:?}/{baseline:?} baseline, {loaded_p50:?}/{loaded:?} with \
         {BLOCKED} blocked (p50 bound {p50_bound:?}, p99 bound {bound:?}); blocked in \
         {blocked_in:?}, {connected} upstream connections"
    );
    assert!(
        loaded <= bound,
        "GET p99 {loaded:?} with {BLOCKED} clients blocked, baseline {baseline:?} (bound {bound:?})"
    );
    assert!(
        loaded_p50 <= p50_bound,
        "GET median {loaded_p50:?} with {BLOCKED} clients blocked, baseline {base_p50:?} \
         (bound {p50_bound:?}): each GET pays for the blocked clients' connections"
    );
    assert_eq!(
        info_sum(&masters, "blocked_clients"),
        BLOCKED as i64,
        "still blocked"
    );

    // One element per key, pipelined through the proxy.
    let mut push = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        push.extend(encode_cmd(&["RPUSH", k.as_str(), &format!("e{i}")]));
    }
    setup.send(&push).expect("send the pushes");
    for k in &keys {
        assert_eq!(setup.read_reply(), Resp::Int(1), "RPUSH {k}");
    }
    for (i, (c, k)) in blocked.iter_mut().zip(&keys).enumerate() {
        c.set_timeout(Duration::from_secs(10));
        assert_eq!(
            c.read_reply(),
            Resp::Array(vec![Resp::bulk(k), Resp::bulk(format!("e{i}"))]),
            "client {i}"
        );
    }
    assert_eq!(info_sum(&masters, "blocked_clients"), 0);
    assert!(
        wait_until(Duration::from_secs(5), || envoy
            .stat(&format!("{STAT}blocked_rq_active"))
            == Some(0)
            && envoy.stat(&format!("{STAT}blocking_cx_idle"))
                == Some(BLOCKED as u64)),
        "blocked_rq_active {:?} (want 0), blocking_cx_idle {:?} (want {BLOCKED})",
        envoy.stat(&format!("{STAT}blocked_rq_active")),
        envoy.stat(&format!("{STAT}blocking_cx_idle"))
    );
}
