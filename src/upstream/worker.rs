//! The Envoy worker owns its upstream sockets.
//!
//! A session's `submit` routes and writes its requests to the node sockets
//! right away, on the worker. A helper thread per worker only waits: on the
//! sockets' readiness (mio, edge-triggered: the worker reads each ready
//! socket until it would block, so every new edge is a new event) and on a
//! clock tick while something has a deadline; each wake becomes one
//! scheduler event on the worker's anchor connection ([`super::wake`]). In
//! that event the worker reads every ready reply, matches it, and the
//! clients' replies are written by the caller (`src/envoy/hooks.rs`) to
//! each client's own connection, all on the worker thread.
//!
//! This design replaced a module thread per worker that did the I/O and
//! handed replies back through each client's scheduler (issue #14: the
//! worker doing it measured less CPU per command, README *Performance*).
//!
//! The upstream state sits behind a mutex that only the worker takes
//! (Envoy's config destroy drops it after every connection is gone), so it
//! is never contended; the helper touches only the wake state.

use super::mailbox::Attention;
use super::wake::{Ready, Wakes};
use super::{Notify, Request, SharedBusy, UpstreamIo};
use crate::config::Settings;
use crate::envoy::Level;
use crate::log;
use crate::scripts::ScriptCache;
use crate::stats::Stats;
use crate::topology_refresh::ClusterTopology;
use mio::{Events, Poll, Token, Waker};
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the helper checks deadlines while something waits on one.
const TICK: Duration = Duration::from_millis(5);
/// How long the helper sleeps when nothing waits: bounds how late the first
/// tick after the worker starts waiting on a deadline can be.
const IDLE_TICK: Duration = Duration::from_millis(25);
/// Idle ticks between two housekeeping wakes (every 250 ms: the timeouts
/// of blocked commands, which do not keep the helper ticking).
const IDLE_TICKS_PER_WAKE: u32 = 10;

/// The helper's poll token for [`HelperHandle::wake`] (sockets are
/// registered as their connection index + 1).
const WAKER: Token = Token(0);

/// What a worker's helper thread shares with the topology refreshers (a new
/// topology wakes it: parked requests may go) and with config destroy.
pub struct HelperHandle {
    waker: Waker,
    wake_pending: AtomicBool,
    stop: AtomicBool,
}

