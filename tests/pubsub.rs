//! Pub/Sub through the proxy (real Envoy, real Redis Cluster): replies and
//! messages byte for byte as a standalone Redis in RESP2 and RESP3, one
//! upstream subscription per worker shared by many clients, messages
//! published on a node or through the proxy, CROSSSLOT for shard channels,
//! `PUBSUB` counting the proxy's clients, subscribers surviving a master's
//! `kill -9` and a live reshard of a shard channel's slot, and a slow
//! subscriber disconnected while a fast one keeps receiving.
//!
//! MODULE-DEPENDENT: needs target/debug/libenvoy_redis_cluster.so (cargo build).

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const STAT: &str = "dynamicmodulescustom.redis.redis.";

/// One step of a conversation run against both servers.
enum Step {
    /// Send the command, compare this many frames.
    Cmd(Vec<&'static str>, usize),
    /// Send the command, read one frame each, compare nothing (`HELLO`
    /// shows the connection id).
    Quiet(Vec<&'static str>),
    /// PUBLISH from another connection (of the same server), then compare
    /// this many frames on the subscriber.
    Publish(&'static str, &'static str, usize),
    /// Send the commands in one write, compare this many frames.
    Pipeline(Vec<Vec<&'static str>>, usize),
}

fn script(resp3: bool) -> Vec<Step> {
    use Step::*;
    let mut s = vec![
        Cmd(vec!["UNSUBSCRIBE"], 1),
        Cmd(vec!["PUNSUBSCRIBE"], 1),
        Cmd(vec!["SUNSUBSCRIBE"], 1),
        Cmd(vec!["UNSUBSCRIBE", "never"], 1),
        Cmd(vec!["SUBSCRIBE", "a", "b", "a"], 3),
        Cmd(vec!["PSUBSCRIBE", "p*"], 1),
        Publish("a", "hello", 1),
        Publish("pq", "pattern", 1),
        Cmd(vec!["PING"], 1),
        Cmd(vec!["PING", "hi"], 1),
        Cmd(vec!["GET", "k"], 1),
        Cmd(vec!["SSUBSCRIBE", "{s}1", "{s}2"], 2),
        Publish("b", "", 1),
        Cmd(vec!["UNSUBSCRIBE", "a", "zz"], 2),
        Cmd(vec!["UNSUBSCRIBE"], 1),
        Cmd(vec!["SUNSUBSCRIBE", "{s}2"], 1),
        Cmd(vec!["PUNSUBSCRIBE"], 1),
        Cmd(vec!["PING"], 1),
        Cmd(vec!["SUNSUBSCRIBE"], 1),
        Cmd(vec!["PING"], 1),
        Cmd(vec!["SUBSCRIBE", "c"], 1),
        Cmd(vec!["RESET"], 1),
        Cmd(vec!["PING"], 1),
    ];
    if resp3 {
        // RESET went back to RESP2: the rest in RESP2 again.
        s.insert(0, Quiet(vec!["HELLO", "3"]));
    }
    s
}

fn run(
    steps: &[Step],
    proxy: (&mut RawClient, &mut RawClient),
    reference: (&mut RawClient, &mut RawClient),
) {
    let (p, pp) = proxy;
    let (r, rp) = reference;
    for step in steps {
        let (what, n) = match step {
            Step::Cmd(cmd, n) => {
                p.send_cmd(cmd);
                r.send_cmd(cmd);
                (show_cmd(cmd), *n)
            }
            Step::Quiet(cmd) => {
                p.send_cmd(cmd);
                r.send_cmd(cmd);
                let _ = (p.read_reply_bytes(), r.read_reply_bytes());
                continue;
            }
            Step::Pipeline(cmds, n) => {
                let bytes: Vec<u8> = cmds.iter().flat_map(|c| encode_cmd(c)).collect();
                p.send(&bytes).expect("send to the proxy");
                r.send(&bytes).expect("send to Redis");
                (format!("pipeline {cmds:?}"), *n)
            }
            Step::Publish(ch, msg, n) => {
                pp.cmd(&["PUBLISH", ch, msg]);
                rp.cmd(&["PUBLISH", ch, msg]);
                (format!("message {msg:?} on {ch}"), *n)
            }
        };
        for i in 0..n {
            let (a, b) = (p.read_reply_bytes(), r.read_reply_bytes());
            assert_eq!(
                show_resp(&a),
                show_resp(&b),
                "{what} (frame {i}): proxy (left) vs standalone Redis (right)"
            );
        }
    }
}

#[test]
fn replies_and_messages_match_redis_byte_for_byte_in_resp2_and_resp3() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let reference = StandaloneRedis::start();
    for resp3 in [false, true] {
        let (mut p, mut pp) = (envoy.raw_client(), envoy.raw_client());
        let (mut r, mut rp) = (reference.raw_client(), reference.raw_client());
        run(&script(resp3), (&mut p, &mut pp), (&mut r, &mut rp));
    }
    // RESP3: ordinary commands keep working while subscribed, messages
    // come between the replies.
    let (mut p, mut pp) = (envoy.raw_client(), envoy.raw_client());
    let (mut r, mut rp) = (reference.raw_client(), reference.raw_client());
    use Step::*;
    let steps = vec![
        Quiet(vec!["HELLO", "3"]),
        Cmd(vec!["SUBSCRIBE", "news"], 1),
        Cmd(vec!["SET", "k", "v"], 1),
        Publish("news", "one", 1),
        Cmd(vec!["GET", "k"], 1),
        Cmd(vec!["PING"], 1),
        Cmd(vec!["DEL", "k"], 1),
    ];
    run(&steps, (&mut p, &mut pp), (&mut r, &mut rp));
}

/// A client authenticated as a cluster user that subscribes to a channel
/// its ACL forbids (`&` rules) gets Redis's `-NOPERM` instead of an
/// acknowledgement, for the whole command, and keeps its counts and mode:
/// byte for byte as a standalone Redis with the same user, RESP2 and RESP3.
#[test]
fn a_forbidden_channel_is_refused_like_redis() {
    let cluster = Cluster::start(3, 0);
    let cfg = module_config(&cluster, json!({ "allow_admin_commands": true }));
    let envoy = Envoy::start(cfg);
    let reference = StandaloneRedis::start();
    let setuser = [
        "ACL",
        "SETUSER",
        "carol",
        "on",
        ">pw",
        "resetchannels",
        "&news*",
        "+@all",
    ];
    assert_eq!(envoy.raw_client().cmd(&setuser), Resp::ok());
    assert_eq!(reference.raw_client().cmd(&setuser), Resp::ok());
    use Step::*;
    for resp3 in [false, true] {
        let mut steps = vec![
            Cmd(vec!["AUTH", "carol", "pw"], 1),
            Cmd(vec!["SUBSCRIBE", "secret"], 1),
            // Not in subscribed mode: a plain PONG in RESP2.
            Cmd(vec!["PING"], 1),
            Cmd(vec!["SUBSCRIBE", "news1"], 1),
            Cmd(vec!["SUBSCRIBE", "secret"], 1),
            Cmd(vec!["PSUBSCRIBE", "s*"], 1),
            Cmd(vec!["SSUBSCRIBE", "{s}secret"], 1),
            // One forbidden name refuses the whole command.
            Cmd(vec!["SUBSCRIBE", "news2", "secret"], 1),
            Cmd(vec!["SUBSCRIBE", "news2"], 1),
            Cmd(vec!["PSUBSCRIBE", "news*"], 1),
            Publish("secret", "hidden", 0),
            Publish("news2", "seen", 2),
            Cmd(vec!["PING"], 1),
            Cmd(vec!["UNSUBSCRIBE", "news1", "news2"], 2),
            Cmd(vec!["PUNSUBSCRIBE", "news*"], 1),
            Cmd(vec!["PING"], 1),
            // Acknowledgements pipelined behind a refusal count without
            // the refused name; the PING is not in subscribed mode.
            Pipeline(
                vec![
                    vec!["SUBSCRIBE", "secret"],
                    vec!["SUBSCRIBE", "news3"],
                    vec!["UNSUBSCRIBE", "news3"],
                    vec!["PSUBSCRIBE", "news*"],
                    vec!["PUNSUBSCRIBE"],
                    vec!["PING"],
                ],
                6,
            ),
            // An unsubscribe-all pipelined behind a refusal does not list
            // the refused name.
            Pipeline(
                vec![
                    vec!["SUBSCRIBE", "news4"],
                    vec!["SUBSCRIBE", "secret"],
                    vec!["UNSUBSCRIBE"],
                    vec!["PING"],
                ],
                4,
            ),
        ];
        if resp3 {
            steps.insert(0, Quiet(vec!["HELLO", "3"]));
        }
        let (mut p, mut pp) = (envoy.raw_client(), envoy.raw_client());
        let (mut r, mut rp) = (reference.raw_client(), reference.raw_client());
        run(&steps, (&mut p, &mut pp), (&mut r, &mut rp));
        // No subscription kept for the refused names, here or upstream.
        let mut admin = envoy.raw_client();
        assert_eq!(
            admin.cmd(&["PUBSUB", "NUMSUB", "secret"]),
            Resp::Array(vec![Resp::bulk("secret"), Resp::Int(0)])
        );
        assert_eq!(admin.cmd(&["PUBSUB", "NUMPAT"]), Resp::Int(0));
        for port in cluster.master_ports() {
            assert_eq!(node_numsub(port, "secret"), 0, "on node {port}");
        }
    }
    // A client whose only subscribe was refused is no subscriber.
    let mut c = envoy.raw_client();
    assert_eq!(c.cmd(&["AUTH", "carol", "pw"]), Resp::ok());
    assert!(matches!(c.cmd(&["SUBSCRIBE", "secret"]), Resp::Error(e) if e.starts_with("NOPERM")));
    let active = format!("{STAT}pubsub_subscribers_active");
    assert!(
        wait_until(Duration::from_secs(5), || envoy.stat(&active) == Some(0)),
        "pubsub_subscribers_active {:?}",
        envoy.stat(&active)
    );
}

/// `PUBLISH`/`SPUBLISH` inside `MULTI`: `EXEC`'s reply counts the
/// proxy's receiving clients as one Redis counts its subscribers (as
/// outside MULTI), byte for byte as a standalone Redis, whether the
/// transaction runs on the node holding the proxy's subscriptions or not.
#[test]
fn publish_inside_multi_counts_receivers_like_redis() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let reference = StandaloneRedis::start();
    // Keys on every master, so transactions run on each of them.
    let keys: Vec<String> = by_owner(&cluster, &keys("t", 60))
        .into_values()
        .map(|ks| format!("{{{}}}", ks[0]))
        .collect();
    assert_eq!(keys.len(), 3, "a key on each master");
    let subscribe = |port: u16, cmd: Vec<String>| {
        let mut c = RawClient::connect(port);
        let n = cmd.len() - 1;
        c.send_cmd(&cmd);
        c.read_replies(n);
        c
    };
    let mut held = Vec::new();
    for port in [envoy.port(), reference.port()] {
        for _ in 0..2 {
            held.push(subscribe(port, vec!["SUBSCRIBE".into(), "m".into()]));
        }
        held.push(subscribe(port, vec!["PSUBSCRIBE".into(), "m*".into()]));
        for k in &keys {
            held.push(subscribe(port, vec!["SSUBSCRIBE".into(), format!("{k}:s")]));
        }
    }
    let (mut p, mut r) = (envoy.raw_client(), reference.raw_client());
    let mut txns: Vec<Vec<Vec<String>>> = vec![vec![
        vec!["MULTI".into()],
        vec!["PUBLISH".into(), "m".into(), "keyless".into()],
        vec!["PUBLISH".into(), "nobody".into(), "x".into()],
        vec!["EXEC".into()],
    ]];
    for k in &keys {
        txns.push(vec![
            vec!["MULTI".into()],
            vec!["SET".into(), k.clone(), "1".into()],
            vec!["PUBLISH".into(), "m".into(), k.clone()],
            vec!["SPUBLISH".into(), format!("{k}:s"), "s".into()],
            vec!["PUBLISH".into(), "mx".into(), "p".into()],
            vec!["EXEC".into()],
        ]);
    }
    for txn in &txns {
        for cmd in txn {
            let (a, b) = (p.cmd(cmd), r.cmd(cmd));
            assert_eq!(a, b, "{cmd:?}: proxy (left) vs standalone Redis (right)");
        }
    }
}

/// `PUBSUB NUMSUB` of `channel` on a node.
fn node_numsub(port: u16, channel: &str) -> i64 {
    let mut c = RawClient::connect(port);
    match c.cmd(&["PUBSUB", "NUMSUB", channel]) {
        Resp::Array(v) => match v.get(1) {
            Some(Resp::Int(n)) => *n,
            other => panic!("NUMSUB: {other:?}"),
        },
        other => panic!("NUMSUB: {other:?}"),
    }
}

/// Read one message frame: `(kind, channel, payload)`.
fn message_of(c: &mut RawClient) -> (String, String, String) {
    match c.read_reply() {
        Resp::Array(v) if v.len() == 3 => {
            let t: Vec<String> = v.iter().map(|x| x.text().unwrap_or_default()).collect();
            (t[0].clone(), t[1].clone(), t[2].clone())
        }
        other => panic!("not a message: {other:?}"),
    }
}

/// Many clients on one channel share one upstream subscription per Envoy
/// worker (the harness runs 2), on the channel's slot owner; a message
/// published on any node, or through the proxy, reaches every one of
/// them; `PUBSUB` counts the proxy's clients; the last one out ends the
/// upstream subscription.
#[test]
fn clients_share_one_upstream_subscription_per_worker() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    // Classic channels live on the owner of slot 0.
    let owner = cluster.node_for_slot(0);
    let other = *cluster
        .master_ports()
        .iter()
        .find(|&&p| p != owner)
        .expect("another master");
    let mut subs: Vec<RawClient> = (0..20)
        .map(|_| {
            let mut c = envoy.raw_client();
            c.send_cmd(&["SUBSCRIBE", "shared"]);
            assert_eq!(
                c.read_reply(),
                Resp::Array(vec![
                    Resp::bulk("subscribe"),
                    Resp::bulk("shared"),
                    Resp::Int(1)
                ])
            );
            c
        })
        .collect();
    let upstream = node_numsub(owner, "shared");
    assert!(
        (1..=2).contains(&upstream),
        "20 clients, 2 workers: {upstream} upstream subscriptions"
    );
    for p in cluster.master_ports() {
        if p != owner {
            assert_eq!(node_numsub(p, "shared"), 0, "only on slot 0's owner");
        }
    }
    let mut admin = envoy.raw_client();
    assert_eq!(
        admin.cmd(&["PUBSUB", "NUMSUB", "shared", "none"]),
        Resp::Array(vec![
            Resp::bulk("shared"),
            Resp::Int(20),
            Resp::bulk("none"),
            Resp::Int(0)
        ])
    );
    assert_eq!(
        admin.cmd(&["PUBSUB", "CHANNELS", "sh*"]),
        Resp::Array(vec![Resp::bulk("shared")])
    );
    // Published on a node that holds no subscription (the cluster bus
    // carries it), then through the proxy.
    RawClient::connect(other).cmd(&["PUBLISH", "shared", "from-node"]);
    for c in subs.iter_mut() {
        assert_eq!(
            message_of(c),
            ("message".into(), "shared".into(), "from-node".into())
        );
    }
    admin.cmd(&["PUBLISH", "shared", "from-proxy"]);
    for c in subs.iter_mut() {
        assert_eq!(
            message_of(c),
            ("message".into(), "shared".into(), "from-proxy".into())
        );
    }
    let stat = |n: &str| envoy.stat(&format!("{STAT}{n}"));
    assert_eq!(stat("pubsub_subscribers_active"), Some(20));
    assert_eq!(
        stat("cluster.main.pubsub_upstream_subscriptions"),
        Some(upstream as u64)
    );
    assert!(stat("cluster.main.pubsub_messages_fanned_out") >= Some(40));
    // Half leave: still subscribed upstream for the rest; all leave: gone.
    subs.truncate(10);
    admin.cmd(&["PUBLISH", "shared", "still"]);
    for c in subs.iter_mut() {
        assert_eq!(message_of(c).2, "still");
    }
    subs.clear();
    assert!(
        wait_until(Duration::from_secs(5), || node_numsub(owner, "shared") == 0),
        "the last client out ends the upstream subscription"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        stat("pubsub_subscribers_active") == Some(0)
    }));
}

