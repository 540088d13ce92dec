//! `CLIENT PAUSE|UNPAUSE|LIST|INFO|KILL` through the proxy, each scenario
//! run against a standalone Redis 7 and through Envoy with the module, and
//! the observations compared: which commands a pause holds, when they run,
//! INFO's `blocked_clients`/`connected_clients`, `CLIENT LIST` fields, and
//! `CLIENT KILL`'s selection, replies and errors, and a subscribed
//! client's counts, flag and type.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// How long a held command must stay unanswered to count as held.
const HELD: Duration = Duration::from_millis(400);

fn client(port: u16) -> RawClient {
    let mut c = RawClient::connect(port);
    c.set_timeout(Duration::from_secs(5));
    c
}

/// One reply, or `held` when none comes within [`HELD`].
fn reply_or_held(c: &mut RawClient) -> String {
    c.set_timeout(HELD);
    let out = match c.read_outcome() {
        Outcome::Reply(r) => format!("{r:?}"),
        Outcome::TimedOut => "held".to_string(),
        Outcome::Closed => "closed".to_string(),
    };
    c.set_timeout(Duration::from_secs(5));
    out
}

fn info_field(c: &mut RawClient, name: &str) -> String {
    let text = c.cmd(&["INFO", "clients"]).text().expect("INFO text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in INFO: {text}"))
        .trim()
        .to_string()
}

/// `blocked_clients` once it reaches `n` (a held command registers as soon
/// as the server has read it), else its last value.
fn blocked(c: &mut RawClient, n: usize) -> String {
    let mut last = String::new();
    wait_until(Duration::from_secs(3), || {
        last = info_field(c, "blocked_clients");
        last == n.to_string()
    });
    format!("blocked_clients={last}")
}

