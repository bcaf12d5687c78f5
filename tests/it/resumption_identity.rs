//! Resumption must not outlive identity: a resumed TLS 1.3 session carries its peer's chain
//! from the original handshake, so it is re-judged against the current trust bundle at the
//! current time. Real TLS over 127.0.0.1; clocks are injected, never slept on.
//!
//! Server side: outrider's `server_config_with_time` declines a ticket whose client chain is
//! expired or lost its root, and the handshake goes on as a full one (the verifier then judges
//! the client's current certificate). Client side: `check_resumed` after the handshake, as the
//! outbound proxy does, and the ticket cache forgets its tickets when the bundle changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{ServerName, UnixTime};
use rustls::time_provider::TimeProvider;
use rustls::{ClientConfig, HandshakeKind, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use outrider::ca::{Authority, IssuedSvid};
use outrider::identity::{CertStore, PeerRole, SpiffeId};
use outrider::tls::{
    check_resumed, client_config_with_time, failure_reason, server_config_with_time,
};

const TD: &str = "cluster.local";
const TIMEOUT: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

/// A clock that runs with the wall clock, plus whatever the test moves it ahead.
#[derive(Debug, Default)]
struct Clock {
    ahead_secs: AtomicU64,
}

impl Clock {
    fn advance(&self, by: Duration) {
        self.ahead_secs.fetch_add(by.as_secs(), Ordering::SeqCst);
    }

    fn now(&self) -> UnixTime {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        UnixTime::since_unix_epoch(
            wall + Duration::from_secs(self.ahead_secs.load(Ordering::SeqCst)),
        )
    }
}

impl TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.now())
    }
}

/// A test CA (root valid for a day) and the directory it lives in.
struct Ca {
    authority: Authority,
    _dir: tempfile::TempDir,
}

impl Ca {
    fn new() -> Ca {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::init(dir.path(), TD, 24 * HOUR, false).unwrap();
        Ca {
            authority,
            _dir: dir,
        }
    }

    fn issue(&self, sa: &str, ttl: Duration) -> IssuedSvid {
        self.authority.issue(&id(sa), ttl, &[]).unwrap()
    }

    fn root(&self) -> String {
        self.authority.root_pem()
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::istio(TD, "default", sa).unwrap()
}

fn publish(store: &CertStore, svid: &IssuedSvid, roots: &str) {
    store
        .publish_pem(
            svid.chain_pem.as_bytes(),
            svid.key_pem.as_bytes(),
            roots.as_bytes(),
        )
        .unwrap();
}

/// A store of `TD` holding `svid` and trusting `roots`.
fn store(svid: &IssuedSvid, roots: &str) -> CertStore {
    let store = CertStore::new(TD);
    publish(&store, svid, roots);
    store
}

/// One side of the mesh: its store, its clock, and configurations built once (as the sidecar
/// builds them), so tickets carry over from one connection to the next.
struct Side {
    store: CertStore,
    clock: Arc<Clock>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Side {
    /// `peer` is the identity this side accepts as a server (secure naming).
    fn new(store: CertStore, peer: &str) -> Side {
        let clock = Arc::new(Clock::default());
        Side {
            server: server_config_with_time(&store, clock.clone()),
            client: client_config_with_time(&store, vec![id(peer)], clock.clone()),
            store,
            clock,
        }
    }
}

/// What each side of one connection saw: the handshake kind, or why it was refused.
#[derive(Debug)]
struct Outcome {
    server: Result<HandshakeKind, rustls::Error>,
    client: Result<HandshakeKind, rustls::Error>,
}

impl Outcome {
    fn kinds(&self) -> (Option<HandshakeKind>, Option<HandshakeKind>) {
        (
            self.server.as_ref().ok().copied(),
            self.client.as_ref().ok().copied(),
        )
    }
}

fn rustls_error(e: std::io::Error) -> rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| rustls::Error::General(e.to_string()))
}

