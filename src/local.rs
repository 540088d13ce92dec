//! Commands the proxy answers itself, so a client sees one Redis:
//! connection state (`HELLO`, `CLIENT …`, `SELECT`, `RESET`, `QUIT`) and
//! the cluster view (`CLUSTER …`), which presents the proxy as a one-node
//! cluster owning all 16384 slots. Cluster-aware clients (`redis-cli -c`,
//! redis-py `RedisCluster`) then send everything to the proxy, which does the
//! real routing.

use crate::codec;
use crate::slot;

/// Per-connection protocol state.
#[derive(Debug, Clone, Default)]
pub struct ConnState {
    /// Connection id as CLIENT ID reports it.
    pub id: u64,
    /// RESP3 negotiated with `HELLO 3`.
    pub resp3: bool,
    pub name: Option<Vec<u8>>,
    /// The proxy's own listener address, as the client reached it.
    pub local_addr: Option<(String, u16)>,
    /// Passed `AUTH` (or no downstream auth is configured).
    pub authenticated: bool,
}

/// Downstream authentication (`downstream_auth_username` /
/// `downstream_auth_passwords`), Redis 6 ACL style.
pub struct Auth<'a> {
    pub username: Option<&'a str>,
    pub passwords: &'a [String],
}

impl Auth<'_> {
    pub fn required(&self) -> bool {
        !self.passwords.is_empty()
    }

    /// `AUTH [user] pass`: with a configured username the user must match
    /// (the one-argument form means user `default`, as in Redis).
    pub fn check(&self, user: Option<&[u8]>, pass: &[u8]) -> bool {
        let user_ok = match (self.username, user) {
            (Some(want), Some(got)) => want.as_bytes() == got,
            (Some(_), None) => false,
            (None, Some(got)) => got == b"default",
            (None, None) => true,
        };
        // Compare every password fully so timing says nothing about which
        // one nearly matched.
        let mut pass_ok = false;
        for p in self.passwords {
            pass_ok |= constant_time_eq(p.as_bytes(), pass);
        }
        user_ok && pass_ok
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// `AUTH [user] pass`.
pub fn auth(st: &mut ConnState, a: &Auth<'_>, args: &[&[u8]]) -> Vec<u8> {
    if !a.required() {
        return codec::error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        );
    }
    let (user, pass) = match args {
        [_, pass] => (None, *pass),
        [_, user, pass] => (Some(*user), *pass),
        _ => return codec::error("ERR syntax error"),
    };
    if a.check(user, pass) {
        st.authenticated = true;
        codec::simple("OK")
    } else {
        codec::error(WRONGPASS)
    }
}

/// Redis version the proxy reports (the command set it implements).
pub const REDIS_VERSION: &str = "7.0.15";
/// A stable 40-character node id for the proxy in CLUSTER replies.
const PROXY_NODE_ID: &str = "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0";

fn null(st: &ConnState) -> Vec<u8> {
    if st.resp3 {
        b"_\r\n".to_vec()
    } else {
        b"$-1\r\n".to_vec()
    }
}

fn upper(a: &[u8]) -> String {
    String::from_utf8_lossy(a).to_ascii_uppercase()
}

fn array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        out.extend_from_slice(i);
    }
    out
}

/// A map in RESP3, a flat key/value array in RESP2 (as Redis does).
fn map(st: &ConnState, pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = if st.resp3 {
        format!("%{}\r\n", pairs.len()).into_bytes()
    } else {
        format!("*{}\r\n", pairs.len() * 2).into_bytes()
    };
    for (k, v) in pairs {
        out.extend(codec::bulk(k.as_bytes()));
        out.extend_from_slice(v);
    }
    out
}

