//! Transactions through the proxy: MULTI/EXEC/DISCARD/WATCH/UNWATCH on
//! same-slot keys, compared byte for byte with a standalone Redis where the
//! cluster does not change the answer; CROSSSLOT inside MULTI; WATCH aborts;
//! and isolation between clients while a transaction is open.
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use redis::Commands;
use serde_json::json;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

struct Setup {
    envoy: Envoy,
    cluster: Cluster,
}

fn setup() -> Setup {
    let cluster = Cluster::start(3, 0);
    // start_proxy: PROXY_UNDER_TEST=builtin runs these against Envoy's own
    // redis_proxy (which has transactions), to check the tests themselves.
    let envoy = start_proxy(module_config(&cluster, json!({})));
    // Wait for the proxy's first topology (a keyed command does).
    assert_eq!(envoy.raw_client().cmd(&["EXISTS", "warm-up"]), Resp::Int(0));
    Setup { envoy, cluster }
}

#[test]
fn multi_exec_on_one_slot_returns_every_reply_and_applies_them() {
    let s = setup();
    let reference = StandaloneRedis::start();
    let mut p = s.envoy.raw_client();
    let mut r = reference.raw_client();
    same_as_redis(
        &mut p,
        &mut r,
        &[
            vec!["SET", "{t}n", "10"],
            vec!["MULTI"],
            vec!["SET", "{t}a", "1"],
            vec!["INCR", "{t}n"],
            vec!["INCRBY", "{t}n", "5"],
            vec!["LPUSH", "{t}l", "x", "y"],
            vec!["GET", "{t}a"],
            vec!["MGET", "{t}a", "{t}n", "{t}missing"],
            vec!["EXEC"],
            vec!["MGET", "{t}a", "{t}n"],
            vec!["LRANGE", "{t}l", "0", "-1"],
        ],
    );
    // Applied on the node that owns the slot.
    let owner = s.cluster.node_for_key(b"{t}n");
    let v: String = connect(owner).get("{t}n").unwrap();
    assert_eq!(v, "16");

    // An empty transaction, and a pipelined one (all in one write).
    same_as_redis(&mut p, &mut r, &[vec!["MULTI"], vec!["EXEC"]]);
    let script: Vec<Vec<&str>> = vec![
        vec!["MULTI"],
        vec!["INCR", "{p}c"],
        vec!["INCR", "{p}c"],
        vec!["GET", "{p}c"],
        vec!["EXEC"],
        vec!["GET", "{p}c"],
    ];
    let mut wire = Vec::new();
    for c in &script {
        wire.extend(encode_cmd(c));
    }
    p.send(&wire).unwrap();
    r.send(&wire).unwrap();
    for c in &script {
        let (pb, rb) = (p.read_reply_bytes(), r.read_reply_bytes());
        assert_eq!(show_resp(&pb), show_resp(&rb), "pipelined {}", show_cmd(c));
    }
}

#[test]
fn errors_inside_a_transaction_behave_like_redis() {
    let s = setup();
    let reference = StandaloneRedis::start();
    let mut p = s.envoy.raw_client();
    let mut r = reference.raw_client();
    same_as_redis(
        &mut p,
        &mut r,
        &[
            // Without MULTI.
            vec!["EXEC"],
            vec!["DISCARD"],
            // Runtime error: the others still apply.
            vec!["SET", "{e}s", "text"],
            vec!["MULTI"],
            vec!["INCR", "{e}s"],
            vec!["SET", "{e}ok", "1"],
            vec!["EXEC"],
            vec!["GET", "{e}ok"],
            // Queue-time error (arity): EXECABORT, nothing applied.
            vec!["MULTI"],
            vec!["SET", "{e}x", "1"],
            vec!["GET"],
            vec!["EXEC"],
            vec!["EXISTS", "{e}x"],
            // Nested MULTI, WATCH inside MULTI.
            vec!["MULTI"],
            vec!["MULTI"],
            vec!["WATCH", "{e}s"],
            vec!["SET", "{e}y", "2"],
            vec!["EXEC"],
            vec!["GET", "{e}y"],
        ],
    );
}

