//! libFuzzer target: `cargo fuzz run calibration_table` (see `cinder_fuzz::calibration_table`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::calibration_table(data));
