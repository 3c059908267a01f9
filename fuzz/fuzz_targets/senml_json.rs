#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(error) = tributary_formats::decode_senml_json(data, 1_700_000_000_000_000) {
        assert!(!error.reason().is_empty());
    }
});
