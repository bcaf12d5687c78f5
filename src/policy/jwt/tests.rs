//! Every row of SEMANTICS §5, with tokens minted here by jsonwebtoken's `encode` and keys
//! generated at test time (rcgen on aws-lc-rs). The fixtures are shared with the
//! configuration tests (`crate::policy::jwt::tests::fixtures`).

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

/// Test keys and tokens.
pub(crate) mod fixtures {
    use super::*;

    /// The fixed "now" of the tests (2023-11-14).
    pub const NOW: u64 = 1_700_000_000;
    pub const ISSUER: &str = "https://issuer.example";

    pub fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    /// base64url without padding.
    pub fn b64(bytes: &[u8]) -> String {
        crate::policy::jwt::base64url::encode(bytes)
    }

    /// One signing key and its public JWK.
    pub struct TestKey {
        pub kid: &'static str,
        pub encoding: EncodingKey,
        pub jwk: Value,
    }

    /// One key per family; `jwks()` publishes all of them.
    pub struct TestKeys {
        pub rsa: TestKey,
        pub ec256: TestKey,
        pub ec384: TestKey,
        pub ed: TestKey,
        pub hmac: TestKey,
    }

    impl TestKeys {
        pub fn jwks(&self) -> String {
            let keys: Vec<&Value> = [&self.rsa, &self.ec256, &self.ec384, &self.ed, &self.hmac]
                .iter()
                .map(|k| &k.jwk)
                .collect();
            json!({ "keys": keys }).to_string()
        }

        pub fn key_set(&self) -> Arc<KeySet> {
            Arc::new(KeySet::from_json(self.jwks().as_bytes()).unwrap())
        }

        /// The key that signs `alg`.
        pub fn for_alg(&self, alg: Algorithm) -> &TestKey {
            use Algorithm::*;
            match alg {
                RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => &self.rsa,
                ES256 => &self.ec256,
                ES384 => &self.ec384,
                EdDSA => &self.ed,
                HS256 | HS384 | HS512 => &self.hmac,
            }
        }
    }

    fn generate() -> TestKeys {
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let rsa_enc = EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).unwrap();
        let jwk = |enc: &EncodingKey, alg: Algorithm, kid: &str| {
            let mut v =
                serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(enc, alg).unwrap())
                    .unwrap();
            // No `alg` on the JWK: one RSA key serves RS* and PS*.
            v.as_object_mut().unwrap().remove("alg");
            v["kid"] = json!(kid);
            v
        };
        let ec =
            |alg: &'static rcgen::SignatureAlgorithm, jwt_alg: Algorithm, kid: &'static str| {
                let pair = rcgen::KeyPair::generate_for(alg).unwrap();
                let encoding = EncodingKey::from_ec_der(pair.serialized_der());
                let jwk = jwk(&encoding, jwt_alg, kid);
                TestKey { kid, encoding, jwk }
            };
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let secret = b"a shared secret of at least 32 bytes!!";
        TestKeys {
            rsa: TestKey {
                kid: "rsa",
                jwk: jwk(&rsa_enc, Algorithm::RS256, "rsa"),
                encoding: rsa_enc,
            },
            ec256: ec(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256, "ec256"),
            ec384: ec(&rcgen::PKCS_ECDSA_P384_SHA384, Algorithm::ES384, "ec384"),
            ed: TestKey {
                kid: "ed",
                encoding: EncodingKey::from_ed_der(ed.serialized_der()),
                jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed.public_key_raw())}),
            },
            hmac: TestKey {
                kid: "hmac",
                encoding: EncodingKey::from_secret(secret),
                jwk: json!({"kty": "oct", "kid": "hmac", "k": b64(secret)}),
            },
        }
    }

    /// Generated once per test process (RSA key generation is the slow part).
    pub fn keys() -> &'static TestKeys {
        static KEYS: LazyLock<TestKeys> = LazyLock::new(generate);
        &KEYS
    }

    /// A token signed with `alg` by its test key (`kid` = the key's unless given).
    pub fn mint_with(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let key = keys().for_alg(alg);
        let mut header = Header::new(alg);
        header.kid = Some(kid.unwrap_or(key.kid).to_string());
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
    }

    pub fn mint(alg: Algorithm, claims: &Value) -> String {
        mint_with(alg, None, claims)
    }

    /// `iss`, `sub` alice and an `exp` an hour after [`NOW`].
    pub fn alice() -> Value {
        json!({"iss": ISSUER, "sub": "alice", "exp": NOW + 3600})
    }
}

