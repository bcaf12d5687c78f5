//! Transparent capture end to end: "pods" in network namespaces on one bridge, each app
//! unchanged (bound on 0.0.0.0, calling other pods by IP), `outrider iptables` in the pod and
//! `outrider run --capture` beside the app as UID 1337, as Istio's init container and sidecar.
//!
//! Pod 0 runs a client, pod 1 the `age` app (8080, declared HTTP) and an undeclared server
//! (9000), pod 2 has no sidecar: the intruder, and a server outside the mesh (9999).
//!
//! Root, `ip`, the iptables tools, `setpriv` and `curl` are needed; without them the test
//! skips with a printed reason, unless `OUTRIDER_REQUIRE_TOOLS=1` (CI), where it fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::netns::{netns_prerequisites, Killed, Lan, Netns};
use crate::common::{metric_sum, replace_file, temp_dir, tool_available, Pki, BIN};

const AS_PROXY: [&str; 6] = [
    "setpriv",
    "--reuid",
    "1337",
    "--regid",
    "1337",
    "--clear-groups",
];

fn config(client: &str, age: &str, strict: bool) -> String {
    let (mode, outbound) = if strict {
        ("STRICT", "REGISTRY_ONLY")
    } else {
        ("PERMISSIVE", "ALLOW_ANY")
    };
    format!(
        "\
apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec: {{ outboundTrafficPolicy: {{ mode: {outbound} }} }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: client, namespace: default, labels: {{ app: client }} }}
spec:
  serviceAccount: client
  address: {client}
  capture: true
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: age, namespace: default, labels: {{ app: age, version: v1 }} }}
spec:
  serviceAccount: age
  address: {age}
  capture: true
  ports:
  - {{ name: http, port: 8080, protocol: HTTP }}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{ name: default, namespace: istio-system }}
spec: {{ mtls: {{ mode: {mode} }} }}
"
    )
}

/// Holds one plaintext HTTP/1.1 connection to `<ip>:8080`: one request, then (after a line
/// on stdin) another; prints `first <status line>`, then `second closed` or `second answered`.
const HOLD_OPEN: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), timeout=5)
req = b"GET / HTTP/1.1\r\nHost: age\r\n\r\n"
s.sendall(req)
print("first", s.recv(65536).split(b"\r\n")[0].decode(), flush=True)
sys.stdin.readline()
try:
    s.sendall(req)
    while True:
        data = s.recv(65536)
        if not data:
            break
        if b"HTTP/1.1 " in data:
            print("second answered", flush=True)
            sys.exit(0)
except OSError:
    pass
print("second closed", flush=True)
"#;

/// Makes `path` and everything under it owned by the proxy's UID/GID (the sidecar runs as
/// 1337 and reads its certificates and configuration).
fn give_to_proxy(path: &Path) {
    std::os::unix::fs::chown(path, Some(1337), Some(1337)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            give_to_proxy(&entry.unwrap().path());
        }
    }
}

