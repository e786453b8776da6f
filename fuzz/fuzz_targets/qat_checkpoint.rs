//! libFuzzer target: `cargo fuzz run qat_checkpoint` (see `cinder_fuzz::qat_checkpoint`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::qat_checkpoint(data));