/// `SSUBSCRIBE` across slots is refused with Redis Cluster's words; shard
/// channels are subscribed on the slot's owner, `SPUBLISH` reaches them.
#[test]
fn shard_channels_live_on_their_slot_owner() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut c = envoy.raw_client();
    assert_eq!(
        c.cmd(&["SSUBSCRIBE", "a", "b"]),
        Resp::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
    );
    c.send_cmd(&["SSUBSCRIBE", "{s}x", "{s}y"]);
    for (ch, n) in [("{s}x", 1), ("{s}y", 2)] {
        assert_eq!(
            c.read_reply(),
            Resp::Array(vec![Resp::bulk("ssubscribe"), Resp::bulk(ch), Resp::Int(n)])
        );
    }
    let owner = cluster.node_for_key(b"{s}x");
    let mut node = RawClient::connect(owner);
    assert_eq!(
        node.cmd(&["PUBSUB", "SHARDNUMSUB", "{s}x"]),
        Resp::Array(vec![Resp::bulk("{s}x"), Resp::Int(1)])
    );
    let mut publisher = envoy.raw_client();
    assert_eq!(
        publisher.cmd(&["SPUBLISH", "{s}y", "hi"]),
        Resp::Int(1),
        "SPUBLISH goes to the owner, where the proxy's subscription is"
    );
    assert_eq!(
        message_of(&mut c),
        ("smessage".into(), "{s}y".into(), "hi".into())
    );
    assert_eq!(
        publisher.cmd(&["PUBSUB", "SHARDCHANNELS"]),
        Resp::Array(vec![Resp::bulk("{s}x"), Resp::bulk("{s}y")])
    );
}

