//! `outrider ca init` / `ca issue` through the built binary, checked with openssl.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::ca::s;
use crate::common::{outrider, temp_dir, tool_available};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_and_issue_produce_an_svid_openssl_accepts() {
    let tmp = temp_dir("ok");
    let dir = tmp.path();
    let ca = dir.join("ca");
    let out = dir.join("age");
    let o = outrider(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--trust-domain",
        "example.org",
    ]);
    assert!(o.status.success(), "ca init failed: {}", stderr(&o));
    assert_eq!(mode(&ca.join("root-key.pem")), 0o600);
    let o = outrider(&[
        "ca",
        "issue",
        "--ca-dir",
        s(&ca),
        "--namespace",
        "default",
        "--service-account",
        "age",
        "--out",
        s(&out),
        "--ttl",
        "1h30m",
        "--dns",
        "age.default.svc",
    ]);
    assert!(o.status.success(), "ca issue failed: {}", stderr(&o));
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&out.join("key.pem")), 0o600);

    if !tool_available("openssl") {
        return;
    }
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(&out)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let (ok, text) = openssl(&["verify", "-CAfile", "root-cert.pem", "cert-chain.pem"]);
    assert!(ok, "openssl verify: {text}");
    let (_, text) = openssl(&["x509", "-in", "cert-chain.pem", "-noout", "-text"]);
    for expected in [
        "URI:spiffe://example.org/ns/default/sa/age",
        "DNS:age.default.svc",
        "Subject Alternative Name: critical",
        "CA:FALSE",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "Digital Signature",
    ] {
        assert!(text.contains(expected), "{expected:?} not in {text}");
    }
    let (_, root) = openssl(&["x509", "-in", "root-cert.pem", "-noout", "-text"]);
    assert!(root.contains("URI:spiffe://example.org"), "{root}");
    assert!(root.contains("CA:TRUE"), "{root}");
    assert!(root.contains("Certificate Sign, CRL Sign"), "{root}");
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let tmp = temp_dir("force");
    let dir = tmp.path();
    let ca = dir.join("ca");
    assert!(outrider(&["ca", "init", "--dir", s(&ca)]).status.success());
    let before = std::fs::read(ca.join("root-key.pem")).unwrap();
    let o = outrider(&["ca", "init", "--dir", s(&ca)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read(ca.join("root-key.pem")).unwrap(), before);
    let o = outrider(&["ca", "init", "--dir", s(&ca), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(ca.join("root-key.pem")).unwrap(), before);
}

#[test]
fn errors_are_plain_sentences() {
    let tmp = temp_dir("errors");
    let dir = tmp.path();
    let ca = dir.join("ca");
    assert!(outrider(&["ca", "init", "--dir", s(&ca)]).status.success());
    let missing = dir.join("nope");
    let out = dir.join("out");
    let issue = |ca: &Path, ns: &str, ttl: &str| {
        outrider(&[
            "ca",
            "issue",
            "--ca-dir",
            s(ca),
            "--namespace",
            ns,
            "--service-account",
            "sa",
            "--out",
            s(&out),
            "--ttl",
            ttl,
        ])
    };
    let init = |name: &str, extra: &[&str]| {
        let d = dir.join(name);
        let mut args = vec!["ca", "init", "--dir", s(&d)];
        args.extend_from_slice(extra);
        outrider(&args)
    };
    let cases: Vec<(Output, String)> = vec![
        (
            issue(&missing, "ns", "24h"),
            format!("CA directory {} does not exist", missing.display()),
        ),
        (issue(&ca, "ns", "1.5h"), "invalid duration \"1.5h\"".into()),
        (
            init("ca2", &["--ttl", "ten years"]),
            "invalid duration \"ten years\"".into(),
        ),
        (
            issue(&ca, "Bad NS", "24h"),
            "invalid namespace \"Bad NS\"".into(),
        ),
        (issue(&ca, "..", "24h"), "invalid namespace \"..\"".into()),
        (
            init("ca3", &["--trust-domain", "Example.org"]),
            "invalid trust domain \"Example.org\"".into(),
        ),
    ];
    for (o, expected) in cases {
        let err = stderr(&o);
        assert!(!o.status.success(), "should fail: {expected}");
        assert!(err.contains(&expected), "expected {expected:?} in {err:?}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !err.contains("Error {") && !err.contains("Os {"),
            "not a plain sentence: {err}"
        );
    }
    std::fs::remove_file(ca.join("root-key.pem")).unwrap();
    let o = issue(&ca, "ns", "24h");
    let expected = format!("cannot read key {}", ca.join("root-key.pem").display());
    assert!(stderr(&o).contains(&expected), "{}", stderr(&o));
}
