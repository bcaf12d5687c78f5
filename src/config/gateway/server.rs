//! One Gateway `servers[]` entry checked on its own: the port and its protocol, the hosts with
//! their namespace part, and `tls` resolved into a [`ServerTls`] by the rules of SEMANTICS §6
//! (which mode needs which certificate fields, where relative paths resolve, the TLS versions
//! and cipher suites rustls can honour).
//!
//! Whatever outrider would have to ignore in a way that weakens verification
//! (`verifyCertificateSpki`, `insecureSkipVerify`, ...) is refused, naming the field; what only
//! changes where or how the gateway listens (`bind`, `targetPort`) is a warning.

use std::path::{Path, PathBuf};

use super::super::error::ConfigError;
use super::super::gateway_plan::{
    CaSource, CertificateSource, GatewayProtocol, ServerTls, ServerTlsMode, TlsVersion,
};
use super::super::resources::{ServerSpec, ServerTlsModeSpec, ServerTlsSpec, TlsVersionSpec};
use super::super::source::Document;

/// The TLS 1.2 cipher suites rustls (with aws-lc-rs) offers, by their OpenSSL names (the
/// names Envoy and Istio use). TLS 1.3 suites are not configurable, as in Envoy.
pub const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// A server after validation (its Gateway is known to the caller).
#[derive(Debug, Clone)]
pub(crate) struct ServerDef {
    /// Its index in `spec.servers`.
    pub index: usize,
    pub port: u16,
    /// `port.name`, if written.
    pub port_name: Option<String>,
    /// As written, except that a PASSTHROUGH server is `Tls` whatever its protocol (it routes
    /// bytes by SNI, never requests).
    pub protocol: GatewayProtocol,
    pub hosts: Vec<ServerHost>,
    pub tls: Option<ServerTls>,
    /// `tls.httpsRedirect` on a plaintext HTTP server.
    pub https_redirect: bool,
}

impl ServerDef {
    /// Terminates or passes TLS (chosen by SNI) rather than reading plaintext.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Routes bytes by SNI without terminating.
    pub fn is_passthrough(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.mode == ServerTlsMode::Passthrough)
    }

    /// Routes requests (`http[]` rules) rather than connections.
    pub fn routes_http(&self) -> bool {
        self.protocol.is_http() && !self.is_passthrough()
    }
}

/// One entry of `hosts`: `[namespace/]host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerHost {
    /// The namespace whose VirtualServices may bind (`None`: any, from `*/` or no prefix;
    /// `./` is the Gateway's own namespace).
    pub namespace: Option<String>,
    /// Lower case: `*`, `*.example.com` or `example.com`.
    pub host: String,
}

