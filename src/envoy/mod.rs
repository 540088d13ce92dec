//! The FFI boundary with Envoy: every `unsafe` block, raw pointer and
//! `extern "C"` item of the crate lives under this module.
//!
//! [`hooks`] holds the functions Envoy calls; [`ffi`] the functions we call.
//! The rest of the crate sees only safe types: [`EnvoyConnection`] (a worker-
//! thread handle implementing [`crate::session::Downstream`]) and
//! [`EnvoyScheduler`] (implementing [`crate::session::Notify`]).

pub mod ffi;
mod hooks;

use crate::session::{Downstream, Notify};

/// Envoy's log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

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

    fn read_disable(&mut self, disable: bool) {
        // SAFETY: live filter pointer on its worker thread (see `write`).
        unsafe {
            ffi::envoy_dynamic_module_callback_network_filter_read_disable(self.ptr, disable);
        }
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

/// Log through Envoy's `dynamic_modules` logger once the module is loaded by
/// Envoy; before that (unit tests) messages go nowhere.
pub fn log(level: Level, msg: &str) {
    if !hooks::loaded_by_envoy() {
        return;
    }
    // SAFETY: both functions are thread-safe in Envoy (spdlog); the buffer
    // outlives the call.
    unsafe {
        if ffi::envoy_dynamic_module_callback_log_enabled(level as i32) {
            ffi::envoy_dynamic_module_callback_log(
                level as i32,
                ffi::ModuleBuffer::from_slice(msg.as_bytes()),
            );
        }
    }
}

/// Cheap check to skip formatting a message nobody will see.
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: thread-safe query of Envoy's log level.
    hooks::loaded_by_envoy()
        && unsafe { ffi::envoy_dynamic_module_callback_log_enabled(level as i32) }
}

/// `log!(Level::Info, "x {}", y)`: formats only when the level is enabled.
#[macro_export]
macro_rules! log {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::envoy::log_enabled($lvl) {
            $crate::envoy::log($lvl, &format!($($arg)*));
        }
    };
}
