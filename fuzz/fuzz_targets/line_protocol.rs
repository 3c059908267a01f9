#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let options = tributary_formats::LineOptions::default();
    match tributary_formats::decode_line_protocol(data, &options, 1_700_000_000_000_000) {
        // Every decoded point names its device and metric.
        Ok(points) => assert!(points.iter().all(|p| !p.device_id.is_empty() && p.metric.contains('.'))),
        Err(error) => assert!(!error.reason().is_empty()),
    }
});
