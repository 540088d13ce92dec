//! Where each key of a command goes when prefix routes may send its keys to
//! different places.
//!
//! Every key follows its own longest-prefix route, as in Envoy's
//! `redis_proxy`: its cluster, its `remove_prefix`, its read policy and its
//! mirrors. Commands the proxy splits (`MGET`, `MSET`, `DEL`, `UNLINK`,
//! `EXISTS`, `TOUCH`) become one sub-command per group of keys sharing a
//! cluster, a slot and a route behaviour ([`split`]), merged back in key
//! order. Any other command is one command on one node ([`single`]): its
//! keys, each stripped by its own route, must be in one cluster and one
//! slot, else it is refused — never run on the first key's cluster with
//! keys that belong elsewhere.
//!
//! When every key follows one route (the usual case), [`key_routes`]
//! allocates nothing and the rest works as without prefix routes.

use crate::codec;
use crate::command::Fanout;
use crate::config::{MirrorPolicy, ReadPolicy};
use crate::proxy::Route;
use crate::slot;
use crate::splitter::Merge;
use std::borrow::Cow;

/// The routes of a command's keys, in key order.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyRoutes<'a> {
    /// Every key follows this route (or routes that behave the same).
    One(Route<'a>),
    /// Key `n` follows `routes[n]`; at least two of them differ.
    PerKey(Vec<Route<'a>>),
}

impl<'a> KeyRoutes<'a> {
    /// The route of the `n`-th key.
    pub fn get(&self, n: usize) -> &Route<'a> {
        match self {
            KeyRoutes::One(r) => r,
            KeyRoutes::PerKey(v) => v.get(n).unwrap_or(&v[0]),
        }
    }

    /// The first key's route.
    pub fn first(&self) -> &Route<'a> {
        self.get(0)
    }
}

/// Two routes send a key to the same place in the same way (the prefix
/// itself may differ: what is stripped is applied per key anyway, but the
/// number of bytes stripped must match for the routes to be one).
pub fn same_route(a: &Route<'_>, b: &Route<'_>) -> bool {
    a.cluster == b.cluster
        && a.strip == b.strip
        && a.read_policy == b.read_policy
        && same_mirrors(a.mirrors, b.mirrors)
}

fn same_mirrors(a: &[MirrorPolicy], b: &[MirrorPolicy]) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The route of every key (`keys` index `args`); `None` when a key has no
/// route (no prefix matches and there is no catch-all).
pub fn key_routes<'a>(
    args: &[&[u8]],
    keys: &[usize],
    lookup: impl Fn(&[u8]) -> Option<Route<'a>>,
) -> Option<KeyRoutes<'a>> {
    let arg = |k: usize| args.get(k).copied().unwrap_or_default();
    let first = lookup(arg(*keys.first()?))?;
    let mut per_key: Option<Vec<Route<'a>>> = None;
    for (n, &k) in keys.iter().enumerate().skip(1) {
        let route = lookup(arg(k))?;
        match per_key.as_mut() {
            Some(v) => v.push(route),
            None if same_route(&route, &first) => {}
            None => {
                let mut v = Vec::with_capacity(keys.len());
                v.resize(n, first);
                v.push(route);
                per_key = Some(v);
            }
        }
    }
    Some(per_key.map_or(KeyRoutes::One(first), KeyRoutes::PerKey))
}

/// `key` without its first `strip` bytes (a route's `remove_prefix`).
pub fn strip_prefix(key: &[u8], strip: usize) -> &[u8] {
    key.get(strip.min(key.len())..).unwrap_or_default()
}

/// The slot of each key, after its route's prefix removal.
pub fn key_slots(args: &[&[u8]], keys: &[usize], routes: &KeyRoutes, hashtags: bool) -> Vec<u16> {
    keys.iter()
        .enumerate()
        .map(|(n, &k)| {
            let key = args.get(k).copied().unwrap_or_default();
            slot::key_slot(strip_prefix(key, routes.get(n).strip), hashtags)
        })
        .collect()
}

/// The bytes to send for a command not split: the client's own frame, or,
/// when a route removes a prefix, the command re-encoded with each key
/// stripped by its own route.
pub fn encode_keyed(frame: &[u8], args: &[&[u8]], keys: &[usize], routes: &KeyRoutes) -> Vec<u8> {
    let strips = match routes {
        KeyRoutes::One(r) => r.strip != 0,
        KeyRoutes::PerKey(v) => v.iter().any(|r| r.strip != 0),
    };
    if !strips {
        return encode(frame, args);
    }
    let mut words: Vec<&[u8]> = args.to_vec();
    for (n, &k) in keys.iter().enumerate() {
        if let Some(w) = words.get_mut(k) {
            *w = strip_prefix(w, routes.get(n).strip);
        }
    }
    codec::command(&words)
}

