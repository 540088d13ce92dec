//! What a node's reply, or a lost connection, means for the command that
//! was in flight: deliver it, follow a redirection, retry later, load a
//! missing script first, or send it again elsewhere. Pure decisions; the
//! worker acts on them.

use super::{Request, Target};
use crate::codec;
use crate::config::Settings;
use crate::scripts::ScriptCache;
use crate::topology::{self, Redirect};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The reply is the client's.
    Deliver,
    /// `NOSCRIPT` for a script the proxy knows: load it and retry.
    Reload(Arc<[u8]>),
    /// `MOVED` / `ASK`: send it where the node says.
    Redirect(Redirect),
    /// The command did not run (`TRYAGAIN`, `CLUSTERDOWN`, …): again after
    /// `delay`, after a topology refresh when `refresh`.
    Retry { refresh: bool, delay: Duration },
}

/// Decide what a node's reply (from `addr`) means for `req`.
pub fn classify(
    reply: &[u8],
    addr: &str,
    settings: &Settings,
    req: &Request,
    scripts: &ScriptCache,
) -> Outcome {
    let Some(err) = codec::error_text(reply) else {
        return Outcome::Deliver;
    };
    if settings.enable_redirection
        && req.redirects < settings.max_redirects
        && (err.starts_with(b"MOVED ") || err.starts_with(b"ASK "))
    {
        if let Some(r) = topology::parse_redirect(err, addr) {
            return Outcome::Redirect(r);
        }
    }
    if err.starts_with(b"NOSCRIPT") && !req.script_reloaded {
        if let Some(body) = evalsha_body(&req.data, scripts) {
            return Outcome::Reload(body);
        }
    }
    // The command did not run: safe to retry after a pause / a refresh.
    if req.blocking.is_some() && super::blocking::unblocked_by_role_change(err) {
        return Outcome::Retry {
            refresh: true,
            delay: Duration::from_millis(50),
        };
    }
    if err.starts_with(b"TRYAGAIN") {
        return Outcome::Retry {
            refresh: false,
            delay: Duration::from_millis(10),
        };
    }
    if err.starts_with(b"CLUSTERDOWN")
        || err.starts_with(b"MASTERDOWN")
        || err.starts_with(b"LOADING")
        || err.starts_with(b"READONLY")
    {
        return Outcome::Retry {
            refresh: true,
            delay: Duration::from_millis(50),
        };
    }
    Outcome::Deliver
}

/// The body of the script an `EVALSHA`/`EVALSHA_RO` request names, if the
/// proxy has seen it.
fn evalsha_body(data: &[u8], scripts: &ScriptCache) -> Option<Arc<[u8]>> {
    let mut args = Vec::new();
    codec::scan_request(data, &mut args).ok()?;
    let name = data.get(args.first()?.clone())?;
    if !(name.eq_ignore_ascii_case(b"evalsha") || name.eq_ignore_ascii_case(b"evalsha_ro")) {
        return None;
    }
    scripts.body(data.get(args.get(1)?.clone())?)
}

/// `req` after a redirection: aimed at the node named, one redirect more.
pub fn redirected(mut req: Request, r: Redirect) -> Request {
    req.redirects += 1;
    let read = req.target.is_read();
    req.target = match r {
        Redirect::Moved { slot, addr } => Target::Redirected {
            addr,
            slot,
            asking: false,
            read,
        },
        Redirect::Ask { slot, addr } => Target::Redirected {
            addr,
            slot,
            asking: true,
            read,
        },
    };
    req
}

