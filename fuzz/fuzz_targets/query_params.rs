#![no_main]
// Any query string: parameters or a 400 with a stable code, never a panic;
// every accessor on what parsed answers or refuses in the same way.
use query_api::params::{Params, bucket_width};

const KNOWN: &[&str] = &["device", "metric", "from", "to", "bucket", "limit", "cursor", "fn"];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let params = match Params::parse(Some(raw), KNOWN) {
        Ok(params) => params,
        Err(error) => {
            assert_eq!(error.status.as_u16(), 400);
            assert!(!error.code.is_empty() && !error.message.is_empty());
            return;
        }
    };
    for name in KNOWN {
        let _ = params.one(name);
        let _ = params.required(name);
        let _ = params.list(name);
        let _ = params.time(name, 0);
        let _ = params.number(name, 1, 1..=10_000);
        if let Ok(Some(value)) = params.one(name) {
            if let Ok(width) = bucket_width(value) {
                assert!(width > 0);
            }
        }
    }
});
