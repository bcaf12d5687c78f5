//! The inbound protocol sniffer on arbitrary bytes: the first byte picks the read size, the
//! rest is the stream (see `harness::sniff`).
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::sniff(data);
});
