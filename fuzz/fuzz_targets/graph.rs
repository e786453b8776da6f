//! libFuzzer target: `cargo fuzz run graph` (see `cinder_fuzz::graph`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::graph(data));
