//! The proxy's own clients, as one Redis would know them: a registry of
//! every connection of a filter config (all workers) for `CLIENT LIST`,
//! `CLIENT INFO`, `CLIENT KILL` and INFO's `connected_clients`, and the
//! `CLIENT PAUSE` state that holds those clients' commands.
//!
//! A pause is the proxy's, not the nodes': sessions stop parsing at a
//! command the pause holds and register as blocked; `CLIENT UNPAUSE` or the
//! timeout (a timer thread per runtime) wakes them. The nodes never pause,
//! so the upstream connections every client shares keep serving reads.

use crate::upstream::{ClientShared, Notify};
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a `CLIENT PAUSE` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PauseMode {
    /// Commands that write or may replicate (`WRITE`).
    Write,
    /// Every command (`ALL`, the default).
    All,
}

/// How `CLIENT UNBLOCK` ends a blocked command: as if its timeout passed
/// (the default), or with Redis's `-UNBLOCKED` error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnblockMode {
    Timeout,
    Error,
}

/// One client connection as the registry sees it.
pub struct ClientEntry {
    pub id: u64,
    created: Instant,
    /// Set by `CLIENT KILL`: the session closes when it next runs.
    killed: AtomicBool,
    /// A blocking command of this client waits on its node.
    blocked: AtomicBool,
    /// Set by `CLIENT UNBLOCK`: the session unblocks it when it next runs.
    unblock: Mutex<Option<UnblockMode>>,
    /// `None` once the session is gone.
    waker: Mutex<Option<Waker>>,
    view: Mutex<ClientView>,
}

/// The fields of a `CLIENT LIST` line that change while the client runs.
#[derive(Clone, Debug)]
pub struct ClientView {
    /// Peer address `ip:port` (`?:0` until Envoy tells).
    pub addr: String,
    /// The proxy's listener address as the client reached it.
    pub laddr: String,
    pub name: String,
    pub user: String,
    pub resp: u8,
    /// Last command's full name (`client|list`), `NULL` before the first.
    pub cmd: String,
    pub last_active: Instant,
    /// Commands queued in MULTI, `None` outside one.
    pub multi: Option<u32>,
    /// Bytes received and not parsed yet.
    pub qbuf: usize,
    /// In `MONITOR` mode (flag `O`).
    pub monitor: bool,
    /// Subscriptions: channels, patterns, shard channels (`sub`, `psub`,
    /// `ssub`).
    pub subscriptions: [usize; 3],
    /// Redis's `CLIENT_PUBSUB` (flag `P`): subscribed, until an
    /// unsubscribe leaves nothing.
    pub pubsub: bool,
}

/// How the registry runs a client's session from any thread (a pause
/// ended, `CLIENT KILL`, lines for a monitor).
pub enum Waker {
    /// Its reply mailbox, whose notifier works from any thread.
    Mailbox(Arc<ClientShared>),
    /// A notifier of its own, when the mailbox's works only on the
    /// session's worker thread (the worker owns the upstream I/O).
    Own(Arc<dyn Notify>),
}

impl ClientEntry {
    /// Run the session soon (from any thread). The notifier is called
    /// outside the lock: Envoy may run the woken session (which detaches,
    /// taking the lock) before its scheduler call returns here.
    pub fn wake(&self) {
        let own = match self.waker.lock().as_ref() {
            Some(Waker::Mailbox(m)) => {
                m.wake();
                return;
            }
            Some(Waker::Own(n)) => n.clone(),
            None => return,
        };
        own.notify();
    }

    pub fn set_waker(&self, waker: Waker) {
        *self.waker.lock() = Some(waker);
    }

    /// The session is gone: forget its notifier (a wake already under way
    /// holds its own reference; Envoy's scheduler outlives the filter
    /// safely).
    pub fn detach(&self) {
        let gone = self.waker.lock().take();
        drop(gone);
    }

