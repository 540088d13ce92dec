//! Blocking commands through the proxy (real Envoy, real Redis Cluster):
//! replies byte for byte as a standalone Redis in RESP2 and RESP3 (timeouts
//! included), CROSSSLOT, pipelined order, a blocked client delaying no one,
//! the per-node pool of blocking connections, nothing popped for a client
//! that left, `max_blocking_connections`, the command's own timeout over
//! `op_timeout`, and a blocked command surviving a failover and a live
//! reshard of its slot.
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use serde_json::json;
use std::thread;
use std::time::{Duration, Instant};

const STAT: &str = "dynamicmodulescustom.redis.redis.cluster.main.";

fn info_field(port: u16, section: &str, field: &str) -> Option<i64> {
    let mut c = RawClient::try_connect(port, Duration::from_millis(500)).ok()?;
    c.set_timeout(Duration::from_secs(2));
    c.send(&encode_cmd(&["INFO", section])).ok()?;
    let Resp::Bulk(b) = c.try_read_reply().ok()? else {
        return None;
    };
    let text = String::from_utf8_lossy(&b).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
}

fn blocked_clients(port: u16) -> i64 {
    info_field(port, "clients", "blocked_clients").unwrap_or(-1)
}

fn role(port: u16) -> Option<String> {
    let mut c = RawClient::try_connect(port, Duration::from_millis(300)).ok()?;
    c.set_timeout(Duration::from_millis(500));
    c.send(&encode_cmd(&["ROLE"])).ok()?;
    match c.try_read_reply().ok()? {
        Resp::Array(v) => v.first().and_then(Resp::text),
        _ => None,
    }
}

fn every_blocking_command() -> Vec<Vec<&'static str>> {
    vec![
        vec!["DEL", "{q}a", "{q}b", "{q}c", "{q}z", "{q}s"],
        // Timeouts: a nil array (RESP2) / null (RESP3), nil bulk for BLMOVE.
        vec!["BLPOP", "{q}a", "{q}b", "0.1"],
        vec!["BRPOP", "{q}a", "0.05"],
        vec!["BRPOPLPUSH", "{q}a", "{q}c", "0.05"],
        vec!["BLMOVE", "{q}a", "{q}c", "LEFT", "RIGHT", "0.05"],
        vec!["BLMPOP", "0.05", "2", "{q}a", "{q}b", "LEFT"],
        vec!["BZPOPMIN", "{q}z", "0.05"],
        vec!["BZPOPMAX", "{q}z", "0.05"],
        vec!["BZMPOP", "0.05", "1", "{q}z", "MAX"],
        // Data there: answered at once.
        vec!["RPUSH", "{q}b", "x", "y", "z"],
        vec!["BLPOP", "{q}a", "{q}b", "0"],
        vec!["BRPOP", "{q}a", "{q}b", "1"],
        vec!["BRPOPLPUSH", "{q}b", "{q}c", "0"],
        vec!["BLMOVE", "{q}c", "{q}a", "LEFT", "RIGHT", "0"],
        vec!["BLMPOP", "0", "2", "{q}c", "{q}a", "RIGHT", "COUNT", "5"],
        vec!["ZADD", "{q}z", "1", "m1", "2", "m2", "3", "m3", "4", "m4"],
        vec!["BZPOPMIN", "{q}z", "0"],
        vec!["BZPOPMAX", "{q}z", "0"],
        vec!["BZMPOP", "0", "1", "{q}z", "MIN", "COUNT", "9"],
        vec!["XADD", "{q}s", "1-1", "f", "v"],
        vec!["XADD", "{q}s", "1-2", "g", "w"],
        vec!["XREAD", "COUNT", "1", "BLOCK", "0", "STREAMS", "{q}s", "0"],
        vec!["XREAD", "BLOCK", "50", "STREAMS", "{q}s", "$"],
        vec!["XGROUP", "CREATE", "{q}s", "g", "0"],
        vec![
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "0",
            "STREAMS",
            "{q}s",
            ">",
        ],
        vec![
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "50",
            "STREAMS",
            "{q}s",
            ">",
        ],
        // Errors, with Redis's words.
        vec!["BLPOP", "{q}s", "0"],
        vec!["BLPOP", "{q}a", "abc"],
        vec!["BLPOP", "{q}a", "-1"],
        vec!["XREAD", "BLOCK", "-1", "STREAMS", "{q}s", "0"],
        vec!["XREAD", "BLOCK", "1.5", "STREAMS", "{q}s", "0"],
        vec!["BLMOVE", "{q}a", "{q}c", "UP", "RIGHT", "0"],
        // Inside MULTI they do not block.
        vec!["MULTI"],
        vec!["BLPOP", "{q}empty", "0"],
        vec!["BZPOPMIN", "{q}empty", "0"],
        vec!["EXEC"],
    ]
}

