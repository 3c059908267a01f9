#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    use tributary_formats::sparkplug::{Birth, decode_message, resolve};
    if let Ok(Some(message)) = decode_message("spBv1.0/g/NDATA/e", data) {
        let birth = Birth::from_message(&message);
        if let Err(error) = resolve(&message, &[&birth], 1_700_000_000_000_000) {
            assert!(!error.reason().is_empty());
        }
    }
});
