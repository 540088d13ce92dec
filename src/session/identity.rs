//! Who a client is towards the nodes.
//!
//! With `downstream_auth_passwords` set, the proxy authenticates its clients
//! itself and every command runs upstream as the cluster's configured user
//! (`clusters.<name>.auth_username`/`auth_password`), as before.
//!
//! Without it, `AUTH [user] pass` and `HELLO … AUTH user pass` are checked
//! by the cluster: the client's own `AUTH` runs on a new connection that
//! first authenticated as that user (to a master of the default cluster),
//! and only a `+OK` makes the client that user. From then on its commands
//! travel on connections authenticated as it (the shared pool is keyed by
//! user: `upstream/identity.rs`), so the nodes apply that user's ACL rules,
//! `redis.acl_check_cmd` included; a refusal leaves the client as it was.
//! Commands after the `AUTH` wait for its answer, so none runs as the wrong
//! user. `RESET` makes the client the default user again.
//!
//! A client never gets more than it proved: its commands either run as the
//! user whose password the node accepted, or fail with the node's error
//! (a user deleted or re-passworded since: its new connections are refused).

use super::{route::no_route, Session, WHOLE};
use crate::codec;
use crate::local;
use crate::upstream::{Credentials, Request, Target};
use std::sync::Arc;
use std::time::Instant;

/// A client's `AUTH` (or `HELLO … AUTH`) on its way to the cluster.
pub(super) struct PendingAuth {
    seq: u64,
    user: Arc<Credentials>,
    /// The `HELLO` to answer once the user is accepted.
    hello: Option<Vec<Vec<u8>>>,
}

/// `HELLO`'s `AUTH user pass`, if any.
fn hello_credentials(args: &[&[u8]]) -> Option<Credentials> {
    let i = args
        .iter()
        .skip(2)
        .position(|a| a.eq_ignore_ascii_case(b"auth"))?
        + 2;
    Some(Credentials::new(args.get(i + 1)?, args.get(i + 2)?))
}

impl Session {
    /// Whether clients authenticate against the cluster (the proxy has no
    /// downstream auth of its own).
    pub(super) fn cluster_auth(&self) -> bool {
        !self.proxy.auth().required()
    }

