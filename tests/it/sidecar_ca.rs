//! Two `outrider run` processes that get their identities from an `outrider ca serve`
//! process with bootstrap tokens (nobody copies key files), rotate short-lived certificates
//! while traffic flows, and keep a long-lived stream open across the rotations.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::ca::{init_ca, token, CaProcess};
use crate::common::*;

fn serial(sidecar: &Sidecar) -> Option<String> {
    let certs = sidecar.admin("/certs");
    let v: serde_json::Value = serde_json::from_str(&certs).ok()?;
    v["serial"].as_str().map(str::to_string)
}

#[test]
fn sidecars_bootstrap_from_the_ca_and_rotate_under_traffic() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "STRICT");
    let ca_dir = mesh.dir.path().join("ca-service");
    init_ca(&ca_dir);
    let ca = CaProcess::start(
        &ca_dir,
        "127.0.0.1:0",
        &["--rate-limit", "600", "--burst", "50"],
    );
    let root = ca_dir.join("root-cert.pem");
    let start = |workload: &str| {
        let token_file = mesh.dir.path().join(format!("{workload}.token"));
        std::fs::write(&token_file, token(&ca_dir, workload)).unwrap();
        Sidecar::start_with(
            mesh.config(),
            workload,
            &[
                "--ca-address",
                &ca.address(),
                "--ca-server-name",
                "localhost",
                "--ca-root",
                root.to_str().unwrap(),
                "--token-file",
                token_file.to_str().unwrap(),
                "--cert-ttl",
                "4s",
            ],
            &[],
        )
    };
    let age = start("age");
    let sentences = start("sentences");
    // From here on the bootstrap tokens are useless: every renewal below must authenticate
    // with the sidecar's current certificate over mTLS.
    for workload in ["age", "sentences"] {
        std::fs::write(
            mesh.dir.path().join(format!("{workload}.token")),
            "not-a-token",
        )
        .unwrap();
    }

    // A long-lived stream through both sidecars, kept busy across the rotations.
    let mut stream = TcpStream::connect(mesh.sentences_out_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut serials = BTreeSet::new();
    let mut new_connections = 0;
    let deadline = Instant::now() + Duration::from_secs(14);
    while Instant::now() < deadline {
        stream.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        let msg = format!("new {new_connections}");
        assert_eq!(
            round_trip(mesh.sentences_out_addr(), msg.as_bytes()).unwrap(),
            msg.as_bytes()
        );
        new_connections += 1;
        if let Some(s) = serial(&age) {
            serials.insert(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        serials.len() >= 5,
        "age rotated only {} times: {serials:?}",
        serials.len()
    );
    for s in [&age, &sentences] {
        let m = s.metrics_text();
        assert_eq!(
            metric_sum(&m, "outrider_tls_handshake_failures_total", &[]),
            0.0,
            "{m}"
        );
        assert!(
            metric_sum(&m, "outrider_cert_rotations_total", &[]) >= 5.0,
            "{m}"
        );
        assert!(
            metric_sum(&m, "outrider_cert_expiry_timestamp_seconds", &[]) > 0.0,
            "{m}"
        );
    }
    eprintln!(
        "{new_connections} new connections, {} serials of age",
        serials.len()
    );
}

#[test]
fn a_sidecar_without_a_reachable_ca_is_not_ready() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "STRICT");
    let ca_dir = mesh.dir.path().join("ca-service");
    init_ca(&ca_dir);
    let token_file = mesh.dir.path().join("age.token");
    std::fs::write(&token_file, token(&ca_dir, "age")).unwrap();
    let ready = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(BIN)
        .args([
            "run",
            "--config",
            mesh.config().to_str().unwrap(),
            "--workload",
            "age",
        ])
        .args([
            "--ca-address",
            &format!("127.0.0.1:{}", free_port()),
            "--ca-server-name",
            "localhost",
        ])
        .args(["--ca-root", ca_dir.join("root-cert.pem").to_str().unwrap()])
        .args([
            "--token-file",
            token_file.to_str().unwrap(),
            "--inbound-ip",
            "127.0.0.1",
        ])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--ready-addr",
            &ready,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = http_get(ready.parse().unwrap(), "/healthz/ready").map(|r| r.0);
    // Plaintext is never the fallback: STRICT still resets it without an identity.
    let plain = round_trip(mesh.age_addr(), b"x");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status.unwrap(), 503);
    assert!(!matches!(plain, Ok(b) if b == b"x"));
}
