//! Micro-benchmarks of the hot path, in memory (no sockets):
//!
//! - `handshake/full` and `handshake/resumed`: one mutual TLS 1.3 handshake between the
//!   sidecars' real rustls configurations (ECDSA P-256 SVIDs, SPIFFE verification on both
//!   sides), driven by hand over in-memory buffers;
//! - `verify_svid`: the SPIFFE verification of a peer's certificate alone;
//! - `copy/tls/<size>`: a message through the copy loop into TLS and decrypted on the other
//!   side (what an outbound sidecar does per message);
//! - `cipher/<suite>/65536`: 64 KiB sealed by a client and opened by the server over an
//!   established mesh connection, with AES-128-GCM (the mesh's choice) and AES-256-GCM (the
//!   library's default order), to back the choice with a figure from the same run;
//! - `policy/plan`: resolving a workload's plan (PeerAuthentication per port, routes, TLS per
//!   endpoint) from a parsed mesh;
//! - `policy/authz`: one HTTP request authorized by a port with a 10-rule AuthorizationPolicy
//!   (path normalization, principals, methods, paths, hosts, headers), the last rule matching;
//! - `jwt/rs256` and `jwt/es256`: one request with a valid bearer token authenticated by a
//!   RequestAuthentication rule with an inline JWKS (RSA 2048 and P-256 keys): extraction,
//!   parsing, time and issuer checks, the signature, the identity and header edits. Keys are
//!   never fetched on the request path.
//!
//! Measurement times are short so `cargo bench` finishes in a couple of minutes; pass
//! `--measurement-time 10` (after `--`) for steadier figures.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use outrider::ca::Authority;
use outrider::identity::svid::verify_svid;
use outrider::identity::{CertStore, PeerRole, SpiffeId};
use outrider::proxy::copy::{copy_bidirectional, CopyConfig};

const TD: &str = "cluster.local";

/// Two workloads' identities from one CA: `sentences` (client) and `age` (server).
struct Pki {
    _dir: tempfile::TempDir,
    client: CertStore,
    server: CertStore,
    server_id: SpiffeId,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca =
        Authority::init(dir.path(), TD, Duration::from_secs(365 * 86_400), false).expect("CA init");
    let store = |sa: &str| {
        let id = SpiffeId::istio(TD, "default", sa).expect("id");
        let svid = ca
            .issue(&id, Duration::from_secs(86_400), &[])
            .expect("issue");
        let store = CertStore::new(TD);
        store
            .publish_pem(
                svid.chain_pem.as_bytes(),
                svid.key_pem.as_bytes(),
                svid.root_pem.as_bytes(),
            )
            .expect("publish");
        (store, id)
    };
    let (client, _) = store("sentences");
    let (server, server_id) = store("age");
    Pki {
        _dir: dir,
        client,
        server,
        server_id,
    }
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("outbound_.9080_._.age.default.svc.cluster.local").expect("SNI")
}

/// Moves every pending TLS record from `from` to `to` and lets `to` process them.
fn transfer(
    from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    wire: &mut Vec<u8>,
) -> bool {
    let mut moved = false;
    while from.wants_write() {
        wire.clear();
        from.write_tls(wire).expect("write_tls");
        let mut rd = &wire[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).expect("read_tls");
            to.process_new_packets().expect("handshake");
        }
        moved = true;
    }
    moved
}

/// One complete handshake, including the session tickets the server sends after it.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> HandshakeKind {
    let mut c = ClientConnection::new(client.clone(), server_name()).expect("client");
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let mut wire = Vec::with_capacity(8192);
    loop {
        let a = transfer(&mut c, &mut s, &mut wire);
        let b = transfer(&mut s, &mut c, &mut wire);
        if !a && !b {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    assert!(c.peer_certificates().is_some() && s.peer_certificates().is_some());
    c.handshake_kind().expect("handshake done")
}

fn handshakes(cr: &mut Criterion) {
    let pki = pki();
    let server = outrider::tls::server_config(&pki.server);
    let resuming = outrider::tls::client_config(&pki.client, vec![pki.server_id.clone()]);
    let full = outrider::tls::without_resumption(&resuming);
    let mut g = cr.benchmark_group("handshake");
    g.bench_function("full", |b| {
        b.iter(|| assert_eq!(handshake(&full, &server), HandshakeKind::Full))
    });
    handshake(&resuming, &server); // first one fills the ticket cache
    g.bench_function("resumed", |b| {
        b.iter(|| assert_eq!(handshake(&resuming, &server), HandshakeKind::Resumed))
    });
    g.finish();
}

fn verification(cr: &mut Criterion) {
    let pki = pki();
    let me = pki.server.current().expect("identity");
    let peer = pki.client.current().expect("identity");
    let leaf = peer.svid.chain()[0].clone();
    cr.bench_function("verify_svid", |b| {
        b.iter(|| {
            verify_svid(&me.bundle, &leaf, &[], UnixTime::now(), PeerRole::Client)
                .expect("valid SVID")
        })
    });
}

fn copy_loop(cr: &mut Criterion) {
    let pki = pki();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = outrider::tls::client_config(&pki.client, vec![pki.server_id.clone()]);
    let server = outrider::tls::server_config(&pki.server);
    // app ⇄ [copy loop] ⇄ TLS client ⇄ wire ⇄ TLS server (the reader)
    let (mut app, mut proxy_app_side, mut reader) = rt.block_on(async {
        let (app, proxy_app_side) = tokio::io::duplex(64 * 1024);
        let (wire_c, wire_s) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let (c, s) = tokio::join!(
            connector.connect(server_name(), wire_c),
            acceptor.accept(wire_s)
        );
        (
            app,
            (proxy_app_side, c.expect("client TLS")),
            s.expect("server TLS"),
        )
    });
    rt.spawn(async move {
        let (a, b) = &mut proxy_app_side;
        copy_bidirectional(a, b, CopyConfig::default(), |_, _| {}).await
    });
    let mut g = cr.benchmark_group("copy/tls");
    for size in [1024usize, 64 * 1024, 1024 * 1024] {
        let msg = vec![0x5a; size];
        let mut got = vec![0; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                rt.block_on(async {
                    let (w, r) = tokio::join!(app.write_all(&msg), reader.read_exact(&mut got));
                    w.expect("write");
                    r.expect("read");
                })
            })
        });
    }
    g.finish();
}

