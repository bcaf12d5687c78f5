//! RequestAuthentication from YAML: scope, validation errors, shared key slots, and the
//! labs' storyline (a RequestAuthentication plus an ALLOW policy requiring a principal
//! everywhere but `/health_check`).

use std::net::SocketAddr;

use http::{HeaderMap, Method, StatusCode, Uri};
use jsonwebtoken::Algorithm;

use super::super::{load_str, MeshConfig};
use super::*;
use crate::policy::authz::{Connection, Request, Verdict};
use crate::policy::jwt::tests::fixtures::{self, keys, mint, ISSUER};
use crate::policy::jwt::AuthnOutcome;

const WORKLOAD: &str = "apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age, namespace: default, labels: { app: age } }
spec:
  serviceAccount: age
  address: 127.0.0.1
  ports:
    - { name: http, port: 8081, targetPort: 9081, protocol: HTTP }
    - { name: tcp, port: 9000, targetPort: 9001, protocol: TCP }
";

/// A RequestAuthentication `name` in `ns` with `spec` lines (indented by two).
fn ra(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec:\n{spec}")
}

/// One rule for the test issuer with the test keys inline.
fn inline_rule() -> String {
    format!(
        "  jwtRules:\n    - issuer: {ISSUER}\n      jwks: '{}'\n",
        keys().jwks()
    )
}

fn mesh(docs: &str) -> MeshConfig {
    load_str("mesh.yaml", &format!("{WORKLOAD}{docs}")).unwrap_or_else(|e| panic!("{e}\n{docs}"))
}

fn origins(c: &MeshConfig, port: usize) -> Vec<String> {
    c.plan("age").unwrap().inbound[port]
        .authentication
        .providers()
        .iter()
        .map(|p| p.origin.clone())
        .collect()
}

#[test]
fn scope_and_merging() {
    let rule =
        "  jwtRules: [{ issuer: \"https://a.example\", jwksUri: \"https://a.example/jwks\" }]\n";
    let sel = |labels: &str| format!("  selector: {{ matchLabels: {{ {labels} }} }}\n{rule}");
    #[rustfmt::skip]
    let table: Vec<(&str, String, Vec<&str>)> = vec![
        ("mesh-wide", ra("istio-system", "m", rule), vec!["istio-system/m jwtRules[0]"]),
        ("root-ns selector matches in every namespace", ra("istio-system", "m", &sel("app: age")), vec!["istio-system/m jwtRules[0]"]),
        ("root-ns selector not matching", ra("istio-system", "m", &sel("app: other")), vec![]),
        ("namespace-wide", ra("default", "n", rule), vec!["default/n jwtRules[0]"]),
        ("other namespace", ra("other", "n", rule), vec![]),
        ("workload selector", ra("default", "w", &sel("app: age")), vec!["default/w jwtRules[0]"]),
        ("selector not matching", ra("default", "w", &sel("app: age, version: v2")), vec![]),
        ("targetRefs: ignored by sidecars", ra("default", "t", &format!("  targetRefs: [{{ kind: Gateway, group: gateway.networking.k8s.io, name: gw }}]\n{rule}")), vec![]),
        ("every level contributes, in load order",
         ra("default", "w", &sel("app: age")) + &ra("istio-system", "m", rule) + &ra("default", "n", rule),
         vec!["default/w jwtRules[0]", "istio-system/m jwtRules[0]", "default/n jwtRules[0]"]),
        ("no rules: nothing", ra("default", "empty", "  selector: { matchLabels: { app: age } }\n"), vec![]),
    ];
    for (case, docs, want) in table {
        let c = mesh(&docs);
        assert_eq!(origins(&c, 0), want, "{case}");
        assert!(origins(&c, 1).is_empty(), "{case}: TCP ports check no JWT");
        let w = c.warnings().join("\n");
        if case.contains("target") {
            assert!(w.contains("sidecars ignore it"), "{w}");
        }
        if case.contains("not matching") || case == "other namespace" {
            assert!(
                w.contains("selects no workload with a sidecar"),
                "{case}: {w}"
            );
        }
        if !want.is_empty() {
            assert!(
                w.contains("port 9000 (tcp) is not HTTP: no token is checked there"),
                "{case}: {w}"
            );
        }
    }
}

