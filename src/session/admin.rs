//! `CONFIG` through the proxy: the client sees one server, the proxy talks
//! to every node.
//!
//! - `CONFIG GET`: the first master's answer (masters ordered by their first
//!   slot). `CONFIG SET` through the proxy sets every node alike, so a
//!   setting reads the same on all; per-node ones (`port`, `dir`) are that
//!   master's.
//! - `CONFIG SET|RESETSTAT|REWRITE`: sent to every node of the cluster,
//!   masters and replicas, only with `settings.allow_admin_commands`; `OK`
//!   when every node said OK, else the first node's error.
//! - Other `CONFIG` subcommands (`HELP`, unknown ones): any master answers.

use super::{Session, WHOLE};
use crate::codec;
use crate::config::ReadPolicy;
use crate::splitter::{Gather, Merge};
use crate::upstream::Target;
use std::time::Instant;

impl Session {
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
            let first = self.masters(cluster)?.into_iter().next();
            let addr =
                first.ok_or_else(|| codec::error("CLUSTERDOWN the cluster has no master"))?;
            let seq = self.push_slot();
            let target = Target::Node {
                addr,
                slot: 0,
                asking: false,
            };
            self.send(
                seq,
                WHOLE,
                cluster,
                &[],
                target,
                ReadPolicy::Master,
                data,
                now,
            );
            return Ok(());
        }
        if is("set") || is("resetstat") || is("rewrite") {
            if !self.proxy.config.settings.allow_admin_commands {
                return Err(codec::error(&format!(
                    "ERR CONFIG {} would change every node of the cluster: the proxy refuses it unless settings.allow_admin_commands is true",
                    String::from_utf8_lossy(sub).to_ascii_uppercase()
                )));
            }
            let nodes = self.all_nodes(cluster)?;
            let seq = self.push_slot();
            self.gathers
                .insert(seq, Gather::new(Merge::AllOk, nodes.len()));
            for (i, addr) in nodes.into_iter().enumerate() {
                let target = Target::Node {
                    addr,
                    slot: 0,
                    asking: false,
                };
                let part = data.clone();
                self.send(
                    seq,
                    i as u32,
                    cluster,
                    &[],
                    target,
                    ReadPolicy::Master,
                    part,
                    now,
                );
            }
            return Ok(());
        }
        let seq = self.push_slot();
        self.send(
            seq,
            WHOLE,
            cluster,
            &[],
            Target::AnyMaster,
            ReadPolicy::Master,
            data,
            now,
        );
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
