//! libFuzzer target: `cargo fuzz run onnx` (see `cinder_fuzz::onnx`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cinder_fuzz::onnx(data));