/// The raw frame when it is multibulk; inline commands are re-encoded.
pub fn encode(frame: &[u8], args: &[&[u8]]) -> Vec<u8> {
    if frame.first() == Some(&b'*') {
        frame.to_vec()
    } else {
        codec::command(args)
    }
}

/// One sub-command of a split command.
#[derive(Debug, Clone, PartialEq)]
pub struct Part<'a> {
    pub cluster: usize,
    pub slot: u16,
    pub read_policy: ReadPolicy,
    pub mirrors: &'a [MirrorPolicy],
    /// The sub-command, RESP-encoded, its keys stripped per their routes.
    pub data: Vec<u8>,
}

/// Split a splittable command into one sub-command per (cluster, slot,
/// route behaviour), keys in their original order within each; `slots` is
/// [`key_slots`]. The merge puts the replies back together in key order.
pub fn split<'a>(
    kind: Fanout,
    args: &[&[u8]],
    keys: &[usize],
    routes: &KeyRoutes<'a>,
    slots: &[u16],
) -> (Vec<Part<'a>>, Merge) {
    // Arguments that travel with each key: MSET's value.
    let width = if kind == Fanout::Mset { 2 } else { 1 };
    let name = args.first().copied().unwrap_or_default();
    // (cluster, slot, route, words) per part.
    let mut groups: Vec<(u16, Route<'a>, Vec<&[u8]>)> = Vec::new();
    let mut order = Vec::with_capacity(keys.len());
    for (n, &k) in keys.iter().enumerate() {
        let slot = slots.get(n).copied().unwrap_or(0);
        let route = routes.get(n);
        let g = match groups
            .iter()
            .position(|(s, r, _)| *s == slot && same_route(r, route))
        {
            Some(g) => g,
            None => {
                groups.push((slot, *route, vec![name]));
                groups.len() - 1
            }
        };
        let words = &mut groups[g].2;
        order.push((g as u32, ((words.len() - 1) / width) as u32));
        let mut with_key = args.get(k..k + width).unwrap_or_default().iter();
        if let Some(key) = with_key.next() {
            words.push(strip_prefix(key, route.strip));
        }
        words.extend(with_key);
    }
    let merge = match kind {
        Fanout::Mget => Merge::Mget { order },
        Fanout::Mset => Merge::AllOk,
        Fanout::SumIntegers => Merge::Sum,
    };
    let parts = groups
        .into_iter()
        .map(|(slot, route, words)| Part {
            cluster: route.cluster,
            slot,
            read_policy: route.read_policy,
            mirrors: route.mirrors,
            data: codec::command(&words),
        })
        .collect();
    (parts, merge)
}

/// Where a command that is not split goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Single<'a> {
    pub cluster: usize,
    pub slot: u16,
    /// The first key's read policy.
    pub read_policy: ReadPolicy,
    /// Every key's route's mirrors (each policy once): a key whose route
    /// mirrors is mirrored whichever argument it is.
    pub mirrors: Cow<'a, [MirrorPolicy]>,
}

/// Why a command that is not split cannot go to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleError {
    /// Keys in two clusters: the first key's and another key's (indices).
    CrossCluster { first: usize, other: usize },
    /// One cluster, several slots.
    CrossSlot,
}

