//! Fuzz target: `connected_registry::fuzz::manifests` must return for any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    connected_registry::fuzz::manifests(data);
});
