//! libFuzzer target: `cargo fuzz run model_header` (see `cinder_fuzz::model_header`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::model_header(data));
