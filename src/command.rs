//! The Redis 7.0 command table: arity, flags and where each command's keys are.
//!
//! A cluster proxy must know, for every command, which arguments are keys
//! (to pick the slot and so the node), whether it reads or writes (reads may go
//! to replicas), and whether it has no key at all (the proxy answers it or
//! picks a node itself). Redis publishes this through `COMMAND INFO`; this
//! table mirrors Redis 7.0's answers.
//!
//! Arguments are counted the Redis way: the command name is argument 0. The
//! *arity* is the exact argument count when positive, and the minimum when
//! negative (`GET key` has arity 2, `MGET key [key ...]` has arity -2).
//!
//! Most commands declare their keys with the legacy `(first, last, step)`
//! triple (`MSET k v k v` is `(1, -1, 2)`: a negative last counts from the
//! end). Commands whose key positions depend on other arguments (`EVAL`'s
//! `numkeys`, `XREAD ... STREAMS`, `SORT ... STORE`) are described by the
//! other [`KeySpec`] variants and resolved by [`key_indices`].

/// The command may modify the keyspace (COMMAND INFO `write`).
pub const WRITE: u32 = 1 << 0;
/// The command only reads data; it may be served by a replica after
/// `READONLY` (COMMAND INFO `readonly`).
pub const READONLY: u32 = 1 << 1;
/// The command may grow memory use and is refused under OOM (`denyoom`).
pub const DENYOOM: u32 = 1 << 2;
/// Administrative command (`admin`): not something to forward blindly.
pub const ADMIN: u32 = 1 << 3;
/// Publish/subscribe command (`pubsub`).
pub const PUBSUB: u32 = 1 << 4;
/// Not allowed inside scripts (`noscript`).
pub const NOSCRIPT: u32 = 1 << 5;
/// May block the client until data arrives or a timeout (`blocking`).
pub const BLOCKING: u32 = 1 << 6;
/// Allowed while the server is loading its dataset (`loading`).
pub const LOADING: u32 = 1 << 7;
/// Allowed on a replica with stale data (`stale`).
pub const STALE: u32 = 1 << 8;
/// O(1) or O(log N) command (`fast`).
pub const FAST: u32 = 1 << 9;
/// Redis reports `movablekeys`: the keys are found by parsing the arguments,
/// not only by `(first, last, step)`. As in Redis 7.0 this includes SET,
/// BITFIELD and SORT_RO, whose key is nonetheless always at 1.
pub const MOVABLEKEYS: u32 = 1 << 10;
/// May propagate writes even without the `write` flag (`may_replicate`).
pub const MAY_REPLICATE: u32 = 1 << 11;
/// Allowed before authentication (`no_auth`).
pub const NO_AUTH: u32 = 1 << 12;
/// Not allowed inside MULTI (`no_multi`).
pub const NO_MULTI: u32 = 1 << 13;
/// Transaction control: MULTI, EXEC, DISCARD, WATCH, UNWATCH. Not a Redis flag;
/// the proxy must pin a transaction to one node.
pub const TRANSACTION: u32 = 1 << 14;
/// Changes connection state (AUTH, HELLO, SELECT, CLIENT, RESET, QUIT,
/// READONLY, READWRITE, ASKING). Not a Redis flag; the proxy's client
/// connection is not the upstream connection, so the session handles these.
pub const CONNECTION: u32 = 1 << 15;

