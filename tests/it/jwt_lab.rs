//! The labs' end-user authentication storyline (issue 12, item 6) against real processes: the
//! sample OIDC issuer (`outrider sample-app --service auth`), the `age` sample app and its
//! sidecar, a RequestAuthentication for `app: age` that trusts the issuer (by `jwksUri`, and
//! by OIDC discovery), and the lab's AuthorizationPolicy `require-jwt` (a request principal on
//! every path but `/health_check`). A client without a sidecar calls age's HTTP port as the
//! labs' curl does: `/health_check` without a token → 200; `/` without a token → 403
//! `RBAC: access denied`; alice's token from the token endpoint → 200; a tampered token → 401
//! `Jwt verification fails`; an expired one (minted by PyJWT with the issuer's own key and
//! kid) → 401 `Jwt is expired`.
//!
//! The lab prints that policy with `selector` indented under `action`: `outrider check` on that
//! text fails with `file:line:column: spec.action` here; what the loader reports (and that the
//! intended text loads) is asserted in detail by `config_errors::
//! misindented_lab_policy_is_refused_and_the_intended_one_loads`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::auth_sample::{pyjwt_available, AuthIssuer, CERTS_PATH};
use crate::common::*;

/// The lab's AuthorizationPolicy, indented as meant.
const REQUIRE_JWT: &str = r#"apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: default
spec:
  action: ALLOW
  selector:
    matchLabels:
      app: age
  rules:
  - from:
    - source:
        requestPrincipals: ["*"]
    to:
    - operation:
        notPaths: ["/health_check"]
  - to:
    - operation:
        paths: ["/health_check"]
"#;

