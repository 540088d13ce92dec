//! What fuzzing found (issue #5), checked end to end in real Envoy with a
//! real Redis Cluster: each check failed with the module built before its
//! fix.
//!
//! MODULE-DEPENDENT: the module's own behaviour (limits, half-close), so
//! these always run the module, whatever `PROXY_UNDER_TEST` says.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Send `request` on a fresh connection and read until `done` says so (or
/// the connection closed, or 20 s passed). Raw bytes: the test's own
/// RESP parser recurses, and these replies are thousands of levels deep.
fn raw_exchange(port: u16, request: &[u8], done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to envoy");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(request).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while !done(&out) && Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    out
}

/// A script reply nested thousands of levels deep used to overflow the
/// stack of the upstream thread framing it, which aborted Envoy.
#[test]
fn deeply_nested_script_reply_reaches_the_client_and_envoy_lives() {
    let cluster = Cluster::start(3, 0);
    let mut envoy = Envoy::start(module_config(&cluster, json!({})));
    let script = "local t=1 for i=1,tonumber(ARGV[1]) do t={t} end return t";
    // RESP2: 7,900 nested one-element arrays.
    let mut want = b"*1\r\n".repeat(7900);
    want.extend_from_slice(b":1\r\n");
    let got = raw_exchange(
        envoy.port(),
        &encode_cmd(&["EVAL", script, "0", "7900"]),
        |b| b.len() >= want.len(),
    );
    assert!(
        got == want,
        "RESP2: {} bytes, starting {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(80)])
    );
    // RESP3 (a boolean leaf takes the path that overflowed soonest).
    let script3 = "redis.setresp(3) local t=true for i=1,tonumber(ARGV[1]) do t={t} end return t";
    let mut request = encode_cmd(&["HELLO", "3"]);
    request.extend(encode_cmd(&["EVAL", script3, "0", "3000"]));
    let mut tail = b"*1\r\n".repeat(3000);
    tail.extend_from_slice(b"#t\r\n");
    let got = raw_exchange(envoy.port(), &request, |b| b.ends_with(&tail));
    assert!(
        got.ends_with(&tail),
        "RESP3: {} bytes, ending {:?}",
        got.len(),
        String::from_utf8_lossy(&got[got.len().saturating_sub(80)..])
    );
    assert!(envoy.is_running(), "envoy died; log:\n{}", envoy.log());
    assert_eq!(
        envoy.raw_client().cmd(&["PING"]),
        Resp::Simple("PONG".into())
    );
    // A 4 MB status line (a script's to make) arrives in several reads: the
    // framer used to refuse it as a "header line too long", failing the node
    // connection; EVAL was resent until op_timeout and the client got
    // "ERR upstream timeout". (100 KB arrives in one read on loopback.)
    let long = envoy
        .raw_client()
        .cmd(&["EVAL", "return {ok=string.rep('x',4000000)}", "0"]);
    assert_eq!(long, Resp::Simple("x".repeat(4_000_000)));
}

#[test]
fn pending_limit_fin_and_buffer_limit_behave_however_input_arrives() {
    let cluster = Cluster::start(3, 0);
    let settings = json!({
        "max_pending_requests_per_connection": 5,
        "max_buffered_bytes_per_connection": 4096,
    });
    let mut envoy = Envoy::start(module_config(&cluster, settings));

    // 50 locally answered commands in one write, 5 allowed in flight: the
    // rest used to wait forever once the first 5 were answered.
    let mut c = envoy.raw_client();
    c.send(&encode_cmd(&["PING"]).repeat(50)).unwrap();
    for i in 0..50 {
        assert_eq!(c.read_reply(), Resp::Simple("PONG".into()), "reply {i}");
    }

    // A transaction, commands after it, then FIN, in one write: the
    // commands held back behind EXEC used to be dropped at the FIN.
    let mut c = envoy.raw_client();
    let mut batch = Vec::new();
    for cmd in [
        &["MULTI"][..],
        &["SET", "{fin}a", "1"],
        &["EXEC"],
        &["GET", "{fin}a"],
        &["PING"],
    ] {
        batch.extend(encode_cmd(cmd));
    }
    c.send(&batch).unwrap();
    c.shutdown_write();
    assert_eq!(
        c.read_replies(5),
        vec![
            Resp::ok(),
            Resp::Simple("QUEUED".into()),
            Resp::Array(vec![Resp::ok()]),
            Resp::bulk("1"),
            Resp::Simple("PONG".into()),
        ]
    );
    assert!(matches!(c.read_outcome(), Outcome::Closed));

    // A request over max_buffered_bytes_per_connection is refused, also
    // when it arrives in one write (it used to be accepted then).
    let mut c = envoy.raw_client();
    let big = "v".repeat(8000);
    c.send(&encode_cmd(&["SET", "big", &big])).unwrap();
    let r = c.read_reply();
    assert!(
        matches!(&r, Resp::Error(e) if e.contains("max_buffered_bytes_per_connection")),
        "{r:?}"
    );
    assert!(envoy.is_running(), "envoy died; log:\n{}", envoy.log());
}
