//! Helpers shared by the CA tests: a CA made and run by the built binary, bootstrap tokens.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{outrider, BIN};

/// A path as the `&str` a command-line argument needs.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `outrider ca init --dir <dir>` for cluster.local.
pub fn init_ca(dir: &Path) {
    let o = outrider(&[
        "ca",
        "init",
        "--dir",
        s(dir),
        "--trust-domain",
        "cluster.local",
    ]);
    assert!(
        o.status.success(),
        "ca init: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `outrider ca token` for default/<sa>.
pub fn token(dir: &Path, sa: &str) -> String {
    let o = outrider(&[
        "ca",
        "token",
        "--dir",
        s(dir),
        "--namespace",
        "default",
        "--service-account",
        sa,
        "--ttl",
        "1h",
    ]);
    assert!(
        o.status.success(),
        "ca token: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A running `outrider ca serve` process; killed on drop.
pub struct CaProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl CaProcess {
    /// Starts `ca serve --dir <dir> --listen <listen> --dns localhost <extra>` and waits for
    /// its "listening on" line. Logs go beside `dir`: `<dir>.log-<listen>`.
    pub fn start(dir: &Path, listen: &str, extra: &[&str]) -> CaProcess {
        let log_path = dir.with_extension(format!("log-{}", listen.replace(':', "_")));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(BIN)
            .args([
                "ca",
                "serve",
                "--dir",
                s(dir),
                "--listen",
                listen,
                "--dns",
                "localhost",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("ca serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ca serve printed its address within 20 s");
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "unexpected first line {line:?}; log: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )
            });
        CaProcess { child, addr }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether Python with grpcio and grpcio-tools is usable (skip or fail per
/// `OUTRIDER_REQUIRE_TOOLS`).
pub fn python_grpc_available() -> bool {
    let found = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .output()
        .is_ok_and(|o| o.status.success());
    super::required_or_skip(
        found,
        "python3 with grpcio and grpcio-tools (pip install grpcio grpcio-tools)",
    )
}

/// Generates Python stubs from Istio's `ca.proto` (tests/fixtures) into `<dir>/stubs`, as a
/// user of Istio's published protocol would; returns the stubs directory.
pub fn python_stubs(dir: &std::path::Path) -> std::path::PathBuf {
    let stubs = dir.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = std::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", fixtures.display()))
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg(fixtures.join("ca.proto"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stubs
}
