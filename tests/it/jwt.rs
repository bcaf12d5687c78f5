//! RequestAuthentication on an HTTP port, enforced per request by real sidecar processes in
//! front of an app that echoes what it received. Tokens and keys come from an independent
//! implementation (Python PyJWT + cryptography, `tests/fixtures/jwt_mint.py`) and the JWKS is
//! served by Python's `http.server`: RS256/ES256/PS256/EdDSA/HS256 tokens pass; Envoy's 401
//! and 403 answers (status, body, `www-authenticate`) for every bad token; a missing token
//! continues without a principal (and meets `RBAC: access denied` where a principal is
//! required); header edits reach the app; keys rotate without a restart; a JWKS server down
//! at start fails closed, then recovers; a reload keeps the keys. Skipped (with the reason
//! printed) when python3 lacks PyJWT or cryptography, unless `OUTRIDER_REQUIRE_TOOLS=1`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const ISSUER: &str = "https://issuer.example";
const FORWARDING_ISSUER: &str = "https://forward.example";

/// Whether python3 has PyJWT and cryptography (skip or fail per OUTRIDER_REQUIRE_TOOLS).
fn pyjwt_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    required_or_skip(
        found,
        "python3 with PyJWT and cryptography (pip install PyJWT cryptography)",
    )
}

fn mint_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt_mint.py")
}

/// Keys made by PyJWT/cryptography, in a scratch directory.
struct Issuer {
    dir: tempfile::TempDir,
}