use fixtures::*;

fn provider(keys: Keys) -> Provider {
    Provider::new("default/jwt jwtRules[0]", ISSUER, keys)
}

fn inline() -> Provider {
    provider(Keys::Inline(keys().key_set()))
}

struct Call<'a> {
    method: Method,
    uri: String,
    headers: Vec<(&'a str, String)>,
}

fn get<'a>(uri: impl Into<String>) -> Call<'a> {
    Call {
        method: Method::GET,
        uri: uri.into(),
        headers: vec![("host", "age.default:8081".into())],
    }
}

impl<'a> Call<'a> {
    fn header(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    fn run(&self, a: &Authenticator) -> AuthnOutcome {
        let uri: Uri = self.uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        a.authenticate(&self.method, &uri, &headers, now())
    }
}

/// What a table row expects.
#[derive(Debug, PartialEq)]
enum Want {
    Anonymous,
    /// The principal (`None`: undefined).
    Principal(Option<String>),
    Rejected(StatusCode, &'static str),
}

fn outcome(o: &AuthnOutcome) -> Want {
    match o {
        AuthnOutcome::Anonymous(_) => Want::Anonymous,
        AuthnOutcome::Authenticated(auth, _) => Want::Principal(auth.principal.clone()),
        AuthnOutcome::Reject { status, reason, .. } => Want::Rejected(*status, reason),
    }
}

fn principal(p: &str) -> Want {
    Want::Principal(Some(p.to_string()))
}

#[allow(non_snake_case)]
fn ALICE() -> Want {
    principal("https://issuer.example/alice")
}

fn unauthorized(reason: &'static str) -> Want {
    Want::Rejected(StatusCode::UNAUTHORIZED, reason)
}

fn with(claims: Value, extra: Value) -> Value {
    let mut c = claims;
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// Replaces the payload of `token` (keeping its signature).
fn tampered(token: &str, claims: &Value) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    let payload = b64(claims.to_string().as_bytes());
    parts[1] = &payload;
    parts.join(".")
}

#[test]
fn every_algorithm_verifies() {
    let a = Authenticator::new(vec![inline()]);
    use Algorithm::*;
    for alg in [
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512,
    ] {
        let token = mint(alg, &alice());
        assert_eq!(
            outcome(&get("/").bearer(&token).run(&a)),
            ALICE(),
            "{alg:?}"
        );
        // the same token with another payload fails
        let bad = tampered(&token, &with(alice(), json!({"sub": "mallory"})));
        assert_eq!(
            outcome(&get("/").bearer(&bad).run(&a)),
            unauthorized("Jwt verification fails"),
            "{alg:?}"
        );
    }
}

/// SEMANTICS §5, one provider with the inline test keys (audiences where the row says).
#[test]
fn semantics_rows() {
    let plain = Authenticator::new(vec![inline()]);
    let with_aud = Authenticator::new(vec![Provider {
        audiences: vec!["https://api.example/".into(), "age".into()],
        ..inline()
    }]);
    let rs = |claims: Value| mint(Algorithm::RS256, &claims);
    let valid = rs(alice());
    let expired_in_skew = rs(with(alice(), json!({"exp": NOW - 59})));
    let expired = rs(with(alice(), json!({"exp": NOW - 61})));
    let nbf_in_skew = rs(with(alice(), json!({"nbf": NOW + 59})));
    let nbf = rs(with(alice(), json!({"nbf": NOW + 61})));
    let no_exp = rs(with(alice(), json!({"exp": null})));
    let other_issuer = rs(with(alice(), json!({"iss": "https://other.example"})));
    let unknown_kid = mint_with(Algorithm::RS256, Some("rotated"), &alice());
    let aud_list = rs(with(alice(), json!({"aud": ["x", "api.example"]})));
    let aud_other = rs(with(alice(), json!({"aud": "x"})));
    let es512 = {
        let header = b64(br#"{"alg":"ES512","kid":"ec256"}"#);
        format!("{header}.{}.c2ln", b64(alice().to_string().as_bytes()))
    };
    let ed_short = {
        let t = mint(Algorithm::EdDSA, &alice());
        format!("{}.c2ln", &t[..t.rfind('.').unwrap()])
    };
    #[rustfmt::skip]
    let table: Vec<(&str, &Authenticator, Call, Want)> = vec![
        ("valid token", &plain, get("/").bearer(&valid), ALICE()),
        ("no token", &plain, get("/"), Want::Anonymous),
        ("prefix mismatch is no token", &plain, get("/").header("authorization", format!("Basic {valid}")), Want::Anonymous),
        ("expired", &plain, get("/").bearer(&expired), unauthorized("Jwt is expired")),
        ("expired within the 60 s skew", &plain, get("/").bearer(&expired_in_skew), ALICE()),
        ("not yet valid", &plain, get("/").bearer(&nbf), unauthorized("Jwt not yet valid")),
        ("nbf within the skew", &plain, get("/").bearer(&nbf_in_skew), ALICE()),
        ("exp is not mandatory", &plain, get("/").bearer(&no_exp), ALICE()),
        ("bad signature", &plain, get("/").bearer(&tampered(&valid, &with(alice(), json!({"sub": "bob"})))), unauthorized("Jwt verification fails")),
        ("unknown kid", &plain, get("/").bearer(&unknown_kid), unauthorized("Jwks doesn't have key to match kid or alg from Jwt")),
        ("unknown issuer", &plain, get("/").bearer(&other_issuer), unauthorized("Jwt issuer is not configured")),
        ("audiences not checked when none configured", &plain, get("/").bearer(&aud_other), ALICE()),
        ("audience in a list, scheme and slash ignored", &with_aud, get("/").bearer(&aud_list), ALICE()),
        ("audience mismatch is 403", &with_aud, get("/").bearer(&aud_other), Want::Rejected(StatusCode::FORBIDDEN, "Audiences in Jwt are not allowed")),
        ("no aud with audiences configured is 403", &with_aud, get("/").bearer(&valid), Want::Rejected(StatusCode::FORBIDDEN, "Audiences in Jwt are not allowed")),
        ("token in ?access_token", &plain, get(format!("/p?access_token={valid}")), ALICE()),
        ("garbage", &plain, get("/").bearer("garbage"), unauthorized("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")),
        ("bad header JSON", &plain, get("/").bearer(&format!("{}.e30.c2ln", b64(b"{nope"))), unauthorized("Jwt header is an invalid JSON")),
        ("ES512 is not supported", &plain, get("/").bearer(&es512), unauthorized("Jwt header [alg] is not supported")),
        ("Ed25519 signature length", &plain, get("/").bearer(&ed_short), unauthorized("Jwt ED25519 signature is wrong length")),
        ("CORS preflight bypasses", &plain, Call { method: Method::OPTIONS, ..get("/") }.bearer("garbage").header("origin", "https://a.example").header("access-control-request-method", "POST"), Want::Anonymous),
        ("OPTIONS without CORS headers is checked", &plain, Call { method: Method::OPTIONS, ..get("/") }.bearer("garbage"), unauthorized("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")),
        ("two valid tokens: principal undefined", &plain, get(format!("/p?access_token={valid}")).bearer(&valid), Want::Principal(None)),
        ("a valid token beside a bad one: allow_missing keeps the first token's result", &plain, get("/p?access_token=bad").bearer(&valid), ALICE()),
        ("a bad token first: rejected", &plain, get(format!("/p?access_token={valid}")).bearer("bad"), unauthorized("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")),
    ];
    for (case, a, call, want) in table {
        assert_eq!(outcome(&call.run(a)), want, "{case}");
    }
}

#[test]
fn rejections_carry_www_authenticate() {
    let a = Authenticator::new(vec![inline()]);
    let got = get("/api?x=1").bearer("garbage").run(&a);
    let AuthnOutcome::Reject {
        www_authenticate, ..
    } = got
    else {
        panic!("{got:?}")
    };
    assert_eq!(
        www_authenticate,
        "Bearer realm=\"http://age.default:8081/api?x=1\", error=\"invalid_token\""
    );
    let long = format!("/{}", "a".repeat(400));
    let got = get(long.clone())
        .bearer("garbage")
        .header("x-forwarded-proto", "https")
        .run(&a);
    let AuthnOutcome::Reject {
        www_authenticate, ..
    } = got
    else {
        panic!("{got:?}")
    };
    assert_eq!(
        www_authenticate,
        format!(
            "Bearer realm=\"https://age.default:8081{}\", error=\"invalid_token\"",
            &long[..256]
        )
    );
}

#[test]
fn locations_and_header_edits() {
    let valid = mint(Algorithm::ES256, &alice());
    let edits = |o: AuthnOutcome| match o {
        AuthnOutcome::Authenticated(_, e) | AuthnOutcome::Anonymous(e) => e,
        other => panic!("{other:?}"),
    };
    let names =
        |e: &HeaderEdits| -> Vec<String> { e.remove.iter().map(|h| h.to_string()).collect() };
    // default: the Authorization header is removed after success
    let a = Authenticator::new(vec![inline()]);
    let e = edits(get("/").bearer(&valid).run(&a));
    assert_eq!(names(&e), ["authorization"]);
    assert_eq!(e.path_and_query, None);
    // a query token is removed from the path, other parameters kept
    let e = edits(get(format!("/p?a=1&access_token={valid}&b=2")).run(&a));
    assert_eq!(e.path_and_query.as_deref(), Some("/p?a=1&b=2"));
    assert!(e.remove.is_empty());
    // forwardOriginalToken keeps it
    let a = Authenticator::new(vec![Provider {
        forward_original_token: true,
        ..inline()
    }]);
    assert!(edits(get("/").bearer(&valid).run(&a)).is_empty());
    // custom header without prefix, cookie, param: each is a location; the default is gone
    let a = Authenticator::new(vec![Provider {
        locations: vec![
            TokenLocation::Header {
                name: HeaderName::from_static("x-jwt"),
                prefix: String::new(),
            },
            TokenLocation::Param("token".into()),
            TokenLocation::Cookie("session".into()),
        ],
        ..inline()
    }]);
    assert_eq!(outcome(&get("/").header("x-jwt", &valid).run(&a)), ALICE());
    assert_eq!(outcome(&get(format!("/?token={valid}")).run(&a)), ALICE());
    assert_eq!(
        outcome(
            &get("/")
                .header("cookie", format!("a=b; session={valid}"))
                .run(&a)
        ),
        ALICE()
    );
    assert_eq!(outcome(&get("/").bearer(&valid).run(&a)), Want::Anonymous);
    assert_eq!(
        outcome(&get(format!("/?access_token={valid}")).run(&a)),
        Want::Anonymous
    );
    // a cookie token stays (Envoy does not remove cookies)
    let e = edits(
        get("/")
            .header("cookie", format!("session={valid}"))
            .run(&a),
    );
    assert!(e.remove.is_empty() && e.path_and_query.is_none());
}

#[test]
fn output_headers() {
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "exp": NOW + 60,
        "email": "alice@example.com", "n": 42, "f": 1.5, "ok": true,
        "org": {"team": {"name": "blue"}}, "groups": ["a", "b"], "empty": ""
    });
    let token = mint(Algorithm::RS256, &claims);
    let claim = |header: &'static str, claim: &str| ClaimToHeader {
        header: HeaderName::from_static(header),
        claim: claim.into(),
    };
    let a = Authenticator::new(vec![Provider {
        output_payload_to_header: Some(HeaderName::from_static("x-jwt-payload")),
        output_claim_to_headers: vec![
            claim("x-email", "email"),
            claim("x-n", "n"),
            claim("x-f", "f"),
            claim("x-ok", "ok"),
            claim("x-team", "org.team.name"),
            claim("x-groups", "groups"),
            claim("x-missing", "missing"),
            claim("x-empty", "empty"),
        ],
        ..inline()
    }]);
    let AuthnOutcome::Authenticated(auth, edits) = get("/").bearer(&token).run(&a) else {
        panic!()
    };
    assert_eq!(auth.claims, claims);
    let set: Vec<(String, String)> = edits
        .set
        .iter()
        .map(|(h, v)| (h.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let payload = token.split('.').nth(1).unwrap().to_string();
    assert_eq!(
        set,
        [
            ("x-jwt-payload".to_string(), payload.clone()),
            ("x-email".into(), "alice@example.com".into()),
            ("x-n".into(), "42".into()),
            ("x-f".into(), "1.500000".into()),
            ("x-ok".into(), "true".into()),
            ("x-team".into(), "blue".into()),
        ]
    );
    // base64url of the payload JSON, as sent
    assert_eq!(
        serde_json::from_slice::<Value>(&base64url::decode(&payload).unwrap()).unwrap(),
        claims
    );
    // client-sent copies of the output headers are removed, with or without a token
    let mut headers = HeaderMap::new();
    headers.insert("x-email", "spoofed@example.com".parse().unwrap());
    headers.insert("x-jwt-payload", "spoofed".parse().unwrap());
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    edits.apply(&mut headers);
    assert_eq!(headers["x-email"], "alice@example.com");
    assert_eq!(headers["x-jwt-payload"], payload.as_str());
    assert!(headers.get("authorization").is_none());
    let AuthnOutcome::Anonymous(anon) = get("/").header("x-email", "spoofed").run(&a) else {
        panic!()
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-email", "spoofed@example.com".parse().unwrap());
    anon.apply(&mut headers);
    assert!(headers.is_empty());
    // and the URI: apply_to_parts rewrites it
    let (mut parts, ()) = http::Request::get(format!("/p?access_token={token}&k=v"))
        .body(())
        .unwrap()
        .into_parts();
    let AuthnOutcome::Authenticated(_, edits) =
        a.authenticate(&parts.method, &parts.uri, &parts.headers, now())
    else {
        panic!()
    };
    edits.apply_to_parts(&mut parts);
    assert_eq!(parts.uri, "/p?k=v");
}

#[test]
fn several_providers() {
    let other = "https://other.example";
    let b = || Provider {
        origin: "default/jwt jwtRules[1]".into(),
        issuer: other.into(),
        ..inline()
    };
    let a = Authenticator::new(vec![inline(), b()]);
    let from_b = mint(Algorithm::ES384, &with(alice(), json!({"iss": other})));
    let b_expired = mint(
        Algorithm::ES384,
        &with(alice(), json!({"iss": other, "exp": NOW - 100})),
    );
    let third = mint(
        Algorithm::ES384,
        &with(alice(), json!({"iss": "https://third.example"})),
    );
    assert_eq!(
        outcome(&get("/").bearer(&from_b).run(&a)),
        principal("https://other.example/alice")
    );
    assert_eq!(
        outcome(&get("/").bearer(&mint(Algorithm::RS256, &alice())).run(&a)),
        ALICE()
    );
    // Istio's AND(OR(P1, allow_missing), ...): P1's allow_missing sees B's token at the shared
    // location first and refuses its issuer.
    assert_eq!(
        outcome(&get("/").bearer(&b_expired).run(&a)),
        unauthorized("Jwt issuer is not configured")
    );
    assert_eq!(
        outcome(&get("/").bearer(&third).run(&a)),
        unauthorized("Jwt issuer is not configured")
    );
    // with its own location, B's own reason comes out
    let a = Authenticator::new(vec![
        inline(),
        Provider {
            locations: vec![TokenLocation::Header {
                name: HeaderName::from_static("x-other"),
                prefix: "Bearer ".into(),
            }],
            ..b()
        },
    ]);
    assert_eq!(
        outcome(
            &get("/")
                .header("x-other", format!("Bearer {b_expired}"))
                .run(&a)
        ),
        unauthorized("Jwt is expired")
    );
    assert_eq!(
        outcome(
            &get("/")
                .header("x-other", format!("Bearer {from_b}"))
                .run(&a)
        ),
        principal("https://other.example/alice")
    );
    // a provider without issuer accepts any
    let any = Authenticator::new(vec![Provider {
        issuer: String::new(),
        ..inline()
    }]);
    assert_eq!(
        outcome(&get("/").bearer(&third).run(&any)),
        principal("https://third.example/alice")
    );
}

#[test]
fn remote_keys_fail_closed_until_published() {
    let slot = Arc::new(KeySlot::new());
    let remote = Keys::Remote {
        source: JwksSource::Uri("https://issuer.example/jwks".into()),
        timeout: Duration::from_secs(5),
        slot: slot.clone(),
    };
    let a = Authenticator::new(vec![provider(remote.clone()), provider(remote)]);
    assert_eq!(a.remote_sources().len(), 1, "one slot, listed once");
    let token = mint(Algorithm::RS256, &alice());
    assert_eq!(
        outcome(&get("/").bearer(&token).run(&a)),
        unauthorized("Jwks doesn't have key to match kid or alg from Jwt")
    );
    assert!(slot.take_refresh_request(), "an empty slot asks for keys");
    slot.publish(keys().key_set());
    assert_eq!(outcome(&get("/").bearer(&token).run(&a)), ALICE());
    assert!(!slot.take_refresh_request());
    let rotated = mint_with(Algorithm::RS256, Some("new-kid"), &alice());
    assert_eq!(
        outcome(&get("/").bearer(&rotated).run(&a)),
        unauthorized("Jwks doesn't have key to match kid or alg from Jwt")
    );
    assert!(
        slot.take_refresh_request(),
        "an unknown kid asks for a refresh"
    );
    assert_eq!(
        JwksSource::Discovery {
            issuer: "https://issuer.example/".into()
        }
        .discovery_url()
        .unwrap(),
        "https://issuer.example/.well-known/openid-configuration"
    );
}

#[test]
fn key_matching_by_kid_and_alg() {
    let k = keys();
    let mut rsa_rs256 = k.rsa.jwk.clone();
    rsa_rs256["alg"] = json!("RS256");
    let set = |jwks: Vec<Value>| {
        Keys::Inline(Arc::new(
            KeySet::from_json(json!({ "keys": jwks }).to_string().as_bytes()).unwrap(),
        ))
    };
    let a = Authenticator::new(vec![provider(set(vec![rsa_rs256]))]);
    assert_eq!(
        outcome(&get("/").bearer(&mint(Algorithm::RS256, &alice())).run(&a)),
        ALICE()
    );
    assert_eq!(
        outcome(&get("/").bearer(&mint(Algorithm::PS256, &alice())).run(&a)),
        unauthorized("Jwks doesn't have key to match kid or alg from Jwt"),
        "the key's alg must equal the token's"
    );
    // a key without kid matches a token with any kid; a token without kid tries every key
    let mut no_kid = k.ec256.jwk.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let a = Authenticator::new(vec![provider(set(vec![k.rsa.jwk.clone(), no_kid]))]);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("whatever".into());
    let t = jsonwebtoken::encode(&header, &alice(), &k.ec256.encoding).unwrap();
    assert_eq!(outcome(&get("/").bearer(&t).run(&a)), ALICE());
    header.kid = None;
    let t = jsonwebtoken::encode(&header, &alice(), &k.ec256.encoding).unwrap();
    assert_eq!(outcome(&get("/").bearer(&t).run(&a)), ALICE());
}

#[test]
fn request_auth_claims() {
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "exp": NOW + 60, "azp": "frontend", "aud": ["age", "name"],
        "scope": "openid  profile", "roles": "admin user", "groups": ["dev", "ops"],
        "org": {"team": "blue", "tags": ["x"]}, "n": 1
    });
    let a = Authenticator::new(vec![Provider {
        space_delimited_claims: vec!["roles".into()],
        ..inline()
    }]);
    let AuthnOutcome::Authenticated(auth, _) =
        get("/").bearer(&mint(Algorithm::RS256, &claims)).run(&a)
    else {
        panic!()
    };
    assert_eq!(auth.issuer(), Some(ISSUER));
    assert_eq!(auth.subject(), Some("alice"));
    assert_eq!(auth.presenter.as_deref(), Some("frontend"));
    assert_eq!(auth.audiences, ["age", "name"]);
    let has = |path: &[&str], v: &str| {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        auth.claim_matches(&path, |x| x == v)
    };
    assert!(has(&["scope"], "profile"));
    assert!(!has(&["scope"], "openid  profile"));
    assert!(has(&["roles"], "admin"));
    assert!(has(&["groups"], "ops"));
    assert!(has(&["org", "team"], "blue"));
    assert!(has(&["org", "tags"], "x"));
    assert!(!has(&["org"], "blue"));
    assert!(!has(&["n"], "1"), "only strings match");
    assert!(!has(&["missing"], "x"));
}

#[test]
fn empty_authenticator_is_anonymous() {
    let a = Authenticator::none();
    assert!(a.is_empty());
    assert_eq!(
        get("/").bearer("garbage").run(&a),
        AuthnOutcome::Anonymous(HeaderEdits::default())
    );
    assert_eq!(
        Authenticator::new(vec![inline()]).fingerprint(),
        Authenticator::new(vec![inline()]).fingerprint()
    );
    let other_keys =
        KeySet::from_json(json!({ "keys": [keys().hmac.jwk] }).to_string().as_bytes()).unwrap();
    assert_ne!(
        Authenticator::new(vec![inline()]).fingerprint(),
        Authenticator::new(vec![provider(Keys::Inline(Arc::new(other_keys)))]).fingerprint()
    );
    // publishing keys into a slot does not change the configuration's fingerprint
    let slot = Arc::new(KeySlot::new());
    let remote = || {
        Authenticator::new(vec![provider(Keys::Remote {
            source: JwksSource::Uri("https://issuer.example/jwks".into()),
            timeout: Duration::from_secs(5),
            slot: slot.clone(),
        })])
    };
    let before = remote().fingerprint();
    slot.publish(keys().key_set());
    assert_eq!(remote().fingerprint(), before);
}
