//! Hand-written declarations of the Envoy dynamic-module ABI functions this
//! module imports. Only functions exported by every supported Envoy (1.38.3,
//! 1.39.3, 1.40.0) are declared: a missing symbol makes `dlopen` fail and
//! Envoy reject the configuration (`scripts/check-symbols.sh` checks it).
//! Functions only newer Envoys have are looked up at run time instead
//! (`dlsym`, see `metrics.rs`).

use std::ffi::{c_char, c_void};

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn from_slice(s: &[u8]) -> Self {
        ModuleBuffer {
            ptr: s.as_ptr(),
            length: s.len(),
        }
    }
}

pub type FilterEnvoyPtr = *mut c_void;
pub type ConfigEnvoyPtr = *mut c_void;
pub type SchedulerPtr = *mut c_void;

// Enum values (C enums are 32-bit ints).
pub const DATA_STATUS_CONTINUE: i32 = 0;
pub const DATA_STATUS_STOP_ITERATION: i32 = 1;
pub const CLOSE_FLUSH_WRITE: i32 = 0;
pub const CLOSE_NO_FLUSH: i32 = 1;

extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: i32, msg: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: i32) -> bool;
    pub fn envoy_dynamic_module_callback_is_validation_mode() -> bool;
    pub fn envoy_dynamic_module_callback_get_concurrency() -> u32;

    pub fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks_size(
        f: FilterEnvoyPtr,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_network_filter_get_read_buffer_chunks(
        f: FilterEnvoyPtr,
        out: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_network_filter_drain_read_buffer(
        f: FilterEnvoyPtr,
        len: usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_network_filter_get_buffer_limit(f: FilterEnvoyPtr) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_set_buffer_limits(
        f: FilterEnvoyPtr,
        limit: u32,
    );
    pub fn envoy_dynamic_module_callback_network_filter_get_read_buffer_size(
        f: FilterEnvoyPtr,
    ) -> usize;
    // Returns bool in 1.40 and nothing in older releases: declared without
    // a result, which is read back through `get_read_buffer_size`.
    pub fn envoy_dynamic_module_callback_network_filter_append_read_buffer(
        f: FilterEnvoyPtr,
        data: ModuleBuffer,
    );
    pub fn envoy_dynamic_module_callback_network_filter_write(
        f: FilterEnvoyPtr,
        data: ModuleBuffer,
        end_stream: bool,
    );
    pub fn envoy_dynamic_module_callback_network_filter_close(f: FilterEnvoyPtr, close_type: i32);
    pub fn envoy_dynamic_module_callback_network_filter_enable_half_close(
        f: FilterEnvoyPtr,
        enabled: bool,
    );
    pub fn envoy_dynamic_module_callback_network_filter_read_disable(
        f: FilterEnvoyPtr,
        disable: bool,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_network_filter_get_worker_index(f: FilterEnvoyPtr) -> u32;
    pub fn envoy_dynamic_module_callback_network_filter_get_local_address(
        f: FilterEnvoyPtr,
        address_out: *mut EnvoyBuffer,
        port_out: *mut u32,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_network_filter_get_remote_address(
        f: FilterEnvoyPtr,
        address_out: *mut EnvoyBuffer,
        port_out: *mut u32,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_network_filter_config_define_counter(
        c: ConfigEnvoyPtr,
        name: ModuleBuffer,
        id_out: *mut usize,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_network_filter_config_define_gauge(
        c: ConfigEnvoyPtr,
        name: ModuleBuffer,
        id_out: *mut usize,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_network_filter_config_define_histogram(
        c: ConfigEnvoyPtr,
        name: ModuleBuffer,
        id_out: *mut usize,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_network_filter_increment_counter(
        f: FilterEnvoyPtr,
        id: usize,
        v: u64,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_network_filter_increment_gauge(
        f: FilterEnvoyPtr,
        id: usize,
        v: u64,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_network_filter_decrement_gauge(
        f: FilterEnvoyPtr,
        id: usize,
        v: u64,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_network_filter_set_gauge(
        f: FilterEnvoyPtr,
        id: usize,
        v: u64,
    ) -> i32;
    pub fn envoy_dynamic_module_callback_network_filter_record_histogram_value(
        f: FilterEnvoyPtr,
        id: usize,
        v: u64,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_network_filter_scheduler_new(
        f: FilterEnvoyPtr,
    ) -> SchedulerPtr;
    pub fn envoy_dynamic_module_callback_network_filter_scheduler_commit(
        s: SchedulerPtr,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_network_filter_scheduler_delete(s: SchedulerPtr);
}

/// glibc's `RTLD_DEFAULT`: search the global scope, which holds the Envoy
/// executable's exported functions.
pub const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();

extern "C" {
    /// libc's symbol lookup (glibc exports it from libc.so.6 since 2.34).
    pub fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}
