//! Reloads act on listeners and on open connections: outbound listeners keep their
//! destination by `bind` whatever the order of entries, added entries and ports start
//! listening, removed ones stop and drain, a move to STRICT closes open plaintext
//! connections, and the inbound and outbound connection caps are separate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    eventually, free_port, metric_sum, policy, round_trip, send_and_close_kind, App, Pki, Sidecar,
};

/// An app that answers every connection with its own port number, then closes: which
/// service a byte reached is visible in the answer.
fn named_app() -> App {
    App::spawn(|mut s| {
        let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
        let _ = s.write_all(port.to_string().as_bytes());
    })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The port number an app at the other end of `bind` answers with.
fn who_answers(bind: SocketAddr) -> std::io::Result<u16> {
    let back = round_trip(bind, b"")?;
    String::from_utf8_lossy(&back)
        .parse()
        .map_err(|_| std::io::Error::other(format!("unexpected answer {back:?}")))
}

const HEADER: &str = r#"apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: { name: mesh }
spec: { trustDomain: cluster.local, rootNamespace: istio-system }
"#;

/// A `client` workload (one inbound port to `client_app`) with the given outbound entries.
fn client_config(inbound: &[(u16, u16)], outbound: &[(u16, u16)]) -> String {
    let mut yaml = format!(
        "{HEADER}---\napiVersion: outrider.dev/v1alpha1\nkind: Workload\nmetadata: {{ name: client, namespace: default }}\nspec:\n  serviceAccount: client\n  address: 127.0.0.1\n"
    );
    if inbound.is_empty() {
        yaml.push_str("  ports: []\n");
    } else {
        yaml.push_str("  ports:\n");
        for (port, target) in inbound {
            yaml.push_str(&format!(
                "    - {{ name: tcp-{port}, port: {port}, targetPort: {target}, protocol: TCP }}\n"
            ));
        }
    }
    if !outbound.is_empty() {
        yaml.push_str("  outbound:\n");
        for (bind, to) in outbound {
            yaml.push_str(&format!(
                "    - {{ bind: \"127.0.0.1:{bind}\", to: \"127.0.0.1:{to}\" }}\n"
            ));
        }
    }
    yaml
}

/// Replaces the configuration file and asks for an immediate reload.
fn rewrite(sidecar: &Sidecar, file: &Path, yaml: &str) {
    let before = reloads(sidecar);
    std::fs::write(file, yaml).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &sidecar.child.id().to_string()])
        .status();
    assert!(
        eventually(Duration::from_secs(10), || reloads(sidecar) > before),
        "the sidecar did not reload: {}",
        sidecar.logs()
    );
}

fn reloads(sidecar: &Sidecar) -> f64 {
    metric_sum(
        &sidecar.metrics_text(),
        "outrider_config_reloads_total",
        &[("result", "success")],
    )
}

