//! The L7 engine on inbound HTTP ports, with real sidecar processes, curl, and a Python
//! grpcio client: HTTP/1.1 and HTTP/2 requests reach the app with `x-forwarded-client-cert`,
//! are counted in Istio's request metrics, an app that is down answers Envoy's `503` + `UF`,
//! non-HTTP bytes are closed and counted, `Connection: Upgrade` becomes a tunnel, a large body
//! streams through without growing the sidecar.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outrider::proxy::http::flags::CONNECT_FAILURE_BODY;
use outrider::proxy::http::xfcc::ClientCert;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::common::ca::python_grpc_available;
use crate::common::{
    eventually, free_port, http_get, metric_sum, temp_dir, tool_available, App, Mesh,
};

const SENTENCES: &str = "spiffe://cluster.local/ns/default/sa/sentences";
const AGE: &str = "spiffe://cluster.local/ns/default/sa/age";

/// An HTTP/1.1 app that answers every request of a keep-alive connection with what it saw:
/// `xfcc=<header or ->`, `host=<Host>`, `bytes=<body length>` (`GET /slow...` after 400 ms). A `Connection: Upgrade`
/// request is answered `101`, a `CONNECT` `200`, and the connection then echoes raw bytes.
fn mirror_app() -> App {
    App::spawn(mirror)
}

