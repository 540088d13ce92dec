//! Resilience: failover under load without client errors, recovery time,
//! backpressure, many connections, clean shutdown.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn info_replication(port: u16) -> Option<String> {
    let mut c = RawClient::try_connect(port, Duration::from_millis(300)).ok()?;
    c.set_timeout(Duration::from_millis(500));
    c.send(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n").ok()?;
    match c.try_read_reply().ok()? {
        Resp::Bulk(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
}

fn role(port: u16) -> Option<String> {
    info_replication(port)?
        .lines()
        .find_map(|l| l.strip_prefix("role:").map(|r| r.trim().to_string()))
}

/// kill -9 of a master under write load: with promotion faster than
/// op_timeout the client sees no error, every acknowledged write is there
/// afterwards, and the shard serves again soon after the promotion.
#[test]
fn master_failover_under_load_gives_no_client_errors() {
    let mut cluster = Cluster::start(3, 1);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "15s" })));
    let tag = "{fo}";
    let master = cluster.node_for_key(tag.as_bytes());
    let replica = cluster
        .ports()
        .into_iter()
        .find(|&p| {
            p != master
                && info_replication(p).is_some_and(|i| i.contains(&format!("master_port:{master}")))
        })
        .expect("replica of the shard");

    // (time, key, value) of every acknowledged write; errors with times.
    let acked: Arc<Mutex<Vec<(Instant, String, i64)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, errors, stop) = (acked.clone(), errors.clone(), stop.clone());
        let port = envoy.port();
        thread::spawn(move || {
            let mut c = RawClient::connect(port);
            c.set_timeout(Duration::from_secs(20));
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{tag}:{}", i % 200);
                let r = c.cmd(&["SET", &key, &i.to_string()]);
                if r == Resp::ok() {
                    acked.lock().unwrap().push((Instant::now(), key, i));
                } else {
                    errors.lock().unwrap().push(format!("SET {key}: {r:?}"));
                }
                i += 1;
            }
        })
    };
    thread::sleep(Duration::from_secs(1));
    let killed_at = Instant::now();
    cluster.kill_node(master);
    let promoted = wait_until(Duration::from_secs(20), || {
        role(replica).as_deref() == Some("master")
    });
    let promoted_at = Instant::now();
    assert!(promoted, "replica {replica} was not promoted");
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "client saw errors during failover: {errors:?}"
    );
    let acked = acked.lock().unwrap().clone();
    let before = acked.iter().filter(|(t, ..)| *t < killed_at).count();
    // The outage is the longest gap between two acknowledged writes; it
    // ends with the first write the new master served.
    let (gap, outage_end) = acked
        .windows(2)
        .map(|w| (w[1].0 - w[0].0, w[1].0))
        .max_by_key(|(g, _)| *g)
        .expect("writes");
    let after_promotion = outage_end.saturating_duration_since(promoted_at);
    println!(
        "failover: {before} writes before the kill; promotion observed {:?} after the kill; \
         client outage {gap:?}, serving again {after_promotion:?} after the promotion was observed \
         (polled every 50 ms); {} writes, 0 errors",
        promoted_at - killed_at,
        acked.len()
    );
    assert!(
        outage_end < promoted_at + Duration::from_secs(1),
        "shard served again only {after_promotion:?} after promotion"
    );
    // No acknowledged write lost: the last acked value of each key is there.
    let mut last = std::collections::HashMap::new();
    for (_, k, v) in &acked {
        last.insert(k.clone(), *v);
    }
    let mut c = RawClient::connect(envoy.port());
    for (k, v) in last {
        assert_eq!(
            c.cmd(&["GET", &k]),
            Resp::bulk(v.to_string()),
            "acknowledged write to {k} lost"
        );
    }
}

