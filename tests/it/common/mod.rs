//! Helpers for the integration tests: the built binary, scratch directories, free loopback
//! ports, a PKI made with the binary, sidecar processes that are killed on drop, small real
//! apps (echo, HTTP, server-first).

pub mod ca;
pub mod netns;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_outrider");

/// Runs the built binary to completion and returns its exit status and output.
pub fn outrider(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the outrider binary runs")
}

/// Like [`outrider`]; fails the test with the binary's output unless it succeeded.
pub fn outrider_ok(args: &[&str]) -> Output {
    let out = outrider(args);
    assert!(
        out.status.success(),
        "outrider {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh directory `outrider-<name>-<random>` under the system temp dir, removed on drop
/// (also when the test fails). Random rather than keyed by the process id: every module runs
/// in this one process, and two tests must never share (or wipe) each other's directory.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("outrider-{name}-"))
        .tempdir()
        .expect("a temp dir")
}

/// A CA directory plus one identity directory per service account.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        outrider_ok(&[
            "ca",
            "init",
            "--dir",
            ca.to_str().unwrap(),
            "--trust-domain",
            "cluster.local",
        ]);
        Pki { dir }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Issues `spiffe://cluster.local/ns/<ns>/sa/<sa>` into `<tmp>/<name>` and returns it.
    pub fn issue(&self, name: &str, ns: &str, sa: &str) -> PathBuf {
        self.issue_args(name, ns, sa, &[])
    }

    /// Like [`Pki::issue`], with a DNS SAN as well (for clients such as curl that check one).
    pub fn issue_with_dns(&self, name: &str, ns: &str, sa: &str, dns: &str) -> PathBuf {
        self.issue_args(name, ns, sa, &["--dns", dns])
    }

    fn issue_args(&self, name: &str, ns: &str, sa: &str, extra: &[&str]) -> PathBuf {
        let out = self.dir.path().join(name);
        let ca_dir = self.ca_dir();
        let mut args = vec![
            "ca",
            "issue",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--namespace",
            ns,
            "--service-account",
            sa,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        outrider_ok(&args);
        out
    }
}

/// Replaces `path` with `contents` in one step (write a sibling, rename over), as a
/// ConfigMap update does: a watcher polling the file never reads it empty or half-written.
/// The sibling's `.tmp` suffix keeps it out of a configuration directory's `*.yaml` files.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A loopback port that was free a moment ago and that no other test in this process got
/// from here: once a probe socket is closed the kernel may hand the same port to the next
/// bind, and tests of every module now ask concurrently.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    // A test that panicked while holding the lock left the set intact: keep using it.
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
    panic!("no loopback port that was not handed out before");
}

/// A sidecar process; killed when dropped.
pub struct Sidecar {
    pub child: Child,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub ready: SocketAddr,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts `outrider run` for `workload` and waits until it reports ready.
    pub fn start(config: &Path, workload: &str, cert_dir: &Path, extra: &[&str]) -> Sidecar {
        Sidecar::start_with(
            config,
            workload,
            &["--cert-dir", cert_dir.to_str().unwrap()],
            extra,
        )
    }

