//! Gateway servers, VirtualServices at a gateway and the plan of a gateway workload, table by
//! table; errors are checked for their file, line, field and message.

use std::path::PathBuf;
use std::time::Duration;

use super::super::gateway_plan::*;
use super::super::{load_str, ConfigError, MeshConfig, TlsOrigination};

/// The lab's edge: a gateway workload in istio-system, a one-port HTTP service `sentences`,
/// a two-port service `name` (v1, v2) and a database without a sidecar.
const MESH: &str = "\
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata:
  name: ingressgateway
  namespace: istio-system
  labels: { istio: ingressgateway, app: istio-ingressgateway }
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
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: name-v1, namespace: default, labels: { app: name, version: v1 } }
spec:
  serviceAccount: name
  address: name-v1
  ports: [{ name: http, port: 8082, protocol: HTTP }, { name: admin, port: 9902 }]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: name-v2, namespace: default, labels: { app: name, version: v2 } }
spec:
  serviceAccount: name-v2
  address: name-v2
  ports: [{ name: http, port: 8082, protocol: HTTP }, { name: admin, port: 9902 }]
---
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: db, namespace: default }
spec: { serviceAccount: db, address: db, sidecar: false, ports: [{ name: tcp, port: 5432 }] }
---
";

/// A Gateway `default/<name>` selecting the ingress gateway, with `servers` (block YAML,
/// indented under `servers:`).
fn gateway(name: &str, servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: {name}, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
{servers}---
"
    )
}

/// The contract's two servers: HTTPS 8443 with a credential, HTTP 8080 redirecting.
const LAB_SERVERS: &str = "    - port: { number: 8443, name: https, protocol: HTTPS }
      hosts: [ \"sentences.example.com\" ]
      tls: { mode: SIMPLE, credentialName: sentences-credential }
    - port: { number: 8080, name: http, protocol: HTTP }
      hosts: [ \"sentences.example.com\" ]
      tls: { httpsRedirect: true }
";

/// A VirtualService `default/<name>` with `spec` lines (indented by two).
fn vs(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: {name}, namespace: default }}
spec:
{spec}---
"
    )
}

const SENTENCES_VS: &str = "  hosts: [ \"sentences.example.com\" ]
  gateways: [ sentences-gateway ]
  http:
    - route:
        - destination: { host: sentences, port: { number: 8080 } }
";

fn load(extra: &str) -> Result<MeshConfig, ConfigError> {
    load_str("mesh.yaml", &format!("{MESH}{extra}"))
}

fn config(extra: &str) -> MeshConfig {
    load(extra).unwrap_or_else(|e| panic!("{e}"))
}

fn gateway_plan(c: &MeshConfig) -> GatewayPlan {
    c.plan("ingressgateway")
        .unwrap()
        .gateway
        .expect("a gateway plan")
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in\n{text}"))
        + 1
}

/// Loads `MESH` + `extra`, expects an error at the line holding `at`, naming `field`, whose
/// message contains `message`.
fn assert_error(case: &str, extra: &str, at: &str, field: &str, message: &str) {
    let text = format!("{MESH}{extra}");
    let e = match load_str("mesh.yaml", &text) {
        Ok(_) => panic!("{case}: loaded"),
        Err(e) => e,
    };
    let l = e
        .location()
        .unwrap_or_else(|| panic!("{case}: no location: {e}"));
    let line = MESH.lines().count() + line_of(extra, at);
    assert_eq!(
        (l.file.to_str(), l.line, l.field.as_str()),
        (Some("mesh.yaml"), line, field),
        "{case}: {e}"
    );
    assert!(e.to_string().contains(message), "{case}: {e}");
}

fn server(plan: &GatewayPlan, port: u16, index: usize) -> &GatewayServer {
    &plan
        .ports
        .iter()
        .find(|p| p.port == port)
        .unwrap_or_else(|| panic!("no port {port}"))
        .servers[index]
}

#[test]
fn the_labs_edge_is_planned() {
    let c = config(&format!(
        "{}{}",
        gateway("sentences-gateway", LAB_SERVERS),
        vs("sentences", SENTENCES_VS)
    ));
    assert_eq!(c.workload_names(), ["sentences", "name-v1", "name-v2"]);
    assert_eq!(c.gateway_names(), ["ingressgateway"]);
    assert!(c.plan("sentences").unwrap().gateway.is_none());
    let plan = c.plan("ingressgateway").unwrap();
    assert!(plan.inbound.is_empty() && plan.outbound.is_empty());
    assert_eq!(
        plan.forward_client_cert,
        super::super::ForwardClientCert::SanitizeSet
    );
    let g = plan.gateway.unwrap();
    assert_eq!(
        g.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        [8080, 8443]
    );
    let http = server(&g, 8080, 0);
    assert_eq!(
        (
            http.name.as_str(),
            http.gateway.as_str(),
            http.protocol,
            http.https_redirect
        ),
        (
            "http",
            "default/sentences-gateway",
            GatewayProtocol::Http,
            true
        )
    );
    assert!(http.tls.is_none() && !g.ports[0].is_tls());
    let https = server(&g, 8443, 0);
    assert_eq!(https.hosts, ["sentences.example.com"]);
    let tls = https.tls.as_ref().unwrap();
    assert_eq!(tls.mode, ServerTlsMode::Simple);
    assert_eq!(
        tls.certificate,
        Some(CertificateSource::Credential {
            name: "sentences-credential".into()
        })
    );
    assert_eq!(
        (tls.min_protocol_version, tls.max_protocol_version),
        (TlsVersion::Tls12, TlsVersion::Tls13)
    );
    assert!(g.ports[1].is_tls());
    // the VirtualService is attached to both servers
    for s in [http, https] {
        assert_eq!(s.http.len(), 1, "{}", s.name);
        let rule = &s.http[0];
        assert_eq!(rule.origin, "VirtualService default/sentences http[0]");
        assert_eq!(rule.hosts, ["sentences.example.com"]);
        assert!(rule.matches.is_empty());
        let HttpAction::Route(route) = &rule.action else {
            panic!("{:?}", rule.action)
        };
        assert_eq!(route.retries.attempts, 2);
        assert!(route.retries.retry_on.contains(&"503".to_string()));
        assert_eq!(route.timeout, None);
        let d = &route.destinations[0];
        assert_eq!(d.weight, 100);
        assert_eq!(d.plan.bind.to_string(), "0.0.0.0:0");
        assert_eq!(d.plan.to, "sentences:8080");
        assert_eq!(
            d.plan.destination.host,
            "sentences.default.svc.cluster.local"
        );
        assert_eq!(
            d.plan.decided_by,
            "VirtualService default/sentences http[0]"
        );
        let e = &d.plan.routes[0].endpoints[0];
        assert_eq!((e.host.as_str(), e.port), ("sentences", 8080));
        // into the mesh: auto mTLS with secure naming, as from a sidecar
        let TlsOrigination::IstioMutual { allowed_ids, sni } = &e.tls else {
            panic!("{:?}", e.tls)
        };
        assert_eq!(
            allowed_ids[0].to_string(),
            "spiffe://cluster.local/ns/default/sa/sentences"
        );
        assert_eq!(sni, "outbound_.8080_._.sentences.default.svc.cluster.local");
    }
    let json = serde_json::to_value(&g).unwrap();
    assert_eq!(
        json["ports"][1]["servers"][0]["tls"]["certificate"],
        serde_json::json!({"source": "credential", "name": "sentences-credential"})
    );
}