/// Shard channels follow the route's read policy like reads: with
/// `REPLICA` the proxy subscribes on a replica of the slot's shard (which
/// Redis lets serve `SSUBSCRIBE` for its master's slots, and which gets the
/// shard's messages), leaving the master to writes.
#[test]
fn shard_channels_live_on_a_replica_with_the_replica_read_policy() {
    let cluster = Cluster::start(3, 1);
    let envoy = Envoy::start(module_config(&cluster, json!({ "read_policy": "REPLICA" })));
    let mut c = envoy.raw_client();
    c.send_cmd(&["SSUBSCRIBE", "{r}x"]);
    assert_eq!(
        c.read_reply(),
        Resp::Array(vec![
            Resp::bulk("ssubscribe"),
            Resp::bulk("{r}x"),
            Resp::Int(1)
        ])
    );
    let slot = cluster.keyslot(b"{r}x");
    let range = cluster
        .slot_map()
        .into_iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .expect("the slot is served");
    let numsub = |port: u16| RawClient::connect(port).cmd(&["PUBSUB", "SHARDNUMSUB", "{r}x"]);
    assert_eq!(
        numsub(range.master),
        Resp::Array(vec![Resp::bulk("{r}x"), Resp::Int(0)]),
        "not on the master"
    );
    assert_eq!(range.replicas.len(), 1);
    assert_eq!(
        numsub(range.replicas[0]),
        Resp::Array(vec![Resp::bulk("{r}x"), Resp::Int(1)]),
        "on the replica"
    );
    let mut publisher = envoy.raw_client();
    assert_eq!(
        publisher.cmd(&["SPUBLISH", "{r}x", "through"]),
        Resp::Int(1),
        "counts the proxy's subscriber, as one Redis would"
    );
    assert_eq!(
        message_of(&mut c),
        ("smessage".into(), "{r}x".into(), "through".into())
    );
    RawClient::connect(range.master).cmd(&["SPUBLISH", "{r}x", "direct"]);
    assert_eq!(
        message_of(&mut c),
        ("smessage".into(), "{r}x".into(), "direct".into())
    );
}

