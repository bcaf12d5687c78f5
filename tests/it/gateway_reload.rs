//! The gateway's edge certificates replaced while curl keeps making requests: a
//! `serverCertificate` file renamed over, a `credentialName` directory swapped the way
//! Kubernetes updates a secret volume (`..data` symlink), then broken replacements that must
//! leave the last good certificate in place. `/certs` on the admin port and the certificate
//! metrics describe what is served.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{eventually, free_port, metric_sum, replace_file};
use crate::gateway::{served_cert, Edge, LabCerts};

/// Writes a secret the way the kubelet updates a secret volume: the files in a new
/// `..<version>` directory, a `..data` symlink renamed over the old one in one step, and one
/// symlink per key through `..data` (made once). The previous version directory is removed
/// after the swap, as the kubelet does.
fn k8s_secret(dir: &Path, version: &str, files: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let previous = std::fs::read_link(dir.join("..data")).ok();
    let versioned = format!("..{version}");
    std::fs::create_dir(dir.join(&versioned)).unwrap();
    for (key, contents) in files {
        std::fs::write(dir.join(&versioned).join(key), contents).unwrap();
    }
    std::os::unix::fs::symlink(&versioned, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (key, _) in files {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), link).unwrap();
        }
    }
    if let Some(old) = previous {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// curl in a loop against one gateway port until stopped: every request must be answered by
/// the app.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(labs_dir: PathBuf, port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, a, f) = (stop.clone(), answered.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match load_request(&labs_dir, port) {
                    Ok(()) => a.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        f.lock().unwrap().push(e);
                        0
                    }
                };
            }
        });
        Load {
            stop,
            answered,
            failures,
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until `n` more requests were answered.
    fn progress(&self, n: usize) {
        let from = self.answered.load(Ordering::SeqCst);
        assert!(
            eventually(Duration::from_secs(60), || self
                .answered
                .load(Ordering::SeqCst)
                >= from + n),
            "the load loop stalled; failures: {:?}",
            self.failures.lock().unwrap()
        );
    }

    /// Stops the loop; the failed requests.
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.answered.load(Ordering::SeqCst), failures)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The labs' request to `port`: answered by the app, or what went wrong.
fn load_request(labs_dir: &Path, port: u16) -> Result<(), String> {
    let r = crate::gateway::curl(
        labs_dir,
        &[
            "--cacert",
            "example.com.crt",
            "--resolve",
            &format!("sentences.example.com:{port}:127.0.0.1"),
            &format!("https://sentences.example.com:{port}/load"),
        ],
    );
    let answered = r.ok
        && r.status == 200
        && crate::gateway::Echo::parse(&r.body).is_some_and(|e| e.app == "sentences");
    if answered {
        Ok(())
    } else {
        Err(format!("{r:?}"))
    }
}

/// The serial the gateway serves on `port` now (decimal).
fn serial(labs: &LabCerts, port: u16) -> String {
    match served_cert(labs.dir(), port, Some("sentences.example.com")) {
        Ok((_, serial)) => serial,
        Err(e) => panic!("no certificate on {port}: {e}"),
    }
}

fn reloads(gateway: &crate::gateway::GatewayProc, server: &str, result: &str) -> f64 {
    metric_sum(
        &gateway.metrics_text(),
        "outrider_gateway_certificate_reloads_total",
        &[("server", server), ("result", result)],
    )
}

/// Whether a `/certs` serial (hex or decimal, any case, colons or not) is `n`.
fn serial_is(value: &str, n: u64) -> bool {
    let v = value.replace(':', "").to_ascii_lowercase();
    let v = v.trim_start_matches("0x");
    u64::from_str_radix(v, 16).ok() == Some(n) || v.parse::<u64>().ok() == Some(n)
}

#[test]
fn certificates_replaced_under_load_without_a_failed_request() {
    let Some(labs) = LabCerts::make() else { return };
    // Replacements from the same root: serial 10 with the same key (only the certificate file
    // changes), serial 11 with a new key (the secret swaps both).
    labs.leaf(
        "sentences-v2",
        "sentences.example.com",
        10,
        Some("sentences.example.com.key"),
    );
    labs.leaf("sentences-v3", "sentences.example.com", 11, None);
    let read = |f: &str| std::fs::read(labs.path(f)).unwrap();

    let edge = Edge::new();
    let certs = edge.config().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(
        labs.path("sentences.example.com.crt"),
        certs.join("sentences.crt"),
    )
    .unwrap();
    std::fs::copy(
        labs.path("sentences.example.com.key"),
        certs.join("sentences.key"),
    )
    .unwrap();
    let secret = edge.creds.path().join("sentences-credential");
    k8s_secret(
        &secret,
        "2025_01_01_00_00_00.000000001",
        &[
            ("tls.crt", read("sentences.example.com.crt")),
            ("tls.key", read("sentences.example.com.key")),
        ],
    );
    let (files_port, secret_port) = (free_port(), free_port());
    let gateway = format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: sentences-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {files_port}, name: https-files, protocol: HTTPS }}
      hosts: [ "sentences.example.com" ]
      tls: {{ mode: SIMPLE, serverCertificate: certs/sentences.crt, privateKey: certs/sentences.key }}
    - port: {{ number: {secret_port}, name: https-credential, protocol: HTTPS }}
      hosts: [ "sentences.example.com" ]
      tls: {{ mode: SIMPLE, credentialName: sentences-credential }}
