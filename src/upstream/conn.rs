//! A node connection: opening it (with its setup commands), and its socket
//! and TLS I/O.

use super::{pipeline::Pipeline, pool::Purpose, Conn, Credentials, Role, UpstreamIo, READONLY};
use crate::codec;
use crate::config::ClusterConfig;
use crate::envoy::Level;
use crate::log;
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Instant;

impl UpstreamIo {
    /// A new connection to `addr`, as `user` (a client's; `None`: the
    /// cluster's configured user), shared unless `pin`ned.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn connect(
        &mut self,
        cluster: usize,
        addr: &str,
        resp3: bool,
        user: Option<Arc<Credentials>>,
        role: Role,
        pin: Option<u64>,
        now: Instant,
    ) -> io::Result<usize> {
        let sa = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let mut stream = TcpStream::connect(sa)?;
        let _ = stream.set_nodelay(true);
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.registry.register(
            &mut stream,
            Token(idx + 1),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut conn = Conn {
            cluster,
            addr: addr.to_string(),
            resp3,
            auth_pending: user.is_some().then_some(0),
            user,
            role,
            pin,
            owner: None,
            blocking: false,
            node_id: super::blocking::NodeId::NotAsked,
            unblock_sent: false,
            unblock_answer: None,
            stream,
            connected: false,
            opened: now,
            pipe: Pipeline::default(),
            inbuf: Vec::new(),
            in_start: 0,
            framer: codec::ReplyFramer::default(),
            tls: None,
        };
        match self.clusters[cluster].topo.tls_session(addr) {
            Ok(t) => conn.tls = t.map(Box::new),
            Err(e) => {
                let _ = self.registry.deregister(&mut conn.stream);
                self.conns[idx] = None;
                self.free.push(idx);
                return Err(io::Error::other(e));
            }
        }
        let setup = setup_commands(
            &self.clusters[cluster].cfg,
            resp3,
            conn.user.as_deref(),
            role,
        );
        for (i, cmd) in setup.into_iter().enumerate() {
            conn.pipe.push_internal(&cmd);
            if i == 0 && conn.auth_pending.is_some() {
                // Nothing runs before the node has accepted the user.
                conn.pipe.hold_here();
            }
        }
        if pin.is_none() {
            self.shared.insert(addr, conn.purpose(), idx);
        }
        self.conns[idx] = Some(conn);
        // Connecting: the connect timeout applies.
        self.active.insert(idx);
        Ok(idx)
    }

    pub(super) fn on_writable(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if !conn.connected {
            match conn.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail_conn(idx, &format!("connect: {e}")),
            }
            match conn.stream.peer_addr() {
                Ok(_) => {
                    conn.connected = true;
                    let key = (conn.cluster, conn.addr.clone());
                    if self.down.remove(&key).is_some() {
                        log!(
                            Level::Info,
                            "redis_cluster: node {} is reachable again",
                            key.1
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail_conn(idx, &format!("connect: {e}")),
            }
        }
        self.flush(idx);
    }

    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for idx in &dirty {
            self.flush(*idx);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    pub(super) fn flush(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if !conn.connected {
            return;
        }
        if let Some(tls) = conn.tls.as_mut() {
            // Plaintext goes into the TLS session (which buffers it until
            // the handshake is done), records go out as the socket allows.
            let plain = conn.pipe.unwritten();
            if !plain.is_empty() {
                if let Err(e) = tls.writer().write_all(plain) {
                    return self.fail_conn(idx, &format!("tls write: {e}"));
                }
                let n = plain.len();
                conn.pipe.wrote(n);
            }
            while tls.wants_write() {
                match tls.write_tls(&mut conn.stream) {
                    Ok(0) => return self.fail_conn(idx, "write returned 0"),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return self.fail_conn(idx, &format!("write: {e}")),
                }
            }
            return;
        }
        while !conn.pipe.unwritten().is_empty() {
            match conn.stream.write(conn.pipe.unwritten()) {
                Ok(0) => return self.fail_conn(idx, "write returned 0"),
                Ok(n) => conn.pipe.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail_conn(idx, &format!("write: {e}")),
            }
        }
    }
}

/// What a new connection sends before any request, its replies consumed
/// by the connection: `HELLO 3` (with the credentials) for RESP3 clients,
/// else `AUTH` when configured, as the client's `user` when given (then
/// always first); then `READONLY` for replica reads only (see [`Role`]).
pub(super) fn setup_commands(
    cfg: &ClusterConfig,
    resp3: bool,
    user: Option<&Credentials>,
    role: Role,
) -> Vec<Vec<u8>> {
    let mut setup: Vec<&[u8]> = Vec::new();
    if let Some(u) = user {
        if resp3 {
            setup.extend_from_slice(&[b"HELLO", b"3"]);
        }
        setup.extend_from_slice(&[b"AUTH", u.user(), u.pass()]);
    } else if resp3 {
        setup.extend_from_slice(&[b"HELLO", b"3"]);
        if let Some(pass) = &cfg.auth_password {
            let user = cfg.auth_username.as_deref().unwrap_or("default");
            setup.extend_from_slice(&[b"AUTH", user.as_bytes(), pass.as_bytes()]);
        }
    } else if let Some(pass) = &cfg.auth_password {
        setup.push(b"AUTH");
        if let Some(u) = &cfg.auth_username {
            setup.push(u.as_bytes());
        }
        setup.push(pass.as_bytes());
    }
    let mut out = Vec::new();
    if !setup.is_empty() {
        out.push(codec::command(&setup));
    }
    if role == Role::ReplicaRead {
        out.push(READONLY.to_vec());
    }
    out
}

impl Conn {
    /// What this connection is for, as the shared pool knows it.
    pub(super) fn purpose(&self) -> Purpose {
        Purpose {
            cluster: self.cluster,
            resp3: self.resp3,
            role: self.role,
            user: self.user.clone(),
        }
    }

    /// Read what the socket has (until it would block: readiness is
    /// edge-triggered) into `inbuf`, as plaintext. Ok(true): TLS has
    /// records to send (handshake messages, alerts). Errors, including a
    /// close by the node, are returned as the reason to drop the connection.
    pub(super) fn read_available(&mut self, scratch: &mut [u8]) -> Result<bool, String> {
        if let Some(tls) = self.tls.as_mut() {
            read_tls(tls, &mut self.stream, &mut self.inbuf)?;
            return Ok(tls.wants_write());
        }
        // Read through one reusable buffer: growing `inbuf` by a zero-filled
        // 64 KiB per read cost a memset per reply burst.
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Err("closed by node".into()),
                Ok(n) => {
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    if n < scratch.len() {
                        return Ok(false);
                    }
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(false),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(format!("read: {e}")),
                },
            }
        }
    }
}

/// Read TLS records until the socket would block, appending plaintext to
/// `inbuf`. Errors (including a clean close by the node) are returned.
fn read_tls(
    tls: &mut rustls::ClientConnection,
    stream: &mut TcpStream,
    inbuf: &mut Vec<u8>,
) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match tls.read_tls(stream) {
            Ok(0) => return Err("closed by node".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
        tls.process_new_packets().map_err(|e| format!("tls: {e}"))?;
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => return Err("closed by node (TLS close_notify)".into()),
                Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("tls read: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(user: Option<&str>, pass: Option<&str>) -> ClusterConfig {
        let mut c = serde_json::json!({ "seeds": ["127.0.0.1:7000"] });
        if let Some(u) = user {
            c["auth_username"] = u.into();
        }
        if let Some(p) = pass {
            c["auth_password"] = p.into();
        }
        serde_json::from_value(c).unwrap()
    }

    #[test]
    fn a_plain_master_connection_sends_nothing_first() {
        assert!(setup_commands(&cluster(None, None), false, None, Role::Master).is_empty());
    }

    #[test]
    fn auth_with_and_without_a_user() {
        assert_eq!(
            setup_commands(&cluster(None, Some("pw")), false, None, Role::Master),
            vec![codec::command(&[b"AUTH", b"pw"])]
        );
        assert_eq!(
            setup_commands(&cluster(Some("u"), Some("pw")), false, None, Role::Master),
            vec![codec::command(&[b"AUTH", b"u", b"pw"])]
        );
    }

    #[test]
    fn resp3_says_hello_with_the_credentials_in_it() {
        assert_eq!(
            setup_commands(&cluster(None, None), true, None, Role::Master),
            vec![codec::command(&[b"HELLO", b"3"])]
        );
        assert_eq!(
            setup_commands(&cluster(None, Some("pw")), true, None, Role::Master),
            vec![codec::command(&[
                b"HELLO", b"3", b"AUTH", b"default", b"pw"
            ])]
        );
    }

    #[test]
    fn only_replica_reads_send_readonly_after_auth() {
        assert_eq!(
            setup_commands(&cluster(None, Some("pw")), false, None, Role::ReplicaRead),
            vec![codec::command(&[b"AUTH", b"pw"]), READONLY.to_vec()]
        );
        assert!(
            !setup_commands(&cluster(None, Some("pw")), true, None, Role::Master)
                .contains(&READONLY.to_vec())
        );
    }

    #[test]
    fn a_client_user_replaces_the_configured_one() {
        let bob = Credentials::new(b"bob", b"123");
        let cfg = cluster(Some("u"), Some("pw"));
        assert_eq!(
            setup_commands(&cfg, false, Some(&bob), Role::Master),
            vec![codec::command(&[b"AUTH", b"bob", b"123"])]
        );
        assert_eq!(
            setup_commands(&cfg, true, Some(&bob), Role::ReplicaRead),
            vec![
                codec::command(&[b"HELLO", b"3", b"AUTH", b"bob", b"123"]),
                READONLY.to_vec()
            ]
        );
    }
}
