//! The fuzz targets' checks, as plain functions so that the main crate's
//! `tests/fuzz_regressions.rs` replays saved inputs through exactly the same
//! logic without libFuzzer (it includes `checks.rs` by path).
pub mod checks;
