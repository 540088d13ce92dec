//! Blocking commands (`BLPOP`, `BRPOP`, `BRPOPLPUSH`, `BLMOVE`, `BLMPOP`,
//! `BZPOPMIN`, `BZPOPMAX`, `BZMPOP`, `XREAD`/`XREADGROUP … BLOCK`).
//!
//! Each runs on an upstream connection it holds alone while blocked (the
//! loop's blocking pool, see `upstream::blocking`), so it never delays
//! another client. For this client it behaves as on Redis: the command is
//! sent only once every earlier command is answered (it must see their
//! effects, and they must not see its pop), and later commands wait until
//! it is answered (a barrier, as for `EXEC`), so replies stay in order and
//! nothing overtakes it. Inside `MULTI` these commands do not block and go
//! with the transaction (see `transaction`).
//!
//! The timeout is checked here with Redis's messages; the node enforces
//! it. `WAIT` is not one of these: see [`Session::wait_timeout`].

use super::Session;
use crate::codec;
use crate::command;
use crate::upstream::{Blocking, Request, Target, TimeoutUnit, WHOLE};
use std::time::{Duration, Instant};

/// Input buffered from a blocked client before the proxy stops reading.
const READ_WHILE_BLOCKED: usize = 64 * 1024;

/// A blocking command of this session: waiting for earlier replies
/// (`req` still here), or on its node.
pub(super) struct Held {
    seq: u64,
    req: Option<Request>,
}

/// Where a blocking command's timeout is: (argument index, unit).
fn timeout_position(name: &str, args: &[&[u8]]) -> Option<(usize, TimeoutUnit)> {
    match name {
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" | "brpoplpush" | "blmove" => {
            Some((args.len().checked_sub(1)?, TimeoutUnit::Seconds))
        }
        "blmpop" | "bzmpop" => Some((1, TimeoutUnit::Seconds)),
        "xread" | "xreadgroup" => {
            let at = args.iter().position(|a| a.eq_ignore_ascii_case(b"block"))?;
            Some((at + 1, TimeoutUnit::Millis))
        }
        _ => None,
    }
}

/// A timeout argument as Redis reads it: `None` is 0 (forever); errors
/// carry Redis's own message.
pub(super) fn parse_timeout(arg: &[u8], unit: TimeoutUnit) -> Result<Option<Duration>, String> {
    let text = std::str::from_utf8(arg).ok();
    let ms: i64 = match unit {
        TimeoutUnit::Seconds => {
            let v: f64 = text
                .filter(|t| !t.starts_with(|c: char| c.is_whitespace()))
                .and_then(|t| t.parse().ok())
                .filter(|v: &f64| !v.is_nan())
                .ok_or("ERR timeout is not a float or out of range")?;
            let ms = v * 1000.0;
            if ms > i64::MAX as f64 {
                return Err("ERR timeout is out of range".into());
            }
            // Redis rounds up: 0.0001 s is 1 ms, not forever.
            ms.ceil() as i64
        }
        TimeoutUnit::Millis => text
            .filter(|t| !t.starts_with('+'))
            .and_then(|t| t.parse().ok())
            .ok_or("ERR timeout is not an integer or out of range")?,
    };
    if ms < 0 {
        return Err("ERR timeout is negative".into());
    }
    Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
}

impl Session {
    /// A blocking command (outside `MULTI`): check its timeout and keys,
    /// give it a reply slot and hold later commands behind it; it leaves
    /// once every earlier command is answered ([`Session::launch_blocking`]).
    pub(super) fn blocking(
        &mut self,
        cmd: &command::Command,
        frame: &[u8],
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let Some((at, unit)) = timeout_position(cmd.name, args) else {
            return Err(codec::error(&command::arity_error(cmd.name)));
        };
        let Some(arg) = args.get(at) else {
            return Err(codec::error("ERR syntax error"));
        };
        let timeout = parse_timeout(arg, unit).map_err(|m| codec::error(&m))?;
        let Some((cluster, slot, data)) = self.locate(cmd, frame, args)? else {
            return Err(codec::error(&command::arity_error(cmd.name)));
        };
        let seq = self.push_slot();
        let target = Target::Slot { slot, read: false };
        let deadline = self.deadline_from(now);
        let req = self
            .request(seq, WHOLE, (cluster, target), data, deadline)
            .blocking(Blocking::new(at, unit, timeout));
        self.block = Some(Held {
            seq,
            req: Some(req),
        });
        // Nothing after it may run before it is answered, as on Redis.
        self.barrier = Some(seq);
        Ok(())
    }