/// The one node-side target of a command that is not split; `slots` is
/// [`key_slots`].
pub fn single<'a>(routes: &KeyRoutes<'a>, slots: &[u16]) -> Result<Single<'a>, SingleError> {
    let first = *routes.first();
    if let KeyRoutes::PerKey(v) = routes {
        if let Some(other) = v.iter().find(|r| r.cluster != first.cluster) {
            return Err(SingleError::CrossCluster {
                first: first.cluster,
                other: other.cluster,
            });
        }
    }
    if slots.windows(2).any(|w| w[0] != w[1]) {
        return Err(SingleError::CrossSlot);
    }
    let mirrors = match routes {
        KeyRoutes::One(r) => Cow::Borrowed(r.mirrors),
        KeyRoutes::PerKey(v) => {
            let mut all: Vec<MirrorPolicy> = Vec::new();
            for m in v.iter().flat_map(|r| r.mirrors) {
                if !all.contains(m) {
                    all.push(m.clone());
                }
            }
            Cow::Owned(all)
        }
    };
    Ok(Single {
        cluster: first.cluster,
        slot: slots.first().copied().unwrap_or(0),
        read_policy: first.read_policy,
        mirrors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn mirror(cluster: &str) -> Vec<MirrorPolicy> {
        vec![MirrorPolicy {
            cluster: cluster.into(),
            exclude_read_commands: false,
            runtime_fraction: None,
        }]
    }

    /// Routes of the issue: `r:` → cluster 1 stripping its prefix, `b:` →
    /// cluster 1 mirrored to cluster 2, everything else → cluster 0.
    struct Table {
        b_mirrors: Vec<MirrorPolicy>,
    }

    impl Table {
        fn new() -> Table {
            Table {
                b_mirrors: mirror("m"),
            }
        }

        fn lookup(&self, key: &[u8]) -> Option<Route<'_>> {
            let base = Route {
                cluster: 0,
                read_policy: ReadPolicy::Master,
                strip: 0,
                mirrors: &[],
            };
            Some(if key.starts_with(b"r:") {
                Route {
                    cluster: 1,
                    strip: 2,
                    ..base
                }
            } else if key.starts_with(b"b:") {
                Route {
                    cluster: 1,
                    mirrors: &self.b_mirrors,
                    read_policy: ReadPolicy::Replica,
                    ..base
                }
            } else if key.starts_with(b"none:") {
                return None;
            } else {
                base
            })
        }
    }

    fn argv<'x>(args: &[&'x str]) -> Vec<&'x [u8]> {
        args.iter().map(|s| s.as_bytes()).collect()
    }

    #[test]
    fn one_route_when_every_key_agrees() {
        let t = Table::new();
        let args = argv(&["MGET", "a", "b", "c"]);
        let r = key_routes(&args, &[1, 2, 3], |k| t.lookup(k)).unwrap();
        assert!(
            matches!(r, KeyRoutes::One(ref x) if x.cluster == 0),
            "{r:?}"
        );
        // Different prefixes, same behaviour: still one route.
        let args = argv(&["DEL", "r:x", "r:y"]);
        let r = key_routes(&args, &[1, 2], |k| t.lookup(k)).unwrap();
        assert!(matches!(r, KeyRoutes::One(ref x) if x.cluster == 1 && x.strip == 2));
    }

    #[test]
    fn per_key_routes_and_missing_routes() {
        let t = Table::new();
        let args = argv(&["MGET", "a", "r:x", "b:y", "c"]);
        let r = key_routes(&args, &[1, 2, 3, 4], |k| t.lookup(k)).unwrap();
        let KeyRoutes::PerKey(v) = &r else {
            panic!("{r:?}")
        };
        let seen: Vec<(usize, usize)> = v.iter().map(|r| (r.cluster, r.strip)).collect();
        assert_eq!(seen, vec![(0, 0), (1, 2), (1, 0), (0, 0)]);
        assert_eq!(r.get(2).mirrors.len(), 1);
        // Any key without a route fails the whole command, not just the first.
        let args = argv(&["MGET", "a", "none:x"]);
        assert_eq!(key_routes(&args, &[1, 2], |k| t.lookup(k)), None);
        assert_eq!(key_routes(&args, &[], |k| t.lookup(k)), None);
    }

    fn parse(data: &[u8]) -> Vec<String> {
        let mut ranges = Vec::new();
        let done = codec::scan_request(data, &mut ranges);
        assert_eq!(done, Ok(codec::Scan::Complete(data.len())));
        ranges
            .iter()
            .map(|r| String::from_utf8_lossy(&data[r.clone()]).into_owned())
            .collect()
    }

    #[test]
    fn mset_across_three_routes_goes_per_cluster_and_slot_with_prefixes_stripped() {
        let t = Table::new();
        let args = argv(&[
            "MSET", "r:{x}t0", "t0", "b:{x}m0", "m0", "{x}c0", "c0", "r:{x}t1", "t1",
        ]);
        let keys = [1, 3, 5, 7];
        let routes = key_routes(&args, &keys, |k| t.lookup(k)).unwrap();
        let slots = key_slots(&args, &keys, &routes, true);
        // Same hash tag everywhere: one slot, but three different routes.
        assert!(slots.windows(2).all(|w| w[0] == w[1]));
        let (parts, merge) = split(Fanout::Mset, &args, &keys, &routes, &slots);
        assert_eq!(merge, Merge::AllOk);
        let got: Vec<(usize, Vec<String>, usize)> = parts
            .iter()
            .map(|p| (p.cluster, parse(&p.data), p.mirrors.len()))
            .collect();
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![
                (1, words(&["MSET", "{x}t0", "t0", "{x}t1", "t1"]), 0),
                (1, words(&["MSET", "b:{x}m0", "m0"]), 1),
                (0, words(&["MSET", "{x}c0", "c0"]), 0),
            ]
        );
        assert_eq!(parts[1].read_policy, ReadPolicy::Replica);
    }

    #[test]
    fn mget_order_maps_every_key_back_to_its_part() {
        let t = Table::new();
        let args = argv(&["MGET", "a", "r:a", "b:a", "r:zz", "a"]);
        let keys = [1, 2, 3, 4, 5];
        let routes = key_routes(&args, &keys, |k| t.lookup(k)).unwrap();
        let slots = key_slots(&args, &keys, &routes, true);
        // "r:a" stripped is "a": its slot is a's, on another cluster.
        assert_eq!(slots[0], slots[1]);
        let (parts, merge) = split(Fanout::Mget, &args, &keys, &routes, &slots);
        let Merge::Mget { order } = merge else {
            panic!("{merge:?}")
        };
        assert_eq!(order.len(), 5);
        for (n, &(p, i)) in order.iter().enumerate() {
            let words = parse(&parts[p as usize].data);
            let want = String::from_utf8_lossy(strip_prefix(args[keys[n]], routes.get(n).strip));
            assert_eq!(words[1 + i as usize], want, "key {n}");
            assert_eq!(parts[p as usize].cluster, routes.get(n).cluster, "key {n}");
        }
        // Both "a" keys share a part; "r:a" and "a" do not (other cluster).
        assert_eq!(order[0].0, order[4].0);
        assert_ne!(order[0].0, order[1].0);
    }

    #[test]
    fn single_refuses_keys_in_two_clusters_and_strips_each_key() {
        let t = Table::new();
        // RENAME across clusters 1 and 0.
        let args = argv(&["RENAME", "r:{k}a", "{k}b"]);
        let routes = key_routes(&args, &[1, 2], |k| t.lookup(k)).unwrap();
        let slots = key_slots(&args, &[1, 2], &routes, true);
        assert_eq!(
            single(&routes, &slots),
            Err(SingleError::CrossCluster { first: 1, other: 0 })
        );
        // Same cluster, different routes: each key stripped by its own
        // route; mirrors of every key's route.
        let args = argv(&["RENAME", "r:{k}a", "b:{k}b"]);
        let routes = key_routes(&args, &[1, 2], |k| t.lookup(k)).unwrap();
        let slots = key_slots(&args, &[1, 2], &routes, true);
        let s = single(&routes, &slots).unwrap();
        assert_eq!((s.cluster, s.read_policy), (1, ReadPolicy::Master));
        assert_eq!(s.mirrors.len(), 1);
        let data = encode_keyed(b"", &args, &[1, 2], &routes);
        assert_eq!(parse(&data), vec!["RENAME", "{k}a", "b:{k}b"]);
        // Same cluster, different slots once stripped.
        let args = argv(&["RENAME", "r:a", "b:a"]);
        let routes = key_routes(&args, &[1, 2], |k| t.lookup(k)).unwrap();
        let slots = key_slots(&args, &[1, 2], &routes, true);
        assert_eq!(single(&routes, &slots), Err(SingleError::CrossSlot));
    }

    #[test]
    fn one_route_without_strip_sends_the_clients_frame() {
        let t = Table::new();
        let frame = codec::command(&[b"GET", b"a"]);
        let args: Vec<&[u8]> = vec![b"GET", b"a"];
        let routes = key_routes(&args, &[1], |k| t.lookup(k)).unwrap();
        assert_eq!(encode_keyed(&frame, &args, &[1], &routes), frame);
        let s = single(&routes, &[7]).unwrap();
        assert!(matches!(s.mirrors, Cow::Borrowed(m) if m.is_empty()));
        // Inline commands are re-encoded.
        assert_eq!(encode(b"GET a\r\n", &args), frame);
    }
}