/// One connection from `client` to `server` over 127.0.0.1. The client checks a resumed
/// session as the outbound proxy does, then waits for a byte from the server (which also
/// brings it the server's new session tickets); the server sends it once it accepted.
async fn connect(client: &Side, server: &Side) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.server.clone());
    let server_side = async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(rustls_error)?;
        let kind = tls.get_ref().1.handshake_kind().unwrap();
        tls.write_all(b"x").await.map_err(rustls_error)?;
        tls.flush().await.map_err(rustls_error)?;
        // Until the client is done with the connection.
        let mut end = [0u8; 1];
        let _ = tls.read(&mut end).await;
        Ok(kind)
    };
    let connector = TlsConnector::from(client.client.clone());
    let client_side = async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("age.default.svc.cluster.local").unwrap();
        let mut tls = connector.connect(name, tcp).await.map_err(rustls_error)?;
        let kind = tls.get_ref().1.handshake_kind().unwrap();
        if let Err(e) = check_resumed(
            tls.get_ref().1,
            PeerRole::Server,
            &client.store,
            client.clock.now(),
        ) {
            let _ = tls.shutdown().await;
            return Err(e);
        }
        let mut x = [0u8; 1];
        tls.read_exact(&mut x).await.map_err(rustls_error)?;
        let _ = tls.shutdown().await;
        Ok(kind)
    };
    let (server, client) =
        tokio::time::timeout(TIMEOUT, async { tokio::join!(server_side, client_side) })
            .await
            .expect("the connection finished in time");
    Outcome { server, client }
}

fn reason(result: &Result<HandshakeKind, rustls::Error>) -> &'static str {
    match result {
        Ok(kind) => panic!("expected a refusal, got a {kind:?} handshake"),
        Err(e) => failure_reason(e),
    }
}

const FULL: (Option<HandshakeKind>, Option<HandshakeKind>) =
    (Some(HandshakeKind::Full), Some(HandshakeKind::Full));
const RESUMED: (Option<HandshakeKind>, Option<HandshakeKind>) =
    (Some(HandshakeKind::Resumed), Some(HandshakeKind::Resumed));

/// `sentences` (client) and `age` (server), both issued by `ca` for `ttl`, trusting `ca`.
fn pair(ca: &Ca, client_ttl: Duration, server_ttl: Duration) -> (Side, Side) {
    let roots = ca.root();
    let client = Side::new(store(&ca.issue("sentences", client_ttl), &roots), "age");
    let server = Side::new(store(&ca.issue("age", server_ttl), &roots), "sentences");
    (client, server)
}

#[tokio::test]
async fn resumption_works_while_nothing_changed() {
    let ca = Ca::new();
    let (client, server) = pair(&ca, HOUR, HOUR);
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    for _ in 0..3 {
        assert_eq!(connect(&client, &server).await.kinds(), RESUMED);
    }
    // Time passing within both certificates' validity changes nothing.
    client.clock.advance(HOUR / 2);
    server.clock.advance(HOUR / 2);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);
}

#[tokio::test]
async fn server_refuses_to_resume_a_client_whose_certificate_expired() {
    let ca = Ca::new();
    // The client's only certificate expires in an hour; the server's lasts four.
    let (client, server) = pair(&ca, HOUR, 4 * HOUR);
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);

    server.clock.advance(2 * HOUR);
    for _ in 0..3 {
        let out = connect(&client, &server).await;
        assert_eq!(reason(&out.server), "expired", "{out:?}");
        assert!(out.client.is_err(), "{out:?}");
    }
}

#[tokio::test]
async fn server_falls_back_to_a_full_handshake_when_the_client_renewed() {
    let ca = Ca::new();
    let (client, server) = pair(&ca, HOUR, 4 * HOUR);
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);

    // The client renews (same roots, so it keeps its tickets and offers one); by the
    // server's clock its old certificate, the one in the ticket, has expired.
    publish(&client.store, &ca.issue("sentences", 4 * HOUR), &ca.root());
    server.clock.advance(2 * HOUR);
    assert_eq!(
        connect(&client, &server).await.kinds(),
        FULL,
        "the ticket is declined, the renewed certificate is verified"
    );
    assert_eq!(
        connect(&client, &server).await.kinds(),
        RESUMED,
        "tickets of the new session resume"
    );
}

#[tokio::test]
async fn client_refuses_to_resume_a_server_whose_certificate_expired() {
    let ca = Ca::new();
    let (client, server) = pair(&ca, 4 * HOUR, HOUR);
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);

    client.clock.advance(2 * HOUR);
    let out = connect(&client, &server).await;
    assert_eq!(reason(&out.client), "expired", "{out:?}");
    // The refusal made the cache forget its tickets: the next connection is a full
    // handshake, refused by the verifier for the same reason.
    let out = connect(&client, &server).await;
    assert_eq!(reason(&out.client), "expired", "{out:?}");

    // Once the server renews, the client connects again.
    publish(&server.store, &ca.issue("age", 4 * HOUR), &ca.root());
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);
}