/// The pause scenario; every observation is a line, compared across servers.
fn pause_scenario(port: u16) -> Vec<String> {
    let mut log = Vec::new();
    let mut admin = client(port);
    admin.cmd(&["FLUSHALL"]);
    let ro_fn = "#!lua name=pauselib\nredis.register_function{function_name='ro', callback=function() return 'r' end, flags={'no-writes'}}\nredis.register_function('rw', function() return 'w' end)";
    log.push(format!(
        "{:?}",
        admin.cmd(&["FUNCTION", "LOAD", "REPLACE", ro_fn])
    ));
    admin.cmd(&["SET", "{t}k", "v0"]);
    admin.cmd(&["PFADD", "{t}h", "a"]);
    log.push(format!(
        "{:?}",
        admin.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"])
    ));
    // Reads and read-only scripts pass; errors found before running are
    // answered at once.
    let mut reader = client(port);
    for cmd in [
        &["GET", "{t}k"][..],
        &["PING"],
        &["EVAL", "#!lua flags=no-writes\nreturn 2", "0"],
        &["EVAL_RO", "return redis.call('get', KEYS[1])", "1", "{t}k"],
        &["FCALL", "ro", "0"],
        &["FCALL_RO", "ro", "0"],
        &["SET", "{t}k"],
        &["MULTI"],
        &["GET", "{t}k"],
        &["EXEC"],
    ] {
        reader.send_cmd(cmd);
        log.push(format!("{cmd:?}: {}", reply_or_held(&mut reader)));
    }
    log.push(blocked(&mut admin, 0));
    // Each of these waits for the pause, and the client's later commands
    // behind it.
    let held: Vec<&[&str]> = vec![
        &["SET", "{t}k", "v1"],
        &["PFCOUNT", "{t}h"],
        &["PUBLISH", "ch", "m"],
        &["EVAL", "return 1", "0"],
        &["FCALL", "rw", "0"],
    ];
    let mut writers = Vec::new();
    for (i, cmd) in held.iter().enumerate() {
        let mut w = client(port);
        w.send_cmd(cmd);
        w.send_cmd(&["ECHO", "behind"]);
        log.push(format!("{cmd:?}: {}", reply_or_held(&mut w)));
        log.push(blocked(&mut admin, i + 1));
        writers.push(w);
    }
    // A transaction that writes waits at EXEC, not while queueing reads.
    let mut txn = client(port);
    txn.cmd(&["MULTI"]);
    txn.send_cmd(&["INCR", "{t}n"]);
    log.push(format!("INCR in MULTI: {}", reply_or_held(&mut txn)));
    log.push(blocked(&mut admin, held.len() + 1));
    log.push(format!("{:?}", admin.cmd(&["CLIENT", "UNPAUSE"])));
    for (cmd, w) in held.iter().zip(writers.iter_mut()) {
        log.push(format!("{cmd:?} after UNPAUSE: {:?}", w.read_replies(2)));
    }
    txn.send_cmd(&["EXEC"]);
    log.push(format!(
        "INCR, EXEC after UNPAUSE: {:?}",
        txn.read_replies(2)
    ));
    log.push(blocked(&mut admin, 0));

    // The timeout ends the pause without UNPAUSE; ALL holds reads too.
    admin.cmd(&["CLIENT", "PAUSE", "1500", "ALL"]);
    let started = Instant::now();
    let mut r = client(port);
    r.send_cmd(&["GET", "{t}k"]);
    log.push(format!("GET under ALL: {}", reply_or_held(&mut r)));
    log.push(format!("GET at the end of the pause: {:?}", r.read_reply()));
    log.push(format!(
        "ended by its timeout: {}",
        started.elapsed() >= Duration::from_millis(1400)
    ));

    // CLIENT PAUSE inside MULTI starts once EXEC ran: the transaction's
    // own write after it is not held, a write after EXEC is.
    admin.cmd(&["MULTI"]);
    admin.cmd(&["SET", "{t}a", "1"]);
    admin.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    admin.cmd(&["SET", "{t}b", "2"]);
    log.push(format!("EXEC: {:?}", admin.cmd(&["EXEC"])));
    let mut w = client(port);
    w.send_cmd(&["SET", "{t}c", "3"]);
    log.push(format!("SET after EXEC: {}", reply_or_held(&mut w)));
    log.push(format!(
        "{:?}",
        admin.cmd(&["MGET", "{t}a", "{t}b", "{t}c"])
    ));
    admin.cmd(&["CLIENT", "UNPAUSE"]);
    log.push(format!("SET after UNPAUSE: {:?}", w.read_reply()));
    for bad in [
        &["CLIENT", "PAUSE", "-1"][..],
        &["CLIENT", "PAUSE", "x"],
        &["CLIENT", "PAUSE", "10", "SOME"],
    ] {
        log.push(format!("{bad:?}: {:?}", admin.cmd(bad)));
    }
    log
}

#[test]
fn client_pause_holds_what_redis_holds() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let redis = StandaloneRedis::start();
    let want = pause_scenario(redis.port());
    let got = pause_scenario(envoy.port());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "through the proxy vs Redis");
    }
    assert_eq!(got.len(), want.len());
    // The nodes were never paused: the pause is the proxy's.
    for port in cluster.master_ports() {
        let mut n = client(port);
        assert_eq!(info_field(&mut n, "blocked_clients"), "0");
    }
}

fn expired_keys(c: &mut RawClient) -> i64 {
    let text = c.cmd(&["INFO", "stats"]).text().expect("INFO text");
    text.lines()
        .find_map(|l| l.strip_prefix("expired_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no expired_keys in INFO: {text}"))
}

