//! Cluster topology: parsing `CLUSTER SLOTS`, the slot map, and redirections.
//!
//! A Redis Cluster tells clients who owns what through `CLUSTER SLOTS`: an
//! array with one entry per contiguous slot range,
//!
//! ```text
//! [ start, end, master, replica, replica, ... ]
//! node = [ endpoint, port, node-id (Redis >= 4), metadata (Redis >= 7) ]
//! ```
//!
//! The proxy turns that into a [`SlotMap`]: a table of 16384 entries giving
//! the [`Shard`] (master plus replicas) that serves each slot. When the
//! cluster changes under our feet, a node answers `-MOVED slot host:port`
//! (the slot has moved for good: refresh the map) or `-ASK slot host:port`
//! (the slot is being migrated: retry that one command on the target after
//! `ASKING`); [`parse_redirect`] reads those.
//!
//! Nothing here does I/O; the refresher that sends [`CLUSTER_SLOTS_REQUEST`]
//! and feeds the reply to [`parse_cluster_slots`] lives elsewhere.

use std::fmt;

use crate::slot::SLOT_COUNT;

/// The RESP request bytes for `CLUSTER SLOTS`.
pub const CLUSTER_SLOTS_REQUEST: &[u8] = b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";

/// A node address, `"host:port"`, exactly as it is used to connect.
/// IPv6 hosts are bracketed (`"[::1]:7000"`) so the last `:` always separates
/// the port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr(pub String);

impl NodeAddr {
    /// Validate `"host:port"` (host: IP, DNS name or bracketed IPv6; port
    /// 1..=65535) and keep it as given.
    pub fn parse(s: &str) -> Result<NodeAddr, String> {
        split_host_port(s)?;
        Ok(NodeAddr(s.to_string()))
    }

    /// Build an address from a host (an IPv6 host is bracketed) and a port.
    pub fn new(host: &str, port: u16) -> NodeAddr {
        let host = unbracket(host);
        if host.contains(':') {
            NodeAddr(format!("[{host}]:{port}"))
        } else {
            NodeAddr(format!("{host}:{port}"))
        }
    }

    /// The host without IPv6 brackets; "" if the address is invalid.
    pub fn host(&self) -> &str {
        split_host_port(&self.0).map_or("", |(h, _)| h)
    }

    /// The port; 0 if the address is invalid.
    pub fn port(&self) -> u16 {
        split_host_port(&self.0).map_or(0, |(_, p)| p)
    }

    /// The address as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Split `"host:port"` into the host (without IPv6 brackets) and the port.
///
/// Accepts `"10.0.0.1:7000"`, `"redis-0.redis:6379"` and `"[::1]:7000"`;
/// rejects an empty host, an unbracketed IPv6 address (ambiguous), and a port
/// outside 1..=65535.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| "expected \"[ipv6]:port\"".to_string())?;
        if host.is_empty() || host.contains(['[', ']']) {
            return Err("empty or malformed bracketed host".to_string());
        }
        (host, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| "expected \"host:port\"".to_string())?;
        if host.contains(':') {
            return Err("an IPv6 address must be bracketed, e.g. \"[::1]:7000\"".to_string());
        }
        if host.is_empty() {
            return Err("empty host".to_string());
        }
        (host, port)
    };
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '[' || c == ']')
    {
        return Err(format!("invalid host {host:?}"));
    }
    Ok((host, parse_port(port)?))
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {port:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {port} out of range 1..=65535")),
    }
}

/// One master and its replicas, by address (`"host:port"`). Replicas are kept
/// sorted so two views of the same shard compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub master: String,
    pub replicas: Vec<String>,
}

/// Which shard serves each of the 16384 slots.
///
/// `==` is exact (same shard order too); use [`SlotMap::same_as`] to ask
/// whether two maps describe the same layout.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotMap {
    pub shards: Vec<Shard>,
    /// 16384 entries: an index into `shards`, or [`SlotMap::NO_SHARD`].
    slots: Box<[u16]>,
}

impl fmt::Debug for SlotMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotMap")
            .field("shards", &self.shards)
            .field("covered_slots", &self.covered_slots())
            .finish()
    }
}

impl SlotMap {
    /// Marks a slot that no shard serves.
    pub const NO_SHARD: u16 = u16::MAX;

    /// A map with no shard and no slot covered.
    pub fn empty() -> SlotMap {
        SlotMap {
            shards: Vec::new(),
            slots: vec![Self::NO_SHARD; usize::from(SLOT_COUNT)].into_boxed_slice(),
        }
    }

    /// Standalone Redis (or a single endpoint): one shard owns every slot.
    pub fn single_node(addr: &str) -> SlotMap {
        SlotMap {
            shards: vec![Shard {
                master: addr.to_string(),
                replicas: Vec::new(),
            }],
            slots: vec![0; usize::from(SLOT_COUNT)].into_boxed_slice(),
        }
    }

    /// Index into `shards` of the shard serving `slot`, if any.
    #[inline]
    pub fn shard_index(&self, slot: u16) -> Option<usize> {
        let index = usize::from(*self.slots.get(usize::from(slot))?);
        (index < self.shards.len()).then_some(index)
    }

    /// The shard serving `slot`, if any.
    #[inline]
    pub fn shard_for_slot(&self, slot: u16) -> Option<&Shard> {
        self.shards.get(self.shard_index(slot)?)
    }