---
{vs}"#,
        vs = edge.route_all_to_sentences("sentences", "sentences.example.com", "sentences-gateway"),
    );
    edge.write("gateway.yaml", &gateway);
    let run = edge.start(&[]);
    assert_eq!(serial(&labs, files_port), "0");
    assert_eq!(serial(&labs, secret_port), "0");

    let loads = [
        Load::start(labs.dir().to_path_buf(), files_port),
        Load::start(labs.dir().to_path_buf(), secret_port),
    ];
    for l in &loads {
        l.progress(3);
    }

    // The certificate file renamed over (same key): the next handshakes get serial 10.
    replace_file(
        &certs.join("sentences.crt"),
        &String::from_utf8(read("sentences-v2.crt")).unwrap(),
    );
    assert!(
        eventually(Duration::from_secs(10), || serial(&labs, files_port)
            == "10"),
        "the replaced file was never served: {}",
        run.gateway.logs()
    );
    // The secret swapped (new key and certificate at once): serial 11.
    k8s_secret(
        &secret,
        "2025_01_01_00_00_00.000000002",
        &[
            ("tls.crt", read("sentences-v3.crt")),
            ("tls.key", read("sentences-v3.key")),
        ],
    );
    assert!(
        eventually(Duration::from_secs(10), || serial(&labs, secret_port)
            == "11"),
        "the swapped secret was never served: {}",
        run.gateway.logs()
    );
    for l in &loads {
        l.progress(3);
    }
    assert!(
        reloads(&run.gateway, "https-files", "ok") >= 1.0,
        "{}",
        run.gateway.metrics_text()
    );
    assert!(
        reloads(&run.gateway, "https-credential", "ok") >= 1.0,
        "{}",
        run.gateway.metrics_text()
    );

    // Broken replacements: garbage in the file, a secret whose certificate is garbage. The
    // last good certificates stay in service, and the failures are counted.
    replace_file(&certs.join("sentences.crt"), "this is not a certificate\n");
    k8s_secret(
        &secret,
        "2025_01_01_00_00_00.000000003",
        &[
            ("tls.crt", b"garbage".to_vec()),
            ("tls.key", read("sentences-v3.key")),
        ],
    );
    for server in ["https-files", "https-credential"] {
        assert!(
            eventually(Duration::from_secs(10), || reloads(
                &run.gateway,
                server,
                "failed"
            ) >= 1.0),
            "a broken {server} replacement was not counted: {}",
            run.gateway.metrics_text()
        );
    }
    for l in &loads {
        l.progress(3);
    }
    assert_eq!(serial(&labs, files_port), "10");
    assert_eq!(serial(&labs, secret_port), "11");

    for (l, port) in loads.into_iter().zip([files_port, secret_port]) {
        let (answered, failures) = l.finish();
        assert!(
            failures.is_empty(),
            "{} of {} requests to {port} failed while certificates changed: {failures:#?}\ngateway: {}",
            failures.len(),
            answered + failures.len(),
            run.gateway.logs()
        );
    }

    // /certs lists both edge certificates as served now.
    let certs_json: serde_json::Value = serde_json::from_str(&run.gateway.admin("/certs"))
        .unwrap_or_else(|e| panic!("/certs is not JSON: {e}"));
    let edge_certs = certs_json["edge"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"edge\" list in /certs: {certs_json}"));
    for (port, server, want) in [
        (files_port, "https-files", 10),
        (secret_port, "https-credential", 11),
    ] {
        let entry = edge_certs
            .iter()
            .find(|c| c["server"] == server)
            .unwrap_or_else(|| panic!("{server} not in /certs: {certs_json}"));
        assert!(
            entry["port"] == port || entry["port"].as_str() == Some(port.to_string().as_str()),
            "{entry}"
        );
        let text = |k: &str| entry[k].as_str().unwrap_or_default().to_string();
        assert!(text("subject").contains("sentences.example.com"), "{entry}");
        assert!(text("issuer").contains("example.com"), "{entry}");
        assert!(serial_is(&text("serial"), want), "{entry}");
        assert!(entry["sans"].is_array(), "{entry}");
        assert!(
            !text("not_after").is_empty() && !text("not_before").is_empty(),
            "{entry}"
        );
        assert!(!text("source").is_empty(), "{entry}");
    }

    // The expiry gauge: the v1 certificates were made for 365 days.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for server in ["https-files", "https-credential"] {
        let expiry = metric_sum(
            &run.gateway.metrics_text(),
            "outrider_gateway_certificate_expiry_timestamp_seconds",
            &[("server", server)],
        );
        assert!(
            expiry > now + 300.0 * 86400.0 && expiry < now + 400.0 * 86400.0,
            "{server}: expiry {expiry}, now {now}"
        );
    }
}
