//! `CLIENT LIST|INFO|KILL|PAUSE|UNPAUSE` through the proxy: the clients are
//! the proxy's own connections (every worker of this filter config), as a
//! client of one Redis would see that Redis's; the nodes' clients (the
//! proxy's shared upstream connections) are an implementation detail and
//! never listed nor killed.

use super::Session;
use crate::clients::{self, ClientType, Current, KillFilter, PauseMode, UnblockMode};
use crate::codec;
use std::time::{Duration, Instant};

/// Commands whose `CLIENT LIST` name includes the subcommand (`client|list`).
const CONTAINERS: &[&str] = &[
    "acl", "client", "cluster", "command", "config", "function", "latency", "memory", "module",
    "object", "pubsub", "script", "slowlog", "xgroup", "xinfo",
];

/// Redis's full command name: `get`, `client|list`.
fn push_full_name(out: &mut String, name: &str, args: &[&[u8]]) {
    out.push_str(name);
    if let Some(sub) = args.get(1).filter(|_| CONTAINERS.contains(&name)) {
        out.push('|');
        out.extend(
            String::from_utf8_lossy(sub)
                .chars()
                .map(|c| c.to_ascii_lowercase()),
        );
    }
}

fn full_name(name: &str, args: &[&[u8]]) -> String {
    let mut out = String::new();
    push_full_name(&mut out, name, args);
    out
}

/// `ip:port`, IPv6 in brackets, as Redis prints addresses.
pub fn format_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn positive_id(a: &[u8], msg: &str) -> Result<u64, Vec<u8>> {
    std::str::from_utf8(a)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|&n| n >= 1)
        .map(|n| n as u64)
        .ok_or_else(|| codec::error(&format!("ERR {msg}")))
}

/// `TYPE normal|replica|slave|master|pubsub`: the type of the proxy's
/// clients it selects (`None`: none, they are never replicas or masters).
fn parse_type(t: &[u8]) -> Result<Option<ClientType>, Vec<u8>> {
    let t = String::from_utf8_lossy(t);
    match t.to_ascii_lowercase().as_str() {
        "normal" => Ok(Some(ClientType::Normal)),
        "pubsub" => Ok(Some(ClientType::PubSub)),
        "replica" | "slave" | "master" => Ok(None),
        _ => Err(codec::error(&format!("ERR Unknown client type '{t}'"))),
    }
}