    /// Send the held blocking command once every earlier reply is out (it
    /// then is the oldest unanswered command); forget it once answered.
    /// True when it was just queued for the loop.
    pub(super) fn launch_blocking(&mut self) -> bool {
        let Some(held) = self.block.as_mut() else {
            return false;
        };
        if held.seq < self.replies.head_seq() {
            self.block = None;
            return false;
        }
        if held.seq != self.replies.head_seq() {
            return false;
        }
        let Some(mut req) = held.req.take() else {
            return false;
        };
        let now = self.clock.now();
        // Getting it to a node is bounded from now, not from its arrival.
        req.deadline = self.deadline_from(now);
        if self.end_stream {
            // The client closed after sending it: serve what is there now
            // and close, never block for nobody.
            if let Some(b) = req.blocking_mut() {
                b.only_what_is_there(now);
            }
        }
        self.batch.push(req);
        true
    }

    /// Whether a blocking command of this session is on its node (the
    /// loop must close its connection when the client goes away).
    pub(super) fn blocked_upstream(&self) -> bool {
        self.block.as_ref().is_some_and(|h| h.req.is_none())
    }

    /// Keep reading from a blocked client (its bytes wait in `inbuf`), up to
    /// [`READ_WHILE_BLOCKED`]: Envoy sees a client close only by reading.
    pub(super) fn read_while_blocked(&self) -> bool {
        self.blocked_upstream() && self.inbuf.len() < READ_WHILE_BLOCKED
    }

    /// `WAIT numreplicas timeout` runs on the shared connections that
    /// carried this client's writes (a connection of its own would wait for
    /// nothing: `WAIT` counts the writes of its connection), so it must not
    /// hold them long: its timeout is capped at half of `op_timeout` (0,
    /// "forever", included). The reply is still the number of replicas that
    /// acknowledged, as when `WAIT` times out on Redis.
    pub(super) fn wait_timeout(&self, args: &[&[u8]]) -> Option<Vec<u8>> {
        let cap = (self.proxy.config.settings.op_timeout / 2)
            .as_millis()
            .max(1);
        let asked: i64 = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
        if asked < 0 {
            // The node refuses it at once.
            return None;
        }
        let capped = if asked == 0 {
            cap
        } else {
            (asked as u128).min(cap)
        };
        let capped = capped.to_string();
        let mut out: Vec<&[u8]> = args.to_vec();
        out[2] = capped.as_bytes();
        Some(codec::command(&out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_read_as_redis_reads_them() {
        let s = TimeoutUnit::Seconds;
        let m = TimeoutUnit::Millis;
        assert_eq!(parse_timeout(b"0", s), Ok(None));
        assert_eq!(
            parse_timeout(b"1.5", s),
            Ok(Some(Duration::from_millis(1500)))
        );
        assert_eq!(
            parse_timeout(b"0.0001", s),
            Ok(Some(Duration::from_millis(1)))
        );
        assert_eq!(
            parse_timeout(b"-1", s),
            Err("ERR timeout is negative".into())
        );
        assert_eq!(
            parse_timeout(b"abc", s),
            Err("ERR timeout is not a float or out of range".into())
        );
        assert_eq!(
            parse_timeout(b"inf", s),
            Err("ERR timeout is out of range".into())
        );
        assert_eq!(
            parse_timeout(b"250", m),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(
            parse_timeout(b"1.5", m),
            Err("ERR timeout is not an integer or out of range".into())
        );
        assert_eq!(
            parse_timeout(b"-5", m),
            Err("ERR timeout is negative".into())
        );
    }

    #[test]
    fn the_timeout_is_found_in_each_command() {
        fn a(s: &str) -> Vec<&[u8]> {
            s.split(' ').map(str::as_bytes).collect()
        }
        let s = TimeoutUnit::Seconds;
        assert_eq!(timeout_position("blpop", &a("BLPOP a b 5")), Some((3, s)));
        assert_eq!(
            timeout_position("blmove", &a("BLMOVE a b LEFT RIGHT 5")),
            Some((5, s))
        );
        assert_eq!(
            timeout_position("bzmpop", &a("BZMPOP 5 1 z MIN")),
            Some((1, s))
        );
        assert_eq!(
            timeout_position("xreadgroup", &a("XREADGROUP GROUP g c BLOCK 9 STREAMS s >")),
            Some((5, TimeoutUnit::Millis))
        );
    }
}
