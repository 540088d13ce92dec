//! The index of a worker's shared connections: one per node and purpose,
//! found by node address without allocating (it is looked up per command).

use super::{Credentials, Role};
use std::collections::HashMap;
use std::sync::Arc;

/// What a shared connection is for, besides its node: RESP3 clients,
/// replica reads and each client user (`AUTH`) get connections of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Purpose {
    pub cluster: usize,
    pub resp3: bool,
    pub role: Role,
    pub user: Option<Arc<Credentials>>,
}

/// Shared connections (their index in the worker's connection table) by
/// node address, then purpose (few per node).
#[derive(Default)]
pub(super) struct SharedConns {
    by_node: HashMap<String, Vec<(Purpose, usize)>>,
}

impl SharedConns {
    pub(super) fn get(&self, addr: &str, purpose: &Purpose) -> Option<usize> {
        let conns = self.by_node.get(addr)?;
        conns.iter().find(|(p, _)| p == purpose).map(|(_, i)| *i)
    }

    /// `idx` is now the connection for `addr` and `purpose`.
    pub(super) fn insert(&mut self, addr: &str, purpose: Purpose, idx: usize) {
        let conns = match self.by_node.get_mut(addr) {
            Some(c) => c,
            None => self.by_node.entry(addr.to_string()).or_default(),
        };
        match conns.iter_mut().find(|(p, _)| *p == purpose) {
            Some(entry) => entry.1 = idx,
            None => conns.push((purpose, idx)),
        }
    }

    pub(super) fn remove(&mut self, addr: &str, purpose: &Purpose) -> Option<usize> {
        let conns = self.by_node.get_mut(addr)?;
        let at = conns.iter().position(|(p, _)| p == purpose)?;
        let (_, idx) = conns.swap_remove(at);
        if conns.is_empty() {
            self.by_node.remove(addr);
        }
        Some(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cluster: usize, resp3: bool, role: Role) -> Purpose {
        Purpose {
            cluster,
            resp3,
            role,
            user: None,
        }
    }

    #[test]
    fn each_node_and_purpose_has_its_own_connection() {
        let mut s = SharedConns::default();
        s.insert("a:1", p(0, false, Role::Master), 3);
        s.insert("a:1", p(0, true, Role::Master), 4);
        s.insert("a:1", p(0, false, Role::ReplicaRead), 5);
        s.insert("a:1", p(1, false, Role::Master), 6);
        s.insert("b:1", p(0, false, Role::Master), 7);
        assert_eq!(s.get("a:1", &p(0, false, Role::Master)), Some(3));
        assert_eq!(s.get("a:1", &p(0, true, Role::Master)), Some(4));
        assert_eq!(s.get("a:1", &p(0, false, Role::ReplicaRead)), Some(5));
        assert_eq!(s.get("a:1", &p(1, false, Role::Master)), Some(6));
        assert_eq!(s.get("b:1", &p(0, false, Role::Master)), Some(7));
        assert_eq!(s.get("b:1", &p(0, true, Role::Master)), None);
        assert_eq!(s.get("c:1", &p(0, false, Role::Master)), None);
    }

    #[test]
    fn insert_replaces_and_remove_forgets() {
        let mut s = SharedConns::default();
        s.insert("a:1", p(0, false, Role::Master), 3);
        s.insert("a:1", p(0, false, Role::Master), 9);
        assert_eq!(s.get("a:1", &p(0, false, Role::Master)), Some(9));
        s.insert("a:1", p(0, true, Role::Master), 4);
        assert_eq!(s.remove("a:1", &p(0, false, Role::Master)), Some(9));
        assert_eq!(s.remove("a:1", &p(0, false, Role::Master)), None);
        assert_eq!(s.get("a:1", &p(0, true, Role::Master)), Some(4));
        assert_eq!(s.remove("a:1", &p(0, true, Role::Master)), Some(4));
        assert!(s.by_node.is_empty(), "no empty entries left behind");
    }

    #[test]
    fn each_user_has_connections_of_its_own() {
        let mut s = SharedConns::default();
        let bob = Some(Arc::new(Credentials::new(b"bob", b"1")));
        let bob_other_pass = Some(Arc::new(Credentials::new(b"bob", b"2")));
        s.insert("a:1", p(0, false, Role::Master), 3);
        let as_bob = Purpose {
            user: bob.clone(),
            ..p(0, false, Role::Master)
        };
        s.insert("a:1", as_bob.clone(), 4);
        assert_eq!(s.get("a:1", &p(0, false, Role::Master)), Some(3));
        assert_eq!(s.get("a:1", &as_bob), Some(4));
        let other = Purpose {
            user: bob_other_pass,
            ..p(0, false, Role::Master)
        };
        assert_eq!(s.get("a:1", &other), None, "a password proves nothing else");
    }
}
