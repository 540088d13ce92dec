//! Splitting one client command into several node commands, and merging
//! their replies into exactly the reply one Redis would have given.
//!
//! - Multi-key commands across slots (`MGET`, `MSET`, `DEL`, `UNLINK`,
//!   `EXISTS`, `TOUCH`): one sub-command per slot, keys in their original
//!   order within each; `MGET` values are put back in key order, counts are
//!   summed, `MSET` is `OK` when every part is.
//! - Cluster-wide keyless commands (`DBSIZE`, `KEYS`, `FLUSHALL`, `INFO`,
//!   `RANDOMKEY`, `WAIT`): one sub-command per master.
//! - `SCAN`: one master at a time; the client's cursor encodes which master
//!   (low [`SCAN_SHARD_BITS`] bits, masters ordered by their first slot) and
//!   that master's own cursor (the rest), so a full iteration visits every
//!   master once and keeps the SCAN guarantee on each.
//!
//! If any part fails, the client gets that error: a partial answer is never
//! passed off as a whole one.

use crate::codec;

/// Bits of a proxy SCAN cursor that select the master.
pub const SCAN_SHARD_BITS: u32 = 10;

/// How the parts' replies combine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// `order[i] = (part, index in that part's array)` for the i-th key.
    Mget { order: Vec<(u32, u32)> },
    /// `+OK` when every part said OK.
    AllOk,
    /// The reply every part gave (`SCRIPT LOAD`'s sha, `FUNCTION LOAD`'s
    /// name); integer arrays that differ (`SCRIPT EXISTS`) combine by
    /// element-wise maximum: a script one master has can run anywhere,
    /// because the proxy loads it on a master that answers `NOSCRIPT`
    /// (see `scripts`).
    Same,
    /// `SCRIPT KILL` / `FUNCTION KILL` sent to every master: the busy one's
    /// answer (`+OK`, or why it could not kill), else `NOTBUSY`.
    Kill,
    /// `FUNCTION STATS` from every master: the one running a function
    /// reports it (`running_script`), else any (the libraries are the same
    /// on every master).
    FunctionStats,
    /// Sum of integer replies.
    Sum,
    /// Minimum of integer replies (`WAIT`).
    Min,
    /// Concatenation of array replies (`KEYS`).
    Concat,
    /// First non-nil reply, trying parts from `start` on (`RANDOMKEY`).
    FirstNonNil { start: u32 },
    /// One part: a `SCAN` reply from master `shard` of `shards`.
    Scan { shard: u32, shards: u32 },
    /// `INFO` from each node, labelled; `header` is the proxy's own section.
    Info { nodes: Vec<String>, header: String },
    /// `INFO` as one server ([`crate::info::aggregate`]); `proxy` is the
    /// proxy's own section, last, when all sections were asked for.
    InfoSum {
        proxy: Option<String>,
        /// Fields whose value is the proxy's own (`connected_clients`).
        fields: Vec<(&'static str, String)>,
    },
}

/// Replies gathered so far for one split command.
pub struct Gather {
    merge: Merge,
    parts: Vec<Option<Vec<u8>>>,
    missing: usize,
}

impl Gather {
    pub fn new(merge: Merge, parts: usize) -> Gather {
        Gather {
            merge,
            parts: vec![None; parts],
            missing: parts,
        }
    }

    /// Record a part's reply; returns the merged reply once all are in.
    pub fn add(&mut self, part: u32, reply: Vec<u8>) -> Option<Vec<u8>> {
        let slot = self.parts.get_mut(part as usize)?;
        if slot.is_none() {
            self.missing -= 1;
        }
        *slot = Some(reply);
        if self.missing > 0 {
            return None;
        }
        let parts: Vec<&[u8]> = self
            .parts
            .iter()
            .map(|p| p.as_deref().unwrap_or_default())
            .collect();
        Some(merge(&self.merge, &parts))
    }
}

/// Only the master running a script has one to kill; the others answer
/// `NOTBUSY`, which is the answer only when every master gives it.
fn merge_kill(parts: &[&[u8]]) -> Vec<u8> {
    let notbusy = |p: &&[u8]| codec::error_text(p).is_some_and(|e| e.starts_with(b"NOTBUSY"));
    parts
        .iter()
        .find(|p| codec::error_text(p).is_none())
        .or_else(|| parts.iter().find(|p| !notbusy(p)))
        .or_else(|| parts.first())
        .map_or_else(|| codec::error("ERR no master to ask"), |p| p.to_vec())
}

