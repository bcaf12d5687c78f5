//! `outrider gateway` (issue 13) as a real process between real clients and a real mesh: the
//! labs' certificates made with their `openssl` commands verbatim, the gateway Workload
//! (`role: gateway`, `istio-system`, `istio-ingressgateway-service-account`) with its own mesh
//! SVID, `sentences` and `name` workloads behind STRICT sidecars in front of apps that echo
//! the request they got, and `curl` / `openssl s_client` as the clients outside the mesh.
//!
//! This file holds the shared topology ([`Edge`], [`GatewayProc`], [`LabCerts`], the echo
//! apps, curl) and the TLS tests: SIMPLE (the labs' curl), MUTUAL with XFCC, OPTIONAL_MUTUAL,
//! `httpsRedirect`, `minProtocolVersion`, two hosts on one port chosen by SNI. The other areas:
//! `gateway_routes` (VirtualService features), `gateway_reload` (certificates replaced under
//! load, `/certs`), `gateway_edge` (PASSTHROUGH, JWT at the gateway, bad input).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outrider::proxy::http::xfcc::ClientCert;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::common::*;

/// The gateway's mesh identity (the labs' ingress gateway service account).
pub(crate) const GATEWAY_ID: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
pub(crate) const SENTENCES_ID: &str = "spiffe://cluster.local/ns/default/sa/sentences";

// ---------------------------------------------------------------------------------------------
// The labs' certificates

/// The labs' files (`example.com.crt`, `sentences.example.com.*`, `client.example.com.*`,
/// and `other/`: the same commands again, a second root of the same name) as `edge_tls`
/// makes them with the labs' commands verbatim, plus more leaves of the labs' root.
pub(crate) struct LabCerts {
    labs: crate::edge_tls::Labs,
}