/// Its connection broke before the reply: send `req` again (once a fresh
/// topology says where)? Commands that never reached the node whole and
/// reads and blocking commands always; writes that may have run only with
/// `retry_unanswered_writes` (at-least-once); a transaction's never.
pub fn resend_after_loss(req: &Request, reached_node: bool, settings: &Settings) -> bool {
    // A blocked command whose connection broke popped nothing it could
    // still deliver: it waits on the new owner.
    if req.blocking.is_some() {
        return true;
    }
    if req.pin.is_some() {
        return false;
    }
    !reached_node || req.target.is_read() || settings.retry_unanswered_writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ClientShared, Notify, WHOLE};
    use std::time::Instant;

    struct Quiet;
    impl Notify for Quiet {
        fn notify(&self) {}
    }

    fn req(data: &[u8], target: Target) -> Request {
        Request::new(
            ClientShared::new(Box::new(Quiet)),
            0,
            WHOLE,
            0,
            target,
            data.to_vec(),
            Instant::now(),
        )
    }

    fn write() -> Target {
        Target::Slot {
            slot: 1,
            read: false,
        }
    }

    fn settings() -> Settings {
        serde_json::from_str("{}").expect("defaults")
    }

    #[test]
    fn redirections_are_followed_within_max_redirects() {
        let s = settings();
        let scripts = ScriptCache::default();
        let mut r = req(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", write());
        let moved = b"-MOVED 3999 127.0.0.1:7002\r\n";
        let out = classify(moved, "127.0.0.1:7001", &s, &r, &scripts);
        let Outcome::Redirect(red) = out else {
            panic!("{out:?}")
        };
        let r2 = redirected(req(&r.data, write()), red);
        assert_eq!(
            r2.target,
            Target::Redirected {
                addr: "127.0.0.1:7002".into(),
                slot: 3999,
                asking: false,
                read: false,
            }
        );
        assert!(matches!(
            classify(b"-ASK 1 h:2\r\n", "h:1", &s, &r, &scripts),
            Outcome::Redirect(Redirect::Ask { .. })
        ));
        r.redirects = s.max_redirects;
        assert_eq!(classify(moved, "h:1", &s, &r, &scripts), Outcome::Deliver);
    }

    #[test]
    fn a_redirection_lasts_one_attempt_and_keeps_the_read_flag() {
        let s = settings();
        let scripts = ScriptCache::default();
        let read = Target::Slot {
            slot: 7,
            read: true,
        };
        let r = req(b"x", read.clone());
        let Outcome::Redirect(red) = classify(b"-MOVED 7 h:2\r\n", "h:1", &s, &r, &scripts) else {
            panic!("not a redirect")
        };
        let mut r2 = redirected(r, red);
        assert!(r2.target.is_read());
        assert!(resend_after_loss(&r2, true, &s), "still a read");
        // It had to wait (the named node died): the map decides again.
        r2.target.after_wait();
        assert_eq!(r2.target, read);
        let mut node = Target::Node {
            addr: "h:3".into(),
            slot: 0,
            asking: false,
        };
        node.after_wait();
        assert!(matches!(node, Target::Node { .. }), "a named node stays");
    }

    #[test]
    fn errors_that_mean_not_run_are_retried() {
        let s = settings();
        let scripts = ScriptCache::default();
        let r = req(b"x", write());
        assert!(matches!(
            classify(b"-TRYAGAIN x\r\n", "h:1", &s, &r, &scripts),
            Outcome::Retry { refresh: false, .. }
        ));
        for e in [
            "-CLUSTERDOWN x\r\n",
            "-LOADING x\r\n",
            "-READONLY x\r\n",
            "-MASTERDOWN x\r\n",
        ] {
            assert!(matches!(
                classify(e.as_bytes(), "h:1", &s, &r, &scripts),
                Outcome::Retry { refresh: true, .. }
            ));
        }
        assert_eq!(
            classify(b"-ERR nope\r\n", "h:1", &s, &r, &scripts),
            Outcome::Deliver
        );
        assert_eq!(
            classify(b"+OK\r\n", "h:1", &s, &r, &scripts),
            Outcome::Deliver
        );
    }

    #[test]
    fn noscript_reloads_a_known_script_once() {
        let s = settings();
        let scripts = ScriptCache::default();
        scripts.remember(b"return 1+1");
        let sha = "a27e7e8a43702b7046d4f6a7ccf5b60cef6b9bd9";
        let data = codec::command(&[b"EVALSHA", sha.as_bytes(), b"0"]);
        let mut r = req(&data, write());
        let out = classify(b"-NOSCRIPT x\r\n", "h:1", &s, &r, &scripts);
        assert_eq!(out, Outcome::Reload(Arc::from(&b"return 1+1"[..])));
        r.script_reloaded = true;
        assert_eq!(
            classify(b"-NOSCRIPT x\r\n", "h:1", &s, &r, &scripts),
            Outcome::Deliver
        );
        let unknown = codec::command(&[b"EVALSHA", &[b'f'; 40][..], b"0"]);
        let r = req(&unknown, write());
        assert_eq!(
            classify(b"-NOSCRIPT x\r\n", "h:1", &s, &r, &scripts),
            Outcome::Deliver
        );
    }

    #[test]
    fn what_is_resent_after_a_lost_connection() {
        let mut s = settings();
        let w = req(b"x", write());
        let rd = req(
            b"x",
            Target::Slot {
                slot: 1,
                read: true,
            },
        );
        assert!(resend_after_loss(&w, false, &s), "never reached the node");
        assert!(resend_after_loss(&rd, true, &s), "a read");
        assert!(
            resend_after_loss(&w, true, &s),
            "retry_unanswered_writes on"
        );
        s.retry_unanswered_writes = false;
        assert!(!resend_after_loss(&w, true, &s));
        let mut t = req(b"x", write());
        t.pin = Some(1);
        assert!(!resend_after_loss(&t, false, &s), "transactions never");
    }
}