#[test]
fn replies_match_redis_byte_for_byte_in_resp2_and_resp3() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let reference = StandaloneRedis::start();
    for resp3 in [false, true] {
        let mut p = envoy.raw_client();
        let mut r = reference.raw_client();
        if resp3 {
            p.send_cmd(&["HELLO", "3"]);
            r.send_cmd(&["HELLO", "3"]);
            let _ = (p.read_reply_bytes(), r.read_reply_bytes());
        }
        same_as_redis(&mut p, &mut r, &every_blocking_command());
    }
}

#[test]
fn keys_of_different_slots_get_crossslot() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut c = envoy.raw_client();
    for cmd in [
        vec!["BLPOP", "a", "b", "0"],
        vec!["BLMOVE", "a", "b", "LEFT", "LEFT", "0"],
        vec!["BZMPOP", "0", "2", "a", "b", "MIN"],
        vec!["XREAD", "BLOCK", "0", "STREAMS", "a", "b", "$", "$"],
    ] {
        c.send_cmd(&cmd);
        assert_eq!(
            show_resp(&c.read_reply_bytes()),
            show_resp(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"),
            "{}",
            show_cmd(&cmd)
        );
    }
}

/// `GET, BLPOP, GET` in one write: the first GET is answered, the second
/// waits until BLPOP is; and a blocking command waits for the commands
/// before it (`DEL` then `BLPOP` of that list times out, as on Redis).
#[test]
fn pipelined_commands_keep_their_order_around_a_blocked_one() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut setup = envoy.raw_client();
    assert_eq!(setup.cmd(&["SET", "{p}k", "v"]), Resp::ok());
    assert_eq!(setup.cmd(&["DEL", "{p}l"]), Resp::Int(0));

    let mut c = envoy.raw_client();
    let mut bytes = encode_cmd(&["GET", "{p}k"]);
    bytes.extend(encode_cmd(&["BLPOP", "{p}l", "0"]));
    bytes.extend(encode_cmd(&["SET", "{p}k", "after"]));
    bytes.extend(encode_cmd(&["GET", "{p}k"]));
    c.send(&bytes).unwrap();
    assert_eq!(c.read_reply(), Resp::bulk("v"));
    c.set_timeout(Duration::from_millis(500));
    assert!(
        matches!(c.read_outcome(), Outcome::TimedOut),
        "nothing may be answered while BLPOP blocks"
    );
    assert_eq!(
        setup.cmd(&["GET", "{p}k"]),
        Resp::bulk("v"),
        "the SET after BLPOP must not have run yet"
    );
    assert_eq!(setup.cmd(&["RPUSH", "{p}l", "e"]), Resp::Int(1));
    c.set_timeout(Duration::from_secs(5));
    assert_eq!(
        c.read_reply(),
        Resp::Array(vec![Resp::bulk("{p}l"), Resp::bulk("e")])
    );
    assert_eq!(c.read_reply(), Resp::ok());
    assert_eq!(c.read_reply(), Resp::bulk("after"));

    // DEL then BLPOP of the same list, pipelined: BLPOP must see the DEL.
    assert_eq!(setup.cmd(&["RPUSH", "{p}m", "x"]), Resp::Int(1));
    let mut bytes = encode_cmd(&["DEL", "{p}m"]);
    bytes.extend(encode_cmd(&["BLPOP", "{p}m", "0.3"]));
    c.send(&bytes).unwrap();
    assert_eq!(c.read_reply(), Resp::Int(1));
    assert_eq!(c.read_reply(), Resp::NilArray);
}

