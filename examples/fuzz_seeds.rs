//! Captures real TLS ClientHellos as seeds for the `sniff` fuzz target (run by
//! `fuzz/make-seeds.sh`): a listener on 127.0.0.1:0 saves the first bytes each client sends.
//!
//! Usage: `cargo run --example fuzz_seeds -- <out-dir> <svid-dir> <csr-file>`, where
//! `<svid-dir>` holds an SVID from `outrider ca issue` (the mesh client presents it). Clients:
//! outrider's own mesh client configuration (with and without ALPN and SNI), curl and openssl
//! s_client (each when installed). Writes `<out-dir>/<client>.bin`, each prefixed by one byte 0
//! (the target's "one read" marker; see `fuzz/harness.rs`). Also writes to `<csr-file>` a CSR
//! shaped like the one a sidecar sends the CA (for the `ca_request` seeds).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use outrider::identity::{files, CertStore, SpiffeId};
use outrider::proxy::sniff::detect;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, out, svid, csr] = args.as_slice() else {
        anyhow::bail!("usage: fuzz_seeds <out-dir> <svid-dir> <csr-file>");
    };
    std::fs::write(csr, sidecar_csr()?)?;
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    let store = CertStore::new("cluster.local");
    files::load_dir(&store, Path::new(svid)).context("loading the SVID")?;
    let age = SpiffeId::istio("cluster.local", "default", "age")?;
    let mesh = outrider::tls::client_config(&store, vec![age]);
    let mut no_alpn = (*mesh).clone();
    no_alpn.alpn_protocols.clear();
    let no_alpn = Arc::new(no_alpn);
    let sni = ServerName::try_from("outbound_.8080_._.age.default.svc.cluster.local")?;
    let ip = ServerName::from(addr.ip());

    for (name, config, server) in [
        ("rustls-mesh-alpn-sni", mesh.clone(), sni.clone()),
        ("rustls-mesh-alpn-nosni", mesh, ip.clone()),
        ("rustls-noalpn-sni", no_alpn.clone(), sni),
        ("rustls-noalpn-nosni", no_alpn, ip),
    ] {
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tokio_rustls::TlsConnector::from(config)
                .connect(server.to_owned(), tcp)
                .await;
            anyhow::Ok(())
        });
        capture(&listener, &out.join(format!("{name}.bin"))).await?;
        let _ = client.await;
    }

    let port = addr.port().to_string();
    let url = format!("https://127.0.0.1:{port}/");
    let sni_url = format!("https://age.default.svc:{port}/");
    let resolve = format!("age.default.svc:{port}:127.0.0.1");
    let connect = format!("127.0.0.1:{port}");
    let tools: [(&str, Vec<&str>); 6] = [
        ("curl", vec!["curl", "-sk", "-m", "5", &url]),
        (
            "curl-http1.1",
            vec!["curl", "-sk", "-m", "5", "--http1.1", &url],
        ),
        (
            "curl-sni",
            vec!["curl", "-sk", "-m", "5", "--resolve", &resolve, &sni_url],
        ),
        ("openssl", vec!["openssl", "s_client", "-connect", &connect]),
        (
            "openssl-alpn-sni",
            vec![
                "openssl",
                "s_client",
                "-connect",
                &connect,
                "-servername",
                "age.default.svc",
                "-alpn",
                "istio-peer-exchange,istio,h2",
            ],
        ),
        (
            "openssl-tls12",
            vec![
                "openssl",
                "s_client",
                "-connect",
                &connect,
                "-tls1_2",
                "-noservername",
            ],
        ),
    ];
    for (name, argv) in tools {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("{} is not installed: no {name} seed", argv[0]);
            continue;
        };
        let saved = tokio::time::timeout(
            Duration::from_secs(10),
            capture(&listener, &out.join(format!("{name}.bin"))),
        )
        .await;
        let _ = child.kill();
        let _ = child.wait();
        saved.context(format!("{name} sent nothing"))??;
    }
    Ok(())
}

/// A CSR like the sidecar's: P-256 key, empty subject, the SPIFFE ID as the one URI SAN.
fn sidecar_csr() -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/default/sa/sleep".try_into()?,
    )];
    Ok(params.serialize_request(&key)?.pem()?)
}

/// Accepts one connection and saves what the sniffer read from it.
async fn capture(listener: &TcpListener, path: &Path) -> anyhow::Result<SocketAddr> {
    let (mut tcp, peer) = listener.accept().await?;
    let (detected, bytes) =
        detect(&mut tcp, Duration::from_secs(5), Duration::from_secs(10)).await?;
    let mut seed = vec![0u8];
    seed.extend(&bytes);
    std::fs::write(path, seed)?;
    println!("{}: {} bytes, {detected:?}", path.display(), bytes.len());
    Ok(peer)
}