#[test]
fn remote_sources_share_a_slot() {
    let c = mesh(
        &(ra(
            "default",
            "a",
            "  jwtRules:\n    - { issuer: \"https://a.example\", jwksUri: \"https://keys.example/jwks\", timeout: 2s }\n    - { issuer: \"https://b.example\" }\n",
        ) + &ra(
            "istio-system",
            "m",
            "  jwtRules: [{ issuer: \"https://c.example\", jwksUri: \"https://keys.example/jwks\" }]\n",
        )),
    );
    let plan = c.plan("age").unwrap();
    let a = &plan.inbound[0].authentication;
    let sources: Vec<(String, Duration)> = a
        .remote_sources()
        .iter()
        .map(|(s, t, _)| (s.to_string(), *t))
        .collect();
    assert_eq!(
        sources,
        [
            (
                "jwksUri https://keys.example/jwks".to_string(),
                Duration::from_secs(2)
            ),
            (
                "OIDC discovery from https://b.example".to_string(),
                Duration::from_secs(5)
            ),
        ]
    );
    // a second plan of the same configuration sees the same slots (the fetcher fills once)
    let again = c.plan("age").unwrap();
    let (_, _, s1) = a.remote_sources()[0];
    let (_, _, s2) = again.inbound[0].authentication.remote_sources()[0];
    assert!(Arc::ptr_eq(s1, s2));
    // and the summary `outrider check --output json` prints
    let json = serde_json::to_value(&plan.inbound[0]).unwrap();
    assert_eq!(
        json["request_authentication"]["providers"][2]["keys"],
        "jwksUri https://keys.example/jwks"
    );
}

