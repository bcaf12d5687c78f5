//! `outrider sample-app --service auth`, the labs' small OIDC issuer, as a real process on a
//! port the kernel picks: discovery, the JWKS, the password grant and its OAuth errors, key
//! rotation (HTTP and SIGHUP), users and key files. Tokens are verified by an independent
//! implementation, Python's PyJWT + cryptography (`tests/fixtures/jwt_verify.py`), which
//! fetches the JWKS itself; those checks are skipped with a printed reason when the modules
//! are missing, unless OUTRIDER_REQUIRE_TOOLS=1. The labs' `curl -d ...` command is run too
//! when curl is installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{
    bounded_output, eventually, http_get, required_or_skip, temp_dir, tool_available, BIN,
};

const TOKEN_PATH: &str = "/auth/realms/mesh/protocol/openid-connect/token";
pub(crate) const CERTS_PATH: &str = "/auth/realms/mesh/protocol/openid-connect/certs";

/// A running issuer (`--listen 127.0.0.1:0`); killed on drop. Also used by `jwt_lab`.
pub(crate) struct AuthIssuer {
    child: Child,
    pub(crate) addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl AuthIssuer {
    /// Starts the issuer with `extra` flags and reads its address from its first stdout line.
    pub(crate) fn start(extra: &[&str]) -> AuthIssuer {
        let dir = temp_dir("auth-sample-log");
        let log = dir.path().join("auth.log");
        let mut child = Command::new(BIN)
            .args(["sample-app", "--service", "auth", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("OUTRIDER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the issuer starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let addr = line.trim().rsplit(' ').next().and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no address in the first line {line:?}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        AuthIssuer {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path).unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The kids of the served JWKS, in order.
    pub(crate) fn jwks_kids(&self) -> Vec<String> {
        self.get_json(CERTS_PATH)["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    /// A token for `user`/`password` (same password) from client `frontend`.
    pub(crate) fn token(&self, user: &str) -> String {
        let form =
            format!("grant_type=password&username={user}&password={user}&client_id=frontend");
        let answer = post(self.addr, TOKEN_PATH, FORM, &form);
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["access_token"].as_str().unwrap().to_string()
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AuthIssuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The value of a header (names compared case-insensitively).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A minimal HTTP/1.1 POST over a fresh connection.
fn post(addr: SocketAddr, path: &str, content_type: &str, body: &str) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Answer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .unwrap()
        .kid
        .expect("a kid in the header")
}

/// Whether python3 has PyJWT and cryptography (skip or fail per OUTRIDER_REQUIRE_TOOLS).
pub(crate) fn pyjwt_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    required_or_skip(
        found,
        "python3 with PyJWT and cryptography (pip install PyJWT cryptography)",
    )
}

/// PyJWT's verdict on each token, checked against the JWKS at `jwks_url`: `Ok(claims)` or
/// `Err(reason)`. `None` when PyJWT is not installed (the check is skipped).
fn pyjwt_verify(
    jwks_url: &str,
    issuer: &str,
    audience: &str,
    tokens: &[&str],
) -> Option<Vec<Result<Value, String>>> {
    if !pyjwt_available() {
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt_verify.py");
    let child = Command::new("python3")
        .arg(script)
        .args([jwks_url, issuer, audience])
        .args(tokens)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded_output(child, "jwt_verify.py", Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "jwt_verify.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<_> = stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            if v["ok"] == true {
                Ok(v["claims"].clone())
            } else {
                Err(v["error"].as_str().unwrap_or_default().to_string())
            }
        })
        .collect();
    assert_eq!(verdicts.len(), tokens.len(), "{stdout}");
    Some(verdicts)
}

#[test]
fn discovery_jwks_and_a_token_for_alice_that_pyjwt_verifies() {
    let auth = AuthIssuer::start(&[]);
    let issuer = auth.url("/auth/realms/mesh");

    let doc = auth.get_json("/auth/realms/mesh/.well-known/openid-configuration");
    assert_eq!(
        doc["issuer"],
        issuer.as_str(),
        "the default issuer names the bound port"
    );
    assert_eq!(doc["jwks_uri"], auth.url(CERTS_PATH).as_str());
    assert_eq!(doc["token_endpoint"], auth.url(TOKEN_PATH).as_str());
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    assert_eq!(
        doc["grant_types_supported"],
        serde_json::json!(["password"])
    );

    let jwks = auth.get_json(CERTS_PATH);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    for (field, want) in [
        ("kty", "RSA"),
        ("alg", "RS256"),
        ("use", "sig"),
        ("e", "AQAB"),
    ] {
        assert_eq!(keys[0][field], want, "{field} in {jwks}");
    }
    assert!(
        keys[0]["n"].as_str().unwrap().len() >= 342,
        "a 2048-bit modulus"
    );

    let form = "username=alice&password=alice&grant_type=password&client_id=frontend";
    let answer = post(auth.addr, TOKEN_PATH, FORM, form);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let granted = answer.json();
    assert_eq!(granted["token_type"], "Bearer");
    assert_eq!(granted["expires_in"], 300);
    assert_eq!(granted["scope"], "openid profile");
    let token = granted["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), keys[0]["kid"].as_str());

    // The same token with one signature character changed.
    // (Not the last one: its low bits are base64 padding that decoders refuse outright.)
    let mut tampered = token.as_bytes().to_vec();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let Some(verdicts) = pyjwt_verify(
        &auth.url(CERTS_PATH),
        &issuer,
        "frontend",
        &[token, &tampered],
    ) else {
        return;
    };
    let claims = verdicts[0]
        .as_ref()
        .unwrap_or_else(|e| panic!("PyJWT refused alice's token: {e}"));
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "frontend");
    assert_eq!(claims["azp"], "frontend");
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["scope"], "openid profile");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 300);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        iat <= now + 5 && iat + 60 >= now,
        "iat {iat} is not now ({now})"
    );
    let err = verdicts[1]
        .as_ref()
        .expect_err("PyJWT accepted a tampered token");
    assert!(err.contains("Signature"), "{err}");
}

#[test]
fn bad_requests_get_oauth_errors() {
    let auth = AuthIssuer::start(&[]);
    let cases = [
        (
            "username=alice&password=bob&grant_type=password&client_id=frontend",
            401,
            "invalid_grant",
        ),
        (
            "username=mallory&password=mallory&grant_type=password&client_id=frontend",
            401,
            "invalid_grant",
        ),
        (
            "grant_type=client_credentials&client_id=frontend&client_secret=x",
            400,
            "unsupported_grant_type",
        ),
        (
            "grant_type=authorization_code&code=x&client_id=frontend",
            400,
            "unsupported_grant_type",
        ),
        (
            "username=alice&password=alice&client_id=frontend",
            400,
            "invalid_request",
        ),
        (
            "username=alice&password=alice&grant_type=password",
            400,
            "invalid_request",
        ),
        (
            "username=alice&grant_type=password&client_id=frontend",
            400,
            "invalid_request",
        ),
    ];
    for (form, status, error) in cases {
        let answer = post(auth.addr, TOKEN_PATH, FORM, form);
        assert_eq!(answer.status, status, "{form}: {}", answer.body);
        assert_eq!(answer.json()["error"], error, "{form}");
        assert!(answer.json()["error_description"].is_string(), "{form}");
        assert_eq!(answer.header("cache-control"), Some("no-store"), "{form}");
    }
    let json_body = post(
        auth.addr,
        TOKEN_PATH,
        "application/json",
        r#"{"username":"alice"}"#,
    );
    assert_eq!(
        (json_body.status, &json_body.json()["error"]),
        (400, &Value::from("invalid_request"))
    );

    let (status, _) = http_get(auth.addr, TOKEN_PATH).unwrap();
    assert_eq!(status, 405, "GET on the token endpoint");
    let (status, _) = http_get(
        auth.addr,
        "/auth/realms/other/protocol/openid-connect/certs",
    )
    .unwrap();
    assert_eq!(status, 404, "another realm");
    assert_eq!(
        http_get(auth.addr, "/health_check").unwrap(),
        (200, "ok".into())
    );
    assert!(auth.logs().contains("token refused"), "{}", auth.logs());
}

#[test]
fn rotation_signs_with_a_new_kid_and_old_tokens_still_verify() {
    let auth = AuthIssuer::start(&[]);
    let first = auth.token("alice");
    let kid1 = kid(&first);
    assert_eq!(auth.jwks_kids(), [kid1.as_str()]);

    let rotated = post(auth.addr, "/auth/realms/mesh/rotate", FORM, "");
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let kid2 = rotated.json()["kid"].as_str().unwrap().to_string();
    assert_eq!(rotated.json()["previous"], kid1.as_str());
    assert_ne!(kid2, kid1);
    let second = auth.token("bob");
    assert_eq!(kid(&second), kid2, "new tokens are signed with the new key");
    assert_eq!(
        auth.jwks_kids(),
        [kid2.clone(), kid1.clone()],
        "the JWKS lists the new key and the previous one"
    );

    let issuer = auth.url("/auth/realms/mesh");
    if let Some(verdicts) = pyjwt_verify(
        &auth.url(CERTS_PATH),
        &issuer,
        "frontend",
        &[&first, &second],
    ) {
        let subs: Vec<_> = verdicts
            .iter()
            .map(|v| {
                v.as_ref()
                    .map(|c| c["sub"].clone())
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        assert_eq!(subs, ["alice", "bob"]);
    }

    // SIGHUP rotates too; the first key then leaves the JWKS.
    let status = Command::new("kill")
        .args(["-HUP", &auth.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rotated = eventually(Duration::from_secs(10), || auth.jwks_kids()[0] != kid2);
    assert!(rotated, "SIGHUP did not rotate the key: {}", auth.logs());
    let kids = auth.jwks_kids();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[1], kid2);
    assert_eq!(kid(&auth.token("alice")), kids[0]);
    if let Some(verdicts) = pyjwt_verify(
        &auth.url(CERTS_PATH),
        &issuer,
        "frontend",
        &[&first, &second],
    ) {
        let err = verdicts[0]
            .as_ref()
            .expect_err("the first key was dropped after two rotations");
        assert!(err.contains("kid") || err.contains("key"), "{err}");
        assert!(verdicts[1].is_ok(), "{:?}", verdicts[1]);
    }
}

#[test]
fn users_file_key_file_issuer_and_ttl() {
    let tmp = temp_dir("auth-sample");
    let users = tmp.path().join("users.yaml");
    std::fs::write(
        &users,
        "users:
  - username: carol
    password: c4rol
    audience: age
    scope: openid email
  - { username: dave, password: d4ve }
",
    )
    .unwrap();
    let key = tmp.path().join("key.pem");
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    std::fs::write(&key, pem).unwrap();
    let issuer = "http://auth:8080/auth/realms/mesh";
    let flags = [
        "--users",
        users.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--issuer",
        issuer,
        "--token-ttl",
        "90s",
    ];
    let auth = AuthIssuer::start(&flags);
    let doc = auth.get_json("/auth/realms/mesh/.well-known/openid-configuration");
    assert_eq!(doc["issuer"], issuer);
    assert_eq!(
        doc["jwks_uri"],
        format!("{issuer}/protocol/openid-connect/certs")
    );

    let answer = post(
        auth.addr,
        TOKEN_PATH,
        FORM,
        "grant_type=password&username=carol&password=c4rol&client_id=frontend",
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["expires_in"], 90);
    assert_eq!(answer.json()["scope"], "openid email");
    let carol = answer.json()["access_token"].as_str().unwrap().to_string();
    let answer = post(
        auth.addr,
        TOKEN_PATH,
        FORM,
        "grant_type=password&username=alice&password=alice&client_id=frontend",
    );
    assert_eq!(answer.status, 401, "no default users beside a users file");

    // The same key after a restart: the same kid, so tokens signed before still verify.
    let kids = auth.jwks_kids();
    drop(auth);
    let again = AuthIssuer::start(&flags);
    assert_eq!(again.jwks_kids(), kids);
    assert_eq!(kid(&carol), kids[0]);
    if let Some(verdicts) = pyjwt_verify(&again.url(CERTS_PATH), issuer, "age", &[&carol]) {
        let claims = verdicts[0].as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(claims["iss"], issuer);
        assert_eq!(claims["aud"], "age", "the user's configured audience");
        assert_eq!(claims["azp"], "frontend");
        assert_eq!(claims["sub"], "carol");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            90
        );
    }

    // A traditional PKCS#1 key ("RSA PRIVATE KEY") made by openssl loads too.
    if tool_available("openssl") {
        let pkcs1 = tmp.path().join("pkcs1.pem");
        let made = Command::new("openssl")
            .args([
                "genrsa",
                "-traditional",
                "-out",
                pkcs1.to_str().unwrap(),
                "2048",
            ])
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        assert!(std::fs::read_to_string(&pkcs1)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let auth = AuthIssuer::start(&["--key", pkcs1.to_str().unwrap()]);
        assert_eq!(kid(&auth.token("bob")), auth.jwks_kids()[0]);
    }
}

#[test]
fn bad_settings_fail_at_start_with_a_clear_error() {
    let tmp = temp_dir("auth-sample-bad");
    let users = tmp.path().join("users.yaml");
    std::fs::write(&users, "users:\n  - username: carol\n    pasword: x\n").unwrap();
    let ec_key = tmp.path().join("ec.pem");
    std::fs::write(&ec_key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let users_error = format!("{}:3:5: users[0].pasword: unknown field", users.display());
    let cases: [(&[&str], &str); 5] = [
        (&["--users", users.to_str().unwrap()], &users_error),
        (
            &["--key", ec_key.to_str().unwrap()],
            "not an RSA private key",
        ),
        (&["--realm", "a/b"], "--realm \"a/b\""),
        (&["--issuer", "auth:8080"], "--issuer \"auth:8080\""),
        (&["--token-ttl", "500ms"], "at least one second"),
    ];
    for (flags, want) in cases {
        let child = Command::new(BIN)
            .args(["sample-app", "--service", "auth", "--listen", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = bounded_output(child, "sample-app --service auth", Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} started");
        assert!(stderr.contains(want), "{flags:?}: {stderr}");
    }
}

#[test]
fn the_labs_curl_command_gets_a_token() {
    if !tool_available("curl") {
        return;
    }
    let auth = AuthIssuer::start(&[]);
    let url = auth.url(TOKEN_PATH);
    let child = Command::new("curl")
        .args([
            "-s",
            "-d",
            "username=alice",
            "-d",
            "password=alice",
            "-d",
            "grant_type=password",
        ])
        .args(["-d", "client_id=frontend", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded_output(child, "curl", Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let granted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(granted["token_type"], "Bearer", "{granted}");
    let token = granted["access_token"].as_str().unwrap();
    assert_eq!(kid(token), auth.jwks_kids()[0]);
}

#[test]
fn help_says_it_is_a_sample() {
    let out = crate::common::outrider_ok(&["sample-app", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("not a product identity provider"), "{help}");
    for flag in ["--realm", "--issuer", "--users", "--key", "--token-ttl"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