/// How a multi-key command is split per slot and its replies merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    /// `MGET k1 k2 ...`: one `MGET` per slot; the replies are put back in the
    /// client's key order.
    Mget,
    /// `MSET k1 v1 k2 v2 ...`: one `MSET` per slot; the reply is `+OK` if all
    /// parts succeed (not atomic across slots).
    Mset,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`: one command per slot; the integer
    /// replies are added up.
    SumIntegers,
}

/// How the proxy must treat a command (derived from the table, not from the
/// session's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// All keys must hash to one slot; forward intact to the node owning it.
    /// When [`key_indices`] finds no key (`EVAL s 0`, `OBJECT HELP`), any
    /// node can serve it, as a Redis Cluster node would.
    SingleSlot,
    /// Multi-key command the proxy may split per slot and merge.
    Fanout(Fanout),
    /// No key: the session answers or routes it itself (PING, ECHO, INFO,
    /// SCAN, DBSIZE, CLUSTER ...).
    Keyless,
}

/// How `numkeys` errors are worded: each Redis command family says it
/// differently, and the proxy replies with Redis's own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumKeysRule {
    /// EVAL, EVALSHA, EVAL_RO, EVALSHA_RO: `numkeys >= 0`.
    Script,
    /// FCALL, FCALL_RO: like scripts, but a non-number is "Bad number of keys
    /// provided".
    Function,
    /// ZUNION, ZINTER, ZDIFF, ZINTERCARD and the *STORE forms: at least one
    /// key; too many is a syntax error.
    ZSetOp,
    /// SINTERCARD: "numkeys should be greater than 0".
    SetCard,
    /// LMPOP, BLMPOP, ZMPOP, BZMPOP: at least one key, and a LEFT/RIGHT or
    /// MIN/MAX argument must follow the keys.
    MultiPop,
}

/// A subcommand of a container command (`OBJECT ENCODING key`) that names a
/// key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subcommand {
    /// Lowercase subcommand name.
    pub name: &'static str,
    /// Arity of the full command line (`OBJECT ENCODING key` is 3).
    pub arity: i32,
    /// The subcommand's own flags (the container has none in Redis 7.0).
    pub flags: u32,
    /// Position of the key (always 2 in Redis 7.0: container, subcommand, key).
    pub key_at: usize,
}

/// Where a command's keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// No keys.
    None,
    /// `first_key`/`last_key`/`step` as in COMMAND INFO (positions count the
    /// command name as 0; a negative last counts back from the end).
    Range,
    /// A count argument says how many keys follow it: EVAL/EVALSHA/EVAL_RO/
    /// EVALSHA_RO/FCALL/FCALL_RO (numkeys at 2, keys from 3),
    /// ZUNIONSTORE/ZINTERSTORE/ZDIFFSTORE (destination at 1, numkeys at 2),
    /// ZUNION/ZINTER/ZDIFF/ZINTERCARD/SINTERCARD/LMPOP/ZMPOP (numkeys at 1),
    /// BLMPOP/BZMPOP (timeout at 1, numkeys at 2).
    NumKeys {
        /// Position of the count.
        numkeys_at: usize,
        /// Position of the first counted key.
        first_at: usize,
        /// Keys at fixed positions before the counted ones (the destination).
        fixed_before: &'static [usize],
        /// Which Redis error wording applies.
        rule: NumKeysRule,
    },
    /// XREAD / XREADGROUP: after the options, `STREAMS k1 k2 ... id1 id2 ...`;
    /// the keys are the first half of what follows `STREAMS`.
    Streams,
    /// SORT: key at 1 plus the `STORE` destination if present.
    Sort,
    /// GEORADIUS / GEORADIUSBYMEMBER: key at 1 plus the `STORE`/`STOREDIST`
    /// destination if present; options start at `options_at`.
    GeoStore {
        /// Position of the first optional argument.
        options_at: usize,
    },
    /// MIGRATE: key at 3, or the keys after `KEYS` when argument 3 is "".
    Migrate,
    /// Container command whose listed subcommands take a key (OBJECT, MEMORY,
    /// XINFO, XGROUP). Other subcommands (`HELP`) have none.
    Subcommands(&'static [Subcommand]),
}

/// One command of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Lowercase name.
    pub name: &'static str,
    /// Redis arity: exact argument count (name included) when positive, the
    /// minimum when negative.
    pub arity: i32,
    /// Bit set of the flag constants of this module.
    pub flags: u32,
    /// COMMAND INFO first key position (0 when none or movable).
    pub first_key: i32,
    /// COMMAND INFO last key position: -1 = last argument, -2 = second to last.
    pub last_key: i32,
    /// COMMAND INFO step between keys.
    pub step: i32,
    /// How [`key_indices`] finds the keys.
    pub keys: KeySpec,
    /// How the proxy treats the command.
    pub dispatch: Dispatch,
}

impl Command {
    /// True when every flag bit of `flag` is set.
    #[inline]
    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag == flag
    }

    /// A plain command: keys by `(first, last, step)` when `first > 0`.
    const fn new(
        name: &'static str,
        arity: i32,
        flags: u32,
        first: i32,
        last: i32,
        step: i32,
    ) -> Self {
        let keyed = first > 0;
        Command {
            name,
            arity,
            flags,
            first_key: first,
            last_key: last,
            step,
            keys: if keyed { KeySpec::Range } else { KeySpec::None },
            dispatch: if keyed {
                Dispatch::SingleSlot
            } else {
                Dispatch::Keyless
            },
        }
    }

    const fn with_keys(mut self, keys: KeySpec) -> Self {
        self.keys = keys;
        self.dispatch = Dispatch::SingleSlot;
        self
    }

    const fn fanout(mut self, fanout: Fanout) -> Self {
        self.dispatch = Dispatch::Fanout(fanout);
        self
    }
}

// Short names for the table below.
const W: u32 = WRITE;
const R: u32 = READONLY;
const OOM: u32 = DENYOOM;
const ADM: u32 = ADMIN;
const PS: u32 = PUBSUB;
const NS: u32 = NOSCRIPT;
const BLK: u32 = BLOCKING;
const LD: u32 = LOADING;
const ST: u32 = STALE;
const F: u32 = FAST;
const MK: u32 = MOVABLEKEYS;
const MR: u32 = MAY_REPLICATE;
const NA: u32 = NO_AUTH;
const NM: u32 = NO_MULTI;
const TX: u32 = TRANSACTION;
const CONN: u32 = CONNECTION;

const fn c(
    name: &'static str,
    arity: i32,
    flags: u32,
    first: i32,
    last: i32,
    step: i32,
) -> Command {
    Command::new(name, arity, flags, first, last, step)
}

/// A command with no key.
const fn k0(name: &'static str, arity: i32, flags: u32) -> Command {
    Command::new(name, arity, flags, 0, 0, 0)
}

/// A command whose only key is at 1.
const fn k1(name: &'static str, arity: i32, flags: u32) -> Command {
    Command::new(name, arity, flags, 1, 1, 1)
}

const fn numkeys(numkeys_at: usize, fixed_before: &'static [usize], rule: NumKeysRule) -> KeySpec {
    KeySpec::NumKeys {
        numkeys_at,
        first_at: numkeys_at + 1,
        fixed_before,
        rule,
    }
}

/// A keyed subcommand; in Redis 7.0 the key always follows the subcommand.
const fn sub(name: &'static str, arity: i32, flags: u32) -> Subcommand {
    Subcommand {
        name,
        arity,
        flags,
        key_at: 2,
    }
}

const OBJECT_SUBS: &[Subcommand] = &[
    sub("encoding", 3, R),
    sub("freq", 3, R),
    sub("idletime", 3, R),
    sub("refcount", 3, R),
];

const MEMORY_SUBS: &[Subcommand] = &[sub("usage", -3, R)];

const XINFO_SUBS: &[Subcommand] = &[
    sub("consumers", 4, R),
    sub("groups", 3, R),
    sub("stream", -3, R),
];

const XGROUP_SUBS: &[Subcommand] = &[
    sub("create", -5, W | OOM),
    sub("createconsumer", 5, W | OOM),
    sub("delconsumer", 5, W),
    sub("destroy", 4, W),
    sub("setid", -5, W),
];

use NumKeysRule::{Function, MultiPop, Script, SetCard, ZSetOp};

/// Every Redis 7.0 command, sorted by name (bytewise) so [`lookup`] can
/// binary-search it.
#[rustfmt::skip]
static COMMANDS: &[Command] = &[
    k0("acl", -2, 0),
    k1("append", 3, W | OOM | F),
    k0("asking", 1, F | CONN),
    k0("auth", -2, NS | LD | ST | F | NA | CONN),
    k0("bgrewriteaof", 1, ADM | NS),
    k0("bgsave", -1, ADM | NS),
    k1("bitcount", -2, R),
    k1("bitfield", -2, W | OOM | MK),
    k1("bitfield_ro", -2, R | F),
    c("bitop", -4, W | OOM, 2, -1, 1),
    k1("bitpos", -3, R),
    c("blmove", 6, W | OOM | NS | BLK, 1, 2, 1),
    k0("blmpop", -5, W | BLK | MK).with_keys(numkeys(2, &[], MultiPop)),
    c("blpop", -3, W | NS | BLK, 1, -2, 1),
    c("brpop", -3, W | NS | BLK, 1, -2, 1),
    c("brpoplpush", 4, W | OOM | NS | BLK, 1, 2, 1),
    k0("bzmpop", -5, W | BLK | MK).with_keys(numkeys(2, &[], MultiPop)),
    c("bzpopmax", -3, W | NS | BLK | F, 1, -2, 1),
    c("bzpopmin", -3, W | NS | BLK | F, 1, -2, 1),
    k0("client", -2, CONN),
    k0("cluster", -2, 0),
    k0("command", -1, LD | ST),
    k0("config", -2, 0),
    c("copy", -3, W | OOM, 1, 2, 1),
    k0("dbsize", 1, R | F),
    k0("debug", -2, ADM | NS | LD | ST),
    k1("decr", 2, W | OOM | F),
    k1("decrby", 3, W | OOM | F),
    c("del", -2, W, 1, -1, 1).fanout(Fanout::SumIntegers),
    k0("discard", 1, NS | LD | ST | F | TX),
    k1("dump", 2, R),
    k0("echo", 2, F),
    k0("eval", -3, NS | ST | MR | MK).with_keys(numkeys(2, &[], Script)),
    k0("eval_ro", -3, NS | ST | MK).with_keys(numkeys(2, &[], Script)),
    k0("evalsha", -3, NS | ST | MR | MK).with_keys(numkeys(2, &[], Script)),
    k0("evalsha_ro", -3, NS | ST | MK).with_keys(numkeys(2, &[], Script)),
    k0("exec", 1, NS | LD | ST | TX),
    c("exists", -2, R | F, 1, -1, 1).fanout(Fanout::SumIntegers),
    k1("expire", -3, W | F),
    k1("expireat", -3, W | F),
    k1("expiretime", 2, R | F),
    k0("failover", -1, ADM | NS | ST),
    k0("fcall", -3, NS | ST | MR | MK).with_keys(numkeys(2, &[], Function)),
    k0("fcall_ro", -3, NS | ST | MK).with_keys(numkeys(2, &[], Function)),
    k0("flushall", -1, W),
    k0("flushdb", -1, W),
    k0("function", -2, 0),
    k1("geoadd", -5, W | OOM),
    k1("geodist", -4, R),
    k1("geohash", -2, R),
    k1("geopos", -2, R),
    k1("georadius", -6, W | OOM | MK).with_keys(KeySpec::GeoStore { options_at: 6 }),
    k1("georadius_ro", -6, R),
    k1("georadiusbymember", -5, W | OOM | MK).with_keys(KeySpec::GeoStore { options_at: 5 }),
    k1("georadiusbymember_ro", -5, R),
    k1("geosearch", -7, R),
    c("geosearchstore", -8, W | OOM, 1, 2, 1),
    k1("get", 2, R | F),
    k1("getbit", 3, R | F),
    k1("getdel", 2, W | F),
    k1("getex", -2, W | F),
    k1("getrange", 4, R),
    k1("getset", 3, W | OOM | F),
    k1("hdel", -3, W | F),
    k0("hello", -1, NS | LD | ST | F | NA | CONN),
    k1("hexists", 3, R | F),
    k1("hget", 3, R | F),
    k1("hgetall", 2, R),
    k1("hincrby", 4, W | OOM | F),
    k1("hincrbyfloat", 4, W | OOM | F),
    k1("hkeys", 2, R),
    k1("hlen", 2, R | F),
    k1("hmget", -3, R | F),
    k1("hmset", -4, W | OOM | F),
    k1("hrandfield", -2, R),
    k1("hscan", -3, R),
    k1("hset", -4, W | OOM | F),
    k1("hsetnx", 4, W | OOM | F),
    k1("hstrlen", 3, R | F),
    k1("hvals", 2, R),
    k1("incr", 2, W | OOM | F),
    k1("incrby", 3, W | OOM | F),
    k1("incrbyfloat", 3, W | OOM | F),
    k0("info", -1, LD | ST),
    k0("keys", 2, R),
    k0("lastsave", 1, LD | ST | F),
    k0("latency", -2, 0),
    c("lcs", -3, R, 1, 2, 1),
    k1("lindex", 3, R),
    k1("linsert", 5, W | OOM),
    k1("llen", 2, R | F),
    c("lmove", 5, W | OOM, 1, 2, 1),
    k0("lmpop", -4, W | MK).with_keys(numkeys(1, &[], MultiPop)),
    k0("lolwut", -1, R | F),
    k1("lpop", -2, W | F),
    k1("lpos", -3, R),
    k1("lpush", -3, W | OOM | F),
    k1("lpushx", -3, W | OOM | F),
    k1("lrange", 4, R),
    k1("lrem", 4, W),
    k1("lset", 4, W | OOM),
    k1("ltrim", 4, W),
    k0("memory", -2, 0).with_keys(KeySpec::Subcommands(MEMORY_SUBS)),
    c("mget", -2, R | F, 1, -1, 1).fanout(Fanout::Mget),
    c("migrate", -6, W | MK, 3, 3, 1).with_keys(KeySpec::Migrate),
    k0("module", -2, 0),
    k0("monitor", 1, ADM | NS | LD | ST),
    k1("move", 3, W | F),
    c("mset", -3, W | OOM, 1, -1, 2).fanout(Fanout::Mset),
    c("msetnx", -3, W | OOM, 1, -1, 2),
    k0("multi", 1, NS | LD | ST | F | TX),
    k0("object", -2, 0).with_keys(KeySpec::Subcommands(OBJECT_SUBS)),
    k1("persist", 2, W | F),
    k1("pexpire", -3, W | F),
    k1("pexpireat", -3, W | F),
    k1("pexpiretime", 2, R | F),
    k1("pfadd", -2, W | OOM | F),
    c("pfcount", -2, R | MR, 1, -1, 1),
    c("pfdebug", -3, W | OOM | ADM, 2, 2, 1),
    c("pfmerge", -2, W | OOM, 1, -1, 1),
    k0("pfselftest", 1, ADM),
    k0("ping", -1, F),
    k1("psetex", 4, W | OOM),
    k0("psubscribe", -2, PS | NS | LD | ST),
    k0("psync", -3, ADM | NS | NM),
    k1("pttl", 2, R | F),
    k0("publish", 3, PS | LD | ST | F | MR),
    k0("pubsub", -2, 0),
    k0("punsubscribe", -1, PS | NS | LD | ST),
    k0("quit", -1, NS | LD | ST | F | NA | CONN),
    k0("randomkey", 1, R),
    k0("readonly", 1, LD | ST | F | CONN),
    k0("readwrite", 1, LD | ST | F | CONN),
    c("rename", 3, W, 1, 2, 1),
    c("renamenx", 3, W | F, 1, 2, 1),
    k0("replconf", -1, ADM | NS | LD | ST),
    k0("replicaof", 3, ADM | NS | ST),
    k0("reset", 1, NS | LD | ST | F | NA | CONN),
    k1("restore", -4, W | OOM),
    k1("restore-asking", -4, W | OOM),
    k0("role", 1, NS | LD | ST | F),
    k1("rpop", -2, W | F),
    c("rpoplpush", 3, W | OOM, 1, 2, 1),
    k1("rpush", -3, W | OOM | F),
    k1("rpushx", -3, W | OOM | F),
    k1("sadd", -3, W | OOM | F),
    k0("save", 1, ADM | NS | NM),
    k0("scan", -2, R),
    k1("scard", 2, R | F),
    k0("script", -2, 0),
    c("sdiff", -2, R, 1, -1, 1),
    c("sdiffstore", -3, W | OOM, 1, -1, 1),
    k0("select", 2, LD | ST | F | CONN),
    k1("set", -3, W | OOM | MK),
    k1("setbit", 4, W | OOM),
    k1("setex", 4, W | OOM),
    k1("setnx", 3, W | OOM | F),
    k1("setrange", 4, W | OOM),
    k0("shutdown", -1, ADM | NS | LD | ST | NM),
    c("sinter", -2, R, 1, -1, 1),
    k0("sintercard", -3, R | MK).with_keys(numkeys(1, &[], SetCard)),
    c("sinterstore", -3, W | OOM, 1, -1, 1),
    k1("sismember", 3, R | F),
    k0("slaveof", 3, ADM | NS | ST),
    k0("slowlog", -2, 0),
    k1("smembers", 2, R),
    k1("smismember", -3, R | F),
    c("smove", 4, W | F, 1, 2, 1),
    k1("sort", -2, W | OOM | MK).with_keys(KeySpec::Sort),
    k1("sort_ro", -2, R | MK),
    k1("spop", -2, W | F),
    k1("spublish", 3, PS | LD | ST | F | MR),
    k1("srandmember", -2, R),
    k1("srem", -3, W | F),
    k1("sscan", -3, R),
    c("ssubscribe", -2, PS | NS | LD | ST, 1, -1, 1),
    k1("strlen", 2, R | F),
    k0("subscribe", -2, PS | NS | LD | ST),
    k1("substr", 4, R),
    c("sunion", -2, R, 1, -1, 1),
    c("sunionstore", -3, W | OOM, 1, -1, 1),
    c("sunsubscribe", -1, PS | NS | LD | ST, 1, -1, 1),
    k0("swapdb", 3, W | F),
    k0("sync", 1, ADM | NS | NM),
    k0("time", 1, LD | ST | F),
    c("touch", -2, R | F, 1, -1, 1).fanout(Fanout::SumIntegers),
    k1("ttl", 2, R | F),
    k1("type", 2, R | F),
    c("unlink", -2, W | F, 1, -1, 1).fanout(Fanout::SumIntegers),
    k0("unsubscribe", -1, PS | NS | LD | ST),
    k0("unwatch", 1, NS | LD | ST | F | TX),
    k0("wait", 3, NS),
    c("watch", -2, NS | LD | ST | F | TX, 1, -1, 1),
    k1("xack", -4, W | F),
    k1("xadd", -5, W | OOM | F),
    k1("xautoclaim", -6, W | F),
    k1("xclaim", -6, W | F),
    k1("xdel", -3, W | F),
    k0("xgroup", -2, 0).with_keys(KeySpec::Subcommands(XGROUP_SUBS)),
    k0("xinfo", -2, 0).with_keys(KeySpec::Subcommands(XINFO_SUBS)),
    k1("xlen", 2, R | F),
    k1("xpending", -3, R),
    k1("xrange", -4, R),
    k0("xread", -4, R | BLK | MK).with_keys(KeySpec::Streams),
    k0("xreadgroup", -7, W | BLK | MK).with_keys(KeySpec::Streams),
    k1("xrevrange", -4, R),
    k1("xsetid", -3, W | OOM | F),
    k1("xtrim", -4, W),
    k1("zadd", -4, W | OOM | F),
    k1("zcard", 2, R | F),
    k1("zcount", 4, R | F),
    k0("zdiff", -3, R | MK).with_keys(numkeys(1, &[], ZSetOp)),
    k1("zdiffstore", -4, W | OOM | MK).with_keys(numkeys(2, &[1], ZSetOp)),
    k1("zincrby", 4, W | OOM | F),
    k0("zinter", -3, R | MK).with_keys(numkeys(1, &[], ZSetOp)),
    k0("zintercard", -3, R | MK).with_keys(numkeys(1, &[], ZSetOp)),
    k1("zinterstore", -4, W | OOM | MK).with_keys(numkeys(2, &[1], ZSetOp)),
    k1("zlexcount", 4, R | F),
    k0("zmpop", -4, W | MK).with_keys(numkeys(1, &[], MultiPop)),
    k1("zmscore", -3, R | F),
    k1("zpopmax", -2, W | F),
    k1("zpopmin", -2, W | F),
    k1("zrandmember", -2, R),
    k1("zrange", -4, R),
    k1("zrangebylex", -4, R),
    k1("zrangebyscore", -4, R),
    c("zrangestore", -5, W | OOM, 1, 2, 1),
    k1("zrank", 3, R | F),
    k1("zrem", -3, W | F),
    k1("zremrangebylex", 4, W),
    k1("zremrangebyrank", 4, W),
    k1("zremrangebyscore", 4, W),
    k1("zrevrange", -4, R),
    k1("zrevrangebylex", -4, R),
    k1("zrevrangebyscore", -4, R),
    k1("zrevrank", 3, R | F),
    k1("zscan", -3, R),
    k1("zscore", 3, R | F),
    k0("zunion", -3, R | MK).with_keys(numkeys(1, &[], ZSetOp)),
    k1("zunionstore", -4, W | OOM | MK).with_keys(numkeys(2, &[1], ZSetOp)),
];

/// Every command of the table, sorted by name.
pub fn all() -> &'static [Command] {
    COMMANDS
}

/// Position of a command in [`all`] (for per-command statistics).
pub fn index_of(cmd: &Command) -> usize {
    COMMANDS
        .binary_search_by(|c| c.name.cmp(cmd.name))
        .unwrap_or(0)
}

/// Longest name we look up; longer names are unknown (the longest real one,
/// `georadiusbymember_ro`, has 20 bytes).
const MAX_NAME: usize = 32;

/// Case-insensitive lookup of a command name, without allocating: the name is
/// lowercased into a stack buffer and binary-searched in the sorted table.
pub fn lookup(name: &[u8]) -> Option<&'static Command> {
    lookup_indexed(name).map(|(_, cmd)| cmd)
}

/// [`lookup`], with the command's table index ([`index_of`]) from the same
/// search (a session needs both for every command).
pub fn lookup_indexed(name: &[u8]) -> Option<(usize, &'static Command)> {
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let mut buf = [0u8; MAX_NAME];
    let lower = buf.get_mut(..name.len())?;
    for (dst, src) in lower.iter_mut().zip(name) {
        *dst = src.to_ascii_lowercase();
    }
    let lower: &[u8] = lower;
    let i = COMMANDS
        .binary_search_by(|cmd| cmd.name.as_bytes().cmp(lower))
        .ok()?;
    Some((i, COMMANDS.get(i)?))
}

/// Arity check as Redis does it; `argc` counts the command name.
#[inline]
pub fn arity_ok(cmd: &Command, argc: usize) -> bool {
    arity_matches(cmd.arity, argc)
}

#[inline]
fn arity_matches(arity: i32, argc: usize) -> bool {
    let need = arity.unsigned_abs() as usize;
    if arity >= 0 {
        argc == need
    } else {
        argc >= need
    }
}

/// Redis's reply to a wrong argument count.
pub fn arity_error(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

fn subcommand_of(subs: &'static [Subcommand], args: &[&[u8]]) -> Option<&'static Subcommand> {
    let sub = args.get(1)?;
    subs.iter()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(sub))
}

/// The flags that apply to this invocation: a keyed subcommand's own flags
/// (`XGROUP CREATE` writes, `XINFO STREAM` reads), else the command's.
pub fn effective_flags(cmd: &Command, args: &[&[u8]]) -> u32 {
    match cmd.keys {
        KeySpec::Subcommands(subs) => subcommand_of(subs, args).map_or(cmd.flags, |s| s.flags),
        _ => cmd.flags,
    }
}

/// True when this invocation may block: a `blocking` command, except
/// `XREAD`/`XREADGROUP`, which block only with a `BLOCK` option before
/// `STREAMS` (without it they answer at once, like any read).
pub fn is_blocking(cmd: &Command, args: &[&[u8]]) -> bool {
    if !cmd.has(BLOCKING) {
        return false;
    }
    if cmd.keys != KeySpec::Streams {
        return true;
    }
    // Options come in the order key_indices parses them; the first
    // argument that is none ends them (normally STREAMS).
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        if arg.eq_ignore_ascii_case(b"block") {
            return true;
        }
        if arg.eq_ignore_ascii_case(b"count") {
            i += 2;
        } else if arg.eq_ignore_ascii_case(b"group") {
            i += 3;
        } else if arg.eq_ignore_ascii_case(b"noack") {
            i += 1;
        } else {
            return false;
        }
    }
    false
}

/// Indices (into `args`, where `args[0]` is the command name) of every key
/// argument, pushed onto `out` (which is not cleared) in argument order.
///
/// Errors carry Redis's own message for a malformed `numkeys` or `STREAMS`
/// list, and for an argument count too small to hold the keys, so the proxy
/// can reply exactly as a Redis node would. Never panics, whatever `args` is.
pub fn key_indices(cmd: &Command, args: &[&[u8]], out: &mut Vec<usize>) -> Result<(), String> {
    let argc = args.len();
    match cmd.keys {
        KeySpec::None => Ok(()),
        KeySpec::Range => range_keys(cmd, argc, out),
        KeySpec::NumKeys {
            numkeys_at,
            first_at,
            fixed_before,
            rule,
        } => numkeys_keys(cmd, args, numkeys_at, first_at, fixed_before, rule, out),
        KeySpec::Streams => stream_keys(cmd, args, out),
        KeySpec::Sort => {
            if argc < 2 {
                return Err(arity_error(cmd.name));
            }
            out.push(1);
            let mut store = None;
            let mut i = 2;
            while let Some(arg) = args.get(i) {
                if arg.eq_ignore_ascii_case(b"limit") {
                    i += 3;
                } else if arg.eq_ignore_ascii_case(b"get") || arg.eq_ignore_ascii_case(b"by") {
                    i += 2;
                } else if arg.eq_ignore_ascii_case(b"store") && i + 1 < argc {
                    // SORT honours the last STORE.
                    store = Some(i + 1);
                    i += 2;
                } else {
                    i += 1;
                }
            }
            out.extend(store);
            Ok(())
        }
        KeySpec::GeoStore { options_at } => {
            if argc < 2 {
                return Err(arity_error(cmd.name));
            }
            out.push(1);
            let mut store = None;
            let mut i = options_at;
            while let Some(arg) = args.get(i) {
                let takes_key =
                    arg.eq_ignore_ascii_case(b"store") || arg.eq_ignore_ascii_case(b"storedist");
                if takes_key && i + 1 < argc {
                    // GEORADIUS honours the last STORE/STOREDIST.
                    store = Some(i + 1);
                    i += 2;
                } else if arg.eq_ignore_ascii_case(b"count") {
                    i += 2;
                } else {
                    i += 1;
                }
            }
            out.extend(store);
            Ok(())
        }
        KeySpec::Migrate => migrate_keys(cmd, args, out),
        KeySpec::Subcommands(subs) => {
            let Some(sub) = subcommand_of(subs, args) else {
                // HELP, or unknown: no key; the node will answer.
                return Ok(());
            };
            if !arity_matches(sub.arity, argc) || sub.key_at >= argc {
                return Err(format!(
                    "ERR wrong number of arguments for '{}|{}' command",
                    cmd.name, sub.name
                ));
            }
            out.push(sub.key_at);
            Ok(())
        }
    }
}

fn range_keys(cmd: &Command, argc: usize, out: &mut Vec<usize>) -> Result<(), String> {
    // Table values are small non-negative constants for keyed commands.
    let first = usize::try_from(cmd.first_key).unwrap_or(0);
    let step = usize::try_from(cmd.step).unwrap_or(1).max(1);
    if first == 0 {
        return Ok(());
    }
    let last = if cmd.last_key >= 0 {
        usize::try_from(cmd.last_key).unwrap_or(0)
    } else {
        // -1 is the last argument, -2 the one before it.
        let back = cmd.last_key.unsigned_abs() as usize;
        match argc.checked_sub(back) {
            Some(last) => last,
            None => return Err(arity_error(cmd.name)),
        }
    };
    if last >= argc || first >= argc {
        if last < first && cmd.last_key < 0 {
            // e.g. SUNSUBSCRIBE with no channel: no keys, and that is fine.
            return Ok(());
        }
        return Err(arity_error(cmd.name));
    }
    if last < first {
        return Ok(());
    }
    // MSET/MSETNX: keys and values come in pairs up to the end.
    if cmd.last_key == -1 && step > 1 && !(argc - first).is_multiple_of(step) {
        return Err(arity_error(cmd.name));
    }
    out.extend((first..=last).step_by(step));
    Ok(())
}

/// Parse an integer the way Redis's `string2ll` does: optional `-`, digits,
/// no `+`, no spaces, no leading zeros.
fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] => return (!neg).then_some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if neg {
            value.checked_sub(digit)?
        } else {
            value.checked_add(digit)?
        };
    }
    Some(value)
}

const SYNTAX_ERROR: &str = "ERR syntax error";
const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const TOO_MANY_KEYS: &str = "ERR Number of keys can't be greater than number of args";
const NEGATIVE_KEYS: &str = "ERR Number of keys can't be negative";
const NUMKEYS_POSITIVE: &str = "ERR numkeys should be greater than 0";

fn numkeys_keys(
    cmd: &Command,
    args: &[&[u8]],
    numkeys_at: usize,
    first_at: usize,
    fixed_before: &[usize],
    rule: NumKeysRule,
    out: &mut Vec<usize>,
) -> Result<(), String> {
    let argc = args.len();
    let Some(raw) = args.get(numkeys_at) else {
        return Err(arity_error(cmd.name));
    };
    if fixed_before.iter().any(|&i| i >= argc) {
        return Err(arity_error(cmd.name));
    }
    let parsed = parse_i64(raw);
    let available = argc.saturating_sub(first_at) as i64;
    let count = match rule {
        NumKeysRule::Script | NumKeysRule::Function => {
            let Some(n) = parsed else {
                return Err(if rule == NumKeysRule::Script {
                    NOT_AN_INTEGER.to_string()
                } else {
                    "ERR Bad number of keys provided".to_string()
                });
            };
            if n > available {
                return Err(TOO_MANY_KEYS.to_string());
            }
            if n < 0 {
                return Err(NEGATIVE_KEYS.to_string());
            }
            n
        }
        NumKeysRule::ZSetOp => {
            let n = parsed.ok_or_else(|| NOT_AN_INTEGER.to_string())?;
            if n < 1 {
                return Err(format!(
                    "ERR at least 1 input key is needed for '{}' command",
                    cmd.name
                ));
            }
            if n > available {
                return Err(SYNTAX_ERROR.to_string());
            }
            n
        }
        NumKeysRule::SetCard => {
            let n = parsed
                .filter(|&n| n >= 1)
                .ok_or_else(|| NUMKEYS_POSITIVE.to_string())?;
            if n > available {
                return Err(TOO_MANY_KEYS.to_string());
            }
            n
        }
        NumKeysRule::MultiPop => {
            let n = parsed
                .filter(|&n| n >= 1)
                .ok_or_else(|| NUMKEYS_POSITIVE.to_string())?;
            // LEFT|RIGHT (or MIN|MAX) must follow the keys.
            if n >= available {
                return Err(SYNTAX_ERROR.to_string());
            }
            n
        }
    };
    // `count <= available <= argc`, so the conversion and the range are safe.
    let count = usize::try_from(count).unwrap_or(0);
    out.extend_from_slice(fixed_before);
    out.extend(first_at..first_at + count);
    Ok(())
}

fn stream_keys(cmd: &Command, args: &[&[u8]], out: &mut Vec<usize>) -> Result<(), String> {
    let argc = args.len();
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        let more = argc - i - 1;
        if (arg.eq_ignore_ascii_case(b"block") || arg.eq_ignore_ascii_case(b"count")) && more >= 1 {
            i += 2;
        } else if arg.eq_ignore_ascii_case(b"group") && more >= 2 {
            i += 3;
        } else if arg.eq_ignore_ascii_case(b"noack") {
            i += 1;
        } else if arg.eq_ignore_ascii_case(b"streams") && more >= 1 {
            if !more.is_multiple_of(2) {
                let id = if cmd.name == "xreadgroup" { '>' } else { '$' };
                return Err(format!(
                    "ERR Unbalanced '{}' list of streams: for each stream key an ID or '{id}' must be specified.",
                    cmd.name
                ));
            }
            let first = i + 1;
            out.extend(first..first + more / 2);
            return Ok(());
        } else {
            return Err(SYNTAX_ERROR.to_string());
        }
    }
    // No STREAMS keyword (it is mandatory).
    Err(SYNTAX_ERROR.to_string())
}

fn migrate_keys(cmd: &Command, args: &[&[u8]], out: &mut Vec<usize>) -> Result<(), String> {
    // MIGRATE host port key|"" db timeout [COPY] [REPLACE]
    //         [AUTH pw | AUTH2 user pw] [KEYS key ...]
    let argc = args.len();
    let Some(key) = args.get(3) else {
        return Err(arity_error(cmd.name));
    };
    let mut i = 6;
    while let Some(arg) = args.get(i) {
        let more = argc - i - 1;
        if arg.eq_ignore_ascii_case(b"copy") || arg.eq_ignore_ascii_case(b"replace") {
            i += 1;
        } else if arg.eq_ignore_ascii_case(b"auth") && more >= 1 {
            i += 2;
        } else if arg.eq_ignore_ascii_case(b"auth2") && more >= 2 {
            i += 3;
        } else if arg.eq_ignore_ascii_case(b"keys") {
            if !key.is_empty() {
                return Err(
                    "ERR When using MIGRATE KEYS option, the key argument must be set to the empty string"
                        .to_string(),
                );
            }
            out.extend(i + 1..argc);
            return Ok(());
        } else {
            return Err(SYNTAX_ERROR.to_string());
        }
    }
    out.push(3);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(line: &str) -> Result<Vec<usize>, String> {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        let cmd = lookup(args[0]).expect("known command");
        let mut out = Vec::new();
        key_indices(cmd, &args, &mut out).map(|()| out)
    }

    fn key_names(line: &str) -> Vec<String> {
        let args: Vec<&str> = line.split(' ').collect();
        keys(line)
            .unwrap()
            .into_iter()
            .map(|i| args[i].to_string())
            .collect()
    }

    #[test]
    fn xread_blocks_only_with_block() {
        let blocks = |line: &str| {
            let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
            is_blocking(lookup(args[0]).unwrap(), &args)
        };
        assert!(!blocks("XREAD STREAMS s 0"));
        assert!(!blocks("XREAD COUNT 5 STREAMS s 0"));
        assert!(blocks("XREAD BLOCK 0 STREAMS s $"));
        assert!(blocks("xread count 1 block 100 streams s $"));
        assert!(!blocks("XREADGROUP GROUP g c COUNT 1 NOACK STREAMS s >"));
        assert!(blocks("XREADGROUP GROUP g c BLOCK 10 STREAMS s >"));
        // A stream named "block" is a key, not the option.
        assert!(!blocks("XREAD STREAMS block 0"));
        assert!(blocks("BLPOP q 0"));
        assert!(!blocks("GET k"));
    }

    #[test]
    fn table_is_sorted_unique_lowercase_and_large() {
        let names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        for pair in names.windows(2) {
            assert!(
                pair[0] < pair[1],
                "{} must sort before {}",
                pair[0],
                pair[1]
            );
        }
        for c in COMMANDS {
            assert_eq!(c.name, c.name.to_ascii_lowercase());
            assert!(c.name.len() <= MAX_NAME);
            assert_ne!(c.arity, 0, "{}", c.name);
            assert!(!(c.has(READONLY) && c.has(WRITE)), "{}", c.name);
        }
        assert!(COMMANDS.len() >= 200, "only {} commands", COMMANDS.len());
    }

    #[test]
    fn every_command_is_found_by_lookup() {
        for c in COMMANDS {
            assert_eq!(lookup(c.name.as_bytes()).map(|f| f.name), Some(c.name));
            assert_eq!(
                lookup(c.name.to_ascii_uppercase().as_bytes()).map(|f| f.name),
                Some(c.name)
            );
        }
    }

    #[test]
    fn lookup_is_case_insensitive() {
        assert_eq!(lookup(b"GET").unwrap().name, "get");
        for (i, c) in COMMANDS.iter().enumerate() {
            let (j, found) = lookup_indexed(c.name.to_ascii_uppercase().as_bytes()).unwrap();
            assert_eq!((j, found.name), (i, c.name));
            assert_eq!(index_of(found), i);
        }
        assert_eq!(lookup(b"gEt").unwrap().name, "get");
        assert_eq!(lookup(b"ZRangeByScore").unwrap().name, "zrangebyscore");
        assert_eq!(lookup(b"RESTORE-ASKING").unwrap().name, "restore-asking");
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(b"").is_none());
        assert!(lookup(b"ge").is_none());
        assert!(lookup(&[b'a'; 100]).is_none());
        assert!(lookup(b"get\0").is_none());
        assert!(lookup(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn keyed_entries_are_consistent() {
        for c in COMMANDS {
            match c.keys {
                KeySpec::None => assert_eq!(c.dispatch, Dispatch::Keyless, "{}", c.name),
                KeySpec::Range => {
                    assert!(c.first_key > 0 && c.step > 0, "{}", c.name);
                    assert_ne!(c.dispatch, Dispatch::Keyless, "{}", c.name);
                }
                _ => assert_ne!(c.dispatch, Dispatch::Keyless, "{}", c.name),
            }
            let movable = !matches!(
                c.keys,
                KeySpec::None | KeySpec::Range | KeySpec::Subcommands(_)
            );
            if movable {
                assert!(c.has(MOVABLEKEYS), "{}", c.name);
            }
        }
    }

    #[test]
    fn arity() {
        let get = lookup(b"get").unwrap();
        assert!(arity_ok(get, 2));
        assert!(!arity_ok(get, 1));
        assert!(!arity_ok(get, 3));
        let mset = lookup(b"mset").unwrap();
        assert!(!arity_ok(mset, 2));
        assert!(arity_ok(mset, 3));
        assert!(arity_ok(mset, 9));
        let ping = lookup(b"ping").unwrap();
        assert!(arity_ok(ping, 1));
        assert!(arity_ok(ping, 2));
        let blmove = lookup(b"blmove").unwrap();
        assert!(arity_ok(blmove, 6));
        assert!(!arity_ok(blmove, 7));
        assert!(!arity_ok(lookup(b"xreadgroup").unwrap(), 6));
        assert_eq!(
            arity_error("get"),
            "ERR wrong number of arguments for 'get' command"
        );
    }

    #[test]
    fn flags() {
        let get = lookup(b"get").unwrap();
        assert!(get.has(READONLY | FAST) && !get.has(WRITE));
        let set = lookup(b"set").unwrap();
        assert!(set.has(WRITE | DENYOOM) && !set.has(READONLY));
        let eval = lookup(b"eval").unwrap();
        assert!(!eval.has(READONLY) && !eval.has(WRITE) && eval.has(MOVABLEKEYS | NOSCRIPT));
        assert!(!lookup(b"eval_ro").unwrap().has(WRITE));
        assert!(lookup(b"xread").unwrap().has(READONLY | BLOCKING));
        assert!(lookup(b"xreadgroup").unwrap().has(WRITE | BLOCKING));
        for ro in [
            "sort_ro",
            "georadius_ro",
            "georadiusbymember_ro",
            "bitfield_ro",
            "exists",
            "ttl",
            "type",
        ] {
            assert!(lookup(ro.as_bytes()).unwrap().has(READONLY), "{ro}");
        }
        assert!(lookup(b"subscribe").unwrap().has(PUBSUB));
        assert!(lookup(b"blpop").unwrap().has(BLOCKING | WRITE));
        assert!(lookup(b"flushall").unwrap().has(WRITE));
        assert!(lookup(b"shutdown").unwrap().has(ADMIN | NO_MULTI));
        for tx in ["multi", "exec", "discard", "watch", "unwatch"] {
            assert!(lookup(tx.as_bytes()).unwrap().has(TRANSACTION), "{tx}");
        }
        for conn in [
            "auth",
            "hello",
            "select",
            "client",
            "reset",
            "quit",
            "readonly",
            "readwrite",
            "asking",
        ] {
            assert!(lookup(conn.as_bytes()).unwrap().has(CONNECTION), "{conn}");
        }
        assert!(!get.has(CONNECTION | TRANSACTION));
    }

    #[test]
    fn dispatch() {
        assert_eq!(
            lookup(b"mget").unwrap().dispatch,
            Dispatch::Fanout(Fanout::Mget)
        );
        assert_eq!(
            lookup(b"mset").unwrap().dispatch,
            Dispatch::Fanout(Fanout::Mset)
        );
        for sum in ["del", "unlink", "exists", "touch"] {
            assert_eq!(
                lookup(sum.as_bytes()).unwrap().dispatch,
                Dispatch::Fanout(Fanout::SumIntegers)
            );
        }
        assert_eq!(lookup(b"msetnx").unwrap().dispatch, Dispatch::SingleSlot);
        for keyless in [
            "command",
            "cluster",
            "client",
            "config",
            "info",
            "scan",
            "keys",
            "dbsize",
            "flushall",
            "randomkey",
            "publish",
            "subscribe",
            "ping",
            "echo",
        ] {
            assert_eq!(
                lookup(keyless.as_bytes()).unwrap().dispatch,
                Dispatch::Keyless,
                "{keyless}"
            );
        }
        for single in [
            "get", "eval", "xread", "object", "xgroup", "sort", "migrate", "spublish",
        ] {
            assert_eq!(
                lookup(single.as_bytes()).unwrap().dispatch,
                Dispatch::SingleSlot,
                "{single}"
            );
        }
    }

    #[test]
    fn range_keys_basic() {
        assert_eq!(keys("GET k").unwrap(), vec![1]);
        assert_eq!(keys("MGET a b c").unwrap(), vec![1, 2, 3]);
        assert_eq!(keys("DEL a b").unwrap(), vec![1, 2]);
        assert_eq!(keys("MSET a 1 b 2 c 3").unwrap(), vec![1, 3, 5]);
        assert_eq!(keys("BLPOP a b 0").unwrap(), vec![1, 2]);
        assert_eq!(keys("BITOP AND dst a b").unwrap(), vec![2, 3, 4]);
        assert_eq!(keys("RENAME a b").unwrap(), vec![1, 2]);
        assert_eq!(keys("PFDEBUG GETREG hll").unwrap(), vec![2]);
        assert_eq!(keys("SUNSUBSCRIBE").unwrap(), Vec::<usize>::new());
        assert_eq!(keys("SSUBSCRIBE a b").unwrap(), vec![1, 2]);
        assert_eq!(keys("PING").unwrap(), Vec::<usize>::new());
        assert_eq!(keys("SORT_RO k BY w_*").unwrap(), vec![1]);
    }

    #[test]
    fn range_keys_bad_counts() {
        let arity = "ERR wrong number of arguments for 'mset' command";
        assert_eq!(keys("MSET a 1 b").unwrap_err(), arity);
        assert_eq!(
            keys("GET").unwrap_err(),
            "ERR wrong number of arguments for 'get' command"
        );
        assert!(keys("RENAME a").is_err());
        assert!(keys("BLPOP").is_err());
        // Robust against a completely empty argument list.
        for c in COMMANDS {
            let mut out = Vec::new();
            let _ = key_indices(c, &[], &mut out);
            let _ = key_indices(c, &[c.name.as_bytes()], &mut out);
        }
    }

    #[test]
    fn eval_family() {
        assert_eq!(keys("EVAL s 0").unwrap(), Vec::<usize>::new());
        assert_eq!(keys("EVAL s 2 a b x y").unwrap(), vec![3, 4]);
        assert_eq!(keys("EVALSHA_RO sha 1 a").unwrap(), vec![3]);
        assert_eq!(keys("EVAL s 3 a b").unwrap_err(), TOO_MANY_KEYS);
        assert_eq!(keys("EVAL s -1 a").unwrap_err(), NEGATIVE_KEYS);
        assert_eq!(keys("EVAL s x a").unwrap_err(), NOT_AN_INTEGER);
        assert_eq!(keys("EVAL s 01 a").unwrap_err(), NOT_AN_INTEGER);
        assert_eq!(keys("EVAL s +1 a").unwrap_err(), NOT_AN_INTEGER);
        assert_eq!(
            keys("EVAL s 99999999999999999999 a").unwrap_err(),
            NOT_AN_INTEGER
        );
        assert_eq!(keys("FCALL f 1 k").unwrap(), vec![3]);
        assert_eq!(
            keys("FCALL_RO f x k").unwrap_err(),
            "ERR Bad number of keys provided"
        );
        assert_eq!(keys("FCALL f 2 k").unwrap_err(), TOO_MANY_KEYS);
    }

    #[test]
    fn zset_ops() {
        assert_eq!(
            keys("ZUNIONSTORE dst 2 a b WEIGHTS 1 2").unwrap(),
            vec![1, 3, 4]
        );
        assert_eq!(key_names("ZINTERSTORE d 1 z"), vec!["d", "z"]);
        assert_eq!(keys("ZUNION 2 a b").unwrap(), vec![2, 3]);
        assert_eq!(keys("ZINTERCARD 1 a LIMIT 5").unwrap(), vec![2]);
        assert_eq!(
            keys("ZUNIONSTORE dst 0 a").unwrap_err(),
            "ERR at least 1 input key is needed for 'zunionstore' command"
        );
        assert_eq!(keys("ZUNIONSTORE dst 3 a b").unwrap_err(), SYNTAX_ERROR);
        assert_eq!(keys("ZDIFF x a").unwrap_err(), NOT_AN_INTEGER);
        assert_eq!(keys("SINTERCARD 2 a b").unwrap(), vec![2, 3]);
        assert_eq!(keys("SINTERCARD 0 a").unwrap_err(), NUMKEYS_POSITIVE);
        assert_eq!(keys("SINTERCARD x a").unwrap_err(), NUMKEYS_POSITIVE);
        assert_eq!(keys("SINTERCARD 3 a b").unwrap_err(), TOO_MANY_KEYS);
    }

    #[test]
    fn multi_pop() {
        assert_eq!(keys("LMPOP 2 a b LEFT").unwrap(), vec![2, 3]);
        assert_eq!(keys("ZMPOP 1 z MIN COUNT 2").unwrap(), vec![2]);
        assert_eq!(keys("BLMPOP 0 2 a b RIGHT COUNT 3").unwrap(), vec![3, 4]);
        assert_eq!(keys("BZMPOP 1.5 1 z MAX").unwrap(), vec![3]);
        assert_eq!(keys("BLMPOP 0 2 a b").unwrap_err(), SYNTAX_ERROR);
        assert_eq!(keys("BLMPOP 0 0 a LEFT").unwrap_err(), NUMKEYS_POSITIVE);
        assert_eq!(keys("LMPOP -1 a LEFT").unwrap_err(), NUMKEYS_POSITIVE);
    }

    #[test]
    fn streams() {
        assert_eq!(key_names("XREAD COUNT 2 STREAMS a b 0 0"), vec!["a", "b"]);
        assert_eq!(keys("XREAD STREAMS a b 0 0").unwrap(), vec![2, 3]);
        assert_eq!(
            key_names("XREADGROUP GROUP g c COUNT 1 STREAMS s >"),
            vec!["s"]
        );
        assert_eq!(
            key_names("XREADGROUP GROUP g c BLOCK 0 NOACK STREAMS s t > >"),
            vec!["s", "t"]
        );
        // A group named "streams" is skipped as GROUP's argument.
        assert_eq!(
            key_names("XREADGROUP GROUP streams c STREAMS s >"),
            vec!["s"]
        );
        assert_eq!(
            keys("XREAD STREAMS a b 0").unwrap_err(),
            "ERR Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified."
        );
        assert_eq!(
            keys("XREADGROUP GROUP g c STREAMS a b >").unwrap_err(),
            "ERR Unbalanced 'xreadgroup' list of streams: for each stream key an ID or '>' must be specified."
        );
        assert_eq!(keys("XREAD COUNT 1 a 0").unwrap_err(), SYNTAX_ERROR);
        assert_eq!(keys("XREAD COUNT 1 STREAMS").unwrap_err(), SYNTAX_ERROR);
    }

    #[test]
    fn sort() {
        assert_eq!(keys("SORT k").unwrap(), vec![1]);
        assert_eq!(
            key_names("SORT k BY w_* LIMIT 0 10 GET h_* STORE dst"),
            vec!["k", "dst"]
        );
        assert_eq!(key_names("SORT k STORE d1 ALPHA STORE d2"), vec!["k", "d2"]);
        // Arguments of LIMIT/GET/BY are never taken for STORE.
        assert_eq!(key_names("SORT k GET store"), vec!["k"]);
        assert_eq!(key_names("SORT k STORE"), vec!["k"]);
    }

    #[test]
    fn georadius() {
        assert_eq!(keys("GEORADIUS g 15 37 200 km").unwrap(), vec![1]);
        assert_eq!(
            key_names("GEORADIUS g 15 37 200 km WITHDIST STORE dst"),
            vec!["g", "dst"]
        );
        assert_eq!(
            key_names("GEORADIUSBYMEMBER g m 10 km COUNT 3 STOREDIST d"),
            vec!["g", "d"]
        );
        assert_eq!(keys("GEORADIUS_RO g 15 37 200 km").unwrap(), vec![1]);
    }

    #[test]
    fn migrate() {
        assert_eq!(key_names("MIGRATE h 6379 k 0 1000"), vec!["k"]);
        assert_eq!(key_names("MIGRATE h 6379 k 0 1000 COPY REPLACE"), vec!["k"]);
        let line = "MIGRATE h 6379  0 1000 REPLACE AUTH keys KEYS a b c";
        assert_eq!(key_names(line), vec!["a", "b", "c"]);
        assert_eq!(
            key_names("MIGRATE h 6379  0 1000 AUTH2 u p KEYS a"),
            vec!["a"]
        );
        assert!(keys("MIGRATE h 6379 k 0 1000 KEYS a")
            .unwrap_err()
            .contains("empty string"));
        assert_eq!(
            keys("MIGRATE h 6379 k 0 1000 BOGUS").unwrap_err(),
            SYNTAX_ERROR
        );
    }

    #[test]
    fn subcommands() {
        assert_eq!(keys("OBJECT ENCODING k").unwrap(), vec![2]);
        assert_eq!(keys("object freq k").unwrap(), vec![2]);
        assert_eq!(keys("OBJECT HELP").unwrap(), Vec::<usize>::new());
        assert_eq!(
            keys("OBJECT ENCODING").unwrap_err(),
            "ERR wrong number of arguments for 'object|encoding' command"
        );
        assert_eq!(keys("MEMORY USAGE k SAMPLES 5").unwrap(), vec![2]);
        assert_eq!(keys("MEMORY STATS").unwrap(), Vec::<usize>::new());
        assert_eq!(keys("XINFO STREAM s FULL").unwrap(), vec![2]);
        assert_eq!(keys("XINFO CONSUMERS s g").unwrap(), vec![2]);
        assert_eq!(keys("XGROUP CREATE s g $ MKSTREAM").unwrap(), vec![2]);
        assert_eq!(keys("XGROUP DESTROY s g").unwrap(), vec![2]);

        let object = lookup(b"object").unwrap();
        let xgroup = lookup(b"xgroup").unwrap();
        assert_eq!(
            effective_flags(object, &[b"OBJECT", b"ENCODING", b"k"]),
            READONLY
        );
        assert_eq!(effective_flags(object, &[b"OBJECT", b"HELP"]), 0);
        assert!(effective_flags(xgroup, &[b"XGROUP", b"create", b"s", b"g", b"$"]) & WRITE != 0);
        let get = lookup(b"get").unwrap();
        assert_eq!(effective_flags(get, &[b"GET", b"k"]), get.flags);
    }

    #[test]
    fn keys_are_appended_not_replaced() {
        let mut out = vec![99];
        let get = lookup(b"get").unwrap();
        key_indices(get, &[b"GET", b"k"], &mut out).unwrap();
        assert_eq!(out, vec![99, 1]);
    }

    #[test]
    fn integer_parsing_matches_redis() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"42"), Some(42));
        assert_eq!(parse_i64(b"-7"), Some(-7));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"007",
            b"+1",
            b" 1",
            b"1 ",
            b"1.0",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
