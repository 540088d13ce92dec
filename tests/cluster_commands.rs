//! Cluster-wide and connection-level commands through the proxy, end to end
//! (real Redis Cluster, real Envoy): SCAN/KEYS/DBSIZE/RANDOMKEY/FLUSH*/INFO/
//! TIME across masters, the local CLUSTER view (`redis-cli -c` works), CLIENT/
//! HELLO/RESET state, cross-slot splitting compared with a standalone Redis,
//! CROSSSLOT for what cannot be split, and EVAL routing (blocking commands:
//! tests/blocking.rs; pub/sub: tests/pubsub.rs).
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use redis::Commands;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Envoy is declared first so it stops before the cluster.
struct Setup {
    envoy: Envoy,
    cluster: Cluster,
}

fn setup() -> Setup {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    // A keyed command waits for the proxy's first topology; cluster-wide
    // ones do not (see cluster_wide_commands_wait_for_the_first_topology),
    // so every test starts once the topology is there.
    assert_eq!(envoy.raw_client().cmd(&["EXISTS", "warm-up"]), Resp::Int(0));
    Setup { envoy, cluster }
}

impl Setup {
    fn raw(&self) -> RawClient {
        self.envoy.raw_client()
    }

    /// Write `keys` (value = key) through the proxy, pipelined.
    fn load(&self, keys: &[String]) {
        let mut c = self.raw();
        for chunk in keys.chunks(200) {
            let mut wire = Vec::new();
            for k in chunk {
                wire.extend(encode_cmd(&["SET", k, k]));
            }
            c.send(&wire).unwrap();
            for k in chunk {
                assert_eq!(c.read_reply(), Resp::ok(), "SET {k}");
            }
        }
    }

    /// Sum of DBSIZE asked of each master directly.
    fn dbsize_on_nodes(&self) -> BTreeMap<u16, i64> {
        self.cluster
            .master_ports()
            .into_iter()
            .map(|p| {
                let n: i64 = redis::cmd("DBSIZE").query(&mut connect(p)).unwrap();
                (p, n)
            })
            .collect()
    }
}

fn bulk_strings(r: &Resp) -> Vec<String> {
    match r {
        Resp::Array(items) => items
            .iter()
            .map(|i| i.text().unwrap_or_else(|| panic!("not a string: {i:?}")))
            .collect(),
        other => panic!("expected an array, got {other:?}"),
    }
}

/// Every scalar of a reply, depth first, as text (maps and arrays flattened).
fn flatten(r: &Resp, out: &mut Vec<String>) {
    match r {
        Resp::Array(v) => v.iter().for_each(|i| flatten(i, out)),
        Resp::Map(v) => v.iter().for_each(|(k, i)| {
            flatten(k, out);
            flatten(i, out)
        }),
        Resp::Int(i) => out.push(i.to_string()),
        other => out.push(other.text().unwrap_or_else(|| format!("{other:?}"))),
    }
}

/// One SCAN call: (next cursor, keys).
fn scan_once(c: &mut RawClient, cursor: &str, extra: &[&str]) -> (String, Vec<String>) {
    let mut args = vec!["SCAN", cursor];
    args.extend_from_slice(extra);
    match c.cmd(&args) {
        Resp::Array(v) if v.len() == 2 => {
            let next = v[0]
                .text()
                .unwrap_or_else(|| panic!("cursor not a string: {v:?}"));
            (next, bulk_strings(&v[1]))
        }
        other => panic!("SCAN {cursor} {extra:?}: unexpected reply {other:?}"),
    }
}

/// A whole SCAN iteration: every key returned, in order (duplicates kept).
fn scan_all(c: &mut RawClient, extra: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = "0".to_string();
    for _ in 0..100_000 {
        let (next, keys) = scan_once(c, &cursor, extra);
        out.extend(keys);
        if next == "0" {
            return out;
        }
        cursor = next;
    }
    panic!("SCAN did not finish in 100000 calls");
}

fn assert_each_once(seen: &[String], want: &BTreeSet<String>, what: &str) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for k in seen {
        *counts.entry(k).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        dups.is_empty(),
        "{what}: keys returned more than once: {dups:?}"
    );
    let got: BTreeSet<String> = seen.iter().cloned().collect();
    let missing: Vec<_> = want.difference(&got).take(10).collect();
    let extra: Vec<_> = got.difference(want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} keys returned, {} expected; missing (first 10) {missing:?}, unexpected {extra:?}",
        got.len(),
        want.len()
    );
}

// ---------------------------------------------------------------------------
// SCAN, KEYS, DBSIZE, RANDOMKEY, FLUSH*
// ---------------------------------------------------------------------------