/// Merge complete part replies (RESP2 or RESP3).
pub fn merge(how: &Merge, parts: &[&[u8]]) -> Vec<u8> {
    // A node's error is the answer, except where errors are expected.
    if *how != Merge::Kill {
        if let Some(err) = parts.iter().find(|p| codec::error_text(p).is_some()) {
            return err.to_vec();
        }
    }
    let bad = || codec::error("ERR proxy could not merge the nodes' replies");
    match how {
        Merge::AllOk => codec::simple("OK"),
        Merge::Kill => merge_kill(parts),
        Merge::FunctionStats => parts
            .iter()
            .find(|p| running_script(p).is_some_and(|r| !is_nil(r)))
            .or(parts.first())
            .map_or_else(bad, |p| p.to_vec()),
        Merge::Same => {
            let Some(first) = parts.first() else {
                return bad();
            };
            if parts.iter().all(|p| p == first) || same_ignoring_order(parts) {
                return first.to_vec();
            }
            let arrays: Option<Vec<Vec<i64>>> = parts
                .iter()
                .map(|p| array_elements(p)?.iter().map(|e| integer(e)).collect())
                .collect();
            match arrays {
                Some(a) if a.iter().all(|x| x.len() == a[0].len()) => {
                    let maxes: Vec<Vec<u8>> = (0..a[0].len())
                        .map(|i| codec::integer(a.iter().map(|x| x[i]).max().unwrap_or(0)))
                        .collect();
                    let refs: Vec<&[u8]> = maxes.iter().map(|m| m.as_slice()).collect();
                    array(&refs)
                }
                _ => codec::error("ERR the masters answered differently"),
            }
        }
        Merge::Sum | Merge::Min => {
            let mut values = Vec::with_capacity(parts.len());
            for p in parts {
                match integer(p) {
                    Some(v) => values.push(v),
                    None => return bad(),
                }
            }
            let v = if *how == Merge::Sum {
                // Nodes' integers are i64: their sum need not be.
                values.iter().try_fold(0i64, |a, &v| a.checked_add(v))
            } else {
                Some(values.iter().copied().min().unwrap_or(0))
            };
            v.map_or_else(bad, codec::integer)
        }
        Merge::Concat => {
            let mut elems = Vec::new();
            for p in parts {
                match array_elements(p) {
                    Some(e) => elems.extend(e),
                    None => return bad(),
                }
            }
            array(&elems)
        }
        Merge::Mget { order } => {
            let mut per_part = Vec::with_capacity(parts.len());
            for p in parts {
                match array_elements(p) {
                    Some(e) => per_part.push(e),
                    None => return bad(),
                }
            }
            let mut elems = Vec::with_capacity(order.len());
            for &(part, idx) in order {
                match per_part
                    .get(part as usize)
                    .and_then(|e| e.get(idx as usize))
                {
                    Some(e) => elems.push(*e),
                    None => return bad(),
                }
            }
            array(&elems)
        }
        Merge::FirstNonNil { start } => {
            let n = parts.len();
            (0..n)
                .map(|i| parts[(*start as usize + i) % n])
                .find(|p| !is_nil(p))
                .or(parts.first().copied())
                .map_or_else(bad, |p| p.to_vec())
        }
        Merge::Scan { shard, shards } => {
            let Some(p) = parts.first() else { return bad() };
            let Some(elems) = array_elements(p) else {
                return bad();
            };
            let [cursor, keys] = elems.as_slice() else {
                return bad();
            };
            let Some(next) = bulk_u64(cursor) else {
                return bad();
            };
            let proxy_cursor = if next != 0 {
                match encode_scan_cursor(next, *shard) {
                    Some(c) => c,
                    None => return bad(),
                }
            } else if shard + 1 < *shards {
                u64::from(shard + 1)
            } else {
                0
            };
            let mut out = b"*2\r\n".to_vec();
            out.extend(codec::bulk(proxy_cursor.to_string().as_bytes()));
            out.extend_from_slice(keys);
            out
        }
        Merge::Info { nodes, header } => {
            let mut text = header.clone();
            for (node, p) in nodes.iter().zip(parts) {
                text.push_str(&format!("\r\n# Node {node}\r\n"));
                if let Some(body) = string_body(p) {
                    text.push_str(&String::from_utf8_lossy(body));
                }
            }
            codec::bulk(text.as_bytes())
        }
        Merge::InfoSum { proxy, fields } => info_sum(parts, proxy.as_deref(), fields),
    }
}

