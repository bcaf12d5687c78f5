//! `outrider ca token --out <dir>`: the bootstrap files a sidecar needs, written without a shell
//! (the docker-compose file's `bootstrap-<app>` jobs), and `ca init` making the token key up
//! front so parallel `ca token` jobs agree on it.

use std::os::unix::fs::PermissionsExt;

use crate::common::outrider_ok;

#[test]
fn token_out_writes_the_token_and_the_trust_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let ca_s = ca.to_str().unwrap();
    outrider_ok(&["ca", "init", "--dir", ca_s]);
    let key = ca.join("token-key.pem");
    assert!(key.is_file(), "ca init makes the token signing key");
    let key_before = std::fs::read(&key).unwrap();

    let out = tmp.path().join("bootstrap");
    let printed = outrider_ok(&[
        "ca",
        "token",
        "--dir",
        ca_s,
        "--namespace",
        "default",
        "--service-account",
        "age",
        "--out",
        out.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&printed.stdout);
    assert!(
        said.contains("spiffe://cluster.local/ns/default/sa/age"),
        "{said}"
    );
    assert!(
        !said.contains("eyJ"),
        "the token is not printed with --out: {said}"
    );

    let token = std::fs::read_to_string(out.join("token")).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    let mode = std::fs::metadata(out.join("token"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(out.join("root-cert.pem")).unwrap(),
        std::fs::read_to_string(ca.join("root-cert.pem")).unwrap(),
        "the bundle is the root while no rotation is under way"
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        key_before,
        "the key is reused"
    );

    // Without --out the token is printed, as before.
    let printed = outrider_ok(&[
        "ca",
        "token",
        "--dir",
        ca_s,
        "--namespace",
        "default",
        "--service-account",
        "age",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout)
            .trim()
            .split('.')
            .count(),
        3
    );
}
