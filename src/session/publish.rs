//! Publishing through the proxy and `PUBSUB` introspection: `PUBLISH`
//! and `SPUBLISH` go to the owner of the channel's slot, and their count
//! of receivers (outside `MULTI` and in `EXEC`'s reply) becomes the
//! proxy's receiving clients plus the node's other subscribers, as one
//! Redis would count its subscribers.

use super::Session;
use crate::codec;
use crate::pubsub::hub::SubKey;
use crate::pubsub::Kind;
use std::time::Instant;

/// The `PUBLISH`es of an `EXEC`: index in its reply, and the counts of
/// [`Session::receivers`] (the proxy's receivers, its own links).
pub(super) type ExecPublishes = Vec<(usize, (usize, usize))>;

/// A `PUBLISH`/`SPUBLISH` queued inside MULTI.
#[derive(Debug)]
pub(super) struct QueuedPublish {
    kind: Kind,
    /// As the client gave it.
    channel: Vec<u8>,
}

/// The elements of a RESP2 array reply (`*n`), each as its bytes; `None`
/// for anything else (an error, a null array).
fn array_elements(reply: &[u8]) -> Option<Vec<&[u8]>> {
    let rest = reply.strip_prefix(b"*")?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    let n: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    let mut pos = 1 + end + 2;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let len = codec::reply_len(reply.get(pos..)?).ok()??;
        out.push(reply.get(pos..pos + len)?);
        pos += len;
    }
    Some(out)
}

impl Session {
    /// `PUBLISH` and `SPUBLISH`, to the owner of the channel's slot (where
    /// this proxy's upstream subscriptions to it are), and copies to the
    /// route's mirrors; the node's count of receivers becomes the proxy's
    /// clients plus the node's other subscribers.
    pub(super) fn publish(
        &mut self,
        name: &str,
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let kind = if name == "spublish" {
            Kind::Shard
        } else {
            Kind::Channel
        };
        let (channel, message) = match args {
            [_, c, m] => (*c, *m),
            _ => return Err(codec::error(&crate::command::arity_error(name))),
        };
        let (key, at) = self.place(kind, channel)?;
        let slot = at.slot;
        let node = self
            .proxy
            .topology(key.cluster)
            .and_then(|m| m.master_for_slot(slot).map(str::to_string));
        let counts = self.receivers_on(kind, channel, &key, node);
        let data = codec::command(&[args[0], &key.name, message]);
        let seq = self.push_slot();
        self.published.insert(seq, counts);
        let target = crate::upstream::Target::Slot { slot, read: false };
        // A route's mirrors get it like any write: the shard channel's
        // route, or the catch-all for classic channels (which are no keys).
        let proxy = self.proxy.clone();
        let route = match kind {
            Kind::Shard => proxy.route(channel),
            _ => proxy.route(b""),
        };
        let mirrors = route.map(|r| r.mirrors).unwrap_or_default();
        // As the client's user: the node applies its channel rules.
        self.send(
            seq,
            crate::upstream::WHOLE,
            key.cluster,
            mirrors,
            target,
            crate::config::ReadPolicy::Master,
            data,
            now,
        );
        Ok(())
    }

    /// For a publish of `channel` (upstream `key`) on `node`: the proxy's
    /// receiving clients, and the proxy's own upstream subscriptions among
    /// the receivers that node counts.
    fn receivers_on(
        &self,
        kind: Kind,
        channel: &[u8],
        key: &SubKey,
        node: Option<String>,
    ) -> (usize, usize) {
        let map = self.proxy.topology(key.cluster);
        let same_node = |s: u16| {
            node.is_some() && map.as_ref().and_then(|m| m.master_for_slot(s)) == node.as_deref()
        };
        self.proxy
            .pubsub
            .receivers(kind, channel, &key.name, same_node)
    }

    /// Inside MULTI: what a queued `PUBLISH`/`SPUBLISH` publishes, for
    /// correcting its count in `EXEC`'s reply.
    pub(super) fn queued_publish(&self, name: &str, args: &[&[u8]]) -> Option<QueuedPublish> {
        let kind = match name {
            "publish" => Kind::Channel,
            "spublish" => Kind::Shard,
            _ => return None,
        };
        let channel = args.get(1)?.to_vec();
        Some(QueuedPublish { kind, channel })
    }

    /// `EXEC` of a transaction with `publishes` (by index) is sent to
    /// `slot` of `cluster` (`None`: any master, the first shard's): what
    /// to correct in its reply, the counts taken now as outside MULTI.
    pub(super) fn exec_publishes(
        &mut self,
        seq: u64,
        publishes: Vec<(u32, QueuedPublish)>,
        cluster: Option<usize>,
        slot: Option<u16>,
    ) {
        if publishes.is_empty() {
            return;
        }
        let mut fix = Vec::with_capacity(publishes.len());
        for (index, p) in publishes {
            let Ok((key, _)) = self.place(p.kind, &p.channel) else {
                continue;
            };
            let map = self.proxy.topology(cluster.unwrap_or(key.cluster));
            let node = map.as_ref().and_then(|m| match slot {
                Some(s) => m.master_for_slot(s).map(str::to_string),
                None => m.shards.first().map(|s| s.master.clone()),
            });
            fix.push((
                index as usize,
                self.receivers_on(p.kind, &p.channel, &key, node),
            ));
        }
        self.exec_published.insert(seq, fix);
    }

