//! RESP framing.
//!
//! **Requests** (client → proxy) are what a Redis server accepts: either a
//! *multibulk* — `*<n>\r\n` followed by `n` bulk strings `$<len>\r\n<bytes>\r\n`
//! — or an *inline* command, one line of space-separated words ending in
//! `\n` (what `redis-cli` and telnet users type). Requests are parsed by the
//! small scanner below rather than by a general RESP parser because a request
//! is never nested and a hostile client must not be able to make us recurse
//! or allocate on its say-so: the scanner enforces Redis's own limits
//! (`proto-max-bulk-len` 512 MB, 64 KiB inline lines, 1M arguments) and hands
//! back byte ranges into the input, with no copy.
//!
//! **Replies** (node → proxy) are any RESP2 or RESP3 value, possibly nested.
//! They come from Redis, and are framed with the `redis-protocol` crate's
//! zero-copy range decoder; the proxy forwards their bytes verbatim.

use std::ops::Range;

/// Redis's `proto-max-bulk-len` default.
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Redis's `PROTO_INLINE_MAX_SIZE`: longest inline command or header line.
pub const MAX_INLINE_LEN: usize = 64 * 1024;
/// Most arguments one request may carry (Redis: 1024*1024 for multibulk).
pub const MAX_ARGS: usize = 1024 * 1024;

/// A request the client must be told about; the connection is closed after
/// the error reply, as Redis does, because the stream position is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Outcome of scanning the front of a buffer for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A whole request of this many bytes; `args` holds its arguments.
    Complete(usize),
    /// Not enough bytes yet; at least `need` bytes in total are required.
    Incomplete { need: usize },
    /// An empty inline line (Redis ignores these) of this many bytes.
    Empty(usize),
}

/// Scan one request from the front of `buf`, filling `args` with the byte
/// ranges of its arguments (args[0] is the command name).
pub fn scan_request(buf: &[u8], args: &mut Vec<Range<usize>>) -> Result<Scan, ProtocolError> {
    args.clear();
    match buf.first() {
        None => Ok(Scan::Incomplete { need: 1 }),
        Some(b'*') => scan_multibulk(buf, args),
        Some(_) => scan_inline(buf, args),
    }
}

/// Read a `<prefix><integer>\r\n` header at `pos`; returns (value, next pos).
fn read_header(buf: &[u8], pos: usize, what: &str) -> Result<Option<(i64, usize)>, ProtocolError> {
    let line = &buf[pos..];
    let Some(nl) = line.iter().position(|&b| b == b'\r') else {
        if line.len() > MAX_INLINE_LEN {
            return Err(ProtocolError(format!("too big {what} count string")));
        }
        return Ok(None);
    };
    if nl + 1 >= line.len() {
        return Ok(None); // have '\r', waiting for '\n'
    }
    if line[nl + 1] != b'\n' {
        return Err(ProtocolError(format!("invalid {what} length")));
    }
    let digits = &line[1..nl];
    let value = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ProtocolError(format!("invalid {what} length")))?;
    Ok(Some((value, pos + nl + 2)))
}

fn scan_multibulk(buf: &[u8], args: &mut Vec<Range<usize>>) -> Result<Scan, ProtocolError> {
    let Some((count, mut pos)) = read_header(buf, 0, "mbulk")? else {
        return Ok(Scan::Incomplete {
            need: buf.len() + 1,
        });
    };
    if count > MAX_ARGS as i64 {
        return Err(ProtocolError("invalid multibulk length".into()));
    }
    if count <= 0 {
        // `*0` and `*-1` are ignored by Redis.
        return Ok(Scan::Empty(pos));
    }
    let count = count as usize;
    args.reserve(count.min(64));
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(Scan::Incomplete { need: pos + 1 }),
            Some(b'$') => {}
            Some(&other) => {
                return Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    char::from(other).escape_default()
                )))
            }
        }
        let Some((len, start)) = read_header(buf, pos, "bulk")? else {
            return Ok(Scan::Incomplete {
                need: buf.len() + 1,
            });
        };
        if len < 0 || len as u64 > MAX_BULK_LEN as u64 {
            return Err(ProtocolError("invalid bulk length".into()));
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(Scan::Incomplete { need: end + 2 });
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError("invalid bulk terminator".into()));
        }
        args.push(start..end);
        pos = end + 2;
    }
    Ok(Scan::Complete(pos))
}

