//! A long-running script stalls its node; `SCRIPT KILL` and `FUNCTION KILL`
//! through the proxy still reach it (on connections of their own, not
//! queued behind the script on the shared one) and the node serves again.

mod common;

use common::*;
use serde_json::json;
use std::thread;
use std::time::{Duration, Instant};

/// Start `busy` on a client of its own, then kill it with `kill` from
/// another client; returns (kill reply, time to it, the busy client's reply).
fn kill_while_busy(port: u16, busy: &[&str], kill: &[&str]) -> (Resp, Duration, Resp) {
    let mut spinner = RawClient::connect(port);
    spinner.set_timeout(Duration::from_secs(20));
    spinner.send_cmd(busy);
    // Past the nodes' busy-reply-threshold (set to 100 ms below).
    thread::sleep(Duration::from_millis(500));
    let mut killer = RawClient::connect(port);
    killer.set_timeout(Duration::from_secs(20));
    let t = Instant::now();
    let r = killer.cmd(kill);
    let took = t.elapsed();
    let spun = spinner.read_reply();
    (r, took, spun)
}

/// Nodes answer other clients `-BUSY` 100 ms into a script (not 5 s).
fn quick_busy_threshold(cluster: &Cluster) {
    for p in cluster.master_ports() {
        let mut c = RawClient::connect(p);
        assert_eq!(
            c.cmd(&["CONFIG", "SET", "busy-reply-threshold", "100"]),
            Resp::ok()
        );
    }
}

#[test]
fn script_kill_and_function_kill_reach_a_busy_node() {
    let cluster = Cluster::start(3, 0);
    quick_busy_threshold(&cluster);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "8s" })));
    let mut c = envoy.raw_client();

    let (r, took, spun) = kill_while_busy(
        envoy.port(),
        &["EVAL", "while true do end", "0"],
        &["SCRIPT", "KILL"],
    );
    assert_eq!(r, Resp::ok(), "SCRIPT KILL through the proxy");
    assert!(took < Duration::from_secs(2), "SCRIPT KILL took {took:?}");
    assert!(
        matches!(&spun, Resp::Error(e) if e.contains("killed")),
        "the script's client: {spun:?}"
    );
    assert_eq!(c.cmd(&["SET", "after:script", "1"]), Resp::ok());

    let lib =
        "#!lua name=spinlib\nredis.register_function('spin', function() while true do end end)";
    assert_eq!(c.cmd(&["FUNCTION", "LOAD", lib]), Resp::bulk("spinlib"));
    let (r, took, spun) =
        kill_while_busy(envoy.port(), &["FCALL", "spin", "0"], &["FUNCTION", "KILL"]);
    assert_eq!(r, Resp::ok(), "FUNCTION KILL through the proxy");
    assert!(took < Duration::from_secs(2), "FUNCTION KILL took {took:?}");
    assert!(
        matches!(&spun, Resp::Error(e) if e.contains("killed")),
        "the function's client: {spun:?}"
    );
    assert_eq!(c.cmd(&["GET", "after:script"]), Resp::bulk("1"));

    // Nothing running: every master says NOTBUSY, and so does the proxy.
    let r = c.cmd(&["SCRIPT", "KILL"]);
    assert!(
        matches!(&r, Resp::Error(e) if e.starts_with("NOTBUSY")),
        "{r:?}"
    );
}