/// Blocked clients on every worker do not delay anyone else's commands.
#[test]
fn blocked_clients_delay_no_one() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut blocked = Vec::new();
    for i in 0..8 {
        let mut c = envoy.raw_client();
        c.send_cmd(&["BLPOP", &format!("{{iso}}q{i}"), "0"]);
        blocked.push(c);
    }
    let node = cluster.node_for_key(b"{iso}");
    assert!(
        wait_until(Duration::from_secs(5), || blocked_clients(node) == 8),
        "8 clients blocked on the node (saw {})",
        blocked_clients(node)
    );
    // New clients land on both workers (Envoy runs 2): each of their
    // commands to the same node as the blocked ones is answered at once.
    let mut worst = Duration::ZERO;
    for i in 0..8 {
        let mut c = envoy.raw_client();
        for j in 0..20 {
            let key = format!("{{iso}}k{i}-{j}");
            let t = Instant::now();
            assert_eq!(c.cmd(&["SET", &key, "1"]), Resp::ok());
            assert_eq!(c.cmd(&["GET", &key]), Resp::bulk("1"));
            worst = worst.max(t.elapsed());
        }
    }
    assert!(
        worst < Duration::from_millis(500),
        "a SET+GET took {worst:?} while clients were blocked"
    );
    assert_eq!(blocked_clients(node), 8, "still blocked");
    for (i, c) in blocked.iter_mut().enumerate() {
        let key = format!("{{iso}}q{i}");
        assert_eq!(envoy.raw_client().cmd(&["RPUSH", &key, "v"]), Resp::Int(1));
        assert_eq!(
            c.read_reply(),
            Resp::Array(vec![Resp::bulk(&key), Resp::bulk("v")])
        );
    }
}

/// A queue worker's BRPOP loop reuses pooled connections: no new
/// connection to the node per command.
#[test]
fn blocking_connections_are_pooled_and_reused() {
    let cluster = Cluster::start(3, 0);
    let mut cfg = module_config(&cluster, json!({}));
    // Each periodic CLUSTER SLOTS refresh is a connection to every node:
    // none during the count (one asked for at start-up is counted apart).
    cfg["clusters"]["main"]["cluster_refresh_rate"] = json!("120s");
    let envoy = Envoy::start(cfg);
    let node = cluster.node_for_key(b"{pool}");
    let mut c = envoy.raw_client();
    // Warm up: the shared connection (LPUSH) and one blocking connection.
    assert_eq!(c.cmd(&["DEL", "{pool}q"]), Resp::Int(0));
    assert_eq!(c.cmd(&["BRPOP", "{pool}q", "0.01"]), Resp::NilArray);
    let refreshes = |e: &Envoy| {
        e.stat("dynamicmodulescustom.redis.redis.cluster.main.topology_refresh_success")
            .unwrap_or(0)
    };
    let refreshes_before = refreshes(&envoy);
    let before = info_field(node, "stats", "total_connections_received").unwrap();
    for i in 0..30 {
        if i % 2 == 0 {
            assert_eq!(c.cmd(&["LPUSH", "{pool}q", "job"]), Resp::Int(1));
            assert_eq!(
                c.cmd(&["BRPOP", "{pool}q", "1"]),
                Resp::Array(vec![Resp::bulk("{pool}q"), Resp::bulk("job")])
            );
        } else {
            assert_eq!(c.cmd(&["BRPOP", "{pool}q", "0.01"]), Resp::NilArray);
        }
    }
    let after = info_field(node, "stats", "total_connections_received").unwrap();
    // Counted as well: this INFO's own connection, and one per topology
    // refresh meanwhile (a refresh asked for at start-up can still run).
    let refreshed = (refreshes(&envoy) - refreshes_before) as i64;
    assert!(
        after - before <= 1 + refreshed,
        "30 BRPOPs opened {} connections to the node ({refreshed} topology refreshes meanwhile)",
        after - before - refreshed
    );
    assert_eq!(
        envoy.stat(&format!("{STAT}blocked_rq_active")),
        Some(0),
        "nothing blocked now"
    );
    assert!(
        envoy
            .stat(&format!("{STAT}blocking_cx_idle"))
            .is_some_and(|n| n >= 1),
        "the pooled connection is counted idle"
    );
}

