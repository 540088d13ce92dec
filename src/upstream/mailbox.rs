//! A client's mailbox: where a node's replies wait for the client's worker.

use crate::clients::UnblockMode;
use parking_lot::Mutex;
use std::sync::Arc;

/// Tells a client that its mailbox has replies (in Envoy: marks it for
/// writing on its own worker, which matched the reply; in tests: a counter
/// or nothing).
pub trait Notify: Send + Sync {
    fn notify(&self);
}

/// A node's reply to (part of) a client command.
pub struct Delivery {
    pub seq: u64,
    /// Which part of the client's command this reply answers.
    pub part: Part,
    pub reply: Vec<u8>,
}

/// The part number of a command that was not split.
pub const WHOLE: Part = Part::Whole;

/// What a request is to the session that sent it; the upstream I/O only carries it
/// back with the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The client's whole command.
    Whole,
    /// Part `i` of a command the session split (MGET across slots, …).
    Split(u32),
    /// A request the session sends to learn when it may go on (e.g. a
    /// `PING` that waits for a topology with masters).
    Probe,
    /// A request whose reply nobody waits for (the `UNWATCH` that releases
    /// a transaction's connection).
    Discard,
    /// `WATCH` or a command inside `MULTI`, on a transaction's connection:
    /// the session reads the node's answer before passing it on.
    Queued,
    /// A transaction's `EXEC`, on its connection.
    Exec,
}

/// The part of a client connection the upstream I/O touches.
pub struct ClientShared {
    mailbox: Mutex<Mailbox>,
    /// Unblock this client's blocking command on its node (it closed its
    /// sending side, or `CLIENT UNBLOCK`): what it got is still delivered.
    cancel_blocking: Mutex<Option<UnblockMode>>,
    /// The upstream connections this client owns (pinned, blocking,
    /// streaming) and the worker desk to tell when it leaves or asks to
    /// unblock: the worker then looks at those, not at every connection.
    owned: Mutex<Owned>,
}

#[derive(Default)]
struct Owned {
    desk: Option<Arc<Attention>>,
    conns: Vec<usize>,
}

/// Where a worker hears which of its connections need a look now (their
/// client left, or asked to unblock), from the clients' sessions.
pub(super) struct Attention {
    conns: Mutex<Vec<usize>>,
    /// Wakes the worker to look (a no-op once it is gone).
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Attention {
    pub(super) fn new(wake: Box<dyn Fn() + Send + Sync>) -> Attention {
        Attention {
            conns: Mutex::default(),
            wake,
        }
    }

    /// Connections named since the last call, appended to `out` (one may
    /// be named more than once).
    pub(super) fn take(&self, out: &mut Vec<usize>) {
        out.append(&mut self.conns.lock());
    }

    pub(super) fn is_empty(&self) -> bool {
        self.conns.lock().is_empty()
    }
}

struct Mailbox {
    replies: Vec<Delivery>,
    /// `None` once the client is gone: replies are then dropped.
    notifier: Option<Box<dyn Notify>>,
    /// A notify is outstanding; coalesces wake-ups to one per burst.
    pending: bool,
}

impl ClientShared {
    pub fn new(notifier: Box<dyn Notify>) -> Arc<Self> {
        Arc::new(ClientShared {
            mailbox: Mutex::new(Mailbox {
                replies: Vec::new(),
                notifier: Some(notifier),
                pending: false,
            }),
            cancel_blocking: Mutex::new(None),
            owned: Mutex::default(),
        })
    }

    /// Hand the reply for part `part` of command `seq` to the client's worker.
    pub fn deliver(&self, seq: u64, part: Part, reply: Vec<u8>) {
        let mut mb = self.mailbox.lock();
        let Some(notifier) = mb.notifier.as_ref() else {
            return;
        };
        let first = !mb.pending;
        if first {
            notifier.notify();
        }
        mb.pending = true;
        mb.replies.push(Delivery { seq, part, reply });
    }

    /// Run the client's session soon with nothing delivered (a pause
    /// ended, the client was killed).
    pub fn wake(&self) {
        let mut mb = self.mailbox.lock();
        if let (Some(n), false) = (mb.notifier.as_ref(), mb.pending) {
            n.notify();
            mb.pending = true;
        }
    }

    /// Take every delivered reply (worker side).
    pub fn take(&self, out: &mut Vec<Delivery>) {
        let mut mb = self.mailbox.lock();
        mb.pending = false;
        if out.is_empty() {
            std::mem::swap(out, &mut mb.replies);
        } else {
            out.append(&mut mb.replies);
        }
    }

    /// The client is gone: drop the notifier (Envoy's scheduler) under the
    /// lock, so nothing can use it afterwards.
    pub fn detach(&self) {
        let notifier = {
            let mut mb = self.mailbox.lock();
            mb.replies.clear();
            mb.notifier.take()
        };
        drop(notifier);
        self.tell_desk();
    }

    pub fn is_detached(&self) -> bool {
        self.mailbox.lock().notifier.is_none()
    }

    /// Ask the upstream to unblock this client's blocking command on its
    /// node (see `blocking`); its reply, a pop or the timeout's nil, still
    /// comes.
    pub fn cancel_blocking(&self, mode: UnblockMode) {
        *self.cancel_blocking.lock() = Some(mode);
        self.tell_desk();
    }

