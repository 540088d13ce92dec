//! Handing a run of messages to a subscription's clients.
//!
//! A *run* is consecutive messages of one subscription, as one node link
//! delivered them. The run is framed once per way its clients see it
//! (RESP2 array or RESP3 push, the name as each client subscribed it, which
//! a prefix route may make differ from the node's) and every client of the
//! same way gets the same shared [`Chunk`]. Runs keep the node's order: a
//! client subscribed to two channels gets their messages interleaved as
//! the node sent them.

use super::feed::{Chunk, Feed};
use super::{message, Kind, Message};

/// The run framed for one client: `visible` is the name as it subscribed
/// (the channel of `message`/`smessage`, the pattern of `pmessage`).
pub fn frame(run: &[Message<'_>], resp3: bool, visible: &[u8]) -> Vec<u8> {
    let size: usize = run
        .iter()
        .map(|m| m.channel.len() + m.payload.len() + visible.len() + 48)
        .sum();
    let mut out = Vec::with_capacity(size);
    for m in run {
        match m.kind {
            Kind::Pattern => message(&mut out, resp3, m, Some(visible)),
            _ => {
                let m = Message {
                    channel: visible,
                    ..*m
                };
                message(&mut out, resp3, &m, None)
            }
        }
    }
    out
}

/// Queue `run` on every client's feed; returns the messages handed over
/// (messages × clients that took them: one over its budget takes none).
pub fn fan_out<'c>(
    run: &[Message<'_>],
    clients: impl Iterator<Item = (&'c Feed, &'c [u8])>,
) -> u64 {
    if run.is_empty() {
        return 0;
    }
    let mut framed: Vec<(bool, &[u8], Chunk)> = Vec::new();
    let mut handed = 0;
    for (feed, visible) in clients {
        let resp3 = feed.resp3();
        let i = match framed
            .iter()
            .position(|(r, v, _)| *r == resp3 && *v == visible)
        {
            Some(i) => i,
            None => {
                framed.push((resp3, visible, frame(run, resp3, visible).into()));
                framed.len() - 1
            }
        };
        if feed.push(&framed[i].2) {
            handed += run.len() as u64;
        }
    }
    handed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ClientShared, Notify};
    use std::sync::Arc;

    struct Quiet;
    impl Notify for Quiet {
        fn notify(&self) {}
    }

    fn msg<'a>(
        kind: Kind,
        pattern: Option<&'a [u8]>,
        channel: &'a [u8],
        payload: &'a [u8],
    ) -> Message<'a> {
        Message {
            kind,
            pattern,
            channel,
            payload,
        }
    }

    #[test]
    fn a_run_is_framed_once_per_way_it_is_seen() {
        let feeds: Vec<Arc<Feed>> = [false, false, true]
            .iter()
            .map(|r| Feed::new(ClientShared::new(Box::new(Quiet)), *r, 1 << 20))
            .collect();
        let run = [
            msg(Kind::Channel, None, b"ch", b"1"),
            msg(Kind::Channel, None, b"ch", b"2"),
        ];
        let visible: [&[u8]; 3] = [b"ch", b"ch", b"p:ch"];
        let handed = fan_out(&run, feeds.iter().map(|f| &**f).zip(visible));
        assert_eq!(handed, 6);
        let got: Vec<Vec<u8>> = feeds.iter().map(|f| f.take().concat().unwrap()).collect();
        assert_eq!(
            got[0],
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\n1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\n2\r\n"
        );
        assert_eq!(got[1], got[0]);
        assert_eq!(
            got[2],
            b">3\r\n$7\r\nmessage\r\n$4\r\np:ch\r\n$1\r\n1\r\n>3\r\n$7\r\nmessage\r\n$4\r\np:ch\r\n$1\r\n2\r\n"
        );
    }

    #[test]
    fn pattern_messages_name_the_pattern_as_subscribed() {
        let run = [msg(Kind::Pattern, Some(b"c*"), b"ch", b"hi")];
        assert_eq!(
            frame(&run, false, b"x:c*"),
            b"*4\r\n$8\r\npmessage\r\n$4\r\nx:c*\r\n$2\r\nch\r\n$2\r\nhi\r\n"
        );
    }
}
