//! envoy-redis-cluster: a Redis Cluster proxy that stock Envoy loads as a
//! dynamic-module network filter.
//!
//! The crate is split so that everything but `envoy` is safe Rust that can be
//! tested without Envoy:
//! - [`codec`]: RESP framing of client requests and node replies;
//! - [`slot`]: key → hash slot (CRC16/XMODEM, hash tags);
//! - [`command`]: the command table (flags, key positions);
//! - [`config`]: the filter's JSON configuration, including prefix-route
//!   matching ([`config::PrefixRoutes::route_for`]);
//! - [`proxy`]: one filter config's runtime: its clusters, refreshers,
//!   each worker's upstream I/O and route lookup (prefix route → cluster, read policy);
//! - [`topology`]: `CLUSTER SLOTS` parsing and the slot map;
//! - [`topology_refresh`]: the refresher threads that keep slot maps fresh;
//! - [`failure_streak`]: which repeats of a failure to log;
//! - [`routing`]: read policy → which node of a shard serves a command;
//! - [`splitter`]: splitting multi-key and cluster-wide commands, merging
//!   their replies;
//! - [`local`]: commands the proxy answers itself;
//! - [`scripts`]: script bodies by SHA1, to answer `NOSCRIPT` on nodes that lack one;
//! - [`key_routing`]: each key's own prefix route; splitting across clusters;
//! - [`functions`]: which functions declare `no-writes` (from `FUNCTION LOAD`);
//! - [`info`]: one Redis-shaped `INFO` from every master's;
//! - [`upstream`]: the module-owned event loops and connections to Redis nodes;
//! - [`tls`]: TLS to the nodes;
//! - [`clients`]: the registry of client connections and `CLIENT PAUSE`;
//! - [`session`]: one client connection: parsing, local replies, reply ordering;
//! - [`stats`]: statistics, through Envoy's stats;
//! - [`logging`]: the `log!` macro (the `log` facade; Envoy's logger once loaded);
//! - [`clock`]: the session's time source (a manual one for tests and fuzzing);
//! - [`envoy`]: the only `unsafe` code, the FFI boundary with Envoy.

pub mod clients;
pub mod clock;
pub mod codec;
pub mod command;
pub mod config;
pub mod envoy;
pub mod failure_streak;
pub mod functions;
pub mod info;
pub mod key_routing;
pub mod local;
pub mod logging;
pub mod proxy;
pub mod pubsub;
pub mod routing;
pub mod scripts;
pub mod session;
pub mod slot;
pub mod splitter;
pub mod stats;
pub mod tls;
pub mod topology;
pub mod topology_refresh;
pub mod upstream;
