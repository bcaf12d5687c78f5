//! The JWKS fetcher against small in-test HTTP(S) servers on 127.0.0.1: first fetch, fail
//! closed until the endpoint comes up, backoff, refresh and rotation, early refresh for an
//! unknown `kid` (rate-limited), OIDC discovery, refused answers, reloads that keep the last
//! good document, verified https with a CA made at test time, and the metrics.
//!
//! Every interval is in milliseconds and every wait has a deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outrider::jwks::{FetchConfig, Jwks, JwksSink, JwksSource, Target};
use outrider::metrics::Metrics;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::common::{free_port, temp_dir};

const DEADLINE: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// A JWKS server and a sink that records what it is given

/// One answer of the test server.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Sent without `Content-Length` (the body ends when the connection closes).
    unsized_body: bool,
    /// Waits this long before answering.
    delay: Duration,
}

impl Reply {
    fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            unsized_body: false,
            delay: Duration::ZERO,
        }
    }

    fn status(status: u16) -> Reply {
        Reply {
            status,
            ..Reply::ok("")
        }
    }
}

type Routes = Arc<Mutex<HashMap<String, Reply>>>;
type Log = Arc<Mutex<Vec<(Instant, String)>>>;

/// An HTTP/1.1 server answering GETs from a route table (404 for an unknown path), one
/// request per connection, recording when each path was asked for. Stops when dropped.
struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    routes: Routes,
    log: Log,
    task: JoinHandle<()>,
}

impl Server {
    async fn start() -> Server {
        Server::start_on("127.0.0.1:0".parse().unwrap(), None).await
    }

    async fn start_on(addr: SocketAddr, tls: Option<TlsAcceptor>) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Routes::default();
        let log = Log::default();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(serve(listener, tls, routes.clone(), log.clone()));
        Server {
            addr,
            scheme,
            routes,
            log,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    fn set(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(path.into(), reply);
    }

    /// When `path` was asked for, in order.
    fn requests(&self, path: &str) -> Vec<Instant> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(_, p)| p == path)
            .map(|(t, _)| *t)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, routes: Routes, log: Log) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (tls, routes, log) = (tls.clone(), routes.clone(), log.clone());
        tokio::spawn(async move {
            match tls {
                None => answer(tcp, routes, log).await,
                Some(acceptor) => {
                    // A client that refuses our certificate ends here.
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        answer(stream, routes, log).await;
                    }
                }
            }
        });
    }
}

