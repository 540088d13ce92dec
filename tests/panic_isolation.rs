//! A panic inside the module closes only the connection it happened on;
//! Envoy and every other connection keep working. (Own test binary: it sets
//! the environment variable that enables the module's DEBUG-PANIC hook for
//! the Envoy it starts.)

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn a_panic_closes_one_connection_and_envoy_keeps_serving() {
    std::env::set_var("ENVOY_REDIS_CLUSTER_TEST_HOOKS", "1");
    let cluster = Cluster::start(3, 0);
    let mut envoy = Envoy::start(module_config(&cluster, json!({})));
    let mut bystander = RawClient::connect(envoy.port());
    assert_eq!(bystander.cmd(&["SET", "k", "before"]), Resp::ok());

    for _ in 0..3 {
        let mut victim = RawClient::connect(envoy.port());
        assert_eq!(victim.cmd(&["PING"]), Resp::Simple("PONG".into()));
        victim.set_timeout(Duration::from_secs(5));
        victim.send(b"DEBUG-PANIC\r\n").unwrap();
        match victim.read_outcome() {
            Outcome::Closed => {}
            other => panic!("panicking connection was not closed: {other:?}"),
        }
    }
    assert!(envoy.is_running(), "Envoy died");
    assert_eq!(bystander.cmd(&["GET", "k"]), Resp::bulk("before"));
    let mut fresh = RawClient::connect(envoy.port());
    assert_eq!(fresh.cmd(&["SET", "k", "after"]), Resp::ok());
    assert_eq!(bystander.cmd(&["GET", "k"]), Resp::bulk("after"));
    assert!(envoy
        .log()
        .contains("internal error, closing the connection"));
}
