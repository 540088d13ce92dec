//! Connection-level behaviour the proxy keeps itself, compared byte for byte
//! with a standalone Redis 7 fed the same bytes, each case pipelined in one
//! write: `RESET` (inside `MULTI` too), commands Redis forbids inside
//! `MULTI`, transactions forwarded live, `CLIENT REPLY ON|OFF|SKIP`
//! and inline (telnet-style) quoting, including the protocol error and close
//! for unbalanced quotes.

mod common;

use common::*;
use serde_json::json;
use std::io::Read;
use std::time::Duration;

/// Send `input` in one write, then read until the server has answered the
/// final `ECHO end-of-case` (or closed the connection); returns the bytes.
fn exchange(port: u16, input: &[u8], expect_close: bool) -> Vec<u8> {
    let mut c = RawClient::connect(port);
    c.set_timeout(Duration::from_secs(5));
    let mut bytes = input.to_vec();
    if !expect_close {
        bytes.extend_from_slice(&encode_cmd(&["ECHO", "end-of-case"]));
    }
    c.send(&bytes).expect("send");
    let mut s = c.stream_clone();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let end = b"$11\r\nend-of-case\r\n";
    loop {
        if !expect_close && out.ends_with(end) {
            out.truncate(out.len() - end.len());
            return out;
        }
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no end of case from {port} (read: {e}); got {}",
                show_resp(&out)
            ),
        }
    }
}

fn cmds(list: &[&[&str]]) -> Vec<u8> {
    list.iter().flat_map(|c| encode_cmd(c)).collect()
}

#[test]
fn connection_state_matches_redis() {
    let cluster = Cluster::start(3, 0);
    let envoy = Envoy::start(module_config(&cluster, json!({})));
    let redis = StandaloneRedis::start();
    // Keys of one slot, so transactions are legal through the proxy.
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "RESET inside MULTI discards the transaction",
            cmds(&[
                &["SET", "{t}a", "1"],
                &["MULTI"],
                &["SET", "{t}a", "2"],
                &["RESET"],
                &["GET", "{t}a"],
                &["EXEC"],
            ]),
            false,
        ),
        (
            "RESET after WATCH forgets the watch",
            cmds(&[
                &["WATCH", "{t}w"],
                &["RESET"],
                &["MULTI"],
                &["SET", "{t}w", "x"],
                &["EXEC"],
                &["CLIENT", "SETNAME", "n"],
                &["RESET"],
                &["CLIENT", "GETNAME"],
                &["GET", "{t}w"],
            ]),
            false,
        ),
        (
            "a command Redis forbids inside MULTI aborts it with Redis's words",
            cmds(&[
                &["MULTI"],
                &["SET", "{t}b", "1"],
                &["SHUTDOWN"],
                &["SAVE"],
                &["EXEC"],
                &["GET", "{t}b"],
            ]),
            false,
        ),
        (
            "a transaction forwarded live: held keyless commands, UNWATCH inside MULTI, a queue-time error",
            cmds(&[
                &["MULTI"],
                &["PING"],
                &["ECHO", "x"],
                &["SET", "{t}h", "1"],
                &["UNWATCH"],
                &["INCR", "{t}h"],
                &["EXEC"],
                &["MULTI"],
                &["SET", "{t}h", "2"],
                &["GET"],
                &["EXEC"],
                &["GET", "{t}h"],
                &["WATCH", "{t}h"],
                &["MULTI"],
                &["EXEC"],
            ]),
            false,
        ),
        (
            "CLIENT REPLY SKIP and OFF around transactions",
            cmds(&[
                &["CLIENT", "REPLY", "SKIP"],
                &["MULTI"],
                &["SET", "{t}c", "1"],
                &["INCR", "{t}c"],
                &["EXEC"],
                &["CLIENT", "REPLY", "OFF"],
                &["MULTI"],
                &["INCR", "{t}c"],
                &["EXEC"],
                &["CLIENT", "REPLY", "ON"],
                &["GET", "{t}c"],
            ]),
            false,
        ),
        (
            "CLIENT REPLY OFF, SKIP and ON",
            cmds(&[
                &["CLIENT", "REPLY", "OFF"],
                &["SET", "{t}r", "1"],
                &["GET", "{t}r"],
                &["CLIENT", "REPLY", "SKIP"],
                &["CLIENT", "REPLY", "ON"],
                &["GET", "{t}r"],
                &["CLIENT", "REPLY", "SKIP"],
                &["GET", "{t}r"],
                &["INCR", "{t}r"],
                &["CLIENT", "REPLY", "MAYBE"],
                &["CLIENT", "REPLY"],
            ]),
            false,
        ),
        (
            "inline quoting and escapes",
            b"SET {t}q \"a\\\"b\\n\\x41\"\r\nGET {t}q\r\nSET {t}s 'it\\'s'\r\nGET {t}s\r\nECHO x\"y z\"\r\nECHO \"\"\r\n"
                .to_vec(),
            false,
        ),
        (
            "unbalanced quotes: protocol error and close",
            b"SET {t}u ok\r\nset \"\"\"test-key\"\"\" test-value\r\nPING\r\n".to_vec(),
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (what, input, closes) in &cases {
        let want = exchange(redis.port(), input, *closes);
        let got = exchange(envoy.port(), input, *closes);
        if got != want {
            failures.push(format!(
                "{what}:\n  redis: {}\n  proxy: {}",
                show_resp(&want),
                show_resp(&got)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