    /// `EXEC`'s reply to command `seq` with its `PUBLISH` counts made the
    /// proxy's.
    pub(super) fn exec_receivers(&mut self, seq: u64, reply: Vec<u8>) -> Vec<u8> {
        let Some(fix) = self.exec_published.remove(&seq) else {
            return reply;
        };
        let Some(elements) = array_elements(&reply) else {
            return reply;
        };
        let mut out = format!("*{}\r\n", elements.len()).into_bytes();
        for (i, e) in elements.iter().enumerate() {
            match (fix.iter().find(|(at, _)| *at == i), codec::integer_value(e)) {
                (Some((_, (clients, links))), Some(n)) => {
                    let others = (n.max(0) as usize).saturating_sub(*links);
                    out.extend(codec::integer((clients + others) as i64));
                }
                _ => out.extend_from_slice(e),
            }
        }
        out
    }

    /// The reply to command `seq`, a `PUBLISH`'s count made the proxy's.
    pub(super) fn receivers(&mut self, seq: u64, reply: Vec<u8>) -> Vec<u8> {
        if self.published.is_empty() {
            return reply;
        }
        match (self.published.remove(&seq), codec::integer_value(&reply)) {
            (Some((clients, links)), Some(n)) => {
                let others = (n.max(0) as usize).saturating_sub(links);
                codec::integer((clients + others) as i64)
            }
            _ => reply,
        }
    }

    /// `PUBSUB CHANNELS|NUMSUB|NUMPAT|SHARDCHANNELS|SHARDNUMSUB`, for the
    /// proxy's own subscribers (every worker).
    pub(super) fn pubsub_introspection(&self, args: &[&[u8]]) -> Vec<u8> {
        let sub =
            String::from_utf8_lossy(args.get(1).copied().unwrap_or_default()).to_ascii_lowercase();
        let reg = &self.proxy.pubsub;
        let list = |names: Vec<Vec<u8>>| {
            let mut out = format!("*{}\r\n", names.len()).into_bytes();
            for n in names {
                out.extend(codec::bulk(&n));
            }
            out
        };
        let numsub = |kind: Kind| {
            let mut out = format!("*{}\r\n", (args.len() - 2) * 2).into_bytes();
            for n in &args[2..] {
                out.extend(codec::bulk(n));
                out.extend(codec::integer(reg.count(kind, n) as i64));
            }
            out
        };
        match (sub.as_str(), args.len()) {
            ("channels", 2 | 3) => list(reg.names(Kind::Channel, args.get(2).copied())),
            ("shardchannels", 2 | 3) => list(reg.names(Kind::Shard, args.get(2).copied())),
            ("numsub", _) => numsub(Kind::Channel),
            ("shardnumsub", _) => numsub(Kind::Shard),
            ("numpat", 2) => codec::integer(reg.patterns() as i64),
            ("help", 2) => {
                let lines: &[&[u8]] = &[
                    b"PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                    b"CHANNELS [<pattern>]",
                    b"    Return the currently active channels matching a <pattern> (default: '*').",
                    b"NUMPAT",
                    b"    Return number of subscriptions to patterns.",
                    b"NUMSUB [<channel> ...]",
                    b"    Return the number of subscribers for the specified channels, excluding",
                    b"    pattern subscriptions(default: no channels).",
                    b"SHARDCHANNELS [<pattern>]",
                    b"    Return the currently active shard level channels matching a <pattern> (default: '*').",
                    b"SHARDNUMSUB [<shardchannel> ...]",
                    b"    Return the number of subscribers for the specified shard level channel(s)",
                    b"HELP",
                    b"    Prints this help.",
                ];
                let mut out = format!("*{}\r\n", lines.len()).into_bytes();
                for l in lines {
                    out.extend(codec::simple(&String::from_utf8_lossy(l)));
                }
                out
            }
            _ => codec::error(&format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
                String::from_utf8_lossy(args.get(1).copied().unwrap_or_default())
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::array_elements;

    #[test]
    fn array_elements_split_exec_replies() {
        let reply = b"*3\r\n+OK\r\n:2\r\n*1\r\n$1\r\na\r\n";
        assert_eq!(
            array_elements(reply),
            Some(vec![&b"+OK\r\n"[..], b":2\r\n", b"*1\r\n$1\r\na\r\n"])
        );
        assert_eq!(array_elements(b"*-1\r\n"), None);
        assert_eq!(array_elements(b"-EXECABORT x\r\n"), None);
        assert_eq!(array_elements(b"*2\r\n:1\r\n"), None, "truncated");
    }
}
