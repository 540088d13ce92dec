//! What one node connection owes, without the socket: the bytes not yet
//! written and, in order, the replies still to come.
//!
//! Redis answers a connection's commands in the order it received them, so
//! matching replies is a queue: every command written (the client's, and
//! the proxy's own — `ASKING`, `READONLY`, `AUTH`, `HELLO`, the `MULTI` and
//! `+QUEUED` replies a transaction swallows) pushes one entry, every whole
//! reply pops one. Each entry remembers where its bytes end in the stream,
//! so when the connection breaks the worker can tell a command that never
//! reached the node whole (safe to send elsewhere) from one that may have
//! run.

use super::Request;
use std::collections::VecDeque;
use std::time::Instant;

/// One reply this connection still owes.
struct Owed {
    /// `None`: the reply to one of the proxy's own commands, dropped.
    req: Option<Request>,
    /// Stream offset just past this command's bytes.
    end: u64,
    /// The client already got a timeout error; the reply is dropped.
    timed_out: bool,
}

/// What the next whole reply on the connection belongs to.
pub enum Next {
    /// One of the proxy's own commands.
    Internal,
    /// A command whose client already got a timeout error.
    TimedOut,
    Request(Request),
    /// A frame of a stream (`MONITOR`): for this client, command `seq`,
    /// part `part`; the stream stays owed.
    Stream(std::sync::Arc<super::ClientShared>, u64, super::Part),
}

/// A command owed a reply when its connection broke.
pub struct Unanswered {
    pub req: Request,
    /// All its bytes were written to the socket: it may have run.
    pub reached_node: bool,
}

#[derive(Default)]
pub struct Pipeline {
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes ever queued / written on this connection.
    queued: u64,
    written: u64,
    owed: VecDeque<Owed>,
    /// Write nothing past this stream offset (a client user's `AUTH`, whose
    /// reply must be in before any command may run on the connection).
    hold_at: Option<u64>,
}

/// Past this many written bytes at the front of `out`, drop them even if
/// more are waiting (so a slow socket does not pin a huge buffer).
const COMPACT_AFTER: usize = 1 << 20;

impl Pipeline {
    /// Queue one of the proxy's own commands; its reply is dropped.
    pub fn push_internal(&mut self, cmd: &[u8]) {
        self.out.extend_from_slice(cmd);
        self.queued += cmd.len() as u64;
        self.expect_internal();
    }

    /// One more reply belongs to no client command.
    fn expect_internal(&mut self) {
        self.owed.push_back(Owed {
            req: None,
            end: self.queued,
            timed_out: false,
        });
    }

    /// Queue a client's command: `prefix` (e.g. `ASKING`) first when given,
    /// then the command, whose `swallow` leading replies are dropped.
    pub fn push_request(&mut self, req: Request, prefix: Option<&[u8]>) {
        if let Some(p) = prefix {
            self.push_internal(p);
        }
        self.out.extend_from_slice(&req.data);
        self.queued += req.data.len() as u64;
        for _ in 0..req.swallow {
            self.expect_internal();
        }
        self.owed.push_back(Owed {
            req: Some(req),
            end: self.queued,
            timed_out: false,
        });
    }

    /// Bytes waiting to be written (up to the hold, if any).
    pub fn unwritten(&self) -> &[u8] {
        let rest = &self.out[self.out_pos..];
        match self.hold_at {
            Some(at) => {
                let allowed = usize::try_from(at.saturating_sub(self.written)).unwrap_or(0);
                &rest[..allowed.min(rest.len())]
            }
            None => rest,
        }
    }

    /// Write nothing queued after this point until [`Pipeline::release`].
    pub fn hold_here(&mut self) {
        self.hold_at = Some(self.queued);
    }

    /// Everything queued may be written again.
    pub fn release(&mut self) {
        self.hold_at = None;
    }

