//! The FFI boundary with Envoy: every `unsafe` block, raw pointer and
//! `extern "C"` item of the crate lives under this module.
//!
//! `hooks` holds the functions Envoy calls; `ffi` the functions we call;
//! `metrics` Envoy's stats for a filter config; `logger` the `log` facade's
//! backend. The rest of the crate sees only safe types:
//! [`EnvoyConnection`] (a worker-thread handle implementing
//! [`crate::session::Downstream`] and [`crate::stats::MetricUpdates`]) and
//! [`EnvoyScheduler`] (implementing [`crate::session::Notify`]).

mod ffi;
mod hooks;
mod logger;
mod metrics;

use crate::session::{Downstream, Notify};
use crate::stats::MetricUpdates;
use std::cell::Cell;

/// Where call sites have always taken the level of `log!` from.
pub use crate::logging::Level;

/// A handle on the downstream connection, valid only on its worker thread and
/// only during a hook call (it is created per call, never stored).
pub struct EnvoyConnection<'a> {
    ptr: ffi::FilterEnvoyPtr,
    resume: &'a Resume,
}

/// A session's request to be run again from the next turn of the worker's
/// event loop ([`Downstream::resume_later`]).
///
/// Envoy runs scheduler events in the turn they are committed in, and
/// writes to sockets only in the next turn; its one way to run a filter in
/// the next turn is a read event: re-enabling reading on a connection
/// whose read buffer holds data schedules a read for the next turn
/// (`ConnectionImpl::readDisable`). So we make sure the buffer holds data
/// — a marker of ours when it is empty, which `on_read` drains before the
/// client's bytes — and switch reading off and on. Asked for during
/// `on_read`, it is arranged once `on_read` has drained what it consumed:
/// the buffer is not empty then, but will be when the next turn looks.
#[derive(Default)]
pub struct Resume {
    /// Bytes of ours at the front of the read buffer.
    marker: Cell<usize>,
    /// The next `on_read` resumes the session.
    wanted: Cell<bool>,
    /// Inside `on_read`, before it drained the read buffer.
    reading: Cell<bool>,
    /// Asked for inside `on_read`: to arrange at its end.
    deferred: Cell<bool>,
}

/// What the marker is: an empty inline line, which Redis (and the codec)
/// would ignore, should it ever reach the parser.
const MARKER: &[u8] = b"\r\n";

impl EnvoyConnection<'_> {
    /// `on_read` begins: the marker bytes to drain before the read
    /// buffer's data, and whether this read is the resumption asked for.
    fn begin_read(&self) -> (usize, bool) {
        self.resume.reading.set(true);
        (self.resume.marker.take(), self.resume.wanted.take())
    }

    /// `on_read` drained what it consumed: arrange a resumption asked for
    /// meanwhile. False when one was asked for and cannot be arranged.
    fn end_read(&self) -> bool {
        self.resume.reading.set(false);
        !self.resume.deferred.take() || self.arm_resume()
    }

    /// See [`Resume`].
    fn arm_resume(&self) -> bool {
        if self.resume.wanted.get() {
            return true;
        }
        // SAFETY: live filter pointer on its worker thread (see `write`).
        let size = unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_get_read_buffer_size(self.ptr)
        };
        if size == 0 {
            // SAFETY: as above; Envoy copies the bytes.
            let after = unsafe {
                ffi::envoy_dynamic_module_callback_network_filter_append_read_buffer(
                    self.ptr,
                    ffi::ModuleBuffer::from_slice(MARKER),
                );
                ffi::envoy_dynamic_module_callback_network_filter_get_read_buffer_size(self.ptr)
            };
            if after != MARKER.len() {
                return false;
            }
            self.resume.marker.set(MARKER.len());
        }
        // SAFETY: live filter pointer on its worker thread (see `write`);
        // reading is enabled (the session checks), so this pair leaves it
        // enabled, with a read event scheduled for the next turn.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_read_disable(self.ptr, true);
            ffi::envoy_dynamic_module_callback_network_filter_read_disable(self.ptr, false);
        }
        self.resume.wanted.set(true);
        true
    }
}