/// Keys whose TTL passes during a pause: gone for readers, but not expired
/// (deleted) until the pause ends, also when the pause came from a
/// transaction. Returns the observations and how many keys were expired
/// while paused.
fn expiry_scenario(port: u16) -> (Vec<String>, i64) {
    let mut log = Vec::new();
    let mut c = client(port);
    c.cmd(&["FLUSHALL"]);
    let before = expired_keys(&mut c);
    assert_eq!(c.cmd(&["SET", "e{t}", "v", "PX", "100"]), Resp::ok());
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    c.cmd(&["SET", "f{t}", "v", "PX", "100"]);
    c.cmd(&["CLIENT", "PAUSE", "20000", "WRITE"]);
    log.push(format!("EXEC: {:?}", c.cmd(&["EXEC"])));
    std::thread::sleep(Duration::from_millis(400));
    log.push(format!("GET during: {:?}", c.cmd(&["GET", "e{t}"])));
    log.push(format!("GET during: {:?}", c.cmd(&["GET", "f{t}"])));
    let during = expired_keys(&mut c) - before;
    log.push(format!("UNPAUSE: {:?}", c.cmd(&["CLIENT", "UNPAUSE"])));
    c.cmd(&["GET", "e{t}"]);
    c.cmd(&["GET", "f{t}"]);
    log.push(format!("expired after: {}", expired_keys(&mut c) - before));
    (log, during)
}

/// With `allow_admin_commands` the masters are paused too: they stop
/// expiring keys as a paused Redis does, and everything else a pause does
/// stays as on Redis. Without it, only the proxy's clients are paused.
#[test]
fn with_the_admin_setting_a_pause_also_stops_the_masters_expiring_keys() {
    let cluster = Cluster::start(3, 0);
    let admin = json!({ "allow_admin_commands": true });
    let envoy = Envoy::start(module_config(&cluster, admin));
    let redis = StandaloneRedis::start();
    let (want, want_during) = expiry_scenario(redis.port());
    assert_eq!(want_during, 0, "Redis expires nothing while paused");
    let (got, got_during) = expiry_scenario(envoy.port());
    assert_eq!(got, want, "through the proxy vs Redis");
    assert_eq!(got_during, 0);
    let want = pause_scenario(redis.port());
    let got = pause_scenario(envoy.port());
    assert_eq!(got, want, "the rest of a pause, masters paused too");
    drop(envoy);

    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let (_, during) = expiry_scenario(envoy.port());
    assert!(
        during > 0,
        "without the setting the nodes are not paused and expire keys"
    );
}

/// `name=value` pairs of a `CLIENT LIST` line.
fn fields(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field<'a>(f: &'a [(String, String)], name: &str) -> &'a str {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {f:?}"))
}