/// A client that pipelines without reading gets backpressure: the proxy
/// stops reading from it instead of buffering without bound, and every reply
/// arrives once the client reads.
#[test]
fn a_client_that_does_not_read_gets_backpressure_not_unbounded_buffering() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(
        &cluster,
        json!({ "max_pending_requests_per_connection": 1000 }),
    ));
    // Small commands, large replies: GETs of a 1 KB value.
    let value = "v".repeat(1000);
    let mut setup = RawClient::connect(envoy.port());
    let long_key = format!("bp:{}", "k".repeat(200));
    assert_eq!(setup.cmd(&["SET", &long_key, &value]), Resp::ok());
    let n = 200_000usize;
    let one = format!("*2\r\n$3\r\nGET\r\n${}\r\n{long_key}\r\n", long_key.len());
    let cmds = one.repeat(n).into_bytes();
    let reply_len = format!("${}\r\n{value}\r\n", value.len()).len();
    let mut s = TcpStream::connect(("127.0.0.1", envoy.port())).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Write without reading until the proxy stops taking bytes.
    let mut sent = 0;
    let until = Instant::now() + Duration::from_secs(10);
    while sent < cmds.len() && Instant::now() < until {
        match s.write(&cmds[sent..(sent + 65536).min(cmds.len())]) {
            Ok(k) => sent += k,
            Err(_) => break,
        }
    }
    assert!(
        sent < cmds.len() / 2,
        "the proxy took {sent} of {} bytes without the client reading a reply",
        cmds.len()
    );
    let buffered = envoy
        .stat("dynamicmodulescustom.redis.redis.downstream_cx_buffered_bytes")
        .unwrap_or(0);
    assert!(
        buffered < 8 << 20,
        "proxy buffered {buffered} bytes for one client"
    );
    // Now read everything while writing the rest: all replies arrive.
    let mut reader = s.try_clone().unwrap();
    let rest = cmds[sent..].to_vec();
    let w = thread::spawn(move || {
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(&rest).unwrap();
    });
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let want = n * reply_len;
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    while got < want {
        let k = reader.read(&mut buf).expect("replies stopped");
        assert!(k > 0, "proxy closed after {got} of {want} reply bytes");
        got += k;
    }
    w.join().unwrap();
    assert_eq!(got, want);
}

