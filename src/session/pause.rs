//! `CLIENT PAUSE` as a session lives it: which commands a pause holds, and
//! holding them (the session stops parsing at the held command, so the
//! client's later commands wait behind it, as in Redis).
//!
//! `WRITE` holds what Redis 7.0 holds: commands flagged `write` or
//! `may_replicate` (`PFCOUNT`, `PUBLISH`, `EVAL` …), scripts unless their
//! shebang declares `no-writes`, `FCALL` (the proxy does not know a
//! function's flags), and `EXEC` of a transaction that queued any of these.
//! `ALL` holds every command. Errors found before running (unknown command,
//! arity, `NOAUTH`) are answered at once.
//!
//! With `settings.allow_admin_commands`, the masters are paused too, so
//! that they stop expiring keys as a paused Redis does (a paused client
//! still sees an expired key as gone; it is deleted after the pause).
//! They get `CLIENT PAUSE ms WRITE` whatever the mode: the proxy holds
//! reads itself, and a node paused for everything would also stall the
//! proxy's own topology refreshes. A paused master holds writes, and the
//! proxy sends it none until its own pause ends (the two end together:
//! same timeout, and `CLIENT UNPAUSE` unpauses both). Fire and forget, on
//! the connections the client's next commands take, so those reach each
//! master after the pause. Without the setting the nodes are never
//! paused: that affects every client of the cluster, not only the proxy's.

use super::Session;
use crate::clients::PauseMode;
use crate::codec;
use crate::command::{self, Command};
use crate::functions::FunctionFlags;
use crate::scripts::ScriptCache;
use crate::upstream::{Part, Target};
use std::time::{Duration, Instant};

/// `#!lua flags=no-writes,…` on a script's first line. `None`: no shebang
/// (Redis treats the script as one that may write).
fn shebang_no_writes(body: &[u8]) -> Option<bool> {
    let rest = body.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    Some(line.split_ascii_whitespace().any(|w| {
        w.strip_prefix("flags=")
            .is_some_and(|f| f.split(',').any(|f| f == "no-writes"))
    }))
}

/// Whether this command counts as a write for `CLIENT PAUSE WRITE`
/// (`EXEC` aside: it is a write when its transaction queued one).
pub fn is_write(
    cmd: &Command,
    args: &[&[u8]],
    scripts: &ScriptCache,
    functions: &FunctionFlags,
) -> bool {
    if cmd.name == "fcall" {
        return !args.get(1).is_some_and(|f| functions.no_writes(f));
    }
    let body = match cmd.name {
        "eval" => args.get(1).map(|b| b.to_vec()),
        "evalsha" => args
            .get(1)
            .and_then(|s| scripts.body(s))
            .map(|b| b.to_vec()),
        _ => None,
    };
    if let Some(no_writes) = body.and_then(|b| shebang_no_writes(&b)) {
        return !no_writes;
    }
    command::effective_flags(cmd, args) & (command::WRITE | command::MAY_REPLICATE) != 0
}

impl Session {
    /// Called for each command that passed the checks answered at once:
    /// true when a pause holds it (the caller leaves it unparsed).
    pub(super) fn pause_holds(&mut self, cmd: &Command, args: &[&[u8]], now: Instant) -> bool {
        let clients = &self.proxy.clients;
        let in_multi = self.in_multi();
        let paused = clients.paused(now);
        // Classified only when it matters (a pause, or a transaction a
        // later pause may hold at EXEC): most commands skip the lookups.
        let write = (paused.is_some() || in_multi)
            && match cmd.name {
                "exec" => self.multi_writes,
                _ => is_write(cmd, args, &self.proxy.scripts, &self.proxy.functions),
            };
        let hold = match paused {
            Some(PauseMode::All) => true,
            Some(PauseMode::Write) => write,
            None => false,
        };
        if hold && clients.hold(self.state.id, now) {
            self.pause_held = true;
            return true;
        }
        if cmd.name == "function" {
            self.note_functions(args);
        }
        match cmd.name {
            "multi" if !in_multi => {
                self.multi_writes = false;
                self.queued_pause = None;
            }
            "exec" => {
                // The transaction's own CLIENT PAUSE starts at its EXEC
                // (also one that answers EXECABORT); the masters' once
                // EXEC has run (paused before, they would hold its writes).
                if let (Some((mode, ms)), true) = (self.queued_pause.take(), in_multi) {
                    if let Some(until) = now.checked_add(ms) {
                        self.proxy.clients.pause(mode, until);
                        self.pause_after_exec = Some(ms);
                    }
                }
            }
            "discard" | "reset" => {
                self.queued_pause = None;
                self.pause_after_exec = None;
            }
            _ if in_multi => self.multi_writes |= write,
            _ => {}
        }
        false
    }

    /// Keep [`FunctionFlags`] in step with the libraries loaded through the
    /// proxy (also when a node refuses the load: the proxy does not wait
    /// for the answer).
    fn note_functions(&self, args: &[&[u8]]) {
        let f = &self.proxy.functions;
        let sub = args.get(1).copied().unwrap_or_default();
        if sub.eq_ignore_ascii_case(b"load") && args.len() >= 3 {
            f.loaded(args[args.len() - 1]);
        } else if sub.eq_ignore_ascii_case(b"delete") {
            if let Some(lib) = args.get(2) {
                f.deleted(lib);
            }
        } else if sub.eq_ignore_ascii_case(b"flush") || sub.eq_ignore_ascii_case(b"restore") {
            f.forget_all();
        }
    }

