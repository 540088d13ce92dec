//! Pub/Sub through the proxy: what a subscriber sees, as Redis writes it.
//!
//! The pure part lives here: the three kinds of subscription, the frames
//! (acknowledgements, messages; RESP2 arrays or RESP3 pushes), the
//! commands a RESP2 client may send while subscribed, what a node's
//! subscriber connection sends, and Redis's glob match (for `PUBSUB
//! CHANNELS`). [`hub`] shares one upstream subscription per channel among
//! the clients of an Envoy worker; [`registry`] counts the proxy's clients
//! for `PUBSUB`.

pub mod fanout;
pub mod feed;
pub mod hub;
pub mod pace;
pub mod registry;

use crate::codec;

/// What a client subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `SUBSCRIBE`: a classic channel.
    Channel,
    /// `PSUBSCRIBE`: a glob pattern over classic channels.
    Pattern,
    /// `SSUBSCRIBE`: a shard channel, owned by its slot's shard.
    Shard,
}

impl Kind {
    /// The acknowledgement's name for a subscribe of this kind.
    pub fn subscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"subscribe",
            Kind::Pattern => b"psubscribe",
            Kind::Shard => b"ssubscribe",
        }
    }

    /// The acknowledgement's name for an unsubscribe of this kind.
    pub fn unsubscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"unsubscribe",
            Kind::Pattern => b"punsubscribe",
            Kind::Shard => b"sunsubscribe",
        }
    }

    /// The kind a command subscribes or unsubscribes, and whether it
    /// subscribes.
    pub fn of_command(name: &str) -> Option<(Kind, bool)> {
        Some(match name {
            "subscribe" => (Kind::Channel, true),
            "unsubscribe" => (Kind::Channel, false),
            "psubscribe" => (Kind::Pattern, true),
            "punsubscribe" => (Kind::Pattern, false),
            "ssubscribe" => (Kind::Shard, true),
            "sunsubscribe" => (Kind::Shard, false),
            _ => return None,
        })
    }
}