    /// `n` bytes of [`Pipeline::unwritten`] went out.
    pub fn wrote(&mut self, n: usize) {
        let n = n.min(self.out.len() - self.out_pos);
        self.out_pos += n;
        self.written += n as u64;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > COMPACT_AFTER {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Replies still owed (the proxy's own included).
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    pub fn is_idle(&self) -> bool {
        self.owed.is_empty()
    }

    /// The node streams on this connection (`MONITOR`, a subscriber
    /// connection): no reply it owes has a deadline.
    pub fn is_streaming(&self) -> bool {
        self.owed
            .front()
            .and_then(|o| o.req.as_ref())
            .is_some_and(|r| r.stream)
    }

    /// The oldest client command still owed a reply (answered with a
    /// timeout or not).
    pub fn front_request(&self) -> Option<&Request> {
        self.owed.iter().find_map(|o| o.req.as_ref())
    }

    /// Client commands still owed a reply, oldest first.
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.owed.iter().filter_map(|o| o.req.as_ref())
    }

    /// A whole reply arrived: what it belongs to, or `None` if nothing was
    /// owed (the node is out of step with us).
    pub fn next_reply(&mut self) -> Option<Next> {
        if let Some(r) = self.owed.front().and_then(|o| o.req.as_ref()) {
            if r.stream {
                return Some(Next::Stream(r.client.clone(), r.seq, r.part));
            }
        }
        let o = self.owed.pop_front()?;
        Some(match o.req {
            None => Next::Internal,
            Some(_) if o.timed_out => Next::TimedOut,
            Some(req) => Next::Request(req),
        })
    }

    /// Mark the commands whose deadline has passed and call `expired` for
    /// each. Replies come in order, so only the front can be overdue; the
    /// walk stops at the first command still within its deadline.
    pub fn expire(&mut self, now: Instant, mut expired: impl FnMut(&Request)) {
        for o in self.owed.iter_mut() {
            if o.timed_out {
                continue;
            }
            let Some(req) = o.req.as_ref() else { continue };
            if req.deadline > now || req.stream {
                break;
            }
            o.timed_out = true;
            expired(req);
        }
    }

    /// The connection broke: every command still owed a reply (not the
    /// proxy's own, not those already answered with a timeout).
    pub fn unanswered(&mut self) -> Vec<Unanswered> {
        let written = self.written;
        self.owed
            .drain(..)
            .filter(|o| !o.timed_out)
            .filter_map(|o| {
                o.req.map(|req| Unanswered {
                    req,
                    reached_node: o.end <= written,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ClientShared, Notify, Target, WHOLE};
    use std::time::Duration;

    struct Quiet;
    impl Notify for Quiet {
        fn notify(&self) {}
    }

    fn req(data: &[u8], deadline: Instant, swallow: u32) -> Request {
        let mut r = Request::new(
            ClientShared::new(Box::new(Quiet)),
            0,
            WHOLE,
            0,
            Target::Slot {
                slot: 0,
                read: false,
            },
            data.to_vec(),
            deadline,
        );
        r.swallow = swallow;
        r
    }

    fn data_of(n: Next) -> Option<Vec<u8>> {
        match n {
            Next::Request(r) => Some(r.data),
            _ => None,
        }
    }

    #[test]
    fn a_hold_writes_only_what_was_queued_before_it() {
        let far = Instant::now() + Duration::from_secs(5);
        let mut p = Pipeline::default();
        p.push_internal(b"AUTH u p");
        p.hold_here();
        p.push_request(req(b"GET k", far, 0), None);
        assert_eq!(p.unwritten(), b"AUTH u p");
        p.wrote(4);
        assert_eq!(p.unwritten(), b" u p");
        p.wrote(4);
        assert_eq!(p.unwritten(), b"", "the command waits for the release");
        p.release();
        assert_eq!(p.unwritten(), b"GET k");
    }

    #[test]
    fn replies_match_commands_in_order_with_the_proxys_own_skipped() {
        let t = Instant::now() + Duration::from_secs(5);
        let mut p = Pipeline::default();
        p.push_internal(b"READONLY");
        p.push_request(req(b"GET a", t, 0), Some(b"ASKING"));
        p.push_request(req(b"EXEC", t, 2), None);
        assert_eq!(p.unwritten(), b"READONLYASKINGGET aEXEC");
        assert_eq!(p.owed(), 6);
        assert!(matches!(p.next_reply(), Some(Next::Internal)));
        assert!(matches!(p.next_reply(), Some(Next::Internal)));
        assert_eq!(p.next_reply().and_then(data_of), Some(b"GET a".to_vec()));
        assert!(matches!(p.next_reply(), Some(Next::Internal)));
        assert!(matches!(p.next_reply(), Some(Next::Internal)));
        assert_eq!(p.next_reply().and_then(data_of), Some(b"EXEC".to_vec()));
        assert!(p.next_reply().is_none());
        assert!(p.is_idle());
    }

    /// MONITOR: its reply and every frame after go to the client, the
    /// entry stays owed, and its deadline never times it out.
    #[test]
    fn a_stream_owns_every_later_frame_and_never_times_out() {
        let now = Instant::now();
        let mut p = Pipeline::default();
        p.push_request(
            req(b"MONITOR", now - Duration::from_secs(1), 0).streaming(),
            None,
        );
        let mut hit = 0;
        p.expire(now, |_| hit += 1);
        assert_eq!(hit, 0);
        for _ in 0..3 {
            assert!(matches!(p.next_reply(), Some(Next::Stream(_, 0, WHOLE))));
        }
        assert_eq!(p.owed(), 1);
    }

    #[test]
    fn partial_writes_decide_what_may_have_run() {
        let t = Instant::now() + Duration::from_secs(5);
        let mut p = Pipeline::default();
        p.push_request(req(b"SET a 1", t, 0), None);
        p.push_request(req(b"SET b 2", t, 0), None);
        p.push_request(req(b"SET c 3", t, 0), None);
        p.wrote(10); // "SET a 1" whole, "SET b 2" in part
        assert_eq!(p.unwritten(), b" b 2SET c 3");
        let u = p.unanswered();
        let reached: Vec<(Vec<u8>, bool)> = u
            .into_iter()
            .map(|u| (u.req.data, u.reached_node))
            .collect();
        assert_eq!(
            reached,
            vec![
                (b"SET a 1".to_vec(), true),
                (b"SET b 2".to_vec(), false),
                (b"SET c 3".to_vec(), false)
            ]
        );
    }

    #[test]
    fn timeouts_answer_the_front_once_and_drop_its_late_reply() {
        let now = Instant::now();
        let mut p = Pipeline::default();
        p.push_request(req(b"A", now - Duration::from_millis(1), 0), None);
        p.push_request(req(b"B", now + Duration::from_secs(5), 0), None);
        // Behind a command still in time: not checked (replies are ordered).
        p.push_request(req(b"C", now - Duration::from_millis(1), 0), None);
        let mut hit = Vec::new();
        p.expire(now, |r| hit.push(r.data.clone()));
        p.expire(now, |r| hit.push(r.data.clone()));
        assert_eq!(hit, vec![b"A".to_vec()]);
        assert!(matches!(p.next_reply(), Some(Next::TimedOut)));
        assert_eq!(p.next_reply().and_then(data_of), Some(b"B".to_vec()));
        p.wrote(3);
        assert_eq!(p.unanswered().len(), 1);
    }

    #[test]
    fn a_timed_out_command_is_not_resent_after_a_break() {
        let now = Instant::now();
        let mut p = Pipeline::default();
        p.push_request(req(b"A", now, 0), None);
        p.expire(now, |_| {});
        assert!(p.unanswered().is_empty());
    }
}