    /// Starts `outrider run` with the given identity-source flags (`--cert-dir ...` or
    /// `--ca-address ...`) and waits until it reports ready.
    pub fn start_with(config: &Path, workload: &str, identity: &[&str], extra: &[&str]) -> Sidecar {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let ready: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("sidecar.log");
        let child = Command::new(BIN)
            .args([
                "run",
                "--config",
                config.to_str().unwrap(),
                "--workload",
                workload,
            ])
            .args(identity)
            .args([
                "--admin-addr",
                &admin.to_string(),
                "--metrics-addr",
                &metrics.to_string(),
            ])
            .args(["--ready-addr", &ready.to_string()])
            // Inbound on loopback unless the test picks another loopback address.
            .args(if extra.contains(&"--inbound-ip") {
                &[][..]
            } else {
                &["--inbound-ip", "127.0.0.1"][..]
            })
            .args(extra)
            .env("OUTRIDER_LOG", "info")
            // One malloc arena: freed memory is reused by the next connection whichever
            // thread serves it, so RSS tests see leaks rather than arena spread.
            .env("MALLOC_ARENA_MAX", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sidecar");
        let mut s = Sidecar {
            child,
            admin,
            metrics,
            ready,
            log,
            _logdir: logdir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("sidecar {workload} exited {status}: {}", s.logs());
            }
            if let Ok((200, _)) = http_get(s.ready, "/healthz/ready") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar {workload} never became ready: {}",
                s.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/stats/prometheus")
            .expect("scrape")
            .1
    }

    pub fn admin(&self, path: &str) -> String {
        http_get(self.admin, path).expect("admin").1
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sum of a metric's samples whose label set contains every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A background app: each connection handled on its own thread by `handler`. Dropping it
/// closes the listener, so finished tests leave no sockets or threads behind in the process
/// the later ones run in.
pub struct App {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl App {
    pub fn spawn(handler: fn(TcpStream)) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    std::thread::spawn(move || handler(s));
                }
            }
        });
        App { port, stop }
    }

    /// Echoes every byte back until the client half-closes, then closes.
    pub fn echo() -> App {
        App::spawn(|mut s| {
            let mut buf = [0u8; 8192];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
        })
    }

    /// Answers one HTTP request with `200 OK` and the body `hello from the app`.
    pub fn http() -> App {
        App::spawn(|mut s| {
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let body = "hello from the app";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        })
    }

    /// Speaks first (like MySQL or SMTP): sends a greeting without waiting for the client.
    pub fn server_first() -> App {
        App::spawn(|mut s| {
            let _ = s.write_all(b"220 greetings\r\n");
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
    }
}

/// Writes `msg`, half-closes, reads everything back.
pub fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    Ok(back)
}

/// Whether an external tool is usable; a missing tool skips the test (prints why) unless
/// `OUTRIDER_REQUIRE_TOOLS=1`, when it fails it.
pub fn tool_available(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    required_or_skip(found, tool)
}

/// The policy for anything outside Rust a test needs: present → run; absent → skip with a
/// printed reason, or fail when `OUTRIDER_REQUIRE_TOOLS=1` (CI installs everything).
pub fn required_or_skip(found: bool, what: &str) -> bool {
    if !found {
        if std::env::var("OUTRIDER_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{what} is required (OUTRIDER_REQUIRE_TOOLS=1) but not installed");
        }
        eprintln!("skipping: {what} is not installed");
    }
    found
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Two workloads: `sentences` (client, with an outbound to `age`) and `age` (server).
pub struct Mesh {
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub age_in: u16,
    pub sentences_out: u16,
}

pub fn policy(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{ name: default, namespace: istio-system }}\nspec: {{ mtls: {{ mode: {mode} }} }}\n"
    )
}

impl Mesh {
    pub fn new(age_app: u16, age_protocol: &str, mode: &str) -> Mesh {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let age_in = free_port();
        let sentences_out = free_port();
        let sentences_in = free_port();
        let mesh = format!(
            r#"apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: {{ name: mesh }}
spec: {{ trustDomain: cluster.local, rootNamespace: istio-system }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: sentences, namespace: default, labels: {{ app: sentences, version: v1 }} }}
spec:
  serviceAccount: sentences
  address: 127.0.0.1
  ports:
    - {{ name: http, port: {sentences_in}, targetPort: {sentences_app}, protocol: HTTP }}
  outbound:
    - {{ bind: "127.0.0.1:{sentences_out}", to: "age.default:tcp" }}
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: age, namespace: default, labels: {{ app: age, version: v1 }} }}
spec:
  serviceAccount: age
  address: 127.0.0.1
  ports:
    - {{ name: tcp, port: {age_in}, targetPort: {age_app}, protocol: {age_protocol} }}
"#,
            sentences_app = free_port(),
        );
        std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
        std::fs::write(dir.path().join("policy.yaml"), policy(mode)).unwrap();
        pki.issue("sentences", "default", "sentences");
        pki.issue_with_dns("age", "default", "age", "age");
        Mesh {
            pki,
            dir,
            age_in,
            sentences_out,
        }
    }

    pub fn config(&self) -> &Path {
        self.dir.path()
    }

    pub fn sidecar(&self, workload: &str) -> Sidecar {
        Sidecar::start(
            self.config(),
            workload,
            &self.pki.dir.path().join(workload),
            &["--detect-timeout", "300ms"],
        )
    }

    pub fn age_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.age_in))
    }

    pub fn sentences_out_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sentences_out))
    }
}

