#![no_main]
// Any bytes: a list of points or a reason, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(error) = tributary_formats::decode(tributary_formats::Format::Items, data) {
        assert!(!error.reason().is_empty());
    }
});