/// A prefix route's `remove_prefix` applies to shard channel names like
/// keys: subscribed on the route's cluster without the prefix, shown to
/// the client with it.
#[test]
fn shard_channels_follow_prefix_routes() {
    let cluster = Cluster::start(3, 0);
    let mut config = module_config(&cluster, json!({}));
    config["prefix_routes"]["routes"] =
        json!([{ "prefix": "app:", "cluster": "main", "remove_prefix": true }]);
    let envoy = Envoy::start(config);
    let mut c = envoy.raw_client();
    c.send_cmd(&["SSUBSCRIBE", "app:{t}ch"]);
    assert_eq!(
        c.read_reply(),
        Resp::Array(vec![
            Resp::bulk("ssubscribe"),
            Resp::bulk("app:{t}ch"),
            Resp::Int(1)
        ])
    );
    let owner = cluster.node_for_key(b"{t}ch");
    let mut node = RawClient::connect(owner);
    assert_eq!(
        node.cmd(&["PUBSUB", "SHARDNUMSUB", "{t}ch"]),
        Resp::Array(vec![Resp::bulk("{t}ch"), Resp::Int(1)])
    );
    node.cmd(&["SPUBLISH", "{t}ch", "on-node"]);
    assert_eq!(
        message_of(&mut c),
        ("smessage".into(), "app:{t}ch".into(), "on-node".into())
    );
    let mut publisher = envoy.raw_client();
    publisher.cmd(&["SPUBLISH", "app:{t}ch", "via-proxy"]);
    assert_eq!(message_of(&mut c).2, "via-proxy");
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

/// The master port of replica `port`.
fn master_of(port: u16) -> Option<i64> {
    let mut c = RawClient::try_connect(port, Duration::from_millis(300)).ok()?;
    match c.cmd(&["ROLE"]) {
        Resp::Array(v) if v.first().and_then(Resp::text).as_deref() == Some("slave") => {
            match v.get(2) {
                Some(Resp::Int(p)) => Some(*p),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Publishes `<n>` on `channel` every 10 ms (to `port`, with `cmd`) until
/// `stop`; errors while nodes change are ignored.
fn publisher(
    port: u16,
    cmd: &'static str,
    channel: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        let mut c: Option<RawClient> = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if c.is_none() {
                c = RawClient::try_connect(port, Duration::from_millis(200)).ok();
                if let Some(c) = c.as_mut() {
                    c.set_timeout(Duration::from_secs(2));
                }
            }
            if let Some(conn) = c.as_mut() {
                n += 1;
                let sent = conn.send(&encode_cmd(&[cmd, channel, &n.to_string()]));
                if sent.is_err() || conn.try_read_reply().is_err() {
                    c = None;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    })
}

/// Reads messages until `until`, returning when each arrived; every frame
/// must be a message (no unsubscribe, no error reaches the client).
fn receive(c: &mut RawClient, until: Instant, kind: &str) -> Vec<Instant> {
    let mut at = Vec::new();
    c.set_timeout(Duration::from_millis(100));
    while Instant::now() < until {
        match c.try_read_reply() {
            Ok(Resp::Array(v)) => {
                let word = v.first().and_then(Resp::text).unwrap_or_default();
                assert_eq!(word, kind, "only messages reach the subscriber: {v:?}");
                at.push(Instant::now());
            }
            Ok(other) => panic!("subscriber got {other:?}"),
            Err(_) => {}
        }
    }
    at
}

/// The longest silence between messages received.
fn longest_gap(at: &[Instant]) -> Duration {
    at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// `kill -9` of the master holding a channel's and a shard channel's
/// upstream subscriptions: once a replica is promoted, the proxy subscribes
/// again there; the subscribers see no unsubscribe and no error, and keep
/// receiving. Prints the longest gap (for the README).
#[test]
fn subscribers_keep_receiving_across_a_master_kill() {
    let mut cluster = Cluster::start(3, 1);
    let envoy = Envoy::start(module_config(&cluster, json!({ "op_timeout": "2s" })));
    // The master holding the classic channels (slot 0's owner) and a
    // shard channel of one of its slots.
    let master = cluster.node_for_slot(0);
    let sh: &'static str = (0..)
        .map(|i| format!("{{fo{i}}}sh"))
        .find(|c| cluster.node_for_key(c.as_bytes()) == master)
        .map(|c| &*Box::leak(c.into_boxed_str()))
        .expect("a shard channel on the master");
    let other = *cluster
        .master_ports()
        .iter()
        .find(|&&p| p != master)
        .expect("another master");
    let replica = cluster
        .ports()
        .into_iter()
        .find(|&p| p != master && master_of(p) == Some(i64::from(master)))
        .expect("replica of the shard");
    let mut chan = envoy.raw_client();
    chan.cmd(&["SUBSCRIBE", "{fo}ch"]);
    let mut shard = envoy.raw_client();
    shard.cmd(&["SSUBSCRIBE", sh]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Classic messages from a master that survives; shard messages through
    // the proxy (to whichever node owns the slot).
    let p1 = publisher(other, "PUBLISH", "{fo}ch", stop.clone());
    let p2 = publisher(envoy.port(), "SPUBLISH", sh, stop.clone());
    let before = receive(
        &mut chan,
        Instant::now() + Duration::from_millis(500),
        "message",
    );
    assert!(!before.is_empty(), "receiving before the kill");
    cluster.kill_node(master);
    let killed = Instant::now();
    let reader = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(20);
        (receive(&mut chan, end, "message"), chan)
    });
    let shard_reader = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(20);
        (receive(&mut shard, end, "smessage"), shard)
    });
    // When the replica took over, as seen from outside (polled every 20 ms).
    let mut promoted = None;
    while killed.elapsed() < Duration::from_secs(19) {
        if role(replica).as_deref() == Some("master") {
            promoted = Some(Instant::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let promoted = promoted.expect("replica promoted within 19 s");
    let (shard_at, _shard) = shard_reader.join().expect("shard reader");
    let (chan_at, _chan) = reader.join().expect("reader");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = (p1.join(), p2.join());
    assert_eq!(role(replica).as_deref(), Some("master"), "replica promoted");
    for (what, at) in [("channel", &chan_at), ("shard channel", &shard_at)] {
        let after = at
            .iter()
            .filter(|t| **t > killed + Duration::from_secs(12))
            .count();
        assert!(after > 50, "{what}: {after} messages in the last 8 s");
        let first = at
            .iter()
            .find(|t| **t > promoted)
            .map(|t| *t - promoted)
            .expect("a message after the promotion");
        eprintln!(
            "{what}: longest gap {:?} (kill -9 to promotion included); promotion seen {:?} after the kill, first message {first:?} after it",
            longest_gap(at),
            promoted - killed
        );
        assert!(
            first < Duration::from_secs(2),
            "{what}: first message {first:?} after the promotion"
        );
    }
    let resubscribes = envoy.stat(&format!("{STAT}cluster.main.pubsub_resubscribes"));
    assert!(resubscribes >= Some(2), "resubscribes: {resubscribes:?}");
}

#[test]
fn subscribers_keep_receiving_across_a_reshard_of_their_slot() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let slot = cluster.keyslot(b"{rs}sh");
    let from = cluster.node_for_key(b"{rs}sh");
    let to = *cluster
        .master_ports()
        .iter()
        .find(|&&p| p != from)
        .expect("another master");
    let mut subs: Vec<RawClient> = (0..3)
        .map(|_| {
            let mut c = envoy.raw_client();
            c.cmd(&["SSUBSCRIBE", "{rs}sh"]);
            c
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let p = publisher(envoy.port(), "SPUBLISH", "{rs}sh", stop.clone());
    let before = receive(
        &mut subs[0],
        Instant::now() + Duration::from_millis(300),
        "smessage",
    );
    assert!(!before.is_empty(), "receiving before the move");
    let moved = Instant::now();
    cluster.move_slot(slot, from, to);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let at = receive(&mut c, Instant::now() + Duration::from_secs(6), "smessage");
                (at, c)
            })
        })
        .collect();
    let (got, _clients): (Vec<Vec<Instant>>, Vec<RawClient>) = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .unzip();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = p.join();
    let mut node = RawClient::connect(to);
    let Resp::Array(v) = node.cmd(&["PUBSUB", "SHARDNUMSUB", "{rs}sh"]) else {
        panic!("SHARDNUMSUB")
    };
    let n = match v.get(1) {
        Some(Resp::Int(n)) => *n,
        other => panic!("SHARDNUMSUB: {other:?}"),
    };
    assert!((1..=2).contains(&n), "subscribed on the new owner: {n}");
    let old = RawClient::connect(from).cmd(&["PUBSUB", "SHARDNUMSUB", "{rs}sh"]);
    assert_eq!(old, Resp::Array(vec![Resp::bulk("{rs}sh"), Resp::Int(0)]));
    for at in &got {
        let late = at
            .iter()
            .filter(|t| **t > moved + Duration::from_secs(3))
            .count();
        assert!(late > 100, "{late} messages in the last 3 s");
        eprintln!("reshard: longest gap {:?}", longest_gap(at));
    }
}

/// Keyspace notifications are each node's own: a keyspace pattern (or a
/// pattern that may match one, like `*`) and a keyevent channel are
/// subscribed on every master, so the client sees the whole cluster's
/// events, each once; ordinary messages on such a pattern come once too.
#[test]
fn keyspace_notifications_cover_every_master() {
    let cluster = Cluster::start(3, 0);
    for p in cluster.master_ports() {
        let r = RawClient::connect(p).cmd(&["CONFIG", "SET", "notify-keyspace-events", "KEA"]);
        assert_eq!(r, Resp::ok());
    }
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut space = envoy.raw_client();
    space.cmd(&["PSUBSCRIBE", "__keyspace@0__:*"]);
    let mut event = envoy.raw_client();
    event.cmd(&["SUBSCRIBE", "__keyevent@0__:set"]);
    let mut all = envoy.raw_client();
    all.cmd(&["PSUBSCRIBE", "*"]);
    for p in cluster.master_ports() {
        let mut node = RawClient::connect(p);
        let Resp::Int(n) = node.cmd(&["PUBSUB", "NUMPAT"]) else {
            panic!("NUMPAT")
        };
        assert!(
            (2..=4).contains(&n),
            "two patterns on every master {p}: {n}"
        );
    }
    // One key on each master.
    let mut keys: Vec<String> = Vec::new();
    for port in cluster.master_ports() {
        let k = (0..)
            .map(|i| format!("ks{i}"))
            .find(|k| cluster.node_for_key(k.as_bytes()) == port)
            .expect("a key");
        keys.push(k);
    }
    let mut c = envoy.raw_client();
    for k in &keys {
        assert_eq!(c.cmd(&["SET", k, "v"]), Resp::ok());
    }
    let mut seen_space: Vec<String> = (0..3)
        .map(|_| match space.read_reply() {
            Resp::Array(v) => v[2].text().unwrap_or_default(),
            other => panic!("{other:?}"),
        })
        .collect();
    seen_space.sort();
    let mut want: Vec<String> = keys.iter().map(|k| format!("__keyspace@0__:{k}")).collect();
    want.sort();
    assert_eq!(seen_space, want);
    let mut seen_event: Vec<String> = (0..3)
        .map(|_| match event.read_reply() {
            Resp::Array(v) => v[2].text().unwrap_or_default(),
            other => panic!("{other:?}"),
        })
        .collect();
    seen_event.sort();
    let mut want_keys = keys.clone();
    want_keys.sort();
    assert_eq!(seen_event, want_keys);
    // `*` got 6 notifications (keyspace and keyevent per SET); then an
    // ordinary message comes exactly once.
    for _ in 0..6 {
        assert!(matches!(all.read_reply(), Resp::Array(_)));
    }
    c.cmd(&["PUBLISH", "plain", "once"]);
    let Resp::Array(v) = all.read_reply() else {
        panic!("message")
    };
    assert_eq!(v[2].text().as_deref(), Some("plain"));
    all.set_timeout(Duration::from_millis(300));
    assert!(all.try_read_reply().is_err(), "no duplicate of the message");
}

/// A subscriber that does not read falls `pubsub_output_limit` behind and
/// is disconnected and counted; a fast subscriber on the same channel
/// (and worker) gets every message.
#[test]
fn a_slow_subscriber_is_disconnected_and_a_fast_one_keeps_receiving() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(
        &cluster,
        json!({ "pubsub_output_limit": 4194304 }),
    ));
    let mut slow = envoy.raw_client();
    slow.cmd(&["SUBSCRIBE", "firehose"]);
    let mut fast = envoy.raw_client();
    fast.cmd(&["SUBSCRIBE", "firehose"]);
    const N: usize = 3000;
    let reader = std::thread::spawn(move || {
        fast.set_timeout(Duration::from_secs(20));
        let mut n = 0;
        while n < N {
            match fast.read_reply() {
                Resp::Array(v) if v.len() == 3 => n += 1,
                other => panic!("fast subscriber got {other:?}"),
            }
        }
        n
    });
    let payload = "x".repeat(16 * 1024);
    let mut p = envoy.raw_client();
    for _ in 0..N {
        p.cmd(&["PUBLISH", "firehose", &payload]);
    }
    assert_eq!(
        reader.join().expect("fast reader"),
        N,
        "the fast one got everything"
    );
    let stat = format!("{STAT}pubsub_slow_disconnects");
    assert!(
        wait_until(Duration::from_secs(5), || envoy.stat(&stat) == Some(1)),
        "slow subscriber counted: {:?}",
        envoy.stat(&stat)
    );
    // The slow client's connection is closed: after what was written, EOF.
    slow.set_timeout(Duration::from_secs(5));
    let mut frames = 0;
    let closed = loop {
        match slow.try_read_reply() {
            Ok(_) => frames += 1,
            Err(e) => break e,
        }
    };
    assert!(frames < N, "the slow client was cut off ({frames} frames)");
    assert_ne!(
        closed.kind(),
        std::io::ErrorKind::WouldBlock,
        "closed, not idle: {closed}"
    );
    assert_ne!(
        closed.kind(),
        std::io::ErrorKind::TimedOut,
        "closed, not idle: {closed}"
    );
}

/// `redis-cli subscribe` through the proxy prints the acknowledgement and
/// the messages as it does against Redis (published through the proxy and
/// on a node).
#[test]
fn redis_cli_subscribe_prints_messages() {
    use std::io::Read;
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &envoy.port().to_string(), "subscribe", "cli"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run redis-cli");
    let mut admin = envoy.raw_client();
    assert!(
        wait_until(Duration::from_secs(5), || {
            admin.cmd(&["PUBSUB", "NUMSUB", "cli"])
                == Resp::Array(vec![Resp::bulk("cli"), Resp::Int(1)])
        }),
        "redis-cli subscribed"
    );
    assert_eq!(admin.cmd(&["PUBLISH", "cli", "via-proxy"]), Resp::Int(1));
    let node = cluster.master_ports()[1];
    RawClient::connect(node).cmd(&["PUBLISH", "cli", "on-node"]);
    let want = "subscribe\ncli\n1\nmessage\ncli\nvia-proxy\nmessage\ncli\non-node\n";
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while out.len() < want.len() {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    });
    let printed = wait_until(Duration::from_secs(5), || reader.is_finished());
    // Our own child, by PID (also when it printed too little).
    let _ = child.kill();
    let _ = child.wait();
    assert!(printed, "redis-cli printed the messages");
    let out = reader.join().expect("reader");
    assert_eq!(String::from_utf8_lossy(&out), want);
}

