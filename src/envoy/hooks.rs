//! The functions Envoy calls. Each one catches panics: a panic closes the one
//! connection it happened on (or rejects the config) and never unwinds into
//! Envoy.

use super::ffi::{self, EnvoyBuffer, FilterEnvoyPtr};
use super::metrics::EnvoyMetrics;
use super::{logger, EnvoyConnection, EnvoyScheduler, Resume};
use crate::config::Config;
use crate::log;
use crate::logging::Level;
use crate::proxy::Proxy;
use crate::session::Notify;
use crate::session::{Downstream, Session};
use crate::stats::{MetricsSink, Stats};
use crate::upstream::WorkerIo;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Envoy 1.40's ABI version. Envoy 1.38 and 1.39 expect v0.1.0 and only warn.
static ABI_VERSION: &[u8] = b"v0.2.0\0";

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    // Nothing here can panic: set_logger only fails if already set.
    logger::install();
    ABI_VERSION.as_ptr()
}

/// Copy an Envoy-owned buffer, treating `(NULL, 0)` as empty.
fn buffer_bytes(b: &EnvoyBuffer) -> Vec<u8> {
    if b.ptr.is_null() || b.length == 0 {
        return Vec::new();
    }
    // SAFETY: Envoy guarantees `ptr` points to `length` readable bytes for the
    // duration of the hook call; we copy them before returning.
    unsafe { std::slice::from_raw_parts(b.ptr, b.length) }.to_vec()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_config_new(
    config_envoy_ptr: *mut c_void,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let raw = buffer_bytes(&config);
        let cfg = match Config::from_json(&raw) {
            Ok(c) => c,
            Err(e) => {
                log!(Level::Error, "redis_cluster: invalid filter_config: {e}");
                return std::ptr::null();
            }
        };
        // SAFETY: both are main-thread queries and config_new runs on the main thread.
        let (validating, concurrency) = unsafe {
            (
                ffi::envoy_dynamic_module_callback_is_validation_mode(),
                ffi::envoy_dynamic_module_callback_get_concurrency(),
            )
        };
        let sink = Arc::new(EnvoyMetrics::new(config_envoy_ptr));
        if sink.any_thread_updates().is_none() {
            log!(
                Level::Info,
                "redis_cluster: this Envoy takes metric updates only through connections \
                 (no config-level callbacks, Envoy < 1.39): statistics changed away from \
                 client traffic appear with the next client activity"
            );
        }
        let names: Vec<String> = cfg.clusters.keys().cloned().collect();
        let stats = Arc::new(crate::stats::Stats::define(
            sink,
            &cfg.stat_prefix,
            &names,
            cfg.settings.enable_command_stats,
        ));
        // `--mode validate` must have no side effects: no threads, no sockets.
        let proxy = if validating {
            Proxy::inert(cfg, stats)
        } else {
            Proxy::start(cfg, stats, concurrency.max(1) as usize)
        };
        Box::into_raw(Box::new(proxy)) as *const c_void
    }));
    result.unwrap_or_else(|_| {
        log!(
            Level::Error,
            "redis_cluster: panic while loading the config"
        );
        std::ptr::null()
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_config_destroy(config_ptr: *const c_void) {
    if config_ptr.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the pointer came from Box::into_raw in config_new and Envoy
        // destroys each config exactly once, after all its filters.
        let proxy = unsafe { Box::from_raw(config_ptr as *mut Arc<Proxy>) };
        proxy.shutdown();
    }));
}

/// The scheduler event that wakes a worker's upstream I/O, committed on the
/// worker's anchor connection.
const WAKE_EVENT: u64 = 1;

/// Keys of client connections, unique per process.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This worker's live client connections by key: the filter pointers a
    /// wake uses to write replies to other connections of the same worker.
    static LIVE: RefCell<HashMap<u64, (FilterEnvoyPtr, *const c_void)>> =
        RefCell::new(HashMap::new());
    /// Clients of this worker with replies in their mailboxes.
    static DIRTY: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// `drain_dirty` is running (it must not nest).
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// A client's notifier: replies are matched on
/// the client's own worker thread, so a delivery just marks the client for
/// [`drain_dirty`] on the same thread.
struct DirectWake {
    key: u64,
}

impl Notify for DirectWake {
    fn notify(&self) {
        DIRTY.with(|d| d.borrow_mut().push(self.key));
    }
}