/// A client that leaves while blocked pops nothing: the element pushed
/// afterwards is still in the list.
#[test]
fn a_client_gone_while_blocked_pops_nothing() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let node = cluster.node_for_key(b"{gone}");
    let mut c = envoy.raw_client();
    c.send_cmd(&["BLPOP", "{gone}q", "0"]);
    assert!(
        wait_until(Duration::from_secs(5), || blocked_clients(node) == 1),
        "blocked on the node"
    );
    drop(c);
    let t = Instant::now();
    let released = wait_until(Duration::from_secs(10), || blocked_clients(node) == 0);
    assert!(
        released && t.elapsed() < Duration::from_secs(1),
        "the proxy released the node's blocked connection within 1 s ({released}, {:?})",
        t.elapsed()
    );
    let mut direct = RawClient::connect(node);
    assert_eq!(direct.cmd(&["LPUSH", "{gone}q", "e"]), Resp::Int(1));
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        direct.cmd(&["LRANGE", "{gone}q", "0", "-1"]),
        Resp::Array(vec![Resp::bulk("e")]),
        "the element is still in the list"
    );
}

#[test]
fn max_blocking_connections_refuses_with_a_clear_error_and_a_stat() {
    let cluster = Cluster::start(3, 0);
    // One worker's pool of 1: with 2 workers, 3 blocked clients put two on
    // one worker, whose second is refused.
    let envoy = Envoy::start(module_config(
        &cluster,
        json!({ "max_blocking_connections": 1 }),
    ));
    let mut clients = Vec::new();
    let mut refused = 0;
    for i in 0..3 {
        let mut c = envoy.raw_client();
        c.send_cmd(&["BLPOP", &format!("{{max}}q{i}"), "2"]);
        c.set_timeout(Duration::from_millis(500));
        match c.read_outcome() {
            Outcome::Reply(Resp::Error(e)) => {
                assert!(e.contains("max_blocking_connections"), "{e}");
                refused += 1;
            }
            Outcome::TimedOut => clients.push(c),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        refused >= 1,
        "3 blocked clients on 2 workers with a pool of 1"
    );
    assert_eq!(
        envoy.stat(&format!("{STAT}blocking_cx_overflow")),
        Some(refused)
    );
    // The ones that blocked time out as Redis does.
    for c in &mut clients {
        c.set_timeout(Duration::from_secs(5));
        assert_eq!(c.read_reply(), Resp::NilArray);
    }
}

/// The command's own timeout governs: longer than op_timeout is fine, and
/// 0 blocks past it.
#[test]
fn the_commands_timeout_governs_not_op_timeout() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "300ms" })));
    let mut c = envoy.raw_client();
    let t = Instant::now();
    assert_eq!(c.cmd(&["BLPOP", "{to}q", "1"]), Resp::NilArray);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "BLPOP 1 answered after {took:?}"
    );
    c.send_cmd(&["XREAD", "BLOCK", "0", "STREAMS", "{to}s", "$"]);
    c.set_timeout(Duration::from_millis(1200));
    assert!(matches!(c.read_outcome(), Outcome::TimedOut));
    assert!(!envoy
        .raw_client()
        .cmd(&["XADD", "{to}s", "5-1", "f", "v"])
        .is_error());
    c.set_timeout(Duration::from_secs(5));
    let Resp::Array(streams) = c.read_reply() else {
        panic!("XREAD reply")
    };
    assert_eq!(streams.len(), 1);
}