#[test]
fn outbound_listeners_keep_their_service_when_entries_are_reordered_inserted_and_removed() {
    let (a, b, c) = (named_app(), named_app(), named_app());
    let (bind_a, bind_b, bind_c) = (free_port(), free_port(), free_port());
    let pki = Pki::new();
    let certs = pki.issue("client", "default", "client");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        client_config(&[], &[(bind_a, a.port), (bind_b, b.port)]),
    )
    .unwrap();
    let sidecar = Sidecar::start(dir.path(), "client", &certs, &[]);
    assert_eq!(who_answers(loopback(bind_a)).unwrap(), a.port);
    assert_eq!(who_answers(loopback(bind_b)).unwrap(), b.port);

    // Traffic on both original binds all along: every answer must come from the service
    // its bind names; once `a` is removed its bind may refuse, never answer for another.
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let traffic: Vec<_> = [(bind_a, a.port), (bind_b, b.port)]
        .into_iter()
        .map(|(bind, expected)| {
            let (stop, wrong, answered) = (stop.clone(), wrong.clone(), answered.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match who_answers(loopback(bind)) {
                        Ok(port) if port == expected => {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => {
                            eprintln!("{bind} reached {other}, expected {expected}");
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();

    // Reorder and insert a new entry in front: the new bind starts listening.
    rewrite(
        &sidecar,
        &file,
        &client_config(&[], &[(bind_c, c.port), (bind_b, b.port), (bind_a, a.port)]),
    );
    // (Looked up by position, the socket of `a` would now carry traffic to `c`.)
    assert_eq!(who_answers(loopback(bind_a)).unwrap(), a.port);
    assert_eq!(who_answers(loopback(bind_b)).unwrap(), b.port);
    assert_eq!(who_answers(loopback(bind_c)).unwrap(), c.port);
    std::thread::sleep(Duration::from_millis(300));

    // Remove the first original entry: its bind stops listening, the others keep their
    // services although their positions moved again.
    rewrite(
        &sidecar,
        &file,
        &client_config(&[], &[(bind_b, b.port), (bind_c, c.port)]),
    );
    assert!(
        eventually(Duration::from_secs(5), || refused(loopback(bind_a))),
        "the removed bind still accepts connections"
    );
    assert_eq!(who_answers(loopback(bind_b)).unwrap(), b.port);
    assert_eq!(who_answers(loopback(bind_c)).unwrap(), c.port);
    std::thread::sleep(Duration::from_millis(300));

    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.join().unwrap();
    }
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "{}", sidecar.logs());
    assert!(answered.load(Ordering::Relaxed) > 10);
    let dump = sidecar.admin("/config_dump");
    assert!(
        dump.contains(&format!("127.0.0.1:{bind_c}"))
            && !dump.contains(&format!("127.0.0.1:{bind_a}\"")),
        "{dump}"
    );
}

#[test]
fn an_inbound_port_added_by_reload_listens_and_a_removed_one_drains_then_closes() {
    let app = App::echo();
    let (kept, added) = (free_port(), free_port());
    let pki = Pki::new();
    let certs = pki.issue("client", "default", "client");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, client_config(&[(kept, app.port)], &[])).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy("PERMISSIVE")).unwrap();
    let sidecar = Sidecar::start(
        dir.path(),
        "client",
        &certs,
        &["--detect-timeout", "200ms", "--drain-timeout", "1s"],
    );
    assert!(refused(loopback(added)));

    rewrite(
        &sidecar,
        &file,
        &client_config(&[(kept, app.port), (added, app.port)], &[]),
    );
    assert_eq!(
        round_trip(loopback(added), b"new port").unwrap(),
        b"new port"
    );

    // A connection open on `kept` when it is removed: refused for new clients at once,
    // the open one closed after the drain timeout (1 s), and counted.
    let mut open = TcpStream::connect(loopback(kept)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    open.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).unwrap();
    rewrite(&sidecar, &file, &client_config(&[(added, app.port)], &[]));
    assert!(refused(loopback(kept)));
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the drained connection was not closed"
    );
    assert!(eventually(Duration::from_secs(5), || {
        metric_sum(
            &sidecar.metrics_text(),
            "outrider_connections_closed_on_reload_total",
            &[
                ("listener", &kept.to_string()),
                ("reason", "listener_removed"),
            ],
        ) == 1.0
    }));
    assert_eq!(round_trip(loopback(added), b"still").unwrap(), b"still");
}

/// The review's case: a plaintext keep-alive client opened under PERMISSIVE keeps talking
/// every 100 ms; after `strict.yaml` is dropped in, its connection is closed within the
/// reload interval (1 s) + 1 s, while a mesh connection carries on.
#[test]
fn strict_closes_open_plaintext_connections_and_keeps_mesh_ones() {
    let app = App::echo();
    let mesh = crate::common::Mesh::new(app.port, "TCP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let sentences = mesh.sidecar("sentences");

    let mut mesh_conn = TcpStream::connect(mesh.sentences_out_addr()).unwrap();
    mesh_conn
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut plain = TcpStream::connect(mesh.age_addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let echo = |s: &mut TcpStream, msg: &[u8]| -> std::io::Result<()> {
        s.write_all(msg)?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)?;
        assert_eq!(back, msg);
        Ok(())
    };
    echo(&mut mesh_conn, b"mesh hello").unwrap();
    echo(&mut plain, b"plain hello").unwrap();

    std::fs::write(mesh.config().join("policy.yaml"), policy("STRICT")).unwrap();
    let written = Instant::now();
    let closed_after = loop {
        if let Err(e) = echo(&mut plain, b"ping") {
            // Closed by the sidecar (reset, or EOF mid-read, or a write into the closed
            // socket), not a read that gave up waiting.
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::BrokenPipe
                ),
                "{e:?}"
            );
            break written.elapsed();
        }
        assert!(
            written.elapsed() < Duration::from_secs(10),
            "the plaintext connection is still open under STRICT: {}",
            age.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Reload interval 1 s + 1 s, with 1 s of slack for a busy CI machine.
    assert!(
        closed_after < Duration::from_secs(3),
        "closed only after {closed_after:?}"
    );
    echo(&mut mesh_conn, b"mesh still here").unwrap();
    let metrics = age.metrics_text();
    assert_eq!(
        metric_sum(
            &metrics,
            "outrider_connections_closed_on_reload_total",
            &[("direction", "inbound"), ("reason", "refused_by_mode")],
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        age.logs()
            .matches("closed open connections that the port's new mode refuses")
            .count(),
        1
    );
    // New plaintext is reset as before; the mesh opens new connections as before.
    assert_eq!(send_and_close_kind(mesh.age_addr(), b"x"), "reset");
    assert_eq!(
        round_trip(mesh.sentences_out_addr(), b"new mesh").unwrap(),
        b"new mesh"
    );
    drop(sentences);
}

/// Holds `n` connections to `addr` that each got through (the echo app answered).
fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let msg = format!("held {i}");
            s.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).unwrap();
            s
        })
        .collect()
}