fn addr(st: &ConnState) -> (String, u16) {
    st.local_addr
        .clone()
        .unwrap_or_else(|| ("127.0.0.1".to_string(), 0))
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
pub fn hello(st: &mut ConnState, a: &Auth<'_>, args: &[&[u8]]) -> Vec<u8> {
    let mut resp3 = st.resp3;
    if let Some(v) = args.get(1) {
        match *v {
            b"2" => resp3 = false,
            b"3" => resp3 = true,
            _ => return codec::error("NOPROTO unsupported protocol version"),
        }
    }
    let mut i = 2;
    let mut name = None;
    let mut authed = st.authenticated || !a.required();
    while i < args.len() {
        match upper(args[i]).as_str() {
            // Without downstream auth configured, like a Redis whose default
            // user has no password, any credentials are accepted.
            "AUTH" if i + 2 < args.len() => {
                if a.required() {
                    if !a.check(Some(args[i + 1]), args[i + 2]) {
                        return codec::error(WRONGPASS);
                    }
                    authed = true;
                }
                i += 3;
            }
            "SETNAME" if i + 1 < args.len() => {
                name = Some(args[i + 1].to_vec());
                i += 2;
            }
            _ => {
                return codec::error(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(args[i])
                ))
            }
        }
    }
    if !authed {
        return codec::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    st.authenticated = true;
    st.resp3 = resp3;
    if name.is_some() {
        st.name = name;
    }
    map(
        st,
        &[
            ("server", codec::bulk(b"redis")),
            ("version", codec::bulk(REDIS_VERSION.as_bytes())),
            ("proto", codec::integer(if resp3 { 3 } else { 2 })),
            ("id", codec::integer(st.id as i64)),
            ("mode", codec::bulk(b"standalone")),
            ("role", codec::bulk(b"master")),
            ("modules", b"*0\r\n".to_vec()),
        ],
    )
}

/// `CLIENT <subcommand>`: what makes sense for a proxied connection
/// (`LIST`, `INFO`, `KILL`, `PAUSE`, `UNPAUSE` and `REPLY` need the
/// session or the proxy's registry: see `session/clients.rs`).
pub fn client(st: &mut ConnState, args: &[&[u8]]) -> Vec<u8> {
    let sub = args.get(1).map(|a| upper(a)).unwrap_or_default();
    match (sub.as_str(), args.len()) {
        ("SETNAME", 3) => {
            if args[2].iter().any(|&b| b <= b' ' || b > b'~') {
                return codec::error("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            st.name = (!args[2].is_empty()).then(|| args[2].to_vec());
            codec::simple("OK")
        }
        ("GETNAME", 2) => match &st.name {
            Some(n) => codec::bulk(n),
            None => null(st),
        },
        ("ID", 2) => codec::integer(st.id as i64),
        ("SETINFO", 4) | ("NO-EVICT", 3) | ("NO-TOUCH", 3) => codec::simple("OK"),
        ("HELP", 2) => array(&[codec::bulk(b"CLIENT SETNAME|GETNAME|ID|INFO|LIST|KILL|PAUSE|UNPAUSE|REPLY|SETINFO|NO-EVICT|NO-TOUCH are answered by the proxy, about its own clients")]),
        _ => codec::error(&format!(
            "ERR CLIENT {sub} is not supported through the proxy (connections to the nodes are shared)"
        )),
    }
}

/// `CLUSTER <subcommand>`: the proxy as a one-node cluster.
pub fn cluster(st: &ConnState, args: &[&[u8]], hashtags: bool) -> Vec<u8> {
    let sub = args.get(1).map(|a| upper(a)).unwrap_or_default();
    let (ip, port) = addr(st);
    match (sub.as_str(), args.len()) {
        ("KEYSLOT", 3) => codec::integer(i64::from(slot::key_slot(args[2], hashtags))),
        ("INFO", 2) => {
            let text = "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n\
                cluster_slots_ok:16384\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\n\
                cluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\n\
                cluster_my_epoch:1\r\n";
            codec::bulk(text.as_bytes())
        }
        ("MYID", 2) => codec::bulk(PROXY_NODE_ID.as_bytes()),
        ("SLOTS", 2) => {
            let node = array(&[
                codec::bulk(ip.as_bytes()),
                codec::integer(i64::from(port)),
                codec::bulk(PROXY_NODE_ID.as_bytes()),
            ]);
            array(&[array(&[codec::integer(0), codec::integer(16383), node])])
        }
        ("SHARDS", 2) => {
            let slots = array(&[codec::integer(0), codec::integer(16383)]);
            let node = map(
                st,
                &[
                    ("id", codec::bulk(PROXY_NODE_ID.as_bytes())),
                    ("port", codec::integer(i64::from(port))),
                    ("ip", codec::bulk(ip.as_bytes())),
                    ("endpoint", codec::bulk(ip.as_bytes())),
                    ("role", codec::bulk(b"master")),
                    ("replication-offset", codec::integer(0)),
                    ("health", codec::bulk(b"online")),
                ],
            );
            let shard = map(st, &[("slots", slots), ("nodes", array(&[node]))]);
            array(&[shard])
        }
        ("NODES", 2) => {
            let line =
                format!("{PROXY_NODE_ID} {ip}:{port}@0 myself,master - 0 0 1 connected 0-16383\n");
            codec::bulk(line.as_bytes())
        }
        ("COUNTKEYSINSLOT", _) | ("GETKEYSINSLOT", _) => codec::error(&format!(
            "ERR CLUSTER {sub} is not supported through the proxy yet"
        )),
        _ => codec::error(&format!(
            "ERR CLUSTER {sub} is not supported through the proxy"
        )),
    }
}

/// The proxy's own INFO section, placed before the nodes' sections.
pub fn info_header(masters: usize) -> String {
    format!(
        "# Proxy\r\nproxy:envoy-redis-cluster\r\nproxy_version:{}\r\nredis_version:{REDIS_VERSION}\r\ncluster_masters:{masters}\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st() -> ConnState {
        ConnState {
            id: 7,
            local_addr: Some(("127.0.0.1".into(), 7000)),
            ..Default::default()
        }
    }

    const OPEN: Auth<'static> = Auth {
        username: None,
        passwords: &[],
    };

    #[test]
    fn auth_checks_user_and_password() {
        let pw = vec!["s3cret".to_string(), "other".to_string()];
        let a = Auth {
            username: None,
            passwords: &pw,
        };
        let mut s = st();
        assert!(auth(&mut s, &a, &[b"AUTH", b"nope"]).starts_with(b"-WRONGPASS"));
        assert!(!s.authenticated);
        assert_eq!(auth(&mut s, &a, &[b"AUTH", b"other"]), b"+OK\r\n".to_vec());
        assert!(s.authenticated);
        assert!(a.check(Some(b"default"), b"s3cret"));
        let named = Auth {
            username: Some("app"),
            passwords: &pw,
        };
        assert!(named.check(Some(b"app"), b"s3cret"));
        assert!(!named.check(None, b"s3cret"));
        assert!(!named.check(Some(b"bob"), b"s3cret"));
        assert!(auth(&mut st(), &OPEN, &[b"AUTH", b"x"]).starts_with(b"-ERR AUTH"));
        let mut s = st();
        assert!(hello(&mut s, &a, &[b"HELLO", b"3"]).starts_with(b"-NOAUTH"));
        let bad: &[&[u8]] = &[b"HELLO", b"3", b"AUTH", b"default", b"x"];
        assert!(hello(&mut s, &a, bad).starts_with(b"-WRONGPASS"));
        let good: &[&[u8]] = &[b"HELLO", b"3", b"AUTH", b"default", b"s3cret"];
        assert!(hello(&mut s, &a, good).starts_with(b"%"));
        assert!(s.authenticated && s.resp3);
    }

    #[test]
    fn hello_switches_protocol_and_sets_name() {
        // (see auth_checks_user_and_password for HELLO ... AUTH)
        let mut s = st();
        let r = hello(
            &mut s,
            &OPEN,
            &[b"HELLO", b"3", b"AUTH", b"u", b"p", b"SETNAME", b"app"],
        );
        assert!(s.resp3);
        assert_eq!(s.name.as_deref(), Some(&b"app"[..]));
        assert!(r.starts_with(b"%7\r\n"), "{}", String::from_utf8_lossy(&r));
        let r = hello(&mut s, &OPEN, &[b"HELLO", b"2"]);
        assert!(!s.resp3 && r.starts_with(b"*14\r\n"));
        assert!(hello(&mut s, &OPEN, &[b"HELLO", b"4"]).starts_with(b"-NOPROTO"));
    }

    #[test]
    fn client_name_roundtrip_and_unsupported() {
        let mut s = st();
        assert_eq!(
            client(&mut s, &[b"CLIENT", b"GETNAME"]),
            b"$-1\r\n".to_vec()
        );
        assert_eq!(
            client(&mut s, &[b"client", b"setname", b"x"]),
            b"+OK\r\n".to_vec()
        );
        assert_eq!(
            client(&mut s, &[b"CLIENT", b"GETNAME"]),
            b"$1\r\nx\r\n".to_vec()
        );
        assert_eq!(client(&mut s, &[b"CLIENT", b"ID"]), b":7\r\n".to_vec());
        assert!(client(&mut s, &[b"CLIENT", b"SETNAME", b"a b"]).starts_with(b"-ERR"));
        assert!(client(&mut s, &[b"CLIENT", b"KILL", b"x"]).starts_with(b"-ERR"));
    }

    #[test]
    fn cluster_presents_one_node_owning_all_slots() {
        let s = st();
        assert_eq!(
            cluster(&s, &[b"CLUSTER", b"KEYSLOT", b"foo"], true),
            b":12182\r\n".to_vec()
        );
        let slots = cluster(&s, &[b"CLUSTER", b"SLOTS"], true);
        let m = crate::topology::parse_cluster_slots(&slots, "127.0.0.1:7000").unwrap();
        assert_eq!(m.covered_slots(), 16384);
        assert_eq!(m.shards[0].master, "127.0.0.1:7000");
        let nodes = cluster(&s, &[b"CLUSTER", b"NODES"], true);
        assert!(String::from_utf8_lossy(&nodes).contains("127.0.0.1:7000@0 myself,master"));
    }
}