/// A channel's last subscriber leaves and a new client subscribes to it
/// again: the upstream subscription is dropped and made again, and the new
/// client gets its acknowledgement and the messages (the link's frames
/// that arrived while no session was subscribed must not be lost).
#[test]
fn a_channel_subscribed_again_after_its_last_subscriber_left_works() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    for round in 0..5 {
        let mut a = envoy.raw_client();
        let Resp::Array(ack) = a.cmd(&["SUBSCRIBE", "again"]) else {
            panic!("round {round}: ack")
        };
        assert_eq!(ack[2], Resp::Int(1), "round {round}");
        drop(a);
        std::thread::sleep(Duration::from_millis(100 * (round % 2)));
        let mut b = envoy.raw_client();
        b.set_timeout(Duration::from_secs(3));
        assert_eq!(
            b.cmd(&["SUBSCRIBE", "again"]),
            Resp::Array(vec![
                Resp::bulk("subscribe"),
                Resp::bulk("again"),
                Resp::Int(1)
            ]),
            "round {round}"
        );
        let mut p = envoy.raw_client();
        assert_eq!(
            p.cmd(&["PUBLISH", "again", "m"]),
            Resp::Int(1),
            "round {round}"
        );
        assert_eq!(
            b.read_reply(),
            Resp::Array(vec![
                Resp::bulk("message"),
                Resp::bulk("again"),
                Resp::bulk("m")
            ]),
            "round {round}"
        );
    }
}

