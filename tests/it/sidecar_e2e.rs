//! End to end: real `outrider run` processes, real apps, real TLS over loopback. These walk
//! the Istio labs' storyline: mTLS between sidecars, PERMISSIVE lets a
//! sidecar-less client through and lists it, STRICT resets it while the mesh keeps working, a
//! DestinationRule subset turns mTLS off for one version.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

/// Whether the sidecar reset a plaintext connection carrying `msg` (a clean close or a read
/// timeout is not a reset).
fn is_reset(addr: std::net::SocketAddr, msg: &[u8]) -> bool {
    send_and_close_kind(addr, msg) == "reset"
}

#[test]
fn permissive_carries_mesh_traffic_over_mtls_and_admits_plaintext() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let sentences = mesh.sidecar("sentences");

    // Through both sidecars: app → sentences outbound → mTLS → age inbound → echo.
    let big = vec![7u8; 300_000];
    assert_eq!(round_trip(mesh.sentences_out_addr(), &big).unwrap(), big);
    // A client without a sidecar talks plaintext straight to age's port: PERMISSIVE lets it in.
    assert_eq!(
        round_trip(mesh.age_addr(), b"plain hello").unwrap(),
        b"plain hello"
    );

    let m = age.metrics_text();
    let mtls = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/sentences",
        ),
        ("source_workload", "sentences"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/age",
        ),
        ("destination_workload", "age"),
    ];
    assert!(
        eventually(Duration::from_secs(3), || {
            metric_sum(&age.metrics_text(), "istio_tcp_received_bytes_total", &mtls) >= 300_000.0
        }),
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "istio_tcp_connections_opened_total", &mtls),
        1.0,
        "{m}"
    );
    let none = [
        ("reporter", "destination"),
        ("connection_security_policy", "none"),
    ];
    assert_eq!(
        metric_sum(&m, "istio_tcp_connections_opened_total", &none),
        1.0,
        "{m}"
    );
    // The source side reports too.
    let sm = sentences.metrics_text();
    let src = [
        ("reporter", "source"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/age",
        ),
    ];
    assert_eq!(
        metric_sum(&sm, "istio_tcp_connections_opened_total", &src),
        1.0,
        "{sm}"
    );

    // Who still blocks STRICT: the plaintext client is listed.
    let plaintext = age.admin("/plaintext");
    assert!(plaintext.contains("\"127.0.0.1\""), "{plaintext}");
    let certs = age.admin("/certs");
    assert!(
        certs.contains("spiffe://cluster.local/ns/default/sa/age"),
        "{certs}"
    );
    let dump = age.admin("/config_dump");
    assert!(dump.contains("PERMISSIVE"), "{dump}");
}

#[test]
fn strict_resets_plaintext_while_the_mesh_keeps_working() {
    let app = App::http();
    let mesh = Mesh::new(app.port, "HTTP", "STRICT");
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");

    let (status, body) = http_get(mesh.sentences_out_addr(), "/").unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from the app"));

    let direct = http_get(mesh.age_addr(), "/");
    assert!(
        matches!(&direct, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "plaintext to a STRICT port must be reset: {direct:?}"
    );
    let mut rejected = 1;
    if tool_available("curl") {
        rejected += 1;
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                &format!("http://{}/", mesh.age_addr()),
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(56),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Connection reset by peer"), "{stderr}");
    }
    let m = age.metrics_text();
    assert!(
        metric_sum(&m, "outrider_plaintext_rejected_total", &[]) >= 1.0,
        "{m}"
    );
    let plaintext = age.admin("/plaintext");
    assert!(
        plaintext.contains(&format!("\"rejected\": {rejected}")),
        "{plaintext}"
    );
    // The mesh path still works after the rejections.
    assert_eq!(http_get(mesh.sentences_out_addr(), "/").unwrap().0, 200);
}

#[test]
fn silent_client_of_a_server_first_app_is_not_hung_in_permissive() {
    let app = App::server_first();
    let mesh = Mesh::new(app.port, "TCP", "PERMISSIVE");
    let _age = mesh.sidecar("age");
    let mut s = TcpStream::connect(mesh.age_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 15];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 greetings\r\n");
}

#[test]
fn garbage_and_foreign_clients_are_closed_and_counted_and_the_rest_keeps_serving() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "STRICT");
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");

    // Bytes that start like a TLS record but are not a ClientHello.
    let mut s = TcpStream::connect(mesh.age_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let mut buf = [0u8; 16];
    let kind = close_kind(s.read(&mut buf));
    assert_eq!(kind, "reset", "a malformed ClientHello is reset");

    // A client that connects and says nothing, on a STRICT port.
    let silent = TcpStream::connect(mesh.age_addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let kind = close_kind((&silent).read(&mut buf));
    assert_eq!(
        kind, "reset",
        "a silent client is reset after the detect timeout"
    );

    // A TLS client from another CA (a rogue workload with a certificate of its own) that
    // offers the mesh ALPN. It trusts the mesh root, so the sidecar's own certificate verifies
    // ("Verification: OK" is expected and proves the client side is sound); the sidecar must
    // then refuse the client's certificate with an alert, and nothing reaches the app.
    let rogue = Pki::new();
    let rogue_dir = rogue.issue("rogue", "default", "sentences");
    if tool_available("openssl") {
        let mesh_root = mesh.pki.ca_dir().join("root-cert.pem");
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &mesh.age_addr().to_string(),
                "-alpn",
                "istio",
                "-ign_eof",
            ])
            .args(["-CAfile", mesh_root.to_str().unwrap()])
            .args(["-cert", rogue_dir.join("cert-chain.pem").to_str().unwrap()])
            .args(["-key", rogue_dir.join("key.pem").to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"rogue-secret\n");
        let out = bounded_output(child, "openssl s_client", Duration::from_secs(20));
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("Verification: OK"), "{text}");
        assert!(text.contains("alert"), "no alert from the sidecar: {text}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("rogue-secret"),
            "the app echoed the rogue client: {text}"
        );
        // The sidecar refused the rogue certificate, and says why.
        assert!(
            eventually(Duration::from_secs(3), || metric_sum(
                &age.metrics_text(),
                "outrider_tls_handshake_failures_total",
                &[("direction", "inbound"), ("reason", "unknown_issuer")]
            ) >= 1.0),
            "{text}\n{}",
            age.metrics_text()
        );
    }
    let m = age.metrics_text();
    assert!(
        metric_sum(
            &m,
            "outrider_inbound_rejected_total",
            &[("reason", "malformed_client_hello")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "outrider_plaintext_rejected_total", &[]) >= 1.0,
        "{m}"
    );

    // Still serving the mesh.
    assert_eq!(
        round_trip(mesh.sentences_out_addr(), b"still here").unwrap(),
        b"still here"
    );
}

