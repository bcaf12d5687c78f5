//! Certificate rotation through the file source: a TLS server on the store keeps serving while
//! its directory is rewritten (new certificate, then garbage, then the Kubernetes `..data`
//! symlink swap); connections opened before a swap keep working.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outrider::ca::{Authority, IssuedSvid};
use outrider::identity::{files, CertStore, IdentityError, SpiffeId};
use outrider::tls::{client_config, server_config};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::common::temp_dir;

const TD: &str = "cluster.local";
const POLL: Duration = Duration::from_millis(50);

fn id(sa: &str) -> SpiffeId {
    SpiffeId::istio(TD, "default", sa).unwrap()
}

fn issue(ca: &Authority, sa: &str) -> IssuedSvid {
    ca.issue(&id(sa), Duration::from_secs(3600), &[]).unwrap()
}

fn store_with(issued: &IssuedSvid) -> CertStore {
    let store = CertStore::new(TD);
    store
        .publish_pem(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            issued.root_pem.as_bytes(),
        )
        .unwrap();
    store
}

/// An echo server over TLS on the live store; returns its address.
async fn echo_server(store: &CertStore) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(store));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(config)
        .connect(ServerName::try_from("age.default.svc").unwrap(), tcp)
        .await
        .expect("handshake succeeds")
}

async fn echo(conn: &mut TlsStream<TcpStream>, msg: &[u8]) {
    conn.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(buf, msg);
}

fn serial_of(conn: &TlsStream<TcpStream>) -> String {
    let certs = conn.get_ref().1.peer_certificates().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref()).unwrap();
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn write_raw(dir: &Path, name: &str, contents: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn server_keeps_serving_through_rotation_and_garbage() {
    let tmp = temp_dir("rotation-files");
    let base = tmp.path();
    let ca = Authority::init(&base.join("ca"), TD, Duration::from_secs(86_400), false).unwrap();
    let dir = base.join("age");
    let v1 = issue(&ca, "age");
    Authority::write_svid(&v1, &dir).unwrap();

    let store = CertStore::new(TD);
    files::load_dir(&store, &dir).unwrap();
    assert_eq!(store.current().unwrap().svid.serial_hex, v1.serial_hex);
    let mut generation = store.changed();
    tokio::spawn(files::watch_dir(store.clone(), dir.clone(), POLL));
    let addr = echo_server(&store).await;

    let client_store = store_with(&issue(&ca, "name"));
    // A fresh config (and so a fresh session cache) per connection: a resumed TLS 1.3 session
    // reports the certificate of the session it resumes, not the server's current one.
    let client = || client_config(&client_store, vec![id("age")]);

    // A connection opened before any swap.
    let mut old = connect(addr, client()).await;
    assert_eq!(serial_of(&old), v1.serial_hex);
    echo(&mut old, b"before").await;

    // 1. A new certificate: new handshakes see it, the old connection keeps working.
    let v2 = issue(&ca, "age");
    assert_ne!(v1.serial_hex, v2.serial_hex);
    Authority::write_svid(&v2, &dir).unwrap();
    tokio::time::timeout(Duration::from_secs(5), generation.changed())
        .await
        .expect("the watcher publishes the new certificate")
        .unwrap();
    assert_eq!(store.current().unwrap().svid.serial_hex, v2.serial_hex);
    let mut fresh = connect(addr, client()).await;
    assert_eq!(serial_of(&fresh), v2.serial_hex);
    echo(&mut fresh, b"fresh").await;
    echo(&mut old, b"after the swap").await;
    assert_eq!(
        serial_of(&old),
        v1.serial_hex,
        "established connection untouched"
    );

    // 2. Garbage: refused and counted; the new certificate stays.
    let rejected = store.stats().rejected;
    write_raw(&dir, "cert-chain.pem", b"this is not a certificate");
    write_raw(&dir, "key.pem", b"nor is this a key");
    eventually("the garbage is refused", || {
        store.stats().rejected > rejected
    })
    .await;
    tokio::time::sleep(POLL * 4).await;
    assert_eq!(
        store.stats().rejected,
        rejected + 1,
        "refused once, not per poll"
    );
    assert_eq!(store.current().unwrap().svid.serial_hex, v2.serial_hex);
    let mut after_garbage = connect(addr, client()).await;
    assert_eq!(serial_of(&after_garbage), v2.serial_hex);
    echo(&mut after_garbage, b"still v2").await;
    echo(&mut old, b"still alive").await;
    echo(&mut fresh, b"fresh still alive").await;
    assert_eq!(store.stats().rotations, 2);

    // Resumption is on: a second connection on one config resumes the first one's session.
    let shared = client();
    let mut first = connect(addr, shared.clone()).await;
    // TLS 1.3 tickets arrive after the handshake: read once so the client stores one.
    echo(&mut first, b"first").await;
    let mut second = connect(addr, shared).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    echo(&mut second, b"resumed").await;
    drop(first);
}

/// Lays out `dir` like a Kubernetes secret volume: `..<version>/` holds the files, `..data`
/// points at it, and the visible names are symlinks through `..data`.
fn k8s_publish(dir: &Path, version: &str, issued: &IssuedSvid) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("cert-chain.pem"), &issued.chain_pem).unwrap();
    std::fs::write(versioned.join("key.pem"), &issued.key_pem).unwrap();
    std::fs::write(versioned.join("root-cert.pem"), &issued.root_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test]