fn scan_inline(buf: &[u8], args: &mut Vec<Range<usize>>) -> Result<Scan, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(Scan::Incomplete {
            need: buf.len() + 1,
        });
    };
    if nl > MAX_INLINE_LEN {
        return Err(ProtocolError("too big inline request".into()));
    }
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    // Words separated by spaces/tabs. Quoting ("a b") is honoured for plain
    // double quotes without escapes, which covers telnet-style use; anything
    // fancier should use multibulk like every client library does.
    let mut i = 0;
    while i < line_end {
        while i < line_end && (buf[i] == b' ' || buf[i] == b'\t') {
            i += 1;
        }
        if i >= line_end {
            break;
        }
        if buf[i] == b'"' {
            let start = i + 1;
            let Some(close) = buf[start..line_end].iter().position(|&b| b == b'"') else {
                return Err(ProtocolError("unbalanced quotes in request".into()));
            };
            args.push(start..start + close);
            i = start + close + 1;
        } else {
            let start = i;
            while i < line_end && buf[i] != b' ' && buf[i] != b'\t' {
                i += 1;
            }
            args.push(start..i);
        }
        if args.len() > MAX_ARGS {
            return Err(ProtocolError("invalid multibulk length".into()));
        }
    }
    if args.is_empty() {
        return Ok(Scan::Empty(nl + 1));
    }
    Ok(Scan::Complete(nl + 1))
}

/// Length of the first complete reply (RESP2 or RESP3) at the front of
/// `buf`, or `None` if more bytes are needed.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Fast paths for the replies that dominate traffic: simple strings,
    // errors, integers and bulk strings need no general parser.
    match buf[0] {
        b'+' | b'-' | b':' => {
            return Ok(find_crlf(buf, 1).map(|p| p + 2));
        }
        b'$' => {
            let Some(p) = find_crlf(buf, 1) else {
                return Ok(None);
            };
            let len: i64 = std::str::from_utf8(&buf[1..p])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "invalid bulk length in reply".to_string())?;
            if len < 0 {
                return Ok(Some(p + 2));
            }
            let total = p + 2 + len as usize + 2;
            return Ok((buf.len() >= total).then_some(total));
        }
        _ => {}
    }
    // The decoders below recurse once per nesting level, without a limit:
    // a deeply nested reply (a Lua script can return one 7,000 levels deep)
    // would overflow the thread's stack and abort Envoy.
    if too_deep(buf) {
        return Err(format!(
            "invalid reply from node: nested deeper than {MAX_REPLY_DEPTH} levels"
        ));
    }
    // Aggregates: RESP2 first (its decoder accepts `$-1` nulls, which the
    // RESP3 decoder rejects); a RESP3-only type byte makes it fail, and
    // then the RESP3 decoder frames the reply.
    match redis_protocol::resp2::decode::decode_range(buf) {
        Ok(Some((_, len))) => Ok(Some(len)),
        Ok(None) => Ok(None),
        Err(_) => match redis_protocol::resp3::decode::complete::decode_range(buf) {
            Ok(Some((_, len))) => Ok(Some(len)),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("invalid reply from node: {e:?}")),
        },
    }
}

/// Deepest nesting of aggregates accepted in a reply. Redis's own replies
/// nest a few levels (COMMAND DOCS: 7); this keeps the recursive decoders
/// far from the end of a 2 MiB thread stack even in a debug build.
pub const MAX_REPLY_DEPTH: usize = 64;

/// Whether the reply at the front of `buf` opens more than
/// [`MAX_REPLY_DEPTH`] nested aggregates, looking only at the bytes there
/// are. Iterative, so it cannot overflow the stack itself; anything it does
/// not understand is left to the decoders (`false`).
fn too_deep(buf: &[u8]) -> bool {
    // Each level takes at least 4 bytes (`*1\r\n`).
    if buf.len() < 4 * MAX_REPLY_DEPTH {
        return false;
    }
    let count = |line: &[u8]| -> Option<i64> { std::str::from_utf8(line).ok()?.parse().ok() };
    // Elements still expected by each open aggregate.
    let mut open: Vec<u64> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(&kind) = buf.get(pos) else {
            return false;
        };
        let Some(cr) = find_crlf(buf, pos + 1) else {
            return false;
        };
        let line = &buf[pos + 1..cr];
        pos = cr + 2;
        match kind {
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let Some(n) = count(line) else { return false };
                let n = u64::try_from(n).unwrap_or(0);
                // Maps hold pairs; an attribute is followed by its value.
                let elems = match kind {
                    b'%' => n.saturating_mul(2),
                    b'|' => n.saturating_mul(2).saturating_add(1),
                    _ => n,
                };
                if elems > 0 {
                    open.push(elems);
                    if open.len() > MAX_REPLY_DEPTH {
                        return true;
                    }
                    continue;
                }
            }
            b'$' | b'!' | b'=' => {
                let Some(len) = count(line) else { return false };
                if let Ok(len) = usize::try_from(len) {
                    pos = match pos.checked_add(len).and_then(|p| p.checked_add(2)) {
                        Some(p) if p <= buf.len() => p,
                        _ => return false,
                    };
                }
            }
            _ => {}
        }
        // One value complete: close the aggregates it completes.
        loop {
            let Some(left) = open.last_mut() else {
                return false; // the whole reply, within the limit
            };
            *left -= 1;
            if *left > 0 {
                break;
            }
            open.pop();
        }
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        if buf[i] == b'\r' && buf[i + 1] == b'\n' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// If `reply` is an error reply (`-…` or RESP3 blob error `!…`), its text.
pub fn error_text(reply: &[u8]) -> Option<&[u8]> {
    match reply.first() {
        Some(b'-') => Some(trim_crlf(&reply[1..])),
        Some(b'!') => {
            let p = find_crlf(reply, 1)?;
            Some(trim_crlf(&reply[p + 2..]))
        }
        _ => None,
    }
}

