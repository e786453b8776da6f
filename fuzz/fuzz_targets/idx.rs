//! libFuzzer target: `cargo fuzz run idx` (see `cinder_fuzz::idx`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::idx(data));
