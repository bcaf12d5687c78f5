//! The CA's request path: bearer token (or claims signed with the CA's token key) and CSR.
#![no_main]

use std::sync::LazyLock;

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

static FIXTURE: LazyLock<harness::CaFixture> = LazyLock::new(harness::CaFixture::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::ca_request(&FIXTURE, data);
});