async fn answer(mut stream: impl AsyncRead + AsyncWrite + Unpin, routes: Routes, log: Log) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 && head.len() < 16 * 1024 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    log.lock().unwrap().push((Instant::now(), path.clone()));
    let reply = routes
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or_else(|| Reply::status(404));
    tokio::time::sleep(reply.delay).await;
    let mut out = format!("HTTP/1.1 {} Test\r\nconnection: close\r\n", reply.status);
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !reply.unsized_body {
        out.push_str(&format!("content-length: {}\r\n", reply.body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&reply.body);
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

/// A JWKS document with one symmetric key per `kid`.
fn jwks_doc(kids: &[&str]) -> Vec<u8> {
    let keys: Vec<serde_json::Value> = kids
        .iter()
        .map(|kid| serde_json::json!({"kty": "oct", "kid": kid, "k": "c2VjcmV0"}))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
}

/// Stands in for the JWT validator's key slot: parses `{"keys":[{"kid":..}]}`, keeps the
/// `kid`s of every document it accepted, refuses anything else (and keeps what it had).
#[derive(Default)]
struct RecordingSink {
    accepted: Mutex<Vec<Vec<String>>>,
    refused: Mutex<Vec<String>>,
    refresh: AtomicBool,
}

impl RecordingSink {
    fn new() -> Arc<RecordingSink> {
        Arc::new(RecordingSink::default())
    }

    fn accepted(&self) -> Vec<Vec<String>> {
        self.accepted.lock().unwrap().clone()
    }

    /// The `kid`s of the last document accepted (empty before the first).
    fn current(&self) -> Vec<String> {
        self.accepted().last().cloned().unwrap_or_default()
    }

    fn refused(&self) -> usize {
        self.refused.lock().unwrap().len()
    }

    fn ask_refresh(&self) {
        self.refresh.store(true, Ordering::SeqCst);
    }
}

impl JwksSink for RecordingSink {
    fn publish(&self, body: &[u8]) -> Result<usize, String> {
        let parsed = serde_json::from_slice::<serde_json::Value>(body)
            .map_err(|e| e.to_string())
            .and_then(|doc| {
                doc.get("keys")
                    .and_then(|k| k.as_array())
                    .map(|keys| {
                        keys.iter()
                            .filter_map(|k| k.get("kid")?.as_str().map(str::to_string))
                            .collect::<Vec<_>>()
                    })
                    .ok_or_else(|| "no keys array".to_string())
            });
        match parsed {
            Ok(kids) => {
                let n = kids.len();
                self.accepted.lock().unwrap().push(kids);
                Ok(n)
            }
            Err(reason) => {
                self.refused.lock().unwrap().push(reason.clone());
                Err(reason)
            }
        }
    }

    fn take_refresh_request(&self) -> bool {
        self.refresh.swap(false, Ordering::SeqCst)
    }
}

fn target(source: JwksSource, sink: &Arc<RecordingSink>) -> Target {
    Target {
        source,
        timeout: Duration::from_secs(5),
        sink: sink.clone(),
    }
}

fn uri(url: String) -> JwksSource {
    JwksSource::Uri(url)
}

// ---------------------------------------------------------------------------------------------
// The fetcher under test

/// Intervals that never fire during a test unless it shortens them.
fn slow() -> FetchConfig {
    FetchConfig {
        refresh: HOUR,
        retry_min: HOUR,
        retry_max: HOUR,
        early_refresh_min: HOUR,
        poll: Duration::from_millis(5),
        ..FetchConfig::default()
    }
}

/// A fetcher with its metrics and the drain trigger it watches.
struct Fetcher {
    jwks: Jwks,
    metrics: Metrics,
    drain: watch::Sender<bool>,
}

impl Fetcher {
    fn start(config: FetchConfig) -> Fetcher {
        let metrics = Metrics::new(prometheus::Registry::new());
        let (drain, watch) = watch::channel(false);
        let jwks = Jwks::spawn(config, metrics.jwks(), watch).expect("the fetcher starts");
        Fetcher {
            jwks,
            metrics,
            drain,
        }
    }

    /// The value of `name{source="<source>"[,result="<result>"]}`, if the series exists.
    fn metric(&self, name: &str, source: &str, result: Option<&str>) -> Option<f64> {
        let text = self.metrics.encode();
        let source = format!("source=\"{source}\"");
        let result = result.map(|r| format!("result=\"{r}\""));
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| l.contains(&source))
            .find(|l| result.as_ref().is_none_or(|r| l.contains(r.as_str())))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
    }

    fn fetches(&self, source: &str, result: &str) -> f64 {
        self.metric("outrider_jwks_fetches_total", source, Some(result))
            .unwrap_or(0.0)
    }

    fn keys(&self, source: &str) -> Option<f64> {
        self.metric("outrider_jwks_keys", source, None)
    }
}

/// Waits (bounded by [`DEADLINE`]) until `ready` holds.
async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Fetching, failing closed, backing off

#[tokio::test]
async fn the_first_fetch_publishes_and_is_counted() {
    let server = Server::start().await;
    server.set("/keys", Reply::ok(jwks_doc(&["k1", "k2"])));
    let f = Fetcher::start(slow());
    let sink = RecordingSink::new();
    let url = server.url("/keys");
    let before = std::time::SystemTime::now();
    f.jwks.set_targets(vec![target(uri(url.clone()), &sink)]);
    eventually("the first publish", || !sink.accepted().is_empty()).await;
    assert_eq!(sink.current(), ["k1", "k2"]);
    eventually("the metrics", || f.keys(&url).is_some()).await;
    assert_eq!(f.fetches(&url, "success"), 1.0);
    assert_eq!(f.fetches(&url, "error"), 0.0);
    assert_eq!(f.keys(&url), Some(2.0));
    let stamp = f
        .metric("outrider_jwks_last_success_timestamp_seconds", &url, None)
        .unwrap();
    let since_epoch = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(stamp >= since_epoch.floor(), "{stamp} < {since_epoch}");
    // One fetch only: the refresh is an hour away.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.requests("/keys").len(), 1);
}

#[tokio::test]
async fn nothing_is_published_while_the_endpoint_is_down_then_a_retry_publishes() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let url = format!("http://{addr}/keys");
    let f = Fetcher::start(FetchConfig {
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(80),
        ..slow()
    });
    let sink = RecordingSink::new();
    f.jwks.set_targets(vec![target(uri(url.clone()), &sink)]);
    eventually("three failed fetches", || f.fetches(&url, "error") >= 3.0).await;
    assert!(sink.accepted().is_empty(), "fail closed: nothing published");
    assert_eq!(f.keys(&url), None);
    assert_eq!(f.fetches(&url, "success"), 0.0);

    let server = Server::start_on(addr, None).await;
    server.set("/keys", Reply::ok(jwks_doc(&["k1"])));
    eventually("a publish after the endpoint came up", || {
        !sink.accepted().is_empty()
    })
    .await;
    assert_eq!(sink.current(), ["k1"]);
    eventually("the success counted", || f.fetches(&url, "success") == 1.0).await;
    assert_eq!(f.keys(&url), Some(1.0));
}

