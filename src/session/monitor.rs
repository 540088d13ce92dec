//! `MONITOR` through the proxy: a monitoring client gets one line for each
//! command any client of the proxy (this filter config, every worker) runs,
//! in Redis's format, and the commands scripts and functions run inside
//! the masters (Redis's `[0 lua] …` lines), which only the nodes see: the
//! proxy opens a `MONITOR` of its own to each master for the client and
//! passes those lines on. A command inside `MULTI` is logged when the
//! proxy forwards it (Redis logs it when `EXEC` runs it; one client's order
//! is the same). As in Redis: administrative commands are not logged,
//! `AUTH`/`HELLO` passwords are redacted, a monitoring client may not touch
//! the keyspace, and `RESET` ends monitoring. Masters that appear later are
//! not monitored.

use super::{Downstream, Session, NEXT_ID};
use crate::codec;
use crate::command::{self, Command};
use crate::splitter::{Gather, Merge};
use crate::upstream::{ClientShared, Notify, Part, Request, Target};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wakes the session when a node's monitor frame arrives.
struct Forward(Arc<ClientShared>);

impl Notify for Forward {
    fn notify(&self) {
        self.0.wake();
    }
}

/// Redis's `sdscatrepr`: a quoted, escaped argument.
fn repr(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'"');
    for &b in arg {
        match b {
            b'\\' | b'"' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            7 => out.extend_from_slice(b"\\a"),
            8 => out.extend_from_slice(b"\\b"),
            b' '..=b'~' => out.push(b),
            _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
        }
    }
    out.push(b'"');
}

/// Which arguments Redis hides (`AUTH` passwords, `HELLO … AUTH u p`).
fn redacted(name: &str, args: &[&[u8]], i: usize) -> bool {
    match name {
        "auth" => i >= 1,
        "hello" => args
            .iter()
            .enumerate()
            .any(|(j, a)| a.eq_ignore_ascii_case(b"auth") && j >= 2 && (i == j + 1 || i == j + 2)),
        _ => false,
    }
}

/// Redis's `admin` flag, which MONITOR hides, including the container
/// commands' subcommands (the command table flags only whole commands).
fn is_admin(cmd: &Command, args: &[&[u8]]) -> bool {
    if cmd.has(command::ADMIN) {
        return true;
    }
    let sub =
        String::from_utf8_lossy(args.get(1).copied().unwrap_or_default()).to_ascii_lowercase();
    match cmd.name {
        "config" | "slowlog" | "latency" | "module" => true,
        "client" => matches!(
            sub.as_str(),
            "list" | "kill" | "pause" | "unpause" | "no-evict" | "unblock"
        ),
        "acl" => !matches!(sub.as_str(), "whoami" | "cat" | "genpass" | "help"),
        "cluster" => !matches!(
            sub.as_str(),
            "info"
                | "keyslot"
                | "myid"
                | "nodes"
                | "slots"
                | "shards"
                | "countkeysinslot"
                | "getkeysinslot"
                | "links"
                | "replicas"
                | "slaves"
                | "help"
        ),
        _ => false,
    }
}

