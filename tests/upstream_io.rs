//! Upstream I/O on the Envoy worker under connection churn. A worker's wakes
//! are committed on one of its client connections (the oldest open one,
//! the anchor); an event committed on a connection that then closes is
//! never delivered, so the module must commit it again elsewhere, or every
//! other client of that worker waits for its replies forever.
//!
//! MODULE-DEPENDENT (the wake anchors are the module's design).

mod common;

use common::*;
use serde_json::json;
use std::collections::VecDeque;

#[test]
fn worker_io_answers_everyone_while_the_anchor_connection_keeps_closing() {
    let cluster = Cluster::start(3, 0);
    let mut envoy = Envoy::start(module_config(&cluster, json!({})));
    let port = envoy.port();
    let mut conns: VecDeque<RawClient> = (0..6).map(|_| RawClient::connect(port)).collect();
    let mut checked = 0u64;
    for round in 0..150u32 {
        // The oldest connection (an anchor) closes with commands in flight.
        if let Some(mut old) = conns.pop_front() {
            let mut burst = Vec::new();
            for i in 0..50 {
                let key = format!("churn:{round}:{i}");
                burst.extend_from_slice(
                    format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nx\r\n", key.len()).as_bytes(),
                );
            }
            old.send(&burst).expect("send a burst before closing");
            drop(old);
        }
        // Everyone else still gets every reply, right and in order.
        for (n, c) in conns.iter_mut().enumerate() {
            let key = format!("live:{round}:{n}");
            let value = format!("v{round}.{n}");
            c.send_cmd(&["SET", key.as_str(), value.as_str()]);
            c.send_cmd(&["GET", key.as_str()]);
            let set = c.try_read_reply().unwrap_or_else(|e| {
                panic!(
                    "round {round}: no reply to SET ({e}); log:\n{}",
                    envoy.log()
                )
            });
            assert_eq!(set.text().as_deref(), Some("OK"), "round {round}: SET");
            let got = c.try_read_reply().unwrap_or_else(|e| {
                panic!(
                    "round {round}: no reply to GET ({e}); log:\n{}",
                    envoy.log()
                )
            });
            assert_eq!(
                got.text().as_deref(),
                Some(value.as_str()),
                "round {round}: GET"
            );
            checked += 1;
        }
        conns.push_back(RawClient::connect(port));
    }
    assert_eq!(checked, 150 * 5);
    assert!(envoy.is_running(), "envoy died; log:\n{}", envoy.log());
}