#[test]
fn scan_returns_every_key_exactly_once() {
    let s = setup();
    let keys = keys("scan", 1500);
    s.load(&keys);
    let want: BTreeSet<String> = keys.iter().cloned().collect();
    // Keys really are on every master (else this proves little).
    let per = s.dbsize_on_nodes();
    assert!(per.values().all(|&n| n > 300), "keys per master: {per:?}");

    let mut c = s.raw();
    assert_each_once(&scan_all(&mut c, &[]), &want, "SCAN");
    assert_each_once(&scan_all(&mut c, &["COUNT", "7"]), &want, "SCAN COUNT 7");
    assert_each_once(
        &scan_all(&mut c, &["COUNT", "1000"]),
        &want,
        "SCAN COUNT 1000",
    );

    // MATCH: only the keys matching, still each once.
    let want_match: BTreeSet<String> = keys.iter().filter(|k| k.ends_with('7')).cloned().collect();
    assert_each_once(
        &scan_all(&mut c, &["MATCH", "scan:*7", "COUNT", "50"]),
        &want_match,
        "SCAN MATCH scan:*7",
    );
}

#[test]
fn scan_type_filter() {
    let s = setup();
    let strings = keys("str", 300);
    s.load(&strings);
    let hashes = keys("hash", 200);
    let mut c = s.raw();
    for h in &hashes {
        assert_eq!(c.cmd(&["HSET", h, "f", "v"]), Resp::Int(1));
    }
    let want_h: BTreeSet<String> = hashes.iter().cloned().collect();
    let want_s: BTreeSet<String> = strings.iter().cloned().collect();
    assert_each_once(
        &scan_all(&mut c, &["TYPE", "hash", "COUNT", "20"]),
        &want_h,
        "SCAN TYPE hash",
    );
    assert_each_once(
        &scan_all(&mut c, &["TYPE", "string"]),
        &want_s,
        "SCAN TYPE string",
    );
    assert_each_once(
        &scan_all(&mut c, &["TYPE", "list"]),
        &BTreeSet::new(),
        "SCAN TYPE list",
    );
}

#[test]
fn scan_on_empty_database_ends_at_once() {
    let s = setup();
    let mut c = s.raw();
    assert_eq!(scan_all(&mut c, &[]), Vec::<String>::new());
}

