//! `outrider dashboard` against real sidecar processes: the graph a person looks at after
//! turning the mesh on. `sentences` calls `age` through both sidecars (mutual TLS) and a client
//! without a sidecar talks plaintext straight to age's port; the dashboard scrapes the sidecars'
//! admin listeners and must draw a padlock on the first edge and an open, red edge from the
//! plaintext client's address; after STRICT, that client's next attempts show as reset, not as
//! plaintext traffic. `/api/graph` is checked field by field, the page in a real headless
//! browser (Debian's `chromium`: the DOM after its script ran, and a screenshot), and the cost of
//! one refresh is measured on a 50-workload synthetic mesh.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// A running `outrider dashboard`; killed on drop.
struct Dashboard {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dashboard {
    fn start(args: &[&str]) -> Dashboard {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = temp_dir("dashboard");
        let log = dir.path().join("dashboard.log");
        let child = Command::new(BIN)
            .args(["dashboard", "--listen", &addr.to_string()])
            .args(args)
            .env("OUTRIDER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the dashboard");
        let mut d = Dashboard {
            child,
            addr,
            log,
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(10), || {
            matches!(http_get(d.addr, "/healthz"), Ok((200, _)))
        });
        if let Some(status) = d.child.try_wait().unwrap() {
            panic!("the dashboard exited {status}: {}", d.logs());
        }
        assert!(up, "the dashboard never answered: {}", d.logs());
        d
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn graph(&self, window: &str) -> Value {
        let (status, body) = http_get(self.addr, &format!("/api/graph?window={window}")).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn edge<'a>(graph: &'a Value, source_id: &str, destination_id: &str) -> Option<&'a Value> {
    graph["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source_id"] == source_id && e["destination_id"] == destination_id)
}

fn node<'a>(graph: &'a Value, id: &str) -> Option<&'a Value> {
    graph["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

/// Runs chromium headless with `args` and a scratch profile; bounded, killed on overrun.
fn chromium(args: &[&str], profile: &Path) -> String {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish in 90s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

/// The `<g class="edge ...">` element of one edge in a DOM dump, up to its closing marker text.
fn dom_edge<'a>(dom: &'a str, source_id: &str, destination_id: &str) -> Option<&'a str> {
    let start = dom.find(&format!(
        r#"data-source="{source_id}" data-destination="{destination_id}""#
    ))?;
    let rest = &dom[start..];
    let end = rest.find("</g></g>").unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Where screenshots go: kept after the test (the README shows them).
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn padlock_on_the_mtls_edge_and_an_open_edge_for_the_plaintext_client() {
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let sentences = mesh.sidecar("sentences");
    let dashboard = Dashboard::start(&[
        "--scrape",
        &age.admin.to_string(),
        "--scrape",
        &sentences.admin.to_string(),
        "--interval",
        "500ms",
        "--window",
        "1m",
    ]);

    // Mesh traffic and a plaintext client, until both edges show (the first rates need two
    // snapshots).
    let both = eventually(Duration::from_secs(20), || {
        assert_eq!(
            round_trip(mesh.sentences_out_addr(), b"mesh").unwrap(),
            b"mesh"
        );
        assert_eq!(round_trip(mesh.age_addr(), b"plain").unwrap(), b"plain");
        let g = dashboard.graph("1m");
        edge(&g, "default/sentences", "default/age").is_some()
            && edge(&g, "unknown/127.0.0.1", "default/age").is_some()
    });
    let g = dashboard.graph("1m");
    assert!(both, "{g:#}\n{}", dashboard.logs());

    // Field by field.
    assert_eq!(g["window_seconds"], 60);
    assert_eq!(g["errors"], serde_json::json!([]), "{g:#}");
    let ids: Vec<&str> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["default/age", "default/sentences", "unknown/127.0.0.1"],
        "{g:#}"
    );
    let age_node = node(&g, "default/age").unwrap();
    assert_eq!(age_node["workload"], "age");
    assert_eq!(age_node["namespace"], "default");
    assert_eq!(age_node["service"], "age");
    assert_eq!(age_node["mode"], "PERMISSIVE");
    let sentences_node = node(&g, "default/sentences").unwrap();
    assert_eq!(sentences_node["workload"], "sentences");
    assert_eq!(sentences_node["service"], "sentences");
    assert_eq!(sentences_node["mode"], "PERMISSIVE");
    let intruder = node(&g, "unknown/127.0.0.1").unwrap();
    assert_eq!(intruder["workload"], "unknown");
    assert_eq!(intruder["namespace"], "unknown");
    assert_eq!(intruder["address"], "127.0.0.1");
    assert_eq!(intruder["mode"], Value::Null);

    let mtls = edge(&g, "default/sentences", "default/age").unwrap();
    assert_eq!(mtls["source"], "sentences");
    assert_eq!(mtls["destination"], "age");
    assert_eq!(mtls["mtls_percent"], 100.0);
    assert_eq!(mtls["security"], "mtls");
    assert!(
        mtls["connections_per_second"].as_f64().unwrap() > 0.0,
        "{mtls}"
    );
    assert!(mtls["bytes_per_second"].as_f64().unwrap() > 0.0, "{mtls}");
    assert_eq!(mtls["blocked_per_second"], 0.0);
    // TCP: no request fields.
    assert!(mtls.get("requests_per_second").is_none(), "{mtls}");
    assert!(mtls.get("error_percent").is_none(), "{mtls}");

    let open = edge(&g, "unknown/127.0.0.1", "default/age").unwrap();
    assert_eq!(open["source"], "unknown");
    assert_eq!(open["destination"], "age");
    assert_eq!(open["mtls_percent"], 0.0);
    assert_eq!(open["security"], "plaintext");
    assert!(
        open["connections_per_second"].as_f64().unwrap() > 0.0,
        "{open}"
    );
    assert_eq!(g["edges"].as_array().unwrap().len(), 2, "{g:#}");

    // The aggregated plaintext list: age's sidecar saw 127.0.0.1.
    let (status, body) = http_get(dashboard.addr, "/plaintext").unwrap();
    assert_eq!(status, 200);
    let plaintext: Value = serde_json::from_str(&body).unwrap();
    let at_age = plaintext
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["workload"] == "age")
        .unwrap_or_else(|| panic!("{plaintext:#}"));
    assert_eq!(at_age["sidecar"], age.admin.to_string());
    assert_eq!(at_age["clients"][0]["address"], "127.0.0.1");
    assert!(at_age["clients"][0]["accepted"].as_u64().unwrap() >= 1);

    // Read-only, and nothing else is served.
    let mut s = TcpStream::connect(dashboard.addr).unwrap();
    write!(
        s,
        "POST /api/graph HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(http_get(dashboard.addr, "/nope").unwrap().0, 404);

    let browser = tool_available("chromium");
    let profile = temp_dir("dashboard-chromium");
    let shots = screenshot_dir();
    if browser {
        // The page as a browser renders it, after its script ran and refreshed at least once.
        let dom = chromium(
            &[
                "--virtual-time-budget=3000",
                "--dump-dom",
                &dashboard.url("/?window=1m"),
            ],
            profile.path(),
        );
        assert!(
            dom.contains(r#"<svg xmlns="http://www.w3.org/2000/svg" id="mesh""#),
            "{dom}"
        );
        let e =
            dom_edge(&dom, "default/sentences", "default/age").unwrap_or_else(|| panic!("{dom}"));
        assert!(e.contains(r#"data-security="mtls""#), "{e}");
        assert!(e.contains(r#"data-marker="padlock""#), "{e}");
        assert!(e.contains("mTLS 100%"), "{e}");
        let e =
            dom_edge(&dom, "unknown/127.0.0.1", "default/age").unwrap_or_else(|| panic!("{dom}"));
        assert!(e.contains(r#"data-security="plaintext""#), "{e}");
        assert!(e.contains(r#"data-marker="open""#), "{e}");
        assert!(e.contains("mTLS 0%"), "{e}");
        assert!(
            dom.contains(r#"data-id="default/age" data-mode="PERMISSIVE""#),
            "{dom}"
        );
        // The script replaced the inlined drawing with a fetched one without an error.
        assert!(dom.contains(r#"<div id="error"></div>"#), "{dom}");
        let png = shots.join("permissive.png");
        chromium(
            &[
                "--window-size=1000,420",
                "--virtual-time-budget=2000",
                &format!("--screenshot={}", png.display()),
                &dashboard.url("/?window=1m"),
            ],
            profile.path(),
        );
        assert!(
            std::fs::metadata(&png)
                .map(|m| m.len() > 5000)
                .unwrap_or(false),
            "no screenshot at {}",
            png.display()
        );
    }

    // STRICT: age resets plaintext. With a short window the old plaintext traffic ages out; the
    // client's new attempts are reset and show as blocked, never as plaintext traffic.
    replace_file(&mesh.config().join("policy.yaml"), &policy("STRICT"));
    let strict = eventually(Duration::from_secs(20), || {
        node(&dashboard.graph("3s"), "default/age").is_some_and(|n| n["mode"] == "STRICT")
    });
    assert!(strict, "{:#}", dashboard.graph("3s"));
    let blocked = eventually(Duration::from_secs(30), || {
        assert_eq!(
            round_trip(mesh.sentences_out_addr(), b"mesh").unwrap(),
            b"mesh"
        );
        let reset = round_trip(mesh.age_addr(), b"plain");
        assert!(
            !matches!(&reset, Ok(b) if b == b"plain"),
            "STRICT let plaintext through"
        );
        let g = dashboard.graph("3s");
        edge(&g, "unknown/127.0.0.1", "default/age").is_some_and(|e| e["security"] == "blocked")
            && edge(&g, "default/sentences", "default/age").is_some_and(|e| e["security"] == "mtls")
    });
    let g = dashboard.graph("3s");
    assert!(blocked, "{g:#}");
    let e = edge(&g, "unknown/127.0.0.1", "default/age").unwrap();
    assert_eq!(e["connections_per_second"], 0.0, "{e}");
    assert!(e["blocked_per_second"].as_f64().unwrap() > 0.0, "{e}");
    assert!(
        !g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["security"] == "plaintext"),
        "{g:#}"
    );

    if browser {
        let dom = chromium(
            &[
                "--virtual-time-budget=3000",
                "--dump-dom",
                &dashboard.url("/?window=3s"),
            ],
            profile.path(),
        );
        let e =
            dom_edge(&dom, "unknown/127.0.0.1", "default/age").unwrap_or_else(|| panic!("{dom}"));
        assert!(e.contains(r#"data-marker="blocked""#), "{e}");
        assert!(!dom.contains(r#"data-marker="open""#), "{dom}");
        let e =
            dom_edge(&dom, "default/sentences", "default/age").unwrap_or_else(|| panic!("{dom}"));
        assert!(e.contains(r#"data-marker="padlock""#), "{e}");
        assert!(
            dom.contains(r#"data-id="default/age" data-mode="STRICT""#),
            "{dom}"
        );
        let png = shots.join("strict.png");
        chromium(
            &[
                "--window-size=1000,420",
                "--virtual-time-budget=2000",
                &format!("--screenshot={}", png.display()),
                &dashboard.url("/?window=3s"),
            ],
            profile.path(),
        );
        assert!(std::fs::metadata(&png)
            .map(|m| m.len() > 5000)
            .unwrap_or(false));
        eprintln!("screenshots: {}", shots.display());
    }
}

/// A fake sidecar metrics endpoint: `w<i>` receives mTLS connections from `w<i-1>` (a chain
/// through ten columns), with counters that grow on every scrape.
struct Exporter {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Exporter {
    fn start(i: usize) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut scrapes = 0u64;
            for s in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                scrapes += 1;
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let request = String::from_utf8_lossy(&buf);
                if !request.starts_with("GET /stats/prometheus ") {
                    let _ = s.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                let source = if i % 10 == 0 {
                    "unknown".to_string()
                } else {
                    format!("w{}", i - 1)
                };
                let policy = if i % 10 == 0 { "none" } else { "mutual_tls" };
                let mut body = String::new();
                for (name, per_scrape) in [
                    ("istio_tcp_connections_opened_total", 3),
                    ("istio_tcp_sent_bytes_total", 5000),
                    ("istio_tcp_received_bytes_total", 700),
                    ("istio_tcp_connections_opened_total", 1),
                ] {
                    body.push_str(&format!(
                        "{name}{{reporter=\"destination\",source_workload=\"{source}\",source_workload_namespace=\"ns{ns}\",source_canonical_service=\"{source}\",destination_workload=\"w{i}\",destination_workload_namespace=\"ns{ns}\",destination_canonical_service=\"svc{i}\",connection_security_policy=\"{policy}\"}} {}\n",
                        scrapes * per_scrape,
                        ns = i / 10,
                    ));
                    body.push_str(&format!(
                        "{name}{{reporter=\"source\",source_workload=\"w{i}\",destination_workload=\"w{}\",connection_security_policy=\"unknown\"}} {}\n",
                        i + 1,
                        scrapes * per_scrape,
                    ));
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Exporter { addr, stop }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    ticks / hz
}

#[test]
fn cost_of_a_refresh_for_a_50_workload_mesh() {
    let exporters: Vec<Exporter> = (0..50).map(Exporter::start).collect();
    let mut args: Vec<String> = Vec::new();
    for e in &exporters {
        args.push("--scrape".into());
        args.push(e.addr.to_string());
    }
    args.extend(["--interval", "1s", "--window", "1m"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dashboard = Dashboard::start(&args);
    let ready = eventually(Duration::from_secs(20), || {
        dashboard.graph("1m")["edges"]
            .as_array()
            .is_some_and(|e| e.len() == 50)
    });
    let g = dashboard.graph("1m");
    assert!(ready, "{g:#}\n{}", dashboard.logs());
    assert_eq!(
        g["nodes"].as_array().unwrap().len(),
        51,
        "50 workloads + one `unknown` source: without /plaintext, addresses are not known"
    );
    let plaintext = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["security"] == "plaintext")
        .count();
    assert_eq!(plaintext, 5);

    let pid = dashboard.child.id();
    // Idle: what polling 50 targets costs, over ~5 polls.
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let idle_per_second = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    // Refreshes, as the page makes them.
    let n = 100;
    let (c1, t1) = (cpu_seconds(pid), Instant::now());
    let mut svg_bytes = 0;
    for _ in 0..n {
        let (status, body) = http_get(dashboard.addr, "/api/graph.svg?window=1m").unwrap();
        assert_eq!(status, 200);
        svg_bytes = body.len();
    }
    let busy = cpu_seconds(pid) - c1 - idle_per_second * t1.elapsed().as_secs_f64();
    let json_bytes = http_get(dashboard.addr, "/api/graph?window=1m")
        .unwrap()
        .1
        .len();
    let page_bytes = http_get(dashboard.addr, "/").unwrap().1.len();
    eprintln!(
        "dashboard cost, 50 workloads / 50 edges: page {page_bytes} B, per refresh {svg_bytes} B of SVG \
         (JSON {json_bytes} B), {:.2} ms CPU per refresh, polling 50 targets every 1s {:.1}% of a core",
        1000.0 * busy.max(0.0) / n as f64,
        100.0 * idle_per_second
    );
    assert!(svg_bytes > 0 && svg_bytes < 200_000, "{svg_bytes}");
}

/// A real Prometheus server scraping the given targets every second; killed on drop.
struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    fn start(targets: &[SocketAddr]) -> PrometheusServer {
        let dir = temp_dir("dashboard-prometheus");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: sidecars\n    metrics_path: /stats/prometheus\n    static_configs: [{{ targets: [{}] }}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = PrometheusServer {
            child,
            addr,
            _dir: dir,
        };
        assert!(
            eventually(Duration::from_secs(30), || {
                matches!(http_get(p.addr, "/-/ready"), Ok((200, _)))
            }),
            "prometheus never became ready"
        );
        p
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_same_graph_from_a_real_prometheus() {
    if !tool_available("prometheus") {
        return;
    }
    let app = App::echo();
    let mesh = Mesh::new(app.port, "TCP", "PERMISSIVE");
    let age = mesh.sidecar("age");
    let sentences = mesh.sidecar("sentences");
    let prometheus = PrometheusServer::start(&[age.metrics, sentences.metrics]);
    let dashboard = Dashboard::start(&[
        "--prometheus",
        &format!("http://{}", prometheus.addr),
        "--admin",
        &age.admin.to_string(),
        "--admin",
        &sentences.admin.to_string(),
        "--interval",
        "1s",
        "--window",
        "1m",
    ]);
    let both = eventually(Duration::from_secs(40), || {
        assert_eq!(
            round_trip(mesh.sentences_out_addr(), b"mesh").unwrap(),
            b"mesh"
        );
        assert_eq!(round_trip(mesh.age_addr(), b"plain").unwrap(), b"plain");
        let g = dashboard.graph("1m");
        edge(&g, "default/sentences", "default/age").is_some()
            && edge(&g, "unknown/127.0.0.1", "default/age").is_some()
    });
    let g = dashboard.graph("1m");
    assert!(both, "{g:#}\n{}", dashboard.logs());
    assert_eq!(g["errors"], serde_json::json!([]), "{g:#}");
    let mtls = edge(&g, "default/sentences", "default/age").unwrap();
    assert_eq!(mtls["security"], "mtls");
    assert_eq!(mtls["mtls_percent"], 100.0);
    assert!(
        mtls["connections_per_second"].as_f64().unwrap() > 0.0,
        "{mtls}"
    );
    let open = edge(&g, "unknown/127.0.0.1", "default/age").unwrap();
    assert_eq!(open["security"], "plaintext");
    assert_eq!(open["mtls_percent"], 0.0);
    assert_eq!(node(&g, "default/age").unwrap()["mode"], "PERMISSIVE");
}

/// `outrider demo` running until interrupted; SIGINT on drop, so it stops every process it
/// started and removes its work directory.
struct Demo {
    child: Child,
    lines: Vec<String>,
}

impl Demo {
    fn start() -> Demo {
        let mut child = Command::new(BIN)
            .args(["demo", "--requests", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo {
            child,
            lines: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(line) => {
                    let done = line.starts_with("Running until Ctrl-C");
                    demo.lines.push(line);
                    if done {
                        return demo;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        panic!("the demo did not finish its story: {:#?}", demo.lines);
    }

    /// The first line containing `needle`.
    fn line(&self, needle: &str) -> &str {
        self.lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {:#?}", self.lines))
    }

    /// The address printed after `label` on the line of `workload`.
    fn addr(&self, workload: &str, label: &str) -> SocketAddr {
        let line = self.line(&format!("    {workload} "));
        let words: Vec<&str> = line.split_whitespace().collect();
        let i = words.iter().position(|w| *w == label).unwrap();
        words[i + 1].parse().unwrap()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_demo_mesh_in_a_browser_before_and_after_strict() {
    if !tool_available("chromium") {
        return;
    }
    let demo = Demo::start();
    // The demo serves its own graph; a separate `outrider dashboard` scrapes the same sidecars.
    let own: SocketAddr = demo
        .line("the mesh as a graph")
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || matches!(
        http_get(own, "/api/graph"),
        Ok((200, _))
    )));
    let scrape = ["sentences", "age", "name-v1", "name-v2"]
        .iter()
        .map(|w| {
            let line = demo.line(&format!("    {w} "));
            let url = line.split("admin http://").nth(1).unwrap();
            url.split('/').next().unwrap().to_string()
        })
        .collect::<Vec<_>>()
        .join(",");
    let workdir = PathBuf::from(
        demo.lines[0]
            .split("(work dir ")
            .nth(1)
            .unwrap()
            .trim_end_matches(')'),
    );
    let front = demo.addr("sentences", "app");
    let age_inbound = demo.addr("age", "sidecar");
    let dashboard = Dashboard::start(&["--scrape", &scrape, "--interval", "1s"]);
    // The demo's last step (the gateway) leaves the mesh STRICT; this storyline starts from
    // PERMISSIVE, as the demo's first steps do.
    let policy = workdir.join("mesh").join("peer-authentication.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    replace_file(&policy, &text.replace("STRICT", "PERMISSIVE"));
    assert!(eventually(Duration::from_secs(20), || {
        node(&dashboard.graph("1m"), "default/age").is_some_and(|n| n["mode"] == "PERMISSIVE")
    }));

    // The user's requests and the intruder's, until every edge has been seen. The demo ends
    // PERMISSIVE with its AuthorizationPolicy (only sentences may call age): the intruder's
    // plaintext reaches age's sidecar and is answered 403.
    let traffic = |strict: bool| {
        // Under STRICT, sentences' calls to name v1 (DestinationRule: plaintext) are reset
        // too, so the front page fails when it picks v1: the demo's third step shows why.
        let status = http_get(front, "/").unwrap().0;
        assert!(status == 200 || (strict && status == 502), "{status}");
        let direct = http_get(age_inbound, "/");
        if strict {
            assert!(!matches!(&direct, Ok((200 | 403, _))), "{direct:?}");
        } else {
            assert!(
                matches!(&direct, Ok((403, body)) if body.trim_end() == "RBAC: access denied"),
                "{direct:?}"
            );
        }
    };
    let all = eventually(Duration::from_secs(30), || {
        traffic(false);
        let g = dashboard.graph("1m");
        ["default/age", "default/name-v2"]
            .iter()
            .all(|d| edge(&g, "default/sentences", d).is_some())
            && edge(&g, "unknown/127.0.0.1", "default/age")
                .is_some_and(|e| e["error_percent"] == 100.0)
    });
    let g = dashboard.graph("1m");
    assert!(all, "{g:#}");
    // The denied requests are still plaintext traffic on the edge, every one an error.
    let denied = edge(&g, "unknown/127.0.0.1", "default/age").unwrap();
    assert_eq!(denied["security"], "plaintext", "{denied}");
    assert_eq!(
        edge(&g, "default/sentences", "default/age").unwrap()["error_percent"],
        0.0,
        "{g:#}"
    );
    // Every edge between sidecars is mutual TLS; the intruder's is plaintext.
    for e in g["edges"].as_array().unwrap() {
        if e["source"] != "unknown" {
            assert_eq!(e["security"], "mtls", "{e}");
        }
    }
    let profile = temp_dir("dashboard-chromium");
    let dom = chromium(
        &[
            "--virtual-time-budget=3000",
            "--dump-dom",
            &dashboard.url("/?window=1m"),
        ],
        profile.path(),
    );
    let edges: Vec<&str> = dom.split(r#"<g class="edge "#).skip(1).collect();
    assert!(edges.len() >= 3, "{dom}");
    for e in &edges {
        if e.contains(r#"data-source="default/"#) {
            assert!(
                e.contains(r#"data-marker="padlock""#),
                "mesh edge without padlock: {e}"
            );
        }
    }
    let intruder =
        dom_edge(&dom, "unknown/127.0.0.1", "default/age").unwrap_or_else(|| panic!("{dom}"));
    assert!(intruder.contains(r#"data-marker="open""#), "{intruder}");
    let shots = screenshot_dir();
    let shoot = |name: &str, window: &str| {
        let png = shots.join(name);
        chromium(
            &[
                "--window-size=1100,470",
                "--virtual-time-budget=2000",
                &format!("--screenshot={}", png.display()),
                &dashboard.url(&format!("/?window={window}")),
            ],
            profile.path(),
        );
        assert!(std::fs::metadata(&png)
            .map(|m| m.len() > 5000)
            .unwrap_or(false));
    };
    shoot("demo-permissive.png", "1m");

    // STRICT, as the demo itself switches it: the mounted policy file changes.
    let policy = workdir.join("mesh").join("peer-authentication.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    replace_file(&policy, &text.replace("PERMISSIVE", "STRICT"));
    assert!(eventually(Duration::from_secs(20), || {
        node(&dashboard.graph("1m"), "default/age").is_some_and(|n| n["mode"] == "STRICT")
    }));
    let blocked = eventually(Duration::from_secs(30), || {
        traffic(true);
        // Once the plaintext of before has left the window, none is left at all.
        let g = dashboard.graph("8s");
        edge(&g, "unknown/127.0.0.1", "default/age").is_some_and(|e| e["security"] == "blocked")
            && !g["edges"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["security"] == "plaintext")
    });
    assert!(blocked, "{:#}", dashboard.graph("8s"));
    let dom = chromium(
        &[
            "--virtual-time-budget=3000",
            "--dump-dom",
            &dashboard.url("/?window=8s"),
        ],
        profile.path(),
    );
    let intruder =
        dom_edge(&dom, "unknown/127.0.0.1", "default/age").unwrap_or_else(|| panic!("{dom}"));
    assert!(intruder.contains(r#"data-marker="blocked""#), "{intruder}");
    assert!(!dom.contains(r#"data-marker="open""#), "{dom}");
    shoot("demo-strict.png", "8s");
}
