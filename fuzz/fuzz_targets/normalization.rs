//! libFuzzer target: `cargo fuzz run normalization` (see `cinder_fuzz::normalization`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::normalization(data));
