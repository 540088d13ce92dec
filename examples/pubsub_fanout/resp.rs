//! RESP2, just what a subscriber and a publisher receive, and the payload format.

/// One element of a reply: the parser borrows from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    Bulk(&'a [u8]),
    Int(i64),
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Nil,
}

/// A whole reply: a single item or an array of up to three items (a
/// subscribe acknowledgement or a message; longer arrays are not expected).
#[derive(Debug, PartialEq)]
pub enum Reply<'a> {
    Single(Item<'a>),
    Triple([Item<'a>; 3]),
    OtherArray(usize),
}

#[derive(Debug)]
pub struct BadResp(pub String);

pub fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

pub fn int_of(s: &[u8]) -> Result<i64, BadResp> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BadResp(format!("bad integer {:?}", String::from_utf8_lossy(s))))
}

/// Parses the item at `at`: `Ok(None)` when it is not complete yet.
pub fn item(buf: &[u8], at: usize) -> Result<Option<(Item<'_>, usize)>, BadResp> {
    let Some((head, next)) = line(buf, at) else {
        return Ok(None);
    };
    let Some((&kind, body)) = head.split_first() else {
        return Err(BadResp("empty line".into()));
    };
    Ok(Some(match kind {
        b'+' => (Item::Simple(body), next),
        b'-' => (Item::Error(body), next),
        b':' => (Item::Int(int_of(body)?), next),
        b'$' => {
            let len = int_of(body)?;
            if len < 0 {
                return Ok(Some((Item::Nil, next)));
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            (Item::Bulk(&buf[next..end]), end + 2)
        }
        other => return Err(BadResp(format!("unexpected type byte {:?}", other as char))),
    }))
}

/// Parses the reply at `at`: `Ok(None)` when it is not complete yet.
pub fn reply(buf: &[u8], at: usize) -> Result<Option<(Reply<'_>, usize)>, BadResp> {
    if buf.get(at) != Some(&b'*') {
        return Ok(item(buf, at)?.map(|(i, next)| (Reply::Single(i), next)));
    }
    let Some((head, mut next)) = line(buf, at) else {
        return Ok(None);
    };
    let n = int_of(&head[1..])?;
    if n != 3 {
        // Not a pub/sub reply; skip its (flat) elements all the same.
        for _ in 0..n.max(0) {
            match item(buf, next)? {
                Some((_, after)) => next = after,
                None => return Ok(None),
            }
        }
        return Ok(Some((Reply::OtherArray(n.max(0) as usize), next)));
    }
    let mut items = [Item::Nil; 3];
    for slot in &mut items {
        match item(buf, next)? {
            Some((i, after)) => {
                *slot = i;
                next = after;
            }
            None => return Ok(None),
        }
    }
    Ok(Some((Reply::Triple(items), next)))
}

pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `SEQ:SEND_NS:` padded with `x` to `size` bytes.
pub fn payload(seq: u64, send_ns: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{seq}:{send_ns}:").into_bytes();
    if p.len() < size {
        p.resize(size, b'x');
    }
    p
}

pub fn parse_payload(p: &[u8]) -> Option<(u64, u64)> {
    let mut it = p.split(|&b| b == b':');
    let seq = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    let ns = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    Some((seq, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub fn parses_acks_messages_and_partial_input() {
        let ack = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        let (r, n) = reply(ack, 0).unwrap().unwrap();
        assert_eq!(n, ack.len());
        assert_eq!(
            r,
            Reply::Triple([Item::Bulk(b"subscribe"), Item::Bulk(b"ch"), Item::Int(1)])
        );
        let msg = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\n7:123\r\n";
        for cut in 0..msg.len() {
            assert!(reply(&msg[..cut], 0).unwrap().is_none(), "cut at {cut}");
        }
        let (r, _) = reply(msg, 0).unwrap().unwrap();
        let Reply::Triple([_, _, Item::Bulk(p)]) = r else {
            panic!("{r:?}")
        };
        assert_eq!(parse_payload(p), Some((7, 123)));
        assert_eq!(
            reply(b"-ERR no\r\n", 0).unwrap().unwrap().0,
            Reply::Single(Item::Error(b"ERR no"))
        );
    }

    #[test]
    pub fn payload_round_trips_and_pads() {
        let p = payload(42, 987654321, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(parse_payload(&p), Some((42, 987654321)));
    }
}