    /// The master serving `slot`, if any.
    #[inline]
    pub fn master_for_slot(&self, slot: u16) -> Option<&str> {
        self.shard_for_slot(slot).map(|s| s.master.as_str())
    }

    /// How many slots some shard serves (16384 when the cluster is healthy).
    pub fn covered_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|&&i| usize::from(i) < self.shards.len())
            .count()
    }

    /// True when every slot is served.
    pub fn is_complete(&self) -> bool {
        self.covered_slots() == usize::from(SLOT_COUNT)
    }

    fn all_addrs(&self) -> impl Iterator<Item = &str> + Clone {
        self.shards.iter().flat_map(|s| {
            std::iter::once(s.master.as_str()).chain(s.replicas.iter().map(String::as_str))
        })
    }

    /// Every distinct node address (masters and replicas), each once.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        let all = self.all_addrs();
        let earlier = all.clone();
        all.enumerate()
            .filter(move |&(i, addr)| !earlier.clone().take(i).any(|a| a == addr))
            .map(|(_, addr)| addr)
    }

    /// True when both maps give every slot the same master and replica set.
    /// Shard order in `shards` does not matter; used to log only real changes
    /// and to count agreeing views in [`choose_view`].
    pub fn same_as(&self, other: &SlotMap) -> bool {
        // Remember the last pair of shard indices found equal: runs of slots
        // almost always belong to the same pair.
        let mut last_equal: Option<(usize, usize)> = None;
        for slot in 0..SLOT_COUNT {
            match (self.shard_index(slot), other.shard_index(slot)) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    if last_equal == Some((a, b)) {
                        continue;
                    }
                    if self.shards.get(a) != other.shards.get(b) {
                        return false;
                    }
                    last_equal = Some((a, b));
                }
                _ => return false,
            }
        }
        true
    }
}

/// Why a `CLUSTER SLOTS` reply gave no slot map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyError {
    /// `-ERR This instance has cluster support disabled`: a standalone Redis;
    /// the caller may fall back to [`SlotMap::single_node`].
    ClusterDisabled,
    /// Any other error reply (the text without the leading `-`).
    Reply(String),
    /// Not a well-formed `CLUSTER SLOTS` reply; says what was wrong.
    Malformed(String),
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::ClusterDisabled => {
                f.write_str("cluster support is disabled on this node")
            }
            TopologyError::Reply(msg) => write!(f, "CLUSTER SLOTS failed: {msg}"),
            TopologyError::Malformed(what) => write!(f, "malformed CLUSTER SLOTS reply: {what}"),
        }
    }
}

impl std::error::Error for TopologyError {}

const CLUSTER_DISABLED: &str = "ERR This instance has cluster support disabled";

/// A decoded RESP value, RESP2 and RESP3 alike, reduced to what a topology
/// reply can contain.
enum Value {
    Bytes(Vec<u8>),
    Int(i64),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Null,
    Error(String),
    Other,
}

impl Value {
    fn from_resp2(frame: redis_protocol::resp2::types::OwnedFrame) -> Value {
        use redis_protocol::resp2::types::OwnedFrame as F;
        match frame {
            F::SimpleString(b) | F::BulkString(b) => Value::Bytes(b),
            F::Error(e) => Value::Error(e),
            F::Integer(i) => Value::Int(i),
            F::Array(items) => Value::Array(items.into_iter().map(Value::from_resp2).collect()),
            F::Null => Value::Null,
        }
    }

    fn from_resp3(frame: redis_protocol::resp3::types::OwnedFrame) -> Value {
        use redis_protocol::resp3::types::OwnedFrame as F;
        match frame {
            F::BlobString { data, .. }
            | F::SimpleString { data, .. }
            | F::VerbatimString { data, .. } => Value::Bytes(data),
            F::SimpleError { data, .. } => Value::Error(data),
            F::BlobError { data, .. } => Value::Error(String::from_utf8_lossy(&data).into_owned()),
            F::Number { data, .. } => Value::Int(data),
            F::Array { data, .. } | F::Push { data, .. } => {
                Value::Array(data.into_iter().map(Value::from_resp3).collect())
            }
            F::Set { data, .. } => Value::Array(data.into_iter().map(Value::from_resp3).collect()),
            F::Map { data, .. } => Value::Map(
                data.into_iter()
                    .map(|(k, v)| (Value::from_resp3(k), Value::from_resp3(v)))
                    .collect(),
            ),
            F::Null => Value::Null,
            _ => Value::Other,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Bytes(_) => "string",
            Value::Int(_) => "integer",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Null => "null",
            Value::Error(_) => "error",
            Value::Other => "unexpected type",
        }
    }
}

fn malformed(what: impl Into<String>) -> TopologyError {
    TopologyError::Malformed(what.into())
}

/// Decode exactly one RESP frame filling `reply`. RESP2 is tried first (it is
/// what a connection that never sent `HELLO 3` gets, and its `$-1`/`*-1`
/// nulls are not RESP3); RESP3-only types (maps, `_` nulls) fall back to the
/// RESP3 decoder.
fn decode(reply: &[u8]) -> Result<Value, TopologyError> {
    let (value, used) = match redis_protocol::resp2::decode::decode(reply) {
        Ok(Some((frame, used))) => (Value::from_resp2(frame), used),
        Ok(None) => return Err(malformed("truncated reply")),
        Err(_) => match redis_protocol::resp3::decode::complete::decode(reply) {
            Ok(Some((frame, used))) => (Value::from_resp3(frame), used),
            Ok(None) => return Err(malformed("truncated reply")),
            Err(e) => return Err(malformed(format!("invalid RESP: {e:?}"))),
        },
    };
    if used != reply.len() {
        return Err(malformed(format!(
            "{} bytes after the reply",
            reply.len().saturating_sub(used)
        )));
    }
    Ok(value)
}