impl HelperHandle {
    /// Wake the helper (coalesced: one eventfd write per sleep).
    pub fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// Stop the helper thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// One Envoy worker's upstream connections and their helper thread.
pub struct WorkerIo {
    lp: Mutex<UpstreamIo>,
    busy: Arc<SharedBusy>,
    wakes: Arc<Mutex<Wakes<Box<dyn Notify>>>>,
    /// The upstream state has work with a deadline: the helper ticks.
    ticking: Arc<AtomicBool>,
}

impl WorkerIo {
    /// The worker's upstream state and its helper thread (started).
    pub fn start(
        worker: usize,
        settings: Settings,
        clusters: &[Arc<ClusterTopology>],
        stats: Arc<Stats>,
        scripts: Arc<ScriptCache>,
        busy: Arc<SharedBusy>,
    ) -> io::Result<(Arc<WorkerIo>, Arc<HelperHandle>, JoinHandle<()>)> {
        let poll = Poll::new()?;
        let shared = Arc::new(HelperHandle {
            waker: Waker::new(poll.registry(), WAKER)?,
            wake_pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let registry = poll.registry().try_clone()?;
        let io = Arc::new_cyclic(|me: &Weak<WorkerIo>| {
            let me = me.clone();
            // Weak: the desk lives in the worker's own state.
            let desk = Arc::new(Attention::new(Box::new(move || {
                if let Some(io) = me.upgrade() {
                    io.wake();
                }
            })));
            let lp = UpstreamIo::new(
                registry,
                settings,
                clusters,
                stats,
                scripts,
                busy.clone(),
                desk,
            );
            WorkerIo {
                lp: Mutex::new(lp),
                busy,
                wakes: Arc::default(),
                ticking: Arc::default(),
            }
        });
        let helper = Helper {
            poll,
            shared: shared.clone(),
            wakes: io.wakes.clone(),
            ticking: io.ticking.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("redis-wake-{worker}"))
            .spawn(move || helper.run())?;
        Ok((io, shared, handle))
    }

    /// A client connection of this worker opened: it may anchor wakes.
    pub fn add_anchor(&self, key: u64, sched: Box<dyn Notify>) {
        let mut w = self.wakes.lock();
        if let Some(a) = w.add_anchor(key, sched) {
            a.notify();
        }
    }

    /// A client connection is closing: it can no longer anchor wakes.
    pub fn remove_anchor(&self, key: u64) {
        let removed = {
            let mut w = self.wakes.lock();
            let (removed, again) = w.remove_anchor(key);
            if let Some(a) = again {
                a.notify();
            }
            removed
        };
        // Deletes Envoy's scheduler, outside the lock.
        drop(removed);
    }

    /// The wake event: read and match every ready reply, run the clock's
    /// work. Replies land in the clients' mailboxes, whose notifiers tell
    /// the caller which clients to write to.
    pub fn on_wake(&self) {
        let mut ready = Vec::new();
        self.wakes.lock().begin(&mut ready);
        let mut lp = self.lp.lock();
        for r in ready {
            lp.on_ready(r.conn, r.readable, r.writable);
        }
        lp.tick(Instant::now());
        self.ticking.store(lp.needs_ticks(), Ordering::Release);
    }

    /// Requests of one session, routed and queued on their connections.
    /// They are written by the worker's next wake, which this commits from
    /// the worker itself: Envoy runs it after the other connections' reads
    /// of the same event-loop iteration, so one `send` per node carries
    /// every client's commands of that iteration (writing each client's at
    /// once cost a send, and a wake-up of the node, per command).
    pub fn submit(&self, batch: &mut Vec<Request>) {
        let mut lp = self.lp.lock();
        if lp.dispatch_batch(batch) {
            let mut w = self.wakes.lock();
            if let Some(a) = w.want(std::iter::empty()) {
                a.notify();
            } else if !w.is_pending() {
                // No connection to carry the wake: write now.
                drop(w);
                lp.flush_dirty();
            }
        }
        if !self.ticking.load(Ordering::Relaxed) && lp.needs_ticks() {
            self.ticking.store(true, Ordering::Release);
        }
    }

    pub fn busy_reply(&self) -> Option<Vec<u8>> {
        self.busy.any()
    }

    /// Look at the clients again now (one left while blocked: its blocking
    /// connection must close at once, before the node pops for it). A wake
    /// on the anchor when there is one; with no other connection left to
    /// carry it, the work is done here, unless the upstream state is in use
    /// (a hook fired inside the worker's own wake, which ticks anyway).
    pub fn wake(&self) {
        let mut w = self.wakes.lock();
        if let Some(a) = w.want(std::iter::empty()) {
            a.notify();
            return;
        }
        if w.is_pending() {
            return;
        }
        drop(w);
        if let Some(mut lp) = self.lp.try_lock() {
            lp.tick(Instant::now());
            self.ticking.store(lp.needs_ticks(), Ordering::Release);
        }
    }
}

struct Helper {
    poll: Poll,
    shared: Arc<HelperHandle>,
    wakes: Arc<Mutex<Wakes<Box<dyn Notify>>>>,
    ticking: Arc<AtomicBool>,
}

impl Helper {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut ready: Vec<Ready> = Vec::new();
        let mut idle_ticks = 0u32;
        while !self.shared.stop.load(Ordering::Acquire) {
            let timeout = if self.ticking.load(Ordering::Acquire) {
                TICK
            } else {
                IDLE_TICK
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log!(Level::Error, "redis_cluster: upstream poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            ready.clear();
            let mut woken = false;
            for ev in events.iter() {
                if ev.token() == WAKER {
                    // A new topology (or stop): parked requests may go.
                    woken = true;
                    continue;
                }
                ready.push(Ready {
                    conn: ev.token().0 - 1,
                    readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    writable: ev.is_writable(),
                });
            }
            if woken {
                self.shared.wake_pending.store(false, Ordering::Release);
            }
            // A deadline may have passed when the poll timed out.
            let mut due = woken || !ready.is_empty() || self.ticking.load(Ordering::Acquire);
            if due {
                idle_ticks = 0;
            } else {
                idle_ticks += 1;
                if idle_ticks >= IDLE_TICKS_PER_WAKE {
                    idle_ticks = 0;
                    due = true;
                }
            }
            if due {
                let mut w = self.wakes.lock();
                if let Some(a) = w.want(ready.drain(..)) {
                    a.notify();
                }
            }
        }
    }
}
