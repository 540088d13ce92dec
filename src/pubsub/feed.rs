//! A subscriber's messages on their way to it: framed for its protocol,
//! held while the client cannot take them, up to a byte budget.
//!
//! The hub frames a run of messages once for every subscriber that sees
//! them the same way (protocol, name as subscribed) and hands each of
//! those subscribers the same shared chunk: fanning a run out to 10,000
//! subscribers costs 10,000 reference counts, not 10,000 copies. The budget
//! still counts every chunk in full for every subscriber holding it, as
//! Redis's `client-output-buffer-limit pubsub` counts each client's output.

use crate::upstream::ClientShared;
use parking_lot::Mutex;
use std::sync::Arc;

/// Framed messages shared by the subscribers that see them alike.
pub type Chunk = Arc<[u8]>;

/// A subscriber's pending output: messages wait here until the session
/// writes them (between its replies), up to a byte budget.
pub struct Feed {
    inner: Mutex<FeedInner>,
    pub(super) client: Arc<ClientShared>,
}

struct FeedInner {
    chunks: Vec<Chunk>,
    /// Bytes in `chunks`.
    queued: usize,
    resp3: bool,
    limit: usize,
    /// Over budget: the session closes the client.
    over: bool,
}

/// What [`Feed::take_upto`] found.
pub enum Taken {
    /// The messages queued, in order (none: nothing queued).
    Chunks(Vec<Chunk>),
    /// The client fell more than its budget behind.
    Overflow,
}

#[cfg(test)]
impl Taken {
    /// Everything taken as one buffer (`None` after an overflow).
    pub fn concat(&self) -> Option<Vec<u8>> {
        match self {
            Taken::Chunks(c) => Some(c.concat()),
            Taken::Overflow => None,
        }
    }
}

impl Feed {
    pub fn new(client: Arc<ClientShared>, resp3: bool, limit: usize) -> Arc<Feed> {
        Arc::new(Feed {
            inner: Mutex::new(FeedInner {
                chunks: Vec::new(),
                queued: 0,
                resp3,
                limit,
                over: false,
            }),
            client,
        })
    }

    pub fn set_resp3(&self, on: bool) {
        self.inner.lock().resp3 = on;
    }

    /// The protocol messages are framed in for this client now.
    pub(super) fn resp3(&self) -> bool {
        self.inner.lock().resp3
    }

    /// Queue framed messages; false when the client is (now) over its
    /// budget.
    pub(super) fn push(&self, chunk: &Chunk) -> bool {
        let mut f = self.inner.lock();
        if f.over {
            return false;
        }
        f.queued += chunk.len();
        if f.queued > f.limit && !chunk.is_empty() {
            f.over = true;
            f.chunks = Vec::new();
            f.queued = 0;
        } else {
            f.chunks.push(chunk.clone());
        }
        drop(f);
        self.client.wake();
        true
    }

    /// Everything queued.
    #[cfg(test)]
    pub fn take(&self) -> Taken {
        self.take_upto(usize::MAX)
    }

    /// The oldest chunks queued, until they reach `bytes` (whole chunks:
    /// the last may pass it); the rest stays queued.
    pub fn take_upto(&self, bytes: usize) -> Taken {
        let mut f = self.inner.lock();
        if f.over {
            return Taken::Overflow;
        }
        if f.queued <= bytes {
            f.queued = 0;
            return Taken::Chunks(std::mem::take(&mut f.chunks));
        }
        let mut n = 0;
        let mut size = 0;
        while size < bytes && n < f.chunks.len() {
            size += f.chunks[n].len();
            n += 1;
        }
        f.queued -= size;
        Taken::Chunks(f.chunks.drain(..n).collect())
    }

    /// The client fell more than its budget behind.
    pub fn overflowed(&self) -> bool {
        self.inner.lock().over
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Notify;

    struct Quiet;
    impl Notify for Quiet {
        fn notify(&self) {}
    }

    #[test]
    fn chunks_are_shared_and_counted_against_each_budget() {
        let a = Feed::new(ClientShared::new(Box::new(Quiet)), false, 10);
        let b = Feed::new(ClientShared::new(Box::new(Quiet)), false, 100);
        let chunk: Chunk = Arc::from(&b"0123456"[..]);
        for f in [&a, &b] {
            assert!(f.push(&chunk));
        }
        assert_eq!(Arc::strong_count(&chunk), 3, "shared, not copied");
        // A second chunk puts `a` over its 10 bytes; `b` has room.
        assert!(a.push(&chunk), "the push that overflows still counts");
        assert!(!a.push(&chunk), "over: nothing more is queued");
        assert!(b.push(&chunk));
        assert!(a.overflowed() && matches!(a.take(), Taken::Overflow));
        assert!(b.push(&chunk));
        assert_eq!(
            b.take_upto(8).concat().as_deref(),
            Some(&b"01234560123456"[..]),
            "whole chunks until 8 bytes are reached"
        );
        assert_eq!(b.take_upto(8).concat().as_deref(), Some(&b"0123456"[..]));
        assert_eq!(b.take().concat().as_deref(), Some(&b""[..]), "taken");
    }
}