fn info_sum(parts: &[&[u8]], proxy: Option<&str>, fields: &[(&str, String)]) -> Vec<u8> {
    let bodies: Vec<String> = parts
        .iter()
        .map(|p| String::from_utf8_lossy(string_body(p).unwrap_or_default()).into_owned())
        .collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let text = crate::info::set_fields(&crate::info::aggregate(&refs, proxy), fields);
    // A RESP3 connection got verbatim strings: answer in kind.
    if parts.first().is_some_and(|p| p.first() == Some(&b'=')) {
        let mut out = format!("={}\r\ntxt:", text.len() + 4).into_bytes();
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        return out;
    }
    codec::bulk(text.as_bytes())
}

/// The replies hold the same elements, maybe in another order at any depth
/// (`FUNCTION LIST`: each master lists its libraries, and each library its
/// functions, in its own hash-table order). Only lists of aggregates and
/// RESP3 sets are taken as unordered: a list of scalars keeps its order
/// (`SCRIPT EXISTS a b` answering `1 0` and `0 1` is no agreement), and so
/// do a map's pairs and a record's fields (Redis writes them in a fixed
/// order).
fn same_ignoring_order(parts: &[&[u8]]) -> bool {
    let mut canon = parts.iter().map(|p| canonical(p, 0));
    let Some(Some(first)) = canon.next() else {
        return false;
    };
    canon.all(|c| c.as_ref() == Some(&first))
}

/// A reply with the elements of its unordered aggregates sorted (see
/// [`same_ignoring_order`]), so that equal-up-to-order replies compare equal.
fn canonical(reply: &[u8], depth: u32) -> Option<Vec<u8>> {
    let kind = *reply.first()?;
    let per_element = match kind {
        b'*' | b'~' | b'>' => 1,
        b'%' => 2,
        _ => return Some(reply.to_vec()),
    };
    if depth > 32 {
        return None;
    }
    let (n, mut pos) = aggregate_header(reply)?;
    let header_end = pos;
    // The count comes from a node: never reserve more than the bytes hold.
    let mut elems = Vec::with_capacity(n.min(reply.len()));
    let mut all_aggregates = true;
    for _ in 0..n {
        let mut unit = Vec::new();
        for _ in 0..per_element {
            let len = codec::reply_len(reply.get(pos..)?).ok()??;
            let elem = reply.get(pos..pos + len)?;
            all_aggregates &= matches!(elem.first(), Some(b'*' | b'~' | b'%' | b'>'));
            unit.extend(canonical(elem, depth + 1)?);
            pos += len;
        }
        elems.push(unit);
    }
    if kind == b'~' || (kind == b'*' && all_aggregates) {
        elems.sort();
    }
    let mut out = reply.get(..header_end)?.to_vec();
    out.extend(elems.concat());
    Some(out)
}

/// A proxy SCAN cursor from a master's cursor and the master's index.
pub fn encode_scan_cursor(upstream: u64, shard: u32) -> Option<u64> {
    if upstream >> (64 - SCAN_SHARD_BITS) != 0 || shard >= 1 << SCAN_SHARD_BITS {
        return None;
    }
    Some(upstream << SCAN_SHARD_BITS | u64::from(shard))
}

/// (master index, that master's cursor) from a proxy SCAN cursor.
pub fn decode_scan_cursor(cursor: u64) -> (u32, u64) {
    (
        (cursor & ((1 << SCAN_SHARD_BITS) - 1)) as u32,
        cursor >> SCAN_SHARD_BITS,
    )
}

fn array(elems: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", elems.len()).into_bytes();
    for e in elems {
        out.extend_from_slice(e);
    }
    out
}

/// An aggregate reply's element count (negative counts: none) and where
/// its first element starts.
fn aggregate_header(reply: &[u8]) -> Option<(usize, usize)> {
    let start = pos_header(reply)?;
    let n: i64 = std::str::from_utf8(reply.get(1..start.checked_sub(2)?)?)
        .ok()?
        .parse()
        .ok()?;
    Some((usize::try_from(n).unwrap_or(0), start))
}

/// Where an aggregate reply's header line ends (just past its `\n`).
fn pos_header(reply: &[u8]) -> Option<usize> {
    Some(reply.iter().position(|&b| b == b'\n')? + 1)
}