/// The CLIENT LIST/INFO/KILL scenario: what must match Redis exactly.
fn list_kill_scenario(port: u16) -> Vec<String> {
    let mut log = Vec::new();
    let mut me = client(port);
    let my_addr = me.stream_clone().local_addr().unwrap().to_string();
    me.cmd(&["CLIENT", "SETNAME", "me"]);
    let info = me.cmd(&["CLIENT", "INFO"]).text().unwrap();
    let f = fields(info.trim_end());
    // Field names and order as Redis 7.0 has them.
    log.push(
        f.iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    for name in [
        "name",
        "flags",
        "db",
        "sub",
        "psub",
        "ssub",
        "multi",
        "qbuf",
        "multi-mem",
        "obl",
        "oll",
        "omem",
        "events",
        "cmd",
        "user",
        "redir",
        "resp",
    ] {
        log.push(format!("{name}={}", field(&f, name)));
    }
    log.push(format!(
        "addr is the client's own: {}",
        field(&f, "addr") == my_addr
    ));
    log.push(format!(
        "laddr is the server's: {}",
        field(&f, "laddr") == format!("127.0.0.1:{port}")
    ));
    let id = me.cmd(&["CLIENT", "ID"]);
    let Resp::Int(my_id) = id else {
        panic!("CLIENT ID: {id:?}")
    };
    log.push(format!(
        "id matches: {}",
        field(&f, "id") == my_id.to_string()
    ));
    // Inside MULTI the list shows the queue.
    let mut other = client(port);
    other.cmd(&["CLIENT", "SETNAME", "other"]);
    let Resp::Int(other_id) = other.cmd(&["CLIENT", "ID"]) else {
        panic!("CLIENT ID")
    };
    other.cmd(&["MULTI"]);
    other.cmd(&["SET", "{t}x", "1"]);
    let list = me.cmd(&["CLIENT", "LIST"]).text().unwrap();
    let theirs = list
        .lines()
        .find(|l| l.contains(" name=other "))
        .expect("the other client is listed");
    let f = fields(theirs);
    for name in ["flags", "multi", "cmd"] {
        log.push(format!("other {name}={}", field(&f, name)));
    }
    let by_id = me
        .cmd(&[
            "CLIENT",
            "LIST",
            "ID",
            &other_id.to_string(),
            "999999",
            &my_id.to_string(),
        ])
        .text()
        .unwrap();
    let names: Vec<&str> = by_id
        .lines()
        .map(|l| l.split(" name=").nth(1).unwrap_or_default())
        .map(|rest| rest.split(' ').next().unwrap_or_default())
        .collect();
    log.push(format!("LIST ID: {names:?}"));
    log.push(format!(
        "LIST TYPE pubsub: {:?}",
        me.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"])
    ));
    for bad in [
        &["CLIENT", "LIST", "ID", "0"][..],
        &["CLIENT", "LIST", "ID", "x"],
        &["CLIENT", "LIST", "TYPE", "x"],
        &["CLIENT", "LIST", "x"],
        &["CLIENT", "KILL"],
        &["CLIENT", "KILL", "ID", "10", "wrong_arg"],
        &["CLIENT", "KILL", "ID", "str"],
        &["CLIENT", "KILL", "ID", "0"],
        &["CLIENT", "KILL", "TYPE", "wrong_type"],
        &["CLIENT", "KILL", "USER", "wrong_user"],
        &["CLIENT", "KILL", "SKIPME", "maybe"],
        &["CLIENT", "KILL", "10.9.9.9:1"],
    ] {
        log.push(format!("{bad:?}: {:?}", me.cmd(bad)));
    }
    // Killed by ID: the connection closes.
    log.push(format!(
        "KILL ID: {:?}",
        me.cmd(&["CLIENT", "KILL", "ID", &other_id.to_string()])
    ));
    log.push(format!("the killed client: {}", reply_or_held(&mut other)));
    // Old style by address.
    let mut by_addr = client(port);
    let addr = by_addr.stream_clone().local_addr().unwrap().to_string();
    by_addr.cmd(&["PING"]);
    log.push(format!(
        "KILL addr: {:?}",
        me.cmd(&["CLIENT", "KILL", &addr])
    ));
    log.push(format!("killed by addr: {}", reply_or_held(&mut by_addr)));
    // connected_clients counts the server's clients; SKIPME yes spares
    // the asker, SKIPME no closes it after the reply.
    let mut extra = vec![client(port), client(port)];
    for c in &mut extra {
        c.cmd(&["PING"]);
    }
    let connected: i64 = info_field(&mut me, "connected_clients").parse().unwrap();
    log.push(format!("connected_clients={connected}"));
    log.push(format!(
        "SKIPME yes: {:?}",
        me.cmd(&["CLIENT", "KILL", "USER", "default", "SKIPME", "yes"])
    ));
    log.push(format!(
        "after: {}",
        info_field(&mut me, "connected_clients")
    ));
    log.push(format!(
        "SKIPME no: {:?}",
        me.cmd(&["CLIENT", "KILL", "SKIPME", "no"])
    ));
    me.send_cmd(&["PING"]);
    log.push(format!(
        "the asker after SKIPME no: {}",
        reply_or_held(&mut me)
    ));
    log
}

#[test]
fn client_list_info_and_kill_like_redis() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let redis = StandaloneRedis::start();
    let want = list_kill_scenario(redis.port());
    let got = list_kill_scenario(envoy.port());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "through the proxy vs Redis");
    }
    assert_eq!(got.len(), want.len());
    // The nodes' own clients (the proxy's connections) were not touched.
    let mut c = client(envoy.port());
    assert_eq!(c.cmd(&["SET", "{t}after", "1"]), Resp::ok());
    assert_eq!(c.cmd(&["GET", "{t}after"]), Resp::bulk("1"));
}

