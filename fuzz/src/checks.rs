//! What each fuzz target checks, one function per target. Every function
//! panics on a broken invariant (libFuzzer then saves the input); nothing
//! here depends on libFuzzer, so `tests/fuzz_regressions.rs` in the main
//! crate includes this file by path and replays `fuzz/regressions/` and the
//! seed corpus through the very same code.

use envoy_redis_cluster::codec::{self, Scan};
use envoy_redis_cluster::config::Config;
use envoy_redis_cluster::proxy::Proxy;
use envoy_redis_cluster::session::{Downstream, Session};
use envoy_redis_cluster::splitter::{self, Merge};
use envoy_redis_cluster::stats::Stats;
use envoy_redis_cluster::upstream::Notify;
use std::ops::Range;
use std::sync::Arc;

// ---------------------------------------------------------------------------
// request_decoder: codec::scan_request and codec::reply_len
// ---------------------------------------------------------------------------

fn scan(buf: &[u8]) -> (Result<Scan, codec::ProtocolError>, Vec<Range<usize>>) {
    let mut args = Vec::new();
    let r = codec::scan_request(buf, &mut args);
    (r, args)
}

/// Scan requests off the front of `data` until one is incomplete or bad.
pub fn request_decoder(data: &[u8]) {
    let mut args = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let buf = &data[pos..];
        match codec::scan_request(buf, &mut args) {
            Ok(Scan::Complete(n)) => {
                assert!(n > 0 && n <= buf.len(), "Complete({n}) of {}", buf.len());
                assert!(!args.is_empty(), "Complete with no arguments");
                for r in &args {
                    assert!(r.start <= r.end && r.end <= n, "arg {r:?} outside 0..{n}");
                }
                // The frame alone scans the same: what follows it is not read.
                let (again, args2) = scan(&buf[..n]);
                assert_eq!(again, Ok(Scan::Complete(n)), "frame alone");
                assert_eq!(args2, args, "frame alone: other arguments");
                // A frame cut short is never taken for a request, whatever
                // the cut: the result must not depend on how TCP split it.
                for cut in [1, n / 2, n - 1, codec::MAX_INLINE_LEN + 1] {
                    if cut == 0 || cut >= n {
                        continue;
                    }
                    match scan(&buf[..cut]).0 {
                        Ok(Scan::Incomplete { need }) => {
                            assert!(need > cut && need <= n, "cut {cut} of {n}: need {need}")
                        }
                        other => panic!("frame of {n} cut at {cut}: {other:?}"),
                    }
                }
                pos += n;
            }
            Ok(Scan::Empty(n)) => {
                assert!(n > 0 && n <= buf.len(), "Empty({n}) of {}", buf.len());
                assert!(args.is_empty(), "Empty with arguments");
                pos += n;
            }
            Ok(Scan::Incomplete { need }) => {
                assert!(need > buf.len(), "Incomplete needs {need} of {}", buf.len());
                break;
            }
            Err(_) => break,
        }
    }
    check_reply_len(data);
}

fn check_reply_len(data: &[u8]) {
    // Replies one after the other, as a node's connection frames them.
    let mut whole = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let buf = &data[pos..];
        match codec::reply_len(buf) {
            Ok(Some(n)) => {
                assert!(n > 0 && n <= buf.len(), "reply_len {n} of {}", buf.len());
                assert_eq!(codec::reply_len(&buf[..n]), Ok(Some(n)), "reply alone");
                whole.push(Some(n));
                pos += n;
            }
            Ok(None) => break,
            Err(_) => {
                whole.push(None);
                break;
            }
        }
    }
    // The upstream loop's incremental framer, fed in chunks (size from the
    // first byte), finds the same replies and the same error.
    let chunk = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut framer = codec::ReplyFramer::default();
    let mut pieces = Vec::new();
    let (mut start, mut have) = (0, 0);
    'read: while start < data.len() && have < data.len() {
        have = (have + chunk).min(data.len());
        loop {
            match framer.frame(&data[start..have]) {
                Ok(Some(n)) => {
                    pieces.push(Some(n));
                    start += n;
                }
                Ok(None) => break,
                Err(_) => {
                    pieces.push(None);
                    break 'read;
                }
            }
        }
    }
    assert_eq!(pieces, whole, "in chunks of {chunk} vs whole");
}

