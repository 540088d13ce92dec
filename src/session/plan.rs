//! What to do with one command, decided before anything is done.
//!
//! [`plan`] is a pure function of the command (its table entry and
//! arguments) and the two bits of session state that change the answer
//! (authenticated, inside `MULTI`). The command table's flags decide where
//! they can (`no_auth`, transaction control, `pubsub`, `blocking`, keys);
//! the few names that remain (commands the proxy answers itself, keyless
//! commands and how their replies merge) are listed here and nowhere else.
//! [`super::Session`] carries a plan out.

use crate::codec;
use crate::command::{self, Command};
use crate::splitter::Merge;

/// The session state a plan depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ctx {
    pub authenticated: bool,
    pub in_multi: bool,
}

/// What the session does with a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Answered with an error, sent nowhere.
    Refused(Refusal),
    /// `RESET`: back to a new connection's state (inside `MULTI` too).
    Reset,
    /// `MULTI`, `EXEC`, `DISCARD`, `WATCH`, and `UNWATCH` outside `MULTI`.
    Transaction,
    /// Inside `MULTI`: queued in the transaction.
    Queue,
    /// Answered by the proxy itself.
    Local(Local),
    /// A command that may block: a connection of its own.
    Blocking,
    /// Keys found (in the planner's `keys`): to the node of their slot, or
    /// split per slot when the routes and the command allow.
    Keyed,
    /// No key: where it goes and how replies merge.
    Keyless(Keyless),
    /// `SUBSCRIBE` and the other subscription commands, `PUBSUB`: the
    /// proxy's own subscriptions (`session/subscription.rs`).
    PubSub,
}

/// Why a command is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not in the command table.
    Unknown,
    /// Wrong argument count for the named command.
    Arity(&'static str),
    /// Downstream auth is configured and the client has not authenticated.
    NoAuth,
    /// The keys cannot be found (Redis's own message: bad `numkeys`, …).
    Keys(String),
}

impl Refusal {
    /// Whether the refusal makes an open `MULTI` fail at `EXEC`, as Redis
    /// does for errors found while queueing.
    pub fn aborts_multi(&self) -> bool {
        matches!(self, Refusal::Unknown | Refusal::Arity(_))
    }

    /// Refused before the command counts as received: a pause does not
    /// hold it, a monitoring client's limits do not apply.
    pub fn before_admission(&self) -> bool {
        matches!(self, Refusal::Unknown | Refusal::Arity(_) | Refusal::NoAuth)
    }

    /// The error reply (`args`: the command as the client sent it).
    pub fn reply(&self, args: &[&[u8]]) -> Vec<u8> {
        match self {
            Refusal::Unknown => unknown_command(args),
            Refusal::Arity(name) => codec::error(&command::arity_error(name)),
            Refusal::NoAuth => codec::error("NOAUTH Authentication required."),
            Refusal::Keys(msg) => codec::error(msg),
        }
    }
}

/// Commands the proxy answers itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Local {
    /// The same reply whatever the state (`ECHO`, `SELECT`, `ASKING`, …).
    Reply(Vec<u8>),
    /// `PING`: this reply, unless a node is busy with a script (then its
    /// `-BUSY`, like a Redis busy with one).
    Ping(Vec<u8>),
    /// `+OK`, then close once earlier replies are out.
    Quit,
    /// `CLIENT REPLY ON|OFF|SKIP`.
    ClientReply,
    Monitor,
    /// Other `CLIENT` subcommands.
    Client,
    Acl,
    Hello,
    Auth,
    Cluster,
}

/// Where a keyless command goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Keyless {
    /// Same answer from any master.
    AnyMaster,
    /// To every master, replies merged.
    Broadcast(Merge),
    /// To every master, each on a connection of its own (a busy script
    /// holds the shared one).
    Dedicated(Merge),
    /// `SCRIPT FLUSH`: the proxy's script cache too.
    ScriptFlush,
    /// `WAIT`, its timeout capped.
    Wait,
    /// `RANDOMKEY`: from a random master on.
    RandomKey,
    Info,
    Config,
    /// `SAVE`, `BGSAVE`, `BGREWRITEAOF`.
    Persist,
    /// `ACL` but `WHOAMI`: the nodes' users.
    Acl,
    Scan,
    /// Not supported through the proxy.
    Unsupported,
}

impl Keyless {
    /// Whether the command needs a topology with masters (so waits for one
    /// within `op_timeout`).
    pub fn needs_masters(&self) -> bool {
        !matches!(self, Keyless::AnyMaster | Keyless::Unsupported)
    }
}