    pub fn new(id: u64, waker: Arc<ClientShared>, now: Instant) -> Arc<ClientEntry> {
        Arc::new(ClientEntry {
            id,
            created: now,
            killed: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            unblock: Mutex::new(None),
            waker: Mutex::new(Some(Waker::Mailbox(waker))),
            view: Mutex::new(ClientView {
                addr: "?:0".to_string(),
                laddr: "?:0".to_string(),
                name: String::new(),
                user: "default".to_string(),
                resp: 2,
                cmd: "NULL".to_string(),
                last_active: now,
                multi: None,
                qbuf: 0,
                monitor: false,
                subscriptions: [0; 3],
                pubsub: false,
            }),
        })
    }

    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// The session says whether a blocking command of its waits on a node.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Release);
    }

    /// `CLIENT UNBLOCK` for this client: false when it is not blocked.
    fn request_unblock(&self, mode: UnblockMode) -> bool {
        if !self.blocked.load(Ordering::Acquire) {
            return false;
        }
        *self.unblock.lock() = Some(mode);
        self.wake();
        true
    }

    /// An unblock asked for since the session last looked.
    pub fn take_unblock(&self) -> Option<UnblockMode> {
        self.unblock.lock().take()
    }

    /// Change the mutable fields.
    pub fn update(&self, f: impl FnOnce(&mut ClientView)) {
        f(&mut self.view.lock())
    }

    pub fn view(&self) -> ClientView {
        self.view.lock().clone()
    }
}

/// A proxy client's `TYPE` for `CLIENT LIST` and `CLIENT KILL` (never a
/// replica or master).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientType {
    Normal,
    /// Subscribed (flag `P`).
    PubSub,
}

impl ClientView {
    pub fn client_type(&self) -> ClientType {
        if self.pubsub {
            ClientType::PubSub
        } else {
            ClientType::Normal
        }
    }
}

/// Which clients a `CLIENT KILL` selects (every given filter must match).
#[derive(Debug, Default, PartialEq)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub laddr: Option<String>,
    pub user: Option<String>,
    /// `TYPE master|replica`: none of the proxy's clients.
    pub no_match: bool,
    /// `TYPE normal|pubsub`.
    pub client_type: Option<ClientType>,
    /// Spare the client that asks (`SKIPME yes`, the default).
    pub skip_me: bool,
}

impl KillFilter {
    fn matches(&self, me: u64, e: &ClientEntry, v: &ClientView) -> bool {
        !(self.no_match || self.skip_me && e.id == me)
            && self.id.is_none_or(|id| id == e.id)
            && self.client_type.is_none_or(|t| t == v.client_type())
            && self.addr.as_ref().is_none_or(|a| *a == v.addr)
            && self.laddr.as_ref().is_none_or(|a| *a == v.laddr)
            && self.user.as_ref().is_none_or(|u| *u == v.user)
    }
}

#[derive(Default)]
struct PauseState {
    /// Current pause and when it ends.
    active: Option<(PauseMode, Instant)>,
    /// Clients waiting for the pause to end (`blocked_clients`), in the
    /// order they started waiting (the order they are woken).
    held: Vec<u64>,
    stop: bool,
}

/// Lines for one `MONITOR` client, written by its session when it runs.
pub struct MonitorFeed {
    lines: Mutex<Vec<u8>>,
    /// The client did not keep up: its session closes it (Redis closes a
    /// monitor past its output buffer limit too).
    overflow: AtomicBool,
    client: Arc<ClientEntry>,
}

/// Bytes a monitor may have waiting before it is closed.
const MONITOR_BACKLOG: usize = 32 << 20;

impl MonitorFeed {
    /// Add lines for this monitor only (its session runs already).
    pub fn push(&self, line: &[u8]) {
        let mut lines = self.lines.lock();
        if lines.len() + line.len() > MONITOR_BACKLOG {
            lines.clear();
            self.overflow.store(true, Ordering::Release);
        } else {
            lines.extend_from_slice(line);
        }
    }

    /// Take the waiting lines; `None` once the client fell too far behind.
    pub fn take(&self) -> Option<Vec<u8>> {
        if self.overflow.load(Ordering::Acquire) {
            return None;
        }
        Some(std::mem::take(&mut *self.lines.lock()))
    }
}

/// Every client of one filter config, its pause and its monitors.
#[derive(Default)]
pub struct Clients {
    entries: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
    pause: Mutex<PauseState>,
    /// A pause is set (maybe over already): read without the lock on
    /// every command.
    pausing: AtomicBool,
    timer: Condvar,
    monitors: Mutex<Vec<(u64, Arc<MonitorFeed>)>>,
    /// `monitors.len()`, read without the lock on every command.
    monitoring: AtomicUsize,
}

