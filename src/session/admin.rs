//! `INFO` and `CONFIG` through the proxy: the client sees one server, the
//! proxy talks to every node.
//!
//! - `INFO [section ...]`: every master's INFO combined into one
//!   ([`crate::info`]), plus a `# Proxy` section when all sections are asked
//!   for. `INFO nodes [section ...]`: each master's own INFO, labelled
//!   `# Node host:port` (a Redis node answers an unknown section with
//!   nothing, so the name is free).
//! - `CONFIG GET`: the first master's answer (masters ordered by their first
//!   slot). `CONFIG SET` through the proxy sets every node alike, so a
//!   setting reads the same on all; per-node ones (`port`, `dir`) are that
//!   master's.
//! - `CONFIG SET|RESETSTAT|REWRITE`: sent to every node of the cluster,
//!   masters and replicas, only with `settings.allow_admin_commands`; `OK`
//!   when every node said OK, else the first node's error.
//!   Settings that are each node's own (`port`, `dir`, announced addresses:
//!   [`PER_NODE`]) are refused: one value cannot be right for every node.
//! - Other `CONFIG` subcommands (`HELP`, unknown ones): any master answers.
//! - `SAVE`, `BGSAVE`, `BGREWRITEAOF`: every master saves, only with
//!   `settings.allow_admin_commands`; the masters' common reply, or the
//!   first error.
//! - `ACL SETUSER|DELUSER|LOAD|SAVE|LOG RESET`: a cluster's users are each
//!   node's own, so these go to every node (masters and replicas) like
//!   `CONFIG SET`, only with `settings.allow_admin_commands`. Other `ACL`
//!   subcommands (`LIST`, `GETUSER`, `DRYRUN`, `CAT`, `LOG` …): the first
//!   master's answer. `ACL WHOAMI` is the client's own (`identity.rs`).

use super::{Session, WHOLE};
use crate::codec;
use crate::splitter::Merge;
use crate::upstream::Target;
use std::time::Instant;

/// Arguments asking for every INFO section (or none, the default set).
fn wants_proxy_section(args: &[&[u8]]) -> bool {
    let sections = args.get(1..).unwrap_or_default();
    sections.is_empty()
        || sections.iter().any(|s| {
            [&b"all"[..], b"everything", b"default", b"proxy"]
                .iter()
                .any(|w| s.eq_ignore_ascii_case(w))
        })
}

/// Settings whose value is each node's own: `CONFIG SET` cannot give every
/// node the same one.
pub const PER_NODE: &[&str] = &[
    "port",
    "tls-port",
    "bind",
    "bind-source-addr",
    "unixsocket",
    "dir",
    "logfile",
    "pidfile",
    "dbfilename",
    "cluster-announce-ip",
    "cluster-announce-hostname",
    "cluster-announce-port",
    "cluster-announce-tls-port",
    "cluster-announce-bus-port",
    "replica-announce-ip",
    "replica-announce-port",
    "slave-announce-ip",
    "slave-announce-port",
    "replicaof",
    "slaveof",
];

fn admin_refused(what: &str) -> Vec<u8> {
    codec::error(&format!(
        "ERR {what} would change every node of the cluster: the proxy refuses it unless settings.allow_admin_commands is true"
    ))
}

