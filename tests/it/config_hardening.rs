//! Configuration hardening, through the built binary: an outbound `bind` off loopback is
//! refused by `outrider check` and `outrider run` (they share the loader) unless the workload
//! sets `allowNonLocalBind`, and a PeerAuthentication selector that matches no workload is a
//! warning that `outrider check` prints, not an error that blocks the load.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const WORKLOAD: &str = "\
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: sentences, namespace: default, labels: { app: sentences } }
spec:
  serviceAccount: sentences
  address: 127.0.0.1
  ports: [{ name: http, port: 8080, targetPort: 9080 }]
";

/// Writes `mesh.yaml` with `text` into a fresh temporary directory.
fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, text).expect("write mesh.yaml");
    (dir, file)
}

fn check(file: &Path) -> Output {
    Command::new(crate::common::BIN)
        .arg("check")
        .arg("--config")
        .arg(file)
        .output()
        .expect("run outrider check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn open_relay() -> String {
    format!(
        "{WORKLOAD}  outbound:\n    - {{ bind: \"0.0.0.0:9181\", to: \"api.example.com:443\" }}\n"
    )
}

#[test]
fn check_refuses_an_outbound_bind_off_loopback() {
    let (_dir, file) = config(&open_relay());
    let out = check(&file);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}{stderr}", text(&out.stdout));
    let at = format!("{}:9:", file.display());
    assert!(stderr.starts_with(&at), "{stderr}");
    assert!(
        stderr.contains(": spec.outbound[0].bind: 0.0.0.0:9181 is not a loopback address"),
        "{stderr}"
    );
    assert!(stderr.contains("spec.allowNonLocalBind: true"), "{stderr}");
}

#[test]
fn check_accepts_an_outbound_bind_off_loopback_when_allowed() {
    let allowed = open_relay().replace("  outbound:", "  allowNonLocalBind: true\n  outbound:");
    let (_dir, file) = config(&allowed);
    let out = check(&file);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("0.0.0.0:9181 -> api.example.com:443"));
}

#[test]
fn run_refuses_an_outbound_bind_off_loopback_before_listening() {
    let (dir, file) = config(&open_relay());
    let mut child = Command::new(crate::common::BIN)
        .arg("run")
        .arg("--config")
        .arg(&file)
        .arg("--workload")
        .arg("sentences")
        .arg("--cert-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run outrider run");
    // The loader refuses before anything binds; should it not, end the sidecar we started.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for outrider run") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("outrider run started with an outbound bind on 0.0.0.0");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:9:9: spec.outbound[0].bind: 0.0.0.0:9181 is not a loopback address",
            file.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_warns_about_a_selector_that_matches_no_workload_and_exits_0() {
    let stale = format!(
        "{WORKLOAD}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: stale, namespace: default }}
spec:
  selector:
    matchLabels: {{ app: retired }}
  mtls: {{ mode: DISABLE }}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: default, namespace: default }}
spec: {{ mtls: {{ mode: STRICT }} }}
"
    );
    let (_dir, file) = config(&stale);
    let out = check(&file);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!(
            "{}:14: spec.selector.matchLabels: PeerAuthentication default/stale: selector {{app=retired}} matches no workload in namespace default",
            file.display()
        )),
        "{stdout}"
    );
    // the STRICT rollout beside the stale policy takes effect
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("8080 "))
        .unwrap_or_else(|| panic!("no inbound row for 8080 in:\n{stdout}"));
    assert!(row.contains("STRICT"), "{row}");
}