#[test]
fn a_gateway_workload_is_only_a_gateway() {
    let gw = |spec: &str| {
        format!(
            "apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: edge, namespace: istio-system }}
spec:
  role: gateway
  serviceAccount: edge
  address: edge
{spec}---
"
        )
    };
    let cases = [
        (
            "ports",
            "  ports: [{ name: http, port: 80 }]\n",
            "  ports:",
            "spec.ports",
            "a gateway workload declares no ports",
        ),
        (
            "outbound",
            "  outbound: [{ bind: \"127.0.0.1:1\", to: \"sentences:8080\" }]\n",
            "  outbound:",
            "spec.outbound",
            "a gateway workload has no outbound entries",
        ),
        (
            "capture",
            "  capture: true\n",
            "  capture:",
            "spec.capture",
            "not captured",
        ),
        (
            "sidecar: false",
            "  sidecar: false\n",
            "  sidecar: false",
            "spec.sidecar",
            "contradicts `role: gateway`",
        ),
        (
            "unknown role",
            "",
            "  role: gateway",
            "spec.role",
            "unknown variant",
        ),
    ];
    for (case, spec, at, field, message) in cases {
        let doc = if case == "unknown role" {
            gw(spec).replace("role: gateway", "role: ingress")
        } else {
            gw(spec)
        };
        let at = if case == "unknown role" {
            "  role: ingress"
        } else {
            at
        };
        assert_error(case, &doc, at, field, message);
    }
    // a gateway with no Gateway selecting it has an empty plan
    let c = config(&gw(""));
    assert!(gateway_plan(&c).ports.is_empty());
    let unknown = c.plan("nope").unwrap_err().to_string();
    assert!(
        unknown.contains("ingressgateway") && unknown.contains("edge"),
        "{unknown}"
    );
}

#[test]
fn server_errors_name_the_field() {
    // (case, servers, the line's text, field, message)
    let cases = [
        (
            "unknown protocol",
            "    - port: { number: 80, protocol: MONGO }\n      hosts: [\"*\"]\n",
            "protocol: MONGO",
            "spec.servers[0].port.protocol",
            "unknown protocol \"MONGO\", expected one of HTTP, HTTPS",
        ),
        (
            "port out of range",
            "    - port:\n        number: 70000\n        protocol: HTTP\n      hosts: [\"*\"]\n",
            "number: 70000",
            "spec.servers[0].port.number",
            "port 70000 is out of range",
        ),
        (
            "HTTPS without tls",
            "    - port:\n        number: 443\n        protocol: HTTPS\n      hosts: [\"*\"]\n",
            "protocol: HTTPS",
            "spec.servers[0].port.protocol",
            "a HTTPS server needs `tls`",
        ),
        (
            "no hosts",
            "    - port: { number: 80, protocol: HTTP }\n      hosts: []\n",
            "hosts: []",
            "spec.servers[0].hosts",
            "needs at least one host",
        ),
        (
            "a wildcard inside a label",
            "    - port: { number: 80, protocol: HTTP }\n      hosts:\n        - a.example.com\n        - \"foo*.example.com\"\n",
            "foo*",
            "spec.servers[0].hosts[1]",
            "is not a host name",
        ),
        (
            "a bad namespace part",
            "    - port: { number: 80, protocol: HTTP }\n      hosts:\n        - \"~/a.example.com\"\n",
            "~/a",
            "spec.servers[0].hosts[0]",
            "the namespace part \"~\"",
        ),
        (
            "AUTO_PASSTHROUGH",
            "    - port: { number: 443, protocol: TLS }\n      hosts: [\"*\"]\n      tls:\n        mode: AUTO_PASSTHROUGH\n",
            "mode: AUTO_PASSTHROUGH",
            "spec.servers[0].tls.mode",
            "AUTO_PASSTHROUGH is not supported",
        ),
        (
            "SIMPLE without a certificate",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        mode: SIMPLE\n",
            "mode: SIMPLE",
            "spec.servers[0].tls.mode",
            "SIMPLE needs credentialName, or serverCertificate and privateKey",
        ),
        (
            "a certificate without its key",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        serverCertificate: a.crt\n",
            "serverCertificate:",
            "spec.servers[0].tls.serverCertificate",
            "serverCertificate needs privateKey",
        ),
        (
            "a key without its certificate",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        mode: SIMPLE\n        privateKey: a.key\n",
            "privateKey:",
            "spec.servers[0].tls.privateKey",
            "privateKey needs serverCertificate",
        ),
        (
            "MUTUAL without a CA",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        mode: MUTUAL\n        serverCertificate: a.crt\n        privateKey: a.key\n",
            "mode: MUTUAL",
            "spec.servers[0].tls.mode",
            "MUTUAL needs caCertificates or credentialName",
        ),
        (
            "OPTIONAL_MUTUAL without a CA",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        mode: OPTIONAL_MUTUAL\n        serverCertificate: a.crt\n        privateKey: a.key\n",
            "mode: OPTIONAL_MUTUAL",
            "spec.servers[0].tls.mode",
            "OPTIONAL_MUTUAL needs caCertificates",
        ),
        (
            "PASSTHROUGH with a credential",
            "    - port: { number: 443, protocol: TLS }\n      hosts: [\"*\"]\n      tls:\n        mode: PASSTHROUGH\n        credentialName: x\n",
            "credentialName: x",
            "spec.servers[0].tls.credentialName",
            "PASSTHROUGH (the gateway does not terminate) takes no certificate fields",
        ),
        (
            "ISTIO_MUTUAL with a certificate",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        mode: ISTIO_MUTUAL\n        caCertificates: ca.crt\n",
            "caCertificates:",
            "spec.servers[0].tls.caCertificates",
            "ISTIO_MUTUAL (the gateway serves its own SVID) takes no certificate fields",
        ),
        (
            "TCP with a TLS mode",
            "    - port: { number: 443, protocol: TCP }\n      hosts: [\"*\"]\n      tls:\n        mode: SIMPLE\n        credentialName: x\n",
            "mode: SIMPLE",
            "spec.servers[0].tls.mode",
            "use protocol TLS",
        ),
        (
            "verifyCertificateSpki",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        credentialName: x\n        verifyCertificateSpki: [abc]\n",
            "verifyCertificateSpki:",
            "spec.servers[0].tls.verifyCertificateSpki",
            "verifyCertificateSpki is not supported by outrider",
        ),
        (
            "verifyCertificateHash",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        credentialName: x\n        verifyCertificateHash: [abc]\n",
            "verifyCertificateHash:",
            "spec.servers[0].tls.verifyCertificateHash",
            "verifyCertificateHash is not supported",
        ),
        (
            "insecureSkipVerify",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        credentialName: x\n        insecureSkipVerify: true\n",
            "insecureSkipVerify:",
            "spec.servers[0].tls.insecureSkipVerify",
            "insecureSkipVerify is not supported",
        ),
        (
            "credentialNames",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        credentialNames: [a, b]\n",
            "credentialNames:",
            "spec.servers[0].tls.credentialNames",
            "credentialNames is not supported",
        ),
        (
            "tlsCertificates",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        tlsCertificates: [{ serverCertificate: a }]\n",
            "tlsCertificates:",
            "spec.servers[0].tls.tlsCertificates",
            "tlsCertificates is not supported",
        ),
        (
            "caCertCredentialName",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        mode: MUTUAL\n        credentialName: x\n        caCertCredentialName: y\n",
            "caCertCredentialName:",
            "spec.servers[0].tls.caCertCredentialName",
            "caCertCredentialName is not supported",
        ),
        (
            "max below TLS 1.2",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        credentialName: x\n        maxProtocolVersion: TLSV1_1\n",
            "maxProtocolVersion:",
            "spec.servers[0].tls.maxProtocolVersion",
            "TLSV1_1 is not supported",
        ),
        (
            "min above max",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        credentialName: x\n        minProtocolVersion: TLSV1_3\n        maxProtocolVersion: TLSV1_2\n",
            "minProtocolVersion:",
            "spec.servers[0].tls.minProtocolVersion",
            "minProtocolVersion is above maxProtocolVersion",
        ),
        (
            "unknown cipher suite",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        credentialName: x\n        cipherSuites:\n          - ECDHE-RSA-AES128-GCM-SHA256\n          - \"[ECDHE-RSA-AES256-GCM-SHA384|AES128-SHA]\"\n",
            "[ECDHE-RSA-AES256",
            "spec.servers[0].tls.cipherSuites[1]",
            "unsupported cipher suite \"AES128-SHA\"",
        ),
        (
            "an unknown tls field",
            "    - port: { number: 443, protocol: HTTPS }\n      hosts: [\"*\"]\n      tls:\n        credentialName: x\n        sni: a\n",
            "sni: a",
            "spec.servers[0].tls.sni",
            "unknown field \"sni\"",
        ),
        (
            "duplicate port names",
            "    - port: { number: 80, name: web, protocol: HTTP }\n      hosts: [a.example.com]\n    - port:\n        number: 81\n        name: web\n        protocol: HTTP\n      hosts: [b.example.com]\n",
            "name: web\n",
            "spec.servers[1].port.name",
            "duplicate port name \"web\" (servers[0])",
        ),
        (
            "TLS and plaintext on one port",
            "    - port: { number: 8443, protocol: HTTPS }\n      hosts: [a.example.com]\n      tls: { credentialName: a }\n    - port:\n        number: 8443\n        protocol: HTTP\n      hosts: [b.example.com]\n",
            "number: 8443\n",
            "spec.servers[1].port.number",
            "port 8443: this server is plaintext but servers[0] of Gateway default/gw (mesh.yaml:",
        ),
        (
            "HTTP and TCP on one port",
            "    - port: { number: 9000, protocol: HTTP }\n      hosts: [a.example.com]\n    - port:\n        number: 9000\n        protocol: TCP\n      hosts: [\"*\"]\n",
            "number: 9000\n",
            "spec.servers[1].port.number",
            "plaintext HTTP and TCP servers cannot share a port",
        ),
    ];
    for (case, servers, at, field, message) in cases {
        // `at` may end in "\n" to pick a whole line's ending; line_of looks at lines.
        let doc = gateway("gw", servers);
        let at = at.trim_end_matches('\n');
        let text = format!("{MESH}{doc}");
        // the last line holding `at` (a later server repeats an earlier one's text)
        let lines: Vec<&str> = text.lines().collect();
        let wanted = lines.iter().rposition(|l| l.contains(at)).unwrap() + 1;
        let e = load(&doc).err().unwrap_or_else(|| panic!("{case}: loaded"));
        let l = e.location().unwrap_or_else(|| panic!("{case}: {e}"));
        assert_eq!((l.line, l.field.as_str()), (wanted, field), "{case}: {e}");
        assert!(e.to_string().contains(message), "{case}: {e}");
    }
}

