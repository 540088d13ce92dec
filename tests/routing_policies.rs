//! Read/write splitting, request mirroring and prefix routes (issue #3), end
//! to end: real Redis Cluster, real Envoy with the module, real clients.
//! Traffic per node is counted with `INFO commandstats` deltas.

mod common;

use common::*;
use redis::Commands;
use serde_json::{json, Value as Json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A standalone (non-cluster) Redis, e.g. a mirror; killed on drop.
struct Standalone {
    port: u16,
    child: Option<Child>,
}

impl Standalone {
    fn start() -> Standalone {
        let port = alloc_port();
        let mut s = Standalone { port, child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        assert!(wait_until(Duration::from_secs(10), || try_connect(port).is_ok()));
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn conn(&self) -> redis::Connection {
        connect(self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("mirror running").id()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.kill();
    }
}

fn role(port: u16) -> String {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut connect(port))
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("role:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

fn config_with_policy(cluster: &Cluster, policy: &str) -> Json {
    module_config(cluster, json!({ "read_policy": policy }))
}

/// GETs through the proxy land exactly where each read policy says; writes
/// always reach masters.
#[test]
fn read_policies_send_reads_exactly_where_they_say() {
    let cluster = Cluster::start(3, 2);
    let masters = cluster.master_ports();
    let replicas = cluster.replica_ports();
    assert_eq!(replicas.len(), 6);
    let keys: Vec<String> = (0..60).map(|i| format!("rp:{i}")).collect();
    for policy in [
        "MASTER",
        "PREFER_MASTER",
        "REPLICA",
        "PREFER_REPLICA",
        "ANY",
    ] {
        let envoy = Envoy::start(config_with_policy(&cluster, policy));
        let mut c = connect(envoy.port());
        for k in &keys {
            let _: () = c.set(k, policy).unwrap();
        }
        // Replicas must have the writes before we read from them.
        let _: i64 = redis::cmd("WAIT")
            .arg(2)
            .arg(2000)
            .query(&mut connect(masters[0]))
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(200));
        reset_stats(&cluster.ports());
        for _ in 0..5 {
            for k in &keys {
                let v: String = c.get(k).unwrap();
                assert_eq!(v, policy, "{policy}: GET {k}");
            }
        }
        let on_masters: u64 = masters.iter().map(|&p| calls(p, "get")).sum();
        let per_replica: Vec<u64> = replicas.iter().map(|&p| calls(p, "get")).collect();
        let on_replicas: u64 = per_replica.iter().sum();
        assert_eq!(
            on_masters + on_replicas,
            300,
            "{policy}: every GET reached exactly one node"
        );
        match policy {
            "MASTER" | "PREFER_MASTER" => assert_eq!(on_replicas, 0, "{policy}: reads on replicas"),
            "REPLICA" | "PREFER_REPLICA" => {
                assert_eq!(on_masters, 0, "{policy}: reads reached a master");
                assert!(
                    per_replica.iter().all(|&n| n > 0),
                    "{policy}: reads not spread over all replicas: {per_replica:?}"
                );
            }
            "ANY" => assert!(
                on_masters > 0 && on_replicas > 0,
                "ANY: masters {on_masters} replicas {on_replicas}"
            ),
            _ => unreachable!(),
        }
        // Writes go to masters whatever the read policy.
        reset_stats(&cluster.ports());
        for k in &keys {
            let _: () = c.set(k, "w").unwrap();
        }
        let sets_on_masters: u64 = masters.iter().map(|&p| calls(p, "set")).sum();
        assert_eq!(sets_on_masters, 60, "{policy}: SETs must all go to masters");
    }
}

/// PREFER_REPLICA falls back to the master when the shard's replica dies;
/// PREFER_MASTER falls back to the replica when the master dies.
#[test]
fn preferred_read_policies_fall_back_when_a_node_dies() {
    let mut cluster = Cluster::start(3, 1);
    let key = "fallback:{a}";
    let master = cluster.node_for_key(key.as_bytes());
    let replica = cluster
        .ports()
        .into_iter()
        .find(|&p| {
            p != master && role(p) == "slave" && {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut connect(p))
                    .unwrap();
                info.contains(&format!("master_port:{master}"))
            }
        })
        .expect("replica of the key's master");

    // PREFER_REPLICA: kill the replica, reads keep working from the master.
    {
        let envoy = Envoy::start(config_with_policy(&cluster, "PREFER_REPLICA"));
        let mut c = connect(envoy.port());
        let _: () = c.set(key, "v1").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let v: String = c.get(key).unwrap();
        assert_eq!(v, "v1");
        cluster.kill_node(replica);
        reset_stats(&[master]);
        for i in 0..50 {
            let v: redis::RedisResult<String> = c.get(key);
            assert_eq!(
                v.as_deref(),
                Ok("v1"),
                "PREFER_REPLICA read {i} after replica death"
            );
        }
        assert!(
            calls(master, "get") >= 50,
            "reads did not fall back to the master"
        );
        cluster.restart_node(replica);
        cluster.wait_healthy(Duration::from_secs(30));
    }

    // PREFER_MASTER: kill the master, reads keep working (from the replica,
    // then from the promoted replica).
    {
        let envoy = Envoy::start(config_with_policy(&cluster, "PREFER_MASTER"));
        let mut c = connect(envoy.port());
        let _: () = c.set(key, "v2").unwrap();
        let _: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(2000)
            .query(&mut connect(master))
            .unwrap_or(0);
        let v: String = c.get(key).unwrap();
        assert_eq!(v, "v2");
        cluster.kill_node(master);
        let mut errors = Vec::new();
        let until = Instant::now() + Duration::from_secs(2);
        let mut n = 0;
        while Instant::now() < until {
            match c.get::<_, String>(key) {
                Ok(v) if v == "v2" => {}
                other => errors.push(format!("{other:?}")),
            }
            n += 1;
        }
        assert!(n > 20, "too few reads: {n}");
        assert!(
            errors.is_empty(),
            "PREFER_MASTER reads failed after master death: {errors:?}"
        );
    }
}

fn mirror_config(cluster: &Cluster, mirror_port: u16) -> Json {
    let mut cfg = module_config(cluster, json!({}));
    cfg["clusters"]["mirror"] = json!({ "seeds": [format!("127.0.0.1:{mirror_port}")] });
    cfg["prefix_routes"] = json!({
        "routes": [
            { "prefix": "all:", "cluster": "main",
              "request_mirror_policy": [ { "cluster": "mirror" } ] },
            { "prefix": "half:", "cluster": "main",
              "request_mirror_policy": [ { "cluster": "mirror", "exclude_read_commands": true,
                  "runtime_fraction": { "default_value": { "numerator": 50, "denominator": "HUNDRED" } } } ] },
        ],
        "catch_all_route": { "cluster": "main",
            "request_mirror_policy": [ { "cluster": "mirror", "exclude_read_commands": true } ] },
    });
    cfg
}

/// `PUBLISH` and `SPUBLISH` are writes to a route's mirrors too: a
/// subscriber on the mirror gets them (the catch-all route's mirror for
/// classic channels, the shard channel's route's mirror for `SPUBLISH`).
#[test]
fn publishes_are_mirrored() {
    let cluster = Cluster::start(3, 0);
    let mirror = Standalone::start();
    let envoy = Envoy::start(mirror_config(&cluster, mirror.port));
    let mut sub = RawClient::connect(mirror.port);
    sub.cmd(&["SUBSCRIBE", "news"]);
    let mut ssub = RawClient::connect(mirror.port);
    ssub.cmd(&["SSUBSCRIBE", "all:{s}ch"]);
    let mut c = envoy.raw_client();
    assert_eq!(c.cmd(&["PUBLISH", "news", "hello"]), Resp::Int(0));
    assert_eq!(c.cmd(&["SPUBLISH", "all:{s}ch", "shard"]), Resp::Int(0));
    sub.set_timeout(Duration::from_secs(5));
    ssub.set_timeout(Duration::from_secs(5));
    assert_eq!(
        sub.read_reply(),
        Resp::Array(vec![
            Resp::bulk("message"),
            Resp::bulk("news"),
            Resp::bulk("hello")
        ])
    );
    assert_eq!(
        ssub.read_reply(),
        Resp::Array(vec![
            Resp::bulk("smessage"),
            Resp::bulk("all:{s}ch"),
            Resp::bulk("shard")
        ])
    );
}

/// Writes are mirrored, reads only where asked; a slow (stopped) or dead
/// mirror costs the client nothing, and mirroring resumes when it comes back.
#[test]
fn mirroring_is_fire_and_forget_and_resumes() {
    let cluster = Cluster::start(3, 0);
    let mut mirror = Standalone::start();
    let envoy = Envoy::start(mirror_config(&cluster, mirror.port));
    let mut c = connect(envoy.port());

    for i in 0..50 {
        let _: () = c.set(format!("w:{i}"), i).unwrap();
        let _: i64 = c.get(format!("w:{i}")).unwrap();
    }
    for i in 0..20 {
        let _: () = c.set(format!("all:{i}"), i).unwrap();
        let _: i64 = c.get(format!("all:{i}")).unwrap();
    }
    for i in 0..400 {
        let _: () = c.set(format!("half:{i}"), i).unwrap();
    }
    let mut m = mirror.conn();
    assert!(wait_until(Duration::from_secs(5), || {
        let n: i64 = redis::cmd("DBSIZE").query(&mut mirror.conn()).unwrap();
        n >= 70
    }));
    // Reads mirrored only on the "all:" route: 20 GETs (counted before this
    // test reads the mirror itself).
    assert_eq!(
        calls(mirror.port, "get"),
        20,
        "mirror saw reads it should not"
    );
    for i in 0..50 {
        let v: Option<i64> = m.get(format!("w:{i}")).unwrap();
        assert_eq!(v, Some(i), "write w:{i} not mirrored");
    }
    // Sampling: about half of the "half:" writes.
    let half: Vec<String> = m.keys("half:*").unwrap();
    assert!(
        (120..=280).contains(&half.len()),
        "50% sampling mirrored {} of 400",
        half.len()
    );

    // Baseline latency, then with the mirror dead.
    let time_sets = |c: &mut redis::Connection, tag: &str| -> (Duration, usize) {
        let mut errors = 0;
        let start = Instant::now();
        for i in 0..300 {
            if c.set::<_, _, ()>(format!("{tag}:{i}"), i).is_err() {
                errors += 1;
            }
        }
        (start.elapsed(), errors)
    };
    let (base, e0) = time_sets(&mut c, "base");
    assert_eq!(e0, 0);

    // A slow mirror: SIGSTOPped, it accepts bytes (into its socket buffer)
    // and answers nothing. 12,000 writes fill the mirror connection's
    // 10,000-command queue, so copies are dropped, not waited for. If a
    // write waited for its copy it would take op_timeout (5 s) or forever;
    // the bounds below are far under that.
    let base_lat = set_latencies(&mut c, "slowbase", 2000);
    let mirror_pid = mirror.pid();
    signal(mirror_pid, "STOP");
    let slow_lat = set_latencies(&mut c, "slow", 12_000);
    signal(mirror_pid, "CONT");
    let dropped = envoy
        .stat("dynamicmodulescustom.redis.redis.cluster.mirror.mirror_rq_dropped")
        .unwrap_or(0);
    let (p50, p99, max) = (
        percentile(&slow_lat, 50),
        percentile(&slow_lat, 99),
        percentile(&slow_lat, 100),
    );
    let base_p50 = percentile(&base_lat, 50);
    println!(
        "slow mirror: SET p50 {p50:?} p99 {p99:?} max {max:?} (mirror answering: p50 {base_p50:?} p99 {:?} max {:?}); {dropped} copies dropped",
        percentile(&base_lat, 99),
        percentile(&base_lat, 100),
    );
    assert!(
        dropped > 0,
        "the stopped mirror was never full: the test did not test a slow mirror"
    );
    assert!(
        p50 < base_p50 * 3 + Duration::from_millis(1)
            && p99 < Duration::from_millis(100)
            && max < Duration::from_secs(1),
        "a slow mirror delayed the client: p50 {p50:?} (answering mirror {base_p50:?}), \
         p99 {p99:?}, max {max:?} (op_timeout 5 s)"
    );

    mirror.kill();
    let (dead, e1) = time_sets(&mut c, "dead");
    assert_eq!(e1, 0, "client saw errors while the mirror was down");
    assert!(
        dead < base * 3 + Duration::from_millis(300),
        "mirror down slowed the client: {dead:?} vs {base:?}"
    );

    // Mirror back on the same port: mirroring resumes by itself.
    mirror.spawn();
    let resumed = wait_until(Duration::from_secs(10), || {
        let _: () = c.set("after:restart", 1).unwrap();
        let v: Option<i64> = mirror.conn().get("after:restart").unwrap_or(None);
        v == Some(1)
    });
    assert!(
        resumed,
        "mirroring did not resume after the mirror restarted"
    );
}

/// The time of each of `n` SETs (keys `<tag>:<i>`), each required to succeed.
fn set_latencies(c: &mut redis::Connection, tag: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r: redis::RedisResult<()> = c.set(format!("{tag}:{i}"), i);
        out.push(t.elapsed());
        assert!(r.is_ok(), "SET {tag}:{i} failed: {r:?}");
    }
    out
}

/// The `pct`th percentile (100 = max) of `lat`.
fn percentile(lat: &[Duration], pct: usize) -> Duration {
    let mut v = lat.to_vec();
    v.sort();
    v.get((v.len() * pct / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Longest prefix wins, case-insensitively when asked, remove_prefix strips
/// the prefix, and a key with no route gets a clear error.
#[test]
fn prefix_routes_pick_the_longest_prefix_and_strip_it() {
    let cluster = Cluster::start(3, 0);
    let side = Standalone::start();
    let mut cfg = module_config(&cluster, json!({}));
    cfg["clusters"]["side"] = json!({ "seeds": [format!("127.0.0.1:{}", side.port)] });
    cfg["prefix_routes"] = json!({
        "case_insensitive": true,
        "routes": [
            { "prefix": "side:", "cluster": "side", "remove_prefix": true },
            { "prefix": "side:long:", "cluster": "main" },
            { "prefix": "main:", "cluster": "main" },
        ],
    });
    let envoy = Envoy::start(cfg);
    let mut c = connect(envoy.port());

    let _: () = c.set("side:k1", "a").unwrap();
    let _: () = c.set("SIDE:k2", "b").unwrap();
    let _: () = c.set("side:long:k3", "c").unwrap();
    let _: () = c.set("main:k4", "d").unwrap();
    let mut s = side.conn();
    assert_eq!(
        s.get::<_, Option<String>>("k1").unwrap().as_deref(),
        Some("a"),
        "remove_prefix"
    );
    assert_eq!(
        s.get::<_, Option<String>>("k2").unwrap().as_deref(),
        Some("b"),
        "case_insensitive"
    );
    assert_eq!(s.get::<_, Option<String>>("side:long:k3").unwrap(), None);
    let owner = cluster.node_for_key(b"side:long:k3");
    let v: Option<String> = connect(owner).get("side:long:k3").unwrap();
    assert_eq!(v.as_deref(), Some("c"), "longest prefix must win");
    let owner = cluster.node_for_key(b"main:k4");
    let v: Option<String> = connect(owner).get("main:k4").unwrap();
    assert_eq!(v.as_deref(), Some("d"));
    // Through the proxy, the stripped key reads back under its full name.
    let v: String = c.get("side:k1").unwrap();
    assert_eq!(v, "a");

    let err = c.get::<_, String>("nowhere").unwrap_err();
    assert!(err.to_string().contains("no route"), "unexpected: {err}");
    // The connection is still fine afterwards.
    let v: String = c.get("main:k4").unwrap();
    assert_eq!(v, "d");
}

/// Two clusters and a mirror behind the routes: `r:` → cluster
/// "b" with its prefix removed, `b:` → cluster "b" mirrored to "mirror",
/// everything else → "main".
struct ThreeRoutes {
    main: Cluster,
    b: Cluster,
    mirror: Standalone,
    envoy: Envoy,
}

impl ThreeRoutes {
    fn start() -> ThreeRoutes {
        let main = Cluster::start(3, 0);
        let b = Cluster::start(3, 0);
        let mirror = Standalone::start();
        let mut cfg = module_config(&main, json!({}));
        cfg["clusters"]["b"] = json!({ "seeds": b.seeds() });
        cfg["clusters"]["mirror"] = json!({ "seeds": [format!("127.0.0.1:{}", mirror.port)] });
        cfg["prefix_routes"] = json!({
            "routes": [
                { "prefix": "r:", "cluster": "b", "remove_prefix": true },
                { "prefix": "b:", "cluster": "b",
                  "request_mirror_policy": [ { "cluster": "mirror" } ] },
            ],
            "catch_all_route": { "cluster": "main" },
        });
        let envoy = Envoy::start(cfg);
        ThreeRoutes {
            main,
            b,
            mirror,
            envoy,
        }
    }

    /// The key's value read straight from the node of `cluster` that owns
    /// `stored` (the key as the node knows it).
    fn direct(cluster: &Cluster, stored: &str) -> Option<String> {
        let port = cluster.node_for_key(stored.as_bytes());
        connect(port).get(stored).unwrap()
    }
}

/// Where each key must live: (client's key, value, cluster "b"?, the key
/// as stored on the node).
fn three_route_keys() -> Vec<(String, String, bool, String)> {
    let mut keys = Vec::new();
    for i in 0..4 {
        keys.push((
            format!("r:{{x}}t{i}"),
            format!("t{i}"),
            true,
            format!("{{x}}t{i}"),
        ));
        keys.push((
            format!("b:xm{i}"),
            format!("m{i}"),
            true,
            format!("b:xm{i}"),
        ));
        keys.push((format!("xc{i}"), format!("c{i}"), false, format!("xc{i}")));
    }
    keys
}

/// Per-key routing of split commands: MSET with keys of all three routes
/// puts every key in its own route's cluster (prefix stripped where the
/// route says so) and nowhere else, mirrors only the mirrored route's
/// keys; MGET returns them in the client's order; EXISTS and DEL counts
/// are summed across clusters.
#[test]
fn split_commands_route_every_key_by_its_own_prefix() {
    let t = ThreeRoutes::start();
    let mut c = connect(t.envoy.port());
    let keys = three_route_keys();
    let mut mset = redis::cmd("MSET");
    for (k, v, _, _) in &keys {
        mset.arg(k).arg(v);
    }
    let _: () = mset.query(&mut c).expect("MSET across three routes");
    for (k, v, on_b, stored) in &keys {
        let (home, other) = if *on_b {
            (&t.b, &t.main)
        } else {
            (&t.main, &t.b)
        };
        assert_eq!(
            ThreeRoutes::direct(home, stored).as_deref(),
            Some(v.as_str()),
            "{k} is not on its route's cluster as {stored}"
        );
        assert_eq!(
            ThreeRoutes::direct(other, stored),
            None,
            "{k} is also on the other cluster"
        );
        assert_eq!(
            ThreeRoutes::direct(other, k),
            None,
            "{k} on the other cluster"
        );
        if stored != k {
            assert_eq!(ThreeRoutes::direct(home, k), None, "{k} kept its prefix");
        }
    }
    // Mirroring follows each key's route: only the b: keys.
    let mut m = t.mirror.conn();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let n: i64 = redis::cmd("DBSIZE").query(&mut t.mirror.conn()).unwrap();
            n >= 4
        }),
        "b: keys were not mirrored"
    );
    let mirrored: Vec<String> = {
        let mut v: Vec<String> = m.keys("*").unwrap();
        v.sort();
        v
    };
    assert_eq!(mirrored, vec!["b:xm0", "b:xm1", "b:xm2", "b:xm3"]);

    // MGET in an order that interleaves the routes, plus a missing key.
    let mut order: Vec<&(String, String, bool, String)> = keys.iter().rev().collect();
    order.swap(1, 7);
    let mut mget = redis::cmd("MGET");
    for (k, ..) in &order {
        mget.arg(k);
    }
    mget.arg("r:{x}missing");
    let got: Vec<Option<String>> = mget.query(&mut c).unwrap();
    let mut want: Vec<Option<String>> = order.iter().map(|(_, v, ..)| Some(v.clone())).collect();
    want.push(None);
    assert_eq!(got, want, "MGET order");

    let mut exists = redis::cmd("EXISTS");
    for (k, ..) in &keys {
        exists.arg(k);
    }
    exists.arg("b:none").arg("none");
    let n: i64 = exists.query(&mut c).unwrap();
    assert_eq!(n, 12, "EXISTS summed over clusters");

    // DEL one key of each route (and a missing one): 3, each gone at home.
    let n: i64 = redis::cmd("DEL")
        .arg("xc0")
        .arg("r:{x}t0")
        .arg("b:xm0")
        .arg("r:{x}none")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 3, "DEL summed over clusters");
    assert_eq!(ThreeRoutes::direct(&t.main, "xc0"), None);
    assert_eq!(ThreeRoutes::direct(&t.b, "{x}t0"), None);
    assert_eq!(ThreeRoutes::direct(&t.b, "b:xm0"), None);
    assert_eq!(
        ThreeRoutes::direct(&t.b, "{x}t1").as_deref(),
        Some("t1"),
        "DEL removed too much"
    );
}

/// A command that cannot be split, with keys in two clusters, is refused
/// with an error naming it and both clusters, and runs nowhere; with keys
/// in one cluster under different routes, each key is stripped by its own
/// route.
#[test]
fn unsplittable_commands_across_clusters_are_refused() {
    let t = ThreeRoutes::start();
    let mut c = t.envoy.raw_client();
    let refused: [&[&str]; 3] = [
        &["MSETNX", "r:{x}a", "1", "{x}b", "2"],
        &["RENAME", "{x}b", "b:{x}c"],
        &[
            "EVAL",
            "return redis.call('SET', KEYS[1], 1)",
            "2",
            "r:{x}a",
            "{x}b",
        ],
    ];
    for cmd in refused {
        let r = c.cmd(cmd);
        let Resp::Error(e) = &r else {
            panic!("{cmd:?} was not refused: {r:?}")
        };
        let name = cmd[0].to_lowercase();
        assert!(
            e.contains(&format!("'{name}'")) && e.contains("'main'") && e.contains("'b'"),
            "{cmd:?}: the error must name the command and both clusters: {e}"
        );
    }
    for stored in ["{x}a", "r:{x}a", "{x}b", "b:{x}c"] {
        assert_eq!(
            ThreeRoutes::direct(&t.main, stored),
            None,
            "{stored} on main"
        );
        assert_eq!(ThreeRoutes::direct(&t.b, stored), None, "{stored} on b");
    }

    // One cluster, two routes: RENAME r:{x}a b:{x}c runs on b as
    // RENAME {x}a b:{x}c.
    assert_eq!(c.cmd(&["SET", "r:{x}a", "moved"]), Resp::ok());
    assert_eq!(c.cmd(&["RENAME", "r:{x}a", "b:{x}c"]), Resp::ok());
    assert_eq!(ThreeRoutes::direct(&t.b, "{x}a"), None);
    assert_eq!(
        ThreeRoutes::direct(&t.b, "b:{x}c").as_deref(),
        Some("moved")
    );
    assert_eq!(c.cmd(&["GET", "b:{x}c"]), Resp::bulk("moved"));
    // The connection is fine after the refusals.
    assert_eq!(c.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

/// Blocking commands are not mirrored: a mirrored `BLPOP` would take an
/// element from the mirror's list, and the mirror's copy of a queue would
/// drift from the primary's. The writes that fill the queue are mirrored.
#[test]
fn blocking_pops_are_not_mirrored() {
    let cluster = Cluster::start(3, 0);
    let mirror = Standalone::start();
    let envoy = Envoy::start(mirror_config(&cluster, mirror.port));
    let mut c = envoy.raw_client();
    for q in ["all:q", "jobs"] {
        assert_eq!(c.cmd(&["RPUSH", q, "a", "b"]), Resp::Int(2));
        assert_eq!(
            c.cmd(&["BLPOP", q, "1"]),
            Resp::Array(vec![Resp::bulk(q), Resp::bulk("a")])
        );
        assert_eq!(
            c.cmd(&["LRANGE", q, "0", "-1"]),
            Resp::Array(vec![Resp::bulk("b")])
        );
    }
    let mut m = mirror.conn();
    // The RPUSHes reached the mirror ("all:" mirrors every command, the
    // catch-all route writes only), the BLPOPs did not.
    for q in ["all:q", "jobs"] {
        assert!(
            wait_until(Duration::from_secs(5), || {
                let n: i64 = redis::cmd("LLEN").arg(q).query(&mut m).unwrap();
                n == 2
            }),
            "{q}: the mirror should hold both pushed elements"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for q in ["all:q", "jobs"] {
        let items: Vec<String> = redis::cmd("LRANGE")
            .arg(q)
            .arg(0)
            .arg(-1)
            .query(&mut m)
            .unwrap();
        assert_eq!(items, ["a", "b"], "{q}: a pop reached the mirror");
    }
    assert_eq!(calls(mirror.port, "blpop"), 0, "the mirror saw a BLPOP");
}
