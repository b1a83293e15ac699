//! Fuzz target: `connected_registry::fuzz::connection_string` must return for any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        connected_registry::fuzz::connection_string(text);
    }
});