#[tokio::test]
async fn retries_back_off_doubling_up_to_the_maximum() {
    let server = Server::start().await;
    server.set("/keys", Reply::status(503));
    let min = Duration::from_millis(100);
    let max = Duration::from_millis(400);
    let f = Fetcher::start(FetchConfig {
        retry_min: min,
        retry_max: max,
        ..slow()
    });
    let sink = RecordingSink::new();
    let url = server.url("/keys");
    f.jwks.set_targets(vec![target(uri(url.clone()), &sink)]);
    eventually("six failed fetches", || server.requests("/keys").len() >= 6).await;
    server.set("/keys", Reply::ok(jwks_doc(&["k1"])));
    eventually("the publish after the failures", || {
        !sink.accepted().is_empty()
    })
    .await;
    let times = server.requests("/keys");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // A retry is never early: 100, 200, 400, then capped at 400 ms.
    let expected = [min, min * 2, max, max, max];
    for (i, (gap, want)) in gaps.iter().zip(expected).enumerate() {
        assert!(
            gap >= &want,
            "gap {i} was {gap:?}, at least {want:?} expected"
        );
    }
    // Capped: without the maximum the fifth gap would be at least 1.6 s.
    assert!(gaps[4] < min * 16, "the backoff is not capped: {gaps:?}");
    assert_eq!(f.fetches(&url, "error"), (times.len() - 1) as f64);
}

// ---------------------------------------------------------------------------------------------
// Refresh and rotation