/// `EVAL` loads a script on one master only; `SCRIPT EXISTS` through the
/// proxy still says it exists, and `EVALSHA` runs it on any master (the
/// proxy loads it where a master answers `NOSCRIPT`), also after
/// `SCRIPT FLUSH` on one node behind the proxy's back.
#[test]
fn evalsha_runs_wherever_the_keys_are() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut c = envoy.raw_client();
    let body = "return redis.call('incr', KEYS[1])";
    let sha = match c.cmd(&["EVAL", body, "1", "{a}k"]) {
        Resp::Int(1) => {
            let mut d = RawClient::connect(cluster.master_ports()[0]);
            match d.cmd(&["SCRIPT", "LOAD", body]) {
                Resp::Bulk(s) => String::from_utf8(s).unwrap(),
                other => panic!("SCRIPT LOAD on a node: {other:?}"),
            }
        }
        other => panic!("EVAL: {other:?}"),
    };
    // Flush every node's cache but the one that ran the EVAL.
    let ran_on = cluster.node_for_key(b"{a}k");
    for p in cluster.master_ports() {
        if p != ran_on {
            let mut d = RawClient::connect(p);
            assert_eq!(d.cmd(&["SCRIPT", "FLUSH"]), Resp::ok());
        }
    }
    assert_eq!(
        c.cmd(&[
            "SCRIPT",
            "EXISTS",
            &sha,
            "0000000000000000000000000000000000000000"
        ]),
        Resp::Array(vec![Resp::Int(1), Resp::Int(0)])
    );
    // Keys on every master: EVALSHA works on each.
    let keys: Vec<String> = (0..200).map(|i| format!("es:{i}")).collect();
    let by = by_owner(&cluster, &keys);
    assert_eq!(by.len(), 3, "keys on every master");
    for (port, ks) in &by {
        let k = &ks[0];
        assert_eq!(
            c.cmd(&["EVALSHA", &sha, "1", k]),
            Resp::Int(1),
            "EVALSHA for a key of master {port}"
        );
        let r = c.cmd(&["EVALSHA_RO", &sha, "1", k]);
        assert!(
            matches!(&r, Resp::Error(e) if !e.starts_with("NOSCRIPT")),
            "a write script under EVALSHA_RO: {r:?}"
        );
    }
    // A script the proxy never saw: NOSCRIPT, as from Redis.
    let r = c.cmd(&["EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", "0"]);
    assert!(
        matches!(&r, Resp::Error(e) if e.starts_with("NOSCRIPT")),
        "{r:?}"
    );
}

/// While a script keeps its node busy past `busy-reply-threshold`, other
/// clients' commands for that node get Redis's `-BUSY` at once (not a wait
/// of `op_timeout` behind the script), commands for other nodes are served,
/// and once the script is killed the node serves again.
#[test]
fn commands_for_a_busy_node_fail_fast_with_busy() {
    let cluster = Cluster::start(3, 0);
    quick_busy_threshold(&cluster);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "10s" })));
    let busy_node = cluster.node_for_key(b"{b}");
    let elsewhere = (0..1000)
        .map(|i| format!("other:{i}"))
        .find(|k| cluster.node_for_key(k.as_bytes()) != busy_node)
        .expect("a key on another master");
    let mut c = envoy.raw_client();
    assert_eq!(c.cmd(&["SET", "{b}k", "v"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", &elsewhere, "w"]), Resp::ok());

    let mut spinner = RawClient::connect(envoy.port());
    spinner.set_timeout(Duration::from_secs(20));
    spinner.send_cmd(&["EVAL", "while true do end", "1", "{b}spin"]);
    thread::sleep(Duration::from_millis(800));

    let t = Instant::now();
    let r = c.cmd(&["GET", "{b}k"]);
    let took = t.elapsed();
    assert!(
        matches!(&r, Resp::Error(e) if e.starts_with("BUSY")),
        "a command for the busy node: {r:?}"
    );
    assert!(took < Duration::from_secs(1), "BUSY took {took:?}");
    assert_eq!(
        c.cmd(&["GET", &elsewhere]),
        Resp::bulk("w"),
        "other nodes serve"
    );
    // PING, which the proxy answers, says what a busy Redis says.
    let r = c.cmd(&["PING"]);
    assert!(
        matches!(&r, Resp::Error(e) if e.starts_with("BUSY")),
        "PING: {r:?}"
    );

    assert_eq!(c.cmd(&["SCRIPT", "KILL"]), Resp::ok());
    let spun = spinner.read_reply();
    assert!(
        matches!(&spun, Resp::Error(e) if e.contains("killed")),
        "{spun:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || c.cmd(&["GET", "{b}k"])
            == Resp::bulk("v")),
        "the node did not serve again after the script was killed"
    );
    assert_eq!(c.cmd(&["PING"]), Resp::Simple("PONG".into()));
}