/// Parse the reply to `CLUSTER SLOTS` (raw RESP2 or RESP3 bytes of exactly one
/// reply).
///
/// `contacted` is the `"host:port"` we asked. A node's endpoint is normally
/// its IP; Redis sends `""`, `"?"` or null when it does not know it, which
/// means "the host you are talking to", so the contacted host is used. When
/// Redis 7 metadata carries a non-empty `hostname`, that is preferred as the
/// host. Overlapping ranges are not expected; if present, the later range wins.
pub fn parse_cluster_slots(reply: &[u8], contacted: &str) -> Result<SlotMap, TopologyError> {
    let entries = match decode(reply)? {
        Value::Error(msg) if msg.trim_end() == CLUSTER_DISABLED => {
            return Err(TopologyError::ClusterDisabled)
        }
        Value::Error(msg) => return Err(TopologyError::Reply(msg)),
        Value::Array(entries) => entries,
        other => {
            return Err(malformed(format!(
                "expected an array, got {}",
                other.kind()
            )))
        }
    };

    let mut map = SlotMap::empty();
    for (n, entry) in entries.iter().enumerate() {
        let Value::Array(fields) = entry else {
            return Err(malformed(format!(
                "entry {n}: expected an array, got {}",
                entry.kind()
            )));
        };
        let (start, end, master, replicas) = match fields.as_slice() {
            [start, end, master, replicas @ ..] => (start, end, master, replicas),
            _ => {
                return Err(malformed(format!(
                    "entry {n}: expected start, end and a master"
                )))
            }
        };
        let start =
            slot_number(start).map_err(|e| malformed(format!("entry {n}: start slot {e}")))?;
        let end = slot_number(end).map_err(|e| malformed(format!("entry {n}: end slot {e}")))?;
        if start > end {
            return Err(malformed(format!(
                "entry {n}: range {start}-{end} is reversed"
            )));
        }
        let master = node_addr(master, contacted)
            .map_err(|e| malformed(format!("entry {n}: master {e}")))?;
        let mut replica_addrs = Vec::with_capacity(replicas.len());
        for (r, replica) in replicas.iter().enumerate() {
            let addr = node_addr(replica, contacted)
                .map_err(|e| malformed(format!("entry {n}: replica {r}: {e}")))?;
            replica_addrs.push(addr);
        }

        let index = match map.shards.iter().position(|s| s.master == master) {
            Some(i) => i,
            None => {
                if map.shards.len() >= usize::from(SlotMap::NO_SHARD) {
                    return Err(malformed("too many shards"));
                }
                map.shards.push(Shard {
                    master,
                    replicas: Vec::new(),
                });
                map.shards.len() - 1
            }
        };
        if let Some(shard) = map.shards.get_mut(index) {
            for addr in replica_addrs {
                if !shard.replicas.contains(&addr) && addr != shard.master {
                    shard.replicas.push(addr);
                }
            }
        }
        let index = u16::try_from(index).map_err(|_| malformed("too many shards"))?;
        if let Some(range) = map.slots.get_mut(usize::from(start)..=usize::from(end)) {
            range.fill(index);
        }
    }

    for shard in &mut map.shards {
        shard.replicas.sort();
    }
    map.drop_unused_shards();
    Ok(map)
}

impl SlotMap {
    /// Remove shards that serve no slot (all their ranges were overridden)
    /// and renumber the rest.
    fn drop_unused_shards(&mut self) {
        let mut used = vec![false; self.shards.len()];
        for &i in self.slots.iter() {
            if let Some(u) = used.get_mut(usize::from(i)) {
                *u = true;
            }
        }
        if used.iter().all(|&u| u) {
            return;
        }
        let mut renumber = vec![Self::NO_SHARD; self.shards.len()];
        let mut next: u16 = 0;
        for (slot, &u) in renumber.iter_mut().zip(&used) {
            if u {
                *slot = next;
                next += 1;
            }
        }
        let mut flags = used.iter();
        self.shards
            .retain(|_| flags.next().copied().unwrap_or(false));
        for i in self.slots.iter_mut() {
            *i = renumber
                .get(usize::from(*i))
                .copied()
                .unwrap_or(Self::NO_SHARD);
        }
    }
}

fn slot_number(v: &Value) -> Result<u16, String> {
    match v {
        Value::Int(i) if (0..i64::from(SLOT_COUNT)).contains(i) => {
            u16::try_from(*i).map_err(|_| i.to_string())
        }
        Value::Int(i) => Err(format!("{i} is outside 0..=16383")),
        other => Err(format!("is a {}, expected an integer", other.kind())),
    }
}

