//! Compiles the official ONNX schema (`proto/onnx.proto3`) with protox (a protobuf
//! compiler in Rust, no `protoc`) and generates its prost types into `src/proto/onnx.rs` (prost names
//! the file after the package).

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let proto_dir = crate_dir.join("proto");
    let out_dir = crate_dir.join("src").join("proto");
    let descriptors = protox::compile([proto_dir.join("onnx.proto3")], [&proto_dir])?;
    prost_build::Config::new()
        .out_dir(&out_dir)
        .compile_fds(descriptors)?;
    Ok(())
}
