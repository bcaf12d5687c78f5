//! The configuration loader on arbitrary YAML text, then `plan()` for every workload.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = harness::config(data);
});
