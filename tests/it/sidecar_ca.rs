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

/// Keeps `stream` busy and opens a new connection through `out` every 200 ms for `window`,
/// collecting `age`'s serials; returns how many new connections were made.
fn traffic(
    stream: &mut TcpStream,
    out: std::net::SocketAddr,
    age: &Sidecar,
    window: Duration,
    serials: &mut BTreeSet<String>,
) -> u64 {
    let mut new_connections = 0;
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        stream.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        let msg = format!("new {new_connections}");
        assert_eq!(round_trip(out, msg.as_bytes()).unwrap(), msg.as_bytes());
        new_connections += 1;
        if let Some(s) = serial(age) {
            serials.insert(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    new_connections
}

fn handshakes(sidecar: &Sidecar, direction: &str, kind: &str) -> f64 {
    metric_sum(
        &sidecar.metrics_text(),
        "outrider_tls_handshakes_total",
        &[("direction", direction), ("kind", kind)],
    )
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
    let start = |workload: &str, extra: &[&str]| {
        let token_file = mesh.dir.path().join(format!("{workload}.token"));
        std::fs::write(&token_file, token(&ca_dir, workload)).unwrap();
        let sidecar = Sidecar::start_with(
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
            extra,
        );
        // From here on the bootstrap token is useless: every renewal must authenticate with
        // the sidecar's current certificate over mTLS.
        std::fs::write(&token_file, "not-a-token").unwrap();
        sidecar
    };
    let age = start("age", &[]);
    let out = mesh.sentences_out_addr();
    let mut serials = BTreeSet::new();

    // Twice: first with session resumption (a resumed handshake skips certificate checks, so
    // it alone would not show that rotated leaves are accepted), then with a client sidecar
    // that resumes nothing, so every new connection verifies age's current leaf in full.
    let (mut total_new, mut last_phase, mut retried) = (0, 0, 0.0);
    for resumption in [true, false] {
        let extra: &[&str] = if resumption {
            &[]
        } else {
            &["--no-resumption"]
        };
        let sentences = start("sentences", extra);
        let before = serials.len();
        // A long-lived stream through both sidecars, kept busy across the rotations.
        let mut stream = TcpStream::connect(out).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let window = Duration::from_secs(9);
        let new_connections = traffic(&mut stream, out, &age, window, &mut serials);
        total_new += new_connections;
        last_phase = new_connections;
        drop(stream);
        let rotated = serials.len() - before;
        assert!(rotated >= 3, "age rotated {rotated} times: {serials:?}");
        // Every connection of this client sidecar (the new ones plus the long stream) was one
        // completed outbound handshake; without resumption each was a full one.
        let (full, resumed) = (
            handshakes(&sentences, "outbound", "full"),
            handshakes(&sentences, "outbound", "resumed"),
        );
        eprintln!(
            "resumption={resumption}: {new_connections} new connections, {rotated} new serials, \
             outbound handshakes full={full} resumed={resumed}"
        );
        assert_eq!(full + resumed, (new_connections + 1) as f64);
        // A resumed session the client then refuses (the server's leaf from the first
        // handshake rotated out) is retried in full: age completed both handshakes.
        retried += metric_sum(
            &sentences.metrics_text(),
            "outrider_tls_resumptions_refused_total",
            &[("direction", "outbound")],
        );
        if resumption {
            assert!(resumed >= 1.0, "resumption was never used");
        } else {
            assert_eq!(resumed, 0.0, "--no-resumption resumed a session");
        }
        let m = sentences.metrics_text();
        assert_eq!(
            metric_sum(&m, "outrider_tls_handshake_failures_total", &[]),
            0.0,
            "{m}"
        );
        assert!(
            metric_sum(&m, "outrider_cert_rotations_total", &[]) >= 3.0,
            "{m}"
        );
    }
    // age saw every one of those connections inbound (and the refused resumptions' first
    // attempts), at least the second phase's in full.
    let (full, resumed) = (
        handshakes(&age, "inbound", "full"),
        handshakes(&age, "inbound", "resumed"),
    );
    assert_eq!(full + resumed, (total_new + 2) as f64 + retried);
    assert!(
        full > last_phase as f64,
        "full={full} resumed={resumed}, {last_phase} connections without resumption"
    );
    let m = age.metrics_text();
    assert_eq!(
        metric_sum(&m, "outrider_tls_handshake_failures_total", &[]),
        0.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "outrider_cert_rotations_total", &[]) >= 6.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "outrider_cert_expiry_timestamp_seconds", &[]) > 0.0,
        "{m}"
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
    // Readiness is polled over the whole window, not sampled once: any 200 fails the test.
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok((status, _)) = http_get(ready.parse().unwrap(), "/healthz/ready") {
            answers.push(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Plaintext is never the fallback: STRICT resets it without an identity (a reset, not a
    // refused connection: the listener is up, it just has nothing to admit the client with).
    let plain = send_and_close_kind(mesh.age_addr(), b"x");
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(exited.is_none(), "the sidecar exited: {exited:?}");
    assert!(answers.len() >= 10, "readiness answered only {answers:?}");
    assert!(answers.iter().all(|&s| s == 503), "{answers:?}");
    assert_eq!(plain, "reset", "plaintext under STRICT");
}