// ---------------------------------------------------------------------------
// session: one client connection against an inert proxy
// ---------------------------------------------------------------------------

#[path = "session_timing.rs"]
mod session_timing;

/// Filter configs the session target picks from (low 2 bits of byte 0).
pub const CONFIGS: [&str; 4] = [
    // One cluster, everything to it.
    r#"{"clusters":{"main":{"seeds":["127.0.0.1:7000"]}},
        "prefix_routes":{"catch_all_route":{"cluster":"main"}}}"#,
    // Client AUTH, prefix routes (one strips its prefix, one mirrors), no
    // catch-all: unrouted keys get an error.
    r#"{"clusters":{"main":{"seeds":["127.0.0.1:7000"]},"b":{"seeds":["127.0.0.1:7100"]}},
        "prefix_routes":{"case_insensitive":true,"routes":[
          {"prefix":"user:","cluster":"main","remove_prefix":true},
          {"prefix":"b","cluster":"b","request_mirror_policy":[{"cluster":"main"}]}]},
        "downstream_auth_passwords":["secret","pw2"]}"#,
    // Tiny limits: backpressure after 3 commands, 512-byte requests at most.
    r#"{"settings":{"max_pending_requests_per_connection":3,
                    "max_buffered_bytes_per_connection":512,"enable_hashtagging":false},
        "clusters":{"main":{"seeds":["127.0.0.1:7000"]},"b":{"seeds":["127.0.0.1:7100"]}},
        "prefix_routes":{"routes":[{"prefix":"{","cluster":"b","remove_prefix":true}],
          "catch_all_route":{"cluster":"main",
            "request_mirror_policy":[{"cluster":"b","exclude_read_commands":true}]}}}"#,
    // AUTH with a username, reads preferring replicas.
    r#"{"settings":{"read_policy":"PREFER_REPLICA"},
        "clusters":{"main":{"seeds":["127.0.0.1:7000"]}},
        "prefix_routes":{"catch_all_route":{"cluster":"main"}},
        "downstream_auth_username":"app","downstream_auth_passwords":["pw"]}"#,
];

struct NoopNotify;

impl Notify for NoopNotify {
    fn notify(&self) {}
}

/// The client's side of the connection: what the session wrote and did.
#[derive(Default)]
struct Client {
    out: Vec<u8>,
    closes: u32,
    /// Envoy closed the connection (remote close): nothing may be written.
    gone: bool,
    read_disabled: bool,
}

impl Downstream for Client {
    fn write(&mut self, data: &[u8]) {
        assert!(self.closes == 0, "write after close");
        assert!(!self.gone, "write after the connection was closed");
        assert!(!data.is_empty(), "empty write");
        self.out.extend_from_slice(data);
    }

    fn close(&mut self, _flush: bool) {
        assert!(!self.gone, "close after the connection was closed");
        self.closes += 1;
        assert!(self.closes == 1, "closed twice");
    }

    fn read_disable(&mut self, disable: bool) {
        assert!(
            disable != self.read_disabled,
            "read_disable({disable}) twice in a row"
        );
        self.read_disabled = disable;
    }
}

fn new_session(config: usize) -> (Session, Client) {
    let config = Config::from_json(CONFIGS[config].as_bytes()).expect("fuzz config parses");
    let stats = Arc::new(Stats::disabled(config.clusters.len()));
    let proxy = Proxy::inert(config, stats);
    let session = Session::new(proxy, 0, Box::new(NoopNotify));
    (session, Client::default())
}