#[test]
fn discard_drops_the_queued_commands() {
    let s = setup();
    let reference = StandaloneRedis::start();
    let mut p = s.envoy.raw_client();
    let mut r = reference.raw_client();
    same_as_redis(
        &mut p,
        &mut r,
        &[
            vec!["SET", "{d}a", "before"],
            vec!["MULTI"],
            vec!["SET", "{d}a", "after"],
            vec!["DEL", "{d}b"],
            vec!["DISCARD"],
            vec!["GET", "{d}a"],
            // The connection is usable, and a new transaction works.
            vec!["MULTI"],
            vec!["SET", "{d}a", "again"],
            vec!["EXEC"],
            vec!["GET", "{d}a"],
        ],
    );
}

#[test]
fn watch_aborts_exec_when_the_key_changes_and_not_otherwise() {
    let s = setup();
    let mut a = s.envoy.raw_client();
    let mut b = s.envoy.raw_client();
    assert_eq!(a.cmd(&["SET", "{w}k", "0"]), Resp::ok());

    // Changed by another client between WATCH and EXEC: aborted.
    assert_eq!(a.cmd(&["WATCH", "{w}k"]), Resp::ok());
    assert_eq!(a.cmd(&["GET", "{w}k"]), Resp::bulk("0"));
    assert_eq!(b.cmd(&["SET", "{w}k", "changed"]), Resp::ok());
    assert_eq!(a.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(
        a.cmd(&["SET", "{w}k", "mine"]),
        Resp::Simple("QUEUED".into())
    );
    a.send_cmd(&["EXEC"]);
    assert_eq!(
        a.read_reply_bytes(),
        b"*-1\r\n".to_vec(),
        "EXEC after a watched key changed"
    );
    assert_eq!(a.cmd(&["GET", "{w}k"]), Resp::bulk("changed"));

    // No interference: applied.
    assert_eq!(a.cmd(&["WATCH", "{w}k", "{w}other"]), Resp::ok());
    assert_eq!(b.cmd(&["SET", "{x}unrelated", "1"]), Resp::ok());
    assert_eq!(a.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(
        a.cmd(&["SET", "{w}k", "mine"]),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(a.cmd(&["EXEC"]), Resp::Array(vec![Resp::ok()]));
    assert_eq!(b.cmd(&["GET", "{w}k"]), Resp::bulk("mine"));

    // UNWATCH forgets the watch: a later change does not abort.
    assert_eq!(a.cmd(&["WATCH", "{w}k"]), Resp::ok());
    assert_eq!(a.cmd(&["UNWATCH"]), Resp::ok());
    assert_eq!(b.cmd(&["SET", "{w}k", "b-again"]), Resp::ok());
    assert_eq!(a.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(a.cmd(&["INCR", "{w}n"]), Resp::Simple("QUEUED".into()));
    assert_eq!(a.cmd(&["EXEC"]), Resp::Array(vec![Resp::Int(1)]));

    // A watched key deleted by another client also aborts.
    assert_eq!(a.cmd(&["WATCH", "{w}k"]), Resp::ok());
    assert_eq!(b.cmd(&["DEL", "{w}k"]), Resp::Int(1));
    assert_eq!(a.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(
        a.cmd(&["SET", "{w}k", "late"]),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(a.cmd(&["EXEC"]), Resp::NilArray);
    assert_eq!(a.cmd(&["EXISTS", "{w}k"]), Resp::Int(0));
}

#[test]
fn a_cross_slot_key_inside_multi_is_refused_and_exec_aborts() {
    let s = setup();
    let mut c = s.envoy.raw_client();
    assert_ne!(key_slot(b"{a}1"), key_slot(b"{b}1"));
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", "{a}1", "x"]), Resp::Simple("QUEUED".into()));
    match c.cmd(&["SET", "{b}1", "y"]) {
        Resp::Error(e) => assert!(e.starts_with("CROSSSLOT"), "second slot in MULTI: {e}"),
        other => panic!("a key of another slot inside MULTI: expected -CROSSSLOT, got {other:?}"),
    }
    match c.cmd(&["EXEC"]) {
        Resp::Error(e) => assert!(e.starts_with("EXECABORT"), "EXEC: {e}"),
        other => panic!("EXEC after a refused command: expected -EXECABORT, got {other:?}"),
    }
    assert_eq!(
        c.cmd(&["EXISTS", "{a}1", "{b}1"]),
        Resp::Int(0),
        "nothing applied"
    );

    // A multi-key command spanning slots inside MULTI: same.
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    match c.cmd(&["MSET", "{a}1", "x", "{b}1", "y"]) {
        Resp::Error(e) => assert!(
            e.starts_with("CROSSSLOT"),
            "MSET across slots in MULTI: {e}"
        ),
        other => panic!("MSET across slots in MULTI: expected -CROSSSLOT, got {other:?}"),
    }
    assert!(matches!(c.cmd(&["EXEC"]), Resp::Error(e) if e.starts_with("EXECABORT")));
    // And the connection goes on normally.
    assert_eq!(c.cmd(&["MSET", "{a}1", "x", "{b}1", "y"]), Resp::ok());
}

#[test]
fn an_open_transaction_neither_blocks_nor_mixes_with_other_clients() {
    let s = setup();
    let mut a = s.envoy.raw_client();
    let mut b = s.envoy.raw_client();
    b.set_timeout(Duration::from_secs(2));

    assert_eq!(a.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(a.cmd(&["INCR", "{c}n"]), Resp::Simple("QUEUED".into()));
    // B is served at once, on the same slot, while A's transaction is open,
    // and B's command is not queued into A's transaction.
    let t = Instant::now();
    assert_eq!(b.cmd(&["INCR", "{c}n"]), Resp::Int(1));
    assert_eq!(b.cmd(&["SET", "{other}k", "v"]), Resp::ok());
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "B waited {:?}",
        t.elapsed()
    );
    assert_eq!(a.cmd(&["INCR", "{c}n"]), Resp::Simple("QUEUED".into()));
    assert_eq!(
        b.cmd(&["GET", "{c}n"]),
        Resp::bulk("1"),
        "A's queued INCRs ran early"
    );
    assert_eq!(
        a.cmd(&["EXEC"]),
        Resp::Array(vec![Resp::Int(2), Resp::Int(3)])
    );
    assert_eq!(b.cmd(&["GET", "{c}n"]), Resp::bulk("3"));

    // Many clients doing MULTI INCR INCR EXEC on one counter: every EXEC
    // sees its two increments back to back (atomic), and none is lost.
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 40;
    let port = s.envoy.port();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut c = RawClient::connect(port);
                barrier.wait();
                for round in 0..ROUNDS {
                    let mut wire = encode_cmd(&["MULTI"]);
                    wire.extend(encode_cmd(&["INCR", "{c}atomic"]));
                    wire.extend(encode_cmd(&["INCR", "{c}atomic"]));
                    wire.extend(encode_cmd(&["EXEC"]));
                    // Plain commands of this client between transactions.
                    wire.extend(encode_cmd(&[
                        "SET",
                        &format!("{{c}}own{i}"),
                        &round.to_string(),
                    ]));
                    c.send(&wire).unwrap();
                    let replies = c.read_replies(5);
                    assert_eq!(
                        replies[0],
                        Resp::ok(),
                        "client {i} round {round}: {replies:?}"
                    );
                    assert_eq!(
                        replies[1],
                        Resp::Simple("QUEUED".into()),
                        "client {i}: {replies:?}"
                    );
                    assert_eq!(
                        replies[2],
                        Resp::Simple("QUEUED".into()),
                        "client {i}: {replies:?}"
                    );
                    match &replies[3] {
                        Resp::Array(v) => match v.as_slice() {
                            [Resp::Int(x), Resp::Int(y)] => {
                                assert_eq!(*y, x + 1, "client {i}: increments interleaved: {v:?}")
                            }
                            other => panic!("client {i}: EXEC gave {other:?}"),
                        },
                        other => panic!("client {i}: EXEC gave {other:?}"),
                    }
                    assert_eq!(replies[4], Resp::ok());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let total = (CLIENTS * ROUNDS * 2) as i64;
    assert_eq!(b.cmd(&["GET", "{c}atomic"]), Resp::bulk(total.to_string()));
    for i in 0..CLIENTS {
        assert_eq!(
            b.cmd(&["GET", &format!("{{c}}own{i}")]),
            Resp::bulk((ROUNDS - 1).to_string())
        );
    }
}

#[test]
fn transactions_on_different_masters_from_different_clients() {
    let s = setup();
    // One tag per master.
    let masters = s.cluster.master_ports();
    let mut tags: Vec<String> = Vec::new();
    for m in &masters {
        let tag = (0..)
            .map(|i| format!("tag{i}"))
            .find(|t| s.cluster.node_for_key(t.as_bytes()) == *m)
            .unwrap();
        tags.push(tag);
    }
    let mut clients: Vec<RawClient> = tags.iter().map(|_| s.envoy.raw_client()).collect();
    for (c, t) in clients.iter_mut().zip(&tags) {
        assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
        assert_eq!(
            c.cmd(&["SET", &format!("{{{t}}}k"), t]),
            Resp::Simple("QUEUED".into())
        );
    }
    for (c, t) in clients.iter_mut().zip(&tags) {
        assert_eq!(c.cmd(&["EXEC"]), Resp::Array(vec![Resp::ok()]), "tag {t}");
    }
    for (t, m) in tags.iter().zip(&masters) {
        let v: String = connect(*m).get(format!("{{{t}}}k")).unwrap();
        assert_eq!(&v, t, "on master {m}");
    }
}

/// Each transaction holds a dedicated upstream connection; past
/// `max_transaction_connections` a new one is refused, not opened.
#[test]
fn transaction_connections_are_bounded() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(
        &cluster,
        serde_json::json!({ "max_transaction_connections": 2 }),
    ));
    let mut clients: Vec<RawClient> = (0..3).map(|_| RawClient::connect(envoy.port())).collect();
    // Two WATCHes on two connections: two dedicated upstream connections.
    // (Envoy runs 2 workers; connections may land on either, so open until
    // one worker holds two, then a third on it is refused.)
    let mut refused = false;
    let mut extra = Vec::new();
    for i in 0..8 {
        let mut c = RawClient::connect(envoy.port());
        let r = c.cmd(&["WATCH", &format!("{{w}}{i}")]);
        if r.is_error() {
            assert!(
                matches!(&r, Resp::Error(e) if e.contains("max_transaction_connections")),
                "{r:?}"
            );
            refused = true;
            break;
        }
        extra.push(c);
    }
    assert!(refused, "never refused a transaction connection");
    // Releasing one lets a new transaction in.
    for c in &mut extra {
        assert_eq!(c.cmd(&["UNWATCH"]), Resp::ok());
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(clients[0].cmd(&["WATCH", "{w}x"]), Resp::ok());
    clients.clear();
}

/// `CONFIG SET maxmemory <n>` straight on every node given.
fn set_maxmemory(ports: &[u16], n: &str) {
    for &p in ports {
        assert_eq!(
            RawClient::connect(p).cmd(&["CONFIG", "SET", "maxmemory", n]),
            Resp::ok(),
            "node {p}"
        );
    }
}

/// A node's queue-time refusal (`OOM` under `maxmemory`) reaches the client
/// at once, as from a standalone Redis, whose MULTI state stays right:
/// EXEC answers EXECABORT, DISCARD works, and the connection goes on.
/// Before the first key (keyless commands held by the proxy) and after a
/// WATCH alike; EXEC's own OOM check and read-only transactions under OOM
/// too.
#[test]
fn queue_time_refusals_from_the_node_come_at_once_like_redis() {
    let s = setup();
    let reference = StandaloneRedis::start();
    let mut p = s.envoy.raw_client();
    let mut r = reference.raw_client();
    let nodes = s.cluster.ports();
    let all = [nodes.clone(), vec![reference.port()]].concat();
    set_maxmemory(&all, "1");
    same_as_redis(
        &mut p,
        &mut r,
        &[
            vec!["MULTI"],
            vec!["SET", "{q}k", "v"],
            vec!["GET", "{q}k"],
            vec!["EXEC"],
            vec!["EXISTS", "{q}k"],
            // After WATCH (the slot is known before MULTI).
            vec!["WATCH", "{q}k"],
            vec!["MULTI"],
            vec!["INCR", "{q}n"],
            vec!["GET", "{q}k"],
            vec!["EXEC"],
            // DISCARD during OOM (Redis's "DISCARD should not fail during OOM").
            vec!["MULTI"],
            vec!["SET", "{q}x", "1"],
            vec!["DISCARD"],
            vec!["PING"],
        ],
    );
    // Keyless commands before the first key are held by the proxy, which
    // answers them +QUEUED itself (a node under OOM refuses every command
    // inside MULTI); the first keyed one gets the node's answer.
    assert_eq!(p.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(p.cmd(&["PING"]), Resp::Simple("QUEUED".into()));
    match p.cmd(&["LPUSH", "{q}l", "x"]) {
        Resp::Error(e) => assert!(e.starts_with("OOM"), "{e}"),
        other => panic!("LPUSH under OOM inside MULTI: {other:?}"),
    }
    assert_eq!(
        p.cmd(&["EXEC"]),
        Resp::Error("EXECABORT Transaction discarded because of previous errors.".into())
    );
    // A read-only transaction runs under OOM; one that writes is refused
    // at EXEC, with the node's reason.
    set_maxmemory(&all, "0");
    same_as_redis(
        &mut p,
        &mut r,
        &[
            vec!["SET", "{q}x", "value"],
            vec!["MULTI"],
            vec!["GET", "{q}x"],
            vec!["PING"],
        ],
    );
    set_maxmemory(&all, "1");
    same_as_redis(&mut p, &mut r, &[vec!["EXEC"]]);
    set_maxmemory(&all, "0");
    same_as_redis(
        &mut p,
        &mut r,
        &[vec!["MULTI"], vec!["SET", "{q}x", "1"], vec!["GET", "{q}x"]],
    );
    set_maxmemory(&all, "1");
    same_as_redis(&mut p, &mut r, &[vec!["EXEC"], vec!["GET", "{q}x"]]);
    set_maxmemory(&all, "0");
}

/// The slot moves to another master while a transaction is queued: the
/// node flags it, the client gets a clear error at once (not a MOVED it
/// cannot follow) and EXECABORT at EXEC; once the proxy's map is fresh, the
/// same transaction runs on the new owner. A move between the last queued
/// command and EXEC aborts EXEC itself.
#[test]
fn a_slot_moving_mid_transaction_aborts_it_and_the_retry_runs_on_the_new_owner() {
    let s = setup();
    let move_slot = |key: &str| -> (u16, u16) {
        let slot = key_slot(key.as_bytes());
        let from = s.cluster.node_for_slot(slot);
        let to = s
            .cluster
            .master_ports()
            .into_iter()
            .find(|&p| p != from)
            .unwrap();
        let to_id = s.cluster.node_id(to);
        for p in s.cluster.ports() {
            RawClient::connect(p).cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &to_id]);
        }
        (slot, to)
    };
    let mut c = s.envoy.raw_client();
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", "{m}a", "1"]), Resp::Simple("QUEUED".into()));
    let (slot, to) = move_slot("{m}a");
    match c.cmd(&["SET", "{m}b", "2"]) {
        Resp::Error(e) => assert!(
            e.starts_with(&format!("ERR slot {slot} is moving to another node")),
            "{e}"
        ),
        other => panic!("a command queued after its slot moved: {other:?}"),
    }
    // (The node checks the queued keys' slot again at EXEC: it says the
    // slot moved rather than "previous errors".)
    assert_eq!(
        c.cmd(&["EXEC"]),
        Resp::Error(format!(
            "EXECABORT Transaction discarded because slot {slot} moved to another node; run it again"
        ))
    );
    // The client's retry finds the new owner (the proxy refreshed its map).
    let ran = wait_until(Duration::from_secs(5), || {
        c.cmd(&["MULTI"]);
        c.cmd(&["SET", "{m}a", "1"]);
        c.cmd(&["SET", "{m}b", "2"]);
        c.cmd(&["EXEC"]) == Resp::Array(vec![Resp::ok(), Resp::ok()])
    });
    assert!(ran, "the transaction never ran after its slot moved");
    let v: String = connect(to).get("{m}b").unwrap();
    assert_eq!(v, "2", "applied on the new owner");

    // Moved between the last queued command and EXEC.
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", "{n}c", "1"]), Resp::Simple("QUEUED".into()));
    let (slot, _) = move_slot("{n}c");
    assert_eq!(
        c.cmd(&["EXEC"]),
        Resp::Error(format!(
            "EXECABORT Transaction discarded because slot {slot} moved to another node; run it again"
        ))
    );
    assert_eq!(c.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

/// The node drops the transaction's connection mid-queue: the node forgot
/// the MULTI, so the transaction's later commands and its EXEC fail and are
/// never sent on a fresh connection (where they would run at once, outside
/// the transaction); the next transaction works.
#[test]
fn a_lost_transaction_connection_aborts_it_and_runs_nothing() {
    let s = setup();
    let mut c = s.envoy.raw_client();
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", "{l}a", "1"]), Resp::Simple("QUEUED".into()));
    let owner = s.cluster.node_for_key(b"{l}a");
    let mut node = RawClient::connect(owner);
    let list = match node.cmd(&["CLIENT", "LIST"]) {
        Resp::Bulk(b) => String::from_utf8(b).unwrap(),
        other => panic!("CLIENT LIST: {other:?}"),
    };
    // The transaction's connection is the one in MULTI (flags=x).
    let id = list
        .lines()
        .find(|l| l.split(' ').any(|f| f == "flags=x"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("no connection in MULTI on the node:\n{list}"))
        .to_string();
    assert_eq!(node.cmd(&["CLIENT", "KILL", "ID", &id]), Resp::Int(1));
    std::thread::sleep(Duration::from_millis(300));
    let later = c.cmd(&["SET", "{l}b", "2"]);
    assert!(
        matches!(&later, Resp::Error(e) if e.contains("connection to the node was lost")),
        "{later:?}"
    );
    let exec = c.cmd(&["EXEC"]);
    assert!(
        matches!(&exec, Resp::Error(e) if e.contains("connection to the node was lost")),
        "{exec:?}"
    );
    assert_eq!(
        node.cmd(&["EXISTS", "{l}a", "{l}b"]),
        Resp::Int(0),
        "nothing of the transaction ran"
    );
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", "{l}a", "1"]), Resp::Simple("QUEUED".into()));
    assert_eq!(c.cmd(&["EXEC"]), Resp::Array(vec![Resp::ok()]));
}

/// A queued command times out (its node stalls): its client cannot know
/// whether the node queued it, so the transaction's connection is closed —
/// the node drops the transaction — and the rest of it, EXEC included,
/// fails instead of running with or without that command.
#[test]
fn a_timeout_inside_a_transaction_aborts_it_and_runs_nothing() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "500ms" })));
    let mut c = envoy.raw_client();
    assert_eq!(c.cmd(&["EXISTS", "warm-up"]), Resp::Int(0));
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", "{o}a", "1"]), Resp::Simple("QUEUED".into()));
    let owner = cluster.node_for_key(b"{o}a");
    let paused = cluster.pause_node(owner);
    let stalled = c.cmd(&["SET", "{o}b", "2"]);
    assert!(
        matches!(&stalled, Resp::Error(e) if e.contains("timeout")),
        "{stalled:?}"
    );
    drop(paused);
    let later = c.cmd(&["SET", "{o}c", "3"]);
    assert!(
        matches!(&later, Resp::Error(e) if e.contains("connection to the node was lost")),
        "{later:?}"
    );
    let exec = c.cmd(&["EXEC"]);
    assert!(exec.is_error(), "{exec:?}");
    let mut node = RawClient::connect(owner);
    assert_eq!(
        node.cmd(&["EXISTS", "{o}a", "{o}b", "{o}c"]),
        Resp::Int(0),
        "nothing of the transaction ran"
    );
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", "{o}a", "1"]), Resp::Simple("QUEUED".into()));
    assert_eq!(c.cmd(&["EXEC"]), Resp::Array(vec![Resp::ok()]));
}

/// A RESP3 client's transaction runs on a RESP3 connection: queued
/// replies, EXEC's array with RESP3 nulls and maps, as from a standalone
/// Redis.
#[test]
fn a_resp3_transaction_is_answered_like_redis() {
    let s = setup();
    let reference = StandaloneRedis::start();
    let mut p = s.envoy.raw_client();
    let mut r = reference.raw_client();
    for c in [&mut p, &mut r] {
        c.send_cmd(&["HELLO", "3"]);
        let hello = c.read_reply_bytes();
        assert!(hello.starts_with(b"%"), "{}", show_resp(&hello));
    }
    same_as_redis(
        &mut p,
        &mut r,
        &[
            vec!["WATCH", "{r}h"],
            vec!["MULTI"],
            vec!["HSET", "{r}h", "f", "v"],
            vec!["HGETALL", "{r}h"],
            vec!["GET", "{r}missing"],
            vec!["EXEC"],
            vec!["MULTI"],
            vec!["INCR", "{r}h"],
            vec!["EXEC"],
        ],
    );
}

/// What a client pipelines before a transaction runs before it, though it
/// travels on a shared connection and the transaction on one of its own.
/// Here a large value ahead of the `SET` keeps the shared connection busy
/// while the transaction's connection is fresh: a proxy that sent the
/// transaction at once would read the old value.
#[test]
fn commands_pipelined_before_a_transaction_run_before_it() {
    let s = setup();
    let key = "order:{t}";
    let big = "x".repeat(8 << 20);
    let mut c = s.envoy.raw_client();
    c.set_timeout(Duration::from_secs(20));
    for round in 1..=5 {
        assert_eq!(c.cmd(&["SET", key, "0"]), Resp::ok());
        let value = round.to_string();
        c.send_cmd(&["SET", "big:{t}", &big]);
        c.send_cmd(&["SET", key, &value]);
        c.send_cmd(&["MULTI"]);
        c.send_cmd(&["GET", key]);
        c.send_cmd(&["EXEC"]);
        assert_eq!(c.read_reply(), Resp::ok(), "round {round}: big SET");
        assert_eq!(c.read_reply(), Resp::ok(), "round {round}: SET");
        assert_eq!(c.read_reply(), Resp::ok(), "round {round}: MULTI");
        assert_eq!(
            c.read_reply(),
            Resp::Simple("QUEUED".into()),
            "round {round}"
        );
        assert_eq!(
            c.read_reply(),
            Resp::Array(vec![Resp::bulk(&value)]),
            "round {round}: the transaction ran before the SET sent ahead of it"
        );
    }
}

/// And what a client pipelines after `WATCH` runs after it: a write to the
/// watched key on the shared connection must abort the `EXEC`, as on Redis.
#[test]
fn a_write_pipelined_after_watch_aborts_exec() {
    let s = setup();
    let key = "watched:{t}";
    let mut c = s.envoy.raw_client();
    for round in 1..=10 {
        // The WATCH opens a fresh connection; the SET behind it finds the
        // shared one ready at once.
        assert_eq!(c.cmd(&["SET", key, "0"]), Resp::ok());
        c.send_cmd(&["WATCH", key]);
        c.send_cmd(&["SET", key, "1"]);
        c.send_cmd(&["MULTI"]);
        c.send_cmd(&["SET", key, "2"]);
        c.send_cmd(&["EXEC"]);
        assert_eq!(c.read_reply(), Resp::ok(), "round {round}: WATCH");
        assert_eq!(c.read_reply(), Resp::ok(), "round {round}: SET");
        assert_eq!(c.read_reply(), Resp::ok(), "round {round}: MULTI");
        assert_eq!(c.read_reply(), Resp::Simple("QUEUED".into()));
        assert_eq!(
            c.read_reply(),
            Resp::NilArray,
            "round {round}: EXEC must abort"
        );
        assert_eq!(c.cmd(&["GET", key]), Resp::bulk("1"), "round {round}");
    }
}

/// Every node client whose `CLIENT LIST` line matches `what`, over `ports`.
fn node_clients(ports: &[u16], what: &str) -> usize {
    ports
        .iter()
        .map(|&p| {
            let list = RawClient::connect(p)
                .cmd(&["CLIENT", "LIST"])
                .text()
                .unwrap_or_else(|| panic!("CLIENT LIST from {p}"));
            list.lines().filter(|l| l.contains(what)).count()
        })
        .sum()
}

/// A client that leaves with a transaction open (after `WATCH`, or inside
/// `MULTI` with a command queued) has its dedicated connection closed, so
/// the node drops its WATCH and MULTI state. The worker learns it from the
/// client leaving, not from a walk over its connections.
#[test]
fn a_client_leaving_mid_transaction_has_its_connection_closed() {
    let s = setup();
    let masters = s.cluster.master_ports();
    let mut watching = s.envoy.raw_client();
    assert_eq!(watching.cmd(&["WATCH", "{gone}a"]), Resp::ok());
    let mut queued = s.envoy.raw_client();
    assert_eq!(queued.cmd(&["MULTI"]), Resp::ok());
    assert_eq!(
        queued.cmd(&["SET", "{gone}b", "1"]),
        Resp::Simple("QUEUED".into())
    );
    assert!(
        wait_until(Duration::from_secs(5), || node_clients(
            &masters,
            "cmd=watch"
        ) == 1
            && node_clients(&masters, "flags=x") == 1),
        "the nodes hold the two transactions ({} watching, {} in MULTI)",
        node_clients(&masters, "cmd=watch"),
        node_clients(&masters, "flags=x")
    );
    drop(watching);
    drop(queued);
    assert!(
        wait_until(Duration::from_secs(2), || node_clients(
            &masters,
            "cmd=watch"
        ) == 0
            && node_clients(&masters, "flags=x") == 0),
        "connections left open: {} watching, {} in MULTI",
        node_clients(&masters, "cmd=watch"),
        node_clients(&masters, "flags=x")
    );
    let mut c = s.envoy.raw_client();
    assert_eq!(c.cmd(&["GET", "{gone}b"]), Resp::Nil, "the MULTI never ran");
}