async fn kubernetes_data_symlink_swap_is_picked_up() {
    let tmp = temp_dir("rotation-k8s");
    let base = tmp.path();
    let ca = Authority::init(&base.join("ca"), TD, Duration::from_secs(86_400), false).unwrap();
    let dir = base.join("secret");
    std::fs::create_dir_all(&dir).unwrap();
    let v1 = issue(&ca, "age");
    k8s_publish(&dir, "2026_11_26_v1", &v1);

    let store = CertStore::new(TD);
    tokio::spawn(files::watch_dir(store.clone(), dir.clone(), POLL));
    eventually("the first load", || store.current().is_some()).await;
    assert_eq!(store.current().unwrap().svid.serial_hex, v1.serial_hex);

    let v2 = issue(&ca, "age");
    k8s_publish(&dir, "2026_11_26_v2", &v2);
    std::fs::remove_dir_all(dir.join("..2026_11_26_v1")).unwrap();
    eventually("the ..data swap", || {
        store.current().unwrap().svid.serial_hex == v2.serial_hex
    })
    .await;
    assert_eq!(store.stats().rotations, 2);
    assert_eq!(store.stats().rejected, 0);
}

#[tokio::test]
async fn store_refuses_bad_material_and_keeps_the_old() {
    let tmp = temp_dir("rotation-refuse");
    let base = tmp.path();
    let ca = Authority::init(&base.join("ca"), TD, Duration::from_secs(86_400), false).unwrap();
    let other_ca =
        Authority::init(&base.join("other"), TD, Duration::from_secs(86_400), false).unwrap();
    let good = issue(&ca, "age");
    let store = store_with(&good);
    let mut generation = store.changed();
    let serial = good.serial_hex.clone();

    let next = issue(&ca, "age");
    let foreign = issue(&other_ca, "age");
    type Case<'a> = (
        &'a str,
        (&'a str, &'a str, &'a str),
        fn(&IdentityError) -> bool,
    );
    let cases: Vec<Case> = vec![
        (
            "key of another certificate",
            (&next.chain_pem, &good.key_pem, &good.root_pem),
            |e| matches!(e, IdentityError::KeyMismatch),
        ),
        (
            "chain from a CA not in the bundle",
            (&foreign.chain_pem, &foreign.key_pem, &good.root_pem),
            |e| matches!(e, IdentityError::InvalidSvid { .. }),
        ),
        (
            "garbage chain",
            ("garbage", &good.key_pem, &good.root_pem),
            |e| matches!(e, IdentityError::NoCertificates { .. }),
        ),
        (
            "garbage key",
            (&next.chain_pem, "garbage", &good.root_pem),
            |e| matches!(e, IdentityError::BadPem { .. }),
        ),
        (
            "leaf as root",
            (&next.chain_pem, &next.key_pem, &next.chain_pem),
            |e| matches!(e, IdentityError::NotACa { .. }),
        ),
    ];
    for (i, (what, (chain, key, roots), check)) in cases.into_iter().enumerate() {
        let err = store
            .publish_pem(chain.as_bytes(), key.as_bytes(), roots.as_bytes())
            .expect_err(what);
        assert!(check(&err), "{what}: unexpected {err:?}");
        assert!(!err.to_string().contains("PRIVATE KEY"), "{what}: {err}");
        assert_eq!(store.stats().rejected, i as u64 + 1);
        assert_eq!(store.current().unwrap().svid.serial_hex, serial, "{what}");
    }

    // A store of another trust domain refuses a valid SVID of this one.
    let elsewhere = CertStore::new("elsewhere.example");
    let err = elsewhere
        .publish_pem(
            good.chain_pem.as_bytes(),
            good.key_pem.as_bytes(),
            good.root_pem.as_bytes(),
        )
        .unwrap_err();
    assert!(
        matches!(err, IdentityError::WrongTrustDomain { .. }),
        "{err:?}"
    );
    assert!(elsewhere.current().is_none());

    // Republishing the same material is a no-op; new material bumps the generation.
    store
        .publish_pem(
            good.chain_pem.as_bytes(),
            good.key_pem.as_bytes(),
            good.root_pem.as_bytes(),
        )
        .unwrap();
    assert_eq!(store.stats().rotations, 1);
    assert!(!generation.has_changed().unwrap());
    store
        .publish_pem(
            next.chain_pem.as_bytes(),
            next.key_pem.as_bytes(),
            next.root_pem.as_bytes(),
        )
        .unwrap();
    assert!(generation.has_changed().unwrap());
    assert_eq!(*generation.borrow_and_update(), 2);
    assert_eq!(store.stats().rotations, 2);
}