/// One MONITOR line: `+<unix time> [0 <client addr>] "arg" …`.
pub fn line(now: SystemTime, addr: &str, cmd: &Command, args: &[&[u8]]) -> Vec<u8> {
    let t = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut out = format!("+{}.{:06} [0 {addr}] ", t.as_secs(), t.subsec_micros()).into_bytes();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        if redacted(cmd.name, args, i) {
            repr(&mut out, b"(redacted)");
        } else {
            repr(&mut out, a);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

impl Session {
    /// After a command ran: tell the monitors. Commands refused before
    /// running (unknown, arity, `NOAUTH`) are not logged, as in Redis.
    pub(super) fn feed_monitors(&self, args: &[&[u8]]) {
        let clients = &self.proxy.clients;
        if !clients.monitoring() {
            return;
        }
        let Some(cmd) = args.first().and_then(|n| command::lookup(n)) else {
            return;
        };
        let ran = command::arity_ok(cmd, args.len())
            && (self.state.authenticated || matches!(cmd.name, "auth" | "hello" | "reset"));
        if !ran || is_admin(cmd, args) || self.monitor_refusal(cmd).is_some() {
            return;
        }
        let addr = self.entry.view().addr;
        clients.feed(&line(SystemTime::now(), &addr, cmd, args));
    }

    /// `MONITOR`: from now on this client gets the log: the proxy's own
    /// lines, and the lines of the commands scripts run inside the masters
    /// (`[0 lua] …`), from a `MONITOR` on a connection of its own to each
    /// master. `+OK` once every master has confirmed, so nothing run after
    /// it is missed.
    pub(super) fn start_monitor(&mut self, now: Instant) {
        if self.monitor.is_some() {
            return self.reply_now(codec::simple("OK"));
        }
        let cluster = self.proxy.default_cluster();
        let masters = match cluster.map(|c| self.masters(c)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return self.reply_now(e),
            None => return self.reply_now(codec::error("ERR no route for MONITOR")),
        };
        let feed = self.proxy.clients.add_monitor(self.entry.clone());
        self.monitor = Some(feed);
        self.entry.update(|v| v.monitor = true);
        // Node frames land in a mailbox of their own: dropping it (RESET,
        // close) makes the loops close those connections.
        let nodes = ClientShared::new(Box::new(Forward(self.client.clone())));
        let seq = self.push_slot();
        self.gathers
            .insert(seq, Gather::new(Merge::AllOk, masters.len()));
        let deadline = self.deadline_from(now);
        for (i, addr) in masters.iter().enumerate() {
            let pin = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let target = Target::Node {
                addr: addr.clone(),
                slot: 0,
                asking: false,
            };
            let req = Request::new(
                nodes.clone(),
                seq,
                Part::Split(i as u32),
                cluster.unwrap_or(0),
                target,
                codec::command(&[b"MONITOR"]),
                deadline,
            )
            .user(self.user.clone())
            .pinned(pin, false, 0)
            .streaming();
            self.batch.push(req);
        }
        self.node_monitors = Some((nodes, vec![false; masters.len()]));
    }

    /// Frames from the nodes' monitors: each node's first is its `+OK`
    /// (part of the client's `+OK`), later ones are its log, of which the
    /// proxy passes on what scripts ran (the rest it logged itself).
    pub(super) fn take_node_monitors(&mut self) {
        let Some((nodes, started)) = self.node_monitors.as_mut() else {
            return;
        };
        let mut frames = Vec::new();
        nodes.take(&mut frames);
        let mut confirmations = Vec::new();
        for d in frames {
            let Part::Split(i) = d.part else { continue };
            match started.get_mut(i as usize) {
                Some(s) if !*s => {
                    *s = true;
                    confirmations.push(d);
                }
                Some(_) => {
                    let script = d.reply.windows(9).any(|w| w == b" [0 lua] ");
                    if let (true, Some(feed)) = (script, self.monitor.as_ref()) {
                        feed.push(&d.reply);
                    }
                }
                None => {}
            }
        }
        for d in confirmations {
            self.apply(d.seq, d.part, d.reply);
        }
    }

    /// `RESET` ends monitoring.
    pub(super) fn stop_monitor(&mut self) {
        if let Some((nodes, _)) = self.node_monitors.take() {
            nodes.detach();
        }
        if self.monitor.take().is_some() {
            self.proxy.clients.remove_monitor(self.state.id);
            self.entry.update(|v| v.monitor = false);
        }
    }

    /// A monitoring client may not read or write keys (Redis treats it as
    /// a replica).
    pub(super) fn monitor_refusal(&self, cmd: &Command) -> Option<Vec<u8>> {
        let keyspace = command::WRITE | command::READONLY | command::MAY_REPLICATE;
        (self.monitor.is_some() && cmd.flags & keyspace != 0)
            .then(|| codec::error("ERR Replica can't interact with the keyspace"))
    }

    /// Write the monitor lines waiting, once the client's own replies are
    /// out (lines never cut into a reply).
    pub(super) fn drain_monitor(&mut self, conn: &mut dyn Downstream) {
        let Some(feed) = self.monitor.as_ref() else {
            return;
        };
        // Above Envoy's write watermark the lines wait in the feed, which
        // closes the client past its limit instead of growing Envoy's buffer.
        if !self.replies.is_empty() || self.closed || self.write_blocked {
            return;
        }
        match feed.take() {
            Some(lines) if !lines.is_empty() => conn.write(&lines),
            Some(_) => {}
            None => {
                self.closed = true;
                self.client.detach();
                self.stop_monitor();
                self.proxy.clients.unregister(self.state.id);
                conn.close(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_as_redis_writes_them() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_042);
        let set = command::lookup(b"set").unwrap();
        assert_eq!(
            line(
                t,
                "127.0.0.1:5000",
                set,
                &[b"set", b"k", b"a \"q\"\n\x01\\"]
            ),
            b"+1700000000.000042 [0 127.0.0.1:5000] \"set\" \"k\" \"a \\\"q\\\"\\n\\x01\\\\\"\r\n"
                .to_vec()
        );
        let auth = command::lookup(b"auth").unwrap();
        assert_eq!(
            line(t, "a:1", auth, &[b"auth", b"u", b"p"]),
            b"+1700000000.000042 [0 a:1] \"auth\" \"(redacted)\" \"(redacted)\"\r\n".to_vec()
        );
        let hello = command::lookup(b"hello").unwrap();
        let l = line(
            t,
            "a:1",
            hello,
            &[b"hello", b"2", b"AUTH", b"u", b"p", b"SETNAME", b"n"],
        );
        assert!(l.ends_with(
            b"\"hello\" \"2\" \"AUTH\" \"(redacted)\" \"(redacted)\" \"SETNAME\" \"n\"\r\n"
        ));
    }
}