fn node_addr(v: &Value, contacted: &str) -> Result<String, String> {
    let Value::Array(fields) = v else {
        return Err(format!("is a {}, expected an array", v.kind()));
    };
    let (endpoint, port, rest) = match fields.as_slice() {
        [endpoint, port, rest @ ..] => (endpoint, port, rest),
        _ => return Err("expected at least endpoint and port".to_string()),
    };
    let port = match port {
        Value::Int(p) => match u16::try_from(*p) {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("port {p} out of range 1..=65535")),
        },
        other => return Err(format!("port is a {}, expected an integer", other.kind())),
    };
    let endpoint = match endpoint {
        Value::Bytes(b) => {
            std::str::from_utf8(b).map_err(|_| "endpoint is not UTF-8".to_string())?
        }
        Value::Null => "",
        other => return Err(format!("endpoint is a {}, expected a string", other.kind())),
    };
    // rest = [node id, metadata]; both optional.
    if let Some(id) = rest.first() {
        if !matches!(id, Value::Bytes(_)) {
            return Err(format!("node id is a {}, expected a string", id.kind()));
        }
    }
    let hostname = match rest.get(1) {
        Some(meta) => metadata_hostname(meta)?,
        None => None,
    };
    let host = match hostname {
        Some(h) => h,
        None if endpoint.is_empty() || endpoint == "?" => {
            split_host_port(contacted)
                .map_err(|e| {
                    format!(
                        "has no endpoint and the contacted address {contacted:?} is invalid: {e}"
                    )
                })?
                .0
        }
        None => endpoint,
    };
    let addr = NodeAddr::new(host, port);
    split_host_port(&addr.0).map_err(|e| format!("address {:?}: {e}", addr.0))?;
    Ok(addr.0)
}

/// The non-empty `hostname` of Redis 7 node metadata: a map in RESP3, a flat
/// `[key, value, ...]` array in RESP2.
fn metadata_hostname(meta: &Value) -> Result<Option<&str>, String> {
    let mut pairs: Vec<(&Value, &Value)> = Vec::new();
    match meta {
        Value::Map(entries) => pairs.extend(entries.iter().map(|(k, v)| (k, v))),
        Value::Array(flat) => {
            if !flat.len().is_multiple_of(2) {
                return Err("metadata has an odd number of elements".to_string());
            }
            pairs.extend(flat.chunks_exact(2).filter_map(|kv| match kv {
                [k, v] => Some((k, v)),
                _ => None,
            }));
        }
        other => return Err(format!("metadata is a {}, expected a map", other.kind())),
    }
    for (k, v) in pairs {
        if matches!(k, Value::Bytes(k) if k == b"hostname") {
            if let Value::Bytes(h) = v {
                let h = std::str::from_utf8(h).map_err(|_| "hostname is not UTF-8".to_string())?;
                if !h.is_empty() {
                    return Ok(Some(h));
                }
            }
        }
    }
    Ok(None)
}

/// A redirection error from a cluster node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `MOVED slot addr`: the slot now lives at `addr` for good; send there
    /// and refresh the slot map.
    Moved { slot: u16, addr: String },
    /// `ASK slot addr`: the slot is migrating; send this one command to
    /// `addr`, preceded by `ASKING`, and do not update the map.
    Ask { slot: u16, addr: String },
}

impl Redirect {
    /// The slot named by the redirection.
    pub fn slot(&self) -> u16 {
        match self {
            Redirect::Moved { slot, .. } | Redirect::Ask { slot, .. } => *slot,
        }
    }

    /// The target address, `"host:port"`.
    pub fn addr(&self) -> &str {
        match self {
            Redirect::Moved { addr, .. } | Redirect::Ask { addr, .. } => addr,
        }
    }
}

/// Parse `"MOVED 3999 127.0.0.1:6381"` / `"ASK 3999 127.0.0.1:6381"` (error
/// text; a leading `-` and trailing CRLF are tolerated).
///
/// Redis 7 may leave the host empty (`"MOVED 3999 :6381"`), meaning the host
/// we contacted; `contacted` fills it in. Redis prints an IPv6 host without
/// brackets (`"MOVED 1 ::1:7000"`): the last `:` separates the port, and the
/// returned address is bracketed. Returns `None` for anything else.
pub fn parse_redirect(err: &[u8], contacted: &str) -> Option<Redirect> {
    let text = std::str::from_utf8(err).ok()?;
    let text = text
        .strip_prefix('-')
        .unwrap_or(text)
        .trim_end_matches(['\r', '\n']);
    let mut parts = text.split(' ');
    let kind = parts.next()?;
    let slot = parts.next()?;
    let target = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    if slot.is_empty() || !slot.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let slot: u16 = slot.parse().ok().filter(|&s| s < SLOT_COUNT)?;
    let (host, port) = target.rsplit_once(':')?;
    let port = parse_port(port).ok()?;
    let host = if host.is_empty() || host == "?" {
        split_host_port(contacted).ok()?.0
    } else {
        host
    };
    let addr = NodeAddr::new(host, port);
    split_host_port(&addr.0).ok()?;
    let addr = addr.0;
    match kind {
        "MOVED" => Some(Redirect::Moved { slot, addr }),
        "ASK" => Some(Redirect::Ask { slot, addr }),
        _ => None,
    }
}

