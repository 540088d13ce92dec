//! Envoy's metric store for one filter config.
//!
//! Which update callbacks may run on which thread, per Envoy version:
//! - every supported version (1.38.3, 1.39.3, 1.40.0) has the per-filter
//!   callbacks (`network_filter_increment_counter(filter_envoy_ptr, …)` and
//!   the gauge ones). The filter pointer is only valid on its worker during
//!   a hook, so module threads cannot use them;
//! - 1.39 and 1.40 also have config-level callbacks
//!   (`network_filter_config_increment_counter(config_envoy_ptr, …)`, …),
//!   atomic updates through the config pointer, which lives until
//!   `config_destroy` (after the module has joined its threads): any thread.
//!
//! One `.so` serves all three, so the config-level callbacks are not
//! imported (1.38 would refuse to load the module) but looked up with
//! `dlsym` when the config loads. Without them, [`crate::stats::Stats`]
//! keeps updates pending and the workers deliver them through their
//! connections.

use super::ffi;
use crate::stats::{MetricUpdates, MetricsSink};
use std::ffi::{c_void, CStr};

/// `(config_envoy_ptr, id, value) -> metrics_result`, in 1.39 and 1.40.
type ConfigUpdate = unsafe extern "C" fn(ffi::ConfigEnvoyPtr, usize, u64) -> i32;

/// The config-level update callbacks of an Envoy that has them.
struct ConfigUpdates {
    ptr: ffi::ConfigEnvoyPtr,
    increment_counter: ConfigUpdate,
    increment_gauge: ConfigUpdate,
    decrement_gauge: ConfigUpdate,
    set_gauge: ConfigUpdate,
}

/// Look up one of Envoy's exported functions by name.
fn lookup(name: &CStr) -> Option<ConfigUpdate> {
    // SAFETY: dlsym only reads the loaded objects' symbol tables; `name` is
    // NUL-terminated.
    let found = unsafe { ffi::dlsym(ffi::RTLD_DEFAULT, name.as_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: every name looked up below is a config-level update callback,
    // which Envoy 1.39.3 and 1.40.0 define with exactly this C signature
    // (abi.h; disassembly of both binaries: config, id, value in the first
    // three integer registers); a changed signature would get a new name
    // (`_v2`) under Envoy's ABI policy.
    Some(unsafe { std::mem::transmute::<*mut c_void, ConfigUpdate>(found) })
}

impl ConfigUpdates {
    fn resolve(ptr: ffi::ConfigEnvoyPtr) -> Option<ConfigUpdates> {
        Some(ConfigUpdates {
            ptr,
            increment_counter: lookup(
                c"envoy_dynamic_module_callback_network_filter_config_increment_counter",
            )?,
            increment_gauge: lookup(
                c"envoy_dynamic_module_callback_network_filter_config_increment_gauge",
            )?,
            decrement_gauge: lookup(
                c"envoy_dynamic_module_callback_network_filter_config_decrement_gauge",
            )?,
            set_gauge: lookup(c"envoy_dynamic_module_callback_network_filter_config_set_gauge")?,
        })
    }

    fn call(&self, f: ConfigUpdate, id: usize, v: u64) {
        // SAFETY: `f` is one of Envoy's config-level callbacks (see
        // `lookup`); `ptr` is the live config pointer (see EnvoyMetrics' Send
        // note) and the id came from a define call on it.
        unsafe { f(self.ptr, id, v) };
    }
}

impl MetricUpdates for ConfigUpdates {
    fn counter_add(&self, id: usize, v: u64) {
        self.call(self.increment_counter, id, v);
    }
    fn gauge_add(&self, id: usize, v: u64) {
        self.call(self.increment_gauge, id, v);
    }
    fn gauge_sub(&self, id: usize, v: u64) {
        self.call(self.decrement_gauge, id, v);
    }
    fn gauge_set(&self, id: usize, v: u64) {
        self.call(self.set_gauge, id, v);
    }
}

/// Envoy's stats for one filter config.
pub struct EnvoyMetrics {
    ptr: ffi::ConfigEnvoyPtr,
    /// `None` on Envoy 1.38 (updates then go through connections).
    any_thread: Option<ConfigUpdates>,
}

// SAFETY: the config pointer stays valid until `config_destroy`, which runs
// after every module thread has been joined; the config-level callbacks are
// atomic stat updates through an id vector frozen after config_new. Defines
// happen only in config_new, on the main thread.
unsafe impl Send for EnvoyMetrics {}
// SAFETY: as above.
unsafe impl Sync for EnvoyMetrics {}

impl EnvoyMetrics {
    /// For `config_new`, on the main thread, with the live config pointer.
    pub(super) fn new(ptr: ffi::ConfigEnvoyPtr) -> EnvoyMetrics {
        EnvoyMetrics {
            ptr,
            any_thread: ConfigUpdates::resolve(ptr),
        }
    }

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
    fn any_thread_updates(&self) -> Option<&dyn MetricUpdates> {
        self.any_thread.as_ref().map(|u| u as &dyn MetricUpdates)
    }
}