#[tokio::test]
async fn a_refresh_picks_up_a_rotated_document() {
    let server = Server::start().await;
    server.set("/keys", Reply::ok(jwks_doc(&["old"])));
    let f = Fetcher::start(FetchConfig {
        refresh: Duration::from_millis(50),
        ..slow()
    });
    let sink = RecordingSink::new();
    let url = server.url("/keys");
    f.jwks.set_targets(vec![target(uri(url.clone()), &sink)]);
    eventually("the first publish", || sink.current() == ["old"]).await;
    server.set("/keys", Reply::ok(jwks_doc(&["old", "new"])));
    eventually("the rotated keys", || sink.current() == ["old", "new"]).await;
    eventually("the key gauge", || f.keys(&url) == Some(2.0)).await;
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_previous_keys() {
    let server = Server::start().await;
    server.set("/keys", Reply::ok(jwks_doc(&["k1", "k2"])));
    let f = Fetcher::start(FetchConfig {
        refresh: Duration::from_millis(30),
        retry_min: Duration::from_millis(30),
        retry_max: Duration::from_millis(30),
        ..slow()
    });
    let sink = RecordingSink::new();
    let url = server.url("/keys");
    f.jwks.set_targets(vec![target(uri(url.clone()), &sink)]);
    eventually("the first publish", || !sink.accepted().is_empty()).await;
    server.set("/keys", Reply::status(500));
    eventually("two failed refreshes", || f.fetches(&url, "error") >= 2.0).await;
    server.set("/keys", Reply::ok("{ not json"));
    eventually("two refused documents", || sink.refused() >= 2).await;
    assert!(sink.accepted().iter().all(|kids| kids == &["k1", "k2"]));
    assert_eq!(
        f.keys(&url),
        Some(2.0),
        "the gauge keeps the last good count"
    );
    assert!(f.fetches(&url, "error") >= 4.0);
}

#[tokio::test]
async fn an_unknown_kid_triggers_a_rate_limited_early_refresh() {
    let server = Server::start().await;
    server.set("/keys", Reply::ok(jwks_doc(&["old"])));
    let limit = Duration::from_millis(300);
    let f = Fetcher::start(FetchConfig {
        early_refresh_min: limit,
        ..slow()
    });
    let sink = RecordingSink::new();
    f.jwks
        .set_targets(vec![target(uri(server.url("/keys")), &sink)]);
    eventually("the first publish", || sink.current() == ["old"]).await;
    server.set("/keys", Reply::ok(jwks_doc(&["new"])));
    // The data path keeps seeing the unknown kid for 1.2 s.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        sink.ask_refresh();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sink.current(), ["new"]);
    let times = server.requests("/keys");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= limit,
            "early refreshes too close: {times:?}"
        );
    }
    // The first fetch, then at most one early refresh per 300 ms of the 1.2 s.
    assert!(
        (3..=5).contains(&times.len()),
        "{} fetches: {times:?}",
        times.len()
    );
    // No request, no early refresh (the regular refresh is an hour away).
    let settled = server.requests("/keys").len();
    tokio::time::sleep(limit * 2).await;
    assert!(server.requests("/keys").len() <= settled + 1);
}

// ---------------------------------------------------------------------------------------------
// Discovery and refused answers

