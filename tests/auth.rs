//! Downstream AUTH (clients must authenticate to the proxy) and upstream
//! AUTH (the proxy authenticates to password-protected nodes).

mod common;

use common::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn err_starts(r: &Resp, prefix: &str) -> bool {
    matches!(r, Resp::Error(e) if e.starts_with(prefix))
}

#[test]
fn clients_must_authenticate_when_passwords_are_configured() {
    let cluster = Cluster::start(3, 0);
    let mut cfg = module_config(&cluster, json!({}));
    cfg["downstream_auth_passwords"] = json!([{ "inline_string": "pw-one" }, "pw-two"]);
    let envoy = Envoy::start(cfg);

    let mut c = RawClient::connect(envoy.port());
    let r = c.cmd(&["GET", "k"]);
    assert!(err_starts(&r, "NOAUTH"), "unauthenticated GET: {r:?}");
    let r = c.cmd(&["AUTH", "wrong"]);
    assert!(err_starts(&r, "WRONGPASS"), "{r:?}");
    let r = c.cmd(&["SET", "k", "v"]);
    assert!(err_starts(&r, "NOAUTH"), "still unauthenticated: {r:?}");
    assert_eq!(c.cmd(&["AUTH", "pw-two"]), Resp::ok());
    assert_eq!(c.cmd(&["SET", "k", "v"]), Resp::ok());
    assert_eq!(c.cmd(&["GET", "k"]), Resp::bulk("v"));

    // HELLO with AUTH authenticates and switches protocol in one go.
    let mut c = RawClient::connect(envoy.port());
    let r = c.cmd(&["HELLO", "3"]);
    assert!(err_starts(&r, "NOAUTH"), "{r:?}");
    let r = c.cmd(&["HELLO", "3", "AUTH", "default", "pw-one"]);
    assert!(matches!(r, Resp::Map(_)), "{r:?}");
    assert_eq!(c.cmd(&["GET", "k"]), Resp::bulk("v"));

    // The secrets never reach Envoy's log.
    let log = envoy.log();
    assert!(
        !log.contains("pw-one") && !log.contains("pw-two"),
        "secret in log"
    );
}

#[test]
fn a_configured_username_must_match() {
    let cluster = Cluster::start(3, 0);
    let mut cfg = module_config(&cluster, json!({}));
    cfg["downstream_auth_username"] = json!("app");
    cfg["downstream_auth_passwords"] = json!(["s3cret"]);
    let envoy = Envoy::start(cfg);
    let mut c = RawClient::connect(envoy.port());
    assert!(err_starts(&c.cmd(&["AUTH", "s3cret"]), "WRONGPASS"));
    assert!(err_starts(&c.cmd(&["AUTH", "bob", "s3cret"]), "WRONGPASS"));
    assert_eq!(c.cmd(&["AUTH", "app", "s3cret"]), Resp::ok());
    assert_eq!(c.cmd(&["PING"]), Resp::Simple("PONG".into()));
    // The client acts as the configured user: ACL WHOAMI, CLIENT LIST,
    // CLIENT KILL USER; RESET makes it unauthenticated again.
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]), Resp::bulk("app"));
    let list = c.cmd(&["CLIENT", "INFO"]).text().unwrap();
    assert!(list.contains(" user=app "), "{list}");
    assert!(err_starts(
        &c.cmd(&["CLIENT", "KILL", "USER", "bob"]),
        "ERR No such user 'bob'"
    ));
    assert_eq!(c.cmd(&["CLIENT", "KILL", "USER", "app"]), Resp::Int(0));
    assert!(err_starts(
        &c.cmd(&["ACL", "SETUSER", "bob"]),
        "ERR ACL SETUSER would change every node of the cluster: the proxy refuses it unless settings.allow_admin_commands is true"
    ));
    assert_eq!(c.cmd(&["RESET"]), Resp::Simple("RESET".into()));
    assert!(err_starts(&c.cmd(&["ACL", "WHOAMI"]), "NOAUTH"));
}

/// A password-protected Redis (standalone: treated as one node owning every
/// slot), killed on drop.
struct Protected {
    port: u16,
    child: Child,
}