#[tokio::test]
async fn server_refuses_to_resume_a_client_whose_root_was_retired() {
    let (old, new) = (Ca::new(), Ca::new());
    let both = format!("{}{}", old.root(), new.root());
    // Mid-rotation: the client still holds a certificate of the old root.
    let client = Side::new(store(&old.issue("sentences", HOUR), &both), "age");
    let server = Side::new(store(&new.issue("age", HOUR), &both), "sentences");
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);

    // `rotate-root --step retire`: the server trusts only the new root.
    publish(&server.store, &new.issue("age", HOUR), &new.root());
    for _ in 0..2 {
        let out = connect(&client, &server).await;
        assert_eq!(reason(&out.server), "unknown_issuer", "{out:?}");
        assert!(out.client.is_err(), "{out:?}");
    }
}

#[tokio::test]
async fn client_refuses_to_resume_a_server_whose_root_was_retired() {
    let (old, new) = (Ca::new(), Ca::new());
    let both = format!("{}{}", old.root(), new.root());
    let client = Side::new(store(&new.issue("sentences", HOUR), &both), "age");
    let server = Side::new(store(&old.issue("age", HOUR), &both), "sentences");
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);

    publish(&client.store, &new.issue("sentences", HOUR), &new.root());
    for _ in 0..2 {
        let out = connect(&client, &server).await;
        assert_eq!(reason(&out.client), "unknown_issuer", "{out:?}");
    }
}

#[tokio::test]
async fn check_resumed_validates_a_chain_the_current_bundle_has_not_seen() {
    // A resumed session that slipped past the cache (a ticket received after the bundle
    // changed) is judged by full path validation against the current bundle.
    let (old, new) = (Ca::new(), Ca::new());
    let both = format!("{}{}", old.root(), new.root());
    let client = Side::new(store(&new.issue("sentences", HOUR), &both), "age");
    let server = Side::new(store(&old.issue("age", HOUR), &both), "sentences");
    assert_eq!(connect(&client, &server).await.kinds(), FULL);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.server.clone());
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut end = [0u8; 1];
        let _ = tls.read(&mut end).await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("age.default.svc.cluster.local").unwrap();
    let mut tls = TlsConnector::from(client.client.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(conn.handshake_kind(), Some(HandshakeKind::Resumed));
    assert!(check_resumed(conn, PeerRole::Server, &client.store, client.clock.now()).is_ok());

    let retired = store(&new.issue("sentences", HOUR), &new.root());
    let err = check_resumed(conn, PeerRole::Server, &retired, client.clock.now()).unwrap_err();
    assert_eq!(failure_reason(&err), "unknown_issuer");
    let later =
        UnixTime::since_unix_epoch(Duration::from_secs(client.clock.now().as_secs() + 7200));
    let err = check_resumed(conn, PeerRole::Server, &client.store, later).unwrap_err();
    assert_eq!(failure_reason(&err), "expired");
    tls.shutdown().await.unwrap();
    accept.await.unwrap();
}

#[tokio::test]
async fn a_bundle_change_makes_the_next_connection_a_full_handshake() {
    let (ca, other) = (Ca::new(), Ca::new());
    let (client, server) = pair(&ca, HOUR, HOUR);
    let more = format!("{}{}", ca.root(), other.root());
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);

    // The client's bundle changes (a root is added): its tickets are forgotten.
    publish(&client.store, &ca.issue("sentences", HOUR), &more);
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);

    // The server's bundle changes: its ticket key is replaced, the client's ticket declined.
    publish(&server.store, &ca.issue("age", HOUR), &more);
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);
}

#[tokio::test]
async fn renewing_a_certificate_under_the_same_roots_keeps_resumption() {
    let ca = Ca::new();
    let (client, server) = pair(&ca, HOUR, HOUR);
    assert_eq!(connect(&client, &server).await.kinds(), FULL);
    publish(&server.store, &ca.issue("age", HOUR), &ca.root());
    publish(&client.store, &ca.issue("sentences", HOUR), &ca.root());
    assert_eq!(connect(&client, &server).await.kinds(), RESUMED);
}