#[tokio::test]
async fn discovery_finds_the_jwks_uri_of_the_issuer() {
    let server = Server::start().await;
    let issuer = server.url("/realms/demo");
    server.set(
        "/realms/demo/.well-known/openid-configuration",
        Reply::ok(
            serde_json::to_vec(&serde_json::json!({
                "issuer": issuer,
                "jwks_uri": server.url("/realms/demo/certs"),
            }))
            .unwrap(),
        ),
    );
    server.set("/realms/demo/certs", Reply::ok(jwks_doc(&["k1"])));
    // An issuer whose configuration names no jwks_uri.
    let broken = server.url("/broken/");
    server.set(
        "/broken/.well-known/openid-configuration",
        Reply::ok(r#"{"issuer":"x"}"#),
    );
    let f = Fetcher::start(slow());
    let (sink, broken_sink) = (RecordingSink::new(), RecordingSink::new());
    f.jwks.set_targets(vec![
        target(
            JwksSource::Discovery {
                issuer: issuer.clone(),
            },
            &sink,
        ),
        target(
            JwksSource::Discovery {
                issuer: broken.clone(),
            },
            &broken_sink,
        ),
    ]);
    eventually("the discovered keys", || sink.current() == ["k1"]).await;
    eventually("the metrics under the issuer", || {
        f.fetches(&issuer, "success") == 1.0 && f.fetches(&broken, "error") == 1.0
    })
    .await;
    assert_eq!(f.keys(&issuer), Some(1.0));
    assert!(broken_sink.accepted().is_empty());
    assert_eq!(
        server
            .requests("/realms/demo/.well-known/openid-configuration")
            .len(),
        1
    );
}

#[tokio::test]
async fn refused_answers_are_failed_fetches_that_publish_nothing() {
    let server = Server::start().await;
    let big = Reply::ok(vec![b' '; 4096]);
    server.set("/big", big.clone());
    server.set(
        "/big-unsized",
        Reply {
            unsized_body: true,
            ..big
        },
    );
    server.set("/html", Reply::ok("<html>not a key set</html>"));
    server.set(
        "/moved",
        Reply {
            headers: vec![("location".into(), server.url("/keys"))],
            ..Reply::status(302)
        },
    );
    server.set("/keys", Reply::ok(jwks_doc(&["k1"])));
    server.set(
        "/slow",
        Reply {
            delay: Duration::from_secs(5),
            ..Reply::ok(jwks_doc(&["k1"]))
        },
    );
    let f = Fetcher::start(FetchConfig {
        max_body: 1024,
        ..slow()
    });
    let paths = [
        "/big",
        "/big-unsized",
        "/html",
        "/moved",
        "/missing",
        "/slow",
    ];
    let sinks: Vec<Arc<RecordingSink>> = paths.iter().map(|_| RecordingSink::new()).collect();
    let targets = paths
        .iter()
        .zip(&sinks)
        .map(|(path, sink)| Target {
            timeout: Duration::from_millis(200),
            ..target(uri(server.url(path)), sink)
        })
        .collect();
    f.jwks.set_targets(targets);
    for path in paths {
        let url = server.url(path);
        eventually(&format!("the failure of {path}"), || {
            f.fetches(&url, "error") == 1.0
        })
        .await;
        assert_eq!(f.fetches(&url, "success"), 0.0, "{path}");
        assert_eq!(f.keys(&url), None, "{path}");
    }
    assert!(sinks.iter().all(|s| s.accepted().is_empty()));
    assert_eq!(sinks[2].refused(), 1, "the sink was asked and said no");
    assert!(
        server.requests("/keys").is_empty(),
        "the redirect was not followed"
    );
}

// ---------------------------------------------------------------------------------------------
// Reloads and shutdown

#[tokio::test]
async fn a_reload_seeds_new_sinks_of_a_known_source_at_once() {
    let server = Server::start().await;
    server.set("/a", Reply::ok(jwks_doc(&["a1"])));
    server.set("/b", Reply::ok(jwks_doc(&["b1"])));
    let (a, b) = (server.url("/a"), server.url("/b"));
    let f = Fetcher::start(slow());
    let first = RecordingSink::new();
    f.jwks.set_targets(vec![target(uri(a.clone()), &first)]);
    eventually("the first publish", || first.current() == ["a1"]).await;

    // The reload: a new sink for /a (a new policy generation) and a new source /b.
    let (second, other) = (RecordingSink::new(), RecordingSink::new());
    f.jwks.set_targets(vec![
        target(uri(a.clone()), &second),
        target(uri(a.clone()), &first),
        target(uri(b.clone()), &other),
    ]);
    assert_eq!(
        second.current(),
        ["a1"],
        "seeded before set_targets returned"
    );
    assert_eq!(
        first.accepted().len(),
        1,
        "a sink already served is not fed twice"
    );
    eventually("the new source fetched", || other.current() == ["b1"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.requests("/a").len(),
        1,
        "the known source kept its schedule"
    );

    // /a dropped: its gauges go, /b stays.
    f.jwks.set_targets(vec![target(uri(b.clone()), &other)]);
    assert_eq!(f.keys(&a), None);
    assert_eq!(f.keys(&b), Some(1.0));
}

#[tokio::test]
async fn dropped_sources_and_a_drain_stop_fetching() {
    let server = Server::start().await;
    server.set("/a", Reply::ok(jwks_doc(&["a1"])));
    server.set("/b", Reply::ok(jwks_doc(&["b1"])));
    let f = Fetcher::start(FetchConfig {
        refresh: Duration::from_millis(20),
        ..slow()
    });
    let (sa, sb) = (RecordingSink::new(), RecordingSink::new());
    let b = target(uri(server.url("/b")), &sb);
    f.jwks
        .set_targets(vec![target(uri(server.url("/a")), &sa), b.clone()]);
    eventually("refreshes of both", || {
        server.requests("/a").len() >= 2 && server.requests("/b").len() >= 2
    })
    .await;
    f.jwks.set_targets(vec![b]);
    let a_then = server.requests("/a").len();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        server.requests("/a").len() <= a_then + 1,
        "a dropped source stops"
    );

    f.drain.send_replace(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b_then = server.requests("/b").len();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        server.requests("/b").len(),
        b_then,
        "the drain stops every source"
    );
}

// ---------------------------------------------------------------------------------------------
// https: always verified

struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { params, key, pem }
    }

    fn write(&self, dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A TLS server acceptor with a certificate for `names` (DNS names or IPs).
    fn acceptor(&self, names: &[&str]) -> TlsAcceptor {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// The first fetch's result against `server` with `ca_file` as the trust.
async fn https_fetch(server: &Server, ca_file: Option<&Path>) -> Result<Vec<String>, ()> {
    let f = Fetcher::start(FetchConfig {
        ca_file: ca_file.map(Path::to_path_buf),
        ..slow()
    });
    let sink = RecordingSink::new();
    let url = server.url("/keys");
    f.jwks.set_targets(vec![target(uri(url.clone()), &sink)]);
    eventually("a fetch", || {
        f.fetches(&url, "success") + f.fetches(&url, "error") >= 1.0
    })
    .await;
    match f.fetches(&url, "success") {
        1.0 => Ok(sink.current()),
        _ => {
            assert!(sink.accepted().is_empty());
            Err(())
        }
    }
}

#[tokio::test]
async fn https_is_verified_against_the_ca_file_or_mozillas_roots() {
    let dir = temp_dir("jwks-https");
    let (ca, other) = (TestCa::new("JWKS test CA"), TestCa::new("another CA"));
    let (ca_file, other_file) = (
        ca.write(dir.path(), "ca.pem"),
        other.write(dir.path(), "other.pem"),
    );
    let any_port = "127.0.0.1:0".parse().unwrap();
    let server = Server::start_on(any_port, Some(ca.acceptor(&["127.0.0.1", "localhost"]))).await;
    server.set("/keys", Reply::ok(jwks_doc(&["k1"])));

    assert_eq!(
        https_fetch(&server, Some(&ca_file)).await,
        Ok(vec!["k1".to_string()])
    );
    // Not under the configured CA, nor under Mozilla's roots: refused, never fetched unverified.
    assert_eq!(https_fetch(&server, Some(&other_file)).await, Err(()));
    assert_eq!(https_fetch(&server, None).await, Err(()));
    assert!(
        server.requests("/keys").len() == 1,
        "no request over an unverified connection"
    );

    // The right CA, but a certificate for another name than the one dialed.
    let misnamed = Server::start_on(any_port, Some(ca.acceptor(&["idp.example"]))).await;
    misnamed.set("/keys", Reply::ok(jwks_doc(&["k1"])));
    assert_eq!(https_fetch(&misnamed, Some(&ca_file)).await, Err(()));
    assert!(misnamed.requests("/keys").is_empty());
}

#[tokio::test]
async fn an_unusable_ca_file_fails_the_start() {
    let dir = temp_dir("jwks-ca");
    let path = dir.path().join("nothing.pem");
    std::fs::write(&path, "no certificates here\n").unwrap();
    let metrics = Metrics::new(prometheus::Registry::new());
    let (_drain, watch) = watch::channel(false);
    let config = FetchConfig {
        ca_file: Some(path.clone()),
        ..FetchConfig::default()
    };
    let err = Jwks::spawn(config, metrics.jwks(), watch).unwrap_err();
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}