fn header(out: &mut Vec<u8>, resp3: bool, n: usize) {
    out.push(if resp3 { b'>' } else { b'*' });
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b"$");
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// A subscribe or unsubscribe acknowledgement: `[word, channel, count]`
/// (`channel` `None`: the nil of an unsubscribe-all with nothing to drop).
pub fn ack(out: &mut Vec<u8>, resp3: bool, word: &[u8], channel: Option<&[u8]>, count: usize) {
    header(out, resp3, 3);
    bulk(out, word);
    match (channel, resp3) {
        (Some(c), _) => bulk(out, c),
        (None, true) => out.extend_from_slice(b"_\r\n"),
        (None, false) => out.extend_from_slice(b"$-1\r\n"),
    }
    out.extend_from_slice(b":");
    out.extend_from_slice(count.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A message as the client sees it: `message`/`smessage` with the channel,
/// or `pmessage` with the pattern first.
pub fn message(out: &mut Vec<u8>, resp3: bool, msg: &Message<'_>, pattern: Option<&[u8]>) {
    match (msg.kind, pattern) {
        (Kind::Pattern, Some(p)) => {
            header(out, resp3, 4);
            bulk(out, b"pmessage");
            bulk(out, p);
        }
        (Kind::Shard, _) => {
            header(out, resp3, 3);
            bulk(out, b"smessage");
        }
        _ => {
            header(out, resp3, 3);
            bulk(out, b"message");
        }
    }
    bulk(out, msg.channel);
    bulk(out, msg.payload);
}

/// `PING` in RESP2 subscribed mode: `["pong", arg or ""]`.
pub fn subscribed_pong(arg: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    header(&mut out, false, 2);
    bulk(&mut out, b"pong");
    bulk(&mut out, arg.unwrap_or_default());
    out
}

/// Whether command `name` may run while a RESP2 client is subscribed; the
/// error Redis 7.0 gives otherwise.
pub fn gate(name: &str) -> Result<(), Vec<u8>> {
    match name {
        "subscribe" | "ssubscribe" | "psubscribe" | "unsubscribe" | "sunsubscribe"
        | "punsubscribe" | "ping" | "quit" | "reset" => Ok(()),
        _ => Err(codec::error(&format!(
            "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
        ))),
    }
}

/// A message a node sent on a subscriber connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: Kind,
    /// For `pmessage`: the pattern that matched (as subscribed on the node).
    pub pattern: Option<&'a [u8]>,
    pub channel: &'a [u8],
    pub payload: &'a [u8],
}

/// What one frame on a subscriber connection is.
#[derive(Debug, PartialEq, Eq)]
pub enum NodeEvent<'a> {
    /// The node confirms a subscription.
    Subscribed(Kind, &'a [u8]),
    /// The node ended a subscription: ours (an unsubscribe we sent), or,
    /// for a shard channel, its slot moved away.
    Unsubscribed(Kind, &'a [u8]),
    Message(Message<'a>),
    /// An error reply (`-MOVED …`, or the proxy's own: connection lost).
    Error(&'a [u8]),
    /// Anything else (a pong, a frame we do not know).
    Other,
}

/// The bulk strings of a flat RESP2 array or RESP3 push; `None` for
/// anything else.
fn elements(frame: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let (first, rest) = frame.split_first()?;
    if *first != b'*' && *first != b'>' {
        return None;
    }
    let line_end = |from: usize| -> Option<usize> {
        frame
            .get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    let _ = rest;
    let end = line_end(1)?;
    let n: usize = std::str::from_utf8(&frame[1..end]).ok()?.parse().ok()?;
    let mut pos = end + 2;
    let mut out = Vec::with_capacity(n.min(8));
    for _ in 0..n {
        let t = *frame.get(pos)?;
        let e = line_end(pos + 1)?;
        let head = &frame[pos + 1..e];
        match t {
            b'$' => {
                let len: i64 = std::str::from_utf8(head).ok()?.parse().ok()?;
                if len < 0 {
                    out.push(None);
                    pos = e + 2;
                } else {
                    let start = e + 2;
                    let stop = start.checked_add(len as usize)?;
                    out.push(Some(frame.get(start..stop)?));
                    pos = stop + 2;
                }
            }
            b':' => {
                out.push(Some(head));
                pos = e + 2;
            }
            b'_' => {
                out.push(None);
                pos = e + 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Read one frame of a subscriber connection.
pub fn node_event(frame: &[u8]) -> NodeEvent<'_> {
    if let Some(e) = codec::error_text(frame) {
        return NodeEvent::Error(e);
    }
    let Some(el) = elements(frame) else {
        return NodeEvent::Other;
    };
    let word = el.first().copied().flatten().unwrap_or_default();
    let arg = |i: usize| el.get(i).copied().flatten();
    let kind_of =
        |w: &[u8]| -> Option<(Kind, bool)> { Kind::of_command(std::str::from_utf8(w).ok()?) };
    match (word, el.len()) {
        (b"message", 3) | (b"smessage", 3) => match (arg(1), arg(2)) {
            (Some(channel), Some(payload)) => NodeEvent::Message(Message {
                kind: if word == b"message" {
                    Kind::Channel
                } else {
                    Kind::Shard
                },
                pattern: None,
                channel,
                payload,
            }),
            _ => NodeEvent::Other,
        },
        (b"pmessage", 4) => match (arg(1), arg(2), arg(3)) {
            (Some(p), Some(channel), Some(payload)) => NodeEvent::Message(Message {
                kind: Kind::Pattern,
                pattern: Some(p),
                channel,
                payload,
            }),
            _ => NodeEvent::Other,
        },
        (w, 3) => match (kind_of(w), arg(1)) {
            (Some((k, true)), Some(c)) => NodeEvent::Subscribed(k, c),
            (Some((k, false)), Some(c)) => NodeEvent::Unsubscribed(k, c),
            _ => NodeEvent::Other,
        },
        _ => NodeEvent::Other,
    }
}

/// Keyspace notification channels: each node publishes its own keys'
/// events to its own subscribers only.
const NODE_LOCAL: [&[u8]; 2] = [b"__keyspace@", b"__keyevent@"];

/// A channel whose messages only the node they happen on sends.
pub fn node_local(channel: &[u8]) -> bool {
    NODE_LOCAL.iter().any(|p| channel.starts_with(p))
}

/// A subscription that must be on every master: a keyspace notification
/// channel, or a pattern that may match one (`*`, `__key*`, …).
pub fn cluster_wide(kind: Kind, name: &[u8]) -> bool {
    match kind {
        Kind::Channel => node_local(name),
        Kind::Pattern => NODE_LOCAL.iter().any(|p| may_match_prefix(name, p)),
        Kind::Shard => false,
    }
}

/// Whether glob `pattern` can match some string starting with `prefix`.
fn may_match_prefix(pattern: &[u8], prefix: &[u8]) -> bool {
    let mut p = 0;
    for &c in prefix {
        match pattern.get(p) {
            None => return false,
            Some(b'*') => return true,
            Some(b'?') => p += 1,
            Some(b'[') => match class(pattern, p, c) {
                Some((true, end)) => p = end,
                _ => return false,
            },
            Some(b'\\') if p + 1 < pattern.len() => {
                if pattern[p + 1] != c {
                    return false;
                }
                p += 2;
            }
            Some(&x) => {
                if x != c {
                    return false;
                }
                p += 1;
            }
        }
    }
    true
}

/// Redis's `stringmatchlen` (glob: `*`, `?`, `[a-z]`, `[^x]`, `\x`), case
/// sensitive.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index, string index).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let mut matched = false;
        let mut next_p = p;
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    matched = true;
                    next_p = p + 1;
                }
                b'[' => {
                    if let Some((ok, end)) = class(pattern, p, s[i]) {
                        matched = ok;
                        next_p = end;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    matched = pattern[p + 1] == s[i];
                    next_p = p + 2;
                }
                c => {
                    matched = c == s[i];
                    next_p = p + 1;
                }
            }
        }
        if matched {
            p = next_p;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// A `[...]` class at `pattern[p]` against `c`: (matches, index after it).
fn class(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut hit = false;
    loop {
        let &x = pattern.get(j)?;
        if x == b']' {
            break;
        }
        if x == b'\\' && j + 1 < pattern.len() {
            hit |= pattern[j + 1] == c;
            j += 2;
        } else if pattern.get(j + 1) == Some(&b'-')
            && pattern.get(j + 2).is_some_and(|&e| e != b']')
        {
            let (a, b) = (x.min(pattern[j + 2]), x.max(pattern[j + 2]));
            hit |= (a..=b).contains(&c);
            j += 3;
        } else {
            hit |= x == c;
            j += 1;
        }
    }
    Some((hit != negate, j + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_as_redis_writes_them() {
        let mut out = Vec::new();
        ack(&mut out, false, b"subscribe", Some(b"ch"), 1);
        assert_eq!(out, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
        let mut out = Vec::new();
        ack(&mut out, true, b"unsubscribe", None, 0);
        assert_eq!(out, b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");
        let mut out = Vec::new();
        ack(&mut out, false, b"punsubscribe", None, 0);
        assert_eq!(out, b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n");
        assert_eq!(subscribed_pong(None), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        assert_eq!(
            subscribed_pong(Some(b"hi")),
            b"*2\r\n$4\r\npong\r\n$2\r\nhi\r\n"
        );
    }

    #[test]
    fn messages_in_both_protocols() {
        let m = Message {
            kind: Kind::Pattern,
            pattern: Some(b"c*"),
            channel: b"ch",
            payload: b"hi",
        };
        let mut out = Vec::new();
        message(&mut out, true, &m, Some(b"x:c*"));
        assert_eq!(
            out,
            b">4\r\n$8\r\npmessage\r\n$4\r\nx:c*\r\n$2\r\nch\r\n$2\r\nhi\r\n"
        );
        let m = Message {
            kind: Kind::Shard,
            pattern: None,
            channel: b"p:s",
            payload: b"",
        };
        let mut out = Vec::new();
        message(&mut out, false, &m, None);
        assert_eq!(out, b"*3\r\n$8\r\nsmessage\r\n$3\r\np:s\r\n$0\r\n\r\n");
    }

    #[test]
    fn node_frames_are_read() {
        assert_eq!(
            node_event(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"),
            NodeEvent::Subscribed(Kind::Channel, b"a")
        );
        assert_eq!(
            node_event(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n"),
            NodeEvent::Unsubscribed(Kind::Shard, b"a")
        );
        assert_eq!(
            node_event(b"*4\r\n$8\r\npmessage\r\n$2\r\na*\r\n$2\r\nab\r\n$1\r\nx\r\n"),
            NodeEvent::Message(Message {
                kind: Kind::Pattern,
                pattern: Some(b"a*"),
                channel: b"ab",
                payload: b"x"
            })
        );
        assert_eq!(
            node_event(b"-MOVED 1 h:1\r\n"),
            NodeEvent::Error(b"MOVED 1 h:1")
        );
        assert_eq!(node_event(b"+PONG\r\n"), NodeEvent::Other);
        assert_eq!(
            node_event(b"*3\r\n$7\r\nmessage\r\n$9\r\nshort\r\n"),
            NodeEvent::Other
        );
    }

    #[test]
    fn gate_allows_only_what_redis_allows() {
        assert!(gate("ping").is_ok() && gate("reset").is_ok() && gate("ssubscribe").is_ok());
        assert_eq!(
            gate("get").unwrap_err(),
            b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n".to_vec()
        );
    }

    #[test]
    fn keyspace_subscriptions_are_cluster_wide() {
        assert!(cluster_wide(Kind::Pattern, b"*"));
        assert!(cluster_wide(Kind::Pattern, b"__keyspace@0__:*"));
        assert!(cluster_wide(Kind::Pattern, b"__key*"));
        assert!(cluster_wide(Kind::Pattern, b"_?keyevent@*"));
        assert!(!cluster_wide(Kind::Pattern, b"news.*"));
        assert!(!cluster_wide(Kind::Pattern, b"__key"));
        assert!(cluster_wide(Kind::Channel, b"__keyevent@0__:set"));
        assert!(!cluster_wide(Kind::Channel, b"news"));
        assert!(!cluster_wide(Kind::Shard, b"__keyspace@0__:k"));
        assert!(node_local(b"__keyspace@0__:k") && !node_local(b"k"));
    }

    #[test]
    fn glob_like_stringmatchlen() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"foo.*", b"foo.bar"));
        assert!(!glob_match(b"foo.*", b"fo.bar"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-b]llo", b"hbllo"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(glob_match(b"__keyspace@0__:*", b"__keyspace@0__:k"));
        assert!(glob_match(b"*a*b", b"xxaxxb"));
        assert!(!glob_match(b"", b"x"));
        assert!(glob_match(b"", b""));
    }
}
