//! Script bodies the proxy has seen, by SHA1, so an `EVALSHA` that reaches a
//! master without the script can still run.
//!
//! Redis keeps a script cache per node. Through the proxy, `EVAL` runs on
//! the master of its keys' slot (keyless: a fixed master) and loads the
//! script there only, while `SCRIPT LOAD` goes to every master. An
//! `EVALSHA` for another slot, or sent after a failover promoted a replica
//! (replicas do not get `EVAL`'s cache), would answer `NOSCRIPT` although
//! the client saw the script run. The sessions remember every body they
//! forward (`EVAL`, `EVAL_RO`, `SCRIPT LOAD`); on `NOSCRIPT` the upstream
//! loop loads the body on that node and sends the `EVALSHA` once more.
//! Scripts the proxy never saw (loaded on a node directly, or through
//! another proxy) still get `NOSCRIPT`, as client libraries expect, and so
//! do scripts sent before a `SCRIPT FLUSH` through the proxy.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Most bytes of script bodies kept; past it the cache starts over (the
/// cost of forgetting is one `NOSCRIPT` passed to the client).
const MAX_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct ScriptCache {
    inner: Mutex<Inner>,
    /// Bumped whenever bodies are forgotten, so a session that skips
    /// `remember` for the body it sent last knows to send it again.
    generation: AtomicU64,
}

#[derive(Default)]
struct Inner {
    by_sha: HashMap<[u8; 40], Arc<[u8]>>,
    bytes: usize,
}

/// Lower-case hex SHA1 of a script body, as Redis names scripts.
pub fn sha1_hex(body: &[u8]) -> [u8; 40] {
    let digest = sha1_smol::Sha1::from(body).digest().bytes();
    let mut out = [0u8; 40];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

fn key(sha: &[u8]) -> Option<[u8; 40]> {
    let mut k = [0u8; 40];
    if sha.len() != 40 {
        return None;
    }
    for (d, s) in k.iter_mut().zip(sha) {
        *d = s.to_ascii_lowercase();
    }
    Some(k)
}

impl ScriptCache {
    /// Remember a body the proxy forwards.
    pub fn remember(&self, body: &[u8]) {
        let sha = sha1_hex(body);
        let mut inner = self.inner.lock();
        if inner.by_sha.contains_key(&sha) {
            return;
        }
        if inner.bytes + body.len() > MAX_BYTES {
            inner.by_sha.clear();
            inner.bytes = 0;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        inner.bytes += body.len();
        inner.by_sha.insert(sha, Arc::from(body));
    }

    /// Forget every body (`SCRIPT FLUSH`: the nodes forget theirs, and a
    /// later `EVALSHA` must get `NOSCRIPT` as from one Redis).
    pub fn flush(&self) {
        let mut inner = self.inner.lock();
        inner.by_sha.clear();
        inner.bytes = 0;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes whenever bodies were forgotten.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The body of script `sha` (any case), if the proxy has seen it.
    pub fn body(&self, sha: &[u8]) -> Option<Arc<[u8]>> {
        let k = key(sha)?;
        self.inner.lock().by_sha.get(&k).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_scripts_as_redis_does() {
        // redis-cli script load "return 1+1"
        assert_eq!(
            &sha1_hex(b"return 1+1"),
            b"a27e7e8a43702b7046d4f6a7ccf5b60cef6b9bd9"
        );
    }

    #[test]
    fn finds_bodies_by_sha_in_any_case() {
        let c = ScriptCache::default();
        c.remember(b"return 1+1");
        assert_eq!(
            c.body(b"A27E7E8A43702B7046D4F6A7CCF5B60CEF6B9BD9")
                .as_deref(),
            Some(&b"return 1+1"[..])
        );
        assert!(c
            .body(b"a27e7e8a43702b7046d4f6a7ccf5b60cef6b9bd8")
            .is_none());
        assert!(c.body(b"short").is_none());
    }

    #[test]
    fn flush_forgets_and_moves_the_generation() {
        let c = ScriptCache::default();
        c.remember(b"return 1+1");
        let g = c.generation();
        c.flush();
        assert!(c.body(&sha1_hex(b"return 1+1")).is_none());
        assert_ne!(c.generation(), g);
    }

    #[test]
    fn stays_bounded() {
        let c = ScriptCache::default();
        let big = vec![b'x'; MAX_BYTES / 2 + 1];
        c.remember(&big);
        c.remember(b"return 1");
        let mut other = big.clone();
        other[0] = b'y';
        let g = c.generation();
        c.remember(&other);
        assert_ne!(c.generation(), g, "starting over is forgetting");
        assert!(c.inner.lock().bytes <= MAX_BYTES);
        assert!(c.body(&sha1_hex(&other)).is_some());
    }
}