/// Sealing and opening records alone, per cipher suite: the client's provider order decides.
fn ciphers(cr: &mut Criterion) {
    use std::io::{Read, Write};
    let pki = pki();
    let server = outrider::tls::server_config(&pki.server);
    let library_order = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let clients = [
        (
            "aes_128_gcm",
            outrider::tls::client_config(&pki.client, vec![pki.server_id.clone()]),
        ),
        (
            "aes_256_gcm",
            outrider::tls::client_config_with_provider(
                &pki.client,
                vec![pki.server_id.clone()],
                Arc::new(rustls::time_provider::DefaultTimeProvider),
                library_order,
            ),
        ),
    ];
    let size = 64 * 1024;
    let msg = vec![0x5a; size];
    let mut got = vec![0; size];
    let mut g = cr.benchmark_group("cipher");
    g.throughput(Throughput::Bytes(size as u64));
    for (name, client) in clients {
        let mut c = ClientConnection::new(client, server_name()).expect("client");
        let mut s = ServerConnection::new(server.clone()).expect("server");
        let mut wire = Vec::with_capacity(size + 4096);
        while transfer(&mut c, &mut s, &mut wire) | transfer(&mut s, &mut c, &mut wire) {}
        assert!(!c.is_handshaking() && !s.is_handshaking());
        g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
            b.iter(|| {
                // A record at a time: rustls holds at most 16 KiB of received plaintext.
                for (chunk, out) in msg.chunks(16 * 1024).zip(got.chunks_mut(16 * 1024)) {
                    c.writer().write_all(chunk).expect("seal");
                    transfer(&mut c, &mut s, &mut wire);
                    s.reader().read_exact(out).expect("open");
                }
            })
        });
    }
    g.finish();
}

const MESH: &str = r#"apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: { name: mesh }
spec: { trustDomain: cluster.local, rootNamespace: istio-system }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: sentences, namespace: default, labels: { app: sentences, version: v1 } }
spec:
  serviceAccount: sentences
  address: 10.0.0.1
  ports:
    - { name: http, port: 8080, targetPort: 18080, protocol: HTTP }
  outbound:
    - { bind: "127.0.0.1:9001", to: "age.default:http" }
    - { bind: "127.0.0.1:9002", to: "name.default:http" }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age, namespace: default, labels: { app: age, version: v1 } }
spec:
  serviceAccount: age
  address: 10.0.0.2
  ports:
    - { name: http, port: 8080, targetPort: 18080, protocol: HTTP }
    - { name: tcp, port: 9000, targetPort: 19000, protocol: TCP }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: name, namespace: default, labels: { app: name, version: v1 } }
spec:
  serviceAccount: name
  address: 10.0.0.3
  ports:
    - { name: http, port: 8080, targetPort: 18080, protocol: HTTP }
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: { name: default, namespace: default }
spec: { mtls: { mode: STRICT } }
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: { name: age-tcp, namespace: default }
spec:
  selector: { matchLabels: { app: age } }
  mtls: { mode: STRICT }
  portLevelMtls: { 19000: { mode: PERMISSIVE } }
"#;

fn policy(cr: &mut Criterion) {
    let mesh = outrider::config::load_str("mesh.yaml", MESH).expect("mesh");
    cr.bench_function("policy/plan", |b| {
        b.iter(|| mesh.plan("age").expect("plan"))
    });
}