impl Session {
    /// The user a client acts as: the Redis user it authenticated as through
    /// the cluster, or the configured downstream username once authenticated
    /// with it, else `default` (as in Redis).
    fn user_name(&self) -> std::borrow::Cow<'_, str> {
        if let Some(u) = self.client_user() {
            return String::from_utf8_lossy(u);
        }
        let auth = self.proxy.auth();
        match auth.username {
            Some(u) if self.state.authenticated && auth.required() => u.into(),
            _ => "default".into(),
        }
    }

    /// `default`, the downstream username, or (when clients authenticate
    /// against the cluster) a user some client of the proxy acts as: the
    /// proxy does not ask the nodes, so a user no client acts as is taken
    /// for unknown (its clients, none, would not be killed either way).
    fn user_exists(&self, user: &[u8]) -> bool {
        user == b"default"
            || self.proxy.auth().username.map(str::as_bytes) == Some(user)
            || (self.cluster_auth()
                && (self.proxy.clients.all().iter()).any(|e| e.view().user.as_bytes() == user))
    }

    /// `ACL WHOAMI` answers the user this client acts as (the rest of `ACL`
    /// goes to the nodes: `admin.rs`).
    pub(super) fn acl(&self, args: &[&[u8]]) -> Vec<u8> {
        let sub =
            String::from_utf8_lossy(args.get(1).copied().unwrap_or_default()).to_ascii_uppercase();
        match (sub.as_str(), args.len()) {
            ("WHOAMI", 2) => codec::bulk(self.user_name().as_bytes()),
            ("WHOAMI", _) => codec::error("ERR wrong number of arguments for 'acl|whoami' command"),
            _ => codec::error(&format!("ERR unknown subcommand '{sub}'")),
        }
    }

    /// After a command ran: what `CLIENT LIST` shows of this client.
    pub(super) fn sync_view(&mut self, args: &[&[u8]], now: Instant) {
        // Every command passes here: update in place, allocating only when
        // a field grows.
        let cmd = self.current.0.and_then(|i| crate::command::all().get(i));
        let user = self.user_name();
        let multi = self.multi_count();
        let name = self.state.name.as_deref().unwrap_or_default();
        let resp = if self.state.resp3 { 3 } else { 2 };
        let qbuf = self.inbuf.len();
        self.entry.update(|v| {
            if let Some(c) = cmd {
                v.cmd.clear();
                push_full_name(&mut v.cmd, c.name, args);
            }
            v.last_active = now;
            if v.user != user {
                v.user.clear();
                v.user.push_str(&user);
            }
            if v.name.as_bytes() != name {
                v.name.clear();
                v.name.push_str(&String::from_utf8_lossy(name));
            }
            v.multi = multi;
            v.resp = resp;
            v.qbuf = qbuf;
        });
    }

    /// `CLIENT LIST|INFO|KILL|PAUSE|UNPAUSE`; `None` for other subcommands.
    pub(super) fn client_admin(
        &mut self,
        frame: &[u8],
        args: &[&[u8]],
        now: Instant,
    ) -> Option<Vec<u8>> {
        let sub = String::from_utf8_lossy(args.get(1)?).to_ascii_lowercase();
        Some(match (sub.as_str(), args.len()) {
            ("list", _) => self.client_list(frame, args, now).unwrap_or_else(|e| e),
            ("info", 2) => {
                let mut line = self.own_line(frame, args, now);
                line.push('\n');
                self.verbatim(&line)
            }
            ("unblock", 3 | 4) => client_unblock(args)
                .map(|(id, mode)| codec::integer(i64::from(self.proxy.clients.unblock(id, mode))))
                .unwrap_or_else(|e| e),
            ("kill", 2) => codec::error("ERR wrong number of arguments for 'client|kill' command"),
            ("kill", _) => self.client_kill(args).unwrap_or_else(|e| e),
            ("unpause", 2) => {
                self.proxy.clients.unpause();
                self.pause_masters(None, now);
                codec::simple("OK")
            }
            ("pause", 3 | 4) => match parse_pause(args) {
                // A timeout past what the clock can count is refused, not
                // a panic.
                Ok((mode, ms)) => match now.checked_add(Duration::from_millis(ms)) {
                    Some(until) => {
                        self.proxy.clients.pause(mode, until);
                        self.pause_masters(Some(ms), now);
                        codec::simple("OK")
                    }
                    None => codec::error("ERR timeout is out of range"),
                },
                Err(e) => e,
            },
            _ => return None,
        })
    }

    /// This client's line, with the command being run counted in its
    /// buffers as Redis counts it.
    fn own_line(&self, frame: &[u8], args: &[&[u8]], now: Instant) -> String {
        let mut v = self.entry.view();
        v.cmd = full_name("client", args);
        v.last_active = now;
        let current = Current {
            qbuf: frame.len() + self.inbuf.len(),
            argv_mem: args.iter().map(|a| a.len()).sum(),
        };
        clients::list_line(&self.entry, &v, now, Some(&current))
    }

    fn verbatim(&self, text: &str) -> Vec<u8> {
        if self.state.resp3 {
            let mut out = format!("={}\r\ntxt:", text.len() + 4).into_bytes();
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
            out
        } else {
            codec::bulk(text.as_bytes())
        }
    }

    /// `CLIENT LIST [TYPE type] [ID id ...]`.
    fn client_list(
        &mut self,
        frame: &[u8],
        args: &[&[u8]],
        now: Instant,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let opt = |i: usize, w: &[u8]| args.get(i).is_some_and(|a| a.eq_ignore_ascii_case(w));
        let mut ids: Option<Vec<i64>> = None;
        let mut only = None;
        if args.len() == 4 && opt(2, b"type") {
            match parse_type(args[3])? {
                None => return Ok(self.verbatim("")),
                t => only = t,
            }
        } else if args.len() > 3 && opt(2, b"id") {
            let parsed: Option<Vec<i64>> = args[3..]
                .iter()
                .map(|a| std::str::from_utf8(a).ok()?.parse().ok())
                .collect();
            ids = Some(parsed.ok_or_else(|| codec::error("ERR Invalid client ID"))?);
        } else if args.len() != 2 {
            return Err(codec::error("ERR syntax error"));
        }
        // With IDs: in the order given, as Redis lists them.
        let listed = match ids {
            Some(ids) => {
                let all = self.proxy.clients.all();
                ids.iter()
                    .filter_map(|&id| all.iter().find(|e| i64::try_from(e.id) == Ok(id)).cloned())
                    .collect()
            }
            None => self.proxy.clients.all(),
        };
        let mut text = String::new();
        for e in listed {
            if only.is_some_and(|t| e.view().client_type() != t) {
                continue;
            }
            let line = if e.id == self.state.id {
                self.own_line(frame, args, now)
            } else {
                clients::list_line(&e, &e.view(), now, None)
            };
            text.push_str(&line);
            text.push('\n');
        }
        Ok(self.verbatim(&text))
    }

    /// `CLIENT KILL addr` or `CLIENT KILL <filter value> ...`.
    fn client_kill(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, Vec<u8>> {
        let old_style = args.len() == 3;
        let mut f = KillFilter {
            skip_me: !old_style,
            ..KillFilter::default()
        };
        if old_style {
            f.addr = Some(String::from_utf8_lossy(args[2]).into_owned());
        } else {
            let mut i = 2;
            while i < args.len() {
                let (Some(opt), Some(val)) = (args.get(i), args.get(i + 1)) else {
                    return Err(codec::error("ERR syntax error"));
                };
                let text = || String::from_utf8_lossy(val).into_owned();
                match String::from_utf8_lossy(opt).to_ascii_lowercase().as_str() {
                    "id" => f.id = Some(positive_id(val, "client-id should be greater than 0")?),
                    "type" => match parse_type(val)? {
                        None => f.no_match = true,
                        t => f.client_type = t,
                    },
                    "addr" => f.addr = Some(text()),
                    "laddr" => f.laddr = Some(text()),
                    "user" => {
                        if !self.user_exists(val) {
                            return Err(codec::error(&format!("ERR No such user '{}'", text())));
                        }
                        f.user = Some(text());
                    }
                    "skipme" if val.eq_ignore_ascii_case(b"yes") => f.skip_me = true,
                    "skipme" if val.eq_ignore_ascii_case(b"no") => f.skip_me = false,
                    _ => return Err(codec::error("ERR syntax error")),
                }
                i += 2;
            }
        }
        let (n, me) = self.proxy.clients.kill(self.state.id, &f);
        // Killed itself: answer, then close (Redis's CLOSE_AFTER_REPLY).
        self.closing |= me;
        Ok(if old_style {
            if n == 0 {
                codec::error("ERR No such client")
            } else {
                codec::simple("OK")
            }
        } else {
            codec::integer(n as i64)
        })
    }

    /// `CLIENT UNBLOCK` chose this client: unblock its command on the
    /// node (its reply, the timeout's or `-UNBLOCKED`, comes as usual).
    pub(super) fn apply_unblock(&mut self) {
        let Some(mode) = self.entry.take_unblock() else {
            return;
        };
        if self.blocked_upstream() {
            self.client.cancel_blocking(mode);
            if let Some(u) = &self.upstream {
                u.wake();
            }
        }
    }

    /// `CLIENT KILL` chose this client: close now, answering nothing more.
    pub(super) fn close_if_killed(&mut self, conn: &mut dyn super::Downstream) -> bool {
        if !self.entry.killed() || self.closing {
            return false;
        }
        if !self.closed {
            self.closed = true;
            self.client.detach();
            conn.close(false);
        }
        true
    }
}

