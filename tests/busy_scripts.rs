//! A long-running script stalls its node; `SCRIPT KILL`, `FUNCTION KILL`
//! and `FUNCTION STATS` through the proxy still reach it (on connections of
//! their own, not queued behind the script on the shared one), other
//! clients get `-BUSY` as from Redis, and the node serves again once the
//! script is killed. Also the proxy's script bodies: `EVALSHA` anywhere,
//! and forgotten on `SCRIPT FLUSH`.

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

const SPIN_LIB: &str =
    "#!lua name=spinlib\nredis.register_function('spin', function() while true do end end)";

fn is_busy(r: &Resp) -> bool {
    matches!(r, Resp::Error(e) if e.starts_with("BUSY"))
}

/// The `running_script` field of a RESP2 `FUNCTION STATS` reply.
fn running_script(stats: &Resp) -> Resp {
    match stats {
        Resp::Array(fields) => fields
            .chunks(2)
            .find(|kv| kv[0] == Resp::bulk("running_script"))
            .map(|kv| kv[1].clone())
            .unwrap_or_else(|| panic!("no running_script in {stats:?}")),
        other => panic!("FUNCTION STATS: {other:?}"),
    }
}

/// `FUNCTION STATS` while a function keeps its master busy: Redis answers
/// it (it is allowed during a busy script) and names the running function;
/// through the proxy every master is asked on a connection of its own, so
/// the busy one's answer is what the client sees. Fresh connections (spread
/// over both Envoy workers) all see the node busy, whichever worker's loop
/// sent the function.
#[test]
fn function_stats_shows_the_running_function() {
    let cluster = Cluster::start(3, 0);
    quick_busy_threshold(&cluster);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "8s" })));
    let mut c = envoy.raw_client();
    assert_eq!(
        c.cmd(&["FUNCTION", "LOAD", SPIN_LIB]),
        Resp::bulk("spinlib")
    );
    assert_eq!(running_script(&c.cmd(&["FUNCTION", "STATS"])), Resp::Nil);

    let mut spinner = RawClient::connect(envoy.port());
    spinner.set_timeout(Duration::from_secs(20));
    spinner.send_cmd(&["FCALL", "spin", "0"]);
    thread::sleep(Duration::from_millis(500));

    for i in 0..6 {
        let mut other = envoy.raw_client();
        let t = Instant::now();
        let stats = other.cmd(&["FUNCTION", "STATS"]);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "FUNCTION STATS took {:?}",
            t.elapsed()
        );
        let running = running_script(&stats);
        let Resp::Array(fields) = &running else {
            panic!("connection {i}: running_script {running:?}");
        };
        assert_eq!(
            fields.get(..2),
            Some(&[Resp::bulk("name"), Resp::bulk("spin")][..])
        );
        assert_eq!(
            fields.get(2..4),
            Some(
                &[
                    Resp::bulk("command"),
                    Resp::Array(vec![
                        Resp::bulk("FCALL"),
                        Resp::bulk("spin"),
                        Resp::bulk("0")
                    ])
                ][..]
            ),
            "connection {i}"
        );
        let r = other.cmd(&["PING"]);
        assert!(is_busy(&r), "PING on connection {i}: {r:?}");
    }

    assert_eq!(c.cmd(&["FUNCTION", "KILL"]), Resp::ok());
    let spun = spinner.read_reply();
    assert!(
        matches!(&spun, Resp::Error(e) if e.contains("killed")),
        "{spun:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || running_script(
            &c.cmd(&["FUNCTION", "STATS"])
        ) == Resp::Nil),
        "FUNCTION STATS still shows a running function after FUNCTION KILL"
    );
}

/// A script pipelined behind another command on one connection (Redis's
/// suite: `FUNCTION LOAD`, `FCALL`, `PING` in one write): the node holds the
/// earlier command's reply back until the script ends, so the proxy must
/// look past the oldest command to see that its node is busy; other clients
/// then get `-BUSY`, and the pipeline's replies come in order once killed.
#[test]
fn a_script_pipelined_behind_another_command_still_makes_its_node_busy() {
    let cluster = Cluster::start(3, 0);
    quick_busy_threshold(&cluster);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "8s" })));
    let mut pipe = RawClient::connect(envoy.port());
    pipe.set_timeout(Duration::from_secs(20));
    let mut buf = Vec::new();
    for cmd in [
        &["FUNCTION", "LOAD", "REPLACE", SPIN_LIB][..],
        &["FCALL", "spin", "0"],
        &["PING"],
    ] {
        buf.extend(encode_cmd(cmd));
    }
    pipe.send(&buf).expect("send the pipeline");

    let mut c = envoy.raw_client();
    assert!(
        wait_until(Duration::from_secs(3), || is_busy(&c.cmd(&["PING"]))),
        "the node running the pipelined function was never seen busy"
    );
    let mut killer = envoy.raw_client();
    assert_eq!(killer.cmd(&["FUNCTION", "KILL"]), Resp::ok());
    assert_eq!(pipe.read_reply(), Resp::bulk("spinlib"));
    let killed = pipe.read_reply();
    assert!(
        matches!(&killed, Resp::Error(e) if e.contains("killed")),
        "{killed:?}"
    );
    assert_eq!(pipe.read_reply(), Resp::Simple("PONG".into()));
    assert!(
        wait_until(Duration::from_secs(5), || c.cmd(&["PING"])
            == Resp::Simple("PONG".into())),
        "still busy after FUNCTION KILL"
    );
}

/// `SCRIPT FLUSH` through the proxy empties the proxy's own script bodies
/// too: a later `EVALSHA` gets `NOSCRIPT`, as from one Redis (and not the
/// proxy loading the forgotten body again); sending the body again makes
/// `EVALSHA` work on every master once more.
#[test]
fn script_flush_forgets_the_proxys_script_bodies() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut c = envoy.raw_client();
    let body = "return redis.call('get', KEYS[1])";
    assert_eq!(c.cmd(&["SET", "{f}k", "v"]), Resp::ok());
    assert_eq!(c.cmd(&["EVAL", body, "1", "{f}k"]), Resp::bulk("v"));
    let sha = match c.cmd(&["SCRIPT", "LOAD", body]) {
        Resp::Bulk(s) => String::from_utf8(s).unwrap(),
        other => panic!("SCRIPT LOAD: {other:?}"),
    };
    assert_eq!(c.cmd(&["EVALSHA", &sha, "1", "{f}k"]), Resp::bulk("v"));
    assert_eq!(c.cmd(&["SCRIPT", "FLUSH"]), Resp::ok());
    let r = c.cmd(&["EVALSHA", &sha, "1", "{f}k"]);
    assert!(
        matches!(&r, Resp::Error(e) if e.starts_with("NOSCRIPT")),
        "EVALSHA after SCRIPT FLUSH: {r:?}"
    );

    // The same body again from the same client (which the session may skip
    // remembering when it repeats the last script): EVAL loads it on one
    // master; EVALSHA runs on every master.
    assert_eq!(c.cmd(&["EVAL", body, "1", "{f}k"]), Resp::bulk("v"));
    let keys: Vec<String> = (0..200).map(|i| format!("sf:{i}")).collect();
    let by = by_owner(&cluster, &keys);
    assert_eq!(by.len(), 3, "keys on every master");
    for (port, ks) in &by {
        assert_eq!(
            c.cmd(&["EVALSHA", &sha, "1", &ks[0]]),
            Resp::Nil,
            "EVALSHA for a key of master {port}"
        );
    }
}
