//! libFuzzer target: `cargo fuzz run model_file` (see `cinder_fuzz::model_file`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::model_file(data));
