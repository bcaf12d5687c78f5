//! The gateway process over time: a changed VirtualService applies without a restart (also to
//! the next request of a connection kept alive across the change), a Gateway server added to
//! the configuration is listened on, and SIGTERM drains: new connections are refused while a
//! request in flight is answered, then the process exits zero on its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{eventually, free_port};
use crate::gateway::{hold_arrived, hold_release, Echo, Edge};

const HOST: &str = "sentences.example.com";

/// A Gateway with one plaintext HTTP server per port for [`HOST`], and a VirtualService
/// sending everything to `dest` (`sentences` or `name`).
fn yaml(edge: &Edge, ports: &[u16], dest: &str) -> String {
    let servers: String = ports
        .iter()
        .map(|p| {
            format!(
                "    - port: {{ number: {p}, name: http-{p}, protocol: HTTP }}\n      hosts: [ \"{HOST}\" ]\n"
            )
        })
        .collect();
    let dest_port = if dest == "name" {
        edge.name_port
    } else {
        edge.sentences_port
    };
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: plain, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
{servers}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: sentences, namespace: default }}
spec:
  hosts: [ "{HOST}" ]
  gateways: [ plain ]
  http:
    - route:
        - destination: {{ host: {dest}, port: {{ number: {dest_port} }} }}
"#
    )
}

/// An HTTP/1.1 connection kept alive across requests.
struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    fn connect(port: u16) -> std::io::Result<KeepAlive> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(40)))?;
        Ok(KeepAlive {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// One GET; `(status, body)`, or the I/O error that ended it.
    fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        write!(self.writer, "GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Which app answered `path` on a new connection to `port` (`None`: no echo answer).
fn app_on_new_connection(port: u16, path: &str) -> Option<String> {
    let (status, body) = KeepAlive::connect(port).ok()?.get(path).ok()?;
    (status == 200).then(|| Echo::parse(&body).map(|e| e.app))?
}

#[test]
fn a_changed_virtual_service_and_a_new_server_apply_without_a_restart() {
    let edge = Edge::new();
    let (port, added) = (free_port(), free_port());
    edge.write("gateway.yaml", &yaml(&edge, &[port], "sentences"));
    let run = edge.start(&[]);

    let mut kept = KeepAlive::connect(port).unwrap();
    let (status, body) = kept.get("/before").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Echo::parse(&body).map(|e| e.app).as_deref(),
        Some("sentences")
    );

    // The VirtualService now sends everything to name.
    edge.write("gateway.yaml", &yaml(&edge, &[port], "name"));
    assert!(
        eventually(Duration::from_secs(20), || app_on_new_connection(
            port, "/probe"
        )
        .as_deref()
            == Some("name")),
        "the changed route never applied: {}",
        run.gateway.logs()
    );
    // The connection kept alive from before the change follows the new plan too.
    let (status, body) = kept.get("/after").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Echo::parse(&body).map(|e| e.app).as_deref(),
        Some("name"),
        "a kept-alive connection still routes by the old plan: {body}"
    );

    // A server added to the Gateway gets its listener.
    edge.write("gateway.yaml", &yaml(&edge, &[port, added], "name"));
    assert!(
        eventually(Duration::from_secs(20), || app_on_new_connection(
            added, "/added"
        )
        .as_deref()
            == Some("name")),
        "the added server's port {added} never answered: {}",
        run.gateway.logs()
    );
    assert_eq!(
        app_on_new_connection(port, "/still").as_deref(),
        Some("name")
    );
}

#[test]
fn sigterm_refuses_new_connections_and_answers_the_request_in_flight() {
    let edge = Edge::new();
    let port = free_port();
    edge.write("gateway.yaml", &yaml(&edge, &[port], "sentences"));
    let mut run = edge.start(&["--drain-timeout", "60s"]);
    let id = format!("drain-{}-{port}", std::process::id());

    let path = format!("/hold/{id}");
    let in_flight = std::thread::spawn(move || KeepAlive::connect(port)?.get(&path));
    assert!(
        eventually(Duration::from_secs(20), || hold_arrived(&id)),
        "the held request never reached the app"
    );
    let pid = run.gateway.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();

    // New connections are refused while the held request keeps the process draining.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let refused = eventually(Duration::from_secs(10), || {
        matches!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    });
    assert!(
        refused,
        "{addr} still accepts after SIGTERM: {}",
        run.gateway.logs()
    );
    assert!(
        run.gateway.child.try_wait().unwrap().is_none(),
        "the gateway exited with a request in flight: {}",
        run.gateway.logs()
    );

    hold_release(&id);
    let (status, body) = in_flight
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the request in flight broke: {e}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Echo::parse(&body).map(|e| e.app).as_deref(),
        Some("sentences")
    );

    // Then the process ends on its own, successfully.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = run.gateway.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit after the drain: {}",
            run.gateway.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", run.gateway.logs());
}