impl Issuer {
    fn new() -> Issuer {
        let dir = temp_dir("jwt-issuer");
        let child = Command::new("python3")
            .arg(mint_script())
            .args(["keys", dir.path().to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = bounded_output(child, "jwt_mint.py keys", Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Issuer { dir }
    }

    /// A JWKS document with the public keys `names` (their `kid`s are the names).
    fn jwks(&self, names: &[&str]) -> String {
        let child = Command::new("python3")
            .arg(mint_script())
            .args(["jwks", self.dir.path().to_str().unwrap()])
            .args(names)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = bounded_output(child, "jwt_mint.py jwks", Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// One token per spec (`{"key", "alg", "kid", "claims", "rel"}`, see the script).
    fn mint(&self, specs: &[Value]) -> Vec<String> {
        let mut child = Command::new("python3")
            .arg(mint_script())
            .args(["mint", self.dir.path().to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(Value::from(specs.to_vec()).to_string().as_bytes())
            .unwrap();
        let out = bounded_output(child, "jwt_mint.py mint", Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tokens: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(tokens.len(), specs.len());
        tokens
    }
}

/// A token spec: `key` signs with `alg`, header `kid`, claims iss/sub/aud `age` and
/// `exp` in 10 minutes, then `extra` merged over them (`"rel"` entries are seconds from now).
fn spec(key: &str, alg: &str, kid: &str, extra: Value) -> Value {
    let mut claims = json!({ "iss": ISSUER, "sub": "alice", "aud": "age" });
    let mut rel = json!({ "exp": 600 });
    for (k, v) in extra.as_object().unwrap() {
        if k == "rel" {
            for (r, o) in v.as_object().unwrap() {
                rel[r] = o.clone();
            }
        } else {
            claims[k] = v.clone();
        }
    }
    json!({ "key": key, "alg": alg, "kid": kid, "claims": claims, "rel": rel })
}

/// Python's `http.server` serving a scratch directory on a loopback port; killed on drop.
struct JwksServer {
    child: Child,
}

impl JwksServer {
    /// Serves `dir` on `port` and waits (bounded) until it accepts connections.
    fn start(dir: &Path, port: u16) -> JwksServer {
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--directory", dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let server = JwksServer { child };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            eventually(Duration::from_secs(15), || TcpStream::connect_timeout(
                &addr,
                Duration::from_millis(200)
            )
            .is_ok()),
            "http.server on {port} never came up"
        );
        server
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 app whose `200` body is the request it received: the request line, then
/// each header as `name: value` with the name lower-cased.
fn echo_headers_app() -> App {
    App::spawn(|stream: TcpStream| {
        let mut out = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        loop {
            let mut head = String::new();
            if reader.read_line(&mut head).unwrap_or(0) == 0 {
                return;
            }
            let mut echoed = head.trim_end().to_string();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim_end().is_empty() {
                    break;
                }
                let (name, value) = h.trim_end().split_once(':').unwrap_or((h.trim_end(), ""));
                echoed.push_str(&format!(
                    "\n{}: {}",
                    name.to_ascii_lowercase(),
                    value.trim()
                ));
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{echoed}",
                echoed.len()
            );
            if out.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// A response: status, head (header lines, lower-cased names), body.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 GET over a fresh connection, with `Authorization: Bearer <token>` when
/// given and the extra headers.
fn get(addr: SocketAddr, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (n, v) in extra {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Resp {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// The RequestAuthentication of `age`: [`ISSUER`] (audience `age`, payload and `group` claim
/// to headers, token removed) and [`FORWARDING_ISSUER`] (token forwarded), both keyed by the
/// JWKS at `jwks_uri`.
fn request_authentication(jwks_uri: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: jwt, namespace: default }}
spec:
  selector: {{ matchLabels: {{ app: age }} }}
  jwtRules:
    - issuer: {ISSUER}
      audiences: [age]
      jwksUri: {jwks_uri}
      outputPayloadToHeader: x-jwt-payload
      outputClaimToHeaders: [{{ header: x-jwt-group, claim: group }}]
    - issuer: {FORWARDING_ISSUER}
      jwksUri: {jwks_uri}
      forwardOriginalToken: true
"#
    )
}

/// The lab's policy, plus a claims rule: a request principal everywhere but
/// `/health_check`; `/admin` only for alice with `group: admins`.
const REQUIRE_PRINCIPAL: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: require-jwt, namespace: default }
spec:
  selector: { matchLabels: { app: age } }
  action: ALLOW
  rules:
    - from: [{ source: { requestPrincipals: ["*"] } }]
      to: [{ operation: { notPaths: ["/health_check", "/admin"] } }]
    - to: [{ operation: { paths: ["/health_check"] } }]
    - from: [{ source: { requestPrincipals: ["https://issuer.example/alice"] } }]
      to: [{ operation: { paths: ["/admin"] } }]
      when: [{ key: "request.auth.claims[group]", values: ["admins"] }]
"#;

/// One sidecar for `age` (HTTP port, PERMISSIVE so the test's plaintext client reaches it)
/// with the RequestAuthentication keyed by `http://127.0.0.1:<jwks_port>/jwks.json`.
struct Setup {
    _app: App,
    mesh: Mesh,
    sidecar: Sidecar,
    jwks_dir: tempfile::TempDir,
    jwks_port: u16,
    /// The JWKS server, when it is up.
    server: Option<JwksServer>,
}

impl Setup {
    /// `jwks` is served from before the sidecar starts when `serve`, else not yet.
    fn new(jwks: &str, serve: bool, authz: Option<&str>, flags: &[&str]) -> Setup {
        let jwks_port = free_port();
        let jwks_dir = temp_dir("jwt-jwks");
        replace_file(&jwks_dir.path().join("jwks.json"), jwks);
        let server = serve.then(|| JwksServer::start(jwks_dir.path(), jwks_port));
        let app = echo_headers_app();
        let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
        let jwks_uri = format!("http://127.0.0.1:{jwks_port}/jwks.json");
        replace_file(
            &mesh.config().join("authn.yaml"),
            &request_authentication(&jwks_uri),
        );
        if let Some(policy) = authz {
            replace_file(&mesh.config().join("authz.yaml"), policy);
        }
        let mut args = vec!["--detect-timeout", "300ms"];
        args.extend_from_slice(flags);
        let sidecar = Sidecar::start(
            mesh.config(),
            "age",
            &mesh.pki.dir.path().join("age"),
            &args,
        );
        Setup {
            _app: app,
            mesh,
            sidecar,
            jwks_dir,
            jwks_port,
            server,
        }
    }

    fn serve(&mut self) {
        self.server = Some(JwksServer::start(self.jwks_dir.path(), self.jwks_port));
    }

    fn publish_jwks(&self, jwks: &str) {
        replace_file(&self.jwks_dir.path().join("jwks.json"), jwks);
    }

    fn get(&self, path: &str, token: Option<&str>) -> Resp {
        get(self.mesh.age_addr(), path, token, &[])
    }

    /// Waits (bounded) until `token` is accepted on `/data`.
    fn wait_accepted(&self, token: &str, within: Duration) {
        let mut last = None;
        let ok = eventually(within, || {
            let r = self.get("/data", Some(token));
            let ok = r.status == 200;
            last = Some(r);
            ok
        });
        assert!(
            ok,
            "token never accepted: {last:?}\n{}",
            self.sidecar.logs()
        );
    }
}

fn assert_rejected(r: &Resp, status: u16, reason: &str, realm: &str) {
    assert_eq!((r.status, r.body.as_str()), (status, reason), "{r:?}");
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\"").as_str()),
        "{r:?}"
    );
}

#[test]
fn tokens_from_pyjwt_get_envoys_answers() {
    if !pyjwt_available() {
        return;
    }
    let issuer = Issuer::new();
    let s = Setup::new(
        &issuer.jwks(&["rsa1", "ec1", "ed1", "hs1"]),
        true,
        Some(REQUIRE_PRINCIPAL),
        &[],
    );

    let tokens = issuer.mint(&[
        spec("rsa1", "RS256", "rsa1", json!({})),
        spec("ec1", "ES256", "ec1", json!({})),
        spec("rsa1", "PS256", "rsa1", json!({})),
        spec("ed1", "EdDSA", "ed1", json!({})),
        spec("hs1", "HS256", "hs1", json!({})),
        spec("rsa1", "RS256", "rsa1", json!({ "rel": { "exp": -120 } })),
        spec("rsa1", "RS256", "rsa1", json!({ "rel": { "nbf": 300 } })),
        spec("rsa1", "RS256", "rsa1", json!({ "rel": { "nbf": 30 } })),
        spec("rogue", "RS256", "rsa1", json!({})),
        spec(
            "rsa1",
            "RS256",
            "rsa1",
            json!({ "iss": "https://other.example" }),
        ),
        spec("rsa1", "RS256", "rsa1", json!({ "aud": "other" })),
        spec("rsa2", "RS256", "rsa2", json!({})),
        spec(
            "rsa1",
            "RS256",
            "rsa1",
            json!({ "iss": FORWARDING_ISSUER, "aud": "anything" }),
        ),
        spec("rsa1", "RS256", "rsa1", json!({ "group": "admins" })),
        spec("rsa1", "RS256", "rsa1", json!({ "group": "users" })),
        spec(
            "rsa1",
            "RS256",
            "rsa1",
            json!({ "sub": "bob", "group": "admins" }),
        ),
    ]);
    let [rs, es, ps, ed, hs, expired, early, within_skew, bad_sig, other_iss, other_aud, unknown_kid, forwarded, alice_admin, alice_user, bob_admin] =
        <[String; 16]>::try_from(tokens).unwrap();

    // The first fetch is asynchronous: wait for it.
    s.wait_accepted(&rs, Duration::from_secs(15));

    // Every algorithm of the independent implementation verifies.
    for (alg, token) in [
        ("RS256", &rs),
        ("ES256", &es),
        ("PS256", &ps),
        ("EdDSA", &ed),
        ("HS256", &hs),
        ("nbf within the skew", &within_skew),
    ] {
        let r = s.get("/data", Some(token));
        assert_eq!(r.status, 200, "{alg}: {r:?}");
        assert!(r.body.starts_with("GET /data HTTP/1.1"), "{alg}: {r:?}");
    }

    // No token: continues without a principal (200 where none is needed, 403 elsewhere).
    let r = s.get("/health_check", None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("www-authenticate").is_none(), "{r:?}");
    let r = s.get("/data", None);
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{r:?}"
    );

    // Bad tokens: Envoy's status, body and challenge; even /health_check refuses them.
    let realm = |path: &str| format!("http://{}{path}", s.mesh.age_addr());
    for (token, status, reason) in [
        (&expired, 401, "Jwt is expired"),
        (&early, 401, "Jwt not yet valid"),
        (&bad_sig, 401, "Jwt verification fails"),
        (&other_iss, 401, "Jwt issuer is not configured"),
        (&other_aud, 403, "Audiences in Jwt are not allowed"),
        (
            &unknown_kid,
            401,
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
    ] {
        assert_rejected(
            &s.get("/data", Some(token)),
            status,
            reason,
            &realm("/data"),
        );
    }
    assert_rejected(
        &s.get("/health_check", Some(&expired)),
        401,
        "Jwt is expired",
        &realm("/health_check"),
    );

    // Header edits: the token is removed (forwardOriginalToken false), the payload and the
    // group claim are written, client-sent copies of them never get through.
    let r = get(
        s.mesh.age_addr(),
        "/data",
        Some(&alice_admin),
        &[("x-jwt-group", "forged"), ("x-jwt-payload", "forged")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.contains("\nauthorization:"), "{r:?}");
    assert!(r.body.contains("\nx-jwt-group: admins"), "{r:?}");
    assert!(!r.body.contains("forged"), "{r:?}");
    let payload = alice_admin.split('.').nth(1).unwrap();
    assert!(
        r.body.contains(&format!("\nx-jwt-payload: {payload}")),
        "{r:?}"
    );
    // A token without the claim: no claim header (and the forged one is gone).
    let r = get(
        s.mesh.age_addr(),
        "/data",
        Some(&rs),
        &[("x-jwt-group", "forged")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.contains("x-jwt-group"), "{r:?}");
    // forwardOriginalToken: true keeps it (and no audience is checked by that rule).
    let r = s.get("/data", Some(&forwarded));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body
            .contains(&format!("\nauthorization: Bearer {forwarded}")),
        "{r:?}"
    );
    // A token in the query (`access_token`) is taken out before the app.
    let r = s.get(&format!("/data?x=1&access_token={rs}"), None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("GET /data?x=1 HTTP/1.1"), "{r:?}");

    // requestPrincipals `<iss>/<sub>` and request.auth.claims[group].
    let r = s.get("/admin", Some(&alice_admin));
    assert_eq!(r.status, 200, "{r:?}");
    for token in [&alice_user, &bob_admin, &rs] {
        let r = s.get("/admin", Some(token));
        assert_eq!(
            (r.status, r.body.as_str()),
            (403, "RBAC: access denied"),
            "{r:?}"
        );
    }

    // Counted: per reason, and in istio_requests_total like any local reply.
    let m = s.sidecar.metrics_text();
    let port = s.mesh.age_in.to_string();
    let rejected = |reason: &str| {
        metric_sum(
            &m,
            "outrider_jwt_rejected_total",
            &[("port", &port), ("reason", reason)],
        )
    };
    assert_eq!(rejected("Jwt is expired"), 2.0, "{m}");
    assert_eq!(rejected("Audiences in Jwt are not allowed"), 1.0, "{m}");
    assert_eq!(
        metric_sum(
            &m,
            "istio_requests_total",
            &[("reporter", "destination"), ("response_code", "401")]
        ),
        6.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "outrider_jwks_fetches_total", &[("result", "success")]) >= 1.0,
        "{m}"
    );
    assert_eq!(metric_sum(&m, "outrider_jwks_keys", &[]), 4.0, "{m}");

    // The same through the mesh: a client sidecar carries the token over mTLS (pooled
    // HTTP/2) and the server sidecar decides.
    let _sentences = s.mesh.sidecar("sentences");
    let through = s.mesh.sentences_out_addr();
    let r = get(through, "/data", Some(&es), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.contains("\nauthorization:"), "{r:?}");
    assert_rejected(
        &get(through, "/data", Some(&expired), &[]),
        401,
        "Jwt is expired",
        &format!("http://{through}/data"),
    );
    let r = get(through, "/data", None, &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{r:?}"
    );
}

#[test]
fn a_new_kid_at_the_issuer_is_accepted_without_a_restart() {
    if !pyjwt_available() {
        return;
    }
    let issuer = Issuer::new();
    // The regular refresh is far away: only the unknown-kid early refresh can find rsa2.
    let s = Setup::new(
        &issuer.jwks(&["rsa1"]),
        true,
        None,
        &["--jwks-refresh", "1h", "--jwks-early-refresh-min", "200ms"],
    );
    let tokens = issuer.mint(&[
        spec("rsa1", "RS256", "rsa1", json!({})),
        spec("rsa2", "RS256", "rsa2", json!({})),
    ]);
    s.wait_accepted(&tokens[0], Duration::from_secs(15));
    let r = s.get("/data", Some(&tokens[1]));
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "Jwks doesn't have key to match kid or alg from Jwt"),
        "{r:?}"
    );

    // The issuer rotates: rsa2 joins the JWKS.
    s.publish_jwks(&issuer.jwks(&["rsa1", "rsa2"]));
    s.wait_accepted(&tokens[1], Duration::from_secs(15));
    assert_eq!(s.get("/data", Some(&tokens[0])).status, 200);
}

#[test]
fn a_jwks_server_down_at_start_fails_closed_then_recovers() {
    if !pyjwt_available() {
        return;
    }
    let issuer = Issuer::new();
    let mut s = Setup::new(
        &issuer.jwks(&["rsa1"]),
        false,
        None,
        &["--jwks-retry-min", "200ms", "--jwks-retry-max", "1s"],
    );
    let token = issuer
        .mint(&[spec("rsa1", "RS256", "rsa1", json!({}))])
        .remove(0);

    // No key yet: every token fails, for as long as the server stays down.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let r = s.get("/data", Some(&token));
        assert_eq!(
            (r.status, r.body.as_str()),
            (401, "Jwks doesn't have key to match kid or alg from Jwt"),
            "{r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A request without a token is not affected.
    assert_eq!(s.get("/data", None).status, 200);

    s.serve();
    s.wait_accepted(&token, Duration::from_secs(15));
    let m = s.sidecar.metrics_text();
    assert!(
        metric_sum(&m, "outrider_jwks_fetches_total", &[("result", "error")]) >= 1.0,
        "{m}"
    );
}

#[test]
fn a_reload_keeps_the_keys_even_with_the_jwks_server_gone() {
    if !pyjwt_available() {
        return;
    }
    let issuer = Issuer::new();
    let mut s = Setup::new(
        &issuer.jwks(&["rsa1"]),
        true,
        None,
        &["--jwks-retry-min", "200ms"],
    );
    let token = issuer
        .mint(&[spec("rsa1", "RS256", "rsa1", json!({}))])
        .remove(0);
    s.wait_accepted(&token, Duration::from_secs(15));

    // The issuer goes away; then age's configuration changes (a new policy, so a new plan
    // with new key slots): only the fetcher's last good document can fill them.
    s.server.take();
    replace_file(
        &s.mesh.config().join("authz.yaml"),
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-secrets, namespace: default }
spec:
  selector: { matchLabels: { app: age } }
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/secrets"] } }]
"#,
    );
    let reloaded = |s: &Setup| s.sidecar.logs().contains("configuration reloaded");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = 0;
    while after < 5 {
        assert!(
            Instant::now() < deadline,
            "no reload seen: {}",
            s.sidecar.logs()
        );
        let r = s.get("/data", Some(&token));
        assert_eq!(r.status, 200, "a token failed around the reload: {r:?}");
        if reloaded(&s) {
            after += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The new plan is the one serving.
    let r = s.get("/secrets", Some(&token));
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{r:?}"
    );
}
