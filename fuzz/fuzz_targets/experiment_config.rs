//! libFuzzer target: `cargo fuzz run experiment_config` (see `cinder_fuzz::experiment_config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::experiment_config(data));