/// Split a byte stream into complete replies; panics if it is not one.
fn replies(out: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < out.len() {
        match codec::reply_len(&out[pos..]) {
            Ok(Some(n)) => {
                v.push(&out[pos..pos + n]);
                pos += n;
            }
            other => panic!(
                "output is not whole replies at byte {pos}: {other:?}: {:?}",
                String::from_utf8_lossy(&out[pos..out.len().min(pos + 200)])
            ),
        }
    }
    v
}

/// What must not depend on how the input was split: errors and simple
/// strings in full, other replies by type (they may carry connection ids).
/// Which protocol error ends the stream may depend on it (a malformed
/// header line is "too long" before it is whole enough to be "invalid"),
/// so any protocol error compares equal to any other.
fn signature(reply: &[u8]) -> Vec<u8> {
    const PROTOCOL_ERROR: &[u8] = b"-ERR Protocol error";
    match reply.first() {
        _ if reply.starts_with(PROTOCOL_ERROR) => PROTOCOL_ERROR.to_vec(),
        Some(b'-' | b'+') => reply.to_vec(),
        _ => reply[..1].to_vec(),
    }
}

/// How the session's framing sees `payload`: the request frames (their
/// first word, lowercased) each owed one reply, and whether a protocol
/// error (or a request over `limit` bytes) ends the stream with one more.
/// With `CLIENT REPLY OFF|SKIP` some replies are not written at all (as in
/// Redis), so a payload holding a `CLIENT REPLY` frame owes *at most* this
/// many: see [`quiet`].
pub(crate) fn frames(payload: &[u8], limit: usize) -> (Vec<Vec<u8>>, bool) {
    let mut names = Vec::new();
    let mut pos = 0;
    while pos < payload.len() {
        let (r, args) = scan(&payload[pos..]);
        match r {
            // Too big for the connection's buffer limit, even when whole.
            Ok(Scan::Complete(n)) if n > limit => return (names, true),
            Ok(Scan::Complete(n)) => {
                let name = &payload[pos..][args[0].clone()];
                names.push(name.to_ascii_lowercase());
                pos += n;
            }
            Ok(Scan::Empty(n)) => pos += n,
            Ok(Scan::Incomplete { need }) => return (names, need > limit),
            Err(_) => return (names, true),
        }
    }
    (names, false)
}

/// Does `payload` hold a `CLIENT REPLY` request (which may hide replies)?
pub(crate) fn quiet(payload: &[u8]) -> bool {
    let mut pos = 0;
    while pos < payload.len() {
        let (r, args) = scan(&payload[pos..]);
        let n = match r {
            Ok(Scan::Complete(n)) | Ok(Scan::Empty(n)) => n,
            _ => return false,
        };
        let frame = &payload[pos..pos + n];
        let word = |i: usize| {
            args.get(i).map(|r| {
                let w = &frame[r.clone()];
                if frame.first() == Some(&b'*') {
                    w.to_vec()
                } else {
                    codec::inline_word(w)
                }
            })
        };
        let is = |i: usize, what: &[u8]| word(i).is_some_and(|w| w.eq_ignore_ascii_case(what));
        if is(0, b"client") && is(1, b"reply") {
            return true;
        }
        pos += n;
    }
    false
}

fn limit_of(config: usize) -> usize {
    Config::from_json(CONFIGS[config].as_bytes())
        .expect("fuzz config parses")
        .settings
        .max_buffered_bytes_per_connection
}

/// Chunk length from a schedule byte: 1..=16 bytes, or 32 B .. 1 MiB.
fn chunk_len(b: u8) -> usize {
    let v = usize::from(b & 0x1f);
    if v < 16 {
        v + 1
    } else {
        1 << (v - 11)
    }
}