#[test]
fn server_tls_is_resolved() {
    // (case, tls lines, protocol, want: (mode, certificate, ca) or None for plaintext, warning)
    let files = |c: &str, k: &str| CertificateSource::Files {
        certificate: PathBuf::from(c),
        private_key: PathBuf::from(k),
    };
    let cred = |n: &str| CertificateSource::Credential { name: n.into() };
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        &str,
        &str,
        Option<(ServerTlsMode, Option<CertificateSource>, Option<CaSource>)>,
        &str,
    )> = vec![
        (
            "files relative to the YAML file's directory",
            "{ mode: SIMPLE, serverCertificate: certs/a.crt, privateKey: /abs/a.key }",
            "HTTPS",
            Some((
                ServerTlsMode::Simple,
                Some(files("conf/certs/a.crt", "/abs/a.key")),
                None,
            )),
            "",
        ),
        (
            "SIMPLE is the default when a certificate is named",
            "{ credentialName: c }",
            "HTTPS",
            Some((ServerTlsMode::Simple, Some(cred("c")), None)),
            "",
        ),
        (
            "PASSTHROUGH is Istio's default otherwise",
            "{}",
            "TLS",
            Some((ServerTlsMode::Passthrough, None, None)),
            "",
        ),
        (
            "MUTUAL from files",
            "{ mode: MUTUAL, serverCertificate: a.crt, privateKey: a.key, caCertificates: ca.crt, caCrl: ca.crl }",
            "HTTPS",
            Some((
                ServerTlsMode::Mutual,
                Some(files("conf/a.crt", "conf/a.key")),
                Some(CaSource::Files {
                    ca_certificates: "conf/ca.crt".into(),
                    ca_crl: Some("conf/ca.crl".into()),
                }),
            )),
            "",
        ),
        (
            "MUTUAL from a credential",
            "{ mode: MUTUAL, credentialName: c }",
            "HTTPS",
            Some((
                ServerTlsMode::Mutual,
                Some(cred("c")),
                Some(CaSource::Credential { name: "c".into() }),
            )),
            "",
        ),
        (
            "OPTIONAL_MUTUAL: the credential wins over caCertificates",
            "{ mode: OPTIONAL_MUTUAL, credentialName: c, caCertificates: ca.crt }",
            "HTTPS",
            Some((
                ServerTlsMode::OptionalMutual,
                Some(cred("c")),
                Some(CaSource::Credential { name: "c".into() }),
            )),
            "caCertificates and caCrl are ignored: the client CA comes from credential c-cacert, else c",
        ),
        (
            "ISTIO_MUTUAL",
            "{ mode: ISTIO_MUTUAL }",
            "HTTPS",
            Some((ServerTlsMode::IstioMutual, None, None)),
            "",
        ),
        (
            "SIMPLE ignores a CA",
            "{ credentialName: c, caCertificates: ca.crt }",
            "HTTPS",
            Some((ServerTlsMode::Simple, Some(cred("c")), None)),
            "caCertificates is ignored under SIMPLE",
        ),
        (
            "HTTP with only httpsRedirect stays plaintext",
            "{ httpsRedirect: true }",
            "HTTP",
            None,
            "",
        ),
        (
            "HTTP terminating TLS",
            "{ mode: SIMPLE, credentialName: c }",
            "HTTP",
            Some((ServerTlsMode::Simple, Some(cred("c")), None)),
            "",
        ),
        (
            "httpsRedirect on a TLS server",
            "{ httpsRedirect: true, credentialName: c }",
            "HTTPS",
            Some((ServerTlsMode::Simple, Some(cred("c")), None)),
            "httpsRedirect is ignored on a server that terminates or passes TLS",
        ),
    ];
    for (case, tls, protocol, want, warning) in cases {
        let text = format!(
            "{MESH}{}",
            gateway(
                "gw",
                &format!(
                    "    - port: {{ number: 8443, name: s, protocol: {protocol} }}\n      hosts: [\"*\"]\n      tls: {tls}\n"
                )
            )
        );
        let c = load_str("conf/mesh.yaml", &text).unwrap_or_else(|e| panic!("{case}: {e}"));
        let s = server(&gateway_plan(&c), 8443, 0).clone();
        let got = s
            .tls
            .as_ref()
            .map(|t| (t.mode, t.certificate.clone(), t.ca_certificates.clone()));
        assert_eq!(got, want, "{case}");
        assert_eq!(
            s.https_redirect,
            case.contains("only httpsRedirect"),
            "{case}"
        );
        let w = c.warnings().join("\n");
        assert!(w.contains(warning), "{case}: {w}");
        if s.tls
            .as_ref()
            .is_some_and(|t| t.mode == ServerTlsMode::Passthrough)
        {
            assert_eq!(s.protocol, GatewayProtocol::Tls, "{case}");
        }
    }
}