#[test]
fn switching_the_policy_file_to_strict_applies_without_a_restart() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");
    assert_eq!(round_trip(mesh.age_addr(), b"before").unwrap(), b"before");

    // Atomic replacements: a half-written policy file would be a different configuration
    // (an empty one is PERMISSIVE), which a loaded machine's poll can catch.
    replace_file(&mesh.config().join("policy.yaml"), &policy("STRICT"));
    assert!(
        eventually(Duration::from_secs(10), || is_reset(
            mesh.age_addr(),
            b"after"
        )),
        "plaintext still admitted after the switch to STRICT: {}",
        age.logs()
    );
    assert_eq!(
        round_trip(mesh.sentences_out_addr(), b"mesh").unwrap(),
        b"mesh"
    );

    // A broken edit keeps the last good configuration.
    replace_file(
        &mesh.config().join("policy.yaml"),
        "kind: PeerAuthentication\nspec: { mtls: { mode: STRIKT } }\n",
    );
    assert!(eventually(Duration::from_secs(10), || {
        metric_sum(
            &age.metrics_text(),
            "outrider_config_reloads_total",
            &[("result", "failure")],
        ) >= 1.0
    }));
    assert!(is_reset(mesh.age_addr(), b"still strict"));
    assert_eq!(
        round_trip(mesh.sentences_out_addr(), b"mesh").unwrap(),
        b"mesh"
    );
}

#[test]
fn a_listener_address_in_use_fails_start_up_naming_it() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "PERMISSIVE");
    let _hold = std::net::TcpListener::bind(mesh.age_addr()).unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "run",
            "--config",
            mesh.config().to_str().unwrap(),
            "--workload",
            "age",
        ])
        .args([
            "--cert-dir",
            mesh.pki.dir.path().join("age").to_str().unwrap(),
            "--inbound-ip",
            "127.0.0.1",
        ])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--ready-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&mesh.age_addr().to_string()), "{stderr}");
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    // The server side (age) drains: a transfer through both sidecars survives its SIGTERM,
    // its port refuses new connections meanwhile, and it exits zero by itself.
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "PERMISSIVE");
    let certs = mesh.pki.dir.path().join("age");
    let mut age = Sidecar::start(mesh.config(), "age", &certs, &["--drain-timeout", "30s"]);
    let _sentences = mesh.sidecar("sentences");
    assert_drains(&mut age, mesh.sentences_out_addr(), mesh.age_addr());
}

/// The names of a process's threads (`/proc/<pid>/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn single_threaded_sidecars_without_resumption_carry_mtls() {
    // `--threads 1` runs tokio's current-thread scheduler; `--no-resumption` forces a full
    // handshake on every outbound connection. Both must carry traffic like the defaults.
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "STRICT");
    let certs = |w: &str| mesh.pki.dir.path().join(w);
    let age = Sidecar::start(mesh.config(), "age", &certs("age"), &["--threads", "1"]);
    let sentences = Sidecar::start(
        mesh.config(),
        "sentences",
        &certs("sentences"),
        &["--threads", "1", "--no-resumption"],
    );
    for _ in 0..3 {
        let big = vec![7u8; 300_000];
        assert_eq!(round_trip(mesh.sentences_out_addr(), &big).unwrap(), big);
    }
    // Every outbound connection was a full handshake, and age saw the same.
    let handshakes = |s: &Sidecar, direction: &str, kind: &str| {
        metric_sum(
            &s.metrics_text(),
            "outrider_tls_handshakes_total",
            &[("direction", direction), ("kind", kind)],
        )
    };
    assert_eq!(handshakes(&sentences, "outbound", "full"), 3.0);
    assert_eq!(handshakes(&sentences, "outbound", "resumed"), 0.0);
    assert_eq!(handshakes(&age, "inbound", "full"), 3.0);
    assert_eq!(handshakes(&age, "inbound", "resumed"), 0.0);
    // One runtime thread: the current-thread scheduler runs on the main thread (`outrider`),
    // and tokio's only other threads are the blocking pool's (`tokio-rt-worker`, here one
    // that read the certificate files). A multi-thread runtime, even with one worker, has a
    // worker thread beside that one.
    for s in [&age, &sentences] {
        let names = thread_names(s.child.id());
        let tokio = names.iter().filter(|n| n.starts_with("tokio")).count();
        assert!(
            tokio <= 1,
            "more than the blocking pool's thread: {names:?}"
        );
    }
}