    /// `CLIENT PAUSE` inside MULTI: queued like any command, but the node
    /// gets `SELECT 0` in its place (same `+OK` in the EXEC reply, nothing
    /// paused on the node) and the proxy pauses at `EXEC`.
    pub(super) fn queue_pause(&mut self, cmd: &Command, args: &[&[u8]], now: Instant) -> bool {
        let is_pause = cmd.name == "client"
            && matches!(args.len(), 3 | 4)
            && args
                .get(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"pause"));
        if !is_pause {
            return false;
        }
        match super::clients::parse_pause(args) {
            Ok((mode, ms)) => {
                let words: [&[u8]; 2] = [b"SELECT", b"0"];
                let data = crate::codec::command(&words);
                let select = command::lookup(words[0]);
                let queued = select.map(|c| self.queue_in_multi(c, &data, &words, now));
                if let Some(Err(e)) = queued {
                    self.abort_multi();
                    self.reply_now(e);
                } else {
                    self.queued_pause = Some((mode, Duration::from_millis(ms)));
                }
            }
            Err(e) => {
                self.abort_multi();
                self.reply_now(e);
            }
        }
        true
    }

    /// With `allow_admin_commands`: `CLIENT PAUSE ms WRITE` (`Some(ms)`) or
    /// `CLIENT UNPAUSE` (`None`) to every master of every cluster, replies
    /// dropped.
    pub(super) fn pause_masters(&mut self, ms: Option<u64>, now: Instant) {
        if !self.proxy.config.settings.allow_admin_commands {
            return;
        }
        let data = match ms {
            Some(ms) => {
                let ms = ms.to_string();
                codec::command(&[&b"CLIENT"[..], b"PAUSE", ms.as_bytes(), b"WRITE"])
            }
            None => codec::command(&[b"CLIENT", b"UNPAUSE"]),
        };
        for cluster in 0..self.proxy.config.clusters.len() {
            // A cluster with no masters yet has nothing to pause.
            let Ok(masters) = self.masters(cluster) else {
                continue;
            };
            for addr in masters {
                let target = Target::Node {
                    addr,
                    slot: 0,
                    asking: false,
                };
                let seq = self.replies.head_seq();
                self.send_keyless(seq, Part::Discard, cluster, target, data.clone(), now);
            }
        }
    }

    /// EXEC's reply is in: a `CLIENT PAUSE` it ran pauses the masters now.
    pub(super) fn exec_answered(&mut self, now: Instant) {
        if let Some(ms) = self.pause_after_exec.take() {
            self.pause_masters(Some(ms.as_millis() as u64), now);
        }
    }

    /// The session runs again (woken, or a reply arrived): a held command
    /// is parsed anew, and held again if the pause still holds it.
    pub(super) fn pause_recheck(&mut self) {
        if self.pause_held {
            self.pause_held = false;
            self.proxy.clients.release(self.state.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(words: &[&[u8]], scripts: &ScriptCache) -> bool {
        let cmd = command::lookup(words[0]).unwrap();
        let functions = FunctionFlags::default();
        functions.loaded(b"#!lua name=l\nredis.register_function{function_name='ro', callback=function() end, flags={'no-writes'}}");
        is_write(cmd, words, scripts, &functions)
    }

    #[test]
    fn writes_are_what_redis_pauses() {
        let s = ScriptCache::default();
        assert!(write(&[b"SET", b"k", b"v"], &s));
        assert!(write(&[b"PFCOUNT", b"k"], &s), "may_replicate");
        assert!(write(&[b"PUBLISH", b"c", b"m"], &s));
        assert!(!write(&[b"GET", b"k"], &s));
        assert!(!write(&[b"PING"], &s));
        assert!(!write(&[b"INFO"], &s));
        assert!(write(&[b"EVAL", b"return 1", b"0"], &s));
        assert!(write(&[b"EVAL", b"#!lua\nreturn 1", b"0"], &s));
        let ro = b"#!lua flags=no-writes\nreturn 2";
        assert!(!write(&[b"EVAL", ro, b"0"], &s));
        assert!(!write(&[b"EVAL_RO", b"return 1", b"0"], &s));
        let sha = crate::scripts::sha1_hex(ro);
        assert!(write(&[b"EVALSHA", &sha, b"0"], &s), "unknown body");
        s.remember(ro);
        assert!(!write(&[b"EVALSHA", &sha, b"0"], &s));
        assert!(write(&[b"FCALL", b"f", b"0"], &s));
        assert!(!write(&[b"FCALL", b"ro", b"0"], &s));
        assert!(!write(&[b"FCALL_RO", b"f", b"0"], &s));
        assert_eq!(
            shebang_no_writes(b"#!lua flags=allow-oom,no-writes"),
            Some(true)
        );
        assert_eq!(
            shebang_no_writes(b"#!lua name=x\nflags=no-writes"),
            Some(false)
        );
    }
}