/// Nine rules that do not match the request, then the one that does.
const TEN_RULES: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: age, namespace: default }
spec:
  selector: { matchLabels: { app: age } }
  rules:
    - from: [{ source: { principals: [cluster.local/ns/default/sa/name] } }]
      to: [{ operation: { methods: [GET], paths: ["/admin/*"] } }]
    - from: [{ source: { namespaces: [other] } }]
    - to: [{ operation: { methods: [DELETE] } }]
    - to: [{ operation: { paths: ["/users/{*}/delete"] } }]
    - from: [{ source: { ipBlocks: [10.0.0.0/8] } }]
    - to: [{ operation: { hosts: ["admin.example.com"] } }]
    - when: [{ key: "request.headers[x-debug]", values: ["1"] }]
    - from: [{ source: { requestPrincipals: ["*"] } }]
    - to: [{ operation: { ports: ["1234"] } }]
    - from: [{ source: { principals: ["cluster.local/ns/default/sa/sentences"] } }]
      to: [{ operation: { methods: [GET, POST], paths: ["/api/v1/*"], hosts: ["age.default*"] } }]
      when: [{ key: "request.headers[x-request-id]", values: ["*"] }]
"#;

fn authz(cr: &mut Criterion) {
    use outrider::policy::authz::{Connection, Request, Verdict};
    let mesh =
        outrider::config::load_str("mesh.yaml", &format!("{MESH}{TEN_RULES}")).expect("mesh");
    let plan = mesh.plan("age").expect("plan");
    let authorizer = plan.inbound[0].authorization.clone();
    let peer = SpiffeId::istio(TD, "default", "sentences").expect("id");
    let connection = Connection {
        peer: Some(&peer),
        source: "127.0.0.1:40000".parse().expect("addr"),
        destination: "127.0.0.1:8080".parse().expect("addr"),
        sni: None,
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-request-id",
        "3f2a9c1e-77aa-4b1e-9d0c-0a1b2c3d4e5f"
            .parse()
            .expect("value"),
    );
    headers.insert("user-agent", "curl/8.5.0".parse().expect("value"));
    headers.insert("accept", "*/*".parse().expect("value"));
    let request = Request {
        method: "GET",
        authority: "age.default:8080",
        path: "/api/v1/items/42?fields=name,age",
        headers: &headers,
    };
    assert_eq!(
        authorizer.check_request(&connection, &request).verdict,
        Verdict::Allow
    );
    cr.bench_function("policy/authz", |b| {
        b.iter(|| authorizer.check_request(&connection, &request))
    });
}

/// `jwt/rs256`, `jwt/es256`: `Authenticator::authenticate` of one request with a valid token.
fn jwt(cr: &mut Criterion) {
    use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
    use outrider::policy::jwt::{Authenticator, AuthnOutcome, KeySet, Keys, Provider};

    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa");
    let rsa = EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).expect("rsa pem");
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
    let ec = EncodingKey::from_ec_der(ec.serialized_der());
    let jwk = |key: &EncodingKey, alg: Algorithm, kid: &str| {
        let mut v =
            serde_json::to_value(Jwk::from_encoding_key(key, alg).expect("jwk")).expect("json");
        v["kid"] = serde_json::json!(kid);
        v
    };
    let jwks = serde_json::json!({ "keys": [jwk(&rsa, Algorithm::RS256, "rsa"), jwk(&ec, Algorithm::ES256, "ec")] });
    let keys = KeySet::from_json(jwks.to_string().as_bytes()).expect("jwks");
    let issuer = "https://auth.example/realms/labs";
    let authenticator = Authenticator::new(vec![Provider::new(
        "default/jwt jwtRules[0]",
        issuer,
        Keys::Inline(Arc::new(keys)),
    )]);
    let now = std::time::SystemTime::now();
    let exp = now
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({
        "iss": issuer, "sub": "alice", "aud": "frontend", "exp": exp,
        "scope": "openid profile email", "azp": "frontend", "preferred_username": "alice"
    });
    let uri: http::Uri = "/api/v1/items/42?fields=name,age".parse().expect("uri");
    for (name, alg, key, kid) in [
        ("jwt/rs256", Algorithm::RS256, &rsa, "rsa"),
        ("jwt/es256", Algorithm::ES256, &ec, "ec"),
    ] {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        let token = jsonwebtoken::encode(&header, &claims, key).expect("token");
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "age.default:8080".parse().expect("value"));
        headers.insert("user-agent", "curl/8.5.0".parse().expect("value"));
        headers.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("value"),
        );
        assert!(matches!(
            authenticator.authenticate(&http::Method::GET, &uri, &headers, now),
            AuthnOutcome::Authenticated(..)
        ));
        cr.bench_function(name, |b| {
            b.iter(|| authenticator.authenticate(&http::Method::GET, &uri, &headers, now))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = handshakes, verification, copy_loop, ciphers, policy, authz, jwt
}
criterion_main!(benches);
