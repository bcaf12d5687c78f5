//! Replays the fuzz corpora that are committed — the seeds in `fuzz/seeds/<target>/` and every
//! input that once crashed a target, kept in `fuzz/regressions/<target>/` — through the same
//! code the libFuzzer targets run (`fuzz/harness.rs`), on the stable toolchain. A parser that
//! panics again on an old crash fails `cargo test`, without nightly or cargo-fuzz.

#[allow(dead_code)]
#[path = "../../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use outrider::proxy::sniff::Detected;

/// The committed inputs of one target: seeds first, then regressions (either may be absent).
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("a dir entry").path()).collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).expect("a readable corpus file");
            files.push((path, bytes));
        }
    }
    assert!(
        !files.is_empty(),
        "no committed inputs for fuzz target {target}"
    );
    files
}

fn name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

#[test]
fn sniff_corpus_is_classified() {
    for (path, data) in inputs("sniff") {
        let detected = harness::sniff(&data);
        let file = name(&path);
        // The captured ClientHellos of real clients are TLS; those that offer Istio's ALPN
        // (outrider's mesh client, `openssl s_client -alpn istio-peer-exchange,...`) ask for
        // mesh mTLS.
        let client = ["rustls", "curl", "openssl"]
            .iter()
            .any(|c| file.starts_with(c));
        if client {
            let mesh = file.starts_with("rustls-mesh") || file.starts_with("openssl-alpn");
            assert!(
                matches!(detected, Detected::Tls { mesh: m, .. } if m == mesh),
                "{file}: {detected:?}"
            );
        }
    }
}

#[test]
fn spiffe_id_corpus_round_trips() {
    for (_, data) in inputs("spiffe_id") {
        harness::spiffe_id(&data);
    }
}

#[test]
fn svid_der_corpus_is_refused_cleanly() {
    // The fixture's root is new on every run, so no committed certificate chains to it: every
    // input must be refused, none may panic.
    let fixture = harness::SvidFixture::new();
    for (path, data) in inputs("svid_der") {
        assert_eq!(
            harness::svid_der(&fixture, &data),
            None,
            "{}",
            path.display()
        );
    }
}

#[test]
fn svid_tbs_corpus_verifies_once_signed() {
    let fixture = harness::SvidFixture::new();
    for (path, data) in inputs("svid_tbs") {
        let id = harness::svid_tbs(&fixture, &data);
        if path.starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")) {
            // The seeds are real SVIDs: signed by the fixture's root, they must verify.
            assert!(id.is_some(), "{}", path.display());
        }
    }
}

#[test]
fn config_corpus_loads_or_fails_cleanly() {
    for (path, data) in inputs("config") {
        match harness::config(&data) {
            Ok(()) => {}
            Err(e) => assert!(!e.to_string().is_empty(), "{}", path.display()),
        }
    }
}

#[test]
fn ca_request_corpus_is_decided() {
    let fixture = harness::CaFixture::new();
    for (path, data) in inputs("ca_request") {
        let issued = harness::ca_request(&fixture, &data);
        let file = name(&path);
        // Claims signed by the CA's own key with a valid subject and CSR get a certificate.
        if file.starts_with("claims-") && file.contains(".csr") {
            assert_eq!(
                issued.map(|id| id.to_string()).as_deref(),
                Some("spiffe://cluster.local/ns/default/sa/sleep"),
                "{file}"
            );
        }
    }
}
