//! The cipher suite of a mesh hop: two sidecars agree on TLS_AES_128_GCM_SHA256 (cheaper per
//! byte than AES-256-GCM); a client that prefers AES-256 still gets it.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::time_provider::DefaultTimeProvider;
use rustls::{CipherSuite, ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use outrider::ca::Authority;
use outrider::tls::{client_config, client_config_with_provider, server_config};

use crate::resumption::store;

const TD: &str = "cluster.local";

/// The suite both sides agreed on, over an in-memory pipe.
async fn negotiated(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> (CipherSuite, CipherSuite) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("age.default.svc.cluster.local").unwrap();
    let (c, s) = tokio::join!(
        TlsConnector::from(client.clone()).connect(name, c),
        TlsAcceptor::from(server.clone()).accept(s)
    );
    let (c, s) = (c.unwrap(), s.unwrap());
    let suite = |s: Option<rustls::SupportedCipherSuite>| s.unwrap().suite();
    (
        suite(c.get_ref().1.negotiated_cipher_suite()),
        suite(s.get_ref().1.negotiated_cipher_suite()),
    )
}

#[tokio::test]
async fn sidecars_agree_on_aes_128_and_honour_a_client_preferring_aes_256() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::init(dir.path(), TD, Duration::from_secs(86_400), false).unwrap();
    let (client_store, _) = store(&ca, "sentences");
    let (server_store, server_id) = store(&ca, "age");
    let server = server_config(&server_store);

    let mesh = client_config(&client_store, vec![server_id.clone()]);
    let aes128 = CipherSuite::TLS13_AES_128_GCM_SHA256;
    assert_eq!(negotiated(&mesh, &server).await, (aes128, aes128));

    // aws-lc-rs's own order (AES-256 first), as another TLS 1.3 mesh client may send it.
    let other = client_config_with_provider(
        &client_store,
        vec![server_id],
        Arc::new(DefaultTimeProvider),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    );
    let aes256 = CipherSuite::TLS13_AES_256_GCM_SHA384;
    assert_eq!(
        CryptoProvider::clone(&rustls::crypto::aws_lc_rs::default_provider()).cipher_suites[0]
            .suite(),
        aes256,
        "the library default this test compares against"
    );
    assert_eq!(negotiated(&other, &server).await, (aes256, aes256));
}