/// Runs `cmd` with `sh -c` in `cwd`; fails the test with its stderr unless it succeeded.
pub(crate) fn sh(cwd: &Path, cmd: &str) {
    let child = Command::new("sh")
        .args(["-c", cmd])
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded_output(child, cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl LabCerts {
    /// `None` (the test is skipped, the reason printed) when openssl or curl is missing.
    pub(crate) fn make() -> Option<LabCerts> {
        crate::edge_tls::Labs::make().map(|labs| LabCerts { labs })
    }

    pub(crate) fn dir(&self) -> &Path {
        self.labs.dir.path()
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.labs.path(name)
    }

    /// Another leaf of the labs' root, made the labs' way (so X.509 v1): `<file>.crt` for
    /// `/CN=<cn>/O=ACMEorg` with serial `serial`, with a new key `<file>.key`, or with the
    /// existing key `reuse_key` (a certificate-only replacement).
    pub(crate) fn leaf(&self, file: &str, cn: &str, serial: u32, reuse_key: Option<&str>) {
        let req = match reuse_key {
            None => format!(
                "openssl req -out {file}.csr -newkey rsa:2048 -nodes -keyout {file}.key -subj \"/CN={cn}/O=ACMEorg\""
            ),
            Some(key) => {
                format!("openssl req -new -key {key} -out {file}.csr -subj \"/CN={cn}/O=ACMEorg\"")
            }
        };
        sh(self.dir(), &req);
        sh(
            self.dir(),
            &format!("openssl x509 -req -days 365 -CA example.com.crt -CAkey example.com.key -set_serial {serial} -in {file}.csr -out {file}.crt"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The apps

/// An HTTP/1.1 app (keep-alive) whose `200` body says who it is and what it received:
/// `app=<name>`, the request line, then each header as `name: value` with the name
/// lower-cased. Every response carries `x-app-header: from-app`. `GET /slow...` answers after
/// 3 s (longer than the routes' timeouts); `GET /flaky/...` answers `503` the first time a
/// request line is seen, `200` after; `GET /hold/<id>` waits until the test calls
/// [`hold_release`].
pub(crate) fn echo(stream: TcpStream, app: &str) {
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut body = format!("app={app}\n{}", line.trim_end());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            body.push_str(&format!(
                "\n{}: {}",
                name.to_ascii_lowercase(),
                value.trim()
            ));
        }
        if line.starts_with("GET /slow") {
            std::thread::sleep(Duration::from_secs(3));
        }
        if let Some(path) = line.strip_prefix("GET /hold/") {
            hold(path.split(' ').next().unwrap_or(""));
        }
        body.push('\n');
        let status = if line.starts_with("GET /flaky/") && first_time(&line) {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nx-app-header: from-app\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// `GET /hold/<id>` requests that arrived, and the ids the test released.
static HOLDS: std::sync::Mutex<(Vec<String>, Vec<String>)> =
    std::sync::Mutex::new((Vec::new(), Vec::new()));

/// Marks `id` arrived, then waits (at most 30 s) until the test releases it.
fn hold(id: &str) {
    HOLDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .0
        .push(id.to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if HOLDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .iter()
            .any(|r| r == id)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `GET /hold/<id>` reached an echo app (and is being held there).
pub(crate) fn hold_arrived(id: &str) -> bool {
    HOLDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .0
        .iter()
        .any(|a| a == id)
}

/// Lets the held `GET /hold/<id>` be answered.
pub(crate) fn hold_release(id: &str) {
    HOLDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .1
        .push(id.to_string());
}

/// Whether this request line is seen for the first time (by every echo app of the process:
/// tests make their `/flaky/` paths unique).
fn first_time(line: &str) -> bool {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.iter().any(|l| l == line) {
        return false;
    }
    seen.push(line.to_string());
    true
}

fn echo_sentences(s: TcpStream) {
    echo(s, "sentences")
}

fn echo_name(s: TcpStream) {
    echo(s, "name")
}

/// What the echo app reported.
#[derive(Debug)]
pub(crate) struct Echo {
    pub app: String,
    pub request_line: String,
    pub headers: Vec<(String, String)>,
}

impl Echo {
    /// Parses an echo body; `None` when `body` is not one (the gateway answered itself).
    pub(crate) fn parse(body: &str) -> Option<Echo> {
        let mut lines = body.lines();
        let app = lines.next()?.strip_prefix("app=")?.to_string();
        let request_line = lines.next()?.to_string();
        let headers = lines
            .filter_map(|l| {
                let (n, v) = l.split_once(": ").or_else(|| l.split_once(':'))?;
                Some((n.to_string(), v.to_string()))
            })
            .collect();
        Some(Echo {
            app,
            request_line,
            headers,
        })
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path of the request line.
    pub(crate) fn path(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or("")
    }
}

// ---------------------------------------------------------------------------------------------
// The topology

/// A mesh configuration directory with the gateway Workload, `sentences` and `name` (HTTP
/// ports, echo apps, STRICT mTLS mesh-wide), their certificates, and a credentials directory.
/// The test adds its Gateway/VirtualService documents with [`Edge::write`], then [`Edge::start`]s
/// the sidecars and the gateway.
pub(crate) struct Edge {
    pub pki: Pki,
    config: tempfile::TempDir,
    pub creds: tempfile::TempDir,
    /// The service ports (sidecar inbound) of `sentences` and `name`.
    pub sentences_port: u16,
    pub name_port: u16,
    _apps: (App, App),
}

/// The processes of a started [`Edge`]; all killed on drop.
pub(crate) struct Running {
    pub gateway: GatewayProc,
    pub sentences: Sidecar,
    pub name: Sidecar,
}

impl Edge {
    pub(crate) fn new() -> Edge {
        let apps = (App::spawn(echo_sentences), App::spawn(echo_name));
        let pki = Pki::new();
        let config = temp_dir("gateway-config");
        let creds = temp_dir("gateway-creds");
        let (sentences_port, name_port) = (free_port(), free_port());
        let mesh = format!(
            r#"apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec: {{ trustDomain: cluster.local, rootNamespace: istio-system }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata:
  name: ingressgateway
  namespace: istio-system
  labels: {{ istio: ingressgateway, app: istio-ingressgateway }}
spec:
  role: gateway
  serviceAccount: istio-ingressgateway-service-account
  address: 127.0.0.1
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: sentences, namespace: default, labels: {{ app: sentences, version: v1 }} }}
spec:
  serviceAccount: sentences
  address: 127.0.0.1
  ports:
    - {{ name: http, port: {sentences_port}, targetPort: {sentences_app}, protocol: HTTP }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: name, namespace: default, labels: {{ app: name, version: v1 }} }}
spec:
  serviceAccount: name
  address: 127.0.0.1
  ports:
    - {{ name: http, port: {name_port}, targetPort: {name_app}, protocol: HTTP }}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: default, namespace: istio-system }}
spec: {{ mtls: {{ mode: STRICT }} }}
"#,
            sentences_app = apps.0.port,
            name_app = apps.1.port,
        );
        std::fs::write(config.path().join("mesh.yaml"), mesh).unwrap();
        pki.issue(
            "ingressgateway",
            "istio-system",
            "istio-ingressgateway-service-account",
        );
        pki.issue("sentences", "default", "sentences");
        pki.issue("name", "default", "name");
        Edge {
            pki,
            config,
            creds,
            sentences_port,
            name_port,
            _apps: apps,
        }
    }

    pub(crate) fn config(&self) -> &Path {
        self.config.path()
    }

    /// Writes (atomically) one more configuration file.
    pub(crate) fn write(&self, file: &str, yaml: &str) {
        replace_file(&self.config().join(file), yaml);
    }

    /// `<creds>/<name>/` with the given files (`(key name, source file)`), as `kubectl create
    /// secret` would hold them.
    pub(crate) fn credential(&self, name: &str, files: &[(&str, PathBuf)]) {
        let dir = self.creds.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (key, source) in files {
            std::fs::copy(source, dir.join(key)).unwrap();
        }
    }

    /// The gateway's mesh certificate directory.
    pub(crate) fn gateway_certs(&self) -> PathBuf {
        self.pki.dir.path().join("ingressgateway")
    }

    /// Starts the `sentences` and `name` sidecars, then the gateway (with `extra` flags).
    pub(crate) fn start(&self, extra: &[&str]) -> Running {
        let sentences = Sidecar::start(
            self.config(),
            "sentences",
            &self.pki.dir.path().join("sentences"),
            &[],
        );
        let name = Sidecar::start(
            self.config(),
            "name",
            &self.pki.dir.path().join("name"),
            &[],
        );
        let gateway = GatewayProc::start(self, extra);
        Running {
            gateway,
            sentences,
            name,
        }
    }

    /// A VirtualService `name` for `host`, bound to `default/<gateway>`, routing everything to
    /// `sentences`.
    pub(crate) fn route_all_to_sentences(&self, name: &str, host: &str, gateway: &str) -> String {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: {name}, namespace: default }}
spec:
  hosts: [ "{host}" ]
  gateways: [ {gateway} ]
  http:
    - route:
        - destination: {{ host: sentences, port: {{ number: {port} }} }}
"#,
            port = self.sentences_port
        )
    }
}

/// An `outrider gateway` process; killed on drop.
pub(crate) struct GatewayProc {
    pub child: Child,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub ready: SocketAddr,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl GatewayProc {
    /// `outrider gateway --workload ingressgateway` on the edge's configuration, its own
    /// SVID directory and credentials directory, Gateway ports on 127.0.0.1, certificates
    /// polled every 200 ms; waits until it reports ready.
    pub(crate) fn start(edge: &Edge, extra: &[&str]) -> GatewayProc {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let ready: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let logdir = temp_dir("gateway-log");
        let log = logdir.path().join("gateway.log");
        let child = Command::new(BIN)
            .arg("gateway")
            .arg("--config")
            .arg(edge.config())
            .args(["--workload", "ingressgateway", "--cert-dir"])
            .arg(edge.gateway_certs())
            .arg("--credentials-dir")
            .arg(edge.creds.path())
            .args(["--listen-ip", "127.0.0.1", "--cert-poll", "200ms"])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--ready-addr", &ready.to_string()])
            .args(extra)
            .env("OUTRIDER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start outrider gateway");
        let mut g = GatewayProc {
            child,
            admin,
            metrics,
            ready,
            log,
            _logdir: logdir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = g.child.try_wait().unwrap() {
                panic!("outrider gateway exited {status}: {}", g.logs());
            }
            if let Ok((200, _)) = http_get(g.ready, "/healthz/ready") {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "outrider gateway never became ready: {}",
                g.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn metrics_text(&self) -> String {
        http_get(self.metrics, "/stats/prometheus")
            .expect("scrape the gateway")
            .1
    }

    pub(crate) fn admin(&self, path: &str) -> String {
        http_get(self.admin, path).expect("gateway admin").1
    }

    /// `outrider_gateway_tls_handshakes_total` for `port` and `outcome`.
    pub(crate) fn handshakes(&self, port: u16, outcome: &str) -> f64 {
        metric_sum(
            &self.metrics_text(),
            "outrider_gateway_tls_handshakes_total",
            &[("port", &port.to_string()), ("outcome", outcome)],
        )
    }

    /// Waits (bounded) until the handshake counter for `port`/`outcome` is `want`.
    pub(crate) fn assert_handshakes(&self, port: u16, outcome: &str, want: f64) {
        let ok = eventually(Duration::from_secs(5), || {
            self.handshakes(port, outcome) == want
        });
        assert!(
            ok,
            "outrider_gateway_tls_handshakes_total{{port=\"{port}\",outcome=\"{outcome}\"}} != {want}:\n{}\ngateway log:\n{}",
            family(&self.metrics_text(), "outrider_gateway_tls_handshakes_total"),
            self.logs()
        );
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// What a curl run printed: whether it succeeded, and with `--include` the status, head and
/// body of the answer.
#[derive(Debug)]
pub(crate) struct Curl {
    pub ok: bool,
    pub status: u16,
    pub head: String,
    pub body: String,
    pub stderr: String,
}

impl Curl {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The echo app's report, failing the test if the body is not one.
    pub(crate) fn echo(&self) -> Echo {
        assert!(self.ok, "curl failed: {self:?}");
        Echo::parse(&self.body).unwrap_or_else(|| panic!("not the echo app's answer: {self:?}"))
    }
}

fn curl_output(out: std::process::Output) -> Curl {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = stdout
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or((stdout.clone(), String::new()));
    Curl {
        ok: out.status.success(),
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `curl --silent --show-error --include --max-time 15 <args>` in `cwd` (bounded).
pub(crate) fn curl(cwd: &Path, args: &[&str]) -> Curl {
    let child = Command::new("curl")
        .current_dir(cwd)
        .args(["--silent", "--show-error", "--include", "--max-time", "15"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs");
    curl_output(bounded_output(child, "curl", Duration::from_secs(30)))
}

/// The labs' HTTPS request to `host` on the gateway's `port` (`--cacert example.com.crt
/// --resolve <host>:<port>:127.0.0.1 https://<host>:<port><path>`) plus `extra` arguments.
pub(crate) fn curl_https(
    labs: &LabCerts,
    host: &str,
    port: u16,
    path: &str,
    extra: &[&str],
) -> Curl {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let mut args = vec!["--cacert", "example.com.crt", "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(labs.dir(), &args)
}

/// A plaintext request to `host` on the gateway's HTTP `port`.
pub(crate) fn curl_http(cwd: &Path, host: &str, port: u16, path: &str, extra: &[&str]) -> Curl {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("http://{host}:{port}{path}");
    let mut args = vec!["--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(cwd, &args)
}

/// The certificate the gateway serves on `port` for `sni` (`None`: no SNI sent), as
/// `openssl s_client` got it: `Ok((subject, serial))` with the subject in OpenSSL's one-line
/// form without spaces (`CN=sentences.example.com,O=ACMEorg`) and the serial in decimal;
/// `Err(output)` when the handshake failed.
pub(crate) fn served_cert(
    cwd: &Path,
    port: u16,
    sni: Option<&str>,
) -> Result<(String, String), String> {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(cwd).args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-showcerts",
    ]);
    match sni {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client runs");
    let out = bounded_output(child, "openssl s_client", Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let Some(pem) = CertificateDer::pem_slice_iter(stdout.as_bytes()).next() else {
        return Err(all);
    };
    let der = pem.map_err(|e| format!("{e:?}: {all}"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("{e}: {all}"))?;
    let subject = cert
        .subject()
        .iter()
        .flat_map(|rdn| rdn.iter())
        .map(|atv| {
            let key = x509_parser::objects::oid2abbrev(
                atv.attr_type(),
                x509_parser::objects::oid_registry(),
            )
            .map(str::to_string)
            .unwrap_or_else(|_| atv.attr_type().to_id_string());
            format!("{key}={}", atv.as_str().unwrap_or(""))
        })
        .collect::<Vec<_>>()
        .join(",");
    if !out.status.success() {
        return Err(all);
    }
    Ok((subject, cert.serial.to_string()))
}

// ---------------------------------------------------------------------------------------------
// XFCC

/// An XFCC header value as elements of `(key, value)` pairs, quotes removed and `\"`
/// unescaped (SEMANTICS §8's format).
pub(crate) fn xfcc_elements(value: &str) -> Vec<Vec<(String, String)>> {
    let mut elements = vec![Vec::new()];
    let (mut key, mut cur) = (String::new(), String::new());
    let (mut in_key, mut quoted, mut escaped) = (true, false, false);
    for c in value.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '=' if in_key && !quoted => {
                key = std::mem::take(&mut cur);
                in_key = false;
            }
            ';' | ',' if !quoted => {
                elements
                    .last_mut()
                    .unwrap()
                    .push((std::mem::take(&mut key), std::mem::take(&mut cur)));
                in_key = true;
                if c == ',' {
                    elements.push(Vec::new());
                }
            }
            _ => cur.push(c),
        }
    }
    elements
        .last_mut()
        .unwrap()
        .push((std::mem::take(&mut key), cur));
    elements
}

/// `%XX` decoding (what Envoy's `Cert=` holds: the URL-encoded PEM).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The details of the first certificate of a PEM file (hash, RFC 2253 subject, SANs).
pub(crate) fn cert_details(pem_file: &Path) -> ClientCert {
    let pem = std::fs::read(pem_file).unwrap();
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    ClientCert::from_leaf(&leaf)
}

/// The element the `sentences` sidecar appends for a request from the gateway (APPEND_FORWARD,
/// the sidecar default): `By=<sentences>;Hash=<gateway SVID>;Subject="";URI=<gateway>`.
pub(crate) fn sidecar_element(edge: &Edge) -> Vec<(String, String)> {
    let hash = cert_details(&edge.gateway_certs().join("cert-chain.pem")).hash;
    vec![
        ("By".into(), SENTENCES_ID.into()),
        ("Hash".into(), hash),
        ("Subject".into(), String::new()),
        ("URI".into(), GATEWAY_ID.into()),
    ]
}

/// Checks the gateway's SANITIZE_SET element for the labs' client certificate (SEMANTICS §8:
/// Hash, Cert, Subject, URI, DNS; no `By`: the edge certificate has no URI SAN).
pub(crate) fn assert_gateway_element(element: &[(String, String)], labs: &LabCerts, xfcc: &str) {
    let client = cert_details(&labs.path("client.example.com.crt"));
    let keys: Vec<&str> = element.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["Hash", "Cert", "Subject", "URI"],
        "the gateway's element: {xfcc}"
    );
    let get = |k: &str| element.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(get("Hash"), client.hash, "{xfcc}");
    // RFC 2253 order (Envoy's) or the certificate's own order: both name the same DN.
    let subject = get("Subject");
    assert!(
        subject == "O=ACMEorg,CN=client.example.com"
            || subject == "CN=client.example.com,O=ACMEorg",
        "Subject: {xfcc}"
    );
    assert_eq!(get("URI"), "", "{xfcc}");
    let pem = std::fs::read_to_string(labs.path("client.example.com.crt")).unwrap();
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    assert_eq!(
        squash(&percent_decode(&get("Cert"))),
        squash(&pem),
        "Cert= is not the URL-encoded client certificate: {xfcc}"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics the app side and the gateway report

/// The lines of `family` in a scrape (for assertion messages: a whole scrape is too long to
/// read).
pub(crate) fn family(text: &str, family: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `sentences` sidecar counted `n` requests from the gateway's identity over mTLS, and the
/// gateway `n` as `reporter="source"` to `sentences`.
pub(crate) fn assert_requests_from_gateway(run: &Running, n: f64) {
    let from_gateway = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        ("source_principal", GATEWAY_ID),
        ("destination_principal", SENTENCES_ID),
        ("destination_workload", "sentences"),
        ("response_code", "200"),
    ];
    let ok = eventually(Duration::from_secs(5), || {
        metric_sum(
            &run.sentences.metrics_text(),
            "istio_requests_total",
            &from_gateway,
        ) == n
    });
    assert!(
        ok,
        "sentences' sidecar should count {n} mTLS requests from the gateway:\n{}",
        family(&run.sentences.metrics_text(), "istio_requests_total")
    );
    let source = [
        ("reporter", "source"),
        ("source_workload", "ingressgateway"),
        ("source_workload_namespace", "istio-system"),
        ("source_principal", GATEWAY_ID),
        ("destination_principal", SENTENCES_ID),
        ("destination_workload", "sentences"),
        ("response_code", "200"),
    ];
    let ok = eventually(Duration::from_secs(5), || {
        metric_sum(&run.gateway.metrics_text(), "istio_requests_total", &source) == n
    });
    assert!(
        ok,
        "the gateway should report {n} requests to sentences as reporter=\"source\":\n{}",
        family(&run.gateway.metrics_text(), "istio_requests_total")
    );
}

// ---------------------------------------------------------------------------------------------
// Gateways of the TLS-mode tests

/// The labs' Gateway: one HTTPS server for `sentences.example.com` on `port` with `tls`.
fn https_gateway(port: u16, tls: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: sentences-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {port}, name: https, protocol: HTTPS }}
      hosts: [ "sentences.example.com" ]
      tls: {tls}
"#
    )
}

/// The edge of the labs' SIMPLE/MUTUAL steps: `tls` on one HTTPS port, routed to `sentences`.
fn labs_edge(labs: &LabCerts, tls: &str, secret_files: &[&str]) -> (Edge, u16) {
    let edge = Edge::new();
    let port = free_port();
    let files: Vec<(&str, PathBuf)> = secret_files
        .iter()
        .map(|k| {
            let source = match *k {
                "tls.crt" => "sentences.example.com.crt",
                "tls.key" => "sentences.example.com.key",
                "ca.crt" => "example.com.crt",
                other => panic!("no lab file for {other}"),
            };
            (*k, labs.path(source))
        })
        .collect();
    edge.credential("sentences-credential", &files);
    edge.write(
        "gateway.yaml",
        &format!(
            "{}---\n{}",
            https_gateway(port, tls),
            edge.route_all_to_sentences("sentences", "sentences.example.com", "sentences-gateway")
        ),
    );
    (edge, port)
}

/// The labs' curl command, verbatim but for the port: `(ok, stdout, stderr)`.
fn labs_curl_verbatim(labs: &LabCerts, port: u16, extra: &str) -> (bool, String, String) {
    let cmd = format!(
        "curl --cacert example.com.crt --resolve sentences.example.com:{port}:127.0.0.1 https://sentences.example.com:{port}/{extra}"
    );
    let child = Command::new("sh")
        .args(["-c", &cmd])
        .current_dir(labs.dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded_output(child, &cmd, Duration::from_secs(30));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CLIENT_CERT: &[&str] = &[
    "--cert",
    "client.example.com.crt",
    "--key",
    "client.example.com.key",
];

const FORGED_XFCC: &str = "x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/admin;Hash=00;URI=spiffe://cluster.local/ns/default/sa/admin";

#[test]
fn simple_the_labs_commands_verbatim_reach_the_app_over_mesh_mtls() {
    let Some(labs) = LabCerts::make() else { return };
    let (edge, port) = labs_edge(
        &labs,
        "{ mode: SIMPLE, credentialName: sentences-credential }",
        &["tls.crt", "tls.key"],
    );
    let run = edge.start(&[]);

    // The labs' command as printed (it checks the server by the v1 certificate's CN).
    let (ok, stdout, stderr) = labs_curl_verbatim(&labs, port, "");
    assert!(
        ok,
        "the labs' curl failed: {stderr}\ngateway: {}",
        run.gateway.logs()
    );
    let echo = Echo::parse(&stdout).unwrap_or_else(|| panic!("not the app's answer: {stdout}"));
    assert_eq!(echo.app, "sentences");
    assert_eq!(echo.path(), "/");
    assert_eq!(
        echo.header("host"),
        Some(format!("sentences.example.com:{port}").as_str()),
        "{stdout}"
    );
    // Over one-way TLS the app only sees its own sidecar's element: the gateway's SVID.
    let xfcc = echo.header("x-forwarded-client-cert").expect("xfcc");
    assert_eq!(xfcc_elements(xfcc), vec![sidecar_element(&edge)], "{xfcc}");

    // A header the client forged never reaches the app (SANITIZE_SET without a client cert:
    // removed).
    let forged = curl_https(
        &labs,
        "sentences.example.com",
        port,
        "/forged",
        &["-H", FORGED_XFCC],
    );
    let echo = forged.echo();
    let xfcc = echo.header("x-forwarded-client-cert").expect("xfcc");
    assert_eq!(xfcc_elements(xfcc), vec![sidecar_element(&edge)], "{xfcc}");

    assert_requests_from_gateway(&run, 2.0);
    run.gateway.assert_handshakes(port, "ok", 2.0);
}

#[test]
fn mutual_requires_the_labs_client_certificate_and_sets_xfcc() {
    let Some(labs) = LabCerts::make() else { return };
    let (edge, port) = labs_edge(
        &labs,
        "{ mode: MUTUAL, credentialName: sentences-credential }",
        &["tls.crt", "tls.key", "ca.crt"],
    );
    let run = edge.start(&[]);

    // The labs' command with the client certificate, as printed.
    let (ok, stdout, stderr) = labs_curl_verbatim(
        &labs,
        port,
        " --cert client.example.com.crt --key client.example.com.key",
    );
    assert!(ok, "{stderr}\ngateway: {}", run.gateway.logs());
    let echo = Echo::parse(&stdout).unwrap_or_else(|| panic!("not the app's answer: {stdout}"));
    assert_eq!(echo.app, "sentences");
    let xfcc = echo
        .header("x-forwarded-client-cert")
        .expect("xfcc")
        .to_string();
    let elements = xfcc_elements(&xfcc);
    assert_eq!(
        elements.len(),
        2,
        "gateway element then sidecar element: {xfcc}"
    );
    assert_gateway_element(&elements[0], &labs, &xfcc);
    assert_eq!(elements[1], sidecar_element(&edge), "{xfcc}");

    // A client-sent XFCC is replaced, not appended to (SANITIZE_SET).
    let forged = curl_https(
        &labs,
        "sentences.example.com",
        port,
        "/forged",
        &[CLIENT_CERT, &["-H", FORGED_XFCC]].concat(),
    );
    let echo = forged.echo();
    let xfcc = echo
        .header("x-forwarded-client-cert")
        .expect("xfcc")
        .to_string();
    assert!(
        !xfcc.contains("sa/admin"),
        "the forged element survived: {xfcc}"
    );
    let elements = xfcc_elements(&xfcc);
    assert_eq!(elements.len(), 2, "{xfcc}");
    assert_gateway_element(&elements[0], &labs, &xfcc);

    // Over TLS 1.2 as well.
    let tls12 = curl_https(
        &labs,
        "sentences.example.com",
        port,
        "/tls12",
        &[CLIENT_CERT, &["--tlsv1.2", "--tls-max", "1.2"]].concat(),
    );
    assert_eq!(tls12.echo().app, "sentences");

    // No client certificate: the TLS 1.3 alert `certificate required`, counted.
    let (ok, stdout, stderr) = labs_curl_verbatim(&labs, port, "");
    assert!(!ok, "answered without a client certificate: {stdout}");
    assert!(stderr.contains("certificate required"), "{stderr}");
    run.gateway
        .assert_handshakes(port, "certificate_required", 1.0);

    // A client certificate of another CA (same names, other key): `unknown ca`, counted.
    let other = curl_https(
        &labs,
        "sentences.example.com",
        port,
        "/",
        &[
            "--cert",
            "other/client.example.com.crt",
            "--key",
            "other/client.example.com.key",
        ],
    );
    assert!(!other.ok, "answered another CA's client: {other:?}");
    assert!(other.stderr.contains("unknown ca"), "{}", other.stderr);
    run.gateway.assert_handshakes(port, "unknown_ca", 1.0);

    // Only the three good requests reached the app.
    assert_requests_from_gateway(&run, 3.0);
}

#[test]
fn optional_mutual_answers_with_and_without_a_client_certificate() {
    let Some(labs) = LabCerts::make() else { return };
    let (edge, port) = labs_edge(
        &labs,
        "{ mode: OPTIONAL_MUTUAL, credentialName: sentences-credential }",
        &["tls.crt", "tls.key", "ca.crt"],
    );
    let run = edge.start(&[]);

    let with = curl_https(&labs, "sentences.example.com", port, "/with", CLIENT_CERT);
    let echo = with.echo();
    let xfcc = echo
        .header("x-forwarded-client-cert")
        .expect("xfcc")
        .to_string();
    let elements = xfcc_elements(&xfcc);
    assert_eq!(elements.len(), 2, "{xfcc}");
    assert_gateway_element(&elements[0], &labs, &xfcc);

    let without = curl_https(
        &labs,
        "sentences.example.com",
        port,
        "/without",
        &["-H", FORGED_XFCC],
    );
    let echo = without.echo();
    let xfcc = echo.header("x-forwarded-client-cert").expect("xfcc");
    assert_eq!(
        xfcc_elements(xfcc),
        vec![sidecar_element(&edge)],
        "without a client certificate only the sidecar's element: {xfcc}"
    );

    // A certificate that is sent is verified: another CA's is refused.
    let other = curl_https(
        &labs,
        "sentences.example.com",
        port,
        "/",
        &[
            "--cert",
            "other/client.example.com.crt",
            "--key",
            "other/client.example.com.key",
        ],
    );
    assert!(!other.ok, "answered another CA's client: {other:?}");
    assert!(other.stderr.contains("unknown ca"), "{}", other.stderr);
    assert_requests_from_gateway(&run, 2.0);
}

#[test]
fn https_redirect_answers_301_to_https_without_reaching_the_app() {
    let Some(labs) = LabCerts::make() else { return };
    let edge = Edge::new();
    let (https, http) = (free_port(), free_port());
    edge.credential(
        "sentences-credential",
        &[
            ("tls.crt", labs.path("sentences.example.com.crt")),
            ("tls.key", labs.path("sentences.example.com.key")),
        ],
    );
    let gateway = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: sentences-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {https}, name: https, protocol: HTTPS }}
      hosts: [ "sentences.example.com" ]
      tls: {{ mode: SIMPLE, credentialName: sentences-credential }}
    - port: {{ number: {http}, name: http, protocol: HTTP }}
      hosts: [ "sentences.example.com" ]
      tls: {{ httpsRedirect: true }}
"#
    );
    edge.write(
        "gateway.yaml",
        &format!(
            "{gateway}---\n{}",
            edge.route_all_to_sentences("sentences", "sentences.example.com", "sentences-gateway")
        ),
    );
    let run = edge.start(&[]);

    // The labs' `curl -sI`.
    let r = curl_http(labs.dir(), "sentences.example.com", http, "/x?y=1", &["-I"]);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.status, 301, "{r:?}");
    let location = r.header("location").unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        location.starts_with("https://sentences.example.com") && location.ends_with("/x?y=1"),
        "{location}"
    );
    // The HTTPS side answers.
    let s = curl_https(&labs, "sentences.example.com", https, "/", &[]);
    assert_eq!(s.echo().app, "sentences");
    assert_requests_from_gateway(&run, 1.0);
}

#[test]
fn min_protocol_version_tls13_refuses_a_tls12_client() {
    let Some(labs) = LabCerts::make() else { return };
    let (edge, port) = labs_edge(
        &labs,
        "{ mode: SIMPLE, credentialName: sentences-credential, minProtocolVersion: TLSV1_3 }",
        &["tls.crt", "tls.key"],
    );
    let run = edge.start(&[]);

    let old = curl_https(
        &labs,
        "sentences.example.com",
        port,
        "/",
        &["--tls-max", "1.2"],
    );
    assert!(!old.ok, "a TLS 1.2 client was answered: {old:?}");
    assert!(
        old.stderr.contains("protocol version"),
        "curl should report the protocol_version alert: {}",
        old.stderr
    );
    run.gateway.assert_handshakes(port, "protocol_version", 1.0);

    let new = curl_https(&labs, "sentences.example.com", port, "/", &["--tlsv1.3"]);
    assert_eq!(new.echo().app, "sentences");
    assert_requests_from_gateway(&run, 1.0);
}

#[test]
fn two_hosts_on_one_port_each_get_their_own_certificate() {
    let Some(labs) = LabCerts::make() else { return };
    labs.leaf("name.example.com", "name.example.com", 2, None);
    let edge = Edge::new();
    for (secret, file) in [
        ("sentences-credential", "sentences.example.com"),
        ("name-credential", "name.example.com"),
    ] {
        edge.credential(
            secret,
            &[
                ("tls.crt", labs.path(&format!("{file}.crt"))),
                ("tls.key", labs.path(&format!("{file}.key"))),
            ],
        );
    }
    let port = free_port();
    let gateway = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: two-hosts, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {port}, name: https-sentences, protocol: HTTPS }}
      hosts: [ "sentences.example.com" ]
      tls: {{ mode: SIMPLE, credentialName: sentences-credential }}
    - port: {{ number: {port}, name: https-name, protocol: HTTPS }}
      hosts: [ "name.example.com" ]
      tls: {{ mode: SIMPLE, credentialName: name-credential }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: name, namespace: default }}
spec:
  hosts: [ "name.example.com" ]
  gateways: [ two-hosts ]
  http:
    - route:
        - destination: {{ host: name, port: {{ number: {name_port} }} }}
---
{sentences}"#,
        name_port = edge.name_port,
        sentences = edge.route_all_to_sentences("sentences", "sentences.example.com", "two-hosts"),
    );
    edge.write("gateway.yaml", &gateway);
    let run = edge.start(&[]);

    // curl checks the served certificate against the name (v1 certificates: by CN), so each
    // answer proves its certificate; the answers come from each host's own route.
    for (host, app) in [
        ("sentences.example.com", "sentences"),
        ("name.example.com", "name"),
    ] {
        let r = curl_https(&labs, host, port, "/", &[]);
        assert!(r.ok, "{host}: {r:?}\ngateway: {}", run.gateway.logs());
        assert_eq!(r.echo().app, app, "{host}");
    }
    assert_eq!(
        served_cert(labs.dir(), port, Some("sentences.example.com")),
        Ok(("CN=sentences.example.com,O=ACMEorg".into(), "0".into()))
    );
    assert_eq!(
        served_cert(labs.dir(), port, Some("name.example.com")),
        Ok(("CN=name.example.com,O=ACMEorg".into(), "2".into()))
    );

    // An SNI no server lists, and no SNI at all (both servers restrict hosts): refused.
    let unknown = curl_https(&labs, "unknown.example.com", port, "/", &[]);
    assert!(!unknown.ok, "{unknown:?}");
    let s_client = served_cert(labs.dir(), port, Some("unknown.example.com"));
    assert!(
        s_client.is_err(),
        "a certificate for an unknown SNI: {s_client:?}"
    );
    let s_client = served_cert(labs.dir(), port, None);
    assert!(s_client.is_err(), "a certificate without SNI: {s_client:?}");
    run.gateway.assert_handshakes(port, "no_server", 3.0);
}

#[test]
fn run_refuses_a_gateway_workload_and_names_outrider_gateway() {
    let edge = Edge::new();
    let child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(edge.config())
        .args(["--workload", "ingressgateway", "--cert-dir"])
        .arg(edge.gateway_certs())
        .args(["--inbound-ip", "127.0.0.1"])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--ready-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded_output(
        child,
        "outrider run --workload ingressgateway",
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("outrider gateway"), "{stderr}");
}