    /// The upstream connections this client owns need a look.
    fn tell_desk(&self) {
        let desk = {
            let owned = self.owned.lock();
            match &owned.desk {
                Some(d) if !owned.conns.is_empty() => {
                    d.conns.lock().extend_from_slice(&owned.conns);
                    d.clone()
                }
                _ => return,
            }
        };
        // Outside the lock: the wake may run the worker's tick right here.
        (desk.wake)();
    }

    /// Connection `idx` of the worker behind `desk` is this client's now.
    /// True when it needs a look already (the client left, or asked to
    /// unblock, before it had the connection).
    pub(super) fn watch(&self, desk: &Arc<Attention>, idx: usize) -> bool {
        {
            let mut owned = self.owned.lock();
            owned.desk = Some(desk.clone());
            if !owned.conns.contains(&idx) {
                owned.conns.push(idx);
            }
        }
        self.is_detached() || self.cancel_blocking.lock().is_some()
    }

    /// Connection `idx` is no longer this client's (closed, or back in a
    /// pool).
    pub(super) fn unwatch(&self, idx: usize) {
        self.owned.lock().conns.retain(|&i| i != idx);
    }

    /// An unblock asked for and not yet sent (taken by the upstream).
    pub(super) fn take_cancel(&self) -> Option<UnblockMode> {
        self.cancel_blocking.lock().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(Arc<AtomicUsize>);

    impl Notify for Count {
        fn notify(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mailbox() -> (Arc<ClientShared>, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        (ClientShared::new(Box::new(Count(n.clone()))), n)
    }

    #[test]
    fn one_notify_per_burst_and_replies_in_delivery_order() {
        let (c, n) = mailbox();
        c.deliver(2, Part::Whole, b"+b\r\n".to_vec());
        c.deliver(1, Part::Split(0), b"+a\r\n".to_vec());
        assert_eq!(n.load(Ordering::Relaxed), 1, "coalesced until taken");
        let mut out = Vec::new();
        c.take(&mut out);
        let got: Vec<(u64, Part)> = out.iter().map(|d| (d.seq, d.part)).collect();
        assert_eq!(got, vec![(2, Part::Whole), (1, Part::Split(0))]);
        c.deliver(3, WHOLE, b"+c\r\n".to_vec());
        assert_eq!(n.load(Ordering::Relaxed), 2, "a new burst after take");
    }

    #[test]
    fn take_appends_to_what_the_caller_still_holds() {
        let (c, _) = mailbox();
        c.deliver(1, WHOLE, b"+1\r\n".to_vec());
        let mut out = Vec::new();
        c.take(&mut out);
        c.deliver(2, WHOLE, b"+2\r\n".to_vec());
        c.take(&mut out);
        assert_eq!(out.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1, 2]);
    }

    fn desk() -> (Arc<Attention>, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let w = n.clone();
        let wake = move || {
            w.fetch_add(1, Ordering::Relaxed);
        };
        (Arc::new(Attention::new(Box::new(wake))), n)
    }

    fn named(d: &Attention) -> Vec<usize> {
        let mut out = Vec::new();
        d.take(&mut out);
        out
    }

    #[test]
    fn leaving_names_the_connections_the_client_owns_and_wakes_the_worker() {
        let (d, woken) = desk();
        let (c, _) = mailbox();
        assert!(!c.watch(&d, 4), "nothing to look at yet");
        assert!(!c.watch(&d, 9));
        assert!(!c.watch(&d, 4));
        c.unwatch(9);
        assert!(d.is_empty());
        c.detach();
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        assert_eq!(named(&d), vec![4], "each owned connection once");
        assert!(d.is_empty());
    }

    #[test]
    fn an_unblock_names_them_too_and_owning_nothing_wakes_no_one() {
        let (d, woken) = desk();
        let (idle, _) = mailbox();
        idle.cancel_blocking(UnblockMode::Error);
        idle.detach();
        assert_eq!(woken.load(Ordering::Relaxed), 0, "never owned a connection");
        let (c, _) = mailbox();
        c.watch(&d, 2);
        c.cancel_blocking(UnblockMode::Timeout);
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        assert_eq!(named(&d), vec![2]);
    }

    #[test]
    fn a_connection_taken_after_the_client_left_or_asked_needs_a_look_at_once() {
        let (d, _) = desk();
        let (gone, _) = mailbox();
        gone.detach();
        assert!(gone.watch(&d, 1));
        let (asked, _) = mailbox();
        asked.cancel_blocking(UnblockMode::Timeout);
        assert!(asked.watch(&d, 2));
        assert_eq!(asked.take_cancel(), Some(UnblockMode::Timeout));
        assert!(!asked.watch(&d, 3), "the unblock was sent");
    }

    #[test]
    fn a_detached_client_gets_nothing_and_nobody_is_woken() {
        let (c, n) = mailbox();
        c.deliver(1, WHOLE, b"+1\r\n".to_vec());
        c.detach();
        assert!(c.is_detached());
        c.deliver(2, WHOLE, b"+2\r\n".to_vec());
        let mut out = Vec::new();
        c.take(&mut out);
        assert!(out.is_empty(), "pending replies dropped with the client");
        assert_eq!(n.load(Ordering::Relaxed), 1);
    }
}
