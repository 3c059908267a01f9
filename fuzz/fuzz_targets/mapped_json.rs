#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let options = tributary_formats::MappedOptions {
        device: "/d".into(),
        time: Some("/t".into()),
        metrics: "/m".into(),
        ..Default::default()
    };
    if let Err(error) = tributary_formats::decode_mapped_json(data, &options, 1_700_000_000_000_000) {
        assert!(!error.reason().is_empty());
    }
});
