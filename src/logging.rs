//! Logging through the `log` crate's facade. The program-init hook installs
//! a backend that writes to Envoy's `dynamic_modules` logger
//! (`envoy::logger`); outside Envoy (unit tests, fuzz targets) none is
//! installed, so messages are dropped before they are formatted and nothing
//! here refers to an Envoy symbol.

/// Log levels (the `log` crate's: `Error`, `Warn`, `Info`, `Debug`, `Trace`).
pub use log::Level;

#[doc(hidden)]
pub use log as facade;

/// `log!(Level::Info, "x {}", y)`: formats only when the installed backend
/// takes the level (inside Envoy: Envoy's current `dynamic_modules` level).
#[macro_export]
macro_rules! log {
    ($lvl:expr, $($arg:tt)*) => {
        $crate::logging::facade::log!($lvl, $($arg)*)
    };
}