#[test]
fn versions_and_cipher_suites() {
    // (case, extra tls fields, min, max, suites, warning)
    let cases = [
        ("defaults", "", TlsVersion::Tls12, TlsVersion::Tls13, vec![], ""),
        (
            "TLS_AUTO",
            ", minProtocolVersion: TLS_AUTO, maxProtocolVersion: TLS_AUTO",
            TlsVersion::Tls12,
            TlsVersion::Tls13,
            vec![],
            "",
        ),
        (
            "a min below 1.2 is raised",
            ", minProtocolVersion: TLSV1_0",
            TlsVersion::Tls12,
            TlsVersion::Tls13,
            vec![],
            "tls.minProtocolVersion: Gateway default/gw: TLSV1_0 is raised to TLSV1_2",
        ),
        (
            "TLS 1.3 only",
            ", minProtocolVersion: TLSV1_3",
            TlsVersion::Tls13,
            TlsVersion::Tls13,
            vec![],
            "",
        ),
        (
            "TLS 1.2 only",
            ", maxProtocolVersion: TLSV1_2",
            TlsVersion::Tls12,
            TlsVersion::Tls12,
            vec![],
            "",
        ),
        (
            "equal-preference groups flatten, duplicates drop",
            ", cipherSuites: [\"[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-RSA-AES128-GCM-SHA256]\", ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-CHACHA20-POLY1305]",
            TlsVersion::Tls12,
            TlsVersion::Tls13,
            vec![
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-RSA-CHACHA20-POLY1305",
            ],
            "",
        ),
        (
            "suites under TLS 1.3 only",
            ", minProtocolVersion: TLSV1_3, cipherSuites: [ECDHE-RSA-AES256-GCM-SHA384]",
            TlsVersion::Tls13,
            TlsVersion::Tls13,
            vec!["ECDHE-RSA-AES256-GCM-SHA384"],
            "cipherSuites apply to TLS 1.2 only",
        ),
    ];
    for (case, extra, min, max, suites, warning) in cases {
        let c = config(&gateway(
            "gw",
            &format!(
                "    - port: {{ number: 8443, protocol: HTTPS }}\n      hosts: [\"*\"]\n      tls: {{ credentialName: c{extra} }}\n"
            ),
        ));
        let plan = gateway_plan(&c);
        let t = server(&plan, 8443, 0).tls.clone().unwrap();
        assert_eq!(
            (
                t.min_protocol_version,
                t.max_protocol_version,
                t.cipher_suites
            ),
            (min, max, suites.iter().map(|s| s.to_string()).collect()),
            "{case}"
        );
        let w = c.warnings().join("\n");
        assert!(w.contains(warning), "{case}: {w}");
    }
}

#[test]
fn server_warnings_and_names() {
    let c = config(&format!(
        "{}{}",
        gateway(
            "a",
            "    - port:\n        number: 443\n        name: https\n        protocol: HTTPS\n        targetPort: 8443\n      bind: 10.0.0.1\n      defaultEndpoint: 127.0.0.1:8080\n      hosts: [a.example.com]\n      tls: { credentialName: a }\n    - port: { number: 80, protocol: HTTP }\n      hosts: [a.example.com]\n"
        ),
        gateway(
            "b",
            "    - port: { number: 443, name: https, protocol: HTTPS }\n      hosts: [b.example.com]\n      tls: { credentialName: b }\n"
        ),
    ));
    let w = c.warnings().join("\n");
    for want in [
        "spec.servers[0].port.targetPort: Gateway default/a: targetPort 8443 is ignored: the gateway listens on port.number 443",
        "spec.servers[0].bind: Gateway default/a: bind \"10.0.0.1\" is ignored: the gateway listens on --listen-ip",
        "spec.servers[0].defaultEndpoint: Gateway default/a: defaultEndpoint is ignored",
    ] {
        assert!(w.contains(want), "{want}\n{w}");
    }
    let plan = gateway_plan(&c);
    // port names are the server names; a name taken by an earlier server is qualified
    assert_eq!(server(&plan, 443, 0).name, "https");
    assert_eq!(server(&plan, 443, 1).name, "default/b/https");
    assert_eq!(server(&plan, 80, 0).name, "default/a/servers[1]");
}