/// A captured sidecar in `pod`, once ready (polled inside the namespace).
fn captured_sidecar(
    pod: &Netns,
    config: &Path,
    workload: &str,
    certs: &Path,
    log: PathBuf,
) -> Killed {
    let mut args = AS_PROXY.to_vec();
    let (config, certs) = (config.to_str().unwrap(), certs.to_str().unwrap());
    args.extend_from_slice(&[
        BIN,
        "run",
        "--config",
        config,
        "--workload",
        workload,
        "--cert-dir",
        certs,
        "--capture",
    ]);
    let mut sidecar = pod.spawn(&args, &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = sidecar.0.try_wait().unwrap() {
            panic!(
                "sidecar {workload} exited {status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let (_, status, _, _) = pod.curl(&[], "http://127.0.0.1:15021/healthz/ready");
        if status == "200" {
            return sidecar;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar {workload} never became ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sidecar's metrics, scraped inside its namespace.
fn metrics(pod: &Netns) -> String {
    let (_, status, body, err) = pod.curl(&[], "http://127.0.0.1:15090/stats/prometheus");
    assert_eq!(status, "200", "{err}");
    body
}

/// Waits (bounded) until `f` holds, then says whether it did.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    f()
}

#[test]
fn two_captured_pods_talk_over_mtls_and_strict_resets_the_intruder() {
    if !netns_prerequisites() || !tool_available("setpriv") || !tool_available("curl") {
        return;
    }
    let lan = Lan::new(78, 3);
    let (client, age, outside) = (&lan.pods[0], &lan.pods[1], &lan.pods[2]);
    let (client_ip, age_ip, outside_ip) = (lan.ip(0), lan.ip(1), lan.ip(2));

    let work = temp_dir("capture-mesh");
    let dir = work.path();
    let pki = Pki::new();
    // The sidecars (UID 1337) must reach their files through the test's private dirs.
    for d in [dir, pki.dir.path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let client_certs = pki.issue("client", "default", "client");
    let age_certs = pki.issue("age", "default", "age");
    give_to_proxy(&client_certs);
    give_to_proxy(&age_certs);
    let config_dir = dir.join("mesh");
    std::fs::create_dir(&config_dir).unwrap();
    let mesh_file = config_dir.join("mesh.yaml");
    std::fs::write(&mesh_file, config(&client_ip, &age_ip, false)).unwrap();
    give_to_proxy(&config_dir);

    // Apps, unchanged: listening on 0.0.0.0 on their real ports.
    let _age_app = age.spawn(
        &[
            BIN,
            "sample-app",
            "--service",
            "age",
            "--listen",
            "0.0.0.0:8080",
        ],
        &dir.join("age-app.log"),
    );
    let _age_other = age.spawn(
        &[BIN, "capture-echo", "--listen", "0.0.0.0:9000"],
        &dir.join("age-echo.log"),
    );
    let _external = outside.spawn(
        &[BIN, "capture-echo", "--listen", "0.0.0.0:9999"],
        &dir.join("external.log"),
    );
    // The init step, then the sidecars.
    for pod in [client, age] {
        let out = pod.outrider(&["iptables"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _client_sidecar = captured_sidecar(
        client,
        &config_dir,
        "client",
        &client_certs,
        dir.join("client-sidecar.log"),
    );
    let _age_sidecar = captured_sidecar(
        age,
        &config_dir,
        "age",
        &age_certs,
        dir.join("age-sidecar.log"),
    );
    let logs = || {
        ["client-sidecar.log", "age-sidecar.log"]
            .iter()
            .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let age_url = format!("http://{age_ip}:8080/");
    // The apps may still be starting: the first answer is waited for.
    let answered = within(Duration::from_secs(10), || {
        client.curl(&[], &age_url).1 == "200"
    });
    assert!(
        answered,
        "client -> age never answered: {:?}\n{}",
        client.curl(&[], &age_url),
        logs()
    );

    // Through both sidecars over mTLS: the destination reports pod A's principal.
    let (code, status, body, err) = client.curl(&[], &age_url);
    assert_eq!((code, status.as_str()), (0, "200"), "{err}\n{}", logs());
    assert!(!body.trim().is_empty(), "age answered nothing");
    let dest = metrics(age);
    let mtls = metric_sum(
        &dest,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/client",
            ),
            ("destination_service", "age.default.svc.cluster.local"),
        ],
    );
    assert!(
        mtls >= 1.0,
        "no mutual_tls request from the client:\n{dest}"
    );
    let source = metrics(client);
    let routed = metric_sum(
        &source,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", "age.default.svc.cluster.local"),
        ],
    );
    assert!(
        routed >= 1.0,
        "the client's sidecar did not route to age:\n{source}"
    );

    // The intruder (no sidecar) under PERMISSIVE: answered, reported as plaintext.
    let (code, status, _, err) = outside.curl(&[], &age_url);
    assert_eq!((code, status.as_str()), (0, "200"), "{err}");
    let plain = metric_sum(
        &metrics(age),
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "none"),
        ],
    );
    assert!(
        plain >= 1.0,
        "the intruder's request was not reported as plaintext"
    );

    // A port age does not declare: forwarded to the app on that same port.
    let (code, status, body, err) = outside.curl(&[], &format!("http://{age_ip}:9000/"));
    assert_eq!((code, status.as_str()), (0, "200"), "{err}");
    assert!(
        body.starts_with("local=127.0.0.1:9000 "),
        "undeclared port not forwarded to the app's port: {body}"
    );

    // Outside the registry under ALLOW_ANY: passed through to where it was going (the
    // sidecar's own connection is not captured again, or this would loop back).
    let external = format!("http://{outside_ip}:9999/");
    let (code, status, body, err) = client.curl(&[], &external);
    assert_eq!((code, status.as_str()), (0, "200"), "{err}\n{}", logs());
    assert!(
        body.starts_with(&format!("local={outside_ip}:9999 ")),
        "{body}"
    );
    assert!(
        body.contains(&format!("peer={client_ip}:")),
        "the passthrough did not come from the client pod: {body}"
    );
    let passthrough = metric_sum(
        &metrics(client),
        "istio_tcp_connections_opened_total",
        &[("destination_service", "PassthroughCluster")],
    );
    assert!(
        passthrough >= 1.0,
        "no PassthroughCluster connection counted"
    );
    // Straight to the capture port (not redirected): refused, never looped to itself.
    let (code, _, _, _) = client.curl(&AS_PROXY, "http://127.0.0.1:15001/");
    assert_ne!(code, 0, "a connection straight to 15001 was served");
    let refused = metric_sum(
        &metrics(client),
        "outrider_outbound_rejected_total",
        &[("reason", "not_redirected")],
    );
    assert!(
        refused >= 1.0,
        "the direct connection was not counted as not_redirected"
    );

    // A plaintext keep-alive connection the intruder holds open across the reload.
    let script = dir.join("hold.py");
    std::fs::write(&script, HOLD_OPEN).unwrap();
    let mut held = outside
        .command(&["python3", script.to_str().unwrap(), &age_ip])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut held_out = std::io::BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut held_out, &mut line).unwrap();
    assert!(line.starts_with("first HTTP/1.1 200"), "{line}");
    let mut held = Killed(held);

    // STRICT and REGISTRY_ONLY, by a reload.
    replace_file(&mesh_file, &config(&client_ip, &age_ip, true));
    give_to_proxy(&mesh_file);
    let reset = within(Duration::from_secs(15), || {
        let (code, _, _, err) = outside.curl(&[], &age_url);
        code == 56 && err.contains("reset")
    });
    assert!(
        reset,
        "the intruder was not reset under STRICT: {:?}",
        outside.curl(&[], &age_url)
    );
    // The connection open since PERMISSIVE is closed by the reload, not served on.
    let closed = within(Duration::from_secs(10), || {
        metric_sum(
            &metrics(age),
            "outrider_connections_closed_on_reload_total",
            &[("reason", "refused_by_mode")],
        ) >= 1.0
    });
    assert!(
        closed,
        "the open plaintext connection was not closed:\n{}",
        logs()
    );
    std::io::Write::write_all(held.0.stdin.as_mut().unwrap(), b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut held_out, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "second closed",
        "the held connection was served after STRICT"
    );
    drop(held);
    // Undeclared ports follow the workload-level mode: reset too.
    let (code, _, _, err) = outside.curl(&[], &format!("http://{age_ip}:9000/"));
    assert_eq!(code, 56, "undeclared port under STRICT: {err}");
    // The mesh still works.
    let (code, status, _, err) = client.curl(&[], &age_url);
    assert_eq!((code, status.as_str()), (0, "200"), "{err}\n{}", logs());
    // Outside the registry is refused now.
    let blocked = within(Duration::from_secs(15), || {
        client.curl(&[], &external).0 != 0
    });
    assert!(blocked, "REGISTRY_ONLY let the external call through");
    let black_hole = metric_sum(
        &metrics(client),
        "istio_tcp_connections_opened_total",
        &[("destination_service", "BlackHoleCluster")],
    );
    assert!(black_hole >= 1.0, "no BlackHoleCluster connection counted");

    for pod in [client, age] {
        let out = pod.outrider(&["iptables", "--cleanup"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