/// A busy channel's subscribers receive while it is busy. Envoy writes a
/// connection's output only in the next turn of its event loop; fanning a
/// message out to 2,000 subscribers takes longer than the gap between two
/// messages, so a proxy that fans out again whenever the next message
/// arrives never ends the turn, and its subscribers get nothing until the
/// publisher stops (then everything at once, after Envoy buffered it all).
/// The proxy fans out once per turn, the next messages together.
#[test]
fn subscribers_of_a_busy_channel_receive_while_it_is_busy() {
    const SUBSCRIBERS: usize = 2000;
    const MESSAGES: usize = 2000;
    const GAP: Duration = Duration::from_millis(2);
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    // Classic channels live on the owner of slot 0; publishing there puts
    // each message on the proxy's subscriber link as it is published.
    let owner = cluster.node_for_slot(0);
    // These never read: the proxy holds their messages (well within
    // pubsub_output_limit) and keeps fanning out to them.
    let mut idle: Vec<RawClient> = (0..SUBSCRIBERS - 1)
        .map(|_| {
            let mut c = envoy.raw_client();
            c.send_cmd(&["SUBSCRIBE", "busy"]);
            c
        })
        .collect();
    for c in &mut idle {
        let ack = c.read_reply();
        assert!(
            matches!(&ack, Resp::Array(v) if v.len() == 3),
            "subscribe acknowledged: {ack:?}"
        );
    }
    let mut reader = envoy.raw_client();
    reader.cmd(&["SUBSCRIBE", "busy"]);
    reader.set_timeout(Duration::from_secs(60));
    let start = Instant::now();
    let publisher = std::thread::spawn(move || {
        let mut p = RawClient::connect(owner);
        for i in 0..MESSAGES {
            let due = start + GAP * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            p.send(&encode_cmd(&["PUBLISH", "busy", &i.to_string()]))
                .expect("publish");
        }
        let ended = start.elapsed();
        for _ in 0..MESSAGES {
            p.read_reply();
        }
        ended
    });
    let mut at = Vec::with_capacity(MESSAGES);
    while at.len() < MESSAGES {
        match reader.read_reply() {
            Resp::Array(v) if v.len() == 3 => {
                assert_eq!(
                    v[2],
                    Resp::Bulk(at.len().to_string().into_bytes()),
                    "messages in order, none lost"
                );
                at.push(start.elapsed());
            }
            other => panic!("reader got {other:?}"),
        }
    }
    let ended = publisher.join().expect("publisher");
    let during = at.iter().filter(|t| **t < ended).count();
    eprintln!(
        "publishing took {ended:?}; first message after {:?}, {during} of {MESSAGES} received before it ended, last after {:?}",
        at[0],
        at[MESSAGES - 1]
    );
    assert!(
        at[0] < Duration::from_secs(1),
        "the first message arrived after {:?}",
        at[0]
    );
    assert!(
        during >= MESSAGES / 2,
        "only {during} of {MESSAGES} messages arrived while the channel was busy ({ended:?})"
    );
    drop(idle);
}