/// Input: byte 0 picks the config (bits 0-1), whether the client vanishes
/// half way (bit 2), whether its FIN arrives while the write buffer is
/// still above its watermark (bit 3) and the first topology of the timed
/// run (bits 4-5, see [`session_timing::check`]); bytes 1..=8 are the
/// schedule: each gives a chunk length (low 5 bits) and what happens after
/// that chunk (high 3 bits: nothing, an upstream wake-up, the write buffer
/// going above or below its watermark). The rest is what the client sends.
///
/// A and B run against an inert proxy (every request fails at once); C,
/// against a model of the upstream loop on a manual clock.
pub fn session(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (schedule, payload) = rest.split_at(rest.len().min(8));
    let schedule: &[u8] = if schedule.is_empty() {
        &[0x1f]
    } else {
        schedule
    };
    let config = usize::from(mode & 3);
    let vanish = mode & 4 != 0;
    let fin_while_blocked = mode & 8 != 0;

    // C: against a model of the upstream loop, on a clock the check moves:
    // no command unanswered past its deadline.
    session_timing::check(mode, schedule, payload);

    // A: everything in one read, then FIN.
    let (mut a, mut ca) = new_session(config);
    a.on_data(payload, &mut ca);
    a.on_end_stream(&mut ca);
    assert_eq!(ca.closes, 1, "one-shot: not closed after FIN");
    a.on_close();
    a.on_destroy();
    let got = replies(&ca.out);
    let (names, error_at_end) = frames(payload, limit_of(config));
    let owed = names.len() + usize::from(error_at_end);
    assert!(
        got.len() <= owed,
        "one-shot: {} replies for {owed} requests",
        got.len()
    );
    if quiet(payload) {
        // CLIENT REPLY OFF|SKIP may hide any reply: at most `owed`.
    } else if got.len() < owed {
        // Only QUIT ends a connection before every request is answered.
        let last = got.len().checked_sub(1).and_then(|i| names.get(i));
        assert!(
            last.is_some_and(|n| n == b"quit") && got.last() == Some(&&b"+OK\r\n"[..]),
            "one-shot: {} replies for {owed} requests; last request {:?}",
            got.len(),
            last.map(|n| String::from_utf8_lossy(n).into_owned())
        );
    } else if error_at_end {
        let last = got.last().copied().unwrap_or_default();
        assert!(
            last.starts_with(b"-ERR Protocol error"),
            "one-shot: last reply {:?} is not the protocol error",
            String::from_utf8_lossy(last)
        );
    }

    // B: the same bytes in chunks, with events in between.
    let (mut b, mut cb) = new_session(config);
    let mut pos = 0;
    let mut step = 0;
    let mut blocked = false;
    let half = payload.len() / 2;
    while pos < payload.len() {
        let s = schedule[step % schedule.len()];
        step += 1;
        let end = payload.len().min(pos + chunk_len(s));
        b.on_data(&payload[pos..end], &mut cb);
        pos = end;
        match s >> 5 {
            4 => b.on_scheduled(&mut cb),
            5 => {
                blocked = true;
                b.on_write_watermark(true, &mut cb);
            }
            6 => {
                blocked = false;
                b.on_write_watermark(false, &mut cb);
            }
            7 => {
                b.on_scheduled(&mut cb);
                if blocked {
                    blocked = false;
                    b.on_write_watermark(false, &mut cb);
                }
            }
            _ => {}
        }
        if vanish && pos >= half && !cb.gone {
            // Envoy closed the connection (RST): the session must not touch
            // it again, whatever else happens.
            b.on_close();
            cb.gone = true;
        }
    }
    if cb.gone {
        b.on_scheduled(&mut cb);
        b.on_write_watermark(false, &mut cb);
        b.on_data(b"PING\r\n", &mut cb);
        b.on_end_stream(&mut cb);
        b.on_destroy();
        replies(&cb.out);
        return;
    }
    if fin_while_blocked {
        // FIN first, then the write buffer drains: still every reply.
        if !blocked {
            b.on_write_watermark(true, &mut cb);
        }
        b.on_end_stream(&mut cb);
        b.on_write_watermark(false, &mut cb);
    } else {
        if blocked {
            b.on_write_watermark(false, &mut cb);
        }
        b.on_scheduled(&mut cb);
        assert!(
            !cb.read_disabled || cb.closes == 1,
            "chunked: reading left disabled with nothing in flight"
        );
        b.on_end_stream(&mut cb);
    }
    assert_eq!(cb.closes, 1, "chunked: not closed after FIN");
    // Events after the close write nothing (Client panics if they do).
    b.on_scheduled(&mut cb);
    b.on_data(b"PING\r\n", &mut cb);
    b.on_close();
    b.on_destroy();
    let got_b = replies(&cb.out);
    let sa: Vec<Vec<u8>> = got.iter().map(|r| signature(r)).collect();
    let sb: Vec<Vec<u8>> = got_b.iter().map(|r| signature(r)).collect();
    if sa != sb {
        let first = sa.iter().zip(&sb).position(|(x, y)| x != y);
        let show = |v: &[Vec<u8>], i: Option<usize>| {
            i.and_then(|i| v.get(i))
                .map(|r| String::from_utf8_lossy(r).into_owned())
        };
        panic!(
            "replies depend on how the input was split: one read gave {} replies, \
             chunks gave {}; first difference at {first:?}: {:?} vs {:?}",
            sa.len(),
            sb.len(),
            show(&sa, first),
            show(&sb, first)
        );
    }
}

