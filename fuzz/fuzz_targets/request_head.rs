//! Fuzz target: `lastclick::fuzz::request_head` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lastclick::fuzz::request_head(data));
