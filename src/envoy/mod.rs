//! The FFI boundary with Envoy: every `unsafe` block, raw pointer and
//! `extern "C"` item of the crate lives under this module.
//!
//! [`hooks`] holds the functions Envoy calls; [`ffi`] the functions we call.
//! The rest of the crate sees only safe types: [`EnvoyConnection`] (a worker-
//! thread handle implementing [`crate::session::Downstream`]) and
//! [`EnvoyScheduler`] (implementing [`crate::session::Notify`]).

mod ffi;
mod hooks;
mod logger;

use crate::session::{Downstream, Notify};
use crate::stats::MetricsSink;

/// Where call sites have always taken the level of `log!` from.
pub use crate::logging::Level;

/// A handle on the downstream connection, valid only on its worker thread and
/// only during a hook call (it is created per call, never stored).
pub struct EnvoyConnection {
    ptr: ffi::FilterEnvoyPtr,
}

impl Downstream for EnvoyConnection {
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

/// Envoy's stats for one filter config. Counters and gauges are atomic in
/// Envoy and may be updated from any thread through the config pointer,
/// which stays valid until `config_destroy` (after every module thread has
/// been joined).
pub struct EnvoyMetrics {
    ptr: ffi::ConfigEnvoyPtr,
}

// SAFETY: Envoy's config-level metric updates are thread-safe (atomic stats
// looked up by an id vector that is frozen after config_new).
unsafe impl Send for EnvoyMetrics {}
// SAFETY: as above.
unsafe impl Sync for EnvoyMetrics {}

impl EnvoyMetrics {
    fn define(
        &self,
        f: unsafe extern "C" fn(ffi::ConfigEnvoyPtr, ffi::ModuleBuffer, *mut usize) -> i32,
        name: &str,
    ) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: called from config_new on the main thread with the live
        // config pointer; Envoy copies the name.
        let rc = unsafe {
            f(
                self.ptr,
                ffi::ModuleBuffer::from_slice(name.as_bytes()),
                &mut id,
            )
        };
        // Ids start at 1; 0 and a non-zero result mean "not defined".
        (rc == 0 && id != 0).then_some(id)
    }
}

impl MetricsSink for EnvoyMetrics {
    fn define_counter(&self, name: &str) -> Option<usize> {
        self.define(
            ffi::envoy_dynamic_module_callback_network_filter_config_define_counter,
            name,
        )
    }
    fn define_gauge(&self, name: &str) -> Option<usize> {
        self.define(
            ffi::envoy_dynamic_module_callback_network_filter_config_define_gauge,
            name,
        )
    }
    fn define_histogram(&self, name: &str) -> Option<usize> {
        self.define(
            ffi::envoy_dynamic_module_callback_network_filter_config_define_histogram,
            name,
        )
    }
    fn counter_add(&self, id: usize, v: u64) {
        // SAFETY: see the Send/Sync note; the id came from a define call.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_config_increment_counter(
                self.ptr, id, v,
            )
        };
    }
    fn gauge_add(&self, id: usize, v: u64) {
        // SAFETY: as counter_add.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_config_increment_gauge(
                self.ptr, id, v,
            )
        };
    }
    fn gauge_sub(&self, id: usize, v: u64) {
        // SAFETY: as counter_add.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_config_decrement_gauge(
                self.ptr, id, v,
            )
        };
    }
    fn gauge_set(&self, id: usize, v: u64) {
        // SAFETY: as counter_add.
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_config_set_gauge(self.ptr, id, v)
        };
    }
}

/// The per-connection scheduler: lets a module thread wake the connection's
/// worker. Envoy allocates it; we delete it on drop.
pub struct EnvoyScheduler {
    ptr: ffi::SchedulerPtr,
}

// SAFETY: Envoy documents `scheduler_commit` and `scheduler_delete` as callable
// from any thread; the object only posts to the worker's dispatcher.
unsafe impl Send for EnvoyScheduler {}
// SAFETY: as above; commit takes no mutable module state.
unsafe impl Sync for EnvoyScheduler {}

impl Notify for EnvoyScheduler {
    fn notify(&self) {
        // SAFETY: `ptr` came from `scheduler_new` and is deleted only in Drop.
        unsafe { ffi::envoy_dynamic_module_callback_network_filter_scheduler_commit(self.ptr, 0) }
    }
}

impl Drop for EnvoyScheduler {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `scheduler_new` and is deleted exactly once.
        unsafe { ffi::envoy_dynamic_module_callback_network_filter_scheduler_delete(self.ptr) }
    }
}