/// A master fails over while a client is blocked on it: the command goes
/// again to the new master and gets the element pushed there.
#[test]
fn a_blocked_command_survives_failovers() {
    let mut cluster = Cluster::start(3, 1);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "15s" })));
    let tag = "{fo}";
    let replica_of = |master: u16| {
        cluster
            .ports()
            .into_iter()
            .find(|&p| {
                p != master
                    && info_field(p, "replication", "master_port") == Some(i64::from(master))
            })
            .expect("replica of the shard")
    };
    // 1. A manual failover (the old master turns replica: -UNBLOCKED or
    //    MOVED to the blocked connection).
    let master = cluster.node_for_key(tag.as_bytes());
    let replica = replica_of(master);
    let mut c = envoy.raw_client();
    c.set_timeout(Duration::from_secs(20));
    c.send_cmd(&["BLPOP", "{fo}q", "0"]);
    assert!(wait_until(Duration::from_secs(5), || blocked_clients(
        master
    ) == 1));
    let r = RawClient::connect(replica).cmd(&["CLUSTER", "FAILOVER"]);
    assert_eq!(r, Resp::ok());
    assert!(
        wait_until(Duration::from_secs(10), || role(replica).as_deref()
            == Some("master")),
        "replica promoted"
    );
    assert!(
        wait_until(Duration::from_secs(10), || blocked_clients(replica) == 1),
        "BLPOP blocked again on the new master {replica}"
    );
    assert_eq!(
        envoy.raw_client().cmd(&["RPUSH", "{fo}q", "one"]),
        Resp::Int(1)
    );
    assert_eq!(
        c.read_reply(),
        Resp::Array(vec![Resp::bulk("{fo}q"), Resp::bulk("one")])
    );

    // 2. kill -9 of the (new) master while blocked.
    let master = replica;
    let replica = replica_of(master);
    c.send_cmd(&["BRPOP", "{fo}q", "0"]);
    assert!(wait_until(Duration::from_secs(5), || blocked_clients(
        master
    ) == 1));
    cluster.kill_node(master);
    assert!(
        wait_until(Duration::from_secs(20), || role(replica).as_deref()
            == Some("master")),
        "replica {replica} promoted after kill -9"
    );
    if !wait_until(Duration::from_secs(15), || blocked_clients(replica) == 1) {
        c.set_timeout(Duration::from_millis(100));
        panic!(
            "BRPOP not blocked again on the promoted master {replica}; client has {:?}",
            c.read_outcome()
        );
    }
    assert_eq!(
        envoy.raw_client().cmd(&["RPUSH", "{fo}q", "two"]),
        Resp::Int(1)
    );
    assert_eq!(
        c.read_reply(),
        Resp::Array(vec![Resp::bulk("{fo}q"), Resp::bulk("two")])
    );
}

/// `WAIT` runs on the shared connections that carried the client's writes,
/// so its timeout is capped at half of op_timeout ("forever" included):
/// with no replica to wait for, `WAIT 1 0` answers 0 instead of holding
/// the shared connection.
#[test]
fn wait_is_capped_at_half_of_op_timeout() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "1s" })));
    let mut c = envoy.raw_client();
    assert_eq!(c.cmd(&["SET", "{w}k", "v"]), Resp::ok());
    for timeout in ["0", "60000"] {
        let t = Instant::now();
        assert_eq!(c.cmd(&["WAIT", "1", timeout]), Resp::Int(0));
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(950),
            "WAIT 1 {timeout} answered after {took:?}"
        );
    }
    // A short timeout is kept as it is.
    let t = Instant::now();
    assert_eq!(c.cmd(&["WAIT", "1", "100"]), Resp::Int(0));
    assert!(t.elapsed() < Duration::from_millis(450));
}

