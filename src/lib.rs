//! envoy-redis-cluster: a Redis Cluster proxy that stock Envoy loads as a
//! dynamic-module network filter.
//!
//! The crate is split so that everything but `envoy` is safe Rust that can be
//! tested without Envoy:
//! - [`codec`]: RESP framing of client requests and node replies;
//! - [`slot`]: key → hash slot (CRC16/XMODEM, hash tags);
//! - [`command`]: the command table (flags, key positions);
//! - [`config`]: the filter's JSON configuration;
//! - [`topology`]: `CLUSTER SLOTS` parsing, the slot map and its refresher;
//! - [`info`]: one Redis-shaped `INFO` from every master's;
//! - [`routing`]: prefix routes and read policy → which node gets a command;
//! - [`upstream`]: the module-owned event loops and connections to Redis nodes;
//! - [`session`]: one client connection: parsing, local replies, reply ordering;
//! - [`envoy`]: the only `unsafe` code, the FFI boundary with Envoy.

pub mod codec;
pub mod command;
pub mod config;
pub mod envoy;
pub mod info;
pub mod local;
pub mod proxy;
pub mod routing;
pub mod session;
pub mod slot;
pub mod splitter;
pub mod stats;
pub mod tls;
pub mod topology;
pub mod topology_refresh;
pub mod upstream;
