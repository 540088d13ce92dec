//! A subscriber's messages on their way to it: framed for its protocol,
//! held while the client cannot take them, up to a byte budget.

use super::{message, Kind, Message};
use crate::upstream::ClientShared;
use parking_lot::Mutex;
use std::sync::Arc;

/// A subscriber's pending output: messages wait here until the session
/// writes them (between its replies), up to a byte budget.
pub struct Feed {
    inner: Mutex<FeedInner>,
    pub(super) client: Arc<ClientShared>,
}

struct FeedInner {
    out: Vec<u8>,
    resp3: bool,
    limit: usize,
    /// Over budget: the session closes the client.
    over: bool,
}

/// What [`Feed::take`] found.
pub enum Taken {
    Bytes(Vec<u8>),
    /// The client fell more than its budget behind.
    Overflow,
}

impl Feed {
    pub fn new(client: Arc<ClientShared>, resp3: bool, limit: usize) -> Arc<Feed> {
        Arc::new(Feed {
            inner: Mutex::new(FeedInner {
                out: Vec::new(),
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

    /// Queue a message; false when the client is (now) over its budget.
    pub(super) fn push(&self, msg: &Message<'_>, visible: &[u8]) -> bool {
        let mut f = self.inner.lock();
        if f.over {
            return false;
        }
        let resp3 = f.resp3;
        let start = f.out.len();
        match msg.kind {
            Kind::Pattern => message(&mut f.out, resp3, msg, Some(visible)),
            _ => {
                let m = Message {
                    channel: visible,
                    ..*msg
                };
                message(&mut f.out, resp3, &m, None)
            }
        }
        if f.out.len() > f.limit && f.out.len() > start {
            f.over = true;
            f.out = Vec::new();
        }
        drop(f);
        self.client.wake();
        true
    }

    /// Everything queued.
    pub fn take(&self) -> Taken {
        let mut f = self.inner.lock();
        if f.over {
            return Taken::Overflow;
        }
        Taken::Bytes(std::mem::take(&mut f.out))
    }

    /// The client fell more than its budget behind.
    pub fn overflowed(&self) -> bool {
        self.inner.lock().over
    }
}
