//! TLS 1.3 session resumption between sidecars: a reconnect skips certificate signing and
//! verification, yet both sides still know the peer's SPIFFE ID (policy, metrics and the
//! access log read it from `peer_certificates()`). `--no-resumption` turns it off.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use outrider::ca::Authority;
use outrider::identity::{CertStore, SpiffeId};
use outrider::tls::{client_config, peer_spiffe_id, server_config, without_resumption};

const TD: &str = "cluster.local";

/// A workload's certificate store with an SVID for `sa` from `ca`.
pub(crate) fn store(ca: &Authority, sa: &str) -> (CertStore, SpiffeId) {
    let id = SpiffeId::istio(TD, "default", sa).unwrap();
    let svid = ca.issue(&id, Duration::from_secs(3600), &[]).unwrap();
    let store = CertStore::new(TD);
    store
        .publish_pem(
            svid.chain_pem.as_bytes(),
            svid.key_pem.as_bytes(),
            svid.root_pem.as_bytes(),
        )
        .unwrap();
    (store, id)
}

/// One handshake over an in-memory pipe: how it went, and the SPIFFE ID each side saw.
async fn connect(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> (HandshakeKind, Option<SpiffeId>, Option<SpiffeId>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("age.default.svc.cluster.local").unwrap();
    let (c, s) = tokio::join!(
        TlsConnector::from(client.clone()).connect(name, c),
        TlsAcceptor::from(server.clone()).accept(s)
    );
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    // The server sends its session tickets after the handshake: let the client read them.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.unwrap();
    let (_, cc) = c.get_ref();
    let (_, sc) = s.get_ref();
    assert_eq!(cc.handshake_kind(), sc.handshake_kind());
    (
        cc.handshake_kind().unwrap(),
        cc.peer_certificates().and_then(peer_spiffe_id),
        sc.peer_certificates().and_then(peer_spiffe_id),
    )
}

#[tokio::test]
async fn resumed_sessions_keep_both_identities() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::init(dir.path(), TD, Duration::from_secs(86_400), false).unwrap();
    let (client_store, client_id) = store(&ca, "sentences");
    let (server_store, server_id) = store(&ca, "age");
    let server = server_config(&server_store);
    let client = client_config(&client_store, vec![server_id.clone()]);

    let first = connect(&client, &server).await;
    assert_eq!(
        first,
        (
            HandshakeKind::Full,
            Some(server_id.clone()),
            Some(client_id.clone())
        )
    );
    for _ in 0..3 {
        let again = connect(&client, &server).await;
        assert_eq!(
            again,
            (
                HandshakeKind::Resumed,
                Some(server_id.clone()),
                Some(client_id.clone())
            ),
            "a reconnect resumes and both sides still see the peer's SPIFFE ID"
        );
    }

    let full = without_resumption(&client);
    for _ in 0..2 {
        assert_eq!(connect(&full, &server).await.0, HandshakeKind::Full);
    }
}