#[test]
fn scan_guarantee_holds_while_other_keys_come_and_go() {
    let s = setup();
    let stable = keys("stable", 1000);
    s.load(&stable);
    let stop = Arc::new(AtomicBool::new(false));
    let port = s.envoy.port();
    let churn = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut c = RawClient::connect(port);
            let mut i = 0u64;
            let mut ops = 0u64;
            while !stop.load(Ordering::Relaxed) && ops < 200_000 {
                let batch: Vec<u8> = (0..20)
                    .flat_map(|j| {
                        let k = format!("churn:{}", i + j);
                        let old = format!("churn:{}", (i + j).saturating_sub(300));
                        let mut w = encode_cmd(&["SET", &k, "x"]);
                        w.extend(encode_cmd(&["DEL", &old]));
                        w
                    })
                    .collect();
                c.send(&batch).unwrap();
                for _ in 0..40 {
                    assert!(!c.read_reply().is_error());
                }
                i += 20;
                ops += 40;
            }
            ops
        })
    };
    let mut c = s.raw();
    let mut scans = 0;
    for _ in 0..3 {
        let seen = scan_all(&mut c, &["COUNT", "10"]);
        scans += 1;
        let got: HashSet<&str> = seen.iter().map(String::as_str).collect();
        let missing: Vec<&String> = stable
            .iter()
            .filter(|k| !got.contains(k.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "SCAN under churn (round {scans}) missed {} keys that existed throughout, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        for k in &seen {
            assert!(
                k.starts_with("stable:") || k.starts_with("churn:"),
                "SCAN returned a key nobody wrote: {k}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let ops = churn.join().expect("churn thread");
    assert!(ops > 0, "the churn thread did nothing");
}

#[test]
fn keys_returns_the_union_of_all_masters() {
    let s = setup();
    let ks = keys("kk", 400);
    s.load(&ks);
    s.load(&keys("other", 50));
    let mut c = s.raw();
    let got = bulk_strings(&c.cmd(&["KEYS", "kk:*"]));
    assert_each_once(&got, &ks.iter().cloned().collect(), "KEYS kk:*");
    let all = bulk_strings(&c.cmd(&["KEYS", "*"]));
    assert_eq!(all.len(), 450);
    assert_eq!(c.cmd(&["KEYS", "nomatch*"]), Resp::Array(vec![]));
}

#[test]
fn dbsize_is_the_sum_over_masters() {
    let s = setup();
    let mut c = s.raw();
    assert_eq!(c.cmd(&["DBSIZE"]), Resp::Int(0));
    s.load(&keys("db", 777));
    let per = s.dbsize_on_nodes();
    let sum: i64 = per.values().sum();
    assert_eq!(sum, 777, "per master: {per:?}");
    assert_eq!(c.cmd(&["DBSIZE"]), Resp::Int(sum));
}

#[test]
fn randomkey_returns_an_existing_key_from_any_master() {
    let s = setup();
    let mut c = s.raw();
    assert_eq!(c.cmd(&["RANDOMKEY"]), Resp::Nil, "RANDOMKEY on an empty db");
    let ks = keys("rk", 300);
    s.load(&ks);
    let all: HashSet<String> = ks.iter().cloned().collect();
    let mut owners = BTreeSet::new();
    for _ in 0..200 {
        let k = c
            .cmd(&["RANDOMKEY"])
            .text()
            .expect("RANDOMKEY returns a key");
        assert!(
            all.contains(&k),
            "RANDOMKEY returned {k}, which was never written"
        );
        assert_eq!(c.cmd(&["EXISTS", &k]), Resp::Int(1));
        owners.insert(s.cluster.node_for_key(k.as_bytes()));
    }
    assert!(
        owners.len() >= 2,
        "200 RANDOMKEY calls only ever returned keys of masters {owners:?}"
    );
    // Keys on one master only: still found whichever master is asked first.
    assert_eq!(c.cmd(&["FLUSHALL"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", "{only}x", "1"]), Resp::ok());
    for _ in 0..20 {
        assert_eq!(c.cmd(&["RANDOMKEY"]), Resp::bulk("{only}x"));
    }
}

#[test]
fn flushall_and_flushdb_empty_every_master() {
    let s = setup();
    let mut c = s.raw();
    for cmd in [
        vec!["FLUSHALL"],
        vec!["FLUSHDB"],
        vec!["FLUSHALL", "SYNC"],
        vec!["FLUSHDB", "ASYNC"],
    ] {
        s.load(&keys("fl", 300));
        assert!(s.dbsize_on_nodes().values().all(|&n| n > 0));
        assert_eq!(c.cmd(&cmd), Resp::ok(), "{cmd:?}");
        let ok = wait_until(Duration::from_secs(5), || {
            s.dbsize_on_nodes().values().all(|&n| n == 0)
        });
        assert!(
            ok,
            "after {cmd:?} the masters hold {:?}",
            s.dbsize_on_nodes()
        );
        assert_eq!(c.cmd(&["DBSIZE"]), Resp::Int(0));
    }
}

// ---------------------------------------------------------------------------
// INFO, TIME, CLUSTER view
// ---------------------------------------------------------------------------

#[test]
fn info_nodes_has_a_proxy_section_and_one_node_section_per_master() {
    let s = setup();
    let mut c = s.raw();
    // (Plain INFO is one server: tests/suite_conformance.rs.)
    let info = c
        .cmd(&["INFO", "nodes"])
        .text()
        .expect("INFO is a bulk string");
    assert!(
        info.starts_with("# Proxy"),
        "INFO starts with: {:?}",
        &info[..info.len().min(200)]
    );
    for p in s.cluster.master_ports() {
        let header = format!("# Node 127.0.0.1:{p}");
        assert_eq!(
            info.matches(&header).count(),
            1,
            "INFO should have exactly one '{header}' section:\n{info}"
        );
    }
    assert_eq!(info.matches("# Node ").count(), 3);
    // Each node's own INFO follows its header.
    assert_eq!(info.matches("redis_version:").count(), 4, "{info}");
    assert!(info.contains("cluster_masters:3"), "{info}");
    // A section argument is passed on.
    let server = c.cmd(&["INFO", "nodes", "server"]).text().unwrap();
    assert!(
        server.contains("# Proxy") && server.matches("tcp_port:").count() == 3,
        "{server}"
    );
    assert!(
        !server.contains("used_memory:"),
        "INFO server should not include memory: {server}"
    );
}

#[test]
fn time_returns_the_current_time() {
    let s = setup();
    let mut c = s.raw();
    let v = bulk_strings(&c.cmd(&["TIME"]));
    assert_eq!(v.len(), 2, "{v:?}");
    let secs: u64 = v[0].parse().unwrap();
    let micros: u64 = v[1].parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.abs_diff(now) <= 2, "TIME {secs} vs now {now}");
    assert!(micros < 1_000_000);
}

#[test]
fn cluster_keyslot_matches_the_nodes() {
    let s = setup();
    let mut c = s.raw();
    let node = s.cluster.master_ports()[0];
    let mut direct = RawClient::connect(node);
    let mut ks: Vec<String> = keys("slot", 50);
    ks.extend(
        [
            "{user1000}.following",
            "foo{}{bar}",
            "foo{{bar}}zap",
            "foo{bar}{zap}",
            "{}",
            "",
            "{a",
            "a}b{c}",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    for k in &ks {
        let want = direct.cmd(&["CLUSTER", "KEYSLOT", k]);
        assert!(matches!(want, Resp::Int(_)));
        assert_eq!(
            c.cmd(&["CLUSTER", "KEYSLOT", k]),
            want,
            "CLUSTER KEYSLOT {k:?}"
        );
    }
}

#[test]
fn cluster_slots_shards_nodes_present_the_proxy_as_one_node() {
    let s = setup();
    let port = s.envoy.port() as i64;
    let mut c = s.raw();

    let info = c.cmd(&["CLUSTER", "INFO"]).text().unwrap();
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");

    let id = c.cmd(&["CLUSTER", "MYID"]).text().unwrap();
    assert_eq!(id.len(), 40, "node id {id:?}");

    match c.cmd(&["CLUSTER", "SLOTS"]) {
        Resp::Array(ranges) => {
            assert_eq!(ranges.len(), 1, "{ranges:?}");
            let Resp::Array(r) = &ranges[0] else {
                panic!("{ranges:?}")
            };
            assert_eq!(r[0], Resp::Int(0));
            assert_eq!(r[1], Resp::Int(16383));
            assert_eq!(r.len(), 3, "one node only: {r:?}");
            let Resp::Array(n) = &r[2] else {
                panic!("{r:?}")
            };
            assert_eq!(n[0], Resp::bulk("127.0.0.1"));
            assert_eq!(n[1], Resp::Int(port));
            assert_eq!(n[2], Resp::bulk(&id));
        }
        other => panic!("CLUSTER SLOTS: {other:?}"),
    }

    match c.cmd(&["CLUSTER", "SHARDS"]) {
        Resp::Array(shards) => {
            assert_eq!(shards.len(), 1, "{shards:?}");
            let mut flat = Vec::new();
            flatten(&shards[0], &mut flat);
            let text = flat.join(" ");
            assert!(text.contains(&format!("port {port} ")), "{text}");
            assert!(text.contains("slots 0 16383 "), "{text}");
            assert!(text.contains(&format!("id {id} ")), "{text}");
            assert!(text.contains("role master "), "{text}");
            assert!(text.contains("ip 127.0.0.1 "), "{text}");
        }
        other => panic!("CLUSTER SHARDS: {other:?}"),
    }

    let nodes = c.cmd(&["CLUSTER", "NODES"]).text().unwrap();
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(lines.len(), 1, "{nodes}");
    let f: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(f[0], id);
    assert!(
        f[1].starts_with(&format!("127.0.0.1:{port}@")),
        "{}",
        lines[0]
    );
    assert!(
        f[2].contains("myself") && f[2].contains("master"),
        "{}",
        lines[0]
    );
    assert_eq!(f.last(), Some(&"0-16383"), "{}", lines[0]);

    // The same view through the redis crate's cluster parser.
    let v: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut s.envoy.client())
        .unwrap();
    let map = parse_cluster_slots(&v);
    assert_eq!(
        map,
        vec![SlotRange {
            start: 0,
            end: 16383,
            master: port as u16,
            replicas: vec![]
        }]
    );
}

#[test]
fn redis_cli_in_cluster_mode_works_through_the_proxy() {
    let s = setup();
    let port = s.envoy.port().to_string();
    let ks = keys("cli", 200);
    let mut script = String::new();
    for k in &ks {
        script.push_str(&format!("SET {k} val-{k}\n"));
    }
    for k in &ks {
        script.push_str(&format!("GET {k}\n"));
    }
    let out = redis_cli_stdin(&["-c", "-p", &port], Some(script.as_bytes()));
    assert!(
        out.success,
        "redis-cli -c failed: {}\n{}",
        out.stdout, out.stderr
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 400, "redis-cli output:\n{}", out.stdout);
    assert!(lines[..200].iter().all(|l| *l == "OK"), "{}", out.stdout);
    for (k, l) in ks.iter().zip(&lines[200..]) {
        assert_eq!(*l, format!("val-{k}"));
    }
    // The values are really in the cluster, on their owners.
    for k in ks.iter().step_by(17) {
        let owner = s.cluster.node_for_key(k.as_bytes());
        let got: Option<String> = connect(owner).get(k).unwrap();
        assert_eq!(got, Some(format!("val-{k}")), "{k} on its owner {owner}");
    }
    // One-shot commands too, incl. a cross-slot MGET.
    let out = redis_cli(&["-c", "-p", &port, "MGET", &ks[0], &ks[1], &ks[2]]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        vec![
            format!("val-{}", ks[0]),
            format!("val-{}", ks[1]),
            format!("val-{}", ks[2])
        ]
    );
    let out = redis_cli(&["-c", "-p", &port, "CLUSTER", "INFO"]);
    assert!(out.stdout.contains("cluster_state:ok"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------
// Connection state: ASKING/READONLY/READWRITE, CLIENT, HELLO, RESET
// ---------------------------------------------------------------------------

#[test]
fn asking_readonly_readwrite_answer_ok() {
    let s = setup();
    let mut c = s.raw();
    for cmd in ["ASKING", "READONLY", "READWRITE"] {
        assert_eq!(c.cmd(&[cmd]), Resp::ok(), "{cmd}");
    }
    assert_eq!(c.cmd(&["SET", "a", "1"]), Resp::ok());
    assert_eq!(c.cmd(&["GET", "a"]), Resp::bulk("1"));
}

#[test]
fn client_setname_getname_id() {
    let s = setup();
    let mut c = s.raw();
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), Resp::Nil);
    assert_eq!(c.cmd(&["CLIENT", "SETNAME", "worker-1"]), Resp::ok());
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), Resp::bulk("worker-1"));
    let Resp::Int(id1) = c.cmd(&["CLIENT", "ID"]) else {
        panic!("CLIENT ID")
    };
    assert_eq!(
        c.cmd(&["CLIENT", "ID"]),
        Resp::Int(id1),
        "CLIENT ID is stable"
    );
    let mut other = s.raw();
    let Resp::Int(id2) = other.cmd(&["CLIENT", "ID"]) else {
        panic!("CLIENT ID")
    };
    assert_ne!(id1, id2, "two connections share a CLIENT ID");
    assert_eq!(
        other.cmd(&["CLIENT", "GETNAME"]),
        Resp::Nil,
        "names are per connection"
    );
    let info = c.cmd(&["CLIENT", "INFO"]).text().unwrap();
    assert!(info.contains("name=worker-1"), "{info}");
    assert!(info.contains(&format!("id={id1}")), "{info}");
    // Bad names are refused as Redis does.
    assert!(c.cmd(&["CLIENT", "SETNAME", "a b"]).is_error());
    assert_eq!(c.cmd(&["CLIENT", "SETNAME", ""]), Resp::ok());
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), Resp::Nil);
}

#[test]
fn hello_3_gives_resp3_replies_and_hello_2_goes_back() {
    let s = setup();
    let mut c = s.raw();
    assert_eq!(c.cmd(&["HSET", "h", "f1", "v1", "f2", "v2"]), Resp::Int(2));

    c.send_cmd(&["HELLO", "3"]);
    let hello = c.read_reply_bytes();
    assert!(
        hello.starts_with(b"%"),
        "HELLO 3 reply: {}",
        show_resp(&hello)
    );
    let Resp::Map(pairs) = parse_whole(&hello) else {
        unreachable!()
    };
    let proto = pairs
        .iter()
        .find(|(k, _)| *k == Resp::bulk("proto"))
        .map(|(_, v)| v.clone());
    assert_eq!(proto, Some(Resp::Int(3)));

    c.send_cmd(&["HGETALL", "h"]);
    let raw = c.read_reply_bytes();
    assert_eq!(
        raw,
        b"%2\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n".to_vec(),
        "HGETALL in RESP3: {}",
        show_resp(&raw)
    );
    c.send_cmd(&["GET", "missing"]);
    assert_eq!(c.read_reply_bytes(), b"_\r\n".to_vec(), "a RESP3 null");
    c.send_cmd(&["MGET", "h", "missing", "{x}other"]);
    assert_eq!(
        c.read_reply_bytes(),
        b"*3\r\n_\r\n_\r\n_\r\n".to_vec(),
        "MGET nulls in RESP3"
    );
    c.send_cmd(&["CLIENT", "GETNAME"]);
    assert_eq!(c.read_reply_bytes(), b"_\r\n".to_vec());
    c.send_cmd(&["SADD", "s", "a"]);
    c.read_reply_bytes();
    c.send_cmd(&["SMEMBERS", "s"]);
    assert_eq!(
        c.read_reply_bytes(),
        b"~1\r\n$1\r\na\r\n".to_vec(),
        "a RESP3 set"
    );
    c.send_cmd(&["ZADD", "z", "1.5", "m"]);
    c.read_reply_bytes();
    c.send_cmd(&["ZSCORE", "z", "m"]);
    assert_eq!(c.read_reply_bytes(), b",1.5\r\n".to_vec(), "a RESP3 double");

    c.send_cmd(&["HELLO", "2"]);
    let hello = c.read_reply_bytes();
    assert!(
        hello.starts_with(b"*14\r\n"),
        "HELLO 2 reply: {}",
        show_resp(&hello)
    );
    c.send_cmd(&["HGETALL", "h"]);
    assert_eq!(
        c.read_reply_bytes(),
        b"*4\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n".to_vec()
    );
    c.send_cmd(&["GET", "missing"]);
    assert_eq!(c.read_reply_bytes(), b"$-1\r\n".to_vec());
    c.send_cmd(&["ZSCORE", "z", "m"]);
    assert_eq!(c.read_reply_bytes(), b"$3\r\n1.5\r\n".to_vec());

    // HELLO with SETNAME, and a bad version.
    assert!(matches!(
        c.cmd(&["HELLO", "3", "SETNAME", "n3"]),
        Resp::Map(_)
    ));
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), Resp::bulk("n3"));
    match c.cmd(&["HELLO", "4"]) {
        Resp::Error(e) => assert!(e.starts_with("NOPROTO"), "{e}"),
        other => panic!("HELLO 4: {other:?}"),
    }
}

#[test]
fn reset_goes_back_to_resp2_and_no_name() {
    let s = setup();
    let mut c = s.raw();
    assert!(matches!(
        c.cmd(&["HELLO", "3", "SETNAME", "x"]),
        Resp::Map(_)
    ));
    c.send_cmd(&["RESET"]);
    assert_eq!(c.read_reply_bytes(), b"+RESET\r\n".to_vec());
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]), Resp::Nil);
    c.send_cmd(&["GET", "nothing"]);
    assert_eq!(
        c.read_reply_bytes(),
        b"$-1\r\n".to_vec(),
        "RESP2 again after RESET"
    );
    assert_eq!(c.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

// ---------------------------------------------------------------------------
// Multi-key commands across slots
// ---------------------------------------------------------------------------

#[test]
fn cross_slot_split_commands_reply_exactly_like_redis() {
    let s = setup();
    let reference = StandaloneRedis::start();
    let mut p = s.raw();
    let mut r = reference.raw_client();
    let ks = keys("x", 12);
    // The keys cover every master.
    assert_eq!(by_owner(&s.cluster, &ks).len(), 3);
    let k = |i: usize| ks[i].as_str();
    let script: Vec<Vec<&str>> = vec![
        vec!["MGET", k(0), k(1), k(2), k(3)],
        vec![
            "MSET",
            k(0),
            "a",
            k(1),
            "b",
            k(2),
            "c",
            k(5),
            "e",
            k(7),
            "g",
        ],
        vec!["MGET", k(0), k(1), k(2), k(3), k(4), k(5), k(6), k(7)],
        vec!["MGET", k(7), k(0), k(7), k(11), k(0)],
        vec!["MSET", k(0), "first", k(3), "x", k(0), "second"],
        vec!["MGET", k(0), k(3)],
        vec!["EXISTS", k(0), k(1), k(2), k(3), k(4), k(0), k(0)],
        vec!["TOUCH", k(0), k(1), k(9), k(2), k(9)],
        vec!["DEL", k(0), k(9), k(1), k(0)],
        vec!["EXISTS", k(0), k(1), k(2), k(3)],
        vec!["UNLINK", k(2), k(3), k(10), k(5)],
        vec!["MGET", k(0), k(1), k(2), k(3), k(4), k(5), k(6), k(7)],
        vec!["LPUSH", k(4), "l"],
        vec!["MGET", k(4), k(7), k(8)],
        vec!["DEL", k(4), k(7), k(8), k(6)],
        vec!["EXISTS", k(4), k(7)],
        vec!["DBSIZE"],
    ];
    for cmd in &script {
        p.send_cmd(cmd);
        r.send_cmd(cmd);
        let (pb, rb) = (p.read_reply_bytes(), r.read_reply_bytes());
        assert_eq!(
            show_resp(&pb),
            show_resp(&rb),
            "{}: proxy vs standalone Redis",
            show_cmd(cmd)
        );
    }
    // The same, pipelined in one write.
    let mut wire = Vec::new();
    for cmd in &script {
        wire.extend(encode_cmd(cmd));
    }
    p.send(&wire).unwrap();
    r.send(&wire).unwrap();
    for cmd in &script {
        let (pb, rb) = (p.read_reply_bytes(), r.read_reply_bytes());
        assert_eq!(
            show_resp(&pb),
            show_resp(&rb),
            "pipelined {}",
            show_cmd(cmd)
        );
    }
}

#[test]
fn non_splittable_cross_slot_commands_get_crossslot() {
    let s = setup();
    let mut c = s.raw();
    let (a, b) = ("{a}k", "{b}k");
    assert_ne!(key_slot(a.as_bytes()), key_slot(b.as_bytes()));
    assert_eq!(c.cmd(&["SET", a, "1"]), Resp::ok());
    assert_eq!(c.cmd(&["SADD", "{a}s", "m"]), Resp::Int(1));
    // What a cluster node itself answers (the reference text).
    let mut node = RawClient::connect(s.cluster.master_ports()[0]);
    let cases: Vec<Vec<&str>> = vec![
        vec!["MSETNX", a, "1", b, "2"],
        vec!["RENAME", a, b],
        vec!["RENAMENX", a, b],
        vec!["SINTERSTORE", "{c}dst", "{a}s", "{b}s"],
        vec!["SUNION", "{a}s", "{b}s"],
        vec!["SMOVE", "{a}s", "{b}s", "m"],
        vec!["LMOVE", a, b, "LEFT", "LEFT"],
        vec!["PFCOUNT", a, b],
        vec!["EVAL", "return 1", "2", a, b],
    ];
    for cmd in &cases {
        let want = node.cmd(cmd);
        match &want {
            Resp::Error(e) if e.starts_with("CROSSSLOT") => {}
            other => panic!("a cluster node answered {} with {other:?}", show_cmd(cmd)),
        }
        assert_eq!(c.cmd(cmd), want, "{}", show_cmd(cmd));
    }
    // Nothing changed.
    assert_eq!(c.cmd(&["GET", a]), Resp::bulk("1"));
    assert_eq!(c.cmd(&["EXISTS", b, "{c}dst"]), Resp::Int(0));
    assert_eq!(
        c.cmd(&["SMEMBERS", "{a}s"]),
        Resp::Array(vec![Resp::bulk("m")])
    );
    // Same-slot forms go through intact.
    assert_eq!(c.cmd(&["MSETNX", "{t}1", "a", "{t}2", "b"]), Resp::Int(1));
    assert_eq!(c.cmd(&["RENAME", "{t}1", "{t}3"]), Resp::ok());
    assert_eq!(
        c.cmd(&["MGET", "{t}1", "{t}2", "{t}3"]),
        Resp::Array(vec![Resp::Nil, Resp::bulk("b"), Resp::bulk("a")])
    );
}

// ---------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------

#[test]
fn eval_is_routed_to_the_slot_of_its_keys() {
    let s = setup();
    let mut c = s.raw();
    let ks = keys("ev", 60);
    assert_eq!(by_owner(&s.cluster, &ks).len(), 3);
    for k in &ks {
        let r = c.cmd(&[
            "EVAL",
            "redis.call('set', KEYS[1], ARGV[1]); return redis.call('get', KEYS[1])",
            "1",
            k,
            &format!("lua-{k}"),
        ]);
        assert_eq!(r, Resp::bulk(format!("lua-{k}")), "EVAL on {k}");
    }
    for (owner, owned) in by_owner(&s.cluster, &ks) {
        let mut direct = connect(owner);
        for k in owned {
            let got: Option<String> = direct.get(&k).unwrap();
            assert_eq!(got, Some(format!("lua-{k}")), "{k} on its owner {owner}");
        }
    }
    // Two keys of one slot.
    assert_eq!(
        c.cmd(&["EVAL", "redis.call('set', KEYS[1], 'a'); redis.call('set', KEYS[2], 'b'); return redis.call('mget', KEYS[1], KEYS[2])", "2", "{s}1", "{s}2"]),
        Resp::Array(vec![Resp::bulk("a"), Resp::bulk("b")])
    );
    // No key: any master runs it.
    for _ in 0..5 {
        assert_eq!(
            c.cmd(&["EVAL", "return {1, 'two', ARGV[1]}", "0", "three"]),
            Resp::Array(vec![Resp::Int(1), Resp::bulk("two"), Resp::bulk("three")])
        );
    }
    // A script error is Redis's own.
    match c.cmd(&["EVAL", "return redis.call('incr', KEYS[1])", "1", &ks[0]]) {
        Resp::Error(e) => assert!(e.contains("not an integer"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn evalsha_after_script_load_works_for_keys_on_every_master() {
    let s = setup();
    let mut c = s.raw();
    let body = "return redis.call('incrby', KEYS[1], ARGV[1])";
    let sha = match c.cmd(&["SCRIPT", "LOAD", body]) {
        Resp::Bulk(b) => String::from_utf8(b).unwrap(),
        other => panic!(
            "SCRIPT LOAD through the proxy: expected the sha1 as a bulk string, got {other:?}"
        ),
    };
    assert_eq!(sha.len(), 40);
    // Loaded on every master.
    for p in s.cluster.master_ports() {
        let v: Vec<i64> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(&sha)
            .query(&mut connect(p))
            .unwrap();
        assert_eq!(v, vec![1], "script not loaded on master {p}");
    }
    let ks = keys("sha", 30);
    for k in &ks {
        assert_eq!(
            c.cmd(&["EVALSHA", &sha, "1", k, "5"]),
            Resp::Int(5),
            "EVALSHA on {k}"
        );
    }
    match c.cmd(&["SCRIPT", "EXISTS", &sha]) {
        Resp::Array(v) => assert_eq!(v, vec![Resp::Int(1)]),
        other => panic!("SCRIPT EXISTS: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// COMMAND (what cluster clients such as redis-py RedisCluster ask first)
// ---------------------------------------------------------------------------

/// COMMAND and COMMAND INFO come back exactly as a node sends them, in RESP2
/// and in RESP3 (redis-py's RedisCluster sends COMMAND after HELLO 3).
#[test]
fn command_replies_pass_through_in_resp2_and_resp3() {
    let s = setup();
    let node = s.cluster.master_ports()[0];
    for resp3 in [false, true] {
        let mut p = s.raw();
        let mut n = RawClient::connect(node);
        if resp3 {
            assert!(matches!(p.cmd(&["HELLO", "3"]), Resp::Map(_)));
            assert!(matches!(n.cmd(&["HELLO", "3"]), Resp::Map(_)));
        }
        for cmd in [
            vec!["COMMAND", "COUNT"],
            vec!["COMMAND", "INFO", "get", "mset", "xread"],
            vec!["COMMAND"],
        ] {
            p.send_cmd(&cmd);
            n.send_cmd(&cmd);
            let (pb, nb) = (p.read_reply_bytes(), n.read_reply_bytes());
            assert!(
                pb == nb,
                "{} (RESP{}): proxy and node differ\nproxy: {}\nnode:  {}",
                show_cmd(&cmd),
                if resp3 { 3 } else { 2 },
                show_resp(&pb),
                show_resp(&nb)
            );
        }
        // The connection, and a new one of the same protocol, still work.
        assert_eq!(p.cmd(&["SET", "after", "1"]), Resp::ok());
        let mut q = s.raw();
        if resp3 {
            assert!(matches!(q.cmd(&["HELLO", "3"]), Resp::Map(_)));
        }
        assert_eq!(q.cmd(&["GET", "after"]), Resp::bulk("1"));
    }
}

// ---------------------------------------------------------------------------
// Start-up: before the first topology
// ---------------------------------------------------------------------------

/// Right after Envoy starts, before the proxy has the cluster's topology, a
/// keyed command waits for it (within op_timeout); cluster-wide commands
/// (DBSIZE, SCAN, KEYS, RANDOMKEY, INFO) should wait the same way instead of
/// failing with CLUSTERDOWN. The nodes are paused while Envoy starts so the
/// window is wide and the test deterministic.
#[test]
fn cluster_wide_commands_wait_for_the_first_topology() {
    let cluster = Cluster::start(3, 0);
    let paused: Vec<PausedNode> = cluster
        .ports()
        .iter()
        .map(|&p| cluster.pause_node(p))
        .collect();
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "20s" })));
    let cmds: Vec<Vec<&str>> = vec![
        vec!["GET", "k"],
        vec!["DBSIZE"],
        vec!["SCAN", "0"],
        vec!["KEYS", "*"],
        vec!["RANDOMKEY"],
        vec!["MGET", "a", "b", "c"],
    ];
    let mut clients: Vec<RawClient> = cmds
        .iter()
        .map(|c| {
            let mut rc = envoy.raw_client();
            rc.set_timeout(Duration::from_secs(25));
            rc.send_cmd(c);
            rc
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    drop(paused);
    let mut bad = Vec::new();
    for (c, cmd) in clients.iter_mut().zip(&cmds) {
        let r = c.read_reply();
        if r.is_error() {
            bad.push(format!("{} -> {r:?}", show_cmd(cmd)));
        }
    }
    assert!(
        bad.is_empty(),
        "commands sent before the first topology failed instead of waiting:\n{}",
        bad.join("\n")
    );
}
