#![no_main]
// Any route file: a table or a list of problems, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match tributary_formats::RouteTable::from_toml(text) {
            Ok(table) => assert!(!table.routes().is_empty()),
            Err(problems) => assert!(!problems.is_empty()),
        }
    }
});
