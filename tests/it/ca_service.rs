//! The CA service through the built binary (`outrider ca serve`), with the sidecar's `ca`
//! identity source running in-process against it: refusals, rotation under traffic, a CA
//! outage, root rotation under traffic.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outrider::ca::proto::IstioCertificateRequest;
use outrider::ca::token::{Claims, TokenKey, AUDIENCE, ISSUER};
use outrider::identity::ca_client::{self, CaClient, CaClientError, CaSource};
use outrider::identity::{CertStore, SpiffeId};
use outrider::tls;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::common::ca::{init_ca, s, token, CaProcess};
use crate::common::{outrider, temp_dir};

fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap()
}

fn csr_naming(sa: &str) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id(sa).to_string().try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn request(csr: String, ttl: i64) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr,
        validity_duration: ttl,
        metadata: None,
    }
}

fn root_pem(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("root-cert.pem")).unwrap()
}

async fn call(
    ca: &CaProcess,
    root: &[u8],
    token: Option<&str>,
    req: IstioCertificateRequest,
) -> Result<Vec<String>, CaClientError> {
    ca_client::create_certificate(&ca.address(), "localhost", root, token, req)
        .await
        .map(|r| r.cert_chain)
}

fn code(result: Result<Vec<String>, CaClientError>) -> (Code, String) {
    match result {
        Err(CaClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a gRPC refusal, got {other:?}"),
    }
}

fn leaf_id(chain: &[String]) -> SpiffeId {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
    tls::peer_spiffe_id(&[der]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_right_status() {
    let tmp = temp_dir("ca-refusals");
    let dir = tmp.path();
    let ca_dir = dir.join("ca");
    init_ca(&ca_dir);
    let age_token = token(&ca_dir, "age");
    let metrics_addr = free_addr();
    let ca = CaProcess::start(
        &ca_dir,
        "127.0.0.1:0",
        &[
            "--burst",
            "3",
            "--rate-limit",
            "1",
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    let root = root_pem(&ca_dir);

    // A token for `age` with a CSR naming `name`: the CSR's SANs are ignored, the certificate
    // is for `age`, leaf first and the root last.
    let chain = call(
        &ca,
        &root,
        Some(&age_token),
        request(csr_naming("name"), 3600),
    )
    .await
    .expect("a valid token obtains a certificate");
    assert_eq!(chain.len(), 2);
    assert_eq!(leaf_id(&chain), id("age"));
    assert_eq!(chain[1].trim(), String::from_utf8_lossy(&root).trim());

    // Asking outright for another identity is refused.
    let mut impersonate = request(csr_naming("name"), 3600);
    impersonate.metadata = Some(prost_types::Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(
                    id("name").to_string(),
                )),
            },
        )]
        .into(),
    });
    let (c, m) = code(call(&ca, &root, Some(&age_token), impersonate).await);
    assert_eq!(c, Code::PermissionDenied, "{m}");

    // The sidecar's source refuses a certificate for another identity than it expects.
    let token_file = dir.join("age.token");
    std::fs::write(&token_file, &age_token).unwrap();
    let store = CertStore::new("cluster.local");
    let mut client = CaClient::new(CaSource {
        address: ca.address(),
        root_pem: root.clone(),
        token_file,
        ttl: Duration::from_secs(3600),
        expected: id("name"),
        server_name: Some("localhost".into()),
    });
    match client.fetch(&store).await {
        Err(CaClientError::WrongIdentity { got, expected }) => {
            assert_eq!(got, id("age").to_string());
            assert_eq!(expected, id("name").to_string());
        }
        other => panic!("expected WrongIdentity, got {other:?}"),
    }
    assert!(store.current().is_none());

    // Expired token, token signed by another key, wrong audience, no credentials at all.
    let key = TokenKey::load_or_create(&ca_dir).unwrap();
    let now = outrider::ca::token::unix_now();
    let claims = |aud: &str, iat: u64, exp: u64| Claims {
        iss: ISSUER.into(),
        sub: "system:serviceaccount:default:age".into(),
        aud: aud.into(),
        iat,
        exp,
    };
    let expired = key
        .mint_claims(&claims(AUDIENCE, now - 600, now - 60))
        .unwrap();
    let (c, m) = code(call(&ca, &root, Some(&expired), request(csr_naming("age"), 0)).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("expired"), "{m}");
    let foreign = TokenKey::generate()
        .unwrap()
        .mint("default", "age", Duration::from_secs(600))
        .unwrap();
    let (c, m) = code(call(&ca, &root, Some(&foreign), request(csr_naming("age"), 0)).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("signature"), "{m}");
    let wrong_aud = key
        .mint_claims(&claims("kubernetes", now, now + 600))
        .unwrap();
    let (c, m) = code(call(&ca, &root, Some(&wrong_aud), request(csr_naming("age"), 0)).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    // Signed with this CA's key, but issued by someone else, or issued in the future (beyond
    // the clock-skew leeway).
    let wrong_issuer = key
        .mint_claims(&Claims {
            iss: "https://kubernetes.default.svc".into(),
            ..claims(AUDIENCE, now, now + 600)
        })
        .unwrap();
    let (c, m) = code(
        call(
            &ca,
            &root,
            Some(&wrong_issuer),
            request(csr_naming("age"), 0),
        )
        .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("issuer"), "{m}");
    let future = key
        .mint_claims(&claims(AUDIENCE, now + 600, now + 1200))
        .unwrap();
    let (c, m) = code(call(&ca, &root, Some(&future), request(csr_naming("age"), 0)).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("not valid yet"), "{m}");
    let (c, m) = code(call(&ca, &root, None, request(csr_naming("age"), 0)).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");

    // Garbage CSR, a CSR whose signature does not verify, a TTL above --max-ttl (90d).
    let t = token(&ca_dir, "csr");
    let (c, m) = code(call(&ca, &root, Some(&t), request("not a csr".into(), 0)).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let mut tampered = csr_naming("age").into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let (c, m) = code(
        call(
            &ca,
            &root,
            Some(&t),
            request(String::from_utf8(tampered).unwrap(), 0),
        )
        .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let (c, m) = code(
        call(
            &ca,
            &root,
            Some(&token(&ca_dir, "ttl")),
            request(csr_naming("ttl"), 91 * 86_400),
        )
        .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("max allowed TTL"), "{m}");

    // Oversized: a CSR above the CSR cap, and a message above the gRPC message cap.
    let big = format!("{}{}", csr_naming("big"), "x".repeat(20_000));
    let (c, m) = code(call(&ca, &root, Some(&token(&ca_dir, "big")), request(big, 0)).await);
    assert_eq!(c, Code::ResourceExhausted, "{m}");
    let huge = "x".repeat(200_000);
    let (c, m) = code(call(&ca, &root, Some(&token(&ca_dir, "huge")), request(huge, 0)).await);
    assert_eq!(c, Code::ResourceExhausted, "{m}");

    // Rate limit: burst 3 per identity.
    let busy = token(&ca_dir, "busy");
    for _ in 0..3 {
        call(&ca, &root, Some(&busy), request(csr_naming("busy"), 0))
            .await
            .expect("within the burst");
    }
    let (c, m) = code(call(&ca, &root, Some(&busy), request(csr_naming("busy"), 0)).await);
    assert_eq!(c, Code::ResourceExhausted, "{m}");

    // The CA survived all of it.
    call(
        &ca,
        &root,
        Some(&token(&ca_dir, "after")),
        request(csr_naming("after"), 0),
    )
    .await
    .expect("the CA still issues after the refusals");

    // Every decision is counted.
    let metrics = http_get(&metrics_addr, "/stats/prometheus").await;
    for line in [
        "outrider_ca_certificates_issued_total 6",
        "outrider_ca_requests_denied_total{reason=\"token_expired\"} 1",
        "outrider_ca_requests_denied_total{reason=\"token_bad_signature\"} 1",
        "outrider_ca_requests_denied_total{reason=\"token_wrong_issuer\"} 1",
        "outrider_ca_requests_denied_total{reason=\"token_not_yet_valid\"} 1",
        "outrider_ca_requests_denied_total{reason=\"invalid_csr\"} 2",
        "outrider_ca_requests_denied_total{reason=\"too_large\"} 2",
        "outrider_ca_requests_denied_total{reason=\"rate_limited\"} 1",
        "outrider_ca_requests_denied_total{reason=\"impersonation\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn http_get(addr: &str, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_unreachable_at_start_is_retried_then_used() {
    let tmp = temp_dir("ca-late");
    let dir = tmp.path();
    let ca_dir = dir.join("ca");
    init_ca(&ca_dir);
    let addr = free_addr();
    let store = sidecar(&addr, &ca_dir, dir, "age", Duration::from_secs(3600));
    wait_for(
        "failed attempts to be counted",
        Duration::from_secs(10),
        || store.stats().rotation_failures >= 2,
    )
    .await;
    assert!(store.current().is_none(), "no certificate without a CA");
    let _ca = CaProcess::start(&ca_dir, &addr, &[]);
    wait_for(
        "the first certificate once the CA is up",
        Duration::from_secs(15),
        || store.current().is_some(),
    )
    .await;
    assert_eq!(store.current().unwrap().svid.id, id("age"));
}

// ---- traffic harness ------------------------------------------------------------------

/// Starts the `ca` source for `default/<sa>` against `ca`, returning its store.
fn sidecar(ca_addr: &str, ca_dir: &Path, dir: &Path, sa: &str, ttl: Duration) -> CertStore {
    let token_file = dir.join(format!("{sa}.token"));
    std::fs::write(&token_file, token(ca_dir, sa)).unwrap();
    let store = CertStore::new("cluster.local");
    tokio::spawn(ca_client::run(
        store.clone(),
        CaSource {
            address: ca_addr.to_string(),
            root_pem: root_pem(ca_dir),
            token_file,
            ttl,
            expected: id(sa),
            server_name: Some("localhost".into()),
        },
    ));
    store
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS echo server on the live store (the inbound side of a sidecar).
async fn echo_server(store: &CertStore) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(store));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    addr
}

/// One long-lived stream plus two steady trickles of new connections, counting outcomes:
/// one trickle shares a resuming connector (as a sidecar does per destination), the other
/// uses a connector without resumption, so every one of its connections is a full handshake
/// that verifies the server's current leaf against the current bundle. A resumed session
/// skips certificate checks, so only the second trickle shows that rotated leaves and new
/// roots are accepted.
struct Traffic {
    resuming: Trickle,
    full_only: Trickle,
    failures: Arc<Mutex<Vec<String>>>,
    stream_exchanges: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Completed handshakes of one trickle, by kind.
#[derive(Clone, Default)]
struct Trickle {
    full: Arc<AtomicU64>,
    resumed: Arc<AtomicU64>,
}

/// What [`Traffic::finish`] saw: handshakes by trickle and kind, long-stream exchanges, and
/// every failure.
struct Seen {
    resuming_full: u64,
    resuming_resumed: u64,
    full_only_full: u64,
    full_only_resumed: u64,
    exchanges: u64,
    failures: Vec<String>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resuming connector: {} full, {} resumed; connector without resumption: {} full, \
             {} resumed; {} long-stream exchanges; {} failures",
            self.resuming_full,
            self.resuming_resumed,
            self.full_only_full,
            self.full_only_resumed,
            self.exchanges,
            self.failures.len()
        )
    }
}

impl Seen {
    /// No failure anywhere, at least `n` exchanges on the long stream, at least `n` full
    /// handshakes from the connector without resumption (and none resumed there), and at
    /// least one resumed handshake from the sharing connector (so resumption was exercised).
    fn assert_clean(&self, n: u64) {
        assert!(
            self.failures.is_empty(),
            "{} failures, the first: {:?}",
            self.failures.len(),
            &self.failures[..self.failures.len().min(3)]
        );
        assert!(self.exchanges >= n, "{self:?}");
        assert!(self.full_only_full >= n, "{self:?}");
        assert_eq!(self.full_only_resumed, 0, "{self:?}");
        assert!(self.resuming_resumed >= 1, "{self:?}");
        assert!(self.resuming_full + self.resuming_resumed >= n, "{self:?}");
    }
}

impl Traffic {
    async fn start(client: &CertStore, server: SocketAddr, server_id: SpiffeId) -> Traffic {
        let config = tls::client_config(client, vec![server_id]);
        let fresh = tls::without_resumption(&config);
        let connector = tokio_rustls::TlsConnector::from(config);
        let traffic = Traffic {
            resuming: Trickle::default(),
            full_only: Trickle::default(),
            failures: Arc::default(),
            stream_exchanges: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let name = ServerName::try_from("name.default").unwrap();
        let mut stream = connector
            .connect(
                name.clone(),
                tokio::net::TcpStream::connect(server).await.unwrap(),
            )
            .await
            .expect("the long-lived stream connects");
        let (stop, exchanges, failures) = (
            traffic.stop.clone(),
            traffic.stream_exchanges.clone(),
            traffic.failures.clone(),
        );
        let long = tokio::spawn(async move {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let msg = n.to_be_bytes();
                let mut back = [0u8; 8];
                let result = async {
                    stream.write_all(&msg).await?;
                    stream.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                }
                .await;
                if let Err(e) = result.and_then(|()| {
                    (back == msg)
                        .then_some(())
                        .ok_or_else(|| std::io::Error::other("echo mismatch"))
                }) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("long-lived stream broke: {e}"));
                    return;
                }
                exchanges.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let fresh = tokio_rustls::TlsConnector::from(fresh);
        let mut tasks = vec![long];
        for (what, connector, counts) in [
            ("resuming", connector, traffic.resuming.clone()),
            ("full-handshake", fresh, traffic.full_only.clone()),
        ] {
            let (stop, failures, name) =
                (traffic.stop.clone(), traffic.failures.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match ping(&connector, &name, server).await {
                        Ok(rustls::HandshakeKind::Resumed) => {
                            counts.resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            counts.full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("new {what} connection failed: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        Traffic { tasks, ..traffic }
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let failures = self.failures.lock().unwrap().clone();
        let n = |a: &Arc<AtomicU64>| a.load(Ordering::Relaxed);
        Seen {
            resuming_full: n(&self.resuming.full),
            resuming_resumed: n(&self.resuming.resumed),
            full_only_full: n(&self.full_only.full),
            full_only_resumed: n(&self.full_only.resumed),
            exchanges: n(&self.stream_exchanges),
            failures,
        }
    }
}

/// One new connection: handshake, one echo; the kind of handshake it took.
async fn ping(
    connector: &tokio_rustls::TlsConnector,
    name: &ServerName<'static>,
    server: SocketAddr,
) -> std::io::Result<rustls::HandshakeKind> {
    let tcp = tokio::net::TcpStream::connect(server).await?;
    let mut tls = connector.connect(name.clone(), tcp).await?;
    tls.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    tls.read_exact(&mut back).await?;
    if &back != b"ping" {
        return Err(std::io::Error::other("echo mismatch"));
    }
    tls.get_ref()
        .1
        .handshake_kind()
        .ok_or_else(|| std::io::Error::other("handshake kind unknown after the handshake"))
}

fn serial(store: &CertStore) -> Option<String> {
    store.current().map(|c| c.svid.serial_hex.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_rotations_under_traffic_without_a_failed_handshake() {
    let tmp = temp_dir("ca-rotations");
    let dir = tmp.path();
    let ca_dir = dir.join("ca");
    init_ca(&ca_dir);
    let ca = CaProcess::start(&ca_dir, "127.0.0.1:0", &[]);
    let ttl = Duration::from_secs(4);
    let server = sidecar(&ca.address(), &ca_dir, dir, "name", ttl);
    let client = sidecar(&ca.address(), &ca_dir, dir, "age", ttl);
    wait_for("the first certificates", Duration::from_secs(20), || {
        server.current().is_some() && client.current().is_some()
    })
    .await;
    let addr = echo_server(&server).await;
    let traffic = Traffic::start(&client, addr, id("name")).await;

    let mut serials = BTreeSet::new();
    let started = Instant::now();
    while server.stats().rotations < 6 || client.stats().rotations < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "too slow: {:?} {:?}",
            server.stats(),
            client.stats()
        );
        serials.insert(serial(&server).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serials.insert(serial(&server).unwrap());
    let seen = traffic.finish().await;
    eprintln!(
        "rotations server={:?} client={:?}, {} serials, {seen:?} in {:?}",
        server.stats(),
        client.stats(),
        serials.len(),
        started.elapsed()
    );
    assert!(serials.len() >= 6, "serials seen: {serials:?}");
    seen.assert_clean(20);
    assert_eq!(server.stats().rotation_failures, 0);
    assert_eq!(client.stats().rotation_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_outage_keeps_the_current_certificate_then_renews() {
    let tmp = temp_dir("ca-outage");
    let dir = tmp.path();
    let ca_dir = dir.join("ca");
    init_ca(&ca_dir);
    let mut ca = CaProcess::start(&ca_dir, "127.0.0.1:0", &[]);
    let ca_addr = ca.address();
    let ttl = Duration::from_secs(10);
    let store = sidecar(&ca_addr, &ca_dir, dir, "name", ttl);
    wait_for("the first certificate", Duration::from_secs(20), || {
        store.current().is_some()
    })
    .await;
    // Stop the CA right after a renewal, so the outage can outlast a renewal interval (5 s)
    // while the certificate (10 s) is still valid.
    let first = serial(&store);
    wait_for("a renewal", Duration::from_secs(15), || {
        serial(&store) != first
    })
    .await;
    ca.stop();
    let during = serial(&store).unwrap();
    let addr = echo_server(&store).await;
    let traffic = Traffic::start(&store, addr, id("name")).await;

    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        serial(&store).unwrap(),
        during,
        "nothing can renew while the CA is down"
    );
    assert!(
        store.stats().rotation_failures > 0,
        "failed renewals are counted"
    );
    let ca = CaProcess::start(&ca_dir, &ca_addr, &[]);
    wait_for(
        "a renewal after the restart",
        Duration::from_secs(3),
        || serial(&store).unwrap() != during,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = traffic.finish().await;
    eprintln!("outage: {:?}, {seen:?}", store.stats());
    seen.assert_clean(20);
    drop(ca);
}

fn key_id(pem: &[u8], authority: bool) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem).unwrap();
    key_id_der(der.as_ref(), authority)
}

fn key_id_der(der: &[u8], authority: bool) -> Vec<u8> {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) if authority => {
                return aki.key_identifier.as_ref().unwrap().0.to_vec()
            }
            ParsedExtension::SubjectKeyIdentifier(ski) if !authority => return ski.0.to_vec(),
            _ => {}
        }
    }
    panic!("no key identifier");
}

fn signed_by(store: &CertStore, root_ski: &[u8]) -> bool {
    store
        .current()
        .is_some_and(|c| key_id_der(c.svid.chain()[0].as_ref(), true) == root_ski)
}

fn roots(store: &CertStore) -> usize {
    store
        .current()
        .and_then(|c| c.bundle.roots("cluster.local").map(<[_]>::len))
        .unwrap_or(0)
}

fn rotate(ca_dir: &Path, step: &str) -> std::process::Output {
    outrider(&["ca", "rotate-root", "--dir", s(ca_dir), "--step", step])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_traffic_without_a_failed_handshake() {
    let tmp = temp_dir("ca-root-rotation");
    let dir = tmp.path();
    let ca_dir = dir.join("ca");
    init_ca(&ca_dir);
    let ca = CaProcess::start(&ca_dir, "127.0.0.1:0", &[]);
    let ttl = Duration::from_secs(4);
    let server = sidecar(&ca.address(), &ca_dir, dir, "name", ttl);
    let client = sidecar(&ca.address(), &ca_dir, dir, "age", ttl);
    wait_for("the first certificates", Duration::from_secs(20), || {
        server.current().is_some() && client.current().is_some()
    })
    .await;
    let addr = echo_server(&server).await;
    let traffic = Traffic::start(&client, addr, id("name")).await;
    let old_ski = key_id(&root_pem(&ca_dir), false);
    let stale = stale_client(&ca_dir, dir);
    // Before the rotation the stale client is an ordinary member of the mesh.
    assert_eq!(
        stale_handshake(&stale, addr).await,
        Ok(()),
        "the old root's client before the rotation"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. prepare: both roots in every response; every sidecar trusts both.
    let o = rotate(&ca_dir, "prepare");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for(
        "both sidecars to trust two roots",
        Duration::from_secs(15),
        || roots(&server) == 2 && roots(&client) == 2,
    )
    .await;
    assert!(signed_by(&server, &old_ski) && signed_by(&client, &old_ski));

    // 2. activate: new leaves come from the new root.
    let o = rotate(&ca_dir, "activate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new_ski = key_id(&root_pem(&ca_dir), false);
    assert_ne!(old_ski, new_ski);
    wait_for(
        "leaves signed by the new root",
        Duration::from_secs(15),
        || signed_by(&server, &new_ski) && signed_by(&client, &new_ski),
    )
    .await;
    // A client that never received the new root (it trusts only the old one) meets the
    // server's leaf that chains to the new root: a full handshake must refuse it, and the
    // reason a sidecar would count is `unknown_issuer`.
    assert_eq!(
        stale_handshake(&stale, addr).await,
        Err("unknown_issuer"),
        "a client trusting only the old root must refuse a leaf of the new one"
    );

    // 3. retire: refused while an old leaf is valid, then the bundle drops the old root.
    let started = Instant::now();
    loop {
        let o = rotate(&ca_dir, "retire");
        if o.status.success() {
            break;
        }
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("still valid")
                || String::from_utf8_lossy(&o.stderr).contains("more seconds"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "retire never allowed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for(
        "both sidecars to trust only the new root",
        Duration::from_secs(15),
        || roots(&server) == 1 && roots(&client) == 1,
    )
    .await;
    let only = server
        .current()
        .unwrap()
        .bundle
        .roots("cluster.local")
        .unwrap()[0]
        .clone();
    assert_eq!(key_id_der(only.as_ref(), false), new_ski);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let seen = traffic.finish().await;
    eprintln!(
        "root rotation: server {:?} client {:?}, {seen:?}",
        server.stats(),
        client.stats()
    );
    seen.assert_clean(30);
    assert_eq!(
        server.stats().rotation_failures + client.stats().rotation_failures,
        0
    );
}

/// A client identity (`default/stale`) issued by the CA's current root from a copy of its
/// directory (so the CA's record of issued leaves, which gates `retire`, is untouched), in a
/// store that trusts only that root and never hears of a rotation.
fn stale_client(ca_dir: &Path, dir: &Path) -> CertStore {
    let copy = dir.join("stale-ca");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["root-cert.pem", "root-key.pem"] {
        std::fs::copy(ca_dir.join(f), copy.join(f)).unwrap();
    }
    let out = dir.join("stale");
    let o = outrider(&[
        "ca",
        "issue",
        "--ca-dir",
        s(&copy),
        "--namespace",
        "default",
        "--service-account",
        "stale",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let store = CertStore::new("cluster.local");
    let read = |f: &str| std::fs::read(out.join(f)).unwrap();
    store
        .publish_pem(
            &read("cert-chain.pem"),
            &read("key.pem"),
            &read("root-cert.pem"),
        )
        .unwrap();
    store
}

/// One full handshake (no resumption) from `client` to the `name` server at `addr`: Ok, or
/// the failure reason a sidecar would count for the client's error.
async fn stale_handshake(client: &CertStore, addr: SocketAddr) -> Result<(), &'static str> {
    let config = tls::without_resumption(&tls::client_config(client, vec![id("name")]));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("name.default").unwrap();
    match tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    {
        Ok(mut tls) => {
            tls.write_all(b"ping").await.unwrap();
            let mut back = [0u8; 4];
            tls.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"ping");
            Ok(())
        }
        Err(e) => {
            let reason = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map(tls::failure_reason);
            Err(reason.unwrap_or_else(|| panic!("not a TLS error: {e:?}")))
        }
    }
}

/// What a fake CA answers to a request's CSR.
type Respond = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// A fake CA service answering every request with `respond(csr)` (over TLS with a certificate
/// from `tls_ca` for `localhost`), to feed the sidecar's source responses the real CA never
/// gives.
async fn fake_ca(tls_ca: &outrider::ca::Authority, respond: Respond) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let serving = tls_ca
        .issue(
            &id("fake-ca"),
            Duration::from_secs(3600),
            &["localhost".into()],
        )
        .unwrap();
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(serving.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let respond = respond.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let respond = respond.clone();
                    async move {
                        let codec = tonic_prost::ProstCodec::<
                            outrider::ca::proto::IstioCertificateResponse,
                            IstioCertificateRequest,
                        >::default();
                        let answer =
                            tower::service_fn(move |r: tonic::Request<IstioCertificateRequest>| {
                                let chain = respond(&r.get_ref().csr);
                                async move {
                                    Ok::<_, tonic::Status>(tonic::Response::new(
                                        outrider::ca::proto::IstioCertificateResponse {
                                            cert_chain: chain,
                                        },
                                    ))
                                }
                            });
                        let response: http::Response<tonic::body::Body> =
                            tonic::server::Grpc::new(codec).unary(answer, req).await;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_answering_a_wrong_identity_or_a_broken_chain_is_refused_and_counted() {
    let tmp = temp_dir("ca-fake");
    let dir = tmp.path();
    let new_ca = |name: &str| {
        Arc::new(
            outrider::ca::Authority::init(
                &dir.join(name),
                "cluster.local",
                Duration::from_secs(3600),
                false,
            )
            .unwrap(),
        )
    };
    let (tls_ca, other_ca) = (new_ca("tls-ca"), new_ca("other-ca"));
    let token_file = dir.join("age.token");
    std::fs::write(&token_file, "unused").unwrap();
    let ttl = Duration::from_secs(600);
    let sign = |ca: &Arc<outrider::ca::Authority>, sa: &'static str, root: String| -> Respond {
        let ca = ca.clone();
        Arc::new(move |csr: &str| {
            let leaf = ca.sign_csr(csr.as_bytes(), &id(sa), ttl).unwrap();
            vec![leaf.pem, root.clone()]
        })
    };
    let fixed = |chain: Vec<String>| -> Respond { Arc::new(move |_: &str| chain.clone()) };
    let someone_elses = tls_ca.issue(&id("age"), ttl, &[]).unwrap().chain_pem;
    let cases: Vec<(&str, Respond)> = vec![
        // Signed over our CSR, but by a root the response does not carry.
        ("broken chain", sign(&other_ca, "age", tls_ca.root_pem())),
        // Our identity, but not our key.
        (
            "another key",
            fixed(vec![someone_elses.clone(), tls_ca.root_pem()]),
        ),
        // Another identity than the one expected.
        ("wrong identity", sign(&tls_ca, "name", tls_ca.root_pem())),
        // No root element; garbage.
        ("leaf only", fixed(vec![someone_elses])),
        ("garbage", fixed(vec!["garbage".into(), "garbage".into()])),
    ];
    for (what, respond) in cases {
        let addr = fake_ca(&tls_ca, respond).await;
        let store = CertStore::new("cluster.local");
        let mut client = CaClient::new(CaSource {
            address: addr.to_string(),
            root_pem: tls_ca.root_pem().into_bytes(),
            token_file: token_file.clone(),
            ttl,
            expected: id("age"),
            server_name: Some("localhost".into()),
        });
        let err = client
            .fetch(&store)
            .await
            .expect_err(&format!("{what} must be refused"));
        eprintln!("{what}: {err}");
        match what {
            "broken chain" | "another key" => {
                assert!(matches!(err, CaClientError::Rejected(_)), "{err:?}");
                assert_eq!(store.stats().rejected, 1);
            }
            "wrong identity" => assert!(matches!(err, CaClientError::WrongIdentity { .. })),
            _ => assert!(matches!(err, CaClientError::BadResponse(_)), "{err:?}"),
        }
        assert!(store.current().is_none(), "{what}: nothing published");
    }
    // Through the retry loop, each refusal is counted as a rotation failure.
    let addr = fake_ca(&tls_ca, sign(&other_ca, "age", tls_ca.root_pem())).await;
    let store = CertStore::new("cluster.local");
    tokio::spawn(ca_client::run(
        store.clone(),
        CaSource {
            address: addr.to_string(),
            root_pem: tls_ca.root_pem().into_bytes(),
            token_file,
            ttl,
            expected: id("age"),
            server_name: Some("localhost".into()),
        },
    ));
    wait_for("failures to be counted", Duration::from_secs(10), || {
        store.stats().rotation_failures >= 2
    })
    .await;
    assert!(store.current().is_none());
}