/// Choose one slot map among several views of the same cluster (e.g. the
/// replies of three nodes asked during one refresh).
///
/// Rule: views are grouped by [`SlotMap::same_as`]; the largest group wins
/// (nodes agreeing with each other are more likely right than a lagging one);
/// a tie goes to the group whose layout covers the most slots; a remaining tie
/// to the group seen first. The first view of the winning group is returned.
/// `None` when `views` is empty.
pub fn choose_view(views: Vec<SlotMap>) -> Option<SlotMap> {
    let mut best: Option<(usize, usize, usize)> = None; // (index, votes, covered)
    for (i, view) in views.iter().enumerate() {
        if views.iter().take(i).any(|earlier| earlier.same_as(view)) {
            continue; // already counted with its group
        }
        let votes = views.iter().skip(i).filter(|v| v.same_as(view)).count();
        let covered = view.covered_slots();
        let better = match best {
            None => true,
            Some((_, best_votes, best_covered)) => (votes, covered) > (best_votes, best_covered),
        };
        if better {
            best = Some((i, votes, covered));
        }
    }
    let (index, _, _) = best?;
    views.into_iter().nth(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal RESP writer for building replies by hand.
    enum R<'a> {
        Bulk(&'a str),
        Int(i64),
        Arr(Vec<R<'a>>),
        Map(Vec<(R<'a>, R<'a>)>),
        Null2,
        Null3,
    }

    fn enc(r: &R, out: &mut Vec<u8>) {
        match r {
            R::Bulk(s) => out.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes()),
            R::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            R::Arr(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                items.iter().for_each(|i| enc(i, out));
            }
            R::Map(items) => {
                out.extend_from_slice(format!("%{}\r\n", items.len()).as_bytes());
                for (k, v) in items {
                    enc(k, out);
                    enc(v, out);
                }
            }
            R::Null2 => out.extend_from_slice(b"$-1\r\n"),
            R::Null3 => out.extend_from_slice(b"_\r\n"),
        }
    }

    fn bytes(r: R) -> Vec<u8> {
        let mut out = Vec::new();
        enc(&r, &mut out);
        out
    }

    fn node<'a>(ip: &'a str, port: i64) -> R<'a> {
        R::Arr(vec![R::Bulk(ip), R::Int(port)])
    }

    fn node_id<'a>(ip: &'a str, port: i64, id: &'a str) -> R<'a> {
        R::Arr(vec![R::Bulk(ip), R::Int(port), R::Bulk(id)])
    }

    fn range<'a>(start: i64, end: i64, nodes: Vec<R<'a>>) -> R<'a> {
        let mut v = vec![R::Int(start), R::Int(end)];
        v.extend(nodes);
        R::Arr(v)
    }

    fn three_shards() -> Vec<u8> {
        bytes(R::Arr(vec![
            range(
                0,
                5460,
                vec![node("127.0.0.1", 7000), node("127.0.0.1", 7003)],
            ),
            range(
                5461,
                10922,
                vec![node("127.0.0.1", 7001), node("127.0.0.1", 7004)],
            ),
            range(
                10923,
                16383,
                vec![node("127.0.0.1", 7002), node("127.0.0.1", 7005)],
            ),
        ]))
    }

    const C: &str = "127.0.0.1:7000";

    #[test]
    fn request_bytes() {
        assert_eq!(
            CLUSTER_SLOTS_REQUEST,
            b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n"
        );
    }

    #[test]
    fn resp2_three_shards_with_replicas() {
        let map = parse_cluster_slots(&three_shards(), C).unwrap();
        assert_eq!(map.shards.len(), 3);
        assert_eq!(map.covered_slots(), 16384);
        assert!(map.is_complete());
        assert_eq!(map.master_for_slot(0), Some("127.0.0.1:7000"));
        assert_eq!(map.master_for_slot(5460), Some("127.0.0.1:7000"));
        assert_eq!(map.master_for_slot(5461), Some("127.0.0.1:7001"));
        assert_eq!(map.master_for_slot(16383), Some("127.0.0.1:7002"));
        assert_eq!(
            map.shard_for_slot(12182).unwrap().replicas,
            vec!["127.0.0.1:7005"]
        );
        assert_eq!(map.shard_index(16384), None);
        assert_eq!(map.shard_index(u16::MAX), None);
        let nodes: Vec<&str> = map.nodes().collect();
        assert_eq!(nodes.len(), 6);
        assert!(nodes.contains(&"127.0.0.1:7004"));
    }

    #[test]
    fn node_ids_and_split_ranges() {
        let reply = bytes(R::Arr(vec![
            range(
                0,
                99,
                vec![
                    node_id("10.0.0.1", 6379, "aaaa"),
                    node_id("10.0.0.2", 6379, "bbbb"),
                ],
            ),
            range(100, 16383, vec![node_id("10.0.0.3", 6379, "cccc")]),
            range(
                200,
                300,
                vec![
                    node_id("10.0.0.1", 6379, "aaaa"),
                    node_id("10.0.0.2", 6379, "bbbb"),
                ],
            ),
        ]));
        let map = parse_cluster_slots(&reply, "10.0.0.1:6379").unwrap();
        assert_eq!(map.shards.len(), 2);
        assert_eq!(map.master_for_slot(250), Some("10.0.0.1:6379"));
        assert_eq!(map.master_for_slot(199), Some("10.0.0.3:6379"));
        assert_eq!(
            map.shard_for_slot(50).unwrap().replicas,
            vec!["10.0.0.2:6379"]
        );
        assert_eq!(map.nodes().count(), 3);
    }

    #[test]
    fn overlap_later_wins_and_unused_shard_dropped() {
        let reply = bytes(R::Arr(vec![
            range(0, 100, vec![node("10.0.0.1", 1)]),
            range(0, 16383, vec![node("10.0.0.2", 2)]),
        ]));
        let map = parse_cluster_slots(&reply, C).unwrap();
        assert_eq!(map.shards.len(), 1);
        assert_eq!(map.master_for_slot(0), Some("10.0.0.2:2"));
        assert_eq!(map.covered_slots(), 16384);
    }

    #[test]
    fn hostname_metadata_preferred_resp2_and_resp3() {
        let resp2 = bytes(R::Arr(vec![range(
            0,
            16383,
            vec![
                R::Arr(vec![
                    R::Bulk("10.0.0.1"),
                    R::Int(6379),
                    R::Bulk("id1"),
                    R::Arr(vec![R::Bulk("hostname"), R::Bulk("redis-0.redis")]),
                ]),
                R::Arr(vec![
                    R::Bulk("10.0.0.2"),
                    R::Int(6379),
                    R::Bulk("id2"),
                    R::Arr(vec![R::Bulk("ip"), R::Bulk("10.0.0.2")]),
                ]),
            ],
        )]));
        let map = parse_cluster_slots(&resp2, C).unwrap();
        assert_eq!(map.master_for_slot(7), Some("redis-0.redis:6379"));
        assert_eq!(
            map.shard_for_slot(7).unwrap().replicas,
            vec!["10.0.0.2:6379"]
        );

        let resp3 = bytes(R::Arr(vec![range(
            0,
            16383,
            vec![R::Arr(vec![
                R::Bulk("?"),
                R::Int(6380),
                R::Bulk("id1"),
                R::Map(vec![(R::Bulk("hostname"), R::Bulk("node-a.example"))]),
            ])],
        )]));
        let map = parse_cluster_slots(&resp3, C).unwrap();
        assert_eq!(map.master_for_slot(0), Some("node-a.example:6380"));

        // Empty hostname metadata: fall back to the endpoint.
        let empty = bytes(R::Arr(vec![range(
            0,
            16383,
            vec![R::Arr(vec![
                R::Bulk("10.1.1.1"),
                R::Int(6380),
                R::Bulk("id1"),
                R::Map(vec![(R::Bulk("hostname"), R::Bulk(""))]),
            ])],
        )]));
        assert_eq!(
            parse_cluster_slots(&empty, C).unwrap().master_for_slot(0),
            Some("10.1.1.1:6380")
        );
    }

    #[test]
    fn unknown_endpoint_uses_contacted_host() {
        for endpoint in [R::Bulk(""), R::Bulk("?"), R::Null2] {
            let reply = bytes(R::Arr(vec![range(
                0,
                16383,
                vec![R::Arr(vec![endpoint, R::Int(7001)])],
            )]));
            let map = parse_cluster_slots(&reply, "redis.internal:7000").unwrap();
            assert_eq!(map.master_for_slot(1), Some("redis.internal:7001"));
        }
        let reply = bytes(R::Arr(vec![range(0, 16383, vec![node("", 7001)])]));
        let map = parse_cluster_slots(&reply, "[::1]:7000").unwrap();
        assert_eq!(map.master_for_slot(1), Some("[::1]:7001"));
        assert!(matches!(
            parse_cluster_slots(&reply, "nonsense"),
            Err(TopologyError::Malformed(_))
        ));
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let reply = bytes(R::Arr(vec![range(0, 16383, vec![node("fe80::1", 7000)])]));
        let map = parse_cluster_slots(&reply, C).unwrap();
        assert_eq!(map.master_for_slot(1), Some("[fe80::1]:7000"));
    }

    #[test]
    fn resp3_reply() {
        let reply = bytes(R::Arr(vec![
            range(
                0,
                8191,
                vec![R::Arr(vec![
                    R::Bulk("10.0.0.1"),
                    R::Int(6379),
                    R::Bulk("id1"),
                    R::Map(vec![]),
                ])],
            ),
            range(
                8192,
                16383,
                vec![R::Arr(vec![
                    R::Null3,
                    R::Int(6379),
                    R::Bulk("id2"),
                    R::Map(vec![]),
                ])],
            ),
        ]));
        let map = parse_cluster_slots(&reply, "10.0.0.2:6379").unwrap();
        assert_eq!(map.master_for_slot(0), Some("10.0.0.1:6379"));
        assert_eq!(map.master_for_slot(9000), Some("10.0.0.2:6379"));
    }

    #[test]
    fn partial_coverage_and_empty_cluster() {
        let reply = bytes(R::Arr(vec![range(0, 99, vec![node("10.0.0.1", 1)])]));
        let map = parse_cluster_slots(&reply, C).unwrap();
        assert_eq!(map.covered_slots(), 100);
        assert!(!map.is_complete());
        assert_eq!(map.shard_for_slot(100), None);
        let map = parse_cluster_slots(b"*0\r\n", C).unwrap();
        assert_eq!(map.covered_slots(), 0);
        assert!(map.shards.is_empty());
    }

    #[test]
    fn error_replies() {
        assert_eq!(
            parse_cluster_slots(b"-ERR This instance has cluster support disabled\r\n", C),
            Err(TopologyError::ClusterDisabled)
        );
        assert_eq!(
            parse_cluster_slots(b"-LOADING Redis is loading the dataset in memory\r\n", C),
            Err(TopologyError::Reply(
                "LOADING Redis is loading the dataset in memory".to_string()
            ))
        );
        assert_eq!(
            parse_cluster_slots(b"!10\r\nERR whoops\r\n", C),
            Err(TopologyError::Reply("ERR whoops".to_string()))
        );
    }

    #[test]
    fn malformed_replies() {
        let full = three_shards();
        for cut in [1, 5, full.len() / 2, full.len() - 1] {
            let err = parse_cluster_slots(&full[..cut], C).unwrap_err();
            assert!(
                matches!(err, TopologyError::Malformed(_)),
                "cut {cut}: {err:?}"
            );
        }
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"+OK\r\n".to_vec(),
            b":1\r\n".to_vec(),
            b"garbage".to_vec(),
            [full.as_slice(), b"+OK\r\n"].concat(),
            bytes(R::Arr(vec![R::Int(1)])),
            bytes(R::Arr(vec![R::Arr(vec![R::Int(0), R::Int(10)])])),
            bytes(R::Arr(vec![range(0, 16383, vec![node("10.0.0.1", 0)])])),
            bytes(R::Arr(vec![range(0, 16383, vec![node("10.0.0.1", 65536)])])),
            bytes(R::Arr(vec![range(0, 16383, vec![node("10.0.0.1", -1)])])),
            bytes(R::Arr(vec![range(0, 20000, vec![node("10.0.0.1", 1)])])),
            bytes(R::Arr(vec![range(-1, 5, vec![node("10.0.0.1", 1)])])),
            bytes(R::Arr(vec![range(10, 5, vec![node("10.0.0.1", 1)])])),
            bytes(R::Arr(vec![R::Arr(vec![
                R::Bulk("0"),
                R::Int(5),
                node("10.0.0.1", 1),
            ])])),
            bytes(R::Arr(vec![range(
                0,
                5,
                vec![R::Arr(vec![R::Bulk("10.0.0.1"), R::Bulk("7000")])],
            )])),
            bytes(R::Arr(vec![range(
                0,
                5,
                vec![R::Arr(vec![R::Int(1), R::Int(7000)])],
            )])),
            bytes(R::Arr(vec![range(
                0,
                5,
                vec![R::Arr(vec![R::Bulk("10.0.0.1")])],
            )])),
            bytes(R::Arr(vec![range(0, 5, vec![R::Bulk("10.0.0.1:7000")])])),
            bytes(R::Arr(vec![range(
                0,
                5,
                vec![R::Arr(vec![R::Bulk("10.0.0.1"), R::Int(1), R::Int(5)])],
            )])),
            bytes(R::Arr(vec![range(
                0,
                5,
                vec![R::Arr(vec![R::Bulk("a b"), R::Int(1)])],
            )])),
            bytes(R::Arr(vec![range(
                0,
                5,
                vec![R::Arr(vec![
                    R::Bulk("h"),
                    R::Int(1),
                    R::Bulk("id"),
                    R::Arr(vec![R::Bulk("hostname")]),
                ])],
            )])),
        ];
        for (i, reply) in cases.iter().enumerate() {
            let err = parse_cluster_slots(reply, C).unwrap_err();
            assert!(
                matches!(err, TopologyError::Malformed(_)),
                "case {i}: {err:?}"
            );
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn single_node_covers_everything() {
        let map = SlotMap::single_node("localhost:6379");
        assert_eq!(map.covered_slots(), 16384);
        assert_eq!(map.master_for_slot(16383), Some("localhost:6379"));
        assert_eq!(map.nodes().collect::<Vec<_>>(), vec!["localhost:6379"]);
        assert_eq!(SlotMap::empty().covered_slots(), 0);
        assert_eq!(SlotMap::empty().shard_for_slot(0), None);
    }

    #[test]
    fn nodes_deduplicates() {
        let map = SlotMap {
            shards: vec![
                Shard {
                    master: "a:1".into(),
                    replicas: vec!["b:1".into()],
                },
                Shard {
                    master: "b:1".into(),
                    replicas: vec!["a:1".into(), "c:1".into()],
                },
            ],
            slots: vec![0; 16384].into_boxed_slice(),
        };
        assert_eq!(map.nodes().collect::<Vec<_>>(), vec!["a:1", "b:1", "c:1"]);
    }

    #[test]
    fn same_as_ignores_shard_and_replica_order() {
        let a = parse_cluster_slots(&three_shards(), C).unwrap();
        let reordered = bytes(R::Arr(vec![
            range(
                10923,
                16383,
                vec![node("127.0.0.1", 7002), node("127.0.0.1", 7005)],
            ),
            range(
                0,
                5460,
                vec![node("127.0.0.1", 7000), node("127.0.0.1", 7003)],
            ),
            range(
                5461,
                10922,
                vec![node("127.0.0.1", 7001), node("127.0.0.1", 7004)],
            ),
        ]));
        let b = parse_cluster_slots(&reordered, C).unwrap();
        assert!(a.same_as(&b) && b.same_as(&a));

        let two_replicas = |first: &'static str, second: &'static str| {
            bytes(R::Arr(vec![range(
                0,
                16383,
                vec![node("10.0.0.1", 1), node(first, 1), node(second, 1)],
            )]))
        };
        let x = parse_cluster_slots(&two_replicas("10.0.0.2", "10.0.0.3"), C).unwrap();
        let y = parse_cluster_slots(&two_replicas("10.0.0.3", "10.0.0.2"), C).unwrap();
        assert!(x.same_as(&y));

        let moved = bytes(R::Arr(vec![
            range(
                0,
                5461,
                vec![node("127.0.0.1", 7000), node("127.0.0.1", 7003)],
            ),
            range(
                5462,
                10922,
                vec![node("127.0.0.1", 7001), node("127.0.0.1", 7004)],
            ),
            range(
                10923,
                16383,
                vec![node("127.0.0.1", 7002), node("127.0.0.1", 7005)],
            ),
        ]));
        let c = parse_cluster_slots(&moved, C).unwrap();
        assert!(!a.same_as(&c));
        let failover = bytes(R::Arr(vec![
            range(
                0,
                5460,
                vec![node("127.0.0.1", 7003), node("127.0.0.1", 7000)],
            ),
            range(
                5461,
                10922,
                vec![node("127.0.0.1", 7001), node("127.0.0.1", 7004)],
            ),
            range(
                10923,
                16383,
                vec![node("127.0.0.1", 7002), node("127.0.0.1", 7005)],
            ),
        ]));
        assert!(!a.same_as(&parse_cluster_slots(&failover, C).unwrap()));
        assert!(!a.same_as(&SlotMap::empty()));
        assert!(SlotMap::empty().same_as(&SlotMap::empty()));
    }

    #[test]
    fn redirects() {
        assert_eq!(
            parse_redirect(b"MOVED 3999 127.0.0.1:6381", C),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            })
        );
        let ask = parse_redirect(b"ASK 3999 127.0.0.1:6381", C).unwrap();
        assert_eq!(
            ask,
            Redirect::Ask {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            }
        );
        assert_eq!((ask.slot(), ask.addr()), (3999, "127.0.0.1:6381"));
        assert_eq!(
            parse_redirect(b"-MOVED 0 redis-1.redis:6379\r\n", C).map(|r| r.addr().to_string()),
            Some("redis-1.redis:6379".into())
        );
        // Redis 7: empty host = the node we contacted.
        assert_eq!(
            parse_redirect(b"MOVED 3999 :6381", "10.0.0.9:7000"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "10.0.0.9:6381".into()
            })
        );
        assert_eq!(
            parse_redirect(b"MOVED 3999 :6381", "[::1]:7000")
                .unwrap()
                .addr(),
            "[::1]:6381"
        );
        // Redis prints IPv6 hosts unbracketed.
        assert_eq!(
            parse_redirect(b"ASK 1 ::1:7000", C).unwrap().addr(),
            "[::1]:7000"
        );
        assert_eq!(
            parse_redirect(b"ASK 1 [::1]:7000", C).unwrap().addr(),
            "[::1]:7000"
        );
        assert_eq!(parse_redirect(b"MOVED 16383 h:1", C).unwrap().slot(), 16383);
    }

    #[test]
    fn not_redirects() {
        for bad in [
            &b""[..],
            b"ERR unknown command",
            b"MOVED",
            b"MOVED 3999",
            b"MOVED 16384 h:1",
            b"MOVED -1 h:1",
            b"MOVED x h:1",
            b"MOVED 1 h",
            b"MOVED 1 h:0",
            b"MOVED 1 h:65536",
            b"MOVED 1 h:1 extra",
            b"moved 1 h:1",
            b"TRYAGAIN 1 h:1",
            b"MOVED 1 h:1x",
            b"MOVED  1 h:1",
            &[0xff, 0xfe],
        ] {
            assert_eq!(
                parse_redirect(bad, C),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_redirect(b"MOVED 1 :7000", "garbage"), None);
    }

    #[test]
    fn choose_view_majority_then_coverage_then_first() {
        let full = parse_cluster_slots(&three_shards(), C).unwrap();
        let other = SlotMap::single_node("10.9.9.9:1");
        let partial =
            parse_cluster_slots(&bytes(R::Arr(vec![range(0, 10, vec![node("h", 1)])])), C).unwrap();

        assert!(choose_view(Vec::new()).is_none());
        // Majority wins even over a view listed first.
        let chosen = choose_view(vec![other.clone(), full.clone(), full.clone()]).unwrap();
        assert!(chosen.same_as(&full));
        // Tie on votes: more covered slots wins.
        let chosen = choose_view(vec![partial.clone(), full.clone()]).unwrap();
        assert!(chosen.same_as(&full));
        // Tie on votes and coverage: first wins.
        let chosen = choose_view(vec![other.clone(), full.clone()]).unwrap();
        assert!(chosen.same_as(&other));
        // Majority beats coverage.
        let chosen = choose_view(vec![full.clone(), partial.clone(), partial.clone()]).unwrap();
        assert!(chosen.same_as(&partial));
    }

    #[test]
    fn node_addr_helpers() {
        assert_eq!(split_host_port("127.0.0.1:7000"), Ok(("127.0.0.1", 7000)));
        assert_eq!(
            split_host_port("redis-cluster-0.redis:6379"),
            Ok(("redis-cluster-0.redis", 6379))
        );
        assert_eq!(split_host_port("[::1]:7000"), Ok(("::1", 7000)));
        for bad in [
            "", ":7000", "h", "h:", "h:0", "h:65536", "h:+1", "::1:7000", "[::1]", "[]:1", "a b:1",
            "h:1 ",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad:?}");
        }
        let a = NodeAddr::new("::1", 7000);
        assert_eq!(a.as_str(), "[::1]:7000");
        assert_eq!((a.host(), a.port()), ("::1", 7000));
        assert_eq!(NodeAddr::new("[::1]", 1).0, "[::1]:1");
        assert_eq!(NodeAddr::new("h", 2).to_string(), "h:2");
        assert!(NodeAddr::parse("h:2").is_ok());
        assert!(NodeAddr::parse("h").is_err());
        let bogus = NodeAddr("bogus".into());
        assert_eq!((bogus.host(), bogus.port()), ("", 0));
    }
}