/// Many concurrent clients doing mixed commands: no errors, and Envoy's
/// memory does not grow after warm-up. SOAK_SECS / SOAK_CLIENTS extend it.
#[test]
fn many_connections_mixed_commands_no_errors_flat_memory() {
    let clients: usize = std::env::var("SOAK_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let port = envoy.port();
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("VmRSS:")
                        .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
                })
            })
            .unwrap_or(0)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let ops = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Threads each drive many connections round-robin (1000 OS threads
    // would swamp 2 cores).
    let threads = 20;
    let mut handles = Vec::new();
    for t in 0..threads {
        let (stop, errors, ops) = (stop.clone(), errors.clone(), ops.clone());
        let mine = clients / threads;
        handles.push(thread::spawn(move || {
            let mut conns: Vec<RawClient> = (0..mine)
                .map(|_| {
                    let mut c = RawClient::connect(port);
                    c.set_timeout(Duration::from_secs(10));
                    c
                })
                .collect();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (j, c) in conns.iter_mut().enumerate() {
                    let key = format!("soak:{t}:{j}");
                    let v = i.to_string();
                    let r = match i % 4 {
                        0 => c.cmd(&["SET", &key, &v]),
                        1 => c.cmd(&["GET", &key]),
                        2 => c.cmd(&["MGET", &key, "soak:x", "soak:y"]),
                        _ => c.cmd(&["INCR", &format!("{key}:n")]),
                    };
                    if r.is_error() {
                        errors.lock().unwrap().push(format!("{key}: {r:?}"));
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let start = Instant::now();
    thread::sleep(Duration::from_secs(secs / 4).max(Duration::from_secs(3)));
    let warm = rss(envoy.pid());
    while start.elapsed() < Duration::from_secs(secs) {
        thread::sleep(Duration::from_millis(500));
    }
    let end = rss(envoy.pid());
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    println!(
        "soak: {clients} connections, {} ops in {secs} s, RSS after warm-up {warm} kB, at end {end} kB",
        ops.load(Ordering::Relaxed)
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(
        end < warm + 20 * 1024,
        "Envoy RSS grew from {warm} kB to {end} kB"
    );
}

/// SIGTERM: Envoy shuts down cleanly with the module loaded and busy
/// (module threads joined in config_destroy, no crash at exit).
#[test]
fn envoy_exits_cleanly_with_the_module_busy() {
    let cluster = Cluster::start(3, 0);
    let mut envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut c = RawClient::connect(envoy.port());
    for i in 0..100 {
        assert_eq!(c.cmd(&["SET", &format!("k{i}"), "v"]), Resp::ok());
    }
    signal(envoy.pid(), "TERM");
    assert!(
        wait_until(Duration::from_secs(15), || !envoy.is_running()),
        "Envoy did not exit"
    );
    let log = envoy.log();
    for bad in [
        "Caught Segmentation fault",
        "Backtrace",
        "panicked",
        "Aborted",
    ] {
        assert!(!log.contains(bad), "unclean exit ({bad}):\n{log}");
    }
}

/// A cluster that never answers: the refresher keeps retrying (every 100 ms
/// until a first topology), but Envoy's log gets one warning for the streak,
/// not one per attempt.
#[test]
fn an_unreachable_cluster_warns_once_per_streak_not_per_retry() {
    let dead = alloc_port();
    let cfg = json!({
        "stat_prefix": "redis",
        "settings": { "op_timeout": "1s" },
        "clusters": { "main": { "seeds": [format!("127.0.0.1:{dead}")] } },
        "prefix_routes": { "catch_all_route": { "cluster": "main" } },
    });
    let envoy = Envoy::start(cfg);
    let failures = |e: &Envoy| {
        e.stat("dynamicmodulescustom.redis.redis.cluster.main.topology_refresh_failure")
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || failures(&envoy) >= 15),
        "the refresher should keep retrying; failures: {}",
        failures(&envoy)
    );
    let log = envoy.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("[warning]") && l.contains("topology refresh"))
        .count();
    assert_eq!(
        warnings,
        1,
        "{} failed refreshes should give one warning; log:\n{log}",
        failures(&envoy)
    );
}

/// A `MOVED` names a node for one attempt only. Here the proxy's map is
/// stale (a slot moved behind its back, no periodic refresh for a minute),
/// and the node the `MOVED` names is killed: the commands wait for the new
/// topology and are served by the promoted replica. (They used to keep
/// aiming at the dead node until op_timeout, then answer "unreachable".)
#[test]
fn a_redirection_to_a_node_that_dies_is_routed_by_the_new_map() {
    let mut cluster = Cluster::start(3, 1);
    let mut config = module_config(&cluster, json!({ "op_timeout": "15s" }));
    config["clusters"]["main"]["cluster_refresh_rate"] = json!("60s");
    let envoy = Envoy::start(config);
    let key = "{rd}k";
    let mut c = envoy.raw_client();
    c.set_timeout(Duration::from_secs(20));
    assert_eq!(c.cmd(&["SET", key, "v1"]), Resp::ok());

    let slot = key_slot(key.as_bytes());
    let from = cluster.node_for_slot(slot);
    let to = cluster
        .master_ports()
        .into_iter()
        .find(|&p| p != from)
        .expect("another master");
    cluster.move_slot(slot, from, to);
    // The migrated key is on `to`'s replica before `to` dies.
    let mut direct = RawClient::connect(to);
    assert_eq!(direct.cmd(&["SET", "{rd}sync", "x"]), Resp::ok());
    assert_eq!(direct.cmd(&["WAIT", "1", "5000"]), Resp::Int(1));
    let replica = cluster
        .ports()
        .into_iter()
        .find(|&p| {
            info_replication(p).is_some_and(|i| {
                i.contains("role:slave") && i.contains(&format!("master_port:{to}"))
            })
        })
        .expect("replica of the slot's new owner");
    cluster.kill_node(to);

    // The proxy sends to `from` (its map), is MOVED to the dead `to`.
    let t = Instant::now();
    c.send_cmd(&["GET", key]);
    c.send_cmd(&["SET", key, "v2"]);
    assert_eq!(c.read_reply(), Resp::bulk("v1"), "after {:?}", t.elapsed());
    assert_eq!(c.read_reply(), Resp::ok(), "after {:?}", t.elapsed());
    assert_eq!(role(replica).as_deref(), Some("master"));
    assert_eq!(c.cmd(&["GET", key]), Resp::bulk("v2"));
    assert!(
        envoy
            .stat("dynamicmodulescustom.redis.redis.cluster.main.redirections_moved")
            .unwrap_or(0)
            >= 1,
        "the commands were redirected (the map was stale)"
    );
}
