//! Fuzz target: `lastclick::fuzz::config` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lastclick::fuzz::config(data));
