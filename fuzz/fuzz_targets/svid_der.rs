//! SVID rules and full SVID verification on arbitrary DER (or PEM).
#![no_main]

use std::sync::LazyLock;

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

static FIXTURE: LazyLock<harness::SvidFixture> = LazyLock::new(harness::SvidFixture::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::svid_der(&FIXTURE, data);
});