/// A MONITOR line without what differs between servers: the time, and
/// the client's address (`[0 lua]`, a script's command, is kept).
fn monitor_line(r: Resp) -> String {
    let Resp::Simple(line) = r else {
        panic!("MONITOR line: {r:?}")
    };
    let rest = line.split_once(' ').map_or("", |(_, rest)| rest);
    match rest.split_once("] ") {
        Some(("[0 lua", args)) => format!("lua: {args}"),
        Some((_, args)) => format!("client: {args}"),
        None => format!("?: {rest}"),
    }
}

fn monitor_scenario(port: u16) -> Vec<String> {
    let mut log = Vec::new();
    let mut m = client(port);
    log.push(format!("{:?}", m.cmd(&["MONITOR"])));
    let mut c = client(port);
    for cmd in [
        &["SET", "{t}k", "v"][..],
        &["GET", "{t}k"],
        &[
            "EVAL",
            "redis.call('set', KEYS[1], ARGV[1])",
            "1",
            "{t}e",
            "x y",
        ],
        &["CONFIG", "GET", "maxmemory"],
        &["NOSUCHCOMMAND"],
        &["MULTI"],
        &["SET", "{t}m", "1"],
        &["EXEC"],
        &["AUTH", "nope"],
        &["ECHO", "\"quoted\"\n"],
    ] {
        c.cmd(cmd);
    }
    // Admin commands and unknown ones are not logged.
    for _ in 0..9 {
        log.push(monitor_line(m.read_reply()));
    }
    log.push(format!("monitor reads keys: {:?}", m.cmd(&["GET", "{t}k"])));
    log.push(format!("{:?}", m.cmd(&["RESET"])));
    let list = c.cmd(&["CLIENT", "LIST"]).text().unwrap();
    log.push(format!("a monitor listed: {}", list.contains("flags=O")));
    c.cmd(&["SET", "{t}after", "1"]);
    log.push(format!("after RESET: {:?}", m.cmd(&["PING"])));
    log
}

/// The proxy's MONITOR log with each script line (`lua: …`) moved to just
/// after its script's `EVAL` line, checking it came after it. Script lines
/// come from the masters' own MONITORs, on other sockets (often read by
/// another Envoy worker) than the clients' commands, so a command a client
/// sent after the script ended can be logged before them (README, "Clients
/// of the proxy"); every other line keeps Redis's order.
fn script_lines_after_their_script(mut log: Vec<String>) -> Vec<String> {
    let Some(lua) = log.iter().position(|l| l.starts_with("lua: ")) else {
        return log;
    };
    let eval = log
        .iter()
        .position(|l| l.starts_with("client: \"EVAL\""))
        .expect("the EVAL line");
    assert!(lua > eval, "a script line before its EVAL: {log:?}");
    let line = log.remove(lua);
    log.insert(eval + 1, line);
    log
}

#[test]
fn monitor_logs_like_redis_with_the_nodes_script_commands() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let redis = StandaloneRedis::start();
    let want = monitor_scenario(redis.port());
    let got = script_lines_after_their_script(monitor_scenario(envoy.port()));
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "through the proxy vs Redis");
    }
    assert_eq!(got.len(), want.len());
    // RESET closed the proxy's monitors on the masters.
    for port in cluster.master_ports() {
        let mut n = client(port);
        let gone = wait_until(Duration::from_secs(5), || {
            let list = n.cmd(&["CLIENT", "LIST"]).text().unwrap_or_default();
            !list.contains("flags=O")
        });
        assert!(gone, "a MONITOR left open on {port}");
    }
}