impl Protected {
    fn start(password: &str) -> Protected {
        let port = alloc_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--requirepass", password])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        assert!(wait_until(Duration::from_secs(10), || {
            RawClient::try_connect(port, Duration::from_secs(1)).is_ok()
        }));
        Protected { port, child }
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn standalone_config(port: u16, password: &str) -> serde_json::Value {
    json!({
        "stat_prefix": "auth",
        "settings": { "op_timeout": "2s" },
        "clusters": { "main": {
            "seeds": [format!("127.0.0.1:{port}")],
            "auth_password": password,
        } },
        "prefix_routes": { "catch_all_route": { "cluster": "main" } },
    })
}

#[test]
fn the_proxy_authenticates_to_protected_nodes() {
    let node = Protected::start("up-pass");
    let envoy = Envoy::start(standalone_config(node.port, "up-pass"));
    let mut c = RawClient::connect(envoy.port());
    assert_eq!(c.cmd(&["SET", "a", "1"]), Resp::ok());
    assert_eq!(c.cmd(&["INCR", "a"]), Resp::Int(2));
    // Directly on the node (with its password) the write is there.
    let mut direct = RawClient::connect(node.port);
    assert_eq!(direct.cmd(&["AUTH", "up-pass"]), Resp::ok());
    assert_eq!(direct.cmd(&["GET", "a"]), Resp::bulk("2"));
    assert!(!envoy.log().contains("up-pass"), "secret in log");
}

#[test]
fn a_wrong_upstream_password_gives_errors_not_hangs() {
    let node = Protected::start("right");
    let envoy = Envoy::start(standalone_config(node.port, "wrong"));
    let mut c = RawClient::connect(envoy.port());
    c.set_timeout(Duration::from_secs(5));
    let r = c.cmd(&["GET", "a"]);
    assert!(r.is_error(), "expected an error, got {r:?}");
}