/// Plan command `found` (`None`: not in the table) called with `args`
/// (`args[0]` its name). For [`Plan::Keyed`], `keys` holds the key
/// positions (it is cleared first).
pub fn plan(found: Option<&Command>, args: &[&[u8]], ctx: Ctx, keys: &mut Vec<usize>) -> Plan {
    keys.clear();
    let Some(cmd) = found else {
        return Plan::Refused(Refusal::Unknown);
    };
    if !command::arity_ok(cmd, args.len()) {
        return Plan::Refused(Refusal::Arity(cmd.name));
    }
    if !ctx.authenticated && !cmd.has(command::NO_AUTH) {
        return Plan::Refused(Refusal::NoAuth);
    }
    if cmd.name == "reset" {
        return Plan::Reset;
    }
    // UNWATCH inside MULTI is queued, as Redis does.
    if cmd.has(command::TRANSACTION) && !(ctx.in_multi && cmd.name == "unwatch") {
        return Plan::Transaction;
    }
    if ctx.in_multi {
        return Plan::Queue;
    }
    if let Some(local) = local(cmd, args) {
        return Plan::Local(local);
    }
    if command::is_blocking(cmd, args) {
        return Plan::Blocking;
    }
    // PUBLISH and SPUBLISH too: their receivers are counted as the proxy's.
    if cmd.has(command::PUBSUB) || cmd.name == "pubsub" {
        return Plan::PubSub;
    }
    match command::key_indices(cmd, args, keys) {
        Err(msg) => Plan::Refused(Refusal::Keys(msg)),
        Ok(()) if keys.is_empty() => Plan::Keyless(keyless(cmd, args)),
        Ok(()) => Plan::Keyed,
    }
}

fn sub_is(args: &[&[u8]], sub: &str) -> bool {
    args.get(1)
        .is_some_and(|a| a.eq_ignore_ascii_case(sub.as_bytes()))
}

fn local(cmd: &Command, args: &[&[u8]]) -> Option<Local> {
    Some(match cmd.name {
        "client" if sub_is(args, "reply") => Local::ClientReply,
        "client" => Local::Client,
        "monitor" => Local::Monitor,
        "ping" => match args {
            [_] => Local::Ping(codec::simple("PONG")),
            [_, msg] => Local::Ping(codec::bulk(msg)),
            _ => Local::Reply(codec::error(&command::arity_error(cmd.name))),
        },
        "echo" => Local::Reply(codec::bulk(args.get(1)?)),
        "quit" => Local::Quit,
        "select" if args.get(1).is_some_and(|db| *db == b"0") => Local::Reply(codec::simple("OK")),
        "select" => Local::Reply(codec::error(
            "ERR DB index is out of range: a Redis Cluster has only database 0",
        )),
        "asking" | "readonly" | "readwrite" => Local::Reply(codec::simple("OK")),
        "acl" if sub_is(args, "whoami") => Local::Acl,
        "hello" => Local::Hello,
        "auth" => Local::Auth,
        "cluster" => Local::Cluster,
        _ => return None,
    })
}

/// Where keyless command `cmd` goes (also when a command deferred until a
/// topology with masters is handled again).
pub fn keyless(cmd: &Command, args: &[&[u8]]) -> Keyless {
    match cmd.name {
        "command" | "time" | "lolwut" | "lastsave" | "eval" | "evalsha" | "eval_ro"
        | "evalsha_ro" | "fcall" | "fcall_ro" | "xgroup" | "xinfo" | "object" | "pfselftest" => {
            Keyless::AnyMaster
        }
        "dbsize" => Keyless::Broadcast(Merge::Sum),
        "keys" => Keyless::Broadcast(Merge::Concat),
        "flushall" | "flushdb" => Keyless::Broadcast(Merge::AllOk),
        "script" | "function" if sub_is(args, "kill") => Keyless::Dedicated(Merge::Kill),
        "function" if sub_is(args, "stats") => Keyless::Dedicated(Merge::FunctionStats),
        "script" if sub_is(args, "flush") => Keyless::ScriptFlush,
        "script" | "function" => Keyless::Broadcast(Merge::Same),
        "wait" => Keyless::Wait,
        "randomkey" => Keyless::RandomKey,
        "info" => Keyless::Info,
        "config" => Keyless::Config,
        "save" | "bgsave" | "bgrewriteaof" => Keyless::Persist,
        "acl" => Keyless::Acl,
        "scan" => Keyless::Scan,
        _ => Keyless::Unsupported,
    }
}

/// A script body the upstream loops may need to load where a node lacks
/// it (`EVAL`, `SCRIPT LOAD`).
pub fn script_body<'a>(cmd: &Command, args: &[&'a [u8]]) -> Option<&'a [u8]> {
    match cmd.name {
        "eval" | "eval_ro" => args.get(1).copied(),
        "script" if sub_is(args, "load") => args.get(2).copied(),
        _ => None,
    }
}