#[test]
fn servers_sharing_a_port() {
    let c = config(&format!(
        "{}{}{}",
        gateway(
            "first",
            "    - port: { number: 443, name: first, protocol: HTTPS }\n      hosts: [a.example.com, b.example.com]\n      tls: { credentialName: first }\n"
        ),
        gateway(
            "second",
            "    - port: { number: 443, name: second, protocol: HTTPS }\n      hosts: [b.example.com, c.example.com]\n      tls: { credentialName: second }\n    - port: { number: 443, name: pass, protocol: TLS }\n      hosts: [\"*.example.org\"]\n      tls: { mode: PASSTHROUGH }\n"
        ),
        gateway(
            "third",
            "    - port: { number: 443, name: third, protocol: HTTPS }\n      hosts: [a.example.com]\n      tls: { credentialName: third }\n    - port: { number: 9000, name: tcp1, protocol: TCP }\n      hosts: [\"*\"]\n    - port: { number: 9000, name: tcp2, protocol: TCP }\n      hosts: [\"*\"]\n"
        ),
    ));
    let plan = gateway_plan(&c);
    let p443 = &plan.ports[0];
    let got: Vec<(&str, Vec<String>)> = p443
        .servers
        .iter()
        .map(|s| (s.name.as_str(), s.hosts.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "first",
                vec!["a.example.com".into(), "b.example.com".into()]
            ),
            ("second", vec!["c.example.com".into()]),
            ("pass", vec!["*.example.org".into()]),
        ]
    );
    assert_eq!(plan.ports[1].servers.len(), 1);
    assert_eq!(plan.ports[1].servers[0].name, "tcp1");
    let w = c.warnings().join("\n");
    for want in [
        "Gateway default/second: host b.example.com on port 443 is already served by servers[0] of Gateway default/first (mesh.yaml:",
        "Gateway default/third: server on port 443 is ignored: every one of its hosts is served by an earlier server",
        "Gateway default/third: TCP server on port 9000 is ignored: servers[1] of Gateway default/third",
    ] {
        assert!(w.contains(want), "{want}\n{w}");
    }
}

