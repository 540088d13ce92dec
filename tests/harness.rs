//! Tests of the test harness itself (tests/common). None of them needs the
//! module: the end-to-end one drives Envoy's BUILT-IN redis_proxy, which shows
//! that clusters, Envoy start-up and the clients work before the module does.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn resp_parser_reads_every_reply_type() {
    let wire = b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n$1\r\nx\r\n:1\r\n*-1\r\n*0\r\n_\r\n#t\r\n,1.5\r\n%1\r\n+k\r\n:2\r\n";
    let mut rest: &[u8] = wire;
    let mut got = Vec::new();
    while !rest.is_empty() {
        let (v, used) = parse_resp(rest).unwrap().expect("complete");
        got.push(v);
        rest = &rest[used..];
    }
    assert_eq!(
        got,
        vec![
            Resp::ok(),
            Resp::Error("ERR bad".into()),
            Resp::Int(42),
            Resp::bulk("a\r\n"),
            Resp::Nil,
            Resp::Array(vec![Resp::bulk("x"), Resp::Int(1)]),
            Resp::NilArray,
            Resp::Array(vec![]),
            Resp::Nil,
            Resp::Bool(true),
            Resp::Double("1.5".into()),
            Resp::Map(vec![(Resp::Simple("k".into()), Resp::Int(2))]),
        ]
    );
    // Every strict prefix of a reply is incomplete, not an error.
    let one = b"*2\r\n$5\r\nhello\r\n:7\r\n";
    for cut in 0..one.len() {
        assert_eq!(parse_resp(&one[..cut]), Ok(None), "prefix of {cut} bytes");
    }
    assert_eq!(
        encode_cmd(&["SET", "k", ""]),
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n".to_vec()
    );
}

#[test]
fn ports_are_distinct_and_bus_twins_free() {
    let ports = alloc_ports(20);
    for (i, a) in ports.iter().enumerate() {
        for b in &ports[i + 1..] {
            assert_ne!(a, b);
            assert_ne!(a + BUS_OFFSET, *b, "a port is another's bus port");
            assert_ne!(*a, b + BUS_OFFSET, "a port is another's bus port");
        }
        assert!(*a < 32768, "below the ephemeral range");
    }
}

/// A whole run of the harness against Envoy's built-in redis_proxy: the
/// cluster comes up with replicas visible, the local slot function agrees
/// with CLUSTER KEYSLOT, the proxy routes keys to their owners, stats and
/// logs are readable, and a killed node is seen as gone.
#[test]
fn harness_end_to_end_with_builtin_redis_proxy() {
    let mut cluster = Cluster::start(3, 1);
    assert_eq!(cluster.ports().len(), 6);
    let map = cluster.slot_map();
    assert_eq!(map.len(), 3, "three slot ranges: {map:?}");
    assert!(map.iter().all(|r| r.replicas.len() == 1), "{map:?}");
    assert_eq!(cluster.master_ports().len(), 3);

    for key in [
        "foo",
        "bar",
        "{user1000}.following",
        "a{}b",
        "{}x{y}",
        "\u{e9}t\u{e9}",
    ] {
        assert_eq!(
            key_slot(key.as_bytes()),
            cluster.keyslot(key.as_bytes()),
            "{key}"
        );
    }
    assert_eq!(key_slot(b"123456789"), 0x31C3); // the CRC16/XMODEM check value

    let envoy = Envoy::start_builtin_redis_proxy(&cluster);
    let mut c = envoy.raw_client();
    assert_eq!(c.cmd(&["PING"]), Resp::Simple("PONG".into()));
    let keys = keys("harness", 30);
    for k in &keys {
        assert_eq!(
            c.cmd(&["SET", k.as_str(), k.as_str()]),
            Resp::ok(),
            "SET {k}"
        );
    }
    for (owner, ks) in by_owner(&cluster, &keys) {
        let mut direct = cluster.client(owner);
        for k in ks {
            let v: Option<String> = redis::cmd("GET").arg(&k).query(&mut direct).unwrap();
            assert_eq!(v.as_deref(), Some(k.as_str()), "{k} on its owner {owner}");
        }
    }
    let stats = envoy.stats();
    assert!(
        stats.contains("redis.redis.command.set.total"),
        "stats: {}",
        &stats[..stats.len().min(2000)]
    );
    assert!(envoy.stat("redis.redis.command.set.total").unwrap() >= 30);
    let _ = envoy.log();

    // redis-cli through the proxy.
    let out = redis_cli(&["-p", &envoy.port().to_string(), "GET", "harness:1"]);
    assert!(out.success);
    assert_eq!(out.stdout.trim(), "harness:1");

    // Kill and restart a replica: the harness sees it go and come back.
    let replica = map[0].replicas[0];
    cluster.kill_node(replica);
    assert!(!cluster.live_ports().contains(&replica));
    assert!(RawClient::try_connect(replica, Duration::from_millis(300)).is_err());
    cluster.restart_node(replica);
    cluster.wait_healthy(Duration::from_secs(30));

    // A paused node does not answer; resumed, it does again.
    {
        let _paused = cluster.pause_node(replica);
        let mut r = RawClient::connect(replica);
        r.set_timeout(Duration::from_millis(300));
        r.send(b"PING\r\n").unwrap();
        assert_eq!(r.read_outcome(), Outcome::TimedOut);
    }
    let mut r = RawClient::connect(replica);
    assert_eq!(r.cmd(&["PING"]), Resp::Simple("PONG".into()));
}
