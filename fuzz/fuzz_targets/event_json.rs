//! Fuzz target: `lastclick::fuzz::event_json` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lastclick::fuzz::event_json(data));