/// Write the replies of every client marked by a [`DirectWake`], on this
/// worker thread, each through its own connection.
fn drain_dirty() {
    if DRAINING.with(|d| d.replace(true)) {
        return;
    }
    loop {
        let batch = DIRTY.with(|d| std::mem::take(&mut *d.borrow_mut()));
        if batch.is_empty() {
            break;
        }
        for key in batch {
            let Some((envoy_ptr, filter_ptr)) = LIVE.with(|l| l.borrow().get(&key).copied()) else {
                continue; // destroyed meanwhile: its mailbox is detached
            };
            // The pointers stay valid until filter_destroy removes them from
            // LIVE; this is the same worker thread.
            with_session(envoy_ptr, filter_ptr, |session, conn| {
                session.on_scheduled(conn)
            });
        }
    }
    DRAINING.with(|d| d.set(false));
}

/// Per-connection state behind `filter_module_ptr`.
struct Filter {
    session: RefCell<Session>,
    /// The config's stats, whose pending updates this connection delivers.
    stats: Arc<Stats>,
    /// Set when a hook panicked: the connection is being closed, ignore it.
    poisoned: Cell<bool>,
    /// A watermark event Envoy raised re-entrantly (inside our own `write`,
    /// while the session was busy): applied when the outer hook returns.
    pending_watermark: Cell<Option<bool>>,
    /// The session asked to run from the next turn of the event loop.
    resume: Resume,
    /// This connection's key in `LIVE` and, as a possible wake anchor, in
    /// the worker's upstream state.
    key: u64,
    /// The worker's upstream state; `None` without upstream I/O (its
    /// helper thread could not start).
    io: Option<Arc<WorkerIo>>,
}

impl Filter {
    /// The connection is closing: it can no longer anchor wakes.
    fn leave_anchors(&self) {
        if let Some(io) = &self.io {
            io.remove_anchor(self.key);
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_new(
    config_ptr: *const c_void,
    filter_envoy_ptr: FilterEnvoyPtr,
) -> *const c_void {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: config_ptr is the live Arc<Proxy> box from config_new.
        let proxy = unsafe { &*(config_ptr as *const Arc<Proxy>) }.clone();
        // SAFETY: filter_new runs on the connection's worker thread with a live filter pointer.
        let (sched, worker) = unsafe {
            (
                ffi::envoy_dynamic_module_callback_network_filter_scheduler_new(filter_envoy_ptr),
                ffi::envoy_dynamic_module_callback_network_filter_get_worker_index(
                    filter_envoy_ptr,
                ),
            )
        };
        if sched.is_null() {
            return std::ptr::null();
        }
        let stats = proxy.stats.clone();
        let io = proxy.worker_io(worker as usize).cloned();
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let mut session = Session::new(proxy, worker as usize, Box::new(DirectWake { key }));
        // DirectWake works on this worker only: other threads (a pause's
        // end, CLIENT KILL, monitor lines) run the session through a
        // scheduler of its own, whose event 0 is the session's.
        // SAFETY: filter_new runs on the connection's worker thread with a live filter pointer.
        let remote = unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_scheduler_new(filter_envoy_ptr)
        };
        if !remote.is_null() {
            session.set_waker(Box::new(EnvoyScheduler {
                ptr: remote,
                event: 0,
            }));
        }
        let filter = Box::into_raw(Box::new(Filter {
            session: RefCell::new(session),
            stats,
            poisoned: Cell::new(false),
            pending_watermark: Cell::new(None),
            resume: Resume::default(),
            key,
            io: io.clone(),
        })) as *const c_void;
        LIVE.with(|l| l.borrow_mut().insert(key, (filter_envoy_ptr, filter)));
        let sched = Box::new(EnvoyScheduler {
            ptr: sched,
            event: WAKE_EVENT,
        });
        match io {
            Some(io) => io.add_anchor(key, sched),
            None => drop(sched),
        }
        filter
    }));
    // NULL makes Envoy close the connection.
    result.unwrap_or(std::ptr::null())
}