fn mirror(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut xfcc, mut host, mut length, mut chunked, mut upgrade, mut close) =
            (None, String::new(), 0u64, false, None, false);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap();
            let value = value.trim().to_string();
            match name.to_ascii_lowercase().as_str() {
                "x-forwarded-client-cert" => xfcc = Some(value),
                "host" => host = value,
                "content-length" => length = value.parse().unwrap(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "upgrade" => upgrade = Some(value),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let connect = line.starts_with("CONNECT ");
        if upgrade.is_some() || connect {
            if let Some(protocol) = upgrade {
                write!(out, "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n").unwrap();
            } else {
                write!(out, "HTTP/1.1 200 Connection established\r\n\r\n").unwrap();
            }
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let bytes = if chunked {
            read_chunked(&mut reader)
        } else {
            std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink()).unwrap()
        };
        if line.starts_with("GET /slow") {
            std::thread::sleep(Duration::from_millis(400));
        }
        let body = format!(
            "xfcc={}\nhost={host}\nbytes={bytes}\n",
            xfcc.as_deref().unwrap_or("-")
        );
        // One write: a response in several small segments would wait on Nagle + delayed ACK.
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> u64 {
    let mut total = 0;
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let size = u64::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
        if size == 0 {
            let mut end = String::new();
            while reader.read_line(&mut end).unwrap() > 2 {
                end.clear();
            }
            return total;
        }
        total += std::io::copy(&mut reader.take(size), &mut std::io::sink()).unwrap();
        let mut crlf = String::new();
        reader.read_line(&mut crlf).unwrap();
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The XFCC element the server sidecar must add for the client `sentences`.
fn expected_xfcc(mesh: &Mesh) -> String {
    let pem = std::fs::read(mesh.pki.dir.path().join("sentences/cert-chain.pem")).unwrap();
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let hash = ClientCert::from_leaf(&leaf).hash;
    format!("By={AGE};Hash={hash};Subject=\"\";URI={SENTENCES}")
}

#[test]
fn curl_http1_and_h2_reach_the_app_with_xfcc_and_are_counted() {
    if !tool_available("curl") {
        return;
    }
    let app = mirror_app();
    let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");
    let through = format!("http://{}/hello?x=1", mesh.sentences_out_addr());
    let want = format!(
        "xfcc={}\nhost=age.default:9080\nbytes=0\n",
        expected_xfcc(&mesh)
    );

    // HTTP/1.1 and HTTP/2 (prior knowledge) from the app, over mTLS between the sidecars.
    let h1 = curl(&["-H", "Host: age.default:9080", &through]);
    assert_eq!(h1, want);
    let h2 = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: age.default:9080",
        &through,
    ]);
    assert_eq!(h2, want);

    // A plaintext client (PERMISSIVE) cannot forge the header: it is removed.
    let direct = format!("http://{}/", mesh.age_addr());
    let forged = curl(&[
        "-H",
        "x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/admin",
        "-H",
        "Host: age.default:9080",
        &direct,
    ]);
    assert_eq!(forged, "xfcc=-\nhost=age.default:9080\nbytes=0\n");

    let m = age.metrics_text();
    let mtls = [
        ("reporter", "destination"),
        ("source_principal", SENTENCES),
        ("destination_principal", AGE),
        ("destination_workload", "age"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
        ("grpc_response_status", ""),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(metric_sum(&m, "istio_requests_total", &mtls), 2.0, "{m}");
    assert_eq!(
        metric_sum(
            &m,
            "istio_request_duration_milliseconds_count",
            &[("connection_security_policy", "mutual_tls")]
        ),
        2.0,
        "{m}"
    );
    assert!(
        m.contains("istio_request_bytes_bucket{") && m.contains("le=\"3600000\""),
        "{m}"
    );
    assert!(m.contains("istio_response_bytes_sum{"), "{m}");
    assert_eq!(
        metric_sum(
            &m,
            "istio_requests_total",
            &[
                ("connection_security_policy", "none"),
                ("source_principal", "unknown")
            ]
        ),
        1.0,
        "{m}"
    );
    // The TCP connections underneath still count.
    assert!(
        metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[("connection_security_policy", "mutual_tls")]
        ) >= 1.0,
        "{m}"
    );
    // One access-log line per request.
    let logs = age.logs();
    let lines = logs
        .lines()
        .filter(|l| l.contains("access") && l.contains("/hello?x=1"))
        .count();
    assert_eq!(lines, 2, "{logs}");
}

#[test]
fn an_app_that_is_down_answers_envoys_503_with_uf() {
    let mesh = Mesh::new(free_port(), "HTTP", "PERMISSIVE");
    let age = crate::common::Sidecar::start(
        mesh.config(),
        "age",
        &mesh.pki.dir.path().join("age"),
        &["--detect-timeout", "300ms", "--log-json"],
    );
    let (status, body) = http_get(mesh.age_addr(), "/down?x=1").unwrap();
    assert_eq!((status, body.as_str()), (503, CONNECT_FAILURE_BODY));
    let m = age.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "UF")]
        ),
        1.0,
        "{m}"
    );
    // One JSON access-log line for the request.
    let logs = age.logs();
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 1, "{logs}");
    let f = &access[0]["fields"];
    assert_eq!(
        (
            &f["method"],
            &f["path"],
            &f["status"],
            &f["flags"],
            &f["peer_principal"]
        ),
        (
            &serde_json::json!("GET"),
            &serde_json::json!("/down?x=1"),
            &serde_json::json!(503),
            &serde_json::json!("UF"),
            &serde_json::json!("unknown")
        ),
        "{logs}"
    );
    assert!(
        f["duration_ms"].is_u64() && f["response_bytes"].as_u64() > Some(0),
        "{logs}"
    );
}

/// Reads until EOF or error; true when the peer closed (never a hang: bounded by a timeout).
fn closed_by_peer(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[test]
fn non_http_bytes_on_an_http_port_are_closed_and_counted() {
    let app = mirror_app();
    let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let sentences = mesh.sidecar("sentences");
    for addr in [mesh.age_addr(), mesh.sentences_out_addr()] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"\x00\x01\x02 not http at all\r\n\r\n")
            .unwrap();
        assert!(closed_by_peer(s), "{addr} left a non-HTTP client hanging");
    }
    let m = age.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "outrider_inbound_rejected_total",
            &[("reason", "not_http")]
        ),
        1.0,
        "{m}"
    );
    // The app's own garbage to an HTTP destination stops at its sidecar.
    let m = sentences.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "outrider_outbound_rejected_total",
            &[("reason", "not_http")]
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn connection_upgrade_and_connect_become_raw_tunnels_to_the_app() {
    let app = mirror_app();
    let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
    let _age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");
    let upgrade: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: age\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    let connect: &[u8] = b"CONNECT age.default:9080 HTTP/1.1\r\nHost: age.default:9080\r\n\r\n";
    for (request, status_line, header) in [
        (upgrade, "HTTP/1.1 101", Some("upgrade: echo")),
        (connect, "HTTP/1.1 200", None),
    ] {
        let mut s = TcpStream::connect(mesh.sentences_out_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with(status_line), "{status}");
        let mut seen = false;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            seen |= header.is_some_and(|want| h.to_ascii_lowercase().starts_with(want));
        }
        assert_eq!(
            seen,
            header.is_some(),
            "the app's Upgrade header reached the client"
        );
        for msg in ["ping", "not HTTP any more \x00\x01"] {
            s.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            reader.read_exact(&mut back).unwrap();
            assert_eq!(back, msg.as_bytes());
        }
    }
}