/// A client that sends a blocking command and closes its sending side at
/// once (`redis-cli < file`, a worker shutting down) is served what is there
/// now and then closed, never left blocked for nobody: with an element in
/// the list it gets it; with none, the connection closes, the node holds no
/// blocked client and a later element stays in the list.
#[test]
fn a_blocking_command_followed_by_fin_pops_only_what_is_there() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let node = cluster.node_for_key(b"{fin}");
    let mut direct = RawClient::connect(node);
    for round in 0..5 {
        // An element there: popped and answered, then the close.
        assert_eq!(direct.cmd(&["RPUSH", "{fin}q", "x"]), Resp::Int(1));
        let mut c = envoy.raw_client();
        c.send_cmd(&["BLPOP", "{fin}q", "0"]);
        c.shutdown_write();
        assert_eq!(
            c.read_reply(),
            Resp::Array(vec![Resp::bulk("{fin}q"), Resp::bulk("x")]),
            "round {round}"
        );
        assert!(c.try_read_reply().is_err(), "round {round}: not closed");

        // Nothing there: closed (a nil reply at most), nothing blocked.
        let mut c = envoy.raw_client();
        c.set_timeout(Duration::from_secs(3));
        c.send_cmd(&["BLPOP", "{fin}q", "0"]);
        c.shutdown_write();
        match c.try_read_reply() {
            Err(_) => {}
            Ok(Resp::NilArray) => assert!(c.try_read_reply().is_err(), "round {round}"),
            Ok(other) => panic!("round {round}: {other:?}"),
        }
        assert!(
            wait_until(Duration::from_secs(2), || blocked_clients(node) == 0),
            "round {round}: a client is still blocked on the node"
        );
        assert_eq!(direct.cmd(&["RPUSH", "{fin}q", "y"]), Resp::Int(1));
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            direct.cmd(&["LPOP", "{fin}q"]),
            Resp::bulk("y"),
            "round {round}: the element was popped for a closed client"
        );
    }
}

/// `CLIENT UNBLOCK` through the proxy, byte for byte as on one Redis: the
/// proxy's client id names the client; a blocked one gets the timeout's nil
/// (`TIMEOUT`, the default) or `-UNBLOCKED` (`ERROR`) and the asker `:1`; a
/// client that is not blocked `:0`; bad arguments Redis's errors. The
/// unblocked client blocks and is served normally afterwards.
#[test]
fn client_unblock_ends_a_blocked_command_as_on_redis() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let reference = StandaloneRedis::start();
    let mut transcripts = Vec::new();
    for (side, port) in [("proxy", envoy.port()), ("redis", reference.port())] {
        let mut t: Vec<String> = Vec::new();
        let mut blocked = RawClient::connect(port);
        let mut other = RawClient::connect(port);
        let id = match blocked.cmd(&["CLIENT", "ID"]) {
            Resp::Int(n) => n.to_string(),
            r => panic!("{side}: CLIENT ID: {r:?}"),
        };
        for how in [None, Some("TIMEOUT"), Some("ERROR")] {
            blocked.send_cmd(&["BLPOP", "{u}q", "0"]);
            thread::sleep(Duration::from_millis(300));
            // INFO counts the client blocked, as Redis does (the suite's
            // harness waits for it).
            let info = match other.cmd(&["INFO", "clients"]) {
                Resp::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                r => panic!("{side}: INFO: {r:?}"),
            };
            t.push(
                info.lines()
                    .find(|l| l.starts_with("blocked_clients:"))
                    .unwrap_or("no blocked_clients field")
                    .to_string(),
            );
            let mut cmd = vec!["CLIENT", "UNBLOCK", id.as_str()];
            cmd.extend(how);
            t.push(show_resp(&{
                other.send_cmd(&cmd);
                other.read_reply_bytes()
            }));
            t.push(show_resp(&blocked.read_reply_bytes()));
        }
        t.push(show_resp(&{
            other.send_cmd(&["CLIENT", "UNBLOCK", &id]);
            other.read_reply_bytes()
        }));
        t.push(show_resp(&{
            other.send_cmd(&["CLIENT", "UNBLOCK", &id, "NOW"]);
            other.read_reply_bytes()
        }));
        t.push(show_resp(&{
            other.send_cmd(&["CLIENT", "UNBLOCK", "x"]);
            other.read_reply_bytes()
        }));
        // Blocks and is served as usual afterwards.
        blocked.send_cmd(&["BLPOP", "{u}q", "0"]);
        thread::sleep(Duration::from_millis(300));
        t.push(show_resp(&{
            other.send_cmd(&["RPUSH", "{u}q", "v"]);
            other.read_reply_bytes()
        }));
        t.push(show_resp(&blocked.read_reply_bytes()));
        transcripts.push(t);
    }
    assert_eq!(
        transcripts[0], transcripts[1],
        "proxy (left) vs Redis (right)"
    );
}

