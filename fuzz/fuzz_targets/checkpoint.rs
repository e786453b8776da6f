//! libFuzzer target: `cargo fuzz run checkpoint` (see `cinder_fuzz::checkpoint`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::checkpoint(data));
