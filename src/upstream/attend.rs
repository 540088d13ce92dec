//! The connections a client owns (a transaction's, a blocked command's, a
//! node `MONITOR`'s), looked at when their client leaves or asks to
//! unblock: the client's session tells the worker which ones
//! ([`ClientShared::watch`]), so no tick walks them all.

use super::blocking::NodeId;
use super::{ClientShared, UpstreamIo};
use std::sync::Arc;
use std::time::Instant;

impl UpstreamIo {
    /// Connection `idx` is `client`'s own until it closes or
    /// [`Self::clear_owner`].
    pub(super) fn set_owner(&mut self, idx: usize, client: &Arc<ClientShared>) {
        let Some(c) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if let Some(old) = c.owner.replace(client.clone()) {
            if !Arc::ptr_eq(&old, client) {
                old.unwatch(idx);
            }
        }
        if client.watch(&self.desk, idx) {
            self.attend.push(idx);
        }
    }

    /// Connection `idx` belongs to no client any more (back in a pool).
    pub(super) fn clear_owner(&mut self, idx: usize) {
        if let Some(o) = self
            .conns
            .get_mut(idx)
            .and_then(|c| c.as_mut())
            .and_then(|c| c.owner.take())
        {
            o.unwatch(idx);
        }
    }

    /// Connection `idx` was closed (it is out of `conns` already): forget
    /// what the clock and its owner held about it.
    pub(super) fn forget_conn(&mut self, idx: usize, owner: Option<&Arc<ClientShared>>) {
        if let Some(o) = owner {
            o.unwatch(idx);
        }
        self.blocked_until.cancel(idx);
        self.unblock_recheck.cancel(idx);
    }

    /// The connections named since the last tick: close those whose
    /// client left (the node drops a transaction's state, unblocks a
    /// blocked command, ends a `MONITOR`), and unblock on their node the
    /// blocked commands whose client asked.
    pub(super) fn attend_named(&mut self, now: Instant) {
        let mut named = std::mem::take(&mut self.attend);
        self.desk.take(&mut named);
        named.sort_unstable();
        named.dedup();
        let mut close = Vec::new();
        for idx in named {
            let Some(c) = self.conns.get(idx).and_then(|c| c.as_ref()) else {
                continue;
            };
            let Some(owner) = c.owner.as_ref() else {
                continue;
            };
            if owner.is_detached() {
                close.push(idx);
            } else if c.is_blocking() {
                self.unblock_if_asked(idx, now);
            }
        }
        for idx in close {
            self.close_pinned(idx);
        }
    }

    /// Blocking connection `idx` learnt its id on the node: an unblock
    /// asked for meanwhile can go now.
    pub(super) fn node_id_known(&mut self, idx: usize) {
        let wanted = self
            .conns
            .get(idx)
            .and_then(|c| c.as_ref())
            .filter(|c| c.node_id != NodeId::Asked)
            .and_then(|c| c.owner.as_ref())
            .is_some();
        if wanted {
            self.attend.push(idx);
        }
    }
}
