//! Fuzz target: `lastclick::fuzz::utm_location` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lastclick::fuzz::utm_location(data));