/// Run `f` on the filter's session, catching panics (which close the
/// connection) and tolerating re-entrant calls (Envoy calls `on_event`
/// synchronously from inside `close`); then deliver the config's pending
/// metric updates through this connection (Envoy 1.38: see `Stats::flush`).
fn with_session(
    filter_envoy_ptr: FilterEnvoyPtr,
    filter_ptr: *const c_void,
    f: impl FnOnce(&mut Session, &mut EnvoyConnection),
) {
    if filter_ptr.is_null() {
        return;
    }
    // SAFETY: filter_ptr came from Box::into_raw in filter_new and stays valid
    // until filter_destroy; all hooks run on the same worker thread.
    let filter = unsafe { &*(filter_ptr as *const Filter) };
    if filter.poisoned.get() {
        return;
    }
    let mut conn = EnvoyConnection {
        ptr: filter_envoy_ptr,
        resume: &filter.resume,
    };
    let Ok(mut session) = filter.session.try_borrow_mut() else {
        return; // re-entered from our own write/close: nothing to do
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        f(&mut session, &mut conn);
        // Watermark events raised by Envoy during our writes above.
        while let Some(above) = filter.pending_watermark.take() {
            session.on_write_watermark(above, &mut conn);
        }
        filter.stats.flush(&conn);
    }));
    drop(session);
    if outcome.is_err() {
        filter.poisoned.set(true);
        log!(
            Level::Error,
            "redis_cluster: internal error, closing the connection"
        );
        conn.close(false);
    }
    // Replies this hook made ready for clients of this worker, this one
    // included.
    drain_dirty();
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_new_connection(
    filter_envoy_ptr: FilterEnvoyPtr,
    filter_ptr: *const c_void,
) -> i32 {
    // Half-close lets a client send commands then FIN and still get every
    // reply (redis-cli < file does this).
    // SAFETY: live filter pointer on its worker thread.
    unsafe {
        ffi::envoy_dynamic_module_callback_network_filter_enable_half_close(filter_envoy_ptr, true)
    };
    let mut addr = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
    let mut port = 0u32;
    // SAFETY: live filter pointer; Envoy fills `addr` with a string it owns
    // that stays valid during this call, which we copy at once.
    let ok = unsafe {
        ffi::envoy_dynamic_module_callback_network_filter_get_local_address(
            filter_envoy_ptr,
            &mut addr,
            &mut port,
        )
    };
    let local = ok.then(|| String::from_utf8_lossy(&buffer_bytes(&addr)).into_owned());
    let mut peer_addr = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
    let mut peer_port = 0u32;
    // SAFETY: as for the local address above.
    let peer_ok = unsafe {
        ffi::envoy_dynamic_module_callback_network_filter_get_remote_address(
            filter_envoy_ptr,
            &mut peer_addr,
            &mut peer_port,
        )
    };
    let peer = peer_ok.then(|| String::from_utf8_lossy(&buffer_bytes(&peer_addr)).into_owned());
    // Always through with_session: it also delivers the connection's first
    // metric updates (downstream_cx_total/active, counted in filter_new).
    with_session(filter_envoy_ptr, filter_ptr, |session, _| {
        if let Some(ip) = local {
            session.set_local_address(ip, port as u16)
        }
        if let Some(ip) = peer {
            session.set_peer_address(&ip, peer_port as u16)
        }
    });
    ffi::DATA_STATUS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_read(
    filter_envoy_ptr: FilterEnvoyPtr,
    filter_ptr: *const c_void,
    data_length: usize,
    end_stream: bool,
) -> i32 {
    with_session(filter_envoy_ptr, filter_ptr, |session, conn| {
        let (marker, resumed) = conn.begin_read();
        let mut data_length = data_length;
        if marker > 0 && data_length > 0 {
            // Ours, in front of anything the client sent since.
            let ours = marker.min(data_length);
            // SAFETY: live filter pointer; `ours` <= buffer length.
            unsafe {
                ffi::envoy_dynamic_module_callback_network_filter_drain_read_buffer(
                    filter_envoy_ptr,
                    ours,
                )
            };
            data_length -= ours;
        }
        if resumed {
            session.on_resume(conn);
        }
        if data_length > 0 {
            let consumed = read_into_session(filter_envoy_ptr, session, conn);
            if consumed > 0 {
                // SAFETY: live filter pointer; consumed <= buffer length.
                unsafe {
                    ffi::envoy_dynamic_module_callback_network_filter_drain_read_buffer(
                        filter_envoy_ptr,
                        consumed,
                    )
                };
            }
        }
        if end_stream {
            session.on_end_stream(conn);
        }
        if !conn.end_read() {
            session.resume_failed();
        }
    });
    ffi::DATA_STATUS_STOP_ITERATION
}

/// Hand the read buffer to the session: in place when it is one slice (the
/// common case), else concatenated. Returns the bytes consumed (whole frames).
fn read_into_session(
    filter_envoy_ptr: FilterEnvoyPtr,
    session: &mut Session,
    conn: &mut EnvoyConnection,
) -> usize {
    // SAFETY: live filter pointer during on_read on its worker thread.
    let n = unsafe {
        ffi::envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(
            filter_envoy_ptr,
        )
    };
    if n == 0 {
        return 0;
    }
    let mut chunks = vec![
        EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0
        };
        n
    ];
    // SAFETY: `chunks` has room for the `n` slices Envoy reported just now.
    let ok = unsafe {
        ffi::envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(
            filter_envoy_ptr,
            chunks.as_mut_ptr(),
        )
    };
    if !ok {
        return 0;
    }
    let slices: Vec<&[u8]> = chunks
        .iter()
        .filter(|c| !c.ptr.is_null() && c.length > 0)
        // SAFETY: each slice stays valid and unchanged until we drain the
        // buffer, which happens after the session is done with them.
        .map(|c| unsafe { std::slice::from_raw_parts(c.ptr, c.length) })
        .collect();
    if let [one] = slices.as_slice() {
        session.on_data(one, conn)
    } else {
        let joined = slices.concat();
        session.on_data(&joined, conn)
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_write(
    _filter_envoy_ptr: FilterEnvoyPtr,
    _filter_ptr: *const c_void,
    _data_length: usize,
    _end_stream: bool,
) -> i32 {
    // Called re-entrantly for our own writes: must let them through.
    ffi::DATA_STATUS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_event(
    filter_envoy_ptr: FilterEnvoyPtr,
    filter_ptr: *const c_void,
    event: i32,
) {
    // 0 = RemoteClose, 1 = LocalClose.
    if event == 0 || event == 1 {
        // Leave the anchors first: a wake `on_close` asks for (a client
        // gone while blocked) must not be committed on this connection,
        // whose events Envoy will never deliver.
        if !filter_ptr.is_null() {
            // SAFETY: as in with_session: live until filter_destroy, same thread.
            let filter = unsafe { &*(filter_ptr as *const Filter) };
            filter.leave_anchors();
        }
        with_session(filter_envoy_ptr, filter_ptr, |session, _| {
            session.on_close()
        });
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_scheduled(
    filter_envoy_ptr: FilterEnvoyPtr,
    filter_ptr: *const c_void,
    event_id: u64,
) {
    if event_id == WAKE_EVENT && !filter_ptr.is_null() {
        // SAFETY: as in with_session: live until filter_destroy, same thread.
        let filter = unsafe { &*(filter_ptr as *const Filter) };
        if let Some(io) = &filter.io {
            // The worker's wake, anchored on this connection: not about its
            // session. Replies go out to every client in drain_dirty.
            if catch_unwind(AssertUnwindSafe(|| io.on_wake())).is_err() {
                log!(
                    Level::Error,
                    "redis_cluster: internal error in upstream I/O"
                );
            }
            drain_dirty();
            return;
        }
    }
    with_session(filter_envoy_ptr, filter_ptr, |session, conn| {
        session.on_scheduled(conn)
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_above_write_buffer_high_watermark(
    filter_envoy_ptr: FilterEnvoyPtr,
    filter_ptr: *const c_void,
) {
    watermark(filter_envoy_ptr, filter_ptr, true);
}

/// Watermark events often fire synchronously inside our own `write` (the
/// write is what crosses the watermark); then the session is busy and the
/// event is parked for [`with_session`] to apply right after.
fn watermark(filter_envoy_ptr: FilterEnvoyPtr, filter_ptr: *const c_void, above: bool) {
    if filter_ptr.is_null() {
        return;
    }
    // SAFETY: as in with_session: live until filter_destroy, same thread.
    let filter = unsafe { &*(filter_ptr as *const Filter) };
    if filter.session.try_borrow_mut().is_err() {
        filter.pending_watermark.set(Some(above));
        return;
    }
    with_session(filter_envoy_ptr, filter_ptr, |session, conn| {
        session.on_write_watermark(above, conn)
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_below_write_buffer_low_watermark(
    filter_envoy_ptr: FilterEnvoyPtr,
    filter_ptr: *const c_void,
) {
    watermark(filter_envoy_ptr, filter_ptr, false);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_network_filter_destroy(filter_ptr: *const c_void) {
    if filter_ptr.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: created by Box::into_raw in filter_new; Envoy calls destroy
        // exactly once, after the last hook for this connection.
        let filter = unsafe { Box::from_raw(filter_ptr as *mut Filter) };
        LIVE.with(|l| l.borrow_mut().remove(&filter.key));
        filter.leave_anchors();
        let mut session = filter.session.into_inner();
        session.on_destroy();
    }));
}