/// A RequestAuthentication for `app: age` trusting `issuer`; keys from `jwks_uri`, or by OIDC
/// discovery from the issuer when `None`.
fn request_authentication(issuer: &str, jwks_uri: Option<&str>) -> String {
    let jwks = jwks_uri
        .map(|u| format!("\n    jwksUri: \"{u}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-auth
  namespace: default
spec:
  selector:
    matchLabels:
      app: age
  jwtRules:
  - issuer: \"{issuer}\"{jwks}
"
    )
}

/// A process of the built binary, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `age` sample app on `port`, once it answers.
fn age_app(port: u16) -> Proc {
    let child = Command::new(BIN)
        .args(["sample-app", "--service", "age", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the age app starts");
    let app = Proc(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        eventually(Duration::from_secs(20), || matches!(
            http_get(addr, "/health_check"),
            Ok((200, _))
        )),
        "the age app never answered"
    );
    app
}

/// What an HTTP request got back: status, head (lowercase names), body.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// A GET of `path` with an optional bearer token, over a fresh plaintext connection.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: age:8080\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Reply {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// The same token with one signature character changed (not the last one: its low bits are
/// base64 padding).
fn tamper(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len() - 10;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// An RS256 token for alice that expired ten minutes ago, signed by PyJWT with `key_pem` and
/// `kid`; `None` when PyJWT is not installed (skipped with a printed reason).
fn expired_token(key_pem: &Path, issuer: &str, kid: &str) -> Option<String> {
    if !pyjwt_available() {
        return None;
    }
    let script = "import sys, time, jwt
now = int(time.time())
claims = {'iss': sys.argv[2], 'sub': 'alice', 'aud': 'frontend', 'azp': 'frontend',
          'iat': now - 3600, 'exp': now - 600, 'scope': 'openid profile'}
print(jwt.encode(claims, open(sys.argv[1]).read(), algorithm='RS256', headers={'kid': sys.argv[3]}))
";
    let child = Command::new("python3")
        .args(["-c", script, key_pem.to_str().unwrap(), issuer, kid])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded_output(child, "PyJWT", Duration::from_secs(60));
    assert!(
        out.status.success(),
        "PyJWT could not mint a token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// One run of the storyline: the issuer (with `key_pem`), age and its sidecar, the
/// RequestAuthentication (`by_discovery`: no `jwksUri`) and `require-jwt`.
fn storyline(by_discovery: bool) {
    let tmp = temp_dir("jwt-lab");
    let key = tmp.path().join("issuer-key.pem");
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    std::fs::write(&key, pem).unwrap();
    let auth = AuthIssuer::start(&["--key", key.to_str().unwrap()]);
    let issuer = auth.url("/auth/realms/mesh");
    let jwks_uri = auth.url(CERTS_PATH);

    let age_port = free_port();
    let _app = age_app(age_port);
    let mesh = Mesh::new(age_port, "HTTP", "PERMISSIVE");
    let authn = request_authentication(&issuer, (!by_discovery).then_some(jwks_uri.as_str()));
    replace_file(&mesh.config().join("request-authentication.yaml"), &authn);
    replace_file(&mesh.config().join("require-jwt.yaml"), REQUIRE_JWT);
    let age = mesh.sidecar("age");
    let at = mesh.age_addr();
    let context = |what: &str, r: &Reply| {
        format!(
            "{what}: {r:?}\nsidecar log:\n{}\nissuer log:\n{}",
            age.logs(),
            auth.logs()
        )
    };

    // The keys are fetched off the request path: until then every token fails (fail closed).
    let alice = auth.token("alice");
    let mut last = None;
    let fetched = eventually(Duration::from_secs(20), || {
        let r = get(at, "/", Some(&alice));
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    assert!(
        fetched,
        "{}",
        context("alice's token was never accepted", last.as_ref().unwrap())
    );
    let r = last.unwrap();
    assert!(
        r.body.trim().parse::<u32>().is_ok(),
        "{}",
        context("age answers an age", &r)
    );

    let r = get(at, "/health_check", None);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok"),
        "{}",
        context("/health_check without a token", &r)
    );
    let r = get(at, "/", None);
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{}",
        context("/ without a token", &r)
    );
    let r = get(at, "/", Some(&tamper(&alice)));
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "Jwt verification fails"),
        "{}",
        context("a tampered token", &r)
    );
    assert!(
        r.head.contains("www-authenticate: bearer realm="),
        "{}",
        context("a tampered token", &r)
    );
    // Valid-or-absent: an invalid token is refused even where no principal is required.
    let r = get(at, "/health_check", Some(&tamper(&alice)));
    assert_eq!(r.status, 401, "{}", context("/health_check, tampered", &r));
    // The compose lab's client: `outrider fetch --header` (curl's -H) with alice's token.
    let url = format!("http://{at}/");
    let bearer = format!("Authorization: Bearer {alice}");
    let out = outrider(&["fetch", "--header", &bearer, &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fetch with alice's token: {stdout}");
    assert!(stdout.starts_with("200 "), "{stdout}");
    let out = outrider(&["fetch", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "fetch without a token: {stdout}");
    assert_eq!(stdout.trim_end(), "403 RBAC: access denied");
    // Bob's token is as good as alice's: the policy asks for any request principal.
    let r = get(at, "/", Some(&auth.token("bob")));
    assert_eq!(r.status, 200, "{}", context("bob's token", &r));

    let kid = auth.jwks_kids()[0].clone();
    if let Some(expired) = expired_token(&key, &issuer, &kid) {
        let r = get(at, "/", Some(&expired));
        assert_eq!(
            (r.status, r.body.as_str()),
            (401, "Jwt is expired"),
            "{}",
            context("an expired token", &r)
        );
    }
}

#[test]
fn lab_storyline_with_jwks_uri() {
    storyline(false);
}

#[test]
fn lab_storyline_with_oidc_discovery() {
    storyline(true);
}

/// `outrider check` on the policy as the lab prints it (selector under `action`) names the
/// file, line and field; the intended text passes.
#[test]
fn check_refuses_the_labs_misindented_policy() {
    let tmp = temp_dir("jwt-lab-check");
    let mesh = "apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: { name: mesh }
spec: { trustDomain: cluster.local, rootNamespace: istio-system }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age, namespace: default, labels: { app: age } }
spec:
  serviceAccount: age
  address: 127.0.0.1
  ports: [{ name: http, port: 8080, targetPort: 18080, protocol: HTTP }]
";
    std::fs::write(tmp.path().join("mesh.yaml"), mesh).unwrap();
    let policy = tmp.path().join("require-jwt.yaml");
    let printed = REQUIRE_JWT.replace(
        "  action: ALLOW\n  selector:\n    matchLabels:\n      app: age\n",
        "  action: ALLOW\n    selector:\n      matchLabels:\n        app: age\n",
    );
    assert_ne!(printed, REQUIRE_JWT);
    std::fs::write(&policy, printed).unwrap();
    let dir = tmp.path().to_str().unwrap();
    let out = outrider(&["check", "--config", dir]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:8:13: spec.action", policy.display())),
        "{stderr}"
    );
    std::fs::write(&policy, REQUIRE_JWT).unwrap();
    let out = outrider_ok(&["check", "--config", dir]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("require-jwt"), "{stdout}");
}
