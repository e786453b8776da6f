//! Runs the `own_cnn` example (a user-defined residual CNN trained, calibrated, converted
//! and run in the int8 runtime) end to end, so that the example stays working.

#[path = "../examples/own_cnn.rs"]
mod own_cnn;

#[test]
fn the_own_cnn_example_runs() {
    own_cnn::main().unwrap();
}