/// Redis's wording for an unknown command.
fn unknown_command(args: &[&[u8]]) -> Vec<u8> {
    let name = String::from_utf8_lossy(args.first().copied().unwrap_or_default());
    let mut msg = format!("ERR unknown command '{name}', with args beginning with: ");
    for a in args.iter().skip(1).take(8) {
        msg.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
    }
    codec::error(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Ctx = Ctx {
        authenticated: true,
        in_multi: false,
    };

    fn plan_of(line: &str, ctx: Ctx) -> (Plan, Vec<usize>) {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        let found = command::lookup(args[0]);
        let mut keys = vec![99];
        let p = plan(found, &args, ctx, &mut keys);
        (p, keys)
    }

    fn p(line: &str) -> Plan {
        plan_of(line, OPEN).0
    }

    #[test]
    fn refusals() {
        assert_eq!(p("NOSUCH a"), Plan::Refused(Refusal::Unknown));
        assert_eq!(p("GET"), Plan::Refused(Refusal::Arity("get")));
        let closed = Ctx {
            authenticated: false,
            in_multi: false,
        };
        assert_eq!(plan_of("GET k", closed).0, Plan::Refused(Refusal::NoAuth));
        // The no_auth commands pass the gate.
        assert_eq!(plan_of("AUTH pw", closed).0, Plan::Local(Local::Auth));
        assert_eq!(plan_of("HELLO", closed).0, Plan::Local(Local::Hello));
        assert_eq!(plan_of("QUIT", closed).0, Plan::Local(Local::Quit));
        assert_eq!(plan_of("RESET", closed).0, Plan::Reset);
        assert_eq!(p("SUBSCRIBE ch"), Plan::PubSub);
        assert_eq!(p("PUBSUB NUMPAT"), Plan::PubSub);
        assert_eq!(p("SPUBLISH ch m"), Plan::PubSub);
        assert_eq!(p("PUBLISH ch m"), Plan::PubSub);
        assert!(matches!(
            p("EVAL s notanumber"),
            Plan::Refused(Refusal::Keys(_))
        ));
    }

    #[test]
    fn refusal_replies_are_redis_errors() {
        let args: Vec<&[u8]> = vec![b"nosuch", b"a", b"b"];
        assert_eq!(
            Refusal::Unknown.reply(&args),
            b"-ERR unknown command 'nosuch', with args beginning with: 'a' 'b' \r\n".to_vec()
        );
        assert_eq!(
            Refusal::Arity("get").reply(&args),
            b"-ERR wrong number of arguments for 'get' command\r\n".to_vec()
        );
        assert_eq!(
            Refusal::NoAuth.reply(&args),
            b"-NOAUTH Authentication required.\r\n".to_vec()
        );
        assert!(Refusal::Unknown.aborts_multi() && Refusal::Arity("get").aborts_multi());
        assert!(!Refusal::NoAuth.aborts_multi());
        assert!(Refusal::NoAuth.before_admission());
        assert!(!Refusal::Keys(String::new()).before_admission());
    }

    #[test]
    fn transactions_and_multi() {
        for tx in ["MULTI", "EXEC", "DISCARD", "WATCH k", "UNWATCH"] {
            assert_eq!(p(tx), Plan::Transaction, "{tx}");
        }
        let multi = Ctx {
            authenticated: true,
            in_multi: true,
        };
        assert_eq!(plan_of("EXEC", multi).0, Plan::Transaction);
        assert_eq!(plan_of("UNWATCH", multi).0, Plan::Queue);
        assert_eq!(plan_of("GET k", multi).0, Plan::Queue);
        // Blocking commands and local ones are queued too.
        assert_eq!(plan_of("BLPOP k 0", multi).0, Plan::Queue);
        assert_eq!(plan_of("PING", multi).0, Plan::Queue);
        assert_eq!(plan_of("RESET", multi).0, Plan::Reset);
        // Errors found while queueing still come first.
        assert_eq!(
            plan_of("GET", multi).0,
            Plan::Refused(Refusal::Arity("get"))
        );
    }

    #[test]
    fn local_replies() {
        assert_eq!(p("PING"), Plan::Local(Local::Ping(b"+PONG\r\n".to_vec())));
        assert_eq!(
            p("PING hi"),
            Plan::Local(Local::Ping(b"$2\r\nhi\r\n".to_vec()))
        );
        assert_eq!(
            p("PING a b"),
            Plan::Local(Local::Reply(
                b"-ERR wrong number of arguments for 'ping' command\r\n".to_vec()
            ))
        );
        assert_eq!(
            p("ECHO x"),
            Plan::Local(Local::Reply(b"$1\r\nx\r\n".to_vec()))
        );
        assert_eq!(
            p("SELECT 0"),
            Plan::Local(Local::Reply(b"+OK\r\n".to_vec()))
        );
        assert!(
            matches!(p("SELECT 1"), Plan::Local(Local::Reply(r)) if r.starts_with(b"-ERR DB index"))
        );
        assert_eq!(
            p("READONLY"),
            Plan::Local(Local::Reply(b"+OK\r\n".to_vec()))
        );
        assert_eq!(p("CLIENT REPLY off"), Plan::Local(Local::ClientReply));
        assert_eq!(p("CLIENT LIST"), Plan::Local(Local::Client));
        assert_eq!(p("MONITOR"), Plan::Local(Local::Monitor));
        assert_eq!(p("ACL WHOAMI"), Plan::Local(Local::Acl));
        assert_eq!(p("ACL SETUSER bob on"), Plan::Keyless(Keyless::Acl));
        assert_eq!(p("ACL LIST"), Plan::Keyless(Keyless::Acl));
        assert_eq!(p("CLUSTER SLOTS"), Plan::Local(Local::Cluster));
    }

    #[test]
    fn blocking_only_when_it_may_block() {
        assert_eq!(p("BLPOP k 0"), Plan::Blocking);
        assert_eq!(p("XREAD BLOCK 0 STREAMS s 0"), Plan::Blocking);
        let (plan, keys) = plan_of("XREAD COUNT 1 STREAMS s 0", OPEN);
        assert_eq!((plan, keys), (Plan::Keyed, vec![4]));
    }

    #[test]
    fn keyed_commands_carry_their_keys() {
        assert_eq!(plan_of("GET k", OPEN), (Plan::Keyed, vec![1]));
        assert_eq!(plan_of("MGET a b c", OPEN), (Plan::Keyed, vec![1, 2, 3]));
        assert_eq!(plan_of("EVAL s 1 k", OPEN), (Plan::Keyed, vec![3]));
        // No key: any master.
        assert_eq!(
            plan_of("EVAL s 0", OPEN),
            (Plan::Keyless(Keyless::AnyMaster), vec![])
        );
    }

    #[test]
    fn keyless_commands() {
        assert_eq!(p("DBSIZE"), Plan::Keyless(Keyless::Broadcast(Merge::Sum)));
        assert_eq!(
            p("KEYS *"),
            Plan::Keyless(Keyless::Broadcast(Merge::Concat))
        );
        assert_eq!(
            p("FLUSHALL"),
            Plan::Keyless(Keyless::Broadcast(Merge::AllOk))
        );
        assert_eq!(
            p("SCRIPT KILL"),
            Plan::Keyless(Keyless::Dedicated(Merge::Kill))
        );
        assert_eq!(
            p("FUNCTION KILL"),
            Plan::Keyless(Keyless::Dedicated(Merge::Kill))
        );
        assert_eq!(
            p("FUNCTION STATS"),
            Plan::Keyless(Keyless::Dedicated(Merge::FunctionStats))
        );
        assert_eq!(p("SCRIPT FLUSH"), Plan::Keyless(Keyless::ScriptFlush));
        assert_eq!(
            p("SCRIPT LOAD s"),
            Plan::Keyless(Keyless::Broadcast(Merge::Same))
        );
        assert_eq!(p("WAIT 1 0"), Plan::Keyless(Keyless::Wait));
        assert_eq!(p("RANDOMKEY"), Plan::Keyless(Keyless::RandomKey));
        assert_eq!(p("INFO"), Plan::Keyless(Keyless::Info));
        assert_eq!(p("CONFIG GET x"), Plan::Keyless(Keyless::Config));
        assert_eq!(p("BGSAVE"), Plan::Keyless(Keyless::Persist));
        assert_eq!(p("SCAN 0"), Plan::Keyless(Keyless::Scan));
        assert_eq!(p("SHUTDOWN"), Plan::Keyless(Keyless::Unsupported));
        assert!(Keyless::Scan.needs_masters() && Keyless::Wait.needs_masters());
        assert!(!Keyless::AnyMaster.needs_masters() && !Keyless::Unsupported.needs_masters());
    }

    #[test]
    fn script_bodies() {
        let eval: Vec<&[u8]> = vec![b"eval", b"return 1", b"0"];
        let load: Vec<&[u8]> = vec![b"script", b"LOAD", b"return 2"];
        let sha: Vec<&[u8]> = vec![b"evalsha", b"abc", b"0"];
        let lookup = |a: &[&[u8]]| command::lookup(a[0]).unwrap();
        assert_eq!(script_body(lookup(&eval), &eval), Some(&b"return 1"[..]));
        assert_eq!(script_body(lookup(&load), &load), Some(&b"return 2"[..]));
        assert_eq!(script_body(lookup(&sha), &sha), None);
    }
}