#[test]
fn virtual_services_bind_by_gateway_name_host_and_namespace() {
    // (case, server hosts, VirtualService namespace, its gateways and hosts, bound hosts)
    let cases: [(&str, &str, &str, &str, &[&str]); 12] = [
        (
            "bare name",
            "[\"*\"]",
            "default",
            "gateways: [gw]\n  hosts: [a.example.com]",
            &["a.example.com"],
        ),
        (
            "ns/name",
            "[\"*\"]",
            "other",
            "gateways: [default/gw]\n  hosts: [a.example.com]",
            &["a.example.com"],
        ),
        (
            "bare name in another namespace",
            "[\"*\"]",
            "other",
            "gateways: [gw]\n  hosts: [a.example.com]",
            &[],
        ),
        (
            "mesh only",
            "[\"*\"]",
            "default",
            "gateways: [mesh]\n  hosts: [a.example.com]",
            &[],
        ),
        (
            "no gateways: mesh",
            "[\"*\"]",
            "default",
            "hosts: [a.example.com]",
            &[],
        ),
        (
            "mesh and the gateway",
            "[\"*\"]",
            "default",
            "gateways: [mesh, gw]\n  hosts: [a.example.com]",
            &["a.example.com"],
        ),
        (
            "wildcard server, wildcard VS",
            "[\"*.example.com\"]",
            "default",
            "gateways: [gw]\n  hosts: [\"*.a.example.com\", \"*.example.org\"]",
            &["*.a.example.com"],
        ),
        (
            "specific server, wildcard VS",
            "[b.example.com]",
            "default",
            "gateways: [gw]\n  hosts: [\"*\"]",
            &["*"],
        ),
        (
            "no common host",
            "[b.example.com]",
            "default",
            "gateways: [gw]\n  hosts: [a.example.com]",
            &[],
        ),
        (
            "./ admits the Gateway's namespace",
            "[\"./a.example.com\"]",
            "default",
            "gateways: [gw]\n  hosts: [a.example.com]",
            &["a.example.com"],
        ),
        (
            "./ refuses another",
            "[\"./a.example.com\"]",
            "other",
            "gateways: [default/gw]\n  hosts: [a.example.com]",
            &[],
        ),
        (
            "ns/ admits that namespace",
            "[\"other/a.example.com\", \"*/b.example.com\"]",
            "other",
            "gateways: [default/gw]\n  hosts: [a.example.com, b.example.com]",
            &["a.example.com", "b.example.com"],
        ),
    ];
    for (case, hosts, ns, spec, want) in cases {
        let text = format!(
            "{}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: v, namespace: {ns} }}
spec:
  {spec}
  http:
    - directResponse: {{ status: 200 }}
",
            gateway(
                "gw",
                &format!("    - port: {{ number: 80, protocol: HTTP }}\n      hosts: {hosts}\n")
            )
        );
        let c = config(&text);
        let plan = gateway_plan(&c);
        let rules = &server(&plan, 80, 0).http;
        let got: Vec<&str> = rules
            .iter()
            .flat_map(|r| r.hosts.iter().map(String::as_str))
            .collect();
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn http_rules_compile() {
    let c = config(&format!(
        "{}{}",
        gateway("sentences-gateway", LAB_SERVERS),
        vs(
            "sentences",
            "  hosts: [ \"sentences.example.com\" ]
  gateways: [ sentences-gateway ]
  http:
    - name: api
      match:
        - uri: { prefix: /api }
          ignoreUriCase: true
          method: { exact: GET }
          headers:
            X-User: { regex: \"a.*\" }
            X-Present: {}
          withoutHeaders:
            x-debug: { exact: \"1\" }
          queryParams:
            v: { exact: \"2\" }
        - authority: { exact: sentences.example.com }
          scheme: { exact: https }
          port: 8443
        - uri: { exact: /never }
          port: 9999
      rewrite: { uri: /, authority: internal }
      timeout: 1.5s
      retries: { attempts: 3, perTryTimeout: 500ms, retryOn: \"5xx,gateway-error,502\" }
      headers:
        request: { set: { X-Via: gateway }, add: { x-a: \"1\" }, remove: [X-Drop] }
        response: { remove: [server] }
      route:
        - destination: { host: name, subset: v1, port: { number: 8082 } }
          weight: 90
          headers: { request: { set: { x-subset: v1 } } }
        - destination: { host: name.default.svc.cluster.local, subset: v2, port: { number: 8082 } }
          weight: 10
    - match: [{ uri: { exact: /old } }]
      redirect: { uri: /new, authority: other.example.com, port: 8443, scheme: https, redirectCode: 308 }
    - match: [{ uri: { exact: /teapot } }]
      directResponse: { status: 418, body: { string: short and stout } }
    - match: [{ uri: { exact: /bytes } }]
      directResponse: { status: 200, body: { bytes: aGVsbG8= } }
    - match: [{ uri: { exact: /no-retries } }]
      retries: { attempts: 0 }
      timeout: 0s
      route: [{ destination: { host: sentences } }]
    - match: [{ gateways: [mesh] }]
      route: [{ destination: { host: sentences } }]
"
        ),
    ));
    let plan = gateway_plan(&c);
    let https = server(&plan, 8443, 0);
    let http = server(&plan, 8080, 0);
    // the `gateways: [mesh]` match admits no gateway: that rule is left out
    assert_eq!(https.http.len(), 5);
    let api = &https.http[0];
    assert_eq!(api.origin, "VirtualService default/sentences http[0] (api)");
    // the match on port 9999 cannot match on 8443
    assert_eq!(api.matches.len(), 2);
    // on port 8080 only the first match remains (the second is limited to 8443)
    assert_eq!(http.http[0].matches.len(), 1);
    let m = &api.matches[0];
    assert!(matches!(&m.uri, Some(StringMatch::Prefix(p)) if p == "/api"));
    assert!(m.ignore_uri_case);
    assert!(matches!(&m.method, Some(StringMatch::Exact(p)) if p == "GET"));
    let names: Vec<&str> = m.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["x-present", "x-user"]);
    assert!(matches!(m.headers[0].1, StringMatch::Present));
    let StringMatch::Regex(re) = &m.headers[1].1 else {
        panic!("{:?}", m.headers[1].1)
    };
    assert_eq!(re.as_str(), "^(?:a.*)$");
    assert!(re.is_match("abc") && !re.is_match("xabc"));
    assert_eq!(m.without_headers[0].0, "x-debug");
    assert_eq!(m.query_params[0].0, "v");
    assert_eq!(api.matches[1].port, Some(8443));
    assert!(matches!(&api.matches[1].scheme, Some(StringMatch::Exact(s)) if s == "https"));
    assert_eq!(
        api.headers.request.set,
        [("x-via".to_string(), "gateway".to_string())]
    );
    assert_eq!(
        api.headers.request.add,
        [("x-a".to_string(), "1".to_string())]
    );
    assert_eq!(api.headers.request.remove, ["x-drop"]);
    assert_eq!(api.headers.response.remove, ["server"]);
    let HttpAction::Route(route) = &api.action else {
        panic!()
    };
    assert_eq!(route.timeout, Some(Duration::from_millis(1500)));
    let rw = route.rewrite.as_ref().unwrap();
    assert_eq!(
        (rw.uri.as_deref(), rw.authority.as_deref()),
        (Some("/"), Some("internal"))
    );
    assert_eq!(route.retries.attempts, 3);
    assert_eq!(
        route.retries.per_try_timeout,
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        route.retries.retry_on,
        ["5xx", "gateway-error", "502", "retriable-status-codes"]
    );
    let weights: Vec<(u32, Option<String>, String)> = route
        .destinations
        .iter()
        .map(|d| {
            (
                d.weight,
                d.plan.routes[0].subset.clone(),
                d.plan.routes[0]
                    .endpoints
                    .iter()
                    .map(|e| e.workload.clone().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        })
        .collect();
    assert_eq!(
        weights,
        vec![
            (90, Some("v1".into()), "".into()),
            (10, Some("v2".into()), "".into())
        ],
        "no DestinationRule defines the subsets: no endpoints (and a warning)"
    );
    assert_eq!(
        route.destinations[0].headers.request.set,
        [("x-subset".to_string(), "v1".to_string())]
    );
    let HttpAction::Redirect(r) = &https.http[1].action else {
        panic!()
    };
    assert_eq!(
        (
            r.uri.as_deref(),
            r.authority.as_deref(),
            r.port,
            r.scheme.as_deref(),
            r.status
        ),
        (
            Some("/new"),
            Some("other.example.com"),
            Some(8443),
            Some("https"),
            308
        )
    );
    assert!(matches!(
        &https.http[2].action,
        HttpAction::DirectResponse { status: 418, body: Some(b) } if b == "short and stout"
    ));
    assert!(matches!(
        &https.http[3].action,
        HttpAction::DirectResponse { status: 200, body: Some(b) } if b == "hello"
    ));
    let HttpAction::Route(none) = &https.http[4].action else {
        panic!()
    };
    assert_eq!((none.retries.attempts, none.timeout), (0, None));
    let w = c.warnings().join("\n");
    assert!(
        w.contains("routes to subset v1 of name.default.svc.cluster.local, which no DestinationRule defines"),
        "{w}"
    );
    // a gateway-only VirtualService does not tell sidecars its features are ignored
    assert!(!w.contains("not acted on by outrider yet"), "{w}");
}

#[test]
fn destination_rules_and_subsets_apply_from_the_gateway() {
    let c = config(&format!(
        "{}{}apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: name, namespace: default }}
spec:
  host: name
  subsets:
    - {{ name: v1, labels: {{ version: v1 }}, trafficPolicy: {{ tls: {{ mode: DISABLE }} }} }}
    - {{ name: v2, labels: {{ version: v2 }} }}
",
        gateway(
            "gw",
            "    - port: { number: 80, protocol: HTTP }\n      hosts: [\"*\"]\n"
        ),
        vs(
            "name",
            "  hosts: [\"*\"]
  gateways: [gw]
  http:
    - route:
        - { destination: { host: name, subset: v1, port: { number: 8082 } }, weight: 50 }
        - { destination: { host: name, subset: v2, port: { number: 9902 } }, weight: 50 }
"
        ),
    ));
    let plan = gateway_plan(&c);
    let HttpAction::Route(route) = &server(&plan, 80, 0).http[0].action else {
        panic!()
    };
    let got: Vec<(String, u16, String, String)> = route
        .destinations
        .iter()
        .flat_map(|d| d.plan.routes[0].endpoints.iter())
        .map(|e| {
            let tls = match &e.tls {
                TlsOrigination::Disable => "DISABLE".to_string(),
                TlsOrigination::IstioMutual { sni, .. } => sni.clone(),
                other => format!("{other:?}"),
            };
            (
                e.workload.clone().unwrap(),
                e.port,
                tls,
                e.decided_by.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "name-v1".into(),
                8082,
                "DISABLE".into(),
                "DestinationRule default/name subset v1".into()
            ),
            (
                "name-v2".into(),
                9902,
                "outbound_.9902_.v2_.name.default.svc.cluster.local".into(),
                "auto mTLS: endpoint has a sidecar".into()
            ),
        ]
    );
}

#[test]
fn virtual_service_errors_name_the_field() {
    let bound = |http: &str| {
        format!(
            "{}{}",
            gateway(
                "gw",
                "    - port: { number: 80, protocol: HTTP }\n      hosts: [\"*\"]\n"
            ),
            vs("v", &format!("  hosts: [\"*\"]\n  gateways: [gw]\n{http}"))
        )
    };
    let cases = [
        (
            "invalid regex",
            "  http:\n    - match:\n        - uri:\n            regex: \"a(b\"\n      directResponse: { status: 200 }\n",
            "regex:",
            "spec.http[0].match[0].uri.regex",
            "invalid regex \"a(b\"",
        ),
        (
            "two kinds of string match",
            "  http:\n    - match:\n        - headers:\n            x-a: { exact: a, prefix: b }\n      directResponse: { status: 200 }\n",
            "x-a:",
            "spec.http[0].match[0].headers.x-a",
            "needs exactly one of exact, prefix and regex",
        ),
        (
            "a redirect code that is not one",
            "  http:\n    - redirect:\n        uri: /x\n        redirectCode: 200\n",
            "redirectCode:",
            "spec.http[0].redirect.redirectCode",
            "200 is not a redirect status",
        ),
        (
            "a direct response status out of range",
            "  http:\n    - directResponse:\n        status: 99\n",
            "status: 99",
            "spec.http[0].directResponse.status",
            "status 99 is out of range 200-599",
        ),
        (
            "an unknown retry condition",
            "  http:\n    - retries:\n        attempts: 2\n        retryOn: 5xx,sometimes\n      route: [{ destination: { host: sentences } }]\n",
            "retryOn:",
            "spec.http[0].retries.retryOn",
            "unknown retry condition \"sometimes\"",
        ),
        (
            "negative attempts",
            "  http:\n    - retries:\n        attempts: -1\n      route: [{ destination: { host: sentences } }]\n",
            "attempts: -1",
            "spec.http[0].retries.attempts",
            "must not be negative",
        ),
        (
            "a bad timeout",
            "  http:\n    - timeout: soon\n      route: [{ destination: { host: sentences } }]\n",
            "timeout: soon",
            "spec.http[0].timeout",
            "invalid duration \"soon\"",
        ),
        (
            "uriRegexRewrite",
            "  http:\n    - rewrite:\n        uriRegexRewrite: { match: a, rewrite: b }\n      route: [{ destination: { host: sentences } }]\n",
            "uriRegexRewrite:",
            "spec.http[0].rewrite.uriRegexRewrite",
            "uriRegexRewrite is not supported",
        ),
        (
            "a destination port the service lacks",
            "  http:\n    - route:\n        - destination:\n            host: sentences\n            port: { number: 9999 }\n",
            "port: { number: 9999 }",
            "spec.http[0].route[0].destination.port",
            "service sentences.default has no port 9999 (ports: 8080)",
        ),
        (
            "no port for a service with several",
            "  http:\n    - route:\n        - destination:\n            host: name\n",
            "destination:\n",
            "spec.http[0].route[0].destination",
            "service name.default has several ports (8082, 9902): name one with port.number",
        ),
        (
            "an unknown service",
            "  http:\n    - route:\n        - destination:\n            host: sentense\n",
            "host: sentense",
            "spec.http[0].route[0].destination.host",
            "unknown service sentense.default",
        ),
        (
            "outside the mesh without a port",
            "  http:\n    - route:\n        - destination:\n            host: api.example.com\n",
            "destination:\n",
            "spec.http[0].route[0].destination",
            "api.example.com is not a service of the mesh: a destination outside the mesh needs port.number",
        ),
        (
            "route and redirect together",
            "  http:\n    - route: [{ destination: { host: sentences } }]\n      redirect:\n        uri: /x\n",
            "redirect:",
            "spec.http[0].redirect",
            "route and redirect exclude each other",
        ),
        (
            "no action",
            "  http:\n    - match: [{ uri: { exact: / } }]\n",
            "- match:",
            "spec.http[0].route",
            "needs at least one destination (or a redirect, a directResponse or a delegate)",
        ),
        (
            "a tls rule without sniHosts",
            "  tls:\n    - match:\n        - port: 443\n      route: [{ destination: { host: sentences } }]\n",
            "- port: 443",
            "spec.tls[0].match[0].sniHosts",
            "needs at least one SNI host",
        ),
        (
            "an unknown match field",
            "  http:\n    - match:\n        - path: { exact: / }\n      directResponse: { status: 200 }\n",
            "- path:",
            "spec.http[0].match[0].path",
            "unknown field \"path\"",
        ),
    ];
    for (case, http, at, field, message) in cases {
        let doc = bound(http);
        let text = format!("{MESH}{doc}");
        let at = at.trim_end_matches('\n');
        let e = load(&doc).err().unwrap_or_else(|| panic!("{case}: loaded"));
        let l = e.location().unwrap_or_else(|| panic!("{case}: {e}"));
        assert_eq!(l.field, field, "{case}: {e}");
        // the first line at or after the rule that holds `at`
        let rule = text.find(http).unwrap();
        let wanted = text[..rule].lines().count() + line_of(&text[rule..], at);
        assert_eq!(l.line, wanted, "{case}: {e}");
        assert!(e.to_string().contains(message), "{case}: {e}");
    }
    assert_error(
        "sniHosts outside the hosts",
        &vs(
            "v",
            "  hosts: [\"*.example.com\"]\n  gateways: [gw]\n  tls:\n    - match:\n        - sniHosts: [a.example.org]\n      route: [{ destination: { host: sentences } }]\n",
        ),
        "sniHosts:",
        "spec.tls[0].match[0].sniHosts",
        "SNI host \"a.example.org\" is not within the VirtualService's hosts (*.example.com)",
    );
    assert_error(
        "a malformed gateways entry",
        &vs(
            "v",
            "  hosts: [a]\n  gateways:\n    - a/b/c\n  http:\n    - route: [{ destination: { host: sentences } }]\n",
        ),
        "- a/b/c",
        "spec.gateways[0]",
        "\"a/b/c\" is neither `mesh`",
    );
}

#[test]
fn tls_and_tcp_rules() {
    let c = config(&format!(
        "{}{}",
        gateway(
            "gw",
            "    - port: { number: 443, name: pass, protocol: TLS }
      hosts: [\"*.example.com\"]
      tls: { mode: PASSTHROUGH }
    - port: { number: 8443, name: terminate, protocol: TLS }
      hosts: [\"db.example.com\"]
      tls: { credentialName: db }
    - port: { number: 5432, name: tcp, protocol: TCP }
      hosts: [\"*\"]
"
        ),
        vs(
            "edge",
            "  hosts: [\"*.example.com\"]
  gateways: [gw]
  tls:
    - match:
        - sniHosts: [a.example.com, b.example.org.invalid.example.com]
        - sniHosts: [\"*.example.com\"]
          port: 443
        - sniHosts: [c.example.com]
          port: 8443
      route: [{ destination: { host: sentences } }]
  tcp:
    - match: [{ port: 5432 }]
      route: [{ destination: { host: db } }]
    - route:
        - { destination: { host: name, port: { number: 9902 } }, weight: 1 }
        - { destination: { host: name, port: { number: 8082 } }, weight: 3 }
"
        ),
    ));
    let plan = gateway_plan(&c);
    let pass = server(&plan, 443, 0);
    assert_eq!(pass.protocol, GatewayProtocol::Tls);
    let sni: Vec<(Vec<String>, Option<u16>)> = pass
        .tls_routes
        .iter()
        .map(|r| (r.sni_hosts.clone(), r.port))
        .collect();
    assert_eq!(
        sni,
        vec![
            (
                vec![
                    "a.example.com".to_string(),
                    "b.example.org.invalid.example.com".to_string()
                ],
                None
            ),
            (vec!["*.example.com".to_string()], Some(443)),
        ]
    );
    assert!(pass.http.is_empty() && pass.tcp.is_empty());
    assert_eq!(
        pass.tls_routes[0].origin,
        "VirtualService default/edge tls[0]"
    );
    let e = &pass.tls_routes[0].destinations[0].plan.routes[0].endpoints[0];
    assert_eq!((e.host.as_str(), e.port), ("sentences", 8080));
    // a terminating TLS server takes tcp rules; the match on 5432 is not for it
    let terminate = server(&plan, 8443, 0);
    assert!(terminate.tls_routes.is_empty());
    assert_eq!(terminate.tcp.len(), 1);
    assert_eq!(
        terminate.tcp[0].origin,
        "VirtualService default/edge tcp[1]"
    );
    let tcp = server(&plan, 5432, 0);
    assert_eq!(tcp.tcp.len(), 2);
    assert_eq!(tcp.tcp[0].port, Some(5432));
    let db = &tcp.tcp[0].destinations[0].plan.routes[0].endpoints[0];
    assert_eq!(
        (db.host.as_str(), db.port, &db.tls),
        ("db", 5432, &TlsOrigination::Disable),
        "no sidecar: plaintext"
    );
    let weights: Vec<u32> = tcp.tcp[1].destinations.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [1, 3]);
}

#[test]
fn policies_selecting_the_gateway_apply_per_port() {
    let c = config(&format!(
        "{}{}apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: edge, namespace: istio-system }}
spec:
  selector: {{ matchLabels: {{ istio: ingressgateway }} }}
  action: DENY
  rules: [{{ to: [{{ operation: {{ paths: [/admin] }} }}] }}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: jwt, namespace: istio-system }}
spec:
  selector: {{ matchLabels: {{ istio: ingressgateway }} }}
  jwtRules: [{{ issuer: https://issuer.example.com, jwksUri: https://issuer.example.com/jwks }}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: sentences-only, namespace: default }}
spec:
  selector: {{ matchLabels: {{ app: sentences }} }}
  rules: [{{}}]
---
",
        gateway(
            "gw",
            "    - port: { number: 80, protocol: HTTP }\n      hosts: [\"*\"]\n    - port: { number: 443, protocol: TLS }\n      hosts: [\"*\"]\n      tls: { mode: PASSTHROUGH }\n"
        ),
        vs("v", "  hosts: [\"*\"]\n  gateways: [gw]\n  http: [{ directResponse: { status: 200 } }]\n"),
    ));
    let plan = gateway_plan(&c);
    let names = |p: &GatewayPortPlan| -> Vec<String> {
        p.authorization
            .applied()
            .iter()
            .map(|a| a.name.to_string())
            .collect()
    };
    assert_eq!(names(&plan.ports[0]), ["istio-system/edge"]);
    assert_eq!(plan.ports[0].authentication.providers().len(), 1);
    // the PASSTHROUGH port is TCP: the policy applies, no JWT is checked
    assert_eq!(names(&plan.ports[1]), ["istio-system/edge"]);
    assert!(plan.ports[1].authentication.is_empty());
    let w = c.warnings().join("\n");
    assert!(
        w.contains("RequestAuthentication istio-system/jwt applies to workload ingressgateway but port 443"),
        "{w}"
    );
    assert!(
        !w.contains("istio-system/edge selects no workload"),
        "a policy selecting the gateway selects a workload: {w}"
    );
}

#[test]
fn binding_warnings() {
    let c = config(&format!(
        "{}{}{}{}",
        gateway("gw", "    - port: { number: 80, protocol: HTTP }\n      hosts: [a.example.com]\n"),
        "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: lonely, namespace: default }
spec:
  selector: { app: sentences }
  servers: [{ port: { number: 81, protocol: HTTP }, hosts: [\"*\"] }]
---
",
        vs(
            "missing",
            "  hosts: [a.example.com]\n  gateways: [nope, istio-system/gw]\n  http: [{ directResponse: { status: 200 } }]\n"
        ),
        vs(
            "elsewhere",
            "  hosts: [b.example.com]\n  gateways: [gw]\n  http: [{ directResponse: { status: 200 } }]\n"
        ),
    ));
    let w = c.warnings().join("\n");
    for want in [
        "spec.selector: Gateway default/lonely selects no gateway workload (selector {app=sentences}) (workloads sentences carry these labels, but their spec.role is not gateway); its servers listen nowhere",
        "spec.gateways: VirtualService default/missing is bound to Gateway default/nope, which does not exist",
        "spec.gateways: VirtualService default/missing is bound to Gateway istio-system/gw, which does not exist",
        "spec.gateways: VirtualService default/elsewhere is bound to Gateway default/gw, but none of its hosts (b.example.com) is served by a server of that Gateway to namespace default",
    ] {
        assert!(w.contains(want), "{want}\n{w}");
    }
    assert!(!w.contains("Gateway default/gw selects no"), "{w}");
}

#[test]
fn gateway_features_not_acted_on_are_warnings() {
    let c = config(&format!(
        "{}{}",
        gateway(
            "gw",
            "    - port: { number: 80, protocol: HTTP }\n      hosts: [\"*\"]\n"
        ),
        vs(
            "v",
            "  hosts: [\"*\"]
  gateways: [gw]
  http:
    - match:
        - sourceLabels: { app: x }
      fault: { abort: { httpStatus: 500 } }
      corsPolicy: { allowOrigins: [{ exact: x }] }
      mirror: { host: sentences }
      route: [{ destination: { host: sentences } }]
    - delegate: { name: other }
"
        ),
    ));
    let w = c.warnings().join("\n");
    for want in [
        "spec.http[0].match[0]: VirtualService default/v: source matches (sourceLabels, sourceNamespace, sourceSubnet) are ignored at a gateway",
        "spec.http[0].fault: VirtualService default/v: fault is not acted on at a gateway; ignored",
        "spec.http[0].corsPolicy: VirtualService default/v: corsPolicy is not acted on at a gateway",
        "spec.http[0].mirror: VirtualService default/v: mirror is not acted on at a gateway",
        "spec.http[1].delegate: VirtualService default/v: delegate is not acted on at a gateway; the rule is ignored",
    ] {
        assert!(w.contains(want), "{want}\n{w}");
    }
    assert_eq!(server(&gateway_plan(&c), 80, 0).http.len(), 1);
}

#[test]
fn sidecars_keep_their_rule_choice() {
    // A mesh VirtualService whose first rule redirects: sidecars route with the first rule
    // that has destinations, as before redirects were accepted.
    let c = load_str(
        "mesh.yaml",
        &format!(
            "{MESH}apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: client, namespace: default }}
spec:
  serviceAccount: client
  address: 127.0.0.1
  outbound: [{{ bind: \"127.0.0.1:9000\", to: \"name.default:http\" }}]
---
{}{}",
            vs(
                "name",
                "  hosts: [name]
  http:
    - redirect: { uri: /elsewhere }
    - route: [{ destination: { host: name, port: { number: 8082 } } }]
"
            ),
            vs(
                "gateway-only",
                "  hosts: [name]
  gateways: [gw]
  http:
    - route: [{ destination: { host: sentences } }]
"
            ),
        ),
    )
    .unwrap();
    let plan = c.plan("client").unwrap();
    assert_eq!(
        plan.outbound[0].decided_by,
        "VirtualService default/name http[1]"
    );
    let w = c.warnings().join("\n");
    assert!(
        w.contains("VirtualService default/name: http features other than match and route"),
        "{w}"
    );
}