#[test]
fn validation_errors_name_file_line_and_field() {
    let bad = |rules: &str| ra("default", "jwt", &format!("  jwtRules:\n{rules}"));
    let base_lines = WORKLOAD.lines().count();
    #[rustfmt::skip]
    let table: Vec<(&str, String, usize, &str, &str)> = vec![
        // (case, document, line within the document (1 = ---), field, message)
        ("no issuer and no jwksUri", bad("    - audiences: [a]\n"), 7, "spec.jwtRules[0]", "needs an issuer or a jwksUri"),
        ("jwks and jwksUri", bad("    - issuer: a\n      jwksUri: https://a/jwks\n      jwks: '{}'\n"), 9, "spec.jwtRules[0].jwks", "not both"),
        ("jwksUri scheme", bad("    - issuer: a\n      jwksUri: ftp://a/jwks\n"), 8, "spec.jwtRules[0].jwksUri", "scheme \"ftp\" is not http or https"),
        ("jwksUri relative", bad("    - issuer: a\n      jwksUri: /jwks\n"), 8, "spec.jwtRules[0].jwksUri", "not an absolute http(s) URL"),
        ("jwksUri too long", bad(&format!("    - issuer: a\n      jwksUri: https://a/{}\n", "x".repeat(2048))), 8, "spec.jwtRules[0].jwksUri", "at most 2048"),
        ("jwks not JSON", bad("    - issuer: a\n      jwks: 'nope'\n"), 8, "spec.jwtRules[0].jwks", "not a usable JWKS: the JWKS is not a JSON object"),
        ("jwks without usable key", bad("    - issuer: a\n      jwks: '{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-521\"}]}'\n"), 8, "spec.jwtRules[0].jwks", "crv \"P-521\" (ES512) is not supported"),
        ("empty audience", bad("    - issuer: a\n      audiences: [\"\"]\n"), 8, "spec.jwtRules[0].audiences", "must not be empty"),
        ("bad timeout", bad("    - issuer: https://a\n      timeout: 1.5s\n"), 8, "spec.jwtRules[0].timeout", "invalid duration \"1.5s\""),
        ("empty header name", bad("    - issuer: a\n      fromHeaders: [{ name: \"\" }]\n"), 8, "spec.jwtRules[0].fromHeaders[0].name", "must not be empty"),
        ("bad header name", bad("    - issuer: a\n      fromHeaders:\n        - name: \"x token\"\n"), 9, "spec.jwtRules[0].fromHeaders[0].name", "\"x token\" is not a valid header name"),
        ("empty param", bad("    - issuer: a\n      fromParams: [\"\"]\n"), 8, "spec.jwtRules[0].fromParams[0]", "must not be empty"),
        ("empty cookie", bad("    - issuer: a\n      fromCookies: [\"\"]\n"), 8, "spec.jwtRules[0].fromCookies[0]", "must not be empty"),
        ("bad payload header", bad("    - issuer: a\n      outputPayloadToHeader: \"a b\"\n"), 8, "spec.jwtRules[0].outputPayloadToHeader", "not a valid header name"),
        ("empty claim", bad("    - issuer: a\n      outputClaimToHeaders:\n        - header: x-a\n          claim: \"\"\n"), 10, "spec.jwtRules[0].outputClaimToHeaders[0].claim", "must not be empty"),
        ("unknown field", bad("    - issuer: a\n      jwksURI: https://a\n"), 8, "spec.jwtRules[0].jwksURI", "unknown field \"jwksURI\""),
        ("selector with targetRefs", ra("default", "jwt", "  selector: { matchLabels: { app: age } }\n  targetRefs: [{ kind: Service, name: age }]\n"), 6, "spec.selector", "mutually exclusive"),
        ("wrong apiVersion", "---\napiVersion: security.istio.io/v1alpha1\nkind: RequestAuthentication\nmetadata: { name: p }\n".into(), 2, "apiVersion", "expected security.istio.io/v1"),
    ];
    for (case, doc, line, field, message) in table {
        let err = match load_str("mesh.yaml", &format!("{WORKLOAD}{doc}")) {
            Ok(_) => panic!("{case}: loaded"),
            Err(e) => e,
        };
        let at = err.location().unwrap_or_else(|| panic!("{case}: {err}"));
        assert_eq!(
            (at.line, at.field.as_str()),
            (base_lines + line, field),
            "{case}: {err}"
        );
        assert!(err.to_string().contains(message), "{case}: {err}");
        assert!(err.to_string().starts_with("mesh.yaml:"), "{case}: {err}");
    }
}

#[test]
fn warnings_for_check() {
    let jwks = format!(
        "{{\"keys\": [{}, {{\"kty\": \"EC\", \"crv\": \"P-521\", \"kid\": \"big\"}}]}}",
        keys().rsa.jwk
    );
    let c = mesh(
        &(ra(
            "default",
            "jwt",
            &format!(
                "  jwtRules:\n    - issuer: a\n      jwks: '{jwks}'\n    - issuer: not-a-url\n"
            ),
        ) + &ra(
            "default",
            "stale",
            "  selector: { matchLabels: { app: gone } }\n  jwtRules: [{ issuer: https://a }]\n",
        )),
    );
    let w = c.warnings().join("\n");
    for expected in [
        "spec.jwtRules[0].jwks: default/jwt jwtRules[0]: key 1 (kid \"big\"): crv \"P-521\" (ES512) is not supported by outrider; the key is ignored",
        "spec.jwtRules[1].issuer: default/jwt jwtRules[1]: neither jwksUri nor jwks is set, so the keys come from OIDC discovery at \"not-a-url/.well-known/openid-configuration\", but the issuer is not an http(s) URL",
        "RequestAuthentication default/stale selects no workload with a sidecar (selector {app=gone} in namespace default)",
    ] {
        assert!(w.contains(expected), "missing {expected:?} in\n{w}");
    }
}

