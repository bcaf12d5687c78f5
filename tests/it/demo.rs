//! `outrider demo --once`: the README's "see it work" command plays the whole storyline (mTLS,
//! subsets, AuthorizationPolicy, end-user JWTs, the ingress gateway at the edge) and cleans up
//! after itself.

use std::process::Command;

use crate::common::BIN;

#[test]
fn demo_plays_the_storyline_and_cleans_up() {
    let out = Command::new(BIN)
        .args(["demo", "--once", "--requests", "4"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // PERMISSIVE: the mesh is mTLS, the intruder gets through and is listed.
    assert!(
        stdout.contains("user → sentences: 4/4 answered"),
        "{stdout}"
    );
    assert!(stdout.contains("sentences → age: mutual_tls"), "{stdout}");
    assert!(
        stdout.contains("intruder (no sidecar, plaintext) → age: got through"),
        "{stdout}"
    );
    assert!(
        stdout.contains("who still blocks STRICT: 127.0.0.1"),
        "{stdout}"
    );
    // STRICT: the intruder is reset, the mesh keeps working.
    assert!(
        stdout.contains("connection reset by peer — blocked"),
        "{stdout}"
    );
    // Subsets: v1 plaintext, v2 mTLS.
    assert!(stdout.contains("name-v1: none"), "{stdout}");
    assert!(
        stdout.contains("sentences → name-v2: mutual_tls"),
        "{stdout}"
    );
    // AuthorizationPolicy (only sentences may call age), still PERMISSIVE: the intruder's
    // plaintext request reaches age's sidecar and is answered 403; sentences is still answered;
    // age's request metrics count both, by response code.
    let step4 = stdout
        .split("\n4. AuthorizationPolicy default/age-callers")
        .nth(1)
        .unwrap_or_else(|| panic!("no step 4: {stdout}"));
    assert!(
        step4.contains(r#"intruder (no sidecar, plaintext) → age: 403 "RBAC: access denied""#),
        "{stdout}"
    );
    assert!(!step4.contains("got through"), "{stdout}");
    assert!(
        step4.contains("a plaintext client (no identity) → age: none"),
        "{stdout}"
    );
    let by_code = step4
        .lines()
        .find(|l| l.contains("age's istio_requests_total by response_code"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(by_code.contains("200 from sentences ×"), "{by_code}");
    assert!(by_code.contains("403 from unknown ×"), "{by_code}");
    assert!(!by_code.contains("403 from sentences"), "{by_code}");
    // End-user authentication (the lab's require-jwt beside age-callers): a client without a
    // sidecar needs a token everywhere but /health_check, and a bad one is refused with 401;
    // sentences, allowed by age-callers, still gets its answers without a token.
    let step5 = stdout
        .split("\n5. End-user authentication")
        .nth(1)
        .unwrap_or_else(|| panic!("no step 5: {stdout}"));
    for want in [
        r#"client (no sidecar) → age /health_check, no token: 200 "ok""#,
        r#"client (no sidecar) → age /, no token: 403 "RBAC: access denied""#,
        r#"client (no sidecar) → age /, alice's token: 200 ""#,
        r#"client (no sidecar) → age /, a tampered token: 401 "Jwt verification fails""#,
    ] {
        assert!(step5.contains(want), "{want:?} missing: {stdout}");
    }
    // The edge: the gateway serves the users' certificate (SIMPLE), redirects HTTP to HTTPS,
    // then under MUTUAL answers the client with a certificate and refuses the one without;
    // it reaches sentences over mTLS, so STRICT leaves it working.
    let step6 = stdout
        .split("\n6. The edge")
        .nth(1)
        .unwrap_or_else(|| panic!("no step 6: {stdout}"));
    let edge_tallies: Vec<&str> = step6
        .lines()
        .filter(|l| l.contains("user (no client certificate) → gateway → sentences: 4/4 answered"))
        .collect();
    assert_eq!(edge_tallies.len(), 2, "SIMPLE, then under STRICT: {stdout}");
    assert!(
        step6.contains("the gateway's /certs serves: port ")
            && step6.contains("sentences.example.com"),
        "{stdout}"
    );
    assert!(
        step6.contains("→ HTTP 301, location: https://sentences.example.com"),
        "{stdout}"
    );
    let with_cert = step6
        .lines()
        .find(|l| l.contains("with --cert client.example.com.crt"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(with_cert.contains(": 200 \""), "{with_cert}");
    let without = step6
        .lines()
        .find(|l| l.contains("without a client certificate: refused"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(without.contains("CertificateRequired"), "{without}");
    let handshakes = step6
        .lines()
        .find(|l| l.contains("outrider_gateway_tls_handshakes_total by outcome"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(handshakes.contains("ok ×"), "{handshakes}");
    assert!(
        handshakes.contains("certificate_required ×"),
        "{handshakes}"
    );
    assert!(
        step6.contains("ingressgateway → sentences: mutual_tls 200 ×"),
        "{stdout}"
    );
    // Every request of every step was answered.
    let steps: Vec<&str> = stdout.lines().filter(|l| l.contains(" answered")).collect();
    assert_eq!(steps.len(), 7, "{stdout}");
    for line in steps {
        let counts = line
            .split(": ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("");
        let (ok, all) = counts.split_once('/').unwrap_or(("0", "1"));
        assert_eq!(ok, all, "{line}");
    }
    // Its work directory is gone.
    let workdir = stdout
        .lines()
        .next()
        .and_then(|l| l.split("(work dir ").nth(1))
        .map(|r| r.trim_end_matches(')').to_string())
        .expect("work dir printed");
    assert!(
        !std::path::Path::new(&workdir).exists(),
        "{workdir} was left behind"
    );
}
