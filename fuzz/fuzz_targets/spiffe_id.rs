//! `SpiffeId::parse` on arbitrary text, with the parse -> display -> parse round trip.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::spiffe_id(data);
});
