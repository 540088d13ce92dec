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

#[test]
fn script_kill_and_function_kill_reach_a_busy_node() {
    let cluster = Cluster::start(3, 0);
    for p in cluster.master_ports() {
        let mut c = RawClient::connect(p);
        assert_eq!(
            c.cmd(&["CONFIG", "SET", "busy-reply-threshold", "100"]),
            Resp::ok()
        );
    }
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