fn is_refused(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return true;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"one too many");
    let mut buf = [0u8; 32];
    !matches!(s.read(&mut buf), Ok(n) if n > 0)
}

#[test]
fn inbound_and_outbound_connection_caps_are_separate() {
    let app = App::echo();
    let (inbound, bind) = (free_port(), free_port());
    let pki = Pki::new();
    let certs = pki.issue("client", "default", "client");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        client_config(&[(inbound, app.port)], &[(bind, app.port)]),
    )
    .unwrap();
    let sidecar = Sidecar::start(
        dir.path(),
        "client",
        &certs,
        &[
            "--detect-timeout",
            "200ms",
            "--max-connections",
            "10",
            "--max-inbound-connections",
            "2",
            "--max-outbound-connections",
            "3",
        ],
    );
    // An inbound flood at its cap: one more inbound is refused, the app's outbound calls
    // still go through.
    let held_in = hold(loopback(inbound), 2);
    assert!(is_refused(loopback(inbound)));
    let held_out = hold(loopback(bind), 3);
    // And the outbound cap holds too, while inbound (at its own cap) is unaffected by it.
    assert!(is_refused(loopback(bind)));
    drop(held_in);
    assert!(eventually(Duration::from_secs(5), || round_trip(
        loopback(inbound),
        b"freed"
    )
    .is_ok_and(|b| b == b"freed")));
    // Slots come back once the sidecar has seen the held connections close.
    drop(held_out);
    assert!(eventually(Duration::from_secs(5), || round_trip(
        loopback(bind),
        b"out again"
    )
    .is_ok_and(|b| b == b"out again")));
    let metrics = sidecar.metrics_text();
    assert!(
        metric_sum(
            &metrics,
            "outrider_inbound_rejected_total",
            &[("reason", "connection_limit")]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "outrider_outbound_rejected_total",
            &[
                ("bind", &format!("127.0.0.1:{bind}")),
                ("reason", "connection_limit")
            ]
        ) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn boolean_environment_variables_accept_1_and_yes() {
    let app = App::echo();
    let bind = free_port();
    let pki = Pki::new();
    let certs = pki.issue("client", "default", "client");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        client_config(&[], &[(bind, app.port)]),
    )
    .unwrap();
    // Each value on a real start: the sidecar comes up (a refused value would stop it), and
    // OUTRIDER_LOG_JSON's value decides whether the log lines are JSON.
    for (value, json) in [("1", true), ("yes", true), ("0", false), ("no", false)] {
        let mut child = std::process::Command::new(crate::common::BIN)
            .args(["run", "--config", dir.path().to_str().unwrap()])
            .args(["--workload", "client"])
            .args(["--cert-dir", certs.to_str().unwrap()])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--ready-addr", &format!("127.0.0.1:{}", free_port())])
            .env("OUTRIDER_NO_RESUMPTION", value)
            .env("OUTRIDER_LOG_JSON", value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let up = eventually(Duration::from_secs(10), || {
            round_trip(loopback(bind), b"env").is_ok_and(|b| b == b"env")
        });
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(up, "{value}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert_eq!(first.starts_with('{'), json, "{value}: {first}");
    }
}

/// Whether nothing listens at `addr` any more (the connection is refused, not merely failed).
fn refused(addr: std::net::SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}