/// Without downstream auth of the proxy's own, `AUTH user pass` is checked
/// by the cluster and the client's commands then run as that user on the
/// nodes (ACL rules, `redis.acl_check_cmd`, transactions, blocking
/// commands); `ACL SETUSER`/`DELUSER` reach every node with the admin
/// setting; `RESET` makes the client the default user again.
#[test]
fn clients_act_as_the_cluster_users_they_authenticate_as() {
    let cluster = Cluster::start(3, 1);
    let cfg = module_config(&cluster, json!({ "allow_admin_commands": true }));
    let envoy = Envoy::start(cfg);
    let mut admin = RawClient::connect(envoy.port());
    let rules = [
        "on", ">pw", "~x*", "+set", "+get", "+eval", "+blpop", "+multi", "+exec",
    ];
    let mut setuser = vec!["ACL", "SETUSER", "bob"];
    setuser.extend(rules);
    assert_eq!(admin.cmd(&setuser), Resp::ok());
    // A cluster's users are each node's own: every node, replicas too.
    for port in cluster.ports() {
        let users = RawClient::connect(port).cmd(&["ACL", "USERS"]);
        assert!(
            matches!(&users, Resp::Array(u) if u.contains(&Resp::bulk("bob"))),
            "node {port}: {users:?}"
        );
    }

    let mut c = RawClient::connect(envoy.port());
    // A refused AUTH changes nothing, also for a command pipelined behind it.
    c.send_cmd(&["AUTH", "bob", "wrong"]);
    c.send_cmd(&["SET", "y0", "v"]);
    let r = c.read_replies(2);
    assert!(err_starts(&r[0], "WRONGPASS"), "{r:?}");
    assert_eq!(r[1], Resp::ok(), "still the default user");
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]), Resp::bulk("default"));

    // Accepted: commands pipelined right behind it run as bob.
    c.send_cmd(&["AUTH", "bob", "pw"]);
    c.send_cmd(&["SET", "y1", "v"]);
    let r = c.read_replies(2);
    assert_eq!(r[0], Resp::ok());
    assert!(err_starts(&r[1], "NOPERM"), "key outside ~x*: {r:?}");
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]), Resp::bulk("bob"));
    assert_eq!(c.cmd(&["SET", "x1", "v"]), Resp::ok());
    assert!(err_starts(&c.cmd(&["HSET", "x2", "f", "v"]), "NOPERM"));
    let check = |cmd: &str| format!("return redis.acl_check_cmd({cmd})");
    assert_eq!(
        c.cmd(&["EVAL", &check("'set','x3','1'"), "0"]),
        Resp::Int(1)
    );
    assert_eq!(
        c.cmd(&["EVAL", &check("'hset','x3','f','1'"), "0"]),
        Resp::Nil
    );
    let info = c.cmd(&["CLIENT", "INFO"]).text().unwrap();
    assert!(info.contains(" user=bob "), "{info}");
    // A transaction's and a blocking command's own connections are bob's too.
    assert_eq!(c.cmd(&["MULTI"]), Resp::ok());
    assert!(err_starts(&c.cmd(&["SET", "y2", "v"]), "NOPERM"));
    assert!(err_starts(&c.cmd(&["EXEC"]), "EXECABORT"));
    assert!(err_starts(&c.cmd(&["BLPOP", "y3", "0.1"]), "NOPERM"));
    assert_eq!(c.cmd(&["BLPOP", "x3", "0.1"]), Resp::NilArray);

    // RESET: the default user again.
    assert_eq!(c.cmd(&["RESET"]), Resp::Simple("RESET".into()));
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]), Resp::bulk("default"));
    assert_eq!(c.cmd(&["HSET", "y4", "f", "v"]), Resp::Int(1));

    // HELLO … AUTH too (RESP3 connections of bob's own).
    let r = c.cmd(&["HELLO", "3", "AUTH", "bob", "wrong"]);
    assert!(err_starts(&r, "WRONGPASS"), "{r:?}");
    let r = c.cmd(&["HELLO", "3", "AUTH", "bob", "pw", "SETNAME", "b"]);
    assert!(matches!(r, Resp::Map(_)), "{r:?}");
    assert_eq!(c.cmd(&["ACL", "WHOAMI"]), Resp::bulk("bob"));
    assert!(err_starts(&c.cmd(&["HSET", "x5", "f", "v"]), "NOPERM"));
    assert_eq!(c.cmd(&["GET", "x1"]), Resp::bulk("v"));
    // bob's blocking connection (RESP3) can be unblocked by another client.
    let id = match c.cmd(&["CLIENT", "ID"]) {
        Resp::Int(n) => n.to_string(),
        r => panic!("CLIENT ID: {r:?}"),
    };
    c.send_cmd(&["BLPOP", "x7", "0"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        admin.cmd(&["CLIENT", "UNBLOCK", &id, "ERROR"]),
        Resp::Int(1)
    );
    let r = c.read_reply();
    assert!(err_starts(&r, "UNBLOCKED"), "{r:?}");

    // A deleted user's clients fail: never back to the default user.
    assert_eq!(admin.cmd(&["ACL", "DELUSER", "bob"]), Resp::Int(1));
    let r = c.cmd(&["SET", "x6", "v"]);
    assert!(r.is_error(), "{r:?}");
    assert_eq!(admin.cmd(&["GET", "x6"]), Resp::Nil);
    let r = c.cmd(&["SET", "x6", "v"]);
    assert!(
        err_starts(&r, "WRONGPASS"),
        "new connections refused: {r:?}"
    );
    assert_eq!(admin.cmd(&["GET", "x6"]), Resp::Nil);
}

/// A blocking connection to a password-protected node (its `AUTH`, or a
/// RESP3 client's `HELLO 3`, answered before its `CLIENT ID`) still learns
/// its id on the node, so `CLIENT UNBLOCK … ERROR` answers as on Redis.
#[test]
fn client_unblock_works_on_authenticated_blocking_connections() {
    let node = Protected::start("up-pass");
    let envoy = Envoy::start(standalone_config(node.port, "up-pass"));
    for hello in [None, Some("3")] {
        let mut blocked = RawClient::connect(envoy.port());
        let mut other = RawClient::connect(envoy.port());
        if let Some(v) = hello {
            assert!(matches!(blocked.cmd(&["HELLO", v]), Resp::Map(_)));
        }
        let id = match blocked.cmd(&["CLIENT", "ID"]) {
            Resp::Int(n) => n.to_string(),
            r => panic!("CLIENT ID: {r:?}"),
        };
        blocked.send_cmd(&["BLPOP", "q", "0"]);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            other.cmd(&["CLIENT", "UNBLOCK", &id, "ERROR"]),
            Resp::Int(1)
        );
        let r = blocked.read_reply();
        assert!(
            err_starts(&r, "UNBLOCKED client unblocked via CLIENT UNBLOCK"),
            "HELLO {hello:?}: {r:?}"
        );
    }
}