impl Clients {
    pub fn register(&self, entry: Arc<ClientEntry>) {
        self.entries.lock().insert(entry.id, entry);
    }

    pub fn unregister(&self, id: u64) {
        self.entries.lock().remove(&id);
        self.release(id);
        self.remove_monitor(id);
    }

    /// `MONITOR`: this client gets every command the proxy's clients run.
    pub fn add_monitor(&self, client: Arc<ClientEntry>) -> Arc<MonitorFeed> {
        let id = client.id;
        let feed = Arc::new(MonitorFeed {
            lines: Mutex::new(Vec::new()),
            overflow: AtomicBool::new(false),
            client,
        });
        let mut m = self.monitors.lock();
        m.retain(|(i, _)| *i != id);
        m.push((id, feed.clone()));
        self.monitoring.store(m.len(), Ordering::Release);
        feed
    }

    pub fn remove_monitor(&self, id: u64) {
        let mut m = self.monitors.lock();
        m.retain(|(i, _)| *i != id);
        self.monitoring.store(m.len(), Ordering::Release);
    }

    /// Someone monitors (cheap: checked for every command).
    pub fn monitoring(&self) -> bool {
        self.monitoring.load(Ordering::Acquire) > 0
    }

    /// One `MONITOR` line (complete, `+…\r\n`) to every monitor.
    pub fn feed(&self, line: &[u8]) {
        for (_, f) in self.monitors.lock().iter() {
            let mut lines = f.lines.lock();
            if lines.len() + line.len() > MONITOR_BACKLOG {
                lines.clear();
                f.overflow.store(true, Ordering::Release);
            } else {
                let first = lines.is_empty();
                lines.extend_from_slice(line);
                if first {
                    f.client.wake();
                }
            }
        }
    }

    pub fn connected(&self) -> usize {
        self.entries.lock().len()
    }

    /// Every client, by id (Redis lists them in creation order).
    pub fn all(&self) -> Vec<Arc<ClientEntry>> {
        self.entries.lock().values().cloned().collect()
    }

    /// `CLIENT KILL`: mark and forget every matching client, wake the
    /// others' sessions so they close; returns how many matched and
    /// whether `me` is among them (it closes after its reply).
    /// `CLIENT UNBLOCK id`: whether client `id` was blocked (its session
    /// then unblocks its command on the node).
    pub fn unblock(&self, id: u64, mode: UnblockMode) -> bool {
        let entry = self.entries.lock().get(&id).cloned();
        entry.is_some_and(|e| e.request_unblock(mode))
    }

    pub fn kill(&self, me: u64, filter: &KillFilter) -> (usize, bool) {
        let victims: Vec<Arc<ClientEntry>> = {
            let mut entries = self.entries.lock();
            let ids: Vec<u64> = entries
                .values()
                .filter(|e| filter.matches(me, e, &e.view.lock()))
                .map(|e| e.id)
                .collect();
            ids.iter().filter_map(|id| entries.remove(id)).collect()
        };
        let mut pause = self.pause.lock();
        pause.held.retain(|id| !victims.iter().any(|v| v.id == *id));
        drop(pause);
        let mut killed_me = false;
        for v in &victims {
            v.killed.store(true, Ordering::Release);
            if v.id == me {
                killed_me = true;
            } else {
                v.wake();
            }
        }
        (victims.len(), killed_me)
    }

    /// `CLIENT PAUSE`: a pause already on keeps the stronger mode and the
    /// later end, as in Redis.
    pub fn pause(&self, mode: PauseMode, until: Instant) {
        let mut p = self.pause.lock();
        p.active = Some(match p.active {
            Some((m, end)) => (m.max(mode), end.max(until)),
            None => (mode, until),
        });
        self.pausing.store(true, Ordering::Release);
        drop(p);
        self.timer.notify_all();
    }

    /// `CLIENT UNPAUSE`, or the pause's end: wake every held client.
    pub fn unpause(&self) {
        let held = {
            let mut p = self.pause.lock();
            p.active = None;
            self.pausing.store(false, Ordering::Release);
            std::mem::take(&mut p.held)
        };
        self.wake(&held);
        self.timer.notify_all();
    }

    fn wake(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let entries = self.entries.lock();
        for id in ids {
            if let Some(e) = entries.get(id) {
                e.wake();
            }
        }
    }

