//! Compiles the Sparkplug B payload schema (`proto/sparkplug/`) with protox
//! (pure Rust), so no machine needs `protoc`.

fn main() {
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let file = format!("{proto_root}/sparkplug/sparkplug_b.proto");
    println!("cargo:rerun-if-changed={proto_root}/sparkplug");
    let fds = protox::compile([&file], [proto_root]).expect("proto/sparkplug must compile");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost code generation");
}
