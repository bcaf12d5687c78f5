//! `outrider check` on the example configurations of `examples/mesh/`: the mode printed per
//! port for each case of issue 3's "Done when", and a failing configuration's exit code; and on
//! the compose labs' folders with their AuthorizationPolicy and STRICT steps.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{temp_dir, BIN};

fn check(files: &[&str], extra: &[&str]) -> Output {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mesh");
    let mut cmd = Command::new(BIN);
    cmd.arg("check");
    for f in files {
        cmd.arg("--config").arg(dir.join(f));
    }
    cmd.args(extra);
    cmd.output().expect("run outrider check")
}

fn stdout_ok(files: &[&str], extra: &[&str]) -> String {
    let out = check(files, extra);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "check failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The inbound row of `port` in the table, split into columns.
fn inbound_row(stdout: &str, workload: &str, port: u16) -> Vec<String> {
    let section = stdout
        .split("\nworkload ")
        .find(|s| s.starts_with(&format!("{workload} ")))
        .unwrap_or_else(|| panic!("no workload {workload} in:\n{stdout}"));
    let line = section
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{port} ")))
        .unwrap_or_else(|| panic!("no port {port} for {workload} in:\n{stdout}"));
    let cols: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    cols
}

fn assert_mode(stdout: &str, workload: &str, port: u16, mode: &str, decided_by: &str) {
    let row = inbound_row(stdout, workload, port);
    assert_eq!(row[4], mode, "{workload}:{port} in:\n{stdout}");
    assert_eq!(row[5..].join(" "), decided_by, "{workload}:{port}");
}

#[test]
fn mesh_permissive() {
    let out = stdout_ok(&["mesh.yaml", "mesh-permissive.yaml"], &[]);
    for (w, port) in [
        ("sentences", 8080),
        ("age", 8081),
        ("name-v1", 8082),
        ("name-v2", 8083),
    ] {
        assert_mode(
            &out,
            w,
            port,
            "PERMISSIVE",
            "PeerAuthentication istio-system/default (mesh)",
        );
    }
    assert!(out.contains("no warnings"), "{out}");
}

#[test]
fn mesh_strict() {
    let out = stdout_ok(&["mesh.yaml", "mesh-strict.yaml"], &[]);
    for (w, port) in [
        ("sentences", 8080),
        ("age", 8081),
        ("name-v1", 8082),
        ("name-v2", 8083),
    ] {
        assert_mode(
            &out,
            w,
            port,
            "STRICT",
            "PeerAuthentication istio-system/default (mesh)",
        );
    }
}

#[test]
fn namespace_strict_over_mesh_permissive() {
    let out = stdout_ok(
        &["mesh.yaml", "mesh-permissive.yaml", "namespace-strict.yaml"],
        &[],
    );
    assert_mode(
        &out,
        "age",
        8081,
        "STRICT",
        "PeerAuthentication default/default (namespace)",
    );
}

#[test]
fn workload_permissive_over_namespace_strict() {
    let out = stdout_ok(
        &[
            "mesh.yaml",
            "mesh-permissive.yaml",
            "namespace-strict.yaml",
            "workload-permissive.yaml",
        ],
        &[],
    );
    assert_mode(
        &out,
        "age",
        8081,
        "PERMISSIVE",
        "PeerAuthentication default/age (workload)",
    );
    assert_mode(
        &out,
        "name-v1",
        8082,
        "STRICT",
        "PeerAuthentication default/default (namespace)",
    );
}

#[test]
fn port_level_disable() {
    let out = stdout_ok(&["mesh.yaml", "mesh-strict.yaml", "port-disable.yaml"], &[]);
    assert_mode(
        &out,
        "age",
        8081,
        "DISABLE",
        "PeerAuthentication default/age-ports portLevelMtls[9081]",
    );
    assert_mode(
        &out,
        "sentences",
        8080,
        "STRICT",
        "PeerAuthentication istio-system/default (mesh)",
    );
    // Auto mTLS follows: sentences sends plaintext to age's DISABLE port.
    assert!(
        out.contains("127.0.0.1:8081  age       DISABLE  auto mTLS: endpoint port is DISABLE"),
        "{out}"
    );
}

#[test]
fn name_subsets_under_permissive_mesh() {
    let out = stdout_ok(
        &["mesh.yaml", "mesh-permissive.yaml", "name-subsets.yaml"],
        &["--workload", "sentences"],
    );
    assert_mode(
        &out,
        "sentences",
        8080,
        "PERMISSIVE",
        "PeerAuthentication istio-system/default (mesh)",
    );
    let row = |endpoint: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.contains(endpoint))
            .unwrap_or_else(|| panic!("no endpoint {endpoint} in:\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let v1 = row("127.0.0.1:8082");
    assert_eq!(
        &v1[..5],
        ["v1", "50", "127.0.0.1:8082", "name-v1", "DISABLE"]
    );
    assert_eq!(v1[5..].join(" "), "DestinationRule default/name subset v1");
    let v2 = row("127.0.0.1:8083");
    assert_eq!(
        &v2[..5],
        ["v2", "50", "127.0.0.1:8083", "name-v2", "ISTIO_MUTUAL"]
    );
    assert_eq!(v2[5..].join(" "), "DestinationRule default/name subset v2");
    assert!(
        out.contains("routes: VirtualService default/name http[0]"),
        "{out}"
    );
    assert!(out.contains("no warnings"), "{out}");
}

#[test]
fn name_subsets_under_strict_mesh_warn_about_plaintext() {
    let out = stdout_ok(&["mesh.yaml", "mesh-strict.yaml", "name-subsets.yaml"], &[]);
    assert!(
        out.contains("DestinationRule default/name subset v1 sends plaintext to 127.0.0.1:8082 (workload name-v1), whose mode is STRICT"),
        "{out}"
    );
}

#[test]
fn json_output() {
    let out = stdout_ok(
        &["mesh.yaml", "mesh-permissive.yaml", "name-subsets.yaml"],
        &["--output", "json", "--workload", "sentences"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["trust_domain"], "cluster.local");
    let plan = &v["plans"][0];
    assert_eq!(
        plan["workload"]["spiffe_id"],
        "spiffe://cluster.local/ns/default/sa/sentences"
    );
    assert_eq!(plan["inbound"][0]["mode"], "PERMISSIVE");
    let routes = &plan["outbound"][1]["routes"];
    assert_eq!(routes[0]["endpoints"][0]["tls"]["mode"], "DISABLE");
    assert_eq!(routes[1]["endpoints"][0]["tls"]["mode"], "ISTIO_MUTUAL");
    assert_eq!(
        routes[1]["endpoints"][0]["tls"]["sni"],
        "outbound_.8083_.v2_.name.default.svc.cluster.local"
    );
    assert_eq!(
        routes[1]["endpoints"][0]["tls"]["allowed_ids"][0],
        "spiffe://cluster.local/ns/default/sa/name"
    );
    assert!(v["warnings"].as_array().unwrap().is_empty());
}

#[test]
fn invalid_configuration_fails_with_location() {
    let tmp = temp_dir("check");
    let dir = tmp.path();
    let mesh = dir.join("mesh");
    std::fs::create_dir_all(&mesh).unwrap();
    std::fs::write(
        mesh.join("strict.yaml"),
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls: { mode: STRIKT }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(["check", "--config", "mesh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "mesh/strict.yaml:6:17: spec.mtls.mode: unknown variant \"STRIKT\", expected one of UNSET, DISABLE, PERMISSIVE, STRICT"
    );
    let out = Command::new(BIN)
        .current_dir(dir)
        .args(["check", "--config", "mesh/strict.yaml", "--workload", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// The compose labs' mesh folders (captured: `mesh/`, explicit-bind: `mesh-explicit/`) with
/// the STRICT step copied in (`policies/strict.yaml` as `peer-authentication.yaml`): every
/// workload is STRICT by the mesh-wide policy — the edge is the ingress gateway, which calls
/// `sentences` over mTLS, so no workload-level exception is left — and the captured lab
/// declares its workloads captured on their own port with no outbound binds.
#[test]
fn compose_labs_strict_has_no_exception_for_the_edge() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose");
    for lab in ["mesh", "mesh-explicit"] {
        let out = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(root.join(lab).join("mesh.yaml"))
            .arg("--config")
            .arg(root.join("policies/strict.yaml"))
            .output()
            .expect("run outrider check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{lab}: {stdout}");
        // (The captured lab's addresses are compose service names: outside Docker `check`
        // warns that they do not resolve, which is expected here.)
        // One workload's section, its whitespace collapsed (the tables' column widths vary).
        let section = |w: &str| {
            stdout
                .split("\nworkload ")
                .find(|s| s.starts_with(&format!("{w} ")))
                .unwrap_or_else(|| panic!("{lab}: no workload {w} in:\n{stdout}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let app_port = if lab == "mesh" { "8080" } else { "9080" };
        assert!(!stdout.contains("sentences-edge"), "{lab}: {stdout}");
        for w in ["sentences", "age", "name-v1", "name-v2"] {
            assert!(
                section(w).contains(&format!(
                    "8080 http {app_port} HTTP STRICT PeerAuthentication istio-system/default (mesh)"
                )),
                "{lab}: {w}: {stdout}"
            );
        }
        let captured = std::fs::read_to_string(root.join(lab).join("mesh.yaml")).unwrap();
        if lab == "mesh" {
            assert_eq!(captured.matches("capture: true").count(), 4, "{captured}");
            assert!(!captured.contains("outbound:"), "{captured}");
            assert!(section("sentences").contains("outbound: none"), "{stdout}");
        } else {
            assert!(!captured.contains("capture:"), "{captured}");
            assert!(
                section("sentences").contains("127.0.0.1:9181 -> age.default:http"),
                "{stdout}"
            );
        }
    }
}

/// The compose labs' edge: the ingress gateway's plan in each mesh folder (`gateway.yaml`:
/// SIMPLE on 8443 from the `sentences-credential` secret, the redirect on 8080, both routed
/// to `sentences` over mTLS), and the MUTUAL step (`policies/gateway-mutual.yaml` copied over
/// `gateway.yaml`).
#[test]
fn compose_labs_gateway_simple_then_mutual() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose");
    let check = |configs: &[std::path::PathBuf]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--workload", "ingressgateway"]);
        for c in configs {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().expect("run outrider check");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}");
        stdout
    };
    for lab in ["mesh", "mesh-explicit"] {
        let simple = check(&[root.join(lab)]);
        assert!(
            simple.contains("server https (Gateway default/sentences-gateway, HTTPS, hosts sentences.example.com): SIMPLE, certificate credential sentences-credential"),
            "{lab}: {simple}"
        );
        assert!(
            simple.contains("server http (Gateway default/sentences-gateway, HTTP, hosts sentences.example.com): plaintext, httpsRedirect"),
            "{lab}: {simple}"
        );
        assert_eq!(
            simple
                .matches("sentences.default.svc.cluster.local:8080")
                .count(),
            2,
            "{lab}: {simple}"
        );
        assert!(simple.contains("ISTIO_MUTUAL"), "{lab}: {simple}");
        let mutual = check(&[
            root.join(lab).join("mesh.yaml"),
            root.join("policies/gateway-mutual.yaml"),
        ]);
        assert!(
            mutual.contains("HTTPS, hosts sentences.example.com): MUTUAL, certificate credential sentences-credential"),
            "{lab}: {mutual}"
        );
    }
}

/// The compose lab's mesh folder with its AuthorizationPolicy step copied in
/// (`deploy/compose/policies/age-callers.yaml`): only `age` is selected, and `check` warns that
/// under PERMISSIVE a plaintext client never matches the principal (the lab's 403 step).
#[test]
fn compose_lab_age_callers_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose");
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(root.join("mesh"))
        .arg("--config")
        .arg(root.join("policies/age-callers.yaml"))
        .output()
        .expect("run outrider check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let section = |w: &str| {
        stdout
            .split("\nworkload ")
            .find(|s| s.starts_with(&format!("{w} ")))
            .unwrap_or_else(|| panic!("no workload {w} in:\n{stdout}"))
            .to_string()
    };
    assert!(
        section("age").contains("authorization on port 8080: ALLOW default/age-callers"),
        "{stdout}"
    );
    for w in ["sentences", "name-v1", "name-v2"] {
        assert!(
            section(w).contains("authorization on port 8080: none (everything allowed)"),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("age-callers rule 0 uses principals on workload age port 8080 (HTTP), whose mode PERMISSIVE accepts plaintext"),
        "{stdout}"
    );
}

/// The compose lab's end-user authentication step (`deploy/compose/policies/require-jwt.yaml`,
/// copied into the mesh folder beside `age-callers.yaml`): both apply to `age` only, and its
/// port checks JWTs from the `auth` service's issuer. (The storyline itself runs in
/// `jwt_lab` and in scripts/compose-e2e.sh.)
#[test]
fn compose_lab_require_jwt_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose");
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(root.join("mesh"))
        .arg("--config")
        .arg(root.join("policies/age-callers.yaml"))
        .arg("--config")
        .arg(root.join("policies/require-jwt.yaml"))
        .output()
        .expect("run outrider check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let section = |w: &str| {
        stdout
            .split("\nworkload ")
            .find(|s| s.starts_with(&format!("{w} ")))
            .unwrap_or_else(|| panic!("no workload {w} in:\n{stdout}"))
            .to_string()
    };
    assert!(
        section("age").contains(
            "authorization on port 8080: ALLOW default/age-callers, ALLOW default/require-jwt"
        ),
        "{stdout}"
    );
    assert!(
        section("age").contains("authentication on port 8080: default/jwt-auth jwtRules[0] (issuer http://auth:8080/auth/realms/mesh, jwksUri http://auth:8080/auth/realms/mesh/protocol/openid-connect/certs)"),
        "{stdout}"
    );
    for w in ["sentences", "name-v1", "name-v2"] {
        assert!(
            section(w).contains("authentication on port 8080: none (no JWT checked)"),
            "{stdout}"
        );
    }
}

/// A captured workload's plan shows where its captured connections go, by destination, and
/// an address that does not resolve is a warning (not an error: DNS may come later).
#[test]
fn check_prints_the_capture_map_of_a_captured_workload() {
    let dir = temp_dir("check-capture");
    let file = dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        "\
apiVersion: outrider.dev/v1alpha1
kind: Mesh
metadata: { name: mesh }
spec: { outboundTrafficPolicy: { mode: REGISTRY_ONLY } }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: client, labels: { app: client } }
spec: { serviceAccount: client, address: 10.0.0.1, capture: true }
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age, labels: { app: age } }
spec:
  serviceAccount: age
  address: 10.0.0.2
  ports: [{ name: http, port: 8080, protocol: HTTP }]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: name, labels: { app: name } }
spec:
  serviceAccount: name
  address: name.does-not-resolve.invalid
  ports: [{ name: http, port: 8080, protocol: HTTP }]
",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = stdout
        .split("\nworkload ")
        .find(|s| s.starts_with("client "))
        .unwrap();
    assert!(
        client.contains("captured outbound (REGISTRY_ONLY: any other destination is refused)"),
        "{client}"
    );
    assert!(
        client.contains("inbound on undeclared ports: PERMISSIVE (default PERMISSIVE"),
        "{client}"
    );
    let row: Vec<&str> = client
        .lines()
        .find(|l| l.trim_start().starts_with("10.0.0.2:8080"))
        .unwrap_or_else(|| panic!("no row for 10.0.0.2:8080:\n{client}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..3],
        [
            "10.0.0.2:8080",
            "10.0.0.2:8080",
            "age.default.svc.cluster.local:8080"
        ]
    );
    assert!(
        stdout.contains("address \"name.does-not-resolve.invalid\" does not resolve here")
            && stdout.contains("\nwarnings (1):\n"),
        "{stdout}"
    );
    // Workloads that are not captured print no capture section.
    let age = stdout
        .split("\nworkload ")
        .find(|s| s.starts_with("age "))
        .unwrap();
    assert!(!age.contains("captured"), "{age}");
    // JSON carries the same map.
    let out = Command::new(BIN)
        .args([
            "check",
            "--config",
            file.to_str().unwrap(),
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["capture_maps"][0]["workload"], "client");
    assert_eq!(
        json["capture_maps"][0]["destinations"][0]["service"],
        "age.default.svc.cluster.local:8080"
    );
    assert_eq!(
        json["capture_maps"][0]["unresolved"][0],
        "name.does-not-resolve.invalid"
    );
}

/// A gateway workload's plan: each port with its servers (protocol, hosts, TLS mode and where
/// the certificate comes from, relative paths against the YAML file's directory), the rules
/// bound to each server with their destinations, and the gateway warnings; JSON has it too.
#[test]
fn check_prints_a_gateway() {
    let dir = temp_dir("check-gateway");
    let file = dir.path().join("edge.yaml");
    std::fs::write(
        &file,
        "\
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: ingressgateway, namespace: istio-system, labels: { istio: ingressgateway, app: istio-ingressgateway } }
spec:
  role: gateway
  serviceAccount: istio-ingressgateway-service-account
  address: ingressgateway
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: sentences, namespace: default, labels: { app: sentences } }
spec:
  serviceAccount: sentences
  address: sentences
  ports: [{ name: http, port: 8080, protocol: HTTP }]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: sentences-gateway, namespace: default }
spec:
  selector: { istio: ingressgateway }
  servers:
    - port: { number: 8443, name: https, protocol: HTTPS }
      hosts: [ \"sentences.example.com\" ]
      tls: { mode: MUTUAL, serverCertificate: certs/s.crt, privateKey: certs/s.key, caCertificates: certs/ca.crt }
    - port: { number: 8080, name: http, protocol: HTTP }
      hosts: [ \"sentences.example.com\" ]
      tls: { httpsRedirect: true }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: sentences, namespace: default }
spec:
  hosts: [ \"sentences.example.com\" ]
  gateways: [ sentences-gateway, missing-gateway ]
  http:
    - match: [{ uri: { prefix: /api } }]
      route:
        - destination: { host: sentences, port: { number: 8080 } }
",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["check", "--config", file.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let stdout = run(&[]);
    let gateway = stdout
        .split("\nworkload ")
        .find(|s| s.starts_with("ingressgateway "))
        .unwrap_or_else(|| panic!("no gateway in:\n{stdout}"));
    let certs = dir.path().join("certs");
    for want in [
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account, gateway)".to_string(),
        "port 8080 (plaintext):".to_string(),
        "server http (Gateway default/sentences-gateway, HTTP, hosts sentences.example.com): plaintext, httpsRedirect (301 to https)".to_string(),
        "port 8443 (TLS, server chosen by SNI):".to_string(),
        format!(
            "server https (Gateway default/sentences-gateway, HTTPS, hosts sentences.example.com): MUTUAL, certificate files {} + {}, client CA file {}, TLS 1.2-1.3",
            certs.join("s.crt").display(),
            certs.join("s.key").display(),
            certs.join("ca.crt").display()
        ),
        "VirtualService default/sentences http[0] [hosts sentences.example.com]: uri prefix /api => route, retries 2 on".to_string(),
    ] {
        assert!(gateway.contains(&want), "{want}\nin:\n{gateway}");
    }
    let row: Vec<&str> = gateway
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("sentences.default.svc.cluster.local:8080")
        })
        .unwrap_or_else(|| panic!("no destination row in:\n{gateway}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..6],
        [
            "sentences.default.svc.cluster.local:8080",
            "-",
            "100",
            "sentences:8080",
            "sentences",
            "ISTIO_MUTUAL"
        ]
    );
    assert!(
        stdout.contains("VirtualService default/sentences is bound to Gateway default/missing-gateway, which does not exist"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run(&["--output", "json", "--workload", "ingressgateway"])).unwrap();
    let ports = &json["plans"][0]["gateway"]["ports"];
    assert_eq!(ports[0]["port"], 8080);
    assert_eq!(ports[0]["servers"][0]["https_redirect"], true);
    let https = &ports[1]["servers"][0];
    assert_eq!(https["protocol"], "HTTPS");
    assert_eq!(https["tls"]["mode"], "MUTUAL");
    assert_eq!(https["tls"]["certificate"]["source"], "files");
    assert_eq!(https["tls"]["min_protocol_version"], "TLSV1_2");
    let rule = &https["http"][0];
    assert_eq!(rule["matches"][0]["uri"]["prefix"], "/api");
    assert_eq!(
        rule["action"]["destinations"][0]["plan"]["routes"][0]["endpoints"][0]["tls"]["mode"],
        "ISTIO_MUTUAL"
    );
}
