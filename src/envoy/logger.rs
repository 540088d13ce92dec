//! The `log` facade's backend inside Envoy: records go to Envoy's
//! `dynamic_modules` logger when Envoy's current level for it takes them.

use super::ffi;
use log::{Level, LevelFilter, Log, Metadata, Record};

struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

/// Envoy's level numbers (`Trace=0 … Error=4`).
fn envoy_level(level: Level) -> i32 {
    match level {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
    }
}

impl Log for EnvoyLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // SAFETY: a read of Envoy's current log level, safe from any thread
        // (spdlog); the function exists in every supported Envoy.
        unsafe { ffi::envoy_dynamic_module_callback_log_enabled(envoy_level(metadata.level())) }
    }

    fn log(&self, record: &Record) {
        // Checked here, before formatting: Envoy's level changes at run time
        // (admin `/logging`), so the facade's max level stays at Trace.
        if !self.enabled(record.metadata()) {
            return;
        }
        let ours = record.target().starts_with(env!("CARGO_CRATE_NAME"));
        let msg = match (ours, record.args().as_str()) {
            (true, Some(s)) => std::borrow::Cow::Borrowed(s),
            (true, None) => record.args().to_string().into(),
            // Other crates' records (rustls) say where they come from.
            (false, _) => format!("{}: {}", record.target(), record.args()).into(),
        };
        // SAFETY: thread-safe in Envoy (spdlog); the buffer outlives the call
        // and Envoy copies it.
        unsafe {
            ffi::envoy_dynamic_module_callback_log(
                envoy_level(record.level()),
                ffi::ModuleBuffer::from_slice(msg.as_bytes()),
            )
        }
    }

    fn flush(&self) {}
}

/// Point the `log` facade at Envoy. Called from the program-init hook, once
/// per process, before any other hook; a second call changes nothing.
pub(super) fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Trace);
    }
}