/// The raw elements of an array (or RESP3 set/push) reply.
pub fn array_elements(reply: &[u8]) -> Option<Vec<&[u8]>> {
    if !matches!(reply.first(), Some(b'*' | b'~' | b'>')) {
        return None;
    }
    let (n, mut pos) = aggregate_header(reply)?;
    let mut out = Vec::with_capacity(n.min(reply.len()));
    for _ in 0..n {
        let len = codec::reply_len(reply.get(pos..)?).ok()??;
        out.push(&reply[pos..pos + len]);
        pos += len;
    }
    Some(out)
}

/// The `running_script` field of a `FUNCTION STATS` reply (a RESP2 list
/// of name, value, … or a RESP3 map).
fn running_script(reply: &[u8]) -> Option<&[u8]> {
    let per_entry = match reply.first() {
        Some(b'*') => 1,
        Some(b'%') => 2,
        _ => return None,
    };
    let (n, mut pos) = aggregate_header(reply)?;
    let mut prev: Option<&[u8]> = None;
    for _ in 0..n.saturating_mul(per_entry) {
        let len = codec::reply_len(reply.get(pos..)?).ok()??;
        let elem = reply.get(pos..pos + len)?;
        if prev.and_then(string_body) == Some(b"running_script".as_slice()) {
            return Some(elem);
        }
        prev = Some(elem);
        pos += len;
    }
    None
}

fn integer(reply: &[u8]) -> Option<i64> {
    let body = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(body).ok()?.parse().ok()
}

fn is_nil(reply: &[u8]) -> bool {
    reply == b"$-1\r\n" || reply == b"*-1\r\n" || reply == b"_\r\n"
}

/// Body of a bulk (`$`) or RESP3 verbatim (`=`, after its `txt:` tag) string.
fn string_body(reply: &[u8]) -> Option<&[u8]> {
    let nl = reply.iter().position(|&b| b == b'\n')?;
    let body = reply.get(nl + 1..reply.len().checked_sub(2)?)?;
    match reply.first() {
        Some(b'$') => Some(body),
        Some(b'=') => body.get(4..),
        _ => None,
    }
}

