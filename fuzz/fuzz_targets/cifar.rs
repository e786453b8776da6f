//! libFuzzer target: `cargo fuzz run cifar` (see `cinder_fuzz::cifar`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::cifar(data));