    /// The pause in force at `now`, if any.
    pub fn paused(&self, now: Instant) -> Option<PauseMode> {
        if !self.pausing.load(Ordering::Acquire) {
            return None;
        }
        match self.pause.lock().active {
            Some((mode, end)) if now < end => Some(mode),
            _ => None,
        }
    }

    /// A client's command waits for the pause to end; false when the
    /// pause ended meanwhile (the command may run).
    pub fn hold(&self, id: u64, now: Instant) -> bool {
        let mut p = self.pause.lock();
        match p.active {
            Some((_, end)) if now < end => {
                if !p.held.contains(&id) {
                    p.held.push(id);
                }
                true
            }
            _ => false,
        }
    }

    /// A held client runs again (woken, or gone).
    pub fn release(&self, id: u64) {
        self.pause.lock().held.retain(|&h| h != id);
    }

    /// INFO `blocked_clients`: clients waiting for the pause, and clients
    /// whose blocking command (`BLPOP` …) waits on its node, as Redis
    /// counts both.
    pub fn blocked(&self) -> usize {
        let held = self.pause.lock().held.clone();
        let on_nodes = self
            .entries
            .lock()
            .values()
            .filter(|e| e.blocked.load(Ordering::Acquire) && !held.contains(&e.id))
            .count();
        held.len() + on_nodes
    }

    /// The timer thread: ends each pause at its deadline, waking the held
    /// clients. Returns after [`Clients::stop`].
    pub fn run_timer(&self) {
        let mut p = self.pause.lock();
        loop {
            if p.stop {
                return;
            }
            match p.active {
                Some((_, end)) => {
                    let now = Instant::now();
                    if now >= end {
                        p.active = None;
                        self.pausing.store(false, Ordering::Release);
                        let held = std::mem::take(&mut p.held);
                        drop(p);
                        self.wake(&held);
                        p = self.pause.lock();
                    } else {
                        self.timer.wait_for(&mut p, end - now);
                    }
                }
                None => {
                    // Bounded so a missed notify costs at most this.
                    self.timer.wait_for(&mut p, Duration::from_secs(60));
                }
            }
        }
    }

    pub fn stop(&self) {
        self.pause.lock().stop = true;
        self.timer.notify_all();
    }
}

/// One `CLIENT LIST` / `CLIENT INFO` line (without the newline), with
/// Redis 7.0's fields. What the proxy has no counterpart for reads as an
/// idle Redis client's value (`fd=-1`: no file descriptor of Redis's own).
pub fn list_line(e: &ClientEntry, v: &ClientView, now: Instant, me: Option<&Current>) -> String {
    let age = now.saturating_duration_since(e.created).as_secs();
    let idle = now.saturating_duration_since(v.last_active).as_secs();
    let mut flags = String::new();
    if v.monitor {
        flags.push('O');
    }
    if v.pubsub {
        flags.push('P');
    }
    if v.multi.is_some() {
        flags.push('x');
    }
    if flags.is_empty() {
        flags.push('N');
    }
    let (qbuf, argv_mem) = me.map_or((v.qbuf, 0), |c| (c.qbuf, c.argv_mem));
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={age} idle={idle} flags={flags} db=0 sub={} psub={} ssub={} multi={} qbuf={qbuf} qbuf-free=0 argv-mem={argv_mem} multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem={} events=r cmd={} user={} redir=-1 resp={}",
        e.id,
        v.addr,
        v.laddr,
        v.name,
        v.subscriptions[0],
        v.subscriptions[1],
        v.subscriptions[2],
        v.multi.map_or(-1, i64::from),
        qbuf + argv_mem,
        v.cmd,
        v.user,
        v.resp,
    )
}