fn bulk_u64(reply: &[u8]) -> Option<u64> {
    std::str::from_utf8(string_body(reply)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mget_values_come_back_in_key_order() {
        // Keys a,b,c,d; a and c in part 0, b and d in part 1.
        let how = Merge::Mget {
            order: vec![(0, 0), (1, 0), (0, 1), (1, 1)],
        };
        let p0 = b"*2\r\n$1\r\nA\r\n$-1\r\n".to_vec();
        let p1 = b"*2\r\n$1\r\nB\r\n$1\r\nD\r\n".to_vec();
        let mut g = Gather::new(how, 2);
        assert_eq!(g.add(1, p1), None);
        let merged = g.add(0, p0).unwrap();
        assert_eq!(
            merged,
            b"*4\r\n$1\r\nA\r\n$1\r\nB\r\n$-1\r\n$1\r\nD\r\n".to_vec()
        );
    }

    #[test]
    fn sums_oks_and_errors() {
        assert_eq!(
            merge(&Merge::Sum, &[b":2\r\n", b":3\r\n"]),
            b":5\r\n".to_vec()
        );
        assert_eq!(
            merge(&Merge::Min, &[b":2\r\n", b":1\r\n"]),
            b":1\r\n".to_vec()
        );
        assert_eq!(
            merge(&Merge::AllOk, &[b"+OK\r\n", b"+OK\r\n"]),
            b"+OK\r\n".to_vec()
        );
        assert_eq!(
            merge(&Merge::Sum, &[b":2\r\n", b"-ERR boom\r\n"]),
            b"-ERR boom\r\n".to_vec()
        );
        assert!(merge(&Merge::Sum, &[b"+OK\r\n"]).starts_with(b"-ERR"));
    }

    #[test]
    fn same_reply_from_every_master() {
        let sha = b"$40\r\nabcdefabcdefabcdefabcdefabcdefabcdefabcd\r\n";
        assert_eq!(merge(&Merge::Same, &[sha, sha, sha]), sha.to_vec());
        let exists = merge(
            &Merge::Same,
            &[b"*2\r\n:1\r\n:1\r\n", b"*2\r\n:1\r\n:0\r\n"],
        );
        assert_eq!(exists, b"*2\r\n:1\r\n:1\r\n".to_vec());
        assert!(merge(&Merge::Same, &[b"+a\r\n", b"+b\r\n"]).starts_with(b"-ERR"));
    }

    #[test]
    fn a_huge_element_count_from_a_node_reserves_nothing_huge() {
        let huge: &[u8] = b"*9223372036854775807\r\n:1\r\n";
        assert!(array_elements(huge).is_none());
        assert!(merge(&Merge::Same, &[huge, b"*1\r\n:1\r\n"]).starts_with(b"-ERR"));
    }

    #[test]
    fn function_stats_shows_the_running_function() {
        let idle: &[u8] = b"*4\r\n$14\r\nrunning_script\r\n$-1\r\n$7\r\nengines\r\n*0\r\n";
        let busy: &[u8] = b"*4\r\n$14\r\nrunning_script\r\n*2\r\n$4\r\nname\r\n$4\r\ntest\r\n$7\r\nengines\r\n*0\r\n";
        assert_eq!(merge(&Merge::FunctionStats, &[idle, busy, idle]), busy);
        assert_eq!(merge(&Merge::FunctionStats, &[idle, idle]), idle);
        let idle3: &[u8] = b"%2\r\n$14\r\nrunning_script\r\n_\r\n$7\r\nengines\r\n%0\r\n";
        let busy3: &[u8] = b"%2\r\n$14\r\nrunning_script\r\n%1\r\n$4\r\nname\r\n$1\r\nt\r\n$7\r\nengines\r\n%0\r\n";
        assert_eq!(merge(&Merge::FunctionStats, &[idle3, busy3]), busy3);
        let err: &[u8] = b"-ERR down\r\n";
        assert_eq!(merge(&Merge::FunctionStats, &[busy, err]), err);
    }

    #[test]
    fn kill_takes_the_busy_masters_answer() {
        let nb: &[u8] = b"-NOTBUSY No scripts in execution right now.\r\n";
        let unk: &[u8] = b"-UNKILLABLE Sorry the script already executed write commands\r\n";
        assert_eq!(
            merge(&Merge::Kill, &[nb, b"+OK\r\n", nb]),
            b"+OK\r\n".to_vec()
        );
        assert_eq!(merge(&Merge::Kill, &[nb, nb, unk]), unk.to_vec());
        assert_eq!(merge(&Merge::Kill, &[nb, nb]), nb.to_vec());
    }

    #[test]
    fn same_ignores_element_order_at_any_depth() {
        // FUNCTION LIST: libraries, and functions inside them, in any order
        // (each library and function is a name/value list in fixed order).
        let f = |n: &str| format!("*2\r\n$4\r\nname\r\n$2\r\n{n}\r\n");
        let lib = |n: &str, fs: &[&str]| {
            let mut l = format!(
                "*4\r\n$12\r\nlibrary_name\r\n$4\r\n{n}\r\n$9\r\nfunctions\r\n*{}\r\n",
                fs.len()
            );
            for x in fs {
                l.push_str(&f(x));
            }
            l
        };
        let a = format!("*2\r\n{}{}", lib("libA", &["f1", "f2"]), lib("libB", &[]));
        let b = format!("*2\r\n{}{}", lib("libB", &[]), lib("libA", &["f2", "f1"]));
        let c = format!("*1\r\n{}", lib("libA", &["f1", "f2"]));
        let (a, b, c) = (a.as_bytes(), b.as_bytes(), c.as_bytes());
        assert_eq!(merge(&Merge::Same, &[a, b]), a.to_vec());
        // RESP3 sets are unordered; a map's pairs keep their order.
        let s1 = b"~2\r\n$1\r\na\r\n$1\r\nb\r\n";
        let s2 = b"~2\r\n$1\r\nb\r\n$1\r\na\r\n";
        assert_eq!(merge(&Merge::Same, &[s1, s2]), s1.to_vec());
        let m1 = b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n";
        let m3 = b"%2\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:1\r\n";
        assert!(merge(&Merge::Same, &[m1, m3]).starts_with(b"-ERR"));
        // SCRIPT EXISTS: a list of integers keeps its order; the answers
        // combine element-wise ("loaded on some master": see scripts.rs).
        assert_eq!(
            merge(
                &Merge::Same,
                &[b"*2\r\n:1\r\n:0\r\n", b"*2\r\n:0\r\n:0\r\n"]
            ),
            b"*2\r\n:1\r\n:0\r\n".to_vec()
        );
        // Really different libraries still differ.
        assert!(merge(&Merge::Same, &[a, c]).starts_with(b"-ERR"));
        // Truncated input is not equal to anything, and does not panic.
        assert!(merge(&Merge::Same, &[b"*2\r\n$1\r\na\r\n", b"*2\r\n"]).starts_with(b"-ERR"));
    }

    #[test]
    fn info_sum_is_one_server_and_keeps_resp3_verbatim() {
        let how = Merge::InfoSum {
            proxy: None,
            fields: Vec::new(),
        };
        let a = b"$25\r\n# Stats\r\nexpired_keys:2\r\n\r\n";
        let b = b"$25\r\n# Stats\r\nexpired_keys:3\r\n\r\n";
        assert_eq!(
            merge(&how, &[a, b]),
            b"$25\r\n# Stats\r\nexpired_keys:5\r\n\r\n".to_vec()
        );
        let v = b"=29\r\ntxt:# Stats\r\nexpired_keys:2\r\n\r\n";
        assert_eq!(
            merge(&how, &[v, v]),
            b"=29\r\ntxt:# Stats\r\nexpired_keys:4\r\n\r\n".to_vec()
        );
    }

    /// Regression (fuzz/splitter_merge): summing the nodes' integer
    /// replies overflowed i64 (a panic in debug builds, a wrapped negative
    /// count in release).
    #[test]
    fn sum_overflow_is_an_error_not_a_panic() {
        let max = format!(":{}\r\n", i64::MAX).into_bytes();
        let min = format!(":{}\r\n", i64::MIN).into_bytes();
        assert!(merge(&Merge::Sum, &[&max, b":1\r\n"]).starts_with(b"-ERR"));
        assert!(merge(&Merge::Sum, &[&min, b":-1\r\n"]).starts_with(b"-ERR"));
        assert_eq!(merge(&Merge::Sum, &[&max, b":-1\r\n", b":1\r\n"]), max);
    }

    #[test]
    fn concat_and_first_non_nil() {
        let merged = merge(
            &Merge::Concat,
            &[b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*1\r\n$1\r\nb\r\n"],
        );
        assert_eq!(merged, b"*2\r\n$1\r\na\r\n$1\r\nb\r\n".to_vec());
        let r = merge(
            &Merge::FirstNonNil { start: 1 },
            &[b"$1\r\nx\r\n", b"$-1\r\n", b"_\r\n"],
        );
        assert_eq!(r, b"$1\r\nx\r\n".to_vec());
    }

    #[test]
    fn scan_cursor_walks_every_master() {
        assert_eq!(decode_scan_cursor(0), (0, 0));
        let c = encode_scan_cursor(12345, 2).unwrap();
        assert_eq!(decode_scan_cursor(c), (2, 12345));
        assert_eq!(encode_scan_cursor(u64::MAX, 0), None);
        let reply = b"*2\r\n$2\r\n17\r\n*1\r\n$1\r\nk\r\n";
        let out = merge(
            &Merge::Scan {
                shard: 1,
                shards: 3,
            },
            &[reply],
        );
        let expect = encode_scan_cursor(17, 1).unwrap().to_string();
        assert!(out.starts_with(format!("*2\r\n${}\r\n{expect}\r\n", expect.len()).as_bytes()));
        assert!(out.ends_with(b"*1\r\n$1\r\nk\r\n"));
        // Master 1 finished: continue with master 2 at cursor 0.
        let done = b"*2\r\n$1\r\n0\r\n*0\r\n";
        assert_eq!(
            merge(
                &Merge::Scan {
                    shard: 1,
                    shards: 3
                },
                &[done]
            ),
            b"*2\r\n$1\r\n2\r\n*0\r\n".to_vec()
        );
        // Last master finished: cursor 0 ends the iteration.
        assert_eq!(
            merge(
                &Merge::Scan {
                    shard: 2,
                    shards: 3
                },
                &[done]
            ),
            b"*2\r\n$1\r\n0\r\n*0\r\n".to_vec()
        );
    }

    #[test]
    fn info_is_labelled_per_node() {
        let how = Merge::Info {
            nodes: vec!["n1".into(), "n2".into()],
            header: "# Proxy\r\nx:1\r\n".into(),
        };
        let out = merge(&how, &[b"$5\r\na:1\r\n\r\n", b"=9\r\ntxt:b:2\r\n\r\n"]);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("# Proxy")
                && text.contains("# Node n1\r\na:1")
                && text.contains("# Node n2\r\nb:2"),
            "{text}"
        );
    }
}