fn trim_crlf(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r\n").unwrap_or(b)
}

// ----- encoding of replies the proxy makes itself -----

pub fn simple(s: &str) -> Vec<u8> {
    format!("+{s}\r\n").into_bytes()
}

/// An error reply; `msg` starts with its code (`ERR …`, `CROSSSLOT …`).
/// CR and LF are replaced so the reply stays one line.
pub fn error(msg: &str) -> Vec<u8> {
    let clean: String = msg
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    format!("-{clean}\r\n").into_bytes()
}

pub fn integer(i: i64) -> Vec<u8> {
    format!(":{i}\r\n").into_bytes()
}

pub fn bulk(b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(b.len() + 16);
    v.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
    v.extend_from_slice(b);
    v.extend_from_slice(b"\r\n");
    v
}

/// Encode a command as a multibulk request.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    v.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(buf: &[u8]) -> (Result<Scan, ProtocolError>, Vec<Vec<u8>>) {
        let mut args = Vec::new();
        let r = scan_request(buf, &mut args);
        let words = args.iter().map(|r| buf[r.clone()].to_vec()).collect();
        (r, words)
    }

    #[test]
    fn multibulk_complete_and_pipelined() {
        let buf = b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n*1\r\n$4\r\nPING\r\n";
        let (r, words) = scan(buf);
        assert_eq!(r, Ok(Scan::Complete(22)));
        assert_eq!(words, vec![b"GET".to_vec(), b"foo".to_vec()]);
        let (r, words) = scan(&buf[22..]);
        assert_eq!(r, Ok(Scan::Complete(14)));
        assert_eq!(words, vec![b"PING".to_vec()]);
    }

    #[test]
    fn multibulk_incomplete_at_every_cut() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        for cut in 0..buf.len() {
            let (r, _) = scan(&buf[..cut]);
            match r {
                Ok(Scan::Incomplete { need }) => assert!(need > cut, "cut {cut} need {need}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        assert_eq!(scan(buf).0, Ok(Scan::Complete(buf.len())));
    }

    #[test]
    fn binary_safe_bulk() {
        let mut buf = b"*2\r\n$4\r\nECHO\r\n$6\r\n".to_vec();
        buf.extend_from_slice(b"\0\r\n\xff\r\n");
        buf.extend_from_slice(b"\r\n");
        let (r, words) = scan(&buf);
        assert_eq!(r, Ok(Scan::Complete(buf.len())));
        assert_eq!(words[1], b"\0\r\n\xff\r\n".to_vec());
    }

    #[test]
    fn limits_and_malformed() {
        assert!(scan(b"*1\r\n$600000000\r\n").0.is_err());
        assert!(scan(b"*1\r\n$-5\r\n").0.is_err());
        assert!(scan(b"*1\r\n$abc\r\n").0.is_err());
        assert!(scan(b"*99999999999\r\n").0.is_err());
        assert!(scan(b"*1\r\n*1\r\n$4\r\nPING\r\n").0.is_err());
        assert!(scan(b"*1\r\n$4\r\nPINGxx").0.is_err());
        assert!(scan(b"*x\r\n").0.is_err());
        let long = vec![b'a'; MAX_INLINE_LEN + 10];
        assert!(scan(&long).0.is_err());
        let mut hdr = b"*".to_vec();
        hdr.extend(vec![b'1'; MAX_INLINE_LEN + 10]);
        assert!(scan(&hdr).0.is_err());
        // Within limits but incomplete: waits.
        assert!(matches!(
            scan(b"*1\r\n$500000000\r\n").0,
            Ok(Scan::Incomplete { .. })
        ));
    }

    #[test]
    fn inline_commands() {
        let (r, words) = scan(b"SET k \"hello world\"\r\n");
        assert_eq!(r, Ok(Scan::Complete(21)));
        assert_eq!(
            words,
            vec![b"SET".to_vec(), b"k".to_vec(), b"hello world".to_vec()]
        );
        let (r, words) = scan(b"PING\n");
        assert_eq!(r, Ok(Scan::Complete(5)));
        assert_eq!(words, vec![b"PING".to_vec()]);
        assert_eq!(scan(b"\r\n").0, Ok(Scan::Empty(2)));
        assert_eq!(scan(b"*0\r\n").0, Ok(Scan::Empty(4)));
        assert!(matches!(scan(b"PIN").0, Ok(Scan::Incomplete { .. })));
        assert!(scan(b"SET \"a\n").0.is_err());
    }

    #[test]
    fn reply_framing() {
        assert_eq!(reply_len(b"+OK\r\n"), Ok(Some(5)));
        assert_eq!(reply_len(b"+OK\r"), Ok(None));
        assert_eq!(reply_len(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(reply_len(b"$3\r\nabc\r\n+OK"), Ok(Some(9)));
        assert_eq!(reply_len(b"$3\r\nab"), Ok(None));
        assert_eq!(reply_len(b"*2\r\n$1\r\na\r\n:1\r\n"), Ok(Some(15)));
        assert_eq!(reply_len(b"*2\r\n$1\r\na\r\n"), Ok(None));
        // RESP2 nulls inside arrays (MGET of a missing key).
        assert_eq!(reply_len(b"*2\r\n$-1\r\n$1\r\na\r\n"), Ok(Some(16)));
        assert_eq!(reply_len(b"*1\r\n*-1\r\n"), Ok(Some(9)));
        // RESP3 inside an array.
        assert_eq!(reply_len(b"*2\r\n_\r\n%1\r\n+a\r\n:1\r\n"), Ok(Some(19)));
        // RESP3: map, null, double, push.
        assert_eq!(reply_len(b"%1\r\n+a\r\n:1\r\n"), Ok(Some(12)));
        assert_eq!(reply_len(b"_\r\n"), Ok(Some(3)));
        assert_eq!(reply_len(b",1.5\r\n"), Ok(Some(6)));
        assert_eq!(reply_len(b">2\r\n+a\r\n+b\r\n"), Ok(Some(12)));
        assert!(reply_len(b"?junk\r\n").is_err());
    }

    /// Regression: a reply nested thousands of levels deep (what
    /// `EVAL "local t=1 for i=1,7900 do t={t} end return t" 0` makes a node
    /// send) overflowed the stack of the thread framing it, aborting Envoy.
    #[test]
    fn deeply_nested_reply_is_refused_not_a_stack_overflow() {
        let nested = |depth: usize, leaf: &[u8]| {
            let mut v = b"*1\r\n".repeat(depth);
            v.extend_from_slice(leaf);
            v
        };
        // Run where the upstream loops run: a thread with Rust's default
        // 2 MiB stack.
        let on_small_stack = |buf: Vec<u8>| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || reply_len(&buf))
                .unwrap()
                .join()
                .unwrap()
        };
        for leaf in [&b":1\r\n"[..], b"#t\r\n", b"_\r\n"] {
            let ok = nested(MAX_REPLY_DEPTH, leaf);
            let len = ok.len();
            assert_eq!(on_small_stack(ok), Ok(Some(len)));
            assert!(on_small_stack(nested(MAX_REPLY_DEPTH + 1, leaf)).is_err());
            assert!(on_small_stack(nested(8000, leaf)).is_err());
            // Still incomplete, but already too deep: no need to wait.
            assert!(on_small_stack(nested(8000, b"")).is_err());
        }
        // Maps and pushes count too; bulk payloads are skipped, not parsed.
        let mut maps = b"%1\r\n+k\r\n".repeat(MAX_REPLY_DEPTH + 1);
        maps.extend_from_slice(b":1\r\n");
        assert!(on_small_stack(maps).is_err());
        let payload = b"*1\r\n".repeat(4 * MAX_REPLY_DEPTH);
        let mut wide = format!("*2\r\n${}\r\n", payload.len()).into_bytes();
        wide.extend_from_slice(&payload);
        wide.extend_from_slice(b"\r\n:1\r\n");
        let len = wide.len();
        assert_eq!(on_small_stack(wide), Ok(Some(len)));
    }

    #[test]
    fn error_text_and_encoders() {
        assert_eq!(error_text(b"-MOVED 1 h:1\r\n"), Some(&b"MOVED 1 h:1"[..]));
        assert_eq!(error_text(b"!5\r\nERR x\r\n"), Some(&b"ERR x"[..]));
        assert_eq!(error_text(b"+OK\r\n"), None);
        assert_eq!(error("ERR a\r\nb"), b"-ERR a  b\r\n".to_vec());
        assert_eq!(bulk(b"ab"), b"$2\r\nab\r\n".to_vec());
        assert_eq!(
            command(&[b"GET", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }
}