/// A blocking command on its own thread: (reply, time to it).
fn blocked_in_thread(
    port: u16,
    cmd: &'static [&'static str],
) -> thread::JoinHandle<(Resp, Duration)> {
    thread::spawn(move || {
        let mut c = RawClient::connect(port);
        c.set_timeout(Duration::from_secs(20));
        let t = Instant::now();
        c.send_cmd(cmd);
        let r = c.read_reply();
        (r, t.elapsed())
    })
}

/// The slot of clients blocked in BLPOP, BZPOPMIN and XREAD BLOCK (forever
/// and with a timeout) moves to another master live: the node unblocks them
/// with `-MOVED`, the proxy sends each again to the new owner with the time
/// it has left, and elements pushed there reach each client exactly once.
/// The finite timeouts end at their original deadline, not restarted at the
/// move; the pool's gauges settle (nothing blocked, connections idle).
#[test]
fn a_blocked_command_survives_a_reshard_of_its_slot() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let slot = key_slot(b"{rs}");
    let from = cluster.node_for_slot(slot);
    let to = *cluster
        .master_ports()
        .iter()
        .find(|&&p| p != from)
        .expect("another master");
    let mut direct = RawClient::connect(from);
    // A key that has data, so the move migrates something.
    assert_eq!(direct.cmd(&["SET", "{rs}data", "d"]), Resp::ok());

    // Forever: two clients on one list, one on another, a sorted set, a stream.
    let forever: [&[&str]; 5] = [
        &["BLPOP", "{rs}l1", "0"],
        &["BLPOP", "{rs}l1", "0"],
        &["BRPOP", "{rs}l2", "{rs}l9", "0"],
        &["BZPOPMIN", "{rs}z", "0"],
        &["XREAD", "BLOCK", "0", "STREAMS", "{rs}s", "$"],
    ];
    let mut clients = Vec::new();
    for cmd in forever {
        let mut c = envoy.raw_client();
        c.set_timeout(Duration::from_secs(10));
        c.send_cmd(cmd);
        clients.push(c);
    }
    // Finite: 4 s in seconds and in milliseconds.
    let finite = [
        blocked_in_thread(envoy.port(), &["BLPOP", "{rs}t", "4"]),
        blocked_in_thread(
            envoy.port(),
            &["XREAD", "BLOCK", "4000", "STREAMS", "{rs}u", "$"],
        ),
    ];
    let blocked_at = Instant::now();
    let n = (forever.len() + finite.len()) as i64;
    assert!(
        wait_until(Duration::from_secs(5), || blocked_clients(from) == n),
        "{n} clients blocked on {from} (saw {})",
        blocked_clients(from)
    );
    assert_eq!(
        envoy.stat(&format!("{STAT}blocked_rq_active")),
        Some(n as u64)
    );
    // Blocked a while first: a timeout restarted at the move would end at
    // least a second late.
    thread::sleep(Duration::from_millis(1000));
    cluster.move_slot(slot, from, to);
    assert!(
        wait_until(Duration::from_secs(3), || blocked_clients(to) == n
            && blocked_clients(from) == 0),
        "all {n} blocked again on the new owner {to} within 3 s (saw {} there, {} on {from})",
        blocked_clients(to),
        blocked_clients(from)
    );
    assert!(
        blocked_at.elapsed() < Duration::from_millis(3500),
        "the move took too long to test the finite timeouts ({:?})",
        blocked_at.elapsed()
    );
    assert_eq!(
        RawClient::connect(to).cmd(&["GET", "{rs}data"]),
        Resp::bulk("d"),
        "the slot's data moved"
    );

    // Push on the new owner, directly.
    let mut owner = RawClient::connect(to);
    assert_eq!(owner.cmd(&["RPUSH", "{rs}l1", "a", "b"]), Resp::Int(2));
    assert_eq!(owner.cmd(&["RPUSH", "{rs}l2", "c"]), Resp::Int(1));
    assert_eq!(owner.cmd(&["ZADD", "{rs}z", "1", "m"]), Resp::Int(1));
    assert_eq!(
        owner.cmd(&["XADD", "{rs}s", "7-1", "f", "v"]),
        Resp::bulk("7-1")
    );
    let mut got_l1 = Vec::new();
    for c in &mut clients[..2] {
        match c.read_reply() {
            Resp::Array(v) if v.len() == 2 && v[0] == Resp::bulk("{rs}l1") => {
                got_l1.push(v[1].text().unwrap_or_default())
            }
            other => panic!("BLPOP {{rs}}l1: {other:?}"),
        }
    }
    got_l1.sort();
    assert_eq!(got_l1, ["a", "b"], "each element to exactly one client");
    assert_eq!(
        clients[2].read_reply(),
        Resp::Array(vec![Resp::bulk("{rs}l2"), Resp::bulk("c")])
    );
    assert_eq!(
        clients[3].read_reply(),
        Resp::Array(vec![Resp::bulk("{rs}z"), Resp::bulk("m"), Resp::bulk("1")])
    );
    let Resp::Array(streams) = clients[4].read_reply() else {
        panic!("XREAD reply")
    };
    assert_eq!(
        streams,
        vec![Resp::Array(vec![
            Resp::bulk("{rs}s"),
            Resp::Array(vec![Resp::Array(vec![
                Resp::bulk("7-1"),
                Resp::Array(vec![Resp::bulk("f"), Resp::bulk("v")]),
            ])]),
        ])]
    );
    // Nothing more for anyone, nothing left behind or duplicated.
    for c in &mut clients {
        c.set_timeout(Duration::from_millis(200));
        assert!(matches!(c.read_outcome(), Outcome::TimedOut));
    }
    assert_eq!(owner.cmd(&["LLEN", "{rs}l1"]), Resp::Int(0));
    assert_eq!(owner.cmd(&["LLEN", "{rs}l2"]), Resp::Int(0));
    assert_eq!(owner.cmd(&["ZCARD", "{rs}z"]), Resp::Int(0));

    for h in finite {
        let (r, took) = h.join().expect("finite client");
        assert_eq!(r, Resp::NilArray);
        assert!(
            took >= Duration::from_millis(3900) && took < Duration::from_millis(4800),
            "a 4 s timeout across the move ended after {took:?}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(2), || envoy
            .stat(&format!("{STAT}blocked_rq_active"))
            == Some(0)),
        "blocked_rq_active back to 0 (is {:?})",
        envoy.stat(&format!("{STAT}blocked_rq_active"))
    );
    assert!(
        envoy
            .stat(&format!("{STAT}blocking_cx_idle"))
            .is_some_and(|i| i >= 1),
        "the blocking connections went back to the pool"
    );
    // The pool still serves the moved slot.
    let mut c = envoy.raw_client();
    assert_eq!(c.cmd(&["RPUSH", "{rs}l1", "again"]), Resp::Int(1));
    assert_eq!(
        c.cmd(&["BLPOP", "{rs}l1", "0"]),
        Resp::Array(vec![Resp::bulk("{rs}l1"), Resp::bulk("again")])
    );
    assert_eq!(c.cmd(&["BLPOP", "{rs}l1", "0.1"]), Resp::NilArray);
}
