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
        "ERR ACL SETUSER is not supported through the proxy"
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