#[test]
fn principals_without_request_authentication_warn() {
    let policy = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: p, namespace: default }\nspec:\n  rules:\n    - from: [{ source: { requestPrincipals: [\"*\"] } }]\n      when: [{ key: request.auth.audiences, values: [a] }]\n";
    let warning = "AuthorizationPolicy default/p rule 0 uses requestPrincipals, request.auth.audiences on workload age port 8081, but no RequestAuthentication applies there";
    let w = mesh(policy).warnings().join("\n");
    assert!(w.contains(warning), "{w}");
    let w = mesh(&(ra("default", "jwt", &inline_rule()) + policy))
        .warnings()
        .join("\n");
    assert!(!w.contains("no RequestAuthentication applies"), "{w}");
}

/// The labs' storyline on the plan of `age`: `/health_check` without a token → 200; any
/// other path without a token → 403 `RBAC: access denied`; alice's token → 200; a tampered
/// or expired token → 401.
#[test]
fn lab_storyline() {
    let policy = "---
apiVersion: security.istio.io/v1beta1
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
        requestPrincipals: [\"*\"]
    to:
    - operation:
        notPaths: [\"/health_check\"]
  - to:
    - operation:
        paths: [\"/health_check\"]
";
    let c = mesh(
        &(ra(
            "default",
            "jwt",
            &format!(
                "  selector: {{ matchLabels: {{ app: age }} }}\n{}",
                inline_rule()
            ),
        ) + policy),
    );
    let plan = c.plan("age").unwrap();
    let (authn, authz) = (
        &plan.inbound[0].authentication,
        &plan.inbound[0].authorization,
    );
    let answer = |path: &str, token: Option<&str>| -> (StatusCode, String) {
        let uri: Uri = path.parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "age.default:8081".parse().unwrap());
        if let Some(t) = token {
            headers.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let auth = match authn.authenticate(&Method::GET, &uri, &headers, fixtures::now()) {
            AuthnOutcome::Reject { status, reason, .. } => return (status, reason.to_string()),
            AuthnOutcome::Anonymous(edits) => {
                edits.apply(&mut headers);
                None
            }
            AuthnOutcome::Authenticated(auth, edits) => {
                edits.apply(&mut headers);
                Some(auth)
            }
        };
        let connection = Connection {
            peer: None,
            source: "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
            destination: "127.0.0.1:8081".parse::<SocketAddr>().unwrap(),
            sni: None,
        };
        let request = Request {
            method: "GET",
            authority: "age.default:8081",
            path,
            headers: &headers,
        };
        match authz
            .check_request_with_auth(&connection, &request, auth.as_ref())
            .verdict
        {
            Verdict::Allow => (StatusCode::OK, String::new()),
            Verdict::Deny { .. } => (StatusCode::FORBIDDEN, "RBAC: access denied".into()),
            Verdict::BadRequest { reason } => (StatusCode::BAD_REQUEST, reason.into()),
        }
    };
    let alice = mint(Algorithm::RS256, &fixtures::alice());
    let expired = mint(
        Algorithm::RS256,
        &serde_json::json!({"iss": ISSUER, "sub": "alice", "exp": fixtures::NOW - 3600}),
    );
    let mut tampered: Vec<&str> = alice.split('.').collect();
    let other = fixtures::b64(br#"{"iss":"https://issuer.example","sub":"admin"}"#);
    tampered[1] = &other;
    let tampered = tampered.join(".");
    let ok = (StatusCode::OK, String::new());
    let denied = (StatusCode::FORBIDDEN, "RBAC: access denied".to_string());
    let unauthorized = |r: &str| (StatusCode::UNAUTHORIZED, r.to_string());
    assert_eq!(answer("/health_check", None), ok);
    assert_eq!(answer("/", None), denied);
    assert_eq!(answer("/api/items", None), denied);
    assert_eq!(answer("/", Some(&alice)), ok);
    assert_eq!(answer("/health_check", Some(&alice)), ok);
    assert_eq!(
        answer("/", Some(&tampered)),
        unauthorized("Jwt verification fails")
    );
    assert_eq!(answer("/", Some(&expired)), unauthorized("Jwt is expired"));
    // a bad token is refused even where no principal is required (istio/istio#24371)
    assert_eq!(
        answer("/health_check", Some(&expired)),
        unauthorized("Jwt is expired")
    );
}