// ---------------------------------------------------------------------------
// splitter_merge: splitter::merge over arbitrary (but well-framed) parts
// ---------------------------------------------------------------------------

/// Input: byte 0 picks the merge (mod 9), byte 1 its parameter; then parts, each a
/// length byte and that many bytes, cut to the first whole reply (the
/// upstream loop only ever hands over whole replies). Trailing bytes after
/// the parts feed MGET's key order.
pub fn splitter_merge(data: &[u8]) {
    let [kind, param, rest @ ..] = data else {
        return;
    };
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    while parts.len() < 8 {
        let Some(&len) = rest.get(pos) else { break };
        let start = pos + 1;
        let end = rest.len().min(start + usize::from(len));
        pos = end;
        let raw = &rest[start.min(end)..end];
        if let Ok(Some(n)) = codec::reply_len(raw) {
            parts.push(&raw[..n]);
        }
    }
    if parts.is_empty() {
        return;
    }
    let tail = rest.get(pos..).unwrap_or_default();
    let n = parts.len() as u32;
    let how = match kind % 10 {
        0 => Merge::AllOk,
        1 => Merge::Sum,
        2 => Merge::Min,
        3 => Merge::Concat,
        4 => Merge::FirstNonNil {
            start: u32::from(*param) % n,
        },
        5 => Merge::Scan {
            shard: u32::from(*param) % 4,
            shards: u32::from(*param >> 2) % 4 + 1,
        },
        6 => Merge::Info {
            nodes: (0..n).map(|i| format!("10.0.0.{i}:6379")).collect(),
            header: "# Proxy\r\nmasters:1\r\n".to_string(),
        },
        7 => Merge::Same,
        8 => Merge::InfoSum {
            proxy: (*param & 1 == 1).then(|| "# Proxy\r\nmasters:1\r\n".to_string()),
            fields: vec![("connected_clients", "1".to_string())],
        },
        _ => Merge::Mget {
            order: tail
                .iter()
                .map(|&b| (u32::from(b & 7), u32::from(b >> 3)))
                .collect(),
        },
    };
    let merged = splitter::merge(&how, &parts);
    // The client's stream stays framed: the merge is exactly one reply.
    assert_eq!(
        codec::reply_len(&merged),
        Ok(Some(merged.len())),
        "{how:?} of {parts:?} gave {:?}",
        String::from_utf8_lossy(&merged)
    );
    // Through a Gather, in any arrival order, the same answer.
    let mut g = splitter::Gather::new(how.clone(), parts.len());
    let mut last = None;
    for (i, p) in parts.iter().enumerate().rev() {
        last = g.add(i as u32, p.to_vec());
    }
    assert_eq!(last.as_deref(), Some(&merged[..]), "Gather vs merge");
}