/// An app port the test holds itself, to prove that no connection ever reached it: nothing
/// serves it, connections just queue in the listener's backlog.
pub struct Untouched {
    listener: TcpListener,
}

impl Default for Untouched {
    fn default() -> Self {
        Untouched::new()
    }
}

impl Untouched {
    pub fn new() -> Untouched {
        Untouched {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    /// Fails unless no connection arrived so far. No sleep proves the absence: a marker
    /// connection is queued now, and the backlog is first in, first out, so the first
    /// connection accepted must be the marker; any earlier one would come before it.
    pub fn assert_no_connection(&self) {
        let marker = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        let (_, first) = self.listener.accept().unwrap();
        assert_eq!(
            first,
            marker.local_addr().unwrap(),
            "a connection from {first} reached the app before the marker"
        );
    }
}

/// Holds a live echo transfer open through `through` while `sidecar` gets SIGTERM, and
/// checks the drain: the sidecar stops accepting on `listener` (a refused connection, seen
/// while the process is still running), the transfer in flight carries on to the end, and the
/// process then exits zero on its own. A sidecar that ignores SIGTERM never refuses and fails
/// here; one that exits at once breaks the transfer.
pub fn assert_drains(sidecar: &mut Sidecar, through: SocketAddr, listener: SocketAddr) {
    let mut s = TcpStream::connect_timeout(&through, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = |i: u8| vec![i; 16 * 1024];
    let exchange = |s: &mut TcpStream, i: u8| {
        s.write_all(&chunk(i)).unwrap();
        let mut back = vec![0u8; 16 * 1024];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("exchange {i} of the live transfer: {e}"));
        assert!(back == chunk(i), "exchange {i} came back changed");
    };
    for i in 0..3 {
        exchange(&mut s, i);
    }
    let pid = sidecar.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    // New connections are refused while the live one keeps the process draining.
    let refused = eventually(Duration::from_secs(5), || {
        matches!(
            TcpStream::connect_timeout(&listener, Duration::from_secs(1)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    });
    assert!(refused, "{listener} still accepts after SIGTERM");
    assert!(
        sidecar.child.try_wait().unwrap().is_none(),
        "the sidecar exited with a transfer in flight: {}",
        sidecar.logs()
    );
    for i in 3..8 {
        exchange(&mut s, i);
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let end = s.read_to_end(&mut rest);
    assert!(
        matches!(end, Ok(0)),
        "the drained transfer should end with a clean EOF: {end:?}"
    );
    // Exits on its own once the transfer ended (no second signal).
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = sidecar.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did not exit after the drain"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", sidecar.logs());
}

/// Waits for a spawned external process (stdout and stderr piped) and collects its output,
/// killing it if it has not exited within `deadline`: a client that would hang (an
/// `openssl s_client` a broken server never closes) fails the test instead of hanging it.
pub fn bounded_output(mut child: Child, what: &str, deadline: Duration) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} was still running after {deadline:?} and was killed: {}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// How a read on a connection the peer should close ended: `"eof"`, `"reset"`, `"timeout"`
/// (the peer kept it open), `"data"` (it answered), or another error kind.
pub fn close_kind(r: std::io::Result<usize>) -> String {
    match r {
        Ok(0) => "eof".into(),
        Ok(_) => "data".into(),
        Err(e) => match e.kind() {
            std::io::ErrorKind::ConnectionReset => "reset".into(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".into(),
            other => format!("{other:?}"),
        },
    }
}

/// Sends `msg` on a new connection to `addr`, half-closes, and reports how the peer ended it,
/// as [`close_kind`] names it. A reset can surface at any step: the write or the half-close
/// fails if the RST arrived first (the socket reports the error once, and a read after it
/// would only see the end of the stream), so those errors count as `"reset"` too.
pub fn send_and_close_kind(addr: SocketAddr, msg: &[u8]) -> String {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, NotConnected};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent = s
        .write_all(msg)
        .and_then(|()| s.shutdown(std::net::Shutdown::Write));
    if let Err(e) = sent {
        return match e.kind() {
            ConnectionReset | BrokenPipe | NotConnected => "reset".into(),
            other => format!("{other:?} while sending"),
        };
    }
    let mut back = Vec::new();
    close_kind(s.read_to_end(&mut back).map(|_| back.len()))
}