/// The asking client's own buffers while its command runs (Redis counts
/// the command being executed in its query buffer).
pub struct Current {
    pub qbuf: usize,
    pub argv_mem: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(Arc<std::sync::atomic::AtomicUsize>);
    impl crate::upstream::Notify for Counter {
        fn notify(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn entry(id: u64, now: Instant) -> (Arc<ClientEntry>, Arc<std::sync::atomic::AtomicUsize>) {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shared = ClientShared::new(Box::new(Counter(n.clone())));
        (ClientEntry::new(id, shared, now), n)
    }

    #[test]
    fn kill_selects_by_filter_and_forgets_at_once() {
        let now = Instant::now();
        let c = Clients::default();
        let mut wakes = Vec::new();
        for id in 1..=3 {
            let (e, n) = entry(id, now);
            e.update(|v| v.addr = format!("10.0.0.1:{}", 5000 + id));
            c.register(e);
            wakes.push(n);
        }
        let by_addr = KillFilter {
            addr: Some("10.0.0.1:5002".into()),
            ..KillFilter::default()
        };
        assert_eq!(c.kill(1, &by_addr), (1, false));
        assert_eq!(c.connected(), 2);
        assert_eq!(wakes[1].load(Ordering::SeqCst), 1, "victim woken to close");
        let all_but_me = KillFilter {
            skip_me: true,
            ..KillFilter::default()
        };
        assert_eq!(c.kill(1, &all_but_me), (1, false));
        let typed = KillFilter {
            no_match: true,
            ..KillFilter::default()
        };
        assert_eq!(c.kill(1, &typed), (0, false));
        assert_eq!(c.kill(1, &KillFilter::default()), (1, true));
        assert_eq!(c.connected(), 0);
        assert_eq!(wakes[0].load(Ordering::SeqCst), 0, "the asker is not woken");
    }

    #[test]
    fn pause_keeps_strongest_mode_and_latest_end_and_unpause_wakes_held() {
        let now = Instant::now();
        let c = Clients::default();
        let (e, n) = entry(9, now);
        c.register(e);
        assert_eq!(c.paused(now), None);
        c.pause(PauseMode::All, now + Duration::from_secs(1));
        c.pause(PauseMode::Write, now + Duration::from_secs(5));
        assert_eq!(c.paused(now + Duration::from_secs(2)), Some(PauseMode::All));
        assert_eq!(c.paused(now + Duration::from_secs(5)), None, "ended");
        assert!(c.hold(9, now));
        assert!(c.hold(9, now), "idempotent");
        assert_eq!(c.blocked(), 1);
        assert!(!c.hold(9, now + Duration::from_secs(6)), "over");
        c.unpause();
        assert_eq!(c.blocked(), 0);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert_eq!(c.paused(now), None);
    }

    #[test]
    fn timer_ends_the_pause_and_wakes_held_clients() {
        let now = Instant::now();
        let c = Arc::new(Clients::default());
        let (e, n) = entry(4, now);
        c.register(e);
        let t = {
            let c = c.clone();
            std::thread::spawn(move || c.run_timer())
        };
        c.pause(PauseMode::Write, Instant::now() + Duration::from_millis(50));
        assert!(c.hold(4, Instant::now()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while n.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(n.load(Ordering::SeqCst), 1, "woken at the pause's end");
        assert_eq!(c.blocked(), 0);
        c.stop();
        t.join().unwrap();
    }

    #[test]
    fn monitors_get_every_line_until_they_fall_behind() {
        let now = Instant::now();
        let c = Clients::default();
        let (e, n) = entry(3, now);
        assert!(!c.monitoring());
        let feed = c.add_monitor(e.clone());
        assert!(c.monitoring());
        c.feed(b"+a\r\n");
        c.feed(b"+b\r\n");
        assert_eq!(n.load(Ordering::SeqCst), 1, "woken once per batch");
        assert_eq!(feed.take(), Some(b"+a\r\n+b\r\n".to_vec()));
        c.feed(&vec![b'x'; MONITOR_BACKLOG + 1]);
        assert_eq!(feed.take(), None, "too far behind: closed");
        c.unregister(3);
        assert!(!c.monitoring());
    }

    #[test]
    fn list_line_has_redis_fields() {
        let now = Instant::now();
        let (e, _) = entry(12, now);
        e.update(|v| {
            v.addr = "127.0.0.1:5555".into();
            v.laddr = "127.0.0.1:7000".into();
            v.cmd = "client|list".into();
        });
        let line = list_line(
            &e,
            &e.view(),
            now,
            Some(&Current {
                qbuf: 26,
                argv_mem: 10,
            }),
        );
        assert_eq!(
            line,
            "id=12 addr=127.0.0.1:5555 laddr=127.0.0.1:7000 fd=-1 name= age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=26 qbuf-free=0 argv-mem=10 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=36 events=r cmd=client|list user=default redir=-1 resp=2"
        );
    }
}