/// Peak resident memory of a process, from /proc (Linux).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_64_mib_body_streams_through_both_sidecars_without_being_buffered() {
    const SIZE: u64 = 64 << 20;
    let app = mirror_app();
    let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let sentences = mesh.sidecar("sentences");
    let mut s = TcpStream::connect(mesh.sentences_out_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: age\r\nContent-Length: {SIZE}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    for _ in 0..SIZE / chunk.len() as u64 {
        s.write_all(&chunk).unwrap();
    }
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains(&format!("bytes={SIZE}\n")), "{body}");
    // Neither sidecar held the body: their peak RSS stays far below its size.
    for (name, sidecar) in [("age", &age), ("sentences", &sentences)] {
        if let Some(peak) = peak_rss_kib(sidecar.child.id()) {
            eprintln!("{name}: peak RSS {peak} KiB after a {SIZE}-byte body");
            assert!(
                peak < 48 * 1024,
                "{name} peaked at {peak} KiB for a {SIZE}-byte body"
            );
        }
    }
    let m = age.metrics_text();
    assert!(
        metric_sum(&m, "istio_request_bytes_sum", &[("response_code", "200")]) >= SIZE as f64,
        "{m}"
    );
}

/// A gRPC server (Python grpcio, generic handlers: no generated code) with two methods:
/// `Say` echoes, `Fail` answers NOT_FOUND.
const GRPC_SERVER: &str = r#"
import sys, grpc
from concurrent import futures
def say(request, context):
    return request