impl Session {
    pub(super) fn info(
        &mut self,
        cluster: usize,
        args: &[&[u8]],
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        if args
            .get(1)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"nodes"))
        {
            let mut words: Vec<&[u8]> = vec![b"INFO"];
            words.extend_from_slice(args.get(2..).unwrap_or_default());
            let data = codec::command(&words);
            return self.broadcast(
                cluster,
                data,
                |n| Merge::Info {
                    nodes: n.to_vec(),
                    header: crate::local::info_header(n.len()),
                },
                now,
            );
        }
        let proxy = wants_proxy_section(args);
        // The application's clients are the proxy's, not the nodes' (whose
        // clients are the proxies' shared connections).
        let clients = self.proxy.clients.clone();
        self.broadcast(
            cluster,
            codec::command(args),
            |n| Merge::InfoSum {
                proxy: proxy.then(|| crate::info::proxy_section(n.len())),
                fields: vec![
                    ("connected_clients", clients.connected().to_string()),
                    ("blocked_clients", clients.blocked().to_string()),
                ],
            },
            now,
        )
    }

    pub(super) fn config(
        &mut self,
        cluster: usize,
        args: &[&[u8]],
        data: Vec<u8>,
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let sub = args.get(1).copied().unwrap_or_default();
        let is = |name: &str| sub.eq_ignore_ascii_case(name.as_bytes());
        if is("get") {
            return self.first_master(cluster, data, now);
        }
        if is("set") || is("resetstat") || is("rewrite") {
            if !self.proxy.config.settings.allow_admin_commands {
                let what = format!(
                    "CONFIG {}",
                    String::from_utf8_lossy(sub).to_ascii_uppercase()
                );
                return Err(admin_refused(&what));
            }
            if is("set") {
                let params = args.get(2..).unwrap_or_default().iter().step_by(2);
                for p in params {
                    if let Some(name) = PER_NODE
                        .iter()
                        .find(|n| p.eq_ignore_ascii_case(n.as_bytes()))
                    {
                        return Err(codec::error(&format!(
                            "ERR CONFIG SET '{name}' is each node's own setting: set it on the nodes directly, not through the proxy"
                        )));
                    }
                }
            }
            let nodes = self.all_nodes(cluster)?;
            self.fan_out(cluster, nodes, data, Merge::AllOk, false, now);
            return Ok(());
        }
        let seq = self.push_slot();
        self.send_keyless(seq, WHOLE, cluster, Target::AnyMaster, data, now);
        Ok(())
    }

    pub(super) fn persist(
        &mut self,
        cluster: usize,
        name: &str,
        data: Vec<u8>,
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        if !self.proxy.config.settings.allow_admin_commands {
            return Err(admin_refused(&name.to_ascii_uppercase()));
        }
        self.broadcast(cluster, data, |_| Merge::Same, now)
    }

    /// `ACL` but `WHOAMI`, run as the client's user like every command.
    pub(super) fn acl_nodes(
        &mut self,
        cluster: usize,
        args: &[&[u8]],
        data: Vec<u8>,
        now: Instant,
    ) -> Result<(), Vec<u8>> {
        let sub = args.get(1).copied().unwrap_or_default();
        let is = |name: &str| sub.eq_ignore_ascii_case(name.as_bytes());
        let log_reset = is("log")
            && args
                .get(2)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"reset"));
        if is("setuser") || is("deluser") || is("load") || is("save") || log_reset {
            if !self.proxy.config.settings.allow_admin_commands {
                let what = format!("ACL {}", String::from_utf8_lossy(sub).to_ascii_uppercase());
                return Err(admin_refused(&what));
            }
            // DELUSER counts the users deleted: the same on every node
            // that had the same users.
            let merge = if is("deluser") {
                Merge::Same
            } else {
                Merge::AllOk
            };
            let nodes = self.all_nodes(cluster)?;
            self.fan_out(cluster, nodes, data, merge, false, now);
            return Ok(());
        }
        self.first_master(cluster, data, now)
    }

    /// `data` to the first master (masters ordered by first slot).
    fn first_master(&mut self, cluster: usize, data: Vec<u8>, now: Instant) -> Result<(), Vec<u8>> {
        let first = self.masters(cluster)?.into_iter().next();
        let addr = first.ok_or_else(|| codec::error("CLUSTERDOWN the cluster has no master"))?;
        let seq = self.push_slot();
        let target = Target::Node {
            addr,
            slot: 0,
            asking: false,
        };
        self.send_keyless(seq, WHOLE, cluster, target, data, now);
        Ok(())
    }

    /// Masters (ordered by first slot), then every replica the slot map names.
    fn all_nodes(&self, cluster: usize) -> Result<Vec<String>, Vec<u8>> {
        let mut nodes = self.masters(cluster)?;
        if let Some(map) = self.proxy.topology(cluster) {
            for addr in map.nodes() {
                if !nodes.iter().any(|n| n == addr) {
                    nodes.push(addr.to_string());
                }
            }
        }
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::wants_proxy_section;

    #[test]
    fn proxy_section_only_with_every_section() {
        assert!(wants_proxy_section(&[b"INFO"]));
        assert!(wants_proxy_section(&[b"INFO", b"ALL"]));
        assert!(wants_proxy_section(&[b"info", b"memory", b"Proxy"]));
        assert!(wants_proxy_section(&[b"info", b"everything"]));
        assert!(!wants_proxy_section(&[b"info", b"memory"]));
        assert!(!wants_proxy_section(&[b"info", b"keyspace", b"stats"]));
    }
}