    /// `AUTH [user] pass`.
    pub(super) fn auth(&mut self, args: &[&[u8]], now: Instant) {
        if !self.cluster_auth() {
            let reply = local::auth(&mut self.state, &self.proxy.auth(), args);
            return self.reply_now(reply);
        }
        let user = match args {
            [_, pass] => Credentials::new(b"default", pass),
            [_, user, pass] => Credentials::new(user, pass),
            _ => return self.reply_now(codec::error("ERR syntax error")),
        };
        self.verify(user, codec::command(args), None, now);
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    pub(super) fn hello(&mut self, args: &[&[u8]], now: Instant) {
        let creds = hello_credentials(args).filter(|_| self.cluster_auth());
        let Some(user) = creds else {
            let reply = local::hello(&mut self.state, &self.proxy.auth(), args);
            return self.reply_now(reply);
        };
        // Redis refuses a bad version or option before checking the user.
        let mut trial = self.state.clone();
        let reply = local::hello(&mut trial, &self.proxy.auth(), args);
        if codec::error_text(&reply).is_some() {
            return self.reply_now(reply);
        }
        let data = codec::command(&[b"AUTH", user.user(), user.pass()]);
        let hello = args.iter().map(|a| a.to_vec()).collect();
        self.verify(user, data, Some(hello), now);
    }

    /// Send `data` (an `AUTH`) as `user`; later commands wait for it.
    fn verify(
        &mut self,
        user: Credentials,
        data: Vec<u8>,
        hello: Option<Vec<Vec<u8>>>,
        now: Instant,
    ) {
        let Some(cluster) = self.proxy.default_cluster() else {
            return self.reply_now(no_route());
        };
        let user = Arc::new(user);
        let seq = self.push_slot();
        let req = Request::new(
            self.client.clone(),
            seq,
            WHOLE,
            cluster,
            Target::AnyMaster,
            data,
            self.deadline_from(now),
        )
        .user(Some(user.clone()));
        self.batch.push(req);
        self.pending_auth = Some(PendingAuth { seq, user, hello });
        self.barrier = Some(seq);
    }

    /// The reply to command `seq`, which may be the cluster's answer to a
    /// pending `AUTH`: accepted, the client is that user from now on.
    pub(super) fn auth_answered(&mut self, seq: u64, reply: Vec<u8>) -> Vec<u8> {
        if self.pending_auth.as_ref().map(|p| p.seq) != Some(seq) {
            return reply;
        }
        let Some(pending) = self.pending_auth.take() else {
            return reply;
        };
        if reply != b"+OK\r\n" {
            return reply;
        }
        self.user = self.upstream_user(pending.user);
        self.state.authenticated = true;
        match pending.hello {
            Some(args) => {
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                local::hello(&mut self.state, &self.proxy.auth(), &args)
            }
            None => reply,
        }
    }

    /// The connections `user` needs: the proxy's own when they already are
    /// that user (`default`, when no cluster has credentials configured).
    fn upstream_user(&self, user: Arc<Credentials>) -> Option<Arc<Credentials>> {
        let proxy_is_default = (self.proxy.config.clusters.values())
            .all(|c| c.auth_password.is_none() && c.auth_username.is_none());
        if proxy_is_default && user.user() == b"default" {
            None
        } else {
            Some(user)
        }
    }

    /// The Redis user this client's commands run as, if not the proxy's.
    pub(super) fn client_user(&self) -> Option<&[u8]> {
        self.user.as_deref().map(Credentials::user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_auth_is_found_after_the_version() {
        let args: Vec<&[u8]> = vec![b"HELLO", b"3", b"auth", b"bob", b"pw", b"SETNAME", b"x"];
        let c = hello_credentials(&args).unwrap();
        assert_eq!((c.user(), c.pass()), (&b"bob"[..], &b"pw"[..]));
        assert!(hello_credentials(&[b"HELLO", b"3"]).is_none());
        assert!(hello_credentials(&[b"HELLO", b"3", b"AUTH", b"bob"]).is_none());
    }

    fn user_of(r: &Request) -> Option<String> {
        r.run_as()
            .map(|u| String::from_utf8_lossy(u.user()).into_owned())
    }

    /// Commands after an `AUTH` wait for the cluster's answer; a refusal
    /// changes nothing, a `+OK` makes them run as the user, `RESET` ends it,
    /// and `default` with no credentials configured needs no connections
    /// of its own.
    #[test]
    fn auth_is_the_clusters_and_decides_who_later_commands_run_as() {
        use crate::session::tests::{recorded, reply, Client};
        let cfg = r#"{"settings":{"op_timeout":"2s"},
            "clusters":{"main":{"seeds":["127.0.0.1:7000"]}},
            "prefix_routes":{"catch_all_route":{"cluster":"main"}}}"#;
        let (mut s, _, rec, _) = recorded(cfg);
        let mut c = Client::default();
        let wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
        s.on_data(b"AUTH bob bad\r\nGET k\r\n", &mut c);
        let reqs = rec.take();
        assert_eq!(reqs.len(), 1, "GET waits for the AUTH's answer");
        assert_eq!(reqs[0].data, codec::command(&[b"AUTH", b"bob", b"bad"]));
        assert_eq!(user_of(&reqs[0]).as_deref(), Some("bob"));
        reply(&reqs[0], wrongpass);
        s.on_scheduled(&mut c);
        let reqs = rec.take();
        assert_eq!(user_of(&reqs[0]), None, "refused: the default user still");
        reply(&reqs[0], b"$-1\r\n");
        s.on_scheduled(&mut c);

        s.on_data(b"AUTH bob pw\r\nGET k\r\n", &mut c);
        let reqs = rec.take();
        assert_eq!(reqs.len(), 1);
        reply(&reqs[0], b"+OK\r\n");
        s.on_scheduled(&mut c);
        let reqs = rec.take();
        assert_eq!(user_of(&reqs[0]).as_deref(), Some("bob"));
        reply(&reqs[0], b"$1\r\nv\r\n");
        s.on_scheduled(&mut c);

        s.on_data(b"ACL WHOAMI\r\nRESET\r\nACL WHOAMI\r\nGET k\r\n", &mut c);
        let reqs = rec.take();
        assert_eq!(user_of(&reqs[0]), None, "RESET: the default user again");
        reply(&reqs[0], b"$-1\r\n");
        s.on_scheduled(&mut c);

        s.on_data(b"HELLO 3 AUTH default x\r\nGET k\r\n", &mut c);
        let reqs = rec.take();
        assert_eq!(reqs.len(), 1);
        assert_eq!(user_of(&reqs[0]).as_deref(), Some("default"));
        reply(&reqs[0], b"+OK\r\n");
        s.on_scheduled(&mut c);
        let reqs = rec.take();
        assert_eq!(
            user_of(&reqs[0]),
            None,
            "the proxy's connections are default"
        );
        assert!(s.state.resp3);
        let out = String::from_utf8(c.out).unwrap();
        let want = "-WRONGPASS invalid username-password pair or user is disabled.\r\n$-1\r\n\
                    +OK\r\n$1\r\nv\r\n$3\r\nbob\r\n+RESET\r\n$7\r\ndefault\r\n$-1\r\n%7\r\n";
        assert!(out.starts_with(want), "{out}");
    }
}