def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
handler = grpc.method_handlers_generic_handler("outrider.test.Echo", {
    "Say": grpc.unary_unary_rpc_method_handler(say),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
"#;

const GRPC_CLIENT: &str = r#"
import sys, grpc
channel = grpc.insecure_channel(sys.argv[1])
say = channel.unary_unary("/outrider.test.Echo/Say")
assert say(b"hello through the mesh", timeout=10) == b"hello through the mesh"
fail = channel.unary_unary("/outrider.test.Echo/Fail")
try:
    fail(b"x", timeout=10)
    sys.exit("Fail did not fail")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
print("ok")
"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_grpcio_client_through_the_mesh_is_counted_as_grpc_with_its_status() {
    if !python_grpc_available() {
        return;
    }
    let dir = temp_dir("l7-grpc");
    std::fs::write(dir.path().join("server.py"), GRPC_SERVER).unwrap();
    std::fs::write(dir.path().join("client.py"), GRPC_CLIENT).unwrap();
    let app_port = free_port();
    let mut server = Killed(
        Command::new("python3")
            .arg(dir.path().join("server.py"))
            .arg(app_port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(server.0.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let mesh = Mesh::new(app_port, "GRPC", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let _sentences = mesh.sidecar("sentences");
    let out = crate::common::bounded_output(
        Command::new("python3")
            .arg(dir.path().join("client.py"))
            .arg(mesh.sentences_out_addr().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        "grpc client",
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let counted = |status: &str| {
        let m = age.metrics_text();
        metric_sum(
            &m,
            "istio_requests_total",
            &[
                ("request_protocol", "grpc"),
                ("response_code", "200"),
                ("grpc_response_status", status),
                ("connection_security_policy", "mutual_tls"),
            ],
        )
    };
    // The response (and its count) ends with the trailers, just after the client has them.
    assert!(
        eventually(Duration::from_secs(5), || counted("0") == 1.0
            && counted("5") == 1.0),
        "{}",
        age.metrics_text()
    );
}

#[test]
fn an_app_that_resets_is_flagged_uc_before_and_during_the_response() {
    // Closes every connection after the request headers, answering nothing.
    let silent = App::spawn(|s| {
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 2 {
            line.clear();
        }
    });
    let mesh = Mesh::new(silent.port, "HTTP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let (status, body) = http_get(mesh.age_addr(), "/").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (503, outrider::proxy::http::flags::RESET_BODY)
    );

    // Promises 1000 bytes, sends 7, closes.
    let truncating = App::spawn(|mut s| {
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 2 {
            line.clear();
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial");
    });
    let mesh2 = Mesh::new(truncating.port, "HTTP", "PERMISSIVE");
    let age2 = mesh2.sidecar("age");
    let mut s = TcpStream::connect(mesh2.age_addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: age\r\n\r\n").unwrap();
    assert!(
        closed_by_peer(s),
        "a truncated response must close the client's connection"
    );

    let flagged = |sidecar: &crate::common::Sidecar, code: &str| {
        metric_sum(
            &sidecar.metrics_text(),
            "istio_requests_total",
            &[("response_code", code), ("response_flags", "UC")],
        )
    };
    assert_eq!(flagged(&age, "503"), 1.0, "{}", age.metrics_text());
    assert!(
        eventually(Duration::from_secs(5), || flagged(&age2, "200") == 1.0),
        "{}",
        age2.metrics_text()
    );
}

/// One request on a new connection (`Connection: close`), as apps that do not keep
/// connections alive send them: (status, body).
fn request_on_new_connection(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: age.default:9080\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn connection_per_request_apps_ride_the_pooled_http2_connection_between_sidecars() {
    const REQUESTS: usize = 500;
    let app = mirror_app();
    let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let sentences = mesh.sidecar("sentences");
    let want = format!(
        "xfcc={}\nhost=age.default:9080\nbytes=0\n",
        expected_xfcc(&mesh)
    );
    for i in 0..REQUESTS {
        let (status, body) =
            request_on_new_connection(mesh.sentences_out_addr(), &format!("/n/{i}"));
        assert_eq!((status, body.as_str()), (200, want.as_str()), "request {i}");
    }
    let to_age = [
        ("reporter", "source"),
        ("destination_service", "age.default.svc.cluster.local"),
    ];
    let m = sentences.metrics_text();
    let opened = metric_sum(&m, "istio_tcp_connections_opened_total", &to_age);
    assert!(
        (1.0..=4.0).contains(&opened),
        "{REQUESTS} app connections opened {opened} connections between the sidecars (pool size 4): {m}"
    );
    assert!(
        metric_sum(
            &m,
            "outrider_tls_handshakes_total",
            &[("direction", "outbound")]
        ) <= 4.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("response_code", "200"),
                ("destination_principal", AGE),
                ("source_principal", SENTENCES),
                ("connection_security_policy", "unknown"),
            ]
        ),
        REQUESTS as f64,
        "{m}"
    );
    // The server sidecar saw the same few mTLS connections and every request.
    let a = age.metrics_text();
    let mtls = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        metric_sum(&a, "istio_tcp_connections_opened_total", &mtls),
        opened,
        "{a}"
    );
    assert_eq!(
        metric_sum(&a, "istio_requests_total", &mtls),
        REQUESTS as f64,
        "{a}"
    );
}

#[test]
fn a_peer_without_pooled_http2_gets_dedicated_connections_until_it_speaks_it() {
    let app = mirror_app();
    let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
    // The server sidecar reads a configuration where the port is TCP (an older or non-HTTP
    // peer): it offers no pooled HTTP/2 and moves bytes.
    let server_config = temp_dir("l7-legacy");
    let yaml = std::fs::read_to_string(mesh.config().join("mesh.yaml")).unwrap();
    let tcp_port = format!(
        "name: tcp, port: {}, targetPort: {}, protocol: TCP",
        mesh.age_in, app.port
    );
    let yaml = yaml.replace(
        &format!(
            "name: tcp, port: {}, targetPort: {}, protocol: HTTP",
            mesh.age_in, app.port
        ),
        &tcp_port,
    );
    assert!(yaml.contains(&tcp_port));
    std::fs::write(server_config.path().join("mesh.yaml"), yaml).unwrap();
    std::fs::copy(
        mesh.config().join("policy.yaml"),
        server_config.path().join("policy.yaml"),
    )
    .unwrap();
    let age = crate::common::Sidecar::start(
        server_config.path(),
        "age",
        &mesh.pki.dir.path().join("age"),
        &["--detect-timeout", "300ms"],
    );
    let sentences = crate::common::Sidecar::start(
        mesh.config(),
        "sentences",
        &mesh.pki.dir.path().join("sentences"),
        &["--h2-idle-timeout", "3s"],
    );
    for i in 0..3 {
        let (status, body) =
            request_on_new_connection(mesh.sentences_out_addr(), &format!("/l/{i}"));
        // Bytes moved at L4 on the server side: no XFCC.
        assert_eq!(
            (status, body.as_str()),
            (200, "xfcc=-\nhost=age.default:9080\nbytes=0\n")
        );
    }
    let m = sentences.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")]
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "istio_requests_total",
            &[("reporter", "source"), ("response_code", "200")]
        ),
        3.0,
        "{m}"
    );
    let a = age.metrics_text();
    assert_eq!(
        metric_sum(
            &a,
            "istio_tcp_connections_opened_total",
            &[("connection_security_policy", "mutual_tls")]
        ),
        3.0,
        "{a}"
    );

    // The server's port becomes HTTP (a reload); after one idle timeout the client asks again
    // and its requests ride one pooled connection from then on.
    let http_port = tcp_port.replace("protocol: TCP", "protocol: HTTP");
    crate::common::replace_file(
        &server_config.path().join("mesh.yaml"),
        &std::fs::read_to_string(server_config.path().join("mesh.yaml"))
            .unwrap()
            .replace(&tcp_port, &http_port),
    );
    let opened = || {
        metric_sum(
            &sentences.metrics_text(),
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")],
        )
    };
    // Generous: the reload, then an idle timeout, on a machine that may be busy.
    let pooled = eventually(Duration::from_secs(30), || {
        let before = opened();
        let (_, body) = request_on_new_connection(mesh.sentences_out_addr(), "/probe");
        let (_, again) = request_on_new_connection(mesh.sentences_out_addr(), "/probe");
        body.starts_with("xfcc=By=") && again.starts_with("xfcc=By=") && opened() == before + 1.0
    });
    assert!(pooled, "{}", sentences.metrics_text());
    let before = opened();
    for i in 0..5 {
        let (status, body) =
            request_on_new_connection(mesh.sentences_out_addr(), &format!("/p/{i}"));
        assert_eq!(status, 200);
        assert!(body.starts_with("xfcc=By="), "{body}");
    }
    assert_eq!(opened(), before, "{}", sentences.metrics_text());
}

#[test]
fn a_draining_server_sidecar_sends_goaway_instead_of_waiting_for_its_pooled_peer() {
    let app = mirror_app();
    let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
    let mut age = crate::common::Sidecar::start(
        mesh.config(),
        "age",
        &mesh.pki.dir.path().join("age"),
        &["--detect-timeout", "300ms", "--drain-timeout", "60s"],
    );
    let sentences = mesh.sidecar("sentences");
    for i in 0..3 {
        let (status, _) = request_on_new_connection(mesh.sentences_out_addr(), &format!("/d/{i}"));
        assert_eq!(status, 200);
    }
    // The pooled connection stays open (PINGs keep it alive); a drain closes it with GOAWAY
    // rather than waiting for the drain deadline.
    let _ = Command::new("kill")
        .args(["-TERM", &age.child.id().to_string()])
        .status();
    let exited = eventually(Duration::from_secs(30), || {
        age.child.try_wait().unwrap().is_some()
    });
    assert!(exited, "age still draining: {}", age.logs());
    let logs = age.logs();
    assert!(!logs.contains("drain deadline passed"), "{logs}");
    // The client sidecar noticed: the next request tries a new connection, which is refused.
    let (status, body) = request_on_new_connection(mesh.sentences_out_addr(), "/after");
    assert_eq!(
        (status, body.as_str()),
        (503, CONNECT_FAILURE_BODY),
        "{}",
        sentences.logs()
    );
    let m = sentences.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "istio_requests_total",
            &[("reporter", "source"), ("response_flags", "UF")]
        ),
        1.0,
        "{m}"
    );
}

#[test]
fn a_client_with_a_mesh_certificate_gets_http2_by_alpn_on_a_strict_http_port() {
    if !tool_available("curl") {
        return;
    }
    let app = mirror_app();
    let mesh = Mesh::new(app.port, "HTTP", "STRICT");
    let _age = mesh.sidecar("age");
    let client = mesh.pki.dir.path().join("sentences");
    let url = format!("https://age:{}/alpn", mesh.age_in);
    let resolve = format!("age:{}:127.0.0.1", mesh.age_in);
    let tls = |extra: &[&str]| {
        let mut args = vec![
            "--resolve",
            &resolve,
            "--cacert",
            client.join("root-cert.pem").to_str().unwrap(),
            "--cert",
            client.join("cert-chain.pem").to_str().unwrap(),
            "--key",
            client.join("key.pem").to_str().unwrap(),
            "-w",
            "version=%{http_version}\n",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(url.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    };
    let want = format!(
        "xfcc={}\nhost=age:{}\nbytes=0\n",
        expected_xfcc(&mesh),
        mesh.age_in
    );
    assert_eq!(tls(&["--http2"]), format!("{want}version=2\n"));
    assert_eq!(tls(&["--http1.1"]), format!("{want}version=1.1\n"));
}

#[test]
fn the_pool_opens_a_connection_per_stream_limit_up_to_its_cap() {
    let app = mirror_app();
    let mesh = Mesh::new(app.port, "HTTP", "PERMISSIVE");
    let _age = mesh.sidecar("age");
    let sentences = crate::common::Sidecar::start(
        mesh.config(),
        "sentences",
        &mesh.pki.dir.path().join("sentences"),
        &["--h2-max-streams", "1", "--h2-max-connections", "2"],
    );
    // Four slow requests at once: one stream per connection, two connections at most (the
    // other two requests wait on them).
    let out = mesh.sentences_out_addr();
    let clients: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || request_on_new_connection(out, &format!("/slow/{i}"))))
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap().0, 200);
    }
    let m = sentences.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "istio_requests_total", &[("response_code", "200")]),
        4.0,
        "{m}"
    );
}

#[test]
fn the_pool_keeps_secure_naming_a_squatter_with_another_identity_gets_no_request() {
    let app = crate::common::Untouched::new();
    let mesh = Mesh::new(app.port(), "HTTP", "STRICT");
    let impostor_certs = mesh.pki.issue("impostor", "default", "impostor");
    let impostor_config = temp_dir("l7-impostor");
    std::fs::write(
        impostor_config.path().join("mesh.yaml"),
        crate::secure_naming::impostor_yaml(mesh.age_in, app.port()),
    )
    .unwrap();
    let impostor =
        crate::common::Sidecar::start(impostor_config.path(), "impostor", &impostor_certs, &[]);
    let sentences = mesh.sidecar("sentences");
    // The app gets Envoy's answer for an upstream it could not connect to; nothing reached
    // the squatter's app.
    let (status, body) = request_on_new_connection(mesh.sentences_out_addr(), "/secret");
    assert_eq!((status, body.as_str()), (503, CONNECT_FAILURE_BODY));
    crate::secure_naming::assert_mismatch_counted(&sentences, &impostor);
    app.assert_no_connection();
}
