//! Connections that run as a client's own Redis user.
//!
//! Without downstream auth of its own, the proxy checks a client's `AUTH`
//! against the cluster, and from then on the client's commands travel on
//! connections that authenticated as that user (the shared ones keyed by
//! user too), so the nodes apply that user's ACL rules. Such a connection
//! writes nothing but its `AUTH` until the node has accepted it: commands
//! pipelined behind a refused `AUTH` would otherwise run as whoever the
//! connection was before (the node's `default` user). A refusal answers
//! every command waiting on the connection with the node's error.

use super::UpstreamIo;
use crate::envoy::Level;
use crate::log;
use std::fmt;

/// A user and password a client proved with `AUTH` (or `HELLO … AUTH`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    user: Vec<u8>,
    pass: Vec<u8>,
}

impl Credentials {
    pub fn new(user: &[u8], pass: &[u8]) -> Credentials {
        Credentials {
            user: user.to_vec(),
            pass: pass.to_vec(),
        }
    }

    pub fn user(&self) -> &[u8] {
        &self.user
    }

    pub fn pass(&self) -> &[u8] {
        &self.pass
    }
}

impl fmt::Debug for Credentials {
    // Never the password (logs, panics).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?})", String::from_utf8_lossy(&self.user))
    }
}

impl UpstreamIo {
    /// The node refused a connection's `AUTH` as a client's user: close it
    /// and answer what waits on it with the node's `error` (none of it was
    /// written: see [`super::pipeline::Pipeline::hold_here`]).
    pub(super) fn refuse_conn(&mut self, idx: usize, error: &[u8]) {
        let Some(mut conn) = self.take_conn(idx) else {
            return;
        };
        log!(
            Level::Debug,
            "redis_cluster: node {} refused AUTH as a client's user",
            conn.addr
        );
        for u in conn.pipe.unanswered() {
            u.req.respond(error.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials::new(b"bob", b"s3cret");
        let shown = format!("{c:?}");
        assert!(shown.contains("bob") && !shown.contains("s3cret"));
    }
}
