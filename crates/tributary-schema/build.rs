//! Compiles `proto/` with protox (pure Rust), so no machine needs `protoc`.

fn main() {
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let file = format!("{proto_root}/tributary/v1/events.proto");
    println!("cargo:rerun-if-changed={proto_root}");
    let fds = protox::compile([&file], [proto_root]).expect("proto/ must compile");
    prost_build::Config::new()
        // Ordered maps: the same event always encodes to the same bytes, and
        // decoded attributes come sorted.
        .btree_map(["."])
        // The payload is handed on, never changed: share its buffer instead of copying it.
        .bytes([".tributary.v1.RawEnvelope.payload"])
        .compile_fds(fds)
        .expect("prost code generation");
}