/// The `CLIENT LIST` fields of the client named `name`, as seen by `me`.
fn line_of(me: &mut RawClient, name: &str) -> Vec<(String, String)> {
    let list = me.cmd(&["CLIENT", "LIST"]).text().unwrap();
    let line = list
        .lines()
        .find(|l| l.contains(&format!(" name={name} ")))
        .unwrap_or_else(|| panic!("{name} is not listed:\n{list}"));
    fields(line)
}

/// Named clients of a `CLIENT LIST TYPE t`, sorted.
fn names_of_type(me: &mut RawClient, t: &str) -> Vec<String> {
    let list = me.cmd(&["CLIENT", "LIST", "TYPE", t]).text().unwrap();
    let mut names: Vec<String> = list
        .lines()
        .map(fields)
        .map(|f| field(&f, "name").to_string())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names
}

/// A subscribed client in `CLIENT LIST`/`CLIENT INFO`: what must match
/// Redis exactly.
fn subscribed_scenario(port: u16) -> Vec<String> {
    let mut log = Vec::new();
    let mut me = client(port);
    me.cmd(&["CLIENT", "SETNAME", "me"]);
    let mut s = client(port);
    s.cmd(&["CLIENT", "SETNAME", "s"]);
    s.send_cmd(&["SUBSCRIBE", "a", "b"]);
    s.send_cmd(&["PSUBSCRIBE", "p*"]);
    s.send_cmd(&["SSUBSCRIBE", "{x}1"]);
    s.read_replies(4);
    let mut show = |me: &mut RawClient, what: &str| {
        let f = line_of(me, "s");
        let shown: Vec<String> = ["flags", "sub", "psub", "ssub", "cmd"]
            .iter()
            .map(|n| format!("{n}={}", field(&f, n)))
            .collect();
        log.push(format!("{what}: {}", shown.join(" ")));
    };
    show(&mut me, "subscribed");
    s.send_cmd(&["UNSUBSCRIBE", "a"]);
    s.read_replies(1);
    show(&mut me, "one channel left");
    s.send_cmd(&["UNSUBSCRIBE"]);
    s.send_cmd(&["PUNSUBSCRIBE"]);
    s.read_replies(2);
    show(&mut me, "a shard channel left");
    s.send_cmd(&["SUNSUBSCRIBE"]);
    s.read_replies(1);
    show(&mut me, "none left");
    // RESP3: subscribed and still running commands; its own CLIENT INFO.
    let mut r3 = client(port);
    r3.cmd(&["HELLO", "3", "SETNAME", "r3"]);
    r3.send_cmd(&["SUBSCRIBE", "c"]);
    r3.read_replies(1);
    let info = match r3.cmd(&["CLIENT", "INFO"]) {
        Resp::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("CLIENT INFO: {other:?}"),
    };
    let f = fields(info.trim_end());
    for n in ["flags", "sub", "psub", "ssub", "resp"] {
        log.push(format!("r3 own {n}={}", field(&f, n)));
    }
    s.send_cmd(&["SSUBSCRIBE", "{x}2"]);
    s.read_replies(1);
    log.push(format!(
        "TYPE pubsub: {:?}",
        names_of_type(&mut me, "pubsub")
    ));
    log.push(format!(
        "TYPE normal: {:?}",
        names_of_type(&mut me, "normal")
    ));
    log.push(format!(
        "KILL TYPE pubsub: {:?}",
        me.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
    ));
    log.push(format!("killed subscriber: {}", reply_or_held(&mut s)));
    log
}

#[test]
fn client_list_shows_subscriptions_like_redis() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let redis = StandaloneRedis::start();
    let want = subscribed_scenario(redis.port());
    assert_eq!(
        want[0], "subscribed: flags=P sub=2 psub=1 ssub=1 cmd=ssubscribe",
        "the reference"
    );
    let got = subscribed_scenario(envoy.port());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(g, w, "through the proxy vs Redis");
    }
    assert_eq!(got.len(), want.len());
}