impl Downstream for EnvoyConnection<'_> {
    fn limit_output(&mut self, bytes: u32) {
        // SAFETY: live filter pointer on its worker thread (see `write`).
        unsafe {
            let now = ffi::envoy_dynamic_module_callback_network_filter_get_buffer_limit(self.ptr);
            if now == 0 || now > bytes {
                ffi::envoy_dynamic_module_callback_network_filter_set_buffer_limits(
                    self.ptr, bytes,
                );
            }
        }
    }

    fn resume_later(&mut self) -> bool {
        if self.resume.reading.get() {
            self.resume.deferred.set(true);
            return true;
        }
        self.arm_resume()
    }

    fn write(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // SAFETY: `ptr` is the live filter pointer of the current hook call on
        // this worker thread; Envoy copies the bytes before returning.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_write(
                self.ptr,
                ffi::ModuleBuffer::from_slice(data),
                false,
            )
        }
    }

    fn close(&mut self, flush: bool) {
        let how = if flush {
            ffi::CLOSE_FLUSH_WRITE
        } else {
            ffi::CLOSE_NO_FLUSH
        };
        // SAFETY: live filter pointer on its worker thread (see `write`).
        unsafe { ffi::envoy_dynamic_module_callback_network_filter_close(self.ptr, how) }
    }

    fn record_histogram(&mut self, id: usize, value: u64) {
        // SAFETY: live filter pointer on its worker thread (histograms must
        // be recorded on Envoy threads).
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_record_histogram_value(
                self.ptr, id, value,
            );
        }
    }

    fn read_disable(&mut self, disable: bool) {
        // SAFETY: live filter pointer on its worker thread (see `write`).
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_read_disable(self.ptr, disable);
        }
    }
}

/// Metric updates through the connection (Envoy's per-filter callbacks, the
/// only ones Envoy 1.38 has): on its worker, during a hook, like the handle.
impl MetricUpdates for EnvoyConnection<'_> {
    fn counter_add(&self, id: usize, v: u64) {
        // SAFETY: live filter pointer on its worker thread (see `write`); the
        // id came from a define call on this filter's config.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_increment_counter(self.ptr, id, v)
        };
    }
    fn gauge_add(&self, id: usize, v: u64) {
        // SAFETY: as counter_add.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_increment_gauge(self.ptr, id, v)
        };
    }
    fn gauge_sub(&self, id: usize, v: u64) {
        // SAFETY: as counter_add.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_decrement_gauge(self.ptr, id, v)
        };
    }
    fn gauge_set(&self, id: usize, v: u64) {
        // SAFETY: as counter_add.
        unsafe { ffi::envoy_dynamic_module_callback_network_filter_set_gauge(self.ptr, id, v) };
    }
}

/// The per-connection scheduler: lets a module thread wake the connection's
/// worker. Envoy allocates it; we delete it on drop.
pub struct EnvoyScheduler {
    ptr: ffi::SchedulerPtr,
    /// The event id each commit carries (see `hooks::WAKE_EVENT`).
    event: u64,
}

// SAFETY: Envoy documents `scheduler_commit` and `scheduler_delete` as callable
// from any thread; the object only posts to the worker's dispatcher.
unsafe impl Send for EnvoyScheduler {}
// SAFETY: as above; commit takes no mutable module state.
unsafe impl Sync for EnvoyScheduler {}

impl Notify for EnvoyScheduler {
    fn notify(&self) {
        // SAFETY: `ptr` came from `scheduler_new` and is deleted only in Drop.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_scheduler_commit(self.ptr, self.event)
        }
    }
}

impl Drop for EnvoyScheduler {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `scheduler_new` and is deleted exactly once.
        unsafe { ffi::envoy_dynamic_module_callback_network_filter_scheduler_delete(self.ptr) }
    }
}
