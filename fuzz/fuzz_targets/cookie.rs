//! Fuzz target: `lastclick::fuzz::cookie` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lastclick::fuzz::cookie(data));