/// Keyspace notifications after a manual failover: the demoted master
/// (now a replica, still alive) fires the events of the writes it
/// replicates, as the new master does; the proxy leaves it, so each write
/// is seen once.
#[test]
fn keyspace_notifications_come_once_after_a_failover() {
    let cluster = Cluster::start(3, 1);
    for p in cluster.ports() {
        let r = RawClient::connect(p).cmd(&["CONFIG", "SET", "notify-keyspace-events", "KA"]);
        assert_eq!(r, Resp::ok());
    }
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut space = envoy.raw_client();
    space.cmd(&["PSUBSCRIBE", "__keyspace@0__:kf*"]);
    let master = cluster.node_for_key(b"kf");
    let slot = cluster.keyslot(b"kf");
    let replica = cluster
        .slot_map()
        .into_iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .and_then(|r| r.replicas.first().copied())
        .expect("a replica of the shard");
    assert_eq!(
        RawClient::connect(replica).cmd(&["CLUSTER", "FAILOVER"]),
        Resp::ok()
    );
    assert!(
        wait_until(Duration::from_secs(10), || cluster.node_for_key(b"kf")
            == replica),
        "replica {replica} promoted"
    );
    // Writes through the proxy until it follows the new master, then a
    // moment for the hub to leave the old one.
    let mut c = envoy.raw_client();
    for i in 0..20 {
        assert_eq!(c.cmd(&["SET", &format!("kf{{kf}}{i}"), "v"]), Resp::ok());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    space.set_timeout(Duration::from_millis(300));
    while space.try_read_reply().is_ok() {}
    assert_eq!(c.cmd(&["SET", "kf", "once"]), Resp::ok());
    space.set_timeout(Duration::from_secs(5));
    match space.read_reply() {
        Resp::Array(v) => assert_eq!(v[2], Resp::bulk("__keyspace@0__:kf")),
        other => panic!("{other:?}"),
    }
    space.set_timeout(Duration::from_secs(1));
    match space.try_read_reply() {
        Err(_) => {}
        Ok(again) => panic!("the event came twice (old master {master}): {again:?}"),
    }
}

/// `PUBSUB NUMSUB` counts a client once its subscription is on the node,
/// as Redis counts a client once it would get a `PUBLISH`: a publisher
/// that waits for the count (redis-py's `run_in_thread` tests do) then
/// never publishes into the gap.
#[test]
fn numsub_counts_a_subscriber_once_the_node_has_its_subscription() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let home = cluster.node_for_slot(0);
    let numsub = || envoy.raw_client().cmd(&["PUBSUB", "NUMSUB", "gap"]);
    // The node holds the proxy's SUBSCRIBE for a while.
    assert_eq!(
        RawClient::connect(home).cmd(&["CLIENT", "PAUSE", "1500", "ALL"]),
        Resp::ok()
    );
    let mut c = envoy.raw_client();
    c.send_cmd(&["SUBSCRIBE", "gap"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        numsub(),
        Resp::Array(vec![Resp::bulk("gap"), Resp::Int(0)]),
        "counted before the node has the subscription"
    );
    c.set_timeout(Duration::from_secs(10));
    assert_eq!(
        c.read_reply(),
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("gap"),
            Resp::Int(1)
        ])
    );
    assert_eq!(numsub(), Resp::Array(vec![Resp::bulk("gap"), Resp::Int(1)]));
    let mut p = envoy.raw_client();
    assert_eq!(p.cmd(&["PUBLISH", "gap", "m"]), Resp::Int(1));
    assert_eq!(
        message_of(&mut c),
        ("message".into(), "gap".into(), "m".into())
    );
}