/// `CLIENT UNBLOCK client-id [TIMEOUT|ERROR]`: the id and how, with
/// Redis's errors. An id no client has (negative included) is just not
/// blocked: `:0`.
fn client_unblock(args: &[&[u8]]) -> Result<(u64, UnblockMode), Vec<u8>> {
    let id: i64 = std::str::from_utf8(args.get(2).copied().unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| codec::error("ERR value is not an integer or out of range"))?;
    let mode = match args.get(3) {
        None => UnblockMode::Timeout,
        Some(m) if m.eq_ignore_ascii_case(b"timeout") => UnblockMode::Timeout,
        Some(m) if m.eq_ignore_ascii_case(b"error") => UnblockMode::Error,
        Some(_) => {
            return Err(codec::error(
                "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
            ))
        }
    };
    Ok((u64::try_from(id).unwrap_or(0), mode))
}

/// `CLIENT PAUSE timeout [WRITE|ALL]`: the mode and milliseconds.
pub(super) fn parse_pause(args: &[&[u8]]) -> Result<(PauseMode, u64), Vec<u8>> {
    let mode = match args.get(3) {
        None => PauseMode::All,
        Some(m) if m.eq_ignore_ascii_case(b"write") => PauseMode::Write,
        Some(m) if m.eq_ignore_ascii_case(b"all") => PauseMode::All,
        Some(_) => return Err(codec::error("ERR CLIENT PAUSE mode must be WRITE or ALL")),
    };
    let ms: i64 = std::str::from_utf8(args.get(2).copied().unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| codec::error("ERR timeout is not an integer or out of range"))?;
    if ms < 0 {
        return Err(codec::error("ERR timeout is negative"));
    }
    Ok((mode, ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_arguments_as_redis_has_them() {
        assert_eq!(full_name("client", &[b"CLIENT", b"LIST"]), "client|list");
        assert_eq!(full_name("get", &[b"GET", b"k"]), "get");
        assert_eq!(format_addr("::1", 5), "[::1]:5");
        assert_eq!(format_addr("10.1.2.3", 5), "10.1.2.3:5");
        assert_eq!(
            parse_pause(&[b"CLIENT", b"PAUSE", b"100", b"write"]),
            Ok((PauseMode::Write, 100))
        );
        assert_eq!(
            parse_pause(&[b"CLIENT", b"PAUSE", b"100"]),
            Ok((PauseMode::All, 100))
        );
        assert!(parse_pause(&[b"CLIENT", b"PAUSE", b"-1"])
            .unwrap_err()
            .starts_with(b"-ERR timeout is negative"));
        assert!(parse_pause(&[b"CLIENT", b"PAUSE", b"x"]).is_err());
        assert!(parse_pause(&[b"CLIENT", b"PAUSE", b"1", b"some"]).is_err());
        assert_eq!(parse_type(b"NORMAL"), Ok(Some(ClientType::Normal)));
        assert_eq!(parse_type(b"pubsub"), Ok(Some(ClientType::PubSub)));
        assert_eq!(parse_type(b"master"), Ok(None));
        assert!(parse_type(b"x").is_err());
        assert!(positive_id(b"0", "m").is_err());
        assert_eq!(positive_id(b"7", "m"), Ok(7));
    }
}