/// Subscriptions run as the client's Redis user too: a client that
/// authenticated as `carol` (channels `news*` only) gets its own upstream
/// subscription on a connection authenticated as `carol`, never the
/// default user's shared one, so the node applies her channel rules: a
/// channel she may not read gets no message through the proxy.
#[test]
fn subscriptions_run_as_the_clients_user() {
    let cluster = Cluster::start(3, 0);
    let cfg = module_config(&cluster, json!({ "allow_admin_commands": true }));
    let envoy = Envoy::start(cfg);
    let mut admin = RawClient::connect(envoy.port());
    let setuser = [
        "ACL",
        "SETUSER",
        "carol",
        "on",
        ">pw",
        "resetchannels",
        "&news*",
        "+@pubsub",
    ];
    assert_eq!(admin.cmd(&setuser), Resp::ok());

    // The default user subscribes to both channels first (shared links).
    let mut open = RawClient::connect(envoy.port());
    for ch in ["news1", "secret"] {
        let Resp::Array(ack) = open.cmd(&["SUBSCRIBE", ch]) else {
            panic!("ack")
        };
        assert_eq!(ack[0], Resp::bulk("subscribe"));
    }
    let mut c = RawClient::connect(envoy.port());
    assert_eq!(c.cmd(&["AUTH", "carol", "pw"]), Resp::ok());
    let Resp::Array(ack) = c.cmd(&["SUBSCRIBE", "news1"]) else {
        panic!("ack")
    };
    assert_eq!(
        ack,
        vec![Resp::bulk("subscribe"), Resp::bulk("news1"), Resp::Int(1)]
    );
    c.set_timeout(Duration::from_secs(5));
    assert_eq!(
        c.cmd(&["SUBSCRIBE", "secret"]),
        Resp::Error(
            "NOPERM this user has no permissions to access one of the channels used as arguments"
                .into()
        ),
        "refused as Redis refuses it"
    );

    // On the nodes: a subscriber connection of carol's, besides the default's.
    let carol_links = cluster
        .master_ports()
        .into_iter()
        .map(|p| {
            let list = RawClient::connect(p)
                .cmd(&["CLIENT", "LIST"])
                .text()
                .unwrap_or_default();
            list.lines()
                .filter(|l| l.contains("user=carol") && !l.contains(" sub=0 "))
                .count()
        })
        .sum::<usize>();
    assert_eq!(carol_links, 1, "one subscriber link of carol's");

    // Publishing runs as carol too: her channel rules hold for PUBLISH.
    let mut carol_pub = RawClient::connect(envoy.port());
    assert_eq!(carol_pub.cmd(&["AUTH", "carol", "pw"]), Resp::ok());
    let r = carol_pub.cmd(&["PUBLISH", "secret", "from-carol"]);
    assert!(
        matches!(&r, Resp::Error(e) if e.starts_with("NOPERM")),
        "PUBLISH to a channel carol may not use: {r:?}"
    );
    assert!(matches!(
        carol_pub.cmd(&["PUBLISH", "news2", "x"]),
        Resp::Int(_)
    ));

    let mut publisher = RawClient::connect(envoy.port());
    for ch in ["secret", "news1"] {
        assert!(matches!(publisher.cmd(&["PUBLISH", ch, "m"]), Resp::Int(_)));
    }
    // The default user's client gets both; carol only news1.
    for ch in ["secret", "news1"] {
        assert_eq!(
            open.read_reply(),
            Resp::Array(vec![Resp::bulk("message"), Resp::bulk(ch), Resp::bulk("m")])
        );
    }
    assert_eq!(
        c.read_reply(),
        Resp::Array(vec![
            Resp::bulk("message"),
            Resp::bulk("news1"),
            Resp::bulk("m")
        ]),
        "carol gets news1 and nothing of secret before it"
    );
}
