//! The CA service under hostile or unusual clients (issue 10 items 4–5, issue 19): no TLS
//! session resumption (a resumed session would skip client-certificate verification), no
//! starvation by one source holding connections, node agents impersonating their pods, token
//! files with or without a trailing newline, IP SANs on the serving certificate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::ca::{python_grpc_available, python_stubs, s, CaProcess};
use crate::common::{bounded_output, outrider};

/// `outrider ca init` into `<tmp>/ca` (cluster.local).
fn init_ca(tmp: &Path) -> PathBuf {
    let dir = tmp.join("ca");
    crate::common::ca::init_ca(&dir);
    dir
}

/// `outrider ca issue` for default/<sa> into `<tmp>/<sa>` (cert-chain.pem, key.pem, root-cert.pem).
fn issue(ca_dir: &Path, tmp: &Path, sa: &str) -> PathBuf {
    let out = tmp.join(sa);
    let o = outrider(&[
        "ca",
        "issue",
        "--ca-dir",
        s(ca_dir),
        "--namespace",
        "default",
        "--service-account",
        sa,
        "--out",
        s(&out),
    ]);
    assert!(
        o.status.success(),
        "ca issue: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

// ---- issue 10 item 4: no resumption ---------------------------------------------------

/// One `openssl s_client` connection with a client certificate; keeps stdin open for a moment
/// so a TLS 1.3 NewSessionTicket, if the server sends one, arrives before it quits.
fn s_client(addr: &str, certs: &Path, version: &str, sess: (&str, &Path)) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .arg(version)
        .args(["-CAfile", s(&certs.join("root-cert.pem"))])
        .args(["-cert", s(&certs.join("cert-chain.pem"))])
        .args(["-key", s(&certs.join("key.pem"))])
        .args([sess.0, s(sess.1)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    let stdin = child.stdin.take();
    std::thread::sleep(Duration::from_millis(1500));
    drop(stdin);
    let out = bounded_output(child, "openssl s_client", Duration::from_secs(20));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_ca_never_resumes_a_tls_session() {
    if !crate::common::tool_available("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = init_ca(tmp.path());
    let certs = issue(&ca_dir, tmp.path(), "age");
    let ca = CaProcess::start(&ca_dir, "127.0.0.1:0", &[]);

    for version in ["-tls1_3", "-tls1_2"] {
        let sess = tmp.path().join(format!("session{version}.pem"));
        let first = s_client(&ca.address(), &certs, version, ("-sess_out", &sess));
        assert!(
            first.contains("Verify return code: 0 (ok)") && first.contains("New,"),
            "{version}: the first handshake (with the client certificate) succeeds:\n{first}"
        );
        if !sess.exists() {
            // The CA offered nothing resumable (no session ID, no ticket), so openssl saved
            // no session: the strongest form of "not reused". Before the fix openssl saved
            // one and the second connection printed `Reused, TLSv1.3`.
            eprintln!("{version}: the CA offered no resumable session; openssl saved none");
            continue;
        }
        let second = s_client(&ca.address(), &certs, version, ("-sess_in", &sess));
        assert!(
            !second.contains("Reused,"),
            "{version}: the CA resumed a session (a resumed handshake skips client-certificate verification):\n{second}"
        );
        assert!(
            second.contains("New,"),
            "{version}: the second connection is a full handshake:\n{second}"
        );
    }
}

// ---- issue 10 item 5: the CA cannot be starved ------------------------------------------

use std::net::SocketAddr;
use std::sync::Arc;

use outrider::identity::ca_client::{CaClient, CaSource};
use outrider::identity::{CertStore, SpiffeId};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The attacker's source address: another loopback address (Linux routes all of 127/8 to lo).
const ATTACKER: &str = "127.0.0.2:0";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap()
}

async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source.parse().unwrap())?;
    socket.connect(to).await
}

/// A TLS client that trusts the CA's root and presents no certificate.
fn tls_connector(root: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(root).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A connection the attacker holds open.
enum Held {
    /// TCP connected, a few bytes of a ClientHello sent, then silence.
    MidHandshake(TcpStream),
    /// TLS done, then silence (no HTTP/2 preface).
    AfterTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Held {
    /// Waits up to `limit` for the CA to close this connection; true if it did.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let read = match self {
                Held::MidHandshake(tcp) => {
                    tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await
                }
                Held::AfterTls(tls) => tokio::time::timeout_at(deadline, tls.read(&mut buf)).await,
            };
            match read {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // Session tickets, GOAWAY or alerts before the close: keep reading.
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// Opens `mid` connections that stop inside the handshake, then `after_tls` that complete
/// TLS and stay silent, all from the attacker's address; returns those the CA let through.
async fn flood(ca: SocketAddr, root: &Path, mid: usize, after_tls: usize) -> Vec<Held> {
    let mut held = Vec::new();
    for _ in 0..mid {
        if let Ok(mut tcp) = connect_from(ATTACKER, ca).await {
            // The first bytes of a TLS record carrying a ClientHello, and no more.
            if tcp
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .is_ok()
            {
                held.push(Held::MidHandshake(tcp));
            }
        }
    }
    let connector = tls_connector(root);
    let name = ServerName::try_from("localhost").unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let parallel = 32;
    let mut started = 0;
    while started < after_tls || !tasks.is_empty() {
        while started < after_tls && tasks.len() < parallel {
            started += 1;
            let (connector, name) = (connector.clone(), name.clone());
            tasks.spawn(async move {
                let tcp = connect_from(ATTACKER, ca).await.ok()?;
                let tls =
                    tokio::time::timeout(Duration::from_secs(20), connector.connect(name, tcp))
                        .await
                        .ok()?
                        .ok()?;
                Some(Held::AfterTls(Box::new(tls)))
            });
        }
        if let Some(Ok(Some(conn))) = tasks.join_next().await {
            held.push(conn);
        }
    }
    held
}

fn ca_client(ca: &CaProcess, ca_dir: &Path, tmp: &Path, sa: &str) -> CaClient {
    let token_file = tmp.join(format!("{sa}.token"));
    std::fs::write(&token_file, crate::common::ca::token(ca_dir, sa)).unwrap();
    CaClient::new(CaSource {
        address: ca.address(),
        root_pem: std::fs::read(ca_dir.join("root-cert.pem")).unwrap(),
        token_file,
        ttl: Duration::from_secs(3600),
        expected: id(sa),
        server_name: Some("localhost".into()),
    })
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn scrape(addr: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /stats/prometheus HTTP/1.1\r\nhost: ca\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    body
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_holding_connections_does_not_stop_a_sidecar_renewing() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = init_ca(tmp.path());
    let metrics = free_addr();
    // The default limits (32 connections per source address, 1,024 in all), and deadlines
    // long enough that only the limits, not a timeout, can free a slot during the test.
    let ca = CaProcess::start(
        &ca_dir,
        "127.0.0.1:0",
        &[
            "--metrics-addr",
            &metrics,
            "--handshake-timeout",
            "10m",
            "--idle-timeout",
            "10m",
        ],
    );
    let root = ca_dir.join("root-cert.pem");

    // More connections than the CA holds in all, from one source, some stopped inside the
    // handshake and the rest idle after it.
    let mut held = flood(ca.addr, &root, 16, 1100).await;
    assert_eq!(
        held.len(),
        32,
        "the CA lets exactly 32 connections of one source through"
    );

    // A sidecar from 127.0.0.1 obtains its certificate with its token, then renews over mTLS.
    let store = CertStore::new("cluster.local");
    let mut sidecar = ca_client(&ca, &ca_dir, tmp.path(), "age");
    let first = sidecar
        .fetch(&store)
        .await
        .expect("the sidecar obtains a certificate while the flood holds its connections");
    let renewed = sidecar
        .fetch(&store)
        .await
        .expect("the sidecar renews while the flood holds its connections");
    assert_ne!(first.serial_hex, renewed.serial_hex);
    assert_eq!(store.current().unwrap().svid.id, id("age"));

    // The flood's connections were held all along: the limit, not a deadline, kept a slot
    // free. (A closed one would read end-of-file at once.)
    let mut still_open = 0;
    for conn in held.iter_mut() {
        if !conn.closed_within(Duration::from_millis(50)).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open,
        held.len(),
        "the CA closed held connections early"
    );

    let text = scrape(&metrics).await;
    let refused = metric(
        &text,
        "outrider_ca_connections_refused_total{reason=\"per_ip_limit\"}",
    );
    assert!(
        refused >= 1000,
        "the flood's excess connections are counted as refused:\n{text}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_by_their_deadlines() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = init_ca(tmp.path());
    let metrics = free_addr();
    let ca = CaProcess::start(
        &ca_dir,
        "127.0.0.1:0",
        &[
            "--metrics-addr",
            &metrics,
            "--handshake-timeout",
            "1s",
            "--idle-timeout",
            "2s",
            "--request-timeout",
            "1s",
        ],
    );
    let root = ca_dir.join("root-cert.pem");
    let mut held = flood(ca.addr, &root, 3, 3).await;
    assert_eq!(held.len(), 6, "all six connections are accepted");

    // A request whose body never ends gets DEADLINE_EXCEEDED.
    let status = stalled_request(ca.addr, &root).await;
    assert_eq!(
        status.as_deref(),
        Some("4"),
        "grpc-status of a stalled request"
    );

    // Every held connection is closed by the CA, well before this generous bound.
    for (i, conn) in held.iter_mut().enumerate() {
        assert!(
            conn.closed_within(Duration::from_secs(30)).await,
            "held connection {i} ({}) is still open",
            if matches!(conn, Held::MidHandshake(_)) {
                "mid-handshake"
            } else {
                "idle after TLS"
            }
        );
    }
    // A sidecar still gets its certificate afterwards.
    let store = CertStore::new("cluster.local");
    ca_client(&ca, &ca_dir, tmp.path(), "age")
        .fetch(&store)
        .await
        .expect("the CA still issues");

    let text = scrape(&metrics).await;
    for (phase, at_least) in [("handshake", 3), ("idle", 3), ("request", 1)] {
        let n = metric(
            &text,
            &format!("outrider_ca_connections_timed_out_total{{phase=\"{phase}\"}}"),
        );
        assert!(n >= at_least, "{phase}: {n} < {at_least}\n{text}");
    }
}

/// An HTTP/2 gRPC request to the CA whose body never completes; returns its grpc-status.
async fn stalled_request(ca: SocketAddr, root: &Path) -> Option<String> {
    let tcp = TcpStream::connect(ca).await.unwrap();
    let tls = tls_connector(root)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(connection);
    let request = http::Request::post(
        "https://localhost/istio.v1.auth.IstioCertificateService/CreateCertificate",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(NeverEnds)
    .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .expect("the CA answers a stalled request within its deadline")
        .unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    driver.abort();
    status
}

/// A request body that never yields a frame and never ends (a client trickling nothing).
struct NeverEnds;

impl hyper::body::Body for NeverEnds {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

// ---- issue 19: Istio's own clients ------------------------------------------------------

/// A grpcio client of Istio's CA protocol that sends the token file's bytes as they are (as
/// ztunnel does) and can set `ImpersonatedIdentity`. Prints one result per case: `OK` or the
/// gRPC status name.
const PYTHON_CLIENT: &str = r#"
import json, sys
stubs, address, server_name, root, cases_file = sys.argv[1:6]
sys.path.insert(0, stubs)
import grpc, ca_pb2, ca_pb2_grpc

with open(root, "rb") as f:
    credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
options = [] if server_name == "-" else [("grpc.ssl_target_name_override", server_name)]
stub = ca_pb2_grpc.IstioCertificateServiceStub(grpc.secure_channel(address, credentials, options=options))
results = []
with open(cases_file) as f:
    cases = json.load(f)
for case in cases:
    with open(case["csr"]) as f:
        request = ca_pb2.IstioCertificateRequest(csr=f.read(), validity_duration=3600)
    if case.get("impersonate"):
        request.metadata.fields["ImpersonatedIdentity"].string_value = case["impersonate"]
    with open(case["token"]) as f:
        token = f.read()
    try:
        response = stub.CreateCertificate(request, metadata=[("authorization", "Bearer " + token)], timeout=20)
        with open(case["out"], "w") as f:
            f.write(response.cert_chain[0])
        results.append("OK")
    except grpc.RpcError as e:
        results.append(e.code().name)
    except Exception as e:
        results.append("CLIENT_ERROR: %s" % e)
print(json.dumps(results))
"#;

/// Generates the Python stubs from Istio's `ca.proto` into `<dir>/stubs` and writes the client.
fn python_client(dir: &Path) -> (PathBuf, PathBuf) {
    let stubs = python_stubs(dir);
    let script = dir.join("client.py");
    std::fs::write(&script, PYTHON_CLIENT).unwrap();
    (stubs, script)
}

/// One request of the Python client.
struct Case<'a> {
    token: &'a Path,
    impersonate: Option<String>,
    out: PathBuf,
}

/// Runs the cases through the Python client (server name `-`: none, verify the dialled
/// host); returns `OK` or a gRPC status name per case.
fn run_python(
    dir: &Path,
    address: &str,
    server_name: &str,
    root: &Path,
    cases: &[Case<'_>],
) -> Vec<String> {
    let (stubs, script) = python_client(dir);
    let csr = dir.join("client.csr");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    std::fs::write(&csr, pem).unwrap();
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "token": s(c.token),
                "impersonate": c.impersonate,
                "csr": s(&csr),
                "out": s(&c.out),
            })
        })
        .collect();
    let cases_file = dir.join("cases.json");
    std::fs::write(&cases_file, serde_json::to_string(&json).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&stubs)
        .arg(address)
        .arg(server_name)
        .arg(root)
        .arg(&cases_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded_output(out, "the Python gRPC client", Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// `outrider ca token --out <tmp>/<ns>-<sa>` for `<ns>/<sa>`; returns the token file.
fn token_file(ca_dir: &Path, tmp: &Path, ns: &str, sa: &str) -> PathBuf {
    let out = tmp.join(format!("{ns}-{sa}"));
    let o = outrider(&[
        "ca",
        "token",
        "--dir",
        s(ca_dir),
        "--namespace",
        ns,
        "--service-account",
        sa,
        "--out",
        s(&out),
    ]);
    assert!(
        o.status.success(),
        "ca token: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.join("token")
}

fn leaf_san(path: &Path) -> String {
    let leaf = CertificateDer::from_pem_file(path).unwrap();
    outrider::tls::peer_spiffe_id(&[leaf]).unwrap().to_string()
}

fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

#[test]
fn node_agents_impersonate_their_workloads_and_nobody_else_does() {
    if !python_grpc_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = init_ca(tmp.path());
    let nodes = tmp.path().join("node-identities.yaml");
    std::fs::write(&nodes, "istio-system/ztunnel:\n  - default/*\n").unwrap();
    let metrics = free_addr();
    let ca = CaProcess::start(
        &ca_dir,
        "127.0.0.1:0",
        &[
            "--trusted-node-account",
            "istio-system/ztunnel",
            "--node-identities",
            s(&nodes),
            "--ip",
            "127.0.0.1",
            "--metrics-addr",
            &metrics,
        ],
    );
    let ztunnel = token_file(&ca_dir, tmp.path(), "istio-system", "ztunnel");
    let age = token_file(&ca_dir, tmp.path(), "default", "age");
    let out = |name: &str| tmp.path().join(format!("{name}.pem"));
    let cases = [
        // A trusted node account for a workload its allow-list names.
        Case {
            token: &ztunnel,
            impersonate: Some(spiffe("default", "age")),
            out: out("ztunnel-for-age"),
        },
        // An ordinary workload for another one.
        Case {
            token: &age,
            impersonate: Some(spiffe("default", "name")),
            out: out("age-for-name"),
        },
        // The node account for an identity outside its allow-list.
        Case {
            token: &ztunnel,
            impersonate: Some(spiffe("kube-system", "admin")),
            out: out("ztunnel-for-admin"),
        },
        // A workload naming itself: no impersonation at all.
        Case {
            token: &age,
            impersonate: Some(spiffe("default", "age")),
            out: out("age-for-age"),
        },
    ];
    // Dialled by address, with no name override: the serving certificate's IP SAN verifies.
    let results = run_python(
        tmp.path(),
        &ca.address(),
        "-",
        &ca_dir.join("root-cert.pem"),
        &cases,
    );
    assert_eq!(
        results,
        ["OK", "PERMISSION_DENIED", "PERMISSION_DENIED", "OK"],
        "per case"
    );
    assert_eq!(leaf_san(&out("ztunnel-for-age")), spiffe("default", "age"));
    assert_eq!(leaf_san(&out("age-for-age")), spiffe("default", "age"));

    let text = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(scrape(&metrics));
    assert_eq!(
        metric(
            &text,
            "outrider_ca_impersonated_certificates_issued_total{node_account=\"istio-system/ztunnel\"}"
        ),
        1,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "outrider_ca_requests_denied_total{reason=\"impersonation\"}"
        ),
        1,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "outrider_ca_requests_denied_total{reason=\"impersonation_not_allowed\"}"
        ),
        1,
        "{text}"
    );
    // The audit line names the workload and the node agent that asked.
    drop(ca);
    let log = std::fs::read_to_string(ca_dir.with_extension("log-127.0.0.1_0")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("certificate issued")
            && l.contains(&spiffe("default", "age"))
            && l.contains(&spiffe("istio-system", "ztunnel"))),
        "no audit line naming both identities:\n{log}"
    );

    // Without --trusted-node-account the same request is refused.
    let plain = CaProcess::start(&ca_dir, "127.0.0.1:0", &[]);
    let results = run_python(
        tmp.path(),
        &plain.address(),
        "localhost",
        &ca_dir.join("root-cert.pem"),
        &[Case {
            token: &ztunnel,
            impersonate: Some(spiffe("default", "age")),
            out: out("untrusted-ztunnel"),
        }],
    );
    assert_eq!(results, ["PERMISSION_DENIED"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_files_work_with_or_without_a_trailing_newline() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = init_ca(tmp.path());
    // `--out` and stdout write the token with no trailing newline (a projected token's shape).
    let written = token_file(&ca_dir, tmp.path(), "default", "age");
    let token = std::fs::read_to_string(&written).unwrap();
    assert_eq!(token.trim(), token, "`ca token --out` wrote {token:?}");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let printed = outrider(&[
        "ca",
        "token",
        "--dir",
        s(&ca_dir),
        "--namespace",
        "default",
        "--service-account",
        "age",
    ]);
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(printed.trim(), printed, "`ca token` printed {printed:?}");

    // outrider's own sidecar reads a token file in any of these shapes.
    let ca = CaProcess::start(&ca_dir, "127.0.0.1:0", &[]);
    for (name, content) in [
        ("as-written", token.clone()),
        ("newline", format!("{token}\n")),
        ("hand-edited", format!("  {token}\r\n\n")),
    ] {
        let file = tmp.path().join(format!("{name}.token"));
        std::fs::write(&file, &content).unwrap();
        let mut client = CaClient::new(CaSource {
            address: ca.address(),
            root_pem: std::fs::read(ca_dir.join("root-cert.pem")).unwrap(),
            token_file: file,
            ttl: Duration::from_secs(3600),
            expected: id("age"),
            server_name: Some("localhost".into()),
        });
        let store = CertStore::new("cluster.local");
        client
            .fetch(&store)
            .await
            .unwrap_or_else(|e| panic!("token file {name} ({content:?}): {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dialling_the_ca_by_address_verifies_its_ip_san() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = init_ca(tmp.path());
    let token = token_file(&ca_dir, tmp.path(), "default", "age");
    let client = |ca: &CaProcess| {
        // No server name: the client verifies the host of the address it dials.
        CaClient::new(CaSource {
            address: format!("127.0.0.1:{}", ca.addr.port()),
            root_pem: std::fs::read(ca_dir.join("root-cert.pem")).unwrap(),
            token_file: token.clone(),
            ttl: Duration::from_secs(3600),
            expected: id("age"),
            server_name: None,
        })
    };
    let with_ip = CaProcess::start(&ca_dir, "127.0.0.1:0", &["--ip", "127.0.0.1"]);
    let store = CertStore::new("cluster.local");
    client(&with_ip)
        .fetch(&store)
        .await
        .expect("the serving certificate holds IP 127.0.0.1");

    // Without --ip the same client refuses the CA (its certificate names no address).
    let without = CaProcess::start(&ca_dir, "127.0.0.1:0", &[]);
    let err = client(&without)
        .fetch(&CertStore::new("cluster.local"))
        .await
        .expect_err("no IP SAN, no verification");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}