impl ServerHost {
    /// Whether a VirtualService of `namespace` may bind to this host.
    pub fn admits(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// Checks `spec.servers[index]` of a Gateway in `gateway_ns` named `gateway`.
pub(crate) fn check(
    doc: &Document,
    gateway_ns: &str,
    gateway: &str,
    index: usize,
    spec: ServerSpec,
    warnings: &mut Vec<String>,
) -> Result<ServerDef, ConfigError> {
    let base = format!("spec.servers[{index}]");
    let warn = |field: &str, what: String, warnings: &mut Vec<String>| {
        let at = doc.locate(&format!("{base}.{field}"));
        warnings.push(format!(
            "{}:{}: {base}.{field}: Gateway {gateway_ns}/{gateway}: {what}",
            at.file.display(),
            at.line
        ));
    };
    let port = u16::try_from(spec.port.number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            doc.error(
                &format!("{base}.port.number"),
                format!("port {} is out of range 1-65535", spec.port.number),
            )
        })?;
    let written = protocol(&spec.port.protocol).ok_or_else(|| {
        doc.error(
            &format!("{base}.port.protocol"),
            format!(
                "unknown protocol {:?}, expected one of HTTP, HTTPS, HTTP2, GRPC, TCP, TLS",
                spec.port.protocol
            ),
        )
    })?;
    if let Some(t) = spec.port.target_port {
        warn(
            "port.targetPort",
            format!("targetPort {t} is ignored: the gateway listens on port.number {port}"),
            warnings,
        );
    }
    if let Some(b) = &spec.bind {
        warn(
            "bind",
            format!("bind {b:?} is ignored: the gateway listens on --listen-ip"),
            warnings,
        );
    }
    if spec.default_endpoint.is_some() {
        warn(
            "defaultEndpoint",
            "defaultEndpoint is ignored (a gateway forwards to the destinations of its routes)"
                .into(),
            warnings,
        );
    }
    if spec.hosts.is_empty() {
        return Err(doc.error(&format!("{base}.hosts"), "needs at least one host"));
    }
    let hosts = spec
        .hosts
        .iter()
        .enumerate()
        .map(|(j, h)| {
            server_host(h, gateway_ns).map_err(|m| doc.error(&format!("{base}.hosts[{j}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dir = doc.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let (tls, https_redirect) = match spec.tls {
        None => {
            if matches!(written, GatewayProtocol::Https | GatewayProtocol::Tls) {
                return Err(doc.error(
                    &format!("{base}.port.protocol"),
                    format!(
                        "a {} server needs `tls` (a mode and, to terminate, a certificate)",
                        protocol_name(written)
                    ),
                ));
            }
            (None, false)
        }
        Some(t) => server_tls(doc, &base, written, t, &dir, &warn, warnings)?,
    };
    let protocol = match &tls {
        Some(t) if t.mode == ServerTlsMode::Passthrough => GatewayProtocol::Tls,
        _ => written,
    };
    Ok(ServerDef {
        index,
        port,
        port_name: spec.port.name.filter(|n| !n.is_empty()),
        protocol,
        hosts,
        tls,
        https_redirect,
    })
}

/// `port.protocol`, in any case as Istio reads it.
fn protocol(text: &str) -> Option<GatewayProtocol> {
    Some(match text.to_ascii_uppercase().as_str() {
        "HTTP" => GatewayProtocol::Http,
        "HTTPS" => GatewayProtocol::Https,
        "HTTP2" => GatewayProtocol::Http2,
        "GRPC" => GatewayProtocol::Grpc,
        "TCP" => GatewayProtocol::Tcp,
        "TLS" => GatewayProtocol::Tls,
        _ => return None,
    })
}

pub(crate) fn protocol_name(p: GatewayProtocol) -> &'static str {
    match p {
        GatewayProtocol::Http => "HTTP",
        GatewayProtocol::Https => "HTTPS",
        GatewayProtocol::Http2 => "HTTP2",
        GatewayProtocol::Grpc => "GRPC",
        GatewayProtocol::Tcp => "TCP",
        GatewayProtocol::Tls => "TLS",
    }
}

pub(crate) fn mode_name(m: ServerTlsMode) -> &'static str {
    match m {
        ServerTlsMode::Passthrough => "PASSTHROUGH",
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
        ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
    }
}

/// One `hosts` entry: `host`, `ns/host`, `*/host`, `./host`; the host `*`, `*.<domain>` or a
/// DNS name.
fn server_host(raw: &str, gateway_ns: &str) -> Result<ServerHost, String> {
    let (ns, host) = match raw.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, raw),
    };
    let namespace = match ns {
        None | Some("*") => None,
        Some(".") => Some(gateway_ns.to_string()),
        Some(ns) if dns_label(ns) => Some(ns.to_string()),
        Some(ns) => {
            return Err(format!(
                "{raw:?}: the namespace part {ns:?} is not `*`, `.` or a namespace name"
            ))
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let name = if host == "*" {
        None
    } else {
        Some(host.strip_prefix("*.").unwrap_or(&host))
    };
    if name.is_some_and(|n| n.is_empty() || !n.split('.').all(dns_label)) {
        return Err(format!(
            "{raw:?} is not a host name, `*` or `*.<domain>` (a wildcard only as the whole first label)"
        ));
    }
    Ok(ServerHost { namespace, host })
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A path field: unset when absent or empty (as Istio reads an empty string); a relative path
/// joined to the directory of the file that holds the Gateway (as DestinationRule paths).
fn path(value: &Option<String>, dir: &Path) -> Option<PathBuf> {
    let p = PathBuf::from(value.as_deref().filter(|v| !v.is_empty())?);
    Some(if p.is_relative() { dir.join(p) } else { p })
}

/// `tls` of a server: the resolved [`ServerTls`] (`None`: plaintext, only `httpsRedirect`)
/// and whether plaintext HTTP requests are redirected.
fn server_tls(
    doc: &Document,
    base: &str,
    protocol: GatewayProtocol,
    t: ServerTlsSpec,
    dir: &Path,
    warn: &impl Fn(&str, String, &mut Vec<String>),
    warnings: &mut Vec<String>,
) -> Result<(Option<ServerTls>, bool), ConfigError> {
    let field = |f: &str| format!("{base}.tls.{f}");
    refuse_unsupported(doc, &field, &t)?;
    let credential = t.credential_name.clone().filter(|c| !c.is_empty());
    let server_certificate = path(&t.server_certificate, dir);
    let private_key = path(&t.private_key, dir);
    let ca_certificates = path(&t.ca_certificates, dir);
    let ca_crl = path(&t.ca_crl, dir);
    let certificate_fields = credential.is_some()
        || server_certificate.is_some()
        || private_key.is_some()
        || ca_certificates.is_some();
    // Istio's default mode is PASSTHROUGH (the enum's zero); a server that names a
    // certificate means SIMPLE, and an HTTP server with only `httpsRedirect` stays plaintext.
    let mode = match t.mode {
        Some(m) => m,
        None if certificate_fields => ServerTlsModeSpec::Simple,
        None if matches!(protocol, GatewayProtocol::Https | GatewayProtocol::Tls) => {
            ServerTlsModeSpec::Passthrough
        }
        None => {
            if t.https_redirect && !protocol.is_http() {
                warn(
                    "tls.httpsRedirect",
                    format!(
                        "httpsRedirect is ignored on a {} server (HTTP only)",
                        protocol_name(protocol)
                    ),
                    warnings,
                );
            }
            return Ok((None, t.https_redirect && protocol.is_http()));
        }
    };
    if protocol == GatewayProtocol::Tcp {
        return Err(doc.error(
            &field("mode"),
            "a TCP server reads plaintext: use protocol TLS to terminate or pass through TLS",
        ));
    }
    if t.https_redirect {
        warn(
            "tls.httpsRedirect",
            "httpsRedirect is ignored on a server that terminates or passes TLS".into(),
            warnings,
        );
    }
    let (min, max) = versions(doc, &field, &t, warn, warnings)?;
    let cipher_suites = cipher_suites(doc, &field, &t.cipher_suites)?;
    if !cipher_suites.is_empty() && min == TlsVersion::Tls13 {
        warn(
            "tls.cipherSuites",
            "cipherSuites apply to TLS 1.2 only; with minProtocolVersion TLSV1_3 they have no effect"
                .into(),
            warnings,
        );
    }
    let mut tls = ServerTls {
        mode: ServerTlsMode::Simple,
        certificate: None,
        ca_certificates: None,
        subject_alt_names: t.subject_alt_names.clone(),
        min_protocol_version: min,
        max_protocol_version: max,
        cipher_suites,
    };
    let no_certificate_fields = |name: &str| -> Result<(), ConfigError> {
        let set = [
            ("credentialName", credential.is_some()),
            ("serverCertificate", server_certificate.is_some()),
            ("privateKey", private_key.is_some()),
            ("caCertificates", ca_certificates.is_some()),
            ("caCrl", ca_crl.is_some()),
        ];
        match set.iter().find(|(_, s)| *s) {
            Some((f, _)) => Err(doc.error(
                &field(f),
                format!("{name} takes no certificate fields ({f} is set)"),
            )),
            None => Ok(()),
        }
    };
    match mode {
        ServerTlsModeSpec::AutoPassthrough => {
            return Err(doc.error(
                &field("mode"),
                "AUTO_PASSTHROUGH is not supported by outrider (destinations encoded in SNI); use PASSTHROUGH with tls routes",
            ))
        }
        ServerTlsModeSpec::Passthrough => {
            no_certificate_fields("PASSTHROUGH (the gateway does not terminate)")?;
            tls.mode = ServerTlsMode::Passthrough;
            let tuned = [
                ("subjectAltNames", !t.subject_alt_names.is_empty()),
                ("minProtocolVersion", t.min_protocol_version.is_some()),
                ("maxProtocolVersion", t.max_protocol_version.is_some()),
                ("cipherSuites", !t.cipher_suites.is_empty()),
            ];
            for (f, _) in tuned.iter().filter(|(_, set)| *set) {
                warn(
                    &format!("tls.{f}"),
                    format!("{f} is ignored under PASSTHROUGH (the backend terminates TLS)"),
                    warnings,
                );
            }
        }
        ServerTlsModeSpec::IstioMutual => {
            no_certificate_fields("ISTIO_MUTUAL (the gateway serves its own SVID)")?;
            tls.mode = ServerTlsMode::IstioMutual;
        }
        ServerTlsModeSpec::Simple
        | ServerTlsModeSpec::Mutual
        | ServerTlsModeSpec::OptionalMutual => {
            tls.mode = match mode {
                ServerTlsModeSpec::Simple => ServerTlsMode::Simple,
                ServerTlsModeSpec::Mutual => ServerTlsMode::Mutual,
                _ => ServerTlsMode::OptionalMutual,
            };
            let name = mode_name(tls.mode);
            tls.certificate = Some(match (&credential, &server_certificate, &private_key) {
                (Some(c), cert, key) => {
                    if cert.is_some() || key.is_some() {
                        warn(
                            "tls.credentialName",
                            format!("serverCertificate and privateKey are ignored: credentialName {c} provides the certificate"),
                            warnings,
                        );
                    }
                    CertificateSource::Credential { name: c.clone() }
                }
                (None, Some(c), Some(k)) => CertificateSource::Files {
                    certificate: c.clone(),
                    private_key: k.clone(),
                },
                (None, Some(_), None) => {
                    return Err(doc.error(
                        &field("serverCertificate"),
                        "serverCertificate needs privateKey beside it",
                    ))
                }
                (None, None, Some(_)) => {
                    return Err(doc.error(
                        &field("privateKey"),
                        "privateKey needs serverCertificate beside it",
                    ))
                }
                (None, None, None) => {
                    return Err(doc.error(
                        &field("mode"),
                        format!("{name} needs credentialName, or serverCertificate and privateKey"),
                    ))
                }
            });
            if tls.mode == ServerTlsMode::Simple {
                for (f, set) in [
                    ("caCertificates", ca_certificates.is_some()),
                    ("caCrl", ca_crl.is_some()),
                    ("subjectAltNames", !t.subject_alt_names.is_empty()),
                ] {
                    if set {
                        warn(
                            &format!("tls.{f}"),
                            format!("{f} is ignored under SIMPLE (no client certificate is asked for); use MUTUAL to verify clients"),
                            warnings,
                        );
                    }
                }
            } else {
                tls.ca_certificates = Some(match (&credential, ca_certificates) {
                    (Some(c), ca) => {
                        if ca.is_some() || ca_crl.is_some() {
                            warn(
                                "tls.credentialName",
                                format!("caCertificates and caCrl are ignored: the client CA comes from credential {c}-cacert, else {c}"),
                                warnings,
                            );
                        }
                        CaSource::Credential { name: c.clone() }
                    }
                    (None, Some(ca)) => CaSource::Files {
                        ca_certificates: ca,
                        ca_crl,
                    },
                    (None, None) => {
                        return Err(doc.error(
                            &field("mode"),
                            format!("{name} needs caCertificates or credentialName (the CA client certificates must chain to)"),
                        ))
                    }
                });
            }
        }
    }
    Ok((Some(tls), false))
}

/// The ServerTLSSettings fields outrider does not implement and must not ignore: each would
/// leave a client certificate less checked, or a certificate unserved, than the user asked.
fn refuse_unsupported(
    doc: &Document,
    field: &impl Fn(&str) -> String,
    t: &ServerTlsSpec,
) -> Result<(), ConfigError> {
    use serde_yaml_ng::Value;
    let set = |v: &Option<Value>| match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Sequence(s)) => !s.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    };
    let refused = [
        (
            "credentialNames",
            &t.credential_names,
            "use credentialName (one certificate per server)",
        ),
        (
            "tlsCertificates",
            &t.tls_certificates,
            "use serverCertificate and privateKey (one certificate per server)",
        ),
        (
            "caCertCredentialName",
            &t.ca_cert_credential_name,
            "the client CA of credentialName X comes from the X-cacert directory, else from X",
        ),
        (
            "verifyCertificateSpki",
            &t.verify_certificate_spki,
            "client certificates would not be pinned",
        ),
        (
            "verifyCertificateHash",
            &t.verify_certificate_hash,
            "client certificates would not be pinned",
        ),
        (
            "insecureSkipVerify",
            &t.insecure_skip_verify,
            "outrider never skips verification",
        ),
    ];
    for (name, value, why) in refused {
        if set(value) {
            return Err(doc.error(
                &field(name),
                format!("{name} is not supported by outrider ({why})"),
            ));
        }
    }
    Ok(())
}

/// `minProtocolVersion` / `maxProtocolVersion` within what rustls speaks (TLS 1.2 and 1.3).
fn versions(
    doc: &Document,
    field: &impl Fn(&str) -> String,
    t: &ServerTlsSpec,
    warn: &impl Fn(&str, String, &mut Vec<String>),
    warnings: &mut Vec<String>,
) -> Result<(TlsVersion, TlsVersion), ConfigError> {
    let min = match t.min_protocol_version {
        None | Some(TlsVersionSpec::Auto | TlsVersionSpec::V1_2) => TlsVersion::Tls12,
        Some(TlsVersionSpec::V1_3) => TlsVersion::Tls13,
        Some(old @ (TlsVersionSpec::V1_0 | TlsVersionSpec::V1_1)) => {
            warn(
                "tls.minProtocolVersion",
                format!(
                    "{} is raised to TLSV1_2 (outrider speaks TLS 1.2 and 1.3 only)",
                    version_name(old)
                ),
                warnings,
            );
            TlsVersion::Tls12
        }
    };
    let max = match t.max_protocol_version {
        None | Some(TlsVersionSpec::Auto | TlsVersionSpec::V1_3) => TlsVersion::Tls13,
        Some(TlsVersionSpec::V1_2) => TlsVersion::Tls12,
        Some(old @ (TlsVersionSpec::V1_0 | TlsVersionSpec::V1_1)) => {
            return Err(doc.error(
                &field("maxProtocolVersion"),
                format!(
                    "{} is not supported: outrider speaks TLS 1.2 and 1.3 only",
                    version_name(old)
                ),
            ))
        }
    };
    if min > max {
        return Err(doc.error(
            &field("minProtocolVersion"),
            "minProtocolVersion is above maxProtocolVersion",
        ));
    }
    Ok((min, max))
}

fn version_name(v: TlsVersionSpec) -> &'static str {
    match v {
        TlsVersionSpec::Auto => "TLS_AUTO",
        TlsVersionSpec::V1_0 => "TLSV1_0",
        TlsVersionSpec::V1_1 => "TLSV1_1",
        TlsVersionSpec::V1_2 => "TLSV1_2",
        TlsVersionSpec::V1_3 => "TLSV1_3",
    }
}

/// `cipherSuites` flattened (Envoy's `[A|B]` equal-preference groups become A, B), each name
/// one rustls offers, duplicates dropped.
fn cipher_suites(
    doc: &Document,
    field: &impl Fn(&str) -> String,
    written: &[String],
) -> Result<Vec<String>, ConfigError> {
    let mut suites: Vec<String> = Vec::new();
    for (j, entry) in written.iter().enumerate() {
        let entry = entry.trim();
        let names: Vec<&str> = match entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')) {
            Some(group) => group.split('|').map(str::trim).collect(),
            None => vec![entry],
        };
        for name in names {
            if !CIPHER_SUITES.contains(&name) {
                return Err(doc.error(
                    &field(&format!("cipherSuites[{j}]")),
                    format!(
                        "unknown or unsupported cipher suite {name:?} (outrider's TLS 1.2 suites: {})",
                        CIPHER_SUITES.join(", ")
                    ),
                ));
            }
            if !suites.iter().any(|s| s == name) {
                suites.push(name.to_string());
            }
        }
    }
    Ok(suites)
}
